//! Completion text → ranked `(title, year)` items (RANK_GRPO.md §2).
//!
//! Mirrors the reference `process_rec_raw` step by step, so that a line the reference drops is
//! dropped here too and every later item keeps the same rank.

use std::sync::LazyLock;

use regex::Regex;

use super::Item;
use super::text::{PY_SPACE_CLASS, collapse_space, decimal_digit_value, py_strip};

fn regex(pattern: &str) -> Regex {
    // `\s` is widened to Python's whitespace everywhere (see `text`); patterns are constants.
    let pattern = pattern.replace("WS", &format!("[{PY_SPACE_CLASS}]"));
    Regex::new(&pattern).expect("a valid constant regex")
}

/// `^(.+?)\s+\((\d{4})\)`: anchored at the start only, so trailing text after the year is allowed.
static ITEM: LazyLock<Regex> = LazyLock::new(|| regex(r"^(.+?)WS+\((\d{4})\)"));
static LEADING_MARKS: LazyLock<Regex> = LazyLock::new(|| regex(r"^[*_\-#]+"));
static TRAILING_MARKS: LazyLock<Regex> = LazyLock::new(|| regex(r"[*_\-#]+$"));
/// Marks followed by space, or a list number: `3.`, `3)`, `3、`, `3 -`, `3—`, `3–`, then space.
static LIST_MARKER: LazyLock<Regex> = LazyLock::new(|| regex(r"^(?:[*_\-#]+WS+|\d+WS*[.)、\-—–]WS+)"));
static LEADING_HASHES: LazyLock<Regex> = LazyLock::new(|| regex(r"^#+WS*"));
static INNERMOST_PARENS: LazyLock<Regex> = LazyLock::new(|| regex(r"\([^()]*\)"));

/// Parses a completion into its items, in order. Lines that are not `Title (Year)` are dropped and
/// the list compacts. Never fails: any text gives some (possibly empty) list.
pub fn parse_completion(text: &str) -> Vec<Item> {
    // Collapsing `\n` runs, splitting on `\n` and dropping blank lines leaves exactly the non-blank
    // stripped lines; only `\n` separates lines (a `\r` or U+2028 is whitespace inside a line).
    text.split('\n').map(py_strip).filter(|line| !line.is_empty()).filter_map(parse_line).collect()
}

/// One stripped, non-empty line → an item, or `None` when the line does not match.
pub fn parse_line(line: &str) -> Option<Item> {
    let formatted = strip_format(&collapse_space(line));
    let caps = ITEM.captures(remove_quotes(&formatted))?;
    let title = clean_title(caps.get(1)?.as_str());
    // Four decimal digits of any script: at most 9999, so the fold cannot overflow.
    let year =
        caps.get(2)?.as_str().chars().try_fold(0i64, |acc, c| Some(acc * 10 + i64::from(decimal_digit_value(c)?)))?;
    Some(Item { title, year })
}

/// Cleans a matched title to a fixed point: drop innermost `( … )` groups, collapse whitespace,
/// strip formatting, drop surrounding quotes, until nothing changes (`Se7en (Seven)` → `Se7en`).
pub fn clean_title(title: &str) -> String {
    let mut current = title.to_string();
    // After one pass all whitespace is single spaces, so every later change shortens the string:
    // the loop ends within len + 2 passes; the bound only documents that.
    for _ in 0..current.len() + 2 {
        let stripped = py_strip(&current);
        let no_parens = INNERMOST_PARENS.replace_all(stripped, "");
        let next = remove_quotes(&strip_format(&collapse_space(&no_parens))).to_string();
        if next == current {
            break;
        }
        current = next;
    }
    current
}

/// Strips markdown/list formatting from both ends, repeatedly (nested `**_x_**`, `1. **x**`).
/// Expects whitespace already collapsed (so `$` is the true end and no `\n` is present).
pub fn strip_format(text: &str) -> String {
    let mut text = py_strip(text).to_string();
    // Each pass either changes nothing (stop) or removes characters, so this terminates.
    loop {
        let next = py_strip(&LEADING_MARKS.replace(&text, "")).to_string();
        let next = py_strip(&TRAILING_MARKS.replace(&next, "")).to_string();
        let next = py_strip(&LIST_MARKER.replace(&next, "")).to_string();
        let next = LEADING_HASHES.replace(&next, "").into_owned();
        if next == text {
            return text;
        }
        text = next;
    }
}

/// Drops one pair of surrounding `"…"` or `'…'` (a lone quote character becomes empty, as Python's
/// `s[1:-1]` does).
pub fn remove_quotes(s: &str) -> &str {
    for q in ['"', '\''] {
        if s.starts_with(q) && s.ends_with(q) {
            return s.get(1..s.len().saturating_sub(1)).unwrap_or("");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(text: &str) -> Vec<(String, i64)> {
        parse_completion(text).into_iter().map(|i| (i.title, i.year)).collect()
    }

    fn one(line: &str) -> Option<(String, i64)> {
        parse_line(line).map(|i| (i.title, i.year))
    }

    fn it(title: &str, year: i64) -> Option<(String, i64)> {
        Some((title.to_string(), year))
    }

    #[test]
    fn plain_lines_parse_in_order_and_blank_lines_vanish() {
        let text = "\n\nThe Matrix (1999)\n\n\n  Heat (1995)  \n \t \nAlien (1979)\n";
        assert_eq!(items(text), vec![("The Matrix".into(), 1999), ("Heat".into(), 1995), ("Alien".into(), 1979)]);
    }

    #[test]
    fn list_markers_are_removed() {
        assert_eq!(one("1. The Matrix (1999)"), it("The Matrix", 1999));
        assert_eq!(one("12) Heat (1995)"), it("Heat", 1995));
        // Without whitespace after it the marker stays, as part of the title.
        assert_eq!(one("3、Alien (1979)"), it("3、Alien", 1979));
        assert_eq!(one("3、 Alien (1979)"), it("Alien", 1979));
        assert_eq!(one("4 - Up (2009)"), it("Up", 2009));
        assert_eq!(one("5— Up (2009)"), it("Up", 2009));
        assert_eq!(one("6 – Up (2009)"), it("Up", 2009));
        assert_eq!(one("- Up (2009)"), it("Up", 2009));
        assert_eq!(one("* Up (2009)"), it("Up", 2009));
        // A number followed by a marker but no space is a title, not a list number.
        assert_eq!(one("1.Up (2009)"), it("1.Up", 2009));
        // A title that starts with a number keeps it.
        assert_eq!(one("2001: A Space Odyssey (1968)"), it("2001: A Space Odyssey", 1968));
        assert_eq!(one("7. 2012 (2009)"), it("2012", 2009));
        // Unicode digits count as list numbers (Python's `\d`).
        assert_eq!(one("٣. Up (2009)"), it("Up", 2009));
    }

    #[test]
    fn bold_and_markdown_are_stripped_to_a_fixed_point() {
        assert_eq!(one("**The Matrix (1999)**"), it("The Matrix", 1999));
        assert_eq!(one("1. **The Matrix** (1999)"), it("The Matrix", 1999));
        assert_eq!(one("## _Heat_ (1995)"), it("Heat", 1995));
        assert_eq!(one("- **1. Heat (1995)**"), it("Heat", 1995));
        assert_eq!(one("#Heat (1995)"), it("Heat", 1995));
        assert_eq!(one("*_-#Heat (1995)#-_*"), it("Heat", 1995));
        assert_eq!(strip_format("** __x__ **"), "x");
        assert_eq!(strip_format("1. 2. x"), "x");
    }

    #[test]
    fn surrounding_quotes_are_removed_once() {
        assert_eq!(one("\"The Matrix\" (1999)"), it("The Matrix", 1999));
        assert_eq!(one("\"The Matrix (1999)\""), it("The Matrix", 1999));
        assert_eq!(one("'Heat' (1995)"), it("Heat", 1995));
        assert_eq!(one("'71 (2014)"), it("'71", 2014), "one quote is not a pair");
        assert_eq!(remove_quotes("\"\"x\"\""), "\"x\"");
        assert_eq!(remove_quotes("\""), "");
        assert_eq!(remove_quotes("'"), "");
        assert_eq!(remove_quotes("\"x'"), "\"x'");
    }

    #[test]
    fn innermost_parenthesised_groups_leave_the_title() {
        assert_eq!(one("Se7en (Seven) (1995)"), it("Se7en", 1995));
        assert_eq!(one("Amélie (Le Fabuleux (Destin)) (2001)"), it("Amélie", 2001));
        // Each group goes on its own: text between two groups stays.
        assert_eq!(one("Heat (x) Returns (y) (1995)"), it("Heat Returns", 1995));
        // An unbalanced parenthesis is not a group and stays.
        assert_eq!(one("Heat (x (1995)"), it("Heat (x", 1995));
        assert_eq!(one("Seven Samurai (Shichinin no samurai) (1954) - a classic"), it("Seven Samurai", 1954));
        // Emptying the title to nothing still yields an item (the reference keeps it too).
        assert_eq!(one("(x) (1999)"), it("", 1999));
        assert_eq!(clean_title("\"**Heat**\" (director's cut)"), "Heat");
    }

    #[test]
    fn trailing_text_after_the_year_is_allowed() {
        assert_eq!(one("Heat (1995) - a heist classic"), it("Heat", 1995));
        assert_eq!(one("Heat (1995)(remastered 2017)"), it("Heat", 1995));
    }

    #[test]
    fn the_year_must_be_four_digits_after_a_space() {
        assert_eq!(one("Heat(1995)"), None, "missing space before (");
        assert_eq!(one("The Wall (201)"), None, "3-digit year");
        assert_eq!(one("Heat (19955)"), None, "5-digit year");
        assert_eq!(one("Heat (1995"), None);
        assert_eq!(one("Heat 1995"), None);
        assert_eq!(one("Heat (c. 1995)"), None);
        // Lazy title: the first `(dddd)` preceded by whitespace ends it; an earlier bad group
        // stays in the title and is then cleaned away.
        assert_eq!(one("Heat (19955) (1995)"), it("Heat", 1995));
        assert_eq!(one("1917 (2019)"), it("1917", 2019));
        // Only at the start: text before a year is the title, even a sentence.
        assert_eq!(one("Here are my picks: Heat (1995)"), it("Here are my picks: Heat", 1995));
    }

    #[test]
    fn unicode_whitespace_and_digits_behave_as_in_python() {
        assert_eq!(one("Heat\u{3000}(1995)"), it("Heat", 1995));
        assert_eq!(one("Heat\u{a0}\u{2003}(1995)"), it("Heat", 1995));
        assert_eq!(one("Heat\u{1c}(1995)"), it("Heat", 1995), "Python's \\s matches U+001C");
        assert_eq!(one("Heat\u{200b}(1995)"), None, "zero-width space is not whitespace");
        assert_eq!(one("Heat (١٩٩٥)"), it("Heat", 1995));
        assert_eq!(one("Heat (１９９５)"), it("Heat", 1995));
        assert_eq!(one("Heat (19٩5)"), it("Heat", 1995), "mixed scripts still count");
        assert_eq!(one("Heat (²⁰⁰⁰)"), None, "superscripts are not decimal digits");
        // `\r` and U+2028 do not split lines, they are whitespace inside one.
        assert_eq!(items("Heat (1995)\r\nUp\u{2028}(2009)"), vec![("Heat".into(), 1995), ("Up".into(), 2009)]);
        assert_eq!(items("Heat\r(1995)"), vec![("Heat".into(), 1995)]);
    }

    #[test]
    fn unparsable_lines_compact_the_list() {
        let text = "Here you go:\nHeat (1995)\nThe Wall (201)\nUp (2009)\nEnjoy!";
        assert_eq!(items(text), vec![("Heat".into(), 1995), ("Up".into(), 2009)]);
        assert!(items("").is_empty());
        assert!(items("\n\n \n").is_empty());
    }
}

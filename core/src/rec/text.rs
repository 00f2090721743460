//! Python 3 string semantics that the reference code relies on and Rust's std does not share.
//!
//! The reference parser and reward are Python (`re`, `str.strip`, `str.casefold`, `int`). To give
//! the same items and rewards on the same text, the few places where Rust differs are pinned here:
//! Python's whitespace set is Unicode `White_Space` plus the separators U+001C..U+001F, `\d` is any
//! Unicode decimal digit (category Nd) and `int()` reads such digits by value.

use std::sync::LazyLock;

use regex::Regex;

/// Python's whitespace for `str.isspace`, `str.strip` and `re`'s `\s` on str patterns, as a regex
/// class body. The regex crate's `\s` is Unicode `White_Space`, which lacks U+001C..U+001F.
pub(crate) const PY_SPACE_CLASS: &str = r"\s\x{1C}-\x{1F}";

/// True for the characters Python's `str.isspace()` accepts (and `re`'s `\s` matches).
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1C}'..='\u{1F}').contains(&c)
}

/// Python's `s.strip()` (no argument).
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Python's `re.sub(r"\s+", " ", s.strip()).strip()`: trim, then every whitespace run becomes one
/// space.
pub fn collapse_space(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    for c in py_strip(s).chars() {
        if is_py_space(c) {
            pending_space = true;
        } else {
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            out.push(c);
        }
    }
    out
}

/// Python's `str.casefold()`: full Unicode case folding (not the Turkic variant).
pub fn casefold(s: &str) -> String {
    icu_casemap::CaseMapper::new().fold_string(s).into_owned()
}

/// The title key the reward compares on: whitespace collapsed, then case-folded (the reference
/// code's default title normaliser).
pub fn title_key(title: &str) -> String {
    casefold(&collapse_space(title))
}

/// Is `c` a Unicode decimal digit (general category Nd), what Python's `\d` matches?
fn is_decimal_digit(c: char) -> bool {
    static ND: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\A\p{Nd}\z").expect("a valid regex"));
    let mut buf = [0u8; 4];
    ND.is_match(c.encode_utf8(&mut buf))
}

/// The value Python's `int()` gives a decimal digit, or `None` for anything else.
///
/// Unicode encodes every set of decimal digits as ten consecutive code points 0..9, and sets that
/// touch each other are whole sets, so a digit's value is its distance from the start of its run of
/// consecutive digits, modulo 10. No table is needed beyond the Nd property itself.
pub fn decimal_digit_value(c: char) -> Option<u32> {
    if c.is_ascii_digit() {
        return c.to_digit(10);
    }
    if !is_decimal_digit(c) {
        return None;
    }
    let mut start = c as u32;
    while let Some(prev) = start.checked_sub(1).and_then(char::from_u32) {
        if !is_decimal_digit(prev) {
            break;
        }
        start -= 1;
    }
    Some((c as u32 - start) % 10)
}

/// Python's `int(s)` for a base-10 string: surrounding whitespace, an optional sign, decimal digits
/// of any script, single underscores between digits. `None` where Python raises, and where the value
/// does not fit an `i64` (such a year can never be within a window of a 4-digit one).
pub fn py_int(s: &str) -> Option<i64> {
    let s = py_strip(s);
    let (negative, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let mut value: i64 = 0;
    let mut seen_digit = false;
    let mut after_underscore = false;
    for c in digits.chars() {
        if c == '_' {
            // Python accepts `1_999` but not a leading, trailing or doubled underscore.
            if !seen_digit || after_underscore {
                return None;
            }
            after_underscore = true;
            continue;
        }
        let d = decimal_digit_value(c)?;
        value = value.checked_mul(10)?.checked_add(i64::from(d))?;
        seen_digit = true;
        after_underscore = false;
    }
    if !seen_digit || after_underscore {
        return None;
    }
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_whitespace_includes_information_separators() {
        for c in
            ['\t', '\n', '\u{b}', '\u{c}', '\r', '\u{1c}', '\u{1f}', ' ', '\u{85}', '\u{a0}', '\u{3000}', '\u{2028}']
        {
            assert!(is_py_space(c), "{c:?}");
        }
        // Not whitespace in Python: zero-width space, Mongolian vowel separator, BOM.
        for c in ['\u{200b}', '\u{180e}', '\u{feff}', 'a'] {
            assert!(!is_py_space(c), "{c:?}");
        }
        assert_eq!(py_strip("\u{1c} a b\u{3000}\u{1f}"), "a b");
    }

    #[test]
    fn collapse_space_trims_and_joins_runs() {
        assert_eq!(collapse_space("  The \t\u{a0} Matrix \u{1d}"), "The Matrix");
        assert_eq!(collapse_space(""), "");
        assert_eq!(collapse_space(" \u{2003} "), "");
    }

    #[test]
    fn casefold_is_full_unicode_folding_like_python() {
        // Python: "Straße".casefold() == "strasse", "ΣΊΣΥΦΟΣ".casefold() == "σίσυφοσ".
        assert_eq!(casefold("Straße"), "strasse");
        assert_eq!(casefold("ΣΊΣΥΦΟΣ"), "σίσυφοσ");
        assert_eq!(casefold("ﬁ"), "fi");
        assert_eq!(casefold("İ"), "i\u{307}");
        assert_eq!(title_key("  AMÉLIE\t "), "amélie");
    }

    #[test]
    fn decimal_digits_of_any_script_have_their_value() {
        assert_eq!(decimal_digit_value('7'), Some(7));
        assert_eq!(decimal_digit_value('٩'), Some(9)); // Arabic-Indic nine, U+0669
        assert_eq!(decimal_digit_value('０'), Some(0)); // fullwidth zero
        assert_eq!(decimal_digit_value('९'), Some(9)); // Devanagari nine
        // Mathematical digits are five touching sets of ten: U+1D7CE is bold zero, U+1D7E1 is
        // double-struck nine, U+1D7FF monospace nine.
        assert_eq!(decimal_digit_value('\u{1D7CE}'), Some(0));
        assert_eq!(decimal_digit_value('\u{1D7E1}'), Some(9));
        assert_eq!(decimal_digit_value('\u{1D7FF}'), Some(9));
        assert_eq!(decimal_digit_value('\u{1D7D8}'), Some(0)); // double-struck zero, 10 after bold zero
        assert_eq!(decimal_digit_value('\u{1D7DB}'), Some(3));
        // Numbers that are not decimal digits: superscript two (No), Roman numeral (Nl), letters.
        assert_eq!(decimal_digit_value('²'), None);
        assert_eq!(decimal_digit_value('Ⅻ'), None);
        assert_eq!(decimal_digit_value('a'), None);
    }

    #[test]
    fn py_int_follows_python_int() {
        assert_eq!(py_int("1999"), Some(1999));
        assert_eq!(py_int(" 1999\n"), Some(1999));
        assert_eq!(py_int("+0201"), Some(201));
        assert_eq!(py_int("-5"), Some(-5));
        assert_eq!(py_int("1_999"), Some(1999));
        assert_eq!(py_int("١٩٩٩"), Some(1999));
        assert_eq!(py_int("１９９９"), Some(1999));
        for bad in ["", " ", "19 99", "1999a", "_1999", "1999_", "1__999", "+", "--1", "1.0", "²"] {
            assert_eq!(py_int(bad), None, "{bad:?}");
        }
        assert_eq!(py_int("99999999999999999999"), None, "out of i64 range");
    }
}

//! MovieLens titles → the titles a model writes and the parser reads back.
//!
//! MovieLens files its titles library-style: `Usual Suspects, The`, `Postino, Il`, with alternative
//! or original-language titles in parentheses (`Seven (Se7en)`, `Shanghai Triad (Yao a yao yao dao
//! waipo qiao)`) and, in the original `u.item`, the year in parentheses too. RecBole's conversion
//! split the year off into `release_year`, except where it failed: `Land Before Time III: The Time
//! of the Great Giving (1995)` has `V` as its year, and one item is `unkonwn` with no year at all.
//!
//! Normalising, in this order:
//! 1. a trailing `(YYYY)` on the title is removed; it is the year when the `release_year` field is
//!    not a 4-digit year (the field wins when both are there);
//! 2. the title is cleaned exactly as the completion parser cleans a title
//!    ([`clean_title`]): parenthesised alternative titles are dropped, whitespace collapses,
//!    formatting marks and surrounding quotes go. Doing this with the parser's own function is what
//!    makes every catalog title read back unchanged from a `Title (Year)` line;
//! 3. a trailing article after a comma moves to the front: `Usual Suspects, The` → `The Usual
//!    Suspects`, `Boot, Das` → `Das Boot`, `Enfer, L'` → `L'Enfer` (the articles that occur in
//!    MovieLens: English, French, Italian, German, Spanish). Only the last comma counts, so `Good,
//!    The Bad and The Ugly, The` → `The Good, The Bad and The Ugly`. Capitalisation is kept as
//!    MovieLens has it.
//!
//! An item without a usable year is left out of the catalog (its ratings are skipped).

use super::super::parse::{clean_title, parse_line};

/// Trailing articles that move to the front; `L'` joins the next word without a space.
const ARTICLES: [&str; 13] = ["The", "A", "An", "La", "Le", "Les", "L'", "Il", "Das", "Der", "Die", "El", "Los"];

/// The normalised title (steps 2 and 3 above).
pub fn normalize_title(raw: &str) -> String {
    let cleaned = clean_title(raw);
    let moved = match cleaned.rsplit_once(", ") {
        Some((rest, article)) if !rest.is_empty() && ARTICLES.contains(&article) => {
            let sep = if article.ends_with('\'') { "" } else { " " };
            format!("{article}{sep}{rest}")
        }
        _ => cleaned,
    };
    // Moving an article can bare formatting or quotes that were inside (`"X", The`): clean again.
    clean_title(&moved)
}

/// The catalog entry for one `.item` row, or `None` when it has no usable year or title.
pub fn title_and_year(raw_title: &str, raw_year: &str) -> Option<(String, i64)> {
    let (title, title_year) = split_trailing_year(raw_title.trim());
    let year = four_digit_year(raw_year.trim()).or(title_year)?;
    let title = normalize_title(title);
    // The catalog must hold what the parser reads from `Title (Year)`, or no completion can ever
    // match it (a title that itself looks like a list number, `1. …`, would not survive).
    let item = parse_line(&format!("{title} ({year})"))?;
    (!title.is_empty() && item.title == title && item.year == year).then_some((title, year))
}

/// `"Title (1995)"` → (`"Title"`, 1995); anything else unchanged with no year.
fn split_trailing_year(title: &str) -> (&str, Option<i64>) {
    let Some(body) = title.strip_suffix(')') else { return (title, None) };
    let Some((rest, year)) = body.rsplit_once('(') else { return (title, None) };
    match four_digit_year(year) {
        Some(y) if rest.ends_with(char::is_whitespace) => (rest.trim_end(), Some(y)),
        _ => (title, None),
    }
}

fn four_digit_year(s: &str) -> Option<i64> {
    (s.len() == 4 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_normalise_as_documented() {
        let cases = [
            ("Toy Story", "Toy Story"),
            ("Usual Suspects, The", "The Usual Suspects"),
            ("Fish Called Wanda, A", "A Fish Called Wanda"),
            ("American Werewolf in London, An", "An American Werewolf in London"),
            ("Postino, Il", "Il Postino"),
            ("Boot, Das", "Das Boot"),
            ("Misérables, Les", "Les Misérables"),
            ("Enfer, L'", "L'Enfer"),
            ("Good, The Bad and The Ugly, The", "The Good, The Bad and The Ugly"),
            ("Sex, Lies, and Videotape", "Sex, Lies, and Videotape"),
            (
                "Englishman Who Went Up a Hill, But Came Down a Mountain, The",
                "The Englishman Who Went Up a Hill, But Came Down a Mountain",
            ),
            ("Seven (Se7en)", "Seven"),
            ("Horseman on the Roof, The (Hussard sur le toit, Le)", "The Horseman on the Roof"),
            ("Double vie de Véronique, La (Double Life of Veronique, The)", "La Double vie de Véronique"),
            ("Die xue shuang xiong (Killer, The)", "Die xue shuang xiong"),
            ("'Til There Was You", "'Til There Was You"),
            ("  Heat  ", "Heat"),
            ("Lone Star, Texas", "Lone Star, Texas"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_title(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn the_year_comes_from_the_field_or_else_the_title() {
        assert_eq!(title_and_year("Usual Suspects, The", "1995"), Some(("The Usual Suspects".into(), 1995)));
        assert_eq!(
            title_and_year("Land Before Time III: The Time of the Great Giving (1995)", "V"),
            Some(("Land Before Time III: The Time of the Great Giving".into(), 1995)),
            "RecBole's mis-split row"
        );
        assert_eq!(title_and_year("Heat (1995)", "1996"), Some(("Heat".into(), 1996)), "the field wins");
        assert_eq!(title_and_year("unkonwn", "unkonwn"), None);
        assert_eq!(title_and_year("Heat", "95"), None);
        assert_eq!(title_and_year("Heat(1995)", ""), None, "the parser needs a space before the year");
        assert_eq!(title_and_year("()", "1995"), None, "an empty title");
        assert_eq!(
            title_and_year("1. Heat", "1995"),
            Some(("Heat".into(), 1995)),
            "what the parser would strip as a list number is stripped here too"
        );
    }
}

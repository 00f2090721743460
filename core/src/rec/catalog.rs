//! The item catalog: the set of `(title, year)` pairs a recommendation must belong to to count.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::InputError;
use super::text::py_int;

/// Exact `(title, year)` pairs. Titles are compared byte for byte (case-sensitive, no trimming).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    // Keyed by title so a lookup borrows the `&str` instead of building a `(String, i64)` key.
    years_by_title: HashMap<String, HashSet<i64>>,
    len: usize,
}

impl Catalog {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, title: impl Into<String>, year: i64) {
        if self.years_by_title.entry(title.into()).or_default().insert(year) {
            self.len += 1;
        }
    }

    /// Is this exact pair in the catalog?
    pub fn contains(&self, title: &str, year: i64) -> bool {
        self.years_by_title.get(title).is_some_and(|years| years.contains(&year))
    }

    /// The number of distinct pairs.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, i64)> {
        self.years_by_title.iter().flat_map(|(t, years)| years.iter().map(move |y| (t.as_str(), *y)))
    }

    /// Reads either format, by its first non-blank character: `[` is JSON, anything else TSV.
    pub fn parse(source: &str, text: &str) -> Result<Self, InputError> {
        if text.trim_start().starts_with('[') { Self::from_json(source, text) } else { Self::from_tsv(source, text) }
    }

    /// `title<TAB>year` rows after one header line. Blank lines are skipped; a `\r` before the line
    /// end is ignored. Every data row must have exactly two fields and an integer year.
    pub fn from_tsv(source: &str, text: &str) -> Result<Self, InputError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut catalog = Self::new();
        let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).enumerate();
        match lines.next() {
            None | Some((_, "")) => return Err(InputError::new(source, 1, "expected a header line `title<TAB>year`")),
            // A first line that already holds data would be lost silently: refuse it.
            Some((_, header)) if header.split('\t').nth(1).and_then(py_int).is_some() => {
                return Err(InputError::new(source, 1, format!("expected a header line, found a data row {header:?}")));
            }
            Some(_) => {}
        }
        for (i, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split('\t').collect();
            let [title, year] = fields[..] else {
                return Err(InputError::new(
                    source,
                    i + 1,
                    format!("expected `title<TAB>year`, found {} fields", fields.len()),
                ));
            };
            let year = py_int(year)
                .ok_or_else(|| InputError::new(source, i + 1, format!("year {year:?} is not an integer")))?;
            catalog.insert(title, year);
        }
        Ok(catalog)
    }

    /// A JSON list whose entries are `[title, year]` pairs or `{"title": …, "year": …}` objects;
    /// the year is an integer or a string holding one (the reference catalogs have both).
    pub fn from_json(source: &str, text: &str) -> Result<Self, InputError> {
        let value: Value = serde_json::from_str(text).map_err(|e| InputError::json(source, e.line(), &e))?;
        let Value::Array(list) = value else {
            return Err(InputError::whole(source, "expected a JSON list of [title, year] entries"));
        };
        let mut catalog = Self::new();
        for (i, entry) in list.iter().enumerate() {
            let bad = |what: String| InputError::entry(source, i, what);
            let (title, year) = match entry {
                Value::Array(pair) if pair.len() == 2 => (&pair[0], &pair[1]),
                Value::Object(map) => (
                    map.get("title").ok_or_else(|| bad("missing field `title`".into()))?,
                    map.get("year").ok_or_else(|| bad("missing field `year`".into()))?,
                ),
                other => return Err(bad(format!("expected [title, year] or {{\"title\", \"year\"}}, found {other}"))),
            };
            let Value::String(title) = title else {
                return Err(bad(format!("title {title} is not a string")));
            };
            let year = match year {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => py_int(s),
                _ => None,
            }
            .ok_or_else(|| bad(format!("year {year} is not an integer")))?;
            catalog.insert(title.clone(), year);
        }
        Ok(catalog)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsv_skips_the_header_and_keeps_exact_pairs() {
        let c = Catalog::from_tsv("cat.tsv", "title\tyear\nThe Matrix\t1999\n'71\t2014\r\nThe Wall\t201\n\n").unwrap();
        assert_eq!(c.len(), 3);
        assert!(c.contains("The Matrix", 1999));
        assert!(c.contains("'71", 2014), "CRLF line ends are fine");
        assert!(c.contains("The Wall", 201), "a 3-digit year is kept as data");
        assert!(!c.contains("the matrix", 1999), "case-sensitive");
        assert!(!c.contains("The Matrix", 2000), "exact year");
        assert!(!c.contains("The Matrix ", 1999), "no trimming");
    }

    #[test]
    fn tsv_errors_name_source_and_line() {
        let e = Catalog::from_tsv("cat.tsv", "title\tyear\nHeat\t1995\nUp 2009\n").unwrap_err();
        assert_eq!(e.to_string(), "cat.tsv: line 3: expected `title<TAB>year`, found 1 fields");
        let e = Catalog::from_tsv("cat.tsv", "title\tyear\nHeat\tninety\n").unwrap_err();
        assert_eq!(e.to_string(), "cat.tsv: line 2: year \"ninety\" is not an integer");
        let e = Catalog::from_tsv("cat.tsv", "Heat\t1995\n").unwrap_err();
        assert!(e.to_string().starts_with("cat.tsv: line 1: expected a header line"), "{e}");
        assert!(Catalog::from_tsv("cat.tsv", "").is_err());
    }

    #[test]
    fn json_accepts_pairs_and_objects_with_int_or_string_years() {
        let text = r#"[["Heat", 1995], ["Up", "2009"], {"title": "Alien", "year": 1979}, {"year": "1999", "title": "The Matrix"}]"#;
        let c = Catalog::parse("cat.json", text).unwrap();
        assert_eq!(c.len(), 4);
        assert!(c.contains("Heat", 1995) && c.contains("Up", 2009) && c.contains("Alien", 1979));
        assert!(c.contains("The Matrix", 1999));
    }

    #[test]
    fn json_errors_name_source_and_entry() {
        let e = Catalog::from_json("cat.json", r#"[["Heat", 1995], ["Up"]]"#).unwrap_err();
        assert!(e.to_string().starts_with("cat.json: entry 2: expected [title, year]"), "{e}");
        let e = Catalog::from_json("cat.json", r#"[{"title": "Up"}]"#).unwrap_err();
        assert_eq!(e.to_string(), "cat.json: entry 1: missing field `year`");
        let e = Catalog::from_json("cat.json", r#"[[5, 1995]]"#).unwrap_err();
        assert_eq!(e.to_string(), "cat.json: entry 1: title 5 is not a string");
        let e = Catalog::from_json("cat.json", r#"[["Up", 20.5]]"#).unwrap_err();
        assert_eq!(e.to_string(), "cat.json: entry 1: year 20.5 is not an integer");
        let e = Catalog::from_json("cat.json", r#"{"Up": 2009}"#).unwrap_err();
        assert_eq!(e.to_string(), "cat.json: expected a JSON list of [title, year] entries");
        let e = Catalog::from_json("cat.json", "[[\"Up\", 2009]").unwrap_err();
        assert!(e.to_string().starts_with("cat.json: line 1: "), "{e}");
    }
}

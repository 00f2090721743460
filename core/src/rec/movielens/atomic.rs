//! RecBole's "atomic files" (`.inter`, `.item`, `.user`): tab-separated text whose first line names
//! each column as `name:type`.
//!
//! RecBole reads them with `pandas.read_csv(sep="\t", engine="python")`, so the CSV quoting rules
//! of Python's `csv` module apply: a field that *starts* with `"` is quoted, may hold tabs, and
//! writes a `"` inside as `""`; a `"` anywhere else is an ordinary character. Where pandas would
//! quietly fill or guess (a missing field becomes NaN, text after a closing quote is glued on, a
//! quoted field may run over several lines) this reader stops with an error naming the file and
//! line instead, because a silently shifted column would corrupt every row after it.

use super::super::InputError;

/// RecBole's column types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Token,
    TokenSeq,
    Float,
    FloatSeq,
}

impl FieldType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "token" => Self::Token,
            "token_seq" => Self::TokenSeq,
            "float" => Self::Float,
            "float_seq" => Self::FloatSeq,
            _ => return None,
        })
    }
}

/// One column of the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub kind: FieldType,
}

/// One data line: its 1-based line number and one value per header field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub line: usize,
    pub values: Vec<String>,
}

/// A parsed atomic file. Values stay text; typed access goes through [`AtomicFile::float`] and
/// friends so that a bad value is reported with its file, line and column.
#[derive(Debug, Clone)]
pub struct AtomicFile {
    pub source: String,
    pub fields: Vec<Field>,
    pub records: Vec<Record>,
}

impl AtomicFile {
    /// Parses the whole text. Blank lines are skipped and a `\r` before a line end is ignored.
    pub fn parse(source: &str, text: &str) -> Result<Self, InputError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).enumerate();
        let header = match lines.next() {
            Some((_, h)) if !h.trim().is_empty() => h,
            _ => return Err(InputError::new(source, 1, "expected a header line of `name:type` fields")),
        };
        let fields = parse_header(source, header)?;
        let mut records = Vec::new();
        for (i, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let values = split_fields(line).map_err(|e| InputError::new(source, i + 1, e))?;
            if values.len() != fields.len() {
                let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
                return Err(InputError::new(
                    source,
                    i + 1,
                    format!(
                        "expected {} tab-separated fields ({}), found {}",
                        fields.len(),
                        names.join(", "),
                        values.len()
                    ),
                ));
            }
            records.push(Record { line: i + 1, values });
        }
        Ok(Self { source: source.to_string(), fields, records })
    }

    /// The index of column `name`, or an error listing the columns there are.
    pub fn column(&self, name: &str) -> Result<usize, InputError> {
        self.fields.iter().position(|f| f.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.fields.iter().map(|f| f.name.as_str()).collect();
            InputError::new(&self.source, 1, format!("no column `{name}` in the header (it has {})", names.join(", ")))
        })
    }

    /// The index of column `name` when the header has it.
    pub fn optional_column(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    /// An error about `record`'s value in column `col`.
    pub fn error(&self, record: &Record, col: usize, what: impl std::fmt::Display) -> InputError {
        let name = self.fields.get(col).map_or("?", |f| f.name.as_str());
        InputError::new(&self.source, record.line, format!("field `{name}` {what}"))
    }

    /// A non-empty token (ids must not be blank).
    pub fn token<'a>(&self, record: &'a Record, col: usize) -> Result<&'a str, InputError> {
        let value = record.values[col].trim();
        if value.is_empty() {
            return Err(self.error(record, col, "is empty"));
        }
        Ok(value)
    }

    /// A finite number, as Python's `float()` reads one (surrounding spaces allowed).
    pub fn float(&self, record: &Record, col: usize) -> Result<f64, InputError> {
        let value = &record.values[col];
        value
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| self.error(record, col, format!("value {value:?} is not a finite number")))
    }

    /// A `token_seq` value: RecBole's sequence separator is one space; empty pieces are dropped.
    pub fn token_seq<'a>(&self, record: &'a Record, col: usize) -> Vec<&'a str> {
        record.values[col].split(' ').filter(|t| !t.is_empty()).collect()
    }
}

fn parse_header(source: &str, header: &str) -> Result<Vec<Field>, InputError> {
    let mut fields: Vec<Field> = Vec::new();
    for raw in header.split('\t') {
        let bad = |what: String| InputError::new(source, 1, what);
        let (name, kind) =
            raw.split_once(':').ok_or_else(|| bad(format!("header field {raw:?} is not `name:type`")))?;
        let kind = FieldType::parse(kind).ok_or_else(|| {
            bad(format!("field `{name}` has type {kind:?}; RecBole's types are token, token_seq, float, float_seq"))
        })?;
        if name.is_empty() {
            return Err(bad(format!("header field {raw:?} has no name")));
        }
        if fields.iter().any(|f| f.name == name) {
            return Err(bad(format!("field `{name}` appears twice in the header")));
        }
        fields.push(Field { name: name.to_string(), kind });
    }
    Ok(fields)
}

/// Splits one line on tabs, honouring `"…"` quoting (see the module comment).
fn split_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut rest = line;
    loop {
        let Some(after_quote) = rest.strip_prefix('"') else {
            // Unquoted: up to the next tab, quotes and all.
            match rest.split_once('\t') {
                Some((field, tail)) => {
                    fields.push(field.to_string());
                    rest = tail;
                    continue;
                }
                None => {
                    fields.push(rest.to_string());
                    return Ok(fields);
                }
            }
        };
        // Quoted: read to the closing quote, turning `""` into `"`.
        let n = fields.len() + 1;
        let mut value = String::new();
        let mut chars = after_quote.char_indices();
        let tail = loop {
            match chars.next() {
                None => return Err(format!("field {n}: the quote that opens it is never closed on this line")),
                Some((i, '"')) => {
                    if after_quote[i + 1..].starts_with('"') {
                        value.push('"');
                        chars.next();
                    } else {
                        break &after_quote[i + 1..];
                    }
                }
                Some((_, c)) => value.push(c),
            }
        };
        fields.push(value);
        if tail.is_empty() {
            return Ok(fields);
        }
        rest = tail
            .strip_prefix('\t')
            .ok_or_else(|| format!("field {n}: text after the closing quote (a tab or the line end must follow it)"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ITEM: &str = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n";

    #[test]
    fn reads_the_header_types_and_tab_separated_records() {
        let text = format!("{ITEM}1\tToy Story\t1995\tAnimation Children's Comedy\r\n\n2\tGoldenEye\t1995\t\n");
        let f = AtomicFile::parse("ml.item", &text).unwrap();
        let kinds: Vec<FieldType> = f.fields.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, [FieldType::Token, FieldType::TokenSeq, FieldType::Token, FieldType::TokenSeq]);
        assert_eq!(f.records.len(), 2, "blank lines are skipped");
        assert_eq!(f.records[0].values, ["1", "Toy Story", "1995", "Animation Children's Comedy"], "CRLF is fine");
        assert_eq!(f.records[1].line, 4, "line numbers count blank lines");
        assert_eq!(f.token_seq(&f.records[0], 3), ["Animation", "Children's", "Comedy"]);
        assert!(f.token_seq(&f.records[1], 3).is_empty(), "an empty last field is a field");
        assert_eq!(f.column("class").unwrap(), 3);
        assert_eq!(f.optional_column("genre"), None);
    }

    #[test]
    fn quoted_fields_hold_tabs_and_doubled_quotes() {
        let line = "\"Say \"\"Hi\"\"\"\t\"a\tb\"\tO\"Brien\t\"\"";
        assert_eq!(split_fields(line).unwrap(), ["Say \"Hi\"", "a\tb", "O\"Brien", ""]);
        assert_eq!(split_fields("a\t\t").unwrap(), ["a", "", ""]);
        assert_eq!(split_fields("\"x\"").unwrap(), ["x"]);
        assert_eq!(
            split_fields("1\t\"open\tended").unwrap_err(),
            "field 2: the quote that opens it is never closed on this line"
        );
        assert_eq!(
            split_fields("\"a\"b\tc").unwrap_err(),
            "field 1: text after the closing quote (a tab or the line end must follow it)"
        );
    }

    #[test]
    fn bad_lines_name_file_line_and_problem() {
        let cases = [
            (
                format!("{ITEM}1\tToy Story\t1995\n"),
                "ml.item: line 2: expected 4 tab-separated fields (item_id, movie_title, release_year, class), found 3",
            ),
            (
                format!("{ITEM}1\tA\t1995\tDrama\n2\tB\t1996\tDrama\textra\n"),
                "ml.item: line 3: expected 4 tab-separated fields (item_id, movie_title, release_year, class), found 5",
            ),
            (
                format!("{ITEM}\n\n1\t\"Toy\tStory\t1995\tDrama\n"),
                "ml.item: line 4: field 2: the quote that opens it is never closed on this line",
            ),
            ("".to_string(), "ml.item: line 1: expected a header line of `name:type` fields"),
            (
                "item_id\tmovie_title:token_seq\n".to_string(),
                "ml.item: line 1: header field \"item_id\" is not `name:type`",
            ),
            (
                "item_id:int\n".to_string(),
                "ml.item: line 1: field `item_id` has type \"int\"; RecBole's types are token, token_seq, float, float_seq",
            ),
            ("a:token\ta:float\n".to_string(), "ml.item: line 1: field `a` appears twice in the header"),
        ];
        for (text, want) in cases {
            assert_eq!(AtomicFile::parse("ml.item", &text).unwrap_err().to_string(), want);
        }
    }

    #[test]
    fn typed_values_are_checked_where_they_are_used() {
        let text = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\t4\t881250949\n \t2\tfour\t1e3\n";
        let f = AtomicFile::parse("ml.inter", text).unwrap();
        let (good, bad) = (&f.records[0], &f.records[1]);
        assert_eq!(f.float(good, 2).unwrap(), 4.0);
        assert_eq!(f.float(bad, 3).unwrap(), 1000.0);
        assert_eq!(
            f.float(bad, 2).unwrap_err().to_string(),
            "ml.inter: line 3: field `rating` value \"four\" is not a finite number"
        );
        assert_eq!(f.token(bad, 0).unwrap_err().to_string(), "ml.inter: line 3: field `user_id` is empty");
        assert_eq!(
            f.column("movie").unwrap_err().to_string(),
            "ml.inter: line 1: no column `movie` in the header (it has user_id, item_id, rating, timestamp)"
        );
    }
}

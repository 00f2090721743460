//! Dataset rows in the Reddit-v2 processed schema, read from JSONL text.
//!
//! Fields are checked one by one (rather than by a derived `Deserialize`) so that a bad row is
//! reported as `source: line N: field `x`: what is wrong`, which a user can act on.

use serde_json::{Map, Value};

use super::InputError;
use super::text::py_int;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A completion: plain text, or chat messages (the dataset's form: one assistant message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    Text(String),
    Messages(Vec<Message>),
}

impl Completion {
    /// The text that is parsed and scored: the text itself, or the first assistant message.
    pub fn scored_text(&self) -> Option<&str> {
        match self {
            Completion::Text(t) => Some(t),
            Completion::Messages(ms) => ms.iter().find(|m| m.role == "assistant").map(|m| m.content.as_str()),
        }
    }
}

/// A ground-truth item. The year stays as written (the dataset stores it as a string) and is read
/// the way Python's `int(str(year))` reads it when matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroundTruth {
    pub title: String,
    pub year: String,
}

impl GroundTruth {
    pub fn new(title: impl Into<String>, year: impl Into<String>) -> Self {
        Self { title: title.into(), year: year.into() }
    }

    /// The year as an integer; `None` when Python's `int()` would reject it (such an entry can never
    /// be matched).
    pub fn year_value(&self) -> Option<i64> {
        py_int(&self.year)
    }
}

/// A dataset row (training or evaluation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub sample_id: Option<String>,
    pub prompt: Vec<Message>,
    pub completion: Option<Completion>,
    pub seen_titles: Vec<String>,
    pub groundtruth: Vec<GroundTruth>,
}

impl Row {
    /// The conversation as chat messages, ready for a chat template.
    pub fn chat_messages(&self) -> Vec<crate::model::chat::Message> {
        self.prompt.iter().map(|m| crate::model::chat::Message::new(m.role.clone(), m.content.clone())).collect()
    }
}

/// A row to score: the completion text and what it is scored against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoreRow {
    pub sample_id: Option<String>,
    pub completion: String,
    pub seen_titles: Vec<String>,
    pub groundtruth: Vec<GroundTruth>,
}

/// Reads dataset rows; `prompt`, `seen_titles` and `groundtruth_with_release_year` are required.
pub fn parse_dataset(source: &str, text: &str) -> Result<Vec<Row>, InputError> {
    jsonl_objects(source, text)
        .map(|entry| {
            let (line, obj) = entry?;
            let f = Fields { source, line, obj: &obj };
            Ok(Row {
                sample_id: f.sample_id()?,
                prompt: f.messages("prompt", f.required("prompt")?)?,
                completion: f.optional("completion").map(|v| f.completion(v)).transpose()?,
                seen_titles: f.seen_titles()?,
                groundtruth: f.groundtruth()?,
            })
        })
        .collect()
}

/// Reads rows to score; `completion` (a string, or messages with an assistant message),
/// `seen_titles` and `groundtruth_with_release_year` are required, anything else is ignored.
pub fn parse_score_rows(source: &str, text: &str) -> Result<Vec<ScoreRow>, InputError> {
    jsonl_objects(source, text)
        .map(|entry| {
            let (line, obj) = entry?;
            let f = Fields { source, line, obj: &obj };
            let completion = f.completion(f.required("completion")?)?;
            let completion = completion
                .scored_text()
                .ok_or_else(|| f.error("completion", "has no message with role \"assistant\""))?
                .to_string();
            Ok(ScoreRow {
                sample_id: f.sample_id()?,
                completion,
                seen_titles: f.seen_titles()?,
                groundtruth: f.groundtruth()?,
            })
        })
        .collect()
}

/// The non-blank lines of JSONL text as JSON objects, with their 1-based line numbers.
fn jsonl_objects<'a>(
    source: &'a str,
    text: &'a str,
) -> impl Iterator<Item = Result<(usize, Map<String, Value>), InputError>> + 'a {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.split('\n').enumerate().filter(|(_, l)| !l.trim().is_empty()).map(move |(i, l)| {
        let line = i + 1;
        match serde_json::from_str::<Value>(l) {
            Ok(Value::Object(obj)) => Ok((line, obj)),
            Ok(other) => Err(InputError::new(source, line, format!("expected a JSON object, found {}", kind(&other)))),
            Err(e) => Err(InputError::json(source, line, &e)),
        }
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The fields of one row, with errors that say where.
struct Fields<'a> {
    source: &'a str,
    line: usize,
    obj: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn error(&self, field: &str, what: impl std::fmt::Display) -> InputError {
        InputError::new(self.source, self.line, format!("field `{field}` {what}"))
    }

    /// Absent and `null` are the same: not given.
    fn optional(&self, field: &str) -> Option<&'a Value> {
        self.obj.get(field).filter(|v| !v.is_null())
    }

    fn required(&self, field: &str) -> Result<&'a Value, InputError> {
        self.optional(field).ok_or_else(|| self.error(field, "is missing"))
    }

    fn list(&self, field: &str, v: &'a Value) -> Result<&'a [Value], InputError> {
        v.as_array().map(Vec::as_slice).ok_or_else(|| self.error(field, format!("must be a list, found {}", kind(v))))
    }

    fn sample_id(&self) -> Result<Option<String>, InputError> {
        match self.optional("sample_id") {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(v) => Err(self.error("sample_id", format!("must be a string, found {}", kind(v)))),
        }
    }

    fn messages(&self, field: &str, v: &'a Value) -> Result<Vec<Message>, InputError> {
        let list = self.list(field, v)?;
        list.iter()
            .enumerate()
            .map(|(i, m)| {
                let text = |key: &str| match m.get(key) {
                    Some(Value::String(s)) => Ok(s.clone()),
                    Some(other) => Err(self
                        .error(field, format!("message {}: `{key}` must be a string, found {}", i + 1, kind(other)))),
                    None => Err(self.error(field, format!("message {}: `{key}` is missing", i + 1))),
                };
                if !m.is_object() {
                    return Err(self.error(field, format!("message {} must be an object, found {}", i + 1, kind(m))));
                }
                Ok(Message { role: text("role")?, content: text("content")? })
            })
            .collect()
    }

    fn completion(&self, v: &'a Value) -> Result<Completion, InputError> {
        match v {
            Value::String(s) => Ok(Completion::Text(s.clone())),
            Value::Array(_) => Ok(Completion::Messages(self.messages("completion", v)?)),
            other => {
                Err(self.error("completion", format!("must be a string or a list of messages, found {}", kind(other))))
            }
        }
    }

    fn seen_titles(&self) -> Result<Vec<String>, InputError> {
        const FIELD: &str = "seen_titles";
        self.list(FIELD, self.required(FIELD)?)?
            .iter()
            .enumerate()
            .map(|(i, t)| match t {
                Value::String(s) => Ok(s.clone()),
                other => Err(self.error(FIELD, format!("item {} must be a string, found {}", i + 1, kind(other)))),
            })
            .collect()
    }

    fn groundtruth(&self) -> Result<Vec<GroundTruth>, InputError> {
        const FIELD: &str = "groundtruth_with_release_year";
        self.list(FIELD, self.required(FIELD)?)?
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                let bad = || self.error(FIELD, format!("item {} must be [title, \"year\"], found {entry}", i + 1));
                let Some([Value::String(title), year]) = entry.as_array().map(Vec::as_slice) else {
                    return Err(bad());
                };
                // The schema has string years; an integer is what `str(year)` would have given.
                let year = match year {
                    Value::String(s) => s.clone(),
                    Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
                    _ => return Err(bad()),
                };
                Ok(GroundTruth { title: title.clone(), year })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROW: &str = r#"{"sample_id": "train_2", "prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Heat (1995)"}], "seen_titles": ["Up"], "groundtruth_with_release_year": [["Heat", "1995"]]}"#;

    #[test]
    fn a_reddit_v2_row_reads_every_field() {
        let rows = parse_dataset("d.jsonl", &format!("{ROW}\n\n{ROW}\r\n")).unwrap();
        assert_eq!(rows.len(), 2, "blank lines are skipped, CRLF is fine");
        let r = &rows[0];
        assert_eq!(r.sample_id.as_deref(), Some("train_2"));
        assert_eq!(r.prompt, vec![Message { role: "user".into(), content: "Hi".into() }]);
        assert_eq!(r.completion.as_ref().and_then(Completion::scored_text), Some("Heat (1995)"));
        assert_eq!(r.seen_titles, vec!["Up".to_string()]);
        assert_eq!(r.groundtruth, vec![GroundTruth::new("Heat", "1995")]);
        assert_eq!(r.groundtruth[0].year_value(), Some(1995));
    }

    #[test]
    fn sample_id_and_completion_are_optional_in_the_dataset() {
        let text = r#"{"prompt": [], "seen_titles": [], "groundtruth_with_release_year": [], "extra": 1}"#;
        let rows = parse_dataset("d.jsonl", text).unwrap();
        assert_eq!(rows[0].sample_id, None);
        assert_eq!(rows[0].completion, None);
    }

    #[test]
    fn score_rows_take_a_string_or_the_assistant_message() {
        let text = concat!(
            r#"{"completion": "Up (2009)", "seen_titles": [], "groundtruth_with_release_year": [["Up", 2009]]}"#,
            "\n",
            r#"{"completion": [{"role": "system", "content": "x"}, {"role": "assistant", "content": "Heat (1995)"}], "seen_titles": [], "groundtruth_with_release_year": []}"#,
        );
        let rows = parse_score_rows("s.jsonl", text).unwrap();
        assert_eq!(rows[0].completion, "Up (2009)");
        assert_eq!(rows[0].groundtruth, vec![GroundTruth::new("Up", "2009")], "integer years are accepted");
        assert_eq!(rows[1].completion, "Heat (1995)");
    }

    #[test]
    fn malformed_rows_name_source_line_and_problem() {
        let cases = [
            ("{not json", "s.jsonl: line 2: invalid JSON: key must be a string (column 2)"),
            ("[1, 2]", "s.jsonl: line 2: expected a JSON object, found a list"),
            (
                r#"{"seen_titles": [], "groundtruth_with_release_year": []}"#,
                "s.jsonl: line 2: field `completion` is missing",
            ),
            (
                r#"{"completion": 5, "seen_titles": [], "groundtruth_with_release_year": []}"#,
                "s.jsonl: line 2: field `completion` must be a string or a list of messages, found a number",
            ),
            (
                r#"{"completion": [{"role": "user", "content": "x"}], "seen_titles": [], "groundtruth_with_release_year": []}"#,
                "s.jsonl: line 2: field `completion` has no message with role \"assistant\"",
            ),
            (
                r#"{"completion": [{"role": "assistant"}], "seen_titles": [], "groundtruth_with_release_year": []}"#,
                "s.jsonl: line 2: field `completion` message 1: `content` is missing",
            ),
            (
                r#"{"completion": "", "seen_titles": "Up", "groundtruth_with_release_year": []}"#,
                "s.jsonl: line 2: field `seen_titles` must be a list, found a string",
            ),
            (
                r#"{"completion": "", "seen_titles": [1], "groundtruth_with_release_year": []}"#,
                "s.jsonl: line 2: field `seen_titles` item 1 must be a string, found a number",
            ),
            (
                r#"{"completion": "", "seen_titles": [], "groundtruth_with_release_year": [["Up"]]}"#,
                "s.jsonl: line 2: field `groundtruth_with_release_year` item 1 must be [title, \"year\"], found [\"Up\"]",
            ),
            (
                r#"{"completion": "", "seen_titles": [], "groundtruth_with_release_year": [["Up", null]]}"#,
                "s.jsonl: line 2: field `groundtruth_with_release_year` item 1 must be [title, \"year\"], found [\"Up\",null]",
            ),
            (
                r#"{"completion": "", "seen_titles": [], "groundtruth_with_release_year": [], "sample_id": []}"#,
                "s.jsonl: line 2: field `sample_id` must be a string, found a list",
            ),
        ];
        let good = r#"{"completion": "", "seen_titles": [], "groundtruth_with_release_year": []}"#;
        for (bad, want) in cases {
            let e = parse_score_rows("s.jsonl", &format!("{good}\n{bad}\n{good}")).unwrap_err();
            assert_eq!(e.to_string(), want);
        }
        let e = parse_dataset("d.jsonl", r#"{"seen_titles": [], "groundtruth_with_release_year": []}"#).unwrap_err();
        assert_eq!(e.to_string(), "d.jsonl: line 1: field `prompt` is missing");
    }

    #[test]
    fn unparsable_ground_truth_years_are_kept_but_never_match() {
        let g = GroundTruth::new("Up", "unknown");
        assert_eq!(g.year_value(), None);
        assert_eq!(GroundTruth::new("Up", " 2009 ").year_value(), Some(2009));
    }
}

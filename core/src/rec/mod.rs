//! The recommendation domain's scoring side: catalog, dataset rows, the completion parser, the
//! per-rank rewards and the evaluation metrics of Rank-GRPO (see `docs/DOMAIN.md`).
//!
//! Everything takes text, never paths, so it runs the same in the CLI and in the browser.

pub mod arrow;
pub mod budget;
pub mod catalog;
pub mod compare;
pub mod dataset;
pub mod evaluation;
pub mod metrics;
pub mod movielens;
pub mod parse;
pub mod reward;
pub mod text;

#[cfg(all(test, not(target_arch = "wasm32")))]
mod proptests;
#[cfg(all(test, not(target_arch = "wasm32")))]
mod real_data_tests;

use std::fmt;

pub use catalog::Catalog;
pub use dataset::{Completion, GroundTruth, Message, Row, ScoreRow, parse_dataset, parse_score_rows};
pub use metrics::{KS, MeanSe, Metrics, evaluate, mean_se};
pub use parse::parse_completion;
pub use reward::{MatchConfig, dcg, relevance, reward_exp_inf, reward_log};

/// One recommendation as parsed: a title and a release year.
/// A typed conversation phrased as Reddit-v2 rows phrase it: the wrapper instruction, then the
/// turns (`USER: …` / `SYSTEM: …` lines; plain text counts as one user turn).
pub fn conversation_prompt(conversation: &str) -> String {
    let turns = conversation.trim();
    if turns.starts_with("USER:") || turns.starts_with("SYSTEM:") {
        format!("{}{turns}\n", movielens::PROMPT_WRAPPER)
    } else {
        format!("{}USER: {turns}\n", movielens::PROMPT_WRAPPER)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Item {
    pub title: String,
    pub year: i64,
}

/// Where in an input a problem was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Whole,
    /// 1-based line number.
    Line(usize),
    /// 1-based position in a JSON list.
    Entry(usize),
}

/// Bad input: names the source (a file name or other label), where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InputError {
    pub origin: String,
    pub location: Location,
    pub message: String,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Location::Whole => write!(f, "{}: {}", self.origin, self.message),
            Location::Line(n) => write!(f, "{}: line {n}: {}", self.origin, self.message),
            Location::Entry(n) => write!(f, "{}: entry {n}: {}", self.origin, self.message),
        }
    }
}

impl InputError {
    pub fn new(origin: &str, line: usize, message: impl Into<String>) -> Self {
        Self { origin: origin.to_string(), location: Location::Line(line), message: message.into() }
    }

    pub fn whole(origin: &str, message: impl Into<String>) -> Self {
        Self { origin: origin.to_string(), location: Location::Whole, message: message.into() }
    }

    /// `index` is 0-based; the message counts from 1.
    pub fn entry(origin: &str, index: usize, message: impl Into<String>) -> Self {
        Self { origin: origin.to_string(), location: Location::Entry(index + 1), message: message.into() }
    }

    /// A JSON syntax or type error at `line` of the source. serde_json's own "at line L column C"
    /// counts within the text it was given (for JSONL, always line 1), so only the column is kept.
    pub(crate) fn json(origin: &str, line: usize, e: &serde_json::Error) -> Self {
        let full = e.to_string();
        let what = full.rfind(" at line ").map_or(full.as_str(), |i| &full[..i]);
        Self::new(origin, line.max(1), format!("invalid JSON: {what} (column {})", e.column()))
    }
}

/// Bytes of a text file as UTF-8; an invalid byte is reported with its line (and its byte in
/// the line), as every other data error is.
pub fn utf8_text<'a>(source: &str, bytes: &'a [u8]) -> Result<&'a str, InputError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let valid = &bytes[..e.valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = valid.len() - valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) + 1;
        InputError::new(source, line, format!("not valid UTF-8 text (byte {column} of the line)"))
    })
}

#[cfg(test)]
mod utf8_tests {
    use super::*;

    #[test]
    fn invalid_utf8_names_its_line_and_byte() {
        assert_eq!(utf8_text("a.jsonl", "é\n{}\n".as_bytes()), Ok("é\n{}\n"));
        let e = utf8_text("a.jsonl", b"{\"x\": 1}\n{}\n{\"y\": \"\xff\"}\n").unwrap_err();
        assert_eq!(e.to_string(), "a.jsonl: line 3: not valid UTF-8 text (byte 8 of the line)");
        assert_eq!(utf8_text("b", b"\xc3").unwrap_err().location, Location::Line(1), "a cut multi-byte character");
    }
}

#[cfg(test)]
mod conversation_prompt_tests {
    use super::*;

    #[test]
    fn typed_conversations_are_phrased_like_reddit_v2_rows() {
        let plain = conversation_prompt("  a movie like Heat?\n");
        assert_eq!(plain, format!("{}USER: a movie like Heat?\n", movielens::PROMPT_WRAPPER));
        let turns = "USER: a heist movie\nSYSTEM: Heat (1995)\nUSER: older ones?";
        assert_eq!(conversation_prompt(turns), format!("{}{turns}\n", movielens::PROMPT_WRAPPER));
        // The real rows start the same way (core/src/rec/real_data_tests.rs checks the wrapper).
        assert!(plain.starts_with("Pretend you are a movie recommender system."));
    }
}

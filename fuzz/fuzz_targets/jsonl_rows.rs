//! Data files on arbitrary bytes: UTF-8 decoding, Reddit-v2 rows, rows to score and catalogs.
//! Never a panic; every error names a line that exists.
#![no_main]

use convrec_core::rec::{Catalog, InputError, Location, parse_dataset, parse_score_rows, utf8_text};
use libfuzzer_sys::fuzz_target;

fn line_exists(e: &InputError, text: &str) {
    if let Location::Line(n) = e.location {
        assert!(n >= 1 && n <= text.split('\n').count(), "{e}");
    }
}

fuzz_target!(|data: &[u8]| {
    let text = match utf8_text("fuzz.jsonl", data) {
        Ok(text) => text,
        Err(e) => {
            let lossy = String::from_utf8_lossy(data);
            return line_exists(&e, &lossy);
        }
    };
    if let Err(e) = parse_dataset("fuzz.jsonl", text) {
        line_exists(&e, text);
    }
    if let Err(e) = parse_score_rows("fuzz.jsonl", text) {
        line_exists(&e, text);
    }
    if let Err(e) = Catalog::parse("fuzz.tsv", text) {
        line_exists(&e, text);
    }
});

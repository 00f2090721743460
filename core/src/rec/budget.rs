//! How many new tokens a full list needs. A list cut at the token budget loses its last ranks
//! (they never exist, so Recall@20 = Recall@15 and the "exactly 20 items" shaping never fires),
//! so evaluation and RL derive their default budget from the data instead of guessing.

use super::{Row, parse_completion};
use crate::model::text::{ChatText, TextError};

/// Rows looked at: enough for a stable maximum, few enough to tokenise in a moment.
const SAMPLE_ROWS: usize = 4000;

/// New tokens for a `rec_num`-item list in the rows' own style: each demonstration's tokens per
/// line (its end-of-turn included) scaled to `rec_num` lines; the longest of them plus 10% and 8
/// tokens, rounded up to a multiple of 8. Rows without a demonstration fall back on their ground
/// truth written as `Title (Year)` lines (plus 25%: real answers pick longer titles too). `None`
/// when the rows have neither.
pub fn list_token_budget(text: &ChatText, rows: &[Row], rec_num: usize) -> Result<Option<usize>, TextError> {
    let mut longest: Option<f64> = None;
    let mut keep = |estimate: f64| longest = Some(longest.map_or(estimate, |l: f64| l.max(estimate)));
    let demonstrations: Vec<&str> =
        rows.iter().take(SAMPLE_ROWS).filter_map(|r| r.completion.as_ref()?.scored_text()).collect();
    for demo in &demonstrations {
        let lines = demo.lines().filter(|l| !l.trim().is_empty()).count();
        if lines == 0 || parse_completion(demo).is_empty() {
            continue;
        }
        let tokens = text.encode(demo)?.len() + 1;
        keep(tokens as f64 / lines as f64 * rec_num as f64 * 1.1);
    }
    if demonstrations.is_empty() {
        for row in rows.iter().take(SAMPLE_ROWS).filter(|r| !r.groundtruth.is_empty()) {
            let list: Vec<String> = row.groundtruth.iter().map(|g| format!("{} ({})", g.title, g.year)).collect();
            let tokens = text.encode(&list.join("\n"))?.len() + 1;
            keep(tokens as f64 / list.len() as f64 * rec_num as f64 * 1.25);
        }
    }
    Ok(longest.map(|l| (l.ceil() as usize + 8).next_multiple_of(8)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rec::{Completion, GroundTruth, Message};

    fn text() -> ChatText {
        crate::testing::byte_level_chat_text()
    }

    fn row(completion: Option<&str>, truth: &[(&str, &str)]) -> Row {
        Row {
            sample_id: None,
            prompt: vec![Message { role: "user".into(), content: "hi".into() }],
            completion: completion.map(|c| Completion::Text(c.into())),
            seen_titles: vec![],
            groundtruth: truth.iter().map(|(t, y)| GroundTruth::new(*t, *y)).collect(),
        }
    }

    #[test]
    fn budgets_scale_the_longest_demonstration_to_a_full_list() {
        let t = text();
        // Byte-level tokens: "Up (2009)" is 9 bytes; with newlines and the end token, 2 lines of a
        // 3-line answer cost (9 + 1 + 11 + 1 + 12 + 1) = 35 tokens over 3 lines.
        let rows = [row(Some("Up (2009)\nHeat (1995)\nAlien (1979)"), &[]), row(Some("Up (2009)"), &[])];
        let per_line = 35.0 / 3.0;
        let want = ((per_line * 20.0 * 1.1f64).ceil() as usize + 8).next_multiple_of(8);
        assert_eq!(list_token_budget(&t, &rows, 20).unwrap(), Some(want));
        // A longer style raises it; a list of 5 needs a quarter of it.
        let long = [row(Some("The Shawshank Redemption (1994)\nUp (2009)"), &[])];
        assert!(list_token_budget(&t, &long, 20).unwrap().unwrap() > want);
        assert!(list_token_budget(&t, &rows, 5).unwrap().unwrap() < want / 2);
    }

    #[test]
    fn rows_without_demonstrations_use_their_ground_truth() {
        let t = text();
        let rows = [row(None, &[("Heat", "1995"), ("Up", "2009")])];
        // "Heat (1995)\nUp (2009)" = 21 bytes + the end token, over 2 lines.
        let want = ((22.0 / 2.0 * 20.0 * 1.25f64).ceil() as usize + 8).next_multiple_of(8);
        assert_eq!(list_token_budget(&t, &rows, 20).unwrap(), Some(want));
        assert_eq!(list_token_budget(&t, &[row(None, &[])], 20).unwrap(), None);
    }
}

//! Properties over arbitrary input: the parser and scorers never panic and stay in range.

use proptest::prelude::*;

use super::reward::{MatchConfig, discount};
use super::{Catalog, GroundTruth, Item, evaluate, parse_completion, relevance, reward_exp_inf, reward_log};

/// Text made of the characters the parser reacts to, so that the interesting paths (markers,
/// quotes, parentheses, Unicode digits and spaces) are hit often, not just arbitrary strings.
fn tricky_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\n".to_string()),
        Just(" (1999)".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("1. ".to_string()),
        Just("**".to_string()),
        Just("#".to_string()),
        Just("- ".to_string()),
        Just("、".to_string()),
        Just("\u{3000}".to_string()),
        Just("\u{1c}".to_string()),
        Just("\r".to_string()),
        Just("١٩٩٩".to_string()),
        Just("ß".to_string()),
        "[a-zA-Z0-9 ]{1,6}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), tricky_text()]
}

/// Completion text, ground truth `(title, year text)`, seen titles, catalog pairs.
type Scenario = (String, Vec<(String, String)>, Vec<String>, Vec<(String, i64)>);

fn scenario() -> impl Strategy<Value = Scenario> {
    let title =
        prop_oneof![Just("Heat".to_string()), Just("heat".to_string()), Just("Up".to_string()), "[a-zA-Zß ]{0,5}"];
    let year = 1990i64..2000;
    (
        prop::collection::vec((title.clone(), year.clone()), 0..30)
            .prop_map(|v| v.iter().map(|(t, y)| format!("{t} ({y})\n")).collect::<String>()),
        prop::collection::vec(
            (title.clone(), prop_oneof![year.clone().prop_map(|y| y.to_string()), any::<String>()]),
            0..6,
        ),
        prop::collection::vec(title.clone(), 0..3),
        prop::collection::vec((title, year), 0..10),
    )
}

proptest! {
    #[test]
    fn the_parser_never_panics_and_yields_at_most_one_item_per_line(text in any_text()) {
        let items = parse_completion(&text);
        prop_assert!(items.len() <= text.split('\n').count());
        for it in &items {
            prop_assert!((0..=9999).contains(&it.year), "a 4-digit year: {}", it.year);
        }
    }

    #[test]
    fn rewards_and_metrics_stay_in_range((text, truth, seen, cat) in scenario()) {
        let items: Vec<Item> = parse_completion(&text);
        let groundtruth: Vec<GroundTruth> = truth.iter().map(|(t, y)| GroundTruth::new(t.as_str(), y.as_str())).collect();
        let mut catalog = Catalog::new();
        for (t, y) in &cat {
            catalog.insert(t.as_str(), *y);
        }
        let cfg = MatchConfig::default();
        let rel = relevance(&items, &groundtruth, &seen, &catalog, &cfg);
        prop_assert_eq!(rel.len(), 20);
        prop_assert!(rel.iter().all(|r| *r == 0.0 || *r == 1.0));
        prop_assert!(rel.iter().sum::<f64>() <= groundtruth.len() as f64, "each truth entry scores once");
        prop_assert!(rel.iter().skip(items.len()).all(|r| *r == 0.0), "no reward past the list");
        prop_assert_eq!(reward_exp_inf(&rel), rel.clone());
        let log = reward_log(&rel);
        for k in 0..20 {
            let max: f64 = (k..20).map(discount).sum();
            prop_assert!(log[k] >= 0.0 && log[k] <= max + 1e-12);
            if k + 1 < 20 {
                prop_assert!(log[k] >= log[k + 1], "non-increasing");
            }
        }
        let m = evaluate(&items, &groundtruth, &seen, &catalog, &cfg);
        for v in m.recall.iter().chain(&m.ndcg) {
            prop_assert!((0.0..=1.0 + 1e-12).contains(v), "{m:?}");
        }
        prop_assert!(m.recall.windows(2).all(|w| w[0] <= w[1]), "recall grows with k");
    }
}

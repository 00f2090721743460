//! The completion parser and scorer on arbitrary input: never a panic, and structural promises
//! kept (at most one item per line, 4-digit years, rewards of the right length and range).
#![no_main]

use convrec_core::rec::{Catalog, GroundTruth, MatchConfig, evaluate, parse_completion, relevance, reward_exp_inf, reward_log};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let items = parse_completion(&text);
    assert!(items.len() <= text.split('\n').count());
    for item in &items {
        assert!((0..=9999).contains(&item.year), "year {}", item.year);
    }
    let mut catalog = Catalog::new();
    if let Some(first) = items.first() {
        catalog.insert(first.title.clone(), first.year);
    }
    let gt: Vec<GroundTruth> = items.iter().take(3).map(|i| GroundTruth::new(i.title.to_lowercase(), i.year.to_string())).collect();
    let config = MatchConfig::default();
    let rel = relevance(&items, &gt, &[], &catalog, &config);
    let (exp, log) = (reward_exp_inf(&rel), reward_log(&rel));
    assert_eq!(exp.len(), config.rec_num);
    assert_eq!(log.len(), config.rec_num);
    assert!(exp.iter().all(|r| *r == 0.0 || *r == 1.0));
    let m = evaluate(&items, &gt, &[], &catalog, &config);
    assert!(m.recall.iter().chain(&m.ndcg).all(|v| (0.0..=1.0).contains(v)));
});

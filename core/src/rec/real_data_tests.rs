//! The scoring side on real Reddit-v2 rows: the 100 sample rows with the paper's catalog.
//!
//! Expectations are built independently of the parser and matcher, from plain string search over
//! the demonstration's lines, so a bug in either shows up as a mismatch.

use std::path::PathBuf;

use super::reward::MatchConfig;
use super::{Catalog, KS, Row, evaluate, parse_completion, parse_dataset, relevance, reward_exp_inf, reward_log};

/// The catalog row whose 3-digit year no completion line can ever parse.
const UNPARSABLE_LINE: &str = "The Wall (201)";

/// The shared data folder beside the workspace, or `None` (outside CI) when it is absent.
fn shared_data() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/reddit-v2");
    if dir.join("catalog.tsv").is_file() && dir.join("sample.jsonl").is_file() {
        return Some(dir);
    }
    assert!(!crate::testing::in_ci(), "CI=true but the shared Reddit-v2 data is missing at {}", dir.display());
    eprintln!("SKIPPED: the shared Reddit-v2 data is not at {}; under CI=true this fails", dir.display());
    None
}

fn load() -> Option<(Catalog, Vec<Row>)> {
    let dir = shared_data()?;
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"));
    let catalog = Catalog::parse("catalog.tsv", &read("catalog.tsv")).expect("the real catalog parses");
    let rows = parse_dataset("sample.jsonl", &read("sample.jsonl")).expect("the real rows parse");
    Some((catalog, rows))
}

fn demonstration(row: &Row) -> &str {
    row.completion.as_ref().and_then(|c| c.scored_text()).expect("every sample row has a demonstration")
}

/// The demonstration's lines that should parse: all but the 3-digit-year one.
fn parsable_lines(row: &Row) -> Vec<&str> {
    demonstration(row).split('\n').filter(|l| *l != UNPARSABLE_LINE).collect()
}

/// Independent `Title (Year)` split of a demonstration line.
fn split_line(line: &str) -> (&str, i64) {
    let (title, year) = line.rsplit_once(" (").expect("a demonstration line ends in (year)");
    (title, year.trim_end_matches(')').parse().expect("a numeric year"))
}

#[test]
fn the_real_catalog_has_every_row() {
    let Some((catalog, _)) = load() else { return };
    assert_eq!(catalog.len(), 7404);
    assert!(catalog.contains("The Wall", 201), "the 3-digit year is kept as data");
    assert!(catalog.contains("'71", 2014));
    assert!(catalog.contains("10 Cloverfield Lane", 2016));
}

#[test]
fn the_sample_rows_read_in_the_reddit_v2_schema() {
    let Some((_, rows)) = load() else { return };
    assert_eq!(rows.len(), 100);
    for r in &rows {
        assert!(r.sample_id.as_deref().is_some_and(|s| s.starts_with("train_")));
        assert_eq!(r.prompt.len(), 1);
        assert_eq!(r.prompt[0].role, "user");
        assert!(r.prompt[0].content.starts_with("Pretend you are a movie recommender system."));
        assert!(!r.groundtruth.is_empty());
        assert!(r.groundtruth.iter().all(|g| g.year_value().is_some()));
    }
}

#[test]
fn every_demonstration_parses_to_its_twenty_lines_except_the_3_digit_year() {
    let Some((_, rows)) = load() else { return };
    let mut with_unparsable = 0;
    for r in &rows {
        let text = demonstration(r);
        let lines = parsable_lines(r);
        let skipped = text.split('\n').count() - lines.len();
        with_unparsable += usize::from(skipped > 0);
        let items = parse_completion(text);
        assert_eq!(items.len(), 20 - skipped, "{:?}", r.sample_id);
        for (item, line) in items.iter().zip(&lines) {
            assert_eq!((item.title.as_str(), item.year), split_line(line), "{:?}", r.sample_id);
        }
    }
    assert_eq!(with_unparsable, 1, "exactly one sample row recommends The Wall (201)");
}

#[test]
fn demonstration_rewards_and_metrics_follow_the_ground_truth_positions() {
    let Some((catalog, rows)) = load() else { return };
    let cfg = MatchConfig::default();
    let mut total_hits = 0.0;
    for r in &rows {
        let lines = parsable_lines(r);
        // Each ground-truth item counts at the first unclaimed line that spells it exactly, when it
        // is not seen and is in the catalog.
        let mut expected = vec![0.0; 20];
        for g in &r.groundtruth {
            let year: i64 = g.year.parse().expect("numeric year");
            if r.seen_titles.contains(&g.title) || !catalog.contains(&g.title, year) {
                continue;
            }
            let wanted = format!("{} ({})", g.title, g.year);
            if let Some(pos) = (0..lines.len()).find(|&i| lines[i] == wanted && expected[i] == 0.0) {
                expected[pos] = 1.0;
            }
        }
        total_hits += expected.iter().sum::<f64>();

        let items = parse_completion(demonstration(r));
        let rel = relevance(&items, &r.groundtruth, &r.seen_titles, &catalog, &cfg);
        assert_eq!(reward_exp_inf(&rel), expected, "{:?}", r.sample_id);
        let log = reward_log(&rel);
        for (k, got) in log.iter().enumerate() {
            let want: f64 = (k..20).map(|j| expected[j] / if j == 0 { 1.0 } else { ((j + 2) as f64).log2() }).sum();
            assert!((got - want).abs() < 1e-12, "{:?} rank {}: {got} vs {want}", r.sample_id, k + 1);
        }

        // Every demonstration item is in the catalog and unseen, so evaluation keeps the list as
        // is and the hits are the same positions.
        let kept: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| {
                let (t, y) = split_line(l);
                !r.seen_titles.iter().any(|s| s == t) && catalog.contains(t, y)
            })
            .collect();
        assert_eq!(kept.len(), lines.len(), "{:?}", r.sample_id);
        let m = evaluate(&items, &r.groundtruth, &r.seen_titles, &catalog, &cfg);
        let n_gt = r.groundtruth.len() as f64;
        for (i, k) in KS.iter().enumerate() {
            let hits_k: f64 = expected[..*k].iter().sum();
            assert!((m.recall[i] - hits_k / n_gt).abs() < 1e-12, "{:?} recall@{k}", r.sample_id);
            let cut = (*k).min(kept.len());
            let d = |j: usize| if j == 0 { 1.0 } else { 1.0 / ((j + 2) as f64).log2() };
            let dcg: f64 = (0..cut).map(|j| expected[j] * d(j)).sum();
            let idcg: f64 = (0..cut.min(r.groundtruth.len())).map(d).sum();
            assert!((m.ndcg[i] - dcg / idcg).abs() < 1e-12, "{:?} ndcg@{k}", r.sample_id);
        }
    }
    // The sample's demonstrations contain 56 ground-truth hits in all: the test is not vacuous.
    assert_eq!(total_hits, 56.0);
}

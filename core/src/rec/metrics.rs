//! Evaluation metrics: Recall@k and NDCG@k (RANK_GRPO.md §4), and their mean with standard error.
//!
//! Unlike the training reward, evaluation compacts the list (seen and non-catalog items removed
//! before ranks are counted) and compares titles case-sensitively; both are the reference's choice.

use super::reward::{MatchConfig, discount};
use super::{Catalog, GroundTruth, Item};

/// The cut-offs reported.
pub const KS: [usize; 4] = [5, 10, 15, 20];

/// Recall and NDCG at each k of [`KS`], in that order.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Metrics {
    pub recall: [f64; 4],
    pub ndcg: [f64; 4],
}

/// The ranking metrics' names in report order: `recall@5`, `ndcg@5`, `recall@10`, ….
pub fn ranking_metric_names() -> Vec<String> {
    KS.iter().flat_map(|k| [format!("recall@{k}"), format!("ndcg@{k}")]).collect()
}

impl Metrics {
    /// `(name, value)` pairs in report order ([`ranking_metric_names`]).
    pub fn named(&self) -> Vec<(String, f64)> {
        let values = self.recall.iter().zip(&self.ndcg).flat_map(|(r, n)| [*r, *n]);
        ranking_metric_names().into_iter().zip(values).collect()
    }
}

/// Hits over the evaluated list: the first `rec_num` items, less seen titles (exact) and pairs
/// not in the catalog, compacted. Each ground-truth entry marks the first position with the
/// identical title and a year within the tolerance. Positions are not consumed: two ground-truth
/// entries may mark the same position (the reference sets, not adds, a hit).
pub fn hits(
    items: &[Item],
    groundtruth: &[GroundTruth],
    seen_titles: &[String],
    catalog: &Catalog,
    config: &MatchConfig,
) -> Vec<bool> {
    let kept: Vec<&Item> = items
        .iter()
        .take(config.rec_num)
        .filter(|it| !seen_titles.contains(&it.title) && catalog.contains(&it.title, it.year))
        .collect();
    let mut hits = vec![false; kept.len()];
    for g in groundtruth {
        // A year Python's int() rejects would crash the reference; here it simply never matches.
        let Some(year) = g.year_value() else { continue };
        let tolerance = config.year_tolerance.max(0).unsigned_abs();
        if let Some(pos) = kept.iter().position(|it| it.title == g.title && it.year.abs_diff(year) <= tolerance) {
            hits[pos] = true;
        }
    }
    hits
}

/// Hits in the first k positions over the number of ground-truth entries; 0 for an empty list or
/// no ground truth (the reference would divide by zero there).
pub fn recall_at_k(hits: &[bool], num_gt: usize, k: usize) -> f64 {
    if hits.is_empty() || num_gt == 0 {
        return 0.0;
    }
    hits.iter().take(k).filter(|h| **h).count() as f64 / num_gt as f64
}

/// DCG@k over IDCG@k, where the ideal list has the same length with `min(num_gt, len)` hits on
/// top; 0 for an empty list or no ground truth.
pub fn ndcg_at_k(hits: &[bool], num_gt: usize, k: usize) -> f64 {
    if hits.is_empty() || num_gt == 0 {
        return 0.0;
    }
    let cut = k.min(hits.len());
    let dcg: f64 = (0..cut).filter(|&i| hits[i]).map(discount).sum();
    let idcg: f64 = (0..cut.min(num_gt)).map(discount).sum();
    dcg / idcg
}

/// Recall and NDCG at every k of [`KS`] for one completion's items.
pub fn evaluate(
    items: &[Item],
    groundtruth: &[GroundTruth],
    seen_titles: &[String],
    catalog: &Catalog,
    config: &MatchConfig,
) -> Metrics {
    let hits = hits(items, groundtruth, seen_titles, catalog, config);
    let n = groundtruth.len();
    Metrics { recall: KS.map(|k| recall_at_k(&hits, n, k)), ndcg: KS.map(|k| ndcg_at_k(&hits, n, k)) }
}

/// A mean over samples with its standard error (sample standard deviation / √n).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanSe {
    pub mean: f64,
    pub se: f64,
    pub n: usize,
}

/// Mean and standard error; with fewer than two values the error is 0, with none the mean too.
pub fn mean_se(values: &[f64]) -> MeanSe {
    let n = values.len();
    if n == 0 {
        return MeanSe { mean: 0.0, se: 0.0, n };
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return MeanSe { mean, se: 0.0, n };
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    MeanSe { mean, se: (var / n as f64).sqrt(), n }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(list: &[(&str, i64)]) -> Vec<Item> {
        list.iter().map(|(t, y)| Item { title: t.to_string(), year: *y }).collect()
    }

    fn gt(list: &[(&str, &str)]) -> Vec<GroundTruth> {
        list.iter().map(|(t, y)| GroundTruth::new(*t, *y)).collect()
    }

    fn catalog(list: &[(&str, i64)]) -> Catalog {
        let mut c = Catalog::new();
        for (t, y) in list {
            c.insert(*t, *y);
        }
        c
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn recall_and_ndcg_worked_example() {
        // Hits at ranks 2 and 4 of a 6-item list, 3 ground-truth items.
        let h = [false, true, false, true, false, false];
        assert!(close(recall_at_k(&h, 3, 1), 0.0));
        assert!(close(recall_at_k(&h, 3, 2), 1.0 / 3.0));
        assert!(close(recall_at_k(&h, 3, 5), 2.0 / 3.0));
        assert!(close(recall_at_k(&h, 3, 20), 2.0 / 3.0), "k past the end");
        // DCG@5 = 1/log2(3) + 1/log2(5); IDCG@5 = 1 + 1/log2(3) + 1/log2(4)
        let dcg = 1.0 / 3f64.log2() + 1.0 / 5f64.log2();
        let idcg = 1.0 + 1.0 / 3f64.log2() + 0.5;
        assert!(close(ndcg_at_k(&h, 3, 5), dcg / idcg));
        assert!((ndcg_at_k(&h, 3, 5) - 0.498_190).abs() < 1e-6);
        // At k=2 the ideal has two hits: (1/log2 3) / (1 + 1/log2 3).
        assert!(close(ndcg_at_k(&h, 3, 2), (1.0 / 3f64.log2()) / (1.0 + 1.0 / 3f64.log2())));
    }

    #[test]
    fn the_ideal_list_has_as_many_hits_as_fit() {
        // 5 ground-truth items but only 2 positions: the ideal is [1, 1], so a perfect list is 1.
        assert!(close(ndcg_at_k(&[true, true], 5, 10), 1.0));
        assert!(close(recall_at_k(&[true, true], 5, 10), 0.4));
        assert!(close(ndcg_at_k(&[true], 1, 5), 1.0));
        assert!(close(ndcg_at_k(&[false, true], 1, 5), 1.0 / 3f64.log2()));
    }

    #[test]
    fn empty_lists_and_empty_truth_score_zero() {
        assert_eq!(recall_at_k(&[], 3, 5), 0.0);
        assert_eq!(ndcg_at_k(&[], 3, 5), 0.0);
        assert_eq!(recall_at_k(&[true], 0, 5), 0.0);
        assert_eq!(ndcg_at_k(&[true], 0, 5), 0.0);
        let m = evaluate(&[], &gt(&[("Heat", "1995")]), &[], &Catalog::new(), &MatchConfig::default());
        assert_eq!(m, Metrics::default());
    }

    #[test]
    fn seen_and_non_catalog_items_are_dropped_and_the_list_compacts() {
        let cat = catalog(&[("Heat", 1995), ("Up", 2009), ("Alien", 1979)]);
        let recs = items(&[("Up", 2009), ("Not In Catalog", 2000), ("Alien", 1979), ("Heat", 1995)]);
        let seen = vec!["Up".to_string()];
        let h = hits(&recs, &gt(&[("Heat", "1995")]), &seen, &cat, &MatchConfig::default());
        assert_eq!(h, vec![false, true], "Up (seen) and the non-catalog item leave [Alien, Heat]");
        let m = evaluate(&recs, &gt(&[("Heat", "1995")]), &seen, &cat, &MatchConfig::default());
        assert!(close(m.recall[0], 1.0));
        assert!(close(m.ndcg[0], 1.0 / 3f64.log2()), "rank 2 after compaction, not rank 4");
    }

    #[test]
    fn only_the_first_twenty_items_are_evaluated() {
        let mut recs: Vec<(&str, i64)> = vec![("Up", 2009); 20];
        recs.push(("Heat", 1995));
        let cat = catalog(&[("Up", 2009), ("Heat", 1995)]);
        let h = hits(&items(&recs), &gt(&[("Heat", "1995")]), &[], &cat, &MatchConfig::default());
        assert_eq!(h, vec![false; 20]);
    }

    #[test]
    fn titles_match_case_sensitively_and_years_within_two() {
        let cat = catalog(&[("Heat", 1997), ("heat", 1995), ("Heat", 1998)]);
        let cfg = MatchConfig::default();
        let truth = gt(&[("Heat", "1995")]);
        assert_eq!(hits(&items(&[("heat", 1995)]), &truth, &[], &cat, &cfg), vec![false]);
        assert_eq!(hits(&items(&[("Heat", 1997)]), &truth, &[], &cat, &cfg), vec![true]);
        assert_eq!(hits(&items(&[("Heat", 1998)]), &truth, &[], &cat, &cfg), vec![false]);
    }

    #[test]
    fn one_hit_per_truth_item_at_its_first_position() {
        let cat = catalog(&[("Heat", 1995), ("Heat", 1996)]);
        let cfg = MatchConfig::default();
        // A repeated recommendation: only the first copy is a hit.
        let h = hits(&items(&[("Heat", 1995), ("Heat", 1995)]), &gt(&[("Heat", "1995")]), &[], &cat, &cfg);
        assert_eq!(h, vec![true, false]);
        // Two truth entries that both match position 1 mark it once; recall is 1/2.
        let truth = gt(&[("Heat", "1995"), ("Heat", "1996")]);
        let recs = items(&[("Heat", 1995), ("Heat", 1996)]);
        assert_eq!(hits(&recs, &truth, &[], &cat, &cfg), vec![true, false]);
        assert!(close(evaluate(&recs, &truth, &[], &cat, &cfg).recall[3], 0.5));
    }

    #[test]
    fn metrics_are_named_in_report_order() {
        let names: Vec<String> = Metrics::default().named().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["recall@5", "ndcg@5", "recall@10", "ndcg@10", "recall@15", "ndcg@15", "recall@20", "ndcg@20"]
        );
    }

    #[test]
    fn mean_with_standard_error() {
        let m = mean_se(&[1.0, 2.0, 3.0, 4.0]);
        assert!(close(m.mean, 2.5));
        // Sample variance 5/3; se = sqrt(5/3 / 4).
        assert!(close(m.se, (5.0f64 / 12.0).sqrt()));
        assert_eq!(m.n, 4);
        assert_eq!(mean_se(&[0.5]), MeanSe { mean: 0.5, se: 0.0, n: 1 });
        assert_eq!(mean_se(&[]), MeanSe { mean: 0.0, se: 0.0, n: 0 });
    }
}

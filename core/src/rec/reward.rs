//! Per-rank relevance and the training rewards built from it (RANK_GRPO.md §3).

use std::collections::{HashMap, HashSet};

use super::text::title_key;
use super::{Catalog, GroundTruth, Item};

/// How many ranks are scored and how far a year may be off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchConfig {
    /// Ranks scored (the prompt asks for 20); later items are ignored, missing ones score 0.
    pub rec_num: usize,
    /// A recommendation's year may differ from the ground truth's by at most this much.
    pub year_tolerance: i64,
}

impl Default for MatchConfig {
    fn default() -> Self {
        Self { rec_num: 20, year_tolerance: 2 }
    }
}

/// The rank discount `d_k` for 0-based position `pos`: 1 at the top, `1/log2(k+1)` at rank k > 1.
pub fn discount(pos: usize) -> f64 {
    if pos == 0 { 1.0 } else { 1.0 / ((pos + 2) as f64).log2() }
}

/// `rel_k` for k < `rec_num` (0 past the list's end).
///
/// A position is relevant when its title is not seen, its exact `(title, year)` is in the catalog,
/// and an unconsumed ground-truth entry has the same case-folded, whitespace-collapsed title and a
/// year in the window, tried nearest first (y, y+1, y−1, y+2, y−2). The matched entry is consumed,
/// so a repeated recommendation scores once, at its first position.
pub fn relevance(
    items: &[Item],
    groundtruth: &[GroundTruth],
    seen_titles: &[String],
    catalog: &Catalog,
    config: &MatchConfig,
) -> Vec<f64> {
    let seen: HashSet<&str> = seen_titles.iter().map(String::as_str).collect();
    // Ground truth as a multiset: title key → year → how many entries remain unconsumed. Entries
    // whose year is not an integer are left out, as the reference does.
    let mut remaining: HashMap<String, HashMap<i64, usize>> = HashMap::new();
    for g in groundtruth {
        if let Some(year) = g.year_value() {
            *remaining.entry(title_key(&g.title)).or_default().entry(year).or_default() += 1;
        }
    }
    let mut rel = vec![0.0; config.rec_num];
    for (pos, item) in items.iter().take(config.rec_num).enumerate() {
        if seen.contains(item.title.as_str()) || !catalog.contains(&item.title, item.year) {
            continue;
        }
        let Some(years) = remaining.get_mut(&title_key(&item.title)) else {
            continue;
        };
        let window = std::iter::once(Some(item.year))
            .chain((1..=config.year_tolerance).flat_map(|d| [item.year.checked_add(d), item.year.checked_sub(d)]));
        for year in window.flatten() {
            if let Some(count) = years.get_mut(&year).filter(|c| **c > 0) {
                *count -= 1;
                rel[pos] = 1.0;
                break;
            }
        }
    }
    rel
}

/// Rank-GRPO (exp∞), the default: each rank is rewarded by its own relevance.
pub fn reward_exp_inf(rel: &[f64]) -> Vec<f64> {
    rel.to_vec()
}

/// Rank-GRPO (log): rank k gets the discounted relevance of itself and every later rank,
/// `r_k = Σ_{j≥k} rel_j·d_j`, with the absolute discounts (not re-based at k).
pub fn reward_log(rel: &[f64]) -> Vec<f64> {
    // Summed from the end so that a rank with no later hits gets exactly 0 (the reference's
    // `total − prefix` can leave a rounding residue; values otherwise agree to ~1e-16).
    let mut out = vec![0.0; rel.len()];
    let mut acc = 0.0;
    for (pos, r) in rel.iter().enumerate().rev() {
        acc += r * discount(pos);
        out[pos] = acc;
    }
    out
}

/// The sequence-level GRPO reward: DCG over all scored ranks (= `reward_log(rel)[0]`).
pub fn dcg(rel: &[f64]) -> f64 {
    rel.iter().enumerate().map(|(pos, r)| r * discount(pos)).sum()
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

    fn rel(recs: &[(&str, i64)], truth: &[(&str, &str)], seen: &[&str], cat: &[(&str, i64)]) -> Vec<f64> {
        let seen: Vec<String> = seen.iter().map(|s| s.to_string()).collect();
        let cfg = MatchConfig { rec_num: 5, year_tolerance: 2 };
        relevance(&items(recs), &gt(truth), &seen, &catalog(cat), &cfg)
    }

    #[test]
    fn an_exact_hit_scores_at_its_position_and_the_vector_is_rec_num_long() {
        let r = rel(&[("Up", 2009), ("Heat", 1995)], &[("Heat", "1995")], &[], &[("Up", 2009), ("Heat", 1995)]);
        assert_eq!(r, vec![0.0, 1.0, 0.0, 0.0, 0.0]);
        let cfg = MatchConfig::default();
        assert_eq!(relevance(&[], &[], &[], &Catalog::new(), &cfg), vec![0.0; 20]);
    }

    #[test]
    fn items_past_rec_num_are_ignored() {
        let recs: Vec<(&str, i64)> = vec![("Up", 2009); 5].into_iter().chain([("Heat", 1995)]).collect();
        let r = rel(&recs, &[("Heat", "1995")], &[], &[("Up", 2009), ("Heat", 1995)]);
        assert_eq!(r, vec![0.0; 5]);
    }

    #[test]
    fn titles_match_after_casefold_and_whitespace_collapse() {
        // The catalog holds the recommendation's spelling; the ground truth differs in case,
        // ß/ss and spacing.
        let cat = [("Die Straße", 1999), ("the  matrix", 1999)];
        let r = rel(
            &[("Die Straße", 1999), ("the  matrix", 1999)],
            &[("DIE STRASSE", "1999"), (" The Matrix ", "1999")],
            &[],
            &cat,
        );
        assert_eq!(r, vec![1.0, 1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn years_within_two_match_and_beyond_do_not() {
        let cat = [("Heat", 1993), ("Heat", 1997), ("Heat", 1998)];
        assert_eq!(rel(&[("Heat", 1993)], &[("Heat", "1995")], &[], &cat)[0], 1.0);
        assert_eq!(rel(&[("Heat", 1997)], &[("Heat", "1995")], &[], &cat)[0], 1.0);
        assert_eq!(rel(&[("Heat", 1998)], &[("Heat", "1995")], &[], &cat)[0], 0.0);
        let exact = MatchConfig { rec_num: 1, year_tolerance: 0 };
        let r = relevance(&items(&[("Heat", 1997)]), &gt(&[("Heat", "1995")]), &[], &catalog(&cat), &exact);
        assert_eq!(r, vec![0.0], "tolerance 0 means the exact year");
    }

    #[test]
    fn the_year_window_is_tried_nearest_first_and_consumes_what_it_matched() {
        // Ground truth: Heat 2000 and Heat 2001. The first rec (2000) takes 2000 exactly; the
        // second (2002) then tries 2002, 2003, 2001 → takes 2001; the third (2001) finds 2001,
        // 2002, 2000, 2003, 1999 all gone.
        let cat = [("Heat", 2000), ("Heat", 2001), ("Heat", 2002)];
        let truth = [("Heat", "2000"), ("Heat", "2001")];
        assert_eq!(
            rel(&[("Heat", 2000), ("Heat", 2002), ("Heat", 2001)], &truth, &[], &cat),
            vec![1.0, 1.0, 0.0, 0.0, 0.0]
        );
        // Order matters: y+1 is tried before y−1. Rec 2001 with GT {2000, 2002} consumes 2002, so
        // a later rec 2003 (window 2003, 2004, 2002, 2005, 2001) finds nothing, while rec 1999
        // (1999, 2000, …) still finds 2000.
        let cat = [("Heat", 2001), ("Heat", 2003), ("Heat", 1999)];
        let truth = [("Heat", "2000"), ("Heat", "2002")];
        assert_eq!(rel(&[("Heat", 2001), ("Heat", 2003)], &truth, &[], &cat)[..2], [1.0, 0.0]);
        assert_eq!(rel(&[("Heat", 2001), ("Heat", 1999)], &truth, &[], &cat)[..2], [1.0, 1.0]);
    }

    #[test]
    fn a_duplicate_recommendation_scores_once_unless_the_truth_repeats() {
        let cat = [("Heat", 1995)];
        assert_eq!(rel(&[("Heat", 1995), ("Heat", 1995)], &[("Heat", "1995")], &[], &cat)[..2], [1.0, 0.0]);
        let twice = [("Heat", "1995"), ("heat", "1995")];
        assert_eq!(rel(&[("Heat", 1995), ("Heat", 1995)], &twice, &[], &cat)[..2], [1.0, 1.0]);
    }

    #[test]
    fn seen_titles_are_excluded_exactly_and_consume_nothing() {
        let cat = [("Heat", 1995)];
        assert_eq!(rel(&[("Heat", 1995), ("Heat", 1995)], &[("Heat", "1995")], &["Heat"], &cat)[..2], [0.0, 0.0]);
        // Exact string match: a differently cased seen title does not exclude.
        assert_eq!(rel(&[("Heat", 1995)], &[("Heat", "1995")], &["heat"], &cat)[0], 1.0);
    }

    #[test]
    fn items_outside_the_catalog_score_nothing_and_consume_nothing() {
        // "heat" is not in the catalog (case-sensitive), so the later "Heat" still finds its truth.
        let cat = [("Heat", 1995)];
        assert_eq!(rel(&[("heat", 1995), ("Heat", 1995)], &[("Heat", "1995")], &[], &cat)[..2], [0.0, 1.0]);
        // The catalog pair must be exact: Heat 1996 is within the window but not in the catalog.
        assert_eq!(rel(&[("Heat", 1996)], &[("Heat", "1995")], &[], &cat)[0], 0.0);
    }

    #[test]
    fn ground_truth_years_are_read_like_python_int() {
        let cat = [("Heat", 1995)];
        assert_eq!(rel(&[("Heat", 1995)], &[("Heat", " 1995 ")], &[], &cat)[0], 1.0);
        assert_eq!(rel(&[("Heat", 1995)], &[("Heat", "١٩٩٥")], &[], &cat)[0], 1.0);
        assert_eq!(rel(&[("Heat", 1995)], &[("Heat", "n/a")], &[], &cat)[0], 0.0);
    }

    #[test]
    fn log_reward_sums_absolute_discounts_from_each_rank_on() {
        let d2 = 1.0 / 3f64.log2(); // rank 2
        let d4 = 1.0 / 5f64.log2(); // rank 4
        let rel = [0.0, 1.0, 0.0, 1.0, 0.0];
        let r = reward_log(&rel);
        let want = [d2 + d4, d2 + d4, d4, d4, 0.0];
        for (got, want) in r.iter().zip(want) {
            assert!((got - want).abs() < 1e-12, "{r:?}");
        }
        assert_eq!(r[4], 0.0, "exactly zero after the last hit");
        assert!((dcg(&rel) - r[0]).abs() < 1e-15);
        assert_eq!(reward_log(&[1.0]), vec![1.0], "d_1 = 1");
        assert!((discount(1) - 0.630_929_753_571_457_4).abs() < 1e-15);
        assert!((discount(19) - 1.0 / 21f64.log2()).abs() < 1e-15);
    }

    #[test]
    fn exp_inf_reward_is_the_relevance() {
        assert_eq!(reward_exp_inf(&[0.0, 1.0, 1.0]), vec![0.0, 1.0, 1.0]);
    }
}

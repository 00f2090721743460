//! From sampled completions to what the objective reads: each completion's rewards (per rank for
//! Rank-GRPO, the sequence DCG for GRPO/GSPO), its token segmentation, and the statistics a
//! training step reports (mean reward per rank, sampled NDCG@20, overflow/early-stop/cut rates).
//! Host-side and deterministic, so the native trainer and the browser share it.

use super::advantage::{Level, Segmented};
use super::segment::{completion_len, item_ids};
use crate::rec::{Catalog, MatchConfig, Row, dcg, evaluate, parse_completion, relevance, reward_exp_inf, reward_log};

/// How per-rank rewards are made from per-rank relevance (§3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardKind {
    /// r_k = rel_k: each rank is rewarded for its own hit.
    ExpInf,
    /// r_k = Σ_{j ≥ k} rel_j / log2(j + 2): each rank also owns the discounted hits after it.
    Log,
}

impl std::str::FromStr for RewardKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "exp_inf" | "exp-inf" => Ok(RewardKind::ExpInf),
            "log" => Ok(RewardKind::Log),
            other => Err(format!("unknown reward `{other}` (exp_inf or log)")),
        }
    }
}

/// One sampled completion, scored.
#[derive(Clone, Debug)]
pub struct ScoredCompletion {
    /// Tokens the loss covers: up to and including the first end token (all, if cut).
    pub len: usize,
    pub segmented: Segmented,
    /// Per-rank rewards (rec_num values) for "item"; `[DCG]` for "token"/"sequence".
    pub rewards: Vec<f64>,
    /// Per-rank relevance (rec_num values).
    pub relevance: Vec<f64>,
    pub ndcg20: f64,
    /// Items parsed from the text.
    pub items: usize,
    /// Some token's item id is ≥ rec_num.
    pub overflow: bool,
    /// Ended with fewer than rec_num items.
    pub early_stop: bool,
}

/// Scores one completion of `row`: `ids` are the sampled tokens (an end token, if any, and
/// possibly padding after it), `token_texts` each token decoded alone, `text` the decoded
/// completion without special tokens.
#[allow(clippy::too_many_arguments)]
pub fn score_completion(
    ids: &[u32],
    token_texts: &[String],
    text: &str,
    end_ids: &[u32],
    row: &Row,
    catalog: &Catalog,
    level: Level,
    reward: RewardKind,
    config: &MatchConfig,
) -> ScoredCompletion {
    let (len, ended) = completion_len(ids, end_ids);
    let segmented = Segmented { items: item_ids(&token_texts[..len.min(token_texts.len())]), ended };
    let parsed = parse_completion(text);
    let rel = relevance(&parsed, &row.groundtruth, &row.seen_titles, catalog, config);
    let rewards = match (level, reward) {
        (Level::Item, RewardKind::ExpInf) => reward_exp_inf(&rel),
        (Level::Item, RewardKind::Log) => reward_log(&rel),
        (Level::Token | Level::Sequence, _) => vec![dcg(&rel)],
    };
    let metrics = evaluate(&parsed, &row.groundtruth, &row.seen_titles, catalog, config);
    let overflow = segmented.items.iter().any(|&k| k >= config.rec_num);
    let early_stop = ended && segmented.item_count() < config.rec_num;
    ScoredCompletion {
        len,
        rewards,
        relevance: rel,
        ndcg20: metrics.ndcg[3],
        items: parsed.len(),
        overflow,
        early_stop,
        segmented,
    }
}

/// What one training step reports about its samples.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SampleStats {
    pub completions: usize,
    /// Mean relevance (hit rate) per rank over the step's completions.
    pub hit_rate_per_rank: Vec<f64>,
    /// Mean reward per rank ("item") or mean sequence reward (one value).
    pub reward_per_rank: Vec<f64>,
    pub ndcg20: f64,
    pub mean_length: f64,
    pub mean_items: f64,
    pub overflow_rate: f64,
    pub early_stop_rate: f64,
    /// Completions cut at the length limit (no end token).
    pub cut_rate: f64,
}

impl SampleStats {
    pub fn of(scored: &[ScoredCompletion]) -> Self {
        let n = scored.len().max(1) as f64;
        let mean_of = |f: &dyn Fn(&ScoredCompletion) -> f64| scored.iter().map(f).sum::<f64>() / n;
        let column_means = |rows: Vec<&Vec<f64>>| -> Vec<f64> {
            let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
            (0..width).map(|k| rows.iter().map(|r| r.get(k).copied().unwrap_or(0.0)).sum::<f64>() / n).collect()
        };
        SampleStats {
            completions: scored.len(),
            hit_rate_per_rank: column_means(scored.iter().map(|s| &s.relevance).collect()),
            reward_per_rank: column_means(scored.iter().map(|s| &s.rewards).collect()),
            ndcg20: mean_of(&|s| s.ndcg20),
            mean_length: mean_of(&|s| s.len as f64),
            mean_items: mean_of(&|s| s.items as f64),
            overflow_rate: mean_of(&|s| s.overflow as u8 as f64),
            early_stop_rate: mean_of(&|s| s.early_stop as u8 as f64),
            cut_rate: mean_of(&|s| (!s.segmented.ended) as u8 as f64),
        }
    }

    /// The statistics as sums over completions (mean × count), flat, with the per-rank columns
    /// `widths` = (hit rates, rewards) wide: what workers add up before [`Self::from_sums`].
    pub fn to_sums(&self, widths: (usize, usize)) -> Vec<f64> {
        let n = self.completions as f64;
        let column = |v: &[f64], width: usize| -> Vec<f64> {
            (0..width).map(|k| v.get(k).copied().unwrap_or(0.0) * n).collect()
        };
        let scalars = [self.ndcg20, self.mean_length, self.mean_items, self.overflow_rate, self.early_stop_rate];
        std::iter::once(n)
            .chain(scalars.iter().chain([&self.cut_rate]).map(|x| x * n))
            .chain(column(&self.hit_rate_per_rank, widths.0))
            .chain(column(&self.reward_per_rank, widths.1))
            .collect()
    }

    /// Means from sums laid out by [`Self::to_sums`].
    pub fn from_sums(sums: &[f64], widths: (usize, usize)) -> Self {
        let n = sums[0];
        let mean = |x: f64| if n > 0.0 { x / n } else { 0.0 };
        let (hits, rewards) = sums[7..].split_at(widths.0);
        SampleStats {
            completions: n as usize,
            ndcg20: mean(sums[1]),
            mean_length: mean(sums[2]),
            mean_items: mean(sums[3]),
            overflow_rate: mean(sums[4]),
            early_stop_rate: mean(sums[5]),
            cut_rate: mean(sums[6]),
            hit_rate_per_rank: hits.iter().map(|&x| mean(x)).collect(),
            reward_per_rank: rewards[..widths.1].iter().map(|&x| mean(x)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rec::GroundTruth;

    fn row() -> Row {
        Row {
            sample_id: None,
            prompt: vec![],
            completion: None,
            seen_titles: vec!["Heat".into()],
            groundtruth: vec![GroundTruth::new("Alien", "1979"), GroundTruth::new("Up", "2009")],
        }
    }

    fn catalog() -> Catalog {
        let mut c = Catalog::new();
        for (t, y) in [("Alien", 1979), ("Up", 2009), ("Heat", 1995), ("Jaws", 1975)] {
            c.insert(t, y);
        }
        c
    }

    /// Tokens of "Jaws (1975)\nAlien (1979)\n" + end, split as a tokenizer might.
    fn tokens() -> (Vec<u32>, Vec<String>) {
        let texts = ["Jaws", " (1975)", "\n", "Alien", " (1979)", "\n", "<end>"];
        ((0..texts.len() as u32).collect(), texts.iter().map(|t| t.to_string()).collect())
    }

    #[test]
    fn per_rank_rewards_segmentation_and_flags() {
        let (ids, texts) = tokens();
        let cfg = MatchConfig { rec_num: 3, ..MatchConfig::default() };
        let text = "Jaws (1975)\nAlien (1979)\n";
        let s = score_completion(&ids, &texts, text, &[6], &row(), &catalog(), Level::Item, RewardKind::ExpInf, &cfg);
        assert_eq!(s.len, 7);
        assert!(s.segmented.ended);
        assert_eq!(s.segmented.items, vec![0, 0, 0, 1, 1, 1, 2]);
        assert_eq!(s.rewards, vec![0.0, 1.0, 0.0]);
        assert_eq!(s.items, 2);
        // The end token opens item 2 (its own), so 3 items counted: not overflow, not early.
        assert!(!s.overflow && !s.early_stop);
        // The log reward gives rank 0 the discounted hit at rank 1.
        let s = score_completion(&ids, &texts, text, &[6], &row(), &catalog(), Level::Item, RewardKind::Log, &cfg);
        assert!((s.rewards[0] - 1.0 / 3f64.log2()).abs() < 1e-12 && s.rewards[2] == 0.0);
        // Sequence level: one DCG value.
        let s = score_completion(&ids, &texts, text, &[6], &row(), &catalog(), Level::Token, RewardKind::ExpInf, &cfg);
        assert_eq!(s.rewards.len(), 1);
        assert!((s.rewards[0] - 1.0 / 3f64.log2()).abs() < 1e-12);
    }

    #[test]
    fn cut_and_padded_completions() {
        let (mut ids, mut texts) = tokens();
        let cfg = MatchConfig::default(); // rec_num 20: two items end early
        // Padding after the end token is not the completion's.
        ids.extend([0, 0]);
        texts.extend(["Jaws".to_string(), "Jaws".to_string()]);
        let s = score_completion(&ids, &texts, "", &[6], &row(), &catalog(), Level::Item, RewardKind::ExpInf, &cfg);
        assert_eq!((s.len, s.segmented.ended, s.early_stop), (7, true, true));
        // No end token: cut, all tokens kept, not an early stop.
        let s = score_completion(
            &ids[..5],
            &texts[..5],
            "",
            &[6],
            &row(),
            &catalog(),
            Level::Item,
            RewardKind::ExpInf,
            &cfg,
        );
        assert_eq!((s.len, s.segmented.ended, s.early_stop), (5, false, false));
        let stats = SampleStats::of(&[s]);
        assert_eq!((stats.cut_rate, stats.early_stop_rate), (1.0, 0.0));
        assert_eq!(stats.reward_per_rank.len(), 20);
    }
}

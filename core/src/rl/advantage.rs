//! Per-rank, group-relative advantages and the length-shaping terms (§6).

/// Importance-ratio level: Rank-GRPO ("item"), GRPO ("token"), GSPO ("sequence").
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Item,
    Token,
    Sequence,
}

/// One completion of a group: its item id per token and whether it ended with the end token.
#[derive(Clone, Debug)]
pub struct Segmented {
    pub items: Vec<usize>,
    /// True when the last token is the end-of-turn token (not cut at the length limit).
    pub ended: bool,
}

impl Segmented {
    /// Number of items the completion produced: the item id of its end token + 1 when it ended
    /// (the end token belongs to the last item), else the number of items begun.
    pub fn item_count(&self) -> usize {
        self.items.last().map_or(0, |&last| last + 1)
    }
}

pub const SHAPING: f32 = 0.1;

/// Token advantages of a group of G completions.
/// `rewards[i]`: per-rank rewards (rec_num values) for "item", or `rewards[i][0]` as the sequence
/// reward for "token"/"sequence" (broadcast to every token, no shaping).
pub fn token_advantages(
    level: Level,
    rewards: &[Vec<f64>],
    completions: &[Segmented],
    rec_num: usize,
) -> Vec<Vec<f32>> {
    let g = completions.len();
    let norm = |values: &[f64]| -> Vec<f64> {
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let var = if values.len() > 1 {
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (values.len() - 1) as f64
        } else {
            0.0
        };
        values.iter().map(|v| (v - mean) / (var.sqrt() + 1e-4)).collect()
    };
    match level {
        Level::Token | Level::Sequence => {
            let seq: Vec<f64> = rewards.iter().map(|r| r.first().copied().unwrap_or(0.0)).collect();
            let adv = norm(&seq);
            completions.iter().zip(adv).map(|(c, a)| vec![a as f32; c.items.len()]).collect()
        }
        Level::Item => {
            // A rank a completion never produced counts as reward 0.
            let per_rank: Vec<Vec<f64>> = (0..rec_num)
                .map(|k| {
                    let col: Vec<f64> = (0..g)
                        .map(|i| {
                            if k < completions[i].item_count() {
                                rewards[i].get(k).copied().unwrap_or(0.0)
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    norm(&col)
                })
                .collect();
            completions
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let n = c.items.len();
                    let items = c.item_count();
                    let overflow = c.items.iter().any(|&k| k >= rec_num);
                    c.items
                        .iter()
                        .enumerate()
                        .map(|(t, &k)| {
                            let is_end = c.ended && t + 1 == n;
                            let mut a = if k < rec_num && !is_end { per_rank[k][i] as f32 } else { 0.0 };
                            if k >= rec_num {
                                a -= SHAPING;
                            }
                            if is_end {
                                if items == rec_num && !overflow {
                                    a += SHAPING;
                                } else if items < rec_num {
                                    a -= SHAPING;
                                }
                            }
                            a
                        })
                        .collect()
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(items: Vec<usize>, ended: bool) -> Segmented {
        Segmented { items, ended }
    }

    #[test]
    fn per_rank_advantages_use_the_unbiased_std_and_zero_for_missing_ranks() {
        // Two ranks, G = 3. Rank 0 rewards (1, 0, 0); rank 1 (1, 1, missing → 0).
        let comps = vec![seg(vec![0, 0, 1, 1], true), seg(vec![0, 1, 1], true), seg(vec![0, 0], true)];
        let rewards = vec![vec![1.0, 1.0], vec![0.0, 1.0], vec![0.0, 1.0]];
        let adv = token_advantages(Level::Item, &rewards, &comps, 2);
        // rank 0: mean 1/3, std (unbiased) = sqrt(1/3) → A = (1 − 1/3)/0.57735 = 1.1547
        let a0 = (2.0 / 3.0) / ((1.0f64 / 3.0).sqrt() + 1e-4);
        assert!((adv[0][0] as f64 - a0).abs() < 1e-5);
        // Completion 0: 2 items = rec_num, ended, no overflow → end token gets +0.1 only.
        assert!((adv[0][3] - 0.1).abs() < 1e-6);
        // Completion 2 ended with 1 item < rec_num: end token −0.1.
        assert!((adv[2][1] + 0.1).abs() < 1e-6);
        // Rank 1 of completion 2 is missing: counts as 0 → rank 1 values (1, 1, 0).
        let a1 = (1.0 - 2.0 / 3.0) / ((1.0f64 / 3.0).sqrt() + 1e-4);
        assert!((adv[1][1] as f64 - a1).abs() < 1e-5);
    }

    #[test]
    fn overflow_and_truncation_shaping() {
        // rec_num 1: tokens of item 1 overflow (−0.1, advantage 0); a cut completion (no end
        // token) gets no end term.
        let comps = vec![seg(vec![0, 1, 1], true), seg(vec![0, 0], false)];
        let rewards = vec![vec![1.0], vec![0.0]];
        let adv = token_advantages(Level::Item, &rewards, &comps, 1);
        assert!((adv[0][1] + 0.1).abs() < 1e-6);
        // Ended with overflow: end token sits in an overflow item → −0.1 only (no +0.1).
        assert!((adv[0][2] + 0.1).abs() < 1e-6);
        let a = (0.0 - 0.5) / ((0.5f64).sqrt() + 1e-4);
        assert!((adv[1][1] as f64 - a).abs() < 1e-5, "truncated: no end-token term");
    }

    #[test]
    fn zero_variance_groups_give_zero_advantages() {
        let comps = vec![seg(vec![0, 0], false), seg(vec![0], false)];
        let adv = token_advantages(Level::Token, &[vec![0.5], vec![0.5]], &comps, 20);
        assert!(adv.iter().flatten().all(|&a| a == 0.0));
    }
}

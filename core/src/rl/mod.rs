//! Rank-GRPO (and the GRPO / GSPO baselines): which rank each completion token belongs to, the
//! per-rank group-relative advantages with the length-shaping terms, the clipped objective with
//! its k3 KL, whose loss and gradient with respect to token log-probs run on the GPU, and the RL
//! trainer that composes them into a step. Exact definitions: RANK_GRPO.md §5–7 (the paper's
//! public code is the default).

pub mod advantage;
pub mod objective;
pub mod rollout;
pub mod segment;
pub mod trainer;

#[cfg(test)]
mod backward_tests;
#[cfg(test)]
mod learning_tests;

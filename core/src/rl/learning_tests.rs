//! Proof that the RL loop learns, cheap enough for every CI run: a toy recommender whose right
//! list is a function of the conversation, with a dense, known reward.
//!
//! The toy: a tokenizer in which each of 12 catalog titles is one token (`Film3 (1993)\n`), three
//! conversations ("red", "green", "blue"), each with its own 4 titles as ground truth, lists of 4
//! (rec_num = 4). A tiny random-weight model samples titles from the start, so every rank's
//! reward is informative from the first step: a random list hits about one rank in six. Rank-GRPO
//! must raise the mean sampled reward per rank well beyond its start; the same run with the
//! advantages' sign flipped must not (the check that the test can fail).

use super::rollout::SampleStats;
use super::trainer::{Algo, Prompt, RlConfig, RlTrainer};
use crate::model::Architecture;
use crate::model::gpu::GpuModel;
use crate::model::text::ChatText;
use crate::rec::{Catalog, GroundTruth, Message, Row};
use crate::testing;
use crate::train::lora::{LoraConfig, LoraLayout, Target};

const GROUPS: [&str; 3] = ["red", "green", "blue"];
const PER_GROUP: usize = 4;
const VOCAB: usize = 24;
/// Special tokens first, then words, then one token per title (ids 10…21), then fillers.
const WORDS: [&str; 7] = ["[UNK]", "user", "assistant", "system", "red", "green", "blue"];
const FIRST_TITLE: usize = 10;

fn title(i: usize) -> (String, i64) {
    (format!("Film{i}"), 1990 + i as i64)
}

/// The toy's `tokenizer.json`: a word-level model, the titles as added (non-special) tokens so
/// that each decodes to a whole `Title (Year)` line.
fn tokenizer_json() -> String {
    use serde_json::json;
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let mut tokens: Vec<String> = specials.iter().chain(&WORDS).map(|s| s.to_string()).collect();
    assert_eq!(tokens.len(), FIRST_TITLE);
    for i in 0..GROUPS.len() * PER_GROUP {
        let (t, y) = title(i);
        tokens.push(format!("{t} ({y})\n"));
    }
    while tokens.len() < VOCAB {
        tokens.push(format!("filler{}", tokens.len()));
    }
    let vocab: serde_json::Map<String, serde_json::Value> =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| *i < 3 || (FIRST_TITLE..FIRST_TITLE + 12).contains(i))
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": i < 3})
        })
        .collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    })
    .to_string()
}

fn toy_rows() -> Vec<Row> {
    GROUPS
        .iter()
        .enumerate()
        .map(|(g, word)| Row {
            sample_id: Some(word.to_string()),
            prompt: vec![Message { role: "user".into(), content: word.to_string() }],
            completion: None,
            seen_titles: vec![],
            groundtruth: (g * PER_GROUP..(g + 1) * PER_GROUP)
                .map(|i| {
                    let (t, y) = title(i);
                    GroundTruth::new(t, y.to_string())
                })
                .collect(),
        })
        .collect()
}

/// The toy's model (fixed seeds: a learning curve, not a kernel on fresh inputs), an RL trainer
/// from `rl` on it, the catalog and the three prompts.
fn toy(text: &ChatText, rl: RlConfig) -> (GpuModel, RlTrainer, Catalog, Vec<Prompt>) {
    let gpu = testing::gpu().expect("checked by the caller");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
    let mut config = testing::tiny_config(Architecture::Llama, true);
    config.vocab_size = VOCAB;
    let base = GpuModel::upload(&gpu, config.clone(), testing::random_tensors(&config, &mut rng), 64).unwrap();
    let layout = LoraLayout::new(&config, LoraConfig { r: 8, alpha: 16.0, targets: Target::ALL.to_vec() });
    let trainer = pollster::block_on(RlTrainer::new(&gpu, &base, layout.clone(), &layout.init(5), rl)).unwrap();
    let mut catalog = Catalog::new();
    for i in 0..GROUPS.len() * PER_GROUP {
        let (t, y) = title(i);
        catalog.insert(&t, y);
    }
    let prompts: Vec<Prompt> = super::trainer::rl_prompts(text, toy_rows(), 64, "toy").unwrap();
    (base, trainer, catalog, prompts)
}

/// The toy's RL settings: dense rewards, lists of 4, no KL.
fn toy_config() -> RlConfig {
    RlConfig {
        lr: 2e-2,
        beta: Some(0.0),
        max_new_tokens: PER_GROUP + 2,
        micro_batch: 64,
        rec_num: PER_GROUP,
        seed: 3,
        ..RlConfig::new(Algo::RankGrpo)
    }
}

/// Mean sampled reward per rank in the first and last `window` steps of a run of `steps`.
fn run(text: &ChatText, steps: usize, flip_advantages: bool) -> (f64, f64) {
    let gpu = testing::gpu().expect("checked by the caller");
    let (base, mut trainer, catalog, prompts) = toy(text, toy_config());
    let chosen: Vec<&Prompt> = prompts.iter().collect();
    let mut rewards = Vec::new();
    for _ in 0..steps {
        let mut rollout = pollster::block_on(trainer.rollout(&gpu, text, &catalog, &chosen)).unwrap();
        if flip_advantages {
            rollout.advantages.iter_mut().flatten().for_each(|a| *a = -*a);
        }
        pollster::block_on(trainer.update(&gpu, &base, &rollout)).unwrap();
        let stats = SampleStats::of(&rollout.scored);
        rewards.push(stats.reward_per_rank.iter().sum::<f64>() / stats.reward_per_rank.len() as f64);
    }
    eprintln!("mean reward per rank by step (flipped: {flip_advantages}): {rewards:.3?}");
    let window = 5;
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    (mean(&rewards[..window]), mean(&rewards[steps - window..]))
}

#[test]
fn rank_grpo_raises_a_dense_reward_and_its_mirror_image_does_not() {
    if testing::gpu().is_none() {
        return;
    }
    let text = testing::chat_text_from_json(&tokenizer_json(), VOCAB);
    // The toy's tokens are what the reward reads: each title one token, one line.
    let (t, y) = title(3);
    let id = text.tokenizer.token_to_id(&format!("{t} ({y})\n")).unwrap();
    assert_eq!(text.token_texts(&[id]).unwrap(), vec![format!("{t} ({y})\n")]);

    let steps = 40;
    let (start, end) = run(&text, steps, false);
    // Margin: +0.25 of reward per rank (a random list earns ~0.17, a perfect one 1.0; the recorded
    // run went 0.185 → 0.604 over 40 steps).
    assert!(
        end >= start + 0.25,
        "Rank-GRPO: mean reward per rank {start:.3} over the first steps, {end:.3} over the last"
    );
    let (flipped_start, flipped_end) = run(&text, steps, true);
    // The mirror image learns to miss: recorded run 0.094 → 0.000.
    assert!(
        flipped_end <= flipped_start - 0.05,
        "with the advantages' sign flipped the reward should fall: {flipped_start:.3} → {flipped_end:.3}"
    );
}

/// A step whose prompts are split across workers is the step one worker takes: the same samples
/// (each completion's draws follow its prompt's place in the step), the same statistics and
/// loss, and — the gradients summed and the normalisers counted over all workers — the same
/// adapter. Two workers (threads) take 1 and 2 of the 3 prompts; four leave one idle. Both
/// aggregations, μ = 1 and 2 (old log-probs kept per worker), a KL term.
#[test]
fn steps_split_across_workers_are_the_steps_one_worker_takes() {
    use crate::workers::{LocalWorker, Single, Workers};
    use std::rc::Rc;
    if testing::gpu().is_none() {
        return;
    }
    let gpu = testing::gpu().unwrap();
    let text = testing::chat_text_from_json(&tokenizer_json(), VOCAB);
    let configs = [
        toy_config(),
        RlConfig { aggregation: super::trainer::Aggregation::RankMean, mu: 2, beta: Some(0.05), ..toy_config() },
    ];
    for rl in configs {
        let run = |workers: Rc<dyn Workers>| -> (Vec<super::trainer::RlStep>, Vec<f32>) {
            let (base, trainer, catalog, prompts) = toy(&text, rl.clone());
            let mut trainer = trainer.with_workers(workers);
            let chosen: Vec<&Prompt> = prompts.iter().collect();
            let steps = (0..3)
                .map(|_| pollster::block_on(trainer.step(&gpu, &base, &text, &catalog, &chosen, &|| 0.0)).unwrap())
                .collect();
            (steps, pollster::block_on(trainer.lora.read_params(&gpu)).unwrap())
        };
        let (alone, alone_params) = run(Rc::new(Single));
        for count in [2, 4] {
            let split: Vec<_> = std::thread::scope(|s| {
                let handles: Vec<_> =
                    LocalWorker::group(count).into_iter().map(|w| s.spawn(|| run(Rc::new(w)))).collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for (steps, params) in &split {
                assert_eq!(params, &split[0].1, "every worker holds the same adapter");
                for (a, b) in steps.iter().zip(&alone) {
                    assert_eq!(a.samples.completions, 3 * rl.group_size);
                    assert_eq!(a.tokens, b.tokens, "the same samples");
                    assert_eq!(a.samples.mean_length, b.samples.mean_length);
                    let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 + 1e-5 * y.abs();
                    assert!(close(a.samples.ndcg20, b.samples.ndcg20), "{:?} vs {:?}", a.samples, b.samples);
                    for (x, y) in a.samples.reward_per_rank.iter().zip(&b.samples.reward_per_rank) {
                        assert!(close(*x, *y), "{:?} vs {:?}", a.samples, b.samples);
                    }
                    assert!(close(a.update.loss, b.update.loss), "loss {} vs {}", a.update.loss, b.update.loss);
                    assert!(close(a.update.kl, b.update.kl), "KL {} vs {}", a.update.kl, b.update.kl);
                    let g = (a.update.grad_norm - b.update.grad_norm).abs();
                    assert!(g <= 1e-5 * b.update.grad_norm, "{} vs {}", a.update.grad_norm, b.update.grad_norm);
                }
            }
            let err = testing::rel_err(&split[0].1, &alone_params);
            eprintln!("{count} workers against one ({:?}, μ {}): adapter rel. error {err:e}", rl.aggregation, rl.mu);
            assert!(err < 1e-5, "{count} workers: the adapters differ by {err:e}");
        }
    }
}

//! `convrec train` end to end on a tiny random model: an SFT adapter that memorised the rows (so
//! sampled completions are rewarded and end early), then Rank-GRPO steps — metrics, adapter,
//! checkpoint, `--resume` — and one step each of GRPO and GSPO.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

const LR: f64 = 1e-5;
const MAX_NEW_TOKENS: usize = 16;

/// `convrec train` with the test's small settings plus `extra`.
fn train(dir: &Path, algo: &str, out: &str, extra: &[&str]) -> std::process::Output {
    run_ok(
        convrec()
            .current_dir(dir)
            .arg("train")
            .args(["--algo", algo, "--model", "model", "--adapter", "sft/adapter", "--data", "train.jsonl"])
            .args(["--catalog", "catalog.tsv", "--out", out, "--prompts-per-step", "2", "--group-size", "2"])
            .args(["--max-new-tokens", &MAX_NEW_TOKENS.to_string(), "--max-prompt-length", "64"])
            .args(["--lr", &LR.to_string()])
            .args(extra),
    )
}

fn num(line: &Value, key: &str) -> f64 {
    line[key].as_f64().unwrap_or_else(|| panic!("`{key}` is not a number in {line}"))
}

fn floats(line: &Value, key: &str) -> Vec<f64> {
    line[key]
        .as_array()
        .unwrap_or_else(|| panic!("`{key}` is not a list in {line}"))
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}

/// The documented fields of one metrics line, in range. `ranks`: length of `reward_per_rank`.
fn check_line(line: &Value, step: u64, algo: &str, ranks: usize) {
    assert_eq!(line["step"].as_u64(), Some(step), "{line}");
    assert_eq!(line["algo"].as_str(), Some(algo), "{line}");
    for key in ["loss", "kl", "grad_norm", "tokens_per_s", "generate_s", "step_s", "elapsed_s"] {
        assert!(num(line, key).is_finite(), "{key} in {line}");
    }
    assert!(num(line, "kl") >= 0.0 && num(line, "grad_norm") >= 0.0, "{line}");
    assert!((num(line, "lr") - LR).abs() <= 1e-6 * LR, "constant lr: {line}");
    assert_eq!(line["completions"].as_u64(), Some(4), "2 prompts × 2 samples: {line}");
    for key in ["clip_fraction", "ndcg20", "overflow_rate", "early_stop_rate", "cut_rate"] {
        assert!((0.0..=1.0).contains(&num(line, key)), "{key} in {line}");
    }
    let len = num(line, "mean_length");
    assert!((1.0..=MAX_NEW_TOKENS as f64).contains(&len), "mean_length {len}: {line}");
    assert!(num(line, "mean_items") >= 0.0);
    let rewards = floats(line, "reward_per_rank");
    assert_eq!(rewards.len(), ranks, "reward_per_rank: {line}");
    assert!(rewards.iter().all(|r| (0.0..=1.0).contains(r)), "{line}");
    let hits = floats(line, "hit_rate_per_rank");
    assert_eq!(hits.len(), 20, "hit_rate_per_rank (rec_num 20): {line}");
    assert!(hits.iter().all(|r| (0.0..=1.0).contains(r)), "{line}");
    assert!(line["tokens_seen"].as_u64().unwrap() > 0, "{line}");
}

fn state_step(checkpoint: &Path) -> u64 {
    let state: Value = serde_json::from_slice(&std::fs::read(checkpoint.join("trainer_state.json")).unwrap()).unwrap();
    state["step"].as_u64().unwrap_or_else(|| panic!("no step in {state}"))
}

/// The model folder, 4 rows, the catalog, and an SFT adapter (r 4) that memorised the rows.
fn setup(test: &str) -> std::path::PathBuf {
    let dir = scratch("train", test);
    tiny_model(&dir);
    write_dataset(&dir.join("train.jsonl"), 4);
    write_catalog(&dir.join("catalog.tsv"));
    memorising_sft(&dir, 40, 2);
    dir
}

#[test]
fn rank_grpo_steps_write_metrics_adapter_and_a_resumable_checkpoint() {
    if convrec_core::testing::gpu().is_none() {
        return;
    }
    let dir = setup("rank_grpo");
    let (sft_layout, sft_params, _) = load_adapter(&dir.join("model"), &dir.join("sft/adapter"));

    train(&dir, "rank-grpo", "rl", &["--steps", "2"]);
    let lines = jsonl(&dir.join("rl/metrics.jsonl"));
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (i, line) in lines.iter().enumerate() {
        check_line(line, i as u64 + 1, "rank-grpo", 20);
    }
    // Step 1 starts at the reference adapter with μ = 1: KL 0 and every ratio 1 (nothing clipped).
    assert!(num(&lines[0], "kl").abs() < 1e-9, "{}", lines[0]);
    assert_eq!(num(&lines[0], "clip_fraction"), 0.0, "{}", lines[0]);
    // The SFT adapter memorised "<title> (<year>)<|im_end|>" with the title in the ground truth:
    // samples parse, match the catalog and end early, so there are rewards and a gradient.
    assert!(lines.iter().any(|l| num(l, "ndcg20") > 0.0), "no sampled completion was rewarded: {lines:?}");
    assert!(lines.iter().any(|l| num(l, "early_stop_rate") > 0.0), "{lines:?}");
    assert!(num(&lines[0], "grad_norm") > 0.0, "{}", lines[0]);
    assert!(num(&lines[1], "tokens_seen") > num(&lines[0], "tokens_seen"));

    // The adapter: same layout as the SFT one, moved by (about) lr per step at most.
    let (layout, params, _) = load_adapter(&dir.join("model"), &dir.join("rl/adapter"));
    assert_eq!((layout.config.clone(), layout.len), (sft_layout.config.clone(), sft_layout.len));
    let moved = params.iter().zip(&sft_params).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) as f64;
    assert!(moved > 0.0, "two steps with a gradient left the adapter unchanged");
    assert!(moved <= 2.0 * 3.0 * LR, "an AdamW step moves a parameter by ~lr at most; moved {moved:e}");

    // The checkpoint: step 2, the same parameters, the optimiser state.
    let checkpoint = dir.join("rl/checkpoint");
    assert_eq!(state_step(&checkpoint), 2);
    assert!(checkpoint.join("optimizer.safetensors").is_file());
    let (_, ck_params, _) = load_adapter(&dir.join("model"), &checkpoint);
    assert_eq!(ck_params, params, "the checkpoint's adapter is the written adapter");

    // --resume continues at step 3 and appends exactly one line.
    let out = train(&dir, "rank-grpo", "rl", &["--steps", "3", "--resume", "rl/checkpoint"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming at step 2"));
    let lines = jsonl(&dir.join("rl/metrics.jsonl"));
    assert_eq!(lines.len(), 3, "{lines:?}");
    check_line(&lines[2], 3, "rank-grpo", 20);
    assert_eq!(state_step(&checkpoint), 3);

    // Resuming is exact: three steps in one run give the same adapter and step-3 metrics.
    train(&dir, "rank-grpo", "rl3", &["--steps", "3"]);
    let straight = jsonl(&dir.join("rl3/metrics.jsonl"));
    assert_eq!(straight.len(), 3);
    for key in ["loss", "kl", "ndcg20", "mean_length", "grad_norm"] {
        let (a, b) = (num(&straight[2], key), num(&lines[2], key));
        assert!((a - b).abs() <= 1e-5 * a.abs() + 1e-9, "step 3 `{key}`: straight {a} vs resumed {b}");
    }
    let (_, resumed, _) = load_adapter(&dir.join("model"), &dir.join("rl/adapter"));
    let (_, direct, _) = load_adapter(&dir.join("model"), &dir.join("rl3/adapter"));
    let diff = resumed.iter().zip(&direct).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff <= 1e-7, "resumed vs uninterrupted adapter differ by {diff:e}");
}

#[test]
fn grpo_and_gspo_take_a_step_with_sequence_rewards() {
    if convrec_core::testing::gpu().is_none() {
        return;
    }
    let dir = setup("grpo_gspo");
    for algo in ["grpo", "gspo"] {
        train(&dir, algo, algo, &["--steps", "1"]);
        let lines = jsonl(&dir.join(algo).join("metrics.jsonl"));
        assert_eq!(lines.len(), 1, "{algo}: {lines:?}");
        // Token / sequence level: one sequence reward (DCG) per completion.
        check_line(&lines[0], 1, algo, 1);
        assert!(num(&lines[0], "kl").abs() < 1e-9 && num(&lines[0], "clip_fraction") == 0.0, "{}", lines[0]);
        assert_eq!(state_step(&dir.join(algo).join("checkpoint")), 1);
        let (layout, _, _) = load_adapter(&dir.join("model"), &dir.join(algo).join("adapter"));
        assert_eq!(layout.config.r, 4);
    }
}

#[test]
fn the_single_pass_step_equals_separate_log_prob_and_gradient_passes() {
    if convrec_core::testing::gpu().is_none() {
        return;
    }
    // 2 prompts × G = 2: four sequences. With the default micro-batch (4) the on-policy step runs
    // one forward, evaluates the objective on its log-probs and runs the backward; with 2 it takes
    // a log-prob pass and then forward+backward passes, two sequences at a time.
    let dir = setup("single_pass");
    let (_, sft_params, _) = load_adapter(&dir.join("model"), &dir.join("sft/adapter"));
    train(&dir, "rank-grpo", "one", &["--steps", "2"]);
    train(&dir, "rank-grpo", "two", &["--steps", "2", "--micro-batch", "2"]);
    let (one, two) = (jsonl(&dir.join("one/metrics.jsonl")), jsonl(&dir.join("two/metrics.jsonl")));
    for key in ["loss", "kl", "ndcg20", "grad_norm"] {
        for step in 0..2 {
            let (a, b) = (num(&one[step], key), num(&two[step], key));
            assert!((a - b).abs() <= 1e-4 * a.abs().max(b.abs()) + 1e-7, "step {} `{key}`: {a} vs {b}", step + 1);
        }
    }
    let (_, a, _) = load_adapter(&dir.join("model"), &dir.join("one/adapter"));
    let (_, b, _) = load_adapter(&dir.join("model"), &dir.join("two/adapter"));
    let moved = a.iter().zip(&sft_params).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(moved > 0.0);
    assert!(diff <= 1e-3 * moved, "adapters differ by {diff:e} after moving {moved:e}");
}

#[test]
fn validation_over_training_keeps_metrics_and_a_series_of_adapters() {
    if convrec_core::testing::gpu().is_none() {
        return;
    }
    let dir = setup("validation");
    write_dataset(&dir.join("held_out.jsonl"), 3);
    train(&dir, "rank-grpo", "rl", &["--steps", "3", "--eval-data", "held_out.jsonl", "--eval-every", "2"]);
    let lines = jsonl(&dir.join("rl/metrics.jsonl"));
    let validated: Vec<u64> =
        lines.iter().filter(|l| l.get("val_ndcg@20").is_some()).map(|l| l["step"].as_u64().unwrap()).collect();
    // At the start, every 2 steps, and at the end.
    assert_eq!(validated, vec![0, 2, 3], "{lines:?}");
    for l in lines.iter().filter(|l| l.get("val_ndcg@20").is_some()) {
        for key in ["val_recall@5", "val_ndcg@20", "val_in_catalog_rate", "val_valid_format_rate", "val_cut_rate"] {
            assert!((0.0..=1.0).contains(&num(l, key)), "{key} in {l}");
        }
    }
    // The SFT adapter memorised the rows' answers: at step 0 the held-out rows (the same
    // conversations) are answered with their ground truth.
    assert!(num(&lines[0], "val_recall@20") > 0.0, "{}", lines[0]);
    for step in validated {
        let kept = dir.join(format!("rl/adapters/step-{step:06}"));
        assert!(kept.join("adapter_model.safetensors").is_file(), "{}", kept.display());
    }
    // The step-0 adapter of the series is the SFT adapter itself.
    let (_, sft, _) = load_adapter(&dir.join("model"), &dir.join("sft/adapter"));
    let (_, first, _) = load_adapter(&dir.join("model"), &dir.join("rl/adapters/step-000000"));
    assert_eq!(sft, first);
    // `convrec plot` draws the validation curve by name.
    run_ok(convrec().current_dir(&dir).args(["plot", "--run", "rl", "--metrics", "val_ndcg@20", "--out", "plots"]));
    assert!(dir.join("plots/val_ndcg@20.svg").is_file());
}

#[test]
fn a_run_folder_is_never_overwritten_by_accident_and_resumes_after_an_interrupted_save() {
    if convrec_core::testing::gpu().is_none() {
        return;
    }
    let dir = setup("folders");
    train(&dir, "rank-grpo", "rl", &["--steps", "2", "--save-every", "1"]);
    let again = convrec()
        .current_dir(&dir)
        .args(["train", "--model", "model", "--adapter", "sft/adapter", "--data", "train.jsonl"])
        .args(["--catalog", "catalog.tsv", "--out", "rl", "--steps", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && err.contains("already holds a run") && err.contains("--overwrite"), "{err}");
    assert_eq!(jsonl(&dir.join("rl/metrics.jsonl")).len(), 2, "the refused run wrote nothing");

    // A save killed between its two renames: the step-2 checkpoint moved aside, the new one (as
    // it would be at step 2 too) still in its staging folder, and a half-written staging folder.
    let rl = dir.join("rl");
    std::fs::rename(rl.join("checkpoint"), rl.join(".checkpoint.old")).unwrap();
    std::fs::create_dir_all(rl.join(".checkpoint.new-broken")).unwrap();
    std::fs::write(rl.join(".checkpoint.new-broken/trainer_state.json"), "{\"step\": 9").unwrap();
    let out = train(&dir, "rank-grpo", "rl", &["--steps", "3", "--resume", "rl"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(".checkpoint.old") && err.contains("resuming at step 2"), "{err}");
    let lines = jsonl(&rl.join("metrics.jsonl"));
    assert_eq!(lines.iter().map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(state_step(&rl.join("checkpoint")), 3);
    // The save cleaned what the interrupted one left.
    let leftovers: Vec<_> = std::fs::read_dir(&rl)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".checkpoint"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // --overwrite starts afresh.
    train(&dir, "rank-grpo", "rl", &["--steps", "1", "--overwrite"]);
    assert_eq!(jsonl(&rl.join("metrics.jsonl")).len(), 1);
}

/// A bf16 checkpoint (how the paper's models are published) goes through the whole loop: SFT on
/// the 16-bit base, a Rank-GRPO step (sampling from the adapter merged into f32 copies) and
/// `eval --adapter` (was: "merging an adapter needs f32 base weights; layer 0 q_proj is Bf16").
#[test]
fn a_bf16_checkpoint_trains_with_rank_grpo_and_evaluates_with_its_adapter() {
    if convrec_core::testing::gpu().is_none() {
        return;
    }
    let dir = scratch("train", "bf16_base");
    tiny_model_bf16(&dir);
    write_dataset(&dir.join("train.jsonl"), 4);
    write_catalog(&dir.join("catalog.tsv"));
    run_ok(
        convrec()
            .current_dir(&dir)
            .args(["sft", "--model", "model", "--data", "train.jsonl", "--out", "sft", "--epochs", "10"])
            .args(["--batch-size", "2", "--lora-r", "4", "--lr", "2e-2", "--max-length", "64", "--save-every", "1000"]),
    );
    train(&dir, "rank-grpo", "rl", &["--steps", "1"]);
    check_line(&jsonl(&dir.join("rl/metrics.jsonl"))[0], 1, "rank-grpo", 20);
    let out = run_ok(
        convrec()
            .current_dir(&dir)
            .args(["eval", "--model", "model", "--adapter", "rl/adapter", "--data", "train.jsonl"])
            .args(["--catalog", "catalog.tsv", "--max-new-tokens", "16", "--out", "eval"]),
    );
    assert!(out.status.success());
    let summary: Value = serde_json::from_slice(&std::fs::read(dir.join("eval/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["rows"].as_u64(), Some(4), "{summary}");
}

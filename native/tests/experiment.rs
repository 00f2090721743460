//! `convrec compare` on evaluations of the same rows, and `convrec experiment` end to end on the
//! tiny model: SFT, then three RL algorithms from the same SFT adapter with validation, test
//! evaluations, the paired comparison and the report. Also: the commands are thin drivers — the
//! core's SFT trainer run as a library gives the command's losses.

mod common;

use std::path::Path;

use common::*;
use serde_json::{Value, json};

fn predictions(dir: &Path, rows: &[(&str, f64)]) {
    std::fs::create_dir_all(dir).unwrap();
    let text: String = rows
        .iter()
        .map(|(id, v)| {
            let metrics: serde_json::Map<String, Value> = [5, 10, 15, 20]
                .iter()
                .flat_map(|k| [(format!("recall@{k}"), json!(v)), (format!("ndcg@{k}"), json!(v / 2.0))])
                .collect();
            format!("{}\n", json!({"sample_id": id, "metrics": metrics, "in_catalog": 1.0, "valid_format": 1.0}))
        })
        .collect();
    std::fs::write(dir.join("predictions.jsonl"), text).unwrap();
}

#[test]
fn compare_pairs_rows_by_id_and_refuses_different_rows() {
    let dir = scratch("compare", "pairs");
    predictions(&dir.join("sft"), &[("a", 0.0), ("b", 0.5), ("c", 0.5)]);
    predictions(&dir.join("rl"), &[("c", 1.0), ("a", 0.5), ("b", 0.5)]);
    let out = run_ok(convrec().current_dir(&dir).args(["compare", "sft", "ours=rl", "--json"]));
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 10, "8 ranking metrics + in_catalog + valid_format");
    let r20 = lines.iter().find(|l| l["metric"] == "recall@20").unwrap();
    assert_eq!((r20["base"].as_str(), r20["run"].as_str(), r20["n"].as_u64()), (Some("sft"), Some("ours"), Some(3)));
    // Per-row differences 0.5, 0, 0.5: mean 1/3, sd 0.2887, se 0.1667.
    let diff = r20["diff"].as_f64().unwrap();
    assert!((diff - 1.0 / 3.0).abs() < 1e-12 && (r20["se"].as_f64().unwrap() - 0.288675 / 3f64.sqrt()).abs() < 1e-6);
    let ci = r20["ci95"].as_array().unwrap();
    assert!(ci[0].as_f64().unwrap() < diff && diff < ci[1].as_f64().unwrap());
    for key in ["base_mean", "run_mean", "p"] {
        assert!(r20[key].is_number(), "{key}: {r20}");
    }
    let table = run_ok(convrec().current_dir(&dir).args(["compare", "sft", "rl"]));
    assert!(String::from_utf8_lossy(&table.stdout).contains("| recall@20 | 0.3333 | 0.6667 | +0.3333 ["));

    predictions(&dir.join("other"), &[("a", 0.0), ("b", 0.5), ("z", 0.5)]);
    let err = convrec().current_dir(&dir).args(["compare", "sft", "other"]).output().unwrap();
    let text = String::from_utf8_lossy(&err.stderr);
    assert!(!err.status.success() && text.contains("different rows") && text.contains("c"), "{text}");
}

#[test]
fn experiment_runs_sft_three_algorithms_and_a_paired_report() {
    if convrec_core::testing::gpu().is_none() {
        return;
    }
    let dir = scratch("experiment", "tiny");
    tiny_model(&dir);
    write_dataset(&dir.join("rows.jsonl"), 12);
    write_catalog(&dir.join("catalog.tsv"));
    // One file for every role: SFT takes 4 rows, RL 2 (2 steps × 1 prompt), validation 2, test 3.
    run_ok(
        convrec()
            .current_dir(&dir)
            .args(["experiment", "--model", "model", "--train", "rows.jsonl", "--validation", "rows.jsonl"])
            .args(["--test", "rows.jsonl", "--catalog", "catalog.tsv", "--out", "exp", "--sft-rows", "4"])
            .args(["--sft-batch-size", "2", "--sft-epochs", "2", "--sft-lr", "1e-2", "--lora-r", "4"])
            .args(["--max-length", "64", "--rl-steps", "2", "--prompts-per-step", "1", "--group-size", "2"])
            .args(["--max-new-tokens", "12", "--max-prompt-length", "48", "--val-rows", "2"])
            .args(["--eval-every", "1", "--test-rows", "3"]),
    );
    let exp = dir.join("exp");
    for algo in ["rank-grpo", "grpo", "gspo"] {
        let lines = jsonl(&exp.join(algo).join("metrics.jsonl"));
        let steps: Vec<u64> =
            lines.iter().filter(|l| l.get("loss").is_some()).map(|l| l["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, vec![1, 2], "{algo}: {lines:?}");
        let validated = lines.iter().filter(|l| l.get("val_ndcg@20").is_some()).count();
        assert_eq!(validated, 3, "{algo}: steps 0, 1, 2");
        assert!(exp.join("eval").join(algo).join("predictions.jsonl").is_file());
    }
    let summary: Value = serde_json::from_slice(&std::fs::read(exp.join("summary.json")).unwrap()).unwrap();
    let paired = summary["paired"].as_array().unwrap();
    assert_eq!(paired.len(), 3 * 10, "three runs against SFT, ten metrics each");
    assert!(paired.iter().all(|p| p["base"] == "sft" && p["n"] == 3), "{paired:?}");
    assert_eq!(summary["test"]["sft"]["rows"], 3);
    // The rows were split, not shared: the test rows are the last three.
    let test_rows = std::fs::read_to_string(exp.join("rows/test.jsonl")).unwrap();
    assert!(test_rows.contains("train_8") && !test_rows.contains("train_0\""), "{test_rows}");
    let report = std::fs::read_to_string(exp.join("report.md")).unwrap();
    for needle in ["## Paired differences from SFT", "| rank-grpo |", "plots/val_ndcg_at_20.svg", "| SFT |"] {
        assert!(report.contains(needle), "report lacks {needle:?}:\n{report}");
    }
    assert!(exp.join("plots/val_ndcg_at_20.svg").is_file());
}

#[test]
fn the_sft_command_is_the_core_trainer_with_files_around_it() {
    let Some(gpu) = convrec_core::testing::gpu() else { return };
    let dir = scratch("experiment", "library");
    tiny_model(&dir);
    write_dataset(&dir.join("train.jsonl"), 5);
    run_ok(
        convrec()
            .current_dir(&dir)
            .args(["sft", "--model", "model", "--data", "train.jsonl", "--out", "sft", "--epochs", "2"])
            .args(["--batch-size", "2", "--lora-r", "4", "--lora-alpha", "8", "--lr", "1e-2", "--max-length", "64"])
            .args(["--seed", "5"]),
    );
    let cli: Vec<f64> = jsonl(&dir.join("sft/metrics.jsonl")).iter().filter_map(|l| l["loss"].as_f64()).collect();

    use convrec_core::train::lora::{LoraConfig, LoraLayout, Target};
    use convrec_core::train::sft::{SftConfig, SftTrainer, sft_examples};
    let tm = convrec::text_model::load(&dir.join("model")).unwrap();
    let rows = convrec::datasets::read_rows(&dir.join("train.jsonl"), None).unwrap();
    let examples = sft_examples(&tm, &rows, 64, "train.jsonl").unwrap();
    let model = convrec_core::model::gpu::GpuModel::upload(&gpu, tm.config.clone(), tm.tensors.clone(), 80).unwrap();
    let layout = LoraLayout::new(&tm.config, LoraConfig { r: 4, alpha: 8.0, targets: Target::ALL.to_vec() });
    let config = SftConfig { lr: 1e-2, epochs: 2, batch_size: 2, seed: 5, ..SftConfig::default() };
    let mut trainer =
        pollster::block_on(SftTrainer::new(&gpu, layout.clone(), &layout.init(5), examples, config)).unwrap();
    let mut library = Vec::new();
    while !trainer.done() {
        library.push(pollster::block_on(trainer.step(&gpu, &model)).unwrap().loss);
    }
    assert_eq!(library.len(), 6, "5 rows in batches of 2, two epochs");
    assert_eq!(cli.len(), library.len());
    for (step, (a, b)) in cli.iter().zip(&library).enumerate() {
        assert!((a - b).abs() <= 1e-6 * b.abs(), "step {}: command {a} vs library {b}", step + 1);
    }
    assert!(library[5] < library[0], "the loss went down: {library:?}");
}

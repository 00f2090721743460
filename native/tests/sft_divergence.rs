//! A learning rate far too high: `convrec sft` says the run diverged — a NaN loss or a collapse
//! to saturated predictions (zero gradient) stops it with a clear message, an exploded but finite
//! loss is warned about and marked in the metrics — instead of finishing silently (was: loss
//! drifted to ln(vocabulary) with a zero gradient norm, exit 0, no warning).

mod common;

use common::*;

#[test]
fn a_diverging_sft_run_says_so() {
    if convrec_core::testing::gpu().is_none() {
        return;
    }
    let dir = scratch("sft_divergence", "lr_1e6");
    tiny_model(&dir);
    write_dataset(&dir.join("train.jsonl"), 4);
    let out = convrec()
        .current_dir(&dir)
        .args(["sft", "--model", "model", "--data", "train.jsonl", "--out", "run", "--epochs", "8"])
        .args(["--batch-size", "2", "--lora-r", "4", "--lr", "1e6", "--max-length", "64", "--save-every", "1000"])
        .output()
        .expect("run convrec");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    if out.status.success() {
        assert!(err.contains("has exploded"), "a finite but exploded loss must be warned about:\n{err}");
        let lines = jsonl(&dir.join("run/metrics.jsonl"));
        let exploded: Vec<u64> =
            lines.iter().filter(|l| l["exploded"] == true).map(|l| l["step"].as_u64().unwrap()).collect();
        assert!(!exploded.is_empty(), "no step marked exploded in {lines:?}");
        eprintln!("lr 1e6: finite loss, exploded at steps {exploded:?}");
    } else {
        // Stopped: a NaN loss or gradient ("diverged"), or a collapse to saturated predictions.
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("training diverged") || err.contains("training collapsed"), "{err}");
        assert!(err.contains("checkpoint is untouched"), "{err}");
        assert!(!dir.join("run/adapter").exists(), "no adapter is written from a failed run");
        eprintln!("lr 1e6: stopped: {}", err.lines().find(|l| l.contains("training")).unwrap_or_default());
    }
}

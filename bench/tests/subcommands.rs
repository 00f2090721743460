//! Every `convrec-bench` subcommand runs end to end at a tiny size (two layers, a few tokens) on
//! whatever adapter is present (lavapipe in CI), without python. Timings are printed by the
//! binary, never asserted here.

use std::process::Command;

/// Runs the binary with `args`; `None` (skipped) where this machine has no GPU adapter.
fn bench(args: &[&str]) -> Option<String> {
    convrec_core::testing::gpu()?;
    let out = Command::new(env!("CARGO_BIN_EXE_convrec-bench")).args(args).output().expect("convrec-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "convrec-bench {args:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(stdout)
}

#[test]
fn kernels_runs_tiny() {
    let Some(out) = bench(&[
        "kernels",
        "--models",
        "smollm2",
        "--tokens",
        "1",
        "--filter",
        "rmsnorm",
        "--budget-ms",
        "5",
        "--no-baseline",
    ]) else {
        return;
    };
    assert!(out.contains("rmsnorm fwd"), "{out}");
}

#[test]
fn model_runs_tiny() {
    let tiny = ["--layers", "1", "--prompt", "4", "--new", "2", "--train-batch", "1", "--train-seq", "8"];
    let Some(out) = bench(&[&["model", "--no-baseline"][..], &tiny].concat()) else { return };
    assert!(out.contains("decode tok/s") && out.contains("tokens/s"), "{out}");
}

#[test]
fn profile_runs_tiny_and_counts_dispatches_per_token() {
    let tiny = ["--layers", "1", "--batch", "2", "--group", "2", "--prompt", "4", "--new", "3"];
    let Some(out) = bench(&[&["profile", "--train-batch", "1", "--train-seq", "8", "--json"][..], &tiny].concat())
    else {
        return;
    };
    let report: serde_json::Value = serde_json::from_str(&out).expect("--json prints one JSON document");
    for part in ["decode", "train"] {
        let step = &report[part];
        assert!(step["dispatches_per_token"].as_f64().unwrap() > 0.0, "{part}: {step}");
        let families: Vec<&str> =
            step["kernels"].as_array().unwrap().iter().filter_map(|k| k["name"].as_str()).collect();
        assert!(families.contains(&"rmsnorm"), "{part}: {families:?}");
    }
    assert_eq!(report["decode"]["steps_profiled"], 3);
    assert_eq!(report["decode"]["tokens_per_step"], 2);
}

#[test]
fn rl_step_runs_tiny_and_says_why_the_baseline_is_missing() {
    let tiny = ["--layers", "1", "--prompts", "1", "--group", "2", "--prompt-len", "8", "--new", "4"];
    let python = ["--python", "convrec-no-such-python"];
    let Some(out) = bench(&[&["rl-step"][..], &tiny, &python].concat()) else { return };
    assert!(out.contains("sampling") && out.contains("training"), "{out}");
    assert!(out.contains("not measured") && out.contains("convrec-no-such-python"), "{out}");
}

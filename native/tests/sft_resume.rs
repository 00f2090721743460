//! `convrec sft --resume`: a run interrupted part-way and resumed from its last checkpoint ends
//! with the same adapter (and the same per-step losses) as the run that was never interrupted.
//!
//! There is no `--max-steps`, and stopping a run with `--epochs 1` then resuming with `--epochs 2`
//! is not the same training (the cosine schedule spans `--epochs`), so the run is interrupted
//! instead: its `metrics.jsonl` is a FIFO that the test reads a few lines from and then closes, and
//! the next metrics write fails with a broken pipe. The step's checkpoint is written after its
//! metrics line, so the checkpoint left behind is complete (whichever step it is).

#![cfg(unix)]

mod common;

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// `convrec sft` on the 4 rows, 2 epochs, a checkpoint after every step.
fn sft(dir: &Path, out: &str, grad_accum: usize) -> Command {
    let mut cmd = convrec();
    cmd.current_dir(dir)
        .args(["sft", "--model", "model", "--data", "train.jsonl", "--out", out, "--epochs", "2"])
        .args(["--batch-size", "1", "--grad-accum", &grad_accum.to_string(), "--save-every", "1"])
        .args(["--lora-r", "4", "--lora-alpha", "8", "--lr", "1e-2", "--max-length", "64"])
        .args(["--warmup-ratio", "0.25", "--seed", "7"]);
    cmd
}

/// Runs `cmd` (whose `--out` is `dir/out`) until it has written `lines` metrics lines, then makes
/// its next metrics write fail. Returns the step of the checkpoint it left.
fn interrupted(mut cmd: Command, dir: &Path, out: &str, lines: usize, total: u64) -> u64 {
    let out_dir = dir.join(out);
    std::fs::create_dir_all(&out_dir).unwrap();
    let fifo = out_dir.join("metrics.jsonl");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("run mkfifo");
    assert!(made.success(), "mkfifo {}", fifo.display());
    let stderr_path = dir.join(format!("{out}.stderr"));
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("start convrec sft");
    // The reader opens the FIFO (blocking until sft opens it for writing), takes `lines` lines
    // and closes it.
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || -> Vec<String> {
            let file = std::fs::File::open(&fifo).expect("open the FIFO");
            std::io::BufReader::new(file).lines().take(lines).map(|l| l.expect("a metrics line")).collect()
        })
    };
    let start = Instant::now();
    while !reader.is_finished() {
        if let Some(status) = child.try_wait().unwrap() {
            // Unblock the reader if sft never opened the FIFO, then report why it stopped.
            let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
            let _ = reader.join();
            panic!(
                "sft ended ({status}) before writing {lines} metrics lines:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        if start.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            panic!("sft wrote fewer than {lines} metrics lines in 120 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let read = reader.join().unwrap();
    assert_eq!(read.len(), lines, "{read:?}");
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(!status.success(), "sft finished although its metrics pipe was closed:\n{stderr}");
    assert!(stderr.contains("Broken pipe"), "sft stopped for another reason:\n{stderr}");
    let state: Value = serde_json::from_slice(&std::fs::read(out_dir.join("checkpoint/trainer_state.json")).unwrap())
        .expect("the checkpoint's trainer_state.json");
    let step = state["step"].as_u64().unwrap();
    assert!(
        (lines as u64..total).contains(&step),
        "checkpoint at step {step}: expected one of the first {total} steps, at least the {lines} reported"
    );
    step
}

fn scenario(dir: &Path, name: &str, grad_accum: usize, read_lines: usize) {
    let total = (4 / grad_accum) as u64 * 2;
    let full = format!("{name}_full");
    run_ok(&mut sft(dir, &full, grad_accum));
    let a = jsonl(&dir.join(&full).join("metrics.jsonl"));
    assert_eq!(a.len() as u64, total, "{a:?}");

    let cut = format!("{name}_cut");
    let step = interrupted(sft(dir, &cut, grad_accum), dir, &cut, read_lines, total);
    let resumed = format!("{name}_resumed");
    let checkpoint = dir.join(&cut).join("checkpoint");
    let out = run_ok(sft(dir, &resumed, grad_accum).arg("--resume").arg(&checkpoint));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("resuming at step {step}")), "{stderr}");

    // The resumed run reports exactly the remaining steps, with the uninterrupted run's losses
    // (same batches, same learning rates, same parameters and moments).
    let b = jsonl(&dir.join(&resumed).join("metrics.jsonl"));
    let steps: Vec<u64> = b.iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (step + 1..=total).collect::<Vec<_>>(), "{name}: resumed from {step}");
    for line in &b {
        let s = line["step"].as_u64().unwrap() as usize;
        let want = &a[s - 1];
        assert_eq!(line["epoch"], want["epoch"], "{name} step {s}");
        for key in ["loss", "lr", "grad_norm"] {
            let (x, y) = (line[key].as_f64().unwrap(), want[key].as_f64().unwrap());
            assert!((x - y).abs() <= 1e-5 * y.abs() + 1e-9, "{name} step {s} (resumed from {step}): {key} {x} vs {y}");
        }
    }

    let (layout_a, params_a, _) = load_adapter(&dir.join("model"), &dir.join(&full).join("adapter"));
    let (layout_b, params_b, _) = load_adapter(&dir.join("model"), &dir.join(&resumed).join("adapter"));
    assert_eq!((layout_a.config.clone(), layout_a.len), (layout_b.config.clone(), layout_b.len));
    let (_, start, _) = load_adapter(&dir.join("model"), &checkpoint);
    let moved = params_a.iter().zip(&start).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(moved > 1e-4, "{name}: the steps after the checkpoint changed nothing ({moved:e})");
    let diff = params_a.iter().zip(&params_b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(diff <= 1e-6, "{name}: resumed from step {step}, the final adapter differs by {diff:e}");
}

#[test]
fn an_interrupted_sft_run_resumes_to_the_same_adapter() {
    if convrec_core::testing::gpu().is_none() {
        return;
    }
    let dir = scratch("sft_resume", "interrupted");
    tiny_model(&dir);
    write_dataset(&dir.join("train.jsonl"), 4);
    // One row per step (8 steps): interrupted mid-epoch 1.
    scenario(&dir, "batch1", 1, 2);
    // Two micro-batches per step (4 steps): interrupted after step 1, halfway through epoch 1.
    scenario(&dir, "accum2", 2, 1);
}

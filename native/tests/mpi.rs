//! Data-parallel `sft` and `train` under `mpirun -np 2` (several workers sharing one adapter, as
//! lavapipe allows) against the same command in one process: the same metrics and the same adapter
//! within rounding, one writer, resumes refused at another worker count, and a worker's failure
//! ending the whole run instead of leaving the others waiting.
//!
//! These need `convrec` built with `--features mpi` and Open MPI's `mpirun`; without them they
//! skip, loudly, unless `CONVREC_REQUIRE_MPI=1` (CI's MPI stage, `.ci/mpi`) makes that a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const REQUIRE: &str = "CONVREC_REQUIRE_MPI";

/// `mpirun -np N convrec`, or `None` (skipped) where the binary or mpirun lacks MPI.
fn mpirun(workers: usize) -> Option<Command> {
    let binary = env!("CARGO_BIN_EXE_convrec");
    let version = Command::new(binary).arg("--version").output().expect("run convrec --version");
    let why = if !String::from_utf8_lossy(&version.stdout).contains("(mpi)") {
        "convrec was built without `--features mpi`"
    } else if Command::new("mpirun").arg("--version").output().is_err() {
        "no `mpirun` on PATH"
    } else {
        let mut command = Command::new("mpirun");
        command
            .args(["-np", &workers.to_string(), "--oversubscribe", binary])
            // CI containers run as root; waiting workers yield the CPU to the one that computes
            // (two cores, lavapipe); no cross-memory attach inside containers.
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("OMPI_MCA_mpi_yield_when_idle", "1")
            .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
        return Some(command);
    };
    if std::env::var_os(REQUIRE).is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("{REQUIRE} is set but {why}");
    }
    eprintln!("SKIPPED ({why}); set {REQUIRE}=1 to make this fail");
    None
}

/// The command's output, or a failure if it is still running after `limit` (a hang).
fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start mpirun");
    let start = Instant::now();
    while child.try_wait().expect("poll mpirun").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{cmd:?} still ran after {limit:?}:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    child.wait_with_output().unwrap()
}

fn num(line: &Value, key: &str) -> f64 {
    line[key].as_f64().unwrap_or_else(|| panic!("`{key}` is not a number in {line}"))
}

/// `a` and `b` agree within `rel` (relative to `b`) and `abs`.
fn close(a: f64, b: f64, rel: f64, abs: f64) -> bool {
    (a - b).abs() <= abs + rel * b.abs()
}

/// The two runs' adapters (folders `one` and `two`) moved alike from `start`: their changes
/// within `bound` of each other (relative L2 error).
fn same_adapter(dir: &Path, start: &[f32], one: &str, two: &str, bound: f64) {
    let load = |run: &str| load_adapter(&dir.join("model"), &dir.join(run).join("adapter")).1;
    let (one, two) = (load(one), load(two));
    assert_eq!((one.len(), two.len()), (start.len(), start.len()));
    let moved = |p: &[f32]| -> Vec<f32> { p.iter().zip(start).map(|(a, b)| a - b).collect() };
    let (moved_one, moved_two) = (moved(&one), moved(&two));
    assert!(moved_one.iter().any(|&d| d != 0.0), "the run did not change the adapter");
    let err = convrec_core::numeric::rel_err(&moved_two, &moved_one);
    eprintln!("adapter change of 2 workers against 1: relative error {err:e}");
    assert!(err < bound, "the adapters moved differently: {err:e}");
}

/// A scratch folder with the tiny model and `rows` training rows for `test`, and `mpirun -np 2`;
/// `None` (skipped) without MPI or a GPU.
fn setup(test: &str, rows: usize) -> Option<(PathBuf, Command)> {
    let two_workers = mpirun(2)?;
    convrec_core::testing::gpu()?;
    let dir = scratch("mpi", test);
    tiny_model(&dir);
    write_dataset(&dir.join("train.jsonl"), rows);
    Some((dir, two_workers))
}

/// `args` run alone into `one/` and by two workers into `two/`: the two runs' metrics lines.
fn alone_and_by_two(dir: &Path, mut two_workers: Command, args: &[&str]) -> (Vec<Value>, Vec<Value>) {
    run_ok(convrec().current_dir(dir).args(args).args(["--out", "one"]));
    let out = output_within(two_workers.current_dir(dir).args(args).args(["--out", "two"]), Duration::from_secs(300));
    assert!(out.status.success(), "mpirun failed:\n{}", String::from_utf8_lossy(&out.stderr));
    (jsonl(&dir.join("one/metrics.jsonl")), jsonl(&dir.join("two/metrics.jsonl")))
}

fn state(checkpoint: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(checkpoint.join("trainer_state.json")).unwrap()).unwrap()
}

#[test]
fn sft_with_two_workers_is_the_run_of_one_and_resumes_only_with_two() {
    let Some((dir, two_workers)) = setup("sft", 7) else { return };
    // 7 rows in micro-batches of 3 (split 1 + 2 between the workers; the last micro-batch of an
    // epoch has one row, so one worker idles), two micro-batches per step, 3 epochs: 6 steps.
    let args: Vec<&str> = "sft --model model --data train.jsonl --epochs 3 --batch-size 3 --grad-accum 2 \
                           --lora-r 4 --lora-alpha 8 --lr 1e-2 --max-length 64 --save-every 1000"
        .split_whitespace()
        .collect();
    let (one, two) = alone_and_by_two(&dir, two_workers, &args);
    assert_eq!(two.len(), one.len(), "one line per step, written once (by worker 0): {two:?}");
    assert_eq!(one.len(), 6);
    for (a, b) in two.iter().zip(&one) {
        assert_eq!(a["step"], b["step"]);
        // Measured: 1e-7 relative.
        assert!(close(num(a, "loss"), num(b, "loss"), 1e-5, 0.0), "{a} vs {b}");
        assert!(close(num(a, "grad_norm"), num(b, "grad_norm"), 1e-4, 1e-7), "{a} vs {b}");
    }
    // How far each moved from the initial adapter (`--seed 0`'s). Measured: 1e-6 of the change.
    let (layout, _, _) = load_adapter(&dir.join("model"), &dir.join("one/adapter"));
    same_adapter(&dir, &layout.init(0), "one", "two", 1e-4);
    assert_eq!(state(&dir.join("two/checkpoint"))["workers"], 2);
    assert_eq!(state(&dir.join("one/checkpoint"))["workers"], 1);

    // Resumed alone, the two-worker run is refused, naming both counts.
    let out = convrec().current_dir(&dir).args(&args).args(["--out", "two", "--resume", "two"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("2 worker(s)") && err.contains("resumed by 1"), "{err}");
}

#[test]
fn rank_grpo_with_two_workers_is_the_run_of_one() {
    let Some((dir, two_workers)) = setup("rank_grpo", 6) else { return };
    write_catalog(&dir.join("catalog.tsv"));
    // An SFT adapter that memorised the rows, so that samples are rewarded (as in train.rs).
    memorising_sft(&dir, 30, 3);
    // 3 prompts per step (1 + 2 between the workers), G = 2, two steps; validation on 5 rows
    // (2 + 3) at the start and the end.
    let args: Vec<&str> = "train --model model --adapter sft/adapter --data train.jsonl --catalog catalog.tsv \
                           --prompts-per-step 3 --group-size 2 --steps 2 --max-new-tokens 16 \
                           --max-prompt-length 64 --lr 1e-3 --beta 0.01 --eval-data train.jsonl --eval-limit 5"
        .split_whitespace()
        .collect();
    let (one, two) = alone_and_by_two(&dir, two_workers, &args);
    let validations =
        |lines: &[Value]| -> Vec<Value> { lines.iter().filter(|l| l.get("val_ndcg@20").is_some()).cloned().collect() };
    let (val_one, val_two) = (validations(&one), validations(&two));
    assert_eq!((val_one.len(), val_two.len()), (2, 2), "validation at steps 0 and 2, written once: {two:?}");
    for (a, b) in val_two.iter().zip(&val_one) {
        // The same greedy answers, shared out between the workers: the same scores.
        for key in ["val_ndcg@20", "val_recall@20", "val_in_catalog_rate", "val_mean_list_length"] {
            assert!(close(num(a, key), num(b, key), 1e-9, 1e-12), "{key}: {a} vs {b}");
        }
    }
    assert!(num(&val_one[0], "val_recall@20") > 0.0, "the memorised answers hit: {val_one:?}");
    let steps = |lines: &[Value]| -> Vec<Value> { lines.iter().filter(|l| l.get("loss").is_some()).cloned().collect() };
    let (one, two) = (steps(&one), steps(&two));
    assert_eq!((one.len(), two.len()), (2, 2), "one line per step, written once: {two:?}");
    assert!(one.iter().any(|l| num(l, "ndcg20") > 0.0), "no sample was rewarded, nothing to compare: {one:?}");
    for (a, b) in two.iter().zip(&one) {
        // The same completions (each drawn by its prompt's place in the step), so the same
        // sample statistics; the loss and KL within rounding.
        assert_eq!(a["completions"], 6);
        assert_eq!(a["tokens"], b["tokens"], "{a} vs {b}");
        for key in ["ndcg20", "mean_length", "early_stop_rate"] {
            assert!(close(num(a, key), num(b, key), 1e-9, 1e-12), "{key}: {a} vs {b}");
        }
        for key in ["loss", "kl"] {
            assert!(close(num(a, key), num(b, key), 1e-4, 1e-9), "{key}: {a} vs {b}");
        }
        assert!(close(num(a, "grad_norm"), num(b, "grad_norm"), 1e-4, 1e-7), "{a} vs {b}");
    }
    // Measured: 1.4e-6 of the change.
    let (_, start, _) = load_adapter(&dir.join("model"), &dir.join("sft/adapter"));
    same_adapter(&dir, &start, "one", "two", 1e-4);
}

#[test]
fn a_failing_worker_ends_every_worker_and_other_commands_are_refused() {
    let Some((dir, mut two_workers)) = setup("failure", 4) else { return };
    // A folder that holds a run: worker 0 refuses to write into it, while worker 1 goes on to its
    // first step and waits there for a sum worker 0 never joins — unless the failure ends it.
    std::fs::create_dir_all(dir.join("taken")).unwrap();
    std::fs::write(dir.join("taken/metrics.jsonl"), "{\"step\": 1}\n").unwrap();
    let args = ["sft", "--model", "model", "--data", "train.jsonl", "--out", "taken", "--max-length", "64"];
    let out = output_within(two_workers.current_dir(&dir).args(args), Duration::from_secs(120));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("worker 0 of 2") && err.contains("already holds a run"), "{err}");

    let mut devices = mpirun(2).unwrap();
    let out = output_within(devices.arg("devices"), Duration::from_secs(120));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("does not run data-parallel"), "{err}");
}

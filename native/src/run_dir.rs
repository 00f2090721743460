//! A training run's output folder, shared by `sft` and `train`: `metrics.jsonl` (one JSON object
//! per line: step records, validation records), `checkpoint/`, `adapter/`, and `adapters/step-N/`
//! (the adapters that were validated, kept as a series).
//!
//! A new run never writes over an earlier one by accident: a folder that already holds a run is
//! refused unless the run resumes (`--resume`, which keeps the metrics up to the checkpoint's step
//! and drops the later ones, so nothing is counted twice) or `--overwrite` is given (which clears
//! the earlier run's files first).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

pub const METRICS: &str = "metrics.jsonl";
/// What a run writes into its folder (and `--overwrite` removes).
const RUN_FILES: [&str; 4] = [METRICS, "checkpoint", "adapter", "adapters"];

/// How a run starts in its folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// A new run; `overwrite` allows clearing an earlier run's files.
    Fresh { overwrite: bool },
    /// Continuing from a checkpoint at `step`.
    Resume { step: u64 },
}

pub struct RunDir {
    pub path: PathBuf,
    metrics: std::fs::File,
}

/// True when `dir` holds files of an earlier run (an empty metrics file records nothing).
fn holds_a_run(dir: &Path) -> bool {
    let recorded = |f: &str| match f {
        METRICS => dir.join(f).metadata().is_ok_and(|m| m.is_file() && m.len() > 0),
        _ => dir.join(f).exists(),
    };
    RUN_FILES.iter().any(|f| recorded(f)) || leftovers(dir).next().is_some()
}

/// Hidden siblings an interrupted atomic folder write can leave (`.checkpoint.new-…`, `.adapter.old`).
fn leftovers(dir: &Path) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        RUN_FILES.iter().any(|f| name.starts_with(&format!(".{f}.")))
    })
}

/// The lines of a metrics file whose `step` is at most `step` (and lines without one).
fn metrics_up_to(text: &str, step: u64) -> String {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step")?.as_u64())
                .is_none_or(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

impl RunDir {
    pub fn open(path: &Path, start: Start) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        let metrics_path = path.join(METRICS);
        match start {
            Start::Fresh { overwrite: false } if holds_a_run(path) => bail!(
                "{} already holds a run (metrics, checkpoint or adapter): continue it with --resume {}, \
                 or start over with --overwrite",
                path.display(),
                path.join("checkpoint").display()
            ),
            Start::Fresh { overwrite: false } => {}
            Start::Fresh { overwrite: true } => {
                for p in RUN_FILES.iter().map(|f| path.join(f)).chain(leftovers(path)) {
                    let removed = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
                    if let Err(e) = removed
                        && e.kind() != std::io::ErrorKind::NotFound
                    {
                        return Err(e).with_context(|| format!("clearing the earlier run's {}", p.display()));
                    }
                }
            }
            Start::Resume { step } => {
                let text = std::fs::read_to_string(&metrics_path).unwrap_or_default();
                crate::fetch::write_atomic(&metrics_path, metrics_up_to(&text, step).as_bytes())?;
            }
        }
        let metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .with_context(|| format!("opening {}", metrics_path.display()))?;
        Ok(RunDir { path: path.to_path_buf(), metrics })
    }

    /// Appends one record to `metrics.jsonl`.
    pub fn log(&mut self, record: &serde_json::Value) -> anyhow::Result<()> {
        writeln!(self.metrics, "{record}")
            .and_then(|_| self.metrics.flush())
            .with_context(|| format!("writing {}", self.path.join(METRICS).display()))
    }

    pub fn checkpoint(&self) -> PathBuf {
        self.path.join("checkpoint")
    }

    pub fn adapter(&self) -> PathBuf {
        self.path.join("adapter")
    }

    /// Where the adapter validated at `step` is kept.
    pub fn adapter_at(&self, step: u64) -> PathBuf {
        self.path.join("adapters").join(format!("step-{step:06}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_holding_a_run_is_refused_unless_resumed_or_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let mut r = RunDir::open(&run, Start::Fresh { overwrite: false }).unwrap();
        for s in 0..4 {
            r.log(&serde_json::json!({"step": s, "loss": 1.0})).unwrap();
        }
        r.log(&serde_json::json!({"note": "no step"})).unwrap();
        drop(r);
        let err = RunDir::open(&run, Start::Fresh { overwrite: false }).err().unwrap().to_string();
        assert!(err.contains("already holds a run") && err.contains("--overwrite"), "{err}");

        // Resuming at step 2 drops the records of steps 3 (they will be written again).
        RunDir::open(&run, Start::Resume { step: 2 }).unwrap();
        let text = std::fs::read_to_string(run.join(METRICS)).unwrap();
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(!text.contains("\"step\":3"), "{text}");

        // Overwriting clears the run's files and its leftovers, nothing else.
        std::fs::create_dir_all(run.join(".checkpoint.new-x")).unwrap();
        std::fs::write(run.join("notes.txt"), "mine").unwrap();
        RunDir::open(&run, Start::Fresh { overwrite: true }).unwrap();
        assert_eq!(std::fs::read_to_string(run.join(METRICS)).unwrap(), "");
        assert!(!run.join(".checkpoint.new-x").exists());
        assert!(run.join("notes.txt").exists());
    }
}

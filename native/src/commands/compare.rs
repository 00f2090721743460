//! `convrec compare RUN_A RUN_B [RUN_C …]`: paired comparison of `convrec eval` outputs that
//! scored the same rows (matched by `sample_id`): for every metric each run's mean and, against the
//! first run, the mean per-row difference with its standard error, 95% interval and paired-t p-value
//! (`convrec_core::rec::compare`). A markdown table, or with `--json` one object per metric and run
//! pair.

use std::path::{Path, PathBuf};

use anyhow::Context;
use convrec_core::rec::compare::{Paired, Run, compare, compared_metrics, markdown_table, parse_predictions};

#[derive(clap::Args)]
pub struct Args {
    /// `convrec eval --out` folders (or their predictions.jsonl), optionally `LABEL=PATH`; the
    /// first is the base the others are compared with.
    #[arg(required = true, num_args = 2..)]
    pub runs: Vec<String>,
    /// One JSON object per metric and run pair instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Metrics to compare (default: recall@k and ndcg@k for k = 5, 10, 15, 20, in_catalog,
    /// valid_format).
    #[arg(long, value_delimiter = ',')]
    pub metrics: Option<Vec<String>>,
}

/// `LABEL=PATH` or `PATH` (labelled by its folder name).
fn parse_run(spec: &str) -> (String, PathBuf) {
    match spec.split_once('=') {
        Some((label, path)) if !label.is_empty() && !Path::new(spec).exists() => (label.to_string(), path.into()),
        _ => {
            let path = PathBuf::from(spec);
            let folder = if path.is_dir() { path.as_path() } else { path.parent().unwrap_or(&path) };
            let label = folder.file_name().map_or_else(|| spec.to_string(), |n| n.to_string_lossy().into_owned());
            (label, path)
        }
    }
}

/// Reads one run's predictions.
pub fn load_run(label: &str, path: &Path) -> anyhow::Result<Run> {
    let file = if path.is_dir() { path.join("predictions.jsonl") } else { path.to_path_buf() };
    let text = convrec::read_text(&file)
        .with_context(|| format!("{label}: evaluation predictions (write them with `convrec eval --out DIR`)"))?;
    Ok(Run { label: label.to_string(), rows: parse_predictions(&file.display().to_string(), &text)? })
}

/// The paired comparison of the runs at `paths` (label, path), first = base.
pub fn compare_runs(runs: &[(String, PathBuf)], metrics: &[String]) -> anyhow::Result<Vec<Paired>> {
    let loaded = runs.iter().map(|(label, path)| load_run(label, path)).collect::<anyhow::Result<Vec<_>>>()?;
    Ok(compare(&loaded, metrics)?)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runs: Vec<(String, PathBuf)> = args.runs.iter().map(|s| parse_run(s)).collect();
    let metrics = args.metrics.unwrap_or_else(compared_metrics);
    let pairs = compare_runs(&runs, &metrics)?;
    if args.json {
        for p in &pairs {
            println!("{}", serde_json::to_string(p)?);
        }
    } else {
        print!("{}", markdown_table(&pairs));
        println!("\npaired over the same rows: difference of means, 95% Student-t interval of the per-row differences");
    }
    Ok(())
}

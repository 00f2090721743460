//! `convrec plot`: compare runs — one SVG chart per metric, one line per run, read from each
//! run's `metrics.jsonl` (what `convrec sft`, `train` and `demo` write).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use convrec::plots::{Series, field_series, line_chart, moving_average};

#[derive(clap::Args)]
pub struct Args {
    /// A run to draw: `LABEL=DIR` or `DIR` (labelled by its folder name). DIR holds
    /// metrics.jsonl, or is the file itself. Repeat to compare runs.
    #[arg(long = "run", required = true)]
    pub runs: Vec<String>,
    /// Fields of the step records to chart, one SVG each.
    #[arg(long, value_delimiter = ',', default_value = "ndcg20,loss,kl,mean_items,grad_norm")]
    pub metrics: Vec<String>,
    /// Trailing moving average over this many steps (1 draws the raw values): sampled metrics
    /// of a few completions per step are noisy.
    #[arg(long, default_value_t = 1)]
    pub smooth: usize,
    /// Folder for the charts (`<metric>.svg`).
    #[arg(long)]
    pub out: PathBuf,
}

/// `LABEL=DIR` or `DIR` → (label, metrics file).
fn parse_run(spec: &str) -> (String, PathBuf) {
    let (label, dir) = match spec.split_once('=') {
        Some((l, d)) if !l.is_empty() && !Path::new(spec).exists() => (Some(l.to_string()), PathBuf::from(d)),
        _ => (None, PathBuf::from(spec)),
    };
    let file = if dir.is_dir() { dir.join("metrics.jsonl") } else { dir.clone() };
    let label = label.unwrap_or_else(|| {
        let named = if dir.is_dir() { dir.as_path() } else { dir.parent().unwrap_or(&dir) };
        named.file_name().map_or_else(|| spec.to_string(), |n| n.to_string_lossy().into_owned())
    });
    (label, file)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.smooth == 0 {
        bail!("--smooth must be at least 1");
    }
    let runs = args
        .runs
        .iter()
        .map(|spec| {
            let (label, file) = parse_run(spec);
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            Ok((label, text))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    for metric in &args.metrics {
        let series: Vec<Series> = runs
            .iter()
            .map(|(label, text)| Series {
                label: label.clone(),
                points: moving_average(&field_series(text, "step", metric), args.smooth),
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        if series.is_empty() {
            bail!("no run has a \"{metric}\" field in its step records");
        }
        let title =
            if args.smooth > 1 { format!("{metric} (mean of the last {} steps)", args.smooth) } else { metric.clone() };
        let path = args.out.join(format!("{metric}.svg"));
        line_chart(&path, &title, "step", metric, &series)?;
        println!("{}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_labelled_by_name_or_folder() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("rank-grpo");
        std::fs::create_dir(&run).unwrap();
        let spec = run.display().to_string();
        assert_eq!(parse_run(&spec), ("rank-grpo".to_string(), run.join("metrics.jsonl")));
        assert_eq!(parse_run(&format!("ours={spec}")), ("ours".to_string(), run.join("metrics.jsonl")));
        let file = run.join("metrics.jsonl");
        assert_eq!(parse_run(&file.display().to_string()), ("rank-grpo".to_string(), file));
    }

    #[test]
    fn one_chart_per_metric_and_a_missing_metric_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.jsonl");
        let b = dir.path().join("b.jsonl");
        std::fs::write(&a, "{\"step\":1,\"ndcg20\":0.1,\"kl\":0.0}\n{\"step\":2,\"ndcg20\":0.3,\"kl\":0.01}\n")
            .unwrap();
        std::fs::write(&b, "{\"step\":1,\"ndcg20\":0.2}\n{\"step\":2,\"ndcg20\":0.2}\n").unwrap();
        let out = dir.path().join("plots");
        let args = |metrics: &[&str]| Args {
            runs: vec![format!("rank-grpo={}", a.display()), format!("grpo={}", b.display())],
            metrics: metrics.iter().map(|m| m.to_string()).collect(),
            smooth: 2,
            out: out.clone(),
        };
        run(args(&["ndcg20", "kl"])).unwrap();
        let svg = std::fs::read_to_string(out.join("ndcg20.svg")).unwrap();
        assert!(svg.contains("rank-grpo") && svg.contains("grpo") && svg.contains("last 2 steps"));
        assert!(out.join("kl.svg").exists());
        let err = run(args(&["entropy"])).unwrap_err().to_string();
        assert!(err.contains("\"entropy\""), "{err}");
        let missing = Args { runs: vec![dir.path().join("none").display().to_string()], ..args(&["kl"]) };
        assert!(run(missing).unwrap_err().to_string().contains("none"));
    }
}

//! `convrec score`: parse completions and score them, as training rewards and as evaluation
//! metrics, one JSON line per input row. Needs no GPU.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use convrec::read_text;
use convrec_core::rec::{
    Catalog, KS, MatchConfig, evaluate, mean_se, parse_completion, parse_score_rows, relevance, reward_exp_inf,
    reward_log,
};
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    /// The catalog: TSV (`title<TAB>year` after a header line) or a JSON list of `[title, year]`.
    #[arg(long)]
    catalog: PathBuf,
    /// JSONL rows with `completion` (text, or chat messages whose assistant message is scored),
    /// `seen_titles` and `groundtruth_with_release_year`.
    #[arg(long)]
    input: PathBuf,
}

/// One output line. Field order is the documented one; `sample_id` is echoed when given.
#[derive(Serialize)]
struct Scored<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    sample_id: Option<&'a str>,
    items: Vec<(&'a str, i64)>,
    reward_exp_inf: Vec<f64>,
    reward_log: Vec<f64>,
    #[serde(rename = "recall@5")]
    recall_5: f64,
    #[serde(rename = "ndcg@5")]
    ndcg_5: f64,
    #[serde(rename = "recall@10")]
    recall_10: f64,
    #[serde(rename = "ndcg@10")]
    ndcg_10: f64,
    #[serde(rename = "recall@15")]
    recall_15: f64,
    #[serde(rename = "ndcg@15")]
    ndcg_15: f64,
    #[serde(rename = "recall@20")]
    recall_20: f64,
    #[serde(rename = "ndcg@20")]
    ndcg_20: f64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let catalog_name = args.catalog.display().to_string();
    let catalog = Catalog::parse(&catalog_name, &read_text(&args.catalog)?)
        .with_context(|| format!("reading the catalog {catalog_name}"))?;
    let input_name = args.input.display().to_string();
    let rows = parse_score_rows(&input_name, &read_text(&args.input)?)
        .with_context(|| format!("reading the rows to score from {input_name}"))?;
    // Zero rows would print means of nothing as if they were scores.
    anyhow::ensure!(!rows.is_empty(), "{input_name}: no rows to score (the file is empty or blank)");

    let config = MatchConfig::default();
    let mut out = BufWriter::new(io::stdout().lock());
    let mut per_metric: Vec<Vec<f64>> = vec![Vec::with_capacity(rows.len()); 2 * KS.len()];
    for row in &rows {
        let items = parse_completion(&row.completion);
        let rel = relevance(&items, &row.groundtruth, &row.seen_titles, &catalog, &config);
        let m = evaluate(&items, &row.groundtruth, &row.seen_titles, &catalog, &config);
        for (column, (_, value)) in per_metric.iter_mut().zip(m.named()) {
            column.push(value);
        }
        let line = Scored {
            sample_id: row.sample_id.as_deref(),
            items: items.iter().map(|it| (it.title.as_str(), it.year)).collect(),
            reward_exp_inf: reward_exp_inf(&rel),
            reward_log: reward_log(&rel),
            recall_5: m.recall[0],
            ndcg_5: m.ndcg[0],
            recall_10: m.recall[1],
            ndcg_10: m.ndcg[1],
            recall_15: m.recall[2],
            ndcg_15: m.ndcg[2],
            recall_20: m.recall[3],
            ndcg_20: m.ndcg[3],
        };
        if !write_line(&mut out, &line)? {
            return Ok(());
        }
    }
    if !flush(&mut out)? {
        return Ok(());
    }

    // The summary goes to stderr so that stdout stays pure JSON lines.
    let names = convrec_core::rec::Metrics::default().named();
    let summary: Vec<String> = names
        .iter()
        .zip(&per_metric)
        .map(|((name, _), values)| {
            let s = mean_se(values);
            format!("{name} {:.4} ± {:.4}", s.mean, s.se)
        })
        .collect();
    eprintln!("convrec score: {} rows; mean ± s.e.: {}", rows.len(), summary.join(", "));
    Ok(())
}

/// Writes one JSON line; `false` when the reader went away (`| head`), which is not an error.
fn write_line(out: &mut impl Write, line: &Scored) -> anyhow::Result<bool> {
    let result = serde_json::to_writer(&mut *out, line).map_err(io::Error::from).and_then(|()| out.write_all(b"\n"));
    quiet_broken_pipe(result)
}

fn flush(out: &mut impl Write) -> anyhow::Result<bool> {
    quiet_broken_pipe(out.flush())
}

fn quiet_broken_pipe(result: io::Result<()>) -> anyhow::Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing to stdout"),
    }
}

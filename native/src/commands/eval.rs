//! `convrec eval`: greedy recommendations for held-out conversations (batched, once per unique
//! prompt), scored with the paper's metrics: mean Recall/NDCG@k with standard errors, in-catalog
//! rate, valid-format rate and mean list length; predictions as JSONL and a summary JSON.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use convrec_core::GpuOptions;
use convrec_core::model::gpu::GpuModel;
use convrec_core::rec::Catalog;
use convrec_core::rec::dataset::parse_dataset;
use convrec_core::rec::evaluation::{EvalOptions, greedy_completions, score_rows, unique_prompts};
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// An HF model folder or a GGUF file (default: SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A PEFT LoRA adapter folder.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Rows in the Reddit-v2 schema (JSONL).
    #[arg(long)]
    pub data: PathBuf,
    /// The catalog (TSV `title<TAB>year` with a header, or a JSON list).
    #[arg(long)]
    pub catalog: PathBuf,
    /// Evaluate the first N rows only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write predictions.jsonl and summary.json here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Prompts generated together.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 400)]
    pub max_new_tokens: usize,
}

/// Runs the evaluation and returns the summary (also printed as a table).
pub fn run_eval(gpu_options: &GpuOptions, args: &Args) -> anyhow::Result<serde_json::Value> {
    let path = convrec::text_model::model_path(args.model.as_deref())?;
    let tm = convrec::text_model::load(&path)?;
    let catalog_name = args.catalog.display().to_string();
    let catalog_text = std::fs::read_to_string(&args.catalog).with_context(|| format!("reading {catalog_name}"))?;
    let catalog = Catalog::parse(&catalog_name, &catalog_text)?;
    let data_name = args.data.display().to_string();
    let mut rows = parse_dataset(
        &data_name,
        &std::fs::read_to_string(&args.data).with_context(|| format!("reading {data_name}"))?,
    )?;
    if let Some(n) = args.limit {
        rows.truncate(n);
    }
    // Once per unique prompt: rows that share a conversation share its completion.
    let prompts = unique_prompts(&tm, &rows)?;
    let longest = prompts.ids.iter().map(Vec::len).max().unwrap_or(0);
    let gpu = super::open_gpu(gpu_options)?;
    let base = GpuModel::upload(&gpu, tm.config.clone(), tm.tensors.clone(), longest + args.max_new_tokens + 1)
        .with_context(|| format!("loading {}", path.display()))?;
    let mut merged = None;
    let model = super::with_adapter(&gpu, &base, args.adapter.as_deref(), &mut merged)?;
    let bar = indicatif::ProgressBar::new(prompts.ids.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} eval [{bar:30}] {pos}/{len} prompts · ETA {eta}")?
            .progress_chars("=> "),
    );
    let options =
        EvalOptions { batch_size: args.batch_size, max_new_tokens: args.max_new_tokens, ..Default::default() };
    let texts = pollster::block_on(greedy_completions(&gpu, model, &tm, &prompts.ids, &options, |p| {
        bar.set_position(p.prompts_done as u64)
    }))?;
    bar.finish_and_clear();
    let per_row: Vec<&str> = prompts.of_row.iter().map(|&p| texts[p].as_str()).collect();
    let (results, scored) = score_rows(&rows, &per_row, &catalog, &options.matching);

    let mut summary = serde_json::Map::new();
    summary.insert("model".into(), json!(path.display().to_string()));
    summary.insert("adapter".into(), json!(args.adapter.as_ref().map(|a| a.display().to_string())));
    summary.extend(scored.to_json());
    println!("{}", scored.table());
    let summary = serde_json::Value::Object(summary);
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let mut lines = Vec::new();
        for r in &results {
            writeln!(lines, "{}", serde_json::to_string(r)?)?;
        }
        convrec::fetch::write_atomic(&out.join("predictions.jsonl"), &lines)?;
        convrec::fetch::write_atomic(&out.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    }
    Ok(summary)
}

pub fn run(gpu_options: &GpuOptions, args: Args) -> anyhow::Result<()> {
    run_eval(gpu_options, &args).map(|_| ())
}

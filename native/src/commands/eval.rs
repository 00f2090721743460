//! `convrec eval`: greedy recommendations for held-out conversations (batched, once per unique
//! prompt), scored with the paper's metrics: mean Recall/NDCG@k with standard errors, in-catalog
//! rate, valid-format rate, mean list length and the share of answers cut at the token budget;
//! predictions as JSONL (what `convrec compare` pairs by `sample_id`) and a summary JSON.

use std::io::Write as _;
use std::path::PathBuf;

use convrec_core::GpuOptions;
use convrec_core::rec::evaluation::{Answer, EvalOptions, greedy_completions, score_rows, unique_prompts};
use serde_json::json;

use convrec::session::Session;

#[derive(clap::Args, Clone)]
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
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Write predictions.jsonl and summary.json here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Prompts generated together.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub batch_size: u64,
    /// New tokens per answer (default: what a 20-item list in the style of the rows' own
    /// completions or ground truth takes, with a margin).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_new_tokens: Option<u64>,
    /// Prompts are cut from the left to this many tokens (as in training).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_prompt_length: u64,
}

/// Runs the evaluation and returns the summary (also printed as a table).
pub fn run_eval(gpu_options: &GpuOptions, args: &Args) -> anyhow::Result<serde_json::Value> {
    run_in(&Session::open(gpu_options, args.model.as_deref())?, args)
}

/// The evaluation in an open session.
pub fn run_in(session: &Session, args: &Args) -> anyhow::Result<serde_json::Value> {
    let (gpu, tm) = (&session.gpu, &session.tm);
    let catalog = convrec::datasets::read_catalog(&args.catalog)?;
    let rows = convrec::datasets::read_rows(&args.data, args.limit.map(|n| n as usize))?;
    let max_new_tokens = super::token_budget(tm, &rows, 20, args.max_new_tokens, "--max-new-tokens")?;
    let options = EvalOptions {
        batch_size: args.batch_size as usize,
        max_new_tokens,
        max_prompt_length: args.max_prompt_length as usize,
        ..Default::default()
    };
    // Once per unique prompt: rows that share a conversation share its completion.
    let prompts = unique_prompts(tm, &rows, options.max_prompt_length)?;
    let longest = prompts.ids.iter().map(Vec::len).max().unwrap_or(0);
    let base = session.upload(longest + max_new_tokens + 1)?;
    let mut merged = None;
    let model = super::with_adapter(gpu, &base, args.adapter.as_deref(), &mut merged)?;
    let bar = indicatif::ProgressBar::new(prompts.ids.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} eval [{bar:30}] {pos}/{len} prompts · ETA {eta}")?
            .progress_chars("=> "),
    );
    let answers = pollster::block_on(greedy_completions(gpu, model, tm, &prompts.ids, &options, |p| {
        bar.set_position(p.prompts_done as u64)
    }))?;
    bar.finish_and_clear();
    let per_row: Vec<&Answer> = prompts.of_row.iter().map(|&p| &answers[p]).collect();
    let (results, scored) = score_rows(&rows, &per_row, &catalog, &options.matching);

    let mut summary = serde_json::Map::new();
    summary.insert("model".into(), json!(session.base_name));
    summary.insert("adapter".into(), json!(args.adapter.as_ref().map(|a| a.display().to_string())));
    summary.insert("max_new_tokens".into(), json!(max_new_tokens));
    summary.extend(scored.to_json());
    println!("{}", scored.table());
    if scored.cut_rate > 0.0 {
        eprintln!(
            "note: {:.1}% of the answers ran into the {max_new_tokens}-token budget; their last items are missing \
             (raise --max-new-tokens)",
            100.0 * scored.cut_rate
        );
    }
    let summary = serde_json::Value::Object(summary);
    if let Some(out) = &args.out {
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

//! `convrec eval`: greedy recommendations for held-out conversations (batched, once per unique
//! prompt), scored with the paper's metrics: mean Recall/NDCG@k with standard errors, in-catalog
//! rate, valid-format rate and mean list length; predictions as JSONL and a summary JSON.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use convrec_core::GpuOptions;
use convrec_core::model::chat::Message;
use convrec_core::model::generate::{GenerateRequest, generate};
use convrec_core::model::gpu::GpuModel;
use convrec_core::ops::decode::SamplingConfig;
use convrec_core::rec::dataset::parse_dataset;
use convrec_core::rec::{Catalog, KS, MatchConfig, evaluate, mean_se, parse_completion};
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
    let mut prompt_of: Vec<usize> = Vec::new();
    let mut unique: Vec<Vec<u32>> = Vec::new();
    let mut seen: HashMap<Vec<u32>, usize> = HashMap::new();
    for row in &rows {
        let messages: Vec<Message> =
            row.prompt.iter().map(|m| Message::new(m.role.clone(), m.content.clone())).collect();
        let ids = tm.prompt_ids(&messages)?;
        let idx = *seen.entry(ids.clone()).or_insert_with(|| {
            unique.push(ids);
            unique.len() - 1
        });
        prompt_of.push(idx);
    }
    let longest = unique.iter().map(Vec::len).max().unwrap_or(0);
    let gpu = super::open_gpu(gpu_options)?;
    let base = GpuModel::upload(&gpu, tm.config.clone(), tm.tensors.clone(), longest + args.max_new_tokens + 1)
        .with_context(|| format!("loading {}", path.display()))?;
    let mut merged = None;
    let model = super::with_adapter(&gpu, &base, args.adapter.as_deref(), &mut merged)?;
    let bar = indicatif::ProgressBar::new(unique.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} eval [{bar:30}] {pos}/{len} prompts · ETA {eta}")?
            .progress_chars("=> "),
    );
    let mut texts = vec![String::new(); unique.len()];
    for (chunk_index, chunk) in unique.chunks(args.batch_size.max(1)).enumerate() {
        let req = GenerateRequest {
            prompts: chunk.to_vec(),
            num_samples: 1,
            max_new_tokens: args.max_new_tokens,
            sampling: SamplingConfig::greedy(),
            stop_ids: tm.stop_ids.clone(),
        };
        let out = pollster::block_on(generate(&gpu, model, &req, |_, _| {}))?;
        for c in out {
            texts[chunk_index * args.batch_size.max(1) + c.prompt] = tm.decode(&c.tokens)?;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();

    let config = MatchConfig::default();
    let mut per_metric: Vec<Vec<f64>> = vec![Vec::new(); 2 * KS.len()];
    let (mut lengths, mut in_catalog, mut valid) = (Vec::new(), Vec::new(), Vec::new());
    let mut predictions = Vec::new();
    for (row, &p) in rows.iter().zip(&prompt_of) {
        let text = &texts[p];
        let items = parse_completion(text);
        let first: Vec<_> = items.iter().take(config.rec_num).collect();
        let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
        lengths.push(first.len() as f64);
        in_catalog.push(if first.is_empty() {
            0.0
        } else {
            first.iter().filter(|i| catalog.contains(&i.title, i.year)).count() as f64 / first.len() as f64
        });
        valid.push(if lines == 0 { 0.0 } else { items.len().min(lines) as f64 / lines as f64 });
        let m = evaluate(&items, &row.groundtruth, &row.seen_titles, &catalog, &config);
        for (i, (_, v)) in m.named().into_iter().enumerate() {
            per_metric[i].push(v);
        }
        predictions.push(json!({"sample_id": row.sample_id, "completion": text,
            "items": items.iter().map(|i| json!([i.title, i.year])).collect::<Vec<_>>(),
            "metrics": m.named().into_iter().map(|(k, v)| (k, json!(v))).collect::<serde_json::Map<_, _>>()}));
    }
    let names: Vec<String> = KS.iter().flat_map(|k| [format!("recall@{k}"), format!("ndcg@{k}")]).collect();
    let mut summary = serde_json::Map::new();
    summary.insert("model".into(), json!(path.display().to_string()));
    summary.insert("adapter".into(), json!(args.adapter.as_ref().map(|a| a.display().to_string())));
    summary.insert("rows".into(), json!(rows.len()));
    for (name, values) in names.iter().zip(&per_metric) {
        let ms = mean_se(values);
        summary.insert(name.clone(), json!({"mean": ms.mean, "se": ms.se}));
    }
    summary.insert("in_catalog_rate".into(), json!(mean_se(&in_catalog).mean));
    summary.insert("valid_format_rate".into(), json!(mean_se(&valid).mean));
    summary.insert("mean_list_length".into(), json!(mean_se(&lengths).mean));
    let summary = serde_json::Value::Object(summary);
    println!("{:<10} {:>8} {:>8}", "metric", "mean", "s.e.");
    for name in &names {
        println!(
            "{name:<10} {:>8.4} {:>8.4}",
            summary[name]["mean"].as_f64().unwrap_or(0.0),
            summary[name]["se"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "in-catalog {:.3} · valid format {:.3} · mean list length {:.1} · {} rows",
        summary["in_catalog_rate"].as_f64().unwrap_or(0.0),
        summary["valid_format_rate"].as_f64().unwrap_or(0.0),
        summary["mean_list_length"].as_f64().unwrap_or(0.0),
        rows.len()
    );
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let mut lines = Vec::new();
        for p in &predictions {
            writeln!(lines, "{p}")?;
        }
        convrec::fetch::write_atomic(&out.join("predictions.jsonl"), &lines)?;
        convrec::fetch::write_atomic(&out.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    }
    Ok(summary)
}

pub fn run(gpu_options: &GpuOptions, args: Args) -> anyhow::Result<()> {
    run_eval(gpu_options, &args).map(|_| ())
}

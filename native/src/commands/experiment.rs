//! `convrec experiment`: the paper's comparison in one command. SFT from the base model, then
//! Rank-GRPO, GRPO and GSPO each from that same SFT adapter at the same sample budget (steps ×
//! prompts × G), each validated over training; then every final adapter and the SFT adapter
//! answer the same held-out test rows, and the paired comparison against SFT (`compare`) goes into
//! a markdown report with SVG curves. Presets size it for this 2-core CPU (`cpu-smoke`), for
//! fifteen minutes of one H100/H200 (`gpu-15min`) or for the paper's recipe (`paper`); every
//! preset value can be overridden by its flag.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use convrec::plots::{Series, field_series, line_chart};
use convrec::session::Session;
use convrec_core::GpuOptions;
use convrec_core::rec::compare::{Paired, compared_metrics, markdown_table};
use convrec_core::rl::trainer::Algo;
use serde::Serialize;

use super::{compare, eval, sft, train};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// Every stage at toy size: under 20 minutes on a 2-core CPU through lavapipe. Shows the
    /// pipeline works; far too small to move the metrics.
    CpuSmoke,
    /// The whole experiment, model load included, sized for fifteen minutes of one H100/H200.
    Gpu15min,
    /// The paper's recipe as far as RANK_GRPO.md §8 gives it (hours to days of GPU time).
    Paper,
}

/// Every size and rate of the experiment. A preset fills them; flags override.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub sft_rows: usize,
    pub sft_epochs: u64,
    pub sft_batch_size: u64,
    pub sft_lr: f32,
    pub lora_r: u64,
    pub max_length: u64,
    pub rl_steps: u64,
    pub prompts_per_step: u64,
    pub group_size: u64,
    pub rl_lr: f32,
    pub micro_batch: u64,
    /// None: from the data (`rec::budget`).
    pub max_new_tokens: Option<u64>,
    pub max_prompt_length: u64,
    pub val_rows: usize,
    pub eval_every: u64,
    pub test_rows: usize,
    pub algos: Vec<Algo>,
}

impl Preset {
    pub fn plan(self) -> Plan {
        let all = Algo::ALL.to_vec();
        match self {
            Preset::CpuSmoke => Plan {
                sft_rows: 6,
                sft_epochs: 1,
                sft_batch_size: 2,
                sft_lr: 1e-3,
                lora_r: 16,
                max_length: 512,
                rl_steps: 1,
                prompts_per_step: 1,
                group_size: 2,
                rl_lr: 1e-5,
                micro_batch: 4,
                max_new_tokens: Some(48),
                max_prompt_length: 512,
                val_rows: 1,
                eval_every: 2,
                test_rows: 2,
                algos: all,
            },
            // Sized from the step times measured on an H200 (docs/EXPERIMENTS.md); not yet run there.
            Preset::Gpu15min => Plan {
                sft_rows: 512,
                sft_epochs: 1,
                sft_batch_size: 8,
                sft_lr: 5e-4,
                lora_r: 16,
                max_length: 1024,
                rl_steps: 8,
                prompts_per_step: 8,
                group_size: 8,
                rl_lr: 2e-5,
                micro_batch: 16,
                max_new_tokens: None,
                max_prompt_length: 1024,
                val_rows: 64,
                eval_every: 4,
                test_rows: 256,
                algos: all,
            },
            Preset::Paper => Plan {
                sft_rows: usize::MAX,
                sft_epochs: 1,
                sft_batch_size: 8,
                sft_lr: 5e-5,
                lora_r: 16,
                max_length: 1024,
                rl_steps: 200,
                prompts_per_step: 48,
                group_size: 8,
                rl_lr: 1e-6,
                micro_batch: 16,
                max_new_tokens: None,
                max_prompt_length: 2048,
                val_rows: 256,
                eval_every: 20,
                test_rows: usize::MAX,
                algos: all,
            },
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_enum, default_value = "cpu-smoke")]
    pub preset: Preset,
    /// Output folder: data/, sft/, <algo>/, eval/<run>/, plots/, report.md, summary.json.
    #[arg(long, default_value = "convrec-experiment")]
    pub out: PathBuf,
    /// An HF model folder or a GGUF file (default: SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Training rows (JSONL, Reddit-v2 schema; SFT takes the first rows, RL the next ones).
    /// Default: MovieLens-100K conversations built into OUT/data.
    #[arg(long, requires = "catalog")]
    pub train: Option<PathBuf>,
    /// Validation rows (default: validation.jsonl beside --train; a file used for several roles
    /// gives each role rows of its own, in the order train, validation, test).
    #[arg(long, requires = "train")]
    pub validation: Option<PathBuf>,
    /// Test rows (default: test.jsonl beside --train).
    #[arg(long, requires = "train")]
    pub test: Option<PathBuf>,
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub sft_rows: Option<usize>,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub sft_epochs: Option<u64>,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub sft_batch_size: Option<u64>,
    #[arg(long, value_parser = super::flags::positive)]
    pub sft_lr: Option<f32>,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub lora_r: Option<u64>,
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..=1_000_000))]
    pub max_length: Option<u64>,
    /// RL optimiser steps of each algorithm.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rl_steps: Option<u64>,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub prompts_per_step: Option<u64>,
    /// Completions per prompt (G).
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..=1024))]
    pub group_size: Option<u64>,
    #[arg(long, value_parser = super::flags::positive)]
    pub rl_lr: Option<f32>,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub micro_batch: Option<u64>,
    /// New tokens per completion (default: the preset's, or what a 20-item list of the data takes).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_new_tokens: Option<u64>,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_prompt_length: Option<u64>,
    /// Validation rows answered during training.
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub val_rows: Option<usize>,
    /// Validate every N steps (SFT and RL).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub eval_every: Option<u64>,
    /// Test rows every final adapter answers.
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub test_rows: Option<usize>,
    /// Which RL algorithms to run (default: rank-grpo,grpo,gspo).
    #[arg(long, value_delimiter = ',')]
    pub algos: Option<Vec<Algo>>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl Args {
    /// The preset with the flags that were given applied over it.
    pub fn plan(&self) -> Plan {
        let p = self.preset.plan();
        Plan {
            sft_rows: self.sft_rows.unwrap_or(p.sft_rows),
            sft_epochs: self.sft_epochs.unwrap_or(p.sft_epochs),
            sft_batch_size: self.sft_batch_size.unwrap_or(p.sft_batch_size),
            sft_lr: self.sft_lr.unwrap_or(p.sft_lr),
            lora_r: self.lora_r.unwrap_or(p.lora_r),
            max_length: self.max_length.unwrap_or(p.max_length),
            rl_steps: self.rl_steps.unwrap_or(p.rl_steps),
            prompts_per_step: self.prompts_per_step.unwrap_or(p.prompts_per_step),
            group_size: self.group_size.unwrap_or(p.group_size),
            rl_lr: self.rl_lr.unwrap_or(p.rl_lr),
            micro_batch: self.micro_batch.unwrap_or(p.micro_batch),
            max_new_tokens: self.max_new_tokens.or(p.max_new_tokens),
            max_prompt_length: self.max_prompt_length.unwrap_or(p.max_prompt_length),
            val_rows: self.val_rows.unwrap_or(p.val_rows),
            eval_every: self.eval_every.unwrap_or(p.eval_every),
            test_rows: self.test_rows.unwrap_or(p.test_rows),
            algos: self.algos.clone().unwrap_or(p.algos),
        }
    }
}

/// The four row files the stages read, cut from the sources.
struct Splits {
    sft: PathBuf,
    rl: PathBuf,
    validation: PathBuf,
    test: PathBuf,
    catalog: PathBuf,
}

/// Takes rows from each source file in order, so that a file serving several roles gives each its
/// own rows; writes each role's rows to `dir/<role>.jsonl`.
fn split_rows(dir: &Path, roles: &[(&str, &Path, usize)]) -> anyhow::Result<Vec<PathBuf>> {
    let mut taken: std::collections::HashMap<PathBuf, usize> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for (role, source, n) in roles {
        let text = convrec::read_text(source)?;
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let key = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
        let from = taken.get(&key).copied().unwrap_or(0);
        let chosen: Vec<&str> = lines.iter().skip(from).take(*n).copied().collect();
        anyhow::ensure!(
            !chosen.is_empty(),
            "{}: no rows left for the {role} rows ({} rows, {from} taken by earlier roles)",
            source.display(),
            lines.len()
        );
        taken.insert(key, from + chosen.len());
        let path = dir.join(format!("{role}.jsonl"));
        convrec::fetch::write_atomic(&path, (chosen.join("\n") + "\n").as_bytes())?;
        out.push(path);
    }
    Ok(out)
}

fn splits(args: &Args, plan: &Plan) -> anyhow::Result<Splits> {
    let (train, validation, test, catalog) = match &args.train {
        Some(train) => {
            let beside = |name: &str| train.parent().unwrap_or(Path::new(".")).join(name);
            (
                train.clone(),
                args.validation.clone().unwrap_or_else(|| beside("validation.jsonl")),
                args.test.clone().unwrap_or_else(|| beside("test.jsonl")),
                args.catalog.clone().expect("clap requires --catalog with --train"),
            )
        }
        None => {
            let data = args.out.join("data");
            if !data.join("catalog.tsv").exists() {
                super::data::movielens_into(&data, 0)?;
            }
            (data.join("train.jsonl"), data.join("validation.jsonl"), data.join("test.jsonl"), data.join("catalog.tsv"))
        }
    };
    let rl_rows = (plan.rl_steps * plan.prompts_per_step) as usize;
    let files = split_rows(
        &args.out.join("rows"),
        &[
            ("sft", &train, plan.sft_rows),
            ("rl", &train, rl_rows),
            ("validation", &validation, plan.val_rows),
            ("test", &test, plan.test_rows),
        ],
    )?;
    let [sft, rl, validation, test]: [PathBuf; 4] = files.try_into().expect("four roles");
    Ok(Splits { sft, rl, validation, test, catalog })
}

/// One line per stage in the report: what ran and how long it took.
#[derive(Serialize)]
struct Stage {
    name: String,
    seconds: f64,
}

pub fn run(gpu_options: &GpuOptions, args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let plan = args.plan();
    anyhow::ensure!(!plan.algos.is_empty(), "--algos: name at least one of rank-grpo, grpo, gspo");
    let out = args.out.clone();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let session = Session::open(gpu_options, args.model.as_deref())?;
    let data = splits(&args, &plan)?;
    let mut stages: Vec<Stage> = Vec::new();
    let mut stage = |name: String, since: Instant| {
        eprintln!("[experiment] {name}: {:.0} s", since.elapsed().as_secs_f64());
        stages.push(Stage { name, seconds: since.elapsed().as_secs_f64() });
    };

    let t = Instant::now();
    let sft_out = out.join("sft");
    sft::run_in(
        &session,
        &sft::Args {
            model: args.model.clone(),
            eval_data: Some(data.validation.clone()),
            catalog: Some(data.catalog.clone()),
            eval_every: Some(plan.eval_every),
            max_new_tokens: plan.max_new_tokens,
            lora_r: plan.lora_r,
            lora_alpha: 2.0 * plan.lora_r as f32,
            lr: plan.sft_lr,
            epochs: plan.sft_epochs,
            batch_size: plan.sft_batch_size,
            max_length: plan.max_length,
            seed: args.seed,
            save_every: 1_000_000,
            overwrite: true,
            ..super::stage_args(&[("data", &data.sft), ("out", &sft_out)])?
        },
    )?;
    stage("SFT".into(), t);

    for &algo in &plan.algos {
        let t = Instant::now();
        train::run_in(
            &session,
            &train::Args {
                algo,
                model: args.model.clone(),
                group_size: plan.group_size,
                prompts_per_step: plan.prompts_per_step,
                steps: Some(plan.rl_steps),
                lr: plan.rl_lr,
                max_new_tokens: plan.max_new_tokens,
                max_prompt_length: plan.max_prompt_length,
                micro_batch: plan.micro_batch,
                seed: args.seed,
                save_every: 1_000_000,
                overwrite: true,
                eval_data: Some(data.validation.clone()),
                eval_every: Some(plan.eval_every),
                ..super::stage_args(&[
                    ("adapter", &sft_out.join("adapter")),
                    ("data", &data.rl),
                    ("catalog", &data.catalog),
                    ("out", &out.join(algo.name())),
                ])?
            },
        )?;
        stage(format!("{algo} ({} steps)", plan.rl_steps), t);
    }

    // Every final adapter answers the same test rows; SFT first (the comparison's base).
    let mut runs: Vec<(String, PathBuf)> = Vec::new();
    // In run order (SFT first): the report's table follows it.
    let mut summaries: Vec<(String, serde_json::Value)> = Vec::new();
    let adapters = std::iter::once(("sft".to_string(), sft_out.join("adapter")))
        .chain(plan.algos.iter().map(|a| (a.name().to_string(), out.join(a.name()).join("adapter"))));
    for (label, adapter) in adapters {
        let t = Instant::now();
        let dir = out.join("eval").join(&label);
        let summary = eval::run_in(
            &session,
            &eval::Args {
                model: args.model.clone(),
                adapter: Some(adapter),
                out: Some(dir.clone()),
                batch_size: plan.micro_batch.max(8),
                max_new_tokens: plan.max_new_tokens,
                max_prompt_length: plan.max_prompt_length,
                ..super::stage_args(&[("data", &data.test), ("catalog", &data.catalog)])?
            },
        )?;
        summaries.push((label.clone(), summary));
        runs.push((label.clone(), dir));
        stage(format!("test evaluation of {label}"), t);
    }
    let pairs = compare::compare_runs(&runs, &compared_metrics())?;
    let plots = write_plots(&out, &plan)?;
    let report = report(&args, &plan, &summaries, &pairs, &plots, &stages, started.elapsed().as_secs_f64());
    convrec::fetch::write_atomic(&out.join("report.md"), report.as_bytes())?;
    let summary = serde_json::json!({
        "preset": args.preset, "plan": plan, "seed": args.seed, "test": summaries.iter().cloned().collect::<serde_json::Map<_, _>>(), "paired": pairs,
        "stages": stages, "seconds": started.elapsed().as_secs_f64(),
    });
    convrec::fetch::write_atomic(&out.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    println!("{}", markdown_table(&pairs));
    println!("report: {} ({:.0} s)", out.join("report.md").display(), started.elapsed().as_secs_f64());
    Ok(())
}

/// Curves over training, one line per RL run (and SFT where it has the metric).
fn write_plots(out: &Path, plan: &Plan) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let read = |dir: &Path| std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
    let rl: Vec<(String, String)> =
        plan.algos.iter().map(|a| (a.name().to_string(), read(&out.join(a.name())))).collect();
    let sft = read(&out.join("sft"));
    let charts = [
        ("val_ndcg@20", "Validation NDCG@20 (greedy) over RL steps", "NDCG@20"),
        ("val_recall@20", "Validation Recall@20 (greedy) over RL steps", "Recall@20"),
        ("ndcg20", "NDCG@20 of the sampled completions", "NDCG@20"),
        ("kl", "KL to the SFT adapter", "KL"),
        ("mean_items", "Items per sampled list", "items"),
        ("cut_rate", "Sampled lists cut at the token budget", "share"),
    ];
    let mut written = Vec::new();
    for (field, title, y) in charts {
        let series: Vec<Series> = rl
            .iter()
            .map(|(label, text)| Series { label: label.clone(), points: field_series(text, "step", field) })
            .filter(|s| !s.points.is_empty())
            .collect();
        if series.is_empty() {
            continue;
        }
        let path = out.join("plots").join(format!("{}.svg", field.replace('@', "_at_")));
        line_chart(&path, title, "RL step", y, &series)?;
        written.push((title.to_string(), path));
    }
    let sft_val = field_series(&sft, "step", "val_ndcg@20");
    if !sft_val.is_empty() {
        let path = out.join("plots").join("sft_val_ndcg_at_20.svg");
        line_chart(
            &path,
            "Validation NDCG@20 over SFT steps",
            "SFT step",
            "NDCG@20",
            &[Series { label: "sft".into(), points: sft_val }],
        )?;
        written.push(("Validation NDCG@20 over SFT steps".into(), path));
    }
    Ok(written)
}

fn report(
    args: &Args,
    plan: &Plan,
    summaries: &[(String, serde_json::Value)],
    pairs: &[Paired],
    plots: &[(String, PathBuf)],
    stages: &[Stage],
    seconds: f64,
) -> String {
    let mut s = String::from("# Experiment: SFT, then RL from the same SFT adapter\n\n");
    s += &format!(
        "Preset `{}`, seed {}, {:.0} s in all. Command: `convrec experiment --preset {} --seed {}` \
         (with the flags recorded in summary.json's plan).\n\n",
        serde_json::to_value(args.preset).unwrap_or_default().as_str().unwrap_or("?"),
        args.seed,
        seconds,
        serde_json::to_value(args.preset).unwrap_or_default().as_str().unwrap_or("?"),
        args.seed
    );
    let rows = |n: usize| if n == usize::MAX { "all".to_string() } else { n.to_string() };
    s += &format!(
        "SFT: {} rows × {} epoch(s), batch {}, lr {:e}, LoRA r {}. RL: {} steps × {} prompts × G = {} per \
         algorithm (the same sample budget), lr {:e}. Validation: {} rows every {} steps. Test: {} rows.\n\n",
        rows(plan.sft_rows),
        plan.sft_epochs,
        plan.sft_batch_size,
        plan.sft_lr,
        plan.lora_r,
        plan.rl_steps,
        plan.prompts_per_step,
        plan.group_size,
        plan.rl_lr,
        rows(plan.val_rows),
        plan.eval_every,
        summaries.first().and_then(|(_, v)| v["rows"].as_u64()).unwrap_or(0),
    );
    s += "## Test set (greedy)\n\n| adapter | NDCG@20 ± s.e. | Recall@20 ± s.e. | in-catalog | valid format | items | cut |\n";
    s += "|---|---|---|---:|---:|---:|---:|\n";
    for (label, v) in summaries {
        let m = |k: &str| (v[k]["mean"].as_f64().unwrap_or(f64::NAN), v[k]["se"].as_f64().unwrap_or(f64::NAN));
        let ((n, ns), (r, rs)) = (m("ndcg@20"), m("recall@20"));
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        s += &format!(
            "| {label} | {n:.4} ± {ns:.4} | {r:.4} ± {rs:.4} | {:.3} | {:.3} | {:.1} | {:.3} |\n",
            f("in_catalog_rate"),
            f("valid_format_rate"),
            f("mean_list_length"),
            f("cut_rate")
        );
    }
    s += "\n## Paired differences from SFT (same test rows)\n\n";
    s += &markdown_table(pairs);
    s += "\nAn interval that excludes 0 is a difference these rows can tell; one that straddles 0 is not.\n\n## Curves\n\n";
    for (title, path) in plots {
        let rel = path.strip_prefix(&args.out).unwrap_or(path);
        s += &format!("![{title}]({})\n\n", rel.display());
    }
    s += "## Time per stage\n\n| stage | seconds |\n|---|---:|\n";
    for st in stages {
        s += &format!("| {} | {:.0} |\n", st.name, st.seconds);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_preset_and_nothing_else() {
        let args = Args {
            preset: Preset::Gpu15min,
            out: "x".into(),
            model: None,
            train: None,
            validation: None,
            test: None,
            catalog: None,
            sft_rows: None,
            sft_epochs: None,
            sft_batch_size: None,
            sft_lr: None,
            lora_r: None,
            max_length: None,
            rl_steps: Some(3),
            prompts_per_step: None,
            group_size: None,
            rl_lr: None,
            micro_batch: None,
            max_new_tokens: None,
            max_prompt_length: None,
            val_rows: None,
            eval_every: None,
            test_rows: None,
            algos: Some(vec![Algo::Grpo]),
            seed: 0,
        };
        let plan = args.plan();
        assert_eq!((plan.rl_steps, plan.algos.clone()), (3, vec![Algo::Grpo]));
        assert_eq!(Plan { rl_steps: 8, algos: Algo::ALL.to_vec(), ..plan }, Preset::Gpu15min.plan());
    }

    #[test]
    fn a_file_serving_several_roles_gives_each_its_own_rows() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("all.jsonl");
        std::fs::write(&src, (0..10).map(|i| format!("{{\"i\":{i}}}\n")).collect::<String>()).unwrap();
        let other = dir.path().join("other.jsonl");
        std::fs::write(&other, "{\"i\":100}\n").unwrap();
        let out = dir.path().join("rows");
        let files = split_rows(&out, &[("a", &src, 3), ("b", &src, 4), ("c", &other, 5), ("d", &src, 100)]).unwrap();
        let read = |p: &PathBuf| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&files[0]), "{\"i\":0}\n{\"i\":1}\n{\"i\":2}\n");
        assert!(read(&files[1]).starts_with("{\"i\":3}") && read(&files[1]).lines().count() == 4);
        assert_eq!(read(&files[2]), "{\"i\":100}\n");
        assert_eq!(read(&files[3]).lines().count(), 3, "what is left");
        let err = split_rows(&out, &[("a", &other, 1), ("b", &other, 1)]).unwrap_err().to_string();
        assert!(err.contains("no rows left for the b rows"), "{err}");
    }
}

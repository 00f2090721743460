//! `convrec-bench profile`: where the time of one decode step and of one LoRA training step goes.
//! GPU time per kernel family comes from timestamp queries around every dispatch
//! (`Gpu::profile_start`); beside it, the host's recording and submission time per step, the
//! dispatches per step and per token, and the wall time of the same step run without profiling
//! (profiling serialises the work, so its own wall time is longer).

use std::io::Write as _;
use std::time::Instant;

use anyhow::{Context, bail};
use convrec_core::Gpu;
use convrec_core::gpu::{OpTime, Profile, Timing};
use convrec_core::model::ModelConfig;
use convrec_core::model::generate::{GenerateRequest, generate};
use convrec_core::model::gpu::GpuModel;
use convrec_core::ops::decode::SamplingConfig;
use serde::Serialize;

use crate::bench_model::{self, ShapeArgs, TrainArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    shape: ShapeArgs,
    /// Sequences decoded together: (batch / group) prompts × group samples.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Samples per prompt, sharing its prefill as in an RL step; must divide --batch.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    group: u32,
    /// Prompt length (tokens).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..))]
    prompt: u32,
    /// New tokens per sequence, every one sampled (temperature 1, no stop token): the decode
    /// steps profiled.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(2..))]
    new: u32,
    #[command(flatten)]
    train: TrainArgs,
    /// Which steps: decode, train.
    #[arg(long, value_delimiter = ',', default_value = "decode,train")]
    parts: Vec<String>,
    /// One row per kernel variant (entry point and specialisation) instead of per family.
    #[arg(long)]
    variants: bool,
    /// JSON: `--json` prints it instead of the tables, `--json FILE` writes it beside them.
    #[arg(long, num_args = 0..=1, default_missing_value = "-")]
    json: Option<String>,
}

#[derive(Serialize)]
struct Report {
    header: String,
    /// False when the adapter has no timestamp queries: counts and host times only.
    timestamps: bool,
    decode: Option<StepReport>,
    train: Option<StepReport>,
}

/// One kind of step: per-step averages over the profiled steps, and the raw profile.
#[derive(Serialize)]
struct StepReport {
    case: String,
    steps_profiled: u64,
    tokens_per_step: usize,
    /// Median wall time of the step without profiling.
    wall_ms: f64,
    /// The same, profiled.
    profiled_wall_ms: f64,
    /// Sum of the dispatches' GPU times.
    gpu_ms: f64,
    /// First to last timestamp of each submission: GPU time with the gaps between dispatches.
    gpu_span_ms: f64,
    /// Host time recording the step's command buffers, and submitting them (wall clock, on the
    /// plain submission path: a host-only profile). Where the driver runs work inside its submit
    /// call (lavapipe), the submission includes the execution.
    record_ms: f64,
    submit_ms: f64,
    submits_per_step: f64,
    dispatches_per_step: f64,
    dispatches_per_token: f64,
    /// Per kernel family (or variant with --variants), most GPU time first.
    kernels: Vec<KernelRow>,
    /// The raw profiles: GPU-timed, and host-only.
    profile: Profile,
    host_profile: Profile,
}

#[derive(Serialize)]
struct KernelRow {
    name: String,
    ms_per_step: f64,
    /// Share of the step's GPU time.
    share: f64,
    dispatches_per_step: f64,
}

/// What one profiled kind of step ran, for [`StepReport::new`].
struct Measured<'a> {
    case: String,
    /// The batch ops that make up the step.
    ops: &'a [&'a str],
    /// Steps each profile covers.
    steps: u64,
    tokens_per_step: usize,
    wall_s: f64,
    profiled_wall_s: f64,
    profile: Profile,
    host_profile: Profile,
}

impl StepReport {
    fn new(m: Measured, variants: bool) -> anyhow::Result<Self> {
        let steps = m.steps;
        if steps == 0 || m.ops.iter().all(|op| m.profile.op(op).is_none()) {
            bail!("the profile saw no step ({})", m.ops.join(", "));
        }
        let per_step = |v: f64| v / steps as f64;
        let sum_of =
            |p: &Profile, f: &dyn Fn(&OpTime) -> f64| -> f64 { m.ops.iter().filter_map(|op| p.op(op)).map(f).sum() };
        let sum = |f: &dyn Fn(&OpTime) -> f64| sum_of(&m.profile, f);
        let gpu_s = sum(&|o| o.gpu_s);
        let dispatches = per_step(sum(&|o| o.dispatches as f64));
        let kernels: Vec<KernelRow> = if variants {
            let mut rows: Vec<KernelRow> = m
                .profile
                .kernels
                .iter()
                .filter(|k| m.ops.contains(&k.op.as_str()))
                .map(|k| KernelRow {
                    name: k.variant.clone(),
                    ms_per_step: per_step(k.gpu_s) * 1e3,
                    share: k.gpu_s / gpu_s.max(f64::MIN_POSITIVE),
                    dispatches_per_step: per_step(k.dispatches as f64),
                })
                .collect();
            rows.sort_by(|a, b| b.ms_per_step.total_cmp(&a.ms_per_step));
            rows
        } else {
            m.profile
                .families(m.ops)
                .into_iter()
                .map(|f| KernelRow {
                    name: f.family,
                    ms_per_step: per_step(f.gpu_s) * 1e3,
                    share: f.gpu_s / gpu_s.max(f64::MIN_POSITIVE),
                    dispatches_per_step: per_step(f.dispatches as f64),
                })
                .collect()
        };
        Ok(StepReport {
            case: m.case,
            steps_profiled: steps,
            tokens_per_step: m.tokens_per_step,
            wall_ms: m.wall_s * 1e3,
            profiled_wall_ms: m.profiled_wall_s * 1e3,
            gpu_ms: per_step(gpu_s) * 1e3,
            gpu_span_ms: per_step(sum(&|o| o.gpu_span_s)) * 1e3,
            record_ms: per_step(sum_of(&m.host_profile, &|o| o.record_s)) * 1e3,
            submit_ms: per_step(sum_of(&m.host_profile, &|o| o.submit_s)) * 1e3,
            submits_per_step: per_step(sum(&|o| o.submits as f64)),
            dispatches_per_step: dispatches,
            dispatches_per_token: dispatches / m.tokens_per_step.max(1) as f64,
            kernels,
            profile: m.profile,
            host_profile: m.host_profile,
        })
    }

    fn print(&self, what: &str, timestamps: bool, cpu_adapter: bool) {
        println!("\n{what} · {} · {} step(s) profiled", self.case, self.steps_profiled);
        let busy = if timestamps {
            format!(
                "GPU busy {:.3} ms/step ({:.0}% of the unprofiled wall), first-to-last timestamp {:.3} ms",
                self.gpu_ms,
                100.0 * self.gpu_ms / self.wall_ms,
                self.gpu_span_ms
            )
        } else {
            "no timestamp queries on this adapter: no GPU times".to_string()
        };
        println!("  wall {:.3} ms/step unprofiled ({:.3} profiled); {busy}", self.wall_ms, self.profiled_wall_ms);
        println!(
            "  host {:.3} ms/step recording, {:.3} submitting, in {:.1} submits; {:.1} dispatches/step, {:.2} per token",
            self.record_ms, self.submit_ms, self.submits_per_step, self.dispatches_per_step, self.dispatches_per_token
        );
        if cpu_adapter {
            println!("  (a CPU adapter executes the work inside its submit call: submitting includes the GPU time)");
        }
        let width = self.kernels.iter().map(|k| k.name.len()).max().unwrap_or(0).max(16);
        println!("  {:<width$} {:>11} {:>9} {:>15}", "kernel", "ms/step", "% of GPU", "dispatches/step");
        for k in &self.kernels {
            println!(
                "  {:<width$} {:>11.4} {:>8.1}% {:>15.1}",
                k.name,
                k.ms_per_step,
                100.0 * k.share,
                k.dispatches_per_step
            );
        }
    }
}

pub fn run(gpu: &Gpu, args: Args) -> anyhow::Result<()> {
    if !args.batch.is_multiple_of(args.group) {
        bail!("--group {} must divide --batch {}", args.group, args.batch);
    }
    let positions = ((args.prompt + args.new).max(args.train.train_seq) + 8) as usize;
    let (c, model) = bench_model::upload(gpu, &args.shape, positions)?;
    let summary = gpu.summary();
    let part = |p: &str| args.parts.iter().any(|q| q == p);
    let report = Report {
        header: bench_model::header(gpu, &args.shape, &c, &model),
        timestamps: summary.timestamp_queries,
        decode: if part("decode") { Some(StepReport::new(decode(gpu, &model, &args)?, args.variants)?) } else { None },
        train: if part("train") { Some(StepReport::new(train(gpu, &c, &model, &args)?, args.variants)?) } else { None },
    };
    if args.json.as_deref() == Some("-") {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("{}", report.header);
    if let Some(d) = &report.decode {
        d.print("decode step", report.timestamps, gpu.summary().is_cpu());
    }
    if let Some(t) = &report.train {
        t.print("training step", report.timestamps, gpu.summary().is_cpu());
    }
    if let Some(path) = &args.json {
        let mut f = std::fs::File::create(path).with_context(|| format!("creating {path}"))?;
        writeln!(f, "{}", serde_json::to_string_pretty(&report)?)?;
        println!("\nJSON written to {path}");
    }
    Ok(())
}

/// A step's work run three times: plain (its wall time), under a host-only profile (host time on
/// the plain submission path), and under a GPU-timed profile.
struct Runs<T> {
    plain: T,
    host: Profile,
    timed: T,
    gpu: Profile,
}

fn measure<T>(gpu: &Gpu, mut work: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<Runs<T>> {
    let plain = work()?;
    let mut profiled = |timing: Timing| -> anyhow::Result<(T, Profile)> {
        gpu.profile_start(timing);
        let result = work();
        let profile = gpu.profile_take();
        Ok((result?, profile))
    };
    let (_, host) = profiled(Timing::Host)?;
    let (timed, gpu) = profiled(Timing::Gpu)?;
    Ok(Runs { plain, host, timed, gpu })
}

/// `generate` of the batch. A step's wall time is the difference between generating `--new`
/// tokens and one token (the prefill and the first step), over the steps between: `generate`
/// reads sampled ids back only every few steps, so the time between its callbacks is not a
/// step's.
fn decode<'a>(gpu: &Gpu, model: &GpuModel, args: &Args) -> anyhow::Result<Measured<'a>> {
    let (batch, group) = (args.batch as usize, args.group as usize);
    let req = GenerateRequest {
        prompts: bench_model::prompts(batch / group, args.prompt as usize),
        num_samples: group,
        first_sequence: 0,
        max_new_tokens: args.new as usize,
        sampling: SamplingConfig { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 1 },
        stop_ids: vec![],
    };
    if req.max_new_tokens < 2 {
        anyhow::bail!("--new {}: a decode step is timed between generating one token and more", args.new);
    }
    let generate_s = |new: usize| -> anyhow::Result<f64> {
        let req = GenerateRequest { max_new_tokens: new, ..req.clone() };
        let start = Instant::now();
        pollster::block_on(generate(gpu, model, &req, |_, _| {}))?;
        Ok(start.elapsed().as_secs_f64())
    };
    let profiled = |timing: Timing, new: usize| -> anyhow::Result<(f64, Profile)> {
        gpu.profile_start(timing);
        let seconds = generate_s(new);
        let profile = gpu.profile_take();
        Ok((seconds?, profile))
    };
    let (new, steps_between) = (req.max_new_tokens, (req.max_new_tokens - 1) as f64);
    generate_s(1)?; // compiles the kernels
    let wall_s = (generate_s(new)? - generate_s(1)?) / steps_between;
    // The profiles cover the `--new` steps of one run; the one-token run under the same
    // profiling only times what the steps' wall excludes.
    let (_, host) = profiled(Timing::Host, new)?;
    let (all, timed) = profiled(Timing::Gpu, new)?;
    let (first, _) = profiled(Timing::Gpu, 1)?;
    let runs = Runs { plain: wall_s, host, timed: (all - first) / steps_between, gpu: timed };
    Ok(Measured {
        case: format!(
            "batch {batch} = {} prompts × {group} samples, {}-token prompts, {} new tokens at temperature 1",
            batch / group,
            args.prompt,
            args.new
        ),
        // The step's batch and the read of its sampled ids (`generate`'s readback).
        ops: &["decode step", "generate"],
        // One `decode step` batch per new token.
        steps: runs.gpu.op("decode step").map_or(0, |o| o.submits),
        tokens_per_step: batch,
        wall_s: runs.plain,
        profiled_wall_s: runs.timed,
        profile: runs.gpu,
        host_profile: runs.host,
    })
}

/// One LoRA step (forward, backward, AdamW) after a warm-up step (kernels, the plan's buffers).
fn train<'a>(gpu: &Gpu, c: &ModelConfig, model: &GpuModel, args: &Args) -> anyhow::Result<Measured<'a>> {
    let (batch, seq) = (args.train.train_batch as usize, args.train.train_seq as usize);
    let mut trainer = bench_model::lora_trainer(gpu, c, args.train.recompute)?;
    let mb = bench_model::train_batch(batch, seq);
    bench_model::lora_step(gpu, &mut trainer, model, &mb)?;
    let runs = measure(gpu, || bench_model::lora_step(gpu, &mut trainer, model, &mb))?;
    Ok(Measured {
        case: format!(
            "LoRA r={} on all 7 projections, {batch}×{seq} tokens{}, forward + backward + AdamW",
            bench_model::LORA_R,
            if args.train.recompute { ", recompute" } else { "" }
        ),
        ops: &["train"],
        steps: 1,
        tokens_per_step: batch * seq,
        wall_s: runs.plain,
        profiled_wall_s: runs.timed,
        profile: runs.gpu,
        host_profile: runs.host,
    })
}

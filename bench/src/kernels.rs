//! Per-op GFLOP/s and GB/s at the shapes of SmolLM2-135M and Qwen2.5-0.5B for 1, 8 and 256
//! tokens, with NumPy sgemm of the same matmul shapes as the same-run CPU ceiling.

use std::io::Write as _;
use std::time::Instant;

use convrec_core::Gpu;
use convrec_core::bench::{Case, MODELS, Timer, adamw_case, attention_cases, linear_cases, other_cases, square_cases};
use pollster::block_on;
use serde::Serialize;

use crate::baseline::Sgemm;

#[derive(clap::Args)]
pub struct Args {
    /// Models whose shapes to use: smollm2, qwen2.5.
    #[arg(long, value_delimiter = ',', default_value = "smollm2,qwen2.5")]
    models: Vec<String>,
    /// Token counts (rows) per op.
    #[arg(long, value_delimiter = ',', default_value = "1,8,256")]
    tokens: Vec<usize>,
    /// Time budget per op, in milliseconds.
    #[arg(long, default_value_t = 600)]
    budget_ms: u64,
    /// Skip the NumPy baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Append one JSON line per measurement to this file.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Only ops whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Also time every attention kernel kind, forced, forward and forward + backward (slow on a
    /// CPU adapter).
    #[arg(long)]
    attention_kinds: bool,
    /// Square products N×N×N (C = A·Bᵀ, f32) to measure against the card's peak, e.g. 2048,4096.
    #[arg(long, value_delimiter = ',')]
    square: Vec<usize>,
    /// Run the matmul baseline with PyTorch on this device (e.g. cuda) instead of NumPy.
    #[arg(long)]
    torch_device: Option<String>,
    /// The interpreter that has torch.
    #[arg(long, env = "CONVREC_TORCH_PYTHON", default_value = "python3")]
    python: String,
}

#[derive(Serialize)]
struct Row {
    adapter: String,
    /// What `numpy_gflops` was measured with: NumPy on the CPU, or torch on a named device.
    baseline: String,
    model: &'static str,
    op: String,
    tokens: usize,
    shape: String,
    ms: f64,
    gflops: Option<f64>,
    gbps: Option<f64>,
    numpy_gflops: Option<f64>,
    ratio_to_numpy: Option<f64>,
}

pub fn run(gpu: &Gpu, args: Args) -> anyhow::Result<()> {
    let adapter = format!("{} ({}, {})", gpu.summary().name, gpu.summary().backend, gpu.summary().driver_info);
    println!("adapter: {adapter}");
    let origin = Instant::now();
    let now = move || origin.elapsed().as_secs_f64();
    let timer = Timer { budget_secs: args.budget_ms as f64 / 1e3, now: &now };
    let mut out = match &args.out {
        Some(p) => Some(std::fs::OpenOptions::new().create(true).append(true).open(p)?),
        None => None,
    };
    let keep = |c: &Case| args.filter.as_ref().is_none_or(|f| c.op.contains(f.as_str()));
    let baseline = match &args.torch_device {
        Some(device) => Sgemm::Torch { python: args.python.clone(), device: device.clone() },
        None => Sgemm::Numpy,
    };
    let mut first = true;
    let mut groups: Vec<(&str, usize)> = Vec::new();
    if !args.square.is_empty() {
        groups.push(("square", 0));
    }
    for model in MODELS.iter().filter(|m| args.models.iter().any(|n| n == m.name)) {
        groups.extend(args.tokens.iter().map(|&t| (model.name, t)));
    }
    for (group, t) in groups {
        let mut cases = Vec::new();
        if group == "square" {
            block_on(square_cases(gpu, &args.square, &timer, &mut cases))?;
            report(&args, &adapter, &baseline, group, t, cases, &mut out)?;
            continue;
        }
        let model = MODELS.iter().find(|m| m.name == group).expect("listed above");
        // An op the adapter cannot hold (e.g. a 152k-row head past a 128 MiB binding limit)
        // is reported and skipped, not fatal.
        if let Err(e) = block_on(linear_cases(gpu, model, t, &timer, &mut cases)) {
            println!("{} · {t} tokens: some linear cases skipped: {e}", model.name);
        }
        if let Err(e) = block_on(other_cases(gpu, model, t, &timer, &mut cases)) {
            println!("{} · {t} tokens: some cases skipped: {e}", model.name);
        }
        if args.attention_kinds {
            if let Err(e) = block_on(attention_cases(gpu, model, t, &timer, &mut cases)) {
                println!("{} · {t} tokens: some attention cases skipped: {e}", model.name);
            }
        }
        if first {
            block_on(adamw_case(gpu, &timer, &mut cases))?;
            first = false;
        }
        cases.retain(keep);
        report(&args, &adapter, &baseline, model.name, t, cases, &mut out)?;
    }
    Ok(())
}

/// Prints one group of cases beside the same-run baseline, and appends them to the JSONL file.
fn report(
    args: &Args,
    adapter: &str,
    baseline: &Sgemm,
    group: &'static str,
    t: usize,
    cases: Vec<Case>,
    out: &mut Option<std::fs::File>,
) -> anyhow::Result<()> {
    let shapes: Vec<(usize, usize, usize)> = cases.iter().filter_map(|c| c.sgemm).collect();
    let numpy = if args.no_baseline || shapes.is_empty() {
        None
    } else {
        match crate::baseline::sgemm(baseline, &shapes) {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("baseline unavailable: {e}");
                None
            }
        }
    };
    let mut numpy_iter = numpy.iter().flatten();
    println!("\n{group} · {t} tokens");
    println!(
        "{:<28} {:<28} {:>10} {:>9} {:>8} {:>9} {:>7}",
        "op",
        "shape",
        "ms",
        "GFLOP/s",
        "GB/s",
        baseline.label(),
        "ratio"
    );
    for c in cases {
        let gflops = c.gflops();
        let np = c.sgemm.and_then(|(m, k, n)| numpy_iter.next().map(|s| 2.0 * (m * k * n) as f64 / s / 1e9));
        let row = Row {
            adapter: adapter.to_string(),
            baseline: baseline.label(),
            model: group,
            op: c.op.clone(),
            tokens: t,
            shape: c.shape.clone(),
            ms: c.secs * 1e3,
            gflops,
            gbps: Some(c.gbps()),
            numpy_gflops: np,
            ratio_to_numpy: gflops.zip(np).map(|(g, n)| g / n),
        };
        let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
        println!(
            "{:<28} {:<28} {:>10.3} {:>9} {:>8} {:>9} {:>7}",
            row.op,
            row.shape,
            row.ms,
            f(row.gflops, 1),
            f(row.gbps, 1),
            f(row.numpy_gflops, 1),
            f(row.ratio_to_numpy, 2)
        );
        if let Some(out) = out.as_mut() {
            writeln!(out, "{}", serde_json::to_string(&row)?)?;
        }
    }
    Ok(())
}

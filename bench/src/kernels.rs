//! Per-op GFLOP/s and GB/s at the shapes of SmolLM2-135M and Qwen2.5-0.5B for 1, 8 and 256
//! tokens, with NumPy sgemm of the same matmul shapes as the same-run CPU ceiling.

use std::io::Write as _;
use std::time::Duration;

use convrec_core::Gpu;
use convrec_core::dtype::{self, Dtype};
use convrec_core::gpu::GpuBuffer;
use convrec_core::ops::adamw::{AdamW, AdamWConfig};
use convrec_core::ops::attention::{Attention, AttentionIo, AttentionShape};
use convrec_core::ops::elementwise::SwiGlu;
use convrec_core::ops::linear::{LinearBackwardInput, LinearBackwardWeight, LinearForward, LinearShape};
use convrec_core::ops::output_head::{HeadShape, OutputHead};
use convrec_core::ops::rmsnorm::RmsNorm;
use convrec_core::ops::rope::{Rope, RopeTables};
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

#[derive(Clone, Copy)]
struct ModelShape {
    name: &'static str,
    hidden: usize,
    ffn: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
}

const MODELS: [ModelShape; 2] = [
    ModelShape { name: "smollm2", hidden: 576, ffn: 1536, heads: 9, kv_heads: 3, head_dim: 64, vocab: 49152 },
    ModelShape { name: "qwen2.5", hidden: 896, ffn: 4864, heads: 14, kv_heads: 2, head_dim: 64, vocab: 151936 },
];

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

struct Case {
    op: String,
    shape: String,
    flops: Option<f64>,
    bytes: f64,
    /// (m, k, n) when the op is a matmul with a NumPy counterpart.
    sgemm: Option<(usize, usize, usize)>,
    secs: f64,
}

fn buf(gpu: &Gpu, elems: usize) -> anyhow::Result<GpuBuffer> {
    Ok(gpu.upload("bench", "input", &vec![0.01f32; elems])?)
}

fn linear_cases(gpu: &Gpu, m: &ModelShape, t: usize, budget: Duration, cases: &mut Vec<Case>) -> anyhow::Result<()> {
    let kv = m.kv_heads * m.head_dim;
    let layers = [
        ("q_proj", m.hidden, m.hidden),
        ("k_proj", m.hidden, kv),
        ("gate_proj", m.hidden, m.ffn),
        ("down_proj", m.ffn, m.hidden),
    ];
    for (name, inp, out) in layers {
        for w_dtype in [Dtype::F32, Dtype::Bf16] {
            if w_dtype == Dtype::Bf16 && name != "gate_proj" {
                continue;
            }
            let s = LinearShape { rows: t, inp, out };
            let op = pollster::block_on(LinearForward::new(gpu, s, w_dtype, false, false))?;
            let (x, y) = (buf(gpu, t * inp)?, buf(gpu, t * out)?);
            let w = gpu.upload("bench", "w", &dtype::pack(w_dtype, &vec![0.01; inp * out]))?;
            let secs = crate::timing::time_op(gpu, budget, |b| op.record(b, &x, &w, None, &y))?;
            let w_bytes = w_dtype.storage_bytes(inp * out) as f64;
            cases.push(Case {
                op: format!("linear {name} fwd {}", format!("{w_dtype:?}").to_lowercase()),
                shape: format!("{t}x{inp}·{out}x{inp}ᵀ"),
                flops: Some(s.flops()),
                bytes: w_bytes + 4.0 * (t * (inp + out)) as f64,
                sgemm: Some((t, inp, out)),
                secs,
            });
        }
        if t >= 64 && name == "gate_proj" {
            let s = LinearShape { rows: t, inp, out };
            let bi = pollster::block_on(LinearBackwardInput::new(gpu, s, Dtype::F32, false))?;
            let bw = pollster::block_on(LinearBackwardWeight::new(gpu, s, false))?;
            let (x, dy, w, dx, dw) = (
                buf(gpu, t * inp)?,
                buf(gpu, t * out)?,
                buf(gpu, inp * out)?,
                buf(gpu, t * inp)?,
                buf(gpu, inp * out)?,
            );
            let secs = crate::timing::time_op(gpu, budget, |b| bi.record(b, &dy, &w, &dx))?;
            cases.push(Case {
                op: format!("linear {name} bwd input"),
                shape: format!("{t}x{out}·{out}x{inp}"),
                flops: Some(s.flops()),
                bytes: 4.0 * (inp * out + t * (inp + out)) as f64,
                sgemm: Some((t, out, inp)),
                secs,
            });
            let secs = crate::timing::time_op(gpu, budget, |b| bw.record(b, &dy, &x, &dw, 1.0))?;
            cases.push(Case {
                op: format!("linear {name} bwd weight"),
                shape: format!("{out}x{t}·{t}x{inp}"),
                flops: Some(s.flops()),
                bytes: 4.0 * (inp * out + t * (inp + out)) as f64,
                sgemm: Some((out, t, inp)),
                secs,
            });
        }
    }
    Ok(())
}

fn other_cases(gpu: &Gpu, m: &ModelShape, t: usize, budget: Duration, cases: &mut Vec<Case>) -> anyhow::Result<()> {
    let h = m.hidden;
    // RMSNorm forward.
    let norm = pollster::block_on(RmsNorm::new(gpu, t, h, 1e-5, false))?;
    let (x, w, y, r) = (buf(gpu, t * h)?, buf(gpu, h)?, buf(gpu, t * h)?, buf(gpu, t)?);
    let secs = crate::timing::time_op(gpu, budget, |b| norm.forward(b, &x, &w, &y, &r))?;
    cases.push(Case {
        op: "rmsnorm fwd".into(),
        shape: format!("{t}x{h}"),
        flops: None,
        bytes: 8.0 * (t * h) as f64,
        sgemm: None,
        secs,
    });
    // RoPE on q.
    let rope = pollster::block_on(Rope::new(gpu))?;
    let tables = RopeTables::new(gpu, m.head_dim, 10000.0, 2048)?;
    let q = buf(gpu, t * m.heads * m.head_dim)?;
    let pos = gpu.upload("bench", "pos", &(0..t as u32).collect::<Vec<_>>())?;
    let secs = crate::timing::time_op(gpu, budget, |b| {
        rope.record(b, &tables, &pos, &q, t, m.heads, m.heads * m.head_dim, false)
    })?;
    cases.push(Case {
        op: "rope q".into(),
        shape: format!("{t}x{}x{}", m.heads, m.head_dim),
        flops: None,
        bytes: 8.0 * (t * m.heads * m.head_dim) as f64,
        sgemm: None,
        secs,
    });
    // SwiGLU.
    let sw = pollster::block_on(SwiGlu::new(gpu))?;
    let n = t * m.ffn;
    let (g, u, hb) = (buf(gpu, n)?, buf(gpu, n)?, buf(gpu, n)?);
    let secs = crate::timing::time_op(gpu, budget, |b| sw.forward(b, n, &g, &u, &hb))?;
    cases.push(Case {
        op: "swiglu fwd".into(),
        shape: format!("{t}x{}", m.ffn),
        flops: None,
        bytes: 12.0 * n as f64,
        sgemm: None,
        secs,
    });
    // Attention: causal over t tokens (prefill/training), or decode of t sequences against a
    // 256-token cache.
    let attn = pollster::block_on(Attention::new(gpu, m.head_dim, false, false))?;
    let (s, label) = if t >= 64 {
        (AttentionShape::token_major(1, t, m.heads, m.kv_heads, m.head_dim), format!("causal 1x{t}"))
    } else {
        (AttentionShape::cached(t, 1, 255, 256, m.heads, m.kv_heads, m.head_dim), format!("decode {t}x1 vs 256 cached"))
    };
    let qb = buf(gpu, s.batch * s.tq * s.q_stride)?;
    let kv_elems = s.batch * s.k_sb.max(s.tk * s.k_st);
    let (kb, vb, ob) = (buf(gpu, kv_elems)?, buf(gpu, kv_elems)?, buf(gpu, s.batch * s.tq * s.q_stride)?);
    let stats = buf(gpu, 2 * s.batch * s.heads * s.tq)?;
    let ks = gpu.upload("bench", "key_start", &vec![0u32; s.batch])?;
    let io = AttentionIo { q: &qb, k: &kb, v: &vb, key_start: &ks, out: &ob, stats: &stats };
    let secs = crate::timing::time_op(gpu, budget, |b| attn.forward(b, &s, &io))?;
    let pairs: f64 = if t >= 64 { (t * (t + 1) / 2) as f64 } else { (t * 256) as f64 };
    let flops = 4.0 * pairs * (m.heads * m.head_dim) as f64;
    cases.push(Case {
        op: "attention fwd".into(),
        shape: label,
        flops: Some(flops),
        bytes: 4.0 * 2.0 * kv_elems as f64,
        sgemm: None,
        secs,
    });
    // Output head: log-prob of a target over the full vocabulary, chunked.
    let hs = HeadShape { rows: t, hidden: h, vocab: m.vocab, chunk: 8192 };
    // Split into row shards when the vocabulary exceeds one binding (Qwen2.5 on lavapipe).
    let weight = convrec_core::model::gpu::Weight::upload(
        gpu,
        "head",
        convrec_core::model::HostTensor::f32(vec![m.vocab, h], vec![0.01; m.vocab * h]),
        true,
        None,
    )?;
    let head = pollster::block_on(OutputHead::new(gpu, hs, Dtype::F32, &weight.shard_starts()))?;
    let (hid, shards) = (buf(gpu, t * h)?, weight.row_shards());
    let targets = gpu.upload("bench", "targets", &vec![7u32; t])?;
    let secs = crate::timing::time_op(gpu, budget, |b| head.forward(b, &hid, &shards, &targets, 1.0))?;
    cases.push(Case {
        op: format!(
            "output head logp+entropy{}",
            if shards.len() > 1 { format!(" ({} shards)", shards.len()) } else { String::new() }
        ),
        shape: format!("{t}x{h}·{}x{h}ᵀ", m.vocab),
        flops: Some(2.0 * (t * h * m.vocab) as f64),
        bytes: 4.0 * (m.vocab * h) as f64,
        sgemm: Some((t, h, m.vocab)),
        secs,
    });
    Ok(())
}

/// Large square products, for the fraction of the card's fp32 peak.
fn square_cases(gpu: &Gpu, sizes: &[usize], budget: Duration, cases: &mut Vec<Case>) -> anyhow::Result<()> {
    for &n in sizes {
        let s = LinearShape { rows: n, inp: n, out: n };
        let op = pollster::block_on(LinearForward::new(gpu, s, Dtype::F32, false, false))?;
        let (x, w, y) = (buf(gpu, n * n)?, buf(gpu, n * n)?, buf(gpu, n * n)?);
        let secs = crate::timing::time_op(gpu, budget, |b| op.record(b, &x, &w, None, &y))?;
        cases.push(Case {
            op: "square matmul f32 A·Bᵀ".into(),
            shape: format!("{n}x{n}·{n}x{n}ᵀ"),
            flops: Some(s.flops()),
            bytes: 12.0 * (n * n) as f64,
            sgemm: Some((n, n, n)),
            secs,
        });
    }
    Ok(())
}

fn adamw_case(gpu: &Gpu, budget: Duration, cases: &mut Vec<Case>) -> anyhow::Result<()> {
    // LoRA r=16 on all seven projections of SmolLM2-135M: ≈4.9 M parameters.
    let n = 4_884_480;
    let opt = pollster::block_on(AdamW::new(gpu, n, AdamWConfig::default()))?;
    let (p, g) = (buf(gpu, n)?, buf(gpu, n)?);
    let mut step = 0;
    let secs = crate::timing::time_op(gpu, budget, |b| {
        step += 1;
        opt.step(b, &p, &g, step, 1e-4, 1.0)
    })?;
    cases.push(Case {
        op: "adamw + grad-norm clip".into(),
        shape: format!("{n} params"),
        flops: None,
        bytes: 4.0 * 7.0 * n as f64,
        sgemm: None,
        secs,
    });
    Ok(())
}

pub fn run(gpu: &Gpu, args: Args) -> anyhow::Result<()> {
    let adapter = format!("{} ({}, {})", gpu.summary().name, gpu.summary().backend, gpu.summary().driver_info);
    println!("adapter: {adapter}");
    let budget = Duration::from_millis(args.budget_ms);
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
            square_cases(gpu, &args.square, budget, &mut cases)?;
            report(&args, &adapter, &baseline, group, t, cases, &mut out)?;
            continue;
        }
        let model = MODELS.iter().find(|m| m.name == group).expect("listed above");
        // An op the adapter cannot hold (e.g. a 152k-row head past a 128 MiB binding limit)
        // is reported and skipped, not fatal.
        if let Err(e) = linear_cases(gpu, model, t, budget, &mut cases) {
            println!("{} · {t} tokens: some linear cases skipped: {e}", model.name);
        }
        if let Err(e) = other_cases(gpu, model, t, budget, &mut cases) {
            println!("{} · {t} tokens: some cases skipped: {e}", model.name);
        }
        if first {
            adamw_case(gpu, budget, &mut cases)?;
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
        let gflops = c.flops.map(|f| f / c.secs / 1e9);
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
            gbps: Some(c.bytes / c.secs / 1e9),
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

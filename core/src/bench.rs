//! Kernel benchmarks at the shapes of SmolLM2-135M and Qwen2.5-0.5B: each op recorded many times
//! into one batch and timed by wall clock, so native (`convrec-bench kernels`) and the browser page
//! time the same shaders the same way. The clock is the caller's (`Instant` natively,
//! `performance.now()` in a page); the NumPy/PyTorch baselines stay in `bench/`.

use serde::Serialize;

use crate::Gpu;
use crate::dtype::{self, Dtype};
use crate::gpu::{Batch, GpuBuffer, GpuResult};
use crate::model::gpu::ModelResult;
use crate::ops::adamw::{AdamW, AdamWConfig};
use crate::ops::attention::{Attention, AttentionIo, AttentionKernel, AttentionShape};
use crate::ops::attention_input::{AttentionInput, KeyValueOut, PackedQkv};
use crate::ops::elementwise::SwiGlu;
use crate::ops::linear::{LinearBackwardInput, LinearBackwardWeight, LinearForward, LinearShape};
use crate::ops::output_head::{HeadShape, OutputHead};
use crate::ops::rmsnorm::RmsNorm;
use crate::ops::rope::RopeTables;

/// A time budget per op and the clock that measures it (seconds, any origin).
pub struct Timer<'a> {
    pub budget_secs: f64,
    pub now: &'a dyn Fn() -> f64,
}

/// Median seconds per repetition of `record`: warm up once (pipeline compilation, first-touch
/// allocation), size the repetition count to a third of the budget, take the median of three
/// rounds. Each round records `reps` copies of the op into one batch, so launch and submission
/// overheads are amortised the way a training step amortises them.
pub async fn time_op(
    gpu: &Gpu,
    timer: &Timer<'_>,
    mut record: impl FnMut(&mut Batch) -> GpuResult<()>,
) -> GpuResult<f64> {
    async fn round(
        gpu: &Gpu,
        timer: &Timer<'_>,
        reps: usize,
        record: &mut impl FnMut(&mut Batch) -> GpuResult<()>,
    ) -> GpuResult<f64> {
        let mut batch = gpu.batch("bench");
        for _ in 0..reps {
            record(&mut batch)?;
        }
        let start = (timer.now)();
        batch.submit().await?;
        gpu.finish().await?;
        Ok(((timer.now)() - start) / reps as f64)
    }
    let first = round(gpu, timer, 1, &mut record).await?;
    let estimate = round(gpu, timer, 1, &mut record).await?.min(first);
    let reps = ((timer.budget_secs / 3.0 / estimate.max(1e-6)) as usize).clamp(1, 50);
    let mut samples = Vec::with_capacity(3);
    for _ in 0..3 {
        samples.push(round(gpu, timer, reps, &mut record).await?);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok(samples[1])
}

#[derive(Clone, Copy, Debug)]
pub struct ModelShape {
    pub name: &'static str,
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
}

pub const MODELS: [ModelShape; 2] = [
    ModelShape { name: "smollm2", hidden: 576, ffn: 1536, heads: 9, kv_heads: 3, head_dim: 64, vocab: 49152 },
    ModelShape { name: "qwen2.5", hidden: 896, ffn: 4864, heads: 14, kv_heads: 2, head_dim: 64, vocab: 151936 },
];

#[derive(Clone, Debug, Serialize)]
pub struct Case {
    pub op: String,
    pub shape: String,
    pub flops: Option<f64>,
    pub bytes: f64,
    /// (m, k, n) when the op is a matmul with a NumPy counterpart.
    pub sgemm: Option<(usize, usize, usize)>,
    pub secs: f64,
}

fn buf(gpu: &Gpu, elems: usize) -> ModelResult<GpuBuffer> {
    Ok(gpu.upload("bench", "input", &vec![0.01f32; elems])?)
}

pub async fn linear_cases(
    gpu: &Gpu,
    m: &ModelShape,
    t: usize,
    timer: &Timer<'_>,
    cases: &mut Vec<Case>,
) -> ModelResult<()> {
    let kv = m.kv_heads * m.head_dim;
    let layers = [
        ("q_proj", m.hidden, m.hidden),
        ("k_proj", m.hidden, kv),
        ("gate_proj", m.hidden, m.ffn),
        ("down_proj", m.ffn, m.hidden),
    ];
    for (name, inp, out) in layers {
        // Every storage type of frozen weights on one product; f32 on all of them.
        for w_dtype in [Dtype::F32, Dtype::Bf16, Dtype::Q8, Dtype::Q4] {
            if w_dtype != Dtype::F32 && name != "gate_proj" {
                continue;
            }
            let s = LinearShape { rows: t, inp, out };
            let op = LinearForward::new(gpu, s, w_dtype, false, false).await?;
            let (x, y) = (buf(gpu, t * inp)?, buf(gpu, t * out)?);
            let w = gpu.upload("bench", "w", &dtype::pack(w_dtype, &vec![0.01; inp * out]))?;
            let secs = time_op(gpu, timer, |b| op.record(b, &x, &w, None, &y)).await?;
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
            let bi = LinearBackwardInput::new(gpu, s, Dtype::F32, false).await?;
            let bw = LinearBackwardWeight::new(gpu, s, false).await?;
            let (x, dy, w, dx, dw) = (
                buf(gpu, t * inp)?,
                buf(gpu, t * out)?,
                buf(gpu, inp * out)?,
                buf(gpu, t * inp)?,
                buf(gpu, inp * out)?,
            );
            let secs = time_op(gpu, timer, |b| bi.record(b, &dy, &w, &dx)).await?;
            cases.push(Case {
                op: format!("linear {name} bwd input"),
                shape: format!("{t}x{out}·{out}x{inp}"),
                flops: Some(s.flops()),
                bytes: 4.0 * (inp * out + t * (inp + out)) as f64,
                sgemm: Some((t, out, inp)),
                secs,
            });
            let secs = time_op(gpu, timer, |b| bw.record(b, &dy, &x, &dw, 1.0)).await?;
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

pub async fn other_cases(
    gpu: &Gpu,
    m: &ModelShape,
    t: usize,
    timer: &Timer<'_>,
    cases: &mut Vec<Case>,
) -> ModelResult<()> {
    let h = m.hidden;
    // RMSNorm forward.
    let norm = RmsNorm::new(gpu, t, h, 1e-5, false).await?;
    let (x, w, y, r) = (buf(gpu, t * h)?, buf(gpu, h)?, buf(gpu, t * h)?, buf(gpu, t)?);
    let secs = time_op(gpu, timer, |b| norm.forward(b, &x, &w, &y, &r)).await?;
    cases.push(Case {
        op: "rmsnorm fwd".into(),
        shape: format!("{t}x{h}"),
        flops: None,
        bytes: 8.0 * (t * h) as f64,
        sgemm: None,
        secs,
    });
    // The attention input: RoPE on q and k from packed q | k | v rows, k and v token-major.
    let input = AttentionInput::new(gpu).await?;
    let tables = RopeTables::new(gpu, m.head_dim, 10000.0, 2048)?;
    let s = PackedQkv {
        batch: 1,
        t,
        heads: m.heads,
        kv_heads: m.kv_heads,
        head_dim: m.head_dim,
        stride: (m.heads + 2 * m.kv_heads) * m.head_dim,
    };
    let kvd = t * m.kv_heads * m.head_dim;
    let (qkv, q, k, v) = (buf(gpu, t * s.stride)?, buf(gpu, t * m.heads * m.head_dim)?, buf(gpu, kvd)?, buf(gpu, kvd)?);
    let pos = gpu.upload("bench", "pos", &(0..t as u32).collect::<Vec<_>>())?;
    let kv = KeyValueOut::TokenMajor { k: &k, v: &v };
    let secs = time_op(gpu, timer, |b| input.record(b, &tables, &pos, s, &qkv, &q, &kv)).await?;
    cases.push(Case {
        op: "attention input".into(),
        shape: format!("{t}x({}+2x{})x{}", m.heads, m.kv_heads, m.head_dim),
        flops: None,
        bytes: 8.0 * (t * s.stride) as f64,
        sgemm: None,
        secs,
    });
    // SwiGLU.
    let sw = SwiGlu::new(gpu).await?;
    let n = t * m.ffn;
    let (gate_up, hb) = (buf(gpu, 2 * n)?, buf(gpu, n)?);
    let secs = time_op(gpu, timer, |b| sw.forward(b, t, m.ffn, &gate_up, &hb)).await?;
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
    let attn = Attention::new(gpu, m.head_dim, false, false).await?;
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
    let secs = time_op(gpu, timer, |b| attn.forward(b, &s, &io)).await?;
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
    let weight = crate::model::gpu::Weight::upload(
        gpu,
        "head",
        crate::model::HostTensor::f32(vec![m.vocab, h], vec![0.01; m.vocab * h]),
        true,
        None,
    )?;
    let head = OutputHead::new(gpu, hs, Dtype::F32, &weight.shard_starts()).await?;
    let (hid, shards) = (buf(gpu, t * h)?, weight.row_shards());
    let targets = gpu.upload("bench", "targets", &vec![7u32; t])?;
    let secs = time_op(gpu, timer, |b| head.forward(b, &hid, &shards, &targets, 1.0)).await?;
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

/// Attention with each kernel kind forced (the adapter's own choice is `other_cases`' "attention
/// fwd"): for `t` ≥ 64 the causal forward and forward + backward over `t` tokens (training,
/// prefill); below, decode of `t` sequences against 256 cached keys and, at `t` = 8, of 64
/// sequences against 2,048 (long prefixes, where the flash forward splits keys).
pub async fn attention_cases(
    gpu: &Gpu,
    m: &ModelShape,
    t: usize,
    timer: &Timer<'_>,
    cases: &mut Vec<Case>,
) -> ModelResult<()> {
    let (heads, kv_heads, d) = (m.heads, m.kv_heads, m.head_dim);
    let mut shapes = Vec::new();
    if t >= 64 {
        shapes.push((AttentionShape::token_major(1, t, heads, kv_heads, d), format!("causal 1x{t}"), false));
        shapes.push((AttentionShape::token_major(1, t, heads, kv_heads, d), format!("causal 1x{t}"), true));
    } else {
        let s = AttentionShape::cached(t, 1, 255, 256, heads, kv_heads, d);
        shapes.push((s, format!("decode {t}x1 vs 256 cached"), false));
        if t == 8 {
            let s = AttentionShape::cached(64, 1, 2047, 2048, heads, kv_heads, d);
            shapes.push((s, "decode 64x1 vs 2048 cached".into(), false));
        }
    }
    for (s, label, backward) in shapes {
        let kv_elems = s.batch * s.k_sb;
        let q_elems = s.batch * s.tq * s.q_stride;
        let (q, k, v, out, dout) =
            (buf(gpu, q_elems)?, buf(gpu, kv_elems)?, buf(gpu, kv_elems)?, buf(gpu, q_elems)?, buf(gpu, q_elems)?);
        let (dq, dk, dv) = (buf(gpu, q_elems)?, buf(gpu, kv_elems)?, buf(gpu, kv_elems)?);
        let stats = buf(gpu, 2 * s.batch * s.heads * s.tq)?;
        let ks = gpu.upload("bench", "key_start", &vec![0u32; s.batch])?;
        let io = AttentionIo { q: &q, k: &k, v: &v, key_start: &ks, out: &out, stats: &stats };
        // Query-key pairs the mask keeps.
        let pairs = if s.q_pos0 == 0 { (t * (t + 1) / 2) as f64 } else { (s.batch * s.tk) as f64 };
        // Per pair and dimension: 4 flops forward, 10 more backward (scores, dout·v, dq, dk, dv).
        let flops = if backward { 14.0 } else { 4.0 } * pairs * (heads * d) as f64;
        for kind in AttentionKernel::ALL {
            let op = Attention::with_forward(gpu, d, backward, false, kind).await?;
            let secs = time_op(gpu, timer, |b| {
                op.forward(b, &s, &io)?;
                if backward {
                    op.backward(b, &s, &io, &dout, &dq, &dk, &dv)?;
                }
                Ok(())
            })
            .await?;
            let name = match kind {
                AttentionKernel::PerInvocation => "per-inv",
                AttentionKernel::PerWorkgroup => "per-wg",
                AttentionKernel::Flash => "flash",
            };
            cases.push(Case {
                op: format!("attention {} [{name}]", if backward { "fwd+bwd" } else { "fwd" }),
                shape: label.clone(),
                flops: Some(flops),
                bytes: 4.0 * 2.0 * kv_elems as f64,
                sgemm: None,
                secs,
            });
        }
    }
    Ok(())
}

impl Case {
    pub fn gflops(&self) -> Option<f64> {
        self.flops.map(|f| f / self.secs / 1e9)
    }

    pub fn gbps(&self) -> f64 {
        self.bytes / self.secs / 1e9
    }
}

/// Large square products, for the fraction of the card's fp32 peak.
pub async fn square_cases(gpu: &Gpu, sizes: &[usize], timer: &Timer<'_>, cases: &mut Vec<Case>) -> ModelResult<()> {
    for &n in sizes {
        let s = LinearShape { rows: n, inp: n, out: n };
        let op = LinearForward::new(gpu, s, Dtype::F32, false, false).await?;
        let (x, w, y) = (buf(gpu, n * n)?, buf(gpu, n * n)?, buf(gpu, n * n)?);
        let secs = time_op(gpu, timer, |b| op.record(b, &x, &w, None, &y)).await?;
        cases.push(Case {
            op: format!("square matmul {} A·Bᵀ", gpu.precision().name()),
            shape: format!("{n}x{n}·{n}x{n}ᵀ"),
            flops: Some(s.flops()),
            bytes: 12.0 * (n * n) as f64,
            sgemm: Some((n, n, n)),
            secs,
        });
    }
    Ok(())
}

pub async fn adamw_case(gpu: &Gpu, timer: &Timer<'_>, cases: &mut Vec<Case>) -> ModelResult<()> {
    // LoRA r=16 on all seven projections of SmolLM2-135M: ≈4.9 M parameters.
    let n = 4_884_480;
    let opt = AdamW::new(gpu, n, AdamWConfig::default()).await?;
    let (p, g) = (buf(gpu, n)?, buf(gpu, n)?);
    let mut step = 0;
    let secs = time_op(gpu, timer, |b| {
        step += 1;
        opt.step(b, &p, &g, step, 1e-4, 1.0)
    })
    .await?;
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

//! Causal grouped-query attention with left-padding masks, streaming over keys (memory linear in
//! sequence length), for training (forward + backward), prefill and KV-cache decode.
//! WGSL: `shaders/attention.wgsl`, `shaders/attention_backward.wgsl` (layouts in their headers).

use std::sync::Arc;

use super::launch::need;
use crate::gpu::{Access, Batch, Gpu, GpuBuffer, GpuError, GpuResult, Kernel};
use crate::shaders::{Def, Variant};

const OP: &str = "attention";
const WG: u32 = 64;
const BLOCK: u32 = 16;

/// Head dimensions with compiled kernels (SmolLM2 and Qwen2.5 use 64; Llama-3 128).
pub const HEAD_DIMS: [usize; 5] = [16, 32, 64, 96, 128];

/// Shapes and layouts of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    /// Queries per sequence.
    pub tq: usize,
    /// Keys per sequence that exist in the key buffers (≥ q_pos0 + tq).
    pub tk: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Row stride of q / out / dout / dq, in elements (≥ heads·head_dim).
    pub q_stride: usize,
    /// Strides of k / v / dk / dv: per sequence, per key/value head, per key.
    pub k_sb: usize,
    pub k_sh: usize,
    pub k_st: usize,
    /// Absolute position of query 0 (the cached prefix length when decoding).
    pub q_pos0: usize,
}

impl AttentionShape {
    /// Training / prefill layout: q, k, v token-major `[batch·t, heads·head_dim]` and
    /// `[batch·t, kv_heads·head_dim]`.
    pub fn token_major(batch: usize, t: usize, heads: usize, kv_heads: usize, head_dim: usize) -> Self {
        let kv_row = kv_heads * head_dim;
        AttentionShape {
            batch,
            tq: t,
            tk: t,
            heads,
            kv_heads,
            head_dim,
            q_stride: heads * head_dim,
            k_sb: t * kv_row,
            k_sh: head_dim,
            k_st: kv_row,
            q_pos0: 0,
        }
    }

    /// Decode/prefill against a head-major cache `[batch, kv_heads, capacity, head_dim]` holding
    /// `q_pos0 + tq` valid keys.
    pub fn cached(
        batch: usize,
        tq: usize,
        q_pos0: usize,
        capacity: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        AttentionShape {
            batch,
            tq,
            tk: q_pos0 + tq,
            heads,
            kv_heads,
            head_dim,
            q_stride: heads * head_dim,
            k_sb: kv_heads * capacity * head_dim,
            k_sh: capacity * head_dim,
            k_st: head_dim,
            q_pos0,
        }
    }

    fn validate(&self) -> GpuResult<()> {
        let s = self;
        let bad = |m: String| Err(GpuError::shape(OP, m));
        if !HEAD_DIMS.contains(&s.head_dim) {
            return bad(format!("head_dim {} has no compiled kernel (supported: {HEAD_DIMS:?})", s.head_dim));
        }
        if s.kv_heads == 0 || !s.heads.is_multiple_of(s.kv_heads) {
            return bad(format!("{} query heads are not a multiple of {} key/value heads", s.heads, s.kv_heads));
        }
        if s.batch == 0 || s.tq == 0 || s.tk < s.q_pos0 + s.tq {
            return bad(format!(
                "batch {} × {} queries at offset {} need ≥ {} keys, have {}",
                s.batch,
                s.tq,
                s.q_pos0,
                s.q_pos0 + s.tq,
                s.tk
            ));
        }
        if s.q_stride < s.heads * s.head_dim {
            return bad(format!("q row stride {} < {} heads × {}", s.q_stride, s.heads, s.head_dim));
        }
        Ok(())
    }

    fn q_elems(&self) -> usize {
        (self.batch * self.tq - 1) * self.q_stride + self.heads * self.head_dim
    }
    fn k_elems(&self) -> usize {
        (self.batch - 1) * self.k_sb + (self.kv_heads - 1) * self.k_sh + (self.tk - 1) * self.k_st + self.head_dim
    }
    fn stats_elems(&self) -> usize {
        2 * self.batch * self.heads * self.tq
    }

    fn params(&self) -> Params {
        let u = |v: usize| v as u32;
        Params {
            batch: u(self.batch),
            tq: u(self.tq),
            heads: u(self.heads),
            kv_heads: u(self.kv_heads),
            q_stride: u(self.q_stride),
            k_sb: u(self.k_sb),
            k_sh: u(self.k_sh),
            k_st: u(self.k_st),
            q_pos0: u(self.q_pos0),
            scale: 1.0 / (self.head_dim as f32).sqrt(),
            tk: u(self.tk),
            _pad: 0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    tq: u32,
    heads: u32,
    kv_heads: u32,
    q_stride: u32,
    k_sb: u32,
    k_sh: u32,
    k_st: u32,
    q_pos0: u32,
    scale: f32,
    tk: u32,
    _pad: u32,
}

/// How the forward and backward spread rows over the adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    /// One invocation per query row (CPU adapters: llvmpipe runs an invocation per SIMD lane
    /// and pays for every barrier).
    PerInvocation,
    /// One workgroup of `ROW_LANES` per query row (GPUs: keys scored in parallel, value rows
    /// read contiguously, no per-invocation HEAD_DIM accumulator to spill).
    PerWorkgroup,
}

/// Lanes of the per-workgroup forward, and keys per block.
const ROW_LANES: u32 = 64;

fn forward_variant(head_dim: usize, kernel: AttentionKernel) -> Variant {
    Variant {
        shader: "attention",
        entry: match kernel {
            AttentionKernel::PerInvocation => "attention_forward",
            AttentionKernel::PerWorkgroup => "attention_forward_rows",
        },
        defs: vec![
            Def::U32("HEAD_DIM", head_dim as u32),
            Def::U32("WG", WG),
            Def::U32("BLOCK", BLOCK),
            Def::U32("KB", ROW_LANES),
            Def::U32("DPL", (head_dim as u32).div_ceil(ROW_LANES)),
        ],
    }
}

fn backward_variant(entry: &'static str, head_dim: usize, accumulate: bool) -> Variant {
    Variant {
        shader: "attention_backward",
        entry,
        defs: vec![
            Def::U32("HEAD_DIM", head_dim as u32),
            Def::U32("WG", WG),
            Def::Bool("ACCUMULATE", accumulate),
            Def::U32("KB", ROW_LANES),
            Def::U32("DPL", (head_dim as u32).div_ceil(ROW_LANES)),
        ],
    }
}

/// delta (always per invocation: one dot product per row), dq, dk/dv.
fn backward_entries(kind: AttentionKernel) -> [&'static str; 3] {
    match kind {
        AttentionKernel::PerInvocation => ["attention_delta", "attention_backward_dq", "attention_backward_dkv"],
        AttentionKernel::PerWorkgroup => {
            ["attention_delta", "attention_backward_dq_rows", "attention_backward_dkv_rows"]
        }
    }
}

pub fn specializations() -> Vec<Variant> {
    let mut v = Vec::new();
    for d in HEAD_DIMS {
        v.push(forward_variant(d, AttentionKernel::PerInvocation));
        v.push(forward_variant(d, AttentionKernel::PerWorkgroup));
        for acc in [false, true] {
            for kind in [AttentionKernel::PerInvocation, AttentionKernel::PerWorkgroup] {
                v.extend(backward_entries(kind).map(|e| backward_variant(e, d, acc)));
            }
        }
    }
    v
}

const FORWARD_BINDINGS: [Access; 6] =
    [Access::Read, Access::Read, Access::Read, Access::Read, Access::ReadWrite, Access::ReadWrite];
const BACKWARD_BINDINGS: [Access; 8] = [
    Access::Read,
    Access::Read,
    Access::Read,
    Access::Read,
    Access::Read,
    Access::ReadWrite,
    Access::ReadWrite,
    Access::ReadWrite,
];

/// Forward (and, when prepared for training, backward) kernels for one head dimension.
pub struct Attention {
    forward: Arc<Kernel>,
    kernel_kind: AttentionKernel,
    backward: Option<[Arc<Kernel>; 3]>,
}

/// The buffers of one attention call.
pub struct AttentionIo<'a> {
    pub q: &'a GpuBuffer,
    pub k: &'a GpuBuffer,
    pub v: &'a GpuBuffer,
    /// u32 per sequence: first key that is not left padding.
    pub key_start: &'a GpuBuffer,
    pub out: &'a GpuBuffer,
    /// `[2, batch·heads·tq]` f32: log-sum-exp, then the backward's delta.
    pub stats: &'a GpuBuffer,
}

impl Attention {
    /// `backward`: also compile the backward kernels (`accumulate`: add into dq/dk/dv).
    pub async fn new(gpu: &Gpu, head_dim: usize, backward: bool, accumulate: bool) -> GpuResult<Self> {
        let kernel =
            if gpu.summary().is_cpu() { AttentionKernel::PerInvocation } else { AttentionKernel::PerWorkgroup };
        Self::with_forward(gpu, head_dim, backward, accumulate, kernel).await
    }

    /// With a given forward kernel (tests run both on any adapter).
    pub async fn with_forward(
        gpu: &Gpu,
        head_dim: usize,
        backward: bool,
        accumulate: bool,
        kernel_kind: AttentionKernel,
    ) -> GpuResult<Self> {
        if !HEAD_DIMS.contains(&head_dim) {
            return Err(GpuError::shape(
                OP,
                format!("head_dim {head_dim} has no compiled kernel (supported: {HEAD_DIMS:?})"),
            ));
        }
        let forward = gpu.kernel(&forward_variant(head_dim, kernel_kind), &FORWARD_BINDINGS).await?;
        let backward = if backward {
            let mut ks = Vec::new();
            for e in backward_entries(kernel_kind) {
                ks.push(gpu.kernel(&backward_variant(e, head_dim, accumulate), &BACKWARD_BINDINGS).await?);
            }
            Some([ks[0].clone(), ks[1].clone(), ks[2].clone()])
        } else {
            None
        };
        Ok(Attention { forward, kernel_kind, backward })
    }

    fn check_io(s: &AttentionShape, io: &AttentionIo) -> GpuResult<()> {
        s.validate()?;
        need(OP, "q", io.q, s.q_elems())?;
        need(OP, "out", io.out, s.q_elems())?;
        need(OP, "k", io.k, s.k_elems())?;
        need(OP, "v", io.v, s.k_elems())?;
        need(OP, "key_start", io.key_start, s.batch)?;
        need(OP, "stats", io.stats, s.stats_elems())
    }

    fn groups(gpu: &Gpu, n: usize) -> GpuResult<[u32; 3]> {
        gpu.check_workgroups(OP, &format!("{n} queries or keys"), [(n as u64).div_ceil(WG as u64), 1, 1])
    }

    /// One workgroup per row, on a 2-D grid: the kernels read their row as y·(groups in x) + x
    /// (a 1-D grid of one "invocation" per row).
    fn row_groups(gpu: &Gpu, rows: usize) -> GpuResult<[u32; 3]> {
        super::launch::grid_1d(gpu, OP, rows, 1).map(|(groups, _)| groups)
    }

    fn grid(&self, gpu: &Gpu, rows: usize) -> GpuResult<[u32; 3]> {
        match self.kernel_kind {
            AttentionKernel::PerInvocation => Self::groups(gpu, rows),
            AttentionKernel::PerWorkgroup => Self::row_groups(gpu, rows),
        }
    }

    pub fn forward(&self, b: &mut Batch, s: &AttentionShape, io: &AttentionIo) -> GpuResult<()> {
        Self::check_io(s, io)?;
        let groups = self.grid(b.gpu(), s.batch * s.heads * s.tq)?;
        b.dispatch(&self.forward, &s.params(), &[io.q, io.k, io.v, io.key_start, io.out, io.stats], groups);
        Ok(())
    }

    /// dq, dk, dv (laid out like q, k, v) from dout, after `forward` filled `out` and `stats`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        b: &mut Batch,
        s: &AttentionShape,
        io: &AttentionIo,
        dout: &GpuBuffer,
        dq: &GpuBuffer,
        dk: &GpuBuffer,
        dv: &GpuBuffer,
    ) -> GpuResult<()> {
        let Some([delta, dq_kernel, dkv_kernel]) = &self.backward else {
            return Err(GpuError::shape(OP, "prepared for inference only: no backward kernels"));
        };
        Self::check_io(s, io)?;
        need(OP, "dout", dout, s.q_elems())?;
        need(OP, "dq", dq, s.q_elems())?;
        need(OP, "dk", dk, s.k_elems())?;
        need(OP, "dv", dv, s.k_elems())?;
        let params = s.params();
        let rows = s.batch * s.heads * s.tq;
        let key_rows = s.batch * s.kv_heads * s.tk;
        let queries = self.grid(b.gpu(), rows)?;
        let keys = self.grid(b.gpu(), key_rows)?;
        let delta_groups = Self::groups(b.gpu(), rows)?;
        b.dispatch(delta, &params, &[io.q, io.k, io.v, io.key_start, dout, io.stats, dq, io.out], delta_groups);
        b.dispatch(dq_kernel, &params, &[io.q, io.k, io.v, io.key_start, dout, io.stats, dq, io.out], queries);
        b.dispatch(dkv_kernel, &params, &[io.q, io.k, io.v, io.key_start, dout, io.stats, dk, dv], keys);
        Ok(())
    }
}

/// CPU reference of the backward (f64), analytic: [dq, dk, dv] laid out like q, k, v.
pub fn attention_backward_ref(
    s: &AttentionShape,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    key_start: &[u32],
    dout: &[f64],
) -> [Vec<f64>; 3] {
    let d = s.head_dim;
    let scale = 1.0 / (d as f64).sqrt();
    let (out, lse) = attention_ref(s, q, k, v, key_start);
    let (mut dq, mut dk, mut dv) = (vec![0.0; s.q_elems()], vec![0.0; s.k_elems()], vec![0.0; s.k_elems()]);
    for b in 0..s.batch {
        for h in 0..s.heads {
            let g = h / (s.heads / s.kv_heads);
            for i in 0..s.tq {
                let qb = (b * s.tq + i) * s.q_stride + h * d;
                let delta: f64 = (0..d).map(|e| dout[qb + e] * out[qb + e]).sum();
                for t in key_start[b] as usize..=s.q_pos0 + i {
                    let kb = b * s.k_sb + g * s.k_sh + t * s.k_st;
                    let sc = (0..d).map(|e| q[qb + e] * k[kb + e]).sum::<f64>() * scale;
                    let pr = (sc - lse[(b * s.heads + h) * s.tq + i]).exp();
                    let dp: f64 = (0..d).map(|e| dout[qb + e] * v[kb + e]).sum();
                    let ds = pr * (dp - delta) * scale;
                    for e in 0..d {
                        dq[qb + e] += ds * k[kb + e];
                        dk[kb + e] += ds * q[qb + e];
                        dv[kb + e] += pr * dout[qb + e];
                    }
                }
            }
        }
    }
    [dq, dk, dv]
}

/// CPU reference of the forward with an explicit score matrix (f64): (out, lse).
pub fn attention_ref(s: &AttentionShape, q: &[f64], k: &[f64], v: &[f64], key_start: &[u32]) -> (Vec<f64>, Vec<f64>) {
    let d = s.head_dim;
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0.0; s.q_elems()];
    let mut lse = vec![0.0; s.batch * s.heads * s.tq];
    for b in 0..s.batch {
        for h in 0..s.heads {
            let g = h / (s.heads / s.kv_heads);
            for i in 0..s.tq {
                let qb = (b * s.tq + i) * s.q_stride + h * d;
                let keys: Vec<usize> = (key_start[b] as usize..=s.q_pos0 + i).collect();
                if keys.is_empty() {
                    continue;
                }
                let kb = |t: usize| b * s.k_sb + g * s.k_sh + t * s.k_st;
                let scores: Vec<f64> =
                    keys.iter().map(|&t| (0..d).map(|e| q[qb + e] * k[kb(t) + e]).sum::<f64>() * scale).collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|x| (x - m).exp()).sum();
                lse[(b * s.heads + h) * s.tq + i] = m + z.ln();
                for (&t, &sc) in keys.iter().zip(&scores) {
                    let pr = (sc - m).exp() / z;
                    for e in 0..d {
                        out[qb + e] += pr * v[kb(t) + e];
                    }
                }
            }
        }
    }
    (out, lse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, f32s, f64s, fd_grad, rel_err};

    /// Reference backward by finite differences of the reference forward (loss = Σ dout ⊙ out).
    fn fd_backward(s: &AttentionShape, q: &[f64], k: &[f64], v: &[f64], ks: &[u32], dout: &[f64]) -> [Vec<f64>; 3] {
        let loss = |q: &[f64], k: &[f64], v: &[f64]| -> f64 {
            attention_ref(s, q, k, v, ks).0.iter().zip(dout).map(|(a, b)| a * b).sum()
        };
        [fd_grad(&|x| loss(x, k, v), q), fd_grad(&|x| loss(q, x, v), k), fd_grad(&|x| loss(q, k, x), v)]
    }

    /// Checks both forward kernels (and the backward after each) on the same shape.
    fn run(gpu: &Gpu, s: &AttentionShape, key_start: &[u32], accumulate: bool, rng: &mut rand::rngs::StdRng) {
        for kernel in [AttentionKernel::PerInvocation, AttentionKernel::PerWorkgroup] {
            run_with(gpu, s, key_start, accumulate, kernel, rng);
        }
    }

    fn run_with(
        gpu: &Gpu,
        s: &AttentionShape,
        key_start: &[u32],
        accumulate: bool,
        kernel: AttentionKernel,
        rng: &mut rand::rngs::StdRng,
    ) {
        let q = testing::normal(rng, s.q_elems());
        let k = testing::normal(rng, s.k_elems());
        let v = testing::normal(rng, s.k_elems());
        let dout = testing::normal(rng, s.q_elems());
        let (dq0, dk0, dv0) =
            (testing::normal(rng, s.q_elems()), testing::normal(rng, s.k_elems()), testing::normal(rng, s.k_elems()));
        let op = pollster::block_on(Attention::with_forward(gpu, s.head_dim, true, accumulate, kernel)).unwrap();
        let up = |x: &[f32]| gpu.upload("t", "t", x).unwrap();
        let (qb, kb, vb, doutb) = (up(&q), up(&k), up(&v), up(&dout));
        let ksb = gpu.upload("t", "key_start", key_start).unwrap();
        let outb = up(&vec![f32::NAN; s.q_elems()]);
        let statsb = up(&vec![f32::NAN; s.stats_elems()]);
        let (dqb, dkb, dvb) = if accumulate {
            (up(&dq0), up(&dk0), up(&dv0))
        } else {
            (up(&vec![f32::NAN; s.q_elems()]), up(&vec![f32::NAN; s.k_elems()]), up(&vec![f32::NAN; s.k_elems()]))
        };
        let io = AttentionIo { q: &qb, k: &kb, v: &vb, key_start: &ksb, out: &outb, stats: &statsb };
        let mut b = gpu.batch("t");
        op.forward(&mut b, s, &io).unwrap();
        op.backward(&mut b, s, &io, &doutb, &dqb, &dkb, &dvb).unwrap();
        pollster::block_on(b.submit()).unwrap();
        let read = |x: &GpuBuffer| pollster::block_on(gpu.read::<f32>("t", x)).unwrap();

        let (qd, kd, vd) = (f64s(&q), f64s(&k), f64s(&v));
        let (out, lse) = attention_ref(s, &qd, &kd, &vd, key_start);
        // Elements of q/out rows outside the heads (stride padding) are never written by the
        // kernel: compare only what the op defines.
        let mask_q = |x: &[f32]| -> Vec<f32> {
            (0..x.len()).filter(|&i| i % s.q_stride < s.heads * s.head_dim).map(|i| x[i]).collect()
        };
        let got_out = read(&outb);
        let err = rel_err(&mask_q(&got_out), &mask_q(&f32s(&out)));
        assert!(err <= 1e-5, "{kernel:?} {s:?} out: {err:e}");
        let got_lse = &read(&statsb)[..lse.len()];
        assert!(rel_err(got_lse, &f32s(&lse)) <= 1e-5, "{kernel:?} {s:?} lse");

        let [mut dq, mut dk, mut dv] = fd_backward(s, &qd, &kd, &vd, key_start, &f64s(&dout));
        if accumulate {
            dq.iter_mut().zip(&dq0).for_each(|(a, b)| *a += *b as f64);
            dk.iter_mut().zip(&dk0).for_each(|(a, b)| *a += *b as f64);
            dv.iter_mut().zip(&dv0).for_each(|(a, b)| *a += *b as f64);
        }
        // The reference gradients of unused stride padding are 0 (or the accumulated input).
        let got_dq = read(&dqb);
        assert!(
            rel_err(&mask_q(&got_dq), &mask_q(&f32s(&dq))) <= 1e-4,
            "{s:?} dq: {:e}",
            rel_err(&mask_q(&got_dq), &mask_q(&f32s(&dq)))
        );
        let k_used = |x: &[f32]| -> Vec<f32> {
            let mut out = Vec::new();
            for b in 0..s.batch {
                for g in 0..s.kv_heads {
                    for t in 0..s.tk {
                        let base = b * s.k_sb + g * s.k_sh + t * s.k_st;
                        out.extend_from_slice(&x[base..base + s.head_dim]);
                    }
                }
            }
            out
        };
        let (gdk, gdv) = (read(&dkb), read(&dvb));
        assert!(
            rel_err(&k_used(&gdk), &k_used(&f32s(&dk))) <= 1e-4,
            "{s:?} dk: {:e}",
            rel_err(&k_used(&gdk), &k_used(&f32s(&dk)))
        );
        assert!(rel_err(&k_used(&gdv), &k_used(&f32s(&dv))) <= 1e-4, "{s:?} dv");
    }

    #[test]
    fn reference_is_softmax_attention_on_a_hand_case() {
        // One head, d = 16, two keys: query 1 sees both with equal scores → mean of the values.
        let s = AttentionShape::token_major(1, 2, 1, 1, 16);
        let q = vec![0.0; 32];
        let k = vec![0.0; 32];
        let v: Vec<f64> = (0..32).map(|i| i as f64).collect();
        let (out, lse) = attention_ref(&s, &q, &k, &v, &[0]);
        assert_eq!(out[..16], v[..16]);
        assert!((out[16] - 8.0).abs() < 1e-12 && (lse[1] - 2f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn training_layout_with_gqa_and_left_padding_matches_reference_and_finite_differences() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("attention training");
        let s = AttentionShape::token_major(2, 5, 4, 2, 16);
        run(&gpu, &s, &[0, 2], false, &mut rng);
        let s = AttentionShape::token_major(3, 7, 3, 1, 32);
        run(&gpu, &s, &[3, 0, 6], true, &mut rng);
        // Row stride larger than the heads (q sliced from a wider buffer).
        let mut s = AttentionShape::token_major(1, 19, 2, 2, 16);
        s.q_stride = 2 * 16 + 5;
        run(&gpu, &s, &[0], false, &mut rng);
    }

    #[test]
    fn decode_against_a_head_major_cache_matches_reference() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("attention decode");
        // 2 sequences, 1 new query each at position 6, cache capacity 9, GQA 6/2.
        let s = AttentionShape::cached(2, 1, 6, 9, 6, 2, 64);
        run(&gpu, &s, &[0, 4], false, &mut rng);
        // Prefill of 3 queries after a cached prefix of 4.
        let s = AttentionShape::cached(1, 3, 4, 8, 2, 1, 16);
        run(&gpu, &s, &[1], false, &mut rng);
    }

    /// Forward only, at lengths spanning several key blocks of the per-workgroup kernel.
    fn forward_matches(gpu: &Gpu, s: &AttentionShape, key_start: &[u32], rng: &mut rand::rngs::StdRng) {
        let q = testing::normal(rng, s.q_elems());
        let k = testing::normal(rng, s.k_elems());
        let v = testing::normal(rng, s.k_elems());
        let dout = testing::normal(rng, s.q_elems());
        let (want, lse) = attention_ref(s, &f64s(&q), &f64s(&k), &f64s(&v), key_start);
        // Gradients at these lengths are too costly for finite differences: the analytic
        // reference (itself checked by finite differences) stands in.
        let mut grads: Vec<Vec<Vec<f32>>> = Vec::new();
        for kernel in [AttentionKernel::PerInvocation, AttentionKernel::PerWorkgroup] {
            let op = pollster::block_on(Attention::with_forward(gpu, s.head_dim, true, false, kernel)).unwrap();
            let up = |x: &[f32]| gpu.upload("t", "t", x).unwrap();
            let (qb, kb, vb) = (up(&q), up(&k), up(&v));
            let ksb = gpu.upload("t", "key_start", key_start).unwrap();
            let (outb, statsb) = (up(&vec![f32::NAN; s.q_elems()]), up(&vec![f32::NAN; s.stats_elems()]));
            let io = AttentionIo { q: &qb, k: &kb, v: &vb, key_start: &ksb, out: &outb, stats: &statsb };
            let (doutb, dqb, dkb, dvb) =
                (up(&dout), up(&vec![0.0; s.q_elems()]), up(&vec![0.0; s.k_elems()]), up(&vec![0.0; s.k_elems()]));
            let mut b = gpu.batch("t");
            op.forward(&mut b, s, &io).unwrap();
            op.backward(&mut b, s, &io, &doutb, &dqb, &dkb, &dvb).unwrap();
            pollster::block_on(b.submit()).unwrap();
            let read = |x: &GpuBuffer| pollster::block_on(gpu.read::<f32>("t", x)).unwrap();
            grads.push(vec![read(&dqb), read(&dkb), read(&dvb)]);
            let got = read(&outb);
            let err = rel_err(&got, &f32s(&want));
            assert!(err <= 1e-5, "{kernel:?} {s:?} out: {err:e}");
            let got_lse = pollster::block_on(gpu.read::<f32>("t", &statsb)).unwrap();
            let err = rel_err(&got_lse[..lse.len()], &f32s(&lse));
            assert!(err <= 1e-5, "{kernel:?} {s:?} lse: {err:e}");
        }
        let want = attention_backward_ref(s, &f64s(&q), &f64s(&k), &f64s(&v), key_start, &f64s(&dout));
        for (kind, got) in ["per invocation", "per workgroup"].iter().zip(&grads) {
            for (name, (g, w)) in ["dq", "dk", "dv"].iter().zip(got.iter().zip(&want)) {
                let err = rel_err(g, &f32s(w));
                assert!(err <= 1e-5, "{s:?} {kind} {name}: {err:e}");
            }
        }
    }

    #[test]
    fn both_kernel_kinds_match_over_many_key_blocks_forward_and_backward() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("attention long forward");
        // 150 tokens (3 blocks of 64, ragged), GQA, the second sequence left-padded by 77 so its
        // first queries see no key; head_dim 128 (two dims per lane) and 64.
        forward_matches(&gpu, &AttentionShape::token_major(2, 150, 4, 2, 128), &[0, 77], &mut rng);
        for t in [260, 300, 400, 512] {
            forward_matches(&gpu, &AttentionShape::token_major(1, t, 2, 1, 16), &[0], &mut rng);
        }
        forward_matches(&gpu, &AttentionShape::token_major(2, 150, 6, 2, 64), &[0, 77], &mut rng);
        for t in [260, 300, 400, 512] {
            forward_matches(&gpu, &AttentionShape::token_major(1, t, 9, 3, 64), &[0], &mut rng);
        }
        // Decode of 3 sequences against 200 cached keys, head_dim 96 (lanes past 96 idle).
        forward_matches(&gpu, &AttentionShape::cached(3, 1, 200, 203, 6, 2, 96), &[0, 5, 130], &mut rng);
    }

    #[test]
    fn analytic_backward_reference_matches_finite_differences() {
        let mut rng = testing::rng("attention backward reference");
        let s = AttentionShape::token_major(2, 6, 4, 2, 16);
        let ks = [0, 2];
        let (q, k, v, dout) = (
            f64s(&testing::normal(&mut rng, s.q_elems())),
            f64s(&testing::normal(&mut rng, s.k_elems())),
            f64s(&testing::normal(&mut rng, s.k_elems())),
            f64s(&testing::normal(&mut rng, s.q_elems())),
        );
        let analytic = attention_backward_ref(&s, &q, &k, &v, &ks, &dout);
        let fd = fd_backward(&s, &q, &k, &v, &ks, &dout);
        for (a, f) in analytic.iter().zip(&fd) {
            assert!(testing::rel_err64(a, f) <= 1e-6, "{:e}", testing::rel_err64(a, f));
        }
    }

    #[test]
    fn bad_shapes_are_refused() {
        let Some(gpu) = testing::gpu() else { return };
        let err = pollster::block_on(Attention::new(&gpu, 48, false, false)).err().unwrap();
        assert!(err.to_string().contains("head_dim 48"), "{err}");
        let s = AttentionShape::token_major(1, 4, 3, 2, 16);
        assert!(s.validate().unwrap_err().to_string().contains("not a multiple"));
    }
}

//! The attention mixer's inputs from its packed q | k | v rows (one product over the stacked
//! q/k/v weights writes them): RoPE on q and k, q out token-major, k and v token-major or into
//! the KV cache, in one dispatch. WGSL: `shaders/attention_input.wgsl`.

use std::sync::Arc;

use super::decode::CacheShape;
use super::launch::{WG_1D, grid_1d, need, variant_1d};
use super::rope::RopeTables;
use crate::gpu::{Access, Batch, Gpu, GpuBuffer, GpuError, GpuResult, Kernel};
use crate::shaders::Variant;

const OP: &str = "attention input";

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    t: u32,
    heads: u32,
    kv_heads: u32,
    half: u32,
    stride: u32,
    max_pos: u32,
    cache: u32,
    capacity: u32,
    pos0: u32,
    stride_y: u32,
    _pad: u32,
}

const FORWARD: &str = "attention_input";
const BACKWARD: &str = "attention_input_backward";

fn variant(entry: &'static str) -> Variant {
    variant_1d("attention_input", entry, vec![])
}

pub fn specializations() -> Vec<Variant> {
    vec![variant(FORWARD), variant(BACKWARD)]
}

/// Packed rows `[batch·t, stride]`, each q | k | v of one token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedQkv {
    pub batch: usize,
    /// Tokens per sequence.
    pub t: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Row stride in elements (≥ (heads + 2·kv_heads)·head_dim).
    pub stride: usize,
}

impl PackedQkv {
    pub fn rows(&self) -> usize {
        self.batch * self.t
    }
    /// Elements of one row's q, k and v.
    pub fn width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }
}

/// Where keys and values go.
pub enum KeyValueOut<'a> {
    /// Token-major `[batch·t, kv_heads·head_dim]` each.
    TokenMajor { k: &'a GpuBuffer, v: &'a GpuBuffer },
    /// Caches of `shape`, at positions `pos0 … pos0 + t − 1` of every sequence.
    Cache { shape: CacheShape, pos0: usize, k: &'a GpuBuffer, v: &'a GpuBuffer },
}

pub struct AttentionInput {
    forward: Arc<Kernel>,
    backward: Arc<Kernel>,
}

impl AttentionInput {
    pub async fn new(gpu: &Gpu) -> GpuResult<Self> {
        use Access::*;
        // The packed rows are read by the forward and written by the backward (see the shader).
        let bindings = [Read, Read, Read, ReadWrite, ReadWrite, ReadWrite, ReadWrite];
        Ok(AttentionInput {
            forward: gpu.kernel(&variant(FORWARD), &bindings).await?,
            backward: gpu.kernel(&variant(BACKWARD), &bindings).await?,
        })
    }

    fn check(
        tables: &RopeTables,
        positions: &GpuBuffer,
        s: PackedQkv,
        qkv: &GpuBuffer,
        q: &GpuBuffer,
    ) -> GpuResult<()> {
        if s.head_dim != tables.head_dim || s.rows() == 0 || s.kv_heads == 0 || s.stride < s.width() {
            return Err(GpuError::shape(
                OP,
                format!("{s:?} does not fit RoPE tables of head_dim {} (rows ≥ 1, stride ≥ width)", tables.head_dim),
            ));
        }
        need(OP, "positions", positions, s.rows())?;
        need(OP, "qkv", qkv, (s.rows() - 1) * s.stride + s.width())?;
        need(OP, "q", q, s.rows() * s.heads * s.head_dim)
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &self,
        b: &mut Batch,
        kernel: &Arc<Kernel>,
        tables: &RopeTables,
        positions: &GpuBuffer,
        s: PackedQkv,
        buffers: [&GpuBuffer; 4],
        cache: Option<(usize, usize)>,
    ) -> GpuResult<()> {
        let half = s.head_dim / 2;
        let (groups, stride_y) = grid_1d(b.gpu(), OP, s.rows() * (s.heads + 2 * s.kv_heads) * half, WG_1D)?;
        let u = |x: usize| x as u32;
        let (capacity, pos0) = cache.unwrap_or((0, 0));
        let params = Params {
            rows: u(s.rows()),
            t: u(s.t),
            heads: u(s.heads),
            kv_heads: u(s.kv_heads),
            half: u(half),
            stride: u(s.stride),
            max_pos: u(tables.max_pos),
            cache: u(cache.is_some() as usize),
            capacity: u(capacity),
            pos0: u(pos0),
            stride_y,
            _pad: 0,
        };
        let [qkv, q, k, v] = buffers;
        b.dispatch(kernel, &params, &[positions, &tables.cos, &tables.sin, qkv, q, k, v], groups);
        Ok(())
    }

    /// Rotates q and k of `qkv` by the angles of `positions[rows]` (u32) and writes q `[rows,
    /// heads·head_dim]`, k and v as `kv` says.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        b: &mut Batch,
        tables: &RopeTables,
        positions: &GpuBuffer,
        s: PackedQkv,
        qkv: &GpuBuffer,
        q: &GpuBuffer,
        kv: &KeyValueOut,
    ) -> GpuResult<()> {
        Self::check(tables, positions, s, qkv, q)?;
        let kv_elems = s.rows() * s.kv_heads * s.head_dim;
        let (k, v, cache) = match *kv {
            KeyValueOut::TokenMajor { k, v } => {
                need(OP, "k", k, kv_elems)?;
                need(OP, "v", v, kv_elems)?;
                (k, v, None)
            }
            KeyValueOut::Cache { shape, pos0, k, v } => {
                if shape.batch != s.batch || shape.kv_heads != s.kv_heads || shape.head_dim != s.head_dim {
                    return Err(GpuError::shape(OP, format!("cache {shape:?} does not hold {s:?}")));
                }
                if pos0 + s.t > shape.capacity {
                    return Err(GpuError::shape(
                        OP,
                        format!("positions {pos0}..{} exceed the cache capacity {}", pos0 + s.t, shape.capacity),
                    ));
                }
                need(OP, "key cache", k, shape.elems())?;
                need(OP, "value cache", v, shape.elems())?;
                (k, v, Some((shape.capacity, pos0)))
            }
        };
        self.dispatch(b, &self.forward, tables, positions, s, [qkv, q, k, v], cache)
    }

    /// The transpose, for training: `dqkv` packed from token-major `dq`, `dk` (rotated back) and
    /// `dv`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        b: &mut Batch,
        tables: &RopeTables,
        positions: &GpuBuffer,
        s: PackedQkv,
        dq: &GpuBuffer,
        dk: &GpuBuffer,
        dv: &GpuBuffer,
        dqkv: &GpuBuffer,
    ) -> GpuResult<()> {
        Self::check(tables, positions, s, dqkv, dq)?;
        let kv = s.rows() * s.kv_heads * s.head_dim;
        need(OP, "dk", dk, kv)?;
        need(OP, "dv", dv, kv)?;
        self.dispatch(b, &self.backward, tables, positions, s, [dqkv, dq, dk, dv], None)
    }
}

/// CPU reference: (q, k, v) token-major, from RoPE's reference on the same tables.
pub fn attention_input_ref(
    s: PackedQkv,
    qkv: &[f32],
    positions: &[u32],
    cos: &[f32],
    sin: &[f32],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let d = s.head_dim;
    let (qd, kvd) = (s.heads * d, s.kv_heads * d);
    let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
    for row in 0..s.rows() {
        let at = |col: usize, len: usize| qkv[row * s.stride + col..][..len].iter().map(|&x| x as f64);
        q.extend(at(0, qd));
        k.extend(at(qd, kvd));
        v.extend(at(qd + kvd, kvd));
    }
    super::rope::rope_ref(&mut q, positions, cos, sin, s.heads, d, qd, false);
    super::rope::rope_ref(&mut k, positions, cos, sin, s.kv_heads, d, kvd, false);
    (q, k, v)
}

/// CPU reference of the backward: packed `dqkv` rows from token-major dq, dk (rotated back) and
/// dv.
pub fn attention_input_backward_ref(
    s: PackedQkv,
    dq: &[f64],
    dk: &[f64],
    dv: &[f64],
    positions: &[u32],
    cos: &[f32],
    sin: &[f32],
) -> Vec<f64> {
    let d = s.head_dim;
    let (qd, kvd) = (s.heads * d, s.kv_heads * d);
    let (mut dq, mut dk) = (dq.to_vec(), dk.to_vec());
    super::rope::rope_ref(&mut dq, positions, cos, sin, s.heads, d, qd, true);
    super::rope::rope_ref(&mut dk, positions, cos, sin, s.kv_heads, d, kvd, true);
    let mut out = vec![0.0; s.rows() * s.stride];
    for row in 0..s.rows() {
        let at = row * s.stride;
        out[at..at + qd].copy_from_slice(&dq[row * qd..][..qd]);
        out[at + qd..at + qd + kvd].copy_from_slice(&dk[row * kvd..][..kvd]);
        out[at + qd + kvd..at + qd + 2 * kvd].copy_from_slice(&dv[row * kvd..][..kvd]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::rope::tables;
    use crate::testing::{self, f32s, f64s, rel_err};
    use rand::Rng;

    #[test]
    fn gpu_matches_reference_token_major_and_into_the_cache() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("attention input");
        let op = pollster::block_on(AttentionInput::new(&gpu)).unwrap();
        // (batch, t, heads, kv_heads, head_dim, extra stride): GQA, MHA, odd counts, a padded row.
        for &(batch, t, heads, kv_heads, d, extra) in
            &[(1, 1, 1, 1, 2, 0), (3, 5, 6, 2, 12, 0), (2, 7, 9, 3, 64, 5), (4, 1, 14, 2, 64, 0), (1, 3, 4, 4, 10, 3)]
        {
            let max_pos = 4096; // positions across a long context's table
            let s = PackedQkv { batch, t, heads, kv_heads, head_dim: d, stride: (heads + 2 * kv_heads) * d + extra };
            let gpu_tables = RopeTables::new(&gpu, d, 1_000_000.0, max_pos).unwrap();
            let (cos, sin) = tables(d, 1_000_000.0, max_pos);
            let qkv = testing::normal(&mut rng, s.rows() * s.stride);
            let positions: Vec<u32> = (0..s.rows()).map(|_| rng.random_range(0..max_pos as u32)).collect();
            let (want_q, want_k, want_v) = attention_input_ref(s, &qkv, &positions, &cos, &sin);
            let kvd = kv_heads * d;
            let up = |what: &str, x: &[f32]| gpu.upload(OP, what, x).unwrap();
            let (qkv_buf, pos_buf) = (up("qkv", &qkv), gpu.upload(OP, "positions", &positions).unwrap());
            let q_buf = up("q", &vec![0.0; s.rows() * heads * d]);

            // Token-major.
            let (k_buf, v_buf) = (up("k", &vec![0.0; s.rows() * kvd]), up("v", &vec![0.0; s.rows() * kvd]));
            let mut b = gpu.batch(OP);
            let kv = KeyValueOut::TokenMajor { k: &k_buf, v: &v_buf };
            op.record(&mut b, &gpu_tables, &pos_buf, s, &qkv_buf, &q_buf, &kv).unwrap();
            pollster::block_on(b.submit()).unwrap();
            let read = |buf: &GpuBuffer| pollster::block_on(gpu.read::<f32>(OP, buf)).unwrap();
            let case = format!("batch {batch} t {t} heads {heads}/{kv_heads} d {d}");
            assert!(rel_err(&read(&q_buf), &f32s(&want_q)) <= 1e-6, "q, {case}");
            assert!(rel_err(&read(&k_buf), &f32s(&want_k)) <= 1e-6, "k, {case}");
            assert_eq!(read(&v_buf), f32s(&want_v), "v is copied, {case}");

            // Into caches at positions 2 …: every other cache entry keeps its sentinel.
            let (pos0, capacity) = (2, t + 4);
            let shape = CacheShape { batch, kv_heads, capacity, head_dim: d };
            let (kc, vc) = (up("k cache", &vec![-7.0; shape.elems()]), up("v cache", &vec![-7.0; shape.elems()]));
            let mut b = gpu.batch(OP);
            let kv = KeyValueOut::Cache { shape, pos0, k: &kc, v: &vc };
            op.record(&mut b, &gpu_tables, &pos_buf, s, &qkv_buf, &q_buf, &kv).unwrap();
            pollster::block_on(b.submit()).unwrap();
            let (got_k, got_v) = (read(&kc), read(&vc));
            let mut want_kc = vec![-7.0f32; shape.elems()];
            let mut want_vc = vec![-7.0f32; shape.elems()];
            for row in 0..s.rows() {
                let (seq, i) = (row / t, row % t);
                for g in 0..kv_heads {
                    for e in 0..d {
                        let at = ((seq * kv_heads + g) * capacity + pos0 + i) * d + e;
                        want_kc[at] = want_k[row * kvd + g * d + e] as f32;
                        want_vc[at] = want_v[row * kvd + g * d + e] as f32;
                    }
                }
            }
            assert!(rel_err(&got_k, &want_kc) <= 1e-6, "key cache, {case}");
            assert_eq!(got_v, want_vc, "value cache, {case}");
        }
    }

    /// The backward is the forward's transpose: ⟨forward(x), y⟩ = ⟨x, backward(y)⟩ for the
    /// references (RoPE is a rotation, the rest copies), and the GPU computes the reference.
    #[test]
    fn backward_is_the_transpose_and_the_gpu_matches_it() {
        let mut rng = testing::rng("attention input backward");
        for &(batch, t, heads, kv_heads, d, extra) in &[(2, 3, 6, 2, 12, 4), (1, 5, 9, 3, 64, 0), (3, 1, 2, 2, 2, 1)] {
            let max_pos = 4096;
            let s = PackedQkv { batch, t, heads, kv_heads, head_dim: d, stride: (heads + 2 * kv_heads) * d + extra };
            let (cos, sin) = tables(d, 1_000_000.0, max_pos);
            let positions: Vec<u32> = (0..s.rows()).map(|_| rng.random_range(0..max_pos as u32)).collect();
            let (rows, qd, kvd) = (s.rows(), heads * d, kv_heads * d);
            let x = testing::normal(&mut rng, rows * s.stride);
            let (dq, dk, dv) = (
                testing::normal(&mut rng, rows * qd),
                testing::normal(&mut rng, rows * kvd),
                testing::normal(&mut rng, rows * kvd),
            );
            let (q, k, v) = attention_input_ref(s, &x, &positions, &cos, &sin);
            let back = attention_input_backward_ref(s, &f64s(&dq), &f64s(&dk), &f64s(&dv), &positions, &cos, &sin);
            let dot = |a: &[f64], b: &[f32]| a.iter().zip(b).map(|(a, &b)| a * b as f64).sum::<f64>();
            let lhs = dot(&q, &dq) + dot(&k, &dk) + dot(&v, &dv);
            // Padding columns of a row are no input's: the backward leaves them 0.
            let rhs = dot(&back, &x);
            assert!((lhs - rhs).abs() <= 1e-9 * (1.0 + lhs.abs()), "{lhs} vs {rhs}");

            let Some(gpu) = testing::gpu() else { continue };
            let op = pollster::block_on(AttentionInput::new(&gpu)).unwrap();
            let gpu_tables = RopeTables::new(&gpu, d, 1_000_000.0, max_pos).unwrap();
            let up = |what: &str, x: &[f32]| gpu.upload(OP, what, x).unwrap();
            let dqkv = up("dqkv", &vec![0.0; rows * s.stride]);
            let mut b = gpu.batch(OP);
            let pos = gpu.upload(OP, "positions", &positions).unwrap();
            op.backward(&mut b, &gpu_tables, &pos, s, &up("dq", &dq), &up("dk", &dk), &up("dv", &dv), &dqkv).unwrap();
            pollster::block_on(b.submit()).unwrap();
            let got = pollster::block_on(gpu.read::<f32>(OP, &dqkv)).unwrap();
            assert!(rel_err(&got, &f32s(&back)) <= 1e-6, "batch {batch} t {t} heads {heads}/{kv_heads} d {d}");
        }
    }

    #[test]
    fn refuses_a_cache_too_short_and_a_stride_too_narrow() {
        let Some(gpu) = testing::gpu() else { return };
        let op = pollster::block_on(AttentionInput::new(&gpu)).unwrap();
        let tables = RopeTables::new(&gpu, 4, 10_000.0, 8).unwrap();
        let buf = gpu.storage(OP, "any", 4096).unwrap();
        let s = PackedQkv { batch: 1, t: 3, heads: 2, kv_heads: 1, head_dim: 4, stride: 16 };
        let shape = CacheShape { batch: 1, kv_heads: 1, capacity: 4, head_dim: 4 };
        let mut b = gpu.batch(OP);
        let err = op
            .record(&mut b, &tables, &buf, s, &buf, &buf, &KeyValueOut::Cache { shape, pos0: 2, k: &buf, v: &buf })
            .unwrap_err();
        assert!(err.to_string().contains("exceed the cache capacity"), "{err}");
        let narrow = PackedQkv { stride: 15, ..s };
        let err = op
            .record(&mut b, &tables, &buf, narrow, &buf, &buf, &KeyValueOut::TokenMajor { k: &buf, v: &buf })
            .unwrap_err();
        assert!(err.to_string().contains("stride"), "{err}");
    }
}

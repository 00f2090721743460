//! The output head without full-vocabulary logits for a batch: log-prob of the chosen token,
//! log-sum-exp and entropy per row, and the backward into the hidden state, computed over
//! vocabulary chunks (a chunk's logits come from `ops::matmul`, then `shaders/output_head.wgsl`
//! folds them into per-block statistics). Scratch memory is rows × chunk, whatever the vocabulary.

use std::sync::Arc;

use super::launch::{WG_1D, grid_1d, need, variant_1d};
use super::matmul::{MatmulSet, MatmulShape, MatmulSpec, Operand};
use crate::dtype::Dtype;
use crate::gpu::{Access, Batch, Gpu, GpuBuffer, GpuError, GpuResult, Kernel};
use crate::shaders::{Def, Variant};

const OP: &str = "output head";
/// Columns each statistics invocation folds.
const BLOCK: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    chunk_cols: u32,
    vocab0: u32,
    block0: u32,
    blocks_total: u32,
    stride_y: u32,
    _pad: [u32; 2],
}

fn variant(entry: &'static str) -> Variant {
    variant_1d("output_head", entry, vec![Def::U32("BLOCK", BLOCK)])
}

const ENTRIES: [&str; 3] = ["head_partial_stats", "head_finalize", "head_grad_logits"];

pub fn specializations() -> Vec<Variant> {
    ENTRIES.iter().map(|e| variant(e)).collect()
}

/// Shape of the head: `rows` hidden states of size `hidden`, vocabulary `vocab`, processed in
/// chunks of `chunk` columns.
#[derive(Clone, Copy, Debug)]
pub struct HeadShape {
    pub rows: usize,
    pub hidden: usize,
    pub vocab: usize,
    pub chunk: usize,
}

/// A `[vocab, hidden]` matrix stored as row ranges in separate buffers (each within the
/// adapter's binding limit): (first row, buffer), in increasing row order, the first at row 0.
pub type RowShards<'a> = &'a [(usize, &'a GpuBuffer)];

fn logits_spec(w_dtype: Dtype) -> MatmulSpec {
    MatmulSpec { trans_a: false, trans_b: true, has_bias: false, accumulate: false, b_dtype: w_dtype }
}
fn dh_spec(w_dtype: Dtype) -> MatmulSpec {
    MatmulSpec { trans_a: false, trans_b: false, has_bias: false, accumulate: true, b_dtype: w_dtype }
}

/// Prepared kernels and scratch for one head shape.
pub struct OutputHead {
    shape: HeadShape,
    w_dtype: Dtype,
    /// (vocab0, columns) of each chunk; a chunk never straddles two shards.
    chunks: Vec<(usize, usize)>,
    products: MatmulSet,
    kernels: [Arc<Kernel>; 3],
    logits: GpuBuffer,
    partials: GpuBuffer,
    /// `[rows, 4]`: z_target, lse, logp, entropy.
    pub row_stats: GpuBuffer,
    blocks_total: usize,
}

impl OutputHead {
    /// `shard_starts`: the first row of each shard of W (`[0]` for a single buffer).
    pub async fn new(gpu: &Gpu, shape: HeadShape, w_dtype: Dtype, shard_starts: &[usize]) -> GpuResult<Self> {
        let HeadShape { rows, hidden, vocab, chunk } = shape;
        if rows == 0 || hidden == 0 || vocab == 0 || chunk == 0 || shard_starts.first() != Some(&0) {
            return Err(GpuError::shape(OP, format!("empty shape {shape:?}, or shards not starting at row 0")));
        }
        let mut chunks = Vec::new();
        let mut blocks_total = 0;
        for (i, &start) in shard_starts.iter().enumerate() {
            let end = shard_starts.get(i + 1).copied().unwrap_or(vocab).min(vocab);
            let mut v0 = start;
            while v0 < end {
                let cols = chunk.min(end - v0);
                chunks.push((v0, cols));
                blocks_total += cols.div_ceil(BLOCK as usize);
                v0 += cols;
            }
        }
        let widest = chunks.iter().map(|c| c.1).max().expect("non-empty");
        let mut products = MatmulSet::default();
        for &(_, cols) in &chunks {
            products.prepare(gpu, logits_spec(w_dtype), MatmulShape::new(rows, cols, hidden)).await?;
            products.prepare(gpu, dh_spec(w_dtype), MatmulShape::new(rows, hidden, cols)).await?;
        }
        use Access::*;
        let bindings = [Read, Read, ReadWrite, ReadWrite, ReadWrite];
        Ok(OutputHead {
            shape: HeadShape { chunk: widest, ..shape },
            w_dtype,
            products,
            kernels: [
                gpu.kernel(&variant(ENTRIES[0]), &bindings).await?,
                gpu.kernel(&variant(ENTRIES[1]), &bindings).await?,
                gpu.kernel(&variant(ENTRIES[2]), &bindings).await?,
            ],
            logits: gpu.storage(OP, &format!("logits chunk {rows}×{widest}"), (rows * widest * 4) as u64)?,
            partials: gpu.storage(OP, "partial statistics", (rows * blocks_total * 3 * 4) as u64)?,
            row_stats: gpu.storage(OP, "row statistics", (rows * 4 * 4) as u64)?,
            chunks,
            blocks_total,
        })
    }

    fn check(&self, h: &GpuBuffer, w: RowShards, targets: &GpuBuffer) -> GpuResult<()> {
        let s = self.shape;
        need(OP, "hidden states", h, s.rows * s.hidden)?;
        need(OP, "targets", targets, s.rows)?;
        if w.first().map(|f| f.0) != Some(0) {
            return Err(GpuError::shape(OP, "W shards must start at row 0"));
        }
        for (i, &(row0, buf)) in w.iter().enumerate() {
            let end = w.get(i + 1).map_or(s.vocab, |n| n.0);
            let bytes = self.w_dtype.storage_bytes(end.saturating_sub(row0) * s.hidden);
            if buf.len_bytes() < bytes {
                return Err(GpuError::shape(
                    OP,
                    format!("W rows {row0}..{end} hold {} bytes, need {bytes}", buf.len_bytes()),
                ));
            }
        }
        Ok(())
    }

    fn params(&self, gpu: &Gpu, n: usize, vocab0: usize, cols: usize, block0: usize) -> GpuResult<(Params, [u32; 3])> {
        let (groups, stride_y) = grid_1d(gpu, OP, n, WG_1D)?;
        let params = Params {
            rows: self.shape.rows as u32,
            chunk_cols: cols as u32,
            vocab0: vocab0 as u32,
            block0: block0 as u32,
            blocks_total: self.blocks_total as u32,
            stride_y,
            _pad: [0; 2],
        };
        Ok((params, groups))
    }

    /// W's rows from `v0` as an operand: the shard that holds them, offset inside it.
    fn rows_from<'a>(&self, w: RowShards<'a>, v0: usize) -> Operand<'a> {
        let &(row0, buf) = w.iter().rev().find(|(row0, _)| *row0 <= v0).expect("checked: shards start at row 0");
        Operand { buf, off: (v0 - row0) * self.shape.hidden, ld: self.shape.hidden, batch_stride: 0 }
    }

    fn logits_chunk(&self, b: &mut Batch, i: usize, h: &GpuBuffer, w: RowShards, inv_temp: f32) -> GpuResult<()> {
        let (v0, cols) = self.chunks[i];
        let hd = self.shape.hidden;
        self.products.get(logits_spec(self.w_dtype), MatmulShape::new(self.shape.rows, cols, hd))?.record(
            b,
            Operand::dense(h, hd),
            self.rows_from(w, v0),
            None,
            Operand::dense(&self.logits, cols),
            inv_temp,
        )
    }

    /// Fills `row_stats` with (z_target, lse, logp, entropy) of `softmax(h·Wᵀ / temperature)`.
    /// `w` is `[vocab, hidden]` in the storage type given at preparation; `targets` u32 per row.
    pub fn forward(
        &self,
        b: &mut Batch,
        h: &GpuBuffer,
        w: RowShards,
        targets: &GpuBuffer,
        temperature: f32,
    ) -> GpuResult<()> {
        let s = self.shape;
        self.check(h, w, targets)?;
        // z_target stays 0 for a target outside the vocabulary instead of a stale value.
        b.clear(&self.row_stats);
        let mut block0 = 0;
        for (i, &(v0, cols)) in self.chunks.iter().enumerate() {
            self.logits_chunk(b, i, h, w, 1.0 / temperature)?;
            let blocks = cols.div_ceil(BLOCK as usize);
            let (params, groups) = self.params(b.gpu(), s.rows * blocks, v0, cols, block0)?;
            // Binding 2 (dlogp) is unused here: the read-only targets fill it.
            b.dispatch(
                &self.kernels[0],
                &params,
                &[targets, targets, &self.logits, &self.partials, &self.row_stats],
                groups,
            );
            block0 += blocks;
        }
        let (params, groups) = self.params(b.gpu(), s.rows, 0, 0, 0)?;
        b.dispatch(
            &self.kernels[1],
            &params,
            &[targets, targets, &self.logits, &self.partials, &self.row_stats],
            groups,
        );
        Ok(())
    }

    /// dh += Σ_v dlogp[r]·(1[v = target] − p_v)·W_v / temperature, after `forward` on the same
    /// inputs (it reuses the log-sum-exp in `row_stats`).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        b: &mut Batch,
        h: &GpuBuffer,
        w: RowShards,
        targets: &GpuBuffer,
        dlogp: &GpuBuffer,
        temperature: f32,
        dh: &GpuBuffer,
    ) -> GpuResult<()> {
        let s = self.shape;
        self.check(h, w, targets)?;
        need(OP, "dlogp", dlogp, s.rows)?;
        need(OP, "dh", dh, s.rows * s.hidden)?;
        for (i, &(v0, cols)) in self.chunks.iter().enumerate() {
            self.logits_chunk(b, i, h, w, 1.0 / temperature)?;
            let (params, groups) = self.params(b.gpu(), s.rows * cols, v0, cols, 0)?;
            b.dispatch(
                &self.kernels[2],
                &params,
                &[targets, dlogp, &self.logits, &self.partials, &self.row_stats],
                groups,
            );
            let hd = s.hidden;
            self.products.get(dh_spec(self.w_dtype), MatmulShape::new(s.rows, hd, cols))?.record(
                b,
                Operand::dense(&self.logits, cols),
                self.rows_from(w, v0),
                None,
                Operand::dense(dh, hd),
                1.0 / temperature,
            )?;
        }
        Ok(())
    }
}

/// CPU reference: per row (lse, logp of target, entropy), from explicit logits in f64.
pub fn head_ref(h: &[f64], w: &[f64], targets: &[u32], s: HeadShape, temperature: f64) -> Vec<[f64; 3]> {
    (0..s.rows)
        .map(|r| {
            let z: Vec<f64> = (0..s.vocab)
                .map(|v| (0..s.hidden).map(|j| h[r * s.hidden + j] * w[v * s.hidden + j]).sum::<f64>() / temperature)
                .collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = z.iter().map(|x| (x - m).exp()).sum();
            let lse = m + sum.ln();
            let entropy = lse - z.iter().map(|x| (x - lse).exp() * x).sum::<f64>();
            [lse, z[targets[r] as usize] - lse, entropy]
        })
        .collect()
}

/// CPU reference of the backward: ∂(Σ_r dlogp_r · logp_r)/∂h in f64, the gradient
/// [`OutputHead::backward`] adds to dh: `dlogp_r / T · (W_target − Σ_v p_v W_v)`.
pub fn head_backward_ref(
    h: &[f64],
    w: &[f64],
    targets: &[u32],
    dlogp: &[f64],
    s: HeadShape,
    temperature: f64,
) -> Vec<f64> {
    let stats = head_ref(h, w, targets, s, temperature);
    let mut dh = vec![0.0; s.rows * s.hidden];
    for r in 0..s.rows {
        let row = &h[r * s.hidden..(r + 1) * s.hidden];
        let lse = stats[r][0];
        let g = dlogp[r] / temperature;
        for v in 0..s.vocab {
            let wv = &w[v * s.hidden..(v + 1) * s.hidden];
            let z = row.iter().zip(wv).map(|(a, b)| a * b).sum::<f64>() / temperature;
            let coef = (v == targets[r] as usize) as u8 as f64 - (z - lse).exp();
            for (d, &wj) in dh[r * s.hidden..(r + 1) * s.hidden].iter_mut().zip(wv) {
                *d += g * coef * wj;
            }
        }
    }
    dh
}

/// Runs `head`'s forward and backward once on fresh buffers and reads (`row_stats` `[rows, 4]`,
/// dh). `w` is given as row shards (first row, f32 values), stored in the head's type; dh starts
/// as `dh0`.
#[allow(clippy::too_many_arguments)]
pub async fn head_once(
    gpu: &Gpu,
    head: &OutputHead,
    w: &[(usize, &[f32])],
    h: &[f32],
    targets: &[u32],
    dlogp: &[f32],
    dh0: &[f32],
    temperature: f32,
) -> GpuResult<(Vec<f32>, Vec<f32>)> {
    let shard_bufs = w
        .iter()
        .map(|&(row0, rows)| Ok((row0, gpu.upload(OP, "W", &crate::dtype::pack(head.w_dtype, rows))?)))
        .collect::<GpuResult<Vec<_>>>()?;
    let shards: Vec<(usize, &GpuBuffer)> = shard_bufs.iter().map(|(r, b)| (*r, b)).collect();
    let (hb, tb) = (gpu.upload(OP, "h", h)?, gpu.upload(OP, "targets", targets)?);
    let (db, dhb) = (gpu.upload(OP, "dlogp", dlogp)?, gpu.upload(OP, "dh", dh0)?);
    let mut b = gpu.batch(OP);
    head.forward(&mut b, &hb, &shards, &tb, temperature)?;
    head.backward(&mut b, &hb, &shards, &tb, &db, temperature, &dhb)?;
    b.submit().await?;
    Ok((gpu.read(OP, &head.row_stats).await?, gpu.read(OP, &dhb).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype;
    use crate::testing::{self, f32s, f64s, fd_grad, rel_err};

    #[test]
    fn chunked_head_matches_full_softmax_and_its_gradient() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("output head");
        for &(rows, hidden, vocab, chunk, dt, temp) in &[
            (1, 7, 5, 5, Dtype::F32, 1.0),
            (5, 33, 1001, 300, Dtype::F32, 1.0),
            (3, 16, 700, 256, Dtype::Bf16, 0.7),
            (9, 20, 3000, 4096, Dtype::F16, 1.3),
            (4, 64, 333, 128, Dtype::Q4, 1.0),
            (6, 48, 700, 256, Dtype::Q8, 0.8),
        ] {
            let s = HeadShape { rows, hidden, vocab, chunk };
            let h = testing::normal(&mut rng, rows * hidden);
            let w = dtype::round_trip(dt, &testing::normal(&mut rng, vocab * hidden));
            let targets: Vec<u32> = (0..rows).map(|_| rand::Rng::random_range(&mut rng, 0..vocab as u32)).collect();
            let dlogp = testing::normal(&mut rng, rows);
            let dh0 = testing::normal(&mut rng, rows * hidden);

            // The vocabulary split over shards (not multiples of the chunk) must not change anything.
            let starts: Vec<usize> = if vocab > 1000 { vec![0, vocab / 3 + 1, vocab / 2 + 7] } else { vec![0] };
            let head = pollster::block_on(OutputHead::new(&gpu, s, dt, &starts)).unwrap();
            let shards: Vec<(usize, &[f32])> = starts
                .iter()
                .enumerate()
                .map(|(i, &r0)| (r0, &w[r0 * hidden..starts.get(i + 1).copied().unwrap_or(vocab) * hidden]))
                .collect();
            let (stats, got_dh) =
                pollster::block_on(head_once(&gpu, &head, &shards, &h, &targets, &dlogp, &dh0, temp)).unwrap();
            let want = head_ref(&f64s(&h), &f64s(&w), &targets, s, temp as f64);
            for r in 0..rows {
                let got = [stats[r * 4 + 1], stats[r * 4 + 2], stats[r * 4 + 3]];
                let err = rel_err(&got, &f32s(&want[r]));
                assert!(err <= 1e-5, "{s:?} row {r}: got {got:?} want {:?}", want[r]);
            }
            // dh = dh0 + ∂(Σ_r dlogp_r · logp_r)/∂h: the analytic reference, and it against finite
            // differences of the forward reference.
            let loss = |hh: &[f64]| -> f64 {
                head_ref(hh, &f64s(&w), &targets, s, temp as f64)
                    .iter()
                    .zip(&dlogp)
                    .map(|(v, &g)| v[1] * g as f64)
                    .sum()
            };
            let analytic = head_backward_ref(&f64s(&h), &f64s(&w), &targets, &f64s(&dlogp), s, temp as f64);
            let fd = fd_grad(&loss, &f64s(&h));
            assert!(testing::rel_err64(&analytic, &fd) <= 1e-6, "{s:?}: analytic vs finite differences");
            let want_dh: Vec<f32> = analytic.iter().zip(&dh0).map(|(a, b)| (*a + *b as f64) as f32).collect();
            let err = rel_err(&got_dh, &want_dh);
            assert!(err <= 1e-5, "{s:?} dh: {err:e}");
        }
    }
}

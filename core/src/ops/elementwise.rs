//! Elementwise ops: SwiGLU forward/backward, embedding gather (and its reverse, a row scatter),
//! scaled residual add.
//! WGSL: `shaders/swiglu.wgsl`, `shaders/embedding.wgsl`, `shaders/residual.wgsl`.

use std::sync::Arc;

use super::launch::{WG_1D, grid_1d, need, variant_1d};
use crate::dtype::Dtype;
use crate::gpu::{Access, Batch, Gpu, GpuBuffer, GpuError, GpuResult, Kernel};
use crate::shaders::{Def, Variant};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SwiGluParams {
    n: u32,
    stride_y: u32,
    /// The packed forward's intermediate size (the others ignore it).
    width: u32,
    _pad: u32,
}

fn swiglu_variant(entry: &'static str) -> Variant {
    variant_1d("swiglu", entry, vec![])
}
fn embedding_variant(dtype: Dtype) -> Variant {
    variant_1d("embedding", "embedding_gather", vec![Def::U32("B_DTYPE", dtype.shader_code())])
}
fn scatter_variant() -> Variant {
    variant_1d("embedding", "rows_scatter", vec![Def::U32("B_DTYPE", Dtype::F32.shader_code())])
}
fn residual_variant() -> Variant {
    variant_1d("residual", "add_scaled", vec![])
}

pub fn specializations() -> Vec<Variant> {
    let mut v = vec![
        swiglu_variant("swiglu_forward"),
        swiglu_variant("swiglu_backward"),
        residual_variant(),
        scatter_variant(),
    ];
    v.extend(Dtype::ALL.map(embedding_variant));
    v
}

/// `h = silu(gate) ⊙ up` on packed rows gate | up, and its backward.
pub struct SwiGlu {
    forward: Arc<Kernel>,
    backward: Arc<Kernel>,
    /// Bound to the forward's unused `dh` binding.
    unused: GpuBuffer,
}

const SWIGLU: &str = "swiglu";
const SWIGLU_BINDINGS: [Access; 3] = [Access::Read, Access::Read, Access::ReadWrite];

impl SwiGlu {
    pub async fn new(gpu: &Gpu) -> GpuResult<Self> {
        Ok(SwiGlu {
            forward: gpu.kernel(&swiglu_variant("swiglu_forward"), &SWIGLU_BINDINGS).await?,
            backward: gpu.kernel(&swiglu_variant("swiglu_backward"), &SWIGLU_BINDINGS).await?,
            unused: gpu.storage(SWIGLU, "unused input", 4)?,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        b: &mut Batch,
        kernel: &Arc<Kernel>,
        rows: usize,
        width: usize,
        gate_up: &GpuBuffer,
        dh: &GpuBuffer,
        out: (&str, &GpuBuffer, usize),
    ) -> GpuResult<()> {
        let (what, out, out_elems) = out;
        if out.id() == gate_up.id() || out.id() == dh.id() {
            return Err(GpuError::shape(SWIGLU, format!("{what} must not alias its inputs")));
        }
        let n = rows * width;
        need(SWIGLU, "gate_up", gate_up, 2 * n)?;
        need(SWIGLU, what, out, out_elems)?;
        let (groups, stride_y) = grid_1d(b.gpu(), SWIGLU, n, WG_1D)?;
        let params = SwiGluParams { n: n as u32, stride_y, width: width as u32, _pad: 0 };
        b.dispatch(kernel, &params, &[gate_up, dh, out], groups);
        Ok(())
    }

    /// h[rows, width] = silu(gate) ⊙ up from packed rows `gate_up[rows, 2·width]` (each row's gate
    /// then its up, as one product over the stacked gate/up weights writes them).
    pub fn forward(
        &self,
        b: &mut Batch,
        rows: usize,
        width: usize,
        gate_up: &GpuBuffer,
        h: &GpuBuffer,
    ) -> GpuResult<()> {
        self.launch(b, &self.forward, rows, width, gate_up, &self.unused, ("h", h, rows * width))
    }

    /// The backward: `dgate_up[rows, 2·width]` (each row's dgate then its dup) from `gate_up`
    /// and `dh[rows, width]`.
    pub fn backward(
        &self,
        b: &mut Batch,
        rows: usize,
        width: usize,
        gate_up: &GpuBuffer,
        dh: &GpuBuffer,
        dgate_up: &GpuBuffer,
    ) -> GpuResult<()> {
        need(SWIGLU, "dh", dh, rows * width)?;
        self.launch(b, &self.backward, rows, width, gate_up, dh, ("dgate_up", dgate_up, 2 * rows * width))
    }
}

/// Embedding rows gathered by token id from an f32/f16/bf16 table.
pub struct Embedding {
    kernel: Arc<Kernel>,
    vocab: usize,
    h: usize,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct EmbeddingParams {
    rows: u32,
    h: u32,
    vocab: u32,
    stride_y: u32,
    vocab0: u32,
    shard_rows: u32,
    _pad: [u32; 2],
}

impl Embedding {
    pub async fn new(gpu: &Gpu, vocab: usize, h: usize, dtype: Dtype) -> GpuResult<Self> {
        use Access::*;
        Ok(Embedding { kernel: gpu.kernel(&embedding_variant(dtype), &[Read, Read, ReadWrite]).await?, vocab, h })
    }

    /// out[rows, h] = table[ids[rows], :]; ids past the vocabulary give zero rows. The table is
    /// given as row shards (first row, buffer), the first at row 0 (`&[(0, &table)]` when whole).
    pub fn record(
        &self,
        b: &mut Batch,
        ids: &GpuBuffer,
        rows: usize,
        table: &[(usize, &GpuBuffer)],
        out: &GpuBuffer,
    ) -> GpuResult<()> {
        need("embedding", "ids", ids, rows)?;
        need("embedding", "out", out, rows * self.h)?;
        if table.first().map(|t| t.0) != Some(0) {
            return Err(GpuError::shape("embedding", "table shards must start at row 0"));
        }
        let (groups, stride_y) = grid_1d(b.gpu(), "embedding", rows * self.h, WG_1D)?;
        for (i, &(row0, buf)) in table.iter().enumerate() {
            let end = table.get(i + 1).map_or(self.vocab, |n| n.0);
            let params = EmbeddingParams {
                rows: rows as u32,
                h: self.h as u32,
                vocab: self.vocab as u32,
                stride_y,
                vocab0: row0 as u32,
                shard_rows: end.saturating_sub(row0) as u32,
                _pad: [0; 2],
            };
            b.dispatch(&self.kernel, &params, &[ids, buf, out], groups);
        }
        Ok(())
    }
}

/// Rows written to given places: `out[index[r], :] = src[r, :]` for distinct indices (f32). An
/// index past `out`'s rows is skipped, so a padded index list needs no special case; the other
/// rows of `out` keep what they held. With [`Embedding`] over an f32 table it moves a subset of
/// rows out of a buffer and back.
pub struct RowScatter {
    kernel: Arc<Kernel>,
    out_rows: usize,
    h: usize,
}

impl RowScatter {
    pub async fn new(gpu: &Gpu, out_rows: usize, h: usize) -> GpuResult<Self> {
        use Access::*;
        Ok(RowScatter { kernel: gpu.kernel(&scatter_variant(), &[Read, Read, ReadWrite]).await?, out_rows, h })
    }

    pub fn record(
        &self,
        b: &mut Batch,
        index: &GpuBuffer,
        rows: usize,
        src: &GpuBuffer,
        out: &GpuBuffer,
    ) -> GpuResult<()> {
        need("row scatter", "index", index, rows)?;
        need("row scatter", "src", src, rows * self.h)?;
        need("row scatter", "out", out, self.out_rows * self.h)?;
        let (groups, stride_y) = grid_1d(b.gpu(), "row scatter", rows * self.h, WG_1D)?;
        let params = EmbeddingParams {
            rows: rows as u32,
            h: self.h as u32,
            vocab: self.out_rows as u32,
            stride_y,
            vocab0: 0,
            shard_rows: 0,
            _pad: [0; 2],
        };
        b.dispatch(&self.kernel, &params, &[index, src, out], groups);
        Ok(())
    }
}

/// CPU reference of [`RowScatter`].
pub fn row_scatter_ref(index: &[u32], src: &[f32], h: usize, out: &mut [f32]) {
    let out_rows = out.len() / h;
    for (r, &dest) in index.iter().enumerate() {
        if (dest as usize) < out_rows {
            out[dest as usize * h..][..h].copy_from_slice(&src[r * h..][..h]);
        }
    }
}

/// y += alpha · x.
pub struct AddScaled {
    kernel: Arc<Kernel>,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AddParams {
    n: u32,
    alpha: f32,
    stride_y: u32,
    _pad: u32,
}

impl AddScaled {
    pub async fn new(gpu: &Gpu) -> GpuResult<Self> {
        Ok(AddScaled { kernel: gpu.kernel(&residual_variant(), &[Access::Read, Access::ReadWrite]).await? })
    }

    pub fn record(&self, b: &mut Batch, n: usize, alpha: f32, x: &GpuBuffer, y: &GpuBuffer) -> GpuResult<()> {
        need("add", "x", x, n)?;
        need("add", "y", y, n)?;
        let (groups, stride_y) = grid_1d(b.gpu(), "add", n, WG_1D)?;
        b.dispatch(&self.kernel, &AddParams { n: n as u32, alpha, stride_y, _pad: 0 }, &[x, y], groups);
        Ok(())
    }
}

/// CPU references.
pub fn silu(g: f64) -> f64 {
    g / (1.0 + (-g).exp())
}

pub fn swiglu_ref(gate: &[f64], up: &[f64]) -> Vec<f64> {
    gate.iter().zip(up).map(|(&g, &u)| silu(g) * u).collect()
}

pub fn swiglu_backward_ref(gate: &[f64], up: &[f64], dh: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let s = |g: f64| 1.0 / (1.0 + (-g).exp());
    let dgate = gate.iter().zip(up).zip(dh).map(|((&g, &u), &d)| d * u * s(g) * (1.0 + g * (1.0 - s(g)))).collect();
    let dup = gate.iter().zip(dh).map(|(&g, &d)| d * silu(g)).collect();
    (dgate, dup)
}

/// CPU reference of [`Embedding`]: rows of `table` (`[vocab, h]`, f32 values) by id, zeros for
/// ids past the vocabulary.
pub fn embedding_ref(table: &[f32], h: usize, ids: &[u32]) -> Vec<f32> {
    let vocab = table.len() / h;
    ids.iter()
        .flat_map(|&id| if (id as usize) < vocab { table[id as usize * h..][..h].to_vec() } else { vec![0.0; h] })
        .collect()
}

/// Runs the SwiGLU forward and backward once on `rows` rows of `width` (gate and up packed into
/// rows on the way in, dgate and dup unpacked on the way out; outputs poisoned with NaN) and
/// reads `[h, dgate, dup]`.
pub async fn swiglu_once(
    gpu: &Gpu,
    op: &SwiGlu,
    width: usize,
    gate: &[f32],
    up: &[f32],
    dh: &[f32],
) -> GpuResult<[Vec<f32>; 3]> {
    let (n, rows) = (gate.len(), gate.len() / width.max(1));
    let gate_up: Vec<f32> =
        gate.chunks(width).zip(up.chunks(width)).flat_map(|(g, u)| g.iter().chain(u)).copied().collect();
    let load = |what: &str, v: &[f32]| gpu.upload(SWIGLU, what, v);
    let (gub, db) = (load("gate_up", &gate_up)?, load("dh", dh)?);
    let (hb, dgub) = (load("h", &vec![f32::NAN; n])?, load("dgate_up", &vec![f32::NAN; 2 * n])?);
    let mut b = gpu.batch(SWIGLU);
    op.forward(&mut b, rows, width, &gub, &hb)?;
    op.backward(&mut b, rows, width, &gub, &db, &dgub)?;
    b.submit().await?;
    let dgate_up = gpu.read::<f32>(SWIGLU, &dgub).await?;
    let (mut dgate, mut dup) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for row in dgate_up.chunks(2 * width) {
        dgate.extend_from_slice(&row[..width]);
        dup.extend_from_slice(&row[width..]);
    }
    Ok([gpu.read(SWIGLU, &hb).await?, dgate, dup])
}

/// Gathers `ids` from a table given as row shards (first row, f32 values of the shard's rows),
/// stored on the GPU in `op`'s type; the output starts as NaN.
pub async fn embedding_once(
    gpu: &Gpu,
    op: &Embedding,
    dtype: Dtype,
    shards: &[(usize, &[f32])],
    ids: &[u32],
) -> GpuResult<Vec<f32>> {
    const OP: &str = "embedding";
    let bufs = shards
        .iter()
        .map(|&(row0, rows)| Ok((row0, gpu.upload(OP, "table", &crate::dtype::pack(dtype, rows))?)))
        .collect::<GpuResult<Vec<_>>>()?;
    let table: Vec<(usize, &GpuBuffer)> = bufs.iter().map(|(r, b)| (*r, b)).collect();
    let ib = gpu.upload(OP, "ids", ids)?;
    let out = gpu.upload(OP, "out", &vec![f32::NAN; ids.len() * op.h])?;
    let mut b = gpu.batch(OP);
    op.record(&mut b, &ib, ids.len(), &table, &out)?;
    b.submit().await?;
    gpu.read(OP, &out).await
}

/// Scatters `src` rows to `index` in a copy of `before` on the GPU and reads it back.
pub async fn row_scatter_once(
    gpu: &Gpu,
    op: &RowScatter,
    index: &[u32],
    src: &[f32],
    before: &[f32],
) -> GpuResult<Vec<f32>> {
    const OP: &str = "row scatter";
    let (ib, sb, ob) = (gpu.upload(OP, "index", index)?, gpu.upload(OP, "src", src)?, gpu.upload(OP, "out", before)?);
    let mut b = gpu.batch(OP);
    op.record(&mut b, &ib, index.len(), &sb, &ob)?;
    b.submit().await?;
    gpu.read(OP, &ob).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype;
    use crate::testing::{self, f32s, f64s, fd_grad, rel_err, rel_err64};

    #[test]
    fn swiglu_backward_reference_matches_finite_differences() {
        let mut rng = testing::rng("swiglu fd");
        let gate = f64s(&testing::normal(&mut rng, 11));
        let up = f64s(&testing::normal(&mut rng, 11));
        let dh = f64s(&testing::normal(&mut rng, 11));
        let (dgate, dup) = swiglu_backward_ref(&gate, &up, &dh);
        let loss = |g: &[f64], u: &[f64]| swiglu_ref(g, u).iter().zip(&dh).map(|(a, b)| a * b).sum();
        assert!(rel_err64(&dgate, &fd_grad(&|g| loss(g, &up), &gate)) < 1e-6);
        assert!(rel_err64(&dup, &fd_grad(&|u| loss(&gate, u), &up)) < 1e-6);
    }

    /// On packed rows gate | up at ragged sizes (one element; a row of 17; 9 rows of 64; wide
    /// rows): h, and dgate | dup unpacked, against the reference.
    #[test]
    fn swiglu_gpu_matches_reference() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("swiglu gpu");
        let op = pollster::block_on(SwiGlu::new(&gpu)).unwrap();
        for (rows, width) in [(1, 1), (3, 17), (9, 64), (2, 1000)] {
            let n = rows * width;
            let (g, u, d) = (testing::normal(&mut rng, n), testing::normal(&mut rng, n), testing::normal(&mut rng, n));
            let [h, dgate, dup] = pollster::block_on(swiglu_once(&gpu, &op, width, &g, &u, &d)).unwrap();
            let (dg, du) = swiglu_backward_ref(&f64s(&g), &f64s(&u), &f64s(&d));
            // A handful of f32 roundings (sigmoid, products, 1 + g·(1 − s)): a single element can be
            // off by ~15 ulps (1.7e-6 seen at n = 1, seed 1795673558091669682); 4e-6 is ~32 ulps.
            const BOUND: f64 = 4e-6;
            let case = format!("{rows} rows x {width}");
            assert!(rel_err(&h, &f32s(&swiglu_ref(&f64s(&g), &f64s(&u)))) <= BOUND, "h, {case}");
            assert!(rel_err(&dgate, &f32s(&dg)) <= BOUND, "dgate, {case}");
            assert!(rel_err(&dup, &f32s(&du)) <= BOUND, "dup, {case}");
        }
    }

    #[test]
    fn embedding_gathers_rows_in_every_dtype_and_zeroes_bad_ids() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("embedding gpu");
        let (vocab, h) = (37, 13);
        for dt in Dtype::ALL {
            let h = dt.whole_blocks(h);
            let table = dtype::round_trip(dt, &testing::normal(&mut rng, vocab * h));
            let ids: Vec<u32> = vec![0, 36, 5, 5, 999, 17, 1];
            let op = pollster::block_on(Embedding::new(&gpu, vocab, h, dt)).unwrap();
            let got = pollster::block_on(embedding_once(&gpu, &op, dt, &[(0, &table)], &ids)).unwrap();
            assert_eq!(got, embedding_ref(&table, h, &ids), "{dt:?}");
        }
    }

    #[test]
    fn sharded_tables_gather_the_same_rows() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("embedding shards");
        let (vocab, h) = (50, 6);
        let table = testing::normal(&mut rng, vocab * h);
        let ids: Vec<u32> = vec![0, 49, 16, 17, 33, 34, 60, 5];
        let op = pollster::block_on(Embedding::new(&gpu, vocab, h, Dtype::F32)).unwrap();
        let starts = [0usize, 17, 34];
        let shards: Vec<(usize, &[f32])> = starts
            .iter()
            .enumerate()
            .map(|(i, &r0)| (r0, &table[r0 * h..starts.get(i + 1).copied().unwrap_or(vocab) * h]))
            .collect();
        let got = pollster::block_on(embedding_once(&gpu, &op, Dtype::F32, &shards, &ids)).unwrap();
        assert_eq!(got, embedding_ref(&table, h, &ids));
    }

    #[test]
    fn rows_scatter_to_their_index_and_gather_back() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("row scatter");
        for (out_rows, h, picked) in [(1usize, 1usize, 1usize), (37, 13, 11), (300, 65, 129)] {
            let mut order: Vec<u32> = (0..out_rows as u32).collect();
            rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
            // distinct indices in random order, and padding past the end
            let index: Vec<u32> = order.into_iter().take(picked).chain([out_rows as u32, u32::MAX]).collect();
            let rows = index.len();
            let src = testing::normal(&mut rng, rows * h);
            let before = testing::normal(&mut rng, out_rows * h);
            let op = pollster::block_on(RowScatter::new(&gpu, out_rows, h)).unwrap();
            let scattered = pollster::block_on(row_scatter_once(&gpu, &op, &index, &src, &before)).unwrap();
            let mut want = before.clone();
            row_scatter_ref(&index, &src, h, &mut want);
            assert_eq!(scattered, want, "{out_rows}×{h}");

            // the gather of the same indices takes the rows back (zeros for the padding)
            let gather = pollster::block_on(Embedding::new(&gpu, out_rows, h, Dtype::F32)).unwrap();
            let got =
                pollster::block_on(embedding_once(&gpu, &gather, Dtype::F32, &[(0, &scattered)], &index)).unwrap();
            assert_eq!(got[..picked * h], src[..picked * h]);
            assert!(got[picked * h..].iter().all(|&x| x == 0.0));
        }
    }

    #[test]
    fn add_scaled_matches_reference() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("add gpu");
        let op = pollster::block_on(AddScaled::new(&gpu)).unwrap();
        let (x, y) = (testing::normal(&mut rng, 777), testing::normal(&mut rng, 777));
        let (xb, yb) = (gpu.upload("t", "x", &x).unwrap(), gpu.upload("t", "y", &y).unwrap());
        let mut b = gpu.batch("t");
        op.record(&mut b, 777, -0.5, &xb, &yb).unwrap();
        pollster::block_on(b.submit()).unwrap();
        let got = pollster::block_on(gpu.read::<f32>("t", &yb)).unwrap();
        let want: Vec<f32> = x.iter().zip(&y).map(|(a, b)| b - 0.5 * a).collect();
        assert!(rel_err(&got, &want) <= 1e-7);
    }
}

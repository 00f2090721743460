//! Batched, strided matrix products: `C = alpha·op(A)·op(B) (+ C) (+ bias)`, the workhorse of
//! every linear layer, its backward passes and LoRA. WGSL: `shaders/matmul.wgsl`.

use std::sync::Arc;

use crate::dtype::Dtype;
use crate::gpu::{Access, Batch, Gpu, GpuBuffer, GpuError, GpuResult, Kernel, TensorCores};
use crate::shaders::{Def, Variant};

/// What a product computes, fixed at compile time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatmulSpec {
    pub trans_a: bool,
    pub trans_b: bool,
    pub has_bias: bool,
    pub accumulate: bool,
    pub b_dtype: Dtype,
}

impl MatmulSpec {
    pub const fn plain() -> Self {
        MatmulSpec { trans_a: false, trans_b: false, has_bias: false, accumulate: false, b_dtype: Dtype::F32 }
    }
}

/// `op(A)` is m×k, `op(B)` is k×n, C is m×n; `batch` products side by side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: usize,
}

impl MatmulShape {
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        MatmulShape { m, n, k, batch: 1 }
    }
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64 * self.batch as f64
    }
}

/// A matrix inside a buffer: element offset, leading dimension (row stride of the stored
/// matrix) and batch stride, all in elements.
#[derive(Clone, Copy, Debug)]
pub struct Operand<'a> {
    pub buf: &'a GpuBuffer,
    pub off: usize,
    pub ld: usize,
    pub batch_stride: usize,
}

impl<'a> Operand<'a> {
    /// A dense row-major matrix with `ld` columns at the start of `buf`.
    pub fn dense(buf: &'a GpuBuffer, ld: usize) -> Self {
        Operand { buf, off: 0, ld, batch_stride: 0 }
    }
}

/// Per-invocation register block and workgroup shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tiling {
    pub tm: u32,
    pub tn: u32,
    pub wg_m: u32,
    pub wg_n: u32,
}

impl Tiling {
    /// CPU adapters: large register blocks, no workgroup memory (docs: PERF_NOTES).
    pub const CPU: Tiling = Tiling { tm: 8, tn: 8, wg_m: 8, wg_n: 8 };
    /// CPU adapters, the vec4 fast paths on products wide enough to keep threads busy.
    pub const CPU_LARGE: Tiling = Tiling { tm: 16, tn: 16, wg_m: 8, wg_n: 8 };
    /// Real GPUs: small blocks, many invocations.
    pub const GPU: Tiling = Tiling { tm: 4, tn: 4, wg_m: 16, wg_n: 16 };

    /// The tiling for an adapter and a row count: few rows (decode) shrink the row block so no
    /// work is spent on rows that do not exist.
    pub fn choose(cpu_adapter: bool, m: usize) -> Tiling {
        let base = if cpu_adapter { Tiling::CPU } else { Tiling::GPU };
        let tm = (m.max(1).next_power_of_two() as u32).min(base.tm);
        Tiling { tm, ..base }
    }

    /// Every tiling `choose` can return.
    pub fn all() -> Vec<Tiling> {
        let mut out = Vec::new();
        for base in [Tiling::CPU, Tiling::GPU] {
            let mut tm = 1;
            while tm <= base.tm {
                out.push(Tiling { tm, ..base });
                tm *= 2;
            }
        }
        out
    }
}

const BINDINGS: [Access; 4] = [Access::Read, Access::Read, Access::Read, Access::ReadWrite];
/// The tensor-core kernel also writes the f16 overflow flag.
const COOP_BINDINGS: [Access; 5] = [Access::Read, Access::Read, Access::Read, Access::ReadWrite, Access::ReadWrite];

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    a_off: u32,
    b_off: u32,
    c_off: u32,
    batch_a: u32,
    batch_b: u32,
    batch_c: u32,
    alpha: f32,
    /// Split-K (`shaders/matmul_tiled.wgsl`): K per split, splits per product, and for the
    /// reduce pass the products in the batch; zero everywhere else.
    k_chunk: u32,
    splits: u32,
    products: u32,
}

/// The definitions every matmul shader takes for what its product computes.
fn spec_defs(spec: MatmulSpec) -> [Def; 5] {
    [
        Def::Bool("TRANS_A", spec.trans_a),
        Def::Bool("TRANS_B", spec.trans_b),
        Def::Bool("HAS_BIAS", spec.has_bias),
        Def::Bool("ACCUMULATE", spec.accumulate),
        Def::U32("B_DTYPE", spec.b_dtype.shader_code()),
    ]
}

pub fn variant(spec: MatmulSpec, tiling: Tiling) -> Variant {
    let mut defs = vec![
        Def::U32("TM", tiling.tm),
        Def::U32("TN", tiling.tn),
        Def::U32("WG_M", tiling.wg_m),
        Def::U32("WG_N", tiling.wg_n),
    ];
    defs.extend(spec_defs(spec));
    Variant { shader: "matmul", entry: "matmul", defs }
}

/// Which vec4 fast path (shaders/matmul_vec4.wgsl) a spec has, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FastPath {
    /// C = A·Bᵀ (dot products along K)
    Nt,
    /// C = A·B
    Nn,
    /// C = Aᵀ·B (outer products)
    Tn,
}

impl FastPath {
    pub fn of(spec: MatmulSpec) -> Option<FastPath> {
        match (spec.trans_a, spec.trans_b) {
            (false, true) => Some(FastPath::Nt),
            (false, false) => Some(FastPath::Nn),
            (true, false) if spec.b_dtype == Dtype::F32 => Some(FastPath::Tn),
            _ => None,
        }
    }

    fn entry(self) -> &'static str {
        match self {
            FastPath::Nt => "matmul_nt",
            FastPath::Nn => "matmul_nn",
            FastPath::Tn => "matmul_tn",
        }
    }

    /// Whether a shape can take the path: the dimensions read as vec4 are multiples of 4.
    fn fits(self, spec: MatmulSpec, shape: MatmulShape) -> bool {
        match self {
            // A block-format B is walked in whole blocks.
            FastPath::Nt => shape.k.is_multiple_of(4.max(spec.b_dtype.block_elems())),
            FastPath::Nn => shape.k.is_multiple_of(4) && shape.n.is_multiple_of(4),
            FastPath::Tn => shape.m.is_multiple_of(4) && shape.n.is_multiple_of(4),
        }
    }

    /// Register blocks: large on CPU adapters, few rows for decode-sized M. llvmpipe runs a
    /// workgroup on one thread with invocations as SIMD lanes, so a larger block means fewer
    /// loads per FMA even when it spills: 4×4 → 8×8 measured ~2×, 8×8 → 16×16 another 1.3–1.7×
    /// on the 256-row linears (bench/RESULTS.md). The 16×16 block is taken only while the grid
    /// keeps [`CPU_MIN_WORKGROUPS`] workgroups, since narrow products would leave threads idle.
    pub fn tiling(self, cpu_adapter: bool, m: usize, n: usize) -> Tiling {
        if !cpu_adapter {
            return self.block(Tiling::GPU, m);
        }
        let big = self.block(Tiling::CPU_LARGE, m);
        let groups = m.div_ceil((big.wg_m * big.tm) as usize) * n.div_ceil((big.wg_n * big.tn) as usize);
        if groups >= CPU_MIN_WORKGROUPS { big } else { self.block(Tiling::CPU, m) }
    }

    /// `base` with its row block cut to the rows there are (the outer-product path keeps row
    /// quads: its M is a multiple of 4).
    fn block(self, base: Tiling, m: usize) -> Tiling {
        let tm = match self {
            FastPath::Tn => base.tm,
            _ => (m.max(1).next_power_of_two() as u32).min(base.tm),
        };
        Tiling { tm, ..base }
    }

    fn tilings(self) -> Vec<Tiling> {
        let mut out = Vec::new();
        for base in [Tiling::CPU, Tiling::CPU_LARGE, Tiling::GPU] {
            for m in [1, 2, 4, 8, 16] {
                let t = self.block(base, m);
                if !out.contains(&t) {
                    out.push(t);
                }
            }
        }
        out
    }
}

/// Workgroups below which a CPU adapter's fast path keeps the 8×8 block (measured on 2 cores;
/// more cores would want more).
const CPU_MIN_WORKGROUPS: usize = 8;

/// Split-K decode variant of `matmul_nt` for `rows` ≤ 8 (see `shaders/matmul_vec4.wgsl`).
pub fn splitk_variant(spec: MatmulSpec, rows: u32) -> Variant {
    let mut v = fast_variant(spec, FastPath::Nt, Tiling { tm: rows, tn: 4, wg_m: 1, wg_n: SPLITK_COLUMNS });
    v.entry = "matmul_nt_splitk";
    v
}

/// Register blocks of the workgroup-tiled kernel (`shaders/matmul_tiled.wgsl`, GPU adapters):
/// 16×16 invocations, each TM×TN outputs, so a workgroup owns a (16·TM)×(16·TN) block of C.
pub const TILED_WG: u32 = 16;

/// The tiled kernel's K step: panels of BK·(16·TM + 16·TN + 2) words must fit the WebGPU
/// default of 16 KiB workgroup memory (8×8 blocks: BK 8 → 8.1 KiB; 4×4: BK 16 → 8.1 KiB).
pub fn tiled_bk(tiling: Tiling) -> u32 {
    if tiling.tm + tiling.tn > 8 { 8 } else { 16 }
}

/// The tiled kernel's register block for a shape: 8×8 (128×128 per workgroup, the most reuse)
/// when that still gives at least 128 workgroups to spread over the GPU's cores, else 4×4 or
/// fewer rows for short products, so small LLM-shaped products still fill the machine.
pub fn tiled_tiling(shape: MatmulShape) -> Tiling {
    let groups = |tm: usize, tn: usize| shape.m.div_ceil(16 * tm) * shape.n.div_ceil(16 * tn) * shape.batch;
    let (tm, tn) = if groups(8, 8) >= 128 { (8, 8) } else { ((shape.m.div_ceil(16).next_power_of_two()).min(4), 4) };
    Tiling { tm: tm as u32, tn, wg_m: TILED_WG, wg_n: TILED_WG }
}

/// Every tiling `tiled_tiling` can return.
pub fn tiled_tilings() -> Vec<Tiling> {
    [(1, 4), (2, 4), (4, 4), (8, 8)]
        .into_iter()
        .map(|(tm, tn)| Tiling { tm, tn, wg_m: TILED_WG, wg_n: TILED_WG })
        .collect()
}

pub fn tiled_variant(spec: MatmulSpec, tiling: Tiling) -> Variant {
    let mut v = variant(spec, tiling);
    v.shader = "matmul_tiled";
    v.entry = "matmul_tiled";
    v.defs.push(Def::U32("BK", tiled_bk(tiling)));
    v
}

/// The tensor-core kernel's blocking (`shaders/matmul_coop.wgsl`): 2×2 subgroups per workgroup,
/// each owning 2×2 tiles, so a workgroup owns a (4·tile)² block of C (64×64 on NVIDIA's 16×16
/// tiles) and steps K by two tiles; f16 panels and the f32 epilogue scratch take 12 KiB at 16×16.
pub const COOP_SUBGROUPS: (u32, u32) = (2, 2);
pub const COOP_FRAGMENTS: (u32, u32) = (2, 2);

/// Rows and columns of C one tensor-core workgroup owns.
pub fn coop_block(tc: TensorCores) -> (u32, u32) {
    (COOP_SUBGROUPS.0 * COOP_FRAGMENTS.0 * tc.tile, COOP_SUBGROUPS.1 * COOP_FRAGMENTS.1 * tc.tile)
}

pub fn coop_variant(spec: MatmulSpec, tc: TensorCores) -> Variant {
    let mut defs = vec![
        Def::U32("T", tc.tile),
        Def::U32("SG_SIZE", tc.subgroup_size),
        Def::U32("SG_M", COOP_SUBGROUPS.0),
        Def::U32("SG_N", COOP_SUBGROUPS.1),
        Def::U32("FM", COOP_FRAGMENTS.0),
        Def::U32("FN", COOP_FRAGMENTS.1),
        Def::U32("BK", 2 * tc.tile),
    ];
    defs.extend(spec_defs(spec));
    Variant { shader: "matmul_coop", entry: "matmul_coop", defs }
}

/// The tensor-core configurations adapters report (NVIDIA 16×16 in subgroups of 32, lavapipe
/// and Apple 8×8); the portability test validates every used spec with each, under the
/// capabilities the feature brings.
pub fn coop_specializations() -> Vec<Variant> {
    let configs = [TensorCores { tile: 16, subgroup_size: 32 }, TensorCores { tile: 8, subgroup_size: 8 }];
    used_specs().into_iter().flat_map(|spec| configs.map(|tc| coop_variant(spec, tc))).collect()
}

/// The split-K reduce pass of the tiled kernel (`matmul_splitk_reduce`), for `spec`'s bias and
/// accumulation.
pub fn splitk_reduce_variant(spec: MatmulSpec, tiling: Tiling) -> Variant {
    let mut v = tiled_variant(spec, tiling);
    v.entry = "matmul_splitk_reduce";
    v
}

/// Split-K of the tiled kernel for long-K products: products with K of at least this…
pub const LONG_SPLITK_MIN_K: usize = 1024;
/// …whose output gives fewer workgroups than this (an H200 has 132 SMs) are split…
pub const LONG_SPLITK_MIN_GROUPS: usize = 128;
/// …into at most this many K ranges, each at least `LONG_SPLITK_MIN_CHUNK` long, aiming at
/// `LONG_SPLITK_TARGET_GROUPS` workgroups in all.
pub const LONG_SPLITK_MAX: usize = 16;
pub const LONG_SPLITK_MIN_CHUNK: usize = 256;
pub const LONG_SPLITK_TARGET_GROUPS: usize = 256;

/// How many K ranges the tiled kernel splits `shape` into with `tiling` (1: none).
pub fn long_splitk_splits(shape: MatmulShape, tiling: Tiling) -> usize {
    let groups = shape.m.div_ceil((tiling.tm * tiling.wg_m) as usize)
        * shape.n.div_ceil((tiling.tn * tiling.wg_n) as usize)
        * shape.batch;
    if shape.k < LONG_SPLITK_MIN_K || groups >= LONG_SPLITK_MIN_GROUPS {
        return 1;
    }
    LONG_SPLITK_TARGET_GROUPS.div_ceil(groups).min(LONG_SPLITK_MAX).min(shape.k / LONG_SPLITK_MIN_CHUNK).max(1)
}

/// Lanes sharing one column's K, and columns per workgroup, of the split-K decode path.
pub const SPLITK_LANES: u32 = 8;
pub const SPLITK_COLUMNS: u32 = 8;
/// Rows up to which NT products take the split-K path.
pub const SPLITK_MAX_ROWS: usize = 8;

pub fn fast_variant(spec: MatmulSpec, path: FastPath, tiling: Tiling) -> Variant {
    let mut v = variant(spec, tiling);
    v.shader = "matmul_vec4";
    v.entry = path.entry();
    v.defs.retain(|d| !matches!(d, Def::Bool("TRANS_A", _) | Def::Bool("TRANS_B", _)));
    // The file's split-K entry point sizes its workgroup memory with KL.
    v.defs.push(Def::U32("KL", SPLITK_LANES));
    // matmul_nt walks a block-format B block by block (0: a float format, or a 16-row block,
    // where dequantising each quad once for its 16 rows costs less than a second set of 16-row
    // accumulators; decode-sized blocks of at most 8 rows gain from the walk: bench/RESULTS.md).
    let walk = spec.b_dtype.is_quantized() && tiling.tm <= 8;
    v.defs.push(Def::U32("B_BLOCK", if walk { spec.b_dtype.block_elems() as u32 } else { 0 }));
    v
}

/// The specs the product uses (linear forward/backward, LoRA, attention-free products); the
/// portability test compiles each with every tiling.
pub fn used_specs() -> Vec<MatmulSpec> {
    let mut specs = Vec::new();
    for b_dtype in Dtype::ALL {
        for has_bias in [false, true] {
            for accumulate in [false, true] {
                specs.push(MatmulSpec { trans_a: false, trans_b: true, has_bias, accumulate, b_dtype });
            }
        }
        for accumulate in [false, true] {
            specs.push(MatmulSpec { trans_a: false, trans_b: false, has_bias: false, accumulate, b_dtype });
        }
    }
    for accumulate in [false, true] {
        specs.push(MatmulSpec { trans_a: true, trans_b: false, has_bias: false, accumulate, b_dtype: Dtype::F32 });
        specs.push(MatmulSpec { trans_a: true, trans_b: true, has_bias: false, accumulate, b_dtype: Dtype::F32 });
    }
    specs
}

pub fn specializations() -> Vec<Variant> {
    let mut out = Vec::new();
    for spec in used_specs() {
        out.extend(Tiling::all().into_iter().map(|t| variant(spec, t)));
        out.extend(tiled_tilings().into_iter().map(|t| tiled_variant(spec, t)));
        out.extend(tiled_tilings().into_iter().map(|t| splitk_reduce_variant(spec, t)));
        if let Some(path) = FastPath::of(spec) {
            out.extend(path.tilings().into_iter().map(|t| fast_variant(spec, path, t)));
            if path == FastPath::Nt {
                out.extend((1..=SPLITK_MAX_ROWS as u32).map(|rows| splitk_variant(spec, rows)));
            }
        }
    }
    out
}

const OP: &str = "matmul";

/// One compiled kernel of a product and its grid.
struct Prepared {
    kernel: Arc<Kernel>,
    tiling: Tiling,
    groups: [u32; 3],
    /// The tensor-core kernel: bound with the f16 overflow flag as well.
    coop: bool,
}

/// A prepared product for one shape: compiled once, recorded every step. Aligned operands take
/// the vec4 fast path when the shape allows it; anything else the general kernel.
pub struct Matmul {
    spec: MatmulSpec,
    shape: MatmulShape,
    general: Prepared,
    fast: Option<Prepared>,
    /// Split-K of the general (tiled) kernel for long-K products with few output blocks.
    long_splitk: Option<LongSplitK>,
}

/// The two passes of the tiled kernel's split-K and the partial sums between them.
struct LongSplitK {
    /// The tiled kernel without bias or accumulation, each workgroup over one K range.
    partial: Arc<Kernel>,
    reduce: Arc<Kernel>,
    splits: u32,
    k_chunk: u32,
    groups: [u32; 3],
    reduce_groups: [u32; 3],
    /// `[batch·splits, m, n]` partial sums, reused by every record (dispatches run in order).
    scratch: GpuBuffer,
}

/// Elements a strided matrix spans: `off + (batch−1)·bs + (rows−1)·ld + cols`.
fn extent(op: &Operand, rows: usize, cols: usize, batch: usize) -> usize {
    op.off + (batch - 1) * op.batch_stride + (rows - 1) * op.ld + cols
}

impl Matmul {
    pub async fn new(gpu: &Gpu, spec: MatmulSpec, shape: MatmulShape) -> GpuResult<Self> {
        let cpu = gpu.cpu_kernels();
        if let Some(tc) = gpu.tensor_cores() {
            // Mixed precision: every product on tensor cores, except decode rows on GPUs, which
            // keep split-K (a 16-row tile would mostly multiply rows that do not exist).
            let mut mm = Self::coop(gpu, spec, shape, tc).await?;
            let splitk = !cpu
                && FastPath::of(spec).filter(|p| p.fits(spec, shape)) == Some(FastPath::Nt)
                && shape.m <= SPLITK_MAX_ROWS;
            if splitk {
                mm.fast = Some(Self::prepare_splitk(gpu, spec, shape).await?);
            }
            return Ok(mm);
        }
        if !cpu {
            // GPUs: the workgroup-tiled kernel for any operands (split along K when the product
            // is long and its output too small to fill the GPU), split-K for aligned decode rows.
            let tiling = tiled_tiling(shape);
            let mut mm = Self::tiled_split(gpu, spec, shape, tiling, long_splitk_splits(shape, tiling)).await?;
            let splitk =
                FastPath::of(spec).filter(|p| p.fits(spec, shape)) == Some(FastPath::Nt) && shape.m <= SPLITK_MAX_ROWS;
            if splitk {
                // Split-K reads B coalesced, which GPUs need for decode; llvmpipe measured it
                // 2–4× slower than register blocks (bench/RESULTS.md), so CPU adapters keep those.
                mm.fast = Some(Self::prepare_splitk(gpu, spec, shape).await?);
            }
            return Ok(mm);
        }
        let mut mm = Self::with_tiling(gpu, spec, shape, Tiling::choose(cpu, shape.m)).await?;
        if let Some(path) = FastPath::of(spec).filter(|p| p.fits(spec, shape)) {
            {
                let tiling = path.tiling(cpu, shape.m, shape.n);
                let groups = Self::grid(gpu, shape, tiling)?;
                let kernel = gpu.kernel(&fast_variant(spec, path, tiling), &BINDINGS).await?;
                mm.fast = Some(Prepared { kernel, tiling, groups, coop: false });
            }
        }
        Ok(mm)
    }

    async fn prepare_splitk(gpu: &Gpu, spec: MatmulSpec, shape: MatmulShape) -> GpuResult<Prepared> {
        let rows = shape.m as u32;
        let kernel = gpu.kernel(&splitk_variant(spec, rows), &BINDINGS).await?;
        let groups = gpu.check_workgroups(
            OP,
            &format!("m={} n={} k={} batch={}", shape.m, shape.n, shape.k, shape.batch),
            [(shape.n as u64).div_ceil(SPLITK_COLUMNS as u64), 1, shape.batch as u64],
        )?;
        Ok(Prepared { kernel, tiling: Tiling { tm: rows, tn: 1, wg_m: 1, wg_n: SPLITK_COLUMNS }, groups, coop: false })
    }

    fn grid(gpu: &Gpu, shape: MatmulShape, tiling: Tiling) -> GpuResult<[u32; 3]> {
        let MatmulShape { m, n, k, batch } = shape;
        gpu.check_workgroups(
            OP,
            &format!("m={m} n={n} k={k} batch={batch}"),
            [
                (n as u64).div_ceil(tiling.tn as u64 * tiling.wg_n as u64),
                (m as u64).div_ceil(tiling.tm as u64 * tiling.wg_m as u64),
                batch as u64,
            ],
        )
    }

    /// The general kernel only, with a given tiling (tests and benchmarks).
    pub async fn with_tiling(gpu: &Gpu, spec: MatmulSpec, shape: MatmulShape, tiling: Tiling) -> GpuResult<Self> {
        Self::with_general(gpu, spec, shape, tiling, &variant(spec, tiling), false).await
    }

    /// The product with `general` (a kernel of `tiling`'s block, or the tensor-core kernel when
    /// `coop`) as its general kernel, after checking the shape; only that kernel is compiled.
    async fn with_general(
        gpu: &Gpu,
        spec: MatmulSpec,
        shape: MatmulShape,
        tiling: Tiling,
        general: &Variant,
        coop: bool,
    ) -> GpuResult<Self> {
        let MatmulShape { m, n, k, batch } = shape;
        if m == 0 || n == 0 || k == 0 || batch == 0 {
            return Err(GpuError::shape(OP, format!("empty shape m={m} n={n} k={k} batch={batch}")));
        }
        if spec.b_dtype != Dtype::F32 && spec.trans_a {
            return Err(GpuError::shape(OP, "packed B is only for frozen weights (TRANS_A products are gradients)"));
        }
        let groups = Self::grid(gpu, shape, tiling)?;
        let bindings: &[Access] = if coop { &COOP_BINDINGS } else { &BINDINGS };
        let kernel = gpu.kernel(general, bindings).await?;
        Ok(Matmul { spec, shape, general: Prepared { kernel, tiling, groups, coop }, fast: None, long_splitk: None })
    }

    /// The workgroup-tiled kernel (GPU adapters) with a given register block, for any operands.
    pub async fn tiled(gpu: &Gpu, spec: MatmulSpec, shape: MatmulShape, tiling: Tiling) -> GpuResult<Self> {
        Self::with_general(gpu, spec, shape, tiling, &tiled_variant(spec, tiling), false).await
    }

    /// The tiled kernel with its K cut into `splits` ranges (1: no split): partial sums of every
    /// range into a scratch buffer, then a reduce pass that adds them into C with α, the bias and
    /// the accumulation.
    pub async fn tiled_split(
        gpu: &Gpu,
        spec: MatmulSpec,
        shape: MatmulShape,
        tiling: Tiling,
        splits: usize,
    ) -> GpuResult<Self> {
        let mut mm = Self::tiled(gpu, spec, shape, tiling).await?;
        if splits <= 1 {
            return Ok(mm);
        }
        let MatmulShape { m, n, k, batch } = shape;
        let bk = tiled_bk(tiling) as usize;
        let k_chunk = k.div_ceil(splits).next_multiple_of(bk);
        let plain = MatmulSpec { has_bias: false, accumulate: false, ..spec };
        let partial = gpu.kernel(&tiled_variant(plain, tiling), &BINDINGS).await?;
        let reduce = gpu.kernel(&splitk_reduce_variant(spec, tiling), &BINDINGS).await?;
        let [gx, gy, _] = mm.general.groups;
        let groups = gpu.check_workgroups(
            OP,
            &format!("m={m} n={n} k={k} batch={batch} in {splits} K splits"),
            [gx as u64, gy as u64, (batch * splits) as u64],
        )?;
        // The reduce kernel finds its element from the grid's x extent (`grid_1d`'s stride).
        let (reduce_groups, _) = super::launch::grid_1d(gpu, OP, batch * m * n, 64)?;
        let scratch = gpu.storage(OP, "split-K partial sums", (batch * splits * m * n * 4) as u64)?;
        mm.long_splitk = Some(LongSplitK {
            partial,
            reduce,
            splits: splits as u32,
            k_chunk: k_chunk as u32,
            groups,
            reduce_groups,
            scratch,
        });
        Ok(mm)
    }

    /// K ranges the general kernel splits the product into (1: none).
    pub fn long_splits(&self) -> usize {
        self.long_splitk.as_ref().map_or(1, |s| s.splits as usize)
    }

    /// The tensor-core kernel (f16 operands, f32 accumulation) for any operands; needs a device
    /// opened with cooperative matrices.
    pub async fn coop(gpu: &Gpu, spec: MatmulSpec, shape: MatmulShape, tc: TensorCores) -> GpuResult<Self> {
        let (bm, bn) = coop_block(tc);
        // The grid of a block that size (the tiling only sizes the grid; the kernel is the coop one).
        let block = Tiling { tm: bm / 16, tn: bn / 16, wg_m: 16, wg_n: 16 };
        Self::with_general(gpu, spec, shape, block, &coop_variant(spec, tc), true).await
    }

    /// Whether the product runs on tensor cores (aligned or not; decode rows may take split-K).
    pub fn is_mixed_precision(&self) -> bool {
        self.general.coop
    }

    /// The vec4 fast path alone, with a given tiling (tests and benchmarks); fails if the shape
    /// does not fit it.
    pub async fn fast_with_tiling(gpu: &Gpu, spec: MatmulSpec, shape: MatmulShape, tiling: Tiling) -> GpuResult<Self> {
        let path = FastPath::of(spec)
            .filter(|p| p.fits(spec, shape))
            .ok_or_else(|| GpuError::shape(OP, format!("{spec:?} {shape:?} has no vec4 fast path")))?;
        let mut mm = Self::with_tiling(gpu, spec, shape, tiling).await?;
        let kernel = gpu.kernel(&fast_variant(spec, path, tiling), &BINDINGS).await?;
        mm.fast = Some(Prepared { kernel, tiling, groups: mm.general.groups, coop: false });
        Ok(mm)
    }

    /// The tiling of the kernel aligned operands get.
    pub fn tiling(&self) -> Tiling {
        self.fast.as_ref().unwrap_or(&self.general).tiling
    }

    pub fn has_fast_path(&self) -> bool {
        self.fast.is_some()
    }
    pub fn shape(&self) -> MatmulShape {
        self.shape
    }
    pub fn spec(&self) -> MatmulSpec {
        self.spec
    }

    /// Records the product, after checking every operand lies inside its buffer.
    pub fn record(
        &self,
        batch_rec: &mut Batch,
        a: Operand,
        b: Operand,
        bias: Option<&GpuBuffer>,
        c: Operand,
        alpha: f32,
    ) -> GpuResult<()> {
        let MatmulShape { m, n, k, batch } = self.shape;
        let s = self.spec;
        let (a_rows, a_cols) = if s.trans_a { (k, m) } else { (m, k) };
        let (b_rows, b_cols) = if s.trans_b { (n, k) } else { (k, n) };
        let shape = format!("m={m} n={n} k={k} batch={batch}");
        let check = |what: &str, o: &Operand, rows: usize, cols: usize, dtype: Dtype| -> GpuResult<()> {
            let elems = extent(o, rows, cols, batch);
            if o.ld < cols {
                return Err(GpuError::shape(
                    OP,
                    format!("{what}: leading dimension {} < {cols} columns ({shape})", o.ld),
                ));
            }
            if dtype.storage_bytes(elems) > o.buf.len_bytes() || elems > u32::MAX as usize {
                return Err(GpuError::shape(
                    OP,
                    format!("{what} spans {elems} elements but its buffer holds {} bytes ({shape})", o.buf.len_bytes()),
                ));
            }
            Ok(())
        };
        check("A", &a, a_rows, a_cols, Dtype::F32)?;
        check("B", &b, b_rows, b_cols, s.b_dtype)?;
        let block = s.b_dtype.block_elems();
        if [b.off, b.ld, b.batch_stride].iter().any(|v| !v.is_multiple_of(block)) {
            return Err(GpuError::shape(
                OP,
                format!(
                    "B in {} blocks of {block} needs its offset ({}), leading dimension ({}) and batch stride ({}) \
                     in whole blocks ({shape})",
                    s.b_dtype, b.off, b.ld, b.batch_stride
                ),
            ));
        }
        check("C", &c, m, n, Dtype::F32)?;
        let bias = match (bias, s.has_bias) {
            (Some(bias), true) if bias.len_bytes() >= n as u64 * 4 => bias,
            (Some(bias), true) => {
                return Err(GpuError::shape(OP, format!("bias holds {} f32, needs {n}", bias.len_bytes() / 4)));
            }
            (None, false) => a.buf, // never read: HAS_BIAS is false
            (Some(_), false) => return Err(GpuError::shape(OP, "a bias was given to a product prepared without one")),
            (None, true) => return Err(GpuError::shape(OP, "the product was prepared with a bias but none was given")),
        };
        let u = |v: usize| v as u32;
        let params = Params {
            m: u(m),
            n: u(n),
            k: u(k),
            lda: u(a.ld),
            ldb: u(b.ld),
            ldc: u(c.ld),
            a_off: u(a.off),
            b_off: u(b.off),
            c_off: u(c.off),
            batch_a: u(a.batch_stride),
            batch_b: u(b.batch_stride),
            batch_c: u(c.batch_stride),
            alpha,
            k_chunk: 0,
            splits: 0,
            products: 0,
        };
        // The fast path reads A as vec4 and B in aligned quads.
        let aligned =
            |o: &Operand| o.off.is_multiple_of(4) && o.ld.is_multiple_of(4) && o.batch_stride.is_multiple_of(4);
        let fast = self.fast.as_ref().filter(|_| aligned(&a) && aligned(&b));
        if let (None, Some(split)) = (fast, &self.long_splitk) {
            let (m, n) = (params.m, params.n);
            // Pass 1: each (product, K range) into its dense m×n slice of the scratch; the bias
            // binding is unused (the pass is prepared without one).
            let partial = Params {
                ldc: n,
                c_off: 0,
                batch_c: m * n,
                alpha: 1.0,
                k_chunk: split.k_chunk,
                splits: split.splits,
                ..params
            };
            batch_rec.dispatch(&split.partial, &partial, &[a.buf, b.buf, a.buf, &split.scratch], split.groups);
            // Pass 2: the slices added up into C (the scratch bound in A's place, B's unused).
            let reduce = Params { splits: split.splits, products: batch as u32, ..params };
            let slices = &split.scratch;
            batch_rec.dispatch(&split.reduce, &reduce, &[slices, slices, bias, c.buf], split.reduce_groups);
            return Ok(());
        }
        let prepared = fast.unwrap_or(&self.general);
        if prepared.coop {
            let flag = batch_rec.gpu().f16_overflow_flag()?.clone();
            batch_rec.dispatch(&prepared.kernel, &params, &[a.buf, b.buf, bias, c.buf, &flag], prepared.groups);
        } else {
            batch_rec.dispatch(&prepared.kernel, &params, &[a.buf, b.buf, bias, c.buf], prepared.groups);
        }
        Ok(())
    }
}

/// Host-side description of an operand for the CPU reference.
#[derive(Clone, Copy, Debug)]
pub struct HostOperand {
    pub off: usize,
    pub ld: usize,
    pub batch_stride: usize,
}

/// CPU reference of the kernel, accumulating in f64; `b` holds B already as f32.
#[allow(clippy::too_many_arguments)]
pub fn matmul_ref(
    spec: MatmulSpec,
    shape: MatmulShape,
    a: &[f32],
    ao: HostOperand,
    b: &[f32],
    bo: HostOperand,
    bias: Option<&[f32]>,
    c: &mut [f32],
    co: HostOperand,
    alpha: f32,
) {
    let MatmulShape { m, n, k, batch } = shape;
    for z in 0..batch {
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0f64;
                for kk in 0..k {
                    let ai = ao.off + z * ao.batch_stride + if spec.trans_a { kk * ao.ld + i } else { i * ao.ld + kk };
                    let bi = bo.off + z * bo.batch_stride + if spec.trans_b { j * bo.ld + kk } else { kk * bo.ld + j };
                    acc += a[ai] as f64 * b[bi] as f64;
                }
                let ci = co.off + z * co.batch_stride + i * co.ld + j;
                let mut v = alpha as f64 * acc;
                if let Some(bias) = bias {
                    v += bias[j] as f64;
                }
                if spec.accumulate {
                    v += c[ci] as f64;
                }
                c[ci] = v as f32;
            }
        }
    }
}

/// One product on host operands (B as f32 values, packed to the spec's type on upload): what
/// tests and the self-check run through a prepared [`Matmul`] and through [`matmul_ref`].
#[derive(Clone, Copy, Debug)]
pub struct HostProduct<'a> {
    pub a: &'a [f32],
    pub ao: HostOperand,
    pub b: &'a [f32],
    pub bo: HostOperand,
    pub bias: Option<&'a [f32]>,
    /// C's contents before the product (what an accumulating spec adds to).
    pub c: &'a [f32],
    pub co: HostOperand,
    pub alpha: f32,
}

impl HostProduct<'_> {
    /// The reference result for `op`'s spec and shape.
    pub fn reference(&self, op: &Matmul) -> Vec<f32> {
        let mut c = self.c.to_vec();
        let bias = self.bias.filter(|_| op.spec.has_bias);
        matmul_ref(op.spec, op.shape, self.a, self.ao, self.b, self.bo, bias, &mut c, self.co, self.alpha);
        c
    }

    /// Runs `op` once on fresh buffers and reads C back.
    pub async fn run(&self, gpu: &Gpu, op: &Matmul) -> GpuResult<Vec<f32>> {
        let spec = op.spec;
        let a = gpu.upload(OP, "A", self.a)?;
        let b = gpu.upload(OP, "B", &crate::dtype::pack(spec.b_dtype, self.b))?;
        let c = gpu.upload(OP, "C", self.c)?;
        let bias = match self.bias.filter(|_| spec.has_bias) {
            Some(v) => Some(gpu.upload(OP, "bias", v)?),
            None => None,
        };
        let on = |o: HostOperand, buf| Operand { buf, off: o.off, ld: o.ld, batch_stride: o.batch_stride };
        let mut batch = gpu.batch(OP);
        op.record(&mut batch, on(self.ao, &a), on(self.bo, &b), bias.as_ref(), on(self.co, &c), self.alpha)?;
        batch.submit().await?;
        gpu.read::<f32>(OP, &c).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype;
    use crate::testing::{self, rel_err};
    use rand::Rng;

    /// Every used spec with a float B, and for the block formats (whose loader is the only part
    /// that differs) one spec per kernel entry: x·Wᵀ with a bias, and the accumulating backward
    /// to the input. The bias and accumulate epilogues are the same code for every B type, and
    /// covering all their combinations again per block format would add minutes to CI.
    fn specs_under_test() -> Vec<MatmulSpec> {
        used_specs()
            .into_iter()
            .filter(|s| {
                !s.b_dtype.is_quantized()
                    || (s.trans_b && s.has_bias && !s.accumulate)
                    || (!s.trans_a && !s.trans_b && s.accumulate)
            })
            .collect()
    }

    /// Runs one random case of `spec` on the GPU and the reference, with padding around every
    /// operand (offsets, leading dimensions larger than the matrix, batch strides).
    fn check_case(
        gpu: &Gpu,
        rng: &mut rand::rngs::StdRng,
        spec: MatmulSpec,
        shape: MatmulShape,
        tiling: Option<Tiling>,
    ) {
        // `None`: the product as `Matmul::new` prepares it, with 4-aligned operands so the fast
        // path runs where the shape allows.
        let step = if tiling.is_none() { 4 } else { 1 };
        let op = match tiling {
            Some(t) => pollster::block_on(Matmul::with_tiling(gpu, spec, shape, t)).expect("prepare"),
            None => pollster::block_on(Matmul::new(gpu, spec, shape)).expect("prepare"),
        };
        check_with(gpu, rng, spec, shape, &op, step);
    }

    /// Runs a prepared product on random operands whose offsets and leading dimensions are
    /// multiples of `step`, and compares it with the reference.
    fn check_with(
        gpu: &Gpu,
        rng: &mut rand::rngs::StdRng,
        spec: MatmulSpec,
        shape: MatmulShape,
        op: &Matmul,
        step: usize,
    ) {
        let err = product_error(gpu, rng, spec, shape, op, step, false);
        let path = if step == 4 && op.has_fast_path() { "fast" } else { "general" };
        assert!(err <= 1e-5, "{spec:?} {shape:?} {path} {:?}: ‖gpu−ref‖/‖ref‖ = {err:e}", op.tiling());
    }

    /// ‖gpu − ref‖/‖ref‖ of one random case; `f16_operands` rounds A and B to f16 first, so a
    /// mixed-precision product must then match the f64 reference to f32 accumulation accuracy.
    fn product_error(
        gpu: &Gpu,
        rng: &mut rand::rngs::StdRng,
        spec: MatmulSpec,
        shape: MatmulShape,
        op: &Matmul,
        step: usize,
        f16_operands: bool,
    ) -> f64 {
        let MatmulShape { m, n, k, batch } = shape;
        let mut operand = |rows: usize, cols: usize, step: usize| {
            let ld = (cols + rng.random_range(0..3)).next_multiple_of(step);
            let off = rng.random_range(0..5) * step;
            let bs = (rows * ld + rng.random_range(0..4)).next_multiple_of(step);
            let len = off + (batch - 1) * bs + (rows - 1) * ld + cols + rng.random_range(0..3);
            (HostOperand { off, ld, batch_stride: bs }, len)
        };
        let (a_rows, a_cols) = if spec.trans_a { (k, m) } else { (m, k) };
        let (b_rows, b_cols) = if spec.trans_b { (n, k) } else { (k, n) };
        let (ao, a_len) = operand(a_rows, a_cols, step);
        // A block-format B starts, and strides, in whole blocks.
        let (bo, b_len) = operand(b_rows, b_cols, step.max(spec.b_dtype.block_elems()));
        let (co, c_len) = operand(m, n, step);
        let rounded = |v: Vec<f32>| if f16_operands { dtype::round_trip(Dtype::F16, &v) } else { v };
        let a = rounded(testing::normal(rng, a_len));
        let b = dtype::round_trip(spec.b_dtype, &rounded(testing::normal(rng, b_len)));
        let bias = testing::normal(rng, n);
        let c0 = testing::normal(rng, c_len);
        let alpha = if rng.random::<bool>() { 1.0 } else { 0.37 };
        let product = HostProduct { a: &a, ao, b: &b, bo, bias: Some(&bias), c: &c0, co, alpha };
        let got = pollster::block_on(product.run(gpu, op)).expect("run");
        rel_err(&got, &product.reference(op))
    }

    /// Split-K of the tiled kernel: every spec, ragged K ranges (and a split left empty), batches;
    /// and `Matmul::new` on a GPU adapter takes it for a long-K product with a small output.
    #[test]
    fn long_k_products_split_along_k_match_the_reference() {
        let Some(gpu) = testing::gpu_with_gpu_kernels() else { return };
        let mut rng = testing::rng("matmul long split-K");
        for spec in specs_under_test() {
            for (m, n, k, batch, splits) in [(37, 45, 1500, 1, 3), (5, 70, 1100, 2, 5), (17, 9, 70, 1, 4)] {
                let shape = MatmulShape { m, n, k, batch };
                let op = pollster::block_on(Matmul::tiled_split(&gpu, spec, shape, tiled_tiling(shape), splits))
                    .expect("prepare");
                assert_eq!(op.long_splits(), splits);
                check_with(&gpu, &mut rng, spec, shape, &op, 1);
            }
        }
        // Qwen2.5-0.5B's down projection backward to the input for 64 rows: K = 4864, few blocks.
        let shape = MatmulShape::new(64, 896, 4864);
        let spec = MatmulSpec { trans_b: false, ..MatmulSpec::plain() };
        assert!(long_splitk_splits(shape, tiled_tiling(shape)) > 1);
        let op = pollster::block_on(Matmul::new(&gpu, spec, shape)).unwrap();
        assert!(op.long_splits() > 1, "Matmul::new splits a long-K product on a GPU adapter");
        check_with(&gpu, &mut rng, spec, shape, &op, 1);
        // Wide outputs and short K stay whole.
        assert_eq!(
            long_splitk_splits(MatmulShape::new(1024, 1024, 4096), tiled_tiling(MatmulShape::new(1024, 1024, 4096))),
            1
        );
        assert_eq!(long_splitk_splits(MatmulShape::new(8, 64, 512), tiled_tiling(MatmulShape::new(8, 64, 512))), 1);
    }

    #[test]
    fn tensor_core_products_match_the_reference_for_every_spec_at_awkward_sizes() {
        let Some(gpu) = testing::gpu_with_tensor_cores() else { return };
        let tc = gpu.tensor_cores().expect("tensor cores");
        let mut rng = testing::rng("matmul tensor cores");
        let (bm, bn) = coop_block(tc);
        let (bm, bn) = (bm as usize, bn as usize);
        // Ragged against the tile and the block, several blocks and K steps, batches, decode rows.
        let shapes =
            [(1, 37, 19, 1), (7, 66, 33, 2), (19, 9, 70, 1), (bm + 3, 2 * bn - 1, 5 * tc.tile as usize + 3, 1)];
        for spec in specs_under_test() {
            for &(m, n, k, batch) in &shapes {
                let shape = MatmulShape { m, n, k, batch };
                let op = pollster::block_on(Matmul::coop(&gpu, spec, shape, tc)).expect("prepare");
                // f16-exact operands: only the f32 accumulation order differs from the reference.
                // A block-format B dequantises to values that are not f16-exact, which the tiles
                // round: no exact case for it (its loader is checked exactly by the f32 kernels).
                if !spec.b_dtype.is_quantized() {
                    let exact = product_error(&gpu, &mut rng, spec, shape, &op, 1, true);
                    assert!(exact <= 1e-5, "{spec:?} {shape:?} tile {}: f16-exact operands, error {exact:e}", tc.tile);
                }
                // Any f32 operands: the f16 rounding of both (2^-11 relative each) shows.
                let mixed = product_error(&gpu, &mut rng, spec, shape, &op, 1, false);
                assert!(mixed <= 3e-3, "{spec:?} {shape:?} tile {}: f32 operands, error {mixed:e}", tc.tile);
            }
        }
        assert!(!pollster::block_on(gpu.take_f16_overflow()).unwrap(), "normal operands must not raise the flag");
    }

    #[test]
    fn an_operand_beyond_f16_raises_the_overflow_flag_once() {
        let Some(gpu) = testing::gpu_with_tensor_cores() else { return };
        let shape = MatmulShape::new(5, 9, 13);
        let spec = MatmulSpec { trans_b: true, ..MatmulSpec::plain() };
        let op = pollster::block_on(Matmul::new(&gpu, spec, shape)).expect("prepare");
        assert!(op.is_mixed_precision(), "a tensor-core device prepares tensor-core products");
        let dense = |cols: usize| HostOperand { off: 0, ld: cols, batch_stride: 0 };
        let mut a = vec![0.5f32; 5 * 13];
        let b = vec![0.25f32; 9 * 13];
        let c = vec![0f32; 5 * 9];
        let run = |a: &[f32]| {
            let product =
                HostProduct { a, ao: dense(13), b: &b, bo: dense(13), bias: None, c: &c, co: dense(9), alpha: 1.0 };
            pollster::block_on(product.run(&gpu, &op)).expect("run")
        };
        let _ = pollster::block_on(gpu.take_f16_overflow());
        let fine = run(&a);
        assert!((fine[0] - 13.0 * 0.125).abs() < 1e-6);
        assert!(!pollster::block_on(gpu.take_f16_overflow()).unwrap());
        a[7] = 1.0e5; // f16's largest finite value is 65504
        let out = run(&a);
        assert!(out.iter().all(|v| v.is_finite()), "the clamped operand keeps the result finite");
        assert!(pollster::block_on(gpu.take_f16_overflow()).unwrap(), "the overflow is reported");
        assert!(!pollster::block_on(gpu.take_f16_overflow()).unwrap(), "taking the flag clears it");
    }

    #[test]
    fn every_used_spec_matches_the_reference_at_awkward_sizes() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("matmul every spec");
        for spec in specs_under_test() {
            for &(m, n, k, batch) in &[(1, 37, 19, 1), (7, 66, 33, 2), (19, 9, 70, 1)] {
                let shape = MatmulShape { m, n, k, batch };
                let tiling = Tiling::choose(rng.random(), m);
                check_case(&gpu, &mut rng, spec, shape, Some(tiling));
            }
            // Shapes the vec4 paths take (K, N, M multiples of 4 where they need it), with
            // ragged edges against the register blocks.
            // K in whole blocks (64, 96) takes the block-walking x·Wᵀ of a quantised B.
            for &(m, n, k, batch) in &[
                (1, 36, 20, 1),
                (3, 44, 12, 1),
                (12, 68, 36, 2),
                (20, 12, 68, 1),
                (36, 132, 8, 1),
                (1, 40, 64, 1),
                (17, 36, 96, 2),
            ] {
                check_case(&gpu, &mut rng, spec, MatmulShape { m, n, k, batch }, None);
            }
        }
    }

    #[test]
    fn the_tiled_gpu_kernel_matches_the_reference_for_every_spec_and_block() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("matmul tiled");
        for spec in specs_under_test() {
            for tiling in tiled_tilings() {
                // Ragged against the 16·TM × 16·TN block and the K step, unaligned operands.
                for &(m, n, k, batch) in &[(1, 37, 19, 1), (19, 70, 33, 2), (130, 45, 41, 1)] {
                    let shape = MatmulShape { m, n, k, batch };
                    let op = pollster::block_on(Matmul::tiled(&gpu, spec, shape, tiling)).unwrap();
                    check_with(&gpu, &mut rng, spec, shape, &op, 1);
                }
            }
        }
        // The choice `Matmul::new` makes on GPUs covers small and large products.
        assert_eq!(tiled_tiling(MatmulShape::new(5, 576, 576)).tm, 1);
        assert_eq!(tiled_tiling(MatmulShape::new(256, 576, 576)).tm, 4);
        assert_eq!(tiled_tiling(MatmulShape::new(2048, 2048, 64)).tm, 8);
    }

    #[test]
    fn long_k_products_are_complete() {
        // llvmpipe stops every loop of an invocation after 65,535 iterations in total
        // (gallivm's loop limiter): a kernel whose loop count grows with K must keep its
        // per-invocation iterations far below that at model sizes.
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("matmul long k");
        for spec in [
            MatmulSpec { trans_b: true, ..MatmulSpec::plain() },
            MatmulSpec { trans_a: true, trans_b: true, ..MatmulSpec::plain() },
        ] {
            for tiling in [Tiling::CPU, Tiling::GPU] {
                check_case(&gpu, &mut rng, spec, MatmulShape::new(9, 13, 4099), Some(tiling));
            }
            let op = pollster::block_on(Matmul::tiled(&gpu, spec, MatmulShape::new(9, 13, 4099), tiled_tilings()[3]))
                .unwrap();
            check_with(&gpu, &mut rng, spec, MatmulShape::new(9, 13, 4099), &op, 1);
        }
    }

    #[test]
    fn every_tiling_covers_ragged_edges() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("matmul tilings");
        let spec = MatmulSpec { trans_b: true, ..MatmulSpec::plain() };
        for tiling in Tiling::all() {
            for &(m, n, k) in &[(1, 1, 1), (3, 70, 33), (9, 129, 65), (67, 45, 100), (130, 200, 3)] {
                check_case(&gpu, &mut rng, spec, MatmulShape::new(m, n, k), Some(tiling));
            }
        }
    }

    #[test]
    fn every_fast_path_tiling_matches_the_reference() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("matmul fast tilings");
        for spec in specs_under_test() {
            let Some(path) = FastPath::of(spec) else { continue };
            for tiling in path.tilings() {
                // Aligned operands only (the fast path's contract); ragged M and N edges.
                // K in whole blocks of either block format.
                let shape = MatmulShape { m: 20, n: 44, k: 64, batch: 2 };
                let mm = pollster::block_on(Matmul::fast_with_tiling(&gpu, spec, shape, tiling)).unwrap();
                assert!(mm.has_fast_path());
                check_fast(&gpu, &mut rng, spec, shape, &mm);
            }
        }
    }

    fn check_fast(gpu: &Gpu, rng: &mut rand::rngs::StdRng, spec: MatmulSpec, shape: MatmulShape, op: &Matmul) {
        let MatmulShape { m, n, k, batch } = shape;
        // Offsets and strides in steps of 4, or of a block-format B's blocks.
        let dense = |rows: usize, cols: usize, step: usize| {
            let ld = (cols + 4).next_multiple_of(step);
            HostOperand { off: step, ld, batch_stride: rows * ld + 2 * step }
        };
        let (a_rows, a_cols) = if spec.trans_a { (k, m) } else { (m, k) };
        let (b_rows, b_cols) = if spec.trans_b { (n, k) } else { (k, n) };
        let b_step = spec.b_dtype.block_elems().max(4);
        let (ao, bo, co) = (dense(a_rows, a_cols, 4), dense(b_rows, b_cols, b_step), dense(m, n, 4));
        let len = |o: HostOperand, rows: usize| o.off + batch * o.batch_stride + rows * o.ld;
        let a = testing::normal(rng, len(ao, a_rows));
        let b = dtype::round_trip(spec.b_dtype, &testing::normal(rng, len(bo, b_rows)));
        let c0 = testing::normal(rng, len(co, m));
        let bias = testing::normal(rng, n);
        let product = HostProduct { a: &a, ao, b: &b, bo, bias: Some(&bias), c: &c0, co, alpha: 0.5 };
        let got = pollster::block_on(product.run(gpu, op)).unwrap();
        let err = rel_err(&got, &product.reference(op));
        assert!(err <= 1e-5, "fast {spec:?} {:?}: {err:e}", op.tiling());
    }

    #[test]
    fn decode_rows_take_the_split_k_path_and_match() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("matmul split-k");
        for dt in Dtype::ALL {
            for has_bias in [false, true] {
                let spec = MatmulSpec { trans_a: false, trans_b: true, has_bias, accumulate: has_bias, b_dtype: dt };
                for m in 1..=SPLITK_MAX_ROWS {
                    let shape = MatmulShape { m, n: 37, k: 4 * 29, batch: 1 };
                    // Forced here: on CPU adapters `Matmul::new` prefers register blocks.
                    let mut mm =
                        pollster::block_on(Matmul::with_tiling(&gpu, spec, shape, Tiling::choose(true, m))).unwrap();
                    mm.fast = Some(pollster::block_on(Matmul::prepare_splitk(&gpu, spec, shape)).unwrap());
                    check_fast(&gpu, &mut rng, spec, shape, &mm);
                }
            }
        }
    }

    #[test]
    fn operands_outside_their_buffers_are_refused() {
        let Some(gpu) = testing::gpu() else { return };
        let op = pollster::block_on(Matmul::new(&gpu, MatmulSpec::plain(), MatmulShape::new(4, 4, 4))).unwrap();
        let small = gpu.storage("t", "small", 60).unwrap();
        let ok = gpu.storage("t", "ok", 64).unwrap();
        let mut rec = gpu.batch("t");
        let err =
            op.record(&mut rec, Operand::dense(&small, 4), Operand::dense(&ok, 4), None, Operand::dense(&ok, 4), 1.0);
        assert!(err.unwrap_err().to_string().contains("A spans 16 elements but its buffer holds 60 bytes"));
        let err =
            op.record(&mut rec, Operand::dense(&ok, 3), Operand::dense(&ok, 4), None, Operand::dense(&ok, 4), 1.0);
        assert!(err.unwrap_err().to_string().contains("leading dimension 3 < 4"));

        // A quantised B must start and stride in whole blocks.
        let spec = MatmulSpec { trans_b: true, b_dtype: Dtype::Q4, ..MatmulSpec::plain() };
        let op = pollster::block_on(Matmul::new(&gpu, spec, MatmulShape::new(2, 2, 40))).unwrap();
        let a = gpu.storage("t", "a", 2 * 48 * 4).unwrap();
        let q = gpu.storage("t", "q", Dtype::Q4.storage_bytes(4 * 64)).unwrap();
        let mut b = Operand::dense(&q, 48);
        let err = op.record(&mut rec, Operand::dense(&a, 48), b, None, Operand::dense(&a, 2), 1.0).unwrap_err();
        assert!(err.to_string().contains("leading dimension (48)"), "{err}");
        b.ld = 64;
        b.off = 16;
        let err = op.record(&mut rec, Operand::dense(&a, 48), b, None, Operand::dense(&a, 2), 1.0).unwrap_err();
        assert!(err.to_string().contains("offset (16)"), "{err}");
        b.off = 64;
        op.record(&mut rec, Operand::dense(&a, 48), b, None, Operand::dense(&a, 2), 1.0).expect("whole blocks");
    }

    #[test]
    fn shapes_past_the_workgroup_limit_are_refused_with_sizes() {
        let Some(gpu) = testing::gpu() else { return };
        let limit = gpu.limits().max_compute_workgroups_per_dimension as usize;
        let tiling = Tiling { tm: 1, tn: 1, wg_m: 1, wg_n: 1 };
        let shape = MatmulShape::new(1, limit + 1, 1);
        let err = pollster::block_on(Matmul::with_tiling(&gpu, MatmulSpec::plain(), shape, tiling)).err().unwrap();
        assert!(matches!(err, GpuError::TooManyWorkgroups { .. }), "{err}");
        assert!(err.to_string().contains(&format!("{}", limit + 1)), "{err}");
    }
}

/// A prepared product's identity: its spec and (m, n, k, batch).
type ProductKey = (MatmulSpec, (usize, usize, usize, usize));

/// Products prepared ahead of recording (preparation compiles kernels and is async; recording
/// is not), keyed by spec and shape.
#[derive(Default)]
pub struct MatmulSet {
    products: std::collections::HashMap<ProductKey, Matmul>,
}

impl MatmulSet {
    pub async fn prepare(&mut self, gpu: &Gpu, spec: MatmulSpec, shape: MatmulShape) -> GpuResult<()> {
        let key = (spec, (shape.m, shape.n, shape.k, shape.batch));
        if let std::collections::hash_map::Entry::Vacant(e) = self.products.entry(key) {
            e.insert(Matmul::new(gpu, spec, shape).await?);
        }
        Ok(())
    }

    pub fn get(&self, spec: MatmulSpec, shape: MatmulShape) -> GpuResult<&Matmul> {
        self.products
            .get(&(spec, (shape.m, shape.n, shape.k, shape.batch)))
            .ok_or_else(|| GpuError::shape(OP, format!("{spec:?} {shape:?} was not prepared")))
    }
}

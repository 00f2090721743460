//! Causal grouped-query attention with left-padding masks, streaming over keys (memory linear in
//! sequence length), for training (forward + backward), prefill and KV-cache decode.
//! WGSL: `shaders/attention.wgsl`, `shaders/attention_backward.wgsl` (layouts in their headers),
//! and the tiled GPU kernels of `shaders/attention_flash.wgsl`.

use std::sync::{Arc, Mutex};

use super::launch::need;
use crate::gpu::{Access, Batch, Gpu, GpuBuffer, GpuError, GpuResult, Kernel};
use crate::shaders::{Def, Variant};

const OP: &str = "attention";
const WG: u32 = 64;
const BLOCK: u32 = 16;

/// Head dimensions the portability test compiles every kernel for: the common ones (SmolLM2 and
/// Qwen2.5 64, Llama 3 128) and uncommon ones standing for the rest. Any multiple of 4 up to
/// [`MAX_HEAD_DIM`] is compiled on demand (`check_head_dim`); the flash kernels take the sizes
/// their blocking fits (`FlashTiles::fits`), the per-row kernels the others.
pub const HEAD_DIMS: [usize; 9] = [4, 8, 16, 32, 64, 80, 96, 128, 256];
/// The widest head: the per-row kernels keep ⌈head_dim / 64⌉ accumulators per lane.
pub const MAX_HEAD_DIM: usize = 256;

/// Whether the kernels take heads of `head_dim`: a multiple of 4 (they read rows as vec4) from
/// 4 to [`MAX_HEAD_DIM`].
pub fn check_head_dim(head_dim: usize) -> GpuResult<()> {
    if head_dim.is_multiple_of(4) && (4..=MAX_HEAD_DIM).contains(&head_dim) {
        Ok(())
    } else {
        Err(GpuError::shape(
            OP,
            format!("head_dim {head_dim} is not supported (the kernels take multiples of 4 from 4 to {MAX_HEAD_DIM})"),
        ))
    }
}

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
        check_head_dim(s.head_dim)?;
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
            splits: 1,
        }
    }

    /// Query heads per key/value head.
    fn group(&self) -> usize {
        self.heads / self.kv_heads
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
    /// Key splits of the flash forward (the other kernels ignore it).
    splits: u32,
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
    /// Blocks of rows per workgroup with key (or query) tiles in workgroup memory, online softmax
    /// and split keys for decode (`shaders/attention_flash.wgsl`; GPU adapters): each row loaded
    /// serves a block of rows, where the per-row kernels read every key once per query.
    Flash,
}

impl AttentionKernel {
    pub const ALL: [AttentionKernel; 3] =
        [AttentionKernel::PerInvocation, AttentionKernel::PerWorkgroup, AttentionKernel::Flash];

    /// The kernel an adapter gets: per invocation on CPU adapters (llvmpipe pays for every
    /// barrier and for workgroup memory), flash on GPUs.
    pub fn for_adapter(gpu: &Gpu) -> Self {
        if gpu.cpu_kernels() { AttentionKernel::PerInvocation } else { AttentionKernel::Flash }
    }

    /// The adapter's kind for heads of `head_dim`: GPUs take the per-row kernels where the flash
    /// blocking does not fit the head (4, 8, 256, …).
    pub fn for_head(gpu: &Gpu, head_dim: usize) -> Self {
        match Self::for_adapter(gpu) {
            AttentionKernel::Flash if !FlashTiles::fits(head_dim) => AttentionKernel::PerWorkgroup,
            kind => kind,
        }
    }
}

/// WebGPU's default `maxComputeWorkgroupStorageSize`, which every flash blocking stays within.
const FLASH_WORKGROUP_BYTES: u32 = 16384;

/// The blocking of a flash kernel: rows a workgroup owns (queries, or keys for dk/dv), rows of
/// each tile it streams through workgroup memory, and invocations per owned row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlashTiles {
    pub rows: u32,
    pub cols: u32,
    pub tpr: u32,
}

impl FlashTiles {
    /// Forward: 16 query rows of 4 invocations, tiles of 16 keys (at most 12 KiB of workgroup
    /// memory; an invocation keeps 2·head_dim/4 floats of q and accumulator).
    pub fn forward(_head_dim: usize) -> Self {
        FlashTiles { rows: 16, cols: 16, tpr: 4 }
    }

    /// dq and dk/dv keep three or four slices of their row per invocation (q, dout, dq; or k, v,
    /// dk, dv), so wide heads get more invocations per row (at most 16 dimensions each), and
    /// stream two tiles: smaller tiles where the heads are wide, to stay within 16 KiB.
    pub fn backward(head_dim: usize) -> Self {
        let tpr = (head_dim as u32 / 16).max(4);
        let (rows, cols) = match head_dim {
            0..=32 => (16, 16),
            33..=96 => (16, 8),
            _ => (8, 8),
        };
        FlashTiles { rows, cols, tpr }
    }

    pub fn invocations(&self) -> u32 {
        self.rows * self.tpr
    }

    /// Whether the forward and backward blockings take heads of `head_dim`: whole vec4 slices
    /// per invocation, and WebGPU's default 16 KiB of workgroup memory.
    pub fn fits(head_dim: usize) -> bool {
        [(Self::forward(head_dim), false), (Self::backward(head_dim), true)].iter().all(|(t, backward)| {
            (head_dim as u32).is_multiple_of(4 * t.tpr)
                && t.workgroup_bytes(head_dim, *backward) <= FLASH_WORKGROUP_BYTES
        })
    }

    /// Workgroup memory of the forward (one tile, one set of partial sums) or of a backward
    /// kernel (two of each, and for dk/dv the tile's (lse, delta) pairs), as the shader
    /// declares it; the portability test measures the same from the compiled module.
    pub fn workgroup_bytes(&self, head_dim: usize, backward: bool) -> u32 {
        let tile = self.cols * head_dim as u32;
        let partials = self.rows * self.cols * self.tpr;
        4 * if backward { 2 * tile + 2 * partials + 2 * self.cols } else { tile + partials }
    }

    /// Row blocks per (sequence, key/value head) of a forward or dq over `s`: its rows are the
    /// (query, query head) pairs of one key/value head.
    fn query_blocks(&self, s: &AttentionShape) -> usize {
        (s.tq * s.group()).div_ceil(self.rows as usize)
    }
}

/// A flash forward whose grid has fewer workgroups than this cuts each block's keys into splits
/// (a decode step of a few sequences otherwise leaves most of a GPU idle), never into pieces of
/// fewer than `SPLIT_MIN_KEYS` keys nor more than `MAX_SPLITS`. Guesses until measured on a GPU.
const SPLIT_BELOW_WORKGROUPS: usize = 1024;
const SPLIT_MIN_KEYS: usize = 128;
const MAX_SPLITS: usize = 32;

/// Key splits of the flash forward for a shape (1: one pass, no partials).
pub fn flash_splits(s: &AttentionShape) -> usize {
    let base = s.batch * s.kv_heads * FlashTiles::forward(s.head_dim).query_blocks(s);
    if base >= SPLIT_BELOW_WORKGROUPS {
        return 1;
    }
    SPLIT_BELOW_WORKGROUPS.div_ceil(base).min(s.tk / SPLIT_MIN_KEYS).clamp(1, MAX_SPLITS)
}

const FLASH_FORWARD: &str = "attention_flash_forward";
const FLASH_COMBINE: &str = "attention_flash_combine";
const FLASH_DQ: &str = "attention_flash_dq";
const FLASH_DKV: &str = "attention_flash_dkv";

fn flash_variant(entry: &'static str, head_dim: usize, accumulate: bool) -> Variant {
    let t = match entry {
        FLASH_DQ | FLASH_DKV => FlashTiles::backward(head_dim),
        _ => FlashTiles::forward(head_dim),
    };
    Variant {
        shader: "attention_flash",
        entry,
        defs: vec![
            Def::U32("HEAD_DIM", head_dim as u32),
            Def::U32("ROWS", t.rows),
            Def::U32("COLS", t.cols),
            Def::U32("TPR", t.tpr),
            Def::U32("NV", head_dim as u32 / (4 * t.tpr)),
            Def::Bool("ACCUMULATE", accumulate),
        ],
    }
}

/// Lanes of the per-workgroup forward, and keys per block.
const ROW_LANES: u32 = 64;

/// A per-row forward kernel (`shaders/attention.wgsl`).
fn forward_variant(head_dim: usize, entry: &'static str) -> Variant {
    Variant {
        shader: "attention",
        entry,
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

const DELTA: &str = "attention_delta";

/// The backward's kernels: delta (always per invocation: one dot product per row), dq, dk/dv.
fn backward_variants(kind: AttentionKernel, head_dim: usize, accumulate: bool) -> [Variant; 3] {
    let delta = backward_variant(DELTA, head_dim, accumulate);
    match kind {
        AttentionKernel::PerInvocation => [
            delta,
            backward_variant("attention_backward_dq", head_dim, accumulate),
            backward_variant("attention_backward_dkv", head_dim, accumulate),
        ],
        AttentionKernel::PerWorkgroup => [
            delta,
            backward_variant("attention_backward_dq_rows", head_dim, accumulate),
            backward_variant("attention_backward_dkv_rows", head_dim, accumulate),
        ],
        AttentionKernel::Flash => {
            [delta, flash_variant(FLASH_DQ, head_dim, accumulate), flash_variant(FLASH_DKV, head_dim, accumulate)]
        }
    }
}

/// The forward's kernel, and the flash forward's combine of split partials.
fn forward_variants(kind: AttentionKernel, head_dim: usize) -> (Variant, Option<Variant>) {
    match kind {
        AttentionKernel::PerInvocation => (forward_variant(head_dim, "attention_forward"), None),
        AttentionKernel::PerWorkgroup => (forward_variant(head_dim, "attention_forward_rows"), None),
        AttentionKernel::Flash => {
            (flash_variant(FLASH_FORWARD, head_dim, false), Some(flash_variant(FLASH_COMBINE, head_dim, false)))
        }
    }
}

pub fn specializations() -> Vec<Variant> {
    let mut v = Vec::new();
    for d in HEAD_DIMS {
        for kind in AttentionKernel::ALL.into_iter().filter(|&k| k != AttentionKernel::Flash || FlashTiles::fits(d)) {
            let (forward, combine) = forward_variants(kind, d);
            v.push(forward);
            v.extend(combine);
            for acc in [false, true] {
                v.extend(backward_variants(kind, d, acc));
            }
        }
    }
    // Every kind shares the delta kernel: list it once.
    let mut seen = std::collections::HashSet::new();
    v.retain(|x| seen.insert(x.clone()));
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
    /// Flash: merges the partials of a split forward.
    combine: Option<Arc<Kernel>>,
    backward: Option<[Arc<Kernel>; 3]>,
    /// Flash: the split forward's partials, grown on demand and shared by every call (the
    /// dispatches of a submission run in order, and a batch keeps the buffers it records).
    partials: Mutex<Option<GpuBuffer>>,
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
        Self::with_forward(gpu, head_dim, backward, accumulate, AttentionKernel::for_head(gpu, head_dim)).await
    }

    /// With a given kernel kind for the forward and the backward (tests run every kind on any
    /// adapter).
    pub async fn with_forward(
        gpu: &Gpu,
        head_dim: usize,
        backward: bool,
        accumulate: bool,
        kernel_kind: AttentionKernel,
    ) -> GpuResult<Self> {
        check_head_dim(head_dim)?;
        if kernel_kind == AttentionKernel::Flash && !FlashTiles::fits(head_dim) {
            return Err(GpuError::shape(OP, format!("the flash kernels' blocking does not fit head_dim {head_dim}")));
        }
        // The flash kernels share the backward's eight bindings (see the shader's header).
        let forward_bindings: &[Access] =
            if kernel_kind == AttentionKernel::Flash { &BACKWARD_BINDINGS } else { &FORWARD_BINDINGS };
        let (forward, combine) = forward_variants(kernel_kind, head_dim);
        let forward = gpu.kernel(&forward, forward_bindings).await?;
        let combine = match combine {
            Some(v) => Some(gpu.kernel(&v, &BACKWARD_BINDINGS).await?),
            None => None,
        };
        let backward = if backward {
            let mut ks = Vec::new();
            for v in backward_variants(kernel_kind, head_dim, accumulate) {
                ks.push(gpu.kernel(&v, &BACKWARD_BINDINGS).await?);
            }
            Some([ks[0].clone(), ks[1].clone(), ks[2].clone()])
        } else {
            None
        };
        Ok(Attention { forward, kernel_kind, combine, backward, partials: Mutex::new(None) })
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

    /// The grid of the per-row kernels (one invocation or one workgroup per row).
    fn grid(&self, gpu: &Gpu, rows: usize) -> GpuResult<[u32; 3]> {
        match self.kernel_kind {
            AttentionKernel::PerInvocation => Self::groups(gpu, rows),
            _ => Self::row_groups(gpu, rows),
        }
    }

    pub fn forward(&self, b: &mut Batch, s: &AttentionShape, io: &AttentionIo) -> GpuResult<()> {
        if self.kernel_kind == AttentionKernel::Flash {
            return self.flash_forward(b, s, io, flash_splits(s));
        }
        Self::check_io(s, io)?;
        let groups = self.grid(b.gpu(), s.batch * s.heads * s.tq)?;
        b.dispatch(&self.forward, &s.params(), &[io.q, io.k, io.v, io.key_start, io.out, io.stats], groups);
        Ok(())
    }

    /// The flash forward with each block's keys cut into `splits` pieces: one workgroup per
    /// piece writes unnormalised partials, and a second kernel combines them (1: one pass).
    pub fn flash_forward(&self, b: &mut Batch, s: &AttentionShape, io: &AttentionIo, splits: usize) -> GpuResult<()> {
        let Some(combine) = &self.combine else {
            return Err(GpuError::shape(OP, format!("{:?} kernels have no split forward", self.kernel_kind)));
        };
        Self::check_io(s, io)?;
        if !(1..=MAX_SPLITS).contains(&splits) {
            return Err(GpuError::shape(OP, format!("{splits} key splits (1 to {MAX_SPLITS})")));
        }
        let gpu = b.gpu().clone();
        let rows = s.batch * s.heads * s.tq;
        // Without splits the partials binding is unused, but it must be a buffer of its own.
        let partials = self.partials(&gpu, if splits > 1 { splits * rows * (s.head_dim + 2) } else { 1 })?;
        let mut params = s.params();
        params.splits = splits as u32;
        let blocks = s.batch * s.kv_heads * FlashTiles::forward(s.head_dim).query_blocks(s) * splits;
        // The forward and the combine leave binding 5 (dout) unused: q stands in.
        let buffers = [io.q, io.k, io.v, io.key_start, io.q, io.stats, io.out, &partials];
        b.dispatch(&self.forward, &params, &buffers, Self::row_groups(&gpu, blocks)?);
        if splits > 1 {
            let (groups, _) = super::launch::grid_1d(&gpu, OP, rows * s.head_dim / 4, 64)?;
            b.dispatch(combine, &params, &buffers, groups);
        }
        Ok(())
    }

    /// The shared partials buffer, with room for at least `elems` floats.
    fn partials(&self, gpu: &Gpu, elems: usize) -> GpuResult<GpuBuffer> {
        let mut held = self.partials.lock().expect("partials lock");
        match &*held {
            Some(buf) if buf.len_bytes() >= elems as u64 * 4 => Ok(buf.clone()),
            _ => {
                let buf = gpu.storage(OP, "split-key partials", elems as u64 * 4)?;
                *held = Some(buf.clone());
                Ok(buf)
            }
        }
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
        let (queries, keys) = if self.kernel_kind == AttentionKernel::Flash {
            // One workgroup per block of query rows (dq) or of keys (dk/dv).
            let t = FlashTiles::backward(s.head_dim);
            let key_blocks = s.batch * s.kv_heads * s.tk.div_ceil(t.rows as usize);
            (
                Self::row_groups(b.gpu(), s.batch * s.kv_heads * t.query_blocks(s))?,
                Self::row_groups(b.gpu(), key_blocks)?,
            )
        } else {
            (self.grid(b.gpu(), rows)?, self.grid(b.gpu(), key_rows)?)
        };
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
    use rand::rngs::StdRng;

    /// Reference backward by finite differences of the reference forward (loss = Σ dout ⊙ out).
    fn fd_backward(s: &AttentionShape, q: &[f64], k: &[f64], v: &[f64], ks: &[u32], dout: &[f64]) -> [Vec<f64>; 3] {
        let loss = |q: &[f64], k: &[f64], v: &[f64]| -> f64 {
            attention_ref(s, q, k, v, ks).0.iter().zip(dout).map(|(a, b)| a * b).sum()
        };
        [fd_grad(&|x| loss(x, k, v), q), fd_grad(&|x| loss(q, x, v), k), fd_grad(&|x| loss(q, k, x), v)]
    }

    /// The elements of a q-shaped buffer the op defines: q/out rows outside the heads (stride
    /// padding) are never written.
    fn defined_q(s: &AttentionShape, x: &[f32]) -> Vec<f32> {
        (0..x.len()).filter(|&i| i % s.q_stride < s.heads * s.head_dim).map(|i| x[i]).collect()
    }

    /// The elements of a k-shaped buffer the op defines: the rows of the `tk` keys (a cache's
    /// capacity may hold more).
    fn defined_k(s: &AttentionShape, x: &[f32]) -> Vec<f32> {
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
    }

    /// Checks every kernel kind (forward, then backward) on the same shape.
    fn run(gpu: &Gpu, s: &AttentionShape, key_start: &[u32], accumulate: bool, rng: &mut rand::rngs::StdRng) {
        for kernel in AttentionKernel::ALL {
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
        let mask_q = |x: &[f32]| defined_q(s, x);
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
        let k_used = |x: &[f32]| defined_k(s, x);
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

    /// Head sizes outside the common ones (Gemma's 256, 80, tiny test models' 4 and 8): every
    /// kernel kind that takes the size, forward and backward, against the references.
    #[test]
    fn uncommon_head_sizes_match_the_reference_with_every_kernel_that_takes_them() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("attention uncommon head sizes");
        // The gradients are checked by finite differences, so the wide heads get short sequences.
        for d in [4, 8, 44, 80, 256] {
            let s = if d <= 44 {
                AttentionShape::token_major(2, 9, 4, 2, d)
            } else {
                AttentionShape::token_major(1, 5, 2, 1, d)
            };
            for kernel in AttentionKernel::ALL {
                if kernel == AttentionKernel::Flash && !FlashTiles::fits(d) {
                    continue;
                }
                run_with(&gpu, &s, &[0, 3], d % 8 == 0, kernel, &mut rng);
            }
            // The kind a GPU adapter would pick for this size.
            let kind = if FlashTiles::fits(d) { AttentionKernel::Flash } else { AttentionKernel::PerWorkgroup };
            run_with(&gpu, &AttentionShape::cached(2, 1, 11, 14, 4, 2, d), &[0, 7], false, kind, &mut rng);
        }
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
        for kernel in AttentionKernel::ALL {
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
        for (kind, got) in AttentionKernel::ALL.iter().zip(&grads) {
            for (name, (g, w)) in ["dq", "dk", "dv"].iter().zip(got.iter().zip(&want)) {
                let err = rel_err(g, &f32s(w));
                assert!(err <= 1e-5, "{s:?} {kind:?} {name}: {err:e}");
            }
        }
    }

    #[test]
    fn every_kernel_kind_matches_over_many_key_blocks_forward_and_backward() {
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

    /// The flash kernels against the references on fresh inputs: the forward once per number of
    /// key splits (out and stats poisoned with NaN), each followed by the backward — overwriting
    /// NaN-poisoned gradients, then accumulating into random ones — against the analytic
    /// reference (itself checked by finite differences below). Bound: ‖gpu − ref‖/‖ref‖ ≤ 1e-5
    /// for out, the log-sum-exp and the gradients (f32 sums over up to 520 keys or queries in
    /// another order than the reference's; measured up to 3e-7 for out, 8e-7 for gradients).
    fn flash_matches(gpu: &Gpu, s: &AttentionShape, key_start: &[u32], splits: &[usize], rng: &mut StdRng) {
        let (q, k, v, dout) = (
            testing::normal(rng, s.q_elems()),
            testing::normal(rng, s.k_elems()),
            testing::normal(rng, s.k_elems()),
            testing::normal(rng, s.q_elems()),
        );
        let init =
            [testing::normal(rng, s.q_elems()), testing::normal(rng, s.k_elems()), testing::normal(rng, s.k_elems())];
        let (qd, kd, vd) = (f64s(&q), f64s(&k), f64s(&v));
        let (want_out, want_lse) = attention_ref(s, &qd, &kd, &vd, key_start);
        let want_grads = attention_backward_ref(s, &qd, &kd, &vd, key_start, &f64s(&dout));
        let up = |x: &[f32]| gpu.upload("t", "t", x).unwrap();
        let read = |x: &GpuBuffer| pollster::block_on(gpu.read::<f32>("t", x)).unwrap();
        let (qb, kb, vb, doutb) = (up(&q), up(&k), up(&v), up(&dout));
        let ksb = gpu.upload("t", "key_start", key_start).unwrap();
        for &n in splits {
            for accumulate in [false, true] {
                let op = pollster::block_on(Attention::with_forward(
                    gpu,
                    s.head_dim,
                    true,
                    accumulate,
                    AttentionKernel::Flash,
                ))
                .unwrap();
                let (outb, statsb) = (up(&vec![f32::NAN; s.q_elems()]), up(&vec![f32::NAN; s.stats_elems()]));
                let grads: Vec<GpuBuffer> = if accumulate {
                    init.iter().map(|x| up(x)).collect()
                } else {
                    init.iter().map(|x| up(&vec![f32::NAN; x.len()])).collect()
                };
                let io = AttentionIo { q: &qb, k: &kb, v: &vb, key_start: &ksb, out: &outb, stats: &statsb };
                let mut b = gpu.batch("t");
                op.flash_forward(&mut b, s, &io, n).unwrap();
                op.backward(&mut b, s, &io, &doutb, &grads[0], &grads[1], &grads[2]).unwrap();
                pollster::block_on(b.submit()).unwrap();
                let what = format!("{s:?} key_start {key_start:?}, {n} splits, accumulate {accumulate}");
                let err = rel_err(&defined_q(s, &read(&outb)), &defined_q(s, &f32s(&want_out)));
                assert!(err <= 1e-5, "{what}: out {err:e}");
                let err = rel_err(&read(&statsb)[..want_lse.len()], &f32s(&want_lse));
                assert!(err <= 1e-5, "{what}: lse {err:e}");
                for (g, name) in ["dq", "dk", "dv"].iter().enumerate() {
                    let mut want = want_grads[g].clone();
                    if accumulate {
                        want.iter_mut().zip(&init[g]).for_each(|(w, x)| *w += *x as f64);
                    }
                    let defined = |x: &[f32]| if g == 0 { defined_q(s, x) } else { defined_k(s, x) };
                    let err = rel_err(&defined(&read(&grads[g])), &defined(&f32s(&want)));
                    assert!(err <= 1e-5, "{what}: {name} {err:e}");
                }
            }
        }
    }

    #[test]
    fn flash_kernels_match_the_references_at_awkward_sizes() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("attention flash training layout");
        let tm = AttentionShape::token_major;
        // One token, MHA, head_dim 32.
        flash_matches(&gpu, &tm(1, 1, 2, 2, 32), &[0], &[1, 2], &mut rng);
        // 17 tokens, GQA 4/2, head_dim 16, the second sequence left-padded by 5; 32 splits leave
        // most pieces empty.
        flash_matches(&gpu, &tm(2, 17, 4, 2, 16), &[0, 5], &[1, 2, 32], &mut rng);
        // 70 tokens, 6/2 heads (blocks of 16 rows end mid-query), head_dim 64; the second sequence
        // has one real token, so its other queries see no key at all.
        flash_matches(&gpu, &tm(2, 70, 6, 2, 64), &[33, 69], &[1, 3], &mut rng);
        // 70 tokens, 4/1 heads, head_dim 96, q rows strided past the heads.
        let mut s = tm(1, 70, 4, 1, 96);
        s.q_stride = 4 * 96 + 3;
        flash_matches(&gpu, &s, &[2], &[1], &mut rng);
        // 300 tokens, MHA, head_dim 128, left padding of 11.
        flash_matches(&gpu, &tm(1, 300, 2, 2, 128), &[11], &[1, 4], &mut rng);
        // SmolLM2's heads at 520 tokens (llvmpipe's loop limit, bench/RESULTS.md).
        let s = tm(1, 520, 9, 3, 64);
        flash_matches(&gpu, &s, &[0], &[1, flash_splits(&s)], &mut rng);
    }

    #[test]
    fn flash_decode_and_prefill_against_a_cache_match_the_reference() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("attention flash cache layout");
        // Decode of 5 sequences at position 300, Qwen2.5's 14/2 heads (7 query heads per block),
        // left padding up to the last key; splits as chosen for the shape and forced.
        let s = AttentionShape::cached(5, 1, 300, 311, 14, 2, 64);
        assert!(flash_splits(&s) > 1, "a small decode batch splits its keys");
        flash_matches(&gpu, &s, &[0, 3, 100, 250, 300], &[1, 3, 7, flash_splits(&s)], &mut rng);
        // Decode, MHA, head_dim 128 and 16.
        flash_matches(&gpu, &AttentionShape::cached(3, 1, 17, 20, 2, 2, 128), &[0, 1, 17], &[1, 2], &mut rng);
        flash_matches(&gpu, &AttentionShape::cached(2, 1, 70, 71, 3, 1, 16), &[9, 0], &[1, 5], &mut rng);
        // Prefill of 9 queries after a cached prefix of 40, head_dim 32.
        flash_matches(&gpu, &AttentionShape::cached(2, 9, 40, 64, 4, 2, 32), &[0, 20], &[1, 2], &mut rng);
    }

    /// WebGPU's default `maxComputeWorkgroupStorageSize` and `maxComputeInvocationsPerWorkgroup`:
    /// every flash blocking fits them, so the kernels run on any adapter.
    const WEBGPU_WORKGROUP_BYTES: u32 = 16384;
    const WEBGPU_INVOCATIONS: u32 = 256;

    #[test]
    fn flash_blockings_fit_webgpu_default_limits() {
        assert!([16, 32, 64, 80, 96, 128].iter().all(|&d| FlashTiles::fits(d)));
        assert!([4, 8, 256].iter().all(|&d| !FlashTiles::fits(d)), "these take the per-row kernels");
        for d in HEAD_DIMS.into_iter().filter(|&d| FlashTiles::fits(d)) {
            for (tiles, backward) in [(FlashTiles::forward(d), false), (FlashTiles::backward(d), true)] {
                assert!(tiles.workgroup_bytes(d, backward) <= WEBGPU_WORKGROUP_BYTES, "{d} {tiles:?}");
                assert!(tiles.invocations() <= WEBGPU_INVOCATIONS, "{d} {tiles:?}");
                assert_eq!(d as u32 % (4 * tiles.tpr), 0, "{d} {tiles:?}: whole vec4 slices per invocation");
            }
        }
    }

    #[test]
    fn flash_splits_keys_only_when_the_grid_is_small() {
        // Training, 4 × 1,024 tokens of SmolLM2: thousands of workgroups already.
        assert_eq!(flash_splits(&AttentionShape::token_major(4, 1024, 9, 3, 64)), 1);
        // Decode of 64 sequences against 2,048 cached keys: 192 workgroups without splits.
        let s = AttentionShape::cached(64, 1, 2047, 2048, 9, 3, 64);
        assert_eq!(flash_splits(&s), 6);
        // Too few keys to split.
        assert_eq!(flash_splits(&AttentionShape::cached(1, 1, 100, 101, 9, 3, 64)), 1);
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
        for d in [6, 0, 260, 512] {
            let err = pollster::block_on(Attention::new(&gpu, d, false, false)).err().unwrap();
            assert!(err.to_string().contains(&format!("head_dim {d} is not supported")), "{err}");
        }
        let err = pollster::block_on(Attention::with_forward(&gpu, 8, false, false, AttentionKernel::Flash)).err();
        assert!(err.unwrap().to_string().contains("does not fit head_dim 8"));
        let s = AttentionShape::token_major(1, 4, 3, 2, 16);
        assert!(s.validate().unwrap_err().to_string().contains("not a multiple"));
    }
}

// The output head without full-vocabulary logits for a batch. The vocabulary is processed in
// chunks: the host runs a matmul for one chunk of logits z = (h · W_chunkᵀ) / temperature into
// `logits` [rows, chunk], then these kernels fold it into running statistics. Per row:
//   lse = log Σ_v exp(z_v)          logp = z_target − lse          entropy = lse − Σ_v p_v z_v
//   backward: dz_v = dlogp · (1[v = target] − p_v), after which the host multiplies into dh.
// Statistics are kept per block of BLOCK columns (partials [rows, blocks_total, 3] =
// (max, Σ exp(z − max), Σ exp(z − max)·z)) so that few rows still fill the GPU; `head_finalize`
// merges them. row_stats [rows, 4] = (z_target, lse, logp, entropy).
// Specialisation: WG, BLOCK.

struct Params {
    rows: u32,
    chunk_cols: u32,   // columns in this chunk
    vocab0: u32,       // vocabulary id of the chunk's first column
    block0: u32,       // global index of the chunk's first block
    blocks_total: u32, // blocks over the whole vocabulary
    stride_y: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> targets: array<u32>;
@group(0) @binding(2) var<storage, read> dlogp: array<f32>; // backward only
@group(0) @binding(3) var<storage, read_write> logits: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;
@group(0) @binding(5) var<storage, read_write> row_stats: array<f32>;

const NEG_INF: f32 = -3.0e38;

@compute @workgroup_size(WG)
fn head_partial_stats(@builtin(global_invocation_id) gid: vec3<u32>) {
    let blocks = (p.chunk_cols + BLOCK - 1u) / BLOCK;
    let idx = gid.x + gid.y * p.stride_y;
    if (idx >= p.rows * blocks) {
        return;
    }
    let r = idx / blocks;
    let blk = idx % blocks;
    let c0 = blk * BLOCK;
    let c1 = min(c0 + BLOCK, p.chunk_cols);
    let base = r * p.chunk_cols;
    var m = NEG_INF;
    for (var c = c0; c < c1; c++) {
        m = max(m, logits[base + c]);
    }
    var s = 0.0;
    var t = 0.0;
    for (var c = c0; c < c1; c++) {
        let z = logits[base + c];
        let e = exp(z - m);
        s += e;
        t = fma(e, z, t);
    }
    let out = (r * p.blocks_total + p.block0 + blk) * 3u;
    partials[out] = m;
    partials[out + 1u] = s;
    partials[out + 2u] = t;
    let target_col = targets[r] - p.vocab0; // wraps around when the target precedes the chunk
    if (target_col >= c0 && target_col < c1) {
        row_stats[r * 4u] = logits[base + target_col];
    }
}

@compute @workgroup_size(WG)
fn head_finalize(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x + gid.y * p.stride_y;
    if (r >= p.rows) {
        return;
    }
    var m = NEG_INF;
    for (var b = 0u; b < p.blocks_total; b++) {
        m = max(m, partials[(r * p.blocks_total + b) * 3u]);
    }
    var s = 0.0;
    var t = 0.0;
    for (var b = 0u; b < p.blocks_total; b++) {
        let i = (r * p.blocks_total + b) * 3u;
        let w = exp(partials[i] - m);
        s = fma(partials[i + 1u], w, s);
        t = fma(partials[i + 2u], w, t);
    }
    let lse = m + log(s);
    row_stats[r * 4u + 1u] = lse;
    row_stats[r * 4u + 2u] = row_stats[r * 4u] - lse;
    row_stats[r * 4u + 3u] = lse - t / s;
}

// In place: logits[r, c] ← dlogp[r] · (1[vocab0 + c = target] − exp(z − lse)).
@compute @workgroup_size(WG)
fn head_grad_logits(@builtin(global_invocation_id) gid: vec3<u32>) {
    let idx = gid.x + gid.y * p.stride_y;
    if (idx >= p.rows * p.chunk_cols) {
        return;
    }
    let r = idx / p.chunk_cols;
    let c = idx % p.chunk_cols;
    let prob = exp(logits[idx] - row_stats[r * 4u + 1u]);
    let onehot = select(0.0, 1.0, p.vocab0 + c == targets[r]);
    logits[idx] = dlogp[r] * (onehot - prob);
}

// The attention mixer's inputs from its packed projections: each row of `qkv` holds one token's
// q | k | v (heads·head_dim, then kv_heads·head_dim twice; rows `stride` apart), as one product
// over the stacked q/k/v weights writes them. One invocation per (token, head slot, i < half):
// q and k heads are rotated by RoPE (Hugging Face's rotate-half, from the host-filled cos/sin
// tables of `ops::rope`, whose CPU reference it matches), v heads copied; q lands token-major `[rows, heads·head_dim]`, k and v either token-major
// `[rows, kv_heads·head_dim]` (`cache` = 0) or into head-major caches
// `[batch, kv_heads, capacity, head_dim]` at positions pos0 … pos0 + t − 1 (`cache` = 1).
// One dispatch where RoPE on q, RoPE on k and two cache writes took four.
// `attention_input_backward` is its transpose for training (token-major only): it packs dq, dk
// (rotated back: RoPE's inverse) and dv into rows of `qkv`, as one product over the stacked
// weights reads them. Bindings 4–7 are read_write because the two entry points read and write
// them in opposite directions.
// Specialisation: WG.

struct Params {
    rows: u32,     // batch·t tokens
    t: u32,        // tokens per sequence
    heads: u32,
    kv_heads: u32,
    half: u32,     // head_dim / 2
    stride: u32,   // row stride of qkv, in elements (≥ (heads + 2·kv_heads)·head_dim)
    max_pos: u32,  // rows of the cos/sin tables
    cache: u32,    // 1: k and v go into caches; 0: token-major
    capacity: u32, // cache positions per (sequence, kv head)
    pos0: u32,     // cache position of each sequence's first token
    stride_y: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> positions: array<u32>;
@group(0) @binding(2) var<storage, read> cos_table: array<f32>;
@group(0) @binding(3) var<storage, read> sin_table: array<f32>;
@group(0) @binding(4) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(5) var<storage, read_write> q: array<f32>;
@group(0) @binding(6) var<storage, read_write> k: array<f32>;
@group(0) @binding(7) var<storage, read_write> v: array<f32>;

// Where key/value head `g` of token `row` starts in the k and v outputs.
fn kv_start(row: u32, g: u32, head_dim: u32) -> u32 {
    if (p.cache == 1u) {
        let b = row / p.t;
        let i = row % p.t;
        return ((b * p.kv_heads + g) * p.capacity + p.pos0 + i) * head_dim;
    }
    return (row * p.kv_heads + g) * head_dim;
}

// The pair (x1, x2) = elements i and i + half of a head of token `row`, rotated by its position's
// angle (`sign` −1: the inverse rotation).
fn rotate(x1: f32, x2: f32, row: u32, i: u32, sign: f32) -> vec2<f32> {
    let pos = min(positions[row], p.max_pos - 1u);
    let c = cos_table[pos * p.half + i];
    let s = sign * sin_table[pos * p.half + i];
    return vec2<f32>(x1 * c - x2 * s, x2 * c + x1 * s);
}

// What invocation `idx` handles: (token row, head slot — q heads, then k heads, then v heads —
// and i < half); x ≥ rows for the invocations past the end.
fn invocation(idx: u32) -> vec3<u32> {
    let slots = p.heads + 2u * p.kv_heads;
    return vec3<u32>(idx / (p.half * slots), (idx / p.half) % slots, idx % p.half);
}

@compute @workgroup_size(WG)
fn attention_input(@builtin(global_invocation_id) gid: vec3<u32>) {
    let job = invocation(gid.x + gid.y * p.stride_y);
    let row = job.x;
    let slot = job.y;
    let i = job.z;
    if (row >= p.rows) {
        return;
    }
    let head_dim = 2u * p.half;
    let src = row * p.stride + slot * head_dim;
    let x1 = qkv[src + i];
    let x2 = qkv[src + i + p.half];
    if (slot >= p.heads + p.kv_heads) {
        // A value head: copied as it is.
        let at = kv_start(row, slot - p.heads - p.kv_heads, head_dim);
        v[at + i] = x1;
        v[at + i + p.half] = x2;
        return;
    }
    let y = rotate(x1, x2, row, i, 1.0);
    if (slot < p.heads) {
        let at = (row * p.heads + slot) * head_dim;
        q[at + i] = y.x;
        q[at + i + p.half] = y.y;
    } else {
        let at = kv_start(row, slot - p.heads, head_dim);
        k[at + i] = y.x;
        k[at + i + p.half] = y.y;
    }
}

@compute @workgroup_size(WG)
fn attention_input_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let job = invocation(gid.x + gid.y * p.stride_y);
    let row = job.x;
    let slot = job.y;
    let i = job.z;
    if (row >= p.rows) {
        return;
    }
    let head_dim = 2u * p.half;
    let dst = row * p.stride + slot * head_dim;
    if (slot >= p.heads + p.kv_heads) {
        let at = (row * p.kv_heads + slot - p.heads - p.kv_heads) * head_dim;
        qkv[dst + i] = v[at + i];
        qkv[dst + i + p.half] = v[at + i + p.half];
        return;
    }
    var x1: f32;
    var x2: f32;
    if (slot < p.heads) {
        let at = (row * p.heads + slot) * head_dim;
        x1 = q[at + i];
        x2 = q[at + i + p.half];
    } else {
        let at = (row * p.kv_heads + slot - p.heads) * head_dim;
        x1 = k[at + i];
        x2 = k[at + i + p.half];
    }
    // RoPE's backward is the inverse rotation.
    let y = rotate(x1, x2, row, i, -1.0);
    qkv[dst + i] = y.x;
    qkv[dst + i + p.half] = y.y;
}

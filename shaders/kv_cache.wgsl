// Copies one sequence's head-major cache [batch, kv_heads, capacity, head_dim] to other rows (G
// samples sharing a prompt's prefill). A step's keys and values are written into the cache by
// shaders/attention_input.wgsl.
// Specialisation: WG.

struct Params {
    batch: u32,
    t: u32,
    kv_heads: u32,
    head_dim: u32,
    capacity: u32,
    pos0: u32,    // first destination row
    stride_y: u32,
    src_row: u32, // the sequence whose cache is copied
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> cache: array<f32>;

// Copies positions [0, t) of row src_row of `src` (a cache) into rows pos0 … pos0 + batch − 1
// of `cache`.
@compute @workgroup_size(WG)
fn kv_broadcast(@builtin(global_invocation_id) gid: vec3<u32>) {
    let idx = gid.x + gid.y * p.stride_y;
    let per_row = p.kv_heads * p.t * p.head_dim;
    if (idx >= p.batch * per_row) {
        return;
    }
    let b = idx / per_row;
    let r = idx % per_row;
    let d = r % p.head_dim;
    let i = (r / p.head_dim) % p.t;
    let g = r / (p.head_dim * p.t);
    let source = ((p.src_row * p.kv_heads + g) * p.capacity + i) * p.head_dim + d;
    cache[(((p.pos0 + b) * p.kv_heads + g) * p.capacity + i) * p.head_dim + d] = src[source];
}

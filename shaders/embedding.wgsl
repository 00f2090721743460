// Embedding gather: out[r, :] = b[ids[r], :], the table `b` in any storage type of frozen weights
// (f32, packed f16/bf16 pairs, Q4/Q8 blocks: shaders/include/load_b.wgsl). A table larger than
// one binding is split into row shards, one
// dispatch each: a dispatch writes the rows whose id falls in its shard [vocab0, vocab0 + shard_rows).
// An id past the whole vocabulary gets zeros from the first shard's dispatch (the host validates
// ids; the GPU never reads out of bounds).
// Specialisation: WG, B_DTYPE.
//
// rows_scatter is the reverse for f32 rows with distinct indices: out[ids[r], :] = b[r, :]
// (`vocab` is then out's row count; an index past it is skipped — padding rows). The training
// step uses gather and scatter to run the output head on the rows the loss scores only.

struct Params {
    rows: u32,
    h: u32,
    vocab: u32,
    stride_y: u32,
    vocab0: u32,
    shard_rows: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> b: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

//#include load_b

@compute @workgroup_size(WG)
fn embedding_gather(@builtin(global_invocation_id) gid: vec3<u32>) {
    let idx = gid.x + gid.y * p.stride_y;
    if (idx >= p.rows * p.h) {
        return;
    }
    let row = idx / p.h;
    let j = idx % p.h;
    let id = ids[row];
    if (id >= p.vocab0 && id < p.vocab0 + p.shard_rows) {
        out[idx] = load_b((id - p.vocab0) * p.h + j);
    } else if (id >= p.vocab && p.vocab0 == 0u) {
        out[idx] = 0.0;
    }
}

@compute @workgroup_size(WG)
fn rows_scatter(@builtin(global_invocation_id) gid: vec3<u32>) {
    let idx = gid.x + gid.y * p.stride_y;
    if (idx >= p.rows * p.h) {
        return;
    }
    let dest = ids[idx / p.h];
    if (dest < p.vocab) {
        out[dest * p.h + idx % p.h] = bitcast<f32>(b[idx]);
    }
}

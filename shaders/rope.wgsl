// Rotary position embedding in Hugging Face's rotate-half convention, in place on
// x[rows, heads, head_dim] (row stride `row_stride` elements):
//   out[i]        = x[i]·cos − x[i+half]·sin
//   out[i + half] = x[i+half]·cos + x[i]·sin          for i < half = head_dim / 2,
// with cos/sin of angle pos·inv_freq[i] read from tables [max_pos, half] that the host fills the
// way transformers computes them (f32 inv_freq and products; GPU cos/sin of large angles are not
// accurate enough). The backward is the inverse rotation: the same kernel with `sign` = −1.
// Specialisation: WG.

struct Params {
    rows: u32,
    heads: u32,
    half: u32,
    row_stride: u32,
    max_pos: u32,
    sign: f32,
    stride_y: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> positions: array<u32>;
@group(0) @binding(2) var<storage, read> cos_table: array<f32>;
@group(0) @binding(3) var<storage, read> sin_table: array<f32>;
@group(0) @binding(4) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(WG)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>) {
    let idx = gid.x + gid.y * p.stride_y;
    if (idx >= p.rows * p.heads * p.half) {
        return;
    }
    let i = idx % p.half;
    let head = (idx / p.half) % p.heads;
    let row = idx / (p.half * p.heads);
    let pos = min(positions[row], p.max_pos - 1u);
    let c = cos_table[pos * p.half + i];
    let s = p.sign * sin_table[pos * p.half + i];
    let base = row * p.row_stride + head * 2u * p.half;
    let x1 = x[base + i];
    let x2 = x[base + i + p.half];
    x[base + i] = x1 * c - x2 * s;
    x[base + i + p.half] = x2 * c + x1 * s;
}

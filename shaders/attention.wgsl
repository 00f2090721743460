// Causal self-attention with grouped-query heads, streaming over keys with an online softmax
// (memory linear in sequence length: no T×T score matrix), for training, prefill and KV-cache
// decode alike.
//
//   q, out, dout, dq: element (b, i, h, d) at (b·Tq + i)·q_stride + h·D + d        (token-major)
//   k, v, dk, dv:     element (b, g, t, d) at b·k_sb + g·k_sh + t·k_st + d           (any layout:
//                     token-major activations or a head-major KV cache)
//   Query i of batch b sits at absolute position q_pos0 + i and sees keys
//   key_start[b] ≤ t ≤ q_pos0 + i (key_start > 0 masks left padding). Query head h reads key/value
//   head h / (H / KVH). A query with no visible key outputs zeros.
//   stats: [2, B·H·Tq] — the forward's log-sum-exp (first half), the backward's
//   delta_i = dout_i · out_i (second half).
//
// Specialisation: HEAD_DIM (D), WG, BLOCK (keys scored before each rescale of the accumulator).

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
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> key_start: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> stats: array<f32>;

const NEG_INF: f32 = -3.0e38;

@compute @workgroup_size(WG)
fn attention_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    // One invocation per (b, h, i); i fastest so neighbours share keys.
    let n = p.batch * p.heads * p.tq;
    let idx = gid.x;
    if (idx >= n) {
        return;
    }
    let i = idx % p.tq;
    let h = (idx / p.tq) % p.heads;
    let b = idx / (p.tq * p.heads);
    let g = h / (p.heads / p.kv_heads);
    let q_base = (b * p.tq + i) * p.q_stride + h * HEAD_DIM;
    let kv_base = b * p.k_sb + g * p.k_sh;
    let first = key_start[b];
    let last = p.q_pos0 + i; // inclusive

    var qv: array<f32, HEAD_DIM>;
    for (var d = 0u; d < HEAD_DIM; d++) {
        qv[d] = q[q_base + d] * p.scale;
    }
    var acc: array<f32, HEAD_DIM>;
    var m = NEG_INF;
    var l = 0.0;
    var t = first;
    while (t <= last) {
        let count = min(BLOCK, last + 1u - t);
        var s: array<f32, BLOCK>;
        var block_max = NEG_INF;
        for (var j = 0u; j < count; j++) {
            let kb = kv_base + (t + j) * p.k_st;
            var dot = 0.0;
            for (var d = 0u; d < HEAD_DIM; d++) {
                dot = fma(qv[d], k[kb + d], dot);
            }
            s[j] = dot;
            block_max = max(block_max, dot);
        }
        let m_new = max(m, block_max);
        let correction = exp(m - m_new);
        l *= correction;
        for (var d = 0u; d < HEAD_DIM; d++) {
            acc[d] *= correction;
        }
        for (var j = 0u; j < count; j++) {
            let e = exp(s[j] - m_new);
            l += e;
            let vb = kv_base + (t + j) * p.k_st;
            for (var d = 0u; d < HEAD_DIM; d++) {
                acc[d] = fma(e, v[vb + d], acc[d]);
            }
        }
        m = m_new;
        t += count;
    }
    let inv_l = select(0.0, 1.0 / l, l > 0.0);
    for (var d = 0u; d < HEAD_DIM; d++) {
        out[q_base + d] = acc[d] * inv_l;
    }
    stats[idx] = select(0.0, m + log(l), l > 0.0);
}

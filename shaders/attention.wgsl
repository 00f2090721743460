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

// Four consecutive elements of k or v as a vector (HEAD_DIM is a multiple of 4; rows need not
// be 16-byte aligned, so these are four scalar loads).
fn load_k4(i: u32) -> vec4<f32> {
    return vec4<f32>(k[i], k[i + 1u], k[i + 2u], k[i + 3u]);
}
fn load_v4(i: u32) -> vec4<f32> {
    return vec4<f32>(v[i], v[i + 1u], v[i + 2u], v[i + 3u]);
}

// One invocation per (b, h, i); i fastest so neighbours share keys. The head dimension is
// unrolled into named vec4 registers (`//#for`): llvmpipe stops an invocation's loops after
// 65,535 iterations in total (gallivm's loop limiter), and a loop over HEAD_DIM inside the loop
// over keys crossed that at SmolLM2's 512 tokens, silently truncating the softmax. Unrolled, an
// invocation iterates about twice per key.
@compute @workgroup_size(WG)
fn attention_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
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

    //#for c in HEAD_DIM/4
    let q${c} = vec4<f32>(q[q_base + ${c}u * 4u], q[q_base + ${c}u * 4u + 1u], q[q_base + ${c}u * 4u + 2u], q[q_base + ${c}u * 4u + 3u]) * p.scale;
    var acc${c} = vec4<f32>(0.0);
    //#end
    var m = NEG_INF;
    var l = 0.0;
    var t = first;
    while (t <= last) {
        let count = min(BLOCK, last + 1u - t);
        var s: array<f32, BLOCK>;
        var block_max = NEG_INF;
        for (var j = 0u; j < count; j++) {
            let kb = kv_base + (t + j) * p.k_st;
            var dot4 = vec4<f32>(0.0);
            //#for c in HEAD_DIM/4
            dot4 = fma(q${c}, load_k4(kb + ${c}u * 4u), dot4);
            //#end
            let score = dot4.x + dot4.y + dot4.z + dot4.w;
            s[j] = score;
            block_max = max(block_max, score);
        }
        let m_new = max(m, block_max);
        let correction = exp(m - m_new);
        l *= correction;
        //#for c in HEAD_DIM/4
        acc${c} *= correction;
        //#end
        for (var j = 0u; j < count; j++) {
            let e = exp(s[j] - m_new);
            l += e;
            let vb = kv_base + (t + j) * p.k_st;
            //#for c in HEAD_DIM/4
            acc${c} = fma(vec4<f32>(e), load_v4(vb + ${c}u * 4u), acc${c});
            //#end
        }
        m = m_new;
        t += count;
    }
    let inv_l = select(0.0, 1.0 / l, l > 0.0);
    //#for c in HEAD_DIM/4
    //#for e in 4
    out[q_base + ${c}u * 4u + ${e}u] = acc${c}[${e}] * inv_l;
    //#end
    //#end
    stats[idx] = select(0.0, m + log(l), l > 0.0);
}

// One workgroup of KB lanes per (b, h, i) query row, instead of one invocation (the GPU path
// before attention_flash.wgsl, kept so a GPU run can time both: AttentionKernel::PerWorkgroup).
// Per block of KB keys, lane j scores key t0 + j (q held in workgroup memory), the block's
// maximum and sum meet in workgroup memory, and lane d accumulates output dimensions
// d, d + KB, … reading value rows contiguously across lanes. A thread-per-query kernel keeps
// a HEAD_DIM-long accumulator per invocation, which GPUs spill to local memory, and leaves most
// of the machine idle on decode (measured 2.2 ms for one query against 256 keys on an H100).
// Workgroups are laid out 2-D (x up to 65,535) for long batches.
// Specialisation adds KB (lanes and keys per block, a power of two) and DPL = ⌈HEAD_DIM / KB⌉.

var<workgroup> q_row: array<f32, HEAD_DIM>;
var<workgroup> block_p: array<f32, KB>;
var<workgroup> reduce: array<f32, KB>;

// Tree reduction of `reduce` (max when `take_max`, else sum); every lane gets the result.
fn reduce_block(lane: u32, take_max: bool) -> f32 {
    for (var stride = KB / 2u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if (lane < stride) {
            let o = reduce[lane + stride];
            reduce[lane] = select(reduce[lane] + o, max(reduce[lane], o), take_max);
        }
    }
    workgroupBarrier();
    let r = reduce[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(KB)
fn attention_forward_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let idx = wid.y * nwg.x + wid.x;
    let n = p.batch * p.heads * p.tq;
    if (idx >= n) {
        return;
    }
    let lane = lid.x;
    let i = idx % p.tq;
    let h = (idx / p.tq) % p.heads;
    let b = idx / (p.tq * p.heads);
    let g = h / (p.heads / p.kv_heads);
    let q_base = (b * p.tq + i) * p.q_stride + h * HEAD_DIM;
    let kv_base = b * p.k_sb + g * p.k_sh;
    let first = key_start[b];
    let last = p.q_pos0 + i; // inclusive
    for (var d = lane; d < HEAD_DIM; d += KB) {
        q_row[d] = q[q_base + d] * p.scale;
    }
    var acc: array<f32, DPL>;
    var m = NEG_INF;
    var l = 0.0;
    for (var t0 = first; t0 <= last; t0 += KB) {
        workgroupBarrier(); // q_row written; the previous block's weights consumed
        let t = t0 + lane;
        var score = NEG_INF;
        if (t <= last) {
            let kb = kv_base + t * p.k_st;
            var dot = 0.0;
            for (var d = 0u; d < HEAD_DIM; d++) {
                dot = fma(q_row[d], k[kb + d], dot);
            }
            score = dot;
        }
        reduce[lane] = score;
        let m_new = max(m, reduce_block(lane, true));
        let e = select(0.0, exp(score - m_new), t <= last);
        block_p[lane] = e;
        reduce[lane] = e;
        let correction = exp(m - m_new);
        l = l * correction + reduce_block(lane, false);
        m = m_new;
        let count = min(KB, last + 1u - t0);
        for (var j = 0u; j < DPL; j++) {
            let d = lane + j * KB;
            var a = acc[j] * correction;
            if (d < HEAD_DIM) {
                for (var s = 0u; s < count; s++) {
                    a = fma(block_p[s], v[kv_base + (t0 + s) * p.k_st + d], a);
                }
            }
            acc[j] = a;
        }
    }
    let inv_l = select(0.0, 1.0 / l, l > 0.0);
    for (var j = 0u; j < DPL; j++) {
        let d = lane + j * KB;
        if (d < HEAD_DIM) {
            out[q_base + d] = acc[j] * inv_l;
        }
    }
    if (lane == 0u) {
        stats[idx] = select(0.0, m + log(l), l > 0.0);
    }
}

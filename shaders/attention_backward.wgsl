// Backward of shaders/attention.wgsl (same layouts and masking; read its header first).
// With p_ij = exp(s_ij − lse_i), s_ij = scale·q_i·k_j and delta_i = dout_i·out_i:
//   dv_j = Σ_i p_ij dout_i        ds_ij = p_ij (dout_i·v_j − delta_i)
//   dq_i = scale Σ_j ds_ij k_j     dk_j = scale Σ_i ds_ij q_i
// Three entry points, no atomics: attention_delta (per query), attention_backward_dq (per query),
// attention_backward_dkv (per key and key/value head, summing over its query heads).
// Specialisation: HEAD_DIM, WG, ACCUMULATE (dq/dk/dv are added into, not overwritten).

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
    tk: u32, // keys per sequence (for the per-key grid)
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> key_start: array<u32>;
@group(0) @binding(5) var<storage, read> dout: array<f32>;
@group(0) @binding(6) var<storage, read_write> stats: array<f32>;
@group(0) @binding(7) var<storage, read_write> grad0: array<f32>; // dq, or dk
@group(0) @binding(8) var<storage, read_write> grad1: array<f32>; // out (delta pass), or dv

// Four consecutive elements of a row as a vector (rows need not be 16-byte aligned).
fn load_q4(i: u32) -> vec4<f32> {
    return vec4<f32>(q[i], q[i + 1u], q[i + 2u], q[i + 3u]);
}
fn load_k4(i: u32) -> vec4<f32> {
    return vec4<f32>(k[i], k[i + 1u], k[i + 2u], k[i + 3u]);
}
fn load_v4(i: u32) -> vec4<f32> {
    return vec4<f32>(v[i], v[i + 1u], v[i + 2u], v[i + 3u]);
}
fn load_dout4(i: u32) -> vec4<f32> {
    return vec4<f32>(dout[i], dout[i + 1u], dout[i + 2u], dout[i + 3u]);
}
fn hsum(x: vec4<f32>) -> f32 {
    return x.x + x.y + x.z + x.w;
}

// The per-invocation kernels unroll the head dimension into named vec4 registers: llvmpipe
// stops an invocation's loops after 65,535 iterations in total, which a HEAD_DIM loop nested in
// the loop over keys (or queries) crossed at a few hundred tokens (see attention.wgsl).

// delta_i = dout_i · out_i, written to the second half of stats. `grad1` holds out here.
@compute @workgroup_size(WG)
fn attention_delta(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = p.batch * p.heads * p.tq;
    let idx = gid.x;
    if (idx >= n) {
        return;
    }
    let i = idx % p.tq;
    let h = (idx / p.tq) % p.heads;
    let b = idx / (p.tq * p.heads);
    let base = (b * p.tq + i) * p.q_stride + h * HEAD_DIM;
    var dot4 = vec4<f32>(0.0);
    //#for c in HEAD_DIM/4
    dot4 = fma(load_dout4(base + ${c}u * 4u), vec4<f32>(grad1[base + ${c}u * 4u], grad1[base + ${c}u * 4u + 1u], grad1[base + ${c}u * 4u + 2u], grad1[base + ${c}u * 4u + 3u]), dot4);
    //#end
    stats[n + idx] = hsum(dot4);
}

@compute @workgroup_size(WG)
fn attention_backward_dq(@builtin(global_invocation_id) gid: vec3<u32>) {
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
    let lse = stats[idx];
    let delta = stats[n + idx];
    //#for c in HEAD_DIM/4
    let qv${c} = load_q4(q_base + ${c}u * 4u) * p.scale;
    let do${c} = load_dout4(q_base + ${c}u * 4u);
    var dq${c} = vec4<f32>(0.0);
    //#end
    for (var t = key_start[b]; t <= p.q_pos0 + i; t++) {
        let kb = kv_base + t * p.k_st;
        var s4 = vec4<f32>(0.0);
        var dp4 = vec4<f32>(0.0);
        //#for c in HEAD_DIM/4
        let k${c} = load_k4(kb + ${c}u * 4u);
        s4 = fma(qv${c}, k${c}, s4);
        dp4 = fma(do${c}, load_v4(kb + ${c}u * 4u), dp4);
        //#end
        let ds = exp(hsum(s4) - lse) * (hsum(dp4) - delta) * p.scale;
        //#for c in HEAD_DIM/4
        dq${c} = fma(vec4<f32>(ds), k${c}, dq${c});
        //#end
    }
    //#for c in HEAD_DIM/4
    //#for e in 4
    var dq${c}_${e} = dq${c}[${e}];
    if (ACCUMULATE) {
        dq${c}_${e} += grad0[q_base + ${c}u * 4u + ${e}u];
    }
    grad0[q_base + ${c}u * 4u + ${e}u] = dq${c}_${e};
    //#end
    //#end
}

@compute @workgroup_size(WG)
fn attention_backward_dkv(@builtin(global_invocation_id) gid: vec3<u32>) {
    // One invocation per (b, g, t), t fastest.
    let n = p.batch * p.kv_heads * p.tk;
    let idx = gid.x;
    if (idx >= n) {
        return;
    }
    let t = idx % p.tk;
    let g = (idx / p.tk) % p.kv_heads;
    let b = idx / (p.tk * p.kv_heads);
    let kb = b * p.k_sb + g * p.k_sh + t * p.k_st;
    //#for c in HEAD_DIM/4
    let kv${c} = load_k4(kb + ${c}u * 4u) * p.scale;
    let vv${c} = load_v4(kb + ${c}u * 4u);
    var dk${c} = vec4<f32>(0.0);
    var dv${c} = vec4<f32>(0.0);
    //#end
    let nq = p.batch * p.heads * p.tq;
    let group = p.heads / p.kv_heads;
    // Queries that see key t: those at absolute position ≥ t (and only if t is not padding).
    let i0 = select(0u, t - p.q_pos0, t > p.q_pos0);
    if (t >= key_start[b]) {
        for (var hh = 0u; hh < group; hh++) {
            let h = g * group + hh;
            for (var i = i0; i < p.tq; i++) {
                let qi = (b * p.heads + h) * p.tq + i;
                let q_base = (b * p.tq + i) * p.q_stride + h * HEAD_DIM;
                var s4 = vec4<f32>(0.0);
                var dp4 = vec4<f32>(0.0);
                //#for c in HEAD_DIM/4
                let q${c} = load_q4(q_base + ${c}u * 4u);
                let do${c} = load_dout4(q_base + ${c}u * 4u);
                s4 = fma(q${c}, kv${c}, s4);
                dp4 = fma(do${c}, vv${c}, dp4);
                //#end
                let pr = exp(hsum(s4) - stats[qi]);
                let ds = pr * (hsum(dp4) - stats[nq + qi]) * p.scale;
                //#for c in HEAD_DIM/4
                dv${c} = fma(vec4<f32>(pr), do${c}, dv${c});
                dk${c} = fma(vec4<f32>(ds), q${c}, dk${c});
                //#end
            }
        }
    }
    //#for c in HEAD_DIM/4
    //#for e in 4
    var dk${c}_${e} = dk${c}[${e}];
    var dv${c}_${e} = dv${c}[${e}];
    if (ACCUMULATE) {
        dk${c}_${e} += grad0[kb + ${c}u * 4u + ${e}u];
        dv${c}_${e} += grad1[kb + ${c}u * 4u + ${e}u];
    }
    grad0[kb + ${c}u * 4u + ${e}u] = dk${c}_${e};
    grad1[kb + ${c}u * 4u + ${e}u] = dv${c}_${e};
    //#end
    //#end
}

// The same gradients with one workgroup of KB lanes per query row (dq) or per key row and
// key/value head (dk, dv) — the GPU path before attention_flash.wgsl, kept so a GPU run can time
// both (AttentionKernel::PerWorkgroup) — as shaders/attention.wgsl's attention_forward_rows:
// lanes score KB keys (or queries) at a time, the block's weights meet in workgroup memory, and
// lane d accumulates dimensions d, d + KB, … with contiguous reads across lanes. Rows are
// numbered y·(groups in x) + x.
// Specialisation adds KB and DPL = ⌈HEAD_DIM / KB⌉.

var<workgroup> row_a: array<f32, HEAD_DIM>; // scaled q (dq) or scaled k (dk/dv)
var<workgroup> row_b: array<f32, HEAD_DIM>; // dout (dq) or v (dk/dv)
var<workgroup> block_w: array<f32, KB>; // ds (dq) or p (dk/dv)
var<workgroup> block_ds: array<f32, KB>;

@compute @workgroup_size(KB)
fn attention_backward_dq_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let n = p.batch * p.heads * p.tq;
    let idx = wid.y * nwg.x + wid.x;
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
    let lse = stats[idx];
    let delta = stats[n + idx];
    for (var d = lane; d < HEAD_DIM; d += KB) {
        row_a[d] = q[q_base + d] * p.scale;
        row_b[d] = dout[q_base + d];
    }
    var acc: array<f32, DPL>;
    let last = p.q_pos0 + i;
    for (var t0 = key_start[b]; t0 <= last; t0 += KB) {
        workgroupBarrier();
        let t = t0 + lane;
        var ds = 0.0;
        if (t <= last) {
            let kb = kv_base + t * p.k_st;
            var s = 0.0;
            var dp = 0.0;
            for (var d = 0u; d < HEAD_DIM; d++) {
                s = fma(row_a[d], k[kb + d], s);
                dp = fma(row_b[d], v[kb + d], dp);
            }
            ds = exp(s - lse) * (dp - delta) * p.scale;
        }
        block_w[lane] = ds;
        workgroupBarrier();
        let count = min(KB, last + 1u - t0);
        for (var j = 0u; j < DPL; j++) {
            let d = lane + j * KB;
            if (d < HEAD_DIM) {
                var a = acc[j];
                for (var s = 0u; s < count; s++) {
                    a = fma(block_w[s], k[kv_base + (t0 + s) * p.k_st + d], a);
                }
                acc[j] = a;
            }
        }
    }
    for (var j = 0u; j < DPL; j++) {
        let d = lane + j * KB;
        if (d < HEAD_DIM) {
            var val = acc[j];
            if (ACCUMULATE) {
                val += grad0[q_base + d];
            }
            grad0[q_base + d] = val;
        }
    }
}

@compute @workgroup_size(KB)
fn attention_backward_dkv_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let n = p.batch * p.kv_heads * p.tk;
    let idx = wid.y * nwg.x + wid.x;
    if (idx >= n) {
        return;
    }
    let lane = lid.x;
    let t = idx % p.tk;
    let g = (idx / p.tk) % p.kv_heads;
    let b = idx / (p.tk * p.kv_heads);
    let kb = b * p.k_sb + g * p.k_sh + t * p.k_st;
    for (var d = lane; d < HEAD_DIM; d += KB) {
        row_a[d] = k[kb + d] * p.scale;
        row_b[d] = v[kb + d];
    }
    var dk: array<f32, DPL>;
    var dv: array<f32, DPL>;
    let nq = p.batch * p.heads * p.tq;
    let group = p.heads / p.kv_heads;
    let i0 = select(0u, t - p.q_pos0, t > p.q_pos0);
    if (t >= key_start[b]) {
        for (var hh = 0u; hh < group; hh++) {
            let h = g * group + hh;
            for (var i_0 = i0; i_0 < p.tq; i_0 += KB) {
                workgroupBarrier();
                let i = i_0 + lane;
                var pr = 0.0;
                var ds = 0.0;
                if (i < p.tq) {
                    let qi = (b * p.heads + h) * p.tq + i;
                    let q_base = (b * p.tq + i) * p.q_stride + h * HEAD_DIM;
                    var s = 0.0;
                    var dp = 0.0;
                    for (var d = 0u; d < HEAD_DIM; d++) {
                        s = fma(q[q_base + d], row_a[d], s);
                        dp = fma(dout[q_base + d], row_b[d], dp);
                    }
                    pr = exp(s - stats[qi]);
                    ds = pr * (dp - stats[nq + qi]) * p.scale;
                }
                block_w[lane] = pr;
                block_ds[lane] = ds;
                workgroupBarrier();
                let count = min(KB, p.tq - i_0);
                for (var j = 0u; j < DPL; j++) {
                    let d = lane + j * KB;
                    if (d < HEAD_DIM) {
                        var a = dk[j];
                        var c = dv[j];
                        for (var s = 0u; s < count; s++) {
                            let q_base = (b * p.tq + i_0 + s) * p.q_stride + h * HEAD_DIM;
                            a = fma(block_ds[s], q[q_base + d], a);
                            c = fma(block_w[s], dout[q_base + d], c);
                        }
                        dk[j] = a;
                        dv[j] = c;
                    }
                }
            }
        }
    }
    for (var j = 0u; j < DPL; j++) {
        let d = lane + j * KB;
        if (d < HEAD_DIM) {
            var a = dk[j];
            var c = dv[j];
            if (ACCUMULATE) {
                a += grad0[kb + d];
                c += grad1[kb + d];
            }
            grad0[kb + d] = a;
            grad1[kb + d] = c;
        }
    }
}

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
    var dot = 0.0;
    for (var d = 0u; d < HEAD_DIM; d++) {
        dot = fma(dout[base + d], grad1[base + d], dot);
    }
    stats[n + idx] = dot;
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
    var qv: array<f32, HEAD_DIM>;
    var dov: array<f32, HEAD_DIM>;
    for (var d = 0u; d < HEAD_DIM; d++) {
        qv[d] = q[q_base + d] * p.scale;
        dov[d] = dout[q_base + d];
    }
    var dq: array<f32, HEAD_DIM>;
    for (var t = key_start[b]; t <= p.q_pos0 + i; t++) {
        let kb = kv_base + t * p.k_st;
        var s = 0.0;
        var dp = 0.0;
        for (var d = 0u; d < HEAD_DIM; d++) {
            s = fma(qv[d], k[kb + d], s);
            dp = fma(dov[d], v[kb + d], dp);
        }
        let ds = exp(s - lse) * (dp - delta) * p.scale;
        for (var d = 0u; d < HEAD_DIM; d++) {
            dq[d] = fma(ds, k[kb + d], dq[d]);
        }
    }
    for (var d = 0u; d < HEAD_DIM; d++) {
        var val = dq[d];
        if (ACCUMULATE) {
            val += grad0[q_base + d];
        }
        grad0[q_base + d] = val;
    }
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
    var kv: array<f32, HEAD_DIM>;
    var vv: array<f32, HEAD_DIM>;
    for (var d = 0u; d < HEAD_DIM; d++) {
        kv[d] = k[kb + d] * p.scale;
        vv[d] = v[kb + d];
    }
    var dk: array<f32, HEAD_DIM>;
    var dv: array<f32, HEAD_DIM>;
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
                var s = 0.0;
                var dp = 0.0;
                for (var d = 0u; d < HEAD_DIM; d++) {
                    s = fma(q[q_base + d], kv[d], s);
                    dp = fma(dout[q_base + d], vv[d], dp);
                }
                let pr = exp(s - stats[qi]);
                let ds = pr * (dp - stats[nq + qi]) * p.scale;
                for (var d = 0u; d < HEAD_DIM; d++) {
                    dv[d] = fma(pr, dout[q_base + d], dv[d]);
                    dk[d] = fma(ds, q[q_base + d], dk[d]);
                }
            }
        }
    }
    for (var d = 0u; d < HEAD_DIM; d++) {
        var a = dk[d];
        var c = dv[d];
        if (ACCUMULATE) {
            a += grad0[kb + d];
            c += grad1[kb + d];
        }
        grad0[kb + d] = a;
        grad1[kb + d] = c;
    }
}

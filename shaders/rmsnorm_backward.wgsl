// RMSNorm backward. With x̂ = x·rstd and g = dy ⊙ w:
//   dx = rstd · (g − x̂ · mean(g ⊙ x̂))        (entry rmsnorm_backward_input, one invocation per row)
//   dw = Σ_rows dy ⊙ x̂                          (entry rmsnorm_backward_weight, one per column)
// Specialisation: WG, ACCUMULATE (add into dx / dw instead of overwriting).

struct Params {
    rows: u32,
    h: u32,
    eps: f32,
    stride_y: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> rstd: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> grad: array<f32>; // dx [rows, h] or dw [h]

@compute @workgroup_size(WG)
fn rmsnorm_backward_input(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x + gid.y * p.stride_y;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.h;
    let r = rstd[row];
    var dot = 0.0;
    for (var j = 0u; j < p.h; j++) {
        dot = fma(dy[base + j] * w[j], x[base + j] * r, dot);
    }
    let mean_dot = dot / f32(p.h);
    for (var j = 0u; j < p.h; j++) {
        var v = r * (dy[base + j] * w[j] - x[base + j] * r * mean_dot);
        if (ACCUMULATE) {
            v += grad[base + j];
        }
        grad[base + j] = v;
    }
}

@compute @workgroup_size(WG)
fn rmsnorm_backward_weight(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x + gid.y * p.stride_y;
    if (col >= p.h) {
        return;
    }
    var acc = 0.0;
    for (var r = 0u; r < p.rows; r++) {
        acc = fma(dy[r * p.h + col], x[r * p.h + col] * rstd[r], acc);
    }
    if (ACCUMULATE) {
        acc += grad[col];
    }
    grad[col] = acc;
}

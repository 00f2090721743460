// SwiGLU of the Llama/Qwen2 MLP on packed rows gate | up (`width` each, as one product over the
// stacked gate/up weights writes them): h = silu(gate) ⊙ up, silu(g) = g·σ(g).
// Backward: dgate = dh ⊙ up ⊙ σ(g)(1 + g(1 − σ(g))), dup = dh ⊙ silu(g), written packed the same
// way as dgate | dup.
// Specialisation: WG.

struct Params {
    n: u32,     // rows · width: one invocation per (row, column)
    stride_y: u32,
    width: u32, // the intermediate size
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gate_up: array<f32>;
@group(0) @binding(2) var<storage, read> dh: array<f32>; // forward: unused
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // forward: h; backward: dgate | dup

fn sigmoid(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

// Where element i of the [rows, width] result finds its gate in the packed rows (its up is
// `width` further on).
fn gate_at(i: u32) -> u32 {
    return (i / p.width) * 2u * p.width + i % p.width;
}

@compute @workgroup_size(WG)
fn swiglu_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.stride_y;
    if (i >= p.n) {
        return;
    }
    let at = gate_at(i);
    let g = gate_up[at];
    out[i] = g * sigmoid(g) * gate_up[at + p.width];
}

@compute @workgroup_size(WG)
fn swiglu_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.stride_y;
    if (i >= p.n) {
        return;
    }
    let at = gate_at(i);
    let g = gate_up[at];
    let u = gate_up[at + p.width];
    let s = sigmoid(g);
    let d = dh[i];
    out[at] = d * u * s * (1.0 + g * (1.0 - s));
    out[at + p.width] = d * g * s;
}

// SwiGLU of the Llama/Qwen2 MLP: h = silu(gate) ⊙ up, silu(g) = g·σ(g).
// Backward: dgate = dh ⊙ up ⊙ σ(g)(1 + g(1 − σ(g))), dup = dh ⊙ silu(g).
// `swiglu_forward_packed` reads gate and up from packed rows gate | up (`width` each, as one
// product over the stacked gate/up weights writes them) in the `gate` binding;
// `swiglu_backward_packed` writes dgate | dup packed the same way into `out0`.
// Specialisation: WG.

struct Params {
    n: u32,
    stride_y: u32,
    width: u32, // swiglu_forward_packed: the intermediate size; the others ignore it
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;
@group(0) @binding(3) var<storage, read> dh: array<f32>; // forward: unused
@group(0) @binding(4) var<storage, read_write> out0: array<f32>; // forward: h; backward: dgate
@group(0) @binding(5) var<storage, read_write> out1: array<f32>; // forward: unused; backward: dup

fn sigmoid(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

@compute @workgroup_size(WG)
fn swiglu_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.stride_y;
    if (i >= p.n) {
        return;
    }
    let g = gate[i];
    out0[i] = g * sigmoid(g) * up[i];
}

@compute @workgroup_size(WG)
fn swiglu_forward_packed(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.stride_y;
    if (i >= p.n) {
        return;
    }
    let at = (i / p.width) * 2u * p.width + i % p.width;
    let g = gate[at];
    out0[i] = g * sigmoid(g) * gate[at + p.width];
}

@compute @workgroup_size(WG)
fn swiglu_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.stride_y;
    if (i >= p.n) {
        return;
    }
    let g = gate[i];
    let s = sigmoid(g);
    let d = dh[i];
    out0[i] = d * up[i] * s * (1.0 + g * (1.0 - s));
    out1[i] = d * g * s;
}

@compute @workgroup_size(WG)
fn swiglu_backward_packed(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.stride_y;
    if (i >= p.n) {
        return;
    }
    let at = (i / p.width) * 2u * p.width + i % p.width;
    let g = gate[at];
    let u = gate[at + p.width];
    let s = sigmoid(g);
    let d = dh[i];
    out0[at] = d * u * s * (1.0 + g * (1.0 - s));
    out0[at + p.width] = d * g * s;
}

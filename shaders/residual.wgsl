// y = y + alpha · x, elementwise and in place (residual connections, scaled accumulation).
// Specialisation: WG.

struct Params {
    n: u32,
    alpha: f32,
    stride_y: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(WG)
fn add_scaled(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.stride_y;
    if (i >= p.n) {
        return;
    }
    y[i] = fma(p.alpha, x[i], y[i]);
}

// Optimiser kernels over one flat f32 parameter buffer (all LoRA factors live in one buffer, so
// one dispatch updates them all).
//   grad_norm_partial: invocation i sums squares of grad[i·CHUNK … (i+1)·CHUNK) → partials[i]
//   grad_norm_final:   one invocation: norm = √Σ partials; clip = min(1, max_norm / (norm + 1e-6))
//                      as torch.nn.utils.clip_grad_norm_; writes norm_out = (norm, clip)
//   adamw_step:        PyTorch's AdamW (decoupled weight decay, bias correction), with the
//                      gradient multiplied by the clip factor read from the GPU: no host round trip.
// Two passes because WGSL has no float atomics. Specialisation: WG, CHUNK.

struct Params {
    n: u32,
    partial_count: u32,
    stride_y: u32,
    max_norm: f32,      // ≤ 0: no clipping
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bias_correction1: f32,      // 1 − β1^t
    bias_correction2_sqrt: f32, // √(1 − β2^t)
    grad_scale: f32,            // e.g. 1 / accumulation steps
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> m1: array<f32>;
@group(0) @binding(4) var<storage, read_write> m2: array<f32>;
@group(0) @binding(5) var<storage, read_write> norm: array<f32>; // [partials…, norm, clip] at the end

@compute @workgroup_size(WG)
fn grad_norm_partial(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.stride_y;
    if (i >= p.partial_count) {
        return;
    }
    let start = i * CHUNK;
    let end = min(start + CHUNK, p.n);
    var acc = 0.0;
    for (var j = start; j < end; j++) {
        let g = grad[j] * p.grad_scale;
        acc = fma(g, g, acc);
    }
    norm[i] = acc;
}

@compute @workgroup_size(1)
fn grad_norm_final() {
    var acc = 0.0;
    for (var i = 0u; i < p.partial_count; i++) {
        acc += norm[i];
    }
    let total = sqrt(acc);
    norm[p.partial_count] = total;
    norm[p.partial_count + 1u] = select(1.0, min(1.0, p.max_norm / (total + 1e-6)), p.max_norm > 0.0);
}

@compute @workgroup_size(WG)
fn adamw_step(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.stride_y;
    if (i >= p.n) {
        return;
    }
    let g = grad[i] * p.grad_scale * norm[p.partial_count + 1u];
    let m = p.beta1 * m1[i] + (1.0 - p.beta1) * g;
    let v = p.beta2 * m2[i] + (1.0 - p.beta2) * g * g;
    m1[i] = m;
    m2[i] = v;
    var w = param[i] * (1.0 - p.lr * p.weight_decay);
    let denom = sqrt(v) / p.bias_correction2_sqrt + p.eps;
    w -= (p.lr / p.bias_correction1) * m / denom;
    param[i] = w;
}

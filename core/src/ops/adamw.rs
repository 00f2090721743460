//! Fused AdamW over one flat parameter buffer, with global gradient-norm clipping computed on
//! the GPU in two passes (WGSL has no float atomics). WGSL: `shaders/adamw.wgsl`.

use std::sync::Arc;

use super::launch::{WG_1D, grid_1d, need, variant_1d};
use crate::gpu::{Access, Batch, Gpu, GpuBuffer, GpuError, GpuResult, Kernel};
use crate::shaders::{Def, Variant};

const OP: &str = "adamw";
/// Gradient elements summed by one invocation of the first norm pass.
const CHUNK: u32 = 1024;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    partial_count: u32,
    stride_y: u32,
    max_norm: f32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bias_correction1: f32,
    bias_correction2_sqrt: f32,
    grad_scale: f32,
}

fn variant(entry: &'static str) -> Variant {
    variant_1d("adamw", entry, vec![Def::U32("CHUNK", CHUNK)])
}

const ENTRIES: [&str; 3] = ["grad_norm_partial", "grad_norm_final", "adamw_step"];

pub fn specializations() -> Vec<Variant> {
    ENTRIES.iter().map(|e| variant(e)).collect()
}

/// AdamW hyper-parameters (PyTorch's names and defaults but for `lr`).
#[derive(Clone, Copy, Debug)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Global gradient-norm clip; ≤ 0 disables clipping.
    pub max_grad_norm: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, max_grad_norm: 1.0 }
    }
}

/// Optimiser state for `n` parameters: moments, and the norm scratch `[partials…, norm, clip]`.
pub struct AdamW {
    n: usize,
    partial_count: usize,
    kernels: [Arc<Kernel>; 3],
    pub m: GpuBuffer,
    pub v: GpuBuffer,
    /// `[partials…, grad norm (before clipping), clip factor]`.
    pub norm: GpuBuffer,
    pub config: AdamWConfig,
}

impl AdamW {
    pub async fn new(gpu: &Gpu, n: usize, config: AdamWConfig) -> GpuResult<Self> {
        if n == 0 {
            return Err(GpuError::shape(OP, "no parameters"));
        }
        let partial_count = n.div_ceil(CHUNK as usize);
        use Access::*;
        let bindings = [Read, ReadWrite, ReadWrite, ReadWrite, ReadWrite];
        let zeros = vec![0f32; n];
        Ok(AdamW {
            n,
            partial_count,
            kernels: [
                gpu.kernel(&variant(ENTRIES[0]), &bindings).await?,
                gpu.kernel(&variant(ENTRIES[1]), &bindings).await?,
                gpu.kernel(&variant(ENTRIES[2]), &bindings).await?,
            ],
            m: gpu.upload(OP, "first moments", &zeros)?,
            v: gpu.upload(OP, "second moments", &zeros)?,
            norm: gpu.upload(OP, "gradient norm", &vec![0f32; partial_count + 2])?,
            config,
        })
    }

    /// Index of the gradient norm in `norm` (the clip factor follows it).
    pub fn norm_index(&self) -> usize {
        self.partial_count
    }

    /// Records one step at 1-based `step` with learning rate `lr`; `grad_scale` multiplies the
    /// gradient first (1 / accumulation steps, say).
    pub fn step(
        &self,
        b: &mut Batch,
        params: &GpuBuffer,
        grads: &GpuBuffer,
        step: u64,
        lr: f32,
        grad_scale: f32,
    ) -> GpuResult<()> {
        need(OP, "parameters", params, self.n)?;
        need(OP, "gradients", grads, self.n)?;
        if step == 0 {
            return Err(GpuError::shape(OP, "steps count from 1"));
        }
        let c = self.config;
        let mut p = Params {
            n: self.n as u32,
            partial_count: self.partial_count as u32,
            stride_y: 0,
            max_norm: c.max_grad_norm,
            lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            bias_correction1: 1.0 - c.beta1.powi(step.min(i32::MAX as u64) as i32),
            bias_correction2_sqrt: (1.0 - c.beta2.powi(step.min(i32::MAX as u64) as i32)).sqrt(),
            grad_scale,
        };
        let bufs = [grads, params, &self.m, &self.v, &self.norm];
        let (groups, stride_y) = grid_1d(b.gpu(), OP, self.partial_count, WG_1D)?;
        p.stride_y = stride_y;
        b.dispatch(&self.kernels[0], &p, &bufs, groups);
        b.dispatch(&self.kernels[1], &p, &bufs, [1, 1, 1]);
        let (groups, stride_y) = grid_1d(b.gpu(), OP, self.n, WG_1D)?;
        p.stride_y = stride_y;
        b.dispatch(&self.kernels[2], &p, &bufs, groups);
        Ok(())
    }
}

/// CPU reference of one step (PyTorch AdamW + clip_grad_norm_), in f64; returns the norm.
#[allow(clippy::too_many_arguments)]
pub fn adamw_ref(
    p: &mut [f64],
    g: &[f64],
    m: &mut [f64],
    v: &mut [f64],
    step: u64,
    lr: f64,
    grad_scale: f64,
    c: AdamWConfig,
) -> f64 {
    let g: Vec<f64> = g.iter().map(|x| x * grad_scale).collect();
    let norm = g.iter().map(|x| x * x).sum::<f64>().sqrt();
    let clip = if c.max_grad_norm > 0.0 { (c.max_grad_norm as f64 / (norm + 1e-6)).min(1.0) } else { 1.0 };
    let (b1, b2) = (c.beta1 as f64, c.beta2 as f64);
    let bc1 = 1.0 - b1.powi(step as i32);
    let bc2 = (1.0 - b2.powi(step as i32)).sqrt();
    for i in 0..p.len() {
        let gi = g[i] * clip;
        m[i] = b1 * m[i] + (1.0 - b1) * gi;
        v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
        p[i] *= 1.0 - lr * c.weight_decay as f64;
        p[i] -= lr / bc1 * m[i] / (v[i].sqrt() / bc2 + c.eps as f64);
    }
    norm
}

/// The reference of [`adamw_once`]: steps 1, 2, … with one gradient each, from zero moments;
/// returns the parameters and the last step's gradient norm.
pub fn adamw_steps_ref(p0: &[f32], grads: &[Vec<f32>], lr: f64, grad_scale: f64, c: AdamWConfig) -> (Vec<f64>, f64) {
    let mut p = crate::numeric::f64s(p0);
    let (mut m, mut v) = (vec![0.0; p.len()], vec![0.0; p.len()]);
    let mut norm = 0.0;
    for (i, g) in grads.iter().enumerate() {
        norm = adamw_ref(&mut p, &crate::numeric::f64s(g), &mut m, &mut v, i as u64 + 1, lr, grad_scale, c);
    }
    (p, norm)
}

/// Runs one step per gradient (steps 1, 2, …) on the GPU from parameters `p0`; returns the
/// parameters and the last step's gradient norm.
pub async fn adamw_once(
    gpu: &Gpu,
    c: AdamWConfig,
    p0: &[f32],
    grads: &[Vec<f32>],
    lr: f32,
    grad_scale: f32,
) -> GpuResult<(Vec<f32>, f32)> {
    let opt = AdamW::new(gpu, p0.len(), c).await?;
    let pb = gpu.upload(OP, "parameters", p0)?;
    for (i, g) in grads.iter().enumerate() {
        let gb = gpu.upload(OP, "gradients", g)?;
        let mut b = gpu.batch(OP);
        opt.step(&mut b, &pb, &gb, i as u64 + 1, lr, grad_scale)?;
        b.submit().await?;
    }
    let stats = gpu.read::<f32>(OP, &opt.norm).await?;
    Ok((gpu.read::<f32>(OP, &pb).await?, stats[opt.norm_index()]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, f32s, rel_err};

    #[test]
    fn reference_first_step_moves_each_parameter_by_lr() {
        // At step 1 without decay or clipping, m̂/√v̂ = sign(g): every parameter moves by lr.
        let c = AdamWConfig { weight_decay: 0.0, max_grad_norm: 0.0, eps: 0.0, ..Default::default() };
        let (mut p, mut m, mut v) = (vec![1.0, -2.0], vec![0.0; 2], vec![0.0; 2]);
        adamw_ref(&mut p, &[0.3, -5.0], &mut m, &mut v, 1, 0.1, 1.0, c);
        assert!((p[0] - 0.9).abs() < 1e-12 && (p[1] + 1.9).abs() < 1e-12, "{p:?}");
    }

    #[test]
    fn gpu_steps_match_reference_with_clipping() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("adamw");
        for &(n, max_norm) in &[(5usize, 1.0f32), (3001, 1e9), (2500, 0.5)] {
            let c = AdamWConfig { max_grad_norm: max_norm, ..Default::default() };
            let p0 = testing::normal(&mut rng, n);
            let grads: Vec<Vec<f32>> = (0..3).map(|_| testing::normal(&mut rng, n)).collect();
            let (got, got_norm) = pollster::block_on(adamw_once(&gpu, c, &p0, &grads, 1e-2, 0.5)).unwrap();
            let (p, norm) = adamw_steps_ref(&p0, &grads, 1e-2, 0.5, c);
            assert!(rel_err(&got, &f32s(&p)) <= 1e-6, "n={n}: {:e}", rel_err(&got, &f32s(&p)));
            let got_norm = got_norm as f64;
            assert!((got_norm - norm).abs() <= 1e-5 * norm, "norm {got_norm} vs {norm}");
        }
    }
}

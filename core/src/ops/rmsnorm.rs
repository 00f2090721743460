//! RMSNorm (Llama/Qwen2): forward saving rstd per row, backward to input and weight.
//! WGSL: `shaders/rmsnorm.wgsl`, `shaders/rmsnorm_backward.wgsl`.

use std::sync::Arc;

use super::launch::{grid_1d, need, variant_1d};
use crate::gpu::{Access, Batch, Gpu, GpuBuffer, GpuResult, Kernel};
use crate::shaders::{Def, Variant};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    h: u32,
    eps: f32,
    stride_y: u32,
}

const OP: &str = "rmsnorm";

/// `rows`: one workgroup per row (GPU adapters); else one invocation per row (CPU adapters,
/// where barriers are expensive and rows are short work).
fn forward_variant(rows: bool) -> Variant {
    variant_1d("rmsnorm", if rows { "rmsnorm_forward_rows" } else { "rmsnorm_forward" }, vec![])
}
fn backward_variant(entry: &'static str, accumulate: bool) -> Variant {
    variant_1d("rmsnorm_backward", entry, vec![Def::Bool("ACCUMULATE", accumulate)])
}

pub fn specializations() -> Vec<Variant> {
    let mut v = vec![forward_variant(false), forward_variant(true)];
    for acc in [false, true] {
        v.push(backward_variant("rmsnorm_backward_input", acc));
        v.push(backward_variant("rmsnorm_backward_weight", acc));
    }
    v
}

/// RMSNorm over `rows` rows of `h` features.
pub struct RmsNorm {
    rows: usize,
    h: usize,
    eps: f32,
    forward: Arc<Kernel>,
    forward_rows: bool,
    backward_input: Arc<Kernel>,
    backward_weight: Arc<Kernel>,
}

impl RmsNorm {
    /// `accumulate`: the backward adds into dx and dw (residual streams, gradient accumulation).
    pub async fn new(gpu: &Gpu, rows: usize, h: usize, eps: f32, accumulate: bool) -> GpuResult<Self> {
        Self::with_forward(gpu, rows, h, eps, accumulate, !gpu.cpu_kernels()).await
    }

    /// With the forward kernel chosen (`forward_rows`: a workgroup per row); tests run both.
    pub async fn with_forward(
        gpu: &Gpu,
        rows: usize,
        h: usize,
        eps: f32,
        accumulate: bool,
        forward_rows: bool,
    ) -> GpuResult<Self> {
        use Access::*;
        Ok(RmsNorm {
            rows,
            h,
            eps,
            forward: gpu.kernel(&forward_variant(forward_rows), &[Read, Read, ReadWrite, ReadWrite]).await?,
            forward_rows,
            backward_input: gpu
                .kernel(&backward_variant("rmsnorm_backward_input", accumulate), &[Read, Read, Read, Read, ReadWrite])
                .await?,
            backward_weight: gpu
                .kernel(&backward_variant("rmsnorm_backward_weight", accumulate), &[Read, Read, Read, Read, ReadWrite])
                .await?,
        })
    }

    fn params(&self, gpu: &Gpu, n: usize) -> GpuResult<(Params, [u32; 3])> {
        let (groups, stride_y) = grid_1d(gpu, OP, n, super::launch::WG_1D)?;
        Ok((Params { rows: self.rows as u32, h: self.h as u32, eps: self.eps, stride_y }, groups))
    }

    /// y = w ⊙ x·rstd; rstd [rows] saved for the backward.
    pub fn forward(
        &self,
        b: &mut Batch,
        x: &GpuBuffer,
        w: &GpuBuffer,
        y: &GpuBuffer,
        rstd: &GpuBuffer,
    ) -> GpuResult<()> {
        let (rows, h) = (self.rows, self.h);
        need(OP, "x", x, rows * h)?;
        need(OP, "w", w, h)?;
        need(OP, "y", y, rows * h)?;
        need(OP, "rstd", rstd, rows)?;
        // The per-row kernel reads its row from the workgroup index: a grid of rows · WG.
        let invocations = if self.forward_rows { rows * super::launch::WG_1D as usize } else { rows };
        let (params, groups) = self.params(b.gpu(), invocations)?;
        b.dispatch(&self.forward, &params, &[x, w, y, rstd], groups);
        Ok(())
    }

    /// dx (+)= ∂/∂x, and dw (+)= ∂/∂w when `dw` is given.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        b: &mut Batch,
        x: &GpuBuffer,
        w: &GpuBuffer,
        rstd: &GpuBuffer,
        dy: &GpuBuffer,
        dx: &GpuBuffer,
        dw: Option<&GpuBuffer>,
    ) -> GpuResult<()> {
        let (rows, h) = (self.rows, self.h);
        need(OP, "dy", dy, rows * h)?;
        need(OP, "dx", dx, rows * h)?;
        need(OP, "rstd", rstd, rows)?;
        let (params, groups) = self.params(b.gpu(), rows)?;
        b.dispatch(&self.backward_input, &params, &[x, w, rstd, dy, dx], groups);
        if let Some(dw) = dw {
            need(OP, "dw", dw, h)?;
            let (params, groups) = self.params(b.gpu(), h)?;
            b.dispatch(&self.backward_weight, &params, &[x, w, rstd, dy, dw], groups);
        }
        Ok(())
    }
}

/// CPU reference: (y, rstd).
pub fn rmsnorm_ref(x: &[f64], w: &[f64], rows: usize, h: usize, eps: f64) -> (Vec<f64>, Vec<f64>) {
    let mut y = vec![0.0; rows * h];
    let mut rstd = vec![0.0; rows];
    for r in 0..rows {
        let xr = &x[r * h..(r + 1) * h];
        let rs = 1.0 / (xr.iter().map(|v| v * v).sum::<f64>() / h as f64 + eps).sqrt();
        rstd[r] = rs;
        for j in 0..h {
            y[r * h + j] = w[j] * xr[j] * rs;
        }
    }
    (y, rstd)
}

/// CPU reference of the backward: (dx, dw).
pub fn rmsnorm_backward_ref(x: &[f64], w: &[f64], dy: &[f64], rows: usize, h: usize, eps: f64) -> (Vec<f64>, Vec<f64>) {
    let (_, rstd) = rmsnorm_ref(x, w, rows, h, eps);
    let mut dx = vec![0.0; rows * h];
    let mut dw = vec![0.0; h];
    for r in 0..rows {
        let rs = rstd[r];
        let mean_dot = (0..h).map(|j| dy[r * h + j] * w[j] * x[r * h + j] * rs).sum::<f64>() / h as f64;
        for j in 0..h {
            let i = r * h + j;
            dx[i] = rs * (dy[i] * w[j] - x[i] * rs * mean_dot);
            dw[j] += dy[i] * x[i] * rs;
        }
    }
    (dx, dw)
}

/// Runs `op`'s forward and backward once on fresh buffers and reads `[y, rstd, dx, dw]`.
/// `grads0`: what an accumulating op adds to (dx, dw); without it they start as NaN, so every
/// element must be written.
pub async fn rmsnorm_once(
    gpu: &Gpu,
    op: &RmsNorm,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    grads0: Option<(&[f32], &[f32])>,
) -> GpuResult<[Vec<f32>; 4]> {
    let (rows, h) = (op.rows, op.h);
    let up = |what: &str, v: &[f32]| gpu.upload(OP, what, v);
    let (xb, wb, dyb) = (up("x", x)?, up("w", w)?, up("dy", dy)?);
    let yb = up("y", &vec![f32::NAN; rows * h])?;
    let rb = up("rstd", &vec![f32::NAN; rows])?;
    let (dxb, dwb) = match grads0 {
        Some((dx0, dw0)) => (up("dx", dx0)?, up("dw", dw0)?),
        None => (up("dx", &vec![f32::NAN; rows * h])?, up("dw", &vec![f32::NAN; h])?),
    };
    let mut b = gpu.batch(OP);
    op.forward(&mut b, &xb, &wb, &yb, &rb)?;
    op.backward(&mut b, &xb, &wb, &rb, &dyb, &dxb, Some(&dwb))?;
    b.submit().await?;
    let mut out = Vec::with_capacity(4);
    for buf in [&yb, &rb, &dxb, &dwb] {
        out.push(gpu.read::<f32>(OP, buf).await?);
    }
    Ok(out.try_into().expect("four outputs"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, f32s, f64s, fd_grad, rel_err, rel_err64};

    #[test]
    fn backward_reference_matches_finite_differences() {
        let mut rng = testing::rng("rmsnorm fd");
        let (rows, h, eps) = (3, 7, 1e-5);
        let x = f64s(&testing::normal(&mut rng, rows * h));
        let w = f64s(&testing::normal(&mut rng, h));
        let dy = f64s(&testing::normal(&mut rng, rows * h));
        let loss = |x: &[f64], w: &[f64]| rmsnorm_ref(x, w, rows, h, eps).0.iter().zip(&dy).map(|(a, b)| a * b).sum();
        let (dx, dw) = rmsnorm_backward_ref(&x, &w, &dy, rows, h, eps);
        assert!(rel_err64(&dx, &fd_grad(&|x| loss(x, &w), &x)) < 1e-6);
        assert!(rel_err64(&dw, &fd_grad(&|w| loss(&x, w), &w)) < 1e-6);
    }

    #[test]
    fn gpu_matches_reference() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("rmsnorm gpu");
        for &(rows, h) in &[(1, 5), (7, 67), (130, 200), (3, 577)] {
            for (accumulate, forward_rows) in [(false, false), (true, false), (false, true), (true, true)] {
                let eps = 1e-6;
                let x = testing::normal(&mut rng, rows * h);
                let w = testing::normal(&mut rng, h);
                let dy = testing::normal(&mut rng, rows * h);
                let dx0 = testing::normal(&mut rng, rows * h);
                let dw0 = testing::normal(&mut rng, h);
                let op =
                    pollster::block_on(RmsNorm::with_forward(&gpu, rows, h, eps, accumulate, forward_rows)).unwrap();
                let grads0 = accumulate.then_some((&dx0[..], &dw0[..]));
                let [gy, grstd, gdx, gdw] = pollster::block_on(rmsnorm_once(&gpu, &op, &x, &w, &dy, grads0)).unwrap();
                let (y, rstd) = rmsnorm_ref(&f64s(&x), &f64s(&w), rows, h, eps as f64);
                let (mut dx, mut dw) = rmsnorm_backward_ref(&f64s(&x), &f64s(&w), &f64s(&dy), rows, h, eps as f64);
                if accumulate {
                    dx.iter_mut().zip(&dx0).for_each(|(a, b)| *a += *b as f64);
                    dw.iter_mut().zip(&dw0).for_each(|(a, b)| *a += *b as f64);
                }
                for (name, got, want) in [("y", gy, y), ("rstd", grstd, rstd), ("dx", gdx, dx), ("dw", gdw, dw)] {
                    let err = rel_err(&got, &f32s(&want));
                    assert!(
                        err <= 1e-5,
                        "rows={rows} h={h} acc={accumulate} rows-kernel={forward_rows} {name}: {err:e}"
                    );
                }
            }
        }
    }
}

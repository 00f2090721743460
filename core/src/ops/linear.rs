//! Linear layers as Hugging Face stores them: `y = x·Wᵀ (+ b)`, W `[out, in]` row-major, as
//! products of `ops::matmul`:
//! - forward `y[rows, out] = x[rows, in] · Wᵀ` (B transposed; W may be f16/bf16 packed);
//! - backward to the input `dx[rows, in] (+)= dy[rows, out] · W` (all a frozen layer needs);
//! - backward to the weight `dW[out, in] (+)= dyᵀ · x` (what LoRA factors need).

use crate::dtype::{self, Dtype};
use crate::gpu::{Batch, Gpu, GpuBuffer, GpuResult};
use crate::ops::matmul::{Matmul, MatmulShape, MatmulSpec, Operand};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearShape {
    pub rows: usize,
    pub inp: usize,
    pub out: usize,
}

impl LinearShape {
    pub fn flops(&self) -> f64 {
        2.0 * self.rows as f64 * self.inp as f64 * self.out as f64
    }
}

/// `y = x·Wᵀ (+ bias)`, or `y += …` when `accumulate`.
pub struct LinearForward(Matmul, LinearShape);

impl LinearForward {
    pub async fn new(
        gpu: &Gpu,
        shape: LinearShape,
        w_dtype: Dtype,
        has_bias: bool,
        accumulate: bool,
    ) -> GpuResult<Self> {
        let spec = MatmulSpec { trans_a: false, trans_b: true, has_bias, accumulate, b_dtype: w_dtype };
        Ok(LinearForward(Matmul::new(gpu, spec, MatmulShape::new(shape.rows, shape.out, shape.inp)).await?, shape))
    }
    pub fn record(
        &self,
        b: &mut Batch,
        x: &GpuBuffer,
        w: &GpuBuffer,
        bias: Option<&GpuBuffer>,
        y: &GpuBuffer,
    ) -> GpuResult<()> {
        let s = self.1;
        self.0.record(b, Operand::dense(x, s.inp), Operand::dense(w, s.inp), bias, Operand::dense(y, s.out), 1.0)
    }
}

/// `dx = dy·W`, or `dx += dy·W` when `accumulate` (inputs shared by several layers, e.g. q/k/v).
pub struct LinearBackwardInput(Matmul, LinearShape);

impl LinearBackwardInput {
    pub async fn new(gpu: &Gpu, shape: LinearShape, w_dtype: Dtype, accumulate: bool) -> GpuResult<Self> {
        let spec = MatmulSpec { trans_a: false, trans_b: false, has_bias: false, accumulate, b_dtype: w_dtype };
        Ok(LinearBackwardInput(
            Matmul::new(gpu, spec, MatmulShape::new(shape.rows, shape.inp, shape.out)).await?,
            shape,
        ))
    }
    pub fn record(&self, b: &mut Batch, dy: &GpuBuffer, w: &GpuBuffer, dx: &GpuBuffer) -> GpuResult<()> {
        let s = self.1;
        self.0.record(b, Operand::dense(dy, s.out), Operand::dense(w, s.inp), None, Operand::dense(dx, s.inp), 1.0)
    }
}

/// `dW = scale·dyᵀ·x`, or `dW += …` when `accumulate` (gradient accumulation).
pub struct LinearBackwardWeight(Matmul, LinearShape);

impl LinearBackwardWeight {
    pub async fn new(gpu: &Gpu, shape: LinearShape, accumulate: bool) -> GpuResult<Self> {
        let spec = MatmulSpec { trans_a: true, trans_b: false, has_bias: false, accumulate, b_dtype: Dtype::F32 };
        Ok(LinearBackwardWeight(
            Matmul::new(gpu, spec, MatmulShape::new(shape.out, shape.inp, shape.rows)).await?,
            shape,
        ))
    }
    pub fn record(&self, b: &mut Batch, dy: &GpuBuffer, x: &GpuBuffer, dw: &GpuBuffer, scale: f32) -> GpuResult<()> {
        let s = self.1;
        self.0.record(b, Operand::dense(dy, s.out), Operand::dense(x, s.inp), None, Operand::dense(dw, s.inp), scale)
    }
}

/// CPU reference of the forward, accumulating in f64.
pub fn linear_forward_ref(x: &[f32], w: &[f32], bias: Option<&[f32]>, s: LinearShape) -> Vec<f32> {
    let mut y = vec![0f32; s.rows * s.out];
    for r in 0..s.rows {
        let xr = &x[r * s.inp..(r + 1) * s.inp];
        for c in 0..s.out {
            let wr = &w[c * s.inp..(c + 1) * s.inp];
            let acc: f64 = xr.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>();
            y[r * s.out + c] = (acc + bias.map_or(0.0, |b| b[c] as f64)) as f32;
        }
    }
    y
}

/// CPU reference of both backward products: `(dx, dW)` for `dy`.
pub fn linear_backward_ref(x: &[f32], w: &[f32], dy: &[f32], s: LinearShape) -> (Vec<f32>, Vec<f32>) {
    let mut dx = vec![0f64; s.rows * s.inp];
    let mut dw = vec![0f64; s.out * s.inp];
    for r in 0..s.rows {
        for o in 0..s.out {
            let g = dy[r * s.out + o] as f64;
            for i in 0..s.inp {
                dx[r * s.inp + i] += g * w[o * s.inp + i] as f64;
                dw[o * s.inp + i] += g * x[r * s.inp + i] as f64;
            }
        }
    }
    (dx.into_iter().map(|v| v as f32).collect(), dw.into_iter().map(|v| v as f32).collect())
}

/// Runs one linear forward on fresh buffers and reads the result (self-checks, demos).
pub async fn linear_forward_once(
    gpu: &Gpu,
    x: &[f32],
    w: &[f32],
    w_dtype: Dtype,
    bias: Option<&[f32]>,
    shape: LinearShape,
) -> GpuResult<Vec<f32>> {
    const OP: &str = "linear forward";
    let op = LinearForward::new(gpu, shape, w_dtype, bias.is_some(), false).await?;
    let xb = gpu.upload(OP, "x", x)?;
    let wb = gpu.upload(OP, "W", &dtype::pack(w_dtype, w))?;
    let bb = bias.map(|b| gpu.upload(OP, "bias", b)).transpose()?;
    let yb = gpu.storage(OP, "y", (shape.rows * shape.out * 4) as u64)?;
    gpu.fill_f32(&yb, f32::NAN); // poisoned: every element must be written
    let mut batch = gpu.batch(OP);
    op.record(&mut batch, &xb, &wb, bb.as_ref(), &yb)?;
    batch.submit().await?;
    gpu.read::<f32>(OP, &yb).await
}

/// Runs both backward products on fresh buffers (outputs poisoned with NaN) and reads `(dx, dW)`.
pub async fn linear_backward_once(
    gpu: &Gpu,
    x: &[f32],
    w: &[f32],
    w_dtype: Dtype,
    dy: &[f32],
    shape: LinearShape,
) -> GpuResult<(Vec<f32>, Vec<f32>)> {
    const OP: &str = "linear backward";
    let bwd_in = LinearBackwardInput::new(gpu, shape, w_dtype, false).await?;
    let bwd_w = LinearBackwardWeight::new(gpu, shape, false).await?;
    let xb = gpu.upload(OP, "x", x)?;
    let wb = gpu.upload(OP, "W", &dtype::pack(w_dtype, w))?;
    let dyb = gpu.upload(OP, "dy", dy)?;
    let dxb = gpu.storage(OP, "dx", (shape.rows * shape.inp * 4) as u64)?;
    let dwb = gpu.storage(OP, "dW", (shape.out * shape.inp * 4) as u64)?;
    gpu.fill_f32(&dxb, f32::NAN);
    gpu.fill_f32(&dwb, f32::NAN);
    let mut batch = gpu.batch(OP);
    bwd_in.record(&mut batch, &dyb, &wb, &dxb)?;
    bwd_w.record(&mut batch, &dyb, &xb, &dwb, 1.0)?;
    batch.submit().await?;
    Ok((gpu.read::<f32>(OP, &dxb).await?, gpu.read::<f32>(OP, &dwb).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, rel_err};

    #[test]
    fn reference_matches_a_hand_computed_case() {
        // x = [[1, 2]], W = [[3, 4], [5, 6], [7, 8]], b = [1, 0, -1]
        let s = LinearShape { rows: 1, inp: 2, out: 3 };
        let y = linear_forward_ref(&[1., 2.], &[3., 4., 5., 6., 7., 8.], Some(&[1., 0., -1.]), s);
        assert_eq!(y, vec![12., 17., 22.]);
    }

    #[test]
    fn backward_reference_matches_finite_differences() {
        let mut rng = testing::rng("linear backward fd");
        let s = LinearShape { rows: 3, inp: 5, out: 4 };
        let x: Vec<f32> = testing::normal(&mut rng, 15);
        let w: Vec<f32> = testing::normal(&mut rng, 20);
        let dy: Vec<f32> = testing::normal(&mut rng, 12);
        // loss = Σ dy ⊙ y, so ∂loss/∂x = dx and ∂loss/∂W = dW.
        let loss = |x: &[f32], w: &[f32]| -> f64 {
            linear_forward_ref(x, w, None, s).iter().zip(&dy).map(|(&y, &g)| y as f64 * g as f64).sum()
        };
        let (dx, dw) = linear_backward_ref(&x, &w, &dy, s);
        for i in 0..x.len() {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += 1e-2;
            xm[i] -= 1e-2;
            let num = (loss(&xp, &w) - loss(&xm, &w)) / 2e-2;
            assert!((num - dx[i] as f64).abs() <= 1e-3 * (1.0 + num.abs()), "dx[{i}]: fd {num} vs {}", dx[i]);
        }
        for i in 0..w.len() {
            let (mut wp, mut wm) = (w.clone(), w.clone());
            wp[i] += 1e-2;
            wm[i] -= 1e-2;
            let num = (loss(&x, &wp) - loss(&x, &wm)) / 2e-2;
            assert!((num - dw[i] as f64).abs() <= 1e-3 * (1.0 + num.abs()), "dW[{i}]: fd {num} vs {}", dw[i]);
        }
    }

    #[test]
    fn forward_and_backward_match_the_reference_for_every_weight_dtype() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("linear fwd/bwd");
        for w_dtype in Dtype::ALL {
            for &(rows, inp, out) in &[(1, 61, 77), (5, 96, 130), (33, 129, 67)] {
                let s = LinearShape { rows, inp: w_dtype.whole_blocks(inp), out };
                let inp = s.inp;
                let x = testing::normal(&mut rng, rows * inp);
                let w = dtype::round_trip(w_dtype, &testing::normal(&mut rng, out * inp));
                let bias = testing::normal(&mut rng, out);
                let dy = testing::normal(&mut rng, rows * out);
                let got = pollster::block_on(linear_forward_once(&gpu, &x, &w, w_dtype, Some(&bias), s)).unwrap();
                let err = rel_err(&got, &linear_forward_ref(&x, &w, Some(&bias), s));
                assert!(err <= 1e-5, "{w_dtype:?} {s:?} forward: {err:e}");

                let (dx, dw) = pollster::block_on(linear_backward_once(&gpu, &x, &w, w_dtype, &dy, s)).unwrap();
                let (dx_want, dw_want) = linear_backward_ref(&x, &w, &dy, s);
                assert!(rel_err(&dx, &dx_want) <= 1e-5, "{w_dtype:?} {s:?} dx: {:e}", rel_err(&dx, &dx_want));
                assert!(rel_err(&dw, &dw_want) <= 1e-5, "{s:?} dW: {:e}", rel_err(&dw, &dw_want));
            }
        }
    }
}

//! The matmul family: linear layers (x·Wᵀ with f32/f16/bf16 weights, the backward to the input
//! and the weight gradient) and the LoRA products, each as the adapter's production path
//! prepares it (`Matmul::new`): 4-aligned shapes take the vec4 (or, on GPUs, split-K) kernels,
//! ragged ones the general kernel.

use super::{Checker, rng};
use crate::dtype::{self, Dtype};
use crate::gpu::{Gpu, GpuResult};
use crate::numeric::normal;
use crate::ops::linear::{
    LinearShape, linear_backward_once, linear_backward_ref, linear_forward_once, linear_forward_ref,
};
use crate::ops::matmul::{HostOperand, HostProduct, Matmul, MatmulShape, MatmulSpec};

/// f32 products accumulated in f32 against an f64 reference at these depths (≤ 132 terms): the
/// kernel tests' bound.
const BOUND: f64 = 1e-5;

/// The bound for the products this device prepares.
fn bound(gpu: &Gpu) -> f64 {
    super::product_bound(gpu, BOUND)
}

pub(super) async fn check(gpu: &Gpu, c: &mut Checker) -> GpuResult<()> {
    let mut rng = rng("matmul");
    // (rows, in, out, weight type): aligned shapes (the fast paths, split-K for ≤ 8 rows on GPUs)
    // for every weight type, and one ragged shape for the general kernel.
    let linears = [
        (5, 96, 132, Dtype::F32),
        (3, 61, 77, Dtype::F32),
        (9, 64, 36, Dtype::F16),
        (8, 128, 40, Dtype::Bf16),
        (7, 64, 45, Dtype::Q4),
        (4, 96, 50, Dtype::Q8),
    ];
    for (i, (rows, inp, out, w_dtype)) in linears.into_iter().enumerate() {
        let s = LinearShape { rows, inp, out };
        let x = normal(&mut rng, rows * inp);
        let w = dtype::round_trip(w_dtype, &normal(&mut rng, out * inp));
        let bias = normal(&mut rng, out);
        let dy = normal(&mut rng, rows * out);
        let bias = (i % 2 == 0).then_some(&bias[..]);
        let name = format!("{rows}x{inp}->{out} W {w_dtype:?}{}", if bias.is_some() { " +bias" } else { "" });
        let y = linear_forward_once(gpu, &x, &w, w_dtype, bias, s).await?;
        c.close("linear x·Wᵀ", name.clone(), y, &linear_forward_ref(&x, &w, bias, s), bound(gpu));
        let (dx, dw) = linear_backward_once(gpu, &x, &w, w_dtype, &dy, s).await?;
        let (dx_want, dw_want) = linear_backward_ref(&x, &w, &dy, s);
        c.close("linear dx = dy·W", name.clone(), dx, &dx_want, bound(gpu));
        c.close("linear dW = dyᵀ·x", name, dw, &dw_want, bound(gpu));
    }
    lora(gpu, c, &mut rng).await
}

/// The products of one LoRA projection (`train::backprop`, `train::adapter_view`): factors at offsets
/// inside the flat parameter buffer, the `alpha / r` scale, accumulation into outputs.
async fn lora(gpu: &Gpu, c: &mut Checker, rng: &mut rand::rngs::StdRng) -> GpuResult<()> {
    let (rows, inp, out, r) = (5usize, 96usize, 132usize, 8usize);
    let scale = 16.0 / r as f32;
    let nt = |accumulate| MatmulSpec { trans_b: true, accumulate, ..MatmulSpec::plain() };
    let nn = |accumulate| MatmulSpec { accumulate, ..MatmulSpec::plain() };
    let tn = |accumulate| MatmulSpec { trans_a: true, accumulate, ..MatmulSpec::plain() };
    // (what, spec, (m, n, k), offsets of A, B, C in their buffers, alpha)
    let products = [
        ("LoRA t = x·Aᵀ", nt(false), (rows, r, inp), [0, 4, 0], 1.0),
        ("LoRA y += s·t·Bᵀ", nt(true), (rows, out, r), [0, 8, 0], scale),
        ("LoRA dB += s·dyᵀ·t", tn(true), (out, r, rows), [0, 0, 8], scale),
        ("LoRA dt = s·dy·B", nn(false), (rows, r, out), [0, 8, 0], scale),
        ("LoRA dA += dtᵀ·x", tn(true), (r, inp, rows), [0, 0, 4], 1.0),
        ("LoRA dx += dt·A", nn(true), (rows, inp, r), [0, 4, 0], 1.0),
        ("LoRA merge W += s·B·A", nn(true), (out, inp, r), [8, 4, 0], scale),
    ];
    for (what, spec, (m, n, k), [a_off, b_off, c_off], alpha) in products {
        let shape = MatmulShape::new(m, n, k);
        let op = Matmul::new(gpu, spec, shape).await?;
        let (a_rows, a_cols) = if spec.trans_a { (k, m) } else { (m, k) };
        let (b_rows, b_cols) = if spec.trans_b { (n, k) } else { (k, n) };
        let dense = |off: usize, cols: usize| HostOperand { off, ld: cols, batch_stride: 0 };
        let (ao, bo, co) = (dense(a_off, a_cols), dense(b_off, b_cols), dense(c_off, n));
        let a = normal(rng, a_off + a_rows * a_cols);
        let b = normal(rng, b_off + b_rows * b_cols);
        let c0 = normal(rng, c_off + m * n);
        let product = HostProduct { a: &a, ao, b: &b, bo, bias: None, c: &c0, co, alpha };
        let got = product.run(gpu, &op).await?;
        c.close(what, format!("m={m} n={n} k={k}"), got, &product.reference(&op), bound(gpu));
    }
    Ok(())
}

//! A GPU self-check: real kernels on deterministic inputs compared with their CPU references.
//! The same code runs natively (`convrec devices --check`) and in the browser page, so a user can
//! tell at once whether an adapter computes correctly.

use rand::SeedableRng;
use serde::Serialize;

use crate::dtype::{self, Dtype};
use crate::gpu::{AdapterSummary, Gpu, GpuResult};
use crate::ops::linear::{LinearShape, linear_forward_once, linear_forward_ref};

/// Relative error bound for f32 kernels against an f64-accumulated reference.
pub const F32_TOLERANCE: f64 = 1e-5;

#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    pub op: String,
    pub shape: String,
    pub rel_err: f64,
    pub pass: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct SelfCheckReport {
    pub adapter: AdapterSummary,
    pub cases: Vec<CaseResult>,
    pub pass: bool,
}

/// Runs linear forward at shapes that are not tile multiples, with and without bias.
pub async fn run(gpu: &Gpu) -> GpuResult<SelfCheckReport> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_c0de);
    let mut cases = Vec::new();
    let shapes = [
        (1, 61, 77, false, Dtype::F32),
        (5, 96, 130, true, Dtype::F32),
        (33, 129, 67, true, Dtype::Bf16),
        (70, 45, 576 + 3, false, Dtype::F16),
    ];
    for (rows, inp, out, bias, w_dtype) in shapes {
        let shape = LinearShape { rows, inp, out };
        let x = uniform(&mut rng, rows * inp);
        let w = dtype::round_trip(w_dtype, &uniform(&mut rng, out * inp));
        let b = uniform(&mut rng, out);
        let bias = bias.then_some(&b[..]);
        let got = linear_forward_once(gpu, &x, &w, w_dtype, bias, shape).await?;
        let want = linear_forward_ref(&x, &w, bias, shape);
        let rel_err = crate::numeric::rel_err(&got, &want);
        cases.push(CaseResult {
            op: "linear_forward".into(),
            shape: format!("{rows}x{inp}->{out} W {w_dtype:?} bias={}", bias.is_some()),
            rel_err,
            pass: rel_err <= F32_TOLERANCE,
        });
    }
    let pass = cases.iter().all(|c| c.pass);
    Ok(SelfCheckReport { adapter: gpu.summary().clone(), cases, pass })
}

fn uniform(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<f32> {
    use rand::Rng;
    (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
}

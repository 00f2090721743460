//! Linear layers as Hugging Face stores them: `y = x·Wᵀ (+ b)`, W `[out, in]` row-major.
//! WGSL: `shaders/linear.wgsl`. CPU reference and tests below.

use std::sync::Arc;

use crate::gpu::{Access, Batch, Gpu, GpuBuffer, GpuError, GpuResult, Kernel};
use crate::shaders::{Def, Variant};

/// `y[m, n] = x[m, k] · w[n, k]ᵀ (+ bias[n])`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

impl LinearShape {
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }
}

/// Per-invocation register block and workgroup shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tiling {
    pub tm: u32,
    pub tn: u32,
    pub wg_m: u32,
    pub wg_n: u32,
}

impl Tiling {
    /// CPU adapters: large register blocks, no workgroup memory (see PERF_NOTES in the docs).
    pub const CPU: Tiling = Tiling { tm: 8, tn: 8, wg_m: 8, wg_n: 8 };
    /// Real GPUs: small blocks, many invocations.
    pub const GPU: Tiling = Tiling { tm: 4, tn: 4, wg_m: 16, wg_n: 16 };

    /// The tiling for an adapter and a row count: few rows (decode) shrink the row block so no
    /// work is wasted on rows that do not exist.
    pub fn choose(cpu_adapter: bool, m: usize) -> Tiling {
        let base = if cpu_adapter { Tiling::CPU } else { Tiling::GPU };
        let tm = (m.max(1).next_power_of_two() as u32).min(base.tm);
        Tiling { tm, ..base }
    }

    /// Every tiling `choose` can return.
    pub fn all() -> Vec<Tiling> {
        let mut out = Vec::new();
        for base in [Tiling::CPU, Tiling::GPU] {
            let mut tm = 1;
            while tm <= base.tm {
                out.push(Tiling { tm, ..base });
                tm *= 2;
            }
        }
        out
    }
}

const BINDINGS: [Access; 4] = [Access::Read, Access::Read, Access::Read, Access::ReadWrite];

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    _pad: u32,
}

pub fn variant(tiling: Tiling, has_bias: bool) -> Variant {
    Variant {
        shader: "linear",
        entry: "linear_forward",
        defs: vec![
            Def::U32("TM", tiling.tm),
            Def::U32("TN", tiling.tn),
            Def::U32("WG_M", tiling.wg_m),
            Def::U32("WG_N", tiling.wg_n),
            Def::Bool("HAS_BIAS", has_bias),
        ],
    }
}

/// Every specialisation this module can compile.
pub fn specializations() -> Vec<Variant> {
    Tiling::all().into_iter().flat_map(|t| [variant(t, false), variant(t, true)]).collect()
}

/// A prepared linear forward for one shape: compile once, record every step.
pub struct LinearForward {
    kernel: Arc<Kernel>,
    shape: LinearShape,
    tiling: Tiling,
    has_bias: bool,
    groups: [u32; 3],
}

const OP: &str = "linear forward";

impl LinearForward {
    pub async fn new(gpu: &Gpu, shape: LinearShape, has_bias: bool) -> GpuResult<Self> {
        Self::with_tiling(gpu, shape, has_bias, Tiling::choose(gpu.summary().is_cpu(), shape.m)).await
    }

    pub async fn with_tiling(gpu: &Gpu, shape: LinearShape, has_bias: bool, tiling: Tiling) -> GpuResult<Self> {
        let LinearShape { m, n, k } = shape;
        if m == 0 || n == 0 || k == 0 {
            return Err(GpuError::shape(OP, format!("empty shape m={m} n={n} k={k}")));
        }
        for (what, elems) in [("x", m * k), ("W", n * k), ("y", m * n)] {
            gpu.check_binding_size(OP, &format!("{what} of shape m={m} n={n} k={k}"), elems as u64 * 4)?;
        }
        let groups = gpu.check_workgroups(
            OP,
            &format!("m={m} n={n} k={k}"),
            [
                (n as u64).div_ceil(tiling.tn as u64 * tiling.wg_n as u64),
                (m as u64).div_ceil(tiling.tm as u64 * tiling.wg_m as u64),
                1,
            ],
        )?;
        let kernel = gpu.kernel(&variant(tiling, has_bias), &BINDINGS).await?;
        Ok(LinearForward { kernel, shape, tiling, has_bias, groups })
    }

    pub fn tiling(&self) -> Tiling {
        self.tiling
    }

    /// Records `y = x·Wᵀ (+ bias)`; checks that every buffer is large enough for the shape.
    pub fn record(
        &self,
        batch: &mut Batch,
        x: &GpuBuffer,
        w: &GpuBuffer,
        bias: Option<&GpuBuffer>,
        y: &GpuBuffer,
    ) -> GpuResult<()> {
        let LinearShape { m, n, k } = self.shape;
        let need = |what: &str, buf: &GpuBuffer, elems: usize| -> GpuResult<()> {
            if buf.len_bytes() < elems as u64 * 4 {
                return Err(GpuError::shape(
                    OP,
                    format!("{what} holds {} f32 but shape m={m} n={n} k={k} needs {elems}", buf.len_bytes() / 4),
                ));
            }
            Ok(())
        };
        need("x", x, m * k)?;
        need("W", w, n * k)?;
        need("y", y, m * n)?;
        let bias = match (bias, self.has_bias) {
            (Some(b), true) => {
                need("bias", b, n)?;
                b
            }
            (None, false) => x, // never read: HAS_BIAS is false
            (Some(_), false) => {
                return Err(GpuError::shape(OP, "a bias was given to a kernel prepared without one"));
            }
            (None, true) => {
                return Err(GpuError::shape(OP, "the kernel was prepared with a bias but none was given"));
            }
        };
        let params = Params { m: m as u32, n: n as u32, k: k as u32, _pad: 0 };
        batch.dispatch(&self.kernel, &params, &[x, w, bias, y], self.groups);
        Ok(())
    }
}

/// CPU reference, accumulating in f64.
pub fn linear_forward_ref(x: &[f32], w: &[f32], bias: Option<&[f32]>, shape: LinearShape) -> Vec<f32> {
    let LinearShape { m, n, k } = shape;
    let mut y = vec![0f32; m * n];
    for r in 0..m {
        let xr = &x[r * k..(r + 1) * k];
        for c in 0..n {
            let wr = &w[c * k..(c + 1) * k];
            let mut acc: f64 = xr.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum();
            if let Some(b) = bias {
                acc += b[c] as f64;
            }
            y[r * n + c] = acc as f32;
        }
    }
    y
}

/// Runs one linear forward on fresh buffers and reads the result (tests, self-checks, demos).
pub async fn linear_forward_once(
    gpu: &Gpu,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    shape: LinearShape,
    tiling: Option<Tiling>,
) -> GpuResult<Vec<f32>> {
    let op = match tiling {
        Some(t) => LinearForward::with_tiling(gpu, shape, bias.is_some(), t).await?,
        None => LinearForward::new(gpu, shape, bias.is_some()).await?,
    };
    let xb = gpu.upload(OP, "x", x)?;
    let wb = gpu.upload(OP, "W", w)?;
    let bb = bias.map(|b| gpu.upload(OP, "bias", b)).transpose()?;
    let yb = gpu.storage(OP, "y", (shape.m * shape.n * 4) as u64)?;
    gpu.fill_f32(&yb, f32::NAN); // poisoned: every element must be written
    let mut batch = gpu.batch(OP);
    op.record(&mut batch, &xb, &wb, bb.as_ref(), &yb)?;
    batch.submit().await?;
    gpu.read::<f32>(OP, &yb).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, rel_err};

    #[test]
    fn reference_matches_a_hand_computed_case() {
        // x = [[1, 2]], W = [[3, 4], [5, 6], [7, 8]], b = [1, 0, -1]
        let y = linear_forward_ref(
            &[1., 2.],
            &[3., 4., 5., 6., 7., 8.],
            Some(&[1., 0., -1.]),
            LinearShape { m: 1, n: 3, k: 2 },
        );
        assert_eq!(y, vec![12., 17., 22.]);
    }

    #[test]
    fn gpu_matches_reference_at_awkward_sizes_for_every_tiling() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("linear_forward");
        let shapes = [(1, 1, 1), (1, 37, 19), (3, 70, 33), (7, 129, 65), (9, 66, 131), (67, 45, 100), (130, 200, 3)];
        for tiling in Tiling::all() {
            for &(m, n, k) in &shapes {
                for has_bias in [false, true] {
                    let shape = LinearShape { m, n, k };
                    let x = testing::normal(&mut rng, m * k);
                    let w = testing::normal(&mut rng, n * k);
                    let b = testing::normal(&mut rng, n);
                    let bias = has_bias.then_some(&b[..]);
                    let got = pollster::block_on(linear_forward_once(&gpu, &x, &w, bias, shape, Some(tiling)))
                        .expect("linear forward");
                    let want = linear_forward_ref(&x, &w, bias, shape);
                    let err = rel_err(&got, &want);
                    assert!(
                        err <= 1e-5,
                        "{tiling:?} m={m} n={n} k={k} bias={has_bias}: ‖gpu−ref‖/‖ref‖ = {err:e} > 1e-5"
                    );
                }
            }
        }
    }

    #[test]
    fn too_small_buffers_are_an_error_not_a_wrong_answer() {
        let Some(gpu) = testing::gpu() else { return };
        let shape = LinearShape { m: 4, n: 4, k: 4 };
        let op = pollster::block_on(LinearForward::new(&gpu, shape, false)).unwrap();
        let small = gpu.storage("test", "small", 8).unwrap();
        let ok = gpu.storage("test", "ok", 64).unwrap();
        let mut batch = gpu.batch("test");
        let err = op.record(&mut batch, &small, &ok, None, &ok).unwrap_err();
        assert!(err.to_string().contains("x holds 2 f32"), "{err}");
    }

    #[test]
    fn shapes_past_the_workgroup_limit_are_refused_with_sizes() {
        let Some(gpu) = testing::gpu() else { return };
        let limit = gpu.limits().max_compute_workgroups_per_dimension as usize;
        let tiling = Tiling { tm: 1, tn: 1, wg_m: 1, wg_n: 1 };
        let shape = LinearShape { m: 1, n: limit + 1, k: 1 };
        let err =
            pollster::block_on(LinearForward::with_tiling(&gpu, shape, false, tiling)).err().expect("must be refused");
        assert!(matches!(err, GpuError::TooManyWorkgroups { .. }), "{err}");
        assert!(err.to_string().contains(&format!("{}", limit + 1)), "{err}");
    }
}

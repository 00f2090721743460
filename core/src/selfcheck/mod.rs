//! The GPU self-check: every kernel family, forward and backward, run on small deterministic
//! inputs at sizes that are not tile multiples and compared with its CPU reference. The same code
//! runs natively (`convrec devices --check`, the demo's first stage) and in the browser page, so a
//! user learns at once whether an adapter (or a browser's WebGPU) computes correctly.
//!
//! Each case states its bound: a relative error ‖gpu − ref‖ / ‖ref‖ for float results, or exact
//! equality (ids, copied rows), where the error reported is the fraction of elements that differ.
//! A family whose kernels fail to compile or run is reported as failed with the error, and the
//! other families still run.

mod head;
mod layers;
mod matmul;
mod training;

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;

use crate::gpu::{AdapterSummary, Gpu, GpuResult};

/// Under `--precision mixed` the matrix products round both operands to f16 (2^-11 relative each)
/// before accumulating in f32: what the tensor-core kernel's own test allows for f32 operands.
const MIXED_PRODUCT_BOUND: f64 = 3e-3;

/// The bound of a case whose result goes through matrix products: `f32_bound` when the device
/// computes them in f32, the mixed-precision bound when on tensor cores.
fn product_bound(gpu: &Gpu, f32_bound: f64) -> f64 {
    match gpu.precision() {
        crate::gpu::Precision::F32 => f32_bound,
        crate::gpu::Precision::Mixed => f32_bound.max(MIXED_PRODUCT_BOUND),
    }
}

/// The kernel families, in the order they run.
pub const FAMILIES: [&str; 10] = [
    "matmul",
    "attention",
    "rmsnorm",
    "rope",
    "swiglu",
    "embedding",
    "output head",
    "sampling",
    "adamw",
    "rl objective",
];

#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    pub family: &'static str,
    pub op: String,
    pub shape: String,
    /// ‖gpu − ref‖ / ‖ref‖, or for exact cases the fraction of elements that differ (JSON `null`
    /// when not finite: an output left unwritten or NaN).
    pub rel_err: f64,
    /// The largest error that passes (0 for exact cases).
    pub bound: f64,
    pub pass: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct FamilyResult {
    pub name: &'static str,
    pub cases: usize,
    pub pass: bool,
    /// Why the family could not run to the end (a kernel that failed to compile, a lost device).
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SelfCheckReport {
    pub adapter: AdapterSummary,
    /// Every family of [`FAMILIES`], whether it ran and passed.
    pub families: Vec<FamilyResult>,
    pub cases: Vec<CaseResult>,
    pub pass: bool,
}

/// Runs every family on `gpu`.
pub async fn run(gpu: &Gpu) -> SelfCheckReport {
    run_checks(gpu, false).await
}

/// `perturb`: every GPU result is disturbed before it is compared (tests: each case must then
/// fail, so none can pass whatever the kernel computes).
async fn run_checks(gpu: &Gpu, perturb: bool) -> SelfCheckReport {
    let mut c = Checker { family: FAMILIES[0], cases: Vec::new(), families: Vec::new(), perturb };
    // Each family's cases are collected under its name, then the family is closed with how its
    // run ended (in FAMILIES order: the tests hold the report to it).
    macro_rules! family {
        ($name:literal, $check:path) => {{
            c.family = $name;
            let outcome = $check(gpu, &mut c).await;
            c.finish(outcome);
        }};
    }
    family!("matmul", matmul::check);
    family!("attention", layers::attention);
    family!("rmsnorm", layers::rmsnorm);
    family!("rope", layers::rope);
    family!("swiglu", layers::swiglu);
    family!("embedding", layers::embedding);
    family!("output head", head::output_head);
    family!("sampling", head::sampling);
    family!("adamw", training::adamw);
    family!("rl objective", training::objective);
    let pass = c.families.len() == FAMILIES.len() && c.families.iter().all(|f| f.pass);
    SelfCheckReport { adapter: gpu.summary().clone(), families: c.families, cases: c.cases, pass }
}

/// The inputs of one family: the same every run, and independent of the other families'.
fn rng(family: &str) -> StdRng {
    StdRng::seed_from_u64(family.bytes().fold(0x5eed_c0de, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)))
}

/// Collects the cases of the running family.
struct Checker {
    family: &'static str,
    cases: Vec<CaseResult>,
    families: Vec<FamilyResult>,
    perturb: bool,
}

impl Checker {
    /// Closes the running family: it passes when it ran to the end and every case passed.
    fn finish(&mut self, outcome: GpuResult<()>) {
        let name = self.family;
        let mine: Vec<&CaseResult> = self.cases.iter().filter(|c| c.family == name).collect();
        let error = outcome.err().map(|e| e.to_string());
        let pass = error.is_none() && !mine.is_empty() && mine.iter().all(|c| c.pass);
        self.families.push(FamilyResult { name, cases: mine.len(), pass, error });
    }

    fn push(&mut self, op: &str, shape: String, rel_err: f64, bound: f64) {
        let pass = rel_err <= bound;
        self.cases.push(CaseResult { family: self.family, op: op.to_string(), shape, rel_err, bound, pass });
    }

    /// A float result within `bound` of the reference, in relative L2 error.
    fn close(&mut self, op: &str, shape: String, mut got: Vec<f32>, want: &[f32], bound: f64) {
        if self.perturb {
            // Large enough that no result within the bound stays within it: the error grows by
            // at least 10·bound − bound.
            let norm = want.iter().map(|&w| (w as f64).powi(2)).sum::<f64>().sqrt();
            if let Some(g) = got.first_mut() {
                *g += (10.0 * bound.max(1e-7) * norm.max(1.0)) as f32;
            }
        }
        self.push(op, shape, crate::numeric::rel_err(&got, want), bound);
    }

    /// A scalar within `bound` of the reference, relative to 1 + |want| (a loss near zero).
    fn scalar(&mut self, op: &str, shape: String, mut got: f64, want: f64, bound: f64) {
        if self.perturb {
            got += 10.0 * bound * (1.0 + want.abs());
        }
        let err = if got.is_finite() { (got - want).abs() / (1.0 + want.abs()) } else { f64::INFINITY };
        self.push(op, shape, err, bound);
    }

    /// An exact result: ids, or rows copied bit for bit.
    fn exact<T: Copy + PartialEq + Perturb>(&mut self, op: &str, shape: String, mut got: Vec<T>, want: &[T]) {
        if self.perturb {
            if let Some(g) = got.first_mut() {
                *g = g.perturbed();
            }
        }
        let wrong = if got.len() == want.len() {
            got.iter().zip(want).filter(|(a, b)| a != b).count() as f64 / want.len().max(1) as f64
        } else {
            1.0
        };
        self.push(op, shape, wrong, 0.0);
    }

    /// Drawn ids, each among the ids its row may draw.
    fn drawn_from(&mut self, op: &str, shape: String, mut got: Vec<u32>, allowed: &[Vec<usize>]) {
        if self.perturb {
            // The first id no row-0 draw may take (a sampler keeps at least one token out here).
            if let (Some(g), Some(ok)) = (got.first_mut(), allowed.first()) {
                *g = (0u32..).find(|i| !ok.contains(&(*i as usize))).expect("an id outside the set");
            }
        }
        let wrong = if got.len() == allowed.len() {
            got.iter().zip(allowed).filter(|(id, ok)| !ok.contains(&(**id as usize))).count() as f64
                / allowed.len().max(1) as f64
        } else {
            1.0
        };
        self.push(op, shape, wrong, 0.0);
    }
}

/// A different value, for perturbing exact results.
trait Perturb {
    fn perturbed(self) -> Self;
}
impl Perturb for f32 {
    fn perturbed(self) -> Self {
        self + 1.0
    }
}
impl Perturb for u32 {
    fn perturbed(self) -> Self {
        self.wrapping_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    #[test]
    fn every_family_runs_and_passes() {
        let Some(gpu) = testing::gpu() else { return };
        let report = pollster::block_on(run(&gpu));
        for c in &report.cases {
            eprintln!("{:<12} {:<28} {:<40} {:.2e} <= {:.0e}", c.family, c.op, c.shape, c.rel_err, c.bound);
        }
        let names: Vec<&str> = report.families.iter().map(|f| f.name).collect();
        assert_eq!(names, FAMILIES, "every family appears in the report, in order");
        for f in &report.families {
            assert!(f.error.is_none(), "{}: {:?}", f.name, f.error);
            assert!(f.cases > 0 && f.pass, "{} failed", f.name);
        }
        for c in &report.cases {
            assert!(c.pass, "{} {} {}: {:e} > {:e}", c.family, c.op, c.shape, c.rel_err, c.bound);
        }
        assert!(report.pass);
        // The report as the page and `devices --check --json` read it.
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["families"].as_array().unwrap().len(), FAMILIES.len());
        assert!(json["cases"][0]["bound"].is_number());
    }

    #[test]
    fn a_wrong_result_fails_every_case() {
        let Some(gpu) = testing::gpu() else { return };
        let report = pollster::block_on(run_checks(&gpu, true));
        assert!(!report.cases.is_empty());
        for c in &report.cases {
            assert!(!c.pass, "{} {} {} passed a perturbed result ({:e})", c.family, c.op, c.shape, c.rel_err);
        }
        assert!(report.families.iter().all(|f| !f.pass) && !report.pass);
    }

    #[test]
    fn comparisons_flag_what_they_must() {
        let mut c = Checker { family: "t", cases: Vec::new(), families: Vec::new(), perturb: false };
        c.close("ok", String::new(), vec![1.0, 2.0], &[1.0, 2.0 + 1e-7], 1e-6);
        c.close("off", String::new(), vec![1.0, 2.1], &[1.0, 2.0], 1e-3);
        c.close("unwritten", String::new(), vec![f32::NAN, 2.0], &[1.0, 2.0], 1.0);
        c.close("short", String::new(), vec![1.0], &[1.0, 2.0], 1.0);
        c.exact("ids", String::new(), vec![3u32, 4], &[3, 5]);
        c.drawn_from("draws", String::new(), vec![7], &[vec![1, 2]]);
        c.scalar("loss", String::new(), f64::NAN, 0.0, 1.0);
        let passed: Vec<bool> = c.cases.iter().map(|c| c.pass).collect();
        assert_eq!(passed, [true, false, false, false, false, false, false]);
        assert_eq!(c.cases[4].rel_err, 0.5, "exact cases report the fraction of elements that differ");
        c.finish(Err(crate::gpu::GpuError::shape("t", "no kernel")));
        assert!(!c.families[0].pass && c.families[0].error.as_deref().unwrap().contains("no kernel"));
    }
}

//! The LLM-shaped linear layers of `convrec-bench kernels` (x·Wᵀ at SmolLM2-135M's and
//! Qwen2.5-0.5B's shapes for 1, 8 and 256 tokens) timed with convrec's kernels and with burn's
//! wgpu backend on the same adapter, in one run, side by side.
//!
//! Run: `cargo run --release --manifest-path bench/burn-peer/Cargo.toml -- smollm2 8,256`.
//!
//! burn autotunes each new shape on first use and runs lazily (fusion may skip a product whose
//! result nobody reads): its timing warms each shape up first and reads every product back, which
//! waits for the work and adds one small readback per product (the way a model reads its logits). convrec's numbers come from `convrec_core::bench` (the cases and timing the native bench
//! and the browser page use).

use std::time::Instant;

use burn::tensor::{Device, DeviceKind, Distribution, Tensor};
use convrec_core::bench::{Case, MODELS, Timer, linear_cases};
use convrec_core::{Gpu, GpuOptions};

/// Median seconds per product (read back) over three rounds of `reps` products each.
fn burn_secs(m: usize, k: usize, n: usize, device: &Device) -> f64 {
    let w = Tensor::<2>::random([n, k], Distribution::Default, device);
    // A fresh input for every product, made (and materialised) before the clock starts: no two
    // products are the same computation, so nothing can be reused between them.
    let inputs = |count: usize| -> Vec<Tensor<2>> {
        (0..count)
            .map(|_| {
                let x = Tensor::<2>::random([m, k], Distribution::Default, device);
                let _ = x.clone().into_data();
                x
            })
            .collect()
    };
    let product = |x: Tensor<2>| x.matmul(w.clone().transpose());
    for x in inputs(2) {
        let _ = product(x).into_data(); // autotune + compile
    }
    let x = inputs(1).pop().expect("one input");
    let start = Instant::now();
    let _ = product(x).into_data();
    let one = start.elapsed().as_secs_f64();
    let reps = ((0.2 / one.max(1e-6)) as usize).clamp(1, 30);
    // Every product is read back: burn's graph is lazy, and a product nobody reads may never run.
    let mut rounds: Vec<f64> = (0..3)
        .map(|_| {
            let xs = inputs(reps);
            let start = Instant::now();
            for x in xs {
                let _ = product(x).into_data();
            }
            start.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[1]
}

/// `[MODELS [TOKENS]]`, comma-separated: e.g. `smollm2 8,256` (default: both models, 1,8,256).
fn args() -> (Vec<String>, Vec<usize>) {
    let mut it = std::env::args().skip(1);
    let models =
        it.next().map_or(vec!["smollm2".into(), "qwen2.5".into()], |m| m.split(',').map(str::to_string).collect());
    let tokens = it.next().map_or(vec![1, 8, 256], |t| {
        t.split(',').map(|n| n.parse().unwrap_or_else(|_| panic!("token count {n:?} is not a number"))).collect()
    });
    (models, tokens)
}

fn main() {
    let (models, token_counts) = args();
    let gpu = pollster::block_on(Gpu::new(&GpuOptions::default())).expect("a GPU adapter");
    let s = gpu.summary();
    println!("adapter: {} ({}, {}); burn 0.22.1 wgpu on its default device", s.name, s.backend, s.driver_info);
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    let origin = Instant::now();
    let now = move || origin.elapsed().as_secs_f64();
    let timer = Timer { budget_secs: 0.6, now: &now };
    println!("{:<8} {:>6} {:<26} {:>13} {:>13} {:>7}", "model", "tokens", "op", "convrec GF/s", "burn GF/s", "ratio");
    for model in MODELS.into_iter().filter(|m| models.iter().any(|n| n == m.name)) {
        for &tokens in &token_counts {
            let mut cases: Vec<Case> = Vec::new();
            if let Err(e) = pollster::block_on(linear_cases(&gpu, &model, tokens, &timer, &mut cases)) {
                println!("{} · {tokens}: skipped: {e}", model.name);
                continue;
            }
            for c in cases.iter().filter(|c| c.op.ends_with("fwd f32")) {
                let (m, k, n) = c.sgemm.expect("linear cases are matmuls");
                let ours = c.gflops().unwrap_or(0.0);
                let theirs = 2.0 * (m * k * n) as f64 / burn_secs(m, k, n, &device) / 1e9;
                println!(
                    "{:<8} {:>6} {:<26} {:>13.1} {:>13.1} {:>7.2}",
                    model.name,
                    tokens,
                    c.op.trim_end_matches(" fwd f32"),
                    ours,
                    theirs,
                    ours / theirs
                );
            }
        }
    }
}

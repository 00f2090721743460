//! Small numeric helpers shared by references, tests and self-checks.

use rand::Rng;

/// ‖a − b‖ / ‖b‖ in f64 (‖a − b‖ when b is zero); a non-finite value anywhere gives infinity, so
/// poisoned outputs that were never written cannot pass.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        if !x.is_finite() || !y.is_finite() {
            return f64::INFINITY;
        }
        num += (x as f64 - y as f64).powi(2);
        den += (y as f64).powi(2);
    }
    if den == 0.0 { num.sqrt() } else { (num / den).sqrt() }
}

/// Central finite differences of a scalar function, in f64 (gradient references of objectives
/// without an analytic one; the self-check runs them, so this is not test-only).
pub fn fd_grad(f: &dyn Fn(&[f64]) -> f64, x: &[f64]) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let h = 1e-6 * (1.0 + x[i].abs());
            let orig = x[i];
            x[i] = orig + h;
            let up = f(&x);
            x[i] = orig - h;
            let down = f(&x);
            x[i] = orig;
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// Widens to f64 (references run in f64).
pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Narrows to f32 for comparison with GPU output.
pub fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Approximately standard-normal values (sum of uniforms), enough to exercise kernels.
pub fn normal(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| (0..4).map(|_| rng.random::<f32>() - 0.5).sum::<f32>() * 1.732).collect()
}

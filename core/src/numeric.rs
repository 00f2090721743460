//! Small numeric helpers shared by references, tests and self-checks.

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

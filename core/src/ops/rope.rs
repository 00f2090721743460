//! Rotary position embedding, Hugging Face rotate-half convention: the cos/sin tables the GPU
//! reads and the CPU reference; the backward is the inverse rotation. The kernels that rotate are
//! `ops::attention_input`'s (RoPE on q and k as they leave the packed q | k | v rows, and back).

use crate::gpu::{Gpu, GpuBuffer, GpuError, GpuResult};

const OP: &str = "rope";

/// A model's rotary frequencies: `inv_freq[head_dim/2]` and the factor cos and sin are multiplied
/// by (YaRN's attention factor; 1 otherwise). `model::RopeScaling::frequencies` makes the scaled ones.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeFrequencies {
    pub inv_freq: Vec<f32>,
    pub attention_scaling: f32,
}

impl RopeFrequencies {
    /// Plain RoPE as `transformers` computes it in f32: `inv_freq = 1 / theta^(2i/d)`.
    pub fn plain(theta: f32, head_dim: usize) -> Self {
        let inv_freq = (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32)).collect();
        RopeFrequencies { inv_freq, attention_scaling: 1.0 }
    }
}

/// cos/sin tables `[max_pos, head_dim/2]` of plain RoPE (see [`frequency_tables`]).
pub fn tables(head_dim: usize, theta: f32, max_pos: usize) -> (Vec<f32>, Vec<f32>) {
    frequency_tables(&RopeFrequencies::plain(theta, head_dim), max_pos)
}

/// cos/sin tables `[max_pos, inv_freq.len()]`, computed the way `transformers` does in f32:
/// angle = `f32(pos) · inv_freq` (one f32 product), cos/sin correctly rounded to f32, then times
/// the attention scaling in f32.
pub fn frequency_tables(freqs: &RopeFrequencies, max_pos: usize) -> (Vec<f32>, Vec<f32>) {
    let half = freqs.inv_freq.len();
    let mut cos = Vec::with_capacity(max_pos * half);
    let mut sin = Vec::with_capacity(max_pos * half);
    let scale = freqs.attention_scaling;
    for pos in 0..max_pos {
        for &f in &freqs.inv_freq {
            let angle = (pos as f32 * f) as f64;
            cos.push(angle.cos() as f32 * scale);
            sin.push(angle.sin() as f32 * scale);
        }
    }
    (cos, sin)
}

/// GPU-resident tables for one model.
#[derive(Clone)]
pub struct RopeTables {
    pub head_dim: usize,
    pub max_pos: usize,
    pub(crate) cos: GpuBuffer,
    pub(crate) sin: GpuBuffer,
}

impl RopeTables {
    /// Plain RoPE with base `theta`.
    pub fn new(gpu: &Gpu, head_dim: usize, theta: f32, max_pos: usize) -> GpuResult<Self> {
        Self::with_frequencies(gpu, head_dim, &RopeFrequencies::plain(theta, head_dim), max_pos)
    }

    /// Tables of any frequencies (scaled RoPE) for heads of `head_dim`.
    pub fn with_frequencies(gpu: &Gpu, head_dim: usize, freqs: &RopeFrequencies, max_pos: usize) -> GpuResult<Self> {
        if !head_dim.is_multiple_of(2) || head_dim == 0 || max_pos == 0 || freqs.inv_freq.len() != head_dim / 2 {
            return Err(GpuError::shape(
                OP,
                format!(
                    "head_dim {head_dim} must be even with {} frequencies for it, and max_pos {max_pos} positive",
                    freqs.inv_freq.len()
                ),
            ));
        }
        let (cos, sin) = frequency_tables(freqs, max_pos);
        Ok(RopeTables {
            head_dim,
            max_pos,
            cos: gpu.upload(OP, "cos table", &cos)?,
            sin: gpu.upload(OP, "sin table", &sin)?,
        })
    }
}

/// CPU reference (in place), from the same tables.
#[allow(clippy::too_many_arguments)]
pub fn rope_ref(
    x: &mut [f64],
    positions: &[u32],
    cos: &[f32],
    sin: &[f32],
    heads: usize,
    head_dim: usize,
    row_stride: usize,
    inverse: bool,
) {
    let half = head_dim / 2;
    for (row, &pos) in positions.iter().enumerate() {
        for h in 0..heads {
            let base = row * row_stride + h * head_dim;
            for i in 0..half {
                let (c, s) = (cos[pos as usize * half + i] as f64, sin[pos as usize * half + i] as f64);
                let s = if inverse { -s } else { s };
                let (x1, x2) = (x[base + i], x[base + i + half]);
                x[base + i] = x1 * c - x2 * s;
                x[base + i + half] = x2 * c + x1 * s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, f64s, fd_grad, rel_err64};

    #[test]
    fn tables_match_hand_values() {
        let (cos, sin) = tables(4, 10000.0, 3);
        // inv_freq = [1, 1/100]; position 2 → angles [2, 0.02]
        assert!((cos[2 * 2] - 2f32.cos()).abs() < 1e-7 && (sin[2 * 2 + 1] - 0.02f32.sin()).abs() < 1e-7);
    }

    #[test]
    fn backward_is_the_transpose_checked_by_finite_differences() {
        let mut rng = testing::rng("rope fd");
        let (heads, d, rows) = (2, 6, 3);
        let (cos, sin) = tables(d, 10000.0, 16);
        let pos = [0u32, 5, 11];
        let x = f64s(&testing::normal(&mut rng, rows * heads * d));
        let dy = f64s(&testing::normal(&mut rng, rows * heads * d));
        let loss = |x: &[f64]| {
            let mut y = x.to_vec();
            rope_ref(&mut y, &pos, &cos, &sin, heads, d, heads * d, false);
            y.iter().zip(&dy).map(|(a, b)| a * b).sum()
        };
        let mut dx = dy.clone();
        rope_ref(&mut dx, &pos, &cos, &sin, heads, d, heads * d, true);
        assert!(rel_err64(&dx, &fd_grad(&loss, &x)) < 1e-6);
    }
}

//! Mixed precision on tensor cores: which cooperative-matrix configuration the matrix products
//! use on this device, and the flag through which they report an operand that f16 cannot hold.

use serde::Serialize;

use super::adapter::AdapterSummary;

/// How the matrix products compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 operands and accumulation on the ordinary ALUs (every adapter).
    F32,
    /// f16 operands, f32 accumulation, on tensor cores (cooperative matrices); weights, LoRA
    /// factors, optimizer state and everything outside the products stay f32.
    Mixed,
}

impl Precision {
    pub const ALL: [Precision; 2] = [Precision::F32, Precision::Mixed];

    /// The flag's value: `f32` or `mixed`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Mixed => "mixed",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    /// The `--precision` flag of the command lines (`convrec`, `convrec-bench`).
    fn from_str(s: &str) -> Result<Self, String> {
        crate::choice::parse(s, &Precision::ALL, Precision::name, "a precision")
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Mixed => "mixed (f16 operands, f32 accumulation, tensor cores)",
        })
    }
}

/// The cooperative-matrix configuration the mixed-precision products use: square `tile`×`tile`
/// f16 operand tiles accumulated in f32, computed by subgroups of `subgroup_size` invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TensorCores {
    pub tile: u32,
    pub subgroup_size: u32,
}

impl TensorCores {
    /// What the adapter (opened with cooperative matrices) offers that the product kernel can
    /// use, the largest tile first: NVIDIA reports 16×16×16 f16→f32, Mesa's lavapipe 8×8×8.
    /// `None` without f16 shaders, subgroups or a fixed subgroup size (the kernel sizes its
    /// workgroup in whole subgroups, so an adapter that may pick 32 or 64 lanes is left out).
    pub fn of(summary: &AdapterSummary) -> Option<TensorCores> {
        let (min, max) = summary.subgroup_sizes;
        if !summary.shader_f16 || !summary.subgroups || min != max || min == 0 {
            return None;
        }
        [16, 8].into_iter().find_map(|tile| {
            summary
                .cooperative_matrix
                .iter()
                .any(|s| s.m == tile && s.n == tile && s.k == tile && s.operands == "f16" && s.accumulator == "f32")
                .then_some(TensorCores { tile, subgroup_size: min })
        })
    }
}

/// The message when a product's operand did not fit f16.
pub fn overflow_message(during: &str) -> String {
    format!(
        "{during}: a matrix-product operand exceeded f16's range (|x| > 65504) under --precision mixed; \
         the step was computed with clamped values. Rerun with --precision f32, or lower the learning rate \
         if activations are growing"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::adapter::CoopMatrixShape;

    fn summary(shapes: &[(u32, &'static str, &'static str)], sizes: (u32, u32)) -> AdapterSummary {
        AdapterSummary {
            name: "test".into(),
            backend: "Vulkan".into(),
            device_type: "discrete GPU".into(),
            driver: String::new(),
            driver_info: String::new(),
            vendor: 0,
            device: 0,
            shader_f16: true,
            subgroups: true,
            subgroup_sizes: sizes,
            timestamp_queries: false,
            cooperative_matrix: shapes
                .iter()
                .map(|&(t, operands, accumulator)| CoopMatrixShape { m: t, n: t, k: t, operands, accumulator })
                .collect(),
            limits: crate::gpu::LimitSummary::from_limits(&wgpu::Limits::default()),
        }
    }

    #[test]
    fn the_largest_f16_to_f32_tile_with_a_fixed_subgroup_is_chosen() {
        let nvidia = summary(&[(16, "f16", "f16"), (16, "f16", "f32"), (8, "f16", "f32")], (32, 32));
        assert_eq!(TensorCores::of(&nvidia), Some(TensorCores { tile: 16, subgroup_size: 32 }));
        let lavapipe = summary(&[(8, "f16", "f16"), (8, "f16", "f32")], (8, 8));
        assert_eq!(TensorCores::of(&lavapipe), Some(TensorCores { tile: 8, subgroup_size: 8 }));
        assert_eq!(TensorCores::of(&summary(&[(16, "f16", "f16")], (32, 32))), None, "no f32 accumulator");
        assert_eq!(TensorCores::of(&summary(&[(16, "f16", "f32")], (32, 64))), None, "variable subgroup size");
        let mut no_f16 = nvidia.clone();
        no_f16.shader_f16 = false;
        assert_eq!(TensorCores::of(&no_f16), None);
        assert_eq!(TensorCores::of(&summary(&[], (32, 32))), None);
    }
}

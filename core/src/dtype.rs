//! Storage types of frozen weights. Compute is always f32; f16 and bf16 weights are stored as
//! pairs packed into `u32` words (element 2i in the low half), which every WebGPU adapter can
//! unpack without the optional `shader-f16` feature.

use half::{bf16, f16};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

impl Dtype {
    /// The code the shaders switch on (`B_DTYPE` and friends).
    pub fn shader_code(self) -> u32 {
        match self {
            Dtype::F32 => 0,
            Dtype::F16 => 1,
            Dtype::Bf16 => 2,
        }
    }

    /// Bytes needed on the GPU for `elems` elements (rounded up to whole 4-byte words).
    pub fn storage_bytes(self, elems: usize) -> u64 {
        match self {
            Dtype::F32 => elems as u64 * 4,
            Dtype::F16 | Dtype::Bf16 => elems.div_ceil(2) as u64 * 4,
        }
    }

    pub const ALL: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::Bf16];
}

/// Packs f32 values into GPU words of `dtype` (round to nearest even).
pub fn pack(dtype: Dtype, values: &[f32]) -> Vec<u32> {
    match dtype {
        Dtype::F32 => values.iter().map(|v| v.to_bits()).collect(),
        Dtype::F16 => pack_halves(values, |v| f16::from_f32(v).to_bits()),
        Dtype::Bf16 => pack_halves(values, |v| bf16::from_f32(v).to_bits()),
    }
}

/// Packs raw 16-bit values (as read from a file) two per word.
pub fn pack_bits16(bits: &[u16]) -> Vec<u32> {
    bits.chunks(2).map(|p| p[0] as u32 | (p.get(1).copied().unwrap_or(0) as u32) << 16).collect()
}

fn pack_halves(values: &[f32], to_bits: impl Fn(f32) -> u16) -> Vec<u32> {
    values.chunks(2).map(|p| to_bits(p[0]) as u32 | (p.get(1).map(|&v| to_bits(v)).unwrap_or(0) as u32) << 16).collect()
}

/// The f32 values the GPU sees after unpacking `pack(dtype, values)`: what CPU references use.
pub fn round_trip(dtype: Dtype, values: &[f32]) -> Vec<f32> {
    match dtype {
        Dtype::F32 => values.to_vec(),
        Dtype::F16 => values.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
        Dtype::Bf16 => values.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_puts_even_elements_in_the_low_half() {
        let words = pack(Dtype::Bf16, &[1.0, -2.0, 0.5]);
        assert_eq!(words, vec![0x3f80 | 0xc000 << 16, 0x3f00]);
        let words = pack(Dtype::F16, &[1.0, 2.0]);
        assert_eq!(words, vec![0x3c00 | 0x4000 << 16]);
        assert_eq!(Dtype::F16.storage_bytes(3), 8);
    }
}

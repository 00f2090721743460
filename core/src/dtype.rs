//! Storage types of frozen weights on the GPU. Compute is always f32; every format is read by the
//! kernels' one loader (`shaders/include/load_b.wgsl`) from `u32` words, which every WebGPU adapter
//! can do without optional features such as `shader-f16`:
//!
//! | dtype | words | element value |
//! |---|---|---|
//! | `F32` | one per element | the f32 bits |
//! | `F16`, `Bf16` | one per pair (element 2i in the low half) | the 16-bit float |
//! | `Q4` | 6 per block of 32: scale, offset (f32 bits), 32 four-bit codes, eight to a word, lowest nibble first | scale·q + offset, q ∈ 0..15 |
//! | `Q8` | 6 per block of 16: scale, offset (f32 bits), 16 signed bytes, four to a word, lowest byte first | scale·q + offset, q ∈ −128..127 |
//!
//! The two block formats hold every GGML quantisation convrec reads exactly, value for value as
//! ggml dequantises it (`model::gguf::quant::to_gpu_blocks`): Q4_0, Q4_1 and Q4_K become `Q4`; Q5_0,
//! Q5_1, Q5_K, Q6_K and Q8_0 become `Q8` (groups of 16 because Q6_K scales every 16 elements).
//! They can also be made from f32 values (`pack`), which is how a 16-bit checkpoint is quantised
//! on load (`--weights q4|q8`). A block never straddles a matrix row, so a row's length, and every
//! offset or stride into a block-format operand, is a multiple of the block.

use half::{bf16, f16};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
    /// Four-bit codes in blocks of 32 with an f32 scale and offset.
    Q4,
    /// Signed eight-bit codes in blocks of 16 with an f32 scale and offset.
    Q8,
}

/// The words a block-format block takes: scale, offset and the codes.
const BLOCK_WORDS: usize = 6;

impl Dtype {
    /// The code the shaders switch on (`B_DTYPE` and friends).
    pub fn shader_code(self) -> u32 {
        match self {
            Dtype::F32 => 0,
            Dtype::F16 => 1,
            Dtype::Bf16 => 2,
            Dtype::Q4 => 3,
            Dtype::Q8 => 4,
        }
    }

    /// Elements per storage unit and the `u32` words the unit takes: (1, 1) for f32, (2, 1) for
    /// 16-bit pairs, a block for the quantised formats. Offsets, strides and row lengths of an
    /// operand in a block format must be multiples of the unit's elements.
    pub fn unit(self) -> (usize, usize) {
        match self {
            Dtype::F32 => (1, 1),
            Dtype::F16 | Dtype::Bf16 => (2, 1),
            Dtype::Q4 => (32, BLOCK_WORDS),
            Dtype::Q8 => (16, BLOCK_WORDS),
        }
    }

    /// Elements per block of a block format; 1 for the float formats (which may start anywhere).
    pub fn block_elems(self) -> usize {
        if self.is_quantized() { self.unit().0 } else { 1 }
    }

    /// Bits per code of a block format (0 for the float formats).
    fn code_bits(self) -> usize {
        match self {
            Dtype::Q4 => 4,
            Dtype::Q8 => 8,
            _ => 0,
        }
    }

    /// `len` rounded up to whole blocks (unchanged for the float formats): tests give the
    /// block formats their nearest legal row length.
    pub fn whole_blocks(self, len: usize) -> usize {
        len.next_multiple_of(self.block_elems())
    }

    pub fn is_quantized(self) -> bool {
        matches!(self, Dtype::Q4 | Dtype::Q8)
    }

    /// Bytes needed on the GPU for `elems` elements (rounded up to whole units).
    pub fn storage_bytes(self, elems: usize) -> u64 {
        let (per_unit, words) = self.unit();
        (elems.div_ceil(per_unit) * words * 4) as u64
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
            Dtype::Q4 => "q4",
            Dtype::Q8 => "q8",
        }
    }

    pub const ALL: [Dtype; 5] = [Dtype::F32, Dtype::F16, Dtype::Bf16, Dtype::Q4, Dtype::Q8];
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a model's frozen weights are kept on the GPU (`--weights`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// As the file stores them: f32, f16 and bf16 as they are, GGUF quantisations as `Q4`/`Q8`
    /// blocks holding exactly their values (nothing is widened).
    #[default]
    Stored,
    /// Every weight widened to f32 (the fastest products on adapters that are short of ALU
    /// rather than memory, at four bytes a weight).
    F32,
    /// The decoder layers' projections quantised on load to `Q8` (16-element blocks), the
    /// embedding and head kept as stored — QLoRA's recipe for a 16-bit checkpoint.
    Q8,
    /// As `Q8` with `Q4` (32-element blocks, ~0.75 bytes a weight).
    Q4,
}

impl WeightFormat {
    pub const ALL: [WeightFormat; 4] = [WeightFormat::Stored, WeightFormat::F32, WeightFormat::Q8, WeightFormat::Q4];

    /// The flag's value.
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::Stored => "stored",
            WeightFormat::F32 => "f32",
            WeightFormat::Q8 => "q8",
            WeightFormat::Q4 => "q4",
        }
    }

    /// The storage type tensor `name` (a Hugging Face name) of type `stored` gets: `Q8`/`Q4` apply
    /// to the decoder layers' 2-D projection weights, whose rows must be whole blocks (a
    /// projection whose rows are not keeps its type).
    pub fn dtype_for(self, name: &str, shape: &[usize], stored: Dtype) -> Dtype {
        let projection = || {
            name.starts_with("model.layers.")
                && (name.contains(".self_attn.") || name.contains(".mlp."))
                && name.ends_with("_proj.weight")
                && shape.len() == 2
        };
        match self {
            WeightFormat::Stored => stored,
            WeightFormat::F32 => Dtype::F32,
            WeightFormat::Q8 | WeightFormat::Q4 => {
                let dtype = if self == WeightFormat::Q8 { Dtype::Q8 } else { Dtype::Q4 };
                if projection() && shape[1].is_multiple_of(dtype.block_elems()) { dtype } else { stored }
            }
        }
    }
}

impl std::str::FromStr for WeightFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        crate::choice::parse(s, &WeightFormat::ALL, WeightFormat::name, "a weight format")
    }
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Packs f32 values into GPU words of `dtype`: 16-bit formats round to nearest even; block
/// formats quantise each block (`Q4`: offset = the block's minimum, scale = range / 15; `Q8`:
/// offset 0, scale = largest magnitude / 127; codes rounded to nearest), the last block padded
/// with zeros.
pub fn pack(dtype: Dtype, values: &[f32]) -> Vec<u32> {
    match dtype {
        Dtype::F32 => values.iter().map(|v| v.to_bits()).collect(),
        Dtype::F16 => pack_halves(values, |v| f16::from_f32(v).to_bits()),
        Dtype::Bf16 => pack_halves(values, |v| bf16::from_f32(v).to_bits()),
        Dtype::Q4 | Dtype::Q8 => {
            let per_block = dtype.block_elems();
            let mut words = Vec::with_capacity(values.len().div_ceil(per_block) * BLOCK_WORDS);
            for chunk in values.chunks(per_block) {
                let mut block = vec![0f32; per_block];
                block[..chunk.len()].copy_from_slice(chunk);
                let (scale, offset, codes) = quantize_block(dtype, &block);
                words.extend(block_words(dtype, scale, offset, &codes));
            }
            words
        }
    }
}

/// One block's scale, offset and codes from its values. The scale is rounded to 16 significant
/// bits, so scale·q is exact in f32 (q has at most 8) and the GPU's fused multiply-add and the
/// CPU's two operations give the same value; and packing the unpacked values again gives the
/// same words (the scale comes back to the same 16 bits).
fn quantize_block(dtype: Dtype, values: &[f32]) -> (f32, f32, Vec<i32>) {
    let short = |scale: f32| f32::from_bits(scale.to_bits().wrapping_add(0x80) & 0xffff_ff00);
    let code = |v: f32, scale: f32, lo: i32, hi: i32| {
        if scale > 0.0 { ((v / scale).round() as i32).clamp(lo, hi) } else { 0 }
    };
    match dtype {
        Dtype::Q4 => {
            let lo = values.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let scale = short((hi - lo) / 15.0);
            (scale, lo, values.iter().map(|&v| code(v - lo, scale, 0, 15)).collect())
        }
        Dtype::Q8 => {
            let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = short(amax / 127.0);
            (scale, 0.0, values.iter().map(|&v| code(v, scale, -127, 127)).collect())
        }
        _ => unreachable!("{dtype} is not a block format"),
    }
}

/// The GPU words of one block: scale, offset, then the codes packed low bits first (four-bit
/// codes for `Q4`, signed bytes for `Q8`). Codes must be in the format's range.
pub fn block_words(dtype: Dtype, scale: f32, offset: f32, codes: &[i32]) -> [u32; BLOCK_WORDS] {
    debug_assert_eq!(codes.len(), dtype.block_elems());
    let mut w = [0u32; BLOCK_WORDS];
    w[0] = scale.to_bits();
    w[1] = offset.to_bits();
    let bits = dtype.code_bits();
    let per_word = 32 / bits;
    let mask = (1u32 << bits) - 1;
    for (j, &q) in codes.iter().enumerate() {
        w[2 + j / per_word] |= (q as u32 & mask) << (bits * (j % per_word));
    }
    w
}

/// The f32 values of the first `elems` elements of GPU words in `dtype` — exactly what the
/// kernels' `load_b` computes (scale·q is exact for every block `to_gpu_blocks` and `pack` make, so
/// the one rounding is the addition's, whether or not a GPU fuses the two).
pub fn unpack(dtype: Dtype, words: &[u32], elems: usize) -> Vec<f32> {
    match dtype {
        Dtype::F32 => words[..elems].iter().map(|&w| f32::from_bits(w)).collect(),
        Dtype::F16 => (0..elems).map(|i| f16::from_bits(half_bits(words, i)).to_f32()).collect(),
        Dtype::Bf16 => (0..elems).map(|i| bf16::from_bits(half_bits(words, i)).to_f32()).collect(),
        Dtype::Q4 | Dtype::Q8 => {
            let per_block = dtype.block_elems();
            let bits = dtype.code_bits();
            let per_word = 32 / bits;
            (0..elems)
                .map(|i| {
                    let block = &words[i / per_block * BLOCK_WORDS..][..BLOCK_WORDS];
                    let j = i % per_block;
                    let raw = block[2 + j / per_word] >> (bits * (j % per_word)) & ((1u32 << bits) - 1);
                    let q = if dtype == Dtype::Q8 { raw as u8 as i8 as f32 } else { raw as f32 };
                    f32::from_bits(block[0]) * q + f32::from_bits(block[1])
                })
                .collect()
        }
    }
}

fn half_bits(words: &[u32], i: usize) -> u16 {
    (words[i / 2] >> (16 * (i % 2))) as u16
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
        Dtype::Q4 | Dtype::Q8 => unpack(dtype, &pack(dtype, values), values.len()),
    }
}

/// The index of the first element whose block has a non-finite scale or offset (such a block
/// turns every product it enters into NaN), with that scale or offset.
pub fn first_non_finite_block(dtype: Dtype, words: &[u32]) -> Option<(usize, f32)> {
    words.chunks(BLOCK_WORDS).enumerate().find_map(|(i, block)| {
        let bad = [f32::from_bits(block[0]), f32::from_bits(block[1])].into_iter().find(|v| !v.is_finite());
        bad.map(|v| (i * dtype.block_elems(), v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    #[test]
    fn packing_puts_even_elements_in_the_low_half() {
        let words = pack(Dtype::Bf16, &[1.0, -2.0, 0.5]);
        assert_eq!(words, vec![0x3f80 | 0xc000 << 16, 0x3f00]);
        let words = pack(Dtype::F16, &[1.0, 2.0]);
        assert_eq!(words, vec![0x3c00 | 0x4000 << 16]);
        assert_eq!(Dtype::F16.storage_bytes(3), 8);
        assert_eq!(unpack(Dtype::F16, &words, 2), vec![1.0, 2.0]);
    }

    #[test]
    fn block_words_put_the_first_code_in_the_lowest_bits() {
        let codes: Vec<i32> = (0..32).map(|j| j % 16).collect();
        let w = block_words(Dtype::Q4, 0.5, -1.0, &codes);
        assert_eq!((f32::from_bits(w[0]), f32::from_bits(w[1])), (0.5, -1.0));
        assert_eq!(w[2], 0x7654_3210);
        assert_eq!(w[3], 0xfedc_ba98);
        let codes: Vec<i32> = (0..16).map(|j| j - 8).collect();
        let w = block_words(Dtype::Q8, 2.0, 0.0, &codes);
        assert_eq!(w[2], u32::from_le_bytes([0xf8, 0xf9, 0xfa, 0xfb]));
        let values = unpack(Dtype::Q8, &w, 16);
        assert_eq!(values[0], -16.0);
        assert_eq!(values[15], 14.0);
        assert_eq!(Dtype::Q4.storage_bytes(33), 48);
        assert_eq!(Dtype::Q8.storage_bytes(16), 24);
    }

    /// Quantising keeps every value within half a step of its block's scale, ragged lengths
    /// included, and is idempotent: packing the unpacked values gives the same words (tests pack
    /// `round_trip` values and compare with them exactly).
    #[test]
    fn block_formats_quantise_within_half_a_step() {
        let mut rng = testing::rng("dtype blocks");
        for dtype in [Dtype::Q4, Dtype::Q8] {
            for len in [1, 15, 16, 33, 100, 257] {
                let mut values = testing::normal(&mut rng, len);
                values[0] *= 40.0; // an outlier widens its block's step only
                let words = pack(dtype, &values);
                assert_eq!(words.len() * 4, dtype.storage_bytes(len) as usize);
                let back = unpack(dtype, &words, len);
                let per = dtype.block_elems();
                for (b, (v, r)) in values.chunks(per).zip(back.chunks(per)).enumerate() {
                    let scale = f32::from_bits(words[b * BLOCK_WORDS]);
                    for (x, y) in v.iter().zip(r) {
                        assert!((x - y).abs() <= 0.5001 * scale + 1e-6, "{dtype} len {len}: {x} → {y} (step {scale})");
                    }
                }
                assert_eq!(pack(dtype, &back), words, "{dtype} len {len}: packing unpacked values again");
            }
        }
        assert!(first_non_finite_block(Dtype::Q4, &pack(Dtype::Q4, &[1.0; 64])).is_none());
        let mut words = pack(Dtype::Q8, &[1.0; 32]);
        words[6] = f32::NAN.to_bits();
        assert_eq!(first_non_finite_block(Dtype::Q8, &words).map(|b| b.0), Some(16));
    }
}

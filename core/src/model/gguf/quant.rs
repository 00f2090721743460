//! GGML tensor types and their dequantisation to f32, following the reference (scalar) code of
//! ggml's `ggml-quants.c` operation for operation, so results match llama.cpp's bit for bit.
//!
//! Block layouts (all little-endian, `d`/`m` are f16):
//!
//! | type | elements | bytes | layout |
//! |---|---|---|---|
//! | Q4_0 | 32 | 18 | d, qs[16] (low nibbles = items 0..16, high = 16..32), value = (q − 8)·d |
//! | Q4_1 | 32 | 20 | d, m, qs[16], value = q·d + m |
//! | Q5_0 | 32 | 22 | d, qh u32 (fifth bits), qs[16], value = (q − 16)·d |
//! | Q5_1 | 32 | 24 | d, m, qh u32, qs[16], value = q·d + m |
//! | Q8_0 | 32 | 34 | d, qs[32] i8, value = q·d |
//! | Q4_K | 256 | 144 | d, dmin, scales[12] (8 six-bit scale/min pairs), qs[128] |
//! | Q5_K | 256 | 176 | d, dmin, scales[12], qh[32], qs[128] |
//! | Q6_K | 256 | 210 | ql[128], qh[64], scales[16] i8, d |
//!
//! `to_gpu_blocks` re-packs the same blocks into the GPU's block formats (`crate::dtype`) without
//! changing a value: the weights stay quantised on the GPU.

use half::f16;

use crate::dtype::{self, Dtype};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Bf16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl GgmlType {
    /// From ggml's `enum ggml_type` id; `None` for types convrec does not read.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            30 => GgmlType::Bf16,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::Bf16 => 30,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Bf16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
        }
    }

    /// Elements per block.
    pub fn block_len(self) -> u64 {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => 32,
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> u64 {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::Bf16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
        }
    }

    /// Bytes a tensor of these GGUF dims takes. Blocks never straddle rows, so the innermost
    /// dimension must be a whole number of blocks.
    pub fn byte_size(self, dims: &[u64]) -> Result<u64, String> {
        let n = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= usize::MAX as u64 / 4)
            .ok_or_else(|| format!("dims {dims:?} hold more elements than fit in memory"))?;
        let row = dims.first().copied().unwrap_or(1);
        if !row.is_multiple_of(self.block_len()) {
            return Err(format!(
                "rows of {row} elements are not a whole number of {} blocks of {}",
                self.name(),
                self.block_len()
            ));
        }
        Ok(n / self.block_len() * self.block_bytes())
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Dequantises `bytes` (whole blocks of `t`) to f32. `bytes.len()` must be a multiple of the
/// block size; the caller (`GgufFile::parse`) guarantees it.
pub fn dequantize(t: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let bs = t.block_bytes() as usize;
    let n = bytes.len() / bs * t.block_len() as usize;
    let mut out = vec![0f32; n];
    let blocks = bytes.chunks_exact(bs).zip(out.chunks_exact_mut(t.block_len() as usize));
    match t {
        GgmlType::F32 => blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        GgmlType::F16 => blocks.for_each(|(b, y)| y[0] = f16_at(b, 0)),
        GgmlType::Bf16 => {
            blocks.for_each(|(b, y)| y[0] = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
        }
        GgmlType::Q4_0 => blocks.for_each(|(b, y)| q4_0(b, y)),
        GgmlType::Q4_1 => blocks.for_each(|(b, y)| q4_1(b, y)),
        GgmlType::Q5_0 => blocks.for_each(|(b, y)| q5_0(b, y)),
        GgmlType::Q5_1 => blocks.for_each(|(b, y)| q5_1(b, y)),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| q8_0(b, y)),
        GgmlType::Q4K => blocks.for_each(|(b, y)| q4_k(b, y)),
        GgmlType::Q5K => blocks.for_each(|(b, y)| q5_k(b, y)),
        GgmlType::Q6K => blocks.for_each(|(b, y)| q6_k(b, y)),
    }
    out
}

fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0x0F) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let xh0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
        y[j] = (((qs[j] & 0x0F) | xh0) as i32 - 16) as f32 * d;
        y[j + 16] = (((qs[j] >> 4) | xh1) as i32 - 16) as f32 * d;
    }
}

fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let xh0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
        y[j] = ((qs[j] & 0x0F) | xh0) as f32 * d + m;
        y[j + 16] = ((qs[j] >> 4) | xh1) as f32 * d + m;
    }
}

fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (yj, &q) in y.iter_mut().zip(&b[2..34]) {
        *yj = (q as i8) as f32 * d;
    }
}

/// The j-th (0..8) six-bit scale and min of a Q4_K/Q5_K block (`get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, min) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    // Four groups of 64: the low nibbles of 32 bytes, then their high nibbles.
    for g in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let q = &qs[32 * g..32 * g + 32];
        let y = &mut y[64 * g..64 * g + 64];
        for l in 0..32 {
            y[l] = d1 * (q[l] & 0x0F) as f32 - m1;
            y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, min) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for g in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        // The fifth bits of group g sit in bits 2g and 2g+1 of qh.
        let (u1, u2) = (1u8 << (2 * g), 2u8 << (2 * g));
        let q = &qs[32 * g..32 * g + 32];
        let y = &mut y[64 * g..64 * g + 64];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[l] = d1 * ((q[l] & 0x0F) + h1) as f32 - m1;
            y[l + 32] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
        }
    }
}

fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    // Two halves of 128 elements, each with 64 bytes of low nibbles, 32 of high bit pairs and
    // 8 scales (one per 16 elements).
    for n in 0..2 {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        let y = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// The GPU block format that holds a GGML quantisation's values exactly (`None`: float types):
/// four-bit codes (Q4_0, Q4_1, Q4_K) in `Q4`, five- to eight-bit codes (Q5_0, Q5_1, Q5_K, Q6_K,
/// Q8_0) in `Q8`, whose blocks of 16 follow Q6_K's scales.
pub fn gpu_dtype(t: GgmlType) -> Option<Dtype> {
    match t {
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4K => Some(Dtype::Q4),
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5K | GgmlType::Q6K | GgmlType::Q8_0 => Some(Dtype::Q8),
        GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => None,
    }
}

/// Re-packs whole blocks of the quantised type `t` as GPU blocks of `gpu_dtype(t)` with the same
/// values: each GPU block gets its group's scale and offset with value = scale·q + offset, which
/// is ggml's value to the bit (scale·q is exact for every type: an f16 times a code of at most
/// 8 bits times a six- or eight-bit sub-scale fits f32's 24 bits), so `dtype::unpack` of the
/// result equals `dequantize` (tested on random blocks of every type).
pub fn to_gpu_blocks(t: GgmlType, bytes: &[u8]) -> Vec<u32> {
    let dtype = gpu_dtype(t).unwrap_or_else(|| panic!("{} is not a quantised type", t.name()));
    let (bs, len, group) = (t.block_bytes() as usize, t.block_len() as usize, dtype.block_elems());
    let mut codes = vec![0i32; len];
    let mut groups = vec![(0f32, 0f32); len / group];
    let mut words = Vec::with_capacity(bytes.len() / bs * groups.len() * dtype.unit().1);
    for b in bytes.chunks_exact(bs) {
        decode_block(t, b, &mut codes, &mut groups);
        for (g, &(scale, offset)) in groups.iter().enumerate() {
            words.extend(dtype::block_words(dtype, scale, offset, &codes[g * group..(g + 1) * group]));
        }
    }
    words
}

/// One GGML block as codes and (scale, offset) per GPU group (32 elements for `Q4`, 16 for `Q8`).
fn decode_block(t: GgmlType, b: &[u8], codes: &mut [i32], groups: &mut [(f32, f32)]) {
    // Q4_0/Q4_1/Q5_x: byte j of qs holds items j (low nibble) and j + 16 (high nibble).
    let nibbles = |qs: &[u8], codes: &mut [i32]| {
        for j in 0..16 {
            codes[j] = (qs[j] & 0x0F) as i32;
            codes[j + 16] = (qs[j] >> 4) as i32;
        }
    };
    // Q5_0/Q5_1: the fifth bit of item j is bit j of qh.
    let fifth_bits = |qh: u32, codes: &mut [i32]| (0..32).for_each(|j| codes[j] |= ((qh >> j & 1) << 4) as i32);
    match t {
        GgmlType::Q4_0 => {
            let d = f16_at(b, 0);
            nibbles(&b[2..18], codes);
            groups[0] = (d, -8.0 * d);
        }
        GgmlType::Q4_1 => {
            nibbles(&b[4..20], codes);
            groups[0] = (f16_at(b, 0), f16_at(b, 2));
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let (d, at) = (f16_at(b, 0), if t == GgmlType::Q5_0 { 2 } else { 4 });
            nibbles(&b[at + 4..at + 20], codes);
            fifth_bits(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]), codes);
            let pair = if t == GgmlType::Q5_0 {
                codes.iter_mut().for_each(|q| *q -= 16);
                (d, 0.0)
            } else {
                (d, f16_at(b, 2))
            };
            groups.fill(pair);
        }
        GgmlType::Q8_0 => {
            codes.iter_mut().zip(&b[2..34]).for_each(|(q, &x)| *q = x as i8 as i32);
            groups.fill((f16_at(b, 0), 0.0));
        }
        GgmlType::Q4K | GgmlType::Q5K => {
            let (d, min) = (f16_at(b, 0), f16_at(b, 2));
            let scales = &b[4..16];
            let (qh, qs) = if t == GgmlType::Q5K { (Some(&b[16..48]), &b[48..176]) } else { (None, &b[16..144]) };
            // Sub-block s (32 items): low (s even) or high (s odd) nibbles of qs[32·(s/2)..];
            // Q5_K's fifth bit of item 32s + l is bit s of qh[l].
            let groups_per_sub = groups.len() / 8; // 1 for Q4_K (GPU blocks of 32), 2 for Q5_K (16)
            for s in 0..8 {
                let (sc, m) = scale_min_k4(s, scales);
                for l in 0..32 {
                    let byte = qs[32 * (s / 2) + l];
                    let low = if s % 2 == 0 { byte & 0x0F } else { byte >> 4 };
                    let high = qh.map_or(0, |qh| (qh[l] >> s & 1) << 4);
                    codes[32 * s + l] = (low | high) as i32;
                }
                let pair = (d * sc as f32, -(min * m as f32));
                groups[s * groups_per_sub..(s + 1) * groups_per_sub].fill(pair);
            }
        }
        GgmlType::Q6K => {
            let d = f16_at(b, 208);
            for n in 0..2 {
                let (ql, qh, sc) =
                    (&b[64 * n..64 * n + 64], &b[128 + 32 * n..160 + 32 * n], &b[192 + 8 * n..200 + 8 * n]);
                for l in 0..32 {
                    for g in 0..4 {
                        let low_byte = ql[l + 32 * (g % 2)];
                        let low = if g < 2 { low_byte & 0x0F } else { low_byte >> 4 };
                        let high = (qh[l] >> (2 * g)) & 3;
                        codes[128 * n + 32 * g + l] = (low | high << 4) as i32 - 32;
                    }
                }
                for (k, &scale) in sc.iter().enumerate() {
                    groups[8 * n + k] = (d * scale as i8 as f32, 0.0);
                }
            }
        }
        GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => unreachable!("float types have no blocks"),
    }
}

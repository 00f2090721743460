//! GGUF reader tests on small files written here, dequantisation against hand-computed blocks,
//! the q/k row order, configuration from metadata and refusals of malformed files.

use half::{bf16, f16};

use super::quant::{GgmlType, dequantize};
use super::*;
use crate::model::tensor::TensorData;

// ---------------------------------------------------------------------------------------------
// A minimal GGUF writer

fn type_id(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::Str(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.push(*x as u8),
        MetaValue::U16(x) => out.extend(x.to_le_bytes()),
        MetaValue::I16(x) => out.extend(x.to_le_bytes()),
        MetaValue::U32(x) => out.extend(x.to_le_bytes()),
        MetaValue::I32(x) => out.extend(x.to_le_bytes()),
        MetaValue::F32(x) => out.extend(x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(*x as u8),
        MetaValue::Str(s) => put_str(out, s),
        MetaValue::Array(items) => {
            out.extend(items.first().map_or(4, type_id).to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            items.iter().for_each(|i| put_value(out, i));
        }
        MetaValue::U64(x) => out.extend(x.to_le_bytes()),
        MetaValue::I64(x) => out.extend(x.to_le_bytes()),
        MetaValue::F64(x) => out.extend(x.to_le_bytes()),
    }
}

/// A tensor to write: GGUF name, GGUF dims (innermost first), type and raw data.
#[derive(Clone)]
struct RawTensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    data: Vec<u8>,
}

/// Writes GGUF files for tests (here and in `tokenizer`'s).
#[derive(Clone)]
pub(crate) struct Writer {
    version: u32,
    alignment: u64,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<RawTensor>,
}

impl Writer {
    pub(crate) fn new() -> Self {
        Writer { version: 3, alignment: 32, metadata: Vec::new(), tensors: Vec::new() }
    }

    pub(crate) fn kv(&mut self, key: &str, v: MetaValue) -> &mut Self {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.to_string(), v));
        self
    }

    fn tensor(&mut self, name: &str, dims: &[u64], ggml_type: GgmlType, data: Vec<u8>) -> &mut Self {
        self.tensors.retain(|t| t.name != name);
        self.tensors.push(RawTensor { name: name.to_string(), dims: dims.to_vec(), ggml_type, data });
        self
    }

    pub(crate) fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            out.extend(type_id(v).to_le_bytes());
            put_value(&mut out, v);
        }
        let align = |n: u64| n.div_ceil(self.alignment) * self.alignment;
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            t.dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend(t.ggml_type.id().to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset = align(offset + t.data.len() as u64);
        }
        out.resize(align(out.len() as u64) as usize, 0);
        for t in &self.tensors {
            out.extend(&t.data);
            out.resize(align(out.len() as u64) as usize, 0);
        }
        out
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn u16_bytes(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn h(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_bits().to_le_bytes()
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// Blocks of quantised data whose scale fields hold small finite f16 values and whose other
/// bytes are arbitrary, so that every bit of the quant fields is exercised.
fn random_blocks(t: GgmlType, n_elements: usize, seed: u32) -> Vec<u8> {
    let bs = t.block_bytes() as usize;
    let n_blocks = n_elements / t.block_len() as usize;
    let mut bytes: Vec<u8> = values(bs * n_blocks, seed).iter().map(|v| ((v + 1.0) * 127.9) as u8).collect();
    for (b, block) in bytes.chunks_exact_mut(bs).enumerate() {
        let scale = h(0.01 + 0.001 * b as f32);
        let min = h(-0.02 + 0.0005 * b as f32);
        match t {
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => block[..2].copy_from_slice(&scale),
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => {
                block[..2].copy_from_slice(&scale);
                block[2..4].copy_from_slice(&min);
            }
            GgmlType::Q6K => block[208..210].copy_from_slice(&scale),
            GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => unreachable!("not a block type"),
        }
    }
    bytes
}

// ---------------------------------------------------------------------------------------------
// Reader

#[test]
fn reads_every_metadata_type_alignment_and_offsets() {
    let mut w = Writer::new();
    w.alignment = 64;
    w.kv("general.alignment", MetaValue::U32(64))
        .kv("u8", MetaValue::U8(200))
        .kv("i8", MetaValue::I8(-5))
        .kv("u16", MetaValue::U16(60000))
        .kv("i16", MetaValue::I16(-30000))
        .kv("u32", MetaValue::U32(4_000_000_000))
        .kv("i32", MetaValue::I32(-2_000_000_000))
        .kv("f32", MetaValue::F32(1.5))
        .kv("bool", MetaValue::Bool(true))
        .kv("str", MetaValue::Str("héllo".into()))
        .kv("u64", MetaValue::U64(1 << 40))
        .kv("i64", MetaValue::I64(-(1 << 40)))
        .kv("f64", MetaValue::F64(-2.25))
        .kv("strs", MetaValue::Array(vec![MetaValue::Str("a".into()), MetaValue::Str("".into())]))
        .kv("ints", MetaValue::Array(vec![MetaValue::I32(1), MetaValue::I32(-1)]))
        .kv("nested", MetaValue::Array(vec![MetaValue::Array(vec![MetaValue::U8(7)])]))
        .kv("empty", MetaValue::Array(vec![]));
    w.tensor("a", &[3], GgmlType::F32, f32_bytes(&[1.0, 2.0, 3.0]));
    w.tensor("b", &[32, 2], GgmlType::Q8_0, random_blocks(GgmlType::Q8_0, 64, 1));
    let bytes = w.bytes();
    let f = GgufFile::parse(&bytes).unwrap();
    assert_eq!((f.version, f.alignment, f.data_offset % 64), (3, 64, 0));
    assert_eq!(f.metadata, w.metadata, "metadata read back in file order");
    assert_eq!(f.get_u64("u32").unwrap(), Some(4_000_000_000));
    assert_eq!(f.get_u64("u8").unwrap(), Some(200));
    assert_eq!(f.get_f64("f32").unwrap(), Some(1.5));
    assert_eq!(f.get_str("str").unwrap(), Some("héllo"));
    assert_eq!(f.get_str_array("strs").unwrap(), Some(vec!["a", ""]));
    assert_eq!(f.get_int_array("ints").unwrap(), Some(vec![1, -1]));
    assert_eq!(f.get_u64("absent").unwrap(), None);
    assert!(f.get_u64("str").unwrap_err().to_string().contains("str: expected an unsigned integer, found string"));
    assert!(f.get_u64("i8").is_err(), "a negative value is not an unsigned integer");

    let (a, b) = (f.tensor("a").unwrap(), f.tensor("b").unwrap());
    assert_eq!((a.offset, a.size, b.offset, b.size), (0, 12, 64, 68));
    assert_eq!(b.shape(), vec![2, 32], "PyTorch order is GGUF's reversed");
    assert_eq!(read_tensor(&f, a), HostTensor::f32(vec![3], vec![1.0, 2.0, 3.0]));
    assert_eq!(f.tensor_bytes(b), &w.tensors[1].data[..]);

    // Version 2 has the same layout.
    w.version = 2;
    assert_eq!(GgufFile::parse(&w.bytes()).unwrap().version, 2);
}

#[test]
fn malformed_headers_are_refused_by_name() {
    let mut w = Writer::new();
    w.kv("general.architecture", MetaValue::Str("llama".into()));
    w.tensor("t", &[4], GgmlType::F32, f32_bytes(&[0.0; 4]));
    let good = w.bytes();
    let err = |bytes: &[u8]| GgufFile::parse(bytes).unwrap_err().to_string();

    assert!(err(b"GGML\x03\0\0\0").contains("not a GGUF file"), "{}", err(b"GGML"));
    for v in [1u32, 4, 0x0300_0000] {
        let mut b = good.clone();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        assert!(err(&b).contains("version"), "{}", err(&b));
    }
    assert!(err(&good[..30]).contains("truncated at offset"), "{}", err(&good[..30]));

    // Unknown tensor type: the type field sits 12 bytes before the tensor directory's end.
    let dir_end = 24 + (8 + 20 + 4 + 8 + 5) + (8 + 1 + 4 + 8 + 4 + 8);
    let mut b = good.clone();
    b[dir_end - 12..dir_end - 8].copy_from_slice(&99u32.to_le_bytes());
    assert!(err(&b).contains("tensor t: unknown or unsupported tensor type 99"), "{}", err(&b));
    // Offset not aligned, then past the end.
    let mut b = good.clone();
    b[dir_end - 8..dir_end].copy_from_slice(&4u64.to_le_bytes());
    assert!(err(&b).contains("not a multiple of the alignment"), "{}", err(&b));
    let mut b = good.clone();
    b[dir_end - 8..dir_end].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(err(&b).contains("tensor t: data") && err(&b).contains("out of bounds"), "{}", err(&b));
    // Data cut short.
    let data_start = GgufFile::parse(&good).unwrap().data_offset as usize;
    assert!(err(&good[..data_start + 12]).contains("out of bounds"), "{}", err(&good[..data_start + 12]));
    // A quantised row that is not whole blocks.
    let mut w2 = Writer::new();
    w2.tensor("q", &[16], GgmlType::Q8_0, vec![0; 34]);
    assert!(err(&w2.bytes()).contains("not a whole number of Q8_0 blocks"), "{}", err(&w2.bytes()));
    // Absurd counts are refused before allocating.
    let mut b = good.clone();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(err(&b).contains("truncated"), "{}", err(&b));
    let mut w3 = Writer::new();
    w3.kv("general.alignment", MetaValue::U32(48));
    assert!(err(&w3.bytes()).contains("general.alignment"), "{}", err(&w3.bytes()));
}

#[test]
fn every_truncation_of_a_model_file_is_an_error_not_a_panic() {
    let bytes = tiny_model(Architecture::Llama, true).bytes();
    assert!(GgufModel::from_bytes(&bytes).is_ok());
    for len in (0..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
        let e = GgufModel::from_bytes(&bytes[..len]).unwrap_err().to_string();
        assert!(
            e.contains("truncated") || e.contains("out of bounds") || e.contains("not a GGUF"),
            "length {len}: {e}"
        );
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
    /// Corrupting header bytes never panics: every outcome is a model or an error.
    #[test]
    fn corrupted_headers_never_panic(edits in proptest::collection::vec((0usize..4096, 0u8..=255), 1..6)) {
        let mut bytes = tiny_model(Architecture::Qwen2, false).bytes();
        let header_len = GgufFile::parse(&bytes).unwrap().data_offset as usize;
        for (at, value) in edits {
            let at = at % header_len;
            bytes[at] = value;
        }
        let _ = GgufModel::from_bytes(&bytes);
    }

    /// Arbitrary bytes after a valid magic and version never panic either.
    #[test]
    fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
        let mut bytes = b"GGUF\x03\0\0\0".to_vec();
        bytes.extend(tail);
        let _ = GgufModel::from_bytes(&bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// Dequantisation, against blocks computed by hand

#[test]
fn dequantizes_the_simple_block_types() {
    // Q8_0: d = 0.5; q = [-128, -1, 0, 1, 127, 3 …].
    let mut b = h(0.5).to_vec();
    let q: Vec<i8> = (0..32).map(|i| [-128, -1, 0, 1, 127, 3][i % 6]).collect();
    b.extend(q.iter().map(|&x| x as u8));
    let y = dequantize(GgmlType::Q8_0, &b);
    assert_eq!(&y[..6], &[-64.0, -0.5, 0.0, 0.5, 63.5, 1.5]);
    assert_eq!(y.len(), 32);

    // Q4_0: d = 2; byte j holds item j (low nibble) and item j+16 (high nibble); value (q-8)·d.
    let mut b = h(2.0).to_vec();
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let y = dequantize(GgmlType::Q4_0, &b);
    let want: Vec<f32> = (0..16).map(|j| (j - 8) as f32 * 2.0).chain((0..16).map(|j| (7 - j) as f32 * 2.0)).collect();
    assert_eq!(y, want);

    // Q4_1: d = 0.25, m = -1; value q·d + m.
    let mut b = h(0.25).to_vec();
    b.extend(h(-1.0));
    b.extend((0..16u8).map(|j| j | (3 << 4)));
    let y = dequantize(GgmlType::Q4_1, &b);
    assert_eq!((y[0], y[5], y[15], y[16], y[31]), (-1.0, 0.25, 2.75, -0.25, -0.25));

    // Q5_0: the fifth bit of item j is bit j of qh, of item j+16 bit j+16; value (q-16)·d.
    let mut b = h(1.0).to_vec();
    b.extend(0x0001_8002u32.to_le_bytes()); // items 1, 15 and 16 have the fifth bit
    b.extend([0x21u8; 16]); // low nibble 1, high nibble 2
    let y = dequantize(GgmlType::Q5_0, &b);
    assert_eq!((y[0], y[1], y[15], y[16], y[17]), (1.0 - 16.0, 17.0 - 16.0, 17.0 - 16.0, 18.0 - 16.0, 2.0 - 16.0));
    assert_eq!(y[31], 2.0 - 16.0);

    // Q5_1: same bits, value q·d + m.
    let mut b = h(0.5).to_vec();
    b.extend(h(10.0));
    b.extend(0x8000_0001u32.to_le_bytes()); // items 0 and 31
    b.extend([0xF0u8; 16]); // low 0, high 15
    let y = dequantize(GgmlType::Q5_1, &b);
    assert_eq!((y[0], y[1], y[16], y[31]), (10.0 + 8.0, 10.0, 10.0 + 7.5, 10.0 + 15.5));

    // F16 / BF16 / F32 element types.
    assert_eq!(dequantize(GgmlType::F16, &u16_bytes(&[f16::from_f32(-1.5).to_bits()])), vec![-1.5]);
    assert_eq!(dequantize(GgmlType::Bf16, &u16_bytes(&[bf16::from_f32(3.0).to_bits()])), vec![3.0]);
    assert_eq!(dequantize(GgmlType::F32, &f32_bytes(&[0.125])), vec![0.125]);
}

/// Packs eight (scale, min) six-bit pairs the way Q4_K/Q5_K store them: pairs 0..4 in the low six
/// bits of bytes 0..4 / 4..8; pairs 4..8 as low nibbles in bytes 8..12 with their top two bits
/// in the top bits of bytes 0..4 (scales) and 4..8 (mins).
fn pack_k_scales(scales: [u8; 8], mins: [u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..4 {
        q[j] = scales[j] | ((scales[j + 4] >> 4) << 6);
        q[j + 4] = mins[j] | ((mins[j + 4] >> 4) << 6);
        q[j + 8] = (scales[j + 4] & 0x0F) | ((mins[j + 4] & 0x0F) << 4);
    }
    q
}

#[test]
fn dequantizes_q4_k_and_q5_k() {
    let scales = [1, 2, 3, 63, 17, 33, 48, 5];
    let mins = [0, 1, 62, 4, 50, 16, 7, 63];
    let (d, dmin) = (0.5f32, 0.25f32);
    // Sub-block s covers items 32s..32s+32; its quants are the low (s even) or high (s odd)
    // nibbles of bytes 32·(s/2).. of qs. Byte i of qs holds (i % 16) low, (15 - i % 16) high.
    let nibble = |s: usize, l: usize| -> u8 {
        let byte = (32 * (s / 2) + l) as u8 % 16;
        if s.is_multiple_of(2) { byte } else { 15 - byte }
    };
    let mut b = h(d).to_vec();
    b.extend(h(dmin));
    b.extend(pack_k_scales(scales, mins));
    b.extend((0..128u8).map(|i| (i % 16) | ((15 - i % 16) << 4)));
    let y = dequantize(GgmlType::Q4K, &b);
    for (k, &got) in y.iter().enumerate() {
        let (s, l) = (k / 32, k % 32);
        let want = d * scales[s] as f32 * nibble(s, l) as f32 - dmin * mins[s] as f32;
        assert_eq!(got, want, "Q4_K item {k}");
    }
    // Two by hand: item 0 = 0.5·1·0 − 0.25·0; item 255 (s=7, byte 127 → high nibble 0) = −0.25·63.
    assert_eq!((y[0], y[255]), (0.0, -15.75));
    assert_eq!(y[32 * 4 + 3], 0.5 * 17.0 * 3.0 - 0.25 * 50.0);

    // Q5_K: the fifth bit of item 32s+l is bit s of qh[l].
    let qh: Vec<u8> = (0..32u8).map(|l| l.wrapping_mul(37)).collect();
    let mut b = h(d).to_vec();
    b.extend(h(dmin));
    b.extend(pack_k_scales(scales, mins));
    b.extend(&qh);
    b.extend((0..128u8).map(|i| (i % 16) | ((15 - i % 16) << 4)));
    let y = dequantize(GgmlType::Q5K, &b);
    for (k, &got) in y.iter().enumerate() {
        let (s, l) = (k / 32, k % 32);
        let q = nibble(s, l) as u32 + 16 * ((qh[l] >> s) & 1) as u32;
        let want = d * scales[s] as f32 * q as f32 - dmin * mins[s] as f32;
        assert_eq!(got, want, "Q5_K item {k}");
    }
}

#[test]
fn dequantizes_q6_k() {
    // Item k = 128n + 32g + l (half n, quarter g): low nibble from ql[64n + l + 32·(g odd)],
    // taken low for g < 2 and high for g ≥ 2; top two bits from qh[32n + l] bits 2g..2g+2;
    // scale sc[8n + 2g + l/16]; value d·sc·(q − 32).
    let ql: Vec<u8> = (0..128u32).map(|i| (i * 7 + 3) as u8).collect();
    let qh: Vec<u8> = (0..64u32).map(|i| (i * 29 + 11) as u8).collect();
    let sc: Vec<i8> = (0..16).map(|i| (i * 9 - 70) as i8).collect();
    let d = 0.125f32;
    let mut b = ql.clone();
    b.extend(&qh);
    b.extend(sc.iter().map(|&s| s as u8));
    b.extend(h(d));
    let y = dequantize(GgmlType::Q6K, &b);
    for (k, &got) in y.iter().enumerate() {
        let (n, g, l) = (k / 128, k % 128 / 32, k % 32);
        let low_byte = ql[64 * n + l + 32 * (g % 2)];
        let low = if g < 2 { low_byte & 0x0F } else { low_byte >> 4 };
        let high = (qh[32 * n + l] >> (2 * g)) & 3;
        let q = (low | (high << 4)) as i32 - 32;
        let want = d * sc[8 * n + 2 * g + l / 16] as f32 * q as f32;
        assert_eq!(got, want, "Q6_K item {k}");
    }
    // Item 0 by hand: ql[0] = 3 → low 3; qh[0] = 11 → bits 0..2 = 3; q = 3 | 48 = 51 → 19;
    // sc[0] = −70: 0.125 · −70 · 19.
    assert_eq!(y[0], 0.125 * -70.0 * 19.0);
}

// ---------------------------------------------------------------------------------------------
// q/k row order

#[test]
fn permutation_matches_llama_cpp_and_round_trips() {
    // One head of 4 rows (of 2 elements): reshape(1, 2, 2).swapaxes(1, 2) puts HF rows 0,1,2,3
    // in GGUF order 0,2,1,3.
    let hf = [0, 0, 1, 1, 2, 2, 3, 3];
    assert_eq!(permute_rows(&hf, 2, 1).unwrap(), vec![0, 0, 2, 2, 1, 1, 3, 3]);
    // Two heads of 6 rows: within each head, [0,1,2 | 3,4,5] interleaves to 0,3,1,4,2,5.
    let hf: Vec<u32> = (0..12).collect();
    assert_eq!(permute_rows(&hf, 1, 2).unwrap(), vec![0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11]);
    for (rows, row_len, heads) in [(12, 3, 2), (64, 5, 4), (16, 1, 1), (24, 7, 3)] {
        let x: Vec<u32> = (0..rows * row_len).collect();
        let p = permute_rows(&x, row_len as usize, heads).unwrap();
        assert_ne!(p, x);
        assert_eq!(unpermute_rows(&p, row_len as usize, heads).unwrap(), x);
    }
    assert!(unpermute_rows(&[0u8; 6], 1, 2).unwrap_err().contains("even size"));
    assert!(unpermute_rows(&[0u8; 7], 2, 1).unwrap_err().contains("whole rows"));
}

#[test]
fn maps_llama_cpp_names() {
    let hf_name = |name: &str| crate::model::decoder::LLAMA.hf_name(name);
    assert_eq!(hf_name("token_embd.weight").as_deref(), Some("model.embed_tokens.weight"));
    assert_eq!(hf_name("output.weight").as_deref(), Some("lm_head.weight"));
    assert_eq!(hf_name("output_norm.weight").as_deref(), Some("model.norm.weight"));
    assert_eq!(hf_name("blk.12.attn_k.bias").as_deref(), Some("model.layers.12.self_attn.k_proj.bias"));
    assert_eq!(hf_name("blk.0.attn_output.weight").as_deref(), Some("model.layers.0.self_attn.o_proj.weight"));
    assert_eq!(hf_name("blk.3.ffn_norm.weight").as_deref(), Some("model.layers.3.post_attention_layernorm.weight"));
    assert_eq!(hf_name("blk.3.attn_norm.weight").as_deref(), Some("model.layers.3.input_layernorm.weight"));
    assert_eq!(hf_name("blk.3.ffn_down.weight").as_deref(), Some("model.layers.3.mlp.down_proj.weight"));
    for ignored in ["rope_freqs.weight", "blk.x.attn_q.weight", "blk.01.attn_q.weight", "blk.1.attn_q.scale"] {
        assert_eq!(hf_name(ignored), None, "{ignored}");
    }
}

// ---------------------------------------------------------------------------------------------
// Whole models

const HIDDEN: usize = 32;
const HEADS: usize = 2;
const KV_HEADS: usize = 1;
const HEAD_DIM: usize = 16;
const FFN: usize = 64;

/// A byte-level BPE vocabulary: "a", "b", "ab", "Ġ", "Ġab" and three control tokens.
fn tiny_tokens() -> (Vec<&'static str>, Vec<i32>) {
    let tokens = vec!["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "ab", "Ġ", "Ġab"];
    let types = vec![3, 3, 3, 1, 1, 1, 1, 1];
    (tokens, types)
}

/// The HF-order values of each tiny-model tensor (f32 ones), by HF name.
fn hf_values(name: &str, n: usize) -> Vec<f32> {
    values(n, name.bytes().map(u32::from).sum())
}

/// A one-layer model with one tensor of each type; q and k stored in llama.cpp's row order for
/// `llama`.
pub(crate) fn tiny_model(arch: Architecture, tied: bool) -> Writer {
    let a = match arch {
        Architecture::Llama => "llama",
        Architecture::Qwen2 => "qwen2",
    };
    let (tokens, types) = tiny_tokens();
    let vocab = tokens.len();
    let mut w = Writer::new();
    w.kv("general.architecture", MetaValue::Str(a.into()))
        .kv("general.name", MetaValue::Str("tiny".into()))
        .kv(&format!("{a}.block_count"), MetaValue::U32(1))
        .kv(&format!("{a}.context_length"), MetaValue::U32(256))
        .kv(&format!("{a}.embedding_length"), MetaValue::U32(HIDDEN as u32))
        .kv(&format!("{a}.feed_forward_length"), MetaValue::U32(FFN as u32))
        .kv(&format!("{a}.attention.head_count"), MetaValue::U32(HEADS as u32))
        .kv(&format!("{a}.attention.head_count_kv"), MetaValue::U32(KV_HEADS as u32))
        .kv(&format!("{a}.rope.freq_base"), MetaValue::F32(100000.0))
        .kv(&format!("{a}.attention.layer_norm_rms_epsilon"), MetaValue::F32(1e-5))
        .kv(&format!("{a}.rope.dimension_count"), MetaValue::U32(HEAD_DIM as u32))
        .kv("tokenizer.ggml.model", MetaValue::Str("gpt2".into()))
        .kv("tokenizer.ggml.pre", MetaValue::Str("smollm".into()))
        .kv("tokenizer.ggml.tokens", MetaValue::Array(tokens.iter().map(|t| MetaValue::Str(t.to_string())).collect()))
        .kv("tokenizer.ggml.token_type", MetaValue::Array(types.iter().map(|&t| MetaValue::I32(t)).collect()))
        .kv(
            "tokenizer.ggml.merges",
            MetaValue::Array(["a b", "Ġ ab"].iter().map(|m| MetaValue::Str(m.to_string())).collect()),
        )
        .kv("tokenizer.ggml.bos_token_id", MetaValue::U32(1))
        .kv("tokenizer.ggml.eos_token_id", MetaValue::U32(2))
        .kv("tokenizer.ggml.padding_token_id", MetaValue::U32(2))
        .kv("tokenizer.chat_template", MetaValue::Str(crate::model::chat::builtin::SMOLLM2.into()));

    let permute = |hf: &str, rows: Vec<f32>, heads: usize| match arch {
        Architecture::Llama => permute_rows(&rows, if hf.ends_with("bias") { 1 } else { HIDDEN }, heads).unwrap(),
        Architecture::Qwen2 => rows,
    };
    let (qd, kvd) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    let f32_t = |w: &mut Writer, gguf: &str, hf: &str, dims: &[u64]| {
        let n = dims.iter().product::<u64>() as usize;
        w.tensor(gguf, dims, GgmlType::F32, f32_bytes(&hf_values(hf, n)));
    };
    let quant = |w: &mut Writer, gguf: &str, dims: &[u64], t: GgmlType, seed: u32| {
        let n = dims.iter().product::<u64>() as usize;
        w.tensor(gguf, dims, t, random_blocks(t, n, seed));
    };
    let p = "model.layers.0";
    quant(&mut w, "token_embd.weight", &[HIDDEN as u64, vocab as u64], GgmlType::Q8_0, 1);
    f32_t(&mut w, "output_norm.weight", "model.norm.weight", &[HIDDEN as u64]);
    if !tied {
        quant(&mut w, "output.weight", &[HIDDEN as u64, vocab as u64], GgmlType::Q8_0, 2);
    }
    f32_t(&mut w, "blk.0.attn_norm.weight", &format!("{p}.input_layernorm.weight"), &[HIDDEN as u64]);
    f32_t(&mut w, "blk.0.ffn_norm.weight", &format!("{p}.post_attention_layernorm.weight"), &[HIDDEN as u64]);
    // q in F32 and k in F16, both permuted for llama.
    let q_name = format!("{p}.self_attn.q_proj.weight");
    let q = permute(&q_name, hf_values(&q_name, qd * HIDDEN), HEADS);
    w.tensor("blk.0.attn_q.weight", &[HIDDEN as u64, qd as u64], GgmlType::F32, f32_bytes(&q));
    let k_name = format!("{p}.self_attn.k_proj.weight");
    let k: Vec<u16> = hf_values(&k_name, kvd * HIDDEN).iter().map(|&x| f16::from_f32(x).to_bits()).collect();
    let k = match arch {
        Architecture::Llama => permute_rows(&k, HIDDEN, KV_HEADS).unwrap(),
        Architecture::Qwen2 => k,
    };
    w.tensor("blk.0.attn_k.weight", &[HIDDEN as u64, kvd as u64], GgmlType::F16, u16_bytes(&k));
    let v: Vec<u16> = hf_values("v", kvd * HIDDEN).iter().map(|&x| bf16::from_f32(x).to_bits()).collect();
    w.tensor("blk.0.attn_v.weight", &[HIDDEN as u64, kvd as u64], GgmlType::Bf16, u16_bytes(&v));
    quant(&mut w, "blk.0.attn_output.weight", &[qd as u64, HIDDEN as u64], GgmlType::Q4_0, 3);
    quant(&mut w, "blk.0.ffn_gate.weight", &[HIDDEN as u64, FFN as u64], GgmlType::Q4_1, 4);
    quant(&mut w, "blk.0.ffn_up.weight", &[HIDDEN as u64, FFN as u64], GgmlType::Q5_0, 5);
    quant(&mut w, "blk.0.ffn_down.weight", &[FFN as u64, HIDDEN as u64], GgmlType::Q5_1, 6);
    if arch == Architecture::Qwen2 {
        for (part, n) in [("q", qd), ("k", kvd), ("v", kvd)] {
            let hf = format!("{p}.self_attn.{part}_proj.bias");
            f32_t(&mut w, &format!("blk.0.attn_{part}.bias"), &hf, &[n as u64]);
        }
    }
    w
}

fn tensor<'a>(m: &'a GgufModel, name: &str) -> &'a HostTensor {
    &m.tensors.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} missing")).1
}

#[test]
fn loads_a_llama_model_with_config_names_shapes_and_unpermuted_q_k() {
    let w = tiny_model(Architecture::Llama, true);
    let bytes = w.bytes();
    let m = GgufModel::from_bytes(&bytes).unwrap();
    let c = &m.config;
    assert_eq!(
        (c.architecture, c.vocab_size, c.hidden_size, c.intermediate_size, c.num_layers),
        (Architecture::Llama, 8, HIDDEN, FFN, 1)
    );
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim, c.rope_theta, c.rms_norm_eps), (2, 1, 16, 100000.0, 1e-5));
    assert_eq!((c.tie_word_embeddings, c.attention_bias, c.max_position_embeddings), (true, false, 256));
    assert_eq!((c.bos_token_id, c.eos_token_ids.clone()), (Some(1), vec![2]));
    assert_eq!(m.name.as_deref(), Some("tiny"));
    assert_eq!(m.chat_template.as_deref(), Some(crate::model::chat::builtin::SMOLLM2));

    // Every expected tensor, in order, with its shape.
    let names: Vec<(String, Vec<usize>)> = m.tensors.iter().map(|(n, t)| (n.clone(), t.shape.clone())).collect();
    assert_eq!(names, c.expected_tensors());

    let q_name = "model.layers.0.self_attn.q_proj.weight";
    assert_eq!(
        tensor(&m, q_name),
        &HostTensor::f32(vec![32, 32], hf_values(q_name, 32 * 32)),
        "q rows back in HF order"
    );
    let k_name = "model.layers.0.self_attn.k_proj.weight";
    let k_bits: Vec<u16> = hf_values(k_name, 16 * 32).iter().map(|&x| f16::from_f32(x).to_bits()).collect();
    assert_eq!(tensor(&m, k_name).data, TensorData::F16(k_bits), "k kept as f16, rows in HF order");
    assert_eq!(tensor(&m, "model.layers.0.self_attn.v_proj.weight").dtype(), crate::dtype::Dtype::Bf16);
    // Quantised matrices come back as GPU blocks with ggml's values, in file (= PyTorch
    // row-major) order.
    let file = GgufFile::parse(&bytes).unwrap();
    for (gguf, hf) in [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("blk.0.attn_output.weight", "model.layers.0.self_attn.o_proj.weight"),
        ("blk.0.ffn_gate.weight", "model.layers.0.mlp.gate_proj.weight"),
        ("blk.0.ffn_up.weight", "model.layers.0.mlp.up_proj.weight"),
        ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"),
    ] {
        let info = file.tensor(gguf).unwrap();
        let t = tensor(&m, hf);
        assert_eq!(Some(t.dtype()), super::quant::gpu_dtype(info.ggml_type), "{hf} kept quantised");
        assert_eq!(t.to_f32(), dequantize(info.ggml_type, file.tensor_bytes(info)), "{hf}");
    }
    assert_eq!(tensor(&m, "model.embed_tokens.weight").shape, vec![8, 32]);
    assert_eq!(tensor(&m, "model.layers.0.mlp.down_proj.weight").shape, vec![32, 64]);

    // The tokenizer came along.
    let ids = crate::model::tokenizer::encode(&m.tokenizer, "ab ab<|im_end|>", true).unwrap();
    assert_eq!(ids, vec![5, 7, 2]);
}

#[test]
fn loads_an_untied_qwen2_model_with_biases_and_no_permutation() {
    let w = tiny_model(Architecture::Qwen2, false);
    let m = GgufModel::from_bytes(&w.bytes()).unwrap();
    assert_eq!(
        (m.config.architecture, m.config.tie_word_embeddings, m.config.attention_bias),
        (Architecture::Qwen2, false, true)
    );
    assert!(m.tensors.iter().any(|(n, _)| n == "lm_head.weight"));
    let q_name = "model.layers.0.self_attn.q_proj.weight";
    assert_eq!(tensor(&m, q_name).to_f32(), hf_values(q_name, 32 * 32), "qwen2 rows are stored in HF order");
    let b = "model.layers.0.self_attn.k_proj.bias";
    assert_eq!(tensor(&m, b), &HostTensor::f32(vec![16], hf_values(b, 16)));
    // The ChatML end-of-turn token is among the end ids (and only once).
    assert_eq!(m.eos_token_ids(), &[2]);
}

#[test]
fn refuses_models_it_cannot_run_by_name() {
    let err = |w: &Writer| GgufModel::from_bytes(&w.bytes()).unwrap_err().to_string();
    let mut w = tiny_model(Architecture::Llama, true);
    w.tensors.retain(|t| t.name != "blk.0.ffn_up.weight");
    assert!(err(&w).contains("missing tensor model.layers.0.mlp.up_proj.weight"), "{}", err(&w));

    let mut w = tiny_model(Architecture::Llama, true);
    w.tensor("blk.0.ffn_up.weight", &[HIDDEN as u64, 32], GgmlType::F32, vec![0; 32 * 32 * 4]);
    let e = err(&w);
    assert!(e.contains("shape mismatch for model.layers.0.mlp.up_proj.weight") && e.contains("[32, 32]"), "{e}");

    // A tensor the layer has no place for would be ignored: the file is refused instead.
    let mut w = tiny_model(Architecture::Llama, true);
    w.tensor("blk.0.attn_output.bias", &[HIDDEN as u64], GgmlType::F32, f32_bytes(&[0.5; HIDDEN]));
    let e = err(&w);
    assert!(e.contains("blk.0.attn_output.bias") && e.contains("no such tensor"), "{e}");

    let mut w = tiny_model(Architecture::Llama, true);
    w.kv("general.architecture", MetaValue::Str("gemma".into()));
    assert!(err(&w).contains("architecture \"gemma\" is not supported (llama, qwen2 are)"), "{}", err(&w));

    let mut w = tiny_model(Architecture::Llama, true);
    w.metadata.retain(|(k, _)| k != "llama.embedding_length");
    assert!(err(&w).contains("missing llama.embedding_length"), "{}", err(&w));

    let mut w = tiny_model(Architecture::Llama, true);
    w.kv("llama.rope.scaling.type", MetaValue::Str("longrope".into()));
    assert!(err(&w).contains("rope scaling \"longrope\""), "{}", err(&w));

    let mut w = tiny_model(Architecture::Llama, true);
    w.kv("llama.rope.scaling.type", MetaValue::Str("yarn".into()));
    assert!(err(&w).contains("missing llama.rope.scaling.factor"), "{}", err(&w));

    let mut w = tiny_model(Architecture::Llama, true);
    w.tensor("rope_freqs.weight", &[3], GgmlType::F32, f32_bytes(&[1.0, 2.0, 4.0]));
    assert!(err(&w).contains("rope_freqs.weight has shape [3]"), "{}", err(&w));

    let mut w = tiny_model(Architecture::Llama, true);
    w.tensor("rope_freqs.weight", &[HEAD_DIM as u64 / 2], GgmlType::F32, f32_bytes(&[-1.0; HEAD_DIM / 2]));
    assert!(err(&w).contains("rope_freqs value"), "{}", err(&w));

    let mut w = tiny_model(Architecture::Llama, true);
    w.kv("llama.block_count", MetaValue::U64(1 << 40));
    assert!(err(&w).contains("block_count"), "{}", err(&w));

    let mut w = tiny_model(Architecture::Llama, true);
    w.kv("llama.attention.head_count_kv", MetaValue::U32(3));
    assert!(err(&w).contains("not a multiple"), "{}", err(&w));

    let mut w = tiny_model(Architecture::Llama, true);
    w.kv("tokenizer.ggml.model", MetaValue::Str("llama".into()));
    assert!(err(&w).contains("tokenizer.ggml.model \"llama\""), "{}", err(&w));

    let mut w = tiny_model(Architecture::Llama, true);
    w.kv("tokenizer.ggml.pre", MetaValue::Str("mystery".into()));
    assert!(err(&w).contains("pre-tokenizer \"mystery\""), "{}", err(&w));

    let mut w = tiny_model(Architecture::Llama, true);
    w.kv("tokenizer.ggml.eos_token_id", MetaValue::U32(800));
    assert!(err(&w).contains("eos_token_id = 800"), "{}", err(&w));
}

#[test]
fn non_finite_or_absurd_numbers_are_refused_by_key_and_tensor() {
    let err = |w: &Writer| GgufModel::from_bytes(&w.bytes()).unwrap_err().to_string();
    // The checks HF configs get, under GGUF's keys.
    for (key, value, says) in [
        ("llama.rope.freq_base", MetaValue::F32(f32::NAN), "llama.rope.freq_base = NaN"),
        ("llama.rope.freq_base", MetaValue::F32(-1.0), "llama.rope.freq_base = -1"),
        ("llama.attention.layer_norm_rms_epsilon", MetaValue::F32(-1e-5), "layer_norm_rms_epsilon = -0.00001"),
        ("llama.attention.layer_norm_rms_epsilon", MetaValue::F32(f32::INFINITY), "layer_norm_rms_epsilon = inf"),
        ("llama.feed_forward_length", MetaValue::U64(1 << 40), "llama.feed_forward_length = 1099511627776"),
        ("llama.block_count", MetaValue::U32(5000), "llama.block_count = 5000 is implausibly large"),
        ("llama.context_length", MetaValue::U64(u64::MAX), "llama.context_length"),
    ] {
        let mut w = tiny_model(Architecture::Llama, true);
        w.kv(key, value);
        assert!(err(&w).contains(says), "{key}: {}", err(&w));
    }
    // A NaN weight, in f32 and in a quantised block (a NaN scale), names the tensor.
    let mut w = tiny_model(Architecture::Llama, true);
    let norm: Vec<f32> = (0..HIDDEN).map(|i| if i == 3 { f32::NAN } else { 1.0 }).collect();
    w.tensor("output_norm.weight", &[HIDDEN as u64], GgmlType::F32, f32_bytes(&norm));
    let e = err(&w);
    assert!(e.contains("tensor output_norm.weight: (model.norm.weight) element 3 is NaN"), "{e}");
    let mut w = tiny_model(Architecture::Llama, true);
    let mut blocks = random_blocks(GgmlType::Q8_0, HIDDEN * FFN, 4);
    blocks[..2].copy_from_slice(&h(f32::INFINITY));
    w.tensor("blk.0.ffn_gate.weight", &[HIDDEN as u64, FFN as u64], GgmlType::Q8_0, blocks);
    assert!(err(&w).contains("tensor blk.0.ffn_gate.weight"), "{}", err(&w));
}

/// llama.cpp's forms of RoPE scaling: `rope.scaling.type` linear / yarn with their keys, and
/// Llama 3's per-frequency divisors in `rope_freqs.weight` (a tensor the loader otherwise skips).
#[test]
fn rope_scaling_is_read_from_metadata_and_rope_freqs() {
    use crate::model::RopeScaling;
    let config = |w: &Writer| GgufModel::from_bytes(&w.bytes()).unwrap().config.rope_scaling;
    let mut w = tiny_model(Architecture::Llama, true);
    w.kv("llama.rope.scaling.type", MetaValue::Str("linear".into()));
    w.kv("llama.rope.scaling.factor", MetaValue::F32(4.0));
    assert_eq!(config(&w), RopeScaling::Linear { factor: 4.0 });

    let mut w = tiny_model(Architecture::Qwen2, true);
    w.kv("qwen2.rope.scaling.type", MetaValue::Str("yarn".into()));
    w.kv("qwen2.rope.scaling.factor", MetaValue::F32(4.0));
    w.kv("qwen2.rope.scaling.original_context_length", MetaValue::U32(32768));
    match config(&w) {
        RopeScaling::Yarn { factor, original_max_position_embeddings, beta_fast, beta_slow, .. } => {
            assert_eq!((factor, original_max_position_embeddings, beta_fast, beta_slow), (4.0, 32768, 32.0, 1.0));
        }
        other => panic!("{other:?}"),
    }

    let divisors: Vec<f32> = (0..HEAD_DIM / 2).map(|i| 1.0 + i as f32).collect();
    let mut w = tiny_model(Architecture::Llama, true);
    w.tensor("rope_freqs.weight", &[HEAD_DIM as u64 / 2], GgmlType::F32, f32_bytes(&divisors));
    let model = GgufModel::from_bytes(&w.bytes()).unwrap();
    assert_eq!(model.config.rope_scaling, RopeScaling::FreqFactors(divisors.clone()));
    let plain = crate::ops::rope::RopeFrequencies::plain(model.config.rope_theta, HEAD_DIM).inv_freq;
    let scaled = model.config.rope_frequencies().inv_freq;
    for i in 0..HEAD_DIM / 2 {
        assert_eq!(scaled[i], plain[i] / divisors[i]);
    }
    assert!(model.tensors.iter().all(|(name, _)| !name.contains("rope")), "not a model weight");
}

// ---------------------------------------------------------------------------------------------
// Quantised blocks kept as GPU blocks

/// Every quantised type re-packed as GPU blocks holds exactly the values ggml's dequantisation
/// gives (random codes, scales and sub-scales; finite f16 scales of both signs).
#[test]
fn gpu_blocks_hold_the_dequantised_values_of_every_quantised_type() {
    use rand::Rng;
    let mut rng = crate::testing::rng("gguf gpu blocks");
    let quantised = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];
    for t in quantised {
        let dtype = super::quant::gpu_dtype(t).expect("a GPU block format");
        let blocks = 3;
        let mut bytes: Vec<u8> = (0..t.block_bytes() as usize * blocks).map(|_| rng.random()).collect();
        // Every f16 field a finite value: d and m (or dmin) lead the block, Q6_K's d ends it.
        for block in bytes.chunks_exact_mut(t.block_bytes() as usize) {
            let mut finite = || h(rng.random_range(-2.0f32..2.0) * 2f32.powi(rng.random_range(-12..2)));
            let fields: &[usize] = match t {
                GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
                GgmlType::Q6K => &[208],
                _ => &[0, 2],
            };
            for &at in fields {
                block[at..at + 2].copy_from_slice(&finite());
            }
        }
        let words = super::quant::to_gpu_blocks(t, &bytes);
        let n = blocks * t.block_len() as usize;
        assert_eq!(words.len() * 4, dtype.storage_bytes(n) as usize, "{}", t.name());
        let got = crate::dtype::unpack(dtype, &words, n);
        let want = dequantize(t, &bytes);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(g == w, "{} element {i}: GPU block gives {g}, ggml {w}", t.name());
        }
    }
}

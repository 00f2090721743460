//! The GGUF container: header, metadata and tensor directory, read from bytes without copying
//! tensor data. Layout (llama.cpp's `gguf.h`, versions 2 and 3, little-endian):
//!
//! ```text
//! "GGUF" u32:version u64:tensor_count u64:kv_count
//! kv_count × (string:key u32:type value)
//! tensor_count × (string:name u32:n_dims n_dims×u64:dims u32:type u64:offset)
//! padding to general.alignment, then the tensor data (offsets are relative to its start)
//! ```
//!
//! Every count and length read from the file is checked against the bytes that are left before
//! anything is allocated, so a corrupt or hostile header yields an error, never a panic or a
//! huge allocation.

use std::collections::HashMap;

use super::GgufError;
use super::quant::GgmlType;

/// Alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value. Arrays hold values of one type (GGUF allows nested arrays).
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    /// Any integer type that fits a `u64` (GGUF writers differ in which width they use).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v as i64),
            MetaValue::I16(v) => Some(v as i64),
            MetaValue::I32(v) => Some(v as i64),
            MetaValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// GGUF's name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::F32(_) => "f32",
            MetaValue::Bool(_) => "bool",
            MetaValue::Str(_) => "string",
            MetaValue::Array(_) => "array",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F64(_) => "f64",
        }
    }
}

/// One entry of the tensor directory.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// llama.cpp's name (`blk.0.attn_q.weight`).
    pub name: String,
    /// GGUF order: innermost (contiguous) dimension first.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Start of the data relative to the data section.
    pub offset: u64,
    /// Bytes the data takes.
    pub size: u64,
}

impl TensorInfo {
    /// PyTorch order: outermost first (a linear weight is `[out, in]`).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file borrowing the bytes it was read from.
#[derive(Debug)]
pub struct GgufFile<'a> {
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, MetaValue)>,
    index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    bytes: &'a [u8],
}

/// Longest dimension list GGUF allows (`GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;
/// Deepest array nesting accepted: real files use 1; the bound keeps recursion finite.
const MAX_ARRAY_DEPTH: u32 = 4;

/// A bounds-checked little-endian cursor.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        let remaining = (self.bytes.len() - self.pos) as u64;
        if n > remaining {
            return Err(GgufError::Truncated { offset: self.pos as u64, what: what.to_string() });
        }
        let n = n as usize;
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8, GgufError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, GgufError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let start = self.pos as u64;
        let len = self.u64(what)?;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| GgufError::InvalidUtf8 { offset: start, what: what.to_string() })
    }

    fn value(&mut self, type_id: u32, key: &str, depth: u32) -> Result<MetaValue, GgufError> {
        Ok(match type_id {
            0 => MetaValue::U8(self.u8(key)?),
            1 => MetaValue::I8(self.u8(key)? as i8),
            2 => MetaValue::U16(self.u16(key)?),
            3 => MetaValue::I16(self.u16(key)? as i16),
            4 => MetaValue::U32(self.u32(key)?),
            5 => MetaValue::I32(self.u32(key)? as i32),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.u8(key)? {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => {
                    return Err(GgufError::BadMetadata {
                        key: key.to_string(),
                        message: format!("bool byte {b} is neither 0 nor 1"),
                    });
                }
            },
            8 => MetaValue::Str(self.string(key)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::BadMetadata {
                        key: key.to_string(),
                        message: format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"),
                    });
                }
                let offset = self.pos as u64;
                let item_type = self.u32(key)?;
                let len = self.u64(key)?;
                // Each item takes at least one byte (eight for a string's length): refuse a count
                // the rest of the file cannot hold before reserving memory for it.
                let min_item = match item_type {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => return Err(GgufError::UnknownValueType { key: key.to_string(), type_id: other }),
                };
                if len.checked_mul(min_item).is_none_or(|need| need > self.remaining()) {
                    return Err(GgufError::Truncated { offset, what: format!("{key}: array of {len} items") });
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(item_type, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(key)?),
            11 => MetaValue::I64(self.u64(key)? as i64),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(key)?)),
            other => return Err(GgufError::UnknownValueType { key: key.to_string(), type_id: other }),
        })
    }
}

impl<'a> GgufFile<'a> {
    /// Parses the header, metadata and tensor directory and checks that every tensor's data lies
    /// inside `bytes`. Tensor data is not read until asked for.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, GgufError> {
        let mut c = Cursor { bytes, pos: 0 };
        let magic = c.array::<4>("magic")?;
        if &magic != b"GGUF" {
            return Err(GgufError::BadMagic(magic));
        }
        let version = c.u32("version")?;
        match version {
            2 | 3 => {}
            // A big-endian file (allowed since v3) reads as a byte-swapped version.
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
                return Err(GgufError::UnsupportedVersion(format!("{} (big-endian)", v.swap_bytes())));
            }
            // v1 had 32-bit counts and lengths; no maintained tool writes it any more.
            v => return Err(GgufError::UnsupportedVersion(v.to_string())),
        }
        let tensor_count = c.u64("tensor count")?;
        let kv_count = c.u64("metadata count")?;
        // A key/value pair takes at least 12 bytes, a tensor entry at least 24.
        if kv_count.checked_mul(12).is_none_or(|n| n > c.remaining()) {
            return Err(GgufError::Truncated { offset: 16, what: format!("{kv_count} metadata entries") });
        }
        if tensor_count.checked_mul(24).is_none_or(|n| n > c.remaining()) {
            return Err(GgufError::Truncated { offset: 8, what: format!("{tensor_count} tensor entries") });
        }

        let mut metadata = Vec::with_capacity(kv_count as usize);
        let mut index = HashMap::with_capacity(kv_count as usize);
        for _ in 0..kv_count {
            let key = c.string("metadata key")?;
            let type_id = c.u32(&key)?;
            let value = c.value(type_id, &key, 0)?;
            if index.insert(key.clone(), metadata.len()).is_some() {
                return Err(GgufError::BadMetadata { key, message: "appears twice".into() });
            }
            metadata.push((key, value));
        }

        let alignment = match index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(GgufError::BadMetadata {
                        key: "general.alignment".into(),
                        message: format!("{v:?} is not a power of two up to 1 MiB"),
                    });
                }
            },
        };

        let mut tensors = Vec::with_capacity(tensor_count as usize);
        let mut names = std::collections::HashSet::with_capacity(tensor_count as usize);
        for _ in 0..tensor_count {
            let name = c.string("tensor name")?;
            let n_dims = c.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::BadTensor { name, message: format!("{n_dims} dimensions (1 to 4 allowed)") });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&name)?);
            }
            let type_id = c.u32(&name)?;
            let ggml_type =
                GgmlType::from_id(type_id).ok_or(GgufError::UnknownTensorType { name: name.clone(), type_id })?;
            let offset = c.u64(&name)?;
            let size =
                ggml_type.byte_size(&dims).map_err(|message| GgufError::BadTensor { name: name.clone(), message })?;
            if !offset.is_multiple_of(alignment) {
                return Err(GgufError::BadTensor {
                    name,
                    message: format!("data offset {offset} is not a multiple of the alignment {alignment}"),
                });
            }
            if !names.insert(name.clone()) {
                return Err(GgufError::BadTensor { name, message: "appears twice".into() });
            }
            tensors.push(TensorInfo { name, dims, ggml_type, offset, size });
        }

        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = bytes.len() as u64;
        for t in &tensors {
            let end = data_offset.checked_add(t.offset).and_then(|s| s.checked_add(t.size));
            if end.is_none_or(|end| end > file_len) {
                return Err(GgufError::DataOutOfBounds {
                    name: t.name.clone(),
                    start: data_offset.saturating_add(t.offset),
                    size: t.size,
                    file_len,
                });
            }
        }
        Ok(GgufFile { version, metadata, index, tensors, alignment, data_offset, bytes })
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor (bounds were checked by `parse`).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &'a [u8] {
        let start = (self.data_offset + t.offset) as usize;
        &self.bytes[start..start + t.size as usize]
    }

    /// An unsigned integer value (any width), or `None` when the key is absent.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.typed(key, MetaValue::as_u64, "an unsigned integer")
    }

    pub fn get_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.typed(key, MetaValue::as_f64, "a number")
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.typed(key, MetaValue::as_bool, "a bool")
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| wrong_type(key, v, "a string")),
        }
    }

    /// A string array (`tokenizer.ggml.tokens`, `.merges`).
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>, GgufError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let items = v.as_array().ok_or_else(|| wrong_type(key, v, "an array of strings"))?;
        items
            .iter()
            .map(|i| i.as_str().ok_or_else(|| wrong_type(key, i, "an array of strings")))
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// An integer array (`tokenizer.ggml.token_type`).
    pub fn get_int_array(&self, key: &str) -> Result<Option<Vec<i64>>, GgufError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let items = v.as_array().ok_or_else(|| wrong_type(key, v, "an array of integers"))?;
        items
            .iter()
            .map(|i| i.as_i64().ok_or_else(|| wrong_type(key, i, "an array of integers")))
            .collect::<Result<_, _>>()
            .map(Some)
    }

    fn typed<T>(&self, key: &str, f: impl Fn(&MetaValue) -> Option<T>, expected: &str) -> Result<Option<T>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or_else(|| wrong_type(key, v, expected)),
        }
    }
}

fn wrong_type(key: &str, v: &MetaValue, expected: &str) -> GgufError {
    GgufError::BadMetadata { key: key.to_string(), message: format!("expected {expected}, found {}", v.type_name()) }
}

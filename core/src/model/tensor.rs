//! Weights on the host, as loaders produce them and before they go to the GPU. Names follow
//! Hugging Face (`model.layers.0.self_attn.q_proj.weight`) whatever the file format.

use half::{bf16, f16};

use crate::dtype::{self, Dtype};

/// Element storage of a host tensor: f32, raw f16/bf16 bits (kept compact; the GPU unpacks), or
/// the GPU words of a block format (quantised weights, `crate::dtype`).
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F16(Vec<u16>),
    Bf16(Vec<u16>),
    /// `Dtype::Q4` blocks.
    Q4(Vec<u32>),
    /// `Dtype::Q8` blocks.
    Q8(Vec<u32>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Row-major shape, outermost first (PyTorch order: a linear weight is `[out, in]`).
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl HostTensor {
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        HostTensor { shape, data: TensorData::F32(data) }
    }

    pub fn len(&self) -> usize {
        match &self.data {
            TensorData::F32(v) => v.len(),
            TensorData::F16(v) | TensorData::Bf16(v) => v.len(),
            TensorData::Q4(_) | TensorData::Q8(_) => self.shape.iter().product(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> Dtype {
        match self.data {
            TensorData::F32(_) => Dtype::F32,
            TensorData::F16(_) => Dtype::F16,
            TensorData::Bf16(_) => Dtype::Bf16,
            TensorData::Q4(_) => Dtype::Q4,
            TensorData::Q8(_) => Dtype::Q8,
        }
    }

    /// The tensor stored as `dtype`, converted through its f32 values (rounded to 16 bits or
    /// quantised per block). A block format needs a matrix whose rows are whole blocks; anything
    /// else (1-D norms and biases, other row lengths) is returned as it is.
    pub fn converted(self, dtype: Dtype) -> HostTensor {
        let cols = if self.shape.len() == 2 { self.shape[1] } else { 0 };
        if self.dtype() == dtype || (dtype.is_quantized() && (cols == 0 || !cols.is_multiple_of(dtype.block_elems()))) {
            return self;
        }
        let values = self.to_f32();
        let data = match dtype {
            Dtype::F32 => TensorData::F32(values),
            Dtype::F16 => TensorData::F16(values.iter().map(|&v| f16::from_f32(v).to_bits()).collect()),
            Dtype::Bf16 => TensorData::Bf16(values.iter().map(|&v| bf16::from_f32(v).to_bits()).collect()),
            Dtype::Q4 => TensorData::Q4(dtype::pack(dtype, &values)),
            Dtype::Q8 => TensorData::Q8(dtype::pack(dtype, &values)),
        };
        HostTensor { shape: self.shape, data }
    }

    /// The first element that is NaN or infinite, with its value: weights are checked once as
    /// they are read, since one such weight turns every output into NaN.
    pub fn first_non_finite(&self) -> Option<(usize, f32)> {
        // An all-ones exponent is infinity or NaN in every IEEE format.
        let bits16 = |v: &[u16], exponent: u16, widen: fn(u16) -> f32| {
            v.iter().position(|&b| b & exponent == exponent).map(|i| (i, widen(v[i])))
        };
        match &self.data {
            TensorData::F32(v) => v.iter().position(|x| !x.is_finite()).map(|i| (i, v[i])),
            TensorData::F16(v) => bits16(v, 0x7c00, |b| f16::from_bits(b).to_f32()),
            TensorData::Bf16(v) => bits16(v, 0x7f80, |b| bf16::from_bits(b).to_f32()),
            TensorData::Q4(w) => dtype::first_non_finite_block(Dtype::Q4, w),
            TensorData::Q8(w) => dtype::first_non_finite_block(Dtype::Q8, w),
        }
    }

    /// The values as f32 (a copy for f16/bf16; block formats dequantised as the GPU does).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            TensorData::F32(v) => v.clone(),
            TensorData::F16(v) => v.iter().map(|&b| f16::from_bits(b).to_f32()).collect(),
            TensorData::Bf16(v) => v.iter().map(|&b| bf16::from_bits(b).to_f32()).collect(),
            TensorData::Q4(w) | TensorData::Q8(w) => dtype::unpack(self.dtype(), w, self.len()),
        }
    }

    /// GPU words: f32 bits, f16/bf16 pairs packed two per `u32`, or blocks (see `crate::dtype`).
    pub fn gpu_words(&self) -> Vec<u32> {
        match &self.data {
            TensorData::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
            TensorData::F16(v) | TensorData::Bf16(v) => dtype::pack_bits16(v),
            TensorData::Q4(w) | TensorData::Q8(w) => w.clone(),
        }
    }

    /// Bytes the tensor takes on the GPU.
    pub fn gpu_bytes(&self) -> u64 {
        self.dtype().storage_bytes(self.len())
    }
}

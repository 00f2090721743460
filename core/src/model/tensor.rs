//! Weights on the host, as loaders produce them and before they go to the GPU. Names follow
//! Hugging Face (`model.layers.0.self_attn.q_proj.weight`) whatever the file format.

use half::{bf16, f16};

/// Element storage of a host tensor: f32, or raw f16/bf16 bits (kept compact; the GPU unpacks).
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F16(Vec<u16>),
    Bf16(Vec<u16>),
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
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> crate::dtype::Dtype {
        match self.data {
            TensorData::F32(_) => crate::dtype::Dtype::F32,
            TensorData::F16(_) => crate::dtype::Dtype::F16,
            TensorData::Bf16(_) => crate::dtype::Dtype::Bf16,
        }
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
        }
    }

    /// The values as f32 (a copy for f16/bf16).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            TensorData::F32(v) => v.clone(),
            TensorData::F16(v) => v.iter().map(|&b| f16::from_bits(b).to_f32()).collect(),
            TensorData::Bf16(v) => v.iter().map(|&b| bf16::from_bits(b).to_f32()).collect(),
        }
    }

    /// GPU words: f32 bits, or f16/bf16 pairs packed two per `u32` (see `crate::dtype`).
    pub fn gpu_words(&self) -> Vec<u32> {
        match &self.data {
            TensorData::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
            TensorData::F16(v) | TensorData::Bf16(v) => crate::dtype::pack_bits16(v),
        }
    }
}

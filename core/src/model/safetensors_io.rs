//! Reading and writing `*.safetensors` (Hugging Face's weight files, PEFT adapters, convrec's
//! outputs) with the `safetensors` crate. Readers take bytes plus a name for error messages.

use safetensors::{Dtype as StDtype, SafeTensors};

use super::tensor::{HostTensor, TensorData};

#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct SafetensorsError {
    pub source_name: String,
    pub message: String,
}

fn err(source_name: &str, message: impl Into<String>) -> SafetensorsError {
    SafetensorsError { source_name: source_name.to_string(), message: message.into() }
}

/// Every tensor of a safetensors file as a host tensor (f32, f16 or bf16; other types are refused).
pub fn read_tensors(bytes: &[u8], source_name: &str) -> Result<Vec<(String, HostTensor)>, SafetensorsError> {
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| err(source_name, format!("not a valid safetensors file: {e}")))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let shape = view.shape().to_vec();
        let halves = || data.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect::<Vec<u16>>();
        let data = match view.dtype() {
            StDtype::F32 => {
                TensorData::F32(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
            }
            StDtype::F16 => TensorData::F16(halves()),
            StDtype::BF16 => TensorData::Bf16(halves()),
            other => {
                return Err(err(
                    source_name,
                    format!("tensor {name} has type {other:?}; only F32, F16 and BF16 are supported"),
                ));
            }
        };
        let tensor = HostTensor { shape, data };
        if let Some((i, v)) = tensor.first_non_finite() {
            return Err(err(source_name, format!("tensor {name}: element {i} is {v}; weights must be finite")));
        }
        out.push((name, tensor));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Reads integer or float tensors as f64 values (fixtures, ids), with the shape.
pub fn read_numbers(bytes: &[u8], source_name: &str, name: &str) -> Result<(Vec<usize>, Vec<f64>), SafetensorsError> {
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| err(source_name, format!("not a valid safetensors file: {e}")))?;
    let view = st.tensor(name).map_err(|_| err(source_name, format!("has no tensor {name}")))?;
    let d = view.data();
    let values: Vec<f64> = match view.dtype() {
        StDtype::F32 => d.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64).collect(),
        StDtype::F64 => d.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect(),
        StDtype::I64 => d.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64).collect(),
        StDtype::I32 => d.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as f64).collect(),
        StDtype::BF16 => {
            d.chunks_exact(2).map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f64()).collect()
        }
        StDtype::F16 => {
            d.chunks_exact(2).map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f64()).collect()
        }
        other => return Err(err(source_name, format!("tensor {name} has unsupported type {other:?}"))),
    };
    Ok((view.shape().to_vec(), values))
}

/// Serialises f32 tensors (name, shape, values) into safetensors bytes.
pub fn write_f32(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<Vec<u8>, SafetensorsError> {
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            safetensors::tensor::TensorView::new(StDtype::F32, shape.clone(), b)
                .map(|v| (name.clone(), v))
                .map_err(|e| err("output", format!("tensor {name}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    safetensors::serialize(views, None).map_err(|e| err("output", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_f32_and_refuses_garbage() {
        let bytes = write_f32(&[("a".into(), vec![2, 2], vec![1.0, 2.0, 3.0, 4.5])]).unwrap();
        let t = read_tensors(&bytes, "x.safetensors").unwrap();
        assert_eq!(t[0].1, HostTensor::f32(vec![2, 2], vec![1.0, 2.0, 3.0, 4.5]));
        let e = read_tensors(b"nonsense", "bad.safetensors").unwrap_err().to_string();
        assert!(e.starts_with("bad.safetensors: not a valid safetensors file"), "{e}");
        let e = read_tensors(&bytes[..bytes.len() - 3], "cut.safetensors").unwrap_err().to_string();
        assert!(e.starts_with("cut.safetensors"), "{e}");
    }

    #[test]
    fn non_finite_weights_are_refused_naming_file_tensor_and_element() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let bytes =
                write_f32(&[("ok".into(), vec![2], vec![1.0, 2.0]), ("w".into(), vec![3], vec![0.5, bad, 1.0])])
                    .unwrap();
            let e = read_tensors(&bytes, "model.safetensors").unwrap_err().to_string();
            assert!(e.starts_with("model.safetensors: tensor w: element 1 is"), "{e}");
        }
        // f16 and bf16: an all-ones exponent is infinity or NaN; the largest finite values pass.
        for (dtype, bad, big) in [(StDtype::F16, 0x7e00u16, 0x7bffu16), (StDtype::BF16, 0xff80, 0x7f7f)] {
            for (bits, ok) in [(bad, false), (big, true)] {
                let data: Vec<u8> = [0x3c00u16, bits].iter().flat_map(|b| b.to_le_bytes()).collect();
                let view = safetensors::tensor::TensorView::new(dtype, vec![2], &data).unwrap();
                let bytes = safetensors::serialize([("h".to_string(), view)], None).unwrap();
                let got = read_tensors(&bytes, "half.safetensors");
                assert_eq!(got.is_ok(), ok, "{dtype:?} {bits:#06x}: {:?}", got.err().map(|e| e.to_string()));
            }
        }
    }
}

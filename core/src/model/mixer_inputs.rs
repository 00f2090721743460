//! A mixer's input projections (q | k | v, gate | up) as the inference and training plans run
//! them: one product over their stacked weights ([`StackedProjections`]) where the layer has the
//! stack, one product per input into its columns otherwise, writing (or, backward, reading) one
//! packed row per token. The plans add their LoRA terms per input on the same columns.

use super::decoder::{Mixer, Target};
use super::gpu::{GpuModel, ModelResult, StackedProjections};
use crate::dtype::Dtype;
use crate::gpu::{Batch, Gpu, GpuBuffer};
use crate::ops::matmul::{MatmulSet, MatmulShape, MatmulSpec, Operand};

/// `packed = x·Wᵀ (+ b)`: each input overwrites its columns.
fn forward_spec(dtype: Dtype, has_bias: bool) -> MatmulSpec {
    MatmulSpec { trans_a: false, trans_b: true, has_bias, accumulate: false, b_dtype: dtype }
}

/// `dx (+)= dpacked·W`: the first input (or the stack) overwrites `dx`, the others add.
fn backward_spec(dtype: Dtype, accumulate: bool) -> MatmulSpec {
    MatmulSpec { trans_a: false, trans_b: false, has_bias: false, accumulate, b_dtype: dtype }
}

/// `mixer`'s inputs and their columns `(target, start, end)` in the packed row, and its width.
pub fn columns(model: &GpuModel, mixer: Mixer) -> (Vec<(Target, usize, usize)>, usize) {
    let columns = model.config.decoder().packed_inputs(mixer, &model.config);
    let width = columns.last().map_or(0, |c| c.2);
    (columns, width)
}

/// The widest packed row of any mixer of the model.
pub fn max_width(model: &GpuModel) -> usize {
    model.config.decoder().blocks.iter().map(|b| columns(model, b.mixer).1).max().unwrap_or(0)
}

fn stack(model: &GpuModel, l: usize, mixer: Mixer) -> Option<&StackedProjections> {
    model.layers[l].stack(&mixer.inputs())
}

/// Prepares the products of every layer's mixer inputs over `rows` rows: the forward, and with
/// `backward` the product back to the input.
pub async fn prepare(
    gpu: &Gpu,
    products: &mut MatmulSet,
    model: &GpuModel,
    rows: usize,
    backward: bool,
) -> ModelResult<()> {
    let inp = model.config.hidden_size;
    for l in 0..model.layers.len() {
        for block in model.config.decoder().blocks {
            let mut parts = Vec::new();
            match stack(model, l, block.mixer) {
                Some(s) => parts.push((s.weight.dtype, s.bias.is_some(), s.weight.shape[0], false)),
                None => {
                    for (i, &(target, start, end)) in columns(model, block.mixer).0.iter().enumerate() {
                        let p = model.layers[l].projection(target);
                        parts.push((p.weight.dtype, p.bias.is_some(), end - start, i > 0));
                    }
                }
            }
            for (dtype, has_bias, out, accumulate) in parts {
                products.prepare(gpu, forward_spec(dtype, has_bias), MatmulShape::new(rows, out, inp)).await?;
                if backward {
                    products.prepare(gpu, backward_spec(dtype, accumulate), MatmulShape::new(rows, inp, out)).await?;
                }
            }
        }
    }
    Ok(())
}

/// `packed[rows, width] = x·[W₁; W₂; …]ᵀ (+ b)` for `mixer`'s inputs in layer `l`.
#[allow(clippy::too_many_arguments)]
pub fn record_forward(
    b: &mut Batch,
    products: &MatmulSet,
    model: &GpuModel,
    l: usize,
    mixer: Mixer,
    rows: usize,
    x: &GpuBuffer,
    packed: &GpuBuffer,
) -> ModelResult<()> {
    let inp = model.config.hidden_size;
    let (columns, width) = columns(model, mixer);
    let column = |start: usize| Operand { buf: packed, off: start, ld: width, batch_stride: 0 };
    match stack(model, l, mixer) {
        Some(s) => {
            let product =
                products.get(forward_spec(s.weight.dtype, s.bias.is_some()), MatmulShape::new(rows, width, inp))?;
            product.record(b, Operand::dense(x, inp), s.weight.operand(), s.bias.as_ref(), column(0), 1.0)?;
        }
        None => {
            for &(target, start, end) in &columns {
                let p = model.layers[l].projection(target);
                let spec = forward_spec(p.weight.dtype, p.bias.is_some());
                let product = products.get(spec, MatmulShape::new(rows, end - start, inp))?;
                product.record(b, Operand::dense(x, inp), p.weight.operand(), p.bias.as_ref(), column(start), 1.0)?;
            }
        }
    }
    Ok(())
}

/// `dx[rows, hidden] = dpacked·[W₁; W₂; …]`: the gradient reaching the mixer's input through
/// the frozen weights of its inputs (their LoRA paths are the plan's).
#[allow(clippy::too_many_arguments)]
pub fn record_backward(
    b: &mut Batch,
    products: &MatmulSet,
    model: &GpuModel,
    l: usize,
    mixer: Mixer,
    rows: usize,
    dpacked: &GpuBuffer,
    dx: &GpuBuffer,
) -> ModelResult<()> {
    let inp = model.config.hidden_size;
    let (columns, width) = columns(model, mixer);
    let column = |start: usize| Operand { buf: dpacked, off: start, ld: width, batch_stride: 0 };
    match stack(model, l, mixer) {
        Some(s) => {
            let product = products.get(backward_spec(s.weight.dtype, false), MatmulShape::new(rows, inp, width))?;
            product.record(b, column(0), s.weight.operand(), None, Operand::dense(dx, inp), 1.0)?;
        }
        None => {
            for (i, &(target, start, end)) in columns.iter().enumerate() {
                let w = model.layers[l].weight(target);
                let product = products.get(backward_spec(w.dtype, i > 0), MatmulShape::new(rows, inp, end - start))?;
                product.record(b, column(start), w.operand(), None, Operand::dense(dx, inp), 1.0)?;
            }
        }
    }
    Ok(())
}

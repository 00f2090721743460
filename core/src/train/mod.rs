//! Training: LoRA adapters, the backward pass through the model, the shared LoRA training loop,
//! and the SFT trainer (stage 1). The RL trainer (stage 2) lives in `rl`.

pub mod adapter_view;
pub mod backprop;
pub mod grads;
pub mod lora;
pub mod peft;
pub mod sft;
pub mod trainer;

use crate::gpu::GpuError;
use crate::model::gpu::ModelError;
use crate::model::text::TextError;
use crate::rec::InputError;
use crate::rec::evaluation::EvalError;

/// Why a training step (SFT or RL) could not run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Text(#[from] TextError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// The loss or the gradient norm stopped being a number: the run diverged. The step's update
    /// is not applied when the loss is the culprit; either way nothing of it is saved.
    #[error(
        "step {step}: the {what} is {value} — training diverged (a lower learning rate usually helps); \
         the last checkpoint is untouched"
    )]
    NonFinite { step: u64, what: &'static str, value: f64 },
    /// SFT's gradient vanished while the loss stayed positive: the model's predictions saturated.
    #[error(
        "step {step}: the gradient is exactly zero while the loss is {loss:.4} (ln(vocabulary) = {uniform:.4} \
         would be uniform predictions) — training collapsed, the usual result of a learning rate far too high; \
         the last checkpoint is untouched"
    )]
    Collapsed { step: u64, loss: f64, uniform: f64 },
    /// Under mixed precision a matrix-product operand exceeded f16's range during the step; the
    /// step's update is not applied.
    #[error(
        "step {step}: {}; the last checkpoint is untouched",
        crate::gpu::tensor_cores::overflow_message("training")
    )]
    F16Overflow { step: u64 },
    #[error("{0}")]
    Invalid(String),
}

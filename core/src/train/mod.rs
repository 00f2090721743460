//! Training: LoRA adapters, the backward pass through the model, the shared LoRA training loop,
//! and the SFT trainer (stage 1). The RL trainer (stage 2) lives in `rl`.

pub mod backprop;
pub mod grads;
pub mod lora;
pub mod merge;
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
    #[error("{0}")]
    Invalid(String),
}

//! Training: LoRA adapters, the backward pass through the model, and the objectives (SFT now;
//! Rank-GRPO as it lands).

pub mod backprop;
pub mod grads;
pub mod lora;
pub mod merge;
pub mod peft;
pub mod trainer;

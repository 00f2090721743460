//! Llama/Qwen2-family decoder models: configuration, host-side weights from Hugging Face
//! folders and GGUF files, tokenizer and chat templates, and (as it lands) the GPU forward.

pub mod chat;
pub mod config;
pub mod decoder;
pub mod generate;
pub mod gguf;
pub mod gpu;
pub mod mixer_inputs;
pub mod rope_scaling;
pub mod safetensors_io;
pub mod tensor;
pub mod text;
pub mod tokenizer;

#[cfg(test)]
pub(crate) mod tests;

pub use config::{Architecture, ModelConfig};
pub use decoder::{Decoder, Target};
pub use rope_scaling::RopeScaling;
pub use tensor::{HostTensor, TensorData};

/// A model's weights under their Hugging Face names.
pub type NamedTensors = Vec<(String, HostTensor)>;

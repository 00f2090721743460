//! Llama/Qwen2-family decoder models: configuration, host-side weights from Hugging Face
//! folders and GGUF files, tokenizer and chat templates, and (as it lands) the GPU forward.

pub mod config;
pub mod tensor;

pub use config::{Architecture, ModelConfig};
pub use tensor::{HostTensor, TensorData};

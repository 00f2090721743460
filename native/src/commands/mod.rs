pub mod data;
pub mod demo;
pub mod devices;
pub mod eval;
pub mod generate;
pub mod logits;
pub mod lora_grads;
pub mod score;
pub mod sft;
pub mod tokenize;

use anyhow::Context;
use convrec_core::{Gpu, GpuOptions};

/// Opens the GPU the user chose (or the preferred one) and says which it is.
pub fn open_gpu(options: &GpuOptions) -> anyhow::Result<Gpu> {
    let gpu = pollster::block_on(Gpu::new(options)).context("opening the GPU")?;
    let s = gpu.summary();
    eprintln!("convrec: using {} ({}, {}, driver {} {})", s.name, s.backend, s.device_type, s.driver, s.driver_info);
    Ok(gpu)
}

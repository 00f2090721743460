//! convrec-core: everything platform-neutral. The GPU runtime, the WGSL ops with their CPU
//! references, and (as they land) the model, training objectives and recommendation domain.
//! Compiles for `wasm32-unknown-unknown`; takes bytes, not paths.

pub mod bench;
pub mod choice;
pub mod dtype;
#[cfg(all(test, not(target_arch = "wasm32")))]
mod fuzz_seeds;
pub mod gpu;
pub mod model;
pub mod numeric;
pub mod ops;
pub mod rec;
pub mod rl;
pub mod selfcheck;
pub mod shaders;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
pub mod train;
pub mod workers;

pub use gpu::{Gpu, GpuError, GpuOptions, GpuResult, Precision, TensorCores};

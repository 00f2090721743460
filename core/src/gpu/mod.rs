//! The GPU runtime shared by every op: adapter choice, device with real limits and optional
//! features, buffer pool, pipeline and bind-group caches, batched submission, async readback, and
//! errors as values.

pub mod adapter;
pub mod buffer;
pub mod context;
pub mod error;
#[cfg(not(target_arch = "wasm32"))]
pub mod profile;
pub mod tensor_cores;

pub use adapter::{AdapterSummary, LimitSummary};
pub use buffer::GpuBuffer;
pub use context::{Access, Batch, Gpu, GpuOptions, Kernel, list_adapters};
pub use error::{GpuError, GpuResult};
#[cfg(not(target_arch = "wasm32"))]
pub use profile::{FamilyTime, KernelTime, OpTime, Profile, Timing};
pub use tensor_cores::{Precision, TensorCores};

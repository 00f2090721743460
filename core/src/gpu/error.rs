//! Every way GPU work can fail, as values. wgpu reports validation, out-of-memory and device-lost
//! problems asynchronously (error scopes, callbacks); the runtime turns them into these variants,
//! each naming the operation and the sizes involved so a user can act on the message.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum GpuError {
    #[error(
        "no GPU adapter was found (backends tried: {backends}); install a Vulkan, Metal or DX12 driver, or on a CPU-only Linux machine Mesa's lavapipe (`apt-get install mesa-vulkan-drivers`)"
    )]
    NoAdapter { backends: String },

    #[error("no adapter matches '{wanted}'; available adapters: {available}")]
    AdapterNotFound { wanted: String, available: String },

    #[error("could not open a device on adapter '{adapter}': {message}")]
    RequestDevice { adapter: String, message: String },

    #[error("{op}: {what} needs {requested} bytes but the adapter allows at most {limit} bytes")]
    TooLarge { op: String, what: String, requested: u64, limit: u64 },

    #[error("{op}: {what} needs {requested} workgroups in one dimension but the adapter allows at most {limit}")]
    TooManyWorkgroups { op: String, what: String, requested: u64, limit: u32 },

    #[error("{op}: the GPU ran out of memory ({detail}): {message}")]
    OutOfMemory { op: String, detail: String, message: String },

    #[error("{op}: GPU validation failed ({detail}): {message}")]
    Validation { op: String, detail: String, message: String },

    #[error("{op}: internal GPU error ({detail}): {message}")]
    Internal { op: String, detail: String, message: String },

    #[error("the GPU device was lost ({reason}){during}: {message}")]
    DeviceLost { reason: String, message: String, during: String },

    #[error("{op}: reading {bytes} bytes back from the GPU failed: {message}")]
    Readback { op: String, bytes: u64, message: String },

    #[error("{op}: {message}")]
    Shape { op: String, message: String },
}

impl GpuError {
    pub(crate) fn from_wgpu(op: &str, detail: &str, err: wgpu::Error) -> Self {
        let (op, detail) = (op.to_string(), detail.to_string());
        match err {
            wgpu::Error::OutOfMemory { source } => GpuError::OutOfMemory { op, detail, message: source.to_string() },
            wgpu::Error::Validation { description, .. } => GpuError::Validation { op, detail, message: description },
            wgpu::Error::Internal { description, .. } => GpuError::Internal { op, detail, message: description },
        }
    }

    pub fn shape(op: &str, message: impl Into<String>) -> Self {
        GpuError::Shape { op: op.to_string(), message: message.into() }
    }
}

pub type GpuResult<T> = Result<T, GpuError>;

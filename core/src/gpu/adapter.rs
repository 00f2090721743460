//! Choosing an adapter and describing it. Native builds enumerate every adapter and rank them
//! (discrete GPU first, a CPU rasteriser such as lavapipe last); a name filter from `--adapter` or
//! `CONVREC_ADAPTER` overrides the ranking. The browser exposes a single adapter per request.

use serde::Serialize;

use super::error::GpuError;

/// Environment variable naming the adapter to use (a case-insensitive substring of its name, or its
/// index in `convrec devices`).
pub const ADAPTER_ENV: &str = "CONVREC_ADAPTER";

/// The optional features convrec uses when an adapter has them, and falls back from when it does
/// not (cooperative matrices only when `GpuOptions::cooperative_matrix` asks for them).
pub fn wanted_features() -> wgpu::Features {
    wgpu::Features::SHADER_F16
        | wgpu::Features::SUBGROUP
        | wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
}

/// What the kernels need to know about the device they run on, and what `convrec devices` prints.
#[derive(Clone, Debug, Serialize)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub vendor: u32,
    pub device: u32,
    pub shader_f16: bool,
    pub subgroups: bool,
    pub subgroup_sizes: (u32, u32),
    pub timestamp_queries: bool,
    /// Tensor-core shapes the adapter offers through cooperative matrices (empty without the
    /// feature, or where the device was opened without it).
    pub cooperative_matrix: Vec<CoopMatrixShape>,
    pub limits: LimitSummary,
}

/// One cooperative-matrix configuration: C (M×N, `accumulator`) += A (M×K) · B (K×N), A and B of
/// type `operands`, computed by one subgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CoopMatrixShape {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub operands: &'static str,
    pub accumulator: &'static str,
}

impl CoopMatrixShape {
    fn from_wgpu(p: &wgpu::CooperativeMatrixProperties) -> Self {
        let name = |t: wgpu::CooperativeScalarType| match t {
            wgpu::CooperativeScalarType::F16 => "f16",
            wgpu::CooperativeScalarType::F32 => "f32",
            wgpu::CooperativeScalarType::I32 => "i32",
            wgpu::CooperativeScalarType::U32 => "u32",
        };
        CoopMatrixShape {
            m: p.m_size,
            n: p.n_size,
            k: p.k_size,
            operands: name(p.ab_type),
            accumulator: name(p.cr_type),
        }
    }
}

/// The limits that shape kernels and model placement.
#[derive(Clone, Debug, Serialize)]
pub struct LimitSummary {
    pub max_buffer_size: u64,
    pub max_storage_buffer_binding_size: u64,
    pub max_storage_buffers_per_shader_stage: u32,
    pub max_uniform_buffer_binding_size: u64,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroup_size: [u32; 3],
    pub max_compute_workgroups_per_dimension: u32,
    pub min_storage_buffer_offset_alignment: u32,
    pub min_uniform_buffer_offset_alignment: u32,
}

impl LimitSummary {
    pub fn from_limits(l: &wgpu::Limits) -> Self {
        LimitSummary {
            max_buffer_size: l.max_buffer_size,
            max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
            max_storage_buffers_per_shader_stage: l.max_storage_buffers_per_shader_stage,
            max_uniform_buffer_binding_size: l.max_uniform_buffer_binding_size,
            max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
            max_compute_workgroup_size: [
                l.max_compute_workgroup_size_x,
                l.max_compute_workgroup_size_y,
                l.max_compute_workgroup_size_z,
            ],
            max_compute_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
            min_storage_buffer_offset_alignment: l.min_storage_buffer_offset_alignment,
            min_uniform_buffer_offset_alignment: l.min_uniform_buffer_offset_alignment,
        }
    }
}

impl AdapterSummary {
    /// Describes an adapter with the given features and limits (those of the adapter itself, or
    /// those a device was actually granted).
    pub fn new(
        info: &wgpu::AdapterInfo,
        features: wgpu::Features,
        limits: &wgpu::Limits,
        coop: &[wgpu::CooperativeMatrixProperties],
    ) -> Self {
        let cooperative_matrix = if features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
            coop.iter().map(CoopMatrixShape::from_wgpu).collect()
        } else {
            Vec::new()
        };
        AdapterSummary {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: device_type_name(info.device_type).to_string(),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            vendor: info.vendor,
            device: info.device,
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            subgroup_sizes: (info.subgroup_min_size, info.subgroup_max_size),
            timestamp_queries: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            cooperative_matrix,
            limits: LimitSummary::from_limits(limits),
        }
    }

    pub fn of_adapter(adapter: &wgpu::Adapter) -> Self {
        Self::new(&adapter.get_info(), adapter.features(), &adapter.limits(), &adapter.cooperative_matrix_properties())
    }

    /// True for software rasterisers (llvmpipe/lavapipe, SwiftShader, WARP): these reward different
    /// kernel shapes than real GPUs (no cheap workgroup memory or barriers; CPU caches do the tiling).
    pub fn is_cpu(&self) -> bool {
        self.device_type == "cpu"
    }
}

pub fn device_type_name(t: wgpu::DeviceType) -> &'static str {
    match t {
        wgpu::DeviceType::DiscreteGpu => "discrete-gpu",
        wgpu::DeviceType::IntegratedGpu => "integrated-gpu",
        wgpu::DeviceType::VirtualGpu => "virtual-gpu",
        wgpu::DeviceType::Cpu => "cpu",
        wgpu::DeviceType::Other => "other",
    }
}

/// Higher is preferred when no adapter is named.
fn preference(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let by_type = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 4,
        wgpu::DeviceType::IntegratedGpu => 3,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 1,
        wgpu::DeviceType::Other => 0,
    };
    // Native compute backends before OpenGL, whose compute support is the weakest.
    let by_backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 | wgpu::Backend::BrowserWebGpu => 1,
        _ => 0,
    };
    (by_type, by_backend)
}

/// Picks one adapter from `adapters`: the one `wanted` names (an index or a case-insensitive
/// substring of the name), else the most preferred.
pub fn choose(
    adapters: Vec<wgpu::Adapter>,
    wanted: Option<&str>,
    worker_on_host: usize,
) -> Result<wgpu::Adapter, GpuError> {
    if adapters.is_empty() {
        return Err(GpuError::NoAdapter {
            backends: format!("{:?}", wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all())),
        });
    }
    let describe = |adapters: &[wgpu::Adapter]| {
        adapters
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let info = a.get_info();
                format!("[{i}] {} ({:?}, {})", info.name, info.backend, device_type_name(info.device_type))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    match wanted.map(str::trim).filter(|w| !w.is_empty()) {
        Some(wanted) => {
            if let Ok(index) = wanted.parse::<usize>() {
                if index < adapters.len() {
                    return Ok(adapters.into_iter().nth(index).expect("index checked"));
                }
            }
            let needle = wanted.to_lowercase();
            let position = adapters.iter().position(|a| a.get_info().name.to_lowercase().contains(&needle));
            match position {
                Some(i) => Ok(adapters.into_iter().nth(i).expect("position found")),
                None => Err(GpuError::AdapterNotFound { wanted: wanted.to_string(), available: describe(&adapters) }),
            }
        }
        None => {
            // The preferred kind of adapter; several of it (a machine's GPUs) are dealt out to
            // the workers on this host in turn, and shared when there are more workers.
            let best = adapters.iter().map(|a| preference(&a.get_info())).max().expect("non-empty");
            let ties: Vec<usize> =
                (0..adapters.len()).filter(|&i| preference(&adapters[i].get_info()) == best).collect();
            let pick = ties[worker_on_host % ties.len()];
            Ok(adapters.into_iter().nth(pick).expect("index in range"))
        }
    }
}

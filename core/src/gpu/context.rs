//! The GPU runtime: one device, its granted features and limits, and the caches every op shares
//! (pipelines by specialisation, bind-group layouts by binding signature, bind groups by buffers,
//! pooled buffers, one uniform arena for dispatch parameters).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::adapter::{self, AdapterSummary};
use super::buffer::{BufferPool, GpuBuffer};
use super::error::{GpuError, GpuResult};
use crate::shaders::Variant;

/// How to open the GPU.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Adapter name (case-insensitive substring) or index; falls back to `CONVREC_ADAPTER`.
    pub adapter: Option<String>,
    /// Ask for no optional features (f16, subgroups, timestamps): exercises the portable path.
    pub portable: bool,
    /// Mixed precision (`--precision mixed`): open the device with cooperative matrices where
    /// the adapter reports a configuration the products can use (`TensorCores::of`), and run the
    /// matrix products on tensor cores with f16 operands and f32 accumulation. Off unless asked
    /// for: the feature is experimental in wgpu and switches the SPIR-V of every kernel to the
    /// Vulkan memory model. Adapters without it keep the f32 kernels (`Gpu::precision` tells).
    pub cooperative_matrix: bool,
    /// Choose the GPU-adapter kernel variants even on a CPU adapter (`Gpu::cpu_kernels`): tests
    /// run the GPU paths of a whole model on lavapipe this way.
    pub gpu_kernels: bool,
    /// This process's place among the data-parallel workers on its host (0 alone): when no
    /// adapter is named, worker i takes the i-th of the preferred adapters (modulo their number).
    pub worker_on_host: usize,
    /// How models uploaded to this GPU keep their frozen weights (`--weights`; `GpuModel::upload`).
    pub weights: crate::dtype::WeightFormat,
    /// How inference applies a LoRA adapter: merged into f32 copies, or unmerged (`--adapters`;
    /// `train::adapter_view`).
    pub adapters: crate::train::adapter_view::AdapterMode,
}

/// Access of one storage binding, in binding order after the uniform at binding 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    ReadWrite,
}

/// Per-dispatch parameters live in slots of this size in the uniform arena; every kernel's
/// `Params` struct must fit (WebGPU caps the offset alignment at 256, so slots are always aligned).
pub const PARAM_SLOT: u64 = 256;

/// A compiled compute pipeline and the binding signature it was laid out for.
#[derive(Debug)]
pub struct Kernel {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: Arc<wgpu::BindGroupLayout>,
    pub(crate) layout_key: Vec<Access>,
    pub(crate) label: String,
    /// The shader file's name: what a profile groups variants under.
    pub(crate) family: &'static str,
}

impl Kernel {
    pub fn label(&self) -> &str {
        &self.label
    }
    pub fn family(&self) -> &'static str {
        self.family
    }
}

#[derive(Default)]
struct Caches {
    kernels: HashMap<Variant, Arc<Kernel>>,
    layouts: HashMap<Vec<Access>, Arc<wgpu::BindGroupLayout>>,
    bind_groups: HashMap<BindGroupKey, wgpu::BindGroup>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct BindGroupKey {
    layout: Vec<Access>,
    arena: u64,
    buffers: Vec<(u64, u64)>,
}

/// Bind groups are cheap to keep but unbounded in principle; past this many the cache restarts.
const MAX_CACHED_BIND_GROUPS: usize = 8192;

struct Arena {
    id: u64,
    buffer: wgpu::Buffer,
    capacity: u64,
}

/// Set asynchronously by wgpu's callbacks, read before each submission.
#[derive(Default)]
struct Faults {
    lost: Option<(String, String)>,
    uncaptured: Vec<String>,
}

/// A handle to the GPU; cheap to clone.
#[derive(Clone)]
pub struct Gpu {
    inner: Arc<Inner>,
}

struct Inner {
    _instance: wgpu::Instance,
    _adapter: wgpu::Adapter,
    device: wgpu::Device,
    queue: wgpu::Queue,
    summary: AdapterSummary,
    cpu_kernels: bool,
    tensor_cores: Option<super::TensorCores>,
    weights: crate::dtype::WeightFormat,
    adapters: crate::train::adapter_view::AdapterMode,
    /// One u32 the mixed-precision products set when an operand exceeds f16's range.
    f16_overflow: std::sync::OnceLock<GpuBuffer>,
    limits: wgpu::Limits,
    pool: BufferPool,
    caches: Mutex<Caches>,
    arena: Mutex<Arena>,
    faults: Arc<Mutex<Faults>>,
    #[cfg(not(target_arch = "wasm32"))]
    profiler: super::profile::Profiler,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("adapter", &self.inner.summary.name).finish()
    }
}

fn new_instance() -> wgpu::Instance {
    // `WGPU_BACKEND` etc. narrow the backends, as in every wgpu program.
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

/// Every adapter this machine exposes (empty in a browser, which hands out one adapter on request).
pub async fn list_adapters() -> Vec<AdapterSummary> {
    enumerate(&new_instance()).await.iter().map(AdapterSummary::of_adapter).collect()
}

async fn enumerate(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    instance.enumerate_adapters(wgpu::Backends::all()).await
}

impl Gpu {
    /// Opens the preferred (or requested) adapter with its real limits and whichever optional
    /// features convrec can use.
    pub async fn new(options: &GpuOptions) -> GpuResult<Gpu> {
        let instance = new_instance();
        let adapter = Self::select_adapter(&instance, options).await?;
        let info = adapter.get_info();
        let mut wanted = adapter::wanted_features();
        wanted.set(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX, options.cooperative_matrix);
        let features = if options.portable { wgpu::Features::empty() } else { adapter.features() & wanted };
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("convrec"),
                required_features: features,
                required_limits: limits.clone(),
                // SAFETY: the only experimental feature convrec may ask for is cooperative
                // matrices, only on request and where the adapter reports them; kernels that use
                // them are checked against their CPU reference like every other kernel.
                experimental_features: if features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
                    unsafe { wgpu::ExperimentalFeatures::enabled() }
                } else {
                    wgpu::ExperimentalFeatures::disabled()
                },
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| GpuError::RequestDevice { adapter: info.name.clone(), message: e.to_string() })?;

        let faults = Arc::new(Mutex::new(Faults::default()));
        {
            let faults = faults.clone();
            device.set_device_lost_callback(move |reason, message| {
                if let Ok(mut f) = faults.lock() {
                    f.lost = Some((format!("{reason:?}"), message));
                }
            });
        }
        {
            // wgpu's default handler panics; an error outside any scope becomes a Result at the
            // next submission instead.
            let faults = faults.clone();
            device.on_uncaptured_error(Arc::new(move |err: wgpu::Error| {
                log::error!("uncaptured GPU error: {err}");
                if let Ok(mut f) = faults.lock() {
                    f.uncaptured.push(err.to_string());
                }
            }));
        }

        let summary =
            AdapterSummary::new(&info, device.features(), &device.limits(), &adapter.cooperative_matrix_properties());
        let arena_capacity = 64 * PARAM_SLOT;
        let arena = Arena {
            id: super::buffer::next_buffer_id(),
            buffer: create_arena(&device, arena_capacity),
            capacity: arena_capacity,
        };
        Ok(Gpu {
            inner: Arc::new(Inner {
                _instance: instance,
                _adapter: adapter,
                limits: device.limits(),
                device,
                queue,
                cpu_kernels: summary.is_cpu() && !options.gpu_kernels,
                tensor_cores: if options.cooperative_matrix { super::TensorCores::of(&summary) } else { None },
                weights: options.weights,
                adapters: options.adapters,
                f16_overflow: Default::default(),
                summary,
                pool: BufferPool::default(),
                caches: Mutex::new(Caches::default()),
                arena: Mutex::new(arena),
                faults,
                #[cfg(not(target_arch = "wasm32"))]
                profiler: Default::default(),
            }),
        })
    }

    async fn select_adapter(instance: &wgpu::Instance, options: &GpuOptions) -> GpuResult<wgpu::Adapter> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let env = std::env::var(adapter::ADAPTER_ENV).ok();
            let wanted = options.adapter.clone().or(env);
            adapter::choose(enumerate(instance).await, wanted.as_deref(), options.worker_on_host)
        }
        #[cfg(target_arch = "wasm32")]
        {
            let _ = options;
            instance
                .request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::HighPerformance,
                    ..Default::default()
                })
                .await
                .map_err(|e| GpuError::NoAdapter { backends: format!("WebGPU ({e})") })
        }
    }

    pub fn summary(&self) -> &AdapterSummary {
        &self.inner.summary
    }
    /// Whether ops pick their CPU-adapter kernel variants: on a CPU adapter (llvmpipe wants big
    /// register blocks and no workgroup memory) unless `GpuOptions::gpu_kernels` asked otherwise.
    pub fn cpu_kernels(&self) -> bool {
        self.inner.cpu_kernels
    }
    /// The tensor-core configuration the matrix products use (`None`: f32 kernels).
    pub fn tensor_cores(&self) -> Option<super::TensorCores> {
        self.inner.tensor_cores
    }
    pub fn precision(&self) -> super::Precision {
        if self.inner.tensor_cores.is_some() { super::Precision::Mixed } else { super::Precision::F32 }
    }

    /// How models uploaded here keep their frozen weights (`GpuOptions::weights`).
    pub fn weight_format(&self) -> crate::dtype::WeightFormat {
        self.inner.weights
    }

    /// How inference applies adapters here (`GpuOptions::adapters`).
    pub fn adapter_mode(&self) -> crate::train::adapter_view::AdapterMode {
        self.inner.adapters
    }

    /// The flag the mixed-precision products raise on an operand beyond f16's range.
    pub(crate) fn f16_overflow_flag(&self) -> GpuResult<&GpuBuffer> {
        if let Some(flag) = self.inner.f16_overflow.get() {
            return Ok(flag);
        }
        let flag = self.upload("matmul", "f16 overflow flag", &[0u32])?;
        Ok(self.inner.f16_overflow.get_or_init(|| flag))
    }

    /// Whether a mixed-precision product met an operand beyond f16's range since the last call
    /// (which clears the flag). Always false under f32 precision. Trainers call it every step.
    pub async fn take_f16_overflow(&self) -> GpuResult<bool> {
        let Some(flag) = self.inner.f16_overflow.get() else { return Ok(false) };
        let raised = self.read::<u32>("f16 overflow check", flag).await?[0] != 0;
        if raised {
            self.write(flag, bytemuck::bytes_of(&0u32));
        }
        Ok(raised)
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }
    pub fn pool(&self) -> &BufferPool {
        &self.inner.pool
    }
    #[cfg(not(target_arch = "wasm32"))]
    pub(super) fn profiler(&self) -> &super::profile::Profiler {
        &self.inner.profiler
    }

    /// Fails if the device was lost or an error escaped every scope since the last check.
    pub fn check_health(&self, during: &str) -> GpuResult<()> {
        let mut faults = self.inner.faults.lock().expect("fault lock");
        if let Some((reason, message)) = &faults.lost {
            return Err(GpuError::DeviceLost {
                reason: reason.clone(),
                message: message.clone(),
                during: format!(" during {during}"),
            });
        }
        if !faults.uncaptured.is_empty() {
            let message = faults.uncaptured.drain(..).collect::<Vec<_>>().join("; ");
            return Err(GpuError::Internal {
                op: during.to_string(),
                detail: "error outside an error scope".into(),
                message,
            });
        }
        Ok(())
    }

    /// A storage buffer of `bytes` bytes, checked against the adapter's limits.
    pub fn storage(&self, op: &str, what: &str, bytes: u64) -> GpuResult<GpuBuffer> {
        self.check_binding_size(op, what, bytes)?;
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        Ok(self.inner.pool.acquire(&self.inner.device, bytes, usage, what))
    }

    /// A storage buffer holding `data`.
    pub fn upload<T: bytemuck::Pod>(&self, op: &str, what: &str, data: &[T]) -> GpuResult<GpuBuffer> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let buffer = self.storage(op, what, bytes.len() as u64)?;
        self.write(&buffer, bytes);
        Ok(buffer)
    }

    /// Overwrites the start of `buffer` with `bytes` (padded to the 4-byte copy granularity).
    pub fn write(&self, buffer: &GpuBuffer, bytes: &[u8]) {
        if bytes.len().is_multiple_of(4) {
            self.inner.queue.write_buffer(buffer.raw(), 0, bytes);
        } else {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().div_ceil(4) * 4, 0);
            self.inner.queue.write_buffer(buffer.raw(), 0, &padded);
        }
    }

    /// Fills a buffer of f32 with one value (tests poison outputs with NaN this way).
    pub fn fill_f32(&self, buffer: &GpuBuffer, value: f32) {
        let n = (buffer.binding_size() / 4) as usize;
        self.inner.queue.write_buffer(buffer.raw(), 0, bytemuck::cast_slice(&vec![value; n]));
    }

    pub fn check_binding_size(&self, op: &str, what: &str, bytes: u64) -> GpuResult<()> {
        let limit = self.inner.limits.max_storage_buffer_binding_size.min(self.inner.limits.max_buffer_size);
        if bytes > limit {
            return Err(GpuError::TooLarge { op: op.into(), what: what.into(), requested: bytes, limit });
        }
        Ok(())
    }

    /// Checks a workgroup count against `maxComputeWorkgroupsPerDimension`.
    pub fn check_workgroups(&self, op: &str, what: &str, groups: [u64; 3]) -> GpuResult<[u32; 3]> {
        let limit = self.inner.limits.max_compute_workgroups_per_dimension;
        let mut out = [0u32; 3];
        for (i, &g) in groups.iter().enumerate() {
            if g > limit as u64 {
                return Err(GpuError::TooManyWorkgroups {
                    op: op.into(),
                    what: format!("{what} (dimension {i})"),
                    requested: g,
                    limit,
                });
            }
            out[i] = g as u32;
        }
        Ok(out)
    }

    /// The pipeline for `variant`, compiled on first use. `bindings` lists the storage bindings
    /// (1, 2, …) after the dynamic-offset uniform at binding 0.
    pub async fn kernel(&self, variant: &Variant, bindings: &[Access]) -> GpuResult<Arc<Kernel>> {
        if let Some(k) = self.inner.caches.lock().expect("cache lock").kernels.get(variant) {
            return Ok(k.clone());
        }
        let label = variant.label();
        let layout = self.layout(bindings);
        let device = &self.inner.device;
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(&label),
            source: wgpu::ShaderSource::Wgsl(variant.render().into()),
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(&label),
            bind_group_layouts: &[Some(&*layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(variant.entry),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(err) = validation.pop().await {
            return Err(GpuError::from_wgpu("compile kernel", &label, err));
        }
        let kernel =
            Arc::new(Kernel { pipeline, layout, layout_key: bindings.to_vec(), label, family: variant.shader });
        self.inner.caches.lock().expect("cache lock").kernels.insert(variant.clone(), kernel.clone());
        Ok(kernel)
    }

    fn layout(&self, bindings: &[Access]) -> Arc<wgpu::BindGroupLayout> {
        let mut caches = self.inner.caches.lock().expect("cache lock");
        if let Some(l) = caches.layouts.get(bindings) {
            return l.clone();
        }
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: true,
                min_binding_size: None,
            },
            count: None,
        }];
        for (i, access) in bindings.iter().enumerate() {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: i as u32 + 1,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: *access == Access::Read },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let layout =
            Arc::new(self.inner.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("convrec"),
                entries: &entries,
            }));
        caches.layouts.insert(bindings.to_vec(), layout.clone());
        layout
    }

    /// Starts a batch of GPU work, submitted together as one command buffer.
    pub fn batch(&self, op: &str) -> Batch {
        Batch { gpu: self.clone(), op: op.to_string(), steps: Vec::new(), params: Vec::new() }
    }

    /// Waits until all submitted work has finished (benchmarks, progress reporting).
    pub async fn finish(&self) -> GpuResult<()> {
        let (sender, receiver) = futures_channel::oneshot::channel();
        self.inner.queue.on_submitted_work_done(move || {
            let _ = sender.send(());
        });
        #[cfg(not(target_arch = "wasm32"))]
        let _ = self.inner.device.poll(wgpu::PollType::wait_indefinitely());
        let _ = receiver.await;
        self.check_health("finish")
    }

    /// Reads `buffer` back as a vector of `T`.
    pub async fn read<T: bytemuck::Pod>(&self, op: &str, buffer: &GpuBuffer) -> GpuResult<Vec<T>> {
        let bytes = buffer.binding_size();
        let staging = self.staging(bytes);
        let mut batch = self.batch(op);
        batch.copy(buffer, &staging, bytes);
        batch.submit().await?;
        self.map_read(op, &staging, buffer.len_bytes()).await
    }

    /// A mappable buffer to copy results into for [`Self::map_read`].
    pub(super) fn staging(&self, bytes: u64) -> GpuBuffer {
        self.inner.pool.acquire(
            &self.inner.device,
            bytes,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            "readback",
        )
    }

    /// The first `len` bytes of `staging` as `T`s, once the submitted work that fills it is done.
    pub(super) async fn map_read<T: bytemuck::Pod>(
        &self,
        op: &str,
        staging: &GpuBuffer,
        len: u64,
    ) -> GpuResult<Vec<T>> {
        let bytes = staging.binding_size();
        let (sender, receiver) = futures_channel::oneshot::channel();
        staging.raw().slice(0..bytes).map_async(wgpu::MapMode::Read, move |result| {
            let _ = sender.send(result);
        });
        // Native backends deliver the map callback from `poll`; the browser delivers it from its
        // event loop, so the WASM build never blocks here.
        #[cfg(not(target_arch = "wasm32"))]
        let _ = self.inner.device.poll(wgpu::PollType::wait_indefinitely());
        let outcome = receiver.await;
        let readback_err = |message: String| GpuError::Readback { op: op.to_string(), bytes, message };
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.check_health(op)?;
                return Err(readback_err(e.to_string()));
            }
            Err(_) => {
                self.check_health(op)?;
                return Err(readback_err("the map callback was dropped".into()));
            }
        }
        let out = {
            let view = staging.raw().slice(0..bytes).get_mapped_range().map_err(|e| readback_err(e.to_string()))?;
            let n = len as usize / std::mem::size_of::<T>();
            bytemuck::cast_slice::<u8, T>(&view[..n * std::mem::size_of::<T>()]).to_vec()
        };
        staging.raw().unmap();
        Ok(out)
    }
}

fn create_arena(device: &wgpu::Device, capacity: u64) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("convrec params arena"),
        size: capacity,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

enum Step {
    Dispatch { kernel: Arc<Kernel>, buffers: Vec<GpuBuffer>, param_offset: u32, groups: [u32; 3] },
    Copy { from: GpuBuffer, from_offset: u64, to: GpuBuffer, to_offset: u64, bytes: u64 },
    Clear { buf: GpuBuffer },
}

/// Recorded GPU work, submitted as one command buffer in one error scope. Dispatch parameters are
/// gathered into one upload; consecutive dispatches share a compute pass.
pub struct Batch {
    gpu: Gpu,
    op: String,
    steps: Vec<Step>,
    params: Vec<u8>,
}

impl Batch {
    /// Records one dispatch of `kernel` with its parameters (a `Pod` struct of at most
    /// `PARAM_SLOT` bytes) and storage buffers in binding order.
    pub fn dispatch<P: bytemuck::Pod>(
        &mut self,
        kernel: &Arc<Kernel>,
        params: &P,
        buffers: &[&GpuBuffer],
        groups: [u32; 3],
    ) {
        let bytes = bytemuck::bytes_of(params);
        assert!(
            bytes.len() as u64 <= PARAM_SLOT,
            "{}: parameters of {} bytes exceed the {PARAM_SLOT}-byte slot",
            kernel.label,
            bytes.len()
        );
        assert_eq!(buffers.len(), kernel.layout_key.len(), "{}: wrong number of buffers", kernel.label);
        let param_offset = self.params.len() as u32;
        self.params.extend_from_slice(bytes);
        self.params.resize(self.params.len().div_ceil(PARAM_SLOT as usize) * PARAM_SLOT as usize, 0);
        if groups.contains(&0) {
            return; // nothing to do; WebGPU allows it but some drivers dislike empty dispatches
        }
        self.steps.push(Step::Dispatch {
            kernel: kernel.clone(),
            buffers: buffers.iter().map(|b| (*b).clone()).collect(),
            param_offset,
            groups,
        });
    }

    /// Records a buffer-to-buffer copy of `bytes` bytes.
    pub fn copy(&mut self, from: &GpuBuffer, to: &GpuBuffer, bytes: u64) {
        self.copy_range(from, 0, to, 0, bytes);
    }

    /// Records a copy of `bytes` bytes from `from` at `from_offset` to `to` at `to_offset`
    /// (offsets and length multiples of 4).
    pub fn copy_range(&mut self, from: &GpuBuffer, from_offset: u64, to: &GpuBuffer, to_offset: u64, bytes: u64) {
        self.steps.push(Step::Copy { from: from.clone(), from_offset, to: to.clone(), to_offset, bytes });
    }

    /// Records zeroing the bytes in use of `buf`.
    pub fn clear(&mut self, buf: &GpuBuffer) {
        self.steps.push(Step::Clear { buf: buf.clone() });
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The op name the batch was started with.
    pub fn op(&self) -> &str {
        &self.op
    }

    /// The kernel of each recorded dispatch, in order, and the number of other steps (copies and
    /// clears): what a profile counts.
    #[cfg(not(target_arch = "wasm32"))]
    pub(super) fn contents(&self) -> (Vec<&Kernel>, usize) {
        let kernels: Vec<&Kernel> = self
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Dispatch { kernel, .. } => Some(&**kernel),
                _ => None,
            })
            .collect();
        let others = self.steps.len() - kernels.len();
        (kernels, others)
    }

    /// Submits the work; fails with the wgpu error, the op name and its dispatch count. Under
    /// [`Gpu::profile_start`] the work is also timed (see `profile`).
    pub async fn submit(self) -> GpuResult<()> {
        #[cfg(not(target_arch = "wasm32"))]
        if self.gpu.inner.profiler.is_on() {
            return super::profile::submit(self).await;
        }
        self.submit_with(&[], |_| {}).await
    }

    /// Records the steps into one command buffer and submits it inside the error scopes.
    /// Consecutive dispatches share a compute pass, unless `timestamps` are given (profiling):
    /// then dispatch `d` gets a pass of its own that writes queries `2d` and `2d + 1` (counted
    /// within set `d / DISPATCHES_PER_QUERY_SET`), and `finish` records last (the resolve).
    pub(super) async fn submit_with(
        &self,
        timestamps: &[wgpu::QuerySet],
        finish: impl FnOnce(&mut wgpu::CommandEncoder),
    ) -> GpuResult<()> {
        let gpu = &self.gpu;
        gpu.check_health(&self.op)?;
        let inner = &gpu.inner;
        let device = &inner.device;
        let detail = format!("{} steps, {} bytes of parameters", self.steps.len(), self.params.len());
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        {
            let mut arena = inner.arena.lock().expect("arena lock");
            if (self.params.len() as u64) > arena.capacity {
                let capacity = (self.params.len() as u64).next_power_of_two();
                arena.buffer.destroy();
                *arena =
                    Arena { id: super::buffer::next_buffer_id(), buffer: create_arena(device, capacity), capacity };
            }
            if !self.params.is_empty() {
                inner.queue.write_buffer(&arena.buffer, 0, &self.params);
            }
            let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(&self.op) });
            let mut caches = inner.caches.lock().expect("cache lock");
            let mut i = 0;
            let mut dispatched = 0;
            while i < self.steps.len() {
                match &self.steps[i] {
                    Step::Copy { from, from_offset, to, to_offset, bytes } => {
                        encoder.copy_buffer_to_buffer(from.raw(), *from_offset, to.raw(), *to_offset, *bytes);
                        i += 1;
                    }
                    Step::Clear { buf } => {
                        encoder.clear_buffer(buf.raw(), 0, Some(buf.binding_size()));
                        i += 1;
                    }
                    Step::Dispatch { .. } => {
                        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: Some(&self.op),
                            timestamp_writes: timestamp_writes(timestamps, dispatched),
                        });
                        while let Some(Step::Dispatch { kernel, buffers, param_offset, groups }) = self.steps.get(i) {
                            let bind_group = bind_group(device, &mut caches, &arena, kernel, buffers);
                            pass.set_pipeline(&kernel.pipeline);
                            pass.set_bind_group(0, &bind_group, &[*param_offset]);
                            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                            i += 1;
                            dispatched += 1;
                            if !timestamps.is_empty() {
                                break;
                            }
                        }
                    }
                }
            }
            drop(caches);
            finish(&mut encoder);
            inner.queue.submit([encoder.finish()]);
        }
        let validation_err = validation.pop().await;
        let oom_err = oom.pop().await;
        if let Some(e) = oom_err.or(validation_err) {
            return Err(GpuError::from_wgpu(&self.op, &detail, e));
        }
        gpu.check_health(&self.op)
    }
}

/// Dispatches whose two timestamps one query set holds.
pub(super) const DISPATCHES_PER_QUERY_SET: u32 = wgpu::QUERY_SET_MAX_QUERIES / 2;

/// The queries the pass of dispatch `d` writes, when profiling.
fn timestamp_writes(sets: &[wgpu::QuerySet], d: u32) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
    let set = sets.get((d / DISPATCHES_PER_QUERY_SET) as usize)?;
    let first = 2 * (d % DISPATCHES_PER_QUERY_SET);
    Some(wgpu::ComputePassTimestampWrites {
        query_set: set,
        beginning_of_pass_write_index: Some(first),
        end_of_pass_write_index: Some(first + 1),
    })
}

fn bind_group(
    device: &wgpu::Device,
    caches: &mut Caches,
    arena: &Arena,
    kernel: &Kernel,
    buffers: &[GpuBuffer],
) -> wgpu::BindGroup {
    let key = BindGroupKey {
        layout: kernel.layout_key.clone(),
        arena: arena.id,
        buffers: buffers.iter().map(|b| (b.id(), b.binding_size())).collect(),
    };
    if let Some(bg) = caches.bind_groups.get(&key) {
        return bg.clone();
    }
    let mut entries = vec![wgpu::BindGroupEntry {
        binding: 0,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &arena.buffer,
            offset: 0,
            size: wgpu::BufferSize::new(PARAM_SLOT),
        }),
    }];
    for (i, b) in buffers.iter().enumerate() {
        entries.push(wgpu::BindGroupEntry {
            binding: i as u32 + 1,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: b.raw(),
                offset: 0,
                size: wgpu::BufferSize::new(b.binding_size()),
            }),
        });
    }
    let bg = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(&kernel.label),
        layout: &kernel.layout,
        entries: &entries,
    });
    if caches.bind_groups.len() >= MAX_CACHED_BIND_GROUPS {
        caches.bind_groups.clear();
    }
    caches.bind_groups.insert(key, bg.clone());
    bg
}

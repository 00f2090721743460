//! What every GPU command opens first, once: the GPU and the model's weights and text side. The
//! demo and the experiment run several stages (SFT, RL, evaluations) in one session.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::Context;
use convrec_core::workers::{Single, Workers};
use convrec_core::{Gpu, GpuOptions};

use crate::text_model::TextModel;

pub struct Session {
    pub gpu: Gpu,
    pub tm: TextModel,
    /// The model file or folder (the default model's cached GGUF when none was given).
    pub model_path: PathBuf,
    /// What adapters record as their base (`text_model::base_model_name`): never a local path.
    pub base_name: String,
    /// The data-parallel workers this process trains with (itself alone unless `mpirun` started it).
    pub workers: Rc<dyn Workers>,
}

impl Session {
    /// Loads `model` (or the default model) and opens the GPU the user chose.
    pub fn open(gpu_options: &GpuOptions, model: Option<&Path>) -> anyhow::Result<Self> {
        let model_path = crate::text_model::model_path(model)?;
        let tm = crate::text_model::load(&model_path)?;
        let gpu = open_gpu(gpu_options)?;
        let base_name = crate::text_model::base_model_name(model, &model_path);
        Ok(Session { gpu, tm, model_path, base_name, workers: Rc::new(Single) })
    }

    /// The session as one of `workers` (see `crate::workers`).
    pub fn with_workers(mut self, workers: Rc<dyn Workers>) -> Self {
        self.workers = workers;
        self
    }

    /// Whether this process writes what the run keeps (metrics, checkpoints, the adapter): the
    /// only worker, or worker 0 of several.
    pub fn writes(&self) -> bool {
        self.workers.rank() == 0
    }

    /// The model's weights on the GPU with room for `positions` tokens per sequence.
    pub fn upload(&self, positions: usize) -> anyhow::Result<convrec_core::model::gpu::GpuModel> {
        convrec_core::model::gpu::GpuModel::upload(
            &self.gpu,
            self.tm.config.clone(),
            self.tm.tensors.clone(),
            positions,
        )
        .with_context(|| format!("loading {}", self.model_path.display()))
    }
}

/// Opens the GPU the user chose (or the preferred one) and says which it is.
pub fn open_gpu(options: &GpuOptions) -> anyhow::Result<Gpu> {
    let gpu = pollster::block_on(Gpu::new(options)).context("opening the GPU")?;
    let s = gpu.summary();
    eprintln!("convrec: using {} ({}, {}, driver {} {})", s.name, s.backend, s.device_type, s.driver, s.driver_info);
    match gpu.tensor_cores() {
        Some(tc) => eprintln!(
            "convrec: precision {} ({}×{} tiles, subgroups of {})",
            gpu.precision(),
            tc.tile,
            tc.tile,
            tc.subgroup_size
        ),
        None if options.cooperative_matrix => eprintln!(
            "convrec: --precision mixed asked for, but this adapter offers no cooperative matrices convrec can use (`convrec devices` lists them): computing in f32"
        ),
        None => {}
    }
    Ok(gpu)
}

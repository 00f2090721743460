//! LoRA adapters (PEFT's conventions): for each targeted projection W `[out, in]` of each layer,
//! A `[r, in]` and B `[out, r]`, adding `(alpha / r) · B (A x)` to the output without ever forming
//! `B·A`. All factors live in one flat f32 buffer so one AdamW dispatch updates them all; each
//! factor starts at a 4-aligned offset so the vec4 matmul paths apply.

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::dtype::Dtype;
use crate::gpu::{Batch, Gpu, GpuBuffer, GpuResult};
use crate::model::ModelConfig;
use crate::ops::matmul::{MatmulSet, MatmulShape, MatmulSpec, Operand};

pub use crate::model::decoder::Target;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f32,
    pub targets: Vec<Target>,
}

/// The largest `alpha / r` accepted: PEFT's adapters use 0.5–4; beyond this an adapter swamps the
/// weights it adapts and its outputs are garbage, whatever its file says.
pub const MAX_SCALE: f32 = 1024.0;

impl LoraConfig {
    pub fn scale(&self) -> f32 {
        self.alpha / self.r as f32
    }

    /// Checks the rank and alpha against the model before anything is sized from them: `r` from
    /// 1 to the smallest dimension of a targeted projection (a larger rank adds nothing `B·A`
    /// can express, only memory), and a finite positive alpha with `alpha / r` ≤ [`MAX_SCALE`].
    /// The message names the fields as PEFT's `adapter_config.json` does.
    pub fn check(&self, model: &ModelConfig) -> Result<(), String> {
        if self.targets.is_empty() {
            return Err("target_modules is empty".into());
        }
        let mut smallest_dim = Vec::with_capacity(self.targets.len());
        for &t in &self.targets {
            let projection = model.decoder().projection(t).ok_or_else(|| {
                format!("target_modules: {} is not a projection of {:?}", t.module_name(), model.architecture)
            })?;
            let (inp, out) = projection.dims(model);
            smallest_dim.push((inp.min(out), t));
        }
        let (smallest, target) = smallest_dim.into_iter().min().expect("non-empty");
        if self.r == 0 || self.r > smallest {
            return Err(format!(
                "r = {} must be from 1 to {smallest} (the smallest dimension of the targeted {})",
                self.r,
                target.module_name()
            ));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0 && self.scale() <= MAX_SCALE) {
            return Err(format!(
                "lora_alpha = {} must be positive and finite, with lora_alpha / r at most {MAX_SCALE} (r = {})",
                self.alpha, self.r
            ));
        }
        Ok(())
    }
}

/// Where one factor lives in the flat buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct Factor {
    pub layer: usize,
    pub target: Target,
    /// The projection's module path in a layer (`self_attn.q_proj`), from the model's description.
    pub module: &'static str,
    /// True for A `[r, in]`, false for B `[out, r]`.
    pub is_a: bool,
    pub offset: usize,
    pub shape: [usize; 2],
}

impl Factor {
    pub fn len(&self) -> usize {
        self.shape[0] * self.shape[1]
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// PEFT's key in `adapter_model.safetensors`.
    pub fn peft_key(&self) -> String {
        format!(
            "base_model.model.model.layers.{}.{}.lora_{}.weight",
            self.layer,
            self.module,
            if self.is_a { "A" } else { "B" }
        )
    }
}

/// The flat layout of every factor of an adapter on a model.
#[derive(Clone, Debug)]
pub struct LoraLayout {
    pub config: LoraConfig,
    pub factors: Vec<Factor>,
    pub len: usize,
}

impl LoraLayout {
    /// The layout of `config` on `model`, after [`LoraConfig::check`]: what a front end builds
    /// from a user's rank and alpha (an absurd rank is refused before anything is sized from it).
    pub fn checked(model: &ModelConfig, config: LoraConfig) -> Result<Self, String> {
        config.check(model)?;
        Ok(Self::new(model, config))
    }

    pub fn new(model: &ModelConfig, config: LoraConfig) -> Self {
        let mut factors = Vec::new();
        let mut offset = 0;
        let mut targets = config.targets.clone();
        targets.sort();
        targets.dedup();
        for layer in 0..model.num_layers {
            for &target in &targets {
                let projection = model.decoder().projection(target).expect("checked: a projection of this model");
                let (inp, out) = projection.dims(model);
                for (is_a, shape) in [(true, [config.r, inp]), (false, [out, config.r])] {
                    factors.push(Factor { layer, target, module: projection.module, is_a, offset, shape });
                    offset = (offset + shape[0] * shape[1]).next_multiple_of(4);
                }
            }
        }
        LoraLayout { config: LoraConfig { targets, ..config }, factors, len: offset }
    }

    pub fn factor(&self, layer: usize, target: Target, is_a: bool) -> Option<&Factor> {
        self.factors.iter().find(|f| f.layer == layer && f.target == target && f.is_a == is_a)
    }

    /// PEFT's initialisation: A Kaiming-uniform with a = √5 (bound 1/√in), B zero, so the
    /// adapter starts as the identity.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut params = vec![0f32; self.len];
        for f in self.factors.iter().filter(|f| f.is_a) {
            let bound = 1.0 / (f.shape[1] as f32).sqrt();
            for v in &mut params[f.offset..f.offset + f.len()] {
                *v = rng.random_range(-bound..bound);
            }
        }
        params
    }
}

/// `y (+)= x·Bᵀ`-style f32 products of the adapter's thin factors.
fn thin_product(accumulate: bool) -> MatmulSpec {
    MatmulSpec { trans_a: false, trans_b: true, has_bias: false, accumulate, b_dtype: Dtype::F32 }
}

impl LoraLayout {
    /// (in, out) features of the projection `target` adapts (from its factors' shapes).
    fn features(&self, target: Target) -> Option<(usize, usize)> {
        let a = self.factors.iter().find(|f| f.target == target && f.is_a)?;
        let b = self.factors.iter().find(|f| f.target == target && !f.is_a)?;
        Some((a.shape[1], b.shape[0]))
    }

    /// Prepares the products of [`record_delta`](Self::record_delta) for batches of `rows` rows.
    pub async fn prepare_delta(&self, gpu: &Gpu, products: &mut MatmulSet, rows: usize) -> GpuResult<()> {
        let r = self.config.r;
        for &target in &self.config.targets {
            let Some((inp, out)) = self.features(target) else { continue };
            products.prepare(gpu, thin_product(false), MatmulShape::new(rows, r, inp)).await?; // t = x·Aᵀ
            products.prepare(gpu, thin_product(true), MatmulShape::new(rows, out, r)).await?; // y += s·t·Bᵀ
        }
        Ok(())
    }

    /// Records the adapter's term of projection `target` in layer `l`, unmerged:
    /// `t = x·Aᵀ` (`[rows, r]`, kept: the backward needs it) and `y += s·t·Bᵀ` (`y`: `[rows, out]`
    /// at its offset and leading dimension: a projection's columns of packed outputs). Does nothing for
    /// a projection the adapter does not target.
    #[allow(clippy::too_many_arguments)]
    pub fn record_delta(
        &self,
        b: &mut Batch,
        products: &MatmulSet,
        params: &GpuBuffer,
        l: usize,
        target: Target,
        rows: usize,
        x: &GpuBuffer,
        t: &GpuBuffer,
        y: Operand,
    ) -> GpuResult<()> {
        let (Some(fa), Some(fb)) = (self.factor(l, target, true), self.factor(l, target, false)) else {
            return Ok(());
        };
        let (r, inp, out) = (self.config.r, fa.shape[1], fb.shape[0]);
        products.get(thin_product(false), MatmulShape::new(rows, r, inp))?.record(
            b,
            Operand::dense(x, inp),
            Operand { buf: params, off: fa.offset, ld: inp, batch_stride: 0 },
            None,
            Operand::dense(t, r),
            1.0,
        )?;
        products.get(thin_product(true), MatmulShape::new(rows, out, r))?.record(
            b,
            Operand::dense(t, r),
            Operand { buf: params, off: fb.offset, ld: r, batch_stride: 0 },
            None,
            y,
            self.config.scale(),
        )?;
        Ok(())
    }
}

//! Inference with an adapter: a view of the model that answers as base + adapter, in one of two
//! ways ([`AdapterMode`], `--adapters`):
//!
//! - **merged** (the default): the targeted projections are f32 copies `W + (alpha/r)·B·A`,
//!   computed on the GPU (a copy — or, for a 16-bit or quantised base, a widening gather — then
//!   one accumulating product per projection). Generation then runs the plain forward at full
//!   speed, and RL refreshes the merge after every optimiser step without a host round trip. The
//!   delta is never rounded to 16 bits or a block format. Memory: one f32 copy of each targeted
//!   projection beside the base.
//! - **unmerged**: the view carries the adapter (`GpuModel::adapter`) and every forward adds
//!   `s·(x·Aᵀ)·Bᵀ` to the targeted projections' outputs (two thin products each, as training
//!   does). The frozen weights stay as stored — a Q4 base keeps its 0.75 bytes a weight while
//!   RL samples — for two extra dispatches per targeted projection per forward.

use super::lora::{LoraLayout, Target};
use crate::dtype::Dtype;
use crate::gpu::{Batch, Gpu, GpuBuffer};
use std::collections::HashMap;

use crate::model::gpu::{AttachedAdapter, GpuModel, ModelError, ModelResult, Weight};
use crate::ops::elementwise::Embedding;
use crate::ops::matmul::{MatmulSet, MatmulShape, MatmulSpec, Operand};

/// How a view applies its adapter (`--adapters`; `GpuOptions::adapters`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AdapterMode {
    /// Into f32 copies of the targeted projections: fastest, one f32 copy of each in memory.
    #[default]
    Merged,
    /// Applied in every forward: the base stays as stored, two thin products per projection.
    Unmerged,
}

impl AdapterMode {
    pub const ALL: [AdapterMode; 2] = [AdapterMode::Merged, AdapterMode::Unmerged];

    /// The mode that keeps GPU memory near the base's: unmerged over 16-bit or quantised
    /// projections (merged f32 copies of them would take 2× to 5× their memory), merged over f32
    /// ones. The browser page uses it; natively `--adapters` decides.
    pub fn lean_for(tensors: &crate::model::NamedTensors) -> AdapterMode {
        let narrow = tensors.iter().any(|(name, t)| name.ends_with("proj.weight") && t.dtype() != Dtype::F32);
        if narrow { AdapterMode::Unmerged } else { AdapterMode::Merged }
    }

    pub fn name(self) -> &'static str {
        match self {
            AdapterMode::Merged => "merged",
            AdapterMode::Unmerged => "unmerged",
        }
    }
}

impl std::str::FromStr for AdapterMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        crate::choice::parse(s, &AdapterMode::ALL, AdapterMode::name, "an adapter mode")
    }
}

impl std::fmt::Display for AdapterMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The base model with an adapter applied, merged or unmerged; `model` is what to run.
pub struct AdapterView {
    pub model: GpuModel,
    products: MatmulSet,
    /// When merged: the f32 buffers the view starts from the base's weights…
    copies: Vec<MergeCopy>,
    /// …and the delta of each targeted projection added into them. None when unmerged.
    deltas: Vec<MergeDelta>,
}

/// One f32 buffer of a merged view, filled from the base: a stack of mixer inputs that are all
/// targeted (q | k | v, gate | up: the view keeps them one product), or one projection.
struct MergeCopy {
    /// The base matrix (a view into its buffer).
    base: Weight,
    merged: GpuBuffer,
    /// For a 16-bit or quantised base: the gather that widens it, and the ids of its rows in
    /// their buffer.
    widen: Option<(Embedding, GpuBuffer)>,
}

/// `W' += s·B·A` of one targeted projection, on its rows of a merged buffer.
struct MergeDelta {
    layer: usize,
    target: Target,
    merged: GpuBuffer,
    /// Element offset of the projection's rows in `merged`.
    off: usize,
    inp: usize,
    out: usize,
}

fn spec() -> MatmulSpec {
    MatmulSpec { trans_a: false, trans_b: false, has_bias: false, accumulate: true, b_dtype: Dtype::F32 }
}

impl AdapterView {
    /// A view of `base` for `layout`'s adapters, in the GPU's mode (`Gpu::adapter_mode`); fill it
    /// with [`record`](Self::record) or [`refresh`](Self::refresh).
    pub async fn new(gpu: &Gpu, base: &GpuModel, layout: &LoraLayout) -> ModelResult<Self> {
        match gpu.adapter_mode() {
            AdapterMode::Merged => Self::merged(gpu, base, layout).await,
            AdapterMode::Unmerged => Self::unmerged(gpu, base, layout),
        }
    }

    /// A view that applies the adapter in every forward; the base's weights are shared as they
    /// are, the adapter's factors held in a buffer of their own.
    pub fn unmerged(gpu: &Gpu, base: &GpuModel, layout: &LoraLayout) -> ModelResult<Self> {
        let mut model = base.clone(); // shares the buffers
        let params = gpu.storage("adapter view", "adapter parameters", (layout.len.max(1) * 4) as u64)?;
        model.adapter = Some(AttachedAdapter { layout: layout.clone(), params });
        Ok(AdapterView { model, products: MatmulSet::default(), copies: Vec::new(), deltas: Vec::new() })
    }

    /// A view with f32 merged copies of every targeted projection (widened from 16-bit or
    /// quantised bases). A stack of mixer inputs whose members are all targeted is merged as one
    /// buffer, so the view still runs them as one product; a stack only partly targeted is run
    /// as separate products.
    pub async fn merged(gpu: &Gpu, base: &GpuModel, layout: &LoraLayout) -> ModelResult<Self> {
        let mut model = base.clone(); // shares the buffers
        let mut products = MatmulSet::default();
        let (mut copies, mut deltas) = (Vec::new(), Vec::new());
        // Row ids for the widening gathers, one buffer per (first row, rows).
        let mut row_ids: HashMap<(usize, usize), GpuBuffer> = HashMap::new();
        let targeted = |t: &Target| layout.config.targets.contains(t);
        for l in 0..base.config.num_layers {
            let layer = &mut model.layers[l];
            let mut merged_in_stacks = Vec::new();
            for i in 0..layer.stacks.len() {
                let targets = layer.stacks[i].targets.clone();
                if !targets.iter().all(targeted) || layer.stack(&targets).is_none() {
                    continue;
                }
                let copy = MergeCopy::new(gpu, layer.stacks[i].weight.clone(), &mut row_ids).await?;
                let merged = Weight::f32_matrix(copy.merged.clone(), copy.base.shape.clone());
                let mut row0 = 0;
                for &target in &targets {
                    let out = layer.weight(target).shape[0];
                    *layer.weight_mut(target) = merged.rows(row0, out);
                    deltas.push(MergeDelta {
                        layer: l,
                        target,
                        merged: copy.merged.clone(),
                        off: row0 * merged.shape[1],
                        inp: merged.shape[1],
                        out,
                    });
                    row0 += out;
                }
                layer.stacks[i].weight = merged;
                merged_in_stacks.extend(targets);
                copies.push(copy);
            }
            for &target in layout.config.targets.iter().filter(|t| !merged_in_stacks.contains(t)) {
                let w = layer.weight(target).clone();
                if w.shards.len() > 1 {
                    return Err(ModelError::Invalid(format!(
                        "layer {l} {} is split across {} buffers; an adapter cannot be merged into it",
                        target.module_name(),
                        w.shards.len()
                    )));
                }
                let copy = MergeCopy::new(gpu, w, &mut row_ids).await?;
                let (out, inp) = (copy.base.shape[0], copy.base.shape[1]);
                *layer.weight_mut(target) = Weight::f32_matrix(copy.merged.clone(), vec![out, inp]);
                deltas.push(MergeDelta { layer: l, target, merged: copy.merged.clone(), off: 0, inp, out });
                copies.push(copy);
            }
            // A stack one of whose members now has a buffer of its own runs as separate products.
            let intact: Vec<bool> = layer.stacks.iter().map(|s| layer.stack(&s.targets).is_some()).collect();
            let mut keep = intact.into_iter();
            layer.stacks.retain(|_| keep.next().unwrap_or(false));
        }
        for d in &deltas {
            products.prepare(gpu, spec(), MatmulShape::new(d.out, d.inp, layout.config.r)).await?;
        }
        Ok(AdapterView { model, products, copies, deltas })
    }

    /// Records the view's update from the flat `params`: `W' = W + s·B·A` for every targeted
    /// projection when merged, a copy of the factors when unmerged.
    pub fn record(&self, b: &mut Batch, layout: &LoraLayout, params: &GpuBuffer) -> ModelResult<()> {
        if let Some(adapter) = &self.model.adapter {
            b.copy(params, &adapter.params, (layout.len * 4) as u64);
        }
        for copy in &self.copies {
            copy.record(b)?;
        }
        let (r, s) = (layout.config.r, layout.config.scale());
        for d in &self.deltas {
            let fa = layout.factor(d.layer, d.target, true).expect("factor A in layout");
            let fb = layout.factor(d.layer, d.target, false).expect("factor B in layout");
            self.products.get(spec(), MatmulShape::new(d.out, d.inp, r))?.record(
                b,
                Operand { buf: params, off: fb.offset, ld: r, batch_stride: 0 },
                Operand { buf: params, off: fa.offset, ld: d.inp, batch_stride: 0 },
                None,
                Operand { buf: &d.merged, off: d.off, ld: d.inp, batch_stride: 0 },
                s,
            )?;
        }
        Ok(())
    }

    /// Applies the current `params` (a training adapter on the GPU) and returns the model to run.
    pub async fn refresh(&self, gpu: &Gpu, layout: &LoraLayout, params: &GpuBuffer) -> ModelResult<&GpuModel> {
        let mut b = gpu.batch("merge adapter");
        self.record(&mut b, layout, params)?;
        b.submit().await?;
        Ok(&self.model)
    }

    /// The base model with an adapter's parameters applied, once (for inference), in the GPU's
    /// mode.
    pub async fn apply(gpu: &Gpu, base: &GpuModel, layout: &LoraLayout, params: &[f32]) -> ModelResult<Self> {
        Self::apply_in(gpu.adapter_mode(), gpu, base, layout, params).await
    }

    /// As [`apply`](Self::apply), in `mode`.
    pub async fn apply_in(
        mode: AdapterMode,
        gpu: &Gpu,
        base: &GpuModel,
        layout: &LoraLayout,
        params: &[f32],
    ) -> ModelResult<Self> {
        let merge = match mode {
            AdapterMode::Merged => Self::merged(gpu, base, layout).await?,
            AdapterMode::Unmerged => Self::unmerged(gpu, base, layout)?,
        };
        let buf = gpu.upload("merge adapter", "parameters", params)?;
        merge.refresh(gpu, layout, &buf).await?;
        Ok(merge)
    }
}

impl MergeCopy {
    /// An f32 buffer for `base`, and the gather that widens a 16-bit or quantised one.
    async fn new(gpu: &Gpu, base: Weight, row_ids: &mut HashMap<(usize, usize), GpuBuffer>) -> ModelResult<Self> {
        let (rows, cols) = (base.shape[0], base.shape[1]);
        let merged = gpu.storage("merge adapter", "merged projections", (rows * cols * 4) as u64)?;
        let widen = match base.dtype {
            Dtype::F32 => None,
            dtype => {
                // A view's rows are rows row0… of its buffer, which the gather reads as a table.
                let row0 = base.off / cols;
                let ids = match row_ids.get(&(row0, rows)) {
                    Some(ids) => ids.clone(),
                    None => {
                        let ids: Vec<u32> = (row0 as u32..(row0 + rows) as u32).collect();
                        let ids = gpu.upload("merge adapter", "row ids", &ids)?;
                        row_ids.insert((row0, rows), ids.clone());
                        ids
                    }
                };
                Some((Embedding::new(gpu, row0 + rows, cols, dtype).await?, ids))
            }
        };
        Ok(MergeCopy { base, merged, widen })
    }

    fn record(&self, b: &mut Batch) -> ModelResult<()> {
        let (rows, cols) = (self.base.shape[0], self.base.shape[1]);
        match &self.widen {
            None => b.copy_range(&self.base.buf, self.base.off as u64 * 4, &self.merged, 0, (rows * cols * 4) as u64),
            Some((gather, ids)) => gather.record(b, ids, rows, &[(0, &self.base.buf)], &self.merged)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gpu::{AttentionMode, ForwardInputs, ForwardPlan, LogitsOp, left_pad};
    use crate::model::tests::{random_tensors, tiny_config};
    use crate::model::{Architecture, HostTensor};
    use crate::testing::{self, rel_err};
    use crate::train::backprop::{LoraState, TrainInputs, TrainPlan, TrainShape, head_index};
    use crate::train::lora::LoraConfig;
    use rand::Rng;

    #[test]
    fn merged_and_unmerged_views_give_the_log_probs_of_the_training_path() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("lora merge");
        let config = tiny_config(Architecture::Qwen2, false);
        let model = GpuModel::upload(&gpu, config.clone(), random_tensors(&config, &mut rng), 32).unwrap();
        let layout = LoraLayout::new(&config, LoraConfig { r: 4, alpha: 16.0, targets: Target::ALL.to_vec() });
        let params: Vec<f32> = (0..layout.len).map(|_| rng.random_range(-0.3..0.3)).collect();
        let pb = gpu.upload("t", "params", &params).unwrap();
        let ids: Vec<u32> = (0..7).map(|_| rng.random_range(0..config.vocab_size as u32)).collect();
        let (pad, pos, ks, t) = left_pad(std::slice::from_ref(&ids));
        let up = |v: &[u32]| gpu.upload("t", "t", v).unwrap();
        let (idb, posb, ksb) = (up(&pad), up(&pos), up(&ks));

        let view_logits = |view: AdapterView| {
            let plan = pollster::block_on(ForwardPlan::new(&gpu, &view.model, 1, t)).unwrap();
            let logits = pollster::block_on(LogitsOp::new(&gpu, &view.model, t)).unwrap();
            let mut b = gpu.batch("t");
            view.record(&mut b, &layout, &pb).unwrap();
            plan.record(
                &mut b,
                &view.model,
                &ForwardInputs { ids: &idb, positions: &posb, key_start: &ksb },
                &AttentionMode::SelfOnly,
            )
            .unwrap();
            logits.record(&mut b, &view.model, &plan.hidden, 0, 1).unwrap();
            pollster::block_on(b.submit()).unwrap();
            pollster::block_on(gpu.read::<f32>("t", &logits.logits)).unwrap()
        };
        let merged = view_logits(pollster::block_on(AdapterView::merged(&gpu, &model, &layout)).unwrap());
        let unmerged = view_logits(AdapterView::unmerged(&gpu, &model, &layout).unwrap());
        // The same sums in another order: x·(W + sBA)ᵀ against x·Wᵀ + s(x·Aᵀ)·Bᵀ.
        let err = rel_err(&unmerged, &merged);
        assert!(err < 1e-5, "unmerged vs merged logits: {err:e}");

        // The training path (unmerged adapter) computes the log-prob of each next token.
        // Every row through the head: the index is the identity.
        let index = head_index(&(0..t as u32).collect::<Vec<_>>(), t);
        let train = pollster::block_on(TrainPlan::new(
            &gpu,
            &model,
            &layout,
            TrainShape { batch: 1, t, head_rows: index.len() },
            64,
            false,
        ))
        .unwrap();
        let targets: Vec<u32> = index.iter().map(|&p| ids.get(p as usize + 1).copied().unwrap_or(0)).collect();
        let grads = gpu.upload("t", "grads", &vec![0f32; layout.len]).unwrap();
        let lora = LoraState { layout: &layout, params: &pb, grads: &grads };
        let mut b = gpu.batch("t");
        train
            .forward(
                &mut b,
                &model,
                &lora,
                &TrainInputs {
                    ids: &idb,
                    positions: &posb,
                    key_start: &ksb,
                    head_index: &up(&index),
                    targets: &up(&targets),
                },
                1.0,
            )
            .unwrap();
        pollster::block_on(b.submit()).unwrap();
        let stats = pollster::block_on(gpu.read::<f32>("t", &train.head.row_stats)).unwrap();
        let v = config.vocab_size;
        for (mode, view) in [("merged", &merged), ("unmerged", &unmerged)] {
            let mut got = Vec::new();
            let mut want = Vec::new();
            for p in 0..t - 1 {
                let row = &view[p * v..(p + 1) * v];
                let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let lse = m + row.iter().map(|z| (z - m).exp()).sum::<f32>().ln();
                got.push(row[targets[p] as usize] - lse);
                want.push(stats[p * 4 + 2]);
            }
            assert!(rel_err(&got, &want) < 1e-4, "{mode} {got:?} vs adapter {want:?}");
        }
    }

    /// A Hub checkpoint as published (bf16 or f16 projections) or a quantised one (Q8/Q4 blocks)
    /// takes an adapter: the merge widens the base to f32 on the GPU, so the merged model equals
    /// the merge into an f32 copy of the same values (was: "merging an adapter needs f32 base
    /// weights"); unmerged, the base stays as stored and the model answers the same.
    #[test]
    fn sixteen_bit_and_quantised_bases_merge_like_their_f32_values() {
        use crate::model::gpu::sequence_logits;
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("lora merge 16-bit base");
        let config = tiny_config(Architecture::Llama, false);
        let tensors = random_tensors(&config, &mut rng);
        let layout = LoraLayout::new(&config, LoraConfig { r: 4, alpha: 8.0, targets: Target::ALL.to_vec() });
        let params: Vec<f32> = (0..layout.len).map(|_| rng.random_range(-0.3..0.3)).collect();
        let ids: Vec<u32> = (0..9).map(|_| rng.random_range(0..config.vocab_size as u32)).collect();
        for dtype in [Dtype::Bf16, Dtype::F16, Dtype::Q8, Dtype::Q4] {
            // The projections stored as `dtype` (Q4 leaves the 48-wide down projection f32: its
            // rows are not whole blocks), and the same values in f32.
            let (mut stored, mut widened) = (Vec::new(), Vec::new());
            for (n, t) in &tensors {
                let a = if n.ends_with("proj.weight") { t.clone().converted(dtype) } else { t.clone() };
                widened.push((n.clone(), HostTensor::f32(a.shape.clone(), a.to_f32())));
                stored.push((n.clone(), a));
            }
            assert!(stored.iter().any(|(_, t)| t.dtype() == dtype), "{dtype}: some projection converted");
            let logits = |tensors: Vec<(String, HostTensor)>, mode: AdapterMode| {
                let model = GpuModel::upload(&gpu, config.clone(), tensors, 32).unwrap();
                let view = match mode {
                    AdapterMode::Merged => pollster::block_on(AdapterView::merged(&gpu, &model, &layout)).unwrap(),
                    AdapterMode::Unmerged => AdapterView::unmerged(&gpu, &model, &layout).unwrap(),
                };
                let mut b = gpu.batch("t");
                view.record(&mut b, &layout, &gpu.upload("t", "params", &params).unwrap()).unwrap();
                pollster::block_on(b.submit()).unwrap();
                let q_dtype = view.model.layers[0].weight(Target::QProj).dtype;
                match mode {
                    AdapterMode::Merged => assert_eq!(q_dtype, Dtype::F32, "merged projections are f32"),
                    AdapterMode::Unmerged => {
                        assert_eq!(
                            q_dtype,
                            model.layers[0].weight(Target::QProj).dtype,
                            "unmerged: the base as stored"
                        );
                        assert_eq!(view.model.weight_bytes(), model.weight_bytes());
                    }
                }
                pollster::block_on(sequence_logits(&gpu, &view.model, &ids)).unwrap()
            };
            let reference = logits(widened, AdapterMode::Merged);
            let err = rel_err(&logits(stored.clone(), AdapterMode::Merged), &reference);
            assert!(err <= 1e-6, "{dtype} base, merged: {err:e}");
            let err = rel_err(&logits(stored, AdapterMode::Unmerged), &reference);
            assert!(err <= 1e-5, "{dtype} base, unmerged: {err:e}");
        }
    }

    /// The lean mode (the browser page's) leaves adapters unmerged over 16-bit and quantised bases, merged over f32 ones.
    #[test]
    fn adapters_stay_unmerged_over_narrow_bases() {
        let f32_tensor = || HostTensor::f32(vec![2, 32], vec![0.5; 64]);
        let model = |q: HostTensor| {
            vec![
                ("model.embed_tokens.weight".to_string(), f32_tensor().converted(Dtype::Q8)),
                ("model.layers.0.self_attn.q_proj.weight".to_string(), q),
                ("model.layers.0.mlp.down_proj.weight".to_string(), f32_tensor()),
            ]
        };
        // Only the projections count (the merge copies those): a Q8 embedding beside f32 ones
        // stays merged.
        assert_eq!(AdapterMode::lean_for(&model(f32_tensor())), AdapterMode::Merged);
        for dtype in [Dtype::Bf16, Dtype::F16, Dtype::Q8, Dtype::Q4] {
            assert_eq!(AdapterMode::lean_for(&model(f32_tensor().converted(dtype))), AdapterMode::Unmerged, "{dtype}");
        }
    }

    /// Decoding (prefill, cache broadcast, one-token steps over the KV cache) applies an
    /// unmerged adapter as the merged weights do: the same greedy tokens.
    #[test]
    fn unmerged_views_generate_what_merged_views_generate() {
        use crate::model::generate::{GenerateRequest, generate};
        use crate::ops::decode::SamplingConfig;
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("unmerged generation");
        let config = tiny_config(Architecture::Llama, true);
        let model = GpuModel::upload(&gpu, config.clone(), random_tensors(&config, &mut rng), 64).unwrap();
        let targets = vec![Target::QProj, Target::VProj, Target::OProj, Target::DownProj];
        let layout = LoraLayout::new(&config, LoraConfig { r: 4, alpha: 8.0, targets });
        let params: Vec<f32> = (0..layout.len).map(|_| rng.random_range(-0.5..0.5)).collect();
        let pb = gpu.upload("t", "params", &params).unwrap();
        let mut prompt = |n: usize| (0..n).map(|_| rng.random_range(0..config.vocab_size as u32)).collect::<Vec<_>>();
        let req = GenerateRequest {
            prompts: vec![prompt(5), prompt(9)],
            num_samples: 2,
            first_sequence: 0,
            max_new_tokens: 12,
            sampling: SamplingConfig::greedy(),
            stop_ids: vec![],
        };
        let tokens = |view: AdapterView| {
            pollster::block_on(view.refresh(&gpu, &layout, &pb)).unwrap();
            let out = pollster::block_on(generate(&gpu, &view.model, &req, |_, _| {})).unwrap();
            out.into_iter().map(|c| c.tokens).collect::<Vec<_>>()
        };
        let plain = pollster::block_on(generate(&gpu, &model, &req, |_, _| {})).unwrap();
        // q and v merged alone: their stack with k runs as three products; gate | up untouched.
        let merged_view = pollster::block_on(AdapterView::merged(&gpu, &model, &layout)).unwrap();
        let stacks = |m: &GpuModel| m.layers[0].stacks.iter().map(|s| s.targets.clone()).collect::<Vec<_>>();
        assert_eq!(stacks(&model).len(), 2, "q | k | v and gate | up stacked on upload");
        assert_eq!(stacks(&merged_view.model), vec![vec![Target::GateProj, Target::UpProj]]);
        let merged = tokens(merged_view);
        assert_ne!(merged, plain.into_iter().map(|c| c.tokens).collect::<Vec<_>>(), "the adapter changes the answers");
        assert_eq!(tokens(AdapterView::unmerged(&gpu, &model, &layout).unwrap()), merged);
    }
}

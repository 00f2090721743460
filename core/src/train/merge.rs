//! Inference with an adapter: a view of the model whose targeted projections are
//! `W + (alpha/r)·B·A`, computed on the GPU (a copy, then one accumulating product per
//! projection). Generation then runs the plain forward at full speed, and RL refreshes the merge
//! after every optimiser step without a host round trip.
//!
//! The merged projections are always f32: an f16/bf16 base (a Hub checkpoint as published) is
//! widened into them on the GPU (the embedding gather, with every row as an id), so the adapter's
//! delta is never rounded to 16 bits. Memory: one f32 copy of each targeted projection.

use super::lora::{LoraLayout, Target};
use crate::dtype::Dtype;
use crate::gpu::{Batch, Gpu, GpuBuffer};
use crate::model::gpu::{GpuModel, ModelError, ModelResult};
use crate::ops::elementwise::Embedding;
use crate::ops::matmul::{MatmulSet, MatmulShape, MatmulSpec, Operand};

pub struct LoraMerge {
    pub model: GpuModel,
    products: MatmulSet,
    jobs: Vec<MergeJob>,
}

/// One targeted projection: where its base weights come from and where the merge goes.
struct MergeJob {
    layer: usize,
    target: Target,
    base: GpuBuffer,
    merged: GpuBuffer,
    inp: usize,
    out: usize,
    /// For a 16-bit base: the gather that widens it to f32, and the row ids 0..out it gathers.
    widen: Option<(Embedding, GpuBuffer)>,
}

fn spec() -> MatmulSpec {
    MatmulSpec { trans_a: false, trans_b: false, has_bias: false, accumulate: true, b_dtype: Dtype::F32 }
}

impl LoraMerge {
    /// Prepares f32 merged copies of every targeted projection (widened from f16/bf16 bases).
    pub async fn new(gpu: &Gpu, base: &GpuModel, layout: &LoraLayout) -> ModelResult<Self> {
        let mut model = base.share();
        let mut products = MatmulSet::default();
        let mut jobs = Vec::new();
        // Row ids 0..out for the widening gathers, one buffer per row count.
        let mut row_ids: std::collections::HashMap<usize, GpuBuffer> = std::collections::HashMap::new();
        for l in 0..base.config.num_layers {
            for &target in &layout.config.targets {
                let w = model.layers[l].weight_mut(target);
                let (out, inp) = (w.shape[0], w.shape[1]);
                if w.shards.len() > 1 {
                    return Err(ModelError::Invalid(format!(
                        "layer {l} {} is split across {} buffers; an adapter cannot be merged into it",
                        target.module_name(),
                        w.shards.len()
                    )));
                }
                let merged = gpu.storage(
                    "merge adapter",
                    &format!("layer {l} {} merged", target.module_name()),
                    (out * inp * 4) as u64,
                )?;
                let widen = match w.dtype {
                    Dtype::F32 => None,
                    dtype => {
                        let ids = match row_ids.get(&out) {
                            Some(ids) => ids.clone(),
                            None => {
                                let ids =
                                    gpu.upload("merge adapter", "row ids", &(0..out as u32).collect::<Vec<_>>())?;
                                row_ids.insert(out, ids.clone());
                                ids
                            }
                        };
                        Some((Embedding::new(gpu, out, inp, dtype).await?, ids))
                    }
                };
                jobs.push(MergeJob { layer: l, target, base: w.buf.clone(), merged: merged.clone(), inp, out, widen });
                w.shards = vec![(0, merged.clone())];
                w.buf = merged;
                w.dtype = Dtype::F32;
                products.prepare(gpu, spec(), MatmulShape::new(out, inp, layout.config.r)).await?;
            }
        }
        Ok(LoraMerge { model, products, jobs })
    }

    /// Records `W' = W + s·B·A` for every targeted projection from the flat `params`.
    pub fn record(&self, b: &mut Batch, layout: &LoraLayout, params: &GpuBuffer) -> ModelResult<()> {
        let (r, s) = (layout.config.r, layout.config.scale());
        for job in &self.jobs {
            let MergeJob { layer, target, base, merged, inp, out, widen } = job;
            let fa = layout.factor(*layer, *target, true).expect("factor A in layout");
            let fb = layout.factor(*layer, *target, false).expect("factor B in layout");
            match widen {
                None => b.copy(base, merged, (inp * out * 4) as u64),
                Some((gather, ids)) => gather.record(b, ids, *out, &[(0, base)], merged)?,
            }
            self.products.get(spec(), MatmulShape::new(*out, *inp, r))?.record(
                b,
                Operand { buf: params, off: fb.offset, ld: r, batch_stride: 0 },
                Operand { buf: params, off: fa.offset, ld: *inp, batch_stride: 0 },
                None,
                Operand::dense(merged, *inp),
                s,
            )?;
        }
        Ok(())
    }

    /// Merges the current `params` (a training adapter on the GPU) and returns the merged model.
    pub async fn refresh(&self, gpu: &Gpu, layout: &LoraLayout, params: &GpuBuffer) -> ModelResult<&GpuModel> {
        let mut b = gpu.batch("merge adapter");
        self.record(&mut b, layout, params)?;
        b.submit().await?;
        Ok(&self.model)
    }

    /// The base model with an adapter's parameters merged in, once (for inference).
    pub async fn apply(gpu: &Gpu, base: &GpuModel, layout: &LoraLayout, params: &[f32]) -> ModelResult<Self> {
        let merge = Self::new(gpu, base, layout).await?;
        let buf = gpu.upload("merge adapter", "parameters", params)?;
        merge.refresh(gpu, layout, &buf).await?;
        Ok(merge)
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
    fn merged_model_gives_the_same_log_probs_as_the_adapter_path() {
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

        let merge = pollster::block_on(LoraMerge::new(&gpu, &model, &layout)).unwrap();
        let plan = pollster::block_on(ForwardPlan::new(&gpu, &merge.model, 1, t)).unwrap();
        let logits = pollster::block_on(LogitsOp::new(&gpu, &merge.model, t)).unwrap();
        let mut b = gpu.batch("t");
        merge.record(&mut b, &layout, &pb).unwrap();
        plan.record(
            &mut b,
            &merge.model,
            &ForwardInputs { ids: &idb, positions: &posb, key_start: &ksb },
            &AttentionMode::SelfOnly,
        )
        .unwrap();
        logits.record(&mut b, &merge.model, &plan.hidden, 0, 1).unwrap();
        pollster::block_on(b.submit()).unwrap();
        let merged_logits = pollster::block_on(gpu.read::<f32>("t", &logits.logits)).unwrap();

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
        let mut got = Vec::new();
        let mut want = Vec::new();
        for p in 0..t - 1 {
            let row = &merged_logits[p * v..(p + 1) * v];
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let lse = m + row.iter().map(|z| (z - m).exp()).sum::<f32>().ln();
            got.push(row[targets[p] as usize] - lse);
            want.push(stats[p * 4 + 2]);
        }
        assert!(rel_err(&got, &want) < 1e-4, "merged {got:?} vs adapter {want:?}");
    }

    /// A Hub checkpoint as published (bf16 or f16 projections) or a quantised one (Q8/Q4 blocks)
    /// takes an adapter: the merge widens the base to f32 on the GPU, so the merged model equals
    /// the merge into an f32 copy of the same values (was: "merging an adapter needs f32 base
    /// weights").
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
            let logits = |tensors: Vec<(String, HostTensor)>| {
                let model = GpuModel::upload(&gpu, config.clone(), tensors, 32).unwrap();
                let merge = pollster::block_on(LoraMerge::apply(&gpu, &model, &layout, &params)).unwrap();
                assert!(
                    merge.model.layers.iter().all(|l| l.weight(Target::QProj).dtype == Dtype::F32),
                    "merged projections are f32"
                );
                pollster::block_on(sequence_logits(&gpu, &merge.model, &ids)).unwrap()
            };
            let err = rel_err(&logits(stored), &logits(widened));
            assert!(err <= 1e-6, "{dtype} base: {err:e}");
        }
    }
}

//! Inference with an adapter: a view of the model whose targeted projections are
//! `W + (alpha/r)·B·A`, computed on the GPU (a copy, then one accumulating product per
//! projection). Generation then runs the plain forward at full speed, and RL refreshes the merge
//! after every optimiser step without a host round trip.

use super::lora::{LoraLayout, Target};
use crate::dtype::Dtype;
use crate::gpu::{Batch, Gpu, GpuBuffer};
use crate::model::gpu::{GpuModel, LayerWeights, ModelError, ModelResult, Weight};
use crate::ops::matmul::{MatmulSet, MatmulShape, MatmulSpec, Operand};

pub struct LoraMerge {
    pub model: GpuModel,
    products: MatmulSet,
    /// (layer, target, base weight buffer, merged buffer, in, out)
    jobs: Vec<(usize, Target, GpuBuffer, GpuBuffer, usize, usize)>,
}

fn spec() -> MatmulSpec {
    MatmulSpec { trans_a: false, trans_b: false, has_bias: false, accumulate: true, b_dtype: Dtype::F32 }
}

fn slot(layer: &mut LayerWeights, target: Target) -> &mut Weight {
    match target {
        Target::QProj => &mut layer.q,
        Target::KProj => &mut layer.k,
        Target::VProj => &mut layer.v,
        Target::OProj => &mut layer.o,
        Target::GateProj => &mut layer.gate,
        Target::UpProj => &mut layer.up,
        Target::DownProj => &mut layer.down,
    }
}

impl LoraMerge {
    /// Prepares merged copies of every targeted projection (the base must store them in f32).
    pub async fn new(gpu: &Gpu, base: &GpuModel, layout: &LoraLayout) -> ModelResult<Self> {
        let mut model = base.share();
        let mut products = MatmulSet::default();
        let mut jobs = Vec::new();
        for l in 0..base.config.num_layers {
            for &target in &layout.config.targets {
                let w = slot(&mut model.layers[l], target);
                if w.dtype != Dtype::F32 {
                    return Err(ModelError::Invalid(format!(
                        "merging an adapter needs f32 base weights; layer {l} {} is {:?}",
                        target.module_name(),
                        w.dtype
                    )));
                }
                let (out, inp) = (w.shape[0], w.shape[1]);
                let merged = gpu.storage(
                    "merge adapter",
                    &format!("layer {l} {} merged", target.module_name()),
                    (out * inp * 4) as u64,
                )?;
                jobs.push((l, target, w.buf.clone(), merged.clone(), inp, out));
                w.shards = vec![(0, merged.clone())];
                w.buf = merged;
                products.prepare(gpu, spec(), MatmulShape::new(out, inp, layout.config.r)).await?;
            }
        }
        Ok(LoraMerge { model, products, jobs })
    }

    /// Records `W' = W + s·B·A` for every targeted projection from the flat `params`.
    pub fn record(&self, b: &mut Batch, layout: &LoraLayout, params: &GpuBuffer) -> ModelResult<()> {
        let (r, s) = (layout.config.r, layout.config.scale());
        for (l, target, base, merged, inp, out) in &self.jobs {
            let fa = layout.factor(*l, *target, true).expect("factor A in layout");
            let fb = layout.factor(*l, *target, false).expect("factor B in layout");
            b.copy(base, merged, (inp * out * 4) as u64);
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
    use crate::model::Architecture;
    use crate::model::gpu::{AttentionMode, ForwardInputs, ForwardPlan, LogitsOp, left_pad};
    use crate::model::tests::{random_tensors, tiny_config};
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
}

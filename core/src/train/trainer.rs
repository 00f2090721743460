//! The LoRA training loop's GPU side, shared by SFT and RL: micro-batches of token sequences with
//! per-token loss weights on log-probs, gradient accumulation, global-norm clipping and AdamW,
//! all on the GPU. Only per-row statistics (log-probs, entropies) and the gradient norm come back.

use std::collections::HashMap;

use super::backprop::{LoraState, TrainInputs, TrainPlan, TrainShape, head_index, head_rows};
use super::lora::LoraLayout;
use crate::gpu::{Gpu, GpuBuffer};
use crate::model::gpu::{GpuModel, ModelError, ModelResult, check_ids, check_length};
use crate::ops::adamw::{AdamW, AdamWConfig};
use crate::workers::Workers;

/// One micro-batch, left-padded to `t` tokens per sequence (host side).
#[derive(Clone, Debug, Default)]
pub struct MicroBatch {
    pub batch: usize,
    pub t: usize,
    pub ids: Vec<u32>,
    pub positions: Vec<u32>,
    pub key_start: Vec<u32>,
    /// Per row: the token whose log-prob row p scores (the next token).
    pub targets: Vec<u32>,
    /// Per row: ∂loss/∂logp(target) (0 for rows outside the loss).
    pub weights: Vec<f32>,
    /// The rows whose target is a completion token, ascending: only these go through the
    /// output head, and only their statistics are computed (the others read 0).
    pub scored: Vec<u32>,
}

impl MicroBatch {
    /// Sequences `prompt ++ completion` with the next-token loss on the completion tokens,
    /// each weighted by `weight_of(sequence, completion token index)`. Sequences are left-padded
    /// to a length rounded up to `round_to` (fewer distinct shapes, fewer plans).
    pub fn from_sequences(
        seqs: &[(Vec<u32>, Vec<u32>)],
        round_to: usize,
        weight_of: impl Fn(usize, usize) -> f32,
    ) -> Self {
        let longest = seqs.iter().map(|(p, c)| p.len() + c.len()).max().unwrap_or(0);
        let t = longest.next_multiple_of(round_to.max(1));
        let mut mb = MicroBatch { batch: seqs.len(), t, ..Default::default() };
        for (s, (prompt, completion)) in seqs.iter().enumerate() {
            let len = prompt.len() + completion.len();
            let pad = t - len;
            mb.key_start.push(pad as u32);
            let seq: Vec<u32> = prompt.iter().chain(completion).copied().collect();
            for p in 0..t {
                let (id, pos) = if p < pad { (0, 0) } else { (seq[p - pad], (p - pad) as u32) };
                mb.ids.push(id);
                mb.positions.push(pos);
                // Row p predicts the token at p + 1; it is a completion token when its index in
                // the sequence is ≥ prompt length.
                let next = p + 1;
                if next < t && next >= pad + prompt.len() {
                    mb.scored.push((s * t + p) as u32);
                    mb.targets.push(seq[next - pad]);
                    mb.weights.push(weight_of(s, next - pad - prompt.len()));
                } else {
                    mb.targets.push(0);
                    mb.weights.push(0.0);
                }
            }
        }
        mb
    }
}

/// A plan per shape and activation-memory mode (recompute).
type PlanKey = (TrainShape, bool);

/// A forward whose activations wait in the trainer's plan for their backward.
pub struct Forwarded {
    inputs: [GpuBuffer; 5],
    /// Which batch rows the head scored (to lay the statistics and loss weights out).
    scored: Vec<u32>,
    shape: PlanKey,
    serial: u64,
    temperature: f32,
    pub stats: RowStats,
}

/// Per-row statistics of the last forward: log-prob of the target and entropy.
#[derive(Clone, Debug)]
pub struct RowStats {
    pub logp: Vec<f32>,
    pub entropy: Vec<f32>,
}

pub struct LoraTrainer {
    pub layout: LoraLayout,
    pub params: GpuBuffer,
    pub grads: GpuBuffer,
    pub optimizer: AdamW,
    /// Optimiser steps taken.
    pub step: u64,
    plans: HashMap<PlanKey, TrainPlan>,
    vocab_chunk: usize,
    /// Keep only each layer's input and recompute the rest during the backward (see
    /// `backprop`): less activation memory for one more forward's compute. Applies to plans made
    /// after it is set.
    pub recompute: bool,
    /// Forwards run so far (a `Forwarded` remembers its own, to refuse stale backwards).
    forwards: u64,
}

const OP: &str = "train";

impl LoraTrainer {
    pub async fn new(gpu: &Gpu, layout: LoraLayout, params: &[f32], config: AdamWConfig) -> ModelResult<Self> {
        if params.len() != layout.len {
            return Err(ModelError::Invalid(format!(
                "{} parameters for an adapter layout of {}",
                params.len(),
                layout.len
            )));
        }
        Ok(LoraTrainer {
            params: gpu.upload(OP, "adapter", params)?,
            grads: gpu.upload(OP, "adapter gradients", &vec![0f32; layout.len])?,
            optimizer: AdamW::new(gpu, layout.len, config).await?,
            layout,
            step: 0,
            plans: HashMap::new(),
            recompute: false,
            vocab_chunk: 8192,
            forwards: 0,
        })
    }

    /// The plan for a micro-batch shape (a free function of the cache, so that the caller can
    /// borrow the trainer's other fields beside it).
    async fn plan<'p>(
        plans: &'p mut HashMap<PlanKey, TrainPlan>,
        gpu: &Gpu,
        model: &GpuModel,
        layout: &LoraLayout,
        vocab_chunk: usize,
        key: PlanKey,
    ) -> ModelResult<&'p TrainPlan> {
        if !plans.contains_key(&key) {
            // One live plan: activations for every layer are large, shapes rarely repeat.
            plans.clear();
            let plan = TrainPlan::new(gpu, model, layout, key.0, vocab_chunk, key.1).await?;
            plans.insert(key, plan);
        }
        Ok(&plans[&key])
    }

    /// The micro-batch's inputs on the GPU: ids, positions, key starts, the head's row index and
    /// its targets.
    fn upload_inputs(gpu: &Gpu, model: &GpuModel, mb: &MicroBatch) -> ModelResult<[GpuBuffer; 5]> {
        let rows = mb.batch * mb.t;
        if [mb.ids.len(), mb.positions.len(), mb.targets.len(), mb.weights.len()].iter().any(|&n| n != rows)
            || mb.key_start.len() != mb.batch
        {
            return Err(ModelError::Invalid(format!(
                "a micro-batch of {}×{} rows with fields of other lengths",
                mb.batch, mb.t
            )));
        }
        if mb.scored.windows(2).any(|w| w[0] >= w[1]) || mb.scored.last().is_some_and(|&r| r as usize >= rows) {
            return Err(ModelError::Invalid("scored rows must ascend and lie inside the micro-batch".into()));
        }
        check_ids(model, &mb.ids)?;
        check_ids(model, &mb.targets)?;
        check_length(model, mb.t)?;
        let index = head_index(&mb.scored, rows);
        let targets: Vec<u32> = index.iter().map(|&r| mb.targets.get(r as usize).copied().unwrap_or(0)).collect();
        let up32 = |what: &str, v: &[u32]| gpu.upload(OP, what, v);
        Ok([
            up32("ids", &mb.ids)?,
            up32("positions", &mb.positions)?,
            up32("key start", &mb.key_start)?,
            up32("head rows", &index)?,
            up32("targets", &targets)?,
        ])
    }

    /// Per-row loss weights as the head's rows: refused where a weight falls on a row the head
    /// does not score (its gradient would be lost).
    fn head_weights(scored: &[u32], weights: &[f32]) -> ModelResult<Vec<f32>> {
        let mut head = vec![0f32; head_rows(scored.len())];
        let mut next = scored.iter().peekable();
        for (r, &w) in weights.iter().enumerate() {
            if next.peek().is_some_and(|&&s| s as usize == r) {
                next.next();
            } else if w != 0.0 {
                return Err(ModelError::Invalid(format!(
                    "a loss weight on row {r}, outside the micro-batch's scored rows"
                )));
            }
        }
        for (h, &r) in head.iter_mut().zip(scored) {
            *h = weights[r as usize];
        }
        Ok(head)
    }

    /// The head's statistics laid out per batch row (0 on rows it did not score).
    async fn row_stats(gpu: &Gpu, plan: &TrainPlan, scored: &[u32], rows: usize) -> ModelResult<RowStats> {
        let stats = gpu.read::<f32>(OP, &plan.head.row_stats).await?;
        let mut out = RowStats { logp: vec![0.0; rows], entropy: vec![0.0; rows] };
        for (i, &r) in scored.iter().enumerate() {
            out.logp[r as usize] = stats[i * 4 + 2];
            out.entropy[r as usize] = stats[i * 4 + 3];
        }
        Ok(out)
    }

    /// Forward (+ backward when `train`) of one micro-batch; gradients accumulate into `grads`.
    /// Returns each row's target log-prob and entropy.
    pub async fn run(
        &mut self,
        gpu: &Gpu,
        model: &GpuModel,
        mb: &MicroBatch,
        train: bool,
        temperature: f32,
    ) -> ModelResult<RowStats> {
        let weights = train.then_some(mb.weights.as_slice());
        Ok(self.pass(gpu, model, mb, weights, temperature).await?.stats)
    }

    /// The forward of one micro-batch alone, its activations kept for [`Self::backward`]: for a
    /// loss whose weights depend on the forward's own log-probs (on-policy RL evaluates its
    /// objective between the two), one forward instead of two.
    pub async fn forward(
        &mut self,
        gpu: &Gpu,
        model: &GpuModel,
        mb: &MicroBatch,
        temperature: f32,
    ) -> ModelResult<Forwarded> {
        self.pass(gpu, model, mb, None, temperature).await
    }

    /// The forward, and the backward with `weights` when given, recorded into one submission.
    async fn pass(
        &mut self,
        gpu: &Gpu,
        model: &GpuModel,
        mb: &MicroBatch,
        weights: Option<&[f32]>,
        temperature: f32,
    ) -> ModelResult<Forwarded> {
        let inputs = Self::upload_inputs(gpu, model, mb)?;
        let dlogp = match weights {
            Some(w) => Some(gpu.upload(OP, "loss weights", &Self::head_weights(&mb.scored, w)?)?),
            None => None,
        };
        let [ids, positions, key_start, head_index, targets] = &inputs;
        let shape = (TrainShape { batch: mb.batch, t: mb.t, head_rows: head_rows(mb.scored.len()) }, self.recompute);
        let plan = Self::plan(&mut self.plans, gpu, model, &self.layout, self.vocab_chunk, shape).await?;
        self.forwards += 1;
        let lora = LoraState { layout: &self.layout, params: &self.params, grads: &self.grads };
        let io = TrainInputs { ids, positions, key_start, head_index, targets };
        let mut b = gpu.batch(OP);
        plan.forward(&mut b, model, &lora, &io, temperature)?;
        if let Some(dlogp) = &dlogp {
            plan.backward(&mut b, model, &lora, &io, dlogp, temperature)?;
        }
        b.submit().await?;
        let stats = Self::row_stats(gpu, plan, &mb.scored, mb.batch * mb.t).await?;
        Ok(Forwarded { inputs, scored: mb.scored.clone(), shape, serial: self.forwards, temperature, stats })
    }

    /// The backward of a [`Self::forward`] with per-row loss weights (∂loss/∂logp, laid out as
    /// `MicroBatch::weights`); gradients accumulate into `grads`. Fails if another forward has
    /// run since (its activations would be gone).
    pub async fn backward(&mut self, gpu: &Gpu, model: &GpuModel, fwd: &Forwarded, weights: &[f32]) -> ModelResult<()> {
        let TrainShape { batch, t, .. } = fwd.shape.0;
        if fwd.serial != self.forwards || !self.plans.contains_key(&fwd.shape) {
            return Err(ModelError::Invalid("backward of a forward whose activations a later forward replaced".into()));
        }
        if weights.len() != batch * t {
            return Err(ModelError::Invalid(format!(
                "{} loss weights for a micro-batch of {batch}×{t} rows",
                weights.len()
            )));
        }
        let plan = &self.plans[&fwd.shape];
        let dlogp = gpu.upload(OP, "loss weights", &Self::head_weights(&fwd.scored, weights)?)?;
        let [ids, positions, key_start, head_index, targets] = &fwd.inputs;
        let lora = LoraState { layout: &self.layout, params: &self.params, grads: &self.grads };
        let io = TrainInputs { ids, positions, key_start, head_index, targets };
        let mut b = gpu.batch(OP);
        plan.backward(&mut b, model, &lora, &io, &dlogp, fwd.temperature)?;
        b.submit().await?;
        Ok(())
    }

    /// Zeroes the accumulated gradients.
    pub async fn zero_grads(&self, gpu: &Gpu) -> ModelResult<()> {
        let mut b = gpu.batch(OP);
        b.clear(&self.grads);
        b.submit().await?;
        Ok(())
    }

    /// Replaces the accumulated gradients by their sum over `workers` (a host round trip: the
    /// transport is the front end's). Alone, nothing happens.
    pub async fn sum_grads(&self, gpu: &Gpu, workers: &dyn Workers) -> ModelResult<()> {
        if workers.count() > 1 {
            let mut grads = gpu.read::<f32>(OP, &self.grads).await?;
            workers.sum_f32(&mut grads);
            gpu.write(&self.grads, bytemuck::cast_slice(&grads));
        }
        Ok(())
    }

    /// One optimiser step on the accumulated gradients (scaled by `grad_scale`); returns the
    /// gradient norm before clipping.
    pub async fn optimizer_step(&mut self, gpu: &Gpu, lr: f32, grad_scale: f32) -> ModelResult<f32> {
        self.step += 1;
        let mut b = gpu.batch(OP);
        self.optimizer.step(&mut b, &self.params, &self.grads, self.step, lr, grad_scale)?;
        b.clear(&self.grads);
        b.submit().await?;
        let norm = gpu.read::<f32>(OP, &self.optimizer.norm).await?;
        Ok(norm[self.optimizer.norm_index()])
    }

    pub async fn read_params(&self, gpu: &Gpu) -> ModelResult<Vec<f32>> {
        Ok(gpu.read::<f32>(OP, &self.params).await?)
    }

    /// Adam moments (m, v) for checkpoints.
    pub async fn read_moments(&self, gpu: &Gpu) -> ModelResult<(Vec<f32>, Vec<f32>)> {
        Ok((gpu.read::<f32>(OP, &self.optimizer.m).await?, gpu.read::<f32>(OP, &self.optimizer.v).await?))
    }

    /// Restores parameters, moments and step from a checkpoint.
    pub fn restore(&mut self, gpu: &Gpu, params: &[f32], m: &[f32], v: &[f32], step: u64) -> ModelResult<()> {
        for (what, x) in [("parameters", params), ("first moments", m), ("second moments", v)] {
            if x.len() != self.layout.len {
                return Err(ModelError::Invalid(format!(
                    "checkpoint {what}: {} values for a layout of {}",
                    x.len(),
                    self.layout.len
                )));
            }
        }
        gpu.write(&self.params, bytemuck::cast_slice(params));
        gpu.write(&self.optimizer.m, bytemuck::cast_slice(m));
        gpu.write(&self.optimizer.v, bytemuck::cast_slice(v));
        self.step = step;
        Ok(())
    }
}

/// Learning-rate schedules (Hugging Face's definitions).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    /// Linear warm-up over `warmup` steps, then cosine decay to 0 at `total`.
    Cosine {
        warmup: u64,
        total: u64,
    },
}

impl Schedule {
    /// The multiplier of the base learning rate at 0-based `step`.
    pub fn factor(&self, step: u64) -> f32 {
        match *self {
            Schedule::Constant => 1.0,
            Schedule::Cosine { warmup, total } => {
                if step < warmup {
                    return step as f32 / warmup.max(1) as f32;
                }
                let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
                (0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())) as f32
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Architecture;
    use crate::model::tests::{random_tensors, tiny_config};
    use crate::testing;
    use crate::train::lora::{LoraConfig, Target};

    #[test]
    fn micro_batches_put_targets_on_completion_tokens_only() {
        let mb =
            MicroBatch::from_sequences(&[(vec![1, 2], vec![3, 4]), (vec![5], vec![6])], 1, |_, i| -(i as f32 + 1.0));
        assert_eq!((mb.t, mb.key_start.clone()), (4, vec![0, 2]));
        assert_eq!(mb.ids, vec![1, 2, 3, 4, 0, 0, 5, 6]);
        assert_eq!(mb.positions, vec![0, 1, 2, 3, 0, 0, 0, 1]);
        // Row 1 predicts 3 (completion token 0), row 2 predicts 4; second sequence: row 6 → 6.
        assert_eq!(mb.weights, vec![0.0, -1.0, -2.0, 0.0, 0.0, 0.0, -1.0, 0.0]);
        assert_eq!(mb.targets[1..3], [3, 4]);
        assert_eq!(mb.targets[6], 6);
    }

    #[test]
    fn schedules_follow_hugging_face() {
        let s = Schedule::Cosine { warmup: 10, total: 110 };
        assert_eq!(s.factor(0), 0.0);
        assert!((s.factor(5) - 0.5).abs() < 1e-6);
        assert!((s.factor(10) - 1.0).abs() < 1e-6);
        assert!((s.factor(60) - 0.5).abs() < 1e-6);
        assert!(s.factor(110).abs() < 1e-6);
        assert_eq!(Schedule::Constant.factor(1000), 1.0);
    }

    #[test]
    fn recomputing_activations_gives_the_same_log_probs_and_gradients() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("recompute");
        let config = tiny_config(Architecture::Qwen2, false);
        let model = GpuModel::upload(&gpu, config.clone(), random_tensors(&config, &mut rng), 64).unwrap();
        let layout = LoraLayout::new(&config, LoraConfig { r: 4, alpha: 8.0, targets: Target::ALL.to_vec() });
        // Non-zero B so that every factor gets a gradient.
        let params: Vec<f32> = testing::normal(&mut rng, layout.len).iter().map(|x| 0.1 * x).collect();
        let seqs = vec![(vec![1, 2, 3], vec![10, 20, 30, 40, 7]), (vec![4, 5], vec![50, 60])];
        let mb = MicroBatch::from_sequences(&seqs, 4, |s, i| 0.3 - (s + i) as f32 * 0.1);
        let mut results = Vec::new();
        for recompute in [false, true] {
            let mut trainer =
                pollster::block_on(LoraTrainer::new(&gpu, layout.clone(), &params, AdamWConfig::default())).unwrap();
            trainer.recompute = recompute;
            let stats = pollster::block_on(trainer.run(&gpu, &model, &mb, true, 0.8)).unwrap();
            let grads = pollster::block_on(gpu.read::<f32>("t", &trainer.grads)).unwrap();
            assert!(grads.iter().any(|g| *g != 0.0));
            results.push((stats.logp, grads));
        }
        // The same kernels on the same inputs: equal to the last bit.
        assert_eq!(results[0], results[1]);
    }

    #[test]
    fn a_separate_forward_and_backward_equal_the_fused_run_and_stale_backwards_are_refused() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("forward then backward");
        let config = tiny_config(Architecture::Llama, false);
        let model = GpuModel::upload(&gpu, config.clone(), random_tensors(&config, &mut rng), 64).unwrap();
        let layout = LoraLayout::new(&config, LoraConfig { r: 4, alpha: 8.0, targets: Target::ALL.to_vec() });
        let params: Vec<f32> = testing::normal(&mut rng, layout.len).iter().map(|x| 0.1 * x).collect();
        let seqs = vec![(vec![1, 2, 3], vec![10, 20, 30, 40, 7]), (vec![4, 5], vec![50, 60])];
        let mb = MicroBatch::from_sequences(&seqs, 4, |s, i| 0.3 - (s + i) as f32 * 0.1);
        let new_trainer =
            || pollster::block_on(LoraTrainer::new(&gpu, layout.clone(), &params, AdamWConfig::default())).unwrap();

        let mut fused = new_trainer();
        let fused_stats = pollster::block_on(fused.run(&gpu, &model, &mb, true, 0.9)).unwrap();
        let fused_grads = pollster::block_on(gpu.read::<f32>("t", &fused.grads)).unwrap();

        let mut split = new_trainer();
        let fwd = pollster::block_on(split.forward(&gpu, &model, &mb, 0.9)).unwrap();
        assert_eq!(fwd.stats.logp, fused_stats.logp);
        // The weights are only needed now (RL computes them from `fwd.stats`).
        pollster::block_on(split.backward(&gpu, &model, &fwd, &mb.weights)).unwrap();
        let split_grads = pollster::block_on(gpu.read::<f32>("t", &split.grads)).unwrap();
        assert!(split_grads.iter().any(|g| *g != 0.0));
        assert_eq!(split_grads, fused_grads, "the same kernels on the same activations");

        // Another forward replaces the activations: the first forward's backward is refused.
        let stale = pollster::block_on(split.forward(&gpu, &model, &mb, 0.9)).unwrap();
        let newer = pollster::block_on(split.forward(&gpu, &model, &mb, 0.9)).unwrap();
        let err = pollster::block_on(split.backward(&gpu, &model, &stale, &mb.weights)).unwrap_err().to_string();
        assert!(err.contains("later forward"), "{err}");
        let err = pollster::block_on(split.backward(&gpu, &model, &newer, &mb.weights[1..])).unwrap_err().to_string();
        assert!(err.contains("loss weights"), "{err}");
    }

    #[test]
    fn the_head_on_scored_rows_only_equals_the_head_on_every_row() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("scored rows");
        let config = tiny_config(Architecture::Qwen2, true);
        let model = GpuModel::upload(&gpu, config.clone(), random_tensors(&config, &mut rng), 64).unwrap();
        let layout = LoraLayout::new(&config, LoraConfig { r: 4, alpha: 8.0, targets: Target::ALL.to_vec() });
        let params: Vec<f32> = testing::normal(&mut rng, layout.len).iter().map(|x| 0.1 * x).collect();
        // Long prompts, short completions of unequal length: 7 of 58 rows are scored.
        let prompt = |n: usize| (0..n).map(|i| (i * 7 % 90) as u32 + 1).collect::<Vec<u32>>();
        let seqs = vec![(prompt(21), vec![10, 20, 30, 7]), (prompt(26), vec![50, 60, 61])];
        let mb = MicroBatch::from_sequences(&seqs, 1, |s, i| 0.35 - (s + i) as f32 * 0.1);
        assert_eq!(mb.scored.len(), 7);
        assert!(mb.scored.iter().all(|&r| mb.weights[r as usize] != 0.0));
        let every_row = MicroBatch { scored: (0..(mb.batch * mb.t) as u32).collect(), ..mb.clone() };
        let run = |mb: &MicroBatch| {
            let mut trainer =
                pollster::block_on(LoraTrainer::new(&gpu, layout.clone(), &params, AdamWConfig::default())).unwrap();
            let stats = pollster::block_on(trainer.run(&gpu, &model, mb, true, 0.7)).unwrap();
            (stats, pollster::block_on(gpu.read::<f32>("t", &trainer.grads)).unwrap())
        };
        let ((few, few_grads), (all, all_grads)) = (run(&mb), run(&every_row));
        let pick = |v: &[f32]| mb.scored.iter().map(|&r| v[r as usize]).collect::<Vec<f32>>();
        assert!(testing::rel_err(&pick(&few.logp), &pick(&all.logp)) < 1e-6);
        assert!(testing::rel_err(&pick(&few.entropy), &pick(&all.entropy)) < 1e-6);
        // Rows the head skipped read 0; the full head gave them real values.
        assert!(few.logp.iter().enumerate().all(|(r, &l)| mb.scored.contains(&(r as u32)) || l == 0.0));
        assert!(all.logp.iter().all(|&l| l < 0.0));
        assert!(few_grads.iter().any(|&g| g != 0.0));
        let err = testing::rel_err(&few_grads, &all_grads);
        assert!(err < 1e-5, "LoRA gradients differ by {err:e}");

        // A weight on a row the head does not score would be lost: refused.
        let mut stray = mb.clone();
        stray.weights[0] = 1.0;
        let mut trainer =
            pollster::block_on(LoraTrainer::new(&gpu, layout.clone(), &params, AdamWConfig::default())).unwrap();
        let err = pollster::block_on(trainer.run(&gpu, &model, &stray, true, 1.0)).unwrap_err().to_string();
        assert!(err.contains("row 0") && err.contains("scored"), "{err}");
        let unsorted = MicroBatch { scored: mb.scored.iter().rev().copied().collect(), ..mb.clone() };
        assert!(pollster::block_on(trainer.run(&gpu, &model, &unsorted, false, 1.0)).is_err());
    }

    #[test]
    fn training_lowers_the_loss_on_a_memorisable_batch() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("trainer");
        let config = tiny_config(Architecture::Llama, true);
        let model = GpuModel::upload(&gpu, config.clone(), random_tensors(&config, &mut rng), 32).unwrap();
        let layout = LoraLayout::new(&config, LoraConfig { r: 8, alpha: 16.0, targets: Target::ALL.to_vec() });
        let init = layout.init(3);
        let mut trainer = pollster::block_on(LoraTrainer::new(
            &gpu,
            layout,
            &init,
            AdamWConfig { weight_decay: 0.0, ..Default::default() },
        ))
        .unwrap();
        let seqs = vec![(vec![1, 2, 3], vec![10, 20, 30, 40]), (vec![4, 5], vec![50, 60, 70])];
        let n = 7.0;
        let mb = MicroBatch::from_sequences(&seqs, 4, |_, _| -1.0 / n);
        let loss = |s: &RowStats| -> f32 { s.logp.iter().zip(&mb.weights).map(|(l, w)| l * w).sum() };
        let first = pollster::block_on(trainer.run(&gpu, &model, &mb, true, 1.0)).unwrap();
        let mut last = loss(&first);
        let start = last;
        for _ in 0..30 {
            pollster::block_on(trainer.optimizer_step(&gpu, 1e-2, 1.0)).unwrap();
            last = loss(&pollster::block_on(trainer.run(&gpu, &model, &mb, true, 1.0)).unwrap());
        }
        assert!(last < 0.5 * start, "loss went from {start} to {last}");
    }
}

#[cfg(test)]
mod padding_tests {
    use super::*;
    use crate::model::Architecture;
    use crate::model::tests::{random_tensors, tiny_config};
    use crate::testing;
    use crate::train::lora::{LoraConfig, Target};
    use rand::Rng;

    #[test]
    fn left_padding_does_not_change_log_probs_of_long_sequences() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("padding long");
        for (head_dim, vocab) in [(16usize, 97usize), (64, 97), (16, 20000)] {
            let mut config = tiny_config(Architecture::Llama, true);
            config.head_dim = head_dim;
            config.vocab_size = vocab;
            let model = GpuModel::upload(&gpu, config.clone(), random_tensors(&config, &mut rng), 700).unwrap();
            let layout = LoraLayout::new(&config, LoraConfig { r: 4, alpha: 8.0, targets: vec![Target::QProj] });
            let mut trainer =
                pollster::block_on(LoraTrainer::new(&gpu, layout.clone(), &layout.init(1), AdamWConfig::default()))
                    .unwrap();
            for len in [40usize, 300, 520] {
                let seq: Vec<u32> = (0..len).map(|_| rng.random_range(0..config.vocab_size as u32)).collect();
                let ex = vec![(seq[..len / 2].to_vec(), seq[len / 2..].to_vec())];
                let plain = MicroBatch::from_sequences(&ex, 1, |_, _| 1.0);
                let padded = MicroBatch::from_sequences(&ex, 64, |_, _| 1.0);
                let a = pollster::block_on(trainer.run(&gpu, &model, &plain, false, 1.0)).unwrap();
                let b = pollster::block_on(trainer.run(&gpu, &model, &padded, false, 1.0)).unwrap();
                let pick = |mb: &MicroBatch, s: &RowStats| -> Vec<f32> {
                    mb.weights.iter().zip(&s.logp).filter(|(w, _)| **w != 0.0).map(|(_, l)| *l).collect()
                };
                let (la, lb) = (pick(&plain, &a), pick(&padded, &b));
                assert_eq!(la.len(), lb.len());
                let err = crate::numeric::rel_err(&lb, &la);
                assert!(
                    err < 1e-4,
                    "head_dim {head_dim}, vocab {vocab}, {len} tokens (padded to {}): rel. error {err:e}",
                    padded.t
                );
            }
        }
    }
}

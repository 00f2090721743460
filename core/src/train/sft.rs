//! Stage 1, behaviour cloning (RANK_GRPO.md §8): the SFT trainer that `convrec sft`, the demo,
//! the experiment and the browser page all drive. Rows in the Reddit-v2 schema become a
//! chat-templated prompt (the template's default system message applies) followed by the
//! demonstration as the assistant's turn; the loss is the mean NLL of the completion tokens,
//! end-of-turn included. LoRA on a frozen base, AdamW with linear warm-up and cosine decay,
//! gradient accumulation, a seeded shuffle per epoch. The trainer knows where it is (epoch,
//! micro-batch), so a front end can checkpoint and resume it from that position alone.

use std::rc::Rc;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::TrainError;
use super::lora::LoraLayout;
use super::trainer::{LoraTrainer, MicroBatch, Schedule};
use crate::gpu::Gpu;
use crate::model::gpu::GpuModel;
use crate::model::text::ChatText;
use crate::ops::adamw::AdamWConfig;
use crate::rec::{InputError, Row};
use crate::workers::{Single, Workers, share};

/// Prompt and completion ids of one demonstration.
pub type Example = (Vec<u32>, Vec<u32>);

/// The end-of-turn token a completion ends with: ChatML's `<|im_end|>`, Llama 3's `<|eot_id|>`,
/// else the model's EOS.
pub fn end_of_turn(text: &ChatText) -> Option<u32> {
    ["<|im_end|>", "<|eot_id|>"]
        .iter()
        .find_map(|marker| text.tokenizer.token_to_id(marker))
        .or_else(|| text.special.eos.as_ref().map(|t| t.id))
}

/// Tokenises demonstrations; prompts are cut from the left so that prompt + completion fit
/// `max_length` (completions longer than that are cut at the end). `origin` names the rows'
/// source in errors.
pub fn sft_examples(
    text: &ChatText,
    rows: &[Row],
    max_length: usize,
    origin: &str,
) -> Result<Vec<Example>, TrainError> {
    let eot =
        end_of_turn(text).ok_or_else(|| TrainError::Invalid("the model names no end-of-turn or EOS token".into()))?;
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let completion = row
            .completion
            .as_ref()
            .and_then(|c| c.scored_text())
            .ok_or_else(|| InputError::entry(origin, i, "the row has no assistant completion to imitate"))?;
        let mut prompt = text.prompt_ids(&row.chat_messages())?;
        let mut comp = text.encode(completion)?;
        comp.push(eot);
        comp.truncate(max_length.saturating_sub(1).max(1));
        let room = max_length.saturating_sub(comp.len());
        if prompt.len() > room {
            prompt.drain(..prompt.len() - room);
        }
        if prompt.is_empty() {
            return Err(
                InputError::entry(origin, i, format!("max length {max_length} leaves no room for the prompt")).into()
            );
        }
        out.push((prompt, comp));
    }
    Ok(out)
}

/// What a front end chooses for an SFT run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SftConfig {
    pub lr: f32,
    pub epochs: usize,
    /// Rows per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    /// Fraction of the steps of linear warm-up before the cosine decay.
    pub warmup_ratio: f32,
    /// Seeds the adapter's initialisation and each epoch's shuffle.
    pub seed: u64,
    /// Recompute activations in the backward (see `LoraTrainer::recompute`).
    pub recompute: bool,
}

impl Default for SftConfig {
    /// The paper's stage-1 recipe where it applies to LoRA (§8): lr 5e-5, cosine with 5% warm-up.
    fn default() -> Self {
        SftConfig { lr: 5e-5, epochs: 1, batch_size: 4, grad_accum: 1, warmup_ratio: 0.05, seed: 0, recompute: false }
    }
}

impl SftConfig {
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |what: &str| Err(TrainError::Invalid(what.to_string()));
        if self.batch_size == 0 {
            return bad("the batch size must be at least 1");
        }
        if self.grad_accum == 0 {
            return bad("gradient accumulation must be at least 1 micro-batch");
        }
        if self.epochs == 0 {
            return bad("at least one epoch is needed");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("the learning rate must be a positive number");
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return bad("the warm-up ratio must lie in [0, 1]");
        }
        Ok(())
    }
}

/// Where an SFT run is; all a checkpoint needs besides the adapter and the optimiser moments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SftPosition {
    pub step: u64,
    pub epoch: usize,
    /// Micro-batches of the current epoch already consumed.
    pub batch_in_epoch: usize,
}

/// What one optimiser step did.
#[derive(Clone, Debug, Serialize)]
pub struct SftStep {
    /// Optimiser steps taken so far (this one included).
    pub step: u64,
    pub epoch: usize,
    /// Mean completion NLL of the step's rows.
    pub loss: f64,
    pub lr: f32,
    pub grad_norm: f32,
    /// Tokens (prompt and completion, padding included) the step ran through the model.
    pub tokens: usize,
    /// The loss has exploded: more than twice, and more than one nat above, the lowest loss of
    /// this run so far (a learning rate far too high drives it towards ln(vocabulary)). Finite,
    /// so the run goes on; front ends say so.
    pub exploded: bool,
}

/// Whether `loss` has exploded relative to the run's lowest loss so far (see `SftStep::exploded`).
pub fn loss_exploded(best: f64, loss: f64) -> bool {
    best.is_finite() && loss > 2.0 * best && loss - best > 1.0
}

pub struct SftTrainer {
    pub lora: LoraTrainer,
    pub config: SftConfig,
    examples: Vec<Example>,
    schedule: Schedule,
    epoch: usize,
    batch_in_epoch: usize,
    /// This epoch's micro-batches (row indices), from its seeded shuffle.
    batches: Vec<Vec<usize>>,
    /// The lowest step loss of this run (since it started or resumed).
    best_loss: f64,
    /// The run's workers: each takes its share of every micro-batch's rows (see `workers`).
    workers: Rc<dyn Workers>,
}

/// Micro-batches of one epoch: the rows in a seeded permutation, `batch_size` at a time.
fn epoch_batches(rows: usize, batch_size: usize, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..rows).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(epoch as u64)));
    order.chunks(batch_size).map(<[usize]>::to_vec).collect()
}

impl SftTrainer {
    /// A trainer for `examples` starting from the adapter `init` (e.g. `layout.init(seed)`).
    pub async fn new(
        gpu: &Gpu,
        layout: LoraLayout,
        init: &[f32],
        examples: Vec<Example>,
        config: SftConfig,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        if examples.is_empty() {
            return Err(TrainError::Invalid("no training rows".into()));
        }
        // SFT recipe: AdamW β = (0.9, 0.999), no weight decay, gradient norm clipped at 1.
        let adamw = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, max_grad_norm: 1.0 };
        let mut lora = LoraTrainer::new(gpu, layout, init, adamw).await?;
        lora.recompute = config.recompute;
        let steps_per_epoch = examples.len().div_ceil(config.batch_size * config.grad_accum) as u64;
        let total = steps_per_epoch * config.epochs as u64;
        let warmup = (total as f32 * config.warmup_ratio).round() as u64;
        let batches = epoch_batches(examples.len(), config.batch_size, config.seed, 0);
        Ok(SftTrainer {
            lora,
            schedule: Schedule::Cosine { warmup, total },
            examples,
            config,
            epoch: 0,
            batch_in_epoch: 0,
            batches,
            best_loss: f64::INFINITY,
            workers: Rc::new(Single),
        })
    }

    /// Runs as one of `workers`: every worker must be built with the same rows and config, and
    /// step together; the run is then the one a single process would make (to rounding).
    pub fn with_workers(mut self, workers: Rc<dyn Workers>) -> Self {
        self.workers = workers;
        self
    }

    pub fn total_steps(&self) -> u64 {
        match self.schedule {
            Schedule::Cosine { total, .. } => total,
            Schedule::Constant => unreachable!("SFT always runs a cosine schedule"),
        }
    }

    pub fn done(&self) -> bool {
        self.epoch >= self.config.epochs
    }

    pub fn position(&self) -> SftPosition {
        SftPosition { step: self.lora.step, epoch: self.epoch, batch_in_epoch: self.batch_in_epoch }
    }

    /// Continues from `position` (the adapter and moments are restored into `lora` separately).
    pub fn resume_at(&mut self, position: SftPosition) -> Result<(), TrainError> {
        if position.epoch > self.config.epochs || position.step > self.total_steps() {
            return Err(TrainError::Invalid(format!(
                "the checkpoint is at step {} (epoch {}), past this run's {} steps",
                position.step,
                position.epoch + 1,
                self.total_steps()
            )));
        }
        self.lora.step = position.step;
        self.epoch = position.epoch;
        self.batch_in_epoch = position.batch_in_epoch;
        self.batches = epoch_batches(self.examples.len(), self.config.batch_size, self.config.seed, self.epoch);
        Ok(())
    }

    /// One optimiser step: `grad_accum` micro-batches forward and backward, then AdamW.
    pub async fn step(&mut self, gpu: &Gpu, model: &GpuModel) -> Result<SftStep, TrainError> {
        if self.done() {
            return Err(TrainError::Invalid("the run has finished its epochs".into()));
        }
        let end = (self.batch_in_epoch + self.config.grad_accum).min(self.batches.len());
        let window = end - self.batch_in_epoch;
        let (rank, workers) = (self.workers.rank(), self.workers.count());
        let (mut loss, mut tokens) = (0f64, 0usize);
        for b in self.batch_in_epoch..end {
            let rows = &self.batches[b];
            // Each micro-batch's loss is the mean over all its completion tokens, whichever worker
            // runs them: every worker knows the whole batch, so the normaliser needs no exchange.
            let n: usize = rows.iter().map(|&i| self.examples[i].1.len()).sum();
            let mine = &rows[share(rows.len(), rank, workers)];
            if mine.is_empty() {
                continue;
            }
            let seqs: Vec<Example> = mine.iter().map(|&i| self.examples[i].clone()).collect();
            let mb = MicroBatch::from_sequences(&seqs, 16, |_, _| -1.0 / n as f32);
            let stats = self.lora.run(gpu, model, &mb, true, 1.0).await?;
            loss += stats.logp.iter().zip(&mb.weights).map(|(l, w)| (*l * *w) as f64).sum::<f64>() / window as f64;
            tokens += mb.ids.len();
        }
        let overflow = gpu.take_f16_overflow().await?;
        let mut totals = [loss, tokens as f64, overflow as u8 as f64];
        self.workers.sum_f64(&mut totals);
        let [loss, tokens, overflows] = totals;
        let tokens = tokens as usize;
        let step = self.lora.step + 1;
        // Checked before the update, so that a diverged step never reaches the adapter.
        if !loss.is_finite() {
            self.lora.zero_grads(gpu).await?;
            return Err(TrainError::NonFinite { step, what: "loss", value: loss });
        }
        if overflows > 0.0 {
            self.lora.zero_grads(gpu).await?;
            return Err(TrainError::F16Overflow { step });
        }
        self.lora.sum_grads(gpu, self.workers.as_ref()).await?;
        let lr = self.config.lr * self.schedule.factor(self.lora.step);
        let grad_norm = self.lora.optimizer_step(gpu, lr, 1.0 / window as f32).await?;
        if !grad_norm.is_finite() {
            return Err(TrainError::NonFinite { step, what: "gradient norm", value: grad_norm as f64 });
        }
        // A positive loss with an exactly zero gradient: the predictions have saturated (a LoRA
        // step always has a gradient otherwise, B's if nothing else), and no later step recovers.
        if grad_norm == 0.0 && loss > 0.0 {
            let uniform = (model.config.vocab_size as f64).ln();
            return Err(TrainError::Collapsed { step, loss, uniform });
        }
        self.batch_in_epoch = end;
        let epoch = self.epoch;
        if self.batch_in_epoch >= self.batches.len() {
            self.epoch += 1;
            self.batch_in_epoch = 0;
            self.batches = epoch_batches(self.examples.len(), self.config.batch_size, self.config.seed, self.epoch);
        }
        let exploded = loss_exploded(self.best_loss, loss);
        self.best_loss = self.best_loss.min(loss);
        Ok(SftStep { step: self.lora.step, epoch, loss, lr, grad_norm, tokens, exploded })
    }

    /// Mean completion NLL of `examples` under the current adapter (no training).
    pub async fn nll(&mut self, gpu: &Gpu, model: &GpuModel, examples: &[Example]) -> Result<f64, TrainError> {
        mean_nll(&mut self.lora, gpu, model, examples, self.config.batch_size).await
    }
}

/// Mean next-token NLL of the completion tokens of `examples`, `batch` sequences per pass.
pub async fn mean_nll(
    lora: &mut LoraTrainer,
    gpu: &Gpu,
    model: &GpuModel,
    examples: &[Example],
    batch: usize,
) -> Result<f64, TrainError> {
    let (mut sum, mut count) = (0f64, 0usize);
    for chunk in examples.chunks(batch.max(1)) {
        let mb = MicroBatch::from_sequences(chunk, 16, |_, _| 1.0);
        let stats = lora.run(gpu, model, &mb, false, 1.0).await?;
        for (lp, w) in stats.logp.iter().zip(&mb.weights) {
            if *w != 0.0 {
                sum -= *lp as f64;
                count += 1;
            }
        }
    }
    Ok(sum / count.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gpu::GpuModel;
    use crate::model::{Architecture, HostTensor};
    use crate::testing;
    use crate::train::lora::{LoraConfig, Target};

    /// Weights that overflow f32 in the forward make the loss NaN: the step stops with
    /// `NonFinite` naming the loss, and the adapter is not updated.
    #[test]
    fn a_non_finite_loss_stops_the_step_before_the_update() {
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("sft non-finite loss");
        let config = testing::tiny_config(Architecture::Llama, false);
        let mut tensors = testing::random_tensors(&config, &mut rng);
        for (name, tensor) in &mut tensors {
            if name == "model.norm.weight" {
                *tensor = HostTensor::f32(tensor.shape.clone(), vec![1e38; config.hidden_size]);
            }
        }
        let model = GpuModel::upload(&gpu, config.clone(), tensors, 64).unwrap();
        let layout = LoraLayout::new(&config, LoraConfig { r: 4, alpha: 8.0, targets: vec![Target::QProj] });
        let init = layout.init(1);
        let examples: Vec<Example> = vec![((1..9).collect(), (9..15).collect()); 2];
        let sft_config = SftConfig { lr: 1e-2, batch_size: 2, ..SftConfig::default() };
        let mut trainer = pollster::block_on(SftTrainer::new(&gpu, layout, &init, examples, sft_config)).unwrap();
        match pollster::block_on(trainer.step(&gpu, &model)) {
            Err(TrainError::NonFinite { step: 1, what: "loss", value }) => assert!(!value.is_finite()),
            other => panic!("expected a non-finite loss at step 1, got {:?}", other.map(|s| s.loss)),
        }
        let message = TrainError::NonFinite { step: 1, what: "loss", value: f64::NAN }.to_string();
        assert!(message.contains("training diverged") && message.contains("checkpoint is untouched"), "{message}");
        assert_eq!(trainer.lora.step, 0, "the diverged step was not applied");
        let params = pollster::block_on(trainer.lora.read_params(&gpu)).unwrap();
        assert_eq!(params, init, "the adapter is unchanged");
    }

    /// The same run as one worker and as three (threads sharing the adapter, rows split 1/1/1
    /// and 1/1/2 and some workers idle on the short last micro-batch): the same losses and adapter
    /// within rounding (the sums run in another order, and each worker pads its own rows).
    #[test]
    fn three_workers_take_the_steps_one_worker_takes() {
        use crate::workers::LocalWorker;
        use rand::Rng;
        let Some(gpu) = testing::gpu() else { return };
        let mut rng = testing::rng("sft workers");
        let config = testing::tiny_config(Architecture::Qwen2, false);
        let tensors = testing::random_tensors(&config, &mut rng);
        let layout = LoraLayout::new(&config, LoraConfig { r: 4, alpha: 8.0, targets: Target::ALL.to_vec() });
        let init = layout.init(2);
        let mut token = || rng.random_range(1..config.vocab_size as u32);
        let examples: Vec<Example> = (0..9)
            .map(|i| ((0..3 + i % 4).map(|_| token()).collect(), (0..2 + (i * 5) % 7).map(|_| token()).collect()))
            .collect();
        let sft = SftConfig { lr: 1e-2, batch_size: 4, grad_accum: 2, epochs: 2, ..SftConfig::default() };
        let run = |workers: Rc<dyn Workers>| -> (Vec<f64>, Vec<f32>) {
            let model = GpuModel::upload(&gpu, config.clone(), tensors.clone(), 64).unwrap();
            let trainer = SftTrainer::new(&gpu, layout.clone(), &init, examples.clone(), sft.clone());
            let mut trainer = pollster::block_on(trainer).unwrap().with_workers(workers);
            let mut losses = Vec::new();
            while !trainer.done() {
                losses.push(pollster::block_on(trainer.step(&gpu, &model)).unwrap().loss);
            }
            (losses, pollster::block_on(trainer.lora.read_params(&gpu)).unwrap())
        };
        let (losses, params) = run(Rc::new(Single));
        assert_eq!(losses.len(), 4, "9 rows in micro-batches of 4, two per step, two epochs");
        let split: Vec<(Vec<f64>, Vec<f32>)> = std::thread::scope(|s| {
            let handles: Vec<_> = LocalWorker::group(3).into_iter().map(|w| s.spawn(move || run(Rc::new(w)))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (worker_losses, worker_params) in &split {
            assert_eq!(worker_params, &split[0].1, "every worker holds the same adapter");
            for (a, b) in worker_losses.iter().zip(&losses) {
                assert!((a - b).abs() <= 1e-5 * b.abs(), "loss {a} with three workers, {b} alone");
            }
        }
        assert_ne!(params, init);
        let err = testing::rel_err(&split[0].1, &params);
        eprintln!("three workers against one: adapter rel. error {err:e}");
        // f32 sums in another order, then AdamW, whose first steps move each parameter by about
        // lr·sign(g): an entry whose gradient is near zero can flip sign under that rounding.
        // Measured over 31 seeds: 1e-7 to 6.3e-6, and once past 1e-5; 1e-4 is the bound the
        // mpirun test (native/tests/mpi.rs) uses for the same comparison.
        assert!(err < 1e-4, "the adapters differ by {err:e}");
    }

    #[test]
    fn an_exploded_loss_is_far_above_the_best_in_ratio_and_in_nats() {
        assert!(!loss_exploded(f64::INFINITY, 50.0), "the first step has nothing to compare with");
        assert!(!loss_exploded(2.0, 3.5), "noise between batches");
        assert!(!loss_exploded(0.3, 0.9), "three times, but less than one nat");
        assert!(!loss_exploded(3.0, 6.0), "exactly twice");
        assert!(loss_exploded(2.0, 10.8), "towards ln(vocabulary)");
        assert!(loss_exploded(0.4, 1.5));
    }
}

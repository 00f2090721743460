//! Batched generation on the GPU: left-padded prompts are prefilled once, each prompt's KV cache
//! is broadcast to its G samples, then every decode step embeds, runs the layers against the
//! cache, projects the last hidden states to logits and samples — all on the GPU; the next step
//! reads the sampled ids from GPU memory. The ids come back to the host only every
//! [`STOP_CHECK_EVERY`] steps (a history buffer keeps them), to notice end-of-turn without a host
//! round trip per token; tokens a sequence samples after its stop are discarded.

use super::gpu::{
    AttentionMode, ForwardInputs, ForwardPlan, GpuModel, KvCache, LogitsOp, ModelError, ModelResult, check_ids,
    left_pad,
};
use crate::gpu::Gpu;
use crate::ops::decode::{KvOps, Sampler, SamplingConfig};

/// Decode steps between two readbacks of the sampled ids (a host round trip each). After every
/// sequence has stopped, at most this many minus one steps are computed for nothing.
pub const STOP_CHECK_EVERY: usize = 8;

#[derive(Clone, Debug)]
pub struct GenerateRequest {
    /// Token ids of each prompt (chat template already applied).
    pub prompts: Vec<Vec<u32>>,
    /// Completions per prompt (they share the prompt's prefill).
    pub num_samples: usize,
    /// The random stream of the first completion: completion k (prompt-major) draws as sequence
    /// `first_sequence + k`, so a request split across workers samples what the whole would.
    pub first_sequence: u32,
    pub max_new_tokens: usize,
    pub sampling: SamplingConfig,
    /// Generation of a sequence stops after any of these (included in its output).
    pub stop_ids: Vec<u32>,
}

/// One completion: its tokens (up to and including a stop token, if one came).
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub prompt: usize,
    pub sample: usize,
    pub tokens: Vec<u32>,
    /// True when a stop token ended it; false when it ran into `max_new_tokens`.
    pub stopped: bool,
}

const OP: &str = "generate";

/// Generates `num_samples` completions for every prompt; results are in prompt-major order.
/// After each decode step `on_step` sees the steps done and the completions so far (for progress
/// and for streaming text).
pub async fn generate(
    gpu: &Gpu,
    model: &GpuModel,
    req: &GenerateRequest,
    mut on_step: impl FnMut(usize, &[Completion]),
) -> ModelResult<Vec<Completion>> {
    if req.prompts.is_empty() || req.num_samples == 0 || req.max_new_tokens == 0 {
        return Ok(Vec::new());
    }
    if let Some(i) = req.prompts.iter().position(Vec::is_empty) {
        return Err(ModelError::Invalid(format!("prompt {i} is empty")));
    }
    for p in &req.prompts {
        check_ids(model, p)?;
    }
    let g = req.num_samples;
    let prompts = req.prompts.len();
    let rows = prompts * g;
    let (ids, positions, key_start, t) = left_pad(&req.prompts);
    let capacity = t + req.max_new_tokens;
    if capacity > model.rope.max_pos {
        return Err(ModelError::Invalid(format!(
            "prompt of {t} tokens + {} new tokens exceeds the {} positions prepared",
            req.max_new_tokens, model.rope.max_pos
        )));
    }
    let kv = KvOps::new(gpu).await?;
    let cache = KvCache::new(gpu, &model.config, rows, capacity)?;

    // Prefill all but the last prompt token; each sample then starts by decoding that token.
    if t > 1 {
        let prefix: Vec<Vec<u32>> = (0..prompts).map(|p| ids[p * t..p * t + t - 1].to_vec()).collect();
        let prefix_positions: Vec<u32> = (0..prompts).flat_map(|p| positions[p * t..p * t + t - 1].to_vec()).collect();
        let prefix_ids: Vec<u32> = prefix.concat();
        let plan = ForwardPlan::new(gpu, model, prompts, t - 1).await?;
        let prompt_cache = KvCache::new(gpu, &model.config, prompts, capacity)?;
        let inputs = ForwardInputs {
            ids: &gpu.upload(OP, "prompt ids", &prefix_ids)?,
            positions: &gpu.upload(OP, "prompt positions", &prefix_positions)?,
            key_start: &gpu.upload(OP, "key start", &key_start)?,
        };
        let mut b = gpu.batch("prefill");
        plan.record(&mut b, model, &inputs, &AttentionMode::Cache { cache: &prompt_cache, pos0: 0 })?;
        for p in 0..prompts {
            for l in 0..model.config.num_layers {
                kv.broadcast(
                    &mut b,
                    prompt_cache.shape,
                    p,
                    cache.shape,
                    p * g..(p + 1) * g,
                    t - 1,
                    &prompt_cache.k[l],
                    &cache.k[l],
                )?;
                kv.broadcast(
                    &mut b,
                    prompt_cache.shape,
                    p,
                    cache.shape,
                    p * g..(p + 1) * g,
                    t - 1,
                    &prompt_cache.v[l],
                    &cache.v[l],
                )?;
            }
        }
        b.submit().await?;
    }

    // Decode: one token per row per step.
    let row_key_start: Vec<u32> = (0..rows).map(|r| key_start[r / g]).collect();
    let first: Vec<u32> = (0..rows).map(|r| ids[(r / g) * t + t - 1]).collect();
    let plan = ForwardPlan::new(gpu, model, rows, 1).await?;
    let logits = LogitsOp::new(gpu, model, rows).await?;
    let sampler = Sampler::new(gpu).await?;
    let step_ids = gpu.upload(OP, "step ids", &first)?;
    let sampled = gpu.storage(OP, "sampled ids", rows as u64 * 4)?;
    let history =
        gpu.storage(OP, "sampled ids of the steps since the last check", (STOP_CHECK_EVERY * rows) as u64 * 4)?;
    let key_start_buf = gpu.upload(OP, "key start", &row_key_start)?;
    let first_sequence = req.first_sequence;
    let row_ids =
        gpu.upload(OP, "sequence ids", &(first_sequence..first_sequence + rows as u32).collect::<Vec<_>>())?;
    let positions_buf = gpu.storage(OP, "positions", rows as u64 * 4)?;

    let mut out: Vec<Completion> =
        (0..rows).map(|r| Completion { prompt: r / g, sample: r % g, tokens: Vec::new(), stopped: false }).collect();
    let row_bytes = rows as u64 * 4;
    let mut step = 0;
    while step < req.max_new_tokens {
        // Record and submit up to STOP_CHECK_EVERY steps (the position writes are queued in
        // order with the submissions), then read their ids back at once.
        let chunk = STOP_CHECK_EVERY.min(req.max_new_tokens - step);
        for i in 0..chunk {
            let cache_pos = t - 1 + step + i;
            let pos: Vec<u32> = row_key_start.iter().map(|&ks| (cache_pos as u32).saturating_sub(ks)).collect();
            gpu.write(&positions_buf, bytemuck::cast_slice(&pos));
            let inputs = ForwardInputs { ids: &step_ids, positions: &positions_buf, key_start: &key_start_buf };
            let mut b = gpu.batch("decode step");
            plan.record(&mut b, model, &inputs, &AttentionMode::Cache { cache: &cache, pos0: cache_pos })?;
            logits.record(&mut b, model, &plan.hidden, 0, 1)?;
            sampler.record(
                &mut b,
                &req.sampling,
                rows,
                model.config.vocab_size,
                (step + i) as u32,
                &logits.logits,
                &row_ids,
                &sampled,
            )?;
            b.copy(&sampled, &step_ids, row_bytes);
            b.copy_range(&sampled, 0, &history, i as u64 * row_bytes, row_bytes);
            b.submit().await?;
        }
        let ids = gpu.read::<u32>(OP, &history).await?;
        for i in 0..chunk {
            for (c, &id) in out.iter_mut().zip(&ids[i * rows..(i + 1) * rows]) {
                if !c.stopped {
                    c.tokens.push(id);
                    c.stopped = req.stop_ids.contains(&id);
                }
            }
            on_step(step + i + 1, &out);
        }
        step += chunk;
        if out.iter().all(|c| c.stopped) {
            break;
        }
    }
    Ok(out)
}

//! The model on the GPU: weights uploaded once; a forward over a left-padded batch (prefill,
//! scoring) and KV-cache decode steps; logits only for the rows that need them.

use std::collections::HashMap;

use super::config::ModelConfig;
use super::tensor::HostTensor;
use crate::dtype::{Dtype, WeightFormat};
use crate::gpu::{Batch, Gpu, GpuBuffer, GpuError};
use crate::ops::attention::{Attention, AttentionIo, AttentionShape};
use crate::ops::decode::{CacheShape, KvOps};
use crate::ops::elementwise::{Embedding, SwiGlu};
use crate::ops::matmul::{Matmul, MatmulSet, MatmulShape, MatmulSpec, Operand};
use crate::ops::rmsnorm::RmsNorm;
use crate::ops::rope::{Rope, RopeTables};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("weights: tensor {0} is missing")]
    Missing(String),
    #[error("weights: tensor {name} has shape {got:?}, the config implies {want:?}")]
    Shape { name: String, want: Vec<usize>, got: Vec<usize> },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Gpu(#[from] GpuError),
}

pub type ModelResult<T> = Result<T, ModelError>;

/// A weight matrix on the GPU in its storage type.
pub struct Weight {
    /// The whole matrix, or its first row shard when it is split.
    pub buf: GpuBuffer,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// (first row, buffer) of each row shard: matrices larger than one storage binding (a
    /// 152k-row vocabulary on a 128 MiB-binding adapter) are split; only the embedding and the
    /// head, whose kernels take shards, may be.
    pub shards: Vec<(usize, GpuBuffer)>,
}

impl Weight {
    pub fn row_shards(&self) -> Vec<(usize, &GpuBuffer)> {
        self.shards.iter().map(|(r, b)| (*r, b)).collect()
    }
    pub fn shard_starts(&self) -> Vec<usize> {
        self.shards.iter().map(|s| s.0).collect()
    }

    /// Uploads a 2-D tensor, split into row shards when `shardable` and larger than a binding
    /// (or than `shard_rows` rows, when given).
    pub fn upload(
        gpu: &Gpu,
        name: &str,
        t: HostTensor,
        shardable: bool,
        shard_rows: Option<usize>,
    ) -> ModelResult<Weight> {
        let dtype = t.dtype();
        let (rows, cols) = (t.shape[0], t.shape.get(1).copied().unwrap_or(1));
        let row_bytes = dtype.storage_bytes(cols).max(4);
        let limit = match shard_rows {
            Some(r) => r as u64 * row_bytes,
            None => gpu.limits().max_storage_buffer_binding_size.min(gpu.limits().max_buffer_size),
        };
        let whole = dtype.storage_bytes(rows * cols);
        if dtype.is_quantized() && !cols.is_multiple_of(dtype.block_elems()) {
            return Err(ModelError::Invalid(format!(
                "{name}: rows of {cols} elements are not whole {dtype} blocks of {}",
                dtype.block_elems()
            )));
        }
        let words = t.gpu_words();
        if whole <= limit || !shardable {
            let buf = gpu.upload("load model", name, &words)?;
            return Ok(Weight { shards: vec![(0, buf.clone())], buf, dtype, shape: t.shape });
        }
        if !cols.is_multiple_of(dtype.unit().0) {
            return Err(ModelError::Invalid(format!("{name}: an odd row length cannot be split between 16-bit pairs")));
        }
        let rows_per_shard = (limit / row_bytes).max(1) as usize;
        let words_per_row = row_bytes as usize / 4;
        let mut shards = Vec::new();
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + rows_per_shard).min(rows);
            shards.push((
                r0,
                gpu.upload(
                    "load model",
                    &format!("{name} rows {r0}..{r1}"),
                    &words[r0 * words_per_row..r1 * words_per_row],
                )?,
            ));
            r0 = r1;
        }
        Ok(Weight { buf: shards[0].1.clone(), dtype, shape: t.shape, shards })
    }
}

pub struct LayerWeights {
    pub input_norm: GpuBuffer,
    pub post_norm: GpuBuffer,
    pub q: Weight,
    pub k: Weight,
    pub v: Weight,
    pub o: Weight,
    pub gate: Weight,
    pub up: Weight,
    pub down: Weight,
    pub q_bias: Option<GpuBuffer>,
    pub k_bias: Option<GpuBuffer>,
    pub v_bias: Option<GpuBuffer>,
}

pub struct GpuModel {
    pub config: ModelConfig,
    pub embed: Weight,
    pub final_norm: GpuBuffer,
    pub lm_head: Option<Weight>,
    pub layers: Vec<LayerWeights>,
    pub rope: RopeTables,
}

impl GpuModel {
    /// Uploads HF-named tensors, checking each against the config. `max_positions` sizes the
    /// RoPE tables (prompt + generation length).
    /// Bytes the weights take on the GPU (every matrix in its storage type, norms and biases).
    pub fn weight_bytes(&self) -> u64 {
        let matrix = |w: &Weight| w.shards.iter().map(|(_, b)| b.len_bytes()).sum::<u64>();
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down].into_iter().map(matrix).sum::<u64>()
                    + [Some(&l.input_norm), Some(&l.post_norm), l.q_bias.as_ref(), l.k_bias.as_ref(), l.v_bias.as_ref()]
                        .into_iter()
                        .flatten()
                        .map(|b| b.len_bytes())
                        .sum::<u64>()
            })
            .sum();
        matrix(&self.embed) + self.lm_head.as_ref().map_or(0, matrix) + self.final_norm.len_bytes() + layers
    }

    /// Frozen weights are kept as `gpu.weight_format()` says (`--weights`).
    pub fn upload(
        gpu: &Gpu,
        config: ModelConfig,
        tensors: Vec<(String, HostTensor)>,
        max_positions: usize,
    ) -> ModelResult<Self> {
        Self::upload_inner(gpu, config, tensors, max_positions, None, gpu.weight_format())
    }

    /// As `upload`, with the frozen weights kept as `weights` says.
    pub fn upload_as(
        gpu: &Gpu,
        config: ModelConfig,
        tensors: Vec<(String, HostTensor)>,
        max_positions: usize,
        weights: WeightFormat,
    ) -> ModelResult<Self> {
        Self::upload_inner(gpu, config, tensors, max_positions, None, weights)
    }

    /// As `upload`, with the embedding and head split every `vocab_shard_rows` rows (tests, and
    /// rehearsing small-binding adapters such as browsers' default 128 MiB).
    pub fn upload_with(
        gpu: &Gpu,
        config: ModelConfig,
        tensors: Vec<(String, HostTensor)>,
        max_positions: usize,
        vocab_shard_rows: Option<usize>,
    ) -> ModelResult<Self> {
        Self::upload_inner(gpu, config, tensors, max_positions, vocab_shard_rows, gpu.weight_format())
    }

    fn upload_inner(
        gpu: &Gpu,
        config: ModelConfig,
        tensors: Vec<(String, HostTensor)>,
        max_positions: usize,
        vocab_shard_rows: Option<usize>,
        weights: WeightFormat,
    ) -> ModelResult<Self> {
        let mut by_name: HashMap<String, HostTensor> = tensors.into_iter().collect();
        let expected: HashMap<String, Vec<usize>> = config.expected_tensors().into_iter().collect();
        let mut take = |name: &str| -> ModelResult<HostTensor> {
            let t = by_name.remove(name).ok_or_else(|| ModelError::Missing(name.to_string()))?;
            let want = &expected[name];
            let elems: usize = t.shape.iter().product();
            if &t.shape != want || elems != t.len() {
                return Err(ModelError::Shape { name: name.to_string(), want: want.clone(), got: t.shape.clone() });
            }
            // `--weights`: kept as stored, widened to f32 or quantised on load.
            let dtype = weights.dtype_for(name, &t.shape, t.dtype());
            Ok(t.converted(dtype))
        };
        let matrix = |name: &str, t: HostTensor| -> ModelResult<Weight> { Weight::upload(gpu, name, t, false, None) };
        let vector =
            |name: &str, t: HostTensor| -> ModelResult<GpuBuffer> { Ok(gpu.upload("load model", name, &t.to_f32())?) };
        let embed = Weight::upload(
            gpu,
            "model.embed_tokens.weight",
            take("model.embed_tokens.weight")?,
            true,
            vocab_shard_rows,
        )?;
        let final_norm = vector("model.norm.weight", take("model.norm.weight")?)?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(Weight::upload(gpu, "lm_head.weight", take("lm_head.weight")?, true, vocab_shard_rows)?)
        };
        let mut layers = Vec::with_capacity(config.num_layers);
        for l in 0..config.num_layers {
            let p = format!("model.layers.{l}");
            let mut m = |suffix: &str| -> ModelResult<Weight> {
                let name = format!("{p}.{suffix}");
                let t = take(&name)?;
                matrix(&name, t)
            };
            let (q, k, v, o) = (
                m("self_attn.q_proj.weight")?,
                m("self_attn.k_proj.weight")?,
                m("self_attn.v_proj.weight")?,
                m("self_attn.o_proj.weight")?,
            );
            let (gate, up, down) = (m("mlp.gate_proj.weight")?, m("mlp.up_proj.weight")?, m("mlp.down_proj.weight")?);
            let mut vec_of = |suffix: &str| -> ModelResult<GpuBuffer> {
                let name = format!("{p}.{suffix}");
                let t = take(&name)?;
                vector(&name, t)
            };
            let (input_norm, post_norm) =
                (vec_of("input_layernorm.weight")?, vec_of("post_attention_layernorm.weight")?);
            let (q_bias, k_bias, v_bias) = if config.attention_bias {
                (
                    Some(vec_of("self_attn.q_proj.bias")?),
                    Some(vec_of("self_attn.k_proj.bias")?),
                    Some(vec_of("self_attn.v_proj.bias")?),
                )
            } else {
                (None, None, None)
            };
            layers.push(LayerWeights { input_norm, post_norm, q, k, v, o, gate, up, down, q_bias, k_bias, v_bias });
        }
        if let Some(limit) = config.rope_scaling.max_positions(config.max_position_embeddings) {
            if max_positions > limit {
                return Err(ModelError::Invalid(format!(
                    "dynamic RoPE scaling past max_position_embeddings ({limit}) is not implemented, and {max_positions} \
                     positions were asked for: shorten --max-length / --max-prompt-length / --max-new-tokens"
                )));
            }
        }
        let rope =
            RopeTables::with_frequencies(gpu, config.head_dim, &config.rope_frequencies(), max_positions.max(1))?;
        Ok(GpuModel { config, embed, final_norm, lm_head, layers, rope })
    }

    /// Another handle on the same GPU weights (buffers are shared, not copied), so that a view
    /// can replace some projections (an adapter merged in) and keep the rest.
    pub fn share(&self) -> GpuModel {
        let w = |x: &Weight| Weight {
            buf: x.buf.clone(),
            dtype: x.dtype,
            shape: x.shape.clone(),
            shards: x.shards.clone(),
        };
        GpuModel {
            config: self.config.clone(),
            embed: w(&self.embed),
            final_norm: self.final_norm.clone(),
            lm_head: self.lm_head.as_ref().map(w),
            layers: self
                .layers
                .iter()
                .map(|l| LayerWeights {
                    input_norm: l.input_norm.clone(),
                    post_norm: l.post_norm.clone(),
                    q: w(&l.q),
                    k: w(&l.k),
                    v: w(&l.v),
                    o: w(&l.o),
                    gate: w(&l.gate),
                    up: w(&l.up),
                    down: w(&l.down),
                    q_bias: l.q_bias.clone(),
                    k_bias: l.k_bias.clone(),
                    v_bias: l.v_bias.clone(),
                })
                .collect(),
            rope: self.rope.clone(),
        }
    }

    /// The output projection (the embedding when tied).
    pub fn head(&self) -> &Weight {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}

/// Which linear of a layer, for preparing one product per distinct (kind, dtype).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Proj {
    Q,
    Kv,
    O,
    GateUp,
    Down,
}

/// Per-layer KV caches `[batch, kv_heads, capacity, head_dim]`.
pub struct KvCache {
    pub shape: CacheShape,
    pub k: Vec<GpuBuffer>,
    pub v: Vec<GpuBuffer>,
}

impl KvCache {
    pub fn new(gpu: &Gpu, config: &ModelConfig, batch: usize, capacity: usize) -> ModelResult<Self> {
        let shape = CacheShape { batch, kv_heads: config.num_kv_heads, capacity, head_dim: config.head_dim };
        let bytes = shape.elems() as u64 * 4;
        let mut k = Vec::new();
        let mut v = Vec::new();
        for l in 0..config.num_layers {
            k.push(gpu.storage("kv cache", &format!("layer {l} keys ({batch}×{capacity} positions)"), bytes)?);
            v.push(gpu.storage("kv cache", &format!("layer {l} values ({batch}×{capacity} positions)"), bytes)?);
        }
        Ok(KvCache { shape, k, v })
    }
}

/// Attention source for a forward.
pub enum AttentionMode<'a> {
    /// Over the batch's own tokens (prefill of a fresh sequence, scoring, training).
    SelfOnly,
    /// Write this step's keys/values at cache positions `pos0…` and attend over the cache.
    Cache { cache: &'a KvCache, pos0: usize },
}

/// Buffers of one forward: u32 token ids `[batch·t]`, RoPE positions `[batch·t]`, and the first
/// non-padding key per sequence `[batch]`.
pub struct ForwardInputs<'a> {
    pub ids: &'a GpuBuffer,
    pub positions: &'a GpuBuffer,
    pub key_start: &'a GpuBuffer,
}

/// Ops and activations for forwards of `batch` sequences × `t` tokens.
pub struct ForwardPlan {
    pub batch: usize,
    pub t: usize,
    rows: usize,
    embedding: Embedding,
    norm: RmsNorm,
    rope: Rope,
    attention: Attention,
    swiglu: SwiGlu,
    kv: KvOps,
    products: HashMap<(Proj, Dtype, bool), Matmul>,
    x: GpuBuffer,
    xn: GpuBuffer,
    q: GpuBuffer,
    k: GpuBuffer,
    v: GpuBuffer,
    attn: GpuBuffer,
    gate: GpuBuffer,
    up: GpuBuffer,
    h: GpuBuffer,
    rstd: GpuBuffer,
    stats: GpuBuffer,
    /// Final normed hidden states `[batch·t, hidden]` after `record`.
    pub hidden: GpuBuffer,
}

const OP: &str = "model forward";

impl ForwardPlan {
    pub async fn new(gpu: &Gpu, model: &GpuModel, batch: usize, t: usize) -> ModelResult<Self> {
        let c = &model.config;
        let rows = batch * t;
        if rows == 0 {
            return Err(ModelError::Invalid("a forward needs at least one token".into()));
        }
        let (h, f, qd, kvd) =
            (c.hidden_size, c.intermediate_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let mut products = HashMap::new();
        for layer in &model.layers {
            let wanted = [
                (Proj::Q, layer.q.dtype, h, qd, c.attention_bias, false),
                (Proj::Kv, layer.k.dtype, h, kvd, c.attention_bias, false),
                (Proj::Kv, layer.v.dtype, h, kvd, c.attention_bias, false),
                (Proj::O, layer.o.dtype, qd, h, false, true),
                (Proj::GateUp, layer.gate.dtype, h, f, false, false),
                (Proj::GateUp, layer.up.dtype, h, f, false, false),
                (Proj::Down, layer.down.dtype, f, h, false, true),
            ];
            for (proj, dtype, inp, out, has_bias, accumulate) in wanted {
                if let std::collections::hash_map::Entry::Vacant(e) = products.entry((proj, dtype, has_bias)) {
                    let spec = MatmulSpec { trans_a: false, trans_b: true, has_bias, accumulate, b_dtype: dtype };
                    e.insert(Matmul::new(gpu, spec, MatmulShape::new(rows, out, inp)).await?);
                }
            }
        }
        let buf = |what: &str, elems: usize| gpu.storage(OP, what, elems as u64 * 4);
        Ok(ForwardPlan {
            batch,
            t,
            rows,
            embedding: Embedding::new(gpu, c.vocab_size, h, model.embed.dtype).await?,
            norm: RmsNorm::new(gpu, rows, h, c.rms_norm_eps, false).await?,
            rope: Rope::new(gpu).await?,
            attention: Attention::new(gpu, c.head_dim, false, false).await?,
            swiglu: SwiGlu::new(gpu).await?,
            kv: KvOps::new(gpu).await?,
            products,
            x: buf("residual stream", rows * h)?,
            xn: buf("normed hidden", rows * h)?,
            q: buf("queries", rows * qd)?,
            k: buf("keys", rows * kvd)?,
            v: buf("values", rows * kvd)?,
            attn: buf("attention output", rows * qd)?,
            gate: buf("gate", rows * f)?,
            up: buf("up", rows * f)?,
            h: buf("mlp hidden", rows * f)?,
            rstd: buf("rms statistics", rows)?,
            stats: buf("attention statistics", 2 * batch * c.num_heads * t)?,
            hidden: buf("final hidden", rows * h)?,
        })
    }

    fn linear(
        &self,
        b: &mut Batch,
        proj: Proj,
        w: &Weight,
        bias: Option<&GpuBuffer>,
        x: &GpuBuffer,
        y: &GpuBuffer,
    ) -> ModelResult<()> {
        let mm = &self.products[&(proj, w.dtype, bias.is_some())];
        let (inp, out) = (w.shape[1], w.shape[0]);
        mm.record(b, Operand::dense(x, inp), Operand::dense(&w.buf, inp), bias, Operand::dense(y, out), 1.0)?;
        Ok(())
    }

    /// Records the whole forward; the final normed hidden states land in `self.hidden`.
    pub fn record(
        &self,
        b: &mut Batch,
        model: &GpuModel,
        inputs: &ForwardInputs,
        mode: &AttentionMode,
    ) -> ModelResult<()> {
        let c = &model.config;
        let (heads, kv_heads, d) = (c.num_heads, c.num_kv_heads, c.head_dim);
        self.embedding.record(b, inputs.ids, self.rows, &model.embed.row_shards(), &self.x)?;
        let attention_shape = match mode {
            AttentionMode::SelfOnly => AttentionShape::token_major(self.batch, self.t, heads, kv_heads, d),
            AttentionMode::Cache { cache, pos0 } => {
                if cache.shape.batch != self.batch {
                    return Err(ModelError::Invalid(format!(
                        "cache of {} sequences for a batch of {}",
                        cache.shape.batch, self.batch
                    )));
                }
                AttentionShape::cached(self.batch, self.t, *pos0, cache.shape.capacity, heads, kv_heads, d)
            }
        };
        for (l, layer) in model.layers.iter().enumerate() {
            self.norm.forward(b, &self.x, &layer.input_norm, &self.xn, &self.rstd)?;
            self.linear(b, Proj::Q, &layer.q, layer.q_bias.as_ref(), &self.xn, &self.q)?;
            self.linear(b, Proj::Kv, &layer.k, layer.k_bias.as_ref(), &self.xn, &self.k)?;
            self.linear(b, Proj::Kv, &layer.v, layer.v_bias.as_ref(), &self.xn, &self.v)?;
            self.rope.record(b, &model.rope, inputs.positions, &self.q, self.rows, heads, heads * d, false)?;
            self.rope.record(b, &model.rope, inputs.positions, &self.k, self.rows, kv_heads, kv_heads * d, false)?;
            let (k_src, v_src) = match mode {
                AttentionMode::SelfOnly => (&self.k, &self.v),
                AttentionMode::Cache { cache, pos0 } => {
                    self.kv.write(b, cache.shape, self.t, *pos0, &self.k, &cache.k[l])?;
                    self.kv.write(b, cache.shape, self.t, *pos0, &self.v, &cache.v[l])?;
                    (&cache.k[l], &cache.v[l])
                }
            };
            let io = AttentionIo {
                q: &self.q,
                k: k_src,
                v: v_src,
                key_start: inputs.key_start,
                out: &self.attn,
                stats: &self.stats,
            };
            self.attention.forward(b, &attention_shape, &io)?;
            self.linear(b, Proj::O, &layer.o, None, &self.attn, &self.x)?; // x += o_proj(attn)
            self.norm.forward(b, &self.x, &layer.post_norm, &self.xn, &self.rstd)?;
            self.linear(b, Proj::GateUp, &layer.gate, None, &self.xn, &self.gate)?;
            self.linear(b, Proj::GateUp, &layer.up, None, &self.xn, &self.up)?;
            self.swiglu.forward(b, self.rows * c.intermediate_size, &self.gate, &self.up, &self.h)?;
            self.linear(b, Proj::Down, &layer.down, None, &self.h, &self.x)?; // x += down_proj(h)
        }
        self.norm.forward(b, &self.x, &model.final_norm, &self.hidden, &self.rstd)?;
        Ok(())
    }
}

/// Logits `[rows, vocab]` of selected hidden rows: every `stride`-th row starting at `first`
/// (the last position of each left-padded sequence is `first = t − 1, stride = t`).
pub struct LogitsOp {
    products: MatmulSet,
    rows: usize,
    pub logits: GpuBuffer,
}

impl LogitsOp {
    pub async fn new(gpu: &Gpu, model: &GpuModel, rows: usize) -> ModelResult<Self> {
        let c = &model.config;
        let mut products = MatmulSet::default();
        for (i, &(row0, _)) in model.head().shards.iter().enumerate() {
            let end = model.head().shards.get(i + 1).map_or(c.vocab_size, |n| n.0);
            products.prepare(gpu, Self::spec(model), MatmulShape::new(rows, end - row0, c.hidden_size)).await?;
        }
        let logits =
            gpu.storage("logits", &format!("logits {rows}×{}", c.vocab_size), (rows * c.vocab_size * 4) as u64)?;
        Ok(LogitsOp { products, rows, logits })
    }

    fn spec(model: &GpuModel) -> MatmulSpec {
        MatmulSpec { trans_a: false, trans_b: true, has_bias: false, accumulate: false, b_dtype: model.head().dtype }
    }

    /// Logits of hidden rows `first, first + stride, …` (one per output row); each row shard of
    /// the head fills its own columns.
    pub fn record(
        &self,
        b: &mut Batch,
        model: &GpuModel,
        hidden: &GpuBuffer,
        first: usize,
        stride: usize,
    ) -> ModelResult<()> {
        let (h, vocab) = (model.config.hidden_size, model.config.vocab_size);
        let a = Operand { buf: hidden, off: first * h, ld: stride * h, batch_stride: 0 };
        let shards = &model.head().shards;
        for (i, (row0, buf)) in shards.iter().enumerate() {
            let end = shards.get(i + 1).map_or(vocab, |n| n.0);
            let c = Operand { buf: &self.logits, off: *row0, ld: vocab, batch_stride: 0 };
            self.products.get(Self::spec(model), MatmulShape::new(self.rows, end - row0, h))?.record(
                b,
                a,
                Operand::dense(buf, h),
                None,
                c,
                1.0,
            )?;
        }
        Ok(())
    }
}

/// Left-pads token sequences to a common length: (ids `[batch·t]`, positions `[batch·t]`,
/// key_start `[batch]`, t). Padding uses token 0 at position 0; attention never sees it.
pub fn left_pad(seqs: &[Vec<u32>]) -> (Vec<u32>, Vec<u32>, Vec<u32>, usize) {
    let t = seqs.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(seqs.len() * t);
    let mut positions = Vec::with_capacity(seqs.len() * t);
    let mut key_start = Vec::with_capacity(seqs.len());
    for s in seqs {
        let pad = t - s.len();
        key_start.push(pad as u32);
        ids.extend(std::iter::repeat_n(0, pad).chain(s.iter().copied()));
        positions.extend(std::iter::repeat_n(0, pad).chain(0..s.len() as u32));
    }
    (ids, positions, key_start, t)
}

/// Logits `[t, vocab]` of every position of one sequence (no chat template).
pub async fn sequence_logits(gpu: &Gpu, model: &GpuModel, ids: &[u32]) -> ModelResult<Vec<f32>> {
    let t = ids.len();
    check_ids(model, ids)?;
    check_length(model, t)?;
    let plan = ForwardPlan::new(gpu, model, 1, t).await?;
    let logits = LogitsOp::new(gpu, model, t).await?;
    let (ids, positions, key_start, _) = left_pad(&[ids.to_vec()]);
    let inputs = ForwardInputs {
        ids: &gpu.upload(OP, "ids", &ids)?,
        positions: &gpu.upload(OP, "positions", &positions)?,
        key_start: &gpu.upload(OP, "key start", &key_start)?,
    };
    let mut b = gpu.batch(OP);
    plan.record(&mut b, model, &inputs, &AttentionMode::SelfOnly)?;
    logits.record(&mut b, model, &plan.hidden, 0, 1)?;
    b.submit().await?;
    Ok(gpu.read::<f32>(OP, &logits.logits).await?)
}

/// Fails on token ids outside the vocabulary (the GPU would read zeros for them silently).
pub fn check_ids(model: &GpuModel, ids: &[u32]) -> ModelResult<()> {
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= model.config.vocab_size) {
        return Err(ModelError::Invalid(format!(
            "token id {bad} is outside the vocabulary of {}",
            model.config.vocab_size
        )));
    }
    Ok(())
}

/// Fails when sequences of `t` tokens do not fit the positions the model was prepared for.
pub fn check_length(model: &GpuModel, t: usize) -> ModelResult<()> {
    if t > model.rope.max_pos {
        return Err(ModelError::Invalid(format!("{t} tokens exceed the {} positions prepared", model.rope.max_pos)));
    }
    Ok(())
}

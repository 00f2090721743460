//! The model on the GPU: weights uploaded once; a forward over a left-padded batch (prefill,
//! scoring) and KV-cache decode steps; logits only for the rows that need them.

use std::collections::HashMap;

use super::config::ModelConfig;
use super::decoder::{Decoder, Mixer, Target, layer_tensor};
use super::mixer_inputs;
use super::tensor::HostTensor;
use crate::dtype::{Dtype, WeightFormat};
use crate::gpu::{Batch, Gpu, GpuBuffer, GpuError};
use crate::ops::attention::{Attention, AttentionIo, AttentionShape};
use crate::ops::attention_input::{AttentionInput, KeyValueOut, PackedQkv};
use crate::ops::decode::CacheShape;
use crate::ops::elementwise::{Embedding, SwiGlu};
use crate::ops::matmul::{MatmulSet, MatmulShape, MatmulSpec, Operand};
use crate::ops::rmsnorm::RmsNorm;
use crate::ops::rope::RopeTables;
use crate::train::lora::LoraLayout;

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

/// A weight matrix on the GPU in its storage type (cloning shares the buffers).
#[derive(Clone)]
pub struct Weight {
    /// The whole matrix, or its first row shard when it is split.
    pub buf: GpuBuffer,
    /// Element offset of the matrix in `buf`: a member of [`StackedProjections`] is a view into
    /// the stack's buffer; 0 otherwise.
    pub off: usize,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// (first row, buffer) of each row shard: matrices larger than one storage binding (a
    /// 152k-row vocabulary on a 128 MiB-binding adapter) are split; only the embedding and the
    /// head, whose kernels take shards, may be.
    pub shards: Vec<(usize, GpuBuffer)>,
}

impl Weight {
    /// The matrix as a product's operand (row-major, `shape[1]` columns; not for sharded ones).
    pub fn operand(&self) -> Operand<'_> {
        Operand { buf: &self.buf, off: self.off, ld: self.shape[1], batch_stride: 0 }
    }

    /// A whole f32 matrix of its own.
    pub fn f32_matrix(buf: GpuBuffer, shape: Vec<usize>) -> Weight {
        Weight { shards: vec![(0, buf.clone())], buf, off: 0, dtype: Dtype::F32, shape }
    }

    /// A view of rows `row0 … row0 + rows` of an unsharded matrix.
    pub fn rows(&self, row0: usize, rows: usize) -> Weight {
        let cols = self.shape[1];
        Weight {
            buf: self.buf.clone(),
            off: self.off + row0 * cols,
            dtype: self.dtype,
            shape: vec![rows, cols],
            shards: vec![(0, self.buf.clone())],
        }
    }

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
            return Ok(Weight { shards: vec![(0, buf.clone())], buf, off: 0, dtype, shape: t.shape });
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
        Ok(Weight { buf: shards[0].1.clone(), off: 0, dtype, shape: t.shape, shards })
    }
}

/// One projection of one layer: its frozen weight and bias.
#[derive(Clone)]
pub struct LayerProjection {
    pub target: Target,
    pub weight: Weight,
    pub bias: Option<GpuBuffer>,
}

/// Projections that read the same input (a mixer's [`Mixer::inputs`]: q | k | v, gate | up)
/// stored as one matrix, their rows stacked in that order, so that inference runs them as one
/// product writing their outputs side by side. Each member's [`LayerProjection::weight`] is a
/// view into `weight`; training and LoRA see the members as usual.
#[derive(Clone)]
pub struct StackedProjections {
    pub targets: Vec<Target>,
    /// `[Σ member outputs, input]`.
    pub weight: Weight,
    /// The members' biases one after another, when they have them.
    pub bias: Option<GpuBuffer>,
}

/// One layer's weights, laid out as the model's [`Decoder`] describes them.
#[derive(Clone)]
pub struct LayerWeights {
    /// RMS norm weights, in the description's `norms` order.
    pub norms: Vec<GpuBuffer>,
    /// In the description's `projections` order.
    pub projections: Vec<LayerProjection>,
    /// Stacks of mixer inputs whose members' weights could share a buffer (the same storage
    /// type, within one binding); a mixer without one runs its inputs as separate products.
    pub stacks: Vec<StackedProjections>,
}

impl LayerWeights {
    /// The stack of exactly `targets`, if its members are still views into it (an adapter merged
    /// into some of them alone gives them buffers of their own).
    pub fn stack(&self, targets: &[Target]) -> Option<&StackedProjections> {
        let stack = self.stacks.iter().find(|s| s.targets == targets)?;
        let mut row0 = 0;
        for &target in targets {
            let w = self.weight(target);
            if w.buf.id() != stack.weight.buf.id() || w.off != stack.weight.off + row0 * stack.weight.shape[1] {
                return None;
            }
            row0 += w.shape[0];
        }
        Some(stack)
    }

    /// The projection `target`: one the model's description lists (each block's mixer only
    /// names those, and LoRA configs are checked against them).
    pub fn projection(&self, target: Target) -> &LayerProjection {
        self.projections.iter().find(|p| p.target == target).expect("a projection of the model's description")
    }
    pub fn weight(&self, target: Target) -> &Weight {
        &self.projection(target).weight
    }
    pub fn weight_mut(&mut self, target: Target) -> &mut Weight {
        &mut self
            .projections
            .iter_mut()
            .find(|p| p.target == target)
            .expect("a projection of the model's description")
            .weight
    }
}

/// A LoRA adapter applied unmerged: every forward adds `s·(x·Aᵀ)·Bᵀ` to each targeted
/// projection's output (two thin products), so the frozen weights stay in their storage format
/// (`train::adapter_view`).
#[derive(Clone)]
pub struct AttachedAdapter {
    pub layout: LoraLayout,
    /// The flat factors, laid out by `layout`.
    pub params: GpuBuffer,
}

/// The model's weights on the GPU (cloning shares the buffers: a view can replace some
/// projections, an adapter merged in, or attach an adapter, and keep the rest).
#[derive(Clone)]
pub struct GpuModel {
    pub config: ModelConfig,
    pub embed: Weight,
    pub final_norm: GpuBuffer,
    pub lm_head: Option<Weight>,
    pub layers: Vec<LayerWeights>,
    pub rope: RopeTables,
    /// An adapter every inference forward applies unmerged (`None` for a plain or merged model;
    /// the training plans take their adapter explicitly and ignore this).
    pub adapter: Option<AttachedAdapter>,
}

impl GpuModel {
    /// Bytes the weights take on the GPU (every matrix in its storage type, norms and biases).
    pub fn weight_bytes(&self) -> u64 {
        // Stacked members share their stack's buffer: each buffer counts once.
        let mut buffers: HashMap<u64, u64> = HashMap::new();
        let mut add = |b: &GpuBuffer| {
            buffers.insert(b.id(), b.len_bytes());
        };
        let matrix = |w: &Weight, add: &mut dyn FnMut(&GpuBuffer)| w.shards.iter().for_each(|(_, b)| add(b));
        matrix(&self.embed, &mut add);
        if let Some(head) = &self.lm_head {
            matrix(head, &mut add);
        }
        add(&self.final_norm);
        for l in &self.layers {
            for p in &l.projections {
                matrix(&p.weight, &mut add);
                p.bias.iter().for_each(&mut add);
            }
            for s in &l.stacks {
                s.bias.iter().for_each(&mut add);
            }
            l.norms.iter().for_each(&mut add);
        }
        buffers.values().sum()
    }

    /// Uploads HF-named tensors, checking each against the config. `max_positions` sizes the
    /// RoPE tables (prompt + generation length).
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
        let decoder = config.decoder();
        let mut layers = Vec::with_capacity(config.num_layers);
        for l in 0..config.num_layers {
            let mut norms = Vec::with_capacity(decoder.norms.len());
            for norm in decoder.norms {
                let name = layer_tensor(l, norm.module, "weight");
                norms.push(vector(&name, take(&name)?)?);
            }
            let mut host = Vec::with_capacity(decoder.projections.len());
            for p in decoder.projections {
                let name = layer_tensor(l, p.module, "weight");
                let weight = take(&name)?;
                let bias = if p.has_bias(&config) {
                    let name = layer_tensor(l, p.module, "bias");
                    Some(take(&name)?)
                } else {
                    None
                };
                host.push(HostProjection { target: p.target, name, weight, bias });
            }
            layers.push(upload_layer(gpu, decoder, l, norms, host)?);
        }
        let mut unexpected: Vec<&String> = by_name.keys().filter(|n| decoder.names_layer_module(n)).collect();
        unexpected.sort();
        if let Some(name) = unexpected.first() {
            return Err(ModelError::Invalid(format!(
                "weights: tensor {name} is not part of this {:?} model as configured (attention_bias = {}); \
                 convrec would answer without it",
                config.architecture, config.attention_bias
            )));
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
        Ok(GpuModel { config, embed, final_norm, lm_head, layers, rope, adapter: None })
    }

    /// The output projection (the embedding when tied).
    pub fn head(&self) -> &Weight {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}

/// One projection of a layer as read from the file, before upload.
struct HostProjection {
    target: Target,
    /// Its Hugging Face name (`model.layers.3.self_attn.q_proj.weight`).
    name: String,
    weight: HostTensor,
    bias: Option<HostTensor>,
}

/// Whether `members` can share one buffer: the same storage type and width, whole storage units
/// each (16-bit pairs, quantised blocks), all or none with a bias, and together within one
/// binding of `limit` bytes (a browser's 128 MiB can refuse a large model's gate | up).
fn stackable(members: &[&HostProjection], limit: u64) -> bool {
    let (dtype, cols) = (members[0].weight.dtype(), members[0].weight.shape[1]);
    let rows: usize = members.iter().map(|m| m.weight.shape[0]).sum();
    members.iter().all(|m| {
        m.weight.dtype() == dtype
            && m.weight.shape[1] == cols
            && m.weight.len().is_multiple_of(dtype.unit().0)
            && m.bias.is_some() == members[0].bias.is_some()
    }) && dtype.storage_bytes(rows * cols) <= limit
}

/// Uploads one layer's projections, each mixer's inputs stacked into one buffer where they can
/// share it ([`stackable`]; the others on their own).
fn upload_layer(
    gpu: &Gpu,
    decoder: &Decoder,
    l: usize,
    norms: Vec<GpuBuffer>,
    host: Vec<HostProjection>,
) -> ModelResult<LayerWeights> {
    let limit = gpu.limits().max_storage_buffer_binding_size.min(gpu.limits().max_buffer_size);
    let mut views: Vec<(Target, Weight)> = Vec::new();
    let mut stacks = Vec::new();
    for block in decoder.blocks {
        let targets = block.mixer.inputs();
        let members: Vec<&HostProjection> = targets
            .iter()
            .map(|&t| host.iter().find(|h| h.target == t).expect("a projection of the description"))
            .collect();
        if !stackable(&members, limit) {
            continue;
        }
        let (dtype, cols) = (members[0].weight.dtype(), members[0].weight.shape[1]);
        let rows: usize = members.iter().map(|m| m.weight.shape[0]).sum();
        if dtype.is_quantized() && !cols.is_multiple_of(dtype.block_elems()) {
            return Err(ModelError::Invalid(format!(
                "{}: rows of {cols} elements are not whole {dtype} blocks of {}",
                members[0].name,
                dtype.block_elems()
            )));
        }
        let modules: Vec<&str> = members.iter().map(|m| m.name.rsplit('.').nth(1).unwrap_or(&m.name)).collect();
        let label = format!("layer {l} {} stacked", modules.join("|"));
        let words: Vec<u32> = members.iter().flat_map(|m| m.weight.gpu_words()).collect();
        let buf = gpu.upload("load model", &label, &words)?;
        let weight = Weight { shards: vec![(0, buf.clone())], buf, off: 0, dtype, shape: vec![rows, cols] };
        let bias = if members[0].bias.is_some() {
            let all: Vec<f32> = members.iter().filter_map(|m| m.bias.as_ref()).flat_map(|b| b.to_f32()).collect();
            Some(gpu.upload("load model", &format!("{label} bias"), &all)?)
        } else {
            None
        };
        let mut row0 = 0;
        for m in &members {
            views.push((m.target, weight.rows(row0, m.weight.shape[0])));
            row0 += m.weight.shape[0];
        }
        stacks.push(StackedProjections { targets, weight, bias });
    }
    let mut projections = Vec::with_capacity(host.len());
    for HostProjection { target, name, weight, bias } in host {
        let weight = match views.iter().position(|v| v.0 == target) {
            Some(i) => views.swap_remove(i).1,
            None => Weight::upload(gpu, &name, weight, false, None)?,
        };
        let bias = match bias {
            Some(b) => Some(gpu.upload("load model", &name.replace(".weight", ".bias"), &b.to_f32())?),
            None => None,
        };
        projections.push(LayerProjection { target, weight, bias });
    }
    Ok(LayerWeights { norms, projections, stacks })
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
    attention_input: AttentionInput,
    attention: Attention,
    swiglu: SwiGlu,
    products: MatmulSet,
    x: GpuBuffer,
    xn: GpuBuffer,
    /// The current mixer's inputs side by side `[batch·t, Σ widths]` (q | k | v, gate | up).
    packed: GpuBuffer,
    q: GpuBuffer,
    /// Keys and values token-major, when attending over the batch's own tokens.
    k: GpuBuffer,
    v: GpuBuffer,
    attn: GpuBuffer,
    h: GpuBuffer,
    rstd: GpuBuffer,
    stats: GpuBuffer,
    /// `x·Aᵀ` of an attached adapter's projection `[batch·t, r]` (reused by each).
    lora_t: Option<GpuBuffer>,
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
        let mut products = MatmulSet::default();
        mixer_inputs::prepare(gpu, &mut products, model, rows, false).await?;
        for layer in &model.layers {
            for block in c.decoder().blocks {
                let p = layer.projection(block.mixer.output());
                let (inp, out) = (p.weight.shape[1], p.weight.shape[0]);
                products
                    .prepare(gpu, Self::output_spec(&p.weight, p.bias.is_some()), MatmulShape::new(rows, out, inp))
                    .await?;
            }
        }
        let packed_width = mixer_inputs::max_width(model);
        if let Some(adapter) = &model.adapter {
            adapter.layout.prepare_delta(gpu, &mut products, rows).await?;
        }
        let buf = |what: &str, elems: usize| gpu.storage(OP, what, elems as u64 * 4);
        Ok(ForwardPlan {
            batch,
            t,
            rows,
            embedding: Embedding::new(gpu, c.vocab_size, h, model.embed.dtype).await?,
            norm: RmsNorm::new(gpu, rows, h, c.rms_norm_eps, false).await?,
            attention_input: AttentionInput::new(gpu).await?,
            attention: Attention::new(gpu, c.head_dim, false, false).await?,
            swiglu: SwiGlu::new(gpu).await?,
            products,
            x: buf("residual stream", rows * h)?,
            xn: buf("normed hidden", rows * h)?,
            packed: buf("mixer inputs", rows * packed_width)?,
            q: buf("queries", rows * qd)?,
            k: buf("keys", rows * kvd)?,
            v: buf("values", rows * kvd)?,
            attn: buf("attention output", rows * qd)?,
            h: buf("mlp hidden", rows * f)?,
            rstd: buf("rms statistics", rows)?,
            stats: buf("attention statistics", 2 * batch * c.num_heads * t)?,
            lora_t: match &model.adapter {
                Some(a) => Some(buf("LoRA A·x", rows * a.layout.config.r)?),
                None => None,
            },
            hidden: buf("final hidden", rows * h)?,
        })
    }

    /// `x += y·Wᵀ (+ b)`: a mixer's output projection adds into the residual stream.
    fn output_spec(w: &Weight, has_bias: bool) -> MatmulSpec {
        MatmulSpec { trans_a: false, trans_b: true, has_bias, accumulate: true, b_dtype: w.dtype }
    }

    /// `packed = x·[W₁; W₂; …]ᵀ (+ b)` for `mixer`'s inputs in layer `l`
    /// ([`mixer_inputs`]), then an attached adapter's term of each on its columns.
    fn project_inputs(
        &self,
        b: &mut Batch,
        model: &GpuModel,
        l: usize,
        mixer: Mixer,
        x: &GpuBuffer,
    ) -> ModelResult<()> {
        mixer_inputs::record_forward(b, &self.products, model, l, mixer, self.rows, x, &self.packed)?;
        if let (Some(adapter), Some(t)) = (&model.adapter, &self.lora_t) {
            let (columns, width) = mixer_inputs::columns(model, mixer);
            for (target, start, _) in columns {
                let y = Operand { buf: &self.packed, off: start, ld: width, batch_stride: 0 };
                adapter.layout.record_delta(b, &self.products, &adapter.params, l, target, self.rows, x, t, y)?;
            }
        }
        Ok(())
    }

    /// `y += x·Wᵀ (+ b)` (+ an attached adapter's term) for `mixer`'s output projection.
    fn project_output(
        &self,
        b: &mut Batch,
        model: &GpuModel,
        l: usize,
        mixer: Mixer,
        x: &GpuBuffer,
    ) -> ModelResult<()> {
        let target = mixer.output();
        let p = model.layers[l].projection(target);
        let (inp, out) = (p.weight.shape[1], p.weight.shape[0]);
        let spec = Self::output_spec(&p.weight, p.bias.is_some());
        self.products.get(spec, MatmulShape::new(self.rows, out, inp))?.record(
            b,
            Operand::dense(x, inp),
            p.weight.operand(),
            p.bias.as_ref(),
            Operand::dense(&self.x, out),
            1.0,
        )?;
        if let (Some(adapter), Some(t)) = (&model.adapter, &self.lora_t) {
            let y = Operand::dense(&self.x, out);
            adapter.layout.record_delta(b, &self.products, &adapter.params, l, target, self.rows, x, t, y)?;
        }
        Ok(())
    }

    /// Records the whole forward, walking the model's [`Decoder`] blocks; the final normed
    /// hidden states land in `self.hidden`.
    pub fn record(
        &self,
        b: &mut Batch,
        model: &GpuModel,
        inputs: &ForwardInputs,
        mode: &AttentionMode,
    ) -> ModelResult<()> {
        let c = &model.config;
        let decoder: &Decoder = c.decoder();
        self.embedding.record(b, inputs.ids, self.rows, &model.embed.row_shards(), &self.x)?;
        let attention_shape = match mode {
            AttentionMode::SelfOnly => {
                AttentionShape::token_major(self.batch, self.t, c.num_heads, c.num_kv_heads, c.head_dim)
            }
            AttentionMode::Cache { cache, pos0 } => {
                if cache.shape.batch != self.batch {
                    return Err(ModelError::Invalid(format!(
                        "cache of {} sequences for a batch of {}",
                        cache.shape.batch, self.batch
                    )));
                }
                AttentionShape::cached(
                    self.batch,
                    self.t,
                    *pos0,
                    cache.shape.capacity,
                    c.num_heads,
                    c.num_kv_heads,
                    c.head_dim,
                )
            }
        };
        for l in 0..model.layers.len() {
            for block in decoder.blocks {
                // x += mixer(norm(x)): the mixer's output projection accumulates into x.
                self.norm.forward(b, &self.x, &model.layers[l].norms[block.norm], &self.xn, &self.rstd)?;
                self.project_inputs(b, model, l, block.mixer, &self.xn)?;
                match block.mixer {
                    Mixer::Attention { .. } => self.attend(b, model, inputs, mode, l, &attention_shape)?,
                    Mixer::GatedMlp { .. } => {
                        let f = c.intermediate_size;
                        self.swiglu.forward(b, self.rows, f, &self.packed, &self.h)?;
                    }
                }
                let mixed = match block.mixer {
                    Mixer::Attention { .. } => &self.attn,
                    Mixer::GatedMlp { .. } => &self.h,
                };
                self.project_output(b, model, l, block.mixer, mixed)?;
            }
        }
        self.norm.forward(b, &self.x, &model.final_norm, &self.hidden, &self.rstd)?;
        Ok(())
    }

    /// From the packed q | k | v: RoPE on queries and keys, keys and values token-major or into
    /// the cache (one dispatch), then attention over the batch's own keys or the cache into
    /// `self.attn`.
    fn attend(
        &self,
        b: &mut Batch,
        model: &GpuModel,
        inputs: &ForwardInputs,
        mode: &AttentionMode,
        l: usize,
        shape: &AttentionShape,
    ) -> ModelResult<()> {
        let c = &model.config;
        let packed = PackedQkv {
            batch: self.batch,
            t: self.t,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            stride: (c.num_heads + 2 * c.num_kv_heads) * c.head_dim,
        };
        let (kv_out, k_src, v_src) = match mode {
            AttentionMode::SelfOnly => (KeyValueOut::TokenMajor { k: &self.k, v: &self.v }, &self.k, &self.v),
            AttentionMode::Cache { cache, pos0 } => (
                KeyValueOut::Cache { shape: cache.shape, pos0: *pos0, k: &cache.k[l], v: &cache.v[l] },
                &cache.k[l],
                &cache.v[l],
            ),
        };
        self.attention_input.record(b, &model.rope, inputs.positions, packed, &self.packed, &self.q, &kv_out)?;
        let io = AttentionIo {
            q: &self.q,
            k: k_src,
            v: v_src,
            key_start: inputs.key_start,
            out: &self.attn,
            stats: &self.stats,
        };
        self.attention.forward(b, shape, &io)?;
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

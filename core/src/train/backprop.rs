//! The training forward (saving what the backward needs) and the backward pass through the whole
//! model into the LoRA factors. The base model is frozen: its weights get no gradients, only
//! gradients with respect to activations flow through them.
//!
//! Memory: every layer's activations are kept for the backward, or — with `recompute` — only each
//! layer's input, and the backward re-runs a layer's forward into one shared set of activation
//! buffers just before differentiating it (about one extra forward of compute for activation
//! memory that no longer grows with depth: long sequences and larger batches fit).
//!
//! Both passes walk the model's [`Decoder`](crate::model::Decoder) blocks — `x += mixer(norm(x))`
//! each — forward in order and backward in reverse, one routine per mixer kind: attention
//! (q | k | v = W·xn (+ LoRA), packed; rope; attention; x += Wo·attn (+ LoRA)) and the gated MLP
//! (gate | up = W·xn (+ LoRA), packed; h = silu(gate) ⊙ up; x += Wd·h (+ LoRA)). A mixer's inputs
//! are one product over their stacked weights where the model has the stack
//! (`model::gpu::StackedProjections`), forward and backward (`dxn = d(q | k | v)·[Wq; Wk; Wv]`),
//! and one product per input into its columns otherwise. The backward carries the residual
//! gradient `dx` through each block, adding the mixer's path through the norm in place.

use super::lora::{LoraLayout, Target};
use crate::dtype::Dtype;
use crate::gpu::{Batch, Gpu, GpuBuffer};
use crate::model::decoder::Mixer;
use crate::model::gpu::{GpuModel, LayerWeights, ModelError, ModelResult};
use crate::model::mixer_inputs;
use crate::ops::attention::{Attention, AttentionIo, AttentionShape};
use crate::ops::attention_input::{AttentionInput, KeyValueOut, PackedQkv};
use crate::ops::elementwise::{Embedding, RowScatter, SwiGlu};
use crate::ops::matmul::{MatmulSet, MatmulShape, MatmulSpec, Operand};
use crate::ops::output_head::{HeadShape, OutputHead};
use crate::ops::rmsnorm::RmsNorm;

/// Token ids, positions, padding and loss targets of one micro-batch (all on the GPU).
pub struct TrainInputs<'a> {
    pub ids: &'a GpuBuffer,
    pub positions: &'a GpuBuffer,
    pub key_start: &'a GpuBuffer,
    /// u32 per head row: the batch row it scores (past the batch for padding rows).
    pub head_index: &'a GpuBuffer,
    /// u32 per head row: the next token whose log-prob the loss uses (any id where the weight is 0).
    pub targets: &'a GpuBuffer,
}

/// The adapter's parameters and gradients (flat, laid out by `layout`).
pub struct LoraState<'a> {
    pub layout: &'a LoraLayout,
    pub params: &'a GpuBuffer,
    pub grads: &'a GpuBuffer,
}

/// What one block saves for its backward.
struct BlockActs {
    /// The residual stream entering the block; `None` for a layer's first block, whose input is
    /// the layer's input (`TrainPlan::layer_inputs`).
    input: Option<GpuBuffer>,
    rstd: GpuBuffer,
    /// The normed input the mixer reads.
    xn: GpuBuffer,
    mixer: MixerActs,
}

enum MixerActs {
    /// q, k (rotated) and v token-major, as attention reads them.
    Attention { q: GpuBuffer, k: GpuBuffer, v: GpuBuffer, attn: GpuBuffer, stats: GpuBuffer },
    /// gate | up packed `[rows, 2·intermediate]`.
    GatedMlp { gate_up: GpuBuffer, h: GpuBuffer },
}

struct LayerActs {
    /// In the description's block order.
    blocks: Vec<BlockActs>,
    /// `A·x` per targeted projection `[rows, r]`, in `layout.config.targets` order.
    lora_t: Vec<GpuBuffer>,
}

pub struct TrainPlan {
    pub batch: usize,
    pub t: usize,
    rows: usize,
    /// Rows the output head runs on: only those the loss scores (completion tokens), gathered
    /// from `hidden` — the head is a fifth of a small model's compute per row, and prompts are
    /// most of an RL batch's rows.
    pub head_rows: usize,
    embedding: Embedding,
    head_gather: Embedding,
    head_scatter: RowScatter,
    norm: RmsNorm,
    norm_backward: RmsNorm,
    attention_input: AttentionInput,
    attention: Attention,
    swiglu: SwiGlu,
    products: MatmulSet,
    pub head: OutputHead,
    /// Activations per layer, or one shared set when recomputing.
    acts: Vec<LayerActs>,
    /// Each layer's input (the residual stream entering it), always kept.
    layer_inputs: Vec<GpuBuffer>,
    /// Where a recomputed layer writes its output (its real output is already saved as the next
    /// layer's input).
    recompute_out: Option<GpuBuffer>,
    x_final: GpuBuffer,
    rstd_final: GpuBuffer,
    /// Final normed hidden states `[rows, hidden]`.
    pub hidden: GpuBuffer,
    /// The head's rows of `hidden`, `[head_rows, hidden]`, and their gradient.
    head_hidden: GpuBuffer,
    head_dhidden: GpuBuffer,
    // gradients of activations (reused across layers)
    dx: GpuBuffer,
    dxn: GpuBuffer,
    dhidden: GpuBuffer,
    /// The attention mixer's packed q | k | v before RoPE (forward scratch).
    qkv: GpuBuffer,
    /// A mixer's packed input gradient, d(q | k | v) or d(gate | up).
    dpacked: GpuBuffer,
    dq: GpuBuffer,
    dk: GpuBuffer,
    dv: GpuBuffer,
    dattn: GpuBuffer,
    dh: GpuBuffer,
    dt: GpuBuffer,
}

const OP: &str = "train step";

/// A micro-batch's shape as a plan sees it: sequences, tokens per sequence, and the rows the
/// output head runs on ([`head_rows`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TrainShape {
    pub batch: usize,
    pub t: usize,
    pub head_rows: usize,
}

/// The head's row count for `scored` rows: rounded up to 16 so that batches of similar length
/// share a plan.
pub fn head_rows(scored: usize) -> usize {
    scored.max(1).next_multiple_of(16)
}

/// `scored` batch rows padded to [`head_rows`] with an index past the batch (`rows`): padding is
/// gathered as zeros, scores nothing and is never scattered back.
pub fn head_index(scored: &[u32], rows: usize) -> Vec<u32> {
    let mut index = scored.to_vec();
    index.resize(head_rows(scored.len()), rows as u32);
    index
}

fn nt(dtype: Dtype, accumulate: bool, has_bias: bool) -> MatmulSpec {
    MatmulSpec { trans_a: false, trans_b: true, has_bias, accumulate, b_dtype: dtype }
}
fn nn(dtype: Dtype, accumulate: bool) -> MatmulSpec {
    MatmulSpec { trans_a: false, trans_b: false, has_bias: false, accumulate, b_dtype: dtype }
}
fn tn(accumulate: bool) -> MatmulSpec {
    MatmulSpec { trans_a: true, trans_b: false, has_bias: false, accumulate, b_dtype: Dtype::F32 }
}

impl TrainPlan {
    pub async fn new(
        gpu: &Gpu,
        model: &GpuModel,
        layout: &LoraLayout,
        shape: TrainShape,
        vocab_chunk: usize,
        recompute: bool,
    ) -> ModelResult<Self> {
        let TrainShape { batch, t, head_rows } = shape;
        let c = &model.config;
        let rows = batch * t;
        if rows == 0 || head_rows == 0 {
            return Err(ModelError::Invalid("a training step needs at least one token".into()));
        }
        let r = layout.config.r;
        let mut products = MatmulSet::default();
        mixer_inputs::prepare(gpu, &mut products, model, rows, true).await?;
        for layer in &model.layers {
            for block in c.decoder().blocks {
                // The output projection: forward x += y·Wᵀ (+ b); backward to its input dy = dx·W.
                let p = layer.projection(block.mixer.output());
                let (inp, out, dtype) = (p.weight.shape[1], p.weight.shape[0], p.weight.dtype);
                products.prepare(gpu, nt(dtype, true, p.bias.is_some()), MatmulShape::new(rows, out, inp)).await?;
                products.prepare(gpu, nn(dtype, false), MatmulShape::new(rows, inp, out)).await?;
                for target in block.mixer.projections().into_iter().filter(|t| layout.config.targets.contains(t)) {
                    let (inp, out) = (layer.weight(target).shape[1], layer.weight(target).shape[0]);
                    products.prepare(gpu, tn(true), MatmulShape::new(out, r, rows)).await?; // dB += s·dyᵀ·t
                    products.prepare(gpu, nn(Dtype::F32, false), MatmulShape::new(rows, r, out)).await?; // dt = s·dy·B
                    products.prepare(gpu, tn(true), MatmulShape::new(r, inp, rows)).await?; // dA += dtᵀ·x
                    products.prepare(gpu, nn(Dtype::F32, true), MatmulShape::new(rows, inp, r)).await?; // dx += dt·A
                }
            }
        }
        layout.prepare_delta(gpu, &mut products, rows).await?; // y += s·(x·Aᵀ)·Bᵀ
        let (h, f, qd, kvd) =
            (c.hidden_size, c.intermediate_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let buf = |what: &str, elems: usize| gpu.storage(OP, what, elems as u64 * 4);
        let mut acts = Vec::new();
        for _ in 0..if recompute { 1 } else { c.num_layers } {
            let mut blocks = Vec::new();
            for (i, block) in c.decoder().blocks.iter().enumerate() {
                let mixer = match block.mixer {
                    Mixer::Attention { .. } => MixerActs::Attention {
                        q: buf("queries", rows * qd)?,
                        k: buf("keys", rows * kvd)?,
                        v: buf("values", rows * kvd)?,
                        attn: buf("attention output", rows * qd)?,
                        stats: buf("attention statistics", 2 * batch * c.num_heads * t)?,
                    },
                    Mixer::GatedMlp { .. } => MixerActs::GatedMlp {
                        gate_up: buf("gate | up", rows * 2 * f)?,
                        h: buf("mlp hidden", rows * f)?,
                    },
                };
                blocks.push(BlockActs {
                    input: if i == 0 { None } else { Some(buf("residual entering a block", rows * h)?) },
                    rstd: buf("rms statistics", rows)?,
                    xn: buf("normed block input", rows * h)?,
                    mixer,
                });
            }
            acts.push(LayerActs {
                blocks,
                lora_t: layout.config.targets.iter().map(|_| buf("LoRA A·x", rows * r)).collect::<Result<_, _>>()?,
            });
        }
        let head_shape = HeadShape { rows: head_rows, hidden: h, vocab: c.vocab_size, chunk: vocab_chunk };
        Ok(TrainPlan {
            batch,
            t,
            rows,
            head_rows,
            embedding: Embedding::new(gpu, c.vocab_size, h, model.embed.dtype).await?,
            head_gather: Embedding::new(gpu, rows, h, Dtype::F32).await?,
            head_scatter: RowScatter::new(gpu, rows, h).await?,
            norm: RmsNorm::new(gpu, rows, h, c.rms_norm_eps, false).await?,
            norm_backward: RmsNorm::new(gpu, rows, h, c.rms_norm_eps, true).await?,
            attention_input: AttentionInput::new(gpu).await?,
            attention: Attention::new(gpu, c.head_dim, true, false).await?,
            swiglu: SwiGlu::new(gpu).await?,
            products,
            head: OutputHead::new(gpu, head_shape, model.head().dtype, &model.head().shard_starts()).await?,
            acts,
            layer_inputs: (0..c.num_layers).map(|_| buf("layer input", rows * h)).collect::<Result<_, _>>()?,
            recompute_out: if recompute { Some(buf("recomputed layer output", rows * h)?) } else { None },
            x_final: buf("final residual", rows * h)?,
            rstd_final: buf("rms statistics", rows)?,
            hidden: buf("final hidden", rows * h)?,
            head_hidden: buf("scored hidden", head_rows * h)?,
            head_dhidden: buf("scored hidden gradient", head_rows * h)?,
            dx: buf("residual gradient", rows * h)?,
            dxn: buf("normed gradient", rows * h)?,
            dhidden: buf("final hidden gradient", rows * h)?,
            qkv: buf("q | k | v", rows * (qd + 2 * kvd))?,
            dpacked: buf("packed input gradient", rows * (qd + 2 * kvd).max(2 * f))?,
            dq: buf("query gradient", rows * qd)?,
            dk: buf("key gradient", rows * kvd)?,
            dv: buf("value gradient", rows * kvd)?,
            dattn: buf("attention gradient", rows * qd)?,
            dh: buf("mlp hidden gradient", rows * f)?,
            dt: buf("LoRA gradient", rows * r)?,
        })
    }

    fn attention_shape(&self, model: &GpuModel) -> AttentionShape {
        let c = &model.config;
        AttentionShape::token_major(self.batch, self.t, c.num_heads, c.num_kv_heads, c.head_dim)
    }

    /// The packed q | k | v rows of this plan's batch.
    fn packed_qkv(&self, model: &GpuModel) -> PackedQkv {
        let c = &model.config;
        let (batch, t, heads, kv_heads, head_dim) = (self.batch, self.t, c.num_heads, c.num_kv_heads, c.head_dim);
        PackedQkv { batch, t, heads, kv_heads, head_dim, stride: (heads + 2 * kv_heads) * head_dim }
    }

    /// `packed = xn·[W₁; W₂; …]ᵀ (+ b)` for `mixer`'s inputs ([`mixer_inputs`]), and each
    /// input's LoRA term on its columns (saving A·xn).
    #[allow(clippy::too_many_arguments)]
    fn inputs_forward(
        &self,
        b: &mut Batch,
        model: &GpuModel,
        lora: &LoraState,
        l: usize,
        mixer: Mixer,
        xn: &GpuBuffer,
        packed: &GpuBuffer,
    ) -> ModelResult<()> {
        mixer_inputs::record_forward(b, &self.products, model, l, mixer, self.rows, xn, packed)?;
        let (columns, width) = mixer_inputs::columns(model, mixer);
        for (target, start, _) in columns {
            if let Some(ti) = lora.layout.config.targets.iter().position(|&t| t == target) {
                let t_buf = &self.acts(l).lora_t[ti];
                let y = Operand { buf: packed, off: start, ld: width, batch_stride: 0 };
                lora.layout.record_delta(b, &self.products, lora.params, l, target, self.rows, xn, t_buf, y)?;
            }
        }
        Ok(())
    }

    /// `dxn = dpacked·[W₁; W₂; …]` from the packed gradient `self.dpacked` of `mixer`'s inputs,
    /// plus each input's LoRA path and its factor gradients.
    fn inputs_backward(
        &self,
        b: &mut Batch,
        model: &GpuModel,
        lora: &LoraState,
        l: usize,
        mixer: Mixer,
        xn: &GpuBuffer,
    ) -> ModelResult<()> {
        mixer_inputs::record_backward(b, &self.products, model, l, mixer, self.rows, &self.dpacked, &self.dxn)?;
        let (columns, width) = mixer_inputs::columns(model, mixer);
        for (target, start, end) in columns {
            let dy = Operand { buf: &self.dpacked, off: start, ld: width, batch_stride: 0 };
            self.lora_backward(b, lora, l, target, (model.config.hidden_size, end - start), xn, dy, &self.dxn)?;
        }
        Ok(())
    }

    /// y (+)= W·x (+ b) (+ s·B·A·x, saving A·x); a mixer's output projection (`accumulate`)
    /// adds into the residual stream.
    #[allow(clippy::too_many_arguments)]
    fn linear_forward(
        &self,
        b: &mut Batch,
        lora: &LoraState,
        layer: &LayerWeights,
        l: usize,
        target: Target,
        accumulate: bool,
        x: &GpuBuffer,
        y: &GpuBuffer,
    ) -> ModelResult<()> {
        let rows = self.rows;
        let p = layer.projection(target);
        let (w, bias) = (&p.weight, p.bias.as_ref());
        let (inp, out) = (w.shape[1], w.shape[0]);
        let base = self.products.get(nt(w.dtype, accumulate, bias.is_some()), MatmulShape::new(rows, out, inp))?;
        base.record(b, Operand::dense(x, inp), w.operand(), bias, Operand::dense(y, out), 1.0)?;
        if let Some(ti) = lora.layout.config.targets.iter().position(|&t| t == target) {
            let t_buf = &self.acts(l).lora_t[ti];
            lora.layout.record_delta(
                b,
                &self.products,
                lora.params,
                l,
                target,
                rows,
                x,
                t_buf,
                Operand::dense(y, out),
            )?;
        }
        Ok(())
    }

    /// dx (+)= dy·W (+ LoRA path), and the LoRA factor gradients of this projection.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        b: &mut Batch,
        lora: &LoraState,
        layer: &LayerWeights,
        l: usize,
        target: Target,
        x: &GpuBuffer,
        dy: &GpuBuffer,
        dx: &GpuBuffer,
        accumulate: bool,
    ) -> ModelResult<()> {
        let rows = self.rows;
        let w = layer.weight(target);
        let (inp, out) = (w.shape[1], w.shape[0]);
        self.products.get(nn(w.dtype, accumulate), MatmulShape::new(rows, inp, out))?.record(
            b,
            Operand::dense(dy, out),
            w.operand(),
            None,
            Operand::dense(dx, inp),
            1.0,
        )?;
        self.lora_backward(b, lora, l, target, (inp, out), x, Operand::dense(dy, out), dx)
    }

    /// The LoRA path of projection `target` (`(in, out)` features) of layer `l`, if the adapter
    /// targets it: dA and dB from the projection's output gradient `dy` (`[rows, out]` at its
    /// offset and leading dimension), and `dx += s·dy·B·A`.
    #[allow(clippy::too_many_arguments)]
    fn lora_backward(
        &self,
        b: &mut Batch,
        lora: &LoraState,
        l: usize,
        target: Target,
        (inp, out): (usize, usize),
        x: &GpuBuffer,
        dy: Operand,
        dx: &GpuBuffer,
    ) -> ModelResult<()> {
        let rows = self.rows;
        if let Some(ti) = lora.layout.config.targets.iter().position(|&t| t == target) {
            let (r, s) = (lora.layout.config.r, lora.layout.config.scale());
            let (fa, fb) =
                (lora.layout.factor(l, target, true).expect("A"), lora.layout.factor(l, target, false).expect("B"));
            let t_buf = &self.acts(l).lora_t[ti];
            let view = |buf, f: &super::lora::Factor, ld| Operand { buf, off: f.offset, ld, batch_stride: 0 };
            // dB += s·dyᵀ·t
            self.products.get(tn(true), MatmulShape::new(out, r, rows))?.record(
                b,
                dy,
                Operand::dense(t_buf, r),
                None,
                view(lora.grads, fb, r),
                s,
            )?;
            // dt = s·dy·B
            self.products.get(nn(Dtype::F32, false), MatmulShape::new(rows, r, out))?.record(
                b,
                dy,
                view(lora.params, fb, r),
                None,
                Operand::dense(&self.dt, r),
                s,
            )?;
            // dA += dtᵀ·x
            self.products.get(tn(true), MatmulShape::new(r, inp, rows))?.record(
                b,
                Operand::dense(&self.dt, r),
                Operand::dense(x, inp),
                None,
                view(lora.grads, fa, inp),
                1.0,
            )?;
            // dx += dt·A
            self.products.get(nn(Dtype::F32, true), MatmulShape::new(rows, inp, r))?.record(
                b,
                Operand::dense(&self.dt, r),
                view(lora.params, fa, inp),
                None,
                Operand::dense(dx, inp),
                1.0,
            )?;
        }
        Ok(())
    }

    /// The activations layer `l` saves (one shared set when recomputing).
    fn acts(&self, l: usize) -> &LayerActs {
        &self.acts[if self.recompute_out.is_some() { 0 } else { l }]
    }

    /// One layer's forward from `x_in`, saving its blocks' activations and writing the layer's
    /// output to `out`.
    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        b: &mut Batch,
        model: &GpuModel,
        lora: &LoraState,
        inputs: &TrainInputs,
        l: usize,
        x_in: &GpuBuffer,
        out: &GpuBuffer,
    ) -> ModelResult<()> {
        let c = &model.config;
        let acts = self.acts(l);
        let layer = &model.layers[l];
        let residual_bytes = (self.rows * c.hidden_size * 4) as u64;
        for (i, block) in c.decoder().blocks.iter().enumerate() {
            let a = &acts.blocks[i];
            let input = a.input.as_ref().unwrap_or(x_in);
            // The block's output is the next block's saved input, or the layer's output.
            let output = acts.blocks.get(i + 1).and_then(|n| n.input.as_ref()).unwrap_or(out);
            self.norm.forward(b, input, &layer.norms[block.norm], &a.xn, &a.rstd)?;
            // output = input + mixer(xn): the mixer's output projection accumulates onto the copy.
            b.copy(input, output, residual_bytes);
            match (block.mixer, &a.mixer) {
                (Mixer::Attention { o, .. }, MixerActs::Attention { q, k, v, attn, stats }) => {
                    self.inputs_forward(b, model, lora, l, block.mixer, &a.xn, &self.qkv)?;
                    let kv = KeyValueOut::TokenMajor { k, v };
                    let packed = self.packed_qkv(model);
                    self.attention_input.record(b, &model.rope, inputs.positions, packed, &self.qkv, q, &kv)?;
                    let io = AttentionIo { q, k, v, key_start: inputs.key_start, out: attn, stats };
                    self.attention.forward(b, &self.attention_shape(model), &io)?;
                    self.linear_forward(b, lora, layer, l, o, true, attn, output)?;
                }
                (Mixer::GatedMlp { down, .. }, MixerActs::GatedMlp { gate_up, h }) => {
                    self.inputs_forward(b, model, lora, l, block.mixer, &a.xn, gate_up)?;
                    self.swiglu.forward(b, self.rows, c.intermediate_size, gate_up, h)?;
                    self.linear_forward(b, lora, layer, l, down, true, h, output)?;
                }
                _ => unreachable!("block activations are allocated from the same description"),
            }
        }
        Ok(())
    }

    /// Forward with saved activations; fills the head's per-row (lse, logp, entropy) for the
    /// targets at `temperature`.
    pub fn forward(
        &self,
        b: &mut Batch,
        model: &GpuModel,
        lora: &LoraState,
        inputs: &TrainInputs,
        temperature: f32,
    ) -> ModelResult<()> {
        let c = &model.config;
        self.embedding.record(b, inputs.ids, self.rows, &model.embed.row_shards(), &self.layer_inputs[0])?;
        for l in 0..c.num_layers {
            let next = self.layer_inputs.get(l + 1).unwrap_or(&self.x_final);
            self.layer_forward(b, model, lora, inputs, l, &self.layer_inputs[l], next)?;
        }
        self.norm.forward(b, &self.x_final, &model.final_norm, &self.hidden, &self.rstd_final)?;
        let head = model.head();
        self.head_gather.record(b, inputs.head_index, self.head_rows, &[(0, &self.hidden)], &self.head_hidden)?;
        self.head.forward(b, &self.head_hidden, &head.row_shards(), inputs.targets, temperature)?;
        Ok(())
    }

    /// Backward from `dlogp` (f32 per head row: ∂loss/∂logp of its target) into `lora.grads`
    /// (accumulated: clear them at the start of an accumulation window).
    pub fn backward(
        &self,
        b: &mut Batch,
        model: &GpuModel,
        lora: &LoraState,
        inputs: &TrainInputs,
        dlogp: &GpuBuffer,
        temperature: f32,
    ) -> ModelResult<()> {
        let c = &model.config;
        let shape = self.attention_shape(model);
        let head = model.head();
        b.clear(&self.head_dhidden);
        self.head.backward(
            b,
            &self.head_hidden,
            &head.row_shards(),
            inputs.targets,
            dlogp,
            temperature,
            &self.head_dhidden,
        )?;
        b.clear(&self.dhidden);
        self.head_scatter.record(b, inputs.head_index, self.head_rows, &self.head_dhidden, &self.dhidden)?;
        b.clear(&self.dx);
        self.norm_backward.backward(
            b,
            &self.x_final,
            &model.final_norm,
            &self.rstd_final,
            &self.dhidden,
            &self.dx,
            None,
        )?;
        for l in (0..c.num_layers).rev() {
            if let Some(out) = &self.recompute_out {
                self.layer_forward(b, model, lora, inputs, l, &self.layer_inputs[l], out)?;
            }
            let acts = self.acts(l);
            let layer = &model.layers[l];
            for (i, block) in c.decoder().blocks.iter().enumerate().rev() {
                // `dx` is ∂loss/∂(block output): it flows on to the block's input unchanged
                // (the residual) and, through the mixer and the norm, adds the mixer's part.
                let a = &acts.blocks[i];
                let input = a.input.as_ref().unwrap_or(&self.layer_inputs[l]);
                match (block.mixer, &a.mixer) {
                    (Mixer::Attention { o, .. }, MixerActs::Attention { q, k, v, attn, stats }) => {
                        self.linear_backward(b, lora, layer, l, o, attn, &self.dx, &self.dattn, false)?;
                        let io = AttentionIo { q, k, v, key_start: inputs.key_start, out: attn, stats };
                        self.attention.backward(b, &shape, &io, &self.dattn, &self.dq, &self.dk, &self.dv)?;
                        let (dq, dk, dv) = (&self.dq, &self.dk, &self.dv);
                        let packed = self.packed_qkv(model);
                        self.attention_input.backward(
                            b,
                            &model.rope,
                            inputs.positions,
                            packed,
                            dq,
                            dk,
                            dv,
                            &self.dpacked,
                        )?;
                        self.inputs_backward(b, model, lora, l, block.mixer, &a.xn)?;
                    }
                    (Mixer::GatedMlp { down, .. }, MixerActs::GatedMlp { gate_up, h }) => {
                        self.linear_backward(b, lora, layer, l, down, h, &self.dx, &self.dh, false)?;
                        let f = c.intermediate_size;
                        self.swiglu.backward(b, self.rows, f, gate_up, &self.dh, &self.dpacked)?;
                        self.inputs_backward(b, model, lora, l, block.mixer, &a.xn)?;
                    }
                    _ => unreachable!("block activations are allocated from the same description"),
                }
                self.norm_backward.backward(b, input, &layer.norms[block.norm], &a.rstd, &self.dxn, &self.dx, None)?;
            }
        }
        Ok(())
    }
}

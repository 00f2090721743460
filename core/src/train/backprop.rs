//! The training forward (saving what the backward needs) and the backward pass through the whole
//! model into the LoRA factors. The base model is frozen: its weights get no gradients, only
//! gradients with respect to activations flow through them.
//!
//! Memory: every layer's activations are kept for the backward, or — with `recompute` — only each
//! layer's input, and the backward re-runs a layer's forward into one shared set of activation
//! buffers just before differentiating it (about one extra forward of compute for activation
//! memory that no longer grows with depth: long sequences and larger batches fit).
//!
//! Per layer, forward: xn1 = norm(x); q,k,v = W·xn1 (+ LoRA); rope; attention; x += Wo·attn (+ LoRA);
//! xn2 = norm(x); h = silu(Wg·xn2) ⊙ (Wu·xn2) (+ LoRA); x += Wd·h (+ LoRA). Backward mirrors it
//! with the residual gradient `dx` accumulated in place.

use super::lora::{LoraLayout, Target};
use crate::dtype::Dtype;
use crate::gpu::{Batch, Gpu, GpuBuffer};
use crate::model::gpu::{GpuModel, ModelError, ModelResult, Weight};
use crate::ops::attention::{Attention, AttentionIo, AttentionShape};
use crate::ops::elementwise::{Embedding, RowScatter, SwiGlu};
use crate::ops::matmul::{MatmulSet, MatmulShape, MatmulSpec, Operand};
use crate::ops::output_head::{HeadShape, OutputHead};
use crate::ops::rmsnorm::RmsNorm;
use crate::ops::rope::Rope;

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

struct LayerActs {
    rstd1: GpuBuffer,
    xn1: GpuBuffer,
    q: GpuBuffer,
    k: GpuBuffer,
    v: GpuBuffer,
    attn: GpuBuffer,
    stats: GpuBuffer,
    x_mid: GpuBuffer,
    rstd2: GpuBuffer,
    xn2: GpuBuffer,
    gate: GpuBuffer,
    up: GpuBuffer,
    h: GpuBuffer,
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
    rope: Rope,
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
    dq: GpuBuffer,
    dk: GpuBuffer,
    dv: GpuBuffer,
    dattn: GpuBuffer,
    dgate: GpuBuffer,
    dup: GpuBuffer,
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

/// The frozen weight, bias and LoRA target of each projection of a layer.
fn projections(model: &GpuModel, l: usize) -> [(Target, &Weight, Option<&GpuBuffer>); 7] {
    let w = &model.layers[l];
    [
        (Target::QProj, &w.q, w.q_bias.as_ref()),
        (Target::KProj, &w.k, w.k_bias.as_ref()),
        (Target::VProj, &w.v, w.v_bias.as_ref()),
        (Target::OProj, &w.o, None),
        (Target::GateProj, &w.gate, None),
        (Target::UpProj, &w.up, None),
        (Target::DownProj, &w.down, None),
    ]
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
        for l in 0..c.num_layers {
            for (target, w, bias) in projections(model, l) {
                let (inp, out) = (w.shape[1], w.shape[0]);
                let accumulate_out = matches!(target, Target::OProj | Target::DownProj);
                // forward: y (+)= x·Wᵀ (+ b); backward to the input: dx (+)= dy·W
                products
                    .prepare(gpu, nt(w.dtype, accumulate_out, bias.is_some()), MatmulShape::new(rows, out, inp))
                    .await?;
                for acc in [false, true] {
                    products.prepare(gpu, nn(w.dtype, acc), MatmulShape::new(rows, inp, out)).await?;
                }
                if layout.config.targets.contains(&target) {
                    products.prepare(gpu, nt(Dtype::F32, false, false), MatmulShape::new(rows, r, inp)).await?; // t = x·Aᵀ
                    products.prepare(gpu, nt(Dtype::F32, true, false), MatmulShape::new(rows, out, r)).await?; // y += s·t·Bᵀ
                    products.prepare(gpu, tn(true), MatmulShape::new(out, r, rows)).await?; // dB += s·dyᵀ·t
                    products.prepare(gpu, nn(Dtype::F32, false), MatmulShape::new(rows, r, out)).await?; // dt = s·dy·B
                    products.prepare(gpu, tn(true), MatmulShape::new(r, inp, rows)).await?; // dA += dtᵀ·x
                    products.prepare(gpu, nn(Dtype::F32, true), MatmulShape::new(rows, inp, r)).await?; // dx += dt·A
                }
            }
        }
        let (h, f, qd, kvd) =
            (c.hidden_size, c.intermediate_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let buf = |what: &str, elems: usize| gpu.storage(OP, what, elems as u64 * 4);
        let mut acts = Vec::new();
        for _ in 0..if recompute { 1 } else { c.num_layers } {
            acts.push(LayerActs {
                rstd1: buf("rms statistics", rows)?,
                xn1: buf("normed input", rows * h)?,
                q: buf("queries", rows * qd)?,
                k: buf("keys", rows * kvd)?,
                v: buf("values", rows * kvd)?,
                attn: buf("attention output", rows * qd)?,
                stats: buf("attention statistics", 2 * batch * c.num_heads * t)?,
                x_mid: buf("residual after attention", rows * h)?,
                rstd2: buf("rms statistics", rows)?,
                xn2: buf("normed residual", rows * h)?,
                gate: buf("gate", rows * f)?,
                up: buf("up", rows * f)?,
                h: buf("mlp hidden", rows * f)?,
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
            rope: Rope::new(gpu).await?,
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
            dq: buf("query gradient", rows * qd)?,
            dk: buf("key gradient", rows * kvd)?,
            dv: buf("value gradient", rows * kvd)?,
            dattn: buf("attention gradient", rows * qd)?,
            dgate: buf("gate gradient", rows * f)?,
            dup: buf("up gradient", rows * f)?,
            dh: buf("mlp hidden gradient", rows * f)?,
            dt: buf("LoRA gradient", rows * r)?,
        })
    }

    fn attention_shape(&self, model: &GpuModel) -> AttentionShape {
        let c = &model.config;
        AttentionShape::token_major(self.batch, self.t, c.num_heads, c.num_kv_heads, c.head_dim)
    }

    /// y (+)= W·x (+ b) (+ s·B·A·x, saving A·x).
    #[allow(clippy::too_many_arguments)]
    fn linear_forward(
        &self,
        b: &mut Batch,
        lora: &LoraState,
        l: usize,
        target: Target,
        w: &Weight,
        bias: Option<&GpuBuffer>,
        x: &GpuBuffer,
        y: &GpuBuffer,
    ) -> ModelResult<()> {
        let rows = self.rows;
        let (inp, out) = (w.shape[1], w.shape[0]);
        let accumulate = matches!(target, Target::OProj | Target::DownProj);
        let base = self.products.get(nt(w.dtype, accumulate, bias.is_some()), MatmulShape::new(rows, out, inp))?;
        base.record(b, Operand::dense(x, inp), Operand::dense(&w.buf, inp), bias, Operand::dense(y, out), 1.0)?;
        if let Some(ti) = lora.layout.config.targets.iter().position(|&t| t == target) {
            let r = lora.layout.config.r;
            let (fa, fb) =
                (lora.layout.factor(l, target, true).expect("A"), lora.layout.factor(l, target, false).expect("B"));
            let t_buf = &self.acts(l).lora_t[ti];
            let a_op = Operand { buf: lora.params, off: fa.offset, ld: inp, batch_stride: 0 };
            let b_op = Operand { buf: lora.params, off: fb.offset, ld: r, batch_stride: 0 };
            self.products.get(nt(Dtype::F32, false, false), MatmulShape::new(rows, r, inp))?.record(
                b,
                Operand::dense(x, inp),
                a_op,
                None,
                Operand::dense(t_buf, r),
                1.0,
            )?;
            self.products.get(nt(Dtype::F32, true, false), MatmulShape::new(rows, out, r))?.record(
                b,
                Operand::dense(t_buf, r),
                b_op,
                None,
                Operand::dense(y, out),
                lora.layout.config.scale(),
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
        l: usize,
        target: Target,
        w: &Weight,
        x: &GpuBuffer,
        dy: &GpuBuffer,
        dx: &GpuBuffer,
        accumulate: bool,
    ) -> ModelResult<()> {
        let rows = self.rows;
        let (inp, out) = (w.shape[1], w.shape[0]);
        self.products.get(nn(w.dtype, accumulate), MatmulShape::new(rows, inp, out))?.record(
            b,
            Operand::dense(dy, out),
            Operand::dense(&w.buf, inp),
            None,
            Operand::dense(dx, inp),
            1.0,
        )?;
        if let Some(ti) = lora.layout.config.targets.iter().position(|&t| t == target) {
            let (r, s) = (lora.layout.config.r, lora.layout.config.scale());
            let (fa, fb) =
                (lora.layout.factor(l, target, true).expect("A"), lora.layout.factor(l, target, false).expect("B"));
            let t_buf = &self.acts(l).lora_t[ti];
            let view = |buf, f: &super::lora::Factor, ld| Operand { buf, off: f.offset, ld, batch_stride: 0 };
            // dB += s·dyᵀ·t
            self.products.get(tn(true), MatmulShape::new(out, r, rows))?.record(
                b,
                Operand::dense(dy, out),
                Operand::dense(t_buf, r),
                None,
                view(lora.grads, fb, r),
                s,
            )?;
            // dt = s·dy·B
            self.products.get(nn(Dtype::F32, false), MatmulShape::new(rows, r, out))?.record(
                b,
                Operand::dense(dy, out),
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

    /// One layer's forward from `x_in` into `a`, writing the layer's output to `out`.
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
        let (heads, kv_heads, d) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let a = self.acts(l);
        let lw = &model.layers[l];
        let p = projections(model, l);
        self.norm.forward(b, x_in, &lw.input_norm, &a.xn1, &a.rstd1)?;
        for (i, out) in [(0, &a.q), (1, &a.k), (2, &a.v)] {
            self.linear_forward(b, lora, l, p[i].0, p[i].1, p[i].2, &a.xn1, out)?;
        }
        self.rope.record(b, &model.rope, inputs.positions, &a.q, self.rows, heads, heads * d, false)?;
        self.rope.record(b, &model.rope, inputs.positions, &a.k, self.rows, kv_heads, kv_heads * d, false)?;
        let io = AttentionIo { q: &a.q, k: &a.k, v: &a.v, key_start: inputs.key_start, out: &a.attn, stats: &a.stats };
        self.attention.forward(b, &self.attention_shape(model), &io)?;
        b.copy(x_in, &a.x_mid, (self.rows * c.hidden_size * 4) as u64);
        self.linear_forward(b, lora, l, p[3].0, p[3].1, None, &a.attn, &a.x_mid)?;
        self.norm.forward(b, &a.x_mid, &lw.post_norm, &a.xn2, &a.rstd2)?;
        self.linear_forward(b, lora, l, p[4].0, p[4].1, None, &a.xn2, &a.gate)?;
        self.linear_forward(b, lora, l, p[5].0, p[5].1, None, &a.xn2, &a.up)?;
        self.swiglu.forward(b, self.rows * c.intermediate_size, &a.gate, &a.up, &a.h)?;
        b.copy(&a.x_mid, out, (self.rows * c.hidden_size * 4) as u64);
        self.linear_forward(b, lora, l, p[6].0, p[6].1, None, &a.h, out)?;
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
        let (heads, kv_heads, d) = (c.num_heads, c.num_kv_heads, c.head_dim);
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
            let a = self.acts(l);
            let x_in = &self.layer_inputs[l];
            let lw = &model.layers[l];
            let p = projections(model, l);
            // MLP: x_out = x_mid + down(h)
            self.linear_backward(b, lora, l, p[6].0, p[6].1, &a.h, &self.dx, &self.dh, false)?;
            self.swiglu.backward(
                b,
                self.rows * c.intermediate_size,
                &a.gate,
                &a.up,
                &self.dh,
                &self.dgate,
                &self.dup,
            )?;
            self.linear_backward(b, lora, l, p[4].0, p[4].1, &a.xn2, &self.dgate, &self.dxn, false)?;
            self.linear_backward(b, lora, l, p[5].0, p[5].1, &a.xn2, &self.dup, &self.dxn, true)?;
            self.norm_backward.backward(b, &a.x_mid, &lw.post_norm, &a.rstd2, &self.dxn, &self.dx, None)?;
            // Attention: x_mid = x_in + o(attn)
            self.linear_backward(b, lora, l, p[3].0, p[3].1, &a.attn, &self.dx, &self.dattn, false)?;
            let io =
                AttentionIo { q: &a.q, k: &a.k, v: &a.v, key_start: inputs.key_start, out: &a.attn, stats: &a.stats };
            self.attention.backward(b, &shape, &io, &self.dattn, &self.dq, &self.dk, &self.dv)?;
            self.rope.record(b, &model.rope, inputs.positions, &self.dq, self.rows, heads, heads * d, true)?;
            self.rope.record(b, &model.rope, inputs.positions, &self.dk, self.rows, kv_heads, kv_heads * d, true)?;
            self.linear_backward(b, lora, l, p[0].0, p[0].1, &a.xn1, &self.dq, &self.dxn, false)?;
            self.linear_backward(b, lora, l, p[1].0, p[1].1, &a.xn1, &self.dk, &self.dxn, true)?;
            self.linear_backward(b, lora, l, p[2].0, p[2].1, &a.xn1, &self.dv, &self.dxn, true)?;
            self.norm_backward.backward(b, x_in, &lw.input_norm, &a.rstd1, &self.dxn, &self.dx, None)?;
        }
        Ok(())
    }
}

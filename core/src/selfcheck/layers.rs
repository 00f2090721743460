//! The per-layer families: attention (with the KV cache's broadcast), RMSNorm, RoPE (with the
//! attention input from packed q | k | v), SwiGLU (also from packed gate | up) and the embedding
//! gather with its reverse (the row scatter), each forward and backward where it has one.

use super::{Checker, rng};
use crate::dtype::{self, Dtype};
use crate::gpu::{Gpu, GpuResult};
use crate::numeric::{f32s, f64s, normal};
use crate::ops::attention::{Attention, AttentionIo, AttentionShape, attention_backward_ref, attention_ref};
use crate::ops::attention_input::{
    AttentionInput, KeyValueOut, PackedQkv, attention_input_backward_ref, attention_input_ref,
};
use crate::ops::decode::{CacheShape, KvOps};
use crate::ops::elementwise::{
    Embedding, RowScatter, SwiGlu, embedding_once, embedding_ref, row_scatter_once, row_scatter_ref,
    swiglu_backward_ref, swiglu_once, swiglu_ref,
};
use crate::ops::rmsnorm::{RmsNorm, rmsnorm_backward_ref, rmsnorm_once, rmsnorm_ref};
use crate::ops::rope::{RopeTables, tables};

/// Attention forward and backward against the f64 references: softmax over ≤ 9 keys and
/// products over 64–128 dims in f32 (the kernel tests' bound against the analytic reference).
const ATTENTION_BOUND: f64 = 1e-5;
/// RMSNorm: one f32 sum of squares per row and a few products per element.
const RMSNORM_BOUND: f64 = 1e-5;
/// RoPE: one f32 rotation per pair, from the same cos/sin tables as the reference.
const ROPE_BOUND: f64 = 1e-6;
/// SwiGLU: a handful of f32 roundings per element (sigmoid, products); one element can be off by
/// ~15 ulps, so ~32 ulps.
const SWIGLU_BOUND: f64 = 4e-6;

pub(super) async fn attention(gpu: &Gpu, c: &mut Checker) -> GpuResult<()> {
    let mut rng = rng("attention");
    // Training layout with GQA and a left-padded sequence (its first queries see no key), at
    // SmolLM2's and Llama-3's head sizes; then one decode step against a head-major cache.
    let cases = [
        ("train", AttentionShape::token_major(2, 7, 4, 2, 64), vec![0u32, 3], true),
        ("train", AttentionShape::token_major(1, 5, 2, 1, 128), vec![0], true),
        ("decode", AttentionShape::cached(2, 1, 6, 9, 6, 2, 64), vec![0, 4], false),
    ];
    for (kind, s, key_start, backward) in cases {
        // Element counts as the layouts define them (q rows `q_stride` apart; k/v strided by
        // sequence, head and key).
        let q_len = (s.batch * s.tq - 1) * s.q_stride + s.heads * s.head_dim;
        let k_len = (s.batch - 1) * s.k_sb + (s.kv_heads - 1) * s.k_sh + (s.tk - 1) * s.k_st + s.head_dim;
        let stats_len = 2 * s.batch * s.heads * s.tq;
        let (q, k, v, dout) =
            (normal(&mut rng, q_len), normal(&mut rng, k_len), normal(&mut rng, k_len), normal(&mut rng, q_len));
        let op = Attention::new(gpu, s.head_dim, backward, false).await?;
        const OP: &str = "self-check attention";
        let up = |what: &str, x: &[f32]| gpu.upload(OP, what, x);
        let poisoned = |what: &str, n: usize| gpu.upload(OP, what, &vec![f32::NAN; n]);
        let (qb, kb, vb) = (up("q", &q)?, up("k", &k)?, up("v", &v)?);
        let ksb = gpu.upload(OP, "key_start", &key_start)?;
        let (outb, statsb) = (poisoned("out", q_len)?, poisoned("stats", stats_len)?);
        let io = AttentionIo { q: &qb, k: &kb, v: &vb, key_start: &ksb, out: &outb, stats: &statsb };
        let (doutb, dqb, dkb, dvb) =
            (up("dout", &dout)?, poisoned("dq", q_len)?, poisoned("dk", k_len)?, poisoned("dv", k_len)?);
        let mut b = gpu.batch(OP);
        op.forward(&mut b, &s, &io)?;
        if backward {
            op.backward(&mut b, &s, &io, &doutb, &dqb, &dkb, &dvb)?;
        }
        b.submit().await?;
        let name =
            format!("{kind} b={} t={} keys={} heads={}/{} d={}", s.batch, s.tq, s.tk, s.heads, s.kv_heads, s.head_dim);
        let (qd, kd, vd) = (f64s(&q), f64s(&k), f64s(&v));
        let (out, lse) = attention_ref(&s, &qd, &kd, &vd, &key_start);
        c.close("attention out", name.clone(), gpu.read::<f32>(OP, &outb).await?, &f32s(&out), ATTENTION_BOUND);
        let stats = gpu.read::<f32>(OP, &statsb).await?;
        c.close("attention log-sum-exp", name.clone(), stats[..lse.len()].to_vec(), &f32s(&lse), ATTENTION_BOUND);
        if backward {
            let [dq, dk, dv] = attention_backward_ref(&s, &qd, &kd, &vd, &key_start, &f64s(&dout));
            c.close("attention dq", name.clone(), gpu.read::<f32>(OP, &dqb).await?, &f32s(&dq), ATTENTION_BOUND);
            c.close("attention dk", name.clone(), gpu.read::<f32>(OP, &dkb).await?, &f32s(&dk), ATTENTION_BOUND);
            c.close("attention dv", name, gpu.read::<f32>(OP, &dvb).await?, &f32s(&dv), ATTENTION_BOUND);
        }
    }
    kv_broadcast(gpu, c).await
}

/// One prompt's KV cache copied to the rows of its G samples: the first positions of a row,
/// bit for bit, and nothing else.
async fn kv_broadcast(gpu: &Gpu, c: &mut Checker) -> GpuResult<()> {
    const OP: &str = "self-check kv broadcast";
    let mut rng = rng("kv broadcast");
    let src = CacheShape { batch: 2, kv_heads: 3, capacity: 9, head_dim: 64 };
    let dst = CacheShape { batch: 5, ..src };
    let (t, rows) = (7, 1..4);
    let cache = normal(&mut rng, src.elems());
    let (src_buf, dst_buf) = (gpu.upload(OP, "cache", &cache)?, gpu.upload(OP, "samples", &vec![0f32; dst.elems()])?);
    let ops = KvOps::new(gpu).await?;
    let mut b = gpu.batch(OP);
    ops.broadcast(&mut b, src, 1, dst, rows.clone(), t, &src_buf, &dst_buf)?;
    b.submit().await?;
    let mut want = vec![0f32; dst.elems()];
    let at = |row: usize, g: usize, pos: usize| ((row * src.kv_heads + g) * src.capacity + pos) * src.head_dim;
    for row in rows {
        for g in 0..src.kv_heads {
            for pos in 0..t {
                want[at(row, g, pos)..][..src.head_dim].copy_from_slice(&cache[at(1, g, pos)..][..src.head_dim]);
            }
        }
    }
    let shape = format!(
        "row 1 of {} x {} heads x {} positions to rows 1..4, {t} positions",
        src.batch, src.kv_heads, src.capacity
    );
    c.exact("kv cache broadcast", shape, gpu.read::<f32>(OP, &dst_buf).await?, &want);
    Ok(())
}

pub(super) async fn rmsnorm(gpu: &Gpu, c: &mut Checker) -> GpuResult<()> {
    let mut rng = rng("rmsnorm");
    // A ragged row length, and SmolLM2's hidden size with the accumulating backward (residuals).
    for (rows, h, accumulate) in [(7usize, 67usize, false), (3, 576, true)] {
        let eps = 1e-6f32;
        let (x, w, dy) = (normal(&mut rng, rows * h), normal(&mut rng, h), normal(&mut rng, rows * h));
        let (dx0, dw0) = (normal(&mut rng, rows * h), normal(&mut rng, h));
        let op = RmsNorm::new(gpu, rows, h, eps, accumulate).await?;
        let grads0 = accumulate.then_some((&dx0[..], &dw0[..]));
        let [y, rstd, dx, dw] = rmsnorm_once(gpu, &op, &x, &w, &dy, grads0).await?;
        let (xd, wd) = (f64s(&x), f64s(&w));
        let (y_want, rstd_want) = rmsnorm_ref(&xd, &wd, rows, h, eps as f64);
        let (mut dx_want, mut dw_want) = rmsnorm_backward_ref(&xd, &wd, &f64s(&dy), rows, h, eps as f64);
        if accumulate {
            dx_want.iter_mut().zip(&dx0).for_each(|(a, b)| *a += *b as f64);
            dw_want.iter_mut().zip(&dw0).for_each(|(a, b)| *a += *b as f64);
        }
        let name = format!("{rows}x{h}{}", if accumulate { " accumulate" } else { "" });
        c.close("rmsnorm y", name.clone(), y, &f32s(&y_want), RMSNORM_BOUND);
        c.close("rmsnorm rstd", name.clone(), rstd, &f32s(&rstd_want), RMSNORM_BOUND);
        c.close("rmsnorm dx", name.clone(), dx, &f32s(&dx_want), RMSNORM_BOUND);
        c.close("rmsnorm dw", name, dw, &f32s(&dw_want), RMSNORM_BOUND);
    }
    Ok(())
}

/// RoPE as the model runs it: in the attention input's kernels (`ops::attention_input`), forward
/// and back, on the tables of a long context (positions across the table).
pub(super) async fn rope(gpu: &Gpu, c: &mut Checker) -> GpuResult<()> {
    let (d, max_pos, theta) = (64usize, 4096usize, 1_000_000f32);
    let gpu_tables = RopeTables::new(gpu, d, theta, max_pos)?;
    let (cos, sin) = tables(d, theta, max_pos);
    attention_input(gpu, c, &gpu_tables, &cos, &sin).await
}

/// The attention mixer's input from packed q | k | v rows (GQA, two sequences of three tokens):
/// q and k rotated as RoPE does, v copied; k and v token-major, then into a KV cache at
/// positions 2…4 of each sequence, every other cache entry left as it was.
async fn attention_input(gpu: &Gpu, c: &mut Checker, tables: &RopeTables, cos: &[f32], sin: &[f32]) -> GpuResult<()> {
    const OP: &str = "self-check attention input";
    let mut rng = rng("attention input");
    let s = PackedQkv { batch: 2, t: 3, heads: 6, kv_heads: 2, head_dim: tables.head_dim, stride: 10 * 64 + 5 };
    let (rows, kvd) = (s.rows(), s.kv_heads * s.head_dim);
    let qkv = normal(&mut rng, rows * s.stride);
    let positions = [0u32, 1, 2, 7, 8, 4095];
    let (q_want, k_want, v_want) = attention_input_ref(s, &qkv, &positions, cos, sin);
    let op = AttentionInput::new(gpu).await?;
    let (qkv_buf, pos_buf) = (gpu.upload(OP, "qkv", &qkv)?, gpu.upload(OP, "positions", &positions)?);
    let nan = |what: &str, n: usize| gpu.upload(OP, what, &vec![f32::NAN; n]);
    let (q, k, v) = (nan("q", rows * s.heads * s.head_dim)?, nan("k", rows * kvd)?, nan("v", rows * kvd)?);
    let cache = CacheShape { batch: s.batch, kv_heads: s.kv_heads, capacity: 6, head_dim: s.head_dim };
    let (kc, vc) = (
        gpu.upload(OP, "key cache", &vec![0f32; cache.elems()])?,
        gpu.upload(OP, "value cache", &vec![0f32; cache.elems()])?,
    );
    let mut b = gpu.batch(OP);
    op.record(&mut b, tables, &pos_buf, s, &qkv_buf, &q, &KeyValueOut::TokenMajor { k: &k, v: &v })?;
    op.record(
        &mut b,
        tables,
        &pos_buf,
        s,
        &qkv_buf,
        &q,
        &KeyValueOut::Cache { shape: cache, pos0: 2, k: &kc, v: &vc },
    )?;
    b.submit().await?;
    let shape = format!("{rows} rows x {}/{} heads x {}, stride {}", s.heads, s.kv_heads, s.head_dim, s.stride);
    c.close("attention input q", shape.clone(), gpu.read::<f32>(OP, &q).await?, &f32s(&q_want), ROPE_BOUND);
    c.close("attention input k", shape.clone(), gpu.read::<f32>(OP, &k).await?, &f32s(&k_want), ROPE_BOUND);
    c.exact("attention input v", shape.clone(), gpu.read::<f32>(OP, &v).await?, &f32s(&v_want));
    let (mut kc_want, mut vc_want) = (vec![0f32; cache.elems()], vec![0f32; cache.elems()]);
    for row in 0..rows {
        for e in 0..kvd {
            let (g, d) = (e / s.head_dim, e % s.head_dim);
            let at = (((row / s.t) * s.kv_heads + g) * cache.capacity + 2 + row % s.t) * s.head_dim + d;
            kc_want[at] = k_want[row * kvd + e] as f32;
            vc_want[at] = v_want[row * kvd + e] as f32;
        }
    }
    let cached = format!("{shape}, into a cache of {} positions at 2", cache.capacity);
    c.close("attention input key cache", cached.clone(), gpu.read::<f32>(OP, &kc).await?, &kc_want, ROPE_BOUND);
    c.exact("attention input value cache", cached, gpu.read::<f32>(OP, &vc).await?, &vc_want);
    // The backward (training): dq, dk rotated back and dv packed into rows of d(q | k | v).
    let (dq, dk, dv) =
        (normal(&mut rng, rows * s.heads * s.head_dim), normal(&mut rng, rows * kvd), normal(&mut rng, rows * kvd));
    let want = attention_input_backward_ref(s, &f64s(&dq), &f64s(&dk), &f64s(&dv), &positions, cos, sin);
    let dqkv = gpu.upload(OP, "dqkv", &vec![0f32; rows * s.stride])?;
    let up = |what: &str, x: &[f32]| gpu.upload(OP, what, x);
    let mut b = gpu.batch(OP);
    op.backward(&mut b, tables, &pos_buf, s, &up("dq", &dq)?, &up("dk", &dk)?, &up("dv", &dv)?, &dqkv)?;
    b.submit().await?;
    c.close("attention input backward", shape, gpu.read::<f32>(OP, &dqkv).await?, &f32s(&want), ROPE_BOUND);
    Ok(())
}

pub(super) async fn swiglu(gpu: &Gpu, c: &mut Checker) -> GpuResult<()> {
    let mut rng = rng("swiglu");
    // 7 rows of gate | up, 37 wide each (as one product over the stacked weights writes them).
    let (rows, width) = (7usize, 37usize);
    let n = rows * width;
    let (g, u, dh) = (normal(&mut rng, n), normal(&mut rng, n), normal(&mut rng, n));
    let op = SwiGlu::new(gpu).await?;
    let [h, dgate, dup] = swiglu_once(gpu, &op, width, &g, &u, &dh).await?;
    let (gd, ud) = (f64s(&g), f64s(&u));
    let (dg_want, du_want) = swiglu_backward_ref(&gd, &ud, &f64s(&dh));
    let shape = format!("{rows} rows of gate | up x {width}");
    c.close("swiglu h", shape.clone(), h, &f32s(&swiglu_ref(&gd, &ud)), SWIGLU_BOUND);
    c.close("swiglu dgate", shape.clone(), dgate, &f32s(&dg_want), SWIGLU_BOUND);
    c.close("swiglu dup", shape, dup, &f32s(&du_want), SWIGLU_BOUND);
    Ok(())
}

pub(super) async fn embedding(gpu: &Gpu, c: &mut Checker) -> GpuResult<()> {
    let mut rng = rng("embedding");
    let (vocab, h) = (37usize, 13usize);
    // Repeated ids, the last row, and ids past the vocabulary (zero rows).
    let ids = [0u32, 36, 5, 5, 999, 17, 1, u32::MAX];
    for dt in Dtype::ALL {
        let h = dt.whole_blocks(h);
        let table = dtype::round_trip(dt, &normal(&mut rng, vocab * h));
        let op = Embedding::new(gpu, vocab, h, dt).await?;
        // Split into row shards as a large vocabulary is on small-binding adapters.
        let shards = [(0, &table[..17 * h]), (17, &table[17 * h..])];
        let got = embedding_once(gpu, &op, dt, &shards, &ids).await?;
        c.exact(
            "embedding gather",
            format!("{} ids of {vocab}x{h} {dt:?}, 2 shards", ids.len()),
            got,
            &embedding_ref(&table, h, &ids),
        );
    }
    // The head's gradient goes back to its rows this way: distinct indices, padding past the end.
    let (out_rows, index) = (37usize, [30u32, 2, 11, 36, 0, 37, u32::MAX]);
    let src = normal(&mut rng, index.len() * h);
    let before = normal(&mut rng, out_rows * h);
    let op = RowScatter::new(gpu, out_rows, h).await?;
    let got = row_scatter_once(gpu, &op, &index, &src, &before).await?;
    let mut want = before.clone();
    row_scatter_ref(&index, &src, h, &mut want);
    c.exact("row scatter", format!("{} rows into {out_rows}x{h}", index.len()), got, &want);
    Ok(())
}

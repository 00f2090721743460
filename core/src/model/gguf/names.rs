//! llama.cpp tensor names to Hugging Face names, and the q/k row order llama.cpp uses.

/// The HF name of a llama.cpp tensor, or `None` for tensors convrec has no use for.
pub fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    // Only plain decimal layer numbers ("07" or "+1" would alias another layer).
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) || (layer.len() > 1 && layer.starts_with('0')) {
        return None;
    }
    let (part, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let hf = match part {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// Which projection's rows llama.cpp reorders, with the head count it reorders them by.
pub fn permuted_heads(hf: &str, num_heads: usize, num_kv_heads: usize) -> Option<usize> {
    if hf.ends_with(".self_attn.q_proj.weight") || hf.ends_with(".self_attn.q_proj.bias") {
        Some(num_heads)
    } else if hf.ends_with(".self_attn.k_proj.weight") || hf.ends_with(".self_attn.k_proj.bias") {
        Some(num_kv_heads)
    } else {
        None
    }
}

/// llama.cpp's `convert_hf_to_gguf.py` (`LlamaModel.permute`) stores the rows of q_proj/k_proj
/// reordered for its interleaved RoPE:
///
/// ```python
/// w.reshape(n_head, 2, rows // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)
/// ```
///
/// i.e. within each head, HF row `i·half + j` (i ∈ {0,1}) moves to row `2j + i`. This is that
/// permutation: `rows` has `n_rows` rows of `row_len` elements, HF order in and GGUF order out.
/// Errors when the rows do not split into `n_head` heads of an even size.
pub fn permute_rows<T: Copy>(rows: &[T], row_len: usize, n_head: usize) -> Result<Vec<T>, String> {
    reorder(rows, row_len, n_head, |head_dim, half, i, j| (head_dim, i * half + j, 2 * j + i))
}

/// The inverse of [`permute_rows`]: GGUF order in, HF order out.
pub fn unpermute_rows<T: Copy>(rows: &[T], row_len: usize, n_head: usize) -> Result<Vec<T>, String> {
    reorder(rows, row_len, n_head, |head_dim, half, i, j| (head_dim, 2 * j + i, i * half + j))
}

/// Moves, in each head, row `from(i, j)` to row `to(i, j)` for i ∈ {0,1}, j < half.
fn reorder<T: Copy>(
    rows: &[T],
    row_len: usize,
    n_head: usize,
    map: impl Fn(usize, usize, usize, usize) -> (usize, usize, usize),
) -> Result<Vec<T>, String> {
    if row_len == 0 || !rows.len().is_multiple_of(row_len) {
        return Err(format!("{} elements are not whole rows of {row_len}", rows.len()));
    }
    let n_rows = rows.len() / row_len;
    if n_head == 0 || !n_rows.is_multiple_of(n_head) || !(n_rows / n_head).is_multiple_of(2) {
        return Err(format!("{n_rows} rows do not split into {n_head} heads of an even size"));
    }
    let head_dim = n_rows / n_head;
    let half = head_dim / 2;
    let mut out = rows.to_vec();
    for h in 0..n_head {
        for i in 0..2 {
            for j in 0..half {
                let (hd, from, to) = map(head_dim, half, i, j);
                let (src, dst) = ((h * hd + from) * row_len, (h * hd + to) * row_len);
                out[dst..dst + row_len].copy_from_slice(&rows[src..src + row_len]);
            }
        }
    }
    Ok(out)
}

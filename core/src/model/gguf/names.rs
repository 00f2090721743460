//! The q/k row order llama.cpp uses (its tensor names are in each architecture's description,
//! `model::decoder`).

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

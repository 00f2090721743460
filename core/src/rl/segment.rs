//! Token segmentation (§5): a completion token's item id is the number of `\n` characters in all
//! earlier tokens' decoded text, so a token's own newlines count only for the tokens after it
//! (`)\n` ends its item; `\n\n` counts 2). Ids ≥ rec_num are overflow.

/// Item id of every token (up to and including the end token; the caller cuts padding).
pub fn item_ids(token_texts: &[String]) -> Vec<usize> {
    let mut seen = 0;
    token_texts
        .iter()
        .map(|t| {
            let id = seen;
            seen += t.matches('\n').count();
            id
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn newline_tokens_stay_with_the_item_they_end() {
        // "A (1999)\nB (2000)\n\nC (2001)<eot>"
        let toks = s(&["A", " (", "1999", ")\n", "B", " (2000", ")", "\n\n", "C", " (2001)", "<|im_end|>"]);
        assert_eq!(item_ids(&toks), vec![0, 0, 0, 0, 1, 1, 1, 1, 3, 3, 3]);
        assert_eq!(item_ids(&s(&["\n", "x"])), vec![0, 1]);
        assert!(item_ids(&[]).is_empty());
    }
}

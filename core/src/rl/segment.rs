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

/// How many of a completion's tokens it owns, and whether it ended: segmentation and the loss
/// cover the tokens up to and including the first end token (any of `end_ids`); what follows is
/// padding. A completion cut at the length limit has no end token and keeps all its tokens.
pub fn completion_len(ids: &[u32], end_ids: &[u32]) -> (usize, bool) {
    match ids.iter().position(|id| end_ids.contains(id)) {
        Some(end) => (end + 1, true),
        None => (ids.len(), false),
    }
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

    #[test]
    fn a_completion_ends_at_its_first_end_token() {
        assert_eq!(completion_len(&[5, 6, 2, 0, 0], &[2]), (3, true), "padding after the end is not ours");
        assert_eq!(completion_len(&[5, 2, 7, 2], &[7, 2]), (2, true), "any end id, the first one wins");
        assert_eq!(completion_len(&[5, 6], &[2]), (2, false), "cut at the length limit");
        assert_eq!(completion_len(&[], &[2]), (0, false));
    }
}

//! The named choices of command-line flags (`--weights`, `--precision`, `--adapters`): one parser
//! so that every flag accepts and refuses the same way.

/// The choice among `all` whose `name` is `s` (trimmed, any case); the error lists the names.
pub fn parse<T: Copy>(s: &str, all: &[T], name: impl Fn(T) -> &'static str, what: &str) -> Result<T, String> {
    let wanted = s.trim().to_ascii_lowercase();
    all.iter().copied().find(|&c| name(c) == wanted).ok_or_else(|| {
        let names: Vec<&str> = all.iter().map(|&c| name(c)).collect();
        let (last, rest) = names.split_last().expect("a flag has choices");
        let listed = if rest.is_empty() { last.to_string() } else { format!("{} or {last}", rest.join(", ")) };
        format!("`{s}` is not {what} ({listed})")
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_parse_in_any_case_and_errors_list_them() {
        let all = [1, 2, 3];
        let name = |c: i32| ["one", "two", "three"][c as usize - 1];
        assert_eq!(super::parse(" TWO ", &all, name, "a number"), Ok(2));
        assert_eq!(
            super::parse("four", &all, name, "a number").unwrap_err(),
            "`four` is not a number (one, two or three)"
        );
    }
}

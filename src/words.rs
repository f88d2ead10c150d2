//! Wording of messages, tables and reports.

/// `1 seed`, `3 seeds`, `2 classes`: a count with its noun, plural unless one (`-es` after
/// s, x and sh; `finished run` → `finished runs`, `epoch` → `epochs`).
pub fn count(n: usize, noun: &str) -> String {
    let es = ["s", "x", "sh"].iter().any(|e| noun.ends_with(e));
    format!(
        "{n} {noun}{}",
        if n == 1 {
            ""
        } else if es {
            "es"
        } else {
            "s"
        }
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_is_singular_every_other_count_plural() {
        assert_eq!([0, 1, 2].map(|n| super::count(n, "epoch")), ["0 epochs", "1 epoch", "2 epochs"]);
        assert_eq!([1, 5].map(|n| super::count(n, "class")), ["1 class", "5 classes"]);
    }
}

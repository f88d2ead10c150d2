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

/// A time span with the digits that matter: `42 ms`, `2.72 s`, `3 min 20 s`, `1 h 5 min`.
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0);
    match s {
        s if s < 1.0 => format!("{:.0} ms", 1000.0 * s),
        s if s < 100.0 => format!("{s:.2} s"),
        s if s < 3600.0 => format!("{} min {} s", (s / 60.0) as u64, s as u64 % 60),
        s => format!("{} h {} min", (s / 3600.0) as u64, s as u64 % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_keep_the_digits_that_matter() {
        assert_eq!([0.0421, 2.7241, 200.0, 3900.0].map(super::duration), ["42 ms", "2.72 s", "3 min 20 s", "1 h 5 min"]);
    }

    #[test]
    fn one_is_singular_every_other_count_plural() {
        assert_eq!([0, 1, 2].map(|n| super::count(n, "epoch")), ["0 epochs", "1 epoch", "2 epochs"]);
        assert_eq!([1, 5].map(|n| super::count(n, "class")), ["1 class", "5 classes"]);
    }
}

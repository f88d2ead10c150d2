//! The table of a training step's products by shape, as they ran inside the timed steps
//! (`nn::cpu::log`): against the same products alone (`bench --extraction-only`), what the
//! step's other work (AdamW beside the backward pass, cold weights, a busy second thread) costs.

use crate::nn::cpu::log::ShapeTime;

/// Rows shown; the rest are summed, a row for each kind.
const SHOWN: usize = 12;

/// Writes the table of the products of `timed_steps` steps at `threads` threads (nothing where no
/// product was logged: a GPU).
pub(super) fn fmt(f: &mut std::fmt::Formatter, threads: usize, timed_steps: usize, shapes: &[ShapeTime]) -> std::fmt::Result {
    if shapes.is_empty() || timed_steps == 0 {
        return Ok(());
    }
    let steps = timed_steps as f64;
    writeln!(f, "the training step's products inside the step, {threads} thread(s), mean of {timed_steps} steps:\n")?;
    writeln!(f, "| product m x n x k | how | calls a step | ms a step | GFLOP/s |\n|---|---|---|---|---|")?;
    let row = |f: &mut std::fmt::Formatter, name: &str, how: &str, calls: u64, seconds: f64, flop: u64| {
        let rate = if seconds > 0.0 { flop as f64 / seconds / 1e9 } else { 0.0 };
        writeln!(f, "| {name} | {how} | {:.1} | {:.3} | {rate:.0} |", calls as f64 / steps, seconds * 1e3 / steps)
    };
    for s in shapes.iter().take(SHOWN) {
        row(f, &format!("{} x {} x {}", s.m, s.n, s.k), how(s.by_rows), s.calls, s.seconds, s.flop)?;
    }
    // The rest summed by kind: a thread's time (blocks of rows) and wall time do not add up.
    let rest = &shapes[SHOWN.min(shapes.len())..];
    for by_rows in [false, true] {
        let kind: Vec<&ShapeTime> = rest.iter().filter(|s| s.by_rows == by_rows).collect();
        if !kind.is_empty() {
            let (calls, flop) = (kind.iter().map(|s| s.calls).sum(), kind.iter().map(|s| s.flop).sum());
            row(
                f,
                &format!("{} other shape{}", kind.len(), if kind.len() == 1 { "" } else { "s" }),
                how(by_rows),
                calls,
                kind.iter().map(|s| s.seconds).sum(),
                flop,
            )?;
        }
    }
    writeln!(
        f,
        "\n(Blocks of rows are timed on their own thread, beside other work; the rest from the product's start to its end, which \
         includes any AdamW job a thread took while it waited for the product's other blocks: those jobs' blocks of rows are \
         also in their own rows.)\n"
    )
}

/// How a kind of product ran ([`ShapeTime::by_rows`]).
fn how(by_rows: bool) -> &'static str {
    if by_rows { "blocks of rows, one thread each" } else { "split across threads" }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Table(usize, Vec<ShapeTime>);

    impl std::fmt::Display for Table {
        fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            fmt(f, 2, self.0, &self.1)
        }
    }

    /// `shapes` shapes, the i-th (20 - i) ms in all over 10 steps.
    fn shapes(shapes: usize) -> Vec<ShapeTime> {
        (0..shapes).map(|i| ShapeTime { m: 64, n: i + 1, k: 8, by_rows: i % 2 == 1, calls: 20, seconds: 1e-3 * (20 - i) as f64, flop: 1e9 as u64 }).collect()
    }

    #[test]
    fn the_table_shows_a_step_s_share_of_each_shape_and_sums_the_rest() {
        let t = Table(10, shapes(SHOWN + 2)).to_string();
        assert!(t.contains("| 64 x 1 x 8 | split across threads | 2.0 | 2.000 | 50 |"), "{t}");
        assert!(t.contains("| 64 x 2 x 8 | blocks of rows, one thread each | 2.0 | 1.900 | 53 |"), "{t}");
        assert!(!t.contains("| 64 x 13 x 8 |"), "{t}");
        // The last two (8 and 7 ms over 10 steps), one of each kind, in a row each.
        assert!(t.contains("| 1 other shape | split across threads | 2.0 | 0.800 | 125 |"), "{t}");
        assert!(t.contains("| 1 other shape | blocks of rows, one thread each | 2.0 | 0.700 | 143 |"), "{t}");
        assert_eq!(Table(10, vec![]).to_string(), "", "no products logged (a GPU): no table");
    }
}

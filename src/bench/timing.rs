//! Timing helpers of the benchmarks: a median, and a rate over repeated runs.

use anyhow::Result;
use std::time::Instant;

/// The median of `v` (the upper one for an even count).
pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Items/s of `run` (which handles `items` items): one warm-up run, then the median of three;
/// also the products' floating-point operations of one run.
pub(super) fn throughput(items: usize, mut run: impl FnMut() -> Result<()>) -> Result<(f64, u64)> {
    let (mut rates, mut flop) = (vec![], 0);
    for rep in 0..4 {
        let (t0, flop0) = (Instant::now(), crate::nn::cpu::matmul_flop());
        run()?;
        if rep > 0 {
            rates.push(items as f64 / t0.elapsed().as_secs_f64());
            flop = crate::nn::cpu::matmul_flop() - flop0;
        }
    }
    Ok((median(rates), flop))
}

//! The products' wall time by shape (with the bias or activation their blocks apply as they
//! finish), while asked for: `marnet bench`'s table of where a training step's product time
//! goes, measured inside the step rather than alone.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// One shape's products while the log ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShapeTime {
    /// The whole product: an [m, n] output, summed over k.
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Blocks of rows run one at a time on the calling thread ([`super::matmul_rows_into`]: the
    /// weight gradients inside AdamW's jobs), each block a call; else whole products split across
    /// threads ([`super::matmul_padded`]), timed from start to end.
    pub by_rows: bool,
    pub calls: u64,
    pub seconds: f64,
    pub flop: u64,
}

static ON: AtomicBool = AtomicBool::new(false);
type Key = (usize, usize, usize, bool);
static LOG: Mutex<BTreeMap<Key, (u64, f64, u64)>> = Mutex::new(BTreeMap::new());

/// Starts a new log (what an earlier one held is dropped).
pub fn start() {
    LOG.lock().unwrap_or_else(|e| e.into_inner()).clear();
    ON.store(true, Ordering::Relaxed);
}

/// Ends the log: its shapes, longest total time first.
pub fn stop() -> Vec<ShapeTime> {
    ON.store(false, Ordering::Relaxed);
    let log = std::mem::take(&mut *LOG.lock().unwrap_or_else(|e| e.into_inner()));
    let mut shapes: Vec<ShapeTime> =
        log.into_iter().map(|((m, n, k, by_rows), (calls, seconds, flop))| ShapeTime { m, n, k, by_rows, calls, seconds, flop }).collect();
    shapes.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    shapes
}

/// The start of a product, when a log runs.
pub(super) fn timer() -> Option<Instant> {
    ON.load(Ordering::Relaxed).then(Instant::now)
}

/// A product of `flop` operations that started at `t0` ([`timer`]) ends.
pub(super) fn note(t0: Option<Instant>, (m, n, k): (usize, usize, usize), by_rows: bool, flop: u64) {
    let Some(t0) = t0 else { return };
    let seconds = t0.elapsed().as_secs_f64();
    let mut log = LOG.lock().unwrap_or_else(|e| e.into_inner());
    let e = log.entry((m, n, k, by_rows)).or_insert((0, 0.0, 0));
    *e = (e.0 + 1, e.1 + seconds, e.2 + flop);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::cpu::{MatRef, matmul, matmul_rows_into};

    /// Shapes no other test uses: tests run side by side in one process.
    #[test]
    fn a_log_holds_the_products_run_while_it_ran_and_only_those() {
        let (a, b) = (vec![1.0; 7 * 11], vec![1.0; 11 * 13]);
        let product = || matmul(7, 13, 11, MatRef::rows(&a, 11), MatRef::rows(&b, 13));
        product();
        start();
        product();
        product();
        let mut rows = vec![0.0; 3 * 13];
        matmul_rows_into(2, &mut rows, 13, 7, 13, 11, MatRef::rows(&a, 11), MatRef::rows(&b, 13));
        let log = stop();
        product();
        let ours: Vec<&ShapeTime> = log.iter().filter(|s| (s.m, s.n, s.k) == (7, 13, 11)).collect();
        assert_eq!(ours.len(), 2, "{log:?}");
        let whole = ours.iter().find(|s| !s.by_rows).unwrap();
        assert_eq!((whole.calls, whole.flop), (2, 2 * 2 * 7 * 13 * 11));
        let by_rows = ours.iter().find(|s| s.by_rows).unwrap();
        assert_eq!((by_rows.calls, by_rows.flop), (1, 2 * 3 * 13 * 11));
        assert!(log.windows(2).all(|w| w[0].seconds >= w[1].seconds), "longest first: {log:?}");
        assert!(stop().iter().all(|s| (s.m, s.n, s.k) != (7, 13, 11)), "a product after stop() was logged");
    }
}

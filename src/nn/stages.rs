//! Wall time and product flops by stage of the transformer encoders' forward pass, for `marnet
//! bench`'s breakdown: off unless [`record`] switches it on, and then one clock read at the start
//! and end of each stage.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// A part of a transformer layer (or the patch embedding before the layers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    PatchEmbedding,
    LayerNorm,
    QkvProduct,
    Attention,
    OutputProduct,
    Mlp1Gelu,
    Mlp2,
}

impl Stage {
    pub const ALL: [Stage; 7] =
        [Stage::PatchEmbedding, Stage::LayerNorm, Stage::QkvProduct, Stage::Attention, Stage::OutputProduct, Stage::Mlp1Gelu, Stage::Mlp2];

    pub fn name(self) -> &'static str {
        match self {
            Stage::PatchEmbedding => "patch embedding (unfold + product)",
            Stage::LayerNorm => "layer norms",
            Stage::QkvProduct => "query/key/value product + bias",
            Stage::Attention => "attention (q k^T, softmax, x v)",
            Stage::OutputProduct => "attention output product + bias + residual",
            Stage::Mlp1Gelu => "MLP first product + bias + GELU",
            Stage::Mlp2 => "MLP second product + bias + residual",
        }
    }
}

static ON: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; Stage::ALL.len()] = [const { AtomicU64::new(0) }; Stage::ALL.len()];
static FLOP: [AtomicU64; Stage::ALL.len()] = [const { AtomicU64::new(0) }; Stage::ALL.len()];

/// Runs `f`, adding its wall time and product flops to `stage` while recording is on.
pub fn timed<T>(stage: Stage, f: impl FnOnce() -> T) -> T {
    if !ON.load(Relaxed) {
        return f();
    }
    let (t0, flop0) = (Instant::now(), crate::nn::cpu::matmul_flop());
    let out = f();
    NANOS[stage as usize].fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
    FLOP[stage as usize].fetch_add(crate::nn::cpu::matmul_flop() - flop0, Relaxed);
    out
}

/// Seconds and product flops per stage spent in `f` (for one caller at a time: the totals are
/// process-wide). Wall times are only meaningful on the CPU, where ops finish before they return.
pub fn record<T>(f: impl FnOnce() -> T) -> (T, Vec<(Stage, f64, u64)>) {
    for (n, c) in NANOS.iter().zip(&FLOP) {
        n.store(0, Relaxed);
        c.store(0, Relaxed);
    }
    ON.store(true, Relaxed);
    let out = f();
    ON.store(false, Relaxed);
    let totals = Stage::ALL.iter().map(|&s| (s, NANOS[s as usize].load(Relaxed) as f64 * 1e-9, FLOP[s as usize].load(Relaxed))).collect();
    (out, totals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::cpu::{MatRef, matmul};

    /// A recorded stage gets its time and at least its own products' flops (other tests may run
    /// products at the same time); nothing is kept outside `record`.
    #[test]
    fn record_times_each_stage() {
        let a = vec![1f32; 64 * 32];
        timed(Stage::Mlp2, || matmul(64, 64, 32, MatRef::rows(&a, 32), MatRef::rows(&a, 64)));
        let (_, totals) = record(|| timed(Stage::Attention, || matmul(64, 64, 32, MatRef::rows(&a, 32), MatRef::rows(&a, 64))));
        assert_eq!(totals.len(), Stage::ALL.len());
        for (stage, secs, flop) in totals {
            match stage {
                Stage::Attention => assert!(secs > 0.0 && flop >= 2 * 64 * 64 * 32),
                _ => assert!(secs == 0.0 && flop == 0, "{stage:?}"),
            }
        }
    }
}

//! The matrix products alone, on the shapes the heads and ViT-B/16 run: marnet's split
//! ([`crate::nn::cpu::matmul`], one single-threaded block per thread, on marnet's own kernel for
//! the heads' shapes where the CPU has AVX-512, `MARNET_KERNEL=gemm` to compare) against the matmul crate's
//! own parallel split and against one thread, to tell the kernel's rate from the split's; and
//! marnet's split with rows that lie a multiple of 4 KiB apart padded, as the head's layers hold
//! them ([`crate::nn::padded`]), to show what that padding is worth on this CPU.

use crate::nn::cpu::{MatRef, gemm_into, matmul, matmul_padded, rhs_rows_for_kernel};
use crate::nn::padded;
use serde::Serialize;
use std::time::Instant;

/// One product shape `[m, k] x [k, n]` and its rates.
#[derive(Debug, Clone, Serialize)]
pub struct ProductBench {
    pub what: &'static str,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// GFLOP/s of marnet's split at this process's thread count (each run allocating its output,
    /// as the layers' products do; the input gradient's, here and padded, with the copy of dy^T
    /// that the layer makes for marnet's kernel).
    pub marnet_gflops: f64,
    /// GFLOP/s of the matmul crate's own split over the same threads.
    pub crate_split_gflops: f64,
    /// GFLOP/s of one single-threaded product of the matmul crate.
    pub one_thread_gflops: f64,
    /// GFLOP/s of marnet's split with the operands and output padded as the head's layers pad
    /// them where rows would lie a multiple of 4 KiB apart (`None`: none is).
    pub padded_gflops: Option<f64>,
}

/// A product as a layer runs it; see `nn::linear` for the head's forward and backward products.
struct Product {
    what: &'static str,
    m: usize,
    n: usize,
    k: usize,
    /// The left operand is read transposed (stored as its transpose).
    lhs_t: bool,
    /// The right operand is read transposed.
    rhs_t: bool,
    /// What the head's layers store in padded rows when the rows would lie a multiple of 4 KiB
    /// apart ([`padded`]): the left operand, the right one, the output.
    pads: [bool; 3],
}

const fn product(what: &'static str, (m, n, k): (usize, usize, usize), (lhs_t, rhs_t): (bool, bool), pads: [bool; 3]) -> Product {
    Product { what, m, n, k, lhs_t, rhs_t, pads }
}

/// A forward product of a head's layer: its weight on the right.
const FORWARD: [bool; 3] = [false, true, false];
/// The frozen encoders' weights are never padded.
const UNPADDED: [bool; 3] = [false; 3];

const SHAPES: [Product; 9] = [
    product("head: projection 768 -> 256, batch 64", (64, 256, 768), (false, false), FORWARD),
    product("head: denoiser layer 1024 -> 1024, batch 64", (64, 1024, 1024), (false, false), FORWARD),
    product("head: its weight gradient x^T dy", (1024, 1024, 64), (true, false), [true, true, true]),
    product("head: its input gradient W dy^T", (1024, 64, 1024), (false, true), [true, true, false]),
    product("sampling: denoiser layer, batch 500", (500, 1024, 1024), (false, false), FORWARD),
    product("serve: denoiser layer, batch 8", (8, 1024, 1024), (false, false), FORWARD),
    product("ViT-B/16: query/key/value, batch 8", (1576, 2304, 768), (false, false), UNPADDED),
    product("ViT-B/16: MLP first layer", (1576, 3072, 768), (false, false), UNPADDED),
    product("ViT-B/16: MLP second layer", (1576, 768, 3072), (false, false), UNPADDED),
];

/// `values` in rows of `cols` floats, padded as [`padded::rows_apart`] pads them if `pad`.
fn stored(values: &[f32], cols: usize, pad: bool) -> (std::borrow::Cow<'_, [f32]>, usize) {
    if pad { padded::rows_apart(values, cols) } else { (values.into(), cols) }
}

/// A transposed right operand `b` (stored [n, k]) copied by rows, as the layer copies dy^T for
/// its input gradient where marnet's kernel runs it; `None` where the product reads it as it is.
fn as_the_layer_reads(rhs_t: bool, m: usize, n: usize, k: usize, b: &[f32]) -> Option<Vec<f32>> {
    rhs_t.then(|| rhs_rows_for_kernel(m, n, k, b)).flatten()
}

/// Times every shape in [`SHAPES`]: the median rate of five runs of at least 50 ms each.
pub fn products() -> Vec<ProductBench> {
    let threads = candle_core::utils::get_num_threads().max(1);
    let mut rng = crate::rng::stream(0, "bench-products", 0);
    SHAPES
        .iter()
        .map(|&Product { what, m, n, k, lhs_t, rhs_t, pads: [pad_lhs, pad_rhs, pad_out] }| {
            let a = crate::rng::normal_vec(&mut rng, m * k);
            let b = crate::rng::normal_vec(&mut rng, k * n);
            let lhs = if lhs_t { MatRef::transposed(&a, m) } else { MatRef::rows(&a, k) };
            let rhs = if rhs_t { MatRef::transposed(&b, k) } else { MatRef::rows(&b, n) };
            let mut dst = vec![0f32; m * n];
            let mut crate_product = |par: gemm::Parallelism| {
                let (l, r) = ([lhs.col_stride, lhs.row_stride], [rhs.col_stride, rhs.row_stride]);
                // SAFETY: `dst` is m x n, `a` and `b` hold the operands at the strides given.
                unsafe { gemm_into(m, n, k, dst.as_mut_ptr(), n, lhs.data.as_ptr(), l, rhs.data.as_ptr(), r, par) };
                std::hint::black_box(&dst);
            };
            let flop = 2.0 * (m * n * k) as f64;
            // The operands as stored (the transposed ones as their transposes), padded as the layers pad them.
            let (a_cols, b_cols) = (if lhs_t { m } else { k }, if rhs_t { k } else { n });
            let ((ap, lda), (bp, ldb)) = (stored(&a, a_cols, pad_lhs), stored(&b, b_cols, pad_rhs));
            let ld_out = if pad_out && padded::aliasing(n) { n + padded::PAD } else { n };
            let padded_gflops = (lda != a_cols || ldb != b_cols || ld_out != n).then(|| {
                let lhs = if lhs_t { MatRef::transposed(&ap, lda) } else { MatRef::strided_rows(&ap, lda) };
                let rhs = if rhs_t { MatRef::transposed(&bp, ldb) } else { MatRef::strided_rows(&bp, ldb) };
                rate(flop, || {
                    let copy = as_the_layer_reads(rhs_t, m, n, k, &b);
                    std::hint::black_box(matmul_padded(m, n, k, lhs, copy.as_deref().map_or(rhs, |t| MatRef::rows(t, n)), ld_out, |_, _, _| {}));
                })
            });
            ProductBench {
                what,
                m,
                n,
                k,
                marnet_gflops: rate(flop, || {
                    let copy = as_the_layer_reads(rhs_t, m, n, k, &b);
                    std::hint::black_box(matmul(m, n, k, lhs, copy.as_deref().map_or(rhs, |t| MatRef::rows(t, n))));
                }),
                crate_split_gflops: rate(flop, || crate_product(gemm::Parallelism::Rayon(threads))),
                one_thread_gflops: rate(flop, || crate_product(gemm::Parallelism::None)),
                padded_gflops,
            }
        })
        .collect()
}

/// GFLOP/s of `run` (`flop` each): after one warm-up run, the median of five timings, each of as
/// many runs as fill 50 ms.
fn rate(flop: f64, mut run: impl FnMut()) -> f64 {
    run();
    super::timing::median(
        (0..5)
            .map(|_| {
                let (t0, mut n) = (Instant::now(), 0u32);
                while n == 0 || t0.elapsed().as_secs_f64() < 0.05 {
                    run();
                    n += 1;
                }
                flop * n as f64 / t0.elapsed().as_secs_f64() / 1e9
            })
            .collect(),
    )
}

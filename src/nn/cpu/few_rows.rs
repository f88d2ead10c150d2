//! Products of 2 to [`MAX_ROWS`] rows (serving's batches, a linear layer's tail of few rows, a
//! convolution of few output channels) at AVX2, on CPUs without AVX-512, with the bits the matmul
//! crate gives the same call (NaN payloads aside): the sum over k cut where the crate cuts it
//! (blocks of [`crate_block`]), each block summed in order from zero in registers, one rounding
//! a step, and added to the blocks before it, as the crate's kernel does. So results are what
//! they were when the crate ran these products; the test compares the two.
//!
//! Each panel of 16 columns (2 vectors) runs over blocks of at most 4 rows: 8 sums in
//! registers, a step 2 vectors of the right-hand row and 4 left-hand values broadcast. The first
//! block reads the panel from memory or L3 (a layer's weight, read once a pass) and prefetches
//! its rows a few steps ahead; the second finds it in L2. Tiles of 4 rows by 3 vectors (12 sums)
//! left LLVM one register short, a sum spilled to the stack and the product slower than the
//! crate; 8 rows by one vector ran at 0.55-0.65 of this. The crate runs an 8-row product as a
//! tile of 6 rows and one of 2; here a bundle's heads on 8 rows take about two-thirds of the
//! time they took there on a Zen 3 (BENCHMARKS.md, 2026-12-08).

use std::arch::x86_64::*;

/// The most rows of a product run here.
pub const MAX_ROWS: usize = 8;

/// Whether an [m, n] product over k runs here: where the crate would run it on its packed
/// kernel (at least 2 rows and 2 columns, k at least 3: it takes its vector paths below) and
/// [`MAX_ROWS`] rows at most.
pub fn takes(m: usize, n: usize, k: usize) -> bool {
    (2..=MAX_ROWS).contains(&m) && n >= 2 && k >= 3
}

/// The block of k the matmul crate (f32 at AVX2: tiles of 16 by 6) sums in one run for an
/// [m, n] product over k: up to 512 on products of at most 64 rows and columns, else its
/// cache-sized block, k cut evenly (`gemm_common::gemm::gemm_basic_generic`; the crate transposes
/// our row-major product, but neither rule depends on which of m and n is which).
fn crate_block(m: usize, n: usize, k: usize) -> usize {
    if m <= 64 && n <= 64 { k.min(512) } else { gemm_common::cache::kernel_params(m, n, k, 16, 6, std::mem::size_of::<f32>()).kc }
}

/// Rows of a block.
const BLOCK: usize = 4;

/// Columns of a panel (2 vectors).
const PANEL: usize = 16;

/// Steps of k between a prefetch of the panel's row and its use.
const AHEAD: usize = 16;

/// Whether the CPU has what this kernel needs: AVX2 and FMA.
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// `c = a b` for `a` [m, k] (element (i, p) at `a[i ars + p acs]`), `b` [k, n] (rows `ldb`
/// apart, columns adjacent) and `c` [m, n] (rows `ldc` apart), a shape [`takes`] holds for: each
/// element the sum over each block of k of `fma(a[i, p], b[p, j], ...)` in order from zero, the
/// blocks' sums added in order (the crate's bits).
///
/// # Safety
/// The CPU must have AVX2 and FMA ([`available`]); every element the shapes and strides reach must
/// lie inside the allocation that `a`, `b` or `c` points into, and nothing else may read or write
/// `c`'s elements meanwhile.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn product(m: usize, n: usize, k: usize, a: *const f32, ars: usize, acs: usize, b: *const f32, ldb: usize, c: *mut f32, ldc: usize) {
    assert!(takes(m, n, k), "few_rows::product of {m} x {n} x {k}");
    let kc = crate_block(m, n, k);
    let mut j = 0;
    while j < n {
        let width = (n - j).min(PANEL);
        let tile = Tile { k, kc, a, ars, acs, b: b.wrapping_add(j), ldb, c: c.wrapping_add(j), ldc, last: width - 8 * (width.div_ceil(8) - 1) };
        let mut i = 0;
        while i < m {
            let rows = (m - i).min(BLOCK);
            // SAFETY: rows i..i + rows and this panel's columns lie inside the product.
            unsafe {
                match (width > 8, i == 0) {
                    (true, true) => tile.rows::<2, true>(i, rows),
                    (true, false) => tile.rows::<2, false>(i, rows),
                    (false, true) => tile.rows::<1, true>(i, rows),
                    (false, false) => tile.rows::<1, false>(i, rows),
                }
            }
            i += rows;
        }
        j += width;
    }
}

/// A column panel: its first column of `b` and `c`, and the lanes of its last vector that lie
/// inside the product (1 to 8).
struct Tile {
    k: usize,
    /// The block of k summed in one run ([`crate_block`]).
    kc: usize,
    a: *const f32,
    ars: usize,
    acs: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    last: usize,
}

impl Tile {
    /// Rows `i..i + r` (1 to [`BLOCK`]) of this panel of `V` vectors; with `PREFETCH` (a
    /// panel's first block) each step asks for the panel's row [`AHEAD`] steps on.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows<const V: usize, const PREFETCH: bool>(&self, i: usize, r: usize) {
        // SAFETY (all calls): as the caller promises.
        match (r, self.last == 8) {
            (1, true) => unsafe { self.block::<1, V, PREFETCH, false>(i) },
            (2, true) => unsafe { self.block::<2, V, PREFETCH, false>(i) },
            (3, true) => unsafe { self.block::<3, V, PREFETCH, false>(i) },
            (_, true) => unsafe { self.block::<BLOCK, V, PREFETCH, false>(i) },
            (1, false) => unsafe { self.block::<1, V, PREFETCH, true>(i) },
            (2, false) => unsafe { self.block::<2, V, PREFETCH, true>(i) },
            (3, false) => unsafe { self.block::<3, V, PREFETCH, true>(i) },
            (_, false) => unsafe { self.block::<BLOCK, V, PREFETCH, true>(i) },
        }
    }

    /// Rows `i..i + R`: each block of k summed in registers, then stored, or added to what the
    /// blocks before stored (the last vector's lanes past the product, with `MASKED`, neither
    /// loaded nor stored).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn block<const R: usize, const V: usize, const PREFETCH: bool, const MASKED: bool>(&self, i: usize) {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(self.last as i32), lanes);
        let a = self.a.wrapping_add(i * self.ars);
        let mut start = 0;
        while start < self.k {
            let end = (start + self.kc).min(self.k);
            let mut acc = [[_mm256_setzero_ps(); V]; R];
            for p in start..end {
                let row = self.b.wrapping_add(p * self.ldb);
                if PREFETCH {
                    let ahead = row.wrapping_add(AHEAD * self.ldb);
                    for v in 0..V {
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(8 * v).cast());
                    }
                }
                // A loop, not `array::from_fn`: a closure does not take this function's target
                // features, and its loads would be calls.
                let mut bv = [_mm256_setzero_ps(); V];
                for (v, bv) in bv.iter_mut().enumerate() {
                    // SAFETY: row p's columns of this panel (the last vector masked to them) lie
                    // inside b.
                    *bv = unsafe { if v + 1 < V || !MASKED { _mm256_loadu_ps(row.add(8 * v)) } else { _mm256_maskload_ps(row.add(8 * v), mask) } };
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: a's element (i + r, p) lies inside the caller's operand.
                    let av = _mm256_set1_ps(unsafe { *a.add(r * self.ars + p * self.acs) });
                    for (acc, bv) in acc.iter_mut().zip(&bv) {
                        *acc = _mm256_fmadd_ps(av, *bv, *acc);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (v, acc) in acc.iter().enumerate() {
                    let out = self.c.wrapping_add((i + r) * self.ldc + 8 * v);
                    let whole = v + 1 < V || !MASKED;
                    let mut sum = *acc;
                    if start > 0 {
                        // The blocks before, summed and stored: the crate adds each block to them.
                        // SAFETY: columns of row i + r of this panel (the last vector masked to
                        // them), inside c, written by this call only.
                        sum = _mm256_add_ps(unsafe { if whole { _mm256_loadu_ps(out) } else { _mm256_maskload_ps(out, mask) } }, sum);
                    }
                    if whole {
                        // SAFETY: 8 columns of row i + r of this panel, inside c, written by this call only.
                        unsafe { _mm256_storeu_ps(out, sum) };
                    } else {
                        let mut first = [0f32; 8];
                        // SAFETY: a local array of 8 floats; then the last vector's `last` columns
                        // of row i + r, inside c, written by this call only.
                        unsafe {
                            _mm256_storeu_ps(first.as_mut_ptr(), sum);
                            std::ptr::copy_nonoverlapping(first.as_ptr(), out, self.last);
                        }
                    }
                }
            }
            start = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row count it takes, panels whole and with a ragged last vector, k in one block and
    /// in several (the crate's blocks on small and on wide products), and the left operand by rows
    /// or by columns give the matmul crate's bits, and nothing past the product's columns is
    /// written.
    #[test]
    fn product_gives_the_matmul_crate_s_bits() {
        // With AVX-512 the crate runs its AVX-512 tiles, whose block over k can differ (and this
        // kernel never runs: marnet's own does).
        if !available() || std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("SKIPPED: this kernel runs on CPUs with AVX2 and FMA but not AVX-512");
            return;
        }
        let mut rng = crate::rng::stream(5, "test", 0);
        for m in 2..=MAX_ROWS {
            for (n, k, pad) in [
                (2, 3, 0),
                (7, 5, 3),
                (8, 17, 0),
                (9, 40, 3),
                (13, 7, 0),
                (17, 300, 3),
                (24, 513, 0),
                (29, 20, 3),
                (64, 1100, 0),
                (65, 768, 3),
                (100, 1024, 0),
                (130, 2048, 3),
                (33, 2100, 0),
            ] {
                assert!(takes(m, n, k));
                let (ldb, ldc) = (n + pad, n + 2 * pad);
                let mut a = crate::rng::normal_vec(&mut rng, m * k);
                // Zeros in a (its first row by rows): sums of signed zeros.
                a[..k].fill(-0.0);
                let b = crate::rng::normal_vec(&mut rng, k * ldb);
                for [ars, acs] in [[k, 1], [1, m]] {
                    let mut c = vec![f32::NAN; m * ldc];
                    let mut want = vec![0.0f32; m * n];
                    // SAFETY: the CPU has AVX2 and FMA; a holds m x k under either strides, b k
                    // rows of ldb, c m rows of ldc, want m rows of n.
                    unsafe {
                        product(m, n, k, a.as_ptr(), ars, acs, b.as_ptr(), ldb, c.as_mut_ptr(), ldc);
                        gemm::gemm(
                            m,
                            n,
                            k,
                            want.as_mut_ptr(),
                            1,
                            n as isize,
                            false,
                            a.as_ptr(),
                            acs as isize,
                            ars as isize,
                            b.as_ptr(),
                            1,
                            ldb as isize,
                            0.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                    for i in 0..m {
                        let got: Vec<u32> = c[i * ldc..i * ldc + n].iter().map(|v| v.to_bits()).collect();
                        assert_eq!(
                            got,
                            want[i * n..(i + 1) * n].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            "{m}x{n}x{k} row {i}, a strides {ars}, {acs}"
                        );
                        assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|v| v.is_nan()), "{m}x{n}x{k}: wrote past column {n}");
                    }
                }
            }
        }
    }
}

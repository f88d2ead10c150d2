//! A product kernel for AVX-512 that reads the right-hand matrix in place, row by row.
//!
//! Each tile of the output, 6 rows by 64 columns (24 of the 32 vector registers), sums over k
//! in order: per step, 4 vectors of the right-hand row (16 floats each) and 6 left-hand values
//! broadcast, 24 fused multiply-adds. A product of 7 or 8 rows (serving's batches) takes tiles
//! of all its rows by 48 columns instead, so that each weight is read once, not by a block of 6
//! rows and again by the rest (the heads' pass at 8 rows 17% shorter on a Zen 5; BENCHMARKS.md,
//! 2026-12-07, night). Nothing is packed: the right-hand panel (64 or 48 columns of k rows)
//! stays in L2 while the tiles of rows run over it; the first tile, which reads it from memory,
//! prefetches its rows a few steps ahead, and each block of rows prefetches the next block's
//! rows of a left operand laid out by rows. On a Zen 4, the heads' 64-row products alone
//! (operands in cache, one thread) ran 10-15% faster than on the matmul crate, and a training
//! step's forward pass 4.3% faster (BENCHMARKS.md, 2026-12-06); the prefetches took a Zen 5's
//! forward pass another 11% and its backward pass 8% (2026-12-06, afternoon).
//! `MARNET_KERNEL=gemm` runs every product on the matmul crate instead, to compare (`marnet`, the
//! default). Which kernel runs a product, this one or (without AVX-512) `few_rows.rs`: `dispatch.rs`.
//!
//! A product can also bring other memory into cache as it runs ([`prefetching`]): AdamW's
//! moments and parameter rows, which the update by rows reads right after the product of their
//! gradient block.
//!
//! Every element is `fma(a[i, k-1], b[k-1, j], ... fma(a[i, 0], b[0, j], 0))`, the sum in order
//! with one rounding per step, however the output is cut into blocks, tiles or threads (the
//! test's `reference`).

/// The most rows of a product run on [`product`] (a training batch, a sampling pass of 500 rows,
/// serving's few), unless it has at most [`PANEL`] columns or its left operand at most
/// [`MAX_LHS`] elements (then any number): the ViT-B/16's products of 1576 rows did not run
/// faster on it than on the matmul crate (Zen 4).
pub const MAX_ROWS: usize = 512;

/// Columns of a tile, the width of the right operand's panels.
pub const PANEL: usize = 64;

/// Elements of a left operand small enough to stay in L2 (512 KiB) while every column panel
/// reads it: the weight gradients of training batches of up to 128 rows (1024 x 1024 x 64
/// alone, 2 threads: 117-177 GFLOP/s on the matmul crate, 194-209 here; Zen 4, BENCHMARKS.md).
pub const MAX_LHS: usize = 128 * 1024;

/// Inner dimensions up to which [`product`] is used: its column panel (64 columns of k rows)
/// then fits in L2.
pub const MAX_K: usize = 2048;

/// Whether [`product`] is used: the CPU has AVX-512F and `MARNET_KERNEL` does not say `gemm`.
pub fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        let cpu = std::arch::is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        let cpu = false;
        match std::env::var("MARNET_KERNEL").as_deref() {
            Ok("gemm") => false,
            Ok("marnet") | Err(_) => cpu,
            Ok(other) => {
                eprintln!("warning: MARNET_KERNEL={other} is neither `marnet` nor `gemm`; using {}", if cpu { "marnet" } else { "gemm" });
                cpu
            }
        }
    })
}

thread_local! {
    /// What the next [`product`] on this thread prefetches ([`prefetching`]): (address, bytes).
    static BESIDE: std::cell::Cell<[(usize, usize); 3]> = const { std::cell::Cell::new([(0, 0); 3]) };
}

#[cfg(test)]
thread_local! {
    /// The last [`product`]'s prefetches beside: (lines asked for, lines due).
    static ASKED: std::cell::Cell<(usize, usize)> = const { std::cell::Cell::new((0, 0)) };
}

/// `f`, with the first [`product`] it runs on this thread prefetching `ranges` into L2 as it goes:
/// their cache lines, one range after the other, spread evenly over the product's steps. AdamW's
/// update by rows reads a block's parameter and moments from memory right after the product of the
/// block's gradient: prefetched during it, the memory's time overlaps the arithmetic instead of
/// following it (a training step about 5% shorter on a Zen 5; BENCHMARKS.md, 2026-12-07, morning).
/// Prefetches are hints: the product's bits do not change.
pub fn prefetching<R>(ranges: [&[f32]; 3], f: impl FnOnce() -> R) -> R {
    /// Puts back what was there before (another call's ranges, or none), even if `f` panics.
    struct Restore([(usize, usize); 3]);
    impl Drop for Restore {
        fn drop(&mut self) {
            BESIDE.set(self.0);
        }
    }
    let _restore = Restore(BESIDE.replace(ranges.map(|r| (r.as_ptr() as usize, std::mem::size_of_val(r)))));
    f()
}

/// `c = a b` for `a` [m, k] (element (i, p) at `a[i ars + p acs]`), `b` [k, n] (rows `ldb`
/// apart, columns adjacent) and `c` [m, n] (rows `ldc` apart).
///
/// # Safety
/// The CPU must have AVX-512F ([`enabled`] true); every element the shapes and strides reach must
/// lie inside the allocation that `a`, `b` or `c` points into, and nothing else may read or write
/// `c`'s elements meanwhile.
#[allow(clippy::too_many_arguments)]
pub unsafe fn product(m: usize, n: usize, k: usize, a: *const f32, ars: usize, acs: usize, b: *const f32, ldb: usize, c: *mut f32, ldc: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as the caller promises.
    unsafe {
        avx512::product(m, n, k, [a, b], [ars, acs, ldb], c, ldc)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("kernel::product without AVX-512: {m} {n} {k} {a:?} {ars} {acs} {b:?} {ldb} {c:?} {ldc}")
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Rows of a tile.
    const ROWS: usize = 6;

    /// The most rows of a product that runs as one block of rows, on panels of [`FEW_PANEL`]
    /// columns (3 vectors: 24 sums in registers, as [`ROWS`] by 4).
    const FEW_ROWS: usize = 8;

    /// Columns of a tile of more than [`ROWS`] and at most [`FEW_ROWS`] rows.
    const FEW_PANEL: usize = 48;

    /// Steps of k between a prefetch of the panel's row and its use: on a Zen 5, 12 to 48 gave
    /// the same forward pass (BENCHMARKS.md, 2026-12-06, afternoon).
    const AHEAD: usize = 16;

    /// Tiles of 64 columns (48 for 7 or 8 rows; the last one narrower, its last vector masked),
    /// each run over blocks of [`ROWS`] rows and the rest.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn product(m: usize, n: usize, k: usize, [a, b]: [*const f32; 2], [ars, acs, ldb]: [usize; 3], c: *mut f32, ldc: usize) {
        let panel = if (ROWS + 1..=FEW_ROWS).contains(&m) { FEW_PANEL } else { crate::nn::cpu::kernel::PANEL };
        // Steps of the product: k for each block of rows (one block of at most FEW_ROWS, `rows`) of each panel.
        let blocks = if m <= FEW_ROWS { m.min(1) } else { m.div_ceil(ROWS) };
        let beside = Beside::new(crate::nn::cpu::kernel::BESIDE.replace([(0, 0); 3]), n.div_ceil(panel) * blocks * k);
        let mut j = 0;
        while j < n {
            let width = (n - j).min(panel);
            let mask = match width % 16 {
                0 => u16::MAX,
                w => (1u16 << w) - 1,
            };
            let t = Tile { k, a, ars, acs, b: b.wrapping_add(j), ldb, c: c.wrapping_add(j), ldc, mask, beside: &beside };
            // SAFETY: the caller's promise covers every tile inside the product.
            unsafe {
                match width.div_ceil(16) {
                    4 => t.rows::<4>(m),
                    3 => t.rows::<3>(m),
                    2 => t.rows::<2>(m),
                    _ => t.rows::<1>(m),
                }
            }
            j += width;
        }
        #[cfg(test)]
        crate::nn::cpu::kernel::ASKED.set((beside.state.get().0, beside.slots));
    }

    /// The memory a product prefetches beside its own operands (`kernel::prefetching`): slots of
    /// a cache line, the ranges one after the other, spread evenly over the product's steps (a
    /// step: one k of one block of rows). A line of each range in turn, as AdamW reads them, left
    /// AdamW slower (BENCHMARKS.md, 2026-12-07, morning).
    struct Beside {
        ranges: [(usize, usize); 3],
        /// The lines of the longest range times the ranges (0: nothing to prefetch); a shorter
        /// range's last slots ask for nothing.
        slots: usize,
        /// Steps of the product.
        steps: usize,
        /// Slots asked for so far, and `slots` a step summed past the whole steps paid for.
        state: std::cell::Cell<(usize, usize)>,
    }

    impl Beside {
        fn new(ranges: [(usize, usize); 3], steps: usize) -> Self {
            let longest = ranges.iter().map(|r| r.1.div_ceil(64)).max().unwrap_or(0);
            let slots = if steps == 0 { 0 } else { longest * ranges.len() };
            Self { ranges, slots, steps, state: std::cell::Cell::new((0, 0)) }
        }

        /// Asks for slot `s`'s line into L2, if its range reaches it.
        #[target_feature(enable = "avx512f")]
        #[inline]
        fn prefetch(&self, s: usize) {
            let per_range = self.slots / self.ranges.len();
            let ((start, len), offset) = (self.ranges[s / per_range], s % per_range * 64);
            if offset < len {
                _mm_prefetch::<_MM_HINT_T1>((start + offset) as *const i8);
            }
        }
    }

    /// A column tile: its first column of `b` and `c`, the mask of its last vector, and the memory
    /// the product prefetches beside.
    struct Tile<'a> {
        beside: &'a Beside,
        k: usize,
        a: *const f32,
        ars: usize,
        acs: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        mask: u16,
    }

    impl Tile<'_> {
        /// All `m` rows of this tile of `V` vectors. The first block of rows finds the panel in
        /// memory (a layer's weights, read once a pass): it prefetches the rows it reads next.
        #[target_feature(enable = "avx512f")]
        unsafe fn rows<const V: usize>(&self, m: usize) {
            if m <= FEW_ROWS {
                // One block: at most ROWS rows, or 7 or 8 on a FEW_PANEL-column panel (`product`).
                // SAFETY: rows 0..m lie inside the product.
                return unsafe { self.few::<V, true>(0, m) };
            }
            let first = m.min(ROWS);
            // SAFETY (all calls): rows i.. lie inside the product.
            unsafe { self.few::<V, true>(0, first) };
            let mut i = first;
            while i + ROWS <= m {
                unsafe { self.block::<ROWS, V, false>(i) };
                i += ROWS;
            }
            unsafe { self.few::<V, false>(i, m - i) };
        }

        /// Rows `i..i + r`, `r` at most [`ROWS`], or [`FEW_ROWS`] on tiles of at most
        /// [`FEW_PANEL`] columns.
        #[target_feature(enable = "avx512f")]
        unsafe fn few<const V: usize, const PREFETCH: bool>(&self, i: usize, r: usize) {
            // SAFETY (all calls): as the caller promises.
            match r {
                0 => {}
                1 => unsafe { self.block::<1, V, PREFETCH>(i) },
                2 => unsafe { self.block::<2, V, PREFETCH>(i) },
                3 => unsafe { self.block::<3, V, PREFETCH>(i) },
                4 => unsafe { self.block::<4, V, PREFETCH>(i) },
                5 => unsafe { self.block::<5, V, PREFETCH>(i) },
                6 => unsafe { self.block::<ROWS, V, PREFETCH>(i) },
                7 if V * 16 <= FEW_PANEL => unsafe { self.block::<7, V, PREFETCH>(i) },
                8 if V * 16 <= FEW_PANEL => unsafe { self.block::<FEW_ROWS, V, PREFETCH>(i) },
                _ => unreachable!("a block of {r} rows of {V} vectors"),
            }
        }

        /// Rows `i..i + R`: the sum over k in registers, then stored; with `PREFETCH`, each step
        /// first asks for the panel's row [`AHEAD`] steps on (prefetches are hints: no fault past
        /// the end of an operand).
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn block<const R: usize, const V: usize, const PREFETCH: bool>(&self, i: usize) {
            let mask = |v: usize| if v + 1 == V { self.mask } else { u16::MAX };
            let a = self.a.wrapping_add(i * self.ars);
            let mut acc = [[_mm512_setzero_ps(); V]; R];
            // The next block's rows of a (when each lies in order: a weight, in an input
            // gradient `W dy^T`, read once from memory), a cache line of each every 16 steps.
            // A block of more than ROWS rows is a whole product: no next block.
            let next = self.a.wrapping_add((i + ROWS) * self.ars);
            let ahead_in_a = self.acs == 1 && R <= ROWS;
            // Each step owes `slots / steps` of the prefetches beside, paid as whole slots fall due.
            let (slots, steps) = (self.beside.slots, self.beside.steps);
            let (mut asked, mut owed) = self.beside.state.get();
            for p in 0..self.k {
                let row = self.b.wrapping_add(p * self.ldb);
                if slots != 0 {
                    owed += slots;
                    while owed >= steps {
                        owed -= steps;
                        self.beside.prefetch(asked);
                        asked += 1;
                    }
                }
                if ahead_in_a && p % 16 == 0 {
                    for r in 0..ROWS {
                        _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(r * self.ars + p).cast());
                    }
                }
                if PREFETCH {
                    let ahead = row.wrapping_add(AHEAD * self.ldb);
                    for v in 0..V {
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(16 * v).cast());
                    }
                }
                // SAFETY: row p's columns of this tile (the last vector masked to them) and a's
                // elements (i + r, p) lie inside the caller's operands.
                let bv: [__m512; V] = std::array::from_fn(|v| unsafe { _mm512_maskz_loadu_ps(mask(v), row.add(16 * v)) });
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(unsafe { *a.add(r * self.ars + p * self.acs) });
                    for (acc, bv) in acc.iter_mut().zip(&bv) {
                        *acc = _mm512_fmadd_ps(av, *bv, *acc);
                    }
                }
            }
            if slots != 0 {
                self.beside.state.set((asked, owed));
            }
            for (r, acc) in acc.iter().enumerate() {
                for (v, acc) in acc.iter().enumerate() {
                    // SAFETY: element (i + r, 16 v..) of this tile, inside c, written by this call only.
                    unsafe { _mm512_mask_storeu_ps(self.c.add((i + r) * self.ldc + 16 * v), mask(v), *acc) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bits [`product`] gives, one element at a time.
    fn reference(m: usize, n: usize, k: usize, a: &[f32], [ars, acs]: [usize; 2], b: &[f32], ldb: usize) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for (i, row) in c.chunks_exact_mut(n.max(1)).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = (0..k).fold(0.0f32, |acc, p| a[i * ars + p * acs].mul_add(b[p * ldb + j], acc));
            }
        }
        c
    }

    /// Every shape's remainders (rows past the 6-row tiles, columns past 64 and past 16, a last
    /// panel of whole vectors; 7 and 8 rows on 48-column tiles, whole or masked), empty ones,
    /// strided operands and a product prefetching other memory give the reference's bits.
    #[test]
    fn product_gives_the_in_order_sum_s_bits() {
        if !enabled() {
            eprintln!("SKIPPED: no AVX-512 on this CPU");
            return;
        }
        let mut rng = crate::rng::stream(3, "test", 0);
        for (m, n, k) in [
            (1, 1, 1),
            (6, 64, 5),
            (7, 65, 9),
            (13, 130, 33),
            (64, 172, 17),
            (5, 15, 300),
            (7, 48, 5),
            (7, 112, 5),
            (8, 100, 20),
            (8, 96, 3),
            (8, 80, 17),
            (7, 40, 33),
            (7, 10, 3),
            (0, 20, 3),
            (3, 0, 3),
            (3, 20, 0),
        ] {
            let (ldb, ldc) = (n + 3, n + 5);
            let a = crate::rng::normal_vec(&mut rng, m * k);
            let b = crate::rng::normal_vec(&mut rng, k * ldb);
            // Strided operands, and the product prefetching other memory beside.
            for (strides, beside) in [([k, 1], false), ([1, m], false), ([k, 1], true)] {
                let mut c = vec![f32::NAN; m * ldc];
                let other = vec![1.0f32; 3 * (m * n + 40)];
                let ranges = [&other[..m * n + 40], &other[m * n + 40..2 * (m * n + 40)], &other[2 * (m * n + 40)..]];
                // SAFETY: a holds m x k under either strides, b k rows of ldb, c m rows of ldc.
                let mut run = || unsafe { product(m, n, k, a.as_ptr(), strides[0], strides[1], b.as_ptr(), ldb, c.as_mut_ptr(), ldc) };
                if beside {
                    prefetching(ranges, run);
                    // Every line of the ranges asked for, once (none where the product has no steps).
                    let lines = if m * n * k == 0 { 0 } else { 3 * (m * n + 40).div_ceil(16) };
                    assert_eq!(ASKED.get(), (lines, lines), "{m}x{n}x{k}: lines asked for, lines due");
                } else {
                    run()
                }
                let want = reference(m, n, k, &a, strides, &b, ldb);
                for i in 0..m {
                    let got: Vec<u32> = c[i * ldc..i * ldc + n].iter().map(|v| v.to_bits()).collect();
                    assert_eq!(got, want[i * n..(i + 1) * n].iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{m}x{n}x{k} row {i}");
                    assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|v| v.is_nan()), "{m}x{n}x{k}: wrote past column {n}");
                }
            }
        }
    }
}

//! CPU building blocks of the hand-written kernels (AdamW, linear, activations, convolutions):
//! views of candle's CPU storage (`view.rs`), and matrix products, split across threads or on
//! the calling thread.

mod dispatch;
#[cfg(target_arch = "x86_64")]
mod few_rows;
pub mod kernel;
pub mod log;
mod view;

pub use view::{f32_rows, f32_slice, f32_slice_mut, with_f32, with_f32_rows, with_f32_rows_all};

/// A read-only matrix in a slice: element (i, j) at `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix with `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Self { data, row_stride: cols, col_stride: 1 }
    }

    /// A matrix whose rows are `row_stride` floats apart ([`f32_rows`]).
    pub fn strided_rows(data: &'a [f32], row_stride: usize) -> Self {
        Self { data, row_stride, col_stride: 1 }
    }

    /// The transpose of a row-major matrix with `cols` columns (a view, no copy).
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self { data, row_stride: 1, col_stride: cols }
    }

    fn check(&self, rows: usize, cols: usize, what: &str) {
        let last = (rows.max(1) - 1) * self.row_stride + (cols.max(1) - 1) * self.col_stride;
        assert!(rows == 0 || cols == 0 || last < self.data.len(), "matmul: {what} is smaller than {rows}x{cols}");
    }
}

/// A destination shared by threads that each write their own disjoint part of it.
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: users write disjoint parts only (`matmul`: a block each; attention: a head each;
// `transpose`: a block of rows each; the convolutions of `nn::im2col`: a tile's block each).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    pub(crate) fn get(&self) -> *mut f32 {
        self.0
    }
}

/// Columns below which the output is split by rows instead.
const MIN_SPLIT_COLS: usize = 64;

/// Rows of the products whose output may be cut into two blocks of columns per thread
/// ([`matmul_padded`]): a training batch's.
const FEW_ROWS: std::ops::RangeInclusive<usize> = 32..=256;

/// Narrowest block of columns, the last one included, of that finer cut; it is taken only when
/// every block is at least this wide. (Blocks of at most 64 columns take the matmul crate's
/// small-size path, which cuts the sum over k at other points: other bits.)
const MIN_FINE_COLS: usize = 128;

/// Floating-point operations done by [`matmul`] in this process (`marnet bench` reports GFLOP/s).
static MATMUL_FLOP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The count behind [`MATMUL_FLOP`]: `2 m n k` summed over all products so far.
pub fn matmul_flop() -> u64 {
    MATMUL_FLOP.load(std::sync::atomic::Ordering::Relaxed)
}

/// Adds the flops of a product run outside [`matmul`] (attention's) to [`matmul_flop`].
pub fn count_flop(flop: u64) {
    MATMUL_FLOP.fetch_add(flop, std::sync::atomic::Ordering::Relaxed);
}

/// `lhs rhs` as a row-major [m, n] matrix, for `lhs` [m, k] and `rhs` [k, n].
///
/// The output is cut into one block of columns (or of rows, when it has few columns) per
/// thread (two for the wide products of 32 to 256 rows), each a single-threaded product: measured
/// on the MARNet layer shapes (64 rows) this runs at ~1.4x the rate of the matmul crate's own
/// parallel split.
pub fn matmul(m: usize, n: usize, k: usize, lhs: MatRef, rhs: MatRef) -> Vec<f32> {
    matmul_then(m, n, k, lhs, rhs, |_, _, _| {})
}

/// [`matmul`], then `finish(row, first_column, values)` on each row's part of each block, by
/// the thread that ran the block once its product is done (a bias, an activation): no pass of its own.
pub fn matmul_then(m: usize, n: usize, k: usize, lhs: MatRef, rhs: MatRef, finish: impl Fn(usize, usize, &mut [f32]) + Sync) -> Vec<f32> {
    matmul_padded(m, n, k, lhs, rhs, n, finish)
}

/// [`matmul_then`] with the output's rows `row_stride` (>= n) apart: each row followed by
/// `row_stride - n` zeros (a padded weight's gradient, [`crate::nn::padded`]).
pub fn matmul_padded(m: usize, n: usize, k: usize, lhs: MatRef, rhs: MatRef, row_stride: usize, finish: impl Fn(usize, usize, &mut [f32]) + Sync) -> Vec<f32> {
    use rayon::prelude::*;
    assert!(row_stride >= n, "matmul: output rows {row_stride} apart hold {n} columns");
    lhs.check(m, k, "lhs");
    rhs.check(k, n, "rhs");
    let flop = (2 * m * n * k) as u64;
    count_flop(flop);
    let ld = row_stride;
    if m == 0 || k == 0 || n == 0 {
        let mut dst = vec![0.0; m * ld];
        dst.chunks_exact_mut(ld.max(1)).enumerate().for_each(|(r, row)| finish(r, 0, &mut row[..n]));
        return dst;
    }
    let mut dst: Vec<f32> = Vec::with_capacity(m * ld);
    let threads = candle_core::utils::get_num_threads().max(1);
    let by_cols = cuts_by_columns(m, n, threads);
    let len = if by_cols { n } else { m };
    // A training batch's wide products (64 rows) get two blocks per thread: a thread that starts
    // its block late (busy with an AdamW pass, or waking) then leaves the other one a block to
    // take instead of waiting for it (the forward pass 5% faster; BENCHMARKS.md, 2026-12-05,
    // later). Every block wider than 64 columns is the same product of its columns however wide:
    // the same bits.
    let fine = (by_cols && threads > 1 && FEW_ROWS.contains(&m)).then(|| n.div_ceil(2 * threads).next_multiple_of(16));
    // With 2t blocks of b columns the last one holds n - (2t - 1) b <= b (none when that is
    // negative): when it is wide enough, so is every block.
    let fine = fine.filter(|&b| n.checked_sub((2 * threads - 1) * b).is_some_and(|last| last >= MIN_FINE_COLS));
    let block = fine.unwrap_or_else(|| len.div_ceil(threads).next_multiple_of(16));
    let out = SendPtr(dst.as_mut_ptr());
    let on_kernel = uses_kernel(m, n, k, &rhs);
    let run = |start: usize| {
        let size = block.min(len - start);
        let (rows, cols) = if by_cols { (m, size) } else { (size, n) };
        let (lhs_row, rhs_col, dst_off) = if by_cols { (0, start, start) } else { (start, 0, start * ld) };
        // SAFETY: the operands' bounds were checked above and `dst` has room for m rows of ld;
        // the blocks write disjoint parts of it.
        unsafe { block_into(rows, cols, k, out.get().add(dst_off), ld, lhs, lhs_row, rhs, rhs_col, on_kernel) };
        let (row0, col0) = if by_cols { (0, start) } else { (start, 0) };
        for r in row0..row0 + rows {
            // SAFETY: this block's part of row r, written by the product above and by no other thread.
            finish(r, col0, unsafe { std::slice::from_raw_parts_mut(out.get().add(r * ld + col0), cols) });
        }
        if ld > n && (!by_cols || start + size == n) {
            // This block holds the rows' ends: zero their padding.
            for r in row0..row0 + rows {
                // SAFETY: row r's padding, after the last block's columns, written by this thread only.
                unsafe { std::ptr::write_bytes(out.get().add(r * ld + n), 0, ld - n) };
            }
        }
    };
    let starts: Vec<usize> = (0..len).step_by(block.max(1)).collect();
    let t0 = log::timer();
    if starts.len() <= 1 {
        starts.into_iter().for_each(run);
    } else {
        starts.into_par_iter().for_each(run);
    }
    log::note(t0, (m, n, k), false, flop);
    // SAFETY: every element was written above, padding included.
    unsafe { dst.set_len(m * ld) };
    dst
}

/// Whether [`matmul_rows_into`]'s blocks of at least 2 rows give the bits of [`matmul_padded`]'s
/// [m, n] product over k: `3 <= k <= 512`, `n >= 128`, and `matmul_padded` cutting by columns.
/// Every product of the matmul crate then sums over k in one run, in order, from zero; a block of
/// 1 row (a cut by rows can leave one) takes its vector path, which can give -0 for +0.
/// ([`kernel::product`]'s bits never depend on the cut.)
pub fn rows_give_the_same_bits(m: usize, n: usize, k: usize) -> bool {
    let threads = candle_core::utils::get_num_threads().max(1);
    (3..=512).contains(&k) && n >= 128 && cuts_by_columns(m, n, threads)
}

/// A right operand [k, n] held as its transpose (`stored`, row-major [n, k]) copied by rows where
/// an [m, n] product over k runs on [`dispatch::product`], which needs its columns adjacent; `None`
/// where the matmul crate runs it, which reads the transposed view as it is.
pub fn rhs_rows_for_kernel(m: usize, n: usize, k: usize, stored: &[f32]) -> Option<Vec<f32>> {
    dispatch::runs_here(m, n, k).then(|| transpose(stored, n, k))
}

/// [`dispatch::runs_here`] for `rhs` as it is laid out.
fn uses_kernel(m: usize, n: usize, k: usize, rhs: &MatRef) -> bool {
    rhs.col_stride == 1 && dispatch::runs_here(m, n, k)
}

/// Whether [`matmul_padded`] cuts an [m, n] output into blocks of columns (else of rows).
fn cuts_by_columns(m: usize, n: usize, threads: usize) -> bool {
    n >= MIN_SPLIT_COLS * threads || n >= m
}

/// Rows `first..` of `lhs rhs` (`lhs` [m, k], `rhs` [k, n]) into `dst`, on the calling thread:
/// as many rows as `dst` holds, each `row_stride` (>= n) floats with zeros after column n (the
/// bits of [`matmul_padded`]'s rows where [`rows_give_the_same_bits`] says so).
#[allow(clippy::too_many_arguments)]
pub fn matmul_rows_into(first: usize, dst: &mut [f32], row_stride: usize, m: usize, n: usize, k: usize, lhs: MatRef, rhs: MatRef) {
    assert!(row_stride >= n && dst.len().is_multiple_of(row_stride.max(1)), "matmul: output rows {row_stride} apart hold {n} columns");
    let rows = dst.len() / row_stride.max(1);
    assert!(first + rows <= m, "matmul: rows {first}..{} of {m}", first + rows);
    lhs.check(m, k, "lhs");
    rhs.check(k, n, "rhs");
    let flop = (2 * rows * n * k) as u64;
    count_flop(flop);
    let t0 = log::timer();
    // SAFETY: the operands' bounds were checked above; `dst` holds rows x row_stride floats.
    unsafe { block_into(rows, n, k, dst.as_mut_ptr(), row_stride, lhs, first, rhs, 0, uses_kernel(m, n, k, &rhs)) };
    log::note(t0, (m, n, k), true, flop);
    dst.chunks_exact_mut(row_stride.max(1)).for_each(|row| row[n..].fill(0.0));
}

/// `dst = lhs rhs` for `lhs` [m, k] and `rhs` [k, n] on the calling thread, `dst` rows `ld`
/// (>= n) apart: on [`dispatch::product`] where it suits the shape, else on the matmul crate (callers
/// that split a larger product across threads themselves: the CNN encoders' convolutions).
///
/// # Safety
/// `dst` must hold `m` rows of `ld` floats (the last one `n`) that nothing else reads or writes
/// meanwhile.
pub(crate) unsafe fn product_here(m: usize, n: usize, k: usize, dst: *mut f32, ld: usize, lhs: MatRef, rhs: MatRef) {
    assert!(ld >= n, "product: output rows {ld} apart hold {n} columns");
    lhs.check(m, k, "lhs");
    rhs.check(k, n, "rhs");
    count_flop((2 * m * n * k) as u64);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // SAFETY: as the caller promises, `dst` holds m rows of ld.
        (0..m).for_each(|r| unsafe { std::ptr::write_bytes(dst.add(r * ld), 0, n) });
        return;
    }
    // SAFETY: the operands' bounds were checked above; `dst` as the caller promises.
    unsafe { block_into(m, n, k, dst, ld, lhs, 0, rhs, 0, uses_kernel(m, n, k, &rhs)) }
}

/// One thread's [rows, cols] block of a product over k into `dst` (rows `ld` apart): `lhs`'s
/// rows from `lhs_row`, `rhs`'s columns from `rhs_col` ([`matmul_padded`]'s blocks and
/// [`matmul_rows_into`]'s rows are the same call), on [`dispatch::product`] where `on_kernel` (the
/// whole product's [`uses_kernel`]) and the block suits it, else on the matmul crate.
///
/// # Safety
/// As [`gemm_into`]'s: the operands' blocks lie inside their slices, and `dst` holds `rows` rows
/// of `ld` that nothing else reads or writes meanwhile; `on_kernel` only where [`uses_kernel`]
/// holds for `rhs` (the CPU has the kernel's features, `rhs`'s columns are adjacent).
#[allow(clippy::too_many_arguments)]
unsafe fn block_into(rows: usize, cols: usize, k: usize, dst: *mut f32, ld: usize, lhs: MatRef, lhs_row: usize, rhs: MatRef, rhs_col: usize, on_kernel: bool) {
    let (l, r) = (lhs.data.as_ptr(), rhs.data.as_ptr());
    let (l, r) = (l.wrapping_add(lhs_row * lhs.row_stride), r.wrapping_add(rhs_col * rhs.col_stride));
    if on_kernel && dispatch::takes_block(rows, cols, k) {
        // SAFETY: as the caller promises, `uses_kernel` holds: the CPU has the kernel's features.
        return unsafe { dispatch::product(rows, cols, k, l, lhs.row_stride, lhs.col_stride, r, rhs.row_stride, dst, ld) };
    }
    // SAFETY: as the caller promises.
    unsafe { gemm_into(rows, cols, k, dst, ld, l, [lhs.col_stride, lhs.row_stride], r, [rhs.col_stride, rhs.row_stride], gemm::Parallelism::None) }
}

/// `dst = lhs rhs` for `lhs` [m, k] and `rhs` [k, n] given by their pointers and (column, row)
/// strides, and `dst` rows `dst_row_stride` apart, split as `par` says (the layers pass `None`:
/// one thread, their own split is in [`matmul_then`]). Only writes `dst`.
///
/// # Safety
/// Every element the shapes and strides reach must lie inside live allocations, and nothing else
/// may read or write `dst`'s elements meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_into(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_row_stride: usize,
    lhs: *const f32,
    lhs_strides: [usize; 2],
    rhs: *const f32,
    rhs_strides: [usize; 2],
    par: gemm::Parallelism,
) {
    let [lcs, lrs] = lhs_strides.map(|s| s as isize);
    let [rcs, rrs] = rhs_strides.map(|s| s as isize);
    // SAFETY: as the caller promises; gemm without `read_dst` only writes the destination.
    unsafe { gemm::gemm(m, n, k, dst, 1, dst_row_stride as isize, false, lhs, lcs, lrs, rhs, rcs, rrs, 0.0, 1.0, false, false, false, par) }
}

/// `src^T` for a row-major `src` [rows, cols], in 8x8 tiles; a large one split across threads
/// by blocks of `src`'s rows (the linear layers' input gradients: on one thread, about 0.1 ms of
/// a training step while the other thread waited; BENCHMARKS.md, 2026-12-05, later).
pub fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    use rayon::prelude::*;
    assert_eq!(src.len(), rows * cols, "transpose: {rows}x{cols} does not match the data");
    const TILE: usize = 8;
    let mut dst: Vec<f32> = Vec::with_capacity(rows * cols);
    let out = SendPtr(dst.as_mut_ptr());
    let tiles = |r_start: usize, r_end: usize| {
        for r0 in (r_start..r_end).step_by(TILE) {
            for c0 in (0..cols).step_by(TILE) {
                for c in c0..(c0 + TILE).min(cols) {
                    for r in r0..(r0 + TILE).min(r_end) {
                        // SAFETY: r < rows and c < cols, so both indices are in bounds; (c, r) for r in
                        // this block of rows is written by this block only.
                        unsafe { *out.get().add(c * rows + r) = *src.get_unchecked(r * cols + c) };
                    }
                }
            }
        }
    };
    let threads = rayon::current_num_threads().max(1);
    let block = rows.div_ceil(threads).next_multiple_of(TILE);
    // One block (one thread, or few rows) runs here.
    if rows * cols >= PARALLEL_TRANSPOSE_MIN && block < rows {
        (0..rows).into_par_iter().step_by(block).for_each(|r| tiles(r, (r + block).min(rows)));
    } else {
        tiles(0, rows);
    }
    // SAFETY: the loops above wrote every (c, r).
    unsafe { dst.set_len(rows * cols) };
    dst
}

/// Elements from which [`transpose`] splits across threads.
const PARALLEL_TRANSPOSE_MIN: usize = 1 << 15;

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: MatRef, b: MatRef) -> Vec<f32> {
        let at = |x: MatRef, i: usize, j: usize| x.data[i * x.row_stride + j * x.col_stride];
        (0..m * n).map(|ij| (0..k).map(|l| at(a, ij / n, l) * at(b, l, ij % n)).sum()).collect()
    }

    /// Every split (by columns, by rows, one block) and transposed operands agree with the definition.
    #[test]
    fn matmul_matches_the_definition() {
        let mut rng = crate::rng::stream(1, "test", 0);
        for (m, n, k) in [(3, 5, 4), (64, 200, 33), (300, 20, 17), (1, 1, 1), (70, 130, 1), (4, 6, 0)] {
            let a = crate::rng::normal_vec(&mut rng, m * k);
            let b = crate::rng::normal_vec(&mut rng, k * n);
            let bt = transpose(&b, k, n);
            for rhs in [MatRef::rows(&b, n), MatRef::transposed(&bt, k)] {
                let want = naive(m, n, k, MatRef::rows(&a, k), rhs);
                let got = matmul(m, n, k, MatRef::rows(&a, k), rhs);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-4 * (1.0 + w.abs()), "{m}x{n}x{k}: {g} vs {w}");
                }
                // `finish` sees every element once, with its row and column.
                let then =
                    matmul_then(m, n, k, MatRef::rows(&a, k), rhs, |r, c, row| row.iter_mut().enumerate().for_each(|(j, v)| *v += (1000 * r + c + j) as f32));
                assert!(then.iter().zip(&got).enumerate().all(|(i, (t, g))| *t == g + (1000 * (i / n) + i % n) as f32), "{m}x{n}x{k}: finish");
            }
        }
    }

    /// The finer cut of a training batch's wide products gives the bits of one block per
    /// thread, padded rows included: each block of the output, computed alone, is the same
    /// product of its columns (k > 512, where the matmul crate cuts the sum over k).
    #[test]
    fn two_blocks_per_thread_give_the_same_bits() {
        let threads = candle_core::utils::get_num_threads().max(1);
        let mut rng = crate::rng::stream(6, "test", 0);
        let (n, k) = (256 * threads.max(2), 600);
        for m in [64, 200] {
            let (a, b) = (crate::rng::normal_vec(&mut rng, m * k), crate::rng::normal_vec(&mut rng, k * n));
            let (lhs, rhs) = (MatRef::rows(&a, k), MatRef::rows(&b, n));
            let ld = n + 16;
            let got = matmul_padded(m, n, k, lhs, rhs, ld, |_, _, _| {});
            // One thread's product of each block of the old cut (one block per thread).
            let block = n.div_ceil(threads).next_multiple_of(16);
            let mut want = vec![f32::NAN; m * ld];
            for start in (0..n).step_by(block) {
                let cols = block.min(n - start);
                // SAFETY: the block's columns of m rows ld apart lie inside `want`, the operands' inside `a` and `b`.
                unsafe { block_into(m, cols, k, want.as_mut_ptr().add(start), ld, lhs, 0, rhs, start, uses_kernel(m, n, k, &rhs)) };
            }
            want.chunks_exact_mut(ld).for_each(|row| row[n..].fill(0.0));
            assert!(got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits()), "{m} x {n} x {k} on {threads} threads");
        }
    }

    #[test]
    fn transpose_round_trips() {
        let x: Vec<f32> = (0..35).map(|i| i as f32).collect();
        let t = transpose(&x, 5, 7);
        assert_eq!(t[1], x[7]); // t[0][1] = x[1][0]
        assert_eq!(transpose(&t, 7, 5), x);
        // Large enough to split across threads, with rows not a multiple of the blocks.
        let (rows, cols) = (1003, 70);
        let x: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let t = pool.install(|| transpose(&x, rows, cols));
        assert!((0..rows * cols).all(|i| t[(i % cols) * rows + i / cols] == x[i]));
    }
}

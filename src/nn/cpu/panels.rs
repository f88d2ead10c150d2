//! A frozen weight stored panel by panel for [`kernel::product`]: its columns in panels of
//! [`kernel::PANEL`], each panel's k rows one after the other in memory.
//!
//! The kernel reads a panel row by row, 256 bytes of each row of the weight, rows 4 KiB apart in
//! a [1024, 1024] weight. A serving batch's sampling step (8 rows, the denoiser's four layers,
//! 11 MB of weights) is bound by that reading; packed, the panel is one run of memory. With the
//! pool kept awake through the sampling ([`crate::model::marnet::Marnet::predict`]), `serve`'s heads
//! took 2.1-2.3 ms a pass of 7.8 images instead of 3.5-3.9 (BENCHMARKS.md, 2026-12-07). Packing
//! reads the weight once, so it pays only where a weight serves many products: a loaded
//! bundle's denoiser, ten or more a request.
//!
//! The products give the bits of [`super::matmul_then`]'s on the weight as it is: each element
//! is the kernel's sum over k in order, however the columns are cut.

use super::{MatRef, SendPtr, count_flop, kernel, log, runs_on_kernel};
use std::sync::Arc;

/// Rows `first..first + k` of a weight [k_all, n] packed by [`Panels::pack`] (a view of the
/// packed rows: [`Panels::rows`]).
#[derive(Clone)]
pub struct Panels {
    data: Arc<Vec<f32>>,
    /// Rows of every packed panel.
    k_all: usize,
    first: usize,
    k: usize,
    n: usize,
}

impl std::fmt::Debug for Panels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Panels {{ k: {}, n: {}, rows {}.. of {} }}", self.k, self.n, self.first, self.k_all)
    }
}

impl Panels {
    /// `w` [k, n] panel by panel, where [`kernel::product`] runs (`None` elsewhere: the CPU has
    /// no AVX-512, or `MARNET_KERNEL=gemm`).
    pub fn pack(w: MatRef, k: usize, n: usize) -> Option<Panels> {
        if !kernel::enabled() {
            return None;
        }
        w.check(k, n, "weight");
        let mut data = Vec::with_capacity(k * n);
        for j in (0..n).step_by(kernel::PANEL) {
            let width = (n - j).min(kernel::PANEL);
            for r in 0..k {
                let row = r * w.row_stride + j * w.col_stride;
                data.extend((0..width).map(|c| w.data[row + c * w.col_stride]));
            }
        }
        Some(Panels { data: Arc::new(data), k_all: k, first: 0, k, n })
    }

    /// Rows `start..start + k` of this weight (no copy): the layer cut by input blocks.
    pub fn rows(&self, start: usize, k: usize) -> Panels {
        assert!(start + k <= self.k, "panels: rows {start}..{} of {}", start + k, self.k);
        Panels { first: self.first + start, k, ..self.clone() }
    }

    /// [k, n].
    pub fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// Whether an m-row product runs here: where [`super::matmul_then`] would run it on the kernel.
    pub fn fits(&self, m: usize) -> bool {
        runs_on_kernel(m, self.n, self.k)
    }

    /// [`super::matmul_then`] for `lhs` [m, k] and this weight: the output cut into blocks of
    /// whole panels (two per thread when there are enough), and by rows too when there are fewer
    /// panels than threads; `finish(row, first_column, values)` on each row's part of a block by
    /// the thread that ran it.
    pub fn matmul_then(&self, m: usize, lhs: MatRef, finish: impl Fn(usize, usize, &mut [f32]) + Sync) -> Vec<f32> {
        use rayon::prelude::*;
        assert!(self.fits(m), "panels: a product of {m} rows by [{}, {}] does not run on the kernel", self.k, self.n);
        lhs.check(m, self.k, "lhs");
        let (k, n) = (self.k, self.n);
        let flop = (2 * m * n * k) as u64;
        count_flop(flop);
        let mut dst: Vec<f32> = Vec::with_capacity(m * n);
        let out = SendPtr(dst.as_mut_ptr());
        let panels = n.div_ceil(kernel::PANEL);
        let threads = candle_core::utils::get_num_threads().max(1);
        let col_blocks = if panels >= 4 * threads { 2 * threads } else { threads.min(panels) };
        let per_block = panels.div_ceil(col_blocks.max(1)).max(1) * kernel::PANEL;
        // Rows in blocks of whole 6-row tiles, so that every thread has a block.
        let row_blocks = threads.div_ceil(panels.div_ceil(per_block / kernel::PANEL).max(1));
        let rows_per_block = m.div_ceil(row_blocks).next_multiple_of(6).max(6);
        let run = |(r0, c0): (usize, usize)| {
            let (r1, c1) = ((r0 + rows_per_block).min(m), (c0 + per_block).min(n));
            let a = lhs.data[r0 * lhs.row_stride..].as_ptr();
            for j in (c0..c1).step_by(kernel::PANEL) {
                let width = (n - j).min(kernel::PANEL);
                let panel = &self.data[j * self.k_all + self.first * width..][..k * width];
                // SAFETY: the kernel is enabled (`fits`); lhs holds m x k (checked), so rows
                // r0..r1 from `a`; the panel k rows of `width`; `dst` m rows of n, of which rows
                // r0..r1, columns j..j + width, this block alone writes.
                unsafe { kernel::product(r1 - r0, width, k, a, lhs.row_stride, lhs.col_stride, panel.as_ptr(), width, out.get().add(r0 * n + j), n) };
            }
            for r in r0..r1 {
                // SAFETY: this block's part of row r, written above and by no other thread.
                finish(r, c0, unsafe { std::slice::from_raw_parts_mut(out.get().add(r * n + c0), c1 - c0) });
            }
        };
        let t0 = log::timer();
        let starts: Vec<(usize, usize)> = (0..m).step_by(rows_per_block).flat_map(|r| (0..n).step_by(per_block).map(move |c| (r, c))).collect();
        if m == 0 || k == 0 {
            // The kernel's empty sum: zeros, as the product gives.
            dst.resize(m * n, 0.0);
            dst.chunks_exact_mut(n.max(1)).enumerate().for_each(|(r, row)| finish(r, 0, row));
            return dst;
        }
        match starts.len() {
            0 | 1 => starts.into_iter().for_each(run),
            _ => starts.into_par_iter().for_each(run),
        }
        log::note(t0, (m, n, k), false, flop);
        // SAFETY: the blocks wrote every element.
        unsafe { dst.set_len(m * n) };
        dst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packed products, of the whole weight and of row blocks of it, give the bits of the
    /// products on the weight as it is, with the same finishing: widths that leave a narrow last
    /// panel, one panel for more rows than a tile (cut by rows too), and a weight whose rows lie
    /// further apart than its width (padded) included.
    #[test]
    fn packed_products_give_the_bits_of_the_plain_ones() {
        let mut rng = crate::rng::stream(5, "test", 0);
        for (m, n, k, ldw) in
            [(8, 1024, 384, 1024), (1, 70, 9, 70), (13, 130, 33, 146), (6, 64, 300, 64), (40, 50, 17, 50), (3, 20, 1, 20), (0, 20, 3, 20), (4, 33, 0, 33)]
        {
            let padded = crate::rng::normal_vec(&mut rng, k * ldw);
            let w: Vec<f32> = padded.chunks_exact(ldw.max(1)).flat_map(|row| row[..n].to_vec()).collect();
            let x = crate::rng::normal_vec(&mut rng, m * k);
            let Some(p) = Panels::pack(MatRef::strided_rows(&padded, ldw), k, n) else {
                eprintln!("SKIPPED: no AVX-512 on this CPU");
                return;
            };
            let finish = |r: usize, c: usize, y: &mut [f32]| y.iter_mut().enumerate().for_each(|(i, y)| *y = (*y + (r * 7 + c + i) as f32).max(0.0));
            let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            let want = super::super::matmul_then(m, n, k, MatRef::rows(&x, k), MatRef::rows(&w, n), finish);
            assert_eq!(bits(p.matmul_then(m, MatRef::rows(&x, k), finish)), bits(want), "{m}x{n}x{k}");
            // Rows 1..k-1 of the weight against columns 1..k-1 of x.
            if k > 2 && m > 0 {
                let part = p.rows(1, k - 2);
                let want = super::super::matmul_then(m, n, k - 2, MatRef::strided_rows(&x[1..], k), MatRef::rows(&w[n..], n), finish);
                assert_eq!(part.dims(), (k - 2, n));
                assert_eq!(bits(part.matmul_then(m, MatRef::strided_rows(&x[1..], k), finish)), bits(want), "{m}x{n}x{k}, rows 1..");
            }
        }
    }
}

//! Dense 2-D convolutions on the CPU as matrix products over tiles of output pixels.
//!
//! For each image and tile of its output pixels, the tile's im2col columns (one row per input
//! channel and filter tap, one column per output pixel) are built from the input's rows, a
//! segment copied per tap and output row, zeros where the filter overhangs the input. One
//! product with the weight `[out, in k_h k_w]` (its own layout: no copy) on the calling thread
//! writes the tile's block of the output in place, and the block's bias, residual and activation
//! follow while it is in cache. A 1x1 convolution at stride 1 without padding reads the input
//! itself as its columns. Tiles hold a fixed number of pixels (by the filter's size) and never
//! span two images, so at a given thread count an image's output does not depend on the batch
//! around it (the cut by output channels, and with it the bits, depend on the thread count).
//!
//! candle 0.11's `conv2d` built its columns one element at a time with the index arithmetic of
//! every tap, converted the whole input to NHWC first, and copied each product's output again,
//! element by element; ResNet-50 ran at 0.43x timm's speed on a Zen 5 (BENCHMARKS.md, 2026-12-06,
//! night).

use crate::nn::cpu::{MatRef, SendPtr, product_here};

/// What follows each output element's product: after its channel's bias and the residual's
/// value (when there is one), this activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    Nothing,
    Relu,
    Relu6,
}

/// Floats of a tile's columns (512 KiB: half of a Zen's L2), which set its pixels (tiles of at
/// least 64 pixels exceed it for filters of more than 2,048 taps).
const COLUMNS_BUDGET: usize = 128 * 1024;

/// Fewest output channels a block is cut to when a plane's few tiles are cut by channels too
/// (the last block may hold fewer).
const MIN_BLOCK_ROWS: usize = 32;

/// The output columns `lo..hi` (of `ow`) whose input column `ox s + kx - left` lies inside a row
/// of `w`, for filter column `kx` at stride `s` with `left` columns of padding (here and in
/// [`crate::nn::depthwise`]).
pub(crate) fn columns_inside(w: usize, left: usize, s: usize, ow: usize, kx: usize) -> (usize, usize) {
    let lo = left.saturating_sub(kx).div_ceil(s);
    let hi = (w + left).saturating_sub(kx).div_ceil(s).min(ow);
    (lo, hi.max(lo))
}

/// A convolution's filters: `cout` of them, `weight` `[cout, c, kh, kw]`, one `bias` each.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Filters<'a> {
    pub cout: usize,
    pub weight: &'a [f32],
    pub bias: &'a [f32],
}

/// One convolution's shapes: input `[c, h, w]` per image, a `kh` x `kw` filter at stride `s`
/// with zero padding `top` and `left`, an `oh` x `ow` output.
#[derive(Debug, Clone)]
pub(crate) struct Geometry {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub s: usize,
    pub top: usize,
    pub left: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Geometry {
    fn taps(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// A 1x1 filter at stride 1 without padding: the input is its own columns.
    fn direct(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.s == 1 && self.top == 0 && self.left == 0 && (self.oh, self.ow) == (self.h, self.w)
    }

    /// Output pixels per tile: as many as [`COLUMNS_BUDGET`] holds columns for, a multiple of 64
    /// (the product kernel's panel), 64 to 1024.
    fn tile(&self) -> usize {
        (COLUMNS_BUDGET / self.taps().max(1)).clamp(64, 1024) / 64 * 64
    }

    /// The im2col columns of output pixels `p0..p1` of one image `x` `[c, h, w]` into `cols`
    /// (`taps x (p1 - p0)` values, every one written): row `(ci kh + ky) kw + kx` holds, for each
    /// pixel, the input value under that tap (zero outside).
    pub(crate) fn columns(&self, x: &[f32], p0: usize, p1: usize, cols: &mut [f32]) {
        let t = p1 - p0;
        assert_eq!(cols.len(), self.taps() * t, "im2col: room for {} columns of {t}", self.taps());
        if t == 0 {
            return;
        }
        let reach: Vec<(usize, usize)> = (0..self.kw).map(|kx| columns_inside(self.w, self.left, self.s, self.ow, kx)).collect();
        let mut rows = cols.chunks_exact_mut(t);
        for ci in 0..self.c {
            let plane = &x[ci * self.h * self.w..(ci + 1) * self.h * self.w];
            for ky in 0..self.kh {
                for (kx, &(lo, hi)) in reach.iter().enumerate() {
                    let row = rows.next().expect("one row per tap");
                    if self.s == 1 && self.ow == self.w {
                        self.shifted(plane, (ky, kx), (lo, hi), p0, row);
                        continue;
                    }
                    // The tile's pixels by output row: columns ox0..ox1 of row oy.
                    let mut p = p0;
                    while p < p1 {
                        let (oy, ox0) = (p / self.ow, p % self.ow);
                        let ox1 = self.ow.min(ox0 + (p1 - p));
                        let iy = (oy * self.s + ky).checked_sub(self.top).filter(|&iy| iy < self.h);
                        let seg = &mut row[p - p0..p - p0 + (ox1 - ox0)];
                        // Inside the input: columns a..b of the segment.
                        let a = lo.clamp(ox0, ox1);
                        let b = hi.clamp(a, ox1);
                        match iy.filter(|_| a < b) {
                            None => seg.fill(0.0),
                            Some(iy) => {
                                let src = &plane[iy * self.w..(iy + 1) * self.w];
                                let (head, rest) = seg.split_at_mut(a - ox0);
                                let (dst, tail) = rest.split_at_mut(b - a);
                                head.fill(0.0);
                                tail.fill(0.0);
                                let first = a * self.s + kx - self.left;
                                match self.s {
                                    1 => dst.copy_from_slice(&src[first..first + (b - a)]),
                                    // By pairs of input values, the first of each.
                                    2 => {
                                        let (last, body) = dst.split_last_mut().expect("a < b");
                                        body.iter_mut().zip(src[first..].chunks_exact(2)).for_each(|(d, pair)| *d = pair[0]);
                                        *last = src[first + 2 * body.len()];
                                    }
                                    s => dst.iter_mut().zip(src[first..].iter().step_by(s)).for_each(|(d, &v)| *d = v),
                                }
                            }
                        }
                        p += ox1 - ox0;
                    }
                }
            }
        }
    }

    /// [`Self::columns`]'s row of tap `(ky, kx)` (output columns `lo..hi` inside the input) where
    /// the output rows are as long as the input's at stride 1: pixel `p`'s value lies at `p +
    /// (ky - top) w + kx - left` of the plane, so the row is one copy of the plane's values, then
    /// zeros where that index leaves the plane (rows above or below) and in each output row's
    /// columns outside `lo..hi` (where the index wrapped into the next or previous row).
    fn shifted(&self, plane: &[f32], (ky, kx): (usize, usize), (lo, hi): (usize, usize), p0: usize, row: &mut [f32]) {
        let t = row.len() as isize;
        let offset = (ky as isize - self.top as isize) * self.w as isize + kx as isize - self.left as isize;
        // Pixels p0 + j with 0 <= p0 + j + offset < h w: j in a..b.
        let start = p0 as isize + offset;
        let a = (-start).clamp(0, t) as usize;
        let b = (plane.len() as isize - start).clamp(a as isize, t) as usize;
        row[..a].fill(0.0);
        row[b..].fill(0.0);
        if a < b {
            let from = (start + a as isize) as usize;
            row[a..b].copy_from_slice(&plane[from..from + (b - a)]);
        }
        if (lo, hi) != (0, self.ow) {
            let mut p = p0 - p0 % self.ow;
            while p < p0 + row.len() {
                // Output row starting at pixel p: columns 0..lo and hi..ow are outside the input.
                for ox in (0..lo).chain(hi..self.ow) {
                    if let Some(v) = (p + ox).checked_sub(p0).and_then(|j| row.get_mut(j)) {
                        *v = 0.0;
                    }
                }
                p += self.ow;
            }
        }
    }

    /// The convolution of `n` images `x` `[n, c, h, w]` with the filters `f`, then per output
    /// element its channel's bias, the `residual`'s value `[n, cout, oh, ow]` and `then`:
    /// `[n, cout, oh, ow]`. Tasks of one tile of one image each (cut by output channels
    /// too where a plane has fewer tiles than two per thread) run on the thread pool.
    pub(crate) fn run(&self, n: usize, x: &[f32], f: Filters, residual: Option<&[f32]>, then: Then) -> Vec<f32> {
        use rayon::prelude::*;
        let Filters { cout, weight, bias } = f;
        let (k, plane) = (self.taps(), self.oh * self.ow);
        assert!(x.len() == n * self.c * self.h * self.w && weight.len() == cout * k && bias.len() == cout, "conv2d: operands do not match the shapes");
        assert!(residual.is_none_or(|r| r.len() == n * cout * plane), "conv2d: the residual does not match the output");
        let tile = if self.direct() { self.tile().min(plane.max(1)) } else { self.tile() };
        let tiles = plane.div_ceil(tile);
        let threads = rayon::current_num_threads().max(1);
        let blocks = if tiles >= 2 * threads { 1 } else { (2 * threads).div_ceil(tiles.max(1)).min(cout / MIN_BLOCK_ROWS).max(1) };
        let rows = cout.div_ceil(blocks).next_multiple_of(8);
        let mut out: Vec<f32> = Vec::with_capacity(n * cout * plane);
        let dst = SendPtr(out.as_mut_ptr());
        let image = self.c * self.h * self.w;
        (0..n * tiles * blocks).into_par_iter().for_each(|task| {
            let (img, t, b) = (task / (tiles * blocks), task / blocks % tiles, task % blocks);
            let (p0, co0) = (t * tile, b * rows);
            let (p1, co1) = ((p0 + tile).min(plane), (co0 + rows).min(cout));
            if co0 >= co1 || p0 >= p1 {
                return;
            }
            let x = &x[img * image..(img + 1) * image];
            let first = img * cout * plane + co0 * plane + p0;
            let product = |rhs: MatRef| {
                // SAFETY: rows co0..co1, columns p0..p1 of image img, written by this task only.
                unsafe { product_here(co1 - co0, p1 - p0, k, dst.get().add(first), plane, MatRef::rows(&weight[co0 * k..co1 * k], k), rhs) }
            };
            if self.direct() {
                product(MatRef::strided_rows(&x[p0..], plane));
            } else {
                COLUMNS.with_borrow_mut(|buf| {
                    let need = k * (p1 - p0);
                    if buf.len() < need {
                        buf.resize(need, 0.0);
                    }
                    self.columns(x, p0, p1, &mut buf[..need]);
                    product(MatRef::rows(&buf[..need], p1 - p0));
                });
            }
            for (co, &b) in bias.iter().enumerate().take(co1).skip(co0) {
                let at = img * cout * plane + co * plane + p0;
                // SAFETY: this task's part of row co, written by the product above.
                let y = unsafe { std::slice::from_raw_parts_mut(dst.get().add(at), p1 - p0) };
                finish(y, b, residual.map(|r| &r[at..at + (p1 - p0)]), then);
            }
        });
        // SAFETY: the tasks cover every image, channel and pixel.
        unsafe { out.set_len(n * cout * plane) };
        out
    }
}

thread_local! {
    /// A thread's im2col columns, kept from task to task.
    static COLUMNS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `then(y + bias (+ residual))`, in that order, on one row of a block, in one pass.
fn finish(y: &mut [f32], bias: f32, residual: Option<&[f32]>, then: Then) {
    fn each(y: &mut [f32], bias: f32, residual: Option<&[f32]>, act: impl Fn(f32) -> f32) {
        match residual {
            Some(r) => y.iter_mut().zip(r).for_each(|(v, &r)| *v = act(*v + bias + r)),
            None => y.iter_mut().for_each(|v| *v = act(*v + bias)),
        }
    }
    match then {
        Then::Nothing => each(y, bias, residual, |v| v),
        Then::Relu => each(y, bias, residual, |v| v.max(0.0)),
        Then::Relu6 => each(y, bias, residual, |v| v.clamp(0.0, 6.0)),
    }
}

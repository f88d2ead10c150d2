//! One channel's geometry for the depthwise convolution: sizes, padding, and which output
//! columns each filter column reaches.

/// One channel's geometry: an `h` x `w` input, a `k` x `k` filter at stride `s`, padding
/// `top` and `left`, an `oh` x `ow` output; and for each filter column `kx`, the output columns
/// `lo..hi` whose input column `ox s + kx - left` lies inside the row (computed once: integer
/// divisions in the loop over taps took most of its time).
#[derive(Debug, Clone)]
pub(super) struct Plane {
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) k: usize,
    pub(super) s: usize,
    pub(super) top: usize,
    pub(super) left: usize,
    pub(super) relu6: bool,
    pub(super) oh: usize,
    pub(super) ow: usize,
    pub(super) columns: Vec<(usize, usize)>,
}

/// Channels [`super::rows`]' kernel runs side by side on rows of `vectors` vectors of outputs:
/// four on rows of one vector, two on rows of two, else one (a longer row's own vectors keep the
/// sums busy).
pub(super) const fn side_by_side(vectors: usize) -> usize {
    match vectors {
        0 | 1 => 4,
        2 => 2,
        _ => 1,
    }
}

impl Plane {
    pub(super) fn new(h: usize, w: usize, k: usize, s: usize, (top, left): (usize, usize), relu6: bool) -> Self {
        let ow = w.div_ceil(s);
        let columns = (0..k).map(|kx| crate::nn::im2col::columns_inside(w, left, s, ow, kx)).collect();
        Plane { h, w, k, s, top, left, relu6, oh: h.div_ceil(s), ow, columns }
    }

    /// The input row that output row `oy` reads at filter row `ky`, if inside the input.
    pub(super) fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.s + ky).checked_sub(self.top).filter(|&iy| iy < self.h)
    }
}

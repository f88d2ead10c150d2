//! Max pooling of the CNN encoders (ResNet's 3x3 at stride 2 after the stem, VGG's 2x2 between
//! stages), with PyTorch's padding: positions outside the input never win.
//!
//! On the CPU one pass over each plane writes the pooled plane; candle's `max_pool2d` went
//! through a scalar loop over a padded copy of the input, and the padding itself took two more
//! copies (ResNet-50's stem output, 26 MB at batch 8, copied twice into fresh memory).

use candle_core::{D, Result, Tensor};

/// `k` x `k` max pooling at stride `s` with `pad` on every side of `x` `[N, C, H, W]`:
/// `[N, C, (H + 2 pad - k) / s + 1, (W + 2 pad - k) / s + 1]`, a window holding a NaN giving NaN
/// as PyTorch's does. `pad < k` (PyTorch asks `pad <= k / 2`), so no window lies in the padding.
pub fn max_pool2d(x: &Tensor, k: usize, s: usize, pad: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if k == 0 || s == 0 || pad >= k || h + 2 * pad < k || w + 2 * pad < k {
        candle_core::bail!("max_pool2d: a {k}x{k} window at stride {s}, padding {pad}, on {h}x{w}");
    }
    let (oh, ow) = ((h + 2 * pad - k) / s + 1, (w + 2 * pad - k) / s + 1);
    if !(x.device().is_cpu() && x.dtype() == candle_core::DType::F32) {
        // Edge values repeated: they change no maximum.
        let padded = x.pad_with_same(D::Minus1, pad, pad)?.pad_with_same(D::Minus2, pad, pad)?;
        return padded.max_pool2d_with_stride(k, s);
    }
    let x = x.contiguous()?;
    let values = crate::nn::cpu::with_f32("max_pool2d", &x, |x| {
        use rayon::prelude::*;
        let mut out = vec![0f32; n * c * oh * ow];
        // Windows clipped to the input: rows (or columns) lo..hi of output position o.
        let window = |o: usize, len: usize| ((o * s).saturating_sub(pad), (o * s + k - pad).min(len));
        let (rows, cols): (Vec<_>, Vec<_>) = ((0..oh).map(|o| window(o, h)).collect(), (0..ow).map(|o| window(o, w)).collect());
        out.par_chunks_mut(oh * ow).zip(x.par_chunks(h * w)).for_each(|(out, plane)| {
            for (o_row, &(r0, r1)) in out.chunks_mut(ow).zip(&rows) {
                for (o, &(c0, c1)) in o_row.iter_mut().zip(&cols) {
                    *o = (r0..r1).flat_map(|r| &plane[r * w + c0..r * w + c1]).fold(f32::NEG_INFINITY, |m, &v| if v > m || v.is_nan() { v } else { m });
                }
            }
        });
        out
    })?;
    Tensor::from_vec(values, (n, c, oh, ow), x.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same values as candle's pooling of the edge-padded input (ResNet's 3x3/2 with padding
    /// 1, VGG's 2x2/2), on odd and even sizes.
    #[test]
    fn matches_candle_on_the_padded_input() {
        let dev = candle_core::Device::Cpu;
        let mut rng = crate::rng::stream(11, "test", 0);
        for ((h, w), k, s, pad) in [((112, 112), 3, 2, 1), ((7, 9), 3, 2, 1), ((14, 14), 2, 2, 0), ((5, 7), 2, 2, 0), ((6, 6), 3, 1, 1)] {
            let x = crate::rng::randn(&mut rng, (2, 3, h, w), &dev).unwrap();
            let want = x.pad_with_same(D::Minus1, pad, pad).unwrap().pad_with_same(D::Minus2, pad, pad).unwrap().max_pool2d_with_stride(k, s).unwrap();
            let got = max_pool2d(&x, k, s, pad).unwrap();
            assert_eq!(got.dims(), want.dims(), "{h}x{w} k{k} s{s} p{pad}");
            let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(values(&got), values(&want), "{h}x{w} k{k} s{s} p{pad}");
        }
    }
}

//! The vector operations of [`super::rows`]' kernel at each width it is built for: AVX-512F
//! (16 floats, mask registers) and AVX2 (8 floats, masks held in vectors, a masked sum as a
//! blend). Both do each lane's product then sum, as the plain loop does: the same bits.

use std::arch::x86_64::*;

/// One vector of floats and the operations the kernel runs on it. Every method is `unsafe`:
/// the CPU must have the width's features, and pointers must reach the lanes they name.
pub(super) trait Lanes: Copy {
    /// Floats in a vector.
    const N: usize;
    /// A set of lanes.
    type Mask: Copy;
    /// The lanes whose bits are set in `bits`.
    unsafe fn mask(bits: u32) -> Self::Mask;
    unsafe fn splat(v: f32) -> Self;
    /// All lanes from `p`.
    unsafe fn load(p: *const f32) -> Self;
    /// The lanes of `m` from `p`, zero elsewhere; only those lanes' memory is read.
    unsafe fn load_masked(m: Self::Mask, p: *const f32) -> Self;
    /// Lane j holds element 2j of the 2N floats from `p`, reading the lanes of `m[0]` from `p`
    /// and those of `m[1]` from `p + N` (zero elsewhere): a stride-2 tap's inputs.
    unsafe fn load_even(m: [Self::Mask; 2], p: *const f32) -> Self;
    /// `acc + w x`, a product then a sum, in every lane.
    unsafe fn add_product(acc: Self, w: Self, x: Self) -> Self;
    /// [`Self::add_product`] in the lanes of `m`; `acc` elsewhere.
    unsafe fn add_product_masked(acc: Self, m: Self::Mask, w: Self, x: Self) -> Self;
    /// `f32::clamp(y, 0, 6)` in every lane (NaN and -0 kept).
    unsafe fn relu6(y: Self) -> Self;
    /// The first `count` (at most N) lanes to `p`; only their memory is written.
    unsafe fn store_first(count: usize, p: *mut f32, y: Self);
}

impl Lanes for __m512 {
    const N: usize = 16;
    type Mask = __mmask16;

    #[inline(always)]
    unsafe fn mask(bits: u32) -> __mmask16 {
        bits as __mmask16
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        unsafe { _mm512_set1_ps(v) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_masked(m: __mmask16, p: *const f32) -> Self {
        unsafe { _mm512_maskz_loadu_ps(m, p) }
    }
    #[inline(always)]
    unsafe fn load_even(m: [__mmask16; 2], p: *const f32) -> Self {
        unsafe {
            let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(m[0], p), even, _mm512_maskz_loadu_ps(m[1], p.wrapping_add(16)))
        }
    }
    #[inline(always)]
    unsafe fn add_product(acc: Self, w: Self, x: Self) -> Self {
        unsafe { _mm512_add_ps(acc, _mm512_mul_ps(w, x)) }
    }
    #[inline(always)]
    unsafe fn add_product_masked(acc: Self, m: __mmask16, w: Self, x: Self) -> Self {
        unsafe { _mm512_mask_add_ps(acc, m, acc, _mm512_mul_ps(w, x)) }
    }
    #[inline(always)]
    unsafe fn relu6(y: Self) -> Self {
        unsafe {
            let (zero, six) = (_mm512_setzero_ps(), _mm512_set1_ps(6.0));
            let y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask::<_CMP_LT_OQ>(y, zero), zero);
            _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask::<_CMP_GT_OQ>(y, six), six)
        }
    }
    #[inline(always)]
    unsafe fn store_first(count: usize, p: *mut f32, y: Self) {
        unsafe { _mm512_mask_storeu_ps(p, ((1u32 << count) - 1) as __mmask16, y) }
    }
}

impl Lanes for __m256 {
    const N: usize = 8;
    /// All bits set in a lane of the mask, none elsewhere.
    type Mask = __m256i;

    #[inline(always)]
    unsafe fn mask(bits: u32) -> __m256i {
        unsafe {
            let lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
            _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(bits as i32), lane_bits), lane_bits)
        }
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        unsafe { _mm256_set1_ps(v) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_masked(m: __m256i, p: *const f32) -> Self {
        unsafe { _mm256_maskload_ps(p, m) }
    }
    #[inline(always)]
    unsafe fn load_even(m: [__m256i; 2], p: *const f32) -> Self {
        unsafe {
            let (a, b) = (_mm256_maskload_ps(p, m[0]), _mm256_maskload_ps(p.wrapping_add(8), m[1]));
            // [a0 a2 b0 b2 | a4 a6 b4 b6], then its 64-bit quarters in the order 0, 2, 1, 3.
            let evens = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(evens)))
        }
    }
    #[inline(always)]
    unsafe fn add_product(acc: Self, w: Self, x: Self) -> Self {
        unsafe { _mm256_add_ps(acc, _mm256_mul_ps(w, x)) }
    }
    #[inline(always)]
    unsafe fn add_product_masked(acc: Self, m: __m256i, w: Self, x: Self) -> Self {
        unsafe { _mm256_blendv_ps(acc, _mm256_add_ps(acc, _mm256_mul_ps(w, x)), _mm256_castsi256_ps(m)) }
    }
    #[inline(always)]
    unsafe fn relu6(y: Self) -> Self {
        unsafe {
            let (zero, six) = (_mm256_setzero_ps(), _mm256_set1_ps(6.0));
            let y = _mm256_blendv_ps(y, zero, _mm256_cmp_ps::<_CMP_LT_OQ>(y, zero));
            _mm256_blendv_ps(y, six, _mm256_cmp_ps::<_CMP_GT_OQ>(y, six))
        }
    }

    /// A whole vector is one store, fewer lanes are stored 4, 2 and 1 at a time: AMD's Zen 2
    /// and 3 run a masked store (`vmaskmovps`) as microcode, and with it after every vector the
    /// kernel ran Lite0 about 1.15x faster than the plain loop instead of 1.45-1.55x
    /// (BENCHMARKS.md, 2026-12-07, late).
    #[inline(always)]
    unsafe fn store_first(count: usize, p: *mut f32, y: Self) {
        unsafe {
            if count == 8 {
                return _mm256_storeu_ps(p, y);
            }
            let (mut part, mut p, mut left) = (_mm256_castps256_ps128(y), p, count);
            if left >= 4 {
                _mm_storeu_ps(p, part);
                (part, p, left) = (_mm256_extractf128_ps::<1>(y), p.add(4), left - 4);
            }
            if left >= 2 {
                _mm_store_sd(p.cast(), _mm_castps_pd(part));
                (part, p, left) = (_mm_movehl_ps(part, part), p.add(2), left - 2);
            }
            if left == 1 {
                _mm_store_ss(p, part);
            }
        }
    }
}

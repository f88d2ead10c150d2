//! Statistics for the experiment tables: mean ± std, Student-t confidence intervals, and a paired
//! comparison of two methods on the same test items (bootstrap interval and p-value, exact
//! McNemar test). Std only, plus the project's seeded ChaCha12 generator for the bootstrap.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;

/// Mean and sample standard deviation (n-1 denominator; std 0 for a single value).
///
/// mean = Σxᵢ / n, std = sqrt(Σ(xᵢ - mean)² / (n - 1)). For n = 1 the std is 0; for an empty
/// slice both are NaN.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, if xs.is_empty() { f64::NAN } else { 0.0 });
    }
    let ss: f64 = xs.iter().map(|x| (x - mean).powi(2)).sum();
    (mean, (ss / (n - 1.0)).sqrt())
}

/// t_{0.975, df} for df = 1..=30, to 6 decimals (computed by inverting the t CDF, mpmath).
const T975: [f64; 30] = [
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450,
    2.119905, 2.109816, 2.100922, 2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272,
];

/// Two-sided 95% quantile of Student's t with `df` degrees of freedom (t_{0.975, df}); df >= 1.
///
/// df <= 30: tabulated values (6 decimals). df > 30: the Cornish–Fisher expansion around
/// z = Φ⁻¹(0.975) = 1.959964, t = z + g₁/ν + g₂/ν² + g₃/ν³ + g₄/ν⁴ with
/// g₁ = (z³+z)/4, g₂ = (5z⁵+16z³+3z)/96, g₃ = (3z⁷+19z⁵+17z³−15z)/384,
/// g₄ = (79z⁹+776z⁷+1482z⁵−1920z³−945z)/92160 (Abramowitz & Stegun 26.7.5); its error there is
/// below 1e-7, and it tends to 1.960 as df → ∞.
pub fn t_quantile_975(df: usize) -> f64 {
    assert!(df >= 1, "t_quantile_975: df must be >= 1");
    if df <= T975.len() {
        return T975[df - 1];
    }
    let (z, v) = (1.959_963_984_540_054_f64, df as f64);
    let z2 = z * z; // the g's below in Horner form in z²
    let g1 = z * (z2 + 1.0) / 4.0;
    let g2 = z * ((5.0 * z2 + 16.0) * z2 + 3.0) / 96.0;
    let g3 = z * (((3.0 * z2 + 19.0) * z2 + 17.0) * z2 - 15.0) / 384.0;
    let g4 = z * ((((79.0 * z2 + 776.0) * z2 + 1482.0) * z2 - 1920.0) * z2 - 945.0) / 92160.0;
    z + (g1 + (g2 + (g3 + g4 / v) / v) / v) / v
}

/// 95% confidence interval of the mean of `xs`: mean ± t_{0.975, n-1} · std / sqrt(n), with std
/// the sample standard deviation of [`mean_std`]. For n < 2 returns (mean, mean).
pub fn ci95(xs: &[f64]) -> (f64, f64) {
    let (mean, std) = mean_std(xs);
    if xs.len() < 2 {
        return (mean, mean);
    }
    let half = t_quantile_975(xs.len() - 1) * std / (xs.len() as f64).sqrt();
    (mean - half, mean + half)
}

/// Result of comparing method A to method B on the same test items.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PairedTest {
    /// mean(a) - mean(b)
    pub diff: f64,
    /// 95% percentile-bootstrap interval of the difference.
    pub ci_lo: f64,
    pub ci_hi: f64,
    /// Two-sided paired-bootstrap p-value for "no difference".
    pub p_bootstrap: f64,
    /// Exact two-sided McNemar p-value on the items' majority-vote correctness (see below).
    pub p_mcnemar: f64,
    /// Items compared.
    pub n: usize,
}

impl PairedTest {
    /// The p-value the tables and the report show: the larger of the two. On a small test set the
    /// bootstrap's is far too small (6 images of 15 better, none worse: 0.0008, where McNemar's
    /// exact test gives 0.031), and a difference inside the noise must read as no difference.
    pub fn p(&self) -> f64 {
        self.p_bootstrap.max(self.p_mcnemar)
    }
}

/// Paired comparison over test items. `a[i]`, `b[i]` are the scores of item i under the two
/// methods, each in [0, 1]: the fraction of runs (seeds) that got item i right.
///
/// * `diff` = mean(a) − mean(b).
/// * Bootstrap: with dᵢ = aᵢ − bᵢ, draw `reps` resamples of the n items with replacement
///   (ChaCha12 seeded from `seed`, so deterministic) and take each resample's mean of d, i.e. its
///   mean(a) − mean(b). The CI is the 2.5% and 97.5% percentiles of these `reps` values
///   (linear interpolation between order statistics at rank q·(reps − 1)).
/// * Bootstrap p-value, with k₋ = #{resampled diffs <= 0} and k₊ = #{resampled diffs >= 0}:
///   p = min(1, 2 · (min(k₋, k₊) + 1) / (reps + 1)). The +1 (Davison & Hinkley) counts the
///   observed sample as one resample, so p is never reported as 0: its floor is 2/(reps + 1),
///   e.g. ≈ 2e-4 for reps = 10,000. Identical inputs give all diffs = 0, hence p = 1.
/// * `p_mcnemar`: an item is correct for a method when its score > 0.5; b = #(A right, B wrong),
///   c = #(A wrong, B right); p = [`mcnemar_exact`]`(b, c)`.
///
/// Panics if `a` and `b` differ in length, are empty, or `reps` is 0.
pub fn paired_test(a: &[f64], b: &[f64], reps: usize, seed: u64) -> PairedTest {
    paired_test_in_groups(a, b, &[a.len()], reps, seed)
}

/// [`paired_test`] with the items in consecutive groups of `sizes` (the folds of a
/// leave-one-group-out table): `diff` is the mean over the groups of each group's mean(a) −
/// mean(b), as a table's accuracy is the mean over its folds, and each resample draws every
/// group's items from that group alone. One group is [`paired_test`]; McNemar's test counts the
/// items of all groups.
///
/// Panics as [`paired_test`] does, and if `sizes` has a zero or does not add up to the items.
pub fn paired_test_in_groups(a: &[f64], b: &[f64], sizes: &[usize], reps: usize, seed: u64) -> PairedTest {
    assert_eq!(a.len(), b.len(), "paired_test: a, b lengths differ");
    assert!(!a.is_empty(), "paired_test: no items to compare");
    assert!(reps > 0, "paired_test: reps must be > 0");
    assert!(sizes.iter().all(|&m| m > 0) && sizes.iter().sum::<usize>() == a.len(), "paired_test: groups {sizes:?} for {} items", a.len());
    let groups = || sizes.iter().scan(0, |start, &m| Some((std::mem::replace(start, *start + m), m)));
    let k = sizes.len() as f64;
    let diff = groups().map(|(s, m)| mean_std(&a[s..s + m]).0 - mean_std(&b[s..s + m]).0).sum::<f64>() / k;
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();

    let mut rng = ChaCha12Rng::seed_from_u64(seed);
    let mut resample = || groups().map(|(s, m)| (0..m).map(|_| d[s + rng.random_range(0..m)]).sum::<f64>() / m as f64).sum::<f64>() / k;
    let mut boot: Vec<f64> = (0..reps).map(|_| resample()).collect();
    boot.sort_by(f64::total_cmp);
    let le = boot.iter().filter(|&&x| x <= 0.0).count();
    let ge = boot.iter().filter(|&&x| x >= 0.0).count();
    let p_bootstrap = (2.0 * (le.min(ge) + 1) as f64 / (reps + 1) as f64).min(1.0);

    // Discordant items (right: score > 0.5): b = A right & B wrong, c = A wrong & B right.
    let (mut disc_b, mut disc_c) = (0, 0);
    for (&x, &y) in a.iter().zip(b) {
        disc_b += usize::from(x > 0.5 && y <= 0.5);
        disc_c += usize::from(x <= 0.5 && y > 0.5);
    }
    PairedTest { diff, ci_lo: percentile(&boot, 0.025), ci_hi: percentile(&boot, 0.975), p_bootstrap, p_mcnemar: mcnemar_exact(disc_b, disc_c), n: a.len() }
}

/// The q-quantile of sorted, non-empty `xs`, interpolating linearly at rank q·(len − 1).
fn percentile(xs: &[f64], q: f64) -> f64 {
    let pos = q * (xs.len() - 1) as f64;
    let (lo, frac) = (pos.floor() as usize, pos.fract());
    let hi = (lo + 1).min(xs.len() - 1);
    xs[lo] + frac * (xs[hi] - xs[lo])
}

/// Exact two-sided McNemar p-value from the discordant counts b (A right, B wrong) and c (A
/// wrong, B right): p = min(1, 2 · P(X <= min(b, c))) with X ~ Bin(b + c, 1/2); p = 1 when
/// b + c = 0.
///
/// Stable for large m = b + c: ln P(X = k) = Σ_{j<k} ln((m − j)/(j + 1)) − m·ln 2 is accumulated
/// in log space, and the tail is P(X = k) · Σ_{j<=k} P(X = j)/P(X = k), the ratios built downward
/// by P(X = j − 1)/P(X = j) = j/(m − j + 1) (all <= 1 since k <= m/2).
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let (m, k) = (b + c, b.min(c));
    if m == 0 {
        return 1.0;
    }
    let ln_pk: f64 = (0..k).map(|j| ((m - j) as f64 / (j + 1) as f64).ln()).sum::<f64>() - m as f64 * std::f64::consts::LN_2;
    let (mut ratio, mut sum) = (1.0_f64, 1.0_f64);
    for j in (1..=k).rev() {
        ratio *= j as f64 / (m - j + 1) as f64;
        sum += ratio;
    }
    (2.0 * (ln_pk + sum.ln()).exp()).min(1.0)
}

/// 95% Wilson score interval of a proportion `p` observed on `n` items (the whole [0, 1] for none).
pub fn wilson95(p: f64, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (z, n) = (1.959964, n as f64);
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// A p-value as a reader wants it: `p = 0.012`, or `p < 0.001` (the bootstrap's 10,000
/// resamples cannot tell smaller ones apart, and a printed 0.000 reads as impossible).
pub fn p_value(p: f64) -> String {
    if p < 0.001 { "p < 0.001".into() } else { format!("p = {p:.3}") }
}

/// Markdown marker for a p-value: "***" if p < 0.001, "**" if p < 0.01, "*" if p < 0.05, "" otherwise.
pub fn significance_marker(p: f64) -> &'static str {
    if p < 0.001 {
        "***"
    } else if p < 0.01 {
        "**"
    } else if p < 0.05 {
        "*"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(x: f64, y: f64, tol: f64) -> bool {
        (x - y).abs() <= tol
    }

    /// Standard normal CDF via erfc (Abramowitz & Stegun 7.1.26, error < 1.5e-7).
    fn phi(x: f64) -> f64 {
        let z = x.abs() / std::f64::consts::SQRT_2;
        let t = 1.0 / (1.0 + 0.327_591_1 * z);
        let coef = [1.061_405_429, -1.453_152_027, 1.421_413_741, -0.284_496_736, 0.254_829_592];
        let half_erfc = 0.5 * coef.iter().fold(0.0, |acc, c| (acc + c) * t) * (-z * z).exp();
        0.5 + x.signum() * (0.5 - half_erfc)
    }

    #[test]
    fn mean_std_basic_and_single() {
        let (m, s) = mean_std(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert!(close(m, 5.0, 1e-12) && close(s, (32.0f64 / 7.0).sqrt(), 1e-12));
        assert_eq!(mean_std(&[3.5]), (3.5, 0.0));
        assert_eq!(ci95(&[3.5]), (3.5, 3.5));
    }

    #[test]
    fn mcnemar_small_and_large() {
        assert!(close(mcnemar_exact(0, 10), 0.001_953_125, 1e-12));
        assert!(close(mcnemar_exact(10, 0), 0.001_953_125, 1e-12));
        assert_eq!(mcnemar_exact(5, 5), 1.0);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // 2 * (1 + 10 + 45 + 120) / 1024
        assert!(close(mcnemar_exact(3, 7), 0.34375, 1e-12));
        let p = mcnemar_exact(4900, 5100);
        // Normal approximation with continuity correction: z = (4900.5 - 5000) / 50.
        let approx = 2.0 * phi((4900.5 - 5000.0) / 50.0);
        assert!(p.is_finite() && p > 0.0 && p < 1.0, "p = {p}");
        assert!((p / approx - 1.0).abs() < 0.1, "p = {p}, approx = {approx}");
        // Exact value from arbitrary-precision summation (mpmath).
        assert!(((p - 0.046_585_527_704_947_39) / p).abs() < 1e-9, "p = {p}");
        assert_eq!(mcnemar_exact(0, 5000), 0.0); // 2^-4999 underflows to 0, not NaN
    }

    #[test]
    fn t_quantiles_match_tables() {
        // Printed tables (3 decimals), then values past the table from mpmath (6 decimals).
        let dfs = [1, 2, 4, 9, 19, 30, 1_000_000];
        let ts = [12.706, 4.303, 2.776, 2.262, 2.093, 2.042, 1.960];
        for (df, t) in dfs.into_iter().zip(ts) {
            assert!(close(t_quantile_975(df), t, 1e-3), "df = {df}");
        }
        for (df, t) in [(31, 2.039513), (40, 2.021075), (120, 1.979930)] {
            assert!(close(t_quantile_975(df), t, 1e-5), "df = {df}");
        }
    }

    #[test]
    fn ci95_of_three() {
        let (lo, hi) = ci95(&[1.0, 2.0, 3.0]);
        let half = 4.303 / 3f64.sqrt();
        assert!(close(lo, 2.0 - half, 1e-3) && close(hi, 2.0 + half, 1e-3));
    }

    #[test]
    fn paired_identical_is_no_difference() {
        let a: Vec<f64> = (0..50).map(|i| (i % 7) as f64 / 6.0).collect();
        let r = paired_test(&a, &a, 2000, 1);
        assert_eq!((r.diff, r.ci_lo, r.ci_hi), (0.0, 0.0, 0.0));
        assert_eq!((r.p_bootstrap, r.p_mcnemar, r.n), (1.0, 1.0, 50));
    }

    /// A new user's 15 test images, 6 better and none worse: the bootstrap's p alone read as ***,
    /// the p shown is McNemar's exact 2 / 2^6.
    #[test]
    fn a_small_test_set_shows_the_larger_p() {
        let a = vec![1.0; 15];
        let b: Vec<f64> = (0..15).map(|i| if i < 6 { 0.0 } else { 1.0 }).collect();
        let r = paired_test(&a, &b, 10_000, 0);
        assert!(r.p_bootstrap < 0.002, "{r:?}");
        assert!(close(r.p_mcnemar, 0.03125, 1e-12) && r.p() == r.p_mcnemar, "{r:?}");
        assert_eq!(significance_marker(r.p()), "*");
    }

    #[test]
    fn paired_large_difference_is_significant_and_deterministic() {
        let a = vec![1.0; 200];
        let b = [1.0, 1.0, 1.0, 0.0, 0.0].repeat(40); // 60% right
        let r = paired_test(&a, &b, 10_000, 7);
        assert!(close(r.diff, 0.4, 1e-12));
        assert!(r.ci_lo > 0.0 && r.ci_lo < 0.4 && r.ci_hi > 0.4, "{r:?}");
        assert!(r.p_bootstrap < 0.001 && r.p_mcnemar < 0.001, "{r:?}");
        assert_eq!(significance_marker(r.p_mcnemar), "***");
        // Wilson: 8 of 10 is [0.49, 0.94]; an interval stays inside [0, 1] at the ends.
        let (lo, hi) = wilson95(0.8, 10);
        assert!((lo - 0.4902).abs() < 1e-3 && (hi - 0.9433).abs() < 1e-3, "{lo} {hi}");
        assert_eq!(wilson95(1.0, 5).1, 1.0);
        assert_eq!((p_value(r.p_bootstrap), p_value(0.0123)), ("p < 0.001".to_string(), "p = 0.012".to_string()));
        assert_eq!(r, paired_test(&a, &b, 10_000, 7));
        assert_ne!(r, paired_test(&a, &b, 10_000, 8));
        assert_eq!(significance_marker(0.03), "*");
        assert_eq!(significance_marker(0.05), "");
    }

    /// With groups of unequal size, the difference is the mean of the groups' differences (not the
    /// items' pooled one); one group gives `paired_test`'s bits.
    #[test]
    fn grouped_difference_weighs_each_group_alike() {
        // Group 1: 3 items, A right on all, B on none (+1); group 2: 80 items, B right on 10 more (-0.125).
        let a: Vec<f64> = [vec![1.0; 3], vec![0.0; 80]].concat();
        let b: Vec<f64> = [vec![0.0; 3], vec![1.0; 10], vec![0.0; 70]].concat();
        let r = paired_test_in_groups(&a, &b, &[3, 80], 4000, 5);
        assert!(close(r.diff, (1.0 - 0.125) / 2.0, 1e-12), "{r:?}");
        assert!(close(paired_test(&a, &b, 4000, 5).diff, (3.0 - 10.0) / 83.0, 1e-12), "pooled, the sign flips");
        assert!(r.ci_lo <= r.diff && r.diff <= r.ci_hi && r.ci_lo > 0.0, "{r:?}");
        assert_eq!(paired_test_in_groups(&a, &b, &[83], 4000, 5), paired_test(&a, &b, 4000, 5));
    }

    #[test]
    fn bootstrap_ci_width_scales_as_inverse_sqrt_n() {
        let width = |n: usize| {
            let a: Vec<f64> = (0..n).map(|i| ((i * 7) % 10) as f64 / 10.0).collect();
            let b: Vec<f64> = (0..n).map(|i| ((i * 3) % 11) as f64 / 10.0).collect();
            let r = paired_test(&a, &b, 4000, 3);
            r.ci_hi - r.ci_lo
        };
        let ratio = width(100) / width(1600);
        assert!((3.0..=5.0).contains(&ratio), "ratio = {ratio}");
    }
}

//! DDPM schedule math (paper section 3.3.1), in f64 on the host. Step `t` runs 1..=T;
//! `abar(0) = 1` is the clean signal.

use anyhow::{Result, ensure};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct ScheduleConfig {
    /// Diffusion timesteps T of the forward (noising) process (the paper's T).
    #[arg(id = "t_steps", long = "timesteps", visible_alias = "T", value_name = "T", default_value_t = 50, value_parser = crate::options::at_least_two::<usize>)]
    pub steps: usize,
    /// Diffusion noise schedule: the variance beta_1 of the first noising step (linear schedule,
    /// as given for T = 1000 and scaled by 1000 / T, the guided-diffusion convention); below
    /// --beta-end. Not a loss weight (that is --align-weight).
    #[arg(long, default_value_t = 1e-4, value_parser = crate::options::fraction)]
    pub beta_start: f64,
    /// Diffusion noise schedule: the variance beta_T of the last noising step (scaled like
    /// --beta-start, which must be below it).
    #[arg(long, default_value_t = 0.02, value_parser = crate::options::fraction)]
    pub beta_end: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        crate::options::defaults()
    }
}

/// Largest `abar_T` accepted: sampling starts from pure N(0, I), so x_T must carry no signal.
pub const MAX_ABAR_T: f64 = 1e-3;

#[derive(Debug, Clone)]
pub struct Schedule {
    /// `betas[t]` for t = 1..=T; `betas[0] = 0`.
    betas: Vec<f64>,
    /// `abar[t] = prod_{i<=t} (1 - beta_i)`, `abar[0] = 1`.
    abar: Vec<f64>,
}

impl Schedule {
    pub fn new(cfg: &ScheduleConfig) -> Result<Self> {
        let t_max = cfg.steps;
        ensure!(t_max >= 2, "diffusion timesteps T (--timesteps) must be at least 2; got {t_max}");
        ensure!(
            cfg.beta_start > 0.0 && cfg.beta_start < cfg.beta_end && cfg.beta_end < 1.0,
            "the diffusion noise schedule needs 0 < --beta-start < --beta-end < 1; got {} and {}",
            cfg.beta_start,
            cfg.beta_end
        );
        let scale = 1000.0 / t_max as f64;
        let (b0, b1) = (cfg.beta_start * scale, cfg.beta_end * scale);
        let mut betas = vec![0.0];
        for i in 0..t_max {
            let f = i as f64 / (t_max - 1) as f64;
            betas.push(b0 + f * (b1 - b0));
        }
        if !betas[1..].iter().all(|&b| b > 0.0 && b < 1.0) {
            // The last beta is the largest: T must exceed 1000 --beta-end.
            let min_t = (2..).find(|&t| cfg.beta_end * (1000.0 / t as f64) < 1.0).unwrap_or(usize::MAX);
            anyhow::bail!(
                "the diffusion betas must lie in (0, 1); --beta-start and --beta-end scaled by 1000 / T (--timesteps {t_max}) give [{b0}, {b1}]: with --beta-end {}, use --timesteps {min_t} or more, or with --timesteps {t_max} a --beta-end below {}",
                cfg.beta_end,
                t_max as f64 / 1000.0
            );
        }
        let mut abar = vec![1.0];
        for t in 1..=t_max {
            abar.push(abar[t - 1] * (1.0 - betas[t]));
        }
        let s = Self { betas, abar };
        ensure!(
            s.abar(t_max) < MAX_ABAR_T,
            "abar_T = {:.3e} is not below {MAX_ABAR_T:e}: x_T would still hold signal; raise --timesteps or --beta-end",
            s.abar(t_max)
        );
        Ok(s)
    }

    pub fn steps(&self) -> usize {
        self.betas.len() - 1
    }

    pub fn beta(&self, t: usize) -> f64 {
        self.betas[t]
    }

    /// `alpha_t = 1 - beta_t`.
    pub fn alpha(&self, t: usize) -> f64 {
        1.0 - self.betas[t]
    }

    pub fn abar(&self, t: usize) -> f64 {
        self.abar[t]
    }

    /// Eq. 15: `x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`; returns the two coefficients.
    pub fn q_sample_coeffs(&self, t: usize) -> (f64, f64) {
        (self.abar[t].sqrt(), (1.0 - self.abar[t]).sqrt())
    }

    /// The effective beta of the jump `t -> s` (s < t): `1 - abar_t / abar_s` (= beta_t when s = t-1).
    pub fn jump_beta(&self, t: usize, s: usize) -> f64 {
        1.0 - self.abar[t] / self.abar[s]
    }

    /// Eq. 21: posterior variance `(1 - abar_s) / (1 - abar_t) * beta` of `q(x_s | x_t, x_0)`.
    pub fn posterior_variance(&self, t: usize, s: usize) -> f64 {
        (1.0 - self.abar[s]) / (1.0 - self.abar[t]) * self.jump_beta(t, s)
    }

    /// Eq. 22: posterior mean `c0 * x_0 + ct * x_t`; returns `(c0, ct)`.
    pub fn posterior_mean_coeffs(&self, t: usize, s: usize) -> (f64, f64) {
        let beta = self.jump_beta(t, s);
        let c0 = self.abar[s].sqrt() * beta / (1.0 - self.abar[t]);
        let ct = (1.0 - beta).sqrt() * (1.0 - self.abar[s]) / (1.0 - self.abar[t]);
        (c0, ct)
    }

    /// Eq. 16: mean of `p(x_{t-1} | x_t)` from a noise prediction:
    /// `(x_t - beta_t / sqrt(1 - abar_t) * eps) / sqrt(alpha_t)`; returns `(c_xt, c_eps)`.
    pub fn eps_mean_coeffs(&self, t: usize) -> (f64, f64) {
        let r = 1.0 / self.alpha(t).sqrt();
        (r, -r * self.betas[t] / (1.0 - self.abar[t]).sqrt())
    }

    /// Deterministic DDIM jump `t -> s` with the noise implied by an x_0 prediction:
    /// `x_s = sqrt(abar_s) x_0 + sqrt(1 - abar_s) (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)`;
    /// returns `(c0, ct)`.
    pub fn ddim_coeffs(&self, t: usize, s: usize) -> (f64, f64) {
        let r = ((1.0 - self.abar[s]) / (1.0 - self.abar[t])).sqrt();
        (self.abar[s].sqrt() - r * self.abar[t].sqrt(), r)
    }

    /// The descending strided subsequence of `n` steps from T down to 1:
    /// `t_k = 1 + floor(k (T - 1) / (n - 1))`. `n >= T` gives every step.
    pub fn sampling_steps(&self, n: usize) -> Vec<usize> {
        let t_max = self.steps();
        let n = n.clamp(1, t_max);
        if n == 1 {
            return vec![t_max];
        }
        (0..n).rev().map(|k| 1 + k * (t_max - 1) / (n - 1)).collect()
    }
}

/// `x0 c0 + x ct (+ z sigma)`, computed as candle computes `(x0 * c0 + x * ct) + z * sigma`
/// (each scaling `v * c + 0`, then the sums left to right: the same bits), in one pass on the
/// CPU instead of five, each with a tensor of its own.
pub(super) fn weighted_sum(x0: &Tensor, c0: f64, x: &Tensor, ct: f64, z: Option<(Tensor, f64)>) -> candle_core::Result<Tensor> {
    if !(x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && x.rank() == 2) {
        let mean = ((x0 * c0)? + (x * ct)?)?;
        return match z {
            Some((z, sigma)) => mean + (z * sigma)?,
            None => Ok(mean),
        };
    }
    if x0.dims() != x.dims() || z.as_ref().is_some_and(|(z, _)| z.dims() != x.dims()) {
        candle_core::bail!("sampler: x0 {:?}, x {:?}, noise {:?}", x0.shape(), x.shape(), z.as_ref().map(|(z, _)| z.shape()));
    }
    let (c0, ct) = (c0 as f32, ct as f32);
    let (x0, x) = (x0.contiguous()?, x.contiguous()?);
    let (z, sigma) = match z {
        Some((z, sigma)) => (Some(z.contiguous()?), sigma as f32),
        None => (None, 0.0),
    };
    let mut parts = vec![&x0, &x];
    parts.extend(z.as_ref());
    let values = crate::nn::cpu::with_f32_rows_all("sampler", &parts, |v| {
        let mean = v[0].0.iter().zip(v[1].0).map(|(&a, &b)| (a * c0 + 0.0) + (b * ct + 0.0));
        match v.get(2) {
            Some((z, _)) => mean.zip(*z).map(|(m, &z)| m + (z * sigma + 0.0)).collect::<Vec<f32>>(),
            None => mean.collect(),
        }
    })?;
    Tensor::from_vec(values, x.shape(), x.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The sampler's one-pass update gives the bits of candle's `(x0 * c0 + x * ct) + z * sigma`.
    #[test]
    fn weighted_sum_gives_candle_s_bits() -> Result<()> {
        let (dev, mut rng) = (Device::Cpu, crate::rng::stream(9, "test", 0));
        let [x0, x, z] = [0, 1, 2].map(|_| crate::rng::randn(&mut rng, (7, 33), &dev).unwrap());
        let (c0, ct, sigma) = (0.3127, 0.9431, 0.1093);
        let bits = |t: &Tensor| -> Result<Vec<u32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f32::to_bits).collect()) };
        let mean = ((&x0 * c0)? + (&x * ct)?)?;
        assert_eq!(bits(&weighted_sum(&x0, c0, &x, ct, None)?)?, bits(&mean)?);
        assert_eq!(bits(&weighted_sum(&x0, c0, &x, ct, Some((z.clone(), sigma)))?)?, bits(&(mean + (z * sigma)?)?)?);
        Ok(())
    }

    fn sched() -> Schedule {
        Schedule::new(&ScheduleConfig::default()).unwrap()
    }

    #[test]
    fn default_schedule_destroys_the_signal() {
        let s = sched();
        assert_eq!(s.steps(), 50);
        assert!(s.abar(50) < MAX_ABAR_T, "abar_T = {}", s.abar(50));
        assert!(Schedule::new(&ScheduleConfig { steps: 5, beta_start: 1e-5, beta_end: 1e-4 }).is_err());
    }

    /// Schedules the flags cannot refuse one at a time are refused here, naming the flags.
    #[test]
    fn bad_schedules_are_refused_naming_the_options() {
        let err = |cfg: ScheduleConfig| Schedule::new(&cfg).unwrap_err().to_string();
        let d = ScheduleConfig::default();
        assert!(err(ScheduleConfig { steps: 1, ..d }).contains("--timesteps"));
        for (beta_start, beta_end) in [(0.02, 0.01), (0.01, 0.01), (0.0, 0.02), (1e-4, 1.0)] {
            let e = err(ScheduleConfig { beta_start, beta_end, ..d });
            assert!(e.contains("0 < --beta-start < --beta-end < 1"), "{beta_start} {beta_end}: {e}");
        }
        // Each within (0, 1), but above 1 once scaled by 1000 / T.
        let e = err(ScheduleConfig { steps: 10, beta_start: 1e-4, beta_end: 0.02 });
        assert!(e.contains("--beta-start and --beta-end") && e.contains("--timesteps 10"), "{e}");
        assert!(e.contains("with --beta-end 0.02, use --timesteps 21 or more, or with --timesteps 10 a --beta-end below 0.01"), "{e}");
        assert!(Schedule::new(&ScheduleConfig { steps: 21, ..d }).is_ok() && Schedule::new(&ScheduleConfig { steps: 20, ..d }).is_err());
    }

    /// Eq. 15 closed form equals composing eq. 14 step by step: the variance of
    /// x_t = sqrt(1-b_t) x_{t-1} + sqrt(b_t) e_t accumulates to 1 - abar_t and the mean to sqrt(abar_t).
    #[test]
    fn closed_form_marginal_matches_step_products() {
        let s = sched();
        let (mut mean, mut var) = (1.0f64, 0.0f64);
        for t in 1..=s.steps() {
            mean *= s.alpha(t).sqrt();
            var = s.alpha(t) * var + s.beta(t);
            let (a, b) = s.q_sample_coeffs(t);
            assert!((a - mean).abs() < 1e-12, "t={t}");
            assert!((b * b - var).abs() < 1e-12, "t={t}");
        }
    }

    /// Eq. 21-22 for one step equal the Gaussian product of q(x_t|x_{t-1}) and q(x_{t-1}|x_0),
    /// computed from the precisions directly.
    #[test]
    fn posterior_matches_bayes_rule() {
        let s = sched();
        for t in 2..=s.steps() {
            let (a_prev, b) = (s.abar(t - 1), s.beta(t));
            let prec = s.alpha(t) / b + 1.0 / (1.0 - a_prev);
            let var = 1.0 / prec;
            let c_xt = var * s.alpha(t).sqrt() / b;
            let c_x0 = var * a_prev.sqrt() / (1.0 - a_prev);
            let (c0, ct) = s.posterior_mean_coeffs(t, t - 1);
            assert!((s.posterior_variance(t, t - 1) - var).abs() < 1e-12);
            assert!((c0 - c_x0).abs() < 1e-10 && (ct - c_xt).abs() < 1e-10, "t={t}");
        }
    }

    /// With an exact x_0 prediction, eq. 22's mean equals eq. 16's mean with the exact noise.
    #[test]
    fn x0_and_eps_parameterisations_agree() {
        let s = sched();
        let (x0, eps) = (0.7f64, -1.3f64);
        for t in 1..=s.steps() {
            let (a, b) = s.q_sample_coeffs(t);
            let xt = a * x0 + b * eps;
            let (c0, ct) = s.posterior_mean_coeffs(t, t - 1);
            let (ex, ee) = s.eps_mean_coeffs(t);
            let m22 = c0 * x0 + ct * xt;
            let m16 = ex * xt + ee * eps;
            assert!((m22 - m16).abs() < 1e-9, "t={t}: {m22} vs {m16}");
        }
    }

    /// Both samplers return the x_0 prediction itself on the final jump to s = 0.
    #[test]
    fn last_jump_lands_on_x0() {
        let s = sched();
        for t in [1, 7, 50] {
            for (c0, ct) in [s.posterior_mean_coeffs(t, 0), s.ddim_coeffs(t, 0)] {
                assert!((c0 - 1.0).abs() < 1e-12 && ct.abs() < 1e-12, "t={t}: {c0} {ct}");
            }
            assert!(s.posterior_variance(t, 0).abs() < 1e-15);
        }
    }

    #[test]
    fn strided_steps() {
        let s = sched();
        assert_eq!(s.sampling_steps(50), (1..=50).rev().collect::<Vec<_>>());
        let st = s.sampling_steps(10);
        assert_eq!(st.len(), 10);
        assert_eq!((st[0], st[9]), (50, 1));
        assert!(st.windows(2).all(|w| w[0] > w[1]));
        assert_eq!(s.sampling_steps(1), vec![50]);
        assert_eq!(s.sampling_steps(500).len(), 50);
    }
}

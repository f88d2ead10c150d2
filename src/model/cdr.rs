//! CDR: cross-modal diffusion reconstruction (paper section 3.3.2). The diffused variable is
//! the text feature x_s; the condition is the visual feature x_v; a four-layer MLP predicts x_s^0.

use super::denoiser::DenoiserMlp;
use super::diffusion::{Schedule, ScheduleConfig};
pub use crate::nn::activation::Activation;
use crate::nn::linear::Linear;
use crate::rng::{Noise, SeededRng};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Sinusoidal embedding of step t: `[sin(t f_i), cos(t f_i)]`, `f_i = 10000^(-i / (dim/2))`.
pub fn time_embedding_row(t: usize, dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let freq = |i: usize| (-(10000f64.ln()) * i as f64 / half as f64).exp();
    let sin = (0..half).map(|i| (t as f64 * freq(i)).sin() as f32);
    let cos = (0..half).map(|i| (t as f64 * freq(i)).cos() as f32);
    sin.chain(cos).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SamplerMode {
    /// DDPM ancestral sampling, eq. 21-23 (the paper; stochastic).
    Ancestral,
    /// DDIM with eta = 0 (deterministic given the starting noise).
    Ddim,
}

/// How `--samples K` draws of x_CDR become one prediction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SampleAverage {
    /// Average the class probabilities of the K draws: the posterior predictive.
    #[default]
    Probs,
    /// Average the K sampled features, then classify once.
    Features,
}

/// How x_CDR is drawn at inference.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct SamplerConfig {
    /// Reverse process: `ancestral` (the paper, eq. 21-23) or `ddim` (deterministic).
    #[arg(long = "sampler", value_name = "SAMPLER", value_enum, default_value = "ancestral")]
    pub mode: SamplerMode,
    /// Reverse-diffusion steps when sampling x_CDR: a strided subsequence of the model's T
    /// diffusion steps (`--timesteps` in training); T or more runs every step.
    #[arg(long, default_value_t = 10, value_parser = crate::options::at_least_one::<usize>)]
    pub steps: usize,
    /// Draws of x_CDR per image.
    #[arg(long, default_value_t = 1, value_parser = crate::options::at_least_one::<usize>)]
    pub samples: usize,
    /// How the draws combine: `probs` averages class probabilities (the posterior predictive),
    /// `features` averages the sampled features and classifies once.
    #[serde(default)]
    #[arg(long, value_enum, default_value = "probs")]
    pub average: SampleAverage,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        crate::options::defaults()
    }
}

impl std::fmt::Display for SamplerConfig {
    /// In words, e.g. `ancestral sampling (eq. 21-23), 10 reverse steps, 1 draw per image`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.mode {
            SamplerMode::Ancestral => "ancestral sampling (eq. 21-23)",
            SamplerMode::Ddim => "DDIM sampling (deterministic)",
        };
        write!(f, "{mode}, {} reverse step{}", self.steps, if self.steps == 1 { "" } else { "s" })?;
        match (self.samples, self.average) {
            (1, _) => write!(f, ", 1 draw per image"),
            (k, SampleAverage::Probs) => write!(f, ", {k} draws per image with their class probabilities averaged"),
            (k, SampleAverage::Features) => write!(f, ", {k} draws per image with their features averaged"),
        }
    }
}

/// What the CDR and fused classifiers see in training (the MSE of eq. 19 always uses the
/// one-step prediction).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CdrTrainInput {
    /// The one-step prediction `X(x_s^t, t, x_v)`; its input still holds the text at small t.
    Onestep,
    /// x_CDR from the reverse sampler run from noise as at inference (DDIM, `train_steps`
    /// steps; gradient only through the last denoiser call, not through the chain).
    Sampled,
    /// The prediction at t = T from pure noise, `X(eps, T, x_v)`: x_v alone, as at inference.
    #[default]
    Noise,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CdrConfig {
    pub dv: usize,
    pub ds: usize,
    pub hidden: usize,
    pub temb: usize,
    pub act: Activation,
    pub schedule: ScheduleConfig,
}

/// The denoiser's first layer split for sampling: the x_t part, the emb(t) part, and the x_v
/// part already applied to the batch's condition.
struct FirstLayer {
    x: Linear,
    t: Linear,
    cond: Tensor,
}

/// The random draws of one training forward ([`Cdr::draw`]): per-row steps t and eps [b, ds].
#[derive(Clone)]
pub struct DiffusionDraws {
    t: Vec<usize>,
    eps: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct Cdr {
    den: DenoiserMlp,
    schedule: Schedule,
    /// Row t is the time embedding of step t, t = 0..=T.
    temb: Tensor,
    ds: usize,
}

impl Cdr {
    pub fn load(vb: VarBuilder, cfg: &CdrConfig) -> anyhow::Result<Self> {
        let schedule = Schedule::new(&cfg.schedule)?;
        let den = DenoiserMlp::load(vb.pp("den"), cfg.ds + cfg.temb + cfg.dv, cfg.hidden, cfg.ds, cfg.act)?;
        let rows: Vec<f32> = (0..=schedule.steps()).flat_map(|t| time_embedding_row(t, cfg.temb)).collect();
        let temb = Tensor::from_vec(rows, (schedule.steps() + 1, cfg.temb), vb.device())?;
        Ok(Self { den, schedule, temb, ds: cfg.ds })
    }

    /// `X_theta(x_s^t, t, x_v)`: the x_s^0 prediction for a batch with per-row steps `t`; `xv`'s b
    /// rows stand for each block of b rows of `x_t` (the first layer's x_v part computed once).
    pub fn denoise(&self, x_t: &Tensor, t: &[usize], xv: &Tensor) -> Result<Tensor> {
        let idx = Tensor::from_vec(t.iter().map(|&t| t as u32).collect(), t.len(), xv.device())?;
        let emb = self.temb.index_select(&idx, 0)?;
        self.den.forward_tiled(&Tensor::cat(&[x_t, &emb], 1)?, xv)
    }

    /// The draws of a training forward ([`Cdr::reconstruct_drawn`]) for `b` rows, in their order:
    /// t ~ U{1..T} per row, then eps.
    pub fn draw(&self, b: usize, rng: &mut SeededRng) -> DiffusionDraws {
        let t = (0..b).map(|_| rng.random_range(1..=self.schedule.steps())).collect();
        DiffusionDraws { t, eps: crate::rng::normal_vec(rng, b * self.ds) }
    }

    /// Training forward, eq. 15 (x_s^t from x_s and the draws t and eps, [`Cdr::draw`]) and the
    /// x_s^0 prediction `X(x_s^t, t, x_v)` of eq. 19; the caller applies eq. 19-20 (MSE to x_s plus
    /// CE of the classifier on the prediction). With `also` = (x, t)
    /// ([`Cdr::train_input`], x of x_s's shape), the prediction `X(x, t, x_v)` too, in the same
    /// denoiser pass (its rows after the batch's): one pass of 2b rows instead of two of b.
    pub fn reconstruct_drawn(&self, xs: &Tensor, xv: &Tensor, draws: DiffusionDraws, also: Option<(Tensor, usize)>) -> Result<(Tensor, Option<Tensor>)> {
        let (b, ds) = xs.dims2()?;
        let DiffusionDraws { t, eps } = draws;
        if t.len() != b || eps.len() != b * ds {
            candle_core::bail!("cdr: draws for {} rows of {} values, the batch is {b} x {ds}", t.len(), eps.len() / t.len().max(1));
        }
        let (a, s): (Vec<f32>, Vec<f32>) = t
            .iter()
            .map(|&t| {
                let (a, s) = self.schedule.q_sample_coeffs(t);
                (a as f32, s as f32)
            })
            .unzip();
        let dev = xs.device();
        let a = Tensor::from_vec(a, (b, 1), dev)?;
        let s = Tensor::from_vec(s, (b, 1), dev)?;
        let eps = Tensor::from_vec(eps, (b, ds), dev)?;
        let x_t = (xs.broadcast_mul(&a)? + eps.broadcast_mul(&s)?)?;
        let Some((x, step)) = also else { return Ok((self.denoise(&x_t, &t, xv)?, None)) };
        if x.dims() != xs.dims() {
            candle_core::bail!("cdr: a second input of {:?} beside a batch of {:?}", x.shape(), xs.shape());
        }
        let steps: Vec<usize> = t.iter().copied().chain(std::iter::repeat_n(step, b)).collect();
        let both = self.denoise(&Tensor::cat(&[&x_t, &x], 0)?, &steps, xv)?;
        Ok((both.narrow(0, 0, b)?, Some(both.narrow(0, b, b)?)))
    }

    /// What the denoiser is given for the classifiers' training input (see [`CdrTrainInput`]): x
    /// and its step t (`Noise`: eps at T; `Sampled`: DDIM's x at its last step), for
    /// [`Cdr::reconstruct_drawn`]'s `also`; `None` for `Onestep`.
    pub fn train_input(&self, input: CdrTrainInput, xv: &Tensor, train_steps: usize, rng: &mut SeededRng) -> Result<Option<(Tensor, usize)>> {
        let (b, dev) = (xv.dim(0)?, xv.device());
        match input {
            CdrTrainInput::Onestep => Ok(None),
            CdrTrainInput::Noise => Ok(Some((crate::rng::randn(rng, (b, self.ds), dev)?, self.schedule.steps()))),
            CdrTrainInput::Sampled => {
                let ts = self.schedule.sampling_steps(train_steps);
                let first = self.first_layer(xv)?;
                let x = crate::rng::randn(rng, (b, self.ds), dev)?;
                let last = *ts.last().expect("at least one step");
                // The last jump lands on the x_0 prediction (s = 0): the caller's pass, which keeps its gradient.
                Ok(Some((self.reverse(&first, SamplerMode::Ddim, &ts, x, &mut Noise::Shared(rng))?, last)))
            }
        }
    }

    /// Inference: `cfg.samples` draws of x_CDR from Gaussian noise guided by x_v.
    pub fn sample(&self, xv: &Tensor, cfg: &SamplerConfig, noise: &mut Noise) -> Result<Vec<Tensor>> {
        let first = self.first_layer(xv)?;
        let ts = self.schedule.sampling_steps(cfg.steps);
        let (b, dev) = (xv.dim(0)?, xv.device());
        (0..cfg.samples.max(1))
            .map(|_| {
                let x = noise.randn(b, self.ds, dev)?;
                let x = self.reverse(&first, cfg.mode, &ts, x, noise)?;
                // The final jump to s = 0 returns the x_0 prediction itself.
                self.jump(&first, cfg.mode, x, *ts.last().expect("at least one step"), 0, noise)
            })
            .collect()
    }

    /// The first layer's product with `[x_t | emb(t) | x_v]` as the sum of three parts: the x_v
    /// part is the same at every step (and draw), the emb(t) part the same for every row.
    fn first_layer(&self, xv: &Tensor) -> Result<FirstLayer> {
        let temb = self.temb.dim(1)?;
        let [x, t, v]: [Linear; 3] = self.den.split_first(&[self.ds, temb, xv.dim(1)?])?.try_into().expect("three parts");
        Ok(FirstLayer { x, t, cond: v.forward(xv)? })
    }

    /// The reverse jumps `ts[i] -> ts[i+1]` from `x` (detached): x at step `ts.last()`.
    fn reverse(&self, first: &FirstLayer, mode: SamplerMode, ts: &[usize], mut x: Tensor, noise: &mut Noise) -> Result<Tensor> {
        for w in ts.windows(2) {
            x = self.jump(first, mode, x, w[0], w[1], noise)?;
        }
        Ok(x)
    }

    /// One reverse jump `t -> s` (s < t; s = 0 gives the x_0 prediction).
    fn jump(&self, first: &FirstLayer, mode: SamplerMode, x: Tensor, t: usize, s: usize, noise: &mut Noise) -> Result<Tensor> {
        let (b, dev) = (x.dim(0)?, x.device().clone());
        let step = first.t.forward(&self.temb.narrow(0, t, 1)?)?;
        // No autograd record: the weights are variables, and it would keep every step's
        // activations alive until the loop ends.
        let x0 = self.den.sample_forward(&first.x, &step, &x, &first.cond)?;
        let sch = &self.schedule;
        match mode {
            SamplerMode::Ancestral => {
                // Eq. 22: posterior mean; eq. 21 and 23: add noise of variance beta_hat.
                let (c0, ct) = sch.posterior_mean_coeffs(t, s);
                let z = if s > 0 { Some((noise.randn(b, self.ds, &dev)?, sch.posterior_variance(t, s).sqrt())) } else { None };
                super::diffusion::weighted_sum(&x0, c0, &x, ct, z)
            }
            SamplerMode::Ddim => {
                let (c0, ct) = sch.ddim_coeffs(t, s);
                super::diffusion::weighted_sum(&x0, c0, &x, ct, None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    /// A CDR with dv 6, ds 5, hidden 16 and temb 4, its variables in `vm`.
    fn small_cdr(vm: &VarMap) -> Cdr {
        let cfg = CdrConfig { dv: 6, ds: 5, hidden: 16, temb: 4, act: Activation::Silu, schedule: ScheduleConfig::default() };
        Cdr::load(VarBuilder::from_varmap(vm, DType::F32, &Device::Cpu), &cfg).unwrap()
    }

    /// Sampling with the first layer split (x_v part once, emb(t) part once per step) gives
    /// what the plain denoiser on the concatenated input gives, step by step.
    #[test]
    fn split_first_layer_sampling_matches_the_plain_denoiser() -> Result<()> {
        let (dev, vm) = (Device::Cpu, VarMap::new());
        let cdr = small_cdr(&vm);
        let xv = crate::rng::randn(&mut crate::rng::stream(1, "test", 0), (3, 6), &dev)?;
        for mode in [SamplerMode::Ddim, SamplerMode::Ancestral] {
            let sampler = SamplerConfig { mode, steps: 5, samples: 1, ..Default::default() };
            let got = cdr.sample(&xv, &sampler, &mut Noise::Shared(&mut crate::rng::stream(2, "test", 0)))?.remove(0);
            // The same reverse process through `denoise`, with the same noise stream.
            let mut rng = crate::rng::stream(2, "test", 0);
            let mut noise = Noise::Shared(&mut rng);
            let ts = cdr.schedule.sampling_steps(5);
            let mut x = noise.randn(3, 5, &dev)?;
            for (i, &t) in ts.iter().enumerate() {
                let s = ts.get(i + 1).copied().unwrap_or(0);
                let x0 = cdr.denoise(&x, &[t; 3], &xv)?;
                x = match mode {
                    SamplerMode::Ddim => {
                        let (c0, ct) = cdr.schedule.ddim_coeffs(t, s);
                        ((x0 * c0)? + (x * ct)?)?
                    }
                    SamplerMode::Ancestral => {
                        let (c0, ct) = cdr.schedule.posterior_mean_coeffs(t, s);
                        let mean = ((x0 * c0)? + (x * ct)?)?;
                        if s > 0 { (mean + (noise.randn(3, 5, &dev)? * cdr.schedule.posterior_variance(t, s).sqrt())?)? } else { mean }
                    }
                };
            }
            let diff = (got - x)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "{mode:?}: {diff}");
        }
        Ok(())
    }

    /// The one-step prediction and the classifiers' input from one pass of 2b rows are the two
    /// passes of b rows each (both outputs, every weight's gradient); `Sampled`'s second half is
    /// DDIM sampling's result.
    #[test]
    fn one_pass_for_both_predictions_matches_two() -> Result<()> {
        let (dev, vm) = (Device::Cpu, VarMap::new());
        let cdr = small_cdr(&vm);
        let mut rng = crate::rng::stream(3, "test", 0);
        let (xs, xv) = (crate::rng::randn(&mut rng, (4, 5), &dev)?, crate::rng::randn(&mut rng, (4, 6), &dev)?);
        let draws = cdr.draw(4, &mut rng);
        let (x, t) = cdr.train_input(CdrTrainInput::Noise, &xv, 1, &mut rng)?.expect("noise");
        assert_eq!(t, cdr.schedule.steps());
        let separate = (cdr.reconstruct_drawn(&xs, &xv, draws.clone(), None)?.0, cdr.denoise(&x, &[t; 4], &xv)?);
        let (one, other) = cdr.reconstruct_drawn(&xs, &xv, draws.clone(), Some((x, t)))?;
        let (other, r) = (other.expect("asked for"), crate::rng::randn(&mut rng, (4, 5), &dev)?);
        let params: Vec<(String, candle_core::Var)> = vm.data().lock().unwrap().iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        let grads = |a: &Tensor, b: &Tensor| crate::nn::backward(&((a * &r)?.sum_all()? + b.sqr()?.sum_all()?)?, &params);
        let (g1, g2) = (grads(&separate.0, &separate.1)?, grads(&one, &other)?);
        let close = |a: &Tensor, b: &Tensor| -> Result<f32> { (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>() };
        assert!(close(&one, &separate.0)? < 1e-6, "the one-step half");
        assert!(close(&other, &separate.1)? < 1e-6, "the second half");
        for (name, var) in &params {
            assert!(close(g1.get(var.as_tensor()).expect("a gradient"), g2.get(var.as_tensor()).expect("a gradient"))? < 1e-5, "{name}");
        }
        let sampler = SamplerConfig { mode: SamplerMode::Ddim, steps: 3, samples: 1, ..Default::default() };
        let want = cdr.sample(&xv, &sampler, &mut Noise::Shared(&mut crate::rng::stream(4, "test", 0)))?.remove(0);
        let also = cdr.train_input(CdrTrainInput::Sampled, &xv, 3, &mut crate::rng::stream(4, "test", 0))?;
        assert!(close(&cdr.reconstruct_drawn(&xs, &xv, draws, also)?.1.expect("asked for"), &want)? < 1e-5, "sampled");
        Ok(())
    }

    #[test]
    fn time_embedding_layout() {
        let e = time_embedding_row(0, 8);
        assert_eq!(e, vec![0., 0., 0., 0., 1., 1., 1., 1.]);
        let e = time_embedding_row(3, 8);
        assert!((e[0] - 3f32.sin()).abs() < 1e-6 && (e[4] - 3f32.cos()).abs() < 1e-6);
        assert!((e[1] - (3.0f64 * 10000f64.powf(-0.25)).sin() as f32).abs() < 1e-6);
    }
}

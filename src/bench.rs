//! `marnet bench`: milliseconds per training step and inference samples/s on random features,
//! at the sizes of the PyTorch reference in `../shared/bench/` (compare like with like).

use crate::checkpoint::LoadedModel;
use crate::model::cdr::{SamplerConfig, SamplerMode};
use crate::model::marnet::MarnetConfig;
use crate::optim::{AdamW, AdamWConfig};
use crate::rng::{Noise, randn, stream};
use anyhow::Result;
use candle_core::{Device, Tensor};
use rand::Rng;
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub variant: String,
    pub batch: usize,
    pub params: usize,
    pub train_step_ms_median: f64,
    pub train_step_ms_min: f64,
    /// Medians of the step's phases: loss forward, backward, optimiser update.
    pub forward_ms_median: f64,
    pub backward_ms_median: f64,
    pub optimizer_ms_median: f64,
    /// (sampling steps, samples/s) for the inference batch.
    pub infer_samples_per_s: Vec<(usize, f64)>,
    pub threads: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

pub fn run(
    cfg: &MarnetConfig,
    batch: usize,
    iters: usize,
    infer_batch: usize,
    sampling_steps: &[usize],
    dev: &Device,
) -> Result<BenchResult> {
    let m = LoadedModel::init(cfg, 0, dev)?;
    let params = m.trainable_vars().iter().map(|(_, v)| v.elem_count()).sum();
    let mut opt = AdamW::new(m.trainable_vars(), AdamWConfig::default())?;
    let mut rng = stream(0, "bench", 0);
    let xv = randn(&mut rng, (batch, cfg.dv), dev)?;
    let xs = randn(&mut rng, (batch, cfg.ds), dev)?;
    let y: Vec<u32> = (0..batch).map(|_| rng.random_range(0..cfg.classes as u32)).collect();
    let y = Tensor::from_vec(y, batch, dev)?;
    let (mut times, mut fwd, mut bwd, mut upd) = (vec![], vec![], vec![], vec![]);
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    for i in 0..iters + 3 {
        // In candle's CPU thread pool, as training steps run (see train.rs).
        let (t0, t1, t2) = dev.with_context(|| -> Result<_> {
            let t0 = Instant::now();
            let losses = m.model.losses(&xv, &xs, &y, &mut rng)?;
            let mut total = losses[0].1.clone();
            for (_, l) in &losses[1..] {
                total = (total + l)?;
            }
            dev.synchronize()?;
            let t1 = Instant::now();
            let grads = crate::model::backward(&total, opt.params())?;
            dev.synchronize()?;
            let t2 = Instant::now();
            opt.step(&grads, 1.0)?;
            for (_, l) in &losses {
                l.to_scalar::<f32>()?;
            }
            dev.synchronize()?;
            Ok((t0, t1, t2))
        })?;
        if i >= 3 {
            times.push(ms(t0));
            fwd.push((t1 - t0).as_secs_f64() * 1e3);
            bwd.push((t2 - t1).as_secs_f64() * 1e3);
            upd.push(ms(t2));
        }
    }
    let xv = randn(&mut rng, (infer_batch, cfg.dv), dev)?;
    let mut infer = vec![];
    let steps: Vec<usize> = if cfg.variant.is_diffusive() { sampling_steps.to_vec() } else { vec![0] };
    for s in steps {
        let sampler = SamplerConfig { mode: SamplerMode::Ancestral, steps: s.max(1), samples: 1 };
        // One warm-up pass, then the median of three.
        let mut rates = vec![];
        for rep in 0..4 {
            let t0 = Instant::now();
            let p = dev.with_context(|| m.model.predict(&xv, &sampler, &mut Noise::Shared(&mut rng)))?;
            p.logits.flatten_all()?.to_vec1::<f32>()?;
            if rep > 0 {
                rates.push(infer_batch as f64 / t0.elapsed().as_secs_f64());
            }
        }
        infer.push((s, median(rates)));
    }
    Ok(BenchResult {
        variant: cfg.variant.name().into(),
        batch,
        params,
        train_step_ms_median: median(times.clone()),
        train_step_ms_min: times.iter().cloned().fold(f64::INFINITY, f64::min),
        forward_ms_median: median(fwd),
        backward_ms_median: median(bwd),
        optimizer_ms_median: median(upd),
        infer_samples_per_s: infer,
        threads: candle_core::utils::get_num_threads(),
    })
}

//! `marnet bench`: the speed measurements in one command, at the sizes of the PyTorch reference in
//! `../shared/bench/` (compare like with like): the machine's FMA peak, MARNet head training and
//! inference (at each thread count, each in a fresh process), and feature extraction (encoder
//! forward passes at 224 px, and image decoding).

mod extraction;
mod peak;
mod products;
mod step_products;
mod timing;

pub use extraction::{DecodeBench, EncoderBench, Extraction, VitStages, decode, encoder, extraction, vit_b16_random, vit_stages};
pub use peak::{Peak, fma_peak};
pub use products::{ProductBench, products};

use crate::checkpoint::LoadedModel;
use crate::model::cdr::{SamplerConfig, SamplerMode};
use crate::model::marnet::MarnetConfig;
use crate::optim::{AdamW, AdamWConfig};
use crate::rng::{Noise, randn, stream};
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};
use timing::{median, throughput};

/// Training step and inference of one head configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadBench {
    pub variant: String,
    pub threads: usize,
    pub batch: usize,
    pub params: usize,
    pub train_step_ms_median: f64,
    pub train_step_ms_min: f64,
    /// Medians of the step's phases: loss forward, backward (with the AdamW updates that run
    /// during it), the rest of the optimiser update.
    pub forward_ms_median: f64,
    pub backward_ms_median: f64,
    pub optimizer_ms_median: f64,
    /// Floating-point operations of the linear layers' products in one training step.
    pub train_step_gflop: f64,
    /// (sampling steps, samples/s) for the inference batch.
    pub infer_samples_per_s: Vec<(usize, f64)>,
    /// (sampling steps, GFLOP/s of the products) for the inference batch.
    pub infer_gflops: Vec<(usize, f64)>,
    /// The timed training steps' products by shape, inside the steps (CPU only), over
    /// `timed_steps` steps.
    pub step_products: Vec<crate::nn::cpu::log::ShapeTime>,
    /// The training steps timed (after the warm-up ones).
    pub timed_steps: usize,
}

impl HeadBench {
    pub fn train_gflops(&self) -> f64 {
        self.train_step_gflop / (self.train_step_ms_median / 1e3)
    }
}

/// Times `iters` training steps (after 3 warm-up steps) and inference on random features.
pub fn heads(cfg: &MarnetConfig, batch: usize, iters: usize, infer_batch: usize, sampling_steps: &[usize], dev: &Device) -> Result<HeadBench> {
    anyhow::ensure!(batch >= 1 && infer_batch >= 1, "--batch and --infer-batch must be at least 1");
    let m = LoadedModel::init(cfg, 0, dev)?;
    let params = m.trainable_vars().iter().map(|(_, v)| crate::nn::padded::logical_dims(v).iter().product::<usize>()).sum();
    let mut opt = AdamW::new(m.trainable_vars(), AdamWConfig::default())?;
    let mut rng = stream(0, "bench", 0);
    let xv = randn(&mut rng, (batch, cfg.dv), dev)?;
    let xs = randn(&mut rng, (batch, cfg.ds), dev)?;
    let y: Vec<u32> = (0..batch).map(|_| rng.random_range(0..cfg.classes as u32)).collect();
    let y = Tensor::from_vec(y, batch, dev)?;
    let (mut times, mut fwd, mut bwd, mut upd, mut flop) = (vec![], vec![], vec![], vec![], 0);
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let mut steps = || -> Result<()> {
        for i in 0..iters.max(1) + 3 {
            if i == 3 {
                crate::nn::cpu::log::start();
            }
            let flop0 = crate::nn::cpu::matmul_flop();
            // In candle's CPU thread pool, as training steps run (see train.rs).
            let s = dev.with_context(|| crate::train::step(&m.model, &mut opt, &xv, &xs, None, &y, &mut rng, 0.0))?;
            if i >= 3 {
                times.push(ms(s.forward + s.backward + s.update));
                fwd.push(ms(s.forward));
                bwd.push(ms(s.backward));
                upd.push(ms(s.update));
                flop = crate::nn::cpu::matmul_flop() - flop0;
            }
        }
        Ok(())
    };
    let done = steps();
    let step_products = crate::nn::cpu::log::stop();
    done?;
    let xv = randn(&mut rng, (infer_batch, cfg.dv), dev)?;
    let (mut infer, mut infer_gflops) = (vec![], vec![]);
    let steps: Vec<usize> = if cfg.variant.is_diffusive() { sampling_steps.to_vec() } else { vec![0] };
    for s in steps {
        let sampler = SamplerConfig { mode: SamplerMode::Ancestral, steps: s.max(1), samples: 1, ..Default::default() };
        let (rate, flop) = throughput(infer_batch, || {
            // One noise stream per row, as `eval`, `predict` and `serve` draw it.
            let mut rngs: Vec<_> = (0..infer_batch as u64).map(|row| crate::rng::image_noise(0, row)).collect();
            let p = dev.with_context(|| m.model.predict(&xv, &sampler, &mut Noise::PerRow(&mut rngs)))?;
            p.logits.flatten_all()?.to_vec1::<f32>()?;
            Ok(())
        })?;
        infer.push((s, rate));
        infer_gflops.push((s, flop as f64 / 1e9 * rate / infer_batch as f64));
    }
    Ok(HeadBench {
        variant: cfg.variant.name().into(),
        threads: candle_core::utils::get_num_threads(),
        batch,
        params,
        timed_steps: times.len(),
        train_step_ms_median: median(times.clone()),
        train_step_ms_min: times.iter().cloned().fold(f64::INFINITY, f64::min),
        forward_ms_median: median(fwd),
        backward_ms_median: median(bwd),
        optimizer_ms_median: median(upd),
        train_step_gflop: flop as f64 / 1e9,
        infer_samples_per_s: infer,
        infer_gflops,
        step_products,
    })
}

/// Runs `exe --threads N --device DEVICE --quiet bench --heads-only ARGS` and reads its result:
/// thread pools are sized once per process, so each thread count gets its own.
pub fn heads_in_child(exe: &std::path::Path, threads: usize, device: &str, args: &[String]) -> Result<HeadBench> {
    let out = std::process::Command::new(exe)
        .args(["--threads", &threads.to_string(), "--device", device, "--quiet", "bench", "--heads-only"])
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    // The child's own error line, without a backtrace that RUST_BACKTRACE may have added.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reason = stderr.lines().find(|l| l.starts_with("error:")).unwrap_or(stderr.trim());
    anyhow::ensure!(out.status.success(), "bench at {threads} threads failed: {reason}");
    serde_json::from_slice(&out.stdout).context("unreadable result of the bench child process")
}

/// The CPU's model name from `/proc/cpuinfo` (`unknown CPU` elsewhere).
pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let name = info.lines().find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_string()));
    format!("{}, {} logical cores", name.unwrap_or_else(|| "unknown CPU".into()), std::thread::available_parallelism().map_or(0, |n| n.get()))
}

/// What `marnet bench` measures (the heads in one child process per thread count).
pub struct BenchRequest {
    pub model: MarnetConfig,
    /// Training batch, timed steps, inference batch and sampling steps of the heads.
    pub batch: usize,
    pub iters: usize,
    pub infer_batch: usize,
    pub sampling_steps: Vec<usize>,
    /// Thread counts for the heads (empty: 1 and this process's count; `heads` false: none).
    pub thread_counts: Vec<usize>,
    /// Whether to time the heads at all.
    pub heads: bool,
    /// The encoder rows need the assets folder; `None` leaves them out.
    pub assets: Option<std::path::PathBuf>,
    /// EfficientNet-Lite0's and the `visual` encoders' batch sizes, one row each (ViT-B/16 is
    /// timed at batch 8).
    pub encoder_batches: Vec<usize>,
    /// More encoders to time, as `--visual` names them (`resnet50:FILE`, ...).
    pub visual: Vec<String>,
    /// This process's `bench` arguments (after `bench`), passed on to the child processes.
    pub args: Vec<String>,
    /// The `--device` the child processes time the heads on (`cpu`, `cuda`, `cuda:N`).
    pub device: String,
    pub progress: bool,
}

/// Runs every measurement of `req`.
pub fn run(req: &BenchRequest, dev: &Device) -> Result<Report> {
    let threads = candle_core::utils::get_num_threads();
    anyhow::ensure!(req.thread_counts.iter().all(|&t| t >= 1), "--thread-counts must all be at least 1");
    anyhow::ensure!(req.encoder_batches.iter().all(|&b| b >= 1), "--encoder-batches must all be at least 1");
    let mut counts = match (req.heads, req.thread_counts.is_empty()) {
        (false, _) => vec![],
        (true, true) => vec![1, threads],
        (true, false) => req.thread_counts.clone(),
    };
    counts.dedup();
    let exe = std::env::current_exe()?;
    let mut heads = vec![];
    for t in counts {
        if req.progress {
            eprintln!("timing the {} head at {t} thread(s)...", req.model.variant.name());
        }
        heads.push(heads_in_child(&exe, t, &req.device, &child_args(&req.args))?);
    }
    let Extraction { encoders, decode, vit_stages } = match &req.assets {
        None => Extraction { encoders: vec![], decode: None, vit_stages: None },
        Some(a) => extraction(a, &req.encoder_batches, &req.visual, req.progress, dev)?,
    };
    // The products alone: with the extraction rows, and only where marnet's kernels run.
    let (products, peak_one_thread) = match req.assets.is_some() && dev.is_cpu() {
        true => {
            if req.progress {
                eprintln!("timing the matrix products alone...");
            }
            (products(), Some(fma_peak(1)))
        }
        false => (vec![], None),
    };
    let peak = fma_peak(threads);
    Ok(Report { cpu: cpu_model(), device: req.device.clone(), peak, peak_one_thread, heads, encoders, decode, vit_stages, products, epoch_rows: 66_071 })
}

/// The `bench` arguments that the per-thread-count child processes take too: all but those
/// that set threads, outputs and extraction.
fn child_args(args: &[String]) -> Vec<String> {
    let (with_value, flags) = (
        ["--threads", "--thread-counts", "--assets", "--json", "--device", "--encoder-batches", "--visual"],
        ["--skip-extraction", "--quiet", "-q", "--verbose", "-v"],
    );
    let mut out = vec![];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if with_value.contains(&a.as_str()) {
            it.next();
        } else if !flags.contains(&a.as_str()) && !with_value.iter().any(|f| a.starts_with(&format!("{f}="))) {
            out.push(a.clone());
        }
    }
    out
}

/// Everything `marnet bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The CPU's model name, as `/proc/cpuinfo` gives it (speed differs more between CPU
    /// vendors than within one: every table names it).
    pub cpu: String,
    /// Where the heads and encoders ran (`--device`); the peak and decoding are the CPU's.
    pub device: String,
    pub peak: Peak,
    /// The peak of one thread alone (a lone core may clock higher than with all busy), the
    /// yardstick of the products table's one-thread column; measured with that table.
    pub peak_one_thread: Option<Peak>,
    pub heads: Vec<HeadBench>,
    pub encoders: Vec<EncoderBench>,
    pub decode: Option<DecodeBench>,
    pub vit_stages: Option<VitStages>,
    /// The matrix products alone on the heads' and ViT-B/16's shapes (CPU only).
    pub products: Vec<ProductBench>,
    /// Rows per epoch the training step is scaled to (Vireo-Food172's training split).
    pub epoch_rows: usize,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let p = &self.peak;
        writeln!(f, "{}\n", self.cpu)?;
        if self.device != "cpu" {
            writeln!(f, "heads and encoders on {}; the FMA peak and JPEG decoding are the CPU's\n", self.device)?;
        }
        let show = |g: Option<f64>| g.map_or("n/a".to_string(), |g| format!("{g:.0} GFLOP/s"));
        writeln!(f, "FMA peak, {} threads: AVX2 {}, AVX-512 {}\n", p.threads, show(p.avx2_gflops), show(p.avx512_gflops))?;
        if !self.heads.is_empty() {
            self.fmt_heads(f)?;
        }
        if !self.encoders.is_empty() || self.decode.is_some() {
            self.fmt_extraction(f)?;
        }
        if !self.products.is_empty() {
            self.fmt_products(f)?;
        }
        Ok(())
    }
}

impl Report {
    /// The head training and inference tables.
    fn fmt_heads(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let peak = self.peak.avx512_gflops.or(self.peak.avx2_gflops);
        writeln!(
            f,
            "| head training ({}) | threads | step (median) | fwd / bwd with AdamW / rest | products | % of peak | epoch of {} rows |",
            self.heads.first().map_or("", |h| &h.variant),
            self.epoch_rows
        )?;
        writeln!(f, "|---|---|---|---|---|---|---|")?;
        for h in &self.heads {
            let steps = self.epoch_rows.div_ceil(h.batch) as f64;
            // The peak was measured with all of `peak.threads` busy; scale it to the head's threads.
            // Products are counted on the CPU path only: on a GPU both columns are n/a.
            let counted = h.train_step_gflop > 0.0;
            let pct = peak
                .filter(|_| counted)
                .map_or("n/a".into(), |p| format!("{:.0}%", 100.0 * h.train_gflops() / (p / self.peak.threads as f64 * h.threads as f64)));
            let products = if counted { format!("{:.0} GFLOP/s", h.train_gflops()) } else { "n/a".into() };
            writeln!(
                f,
                "| batch {}, {} parameters | {} | {:.2} ms | {:.2} / {:.2} / {:.2} ms | {products} | {pct} | {:.1} s |",
                h.batch,
                h.params,
                h.threads,
                h.train_step_ms_median,
                h.forward_ms_median,
                h.backward_ms_median,
                h.optimizer_ms_median,
                steps * h.train_step_ms_median / 1e3
            )?;
        }
        writeln!(f, "\n| inference | threads | samples/s | products |\n|---|---|---|---|")?;
        for h in &self.heads {
            for ((s, rate), (_, g)) in h.infer_samples_per_s.iter().zip(&h.infer_gflops) {
                let products = if *g > 0.0 { format!("{g:.0} GFLOP/s") } else { "n/a".into() };
                writeln!(f, "| {s} sampling steps | {} | {rate:.0} | {products} |", h.threads)?;
            }
        }
        writeln!(f)?;
        self.heads.iter().try_for_each(|h| step_products::fmt(f, h.threads, h.timed_steps, &h.step_products))
    }

    /// The encoder and decoding table.
    fn fmt_extraction(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        writeln!(f, "| extraction, 224 px | weights | batch | images/s |\n|---|---|---|---|")?;
        for e in &self.encoders {
            writeln!(f, "| {} forward | {} | {} | {:.2} |", e.backbone, e.weights, e.batch, e.images_per_s)?;
        }
        if let Some(d) = &self.decode {
            writeln!(f, "| JPEG {}x{} decode + preprocess | | | {:.1} |", d.width, d.height, d.images_per_s)?;
        }
        if let Some(v) = &self.vit_stages {
            writeln!(f, "\nViT-B/16 forward at batch {}, by stage: {:.0} ms a pass\n", v.batch, v.pass_ms)?;
            writeln!(f, "| stage | ms per pass | share | products |\n|---|---|---|---|")?;
            for (stage, ms, gflops) in &v.stages {
                let products = gflops.map_or(String::new(), |g| format!("{g:.0} GFLOP/s"));
                writeln!(f, "| {stage} | {ms:.1} | {:.1}% | {products} |", 100.0 * ms / v.pass_ms)?;
            }
        }
        Ok(())
    }

    /// The products-alone table, rates as GFLOP/s and as shares of the FMA peak of the threads
    /// used (the one-thread column against one thread's own peak).
    fn fmt_products(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let best = |p: &Peak| p.avx512_gflops.or(p.avx2_gflops);
        let cell = |g: f64, peak: Option<f64>| match peak {
            Some(p) => format!("{g:.0} ({:.0}%)", 100.0 * g / p),
            None => format!("{g:.0}"),
        };
        let (t, all, one) = (self.peak.threads, best(&self.peak), self.peak_one_thread.as_ref().and_then(best));
        writeln!(f, "\nmatrix products alone, GFLOP/s (share of the FMA peak of the threads used)\n")?;
        writeln!(
            f,
            "| product | m x n x k | marnet's split, {t} threads | matmul crate's split, {t} threads | matmul crate, one thread | marnet's split, rows 4 KiB apart padded |\n|---|---|---|---|---|---|"
        )?;
        for p in &self.products {
            let padded = p.padded_gflops.map_or("-".into(), |g| cell(g, all));
            let cells = [cell(p.marnet_gflops, all), cell(p.crate_split_gflops, all), cell(p.one_thread_gflops, one), padded];
            writeln!(f, "| {} | {} x {} x {} | {} |", p.what, p.m, p.n, p.k, cells.join(" | "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The products table rates each split against the peak of the threads it used: the two
    /// splits against the all-threads peak, the one-thread column against one thread's own.
    #[test]
    fn products_table_uses_each_columns_peak() {
        let peak = |threads, gflops| Peak { threads, avx2_gflops: Some(gflops), avx512_gflops: None };
        let row = ProductBench {
            what: "layer",
            m: 64,
            n: 1024,
            k: 1024,
            marnet_gflops: 100.0,
            crate_split_gflops: 50.0,
            one_thread_gflops: 60.0,
            padded_gflops: Some(150.0),
        };
        let report = Report {
            cpu: "test CPU".into(),
            device: "cpu".into(),
            peak: peak(2, 200.0),
            peak_one_thread: Some(peak(1, 120.0)),
            heads: vec![],
            encoders: vec![],
            decode: None,
            vit_stages: None,
            products: vec![row],
            epoch_rows: 1,
        };
        let text = report.to_string();
        assert!(text.contains("| layer | 64 x 1024 x 1024 | 100 (50%) | 50 (25%) | 60 (50%) | 150 (75%) |"), "{text}");
    }
}

//! The `marnet` command line: parses arguments and calls the library.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use marnet::align::Alignment;
use marnet::checkpoint::{Checkpoint, TrainConfig};
use marnet::features::{FeatureCache, FeatureSplit};
use marnet::model::cdr::{Activation, CdrTrainInput, SampleAverage, SamplerConfig, SamplerMode};
use marnet::model::diffusion::ScheduleConfig;
use marnet::model::fusion::Fusion;
use marnet::model::marnet::{LossWeights, MarnetConfig, Variant};
use marnet::optim::AdamWConfig;
use marnet::train::{Resume, Verbosity};
use std::path::{Path, PathBuf};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory mapped: training frees and reallocates the same activation-sized blocks
/// every step, and returning them to the OS made every step page-fault and zero them again
/// (a third of inference time in `perf`).
fn keep_freed_memory() {
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// MARNet: train image classifiers with text as privileged information.
///
/// Typical use: `marnet extract --dataset emoji-food --out cache` (after
/// `scripts/fetch-assets`; or `marnet synth --out cache` for synthetic features), then
/// `marnet ablate --cache cache --out runs --seeds 3` for the paper's Table 2,
/// `marnet compare ...` for its Table 1, or `marnet train --cache cache --out run` and
/// `marnet eval --model run --cache cache`.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Worker threads for CPU math (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Compute device: `cpu`, or `cuda` / `cuda:N` when built with the `cuda` feature.
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    /// No progress bars or per-epoch lines.
    #[arg(long, short, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// A line per training epoch (every loss term, val metrics) in `ablate`, `compare` and
    /// `demo` too; they show one progress bar per stage by default, `train` the epoch lines.
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a seeded synthetic feature cache in which text helps (visual = noisy map of text).
    Synth {
        /// Output cache folder.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        cfg: marnet::synth::SynthConfig,
    },
    /// Train one variant on a feature cache; select the epoch on `val`; report test.
    Train {
        /// Feature cache folder (train.safetensors, optional val/test).
        #[arg(long)]
        cache: PathBuf,
        /// Run folder: `best/` (selected on val) and `last/` (for --resume).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "marnet")]
        variant: Variant,
        /// Continue from `OUT/last` if it exists: same configuration, and made by this build from
        /// this cache (the fingerprints in its config.json), or it refuses.
        #[arg(long)]
        resume: bool,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        train: TrainArgs,
    },
    /// Top-1 / top-5 of a trained model on a split, from visual features only.
    Eval {
        /// Checkpoint folder, or a run folder (its `best/` is used).
        #[arg(long)]
        model: PathBuf,
        /// Feature cache (default: the one the model was trained on; a leave-one-out fold run
        /// always uses its fold of the cache).
        #[arg(long)]
        cache: Option<PathBuf>,
        #[arg(long, default_value = "test")]
        split: String,
        #[command(flatten)]
        sampler: SamplerArgs,
        /// Seed of the sampling noise.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Also write the result as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Also write each row's top-1 class as JSON Lines here (`{id, label, predicted, class}`).
        #[arg(long)]
        predictions: Option<PathBuf>,
    },
    /// Package a trained model for `predict` and `serve`: the heads, the visual encoder's
    /// weights (copied), preprocessing, class names and the inference settings, in one folder.
    Export {
        /// Run folder (its `best/` is used) or checkpoint folder.
        #[arg(long)]
        model: PathBuf,
        /// Bundle folder to write.
        #[arg(long)]
        out: PathBuf,
        /// Visual encoder the cache was extracted with (as for `extract --visual`).
        #[arg(long, default_value = "efficientnet-lite0")]
        visual: String,
        /// Folder `scripts/fetch-assets` filled [default: $MARNET_ASSETS, else ./assets, else the
        /// assets/ of the checkout marnet was built from].
        #[arg(long)]
        assets: Option<PathBuf>,
        #[command(flatten)]
        sampler: SamplerArgs,
        /// Seed of the sampling noise (with each image's bytes).
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Classify image files with a bundle (`marnet export`): files, folders (recursive) or
    /// list files (.txt/.lst, one path per line). Unreadable files are reported and skipped;
    /// the exit status is 2 if any failed.
    Predict {
        /// Bundle folder.
        #[arg(long)]
        model: PathBuf,
        /// Images, folders or list files.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Classes per image.
        #[arg(long, default_value_t = 5)]
        top_k: usize,
        #[arg(long, value_enum, default_value = "table")]
        format: marnet::predict::Format,
        /// Images per forward pass.
        #[arg(long, default_value_t = 32)]
        batch: usize,
    },
    /// Serve a bundle over HTTP: `POST /predict` (image body or multipart; `?k=`), `GET /health`,
    /// `GET /model`. Prints `listening on http://ADDR`; Ctrl-C stops it.
    Serve {
        /// Bundle folder.
        #[arg(long)]
        model: PathBuf,
        /// Address to bind (loopback by default; port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: std::net::SocketAddr,
        /// Largest request body, MiB.
        #[arg(long, default_value_t = 8.0)]
        max_body_mib: f64,
        /// Most images per forward pass.
        #[arg(long, default_value_t = 32)]
        max_batch: usize,
        /// Milliseconds to wait for more requests to fill a batch.
        #[arg(long, default_value_t = 2)]
        batch_wait_ms: u64,
        /// Per-request limit (decode + inference), seconds.
        #[arg(long, default_value_t = 30.0)]
        timeout_s: f64,
        /// Classes per answer unless the request says `?k=`.
        #[arg(long, default_value_t = 5)]
        top_k: usize,
        /// Seconds a client has to send a request's headers (from connecting, or from the first
        /// byte of a later request on a kept-alive connection); slower clients are disconnected,
        /// so stalled "slowloris" clients cannot hold connections open.
        #[arg(long, default_value_t = 10.0)]
        header_timeout_s: f64,
        /// Seconds a kept-alive connection may sit with no request before the server closes it.
        #[arg(long, default_value_t = 60.0)]
        idle_timeout_s: f64,
        /// Most connections open at once. Beyond it the server stops accepting: new clients wait
        /// in the kernel's listen backlog until a connection closes (the timeouts above bound
        /// how long a stalled client holds one).
        #[arg(long, default_value_t = 256)]
        max_connections: usize,
    },
    /// The main job: on the built-in emoji-food benchmark (after `scripts/fetch-assets`),
    /// extract features (cached in OUT/cache), train every ablation row and alignment baseline
    /// over --seeds, test on the held-out Apple images, and write OUT/report/ (tables, figures,
    /// report.html).
    Demo {
        #[arg(long, default_value = "runs/demo")]
        out: PathBuf,
        /// `emoji-food` (128 classes, minutes) or `emoji-all` (1,583 classes: every emoji all
        /// four vendors draw, without flags; use its own --out).
        #[arg(long, default_value = "emoji-food")]
        dataset: String,
        /// Test on every vendor in turn (leave-one-vendor-out, 4 folds) instead of Apple alone.
        #[arg(long)]
        leave_one_out: bool,
        /// Folder `scripts/fetch-assets` filled [default: $MARNET_ASSETS, else ./assets, else the
        /// assets/ of the checkout marnet was built from].
        #[arg(long)]
        assets: Option<PathBuf>,
        #[arg(long, default_value_t = 3)]
        seeds: u64,
        #[arg(long, default_value_t = 30)]
        epochs: usize,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        report: ReportArgs,
    },
    /// Regenerate DIR/report/ (tables, t-SNE and confidence figures, training curves,
    /// report.html) from the saved results of `ablate`, `compare` or `demo` in DIR.
    Report {
        dir: PathBuf,
        #[command(flatten)]
        report: ReportArgs,
    },
    /// The paper's ablation (Table 2): every variant x every seed, mean ± std on test.
    /// Writes `OUT/ablation.md` and `OUT/ablation.json`; rerunning reuses finished runs made by this
    /// build from this cache and trains stale ones again.
    Ablate {
        #[command(flatten)]
        table: TableArgs,
        /// Variants to run (default: all five rows).
        #[arg(long, value_enum, value_delimiter = ',')]
        variants: Vec<Variant>,
    },
    /// The alignment comparison (Table 1): visual baseline, EMA with each alignment loss
    /// (SWD, SSAN, CDD, SDM, TEAM, ITA) and MARNet, same budget, mean ± std on test.
    /// Writes `OUT/comparison.md` and `OUT/comparison.json`.
    Compare {
        #[command(flatten)]
        table: TableArgs,
        /// Alignment losses to compare (default: all six).
        #[arg(long = "methods", value_enum, value_delimiter = ',')]
        aligns: Vec<Alignment>,
    },
    /// Encode a dataset into a feature cache with the frozen encoders (images: EfficientNet-Lite0,
    /// text: MiniLM), from the assets `scripts/fetch-assets` downloads.
    Extract(ExtractArgs),
    /// Concatenate shard caches (in the order given) into one cache.
    MergeShards {
        #[arg(long)]
        out: PathBuf,
        /// Shard cache folders, in shard order.
        #[arg(required = true)]
        shards: Vec<PathBuf>,
    },
    /// Time training steps and inference on random features (defaults: the reference's sizes).
    Bench {
        #[arg(long, value_enum, default_value = "marnet")]
        variant: Variant,
        #[arg(long, default_value_t = 768)]
        dv: usize,
        #[arg(long, default_value_t = 768)]
        ds: usize,
        #[arg(long, default_value_t = 172)]
        classes: usize,
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Timed training steps (after 3 warm-up steps).
        #[arg(long, default_value_t = 100)]
        iters: usize,
        #[arg(long, default_value_t = 500)]
        infer_batch: usize,
        /// Reverse-diffusion step counts to time inference with.
        #[arg(long, value_delimiter = ',', default_value = "10,50")]
        sampling_steps: Vec<usize>,
        /// Thread counts to time the heads at, each in a fresh process (default: 1 and --threads).
        #[arg(long, value_delimiter = ',')]
        thread_counts: Vec<usize>,
        /// Leave out the encoder and decoding measurements.
        #[arg(long)]
        skip_extraction: bool,
        /// Folder `scripts/fetch-assets` filled [default: $MARNET_ASSETS, else ./assets, else the
        /// assets/ of the checkout marnet was built from].
        #[arg(long)]
        assets: Option<PathBuf>,
        /// Also write every number as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Internal: time the heads only, at this process's thread count, and print JSON.
        #[arg(long, hide = true)]
        heads_only: bool,
        #[command(flatten)]
        model: ModelArgs,
    },
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// How x_EMA and x_CDR are fused (eq. 24).
    #[arg(long, value_enum, default_value = "concat")]
    fusion: Fusion,
    /// EMA's alignment loss (the paper: ita).
    #[arg(long, value_enum, default_value = "ita")]
    align: Alignment,
    /// EMA shared-space dimension d.
    #[arg(long, default_value_t = 256)]
    d: usize,
    /// Denoiser MLP width.
    #[arg(long, default_value_t = 1024)]
    hidden: usize,
    /// Time-embedding dimension.
    #[arg(long, default_value_t = 128)]
    temb: usize,
    /// Denoiser nonlinearity.
    #[arg(long, value_enum, default_value = "silu")]
    act: Activation,
    /// Diffusion steps T.
    #[arg(long = "T", default_value_t = 50)]
    t_steps: usize,
    /// Linear beta schedule start (given for T = 1000, scaled by 1000/T).
    #[arg(long, default_value_t = 1e-4)]
    beta_start: f64,
    #[arg(long, default_value_t = 0.02)]
    beta_end: f64,
    /// Weight of the EMA cross-entropy (eq. 13).
    #[arg(long, default_value_t = 1.0)]
    a1: f64,
    /// Weight of the ITA loss (eq. 13).
    #[arg(long, default_value_t = 1.0)]
    beta: f64,
    /// Weight of the CDR cross-entropy (eq. 20).
    #[arg(long, default_value_t = 1.0)]
    a2: f64,
    /// Weight of the reconstruction error (eq. 20); eq. 19 is the squared L2 norm per sample
    /// in standardised text units (gamma = 1/Ds gives a per-dimension mean instead).
    #[arg(long, default_value_t = 1.0)]
    gamma: f64,
    /// What the CDR and fused classifiers see in training: `noise` (the prediction at t = T from
    /// pure noise, x_v alone, as at inference), `sampled` (a DDIM sample from noise, gradient
    /// through its last step only) or `onestep` (the denoised x_s^t, which still holds the text).
    #[arg(long, value_enum, default_value = "noise")]
    cdr_train_input: CdrTrainInput,
    /// DDIM steps of `--cdr-train-input sampled`.
    #[arg(long, default_value_t = 4)]
    cdr_train_steps: usize,
    /// Add a linear image-only classifier's logits to the EMA and fused heads (a residual path
    /// around the d-dimensional EMA bottleneck).
    #[arg(long)]
    residual: bool,
    /// MARNet: after training, fit on validation how much the prediction leans on the fused
    /// head: `(1 - w) p_EMA + w p_fused`, w in {0, 0.1, ..., 1} (ties: more fusion).
    #[arg(long)]
    gate: bool,
}

impl ModelArgs {
    fn config(&self, variant: Variant, dv: usize, ds: usize, classes: usize) -> MarnetConfig {
        MarnetConfig {
            fusion: self.fusion,
            align: self.align,
            d: self.d,
            hidden: self.hidden,
            temb: self.temb,
            act: self.act,
            schedule: ScheduleConfig { steps: self.t_steps, beta_start: self.beta_start, beta_end: self.beta_end },
            weights: LossWeights { a1: self.a1, beta: self.beta, a2: self.a2, gamma: self.gamma },
            cdr_train_input: self.cdr_train_input,
            cdr_train_steps: self.cdr_train_steps,
            residual: self.residual,
            gate: self.gate,
            ..MarnetConfig::new(variant, dv, ds, classes)
        }
    }
}

#[derive(Args, Clone)]
struct TableArgs {
    /// Feature cache folder (needs a test split).
    #[arg(long)]
    cache: PathBuf,
    /// Folder for the runs (`OUT/<row>/seed<k>`) and the table.
    #[arg(long)]
    out: PathBuf,
    /// Number of seeds (0..N).
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Leave-one-vendor-out: every group of rows (the first path component of the row ids: the
    /// vendor, for the emoji datasets) is the test split once, whatever split the cache put it
    /// in; runs go to OUT/fold-<vendor>/. The table reports each fold and the mean.
    #[arg(long)]
    leave_one_out: bool,
    /// With --leave-one-out, where validation comes from: `in-style` (one image each of 20% of
    /// the training rows' classes) or `group` (every image of the next training vendor: a style
    /// the model has not trained on, for choosing settings that must transfer).
    #[arg(long, value_enum, default_value = "in-style")]
    fold_val: marnet::folds::FoldVal,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    train: TrainArgs,
}

impl TableArgs {
    fn open(&self, variant: Variant) -> Result<(FeatureCache, MarnetConfig)> {
        let cache = FeatureCache::open(&self.cache)?;
        let base = self.model.config(variant, cache.train.dv, cache.train.ds, cache.num_classes());
        Ok((cache, base))
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        cache: &FeatureCache,
        arms: &[marnet::experiments::Arm],
        what: &str,
        first_column: &str,
        file: &str,
        verbosity: Verbosity,
        dev: &candle_core::Device,
    ) -> Result<()> {
        let seeds: Vec<u64> = (0..self.seeds).collect();
        let folds: Vec<marnet::folds::FoldSpec> = match self.leave_one_out {
            true => marnet::folds::groups(cache)?
                .into_iter()
                .map(|g| marnet::folds::FoldSpec { test_group: g, val: self.fold_val, seed: self.train.seed })
                .collect(),
            false => vec![],
        };
        let rows = marnet::experiments::run_arms(cache, arms, &self.train.config(), &seeds, &folds, &self.out, verbosity, dev)?;
        let split = match folds.len() {
            0 => "test split".to_string(),
            n => {
                let val = clap::ValueEnum::to_possible_value(&self.fold_val).map(|v| v.get_name().to_string()).unwrap_or_default();
                format!("leave-one-vendor-out over {n} folds, {val} validation")
            }
        };
        let table = marnet::experiments::Table {
            title: format!(
                "{what} on `{}`: {} seeds, {} epochs; {split}, model selected on val",
                cache.dir.display(),
                seeds.len(),
                self.train.epochs
            ),
            first_column: first_column.into(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            train: self.train.config(),
            rows,
        };
        table.write(&self.out, file)?;
        println!("{}", table.markdown());
        Ok(())
    }
}

#[derive(Args, Clone)]
struct ReportArgs {
    /// TrueType font for the figures [default: DejaVuSans.ttf in the assets folder, found as
    /// for `extract --assets`].
    #[arg(long)]
    font: Option<PathBuf>,
    /// Classes in the t-SNE figure (Fig. 3), and rows per class at most.
    #[arg(long, default_value_t = 5)]
    tsne_classes: usize,
    #[arg(long, default_value_t = 100)]
    tsne_per_class: usize,
    /// Test images in the top-5 figure (Fig. 4).
    #[arg(long, default_value_t = 6)]
    examples: usize,
}

impl ReportArgs {
    /// The options, with the font found in `assets` (or as `--assets` would be) unless given.
    fn options(&self, assets: Option<&Path>, progress: bool) -> Result<marnet::report::ReportOptions> {
        Ok(marnet::report::ReportOptions {
            font: match &self.font {
                Some(f) => f.clone(),
                None => marnet::assets::resolve(assets)?.join(marnet::assets::FONT),
            },
            tsne_classes: self.tsne_classes,
            tsne_per_class: self.tsne_per_class,
            examples: self.examples,
            progress,
        })
    }
}

#[derive(Args, Clone)]
struct SamplerArgs {
    /// Reverse process: `ancestral` (the paper, eq. 21-23) or `ddim` (deterministic).
    #[arg(long, value_enum, default_value = "ancestral")]
    sampler: SamplerMode,
    /// Reverse steps (a strided subsequence of 1..=T).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Draws of x_CDR per image.
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// How the draws combine: `probs` averages class probabilities (the posterior predictive),
    /// `features` averages the sampled features and classifies once.
    #[arg(long, value_enum, default_value = "probs")]
    average: SampleAverage,
}

impl SamplerArgs {
    fn config(&self) -> SamplerConfig {
        SamplerConfig { mode: self.sampler, steps: self.steps, samples: self.samples, average: self.average }
    }
}

#[derive(Args, Clone)]
struct TrainArgs {
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// AdamW decoupled weight decay.
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Clip the global gradient norm to this (0: off).
    #[arg(long, default_value_t = 0.0)]
    clip_grad: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fraction of train held out for model selection when the cache has no `val`.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    #[arg(long, default_value_t = 500)]
    eval_batch: usize,
    #[command(flatten)]
    sampler: SamplerArgs,
}

impl TrainArgs {
    fn config(&self) -> TrainConfig {
        TrainConfig {
            epochs: self.epochs,
            batch: self.batch,
            optim: AdamWConfig { lr: self.lr, weight_decay: self.weight_decay, ..Default::default() },
            clip_grad: self.clip_grad,
            seed: self.seed,
            val_fraction: self.val_fraction,
            sampler: self.sampler.config(),
            eval_batch: self.eval_batch,
        }
    }
}

/// `marnet extract` settings; recorded in the cache's `extract.json`.
#[derive(Args, Debug, serde::Serialize)]
struct ExtractArgs {
    /// Dataset: `emoji-food` (built in; the 128 Food & Drink emoji, split by vendor),
    /// `emoji-all` (built in; the 1,583 emoji all four vendors draw, without flags), `vireo172`,
    /// `ingredient101` (their published layouts under --root) or `manifest` (--root is a
    /// JSON Lines file).
    #[arg(long, default_value = "emoji-food")]
    dataset: String,
    /// Dataset folder (vireo172, ingredient101) or manifest file.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Folder `scripts/fetch-assets` filled [default: $MARNET_ASSETS, else ./assets, else the
    /// assets/ of the checkout marnet was built from].
    #[arg(long)]
    assets: Option<PathBuf>,
    /// Visual encoder: `efficientnet-lite0` (fetched), `vit:DIR` (Hugging Face ViT folder),
    /// `resnet18:FILE` or `resnet50:FILE` (torchvision-layout safetensors).
    #[arg(long, default_value = "efficientnet-lite0")]
    visual: String,
    /// Output cache folder.
    #[arg(long)]
    out: PathBuf,
    /// emoji-food / emoji-all: the vendor held out as the test split (`ablate --leave-one-out`
    /// re-splits the cache so every vendor is test once).
    #[arg(long, default_value = "apple")]
    test_vendor: String,
    /// emoji-all: add the training vendors' skin-tone variants as extra training images of their
    /// base class (never in val or test).
    #[arg(long)]
    skin_tones: bool,
    /// emoji-food / emoji-all: fraction of the training vendors' images held out for validation.
    #[arg(long, default_value_t = 0.2)]
    val_fraction: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Only the first N samples of each split (a quick trial).
    #[arg(long)]
    limit: Option<usize>,
    /// Extract only slice i of n (`--shard 0/4`); combine with `marnet merge-shards`.
    #[arg(long)]
    shard: Option<String>,
    /// Leave out images that cannot be read (listed with the reason in OUT/skipped.jsonl)
    /// instead of stopping at the first one.
    #[arg(long)]
    skip_bad: bool,
}

fn device(name: &str) -> Result<candle_core::Device> {
    match name {
        "cpu" => Ok(candle_core::Device::Cpu),
        s if s.starts_with("cuda") => {
            let ordinal = s.strip_prefix("cuda:").map(str::parse).transpose().context("--device cuda:N")?;
            Ok(candle_core::Device::new_cuda(ordinal.unwrap_or(0))?)
        }
        other => anyhow::bail!("unknown device `{other}` (use cpu, cuda or cuda:N)"),
    }
}

fn main() {
    if let Err(e) = run() {
        if let Some(i) = e.downcast_ref::<marnet::interrupt::Interrupted>() {
            eprintln!("{i}");
            std::process::exit(130);
        }
        if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) {
            std::process::exit(0); // output piped into `head` and friends
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// This process's `bench` options that the per-thread-count child processes take too.
fn bench_child_args() -> Vec<String> {
    let args: Vec<String> = std::env::args().skip_while(|a| a != "bench").skip(1).collect();
    let (with_value, flags) = (["--threads", "--thread-counts", "--assets", "--json", "--device"], ["--skip-extraction", "--quiet", "-q"]);
    let mut out = vec![];
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if with_value.contains(&a.as_str()) {
            it.next();
        } else if !flags.contains(&a.as_str()) && !with_value.iter().any(|f| a.starts_with(&format!("{f}="))) {
            out.push(a);
        }
    }
    out
}

/// Read by candle when its elementwise thread pool starts.
const BARRIER_SPIN_ENV: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

fn run() -> Result<()> {
    keep_freed_memory();
    let cli = Cli::parse();
    marnet::interrupt::install();
    if std::env::var_os(BARRIER_SPIN_ENV).is_none() {
        // candle's pool for elementwise ops spins 25,000 rounds after each op before it sleeps;
        // with 2 cores the spinning thread takes a core from the matrix products (measured:
        // training steps 2-3 ms faster at 200 rounds; BENCHMARKS.md). A value the user set wins.
        unsafe { std::env::set_var(BARRIER_SPIN_ENV, "200") };
    }
    if let Some(n) = cli.threads {
        // Read by candle's gemm and rayon pools on first use; nothing has started yet.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    let dev = device(&cli.device)?;
    let verbosity = match (cli.quiet, cli.verbose || matches!(cli.cmd, Cmd::Train { .. })) {
        (true, _) => Verbosity::Quiet,
        (false, true) => Verbosity::Epochs,
        (false, false) => Verbosity::Progress,
    };
    match cli.cmd {
        Cmd::Synth { out, cfg } => {
            let c = marnet::synth::write(&cfg, &out)?;
            for (name, s) in [("train", Some(&c.train)), ("val", c.val.as_ref()), ("test", c.test.as_ref())] {
                if let Some(s) = s {
                    println!("{name}: {} rows, visual {}-d, text {}-d", s.len(), s.dv, s.ds);
                }
            }
            println!("wrote {}", out.display());
        }
        Cmd::Train { cache, out, variant, resume, model, train } => {
            let cache = FeatureCache::open(&cache)?;
            let mcfg = model.config(variant, cache.train.dv, cache.train.ds, cache.num_classes());
            let state = marnet::train::train(&cache, &mcfg, &train.config(), &out, if resume { Resume::Strict } else { Resume::Never }, verbosity, &dev)?;
            println!(
                "best epoch {} (val top1 {:.2}%) saved in {}",
                state.best_epoch.unwrap_or(0),
                100.0 * state.best_val_top1,
                out.join("best").display()
            );
            if let Some(t) = state.test {
                println!("test top1 {:.2}% top5 {:.2}%", 100.0 * t.final_head.top1, 100.0 * t.final_head.top5);
            }
        }
        Cmd::Eval { model, cache, split, sampler, seed, json, predictions } => {
            let ck = Checkpoint::open(&model, &dev)?;
            let cache_dir = cache.unwrap_or_else(|| ck.run.cache.clone());
            let cache = FeatureCache::open(&cache_dir)?;
            let cache = match &ck.run.fold {
                Some(f) => marnet::folds::fold(&cache, f)?,
                None => cache,
            };
            let data = match split.as_str() {
                "train" => Some(&cache.train),
                "val" => cache.val.as_ref(),
                "test" => cache.test.as_ref(),
                other => anyhow::bail!("unknown split `{other}` (train, val or test)"),
            }
            .with_context(|| format!("{}: no `{split}` split", cache_dir.display()))?;
            marnet::checkpoint::check_matches(&ck, data).with_context(|| FeatureCache::split_path(&cache_dir, &split).display().to_string())?;
            let m = ck.model(&dev)?;
            let t0 = std::time::Instant::now();
            let out = marnet::eval::predict_split(&m.model, data, &sampler.config(), seed, 500, &dev)?;
            let seconds = t0.elapsed().as_secs_f64();
            let reference = marnet::eval::TextReference::class_means(&cache.train, ck.run.model.classes);
            let r = marnet::eval::accuracy(&out, data, ck.run.model.classes, reference.as_ref());
            if let Some(p) = predictions {
                let rows = marnet::eval::row_predictions(data, &out.logits, &ck.run.classes);
                let lines: Vec<String> = rows.iter().map(serde_json::to_string).collect::<Result<_, _>>()?;
                marnet::fsutil::write_atomic(&p, (lines.join("\n") + "\n").as_bytes())?;
            }
            println!("| split | n | Acc-1 (%) | Acc-5 (%) | mean max prob |\n|---|---|---|---|---|");
            let heads = [("", Some(r.final_head)), (" (EMA head)", r.ema_head), (" (CDR head)", r.cdr_head)];
            for (name, h) in heads {
                if let Some(h) = h {
                    println!("| {split}{name} | {} | {:.2} | {:.2} | {:.3} |", h.n, 100.0 * h.top1, 100.0 * h.top5, h.mean_max_prob);
                }
            }
            if let Some(rc) = r.reconstruction {
                println!(
                    "reconstruction: mean cos(x_CDR, x_s) {:.3}; x_CDR nearest to its own class's mean text {:.2}%",
                    rc.cosine,
                    100.0 * rc.class_match
                );
            }
            let rate = data.len() as f64 / seconds;
            println!("inference: {} samples in {seconds:.2} s ({rate:.0} samples/s)", data.len());
            if let Some(p) = json {
                let record = serde_json::json!({
                    "model": ck.dir, "cache": cache_dir, "split": split, "seed": seed,
                    "sampler": sampler.config(), "result": r,
                    "inference_seconds": seconds, "samples_per_s": rate,
                });
                marnet::fsutil::write_atomic(&p, serde_json::to_string_pretty(&record)?.as_bytes())?;
            }
        }
        Cmd::Demo { out, dataset, leave_one_out, assets, seeds, epochs, model, report } => {
            let t0 = std::time::Instant::now();
            let assets = marnet::assets::resolve(assets.as_deref())?;
            let opts = marnet::demo::DemoOptions {
                out: out.clone(),
                report: report.options(Some(&assets), !cli.quiet)?,
                assets,
                dataset,
                leave_one_out,
                seeds: (0..seeds).collect(),
                train: TrainConfig { epochs, ..TrainConfig::default() },
                command: std::env::args().collect::<Vec<_>>().join(" "),
                verbosity,
            };
            let (tables, summary) = marnet::demo::run(&opts, |dv, ds, c| model.config(Variant::Marnet, dv, ds, c), &dev)?;
            for t in &tables {
                println!("{}", t.markdown());
            }
            println!("stage seconds: {}", summary["seconds"]);
            println!("report: {}; total wall time {:.1} s", out.join("report/report.html").display(), t0.elapsed().as_secs_f64());
        }
        Cmd::Report { dir, report } => {
            let t0 = std::time::Instant::now();
            let out = marnet::report::write(&dir, &report.options(None, !cli.quiet)?, &dev)?;
            println!("wrote {} in {:.1} s", out.join("report.html").display(), t0.elapsed().as_secs_f64());
        }
        Cmd::Ablate { table, variants } => {
            let (cache, base) = table.open(Variant::Marnet)?;
            let arms = marnet::experiments::ablation_arms(&base, &variants);
            table.run(&cache, &arms, "Ablation (Table 2)", "Module", "ablation", verbosity, &dev)?;
        }
        Cmd::Compare { table, aligns } => {
            let (cache, base) = table.open(Variant::Ema)?;
            let arms = marnet::experiments::alignment_arms(&base, &aligns);
            table.run(&cache, &arms, "Alignment methods (Table 1)", "Method", "comparison", verbosity, &dev)?;
        }
        Cmd::Extract(args) => {
            let ExtractArgs { dataset, root, assets, visual, out, test_vendor, skin_tones, val_fraction, seed, batch, limit, shard, skip_bad } = &args;
            let assets = &marnet::assets::resolve(assets.as_deref())?;
            let ds = marnet::data::open_with_skin_tones(dataset, root.as_deref(), assets, test_vendor, *val_fraction, *seed, *skin_tones)?;
            let ds = match shard {
                Some(s) => {
                    let (i, n) = marnet::data::parse_shard(s)?;
                    ds.shard(i, n)
                }
                None => ds,
            };
            let image_enc = marnet::encoders::load_image_encoder(visual, assets, &dev)?;
            let text_enc = marnet::encoders::text::TextEncoder::load(&assets.join("minilm"), &dev)?;
            let settings = serde_json::to_value(&args)?;
            let opts = marnet::extract::ExtractOptions { batch: *batch, limit: *limit, skip_bad: *skip_bad, progress: !cli.quiet, settings, reuse_current: false };
            let t0 = std::time::Instant::now();
            let (c, skipped) = marnet::extract::extract(&ds, image_enc.as_ref(), &text_enc, &opts, out, &dev)?;
            let rows = |s: &Option<FeatureSplit>| s.as_ref().map_or(0, |s| s.len());
            let n = c.train.len() + rows(&c.val) + rows(&c.test);
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "{}: {} classes; train {} / val {} / test {} rows; visual {}-d, text {}-d; {n} images in {secs:.1}s ({:.1} images/s); {} skipped; wrote {}",
                ds.name,
                ds.classes.len(),
                c.train.len(),
                rows(&c.val),
                rows(&c.test),
                c.train.dv,
                c.train.ds,
                n as f64 / secs,
                skipped.len(),
                out.display()
            );
        }
        Cmd::Export { model, out, visual, assets, sampler, seed } => {
            let b = marnet::bundle::export(&model, &visual, &marnet::assets::resolve(assets.as_deref())?, sampler.config(), seed, &out, &dev)?;
            println!("wrote bundle {} ({} classes, encoder {}, sampler {:?})", out.display(), b.classes.len(), b.visual_encoder, b.sampler);
        }
        Cmd::Predict { model, inputs, top_k, format, batch } => {
            let pred = marnet::bundle::Predictor::load(&model, &dev)?;
            let files = marnet::predict::collect_inputs(&inputs)?;
            let results = marnet::predict::predict_files(&pred, &files, top_k, batch, !cli.quiet)?;
            marnet::predict::write_results(&results, format, &mut std::io::stdout().lock())?;
            let failed = results.iter().filter(|r| r.error.is_some()).count();
            if failed > 0 {
                eprintln!("{failed} of {} images could not be read", results.len());
                std::process::exit(2);
            }
        }
        Cmd::Serve { model, addr, max_body_mib, max_batch, batch_wait_ms, timeout_s, top_k, header_timeout_s, idle_timeout_s, max_connections } => {
            let opts = marnet::serve::ServeOptions {
                addr,
                max_body: (max_body_mib * 1024.0 * 1024.0) as usize,
                max_batch,
                batch_wait: std::time::Duration::from_millis(batch_wait_ms),
                timeout: std::time::Duration::from_secs_f64(timeout_s),
                top_k,
                header_timeout: std::time::Duration::from_secs_f64(header_timeout_s),
                idle_timeout: std::time::Duration::from_secs_f64(idle_timeout_s),
                max_connections,
            };
            marnet::serve::serve(model, dev, opts)?;
        }
        Cmd::MergeShards { out, shards } => {
            let c = FeatureCache::merge_shards(&shards, &out)?;
            println!("merged {} shards: train {} rows; wrote {}", shards.len(), c.train.len(), out.display());
        }
        Cmd::Bench { variant, dv, ds, classes, batch, iters, infer_batch, sampling_steps, thread_counts, skip_extraction, assets, json, heads_only, model } => {
            let cfg = model.config(variant, dv, ds, classes);
            if heads_only {
                let r = marnet::bench::heads(&cfg, batch, iters, infer_batch, &sampling_steps, &dev)?;
                println!("{}", serde_json::to_string(&r)?);
                return Ok(());
            }
            let threads = candle_core::utils::get_num_threads();
            anyhow::ensure!(thread_counts.iter().all(|&t| t >= 1), "--thread-counts must all be at least 1");
            let mut counts = if thread_counts.is_empty() { vec![1, threads] } else { thread_counts };
            counts.dedup();
            let exe = std::env::current_exe()?;
            let mut heads = vec![];
            for t in counts {
                if !cli.quiet {
                    eprintln!("timing the {} head at {t} thread(s)...", variant.name());
                }
                heads.push(marnet::bench::heads_in_child(&exe, t, &bench_child_args())?);
            }
            let (encoders, decode) = match skip_extraction {
                true => (vec![], None),
                false => marnet::bench::extraction(&marnet::assets::resolve(assets.as_deref())?, !cli.quiet, &dev)?,
            };
            let peak = marnet::bench::fma_peak(threads);
            let report = marnet::bench::Report { peak, heads, encoders, decode, epoch_rows: 66_071 };
            print!("{report}");
            if let Some(p) = json {
                marnet::fsutil::write_atomic(&p, serde_json::to_string_pretty(&report)?.as_bytes())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks (unique names, valid defaults) over every subcommand.
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    /// `demo` trains with `TrainConfig::default()` and the other commands with the flags'
    /// defaults: they must agree.
    #[test]
    fn train_flag_defaults_are_the_library_defaults() {
        use clap::Parser;
        let cli = super::Cli::parse_from(["marnet", "train", "--cache", "c", "--out", "o"]);
        let super::Cmd::Train { train, model, .. } = cli.cmd else { unreachable!() };
        assert_eq!(train.config(), marnet::checkpoint::TrainConfig::default());
        // Likewise the model flags and `MarnetConfig::new` (CDR training input, steps, options).
        let v = super::Variant::Marnet;
        assert_eq!(model.config(v, 12, 10, 5), marnet::model::marnet::MarnetConfig::new(v, 12, 10, 5));
    }
}

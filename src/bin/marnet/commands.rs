//! The command line: every command and its arguments (shared groups in `options.rs`).

use crate::options::TableArgs;
use clap::{Parser, Subcommand};
use marnet::align::Alignment;
use marnet::config::Inference;
use marnet::config::TrainConfig;
use marnet::model::marnet::ModelOptions;
use marnet::model::marnet::Variant;
use std::path::PathBuf;

/// MARNet: train image classifiers with text as privileged information.
///
/// Typical use: `marnet extract --dataset manifest --root data.jsonl --out cache` on your own
/// images and texts (one JSON object a line; the README's "Your own data"), or `--dataset
/// emoji-food` (after `scripts/fetch-assets`), or `marnet synth --out cache`; then
/// `marnet ablate --cache cache --out runs --seeds 3` for the paper's Table 2,
/// `marnet compare ...` for its Table 1, or `marnet train --cache cache --out run` and
/// `marnet eval --model run --cache cache`.
#[derive(Parser)]
#[command(version, about, long_about)]
pub struct Cli {
    /// Worker threads for CPU math: the encoders and the heads [default: all cores].
    #[arg(long, global = true, help_heading = GLOBAL, value_parser = marnet::options::at_least_one::<usize>)]
    pub threads: Option<usize>,
    /// Compute device: `cpu`, or `cuda` / `cuda:N` when built with the `cuda` feature.
    #[arg(long, global = true, help_heading = GLOBAL, default_value = "cpu")]
    pub device: String,
    /// No progress bars or per-epoch lines on stderr (results and errors still print).
    #[arg(long, short, global = true, help_heading = GLOBAL, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Commands that train (`ablate`, `compare`, `demo`): a line per training epoch (every loss
    /// term, val metrics) instead of one progress bar per stage; `train` always prints them,
    /// other commands print the same either way.
    #[arg(long, short, global = true, help_heading = GLOBAL)]
    pub verbose: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The command line's parser: [`Cli`]'s, read as [`marnet::options::lenient`] says (negative
/// numbers reach the options' range checks; named values in any case).
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    marnet::options::lenient(Cli::command())
}

/// The heading of the options every command takes, apart from its own.
const GLOBAL: &str = "Global options";

#[derive(Subcommand)]
pub enum Cmd {
    /// Write a seeded synthetic feature cache in which text helps (visual = noisy map of text).
    Synth {
        /// Output cache folder.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        cfg: marnet::synth::SynthConfig,
        #[command(flatten)]
        tokens: marnet::synth::SynthTokens,
    },
    /// Train one variant on a feature cache; select the epoch on `val`; report test.
    Train {
        /// Feature cache folder (train.safetensors, optional val/test).
        #[arg(long)]
        cache: PathBuf,
        /// Run folder: `best/` (selected on val) and `last/` (for --resume).
        #[arg(long)]
        out: PathBuf,
        /// Model to train: a row of the paper's ablation (Table 2).
        #[arg(long, value_enum, default_value = "marnet")]
        variant: Variant,
        /// Continue from `OUT/last` if it exists: same configuration, and made by this build from
        /// this cache (the fingerprints in its config.json), or it refuses. Only --epochs may
        /// differ: a larger one trains a finished run on (its best/ may change; export it again);
        /// without --epochs it trains on to the run's own (the --epochs it last trained with).
        #[arg(long)]
        resume: bool,
        /// Start over, replacing a run already in --out (without it, a finished or interrupted
        /// run there is refused).
        #[arg(long, conflicts_with = "resume")]
        force: bool,
        #[command(flatten)]
        model: ModelOptions,
        #[command(flatten)]
        train: TrainConfig,
    },
    /// Top-1 / top-5 of a trained model on a split, from visual features only.
    Eval {
        /// Checkpoint folder, or a run folder (its `best/` is used).
        #[arg(long)]
        model: PathBuf,
        /// Feature cache to evaluate on [default: the one the model was trained on, refused if it
        /// changed since; a leave-one-out fold run uses its fold of it]. Another cache is a new
        /// test set, taken as it is: its classes are matched to the model's by name.
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Split to evaluate: `train`, `val` or `test`.
        #[arg(long, default_value = "test")]
        split: String,
        #[command(flatten)]
        inference: Inference,
        /// Also write the result as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Also write each row's top-1 class as JSON Lines here (`{id, label, label_class, predicted, class}`: the true and the top-1 class, each as index and name).
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
        /// Visual encoder to bundle, as for `extract --visual` [default: the one the run's cache
        /// was extracted with, as the run recorded it].
        #[arg(long)]
        visual: Option<String>,
        /// Folder `scripts/fetch-assets` filled [default: $MARNET_ASSETS, else ./assets, else the
        /// assets/ of the checkout marnet was built from].
        #[arg(long)]
        assets: Option<PathBuf>,
        #[command(flatten)]
        inference: Inference,
        /// Replace a bundle already in --out.
        #[arg(long)]
        force: bool,
    },
    /// Classify image files with a bundle (`marnet export`): files, folders (recursive) or
    /// list files (.txt/.lst, one path per line). Unreadable files are reported and skipped;
    /// the exit status is 2 if any failed.
    Predict {
        /// Bundle folder.
        #[arg(long)]
        model: PathBuf,
        /// Images, folders (searched with their subfolders) or list files (.txt, .lst: one image
        /// path a line, relative to the list file's folder).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Classes per image.
        #[arg(short = 'k', long, default_value_t = 5, value_parser = marnet::options::at_least_one::<usize>)]
        top_k: usize,
        /// Output format on stdout.
        #[arg(long, value_enum, default_value = "table")]
        format: marnet::predict::Format,
        /// Images per forward pass.
        #[arg(long, default_value_t = 32, value_parser = marnet::options::at_least_one::<usize>)]
        batch: usize,
    },
    /// Serve a bundle over HTTP: `POST /predict` (image body or multipart; `?k=`), `GET /health`,
    /// `GET /model`, `GET /stats` (passes, images, seconds in the encoder, the heads and waiting).
    /// Prints `listening on http://ADDR`; Ctrl-C stops it.
    Serve {
        /// Bundle folder.
        #[arg(long)]
        model: PathBuf,
        /// Address to bind, `HOST:PORT` (no `http://`) with a host name or an IP (`localhost:8080`, `0.0.0.0:8080`, `[::1]:8080`); loopback by default, port 0 picks a free one.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
        /// Largest request body, MiB.
        #[arg(long, default_value_t = 8.0, value_parser = marnet::options::positive_finite)]
        max_body_mib: f64,
        /// Most images per forward pass. Images decoded beyond it go in the next pass, so that
        /// the encoder runs one batch while the clients it answered send and decode the next
        /// (EfficientNet-Lite0 on a CPU: the same images/s from batch 2 to 32).
        #[arg(long, default_value_t = 8, value_parser = marnet::options::at_least_one::<usize>)]
        max_batch: usize,
        /// Milliseconds an idle server, woken by one request, waits for more to join its batch
        /// (never while decoded images are waiting).
        #[arg(long, default_value_t = 2)]
        batch_wait_ms: u64,
        /// Threads that decode request bodies, apart from the encoder's thread pool [default: one
        /// per core].
        #[arg(long, value_parser = marnet::options::at_least_one::<usize>)]
        decode_threads: Option<usize>,
        /// CPU priority of the decode threads (Linux): `idle` decodes only on CPU time the
        /// encoder and everything else leave (when other processes leave none, the inference
        /// thread decodes between its passes); `low` is nice 19, `normal` the encoder's.
        #[arg(long, value_enum, default_value = "idle")]
        decode_priority: marnet::serve::DecodePriority,
        /// Per-request limit (decode + inference), seconds.
        #[arg(long, default_value_t = 30.0, value_parser = marnet::options::positive_finite)]
        timeout_s: f64,
        /// Classes per answer unless the request says `?k=`.
        #[arg(long, default_value_t = 5, value_parser = marnet::options::at_least_one::<usize>)]
        top_k: usize,
        /// Seconds a client has to send a request's headers (from connecting, or from the first
        /// byte of a later request on a kept-alive connection); slower clients are disconnected,
        /// so stalled "slowloris" clients cannot hold connections open.
        #[arg(long, default_value_t = 10.0, value_parser = marnet::options::positive_finite)]
        header_timeout_s: f64,
        /// Seconds a kept-alive connection may sit with no request before the server closes it.
        #[arg(long, default_value_t = 60.0, value_parser = marnet::options::positive_finite)]
        idle_timeout_s: f64,
        /// Most connections open at once. Beyond it the server stops accepting: new clients wait
        /// in the kernel's listen backlog until a connection closes (the timeouts above bound
        /// how long a stalled client holds one).
        #[arg(long, default_value_t = 256, value_parser = marnet::options::at_least_one::<usize>)]
        max_connections: usize,
    },
    /// The main job: on the built-in emoji-food benchmark (after `scripts/fetch-assets`),
    /// extract features (cached in OUT/cache), train every ablation row and alignment baseline
    /// over --seeds, test on the held-out Apple images, and write OUT/report/ (tables, figures,
    /// report.html).
    Demo {
        /// Output folder: the feature cache, the runs, the tables and report/.
        #[arg(long, default_value = "runs/demo")]
        out: PathBuf,
        /// `emoji-food` (128 classes, minutes) or `emoji-all` (1,583 classes: every emoji all
        /// four vendors draw, without flags; use its own --out).
        #[arg(long, default_value = "emoji-food", value_parser = marnet::demo::dataset_name)]
        dataset: String,
        /// Test on every vendor in turn (leave-one-vendor-out, 4 folds) instead of Apple alone.
        #[arg(long)]
        leave_one_out: bool,
        /// Folder `scripts/fetch-assets` filled [default: $MARNET_ASSETS, else ./assets, else the
        /// assets/ of the checkout marnet was built from].
        #[arg(long)]
        assets: Option<PathBuf>,
        /// Runs per table row, with training seeds 0..N-1.
        #[arg(long, default_value_t = 3, value_parser = marnet::options::at_least_one::<u64>)]
        seeds: u64,
        /// Passes over the training rows in every run (the model is selected on val after each).
        #[arg(long, default_value_t = 30, value_parser = marnet::options::at_least_one::<usize>)]
        epochs: usize,
        #[command(flatten)]
        model: ModelOptions,
        #[command(flatten)]
        report: marnet::report::ReportOptions,
    },
    /// Regenerate DIR/report/ (tables, t-SNE and confidence figures, training curves,
    /// report.html) from the saved results of `ablate`, `compare` or `demo` in DIR.
    Report {
        /// The `--out` folder of `ablate`, `compare` or `demo`.
        dir: PathBuf,
        #[command(flatten)]
        report: marnet::report::ReportOptions,
    },
    /// The paper's ablation (Table 2): every variant x every seed, mean ± std on test.
    /// Writes `OUT/ablation.md` and `OUT/ablation.json`; rerunning with the same settings reuses
    /// finished runs made by this build from this cache and trains stale ones again; other
    /// settings are refused unless --force.
    Ablate {
        #[command(flatten)]
        table: TableArgs,
        /// Variants to run (default: all five rows; any case).
        #[arg(long, value_enum, value_delimiter = ',', ignore_case = true)]
        variants: Vec<Variant>,
    },
    /// The alignment comparison (Table 1): visual baseline, EMA with each alignment loss
    /// (SWD, SSAN, CDD, SDM, TEAM, ITA) and MARNet, same budget, mean ± std on test.
    /// Writes `OUT/comparison.md` and `OUT/comparison.json`; reruns as for `ablate`.
    Compare {
        #[command(flatten)]
        table: TableArgs,
        /// Alignment losses to compare (default: the six on pooled features; `team-tokens`, on
        /// request, needs a cache extracted with --tokens; any case: `ITA` is `ita`). ITA is
        /// EMA's own loss: its runs are the +EMA row's, in OUT/ema/.
        #[arg(long = "methods", value_enum, value_delimiter = ',', ignore_case = true)]
        aligns: Vec<Alignment>,
    },
    /// Encode a dataset into a feature cache with frozen encoders (by default EfficientNet-Lite0
    /// and MiniLM from the assets `scripts/fetch-assets` downloads; `--visual`, `--text` choose
    /// others).
    #[command(after_help = marnet::data::manifest::HELP)]
    Extract(marnet::extract::ExtractSettings),
    /// Join the caches of `extract --shard i/n` into the cache one extraction would have
    /// written, after checking that they are one set: every shard present once, finished, and
    /// extracted with the same settings by the same build (every missing, unfinished or
    /// differing one is named). A shell glob will do (`merge-shards --out CACHE shards/*`): each
    /// cache records its slice, and an unfinished `X.partial` is named as such.
    MergeShards {
        /// Output cache folder.
        #[arg(long)]
        out: PathBuf,
        /// Shard cache folders, in any order.
        #[arg(required = true)]
        shards: Vec<PathBuf>,
        /// Replace a cache already in --out (the same shards merged again are reused without it).
        #[arg(long)]
        force: bool,
    },
    /// Time training steps and inference on random features (defaults: the reference's sizes).
    Bench {
        /// Model whose heads are timed (a row of the paper's Table 2).
        #[arg(long, value_enum, default_value = "marnet")]
        variant: Variant,
        /// Visual feature dimension Dv of the random features.
        #[arg(long = "visual-dim", visible_alias = "dv", value_name = "DV", default_value_t = 768, value_parser = marnet::options::at_least_one::<usize>)]
        dv: usize,
        /// Text feature dimension Ds of the random features.
        #[arg(long = "text-dim", visible_alias = "ds", value_name = "DS", default_value_t = 768, value_parser = marnet::options::at_least_one::<usize>)]
        ds: usize,
        /// Number of classes of the heads.
        #[arg(long, default_value_t = 172, value_parser = marnet::options::at_least_one::<usize>)]
        classes: usize,
        /// Rows per timed training step.
        #[arg(long, default_value_t = 64, value_parser = marnet::options::at_least_one::<usize>)]
        batch: usize,
        /// Timed training steps (after 3 warm-up steps).
        #[arg(long, default_value_t = 100, value_parser = marnet::options::at_least_one::<usize>)]
        iters: usize,
        /// Rows per timed inference pass of the heads.
        #[arg(long, default_value_t = marnet::config::EVAL_BATCH, value_parser = marnet::options::at_least_one::<usize>)]
        infer_batch: usize,
        /// Reverse-diffusion step counts to time inference with.
        #[arg(long, value_delimiter = ',', default_value = "10,50", value_parser = marnet::options::at_least_one::<usize>)]
        sampling_steps: Vec<usize>,
        /// Thread counts to time the heads at, each in a fresh process (default: 1 and --threads).
        #[arg(long, value_delimiter = ',', value_parser = marnet::options::at_least_one::<usize>)]
        thread_counts: Vec<usize>,
        /// Leave out the encoder, decoding and products-alone measurements.
        #[arg(long)]
        skip_extraction: bool,
        /// Only the FMA peak, the encoders, decoding and the matrix products alone (on the heads' and
        /// ViT-B/16's shapes: marnet's split, the matmul crate's, one thread, and marnet's split with
        /// rows a multiple of 4 KiB apart padded, as the heads' layers hold them): leave out the heads.
        #[arg(long, conflicts_with = "skip_extraction")]
        extraction_only: bool,
        /// Batch sizes to time EfficientNet-Lite0 and the --visual encoders at, one row each
        /// (ViT-B/16 runs at batch 8).
        #[arg(long, value_delimiter = ',', default_value = "32", value_parser = marnet::options::at_least_one::<usize>)]
        encoder_batches: Vec<usize>,
        /// Also time this visual encoder on random images, named as `extract --visual` takes it
        /// (`resnet50:FILE`, `vgg19:FILE`, `repvgg_a2:FILE`, ...); repeat for more.
        #[arg(long = "visual", value_name = "SPEC", conflicts_with = "skip_extraction")]
        visual: Vec<String>,
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
        model: ModelOptions,
    },
}

impl Cmd {
    /// The model's options where the command trains or times a diffusive model with them (a
    /// table of rows of which one is), with the subcommand's name.
    pub fn diffusive_model_options(&self) -> Option<(&'static str, &ModelOptions)> {
        match self {
            Cmd::Train { model, variant, .. } if variant.is_diffusive() => Some(("train", model)),
            Cmd::Bench { model, variant, .. } if variant.is_diffusive() => Some(("bench", model)),
            Cmd::Ablate { table, variants } if variants.is_empty() || variants.iter().any(|v| v.is_diffusive()) => Some(("ablate", &table.options.model)),
            // Every comparison and demo has a MARNet row.
            Cmd::Compare { table, .. } => Some(("compare", &table.options.model)),
            Cmd::Demo { model, .. } => Some(("demo", model)),
            _ => None,
        }
    }
}

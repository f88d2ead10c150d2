//! # marnet
//!
//! MARNet (Multimodal Alignment and Reconstruction Network) on precomputed features, in Rust
//! on candle. Text is privileged information: it shapes training, and test time is image-only.
//!
//! ```text
//! dataset (data) ─ extract ─>     frozen encoders (encoders: EfficientNet-Lite0/2, ViT, Swin-T,
//!                                 ResNet, VGG, RepVGG; BERT/MiniLM) turn images and text into features
//! feature cache (features)        x_v [N, Dv], x_s [N, Ds], labels; one safetensors per split;
//!                                 leave-one-vendor-out folds of a cache (features::folds)
//!   └─ train (train, optim)       EMA (model::ema) + CDR (model::cdr, model::diffusion)
//!        │                        + fusion (model::fusion), variants in model::marnet
//!        ├─ eval (eval)           top-1 / top-5 from x_v alone
//!        └─ ablate / compare      the paper's Tables 2 and 1, mean ± std over seeds and
//!           (experiments, stats)  leave-one-vendor-out folds, CIs and paired tests
//!                                 (alignment losses of Table 1 in align)
//! ──────────────────────── under encoders, model, align, optim ─────────────────────────
//! nn                              linear layer and activations as CPU ops with hand-written
//!                                 backward passes (nn::linear, nn::activation), the CPU kernels
//!                                 (nn::cpu), normalisation (nn::norm); imports none of those
//! ```
//! `synth` writes a seeded synthetic cache in which text helps; `bench` times a training step
//! and inference. Around the pipeline: `runtime` (process set-up), `assets` (where the fetched
//! weights are), `config` (training and inference settings, declared once), `options` (option
//! structs' declared defaults), `fingerprint` (what a run or cache was made from),
//! `bundle`/`predict`/`serve` (a trained model on image files), `report` (figures and
//! report.html), `demo` (the whole chain), `stats`, `fsutil`, `rng`, `progress`,
//! `interrupt`, `words` (counts in messages).

pub mod align;
pub mod assets;
pub mod bench;
pub mod bundle;
pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod data;
#[cfg(feature = "report")]
pub mod demo;
pub mod encoders;
pub mod eval;
pub mod experiments;
pub mod extract;
pub mod features;
pub mod fingerprint;
pub mod fsutil;
pub mod interrupt;
pub mod lock;
pub mod model;
pub mod nn;
pub mod optim;
pub mod options;
pub mod predict;
pub mod progress;
#[cfg(feature = "report")]
pub mod report;
pub mod rng;
pub mod runtime;
#[cfg(feature = "serve")]
pub mod serve;
pub mod stats;
pub mod synth;
pub mod train;
pub mod words;

//! The training loop: AdamW on the weighted losses, model selection on `val`, a checkpoint
//! after each epoch (`RUN/last`, with optimiser state, for `--resume`; skipped where saving would
//! cost more than [`SAVE_SHARE`] of the time, as on small data) and the selected model in
//! `RUN/best`. Ctrl-C saves `RUN/last` mid-epoch and stops; `--resume` continues bit-identically.

use crate::checkpoint::{self, Checkpoint, LoadedModel, RunConfig};
use crate::config::TrainConfig;
use crate::eval::{TextReference, evaluate};
use crate::features::FeatureCache;
use crate::model::marnet::MarnetConfig;
use crate::optim::AdamW;
use anyhow::{Context, Result, ensure};
use candle_core::Device;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Most of a run's time that saving `RUN/last` after epochs may take: an epoch's end saves it
/// only when at least `1 / SAVE_SHARE` times the previous save's duration has passed since that
/// save ended (every epoch where an epoch takes 20 times a save, as on real data; on a few dozen
/// rows, where an epoch takes milliseconds and a save 0.1 s, about every 2 s). The last epoch,
/// Ctrl-C and SIGTERM always save.
pub const SAVE_SHARE: f64 = 0.05;

/// Whether an epoch's end at `now` saves `RUN/last`, given when the previous save ended and how
/// long it took ([`SAVE_SHARE`]).
fn save_due(last: Option<(Instant, Duration)>, now: Instant) -> bool {
    last.is_none_or(|(at, took)| now.saturating_duration_since(at).as_secs_f64() * SAVE_SHARE >= took.as_secs_f64())
}

mod gate;
mod order;
mod state;
mod step;
pub mod val_split;

pub use order::epoch_order;
pub use state::{EpochRecord, PartialEpoch, TrainState};
use step::train_step;
pub use step::{Step, step, token_batch};
pub use val_split::train_val;

/// How a run reports progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    /// Nothing (`--quiet`).
    Quiet,
    /// Progress bars only: one per stage (a table's runs, an extraction).
    Progress,
    /// Bars and a line per epoch with every loss term and the val metrics (`train`, or `-v`).
    Epochs,
}

/// What [`train`] does with a run already saved in its folder (`RUN/last`, `RUN/best`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Refuse, saying whether it is finished or interrupted (`train` without `--resume` or
    /// `--force`): finished work is never replaced unasked.
    Refuse,
    /// Start over, replacing it (`train --force`).
    Never,
    /// Continue it (`train --resume`); refuse if its settings or its fingerprint (code, data)
    /// differ from now.
    Strict,
    /// Continue it when its fingerprint is current, start over when not (the tables of
    /// `ablate`/`compare`/`demo`); refuse if its settings differ.
    IfCurrent,
}

/// The `--epochs` the run saved in `out` last trained with (its `last/` config): what `train
/// --resume` trains on to when no `--epochs` is given. `None` where no run is saved in `last/`.
pub fn saved_epochs(out: &Path) -> Option<usize> {
    let last = crate::fsutil::recover_dir(&out.join("last"))?;
    crate::fsutil::read_json::<RunConfig>(&last.join(checkpoint::CONFIG)).ok().map(|r| r.train.epochs)
}

/// Trains (or resumes) a run in `out`; returns the final state with test metrics if the cache
/// has a test split.
pub fn train(
    cache: &FeatureCache,
    model_cfg: &MarnetConfig,
    cfg: &TrainConfig,
    out: &Path,
    resume: Resume,
    verbosity: Verbosity,
    dev: &Device,
) -> Result<TrainState> {
    let _stop = crate::interrupt::stop_at_safe_points("stopping after the current step");
    ensure!(cfg.batch >= 1, "--batch must be at least 1");
    ensure!(cfg.optim.lr > 0.0 && cfg.optim.lr.is_finite(), "--lr must be a positive number");
    // The token widths come from the cache (and a token-level alignment without tokens stops here).
    let model_cfg = &model_cfg.with_cache_tokens(cache)?;
    let (train, val) = train_val(cache, cfg)?;
    let _lock = crate::lock::OutLock::acquire(out, "train")?;
    let other = [crate::checkpoint::WEIGHTS, "train.safetensors", "extract.json", "bundle.json"].into_iter().find(|f| out.join(f).exists());
    ensure!(
        other.is_none(),
        "{}: this folder holds a feature cache, a bundle or a checkpoint (`{}`); choose another --out for the run",
        out.display(),
        other.unwrap_or_default()
    );
    let last_dir = out.join("last");
    let saved_state = [last_dir.clone(), out.join("best")].iter().find_map(|d| crate::fsutil::recover_dir(d));
    let other = crate::fsutil::foreign_entries(out, |n| n.starts_with("best") || n.starts_with("last"));
    ensure!(
        other.is_empty() || saved_state.is_some(),
        "{}: this folder holds other things than a run ({}); a run writes best/ and last/ into --out: choose a new or empty folder",
        out.display(),
        crate::fsutil::name_list(&other)
    );
    match (resume, saved_state) {
        (Resume::Refuse, Some(found)) => {
            let state: TrainState = crate::fsutil::read_json(&found.join(checkpoint::METRICS)).unwrap_or_default();
            let planned = crate::fsutil::read_json::<RunConfig>(&found.join(checkpoint::CONFIG)).map_or(0, |r| r.train.epochs);
            let what = match (&state.partial, state.epochs_done >= planned) {
                (None, true) => format!("a finished run ({} epochs)", state.epochs_done),
                (None, false) => format!("an interrupted run ({} of {planned} epochs done)", state.epochs_done),
                (Some(p), _) => format!("an interrupted run ({} of {planned} epochs done, stopped inside epoch {})", state.epochs_done, p.epoch + 1),
            };
            anyhow::bail!("{}: {what} is already here; --resume continues it, --force replaces it, or choose another --out", out.display())
        }
        (Resume::Strict, None) if verbosity != Verbosity::Quiet => eprintln!("{}: no run here to resume: training a new one", out.display()),
        (Resume::Never, Some(_)) => {
            for dir in [last_dir.clone(), out.join("best")] {
                for d in [Some(dir.clone()), crate::fsutil::recover_dir(&dir)].into_iter().flatten().filter(|d| d.exists()) {
                    std::fs::remove_dir_all(&d).with_context(|| format!("{}: cannot remove", d.display()))?;
                }
            }
        }
        _ => {}
    }
    let meta = &cache.train.meta;
    let (cache_rel, cache_absolute) = RunConfig::locate_cache(&cache.dir, out);
    let visual =
        crate::fsutil::read_json::<serde_json::Value>(&cache.dir.join("extract.json")).ok().and_then(|j| j["settings"]["visual"].as_str().map(String::from));
    let run = RunConfig {
        model: model_cfg.clone(),
        train: cfg.clone(),
        classes: meta.classes.clone(),
        cache: cache_rel,
        cache_absolute,
        visual,
        visual_encoder: meta.visual_encoder.clone(),
        text_encoder: meta.text_encoder.clone(),
        dataset: meta.dataset.clone(),
        marnet_version: env!("CARGO_PKG_VERSION").to_string(),
        fold: cache.fold.clone(),
        fingerprint: crate::fingerprint::Fingerprint::current(crate::fingerprint::cache_data(cache)),
    };
    ensure!(train.text.is_some(), "{}: the training split has no text features", cache.dir.display());
    let model = LoadedModel::init(model_cfg, cfg.seed, dev)?;
    // The text standardisation comes from the training rows (a resumed run loads the saved one).
    model.model.fit_text_scale(train.text.as_deref().unwrap_or_default())?;
    let reference = TextReference::class_means(&train, model_cfg.classes);
    let mut opt = AdamW::new(model.trainable_vars(), cfg.optim)?;
    let mut state = TrainState::default();
    let saved = match resume {
        Resume::Never | Resume::Refuse => None,
        _ => crate::fsutil::recover_dir(&last_dir).map(|_| Checkpoint::open(&last_dir, dev)).transpose()?,
    };
    if let Some(ck) = saved.as_ref().filter(|ck| resume == Resume::IfCurrent && !ck.run.fingerprint.matches(&run.fingerprint)) {
        if verbosity != Verbosity::Quiet {
            eprintln!("{}: stale run (made by {}; now {}): training it again", out.display(), ck.run.fingerprint, run.fingerprint);
        }
        for dir in [last_dir.clone(), out.join("best")] {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).with_context(|| format!("{}: cannot remove", dir.display()))?;
            }
        }
    } else if let Some(ck) = saved {
        // Only the epoch budget may change on resume.
        let saved_train = TrainConfig { epochs: cfg.epochs, ..ck.run.train.clone() };
        if ck.run.model != run.model || saved_train != run.train {
            use crate::options::{changed_flags, flag_names};
            // `--variant` is the train command's own flag, beside the model's options.
            let mut model_flags = flag_names::<crate::model::marnet::ModelOptions>();
            model_flags.insert("variant".into(), "--variant".into());
            let changed =
                [changed_flags(&ck.run.model, &run.model, &[], &model_flags), changed_flags(&saved_train, &run.train, &[], &flag_names::<TrainConfig>())]
                    .concat();
            anyhow::bail!(
                "{}: cannot resume: the saved run used other settings ({}); resume with its settings (its config.json), or --force to start over",
                ck.dir.display(),
                changed.join(", ")
            );
        }
        let (saved, now) = (&ck.run.fingerprint, &run.fingerprint);
        let trained_on = ck.run.cache_absolute.as_ref().unwrap_or(&ck.run.cache).display();
        let why = match (saved.code == now.code, saved.data == now.data) {
            _ if saved.code.is_empty() => "by an older build, which recorded no fingerprint".to_string(),
            (true, _) => format!("from other data (it was trained on the cache at {trained_on}; --cache holds other rows, or they changed since)"),
            (false, true) => "by another build of marnet".to_string(),
            (false, false) => format!("by another build of marnet and from other data (it was trained on the cache at {trained_on})"),
        };
        ensure!(
            saved.matches(now),
            "{}: cannot resume: the saved run was made {why}\n  saved: {saved}\n  now:   {now}\nrerun with --force instead of --resume to start over",
            ck.dir.display()
        );
        model.set_weights(&ck.tensors, &ck.dir)?;
        state = serde_json::from_value(ck.metrics.clone()).with_context(|| format!("{}: unreadable metrics.json", ck.dir.display()))?;
        opt.load_state(&ck.tensors, state.optimizer_steps)?;
        if verbosity != Verbosity::Quiet && resume == Resume::Strict {
            let (done, planned) = (state.epochs_done, ck.run.train.epochs);
            let place = match &state.partial {
                Some(p) => format!("inside epoch {} (after step {})", p.epoch + 1, p.steps_done),
                None => format!("after epoch {done}"),
            };
            match done.cmp(&cfg.epochs) {
                std::cmp::Ordering::Less if planned != cfg.epochs => eprintln!(
                    "resuming {} {place}: training on to epoch {} (--epochs {}; the run was started for {planned})",
                    out.display(),
                    cfg.epochs,
                    cfg.epochs
                ),
                std::cmp::Ordering::Less => eprintln!("resuming {} {place} of {planned}", out.display()),
                _ => eprintln!(
                    "{}: the run already has {} (--epochs {}): nothing to train; its best/ stays as it is",
                    out.display(),
                    crate::words::count(done, "epoch"),
                    cfg.epochs
                ),
            }
        }
    }

    // Said once nothing refuses the run (not before a refusal).
    if cache.val.is_none() && verbosity == Verbosity::Epochs {
        eprintln!(
            "val: {:.0}% of train, {}, seeded (--seed {}); give rows `\"split\": \"val\"` to choose them yourself",
            100.0 * cfg.val_fraction,
            crate::words::count(val.len(), "row"),
            cfg.seed
        );
    }
    // When `RUN/last` was last saved, and how long that took.
    let mut last_save: Option<(Instant, Duration)> = None;
    for epoch in state.epochs_done..cfg.epochs {
        let t0 = Instant::now();
        let mut shuffle = crate::rng::stream(cfg.seed, "shuffle", epoch as u64);
        let mut noise = crate::rng::stream(cfg.seed, "noise", epoch as u64);
        let perm = epoch_order(&mut shuffle, &train.label, cfg.per_class);
        let n_batches = perm.len().div_ceil(cfg.batch);
        let bar = crate::progress::bar(
            verbosity != Verbosity::Quiet,
            n_batches as u64,
            "batches",
            &format!("{} epoch {}/{}", model_cfg.variant.name(), epoch + 1, cfg.epochs),
        );
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        let (mut steps_done, mut earlier_seconds) = (0, 0.0);
        if let Some(p) = state.partial.take().filter(|p| p.epoch == epoch) {
            let pos = p.noise_word_pos.parse().context("metrics.json: bad noise_word_pos")?;
            noise.set_word_pos(pos);
            (steps_done, earlier_seconds, sums) = (p.steps_done, p.train_seconds, p.loss_sums);
            bar.inc(steps_done as u64);
        }
        for idx in perm.chunks(cfg.batch).skip(steps_done) {
            // In candle's CPU thread pool, so that the step's serial parts run on a worker thread
            // and each parallel product starts without waking a sleeping pool (BENCHMARKS.md).
            let step = dev.with_context(|| train_step(&model, &mut opt, &train, idx, &mut noise, cfg.clip_grad, dev))?;
            for (name, l) in step.losses {
                *sums.entry(name.to_string()).or_default() += l as f64;
            }
            bar.inc(1);
            steps_done += 1;
            if crate::interrupt::requested() {
                bar.finish_and_clear();
                state.partial = Some(PartialEpoch {
                    epoch,
                    steps_done,
                    loss_sums: sums,
                    noise_word_pos: noise.get_word_pos().to_string(),
                    train_seconds: earlier_seconds + t0.elapsed().as_secs_f64(),
                });
                state.optimizer_steps = opt.steps_taken();
                checkpoint::save(&last_dir, &run, &model, opt.state()?, &serde_json::to_value(&state)?)?;
                let place = match steps_done == n_batches {
                    true => format!("after epoch {}'s last step (its validation still to run)", epoch + 1),
                    false => format!("inside epoch {} (step {steps_done} of {n_batches})", epoch + 1),
                };
                return Err(crate::interrupt::Interrupted {
                    resume_hint: format!(
                        "saved {} {place}; {}",
                        last_dir.display(),
                        match resume {
                            Resume::IfCurrent => "run the same command again to continue",
                            _ => "rerun with --resume to continue",
                        }
                    ),
                }
                .into());
            }
        }
        bar.finish_and_clear();
        let train_seconds = earlier_seconds + t0.elapsed().as_secs_f64();
        let losses: BTreeMap<String, f64> = sums.into_iter().map(|(k, v)| (k, v / n_batches as f64)).collect();
        ensure!(losses.values().all(|v| v.is_finite()), "training diverged in epoch {} (losses {losses:?}); lower --lr or set --clip-grad", epoch + 1);
        let (val_res, _) = evaluate(&model.model, &val, &cfg.inference(), reference.as_ref(), dev)?;
        // Before anything is saved: a diverged model must not become `best/`.
        ensure!(
            val_res.final_head.non_finite == 0,
            "training diverged in epoch {}: the model's outputs are not finite (NaN or infinite) on {} of {} val rows; nothing of this epoch was saved; lower --lr or set --clip-grad",
            epoch + 1,
            val_res.final_head.non_finite,
            val.len()
        );
        let val_seconds = t0.elapsed().as_secs_f64() + earlier_seconds - train_seconds;
        let rec = EpochRecord { epoch: epoch + 1, train_seconds, val_seconds, losses, val: val_res };
        if verbosity == Verbosity::Epochs {
            let terms: Vec<String> = rec.losses.iter().map(|(k, v)| format!("{k}={v:.4}")).collect();
            let recon = val_res.reconstruction.map(|r| format!(" cos(x_CDR, x_s) {:.3}", r.cosine)).unwrap_or_default();
            eprintln!(
                "{} epoch {}/{}: {} | val top1 {:.2}% top5 {:.2}%{recon} | train {:.1}s val {:.1}s",
                model_cfg.variant.name(),
                epoch + 1,
                cfg.epochs,
                terms.join(" "),
                100.0 * val_res.final_head.top1,
                100.0 * val_res.final_head.top5,
                rec.train_seconds,
                rec.val_seconds
            );
        }
        state.history.push(rec);
        state.epochs_done = epoch + 1;
        state.optimizer_steps = opt.steps_taken();
        if state.best_epoch.is_none() || val_res.final_head.top1 > state.best_val_top1 {
            state.best_epoch = Some(epoch + 1);
            state.best_val_top1 = val_res.final_head.top1;
            checkpoint::save(&out.join("best"), &run, &model, vec![], &serde_json::to_value(&state)?)?;
        }
        if save_due(last_save, Instant::now()) || epoch + 1 == cfg.epochs {
            let t = Instant::now();
            checkpoint::save(&last_dir, &run, &model, opt.state()?, &serde_json::to_value(&state)?)?;
            last_save = Some((Instant::now(), t.elapsed()));
        }
    }

    if model_cfg.gated() {
        // The selected model is now the gated one: its val top-1 is the one reported.
        let (w, val_top1) = gate::fit_gate(&out.join("best"), &val, cfg, dev)?;
        (state.gate, state.best_val_top1) = (Some(w), val_top1);
    }
    if let Some(test) = &cache.test {
        let best = Checkpoint::open(&out.join("best"), dev)?;
        let m = best.model(dev)?;
        let (res, hits) = evaluate(&m.model, test, &cfg.inference(), reference.as_ref(), dev)?;
        (state.test, state.test_hits) = (Some(res), hits);
        let path = out.join("best").join(checkpoint::METRICS);
        crate::fsutil::write_atomic(&path, serde_json::to_string_pretty(&state)?.as_bytes())?;
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first epoch saves; later ones once 1 / SAVE_SHARE times the last save's duration has
    /// passed: a 0.1 s save waits 2 s, a 1 ms one hardly at all.
    #[test]
    fn last_is_saved_while_saving_stays_a_small_share() {
        let t0 = Instant::now();
        assert!(save_due(None, t0));
        let slow = Some((t0, Duration::from_millis(100)));
        assert!(!save_due(slow, t0 + Duration::from_millis(1900)));
        assert!(save_due(slow, t0 + Duration::from_millis(2000)));
        assert!(save_due(Some((t0, Duration::from_millis(1))), t0 + Duration::from_millis(20)));
    }
}

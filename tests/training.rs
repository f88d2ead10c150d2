//! Training on a small synthetic cache: every variant learns, runs are reproducible, and a
//! resumed run ends exactly where an uninterrupted one does.

use candle_core::Device;
use marnet::checkpoint::Checkpoint;
use marnet::config::TrainConfig;
use marnet::features::FeatureCache;
use marnet::model::marnet::{MarnetConfig, Variant};
use marnet::synth::SynthConfig;
use marnet::train::{PartialEpoch, Resume, TrainState, Verbosity, train};
use std::path::Path;

mod common;

fn small_synth() -> SynthConfig {
    SynthConfig {
        classes: 10,
        dv: 32,
        ds: 32,
        n_train: 1000,
        n_val: 200,
        n_test: 500,
        text_rank: 8,
        text_jitter: 0.3,
        vis_noise: 1.0,
        bg_scale: 1.0,
        n_bg: 4,
        seed: 7,
        groups: 0,
    }
}

fn cache(dir: &Path) -> FeatureCache {
    marnet::synth::write(&small_synth(), dir).unwrap()
}

fn model_cfg(v: Variant, c: &FeatureCache) -> MarnetConfig {
    MarnetConfig { d: 32, hidden: 64, temb: 16, ..MarnetConfig::new(v, c.train.dv, c.train.ds, c.num_classes()) }
}

fn train_cfg(epochs: usize) -> TrainConfig {
    TrainConfig { epochs, batch: 32, eval_batch: 256, ..Default::default() }
}

fn run(c: &FeatureCache, v: Variant, epochs: usize, out: &Path, resume: bool) -> TrainState {
    let resume = if resume { Resume::Strict } else { Resume::Never };
    train(c, &model_cfg(v, c), &train_cfg(epochs), out, resume, Verbosity::Quiet, &Device::Cpu).unwrap()
}

#[test]
fn every_variant_beats_chance_by_a_wide_margin() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cache(&tmp.path().join("cache"));
    for v in Variant::ALL {
        let s = run(&c, v, 6, &tmp.path().join(v.name()), false);
        let top1 = s.test.unwrap().final_head.top1;
        // 10 classes: chance is 10%.
        assert!(top1 > 0.4, "{v:?}: test top1 {top1}");
    }
}

#[test]
fn fixed_seed_gives_bit_identical_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cache(&tmp.path().join("cache"));
    let a = run(&c, Variant::Marnet, 2, &tmp.path().join("a"), false);
    let b = run(&c, Variant::Marnet, 2, &tmp.path().join("b"), false);
    let json = |s: &TrainState| {
        let mut v = serde_json::to_value(s).unwrap();
        for h in v["history"].as_array_mut().unwrap() {
            h["train_seconds"] = 0.into();
            h["val_seconds"] = 0.into();
        }
        v
    };
    assert_eq!(json(&a), json(&b));
    let wa = Checkpoint::open(&tmp.path().join("a"), &Device::Cpu).unwrap();
    let wb = Checkpoint::open(&tmp.path().join("b"), &Device::Cpu).unwrap();
    for (k, t) in &wa.tensors {
        let (x, y) = (t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), wb.tensors[k].flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "weight {k} differs");
    }
}

#[test]
fn resumed_run_matches_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cache(&tmp.path().join("cache"));
    let straight = run(&c, Variant::Marnet, 3, &tmp.path().join("straight"), false);
    let out = tmp.path().join("resumed");
    let first = run(&c, Variant::Marnet, 1, &out, false);
    assert_eq!(first.epochs_done, 1);
    // Same configuration, more epochs: resume continues from `last/`.
    let resumed = run(&c, Variant::Marnet, 3, &out, true);
    assert_eq!(resumed.epochs_done, 3);
    let top1 = |s: &TrainState| s.history.iter().map(|h| h.val.final_head.top1).collect::<Vec<_>>();
    assert_eq!(top1(&straight), top1(&resumed));
    assert_eq!(straight.test.unwrap().final_head, resumed.test.unwrap().final_head);
}

/// A finished run's selected model carries no note; once its `last/` says it stopped before the
/// planned epochs, the note says how far it got and how to finish it.
#[test]
fn an_unfinished_run_is_named_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cache(&tmp.path().join("cache"));
    let out = tmp.path().join("run");
    let mut state = run(&c, Variant::Ema, 1, &out, false);
    let best = || Checkpoint::open(&out.join("best"), &Device::Cpu).unwrap();
    assert_eq!(best().unfinished(), None);
    state.epochs_done = 0;
    std::fs::write(out.join("last").join(marnet::checkpoint::METRICS), serde_json::to_string(&state).unwrap()).unwrap();
    let note = best().unfinished().expect("a note for an unfinished run");
    assert!(note.contains("interrupted after 0 of 1 epochs") && note.contains("train --resume"), "{note}");
    // All epochs done but one cut short after them (a resumed run stopped inside its next epoch).
    state.epochs_done = 1;
    state.partial = Some(PartialEpoch { epoch: 1, steps_done: 3, loss_sums: Default::default(), noise_word_pos: "0".into(), train_seconds: 0.5 });
    std::fs::write(out.join("last").join(marnet::checkpoint::METRICS), serde_json::to_string(&state).unwrap()).unwrap();
    assert!(best().unfinished().is_some_and(|n| n.contains("interrupted after 1 of 1 epochs")));
}

#[test]
fn resume_refuses_a_different_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cache(&tmp.path().join("cache"));
    let out = tmp.path().join("run");
    run(&c, Variant::Marnet, 1, &out, false);
    let other = TrainConfig { batch: 16, ..train_cfg(2) };
    let err = train(&c, &model_cfg(Variant::Marnet, &c), &other, &out, Resume::Strict, Verbosity::Quiet, &Device::Cpu).unwrap_err();
    assert!(format!("{err:#}").contains("the saved run used other settings (--batch 32 → 16)"), "{err:#}");
}

/// The cache with one visual feature of one training row changed, written back in place.
fn change_one_feature(c: &FeatureCache) -> FeatureCache {
    let mut changed = c.clone();
    changed.train.visual[0] += 0.5;
    changed.write(&c.dir).unwrap();
    FeatureCache::open(&c.dir).unwrap()
}

#[test]
fn resume_refuses_a_run_made_from_other_data_naming_both_fingerprints() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cache(&tmp.path().join("cache"));
    let out = tmp.path().join("run");
    run(&c, Variant::Ema, 1, &out, false);
    let saved = Checkpoint::open(&out.join("last"), &Device::Cpu).unwrap().run.fingerprint;
    let c2 = change_one_feature(&c);
    let err = train(&c2, &model_cfg(Variant::Ema, &c2), &train_cfg(2), &out, Resume::Strict, Verbosity::Quiet, &Device::Cpu).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("other data") && msg.contains(&saved.data) && msg.contains(&marnet::fingerprint::cache_data(&c2)), "{msg}");
}

#[test]
fn a_table_reuses_current_runs_and_recomputes_rows_whose_cache_changed() {
    use marnet::experiments::{Existing, TableSpec, ablation_arms, run_arms};
    let tmp = tempfile::tempdir().unwrap();
    let c = cache(&tmp.path().join("cache"));
    let arms = ablation_arms(&model_cfg(Variant::Ema, &c), &[Variant::Baseline, Variant::Ema]);
    let out = tmp.path().join("table");
    let spec = TableSpec {
        what: "Ablation".into(),
        first_column: "Module".into(),
        file: "ablation".into(),
        out: out.clone(),
        seeds: vec![0],
        leave_one_out: false,
        fold_val: Default::default(),
        train: train_cfg(1),
        command: String::new(),
        existing: Existing::Refuse,
        task: None,
    };
    let table = |c: &FeatureCache| run_arms(c, &arms, &spec, Verbosity::Quiet, &Device::Cpu).unwrap().0;
    let config = || std::fs::read_to_string(out.join("ema/seed0/best/config.json")).unwrap();
    let mtime = || std::fs::metadata(out.join("ema/seed0/best/model.safetensors")).unwrap().modified().unwrap();
    table(&c);
    let (first_config, first_mtime) = (config(), mtime());
    table(&c);
    assert_eq!(mtime(), first_mtime, "a current run is reused, not trained again");
    let c2 = change_one_feature(&c);
    let rows = table(&c2);
    assert_ne!(mtime(), first_mtime, "the run on the changed cache was trained again");
    assert_ne!(config(), first_config);
    assert!(config().contains(&marnet::fingerprint::cache_data(&c2)));
    assert_eq!(rows.len(), 2);
}

/// A cache shaped like sentence-encoder text: x_s unit-norm (per-dimension scale ~1/sqrt(Ds)),
/// with a shared offset and a class direction; x_v a noisy linear map of x_s.
fn unit_norm_text_cache() -> FeatureCache {
    use marnet::features::{FeatureSplit, SplitMeta};
    use marnet::rng::{normal_vec, stream};
    let (classes, dv, ds) = (6, 24, 32);
    let mut rng = stream(11, "recon-test", 0);
    let offset = normal_vec(&mut rng, ds);
    let means: Vec<Vec<f32>> = (0..classes).map(|_| normal_vec(&mut rng, ds)).collect();
    let map = normal_vec(&mut rng, ds * dv);
    let mut split = |n: usize| {
        let mut s =
            FeatureSplit { visual: vec![], dv, text: Some(vec![]), ds, label: vec![], meta: SplitMeta::default(), visual_tokens: None, text_tokens: None };
        s.meta.classes = (0..classes).map(|c| format!("c{c}")).collect();
        let (jitter, noise) = (normal_vec(&mut rng, n * ds), normal_vec(&mut rng, n * dv));
        for i in 0..n {
            let y = i % classes;
            let raw: Vec<f32> = (0..ds).map(|j| offset[j] + means[y][j] + 0.3 * jitter[i * ds + j]).collect();
            let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
            let xs: Vec<f32> = raw.iter().map(|x| x / norm).collect();
            s.visual.extend((0..dv).map(|k| (0..ds).map(|j| xs[j] * map[j * dv + k]).sum::<f32>() + 0.05 * noise[i * dv + k]));
            s.text.as_mut().unwrap().extend(xs);
            s.label.push(y as u32);
            s.meta.ids.push(format!("row{i}"));
        }
        s
    };
    let (train, val, test) = (split(600), split(120), split(240));
    FeatureCache { dir: "unit-norm".into(), train, val: Some(val), test: Some(test), fold: None }
}

/// Eq. 19 is met: CDR sampled from noise and x_v alone reconstructs unit-norm text features
/// (well above the cosine of the training mean text, the best x_v-blind guess), and so does
/// the +MLP row. On raw unit-norm features, N(0, I) diffusion noise erased the signal.
#[test]
fn cdr_reconstructs_unit_norm_text_features() {
    let tmp = tempfile::tempdir().unwrap();
    let c = unit_norm_text_cache();
    let test = c.test.as_ref().unwrap();
    let ds = c.train.ds;
    let text = c.train.text.as_ref().unwrap();
    let mean: Vec<f32> = (0..ds).map(|j| text.chunks(ds).map(|r| r[j]).sum::<f32>() / c.train.len() as f32).collect();
    let cos = |a: &[f32], b: &[f32]| {
        let d: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        d / (a.iter().map(|x| x * x).sum::<f32>().sqrt() * b.iter().map(|x| x * x).sum::<f32>().sqrt())
    };
    let blind = test.text.as_ref().unwrap().chunks(ds).map(|r| cos(r, &mean) as f64).sum::<f64>() / test.len() as f64;
    for v in [Variant::Cdr, Variant::Mlp] {
        let cfg = MarnetConfig { hidden: 128, temb: 16, ..MarnetConfig::new(v, c.train.dv, ds, c.num_classes()) };
        let s = train(
            &c,
            &cfg,
            &TrainConfig { epochs: 15, batch: 32, ..Default::default() },
            &tmp.path().join(v.name()),
            Resume::Never,
            Verbosity::Quiet,
            &Device::Cpu,
        )
        .unwrap();
        let r = s.test.unwrap().reconstruction.expect("CDR reports its reconstruction");
        assert!(r.cosine > 0.9 && r.cosine > blind + 0.1, "{v:?}: cos(x_CDR, x_s) {:.3}, x_v-blind mean text {blind:.3}", r.cosine);
        assert!(r.class_match > 0.95, "{v:?}: x_CDR nearest its class's text in {:.3} of rows", r.class_match);
    }
}

/// `gate`: the late-fusion weight is fitted on val after training, saved in the checkpoint,
/// and cannot lower the selected model's val top-1 (w = 1 is the ungated model).
#[test]
fn gate_is_fitted_on_val_and_saved() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cache(&tmp.path().join("cache"));
    let plain = run(&c, Variant::Marnet, 2, &tmp.path().join("plain"), false);
    let cfg = MarnetConfig { gate: true, ..model_cfg(Variant::Marnet, &c) };
    let gated = train(&c, &cfg, &train_cfg(2), &tmp.path().join("gated"), Resume::Never, Verbosity::Quiet, &Device::Cpu).unwrap();
    let w = gated.gate.expect("a fitted gate");
    assert!((0.0..=1.0).contains(&w) && (w * 10.0).fract().abs() < 1e-9, "w = {w}");
    assert!(gated.best_val_top1 >= plain.best_val_top1, "{} < {}", gated.best_val_top1, plain.best_val_top1);
    let ck = Checkpoint::open(&tmp.path().join("gated"), &Device::Cpu).unwrap();
    let saved = ck.tensors["buffer.gate"].to_scalar::<f32>().unwrap();
    assert_eq!(saved, w as f32);
    // `--gate` in a table also reaches the other rows: they have no gate to fit.
    let cfg = MarnetConfig { gate: true, ..model_cfg(Variant::Ema, &c) };
    let ema = train(&c, &cfg, &train_cfg(1), &tmp.path().join("ema"), Resume::Never, Verbosity::Quiet, &Device::Cpu).unwrap();
    assert_eq!(ema.gate, None);
}

/// `marnet synth --tokens`, then `marnet train --align team-tokens` through the binary: the run
/// learns, records the token widths and its token-level loss, resumes to the same metrics as an
/// uninterrupted run, and a cache without tokens is refused with an error naming its train file.
#[test]
fn team_tokens_trains_end_to_end_on_a_synthetic_token_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str| tmp.path().join(name).display().to_string();
    let synth = ["synth", "--classes", "10", "--dv", "32", "--ds", "24", "--n-train", "1000", "--n-val", "200", "--n-test", "500", "--text-rank", "8"];
    let synth = [&synth[..], &["--vis-noise", "1", "--bg-scale", "1", "--n-bg", "4", "--seed", "7"]].concat();
    common::ok(&[&synth[..], &["--out", &p("cache"), "--tokens", "--visual-tokens", "4", "--text-tokens", "5"]].concat());
    let train = |out: &str, epochs: &str, extra: &[&str]| {
        let args = ["train", "--cache", &p("cache"), "--out", out, "--align", "team-tokens", "--d", "32", "--hidden", "64", "--temb", "16", "--epochs", epochs];
        common::ok(&[&args[..], extra].concat())
    };
    let t0 = std::time::Instant::now();
    train(&p("straight"), "4", &[]);
    eprintln!("team-tokens MARNet, 4 epochs of 900 rows: {:.1} s", t0.elapsed().as_secs_f64());
    let read = |run: &str, file: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(Path::new(run).join("best").join(file)).unwrap()).unwrap()
    };
    let config = read(&p("straight"), "config.json");
    assert_eq!(config["model"]["align"], "team-tokens");
    assert_eq!(config["model"]["tokens"], serde_json::json!({"visual": 32, "text": 24}));
    let metrics = read(&p("straight"), "metrics.json");
    let top1 = metrics["test"]["final_head"]["top1"].as_f64().unwrap();
    assert!(top1 > 0.3, "10 classes (chance 10%): test top1 {top1}");
    let losses = &metrics["history"][0]["losses"];
    assert!(losses["team-tokens"].as_f64().is_some_and(|l| l.is_finite() && l > 0.0), "{losses}");

    train(&p("resumed"), "2", &[]);
    train(&p("resumed"), "4", &["--resume"]);
    let resumed = read(&p("resumed"), "metrics.json");
    let val = |m: &serde_json::Value| m["history"].as_array().unwrap().iter().map(|h| h["val"]["final_head"].clone()).collect::<Vec<_>>();
    assert_eq!(val(&resumed), val(&metrics));
    assert_eq!(resumed["test"], metrics["test"]);

    // The same cache without tokens: a clear error naming the file, before any training.
    common::ok(&[&synth[..], &["--out", &p("plain")]].concat());
    let args = ["train", "--cache", &p("plain"), "--out", &p("refused"), "--align", "team-tokens", "--epochs", "1"];
    let refused = common::marnet(&args);
    let err = String::from_utf8_lossy(&refused.stderr);
    let file = Path::new(&p("plain")).join("train.safetensors").display().to_string();
    assert!(!refused.status.success() && err.contains(&file) && err.contains("`visual_tokens`") && err.contains("--tokens"), "{err}");
    // Every other alignment trains on it as before; the baseline ignores --align.
    common::ok(&["train", "--cache", &p("plain"), "--out", &p("baseline"), "--variant", "baseline", "--align", "team-tokens", "--epochs", "1"]);
}

/// On a cache without image keys (synthetic) every row still has a noise stream of its own, so
/// a row's CDR sample and prediction do not depend on the rows batched with it.
#[test]
fn keyless_rows_get_the_same_sample_at_any_eval_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cache(&tmp.path().join("cache"));
    let test = c.test.as_ref().unwrap();
    assert!(test.meta.keys.is_empty());
    let vb = candle_nn::VarBuilder::from_varmap(&candle_nn::VarMap::new(), candle_core::DType::F32, &Device::Cpu);
    let model = marnet::model::marnet::Marnet::load(vb, &model_cfg(Variant::Marnet, &c)).unwrap();
    let outputs = |batch| {
        let inference = marnet::config::Inference { batch, ..Default::default() };
        marnet::eval::predict_split(&model, test, &inference, &Device::Cpu).unwrap()
    };
    let (whole, small) = (outputs(500), outputs(7));
    let (a, b) = (whole.x_cdr.unwrap(), small.x_cdr.unwrap());
    let worst = a.iter().zip(&b).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-5, "x_CDR differs by {worst} between eval batches 500 and 7");
    let top1 = |l: &[f32]| l.chunks(c.num_classes()).map(|r| r.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).unwrap().0).collect::<Vec<_>>();
    assert_eq!(top1(&whole.logits), top1(&small.logits));
}

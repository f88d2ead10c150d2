//! The `marnet` command line: parses arguments and calls the library.

mod commands;
mod options;

use anyhow::Result;
use commands::{Cli, Cmd};
use marnet::features::FeatureCache;
use marnet::model::marnet::Variant;
use marnet::train::{Resume, Verbosity};
use std::time::{Duration, Instant};

/// `println!` that returns an error when stdout is closed (`| head`, `| grep -q`) instead of
/// panicking; `main` turns that error into exit status 0. Files a command writes (`--json`) are
/// written before its output, so they are complete whenever it exits 0.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?
    }};
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

/// The command line as one string, recorded with tables.
fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// A table, or with `--task` only that task's share of its runs.
fn table_or_task(
    cache: &FeatureCache,
    arms: &[marnet::experiments::Arm],
    spec: &marnet::experiments::TableSpec,
    verbosity: marnet::train::Verbosity,
    dev: &candle_core::Device,
) -> Result<()> {
    match spec.task {
        Some(task) => {
            marnet::experiments::run_arms(cache, arms, spec, verbosity, dev)?;
            out!("task {task}: its runs in {} are finished; the same command without --task writes the table", spec.out.display());
        }
        None => out!("{}", marnet::experiments::run_table(cache, arms, spec, verbosity, dev)?.markdown()),
    }
    Ok(())
}

fn run() -> Result<()> {
    let matches = commands::command().get_matches();
    let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Whether the subcommand's option `flag` (an id it has: clap checks in debug builds) was given
    // on the command line, not left at its default.
    let given = |flag: &str| matches.subcommand().is_some_and(|(_, m)| m.value_source(flag) == Some(clap::parser::ValueSource::CommandLine));
    // The noise schedule's flags are checked together, as the command line is parsed (exit status 2).
    if let Some((name, m)) = cli.cmd.diffusive_model_options()
        && let Err(e) = marnet::model::diffusion::Schedule::new(&m.schedule)
    {
        let mut cmd = commands::command();
        cmd.build();
        cmd.find_subcommand_mut(name).expect("a subcommand of marnet").error(clap::error::ErrorKind::ValueValidation, e).exit();
    }
    marnet::runtime::init(cli.threads);
    let dev = marnet::runtime::device(&cli.device)?;
    let progress = !cli.quiet;
    let verbosity = match (cli.quiet, cli.verbose || matches!(cli.cmd, Cmd::Train { .. })) {
        (true, _) => Verbosity::Quiet,
        (false, true) => Verbosity::Epochs,
        (false, false) => Verbosity::Progress,
    };
    match cli.cmd {
        Cmd::Synth { out, cfg, tokens } => {
            let c = marnet::synth::write_with_tokens(&cfg, &tokens, &out)?;
            for (name, s) in [("train", Some(&c.train)), ("val", c.val.as_ref()), ("test", c.test.as_ref())] {
                if let Some(s) = s {
                    let tokens = match (&s.visual_tokens, &s.text_tokens) {
                        (Some(v), Some(t)) => format!("; tokens: visual {} x {}, text up to {} x {}", v.len, v.dim, t.len, t.dim),
                        _ => String::new(),
                    };
                    out!("{name}: {}, visual {}-d, text {}-d{tokens}", marnet::words::count(s.len(), "row"), s.dv, s.ds);
                }
            }
            out!("wrote {}", out.display());
        }
        Cmd::Train { cache, out, variant, resume, force, model, mut train } => {
            if resume && !given("epochs") {
                // Resumed without --epochs: on to the run's own (the --epochs it last trained with).
                train.epochs = marnet::train::saved_epochs(&out).unwrap_or(train.epochs);
            }
            let cache = FeatureCache::open(&cache)?;
            let mcfg = model.config(variant, cache.train.dv, cache.train.ds, cache.num_classes());
            let resume = match (resume, force) {
                (true, _) => Resume::Strict,
                (false, true) => Resume::Never,
                (false, false) => Resume::Refuse,
            };
            let state = marnet::train::train(&cache, &mcfg, &train, &out, resume, verbosity, &dev)?;
            let best = out.join("best");
            out!("best epoch {} (val top1 {:.2}%): {}", state.best_epoch.unwrap_or(0), 100.0 * state.best_val_top1, best.display());
            if let Some(t) = state.test {
                let note = marnet::eval::trivial_top5(cache.num_classes()).map(|n| format!(" ({n})")).unwrap_or_default();
                out!("test top1 {:.2}% top5 {:.2}%{note}", 100.0 * t.final_head.top1, 100.0 * t.final_head.top5);
            }
        }
        Cmd::Eval { model, cache, split, inference, json, predictions } => {
            let req = marnet::eval::EvalRequest { model, cache, split, inference };
            let report = marnet::eval::run(&req, &dev)?;
            if let Some(p) = predictions {
                let lines: Vec<String> = report.predictions.iter().map(serde_json::to_string).collect::<Result<_, _>>()?;
                marnet::fsutil::write_atomic(&p, (lines.join("\n") + "\n").as_bytes())?;
            }
            if let Some(p) = json {
                marnet::fsutil::write_atomic(&p, serde_json::to_string_pretty(&report)?.as_bytes())?;
            }
            out!("{}", report.markdown());
        }
        Cmd::Demo { out, dataset, leave_one_out, assets, seeds, epochs, model, report } => {
            let t0 = Instant::now();
            let assets = marnet::assets::resolve(assets.as_deref())?;
            let opts = marnet::demo::DemoOptions {
                out: out.clone(),
                report: marnet::report::ReportOptions { progress, ..report },
                assets,
                dataset,
                leave_one_out,
                seeds: (0..seeds).collect(),
                train: marnet::config::TrainConfig { epochs, ..Default::default() },
                command: command_line(),
                model,
                verbosity,
            };
            let (tables, summary) = marnet::demo::run(&opts, &dev)?;
            for t in &tables {
                out!("{}", t.markdown());
            }
            out!("stage seconds: {}", summary["seconds"]);
            out!("report: {}; total wall time {:.1} s", out.join("report/report.html").display(), t0.elapsed().as_secs_f64());
        }
        Cmd::Report { dir, report } => {
            let t0 = Instant::now();
            let out = marnet::report::write(&dir, &marnet::report::ReportOptions { progress, ..report }, &dev)?;
            out!("wrote {} in {:.1} s", out.join("report.html").display(), t0.elapsed().as_secs_f64());
        }
        Cmd::Ablate { table, variants } => {
            let spec = table.spec("Ablation (Table 2)", "Module", "ablation")?;
            let (cache, base) = table.open(Variant::Marnet)?;
            table_or_task(&cache, &marnet::experiments::ablation_arms(&base, &variants), &spec, verbosity, &dev)?;
        }
        Cmd::Compare { table, aligns } => {
            let spec = table.spec("Alignment methods (Table 1)", "Method", "comparison")?;
            let (cache, base) = table.open(Variant::Ema)?;
            table_or_task(&cache, &marnet::experiments::alignment_arms(&base, &aligns), &spec, verbosity, &dev)?;
        }
        Cmd::Extract(settings) => out!("{}", marnet::extract::run(&settings, progress, marnet::extract::Existing::ReuseOrRefuse, &dev)?),
        Cmd::Export { model, out, visual, assets, inference, force } => {
            let b = marnet::bundle::export(&model, visual.as_deref(), assets.as_deref(), inference, &out, force, &dev)?;
            out!("wrote the bundle {}: {b}", out.display());
        }
        Cmd::Predict { model, inputs, top_k, format, batch } => {
            let files = marnet::predict::collect_inputs(&inputs)?;
            let pred = marnet::bundle::Predictor::load(&model, &dev)?;
            let results = marnet::predict::predict_files(&pred, &files, top_k, batch, progress)?;
            marnet::predict::write_results(&results, format, &mut std::io::stdout().lock())?;
            let failed = results.iter().filter(|r| r.error.is_some()).count();
            if failed > 0 {
                eprintln!("{failed} of {} images could not be read", results.len());
                std::process::exit(2);
            }
        }
        Cmd::Serve {
            model,
            addr,
            max_body_mib,
            max_batch,
            batch_wait_ms,
            decode_threads,
            decode_priority,
            timeout_s,
            top_k,
            header_timeout_s,
            idle_timeout_s,
            max_connections,
        } => {
            let opts = marnet::serve::ServeOptions {
                addr,
                max_body: (max_body_mib * 1024.0 * 1024.0) as usize,
                max_batch,
                batch_wait: Duration::from_millis(batch_wait_ms),
                decoding: marnet::serve::Decoding { threads: decode_threads.unwrap_or_else(marnet::serve::default_decode_threads), priority: decode_priority },
                timeout: Duration::from_secs_f64(timeout_s),
                top_k,
                header_timeout: Duration::from_secs_f64(header_timeout_s),
                idle_timeout: Duration::from_secs_f64(idle_timeout_s),
                max_connections,
            };
            marnet::serve::serve(model, dev, opts)?;
        }
        Cmd::MergeShards { out, shards, force } => {
            let (c, reused) = marnet::extract::merge_shards(&shards, &out, force)?;
            let rows = marnet::words::count(c.train.len(), "training row");
            match reused {
                true => out!("{} already holds these shards merged ({rows}); reused", out.display()),
                false => out!("merged {} ({rows}) into {}", marnet::words::count(shards.len(), "shard"), out.display()),
            }
        }
        Cmd::Bench {
            variant,
            dv,
            ds,
            classes,
            batch,
            iters,
            infer_batch,
            sampling_steps,
            thread_counts,
            skip_extraction,
            extraction_only,
            encoder_batches,
            visual,
            assets,
            json,
            heads_only,
            model,
        } => {
            let cfg = model.config(variant, dv, ds, classes);
            if heads_only {
                let r = marnet::bench::heads(&cfg, batch, iters, infer_batch, &sampling_steps, &dev)?;
                if let Some(p) = &json {
                    marnet::fsutil::write_atomic(p, serde_json::to_string_pretty(&r)?.as_bytes())?;
                }
                out!("{}", serde_json::to_string(&r)?);
                return Ok(());
            }
            let assets = if skip_extraction { None } else { Some(marnet::assets::resolve(assets.as_deref())?) };
            let args = std::env::args().skip_while(|a| a != "bench").skip(1).collect();
            let req = marnet::bench::BenchRequest {
                model: cfg,
                batch,
                iters,
                infer_batch,
                sampling_steps,
                thread_counts,
                heads: !extraction_only,
                assets,
                encoder_batches,
                visual,
                args,
                device: cli.device.clone(),
                progress,
            };
            let report = marnet::bench::run(&req, &dev)?;
            if let Some(p) = json {
                marnet::fsutil::write_atomic(&p, serde_json::to_string_pretty(&report)?.as_bytes())?;
            }
            out!("{}", report.to_string().trim_end());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

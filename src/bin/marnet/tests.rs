//! The command line's definition: consistency, help texts, ranges, aliases and defaults.
/// clap's own consistency checks (unique names, valid defaults) over every subcommand.
#[test]
fn cli_definition_is_consistent() {
    use clap::CommandFactory;
    super::Cli::command().debug_assert();
    super::commands::command().debug_assert();
}

/// `demo` trains with `TrainConfig::default()` and the other commands with the flags'
/// defaults: they must agree.
#[test]
fn train_flag_defaults_are_the_library_defaults() {
    use clap::Parser;
    let cli = super::Cli::parse_from(["marnet", "train", "--cache", "c", "--out", "o"]);
    let super::Cmd::Train { train, model, .. } = cli.cmd else { unreachable!() };
    assert_eq!(train, marnet::config::TrainConfig::default());
    // Likewise the model flags and `MarnetConfig::new` (CDR training input, steps, options).
    let v = super::Variant::Marnet;
    assert_eq!(model.config(v, 12, 10, 5), marnet::model::marnet::MarnetConfig::new(v, 12, 10, 5));
}

/// Every option and positional argument of every command says what it is in `--help`, and
/// the global options stand under their own heading.
#[test]
fn every_argument_of_every_command_has_help() {
    use clap::CommandFactory;
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        if cmd.get_about().is_none() && !path.is_empty() {
            missing.push(format!("`{path}` itself"));
        }
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set() && !matches!(a.get_id().as_str(), "help" | "version")) {
            let text = arg.get_help().or(arg.get_long_help()).map(|h| h.to_string()).unwrap_or_default();
            if text.trim().is_empty() {
                missing.push(format!("`{path} {}`", arg.get_long().map(|l| format!("--{l}")).unwrap_or_else(|| arg.get_id().to_string())));
            }
            let global = ["threads", "device", "quiet", "verbose"].contains(&arg.get_id().as_str());
            assert_eq!(arg.get_help_heading() == Some("Global options"), global, "`{path}` {}: heading {:?}", arg.get_id(), arg.get_help_heading());
        }
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            walk(sub, format!("{path} {}", sub.get_name()).trim(), missing);
        }
    }
    let mut cmd = super::Cli::command();
    cmd.build(); // propagates the global options into every subcommand
    let mut missing = vec![];
    walk(&cmd, "", &mut missing);
    assert!(missing.is_empty(), "no help text: {}", missing.join(", "));
}

/// The error `args` (after `marnet`) give at parsing.
fn parse_error(args: &[&str]) -> String {
    use clap::FromArgMatches;
    match super::commands::command().try_get_matches_from(std::iter::once(&"marnet").chain(args)).and_then(|m| super::Cli::from_arg_matches(&m)) {
        Ok(_) => panic!("{args:?} parsed"),
        Err(e) => e.to_string(),
    }
}

/// Out-of-range numbers stop at parsing with a message naming the option and its range.
#[test]
fn numeric_options_are_checked_at_parsing() {
    let train = ["train", "--cache", "c", "--out", "o"];
    let cases: &[(&[&str], &str, &str)] = &[
        (&["--epochs", "0"], "'--epochs <EPOCHS>'", "must be at least 1"),
        (&["--batch", "0"], "'--batch <BATCH>'", "must be at least 1"),
        (&["--eval-batch", "0"], "'--eval-batch <EVAL_BATCH>'", "must be at least 1"),
        (&["--lr", "0"], "'--lr <LR>'", "must be a finite number above 0"),
        (&["--lr=-1e-3"], "'--lr <LR>'", "must be a finite number above 0"),
        (&["--lr", "-1"], "'--lr <LR>'", "must be a finite number above 0"),
        (&["--seed", "-3"], "'--seed <SEED>'", "invalid digit"),
        (&["--lr", "inf"], "'--lr <LR>'", "must be a finite number above 0"),
        (&["--weight-decay=-0.1"], "'--weight-decay <WEIGHT_DECAY>'", "must be a finite number, 0 or more"),
        (&["--clip-grad=-1"], "'--clip-grad <CLIP_GRAD>'", "must be a finite number, 0 or more"),
        (&["--val-fraction", "1.5"], "'--val-fraction <VAL_FRACTION>'", "must be strictly between 0 and 1"),
        (&["--val-fraction", "0"], "'--val-fraction <VAL_FRACTION>'", "must be strictly between 0 and 1"),
        (&["--timesteps", "1"], "'--timesteps <T>'", "must be at least 2"),
        (&["--T", "1"], "'--timesteps <T>'", "must be at least 2"),
        (&["--steps", "0"], "'--steps <STEPS>'", "must be at least 1"),
        (&["--samples", "0"], "'--samples <SAMPLES>'", "must be at least 1"),
        (&["--dim", "0"], "'--dim <D>'", "must be at least 1"),
        (&["--hidden", "0"], "'--hidden <HIDDEN>'", "must be at least 1"),
        (&["--time-embedding-dim", "7"], "'--time-embedding-dim <N>'", "must be an even number, at least 2"),
        (&["--beta-start", "0"], "'--beta-start <BETA_START>'", "must be strictly between 0 and 1"),
        (&["--beta-end", "1"], "'--beta-end <BETA_END>'", "must be strictly between 0 and 1"),
        (&["--align-weight=-1"], "'--align-weight <BETA>'", "must be a finite number, 0 or more"),
        (&["--mse-weight", "nan"], "'--mse-weight <GAMMA>'", "must be a finite number, 0 or more"),
        (&["--cdr-train-steps", "0"], "'--cdr-train-steps <CDR_TRAIN_STEPS>'", "must be at least 1"),
        (&["--threads", "0"], "'--threads <THREADS>'", "must be at least 1"),
    ];
    for (flags, option, range) in cases {
        let e = parse_error(&[&train[..], flags].concat());
        assert!(e.contains(option) && e.contains(range), "{flags:?}: {e}");
    }
    let other: &[(&[&str], &str, &str)] = &[
        (&["ablate", "--cache", "c", "--out", "o", "--seeds", "0"], "'--seeds <SEEDS>'", "must be at least 1"),
        (&["compare", "--cache", "c", "--out", "o", "--epochs", "0"], "'--epochs <EPOCHS>'", "must be at least 1"),
        (&["demo", "--seeds", "0"], "'--seeds <SEEDS>'", "must be at least 1"),
        (&["demo", "--epochs", "0"], "'--epochs <EPOCHS>'", "must be at least 1"),
        (&["demo", "--tsne-classes", "0"], "'--tsne-classes <TSNE_CLASSES>'", "must be at least 1"),
        (&["report", "d", "--tsne-per-class", "1"], "'--tsne-per-class <TSNE_PER_CLASS>'", "must be at least 2"),
        (&["report", "d", "--examples", "0"], "'--examples <EXAMPLES>'", "must be at least 1"),
        (&["eval", "--model", "m", "--eval-batch", "0"], "'--eval-batch <EVAL_BATCH>'", "must be at least 1"),
        (&["export", "--model", "m", "--out", "o", "--steps", "0"], "'--steps <STEPS>'", "must be at least 1"),
        (&["extract", "--out", "o", "--batch", "0"], "'--batch <BATCH>'", "must be at least 1"),
        (&["extract", "--out", "o", "--limit", "0"], "'--limit <LIMIT>'", "must be at least 1"),
        (&["extract", "--out", "o", "--val-fraction", "1"], "'--val-fraction <VAL_FRACTION>'", "must be strictly between 0 and 1"),
        (&["extract", "--out", "o", "--shard", "4/4"], "'--shard <i/n|env|env/N>'", "0 <= i < n"),
        (&["synth", "--out", "o", "--classes", "1"], "'--classes <CLASSES>'", "must be at least 2"),
        (&["synth", "--out", "o", "--dv", "0"], "'--visual-dim <DV>'", "must be at least 1"),
        (&["synth", "--out", "o", "--n-train", "0"], "'--n-train <N_TRAIN>'", "must be at least 1"),
        (&["synth", "--out", "o", "--vis-noise=-1"], "'--vis-noise <VIS_NOISE>'", "must be a finite number, 0 or more"),
        (&["synth", "--out", "o", "--visual-tokens", "0"], "'--visual-tokens <VISUAL_TOKENS>'", "must be at least 1"),
        (&["bench", "--classes", "0"], "'--classes <CLASSES>'", "must be at least 1"),
        (&["bench", "--text-dim", "0"], "'--text-dim <DS>'", "must be at least 1"),
        (&["bench", "--batch", "0"], "'--batch <BATCH>'", "must be at least 1"),
        (&["bench", "--iters", "0"], "'--iters <ITERS>'", "must be at least 1"),
        (&["bench", "--infer-batch", "0"], "'--infer-batch <INFER_BATCH>'", "must be at least 1"),
        (&["bench", "--sampling-steps", "10,0"], "'--sampling-steps <SAMPLING_STEPS>'", "must be at least 1"),
        (&["bench", "--thread-counts", "0"], "'--thread-counts <THREAD_COUNTS>'", "must be at least 1"),
        (&["bench", "--encoder-batches", "0"], "'--encoder-batches <ENCODER_BATCHES>'", "must be at least 1"),
    ];
    for (args, option, range) in other {
        let e = parse_error(args);
        assert!(e.contains(option) && e.contains(range), "{args:?}: {e}");
    }
}

/// The old, terse flag names still parse, to the same values as the new ones.
#[test]
fn old_flag_names_are_aliases_of_the_new_ones() {
    use clap::Parser;
    let train = |flags: &[&str]| {
        let cli = super::Cli::parse_from([&["marnet", "train", "--cache", "c", "--out", "o"][..], flags].concat());
        let super::Cmd::Train { model, train, .. } = cli.cmd else { unreachable!() };
        (model, train)
    };
    let old = train(&["--T", "20", "--d", "32", "--temb", "16", "--act", "relu", "--a1", "0.5", "--beta", "0.25", "--a2", "2", "--gamma", "0.125"]);
    let new = train(&[
        "--timesteps",
        "20",
        "--dim",
        "32",
        "--time-embedding-dim",
        "16",
        "--activation",
        "relu",
        "--ema-ce-weight",
        "0.5",
        "--align-weight",
        "0.25",
        "--cdr-ce-weight",
        "2",
        "--mse-weight",
        "0.125",
    ]);
    assert_eq!(old, new);
    let (model, _) = new;
    assert_eq!((model.schedule.steps, model.d, model.temb), (20, 32, 16));
    let w = model.weights;
    assert_eq!((w.a1, w.beta, w.a2, w.gamma), (0.5, 0.25, 2.0, 0.125));

    let synth = |flags: &[&str]| {
        let cli = super::Cli::parse_from([&["marnet", "synth", "--out", "o"][..], flags].concat());
        let super::Cmd::Synth { cfg, .. } = cli.cmd else { unreachable!() };
        (cfg.dv, cfg.ds, cfg.n_bg)
    };
    assert_eq!(synth(&["--dv", "8", "--ds", "6", "--n-bg", "3"]), (8, 6, 3));
    assert_eq!(synth(&["--visual-dim", "8", "--text-dim", "6", "--bg-prototypes", "3"]), (8, 6, 3));
    let bench = |flags: &[&str]| {
        let cli = super::Cli::parse_from([&["marnet", "bench"][..], flags].concat());
        let super::Cmd::Bench { dv, ds, model, .. } = cli.cmd else { unreachable!() };
        (dv, ds, model.d)
    };
    assert_eq!(bench(&["--dv", "8", "--ds", "6", "--d", "4"]), (8, 6, 4));
    assert_eq!(bench(&["--visual-dim", "8", "--text-dim", "6", "--dim", "4"]), (8, 6, 4));
}

/// The renames are the command line's only: a run's config.json keeps the field names that
/// runs written before them have.
#[test]
fn renamed_flags_keep_the_saved_field_names() {
    let cfg = marnet::model::marnet::MarnetConfig::new(super::Variant::Marnet, 12, 10, 5);
    let v = serde_json::to_value(&cfg).unwrap();
    for key in ["d", "hidden", "temb", "act"] {
        assert!(v.get(key).is_some(), "{key} in {v}");
    }
    for key in ["a1", "beta", "a2", "gamma"] {
        assert!(v["weights"].get(key).is_some(), "weights.{key} in {v}");
    }
    for key in ["steps", "beta_start", "beta_end"] {
        assert!(v["schedule"].get(key).is_some(), "schedule.{key} in {v}");
    }
}

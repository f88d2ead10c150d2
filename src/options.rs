//! Option structs are declared once, as clap `Args` with their defaults, and used as they are by
//! the library; [`parse`] builds one from flags for callers without a command line (`demo`,
//! tests), every other field at its declared default; [`changed_flags`] says how two saved
//! settings differ, each by the flag that sets it (a table's runs, a resumed run).

use serde_json::Value;
use std::collections::BTreeMap;

/// `T` from `args` (flags as on the command line, without a program name), read as
/// [`lenient`] says.
pub fn parse<T: clap::Args + clap::FromArgMatches>(args: &[&str]) -> anyhow::Result<T> {
    let cmd = lenient(T::augment_args(clap::Command::new("options").no_binary_name(true)));
    Ok(T::from_arg_matches(&cmd.try_get_matches_from(args)?)?)
}

/// `cmd` and its subcommands with every option's value allowed to be a plain negative number
/// (`-1`, `-0.5`), so that `--lr -1` meets the option's own range check instead of clap's
/// "unexpected argument" (`-1e-3` still needs `--lr=-1e-3`: clap reads it as a flag), and the
/// named values in any case (`--variant MARNet`).
pub fn lenient(cmd: clap::Command) -> clap::Command {
    let arg = |a: clap::Arg| {
        let (takes_values, named_values) = (a.get_action().takes_values(), !a.get_possible_values().is_empty());
        a.allow_negative_numbers(takes_values).ignore_case(takes_values && named_values)
    };
    cmd.mut_args(arg).mut_subcommands(|s| s.mut_args(arg))
}

/// `T` with every field at its declared default.
pub fn defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    parse(&[]).expect("every option of the struct has a default")
}

/// Every command-line flag of `T` by argument id (`d` → `--dim`).
pub(crate) fn flag_names<T: clap::Args>() -> BTreeMap<String, String> {
    let cmd = T::augment_args(clap::Command::new("flags"));
    cmd.get_arguments().filter_map(|a| a.get_long().map(|l| (a.get_id().to_string(), format!("--{l}")))).collect()
}

/// The flag that sets the saved setting at `path` (`optim.lr` of a training config: `--lr`),
/// else the path itself.
pub(crate) fn flag_of(path: &str, flags: &BTreeMap<String, String>) -> String {
    // The one field whose argument id is not its name: `--timesteps`.
    let id = if path == "schedule.steps" { "t_steps" } else { path.rsplit('.').next().unwrap_or(path) };
    flags.get(id).cloned().unwrap_or_else(|| path.to_string())
}

/// Every leaf of a JSON object, by its dotted path.
pub(crate) fn leaves(v: &Value, path: &str, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) => m.iter().for_each(|(k, v)| leaves(v, &if path.is_empty() { k.clone() } else { format!("{path}.{k}") }, out)),
        _ => {
            out.insert(path.to_string(), v.clone());
        }
    }
}

/// A setting as typed on the command line: `0.001`, `1` (not `1.0`), `on`/`off`, `ancestral`.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "on" } else { "off" }.into(),
        Value::Number(n) if n.is_f64() => format!("{}", n.as_f64().unwrap_or_default()),
        Value::Null => "none".into(),
        v => v.to_string(),
    }
}

/// `--flag old → new` for every leaf of `old` and `new` (saved settings) that differs, in path
/// order, but those in `skip`; `flags` ([`flag_names`]) names each leaf's flag.
pub(crate) fn changed_flags<T: serde::Serialize>(old: &T, new: &T, skip: &[&str], flags: &BTreeMap<String, String>) -> Vec<String> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    leaves(&serde_json::to_value(old).unwrap_or_default(), "", &mut a);
    leaves(&serde_json::to_value(new).unwrap_or_default(), "", &mut b);
    let paths: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let none = Value::Null;
    paths
        .into_iter()
        .filter(|p| !skip.contains(&p.as_str()))
        .filter_map(|p| {
            let (x, y) = (a.get(p).unwrap_or(&none), b.get(p).unwrap_or(&none));
            (x != y).then(|| format!("{} {} → {}", flag_of(p, flags), shown(x), shown(y)))
        })
        .collect()
}

// Value parsers for numeric options (`#[arg(value_parser = options::at_least_one)]`): each
// checks the range up front, so that a bad value stops at parsing with clap's message naming
// the option, e.g. `invalid value '0' for '--epochs <EPOCHS>': must be at least 1`.

/// `s` as a number, with Rust's message (`invalid digit found in string`) when it is none.
fn number<T: std::str::FromStr<Err: std::fmt::Display>>(s: &str) -> Result<T, String> {
    s.trim().parse().map_err(|e: T::Err| e.to_string())
}

/// A count of 1 or more.
pub fn at_least_one<T: std::str::FromStr<Err: std::fmt::Display> + PartialOrd + From<u8>>(s: &str) -> Result<T, String> {
    at_least(s, 1)
}

/// A count of 2 or more.
pub fn at_least_two<T: std::str::FromStr<Err: std::fmt::Display> + PartialOrd + From<u8>>(s: &str) -> Result<T, String> {
    at_least(s, 2)
}

fn at_least<T: std::str::FromStr<Err: std::fmt::Display> + PartialOrd + From<u8>>(s: &str, min: u8) -> Result<T, String> {
    let v = number(s)?;
    if v < T::from(min) {
        return Err(format!("must be at least {min}"));
    }
    Ok(v)
}

/// An even count of 2 or more (a sinusoidal embedding's width: sines and cosines in pairs).
pub fn positive_even(s: &str) -> Result<usize, String> {
    let v: usize = number(s)?;
    if v < 2 || !v.is_multiple_of(2) {
        return Err("must be an even number, at least 2".into());
    }
    Ok(v)
}

/// A finite number above 0.
pub fn positive_finite(s: &str) -> Result<f64, String> {
    let v: f64 = number(s)?;
    if !(v.is_finite() && v > 0.0) {
        return Err("must be a finite number above 0".into());
    }
    Ok(v)
}

/// A finite number, 0 or more.
pub fn non_negative(s: &str) -> Result<f64, String> {
    let v: f64 = number(s)?;
    if !(v.is_finite() && v >= 0.0) {
        return Err("must be a finite number, 0 or more".into());
    }
    Ok(v)
}

/// [`non_negative`] for the `f32` options.
pub fn non_negative_f32(s: &str) -> Result<f32, String> {
    non_negative(s).map(|v| v as f32)
}

/// A number strictly between 0 and 1.
pub fn fraction(s: &str) -> Result<f64, String> {
    let v: f64 = number(s)?;
    if !(v > 0.0 && v < 1.0) {
        return Err("must be strictly between 0 and 1".into());
    }
    Ok(v)
}

/// One of `names` in any case (and with spaces around it), as `names` writes it.
pub fn one_of(s: &str, names: &[&str]) -> Result<String, String> {
    let name = s.trim();
    names.iter().find(|n| n.eq_ignore_ascii_case(name)).map(|n| n.to_string()).ok_or_else(|| format!("expected one of {}", names.join(", ")))
}

/// A task's slice `i/n` with `0 <= i < n`, or `env` / `env/N` (`extract --shard`, the tables'
/// `--task`), kept as given: resolved by [`crate::cluster::TaskSlice::resolve`] when used.
pub fn task_slice(s: &str) -> Result<String, String> {
    crate::cluster::check_syntax(s).map(|_| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers_accept_their_range_and_name_it_otherwise() {
        assert_eq!(at_least_one::<usize>("1"), Ok(1));
        assert_eq!(at_least_one::<u64>(" 7 "), Ok(7));
        assert_eq!(at_least_one::<usize>("0"), Err("must be at least 1".into()));
        assert!(at_least_one::<usize>("-1").is_err() && at_least_one::<usize>("x").is_err());
        assert_eq!(at_least_two::<usize>("2"), Ok(2));
        assert_eq!(at_least_two::<usize>("1"), Err("must be at least 2".into()));
        assert_eq!(one_of(" Emoji-ALL ", &["emoji-food", "emoji-all"]), Ok("emoji-all".into()));
        assert_eq!(one_of("emoji", &["emoji-food", "emoji-all"]), Err("expected one of emoji-food, emoji-all".into()));
        assert_eq!(positive_even("128"), Ok(128));
        for bad in ["0", "7"] {
            assert_eq!(positive_even(bad), Err("must be an even number, at least 2".into()));
        }
        assert_eq!(positive_finite("1e-3"), Ok(1e-3));
        for bad in ["0", "-1", "inf", "NaN"] {
            assert_eq!(positive_finite(bad), Err("must be a finite number above 0".into()), "{bad}");
        }
        assert_eq!(non_negative("0"), Ok(0.0));
        assert_eq!(non_negative_f32("0.5"), Ok(0.5));
        for bad in ["-0.1", "inf", "nan"] {
            assert_eq!(non_negative(bad), Err("must be a finite number, 0 or more".into()), "{bad}");
        }
        assert_eq!(fraction("0.1"), Ok(0.1));
        for bad in ["0", "1", "1.5", "-0.2", "nan"] {
            assert_eq!(fraction(bad), Err("must be strictly between 0 and 1".into()), "{bad}");
        }
        assert_eq!(task_slice("3/4"), Ok("3/4".into()));
        assert_eq!(task_slice("env/4"), Ok("env/4".into()));
        for bad in ["4/4", "1/0", "x/2", "3", "env/0"] {
            assert!(task_slice(bad).is_err_and(|e| e.starts_with("expected i/n with 0 <= i < n (e.g. 0/4)")), "{bad}");
        }
    }
}

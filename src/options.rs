//! Option structs are declared once, as clap `Args` with their defaults, and used as they are by
//! the library; [`parse`] builds one from flags for callers without a command line (`demo`,
//! tests), every other field at its declared default.

/// `T` from `args` (flags as on the command line, without a program name).
pub fn parse<T: clap::Args + clap::FromArgMatches>(args: &[&str]) -> anyhow::Result<T> {
    let cmd = T::augment_args(clap::Command::new("options").no_binary_name(true));
    Ok(T::from_arg_matches(&cmd.try_get_matches_from(args)?)?)
}

/// `T` with every field at its declared default.
pub fn defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    parse(&[]).expect("every option of the struct has a default")
}

/// A clap `value_parser` for counts that must be at least 1 (clap names the option in the error).
pub fn at_least_1(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("must be a whole number, at least 1".into()),
    }
}

/// A clap `value_parser` for amounts (seconds, sizes) that must be finite and above 0.
pub fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x.is_finite() => Ok(x),
        _ => Err("must be a number above 0 (and finite)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_amounts_refuse_what_is_out_of_range() {
        assert_eq!(at_least_1("3"), Ok(3));
        for bad in ["0", "-1", "1.5", "x", ""] {
            assert_eq!(at_least_1(bad), Err("must be a whole number, at least 1".into()), "{bad}");
        }
        assert_eq!(positive("0.5"), Ok(0.5));
        for bad in ["0", "-0.1", "nan", "inf", "x"] {
            assert!(positive(bad).is_err(), "{bad}");
        }
    }
}

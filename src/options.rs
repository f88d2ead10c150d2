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

//! Where the fetched assets are: `--assets DIR`, else `$MARNET_ASSETS`, else `./assets`, else the
//! `assets/` of the checkout this binary was built from. `scripts/fetch-assets` fills it.

use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

/// The environment variable naming the assets folder.
pub const ENV: &str = "MARNET_ASSETS";

/// The font of the report's figures, inside the assets folder.
pub const FONT: &str = "npm/dejavu-fonts-ttf/ttf/DejaVuSans.ttf";

/// The assets folder: `given` (`--assets`) if set, else [`ENV`], else the first of `./assets`
/// and the build checkout's `assets/` that exists. The error says where it looked and how to
/// fetch.
pub fn resolve(given: Option<&Path>) -> Result<PathBuf> {
    let env = std::env::var_os(ENV).filter(|v| !v.is_empty()).map(PathBuf::from);
    let (looked, candidates): (&str, Vec<PathBuf>) = match (given, env) {
        (Some(p), _) => ("--assets", vec![p.to_path_buf()]),
        (None, Some(p)) => (ENV, vec![p]),
        (None, None) => ("the defaults", vec![PathBuf::from("assets"), Path::new(env!("CARGO_MANIFEST_DIR")).join("assets")]),
    };
    if let Some(found) = candidates.iter().find(|p| p.is_dir()) {
        return Ok(found.clone());
    }
    let list: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "no assets folder found (looked at {} from {looked}); fetch the weights and data with \
         `scripts/fetch-assets` in a marnet checkout, then pass --assets DIR or set {ENV}=DIR",
        list.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_folder_wins_and_a_missing_one_names_where_it_looked() {
        let tmp = std::env::temp_dir();
        assert_eq!(resolve(Some(&tmp)).unwrap(), tmp);
        let missing = tmp.join("marnet-no-such-assets");
        let err = resolve(Some(&missing)).unwrap_err().to_string();
        assert!(err.contains(&missing.display().to_string()) && err.contains("--assets") && err.contains("scripts/fetch-assets"), "{err}");
    }
}

//! Argument groups that several commands share, and what they turn into.

use anyhow::Result;
use clap::Args;
use marnet::experiments::TableOptions;
use marnet::features::FeatureCache;
use marnet::model::marnet::{MarnetConfig, Variant};
use std::path::PathBuf;

#[derive(Args, Clone)]
pub struct TableArgs {
    /// Feature cache folder (needs a test split).
    #[arg(long)]
    pub cache: PathBuf,
    /// Folder for the runs (`OUT/<row>/seed<k>`) and the table.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub options: TableOptions,
}

impl TableArgs {
    pub fn open(&self, variant: Variant) -> Result<(FeatureCache, MarnetConfig)> {
        let cache = FeatureCache::open(&self.cache)?;
        let base = self.options.base(&cache, variant);
        Ok((cache, base))
    }

    /// The table's settings: `what` and `first_column` head it, `file` names its files.
    pub fn spec(&self, what: &str, first_column: &str, file: &str) -> Result<marnet::experiments::TableSpec> {
        self.options.spec(&self.out, what, first_column, file, std::env::args().collect::<Vec<_>>().join(" "))
    }
}

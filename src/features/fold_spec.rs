//! What names a leave-one-group-out fold ([`FoldSpec`]) and a row's group when none is
//! recorded ([`group_of`]): the types a feature cache carries, apart from the code that cuts a
//! cache into folds (`folds.rs`), so that neither file imports the other.

use serde::{Deserialize, Serialize};

/// Where a fold's validation rows come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FoldVal {
    /// A seeded 20% of the training rows, one image of each class in turn (styles seen in training).
    #[default]
    InStyle,
    /// Every row of one training group (the next group after the test group, in sorted order):
    /// a style the model has not trained on, for choosing settings that must transfer.
    Group,
}

impl FoldVal {
    /// The flag value: `in-style` or `group`.
    pub fn name(self) -> &'static str {
        match self {
            FoldVal::InStyle => "in-style",
            FoldVal::Group => "group",
        }
    }
}

/// One fold: which group is the test split and how validation is drawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoldSpec {
    pub test_group: String,
    pub val: FoldVal,
    pub seed: u64,
}

impl FoldSpec {
    /// The folder name of the fold's runs.
    pub fn name(&self) -> String {
        format!("fold-{}", self.test_group)
    }
}

/// The group of a row id when no group is recorded: its first path component.
pub fn group_of(id: &str) -> &str {
    id.split_once('/').map_or(id, |(g, _)| g)
}

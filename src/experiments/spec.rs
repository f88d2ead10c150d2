//! How a table is run: where it goes, its seeds and folds, its training settings, and what it
//! does with a folder that already holds a table or runs.

use crate::config::TrainConfig;

/// How a table is run and where it goes: `OUT/<file>.md` and `OUT/<file>.json`, the runs in
/// `OUT/[<fold>/]<row>/seed<k>`.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// Its title's start (`Ablation (Table 2)`) and its first column's heading (`Module`).
    pub what: String,
    pub first_column: String,
    pub file: String,
    pub out: std::path::PathBuf,
    pub seeds: Vec<u64>,
    /// Every group of rows (vendor) is the test split once, with validation as `fold_val` says.
    pub leave_one_out: bool,
    pub fold_val: crate::features::folds::FoldVal,
    pub train: TrainConfig,
    /// The command line, recorded with the table.
    pub command: String,
    /// What to do with a table or runs in `out` made with other settings.
    pub existing: Existing,
    /// Train only this task's share of the runs (a job array's task) and write no table.
    pub task: Option<crate::cluster::TaskSlice>,
}

/// What a table does when its folder holds a table or runs made with other settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Existing {
    /// Refuse before training anything, naming every difference (`ablate`, `compare`).
    #[default]
    Refuse,
    /// Train those runs again from the start and write the table as asked, deleting nothing
    /// else (`--force`, and `demo`, which owns its folder).
    Replace,
}

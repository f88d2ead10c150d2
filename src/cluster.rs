//! Work split over the tasks of a cluster's job array: a Slurm array (`sbatch --array=0-3`) or
//! a Kubernetes Indexed Job. `extract --shard` and the tables' `--task` take `i/n` as typed, or
//! `env` (`env/N`) to read the task's index, and its count, from the scheduler's environment, so
//! that one job script serves every task.

use anyhow::{Context, Result, bail, ensure};

/// Task `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskSlice {
    pub index: usize,
    pub count: usize,
}

impl std::fmt::Display for TaskSlice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// How an `i/n`, `env` or `env/N` value is checked on the command line (before the environment
/// is read).
pub fn check_syntax(s: &str) -> Result<(), String> {
    let bad = || "expected i/n with 0 <= i < n (e.g. 0/4), or `env` / `env/N` to take them from a Slurm array or a Kubernetes Indexed Job".to_string();
    match s.split_once('/') {
        None if s == "env" => Ok(()),
        Some(("env", n)) => n.parse::<usize>().ok().filter(|&n| n >= 1).map(|_| ()).ok_or_else(bad),
        _ => parse_fixed(s).map(|_| ()).map_err(|_| bad()),
    }
}

/// `i/n` with `0 <= i < n`.
fn parse_fixed(s: &str) -> Result<TaskSlice> {
    crate::data::parse_shard(s).map(|(index, count)| TaskSlice { index, count })
}

impl TaskSlice {
    /// `spec` (`i/n`, `env` or `env/N`) for the option `flag`, read from this process's
    /// environment.
    pub fn resolve(spec: &str, flag: &str) -> Result<TaskSlice> {
        Self::resolve_with(spec, flag, |k| std::env::var(k).ok())
    }

    /// [`Self::resolve`] with the environment given by `env`.
    ///
    /// Slurm: the index is `SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN` (so `--array=1-4` is
    /// tasks 0..3 as well), the count `SLURM_ARRAY_TASK_COUNT`; stepped (`0-6:2`) and listed
    /// (`0,2,5`) arrays are refused, since their indices do not cover 0..n. Kubernetes: the index
    /// is `JOB_COMPLETION_INDEX`, the count must be given (`env/N`, N = the Job's `completions`).
    pub fn resolve_with(spec: &str, flag: &str, env: impl Fn(&str) -> Option<String>) -> Result<TaskSlice> {
        let given = match spec.split_once('/') {
            None if spec == "env" => None,
            Some(("env", n)) => Some(n.parse::<usize>().with_context(|| format!("{flag} {spec}: N must be a whole number"))?),
            _ => return parse_fixed(spec),
        };
        let num = |k: &str| -> Result<Option<usize>> {
            env(k).map(|v| v.trim().parse::<usize>().with_context(|| format!("{flag} {spec}: {k}={v} is not a whole number"))).transpose()
        };
        let slice = if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let max = num("SLURM_ARRAY_TASK_MAX")?.unwrap_or(id);
            let count =
                num("SLURM_ARRAY_TASK_COUNT")?.with_context(|| format!("{flag} {spec}: SLURM_ARRAY_TASK_COUNT is not set (Slurm sets it from 18.08)"))?;
            let step = num("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1);
            let step_said = if step == 1 { String::new() } else { format!(" in steps of {step}") };
            ensure!(
                step == 1 && max + 1 == min + count,
                "{flag} {spec}: this Slurm array's task ids are not one range ({count} tasks from {min} to {max}{step_said}); submit it as --array={}-{} (a `%` limit is fine)",
                min,
                min + count - 1
            );
            TaskSlice { index: id - min, count }
        } else if let Some(index) = num("JOB_COMPLETION_INDEX")? {
            let Some(count) = given else {
                bail!("{flag} env: a Kubernetes Indexed Job does not say how many tasks it has; give {flag} env/N, N being the Job's `completions`")
            };
            TaskSlice { index, count }
        } else {
            bail!(
                "{flag} {spec}: not inside a Slurm array task (SLURM_ARRAY_TASK_ID is not set) nor a Kubernetes Indexed Job (JOB_COMPLETION_INDEX is not set); outside them give i/n, e.g. 0/4"
            )
        };
        if let Some(n) = given {
            ensure!(n == slice.count, "{flag} {spec}: the array has {} tasks, not {n}", slice.count);
        }
        ensure!(slice.index < slice.count, "{flag} {spec}: task index {} is not below the task count {}", slice.index, slice.count);
        Ok(slice)
    }

    /// Whether item `j` of a list shared out round-robin is this task's.
    pub fn owns(&self, j: usize) -> bool {
        j % self.count == self.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    fn slurm(id: &str, min: &str, max: &str, count: &str) -> Vec<(&'static str, String)> {
        vec![
            ("SLURM_ARRAY_TASK_ID", id.into()),
            ("SLURM_ARRAY_TASK_MIN", min.into()),
            ("SLURM_ARRAY_TASK_MAX", max.into()),
            ("SLURM_ARRAY_TASK_COUNT", count.into()),
        ]
    }

    fn resolve(spec: &str, vars: &[(&'static str, String)]) -> Result<TaskSlice> {
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        TaskSlice::resolve_with(spec, "--shard", env(&vars))
    }

    #[test]
    fn fixed_slices_and_their_syntax() {
        assert_eq!(resolve("2/4", &[]).unwrap(), TaskSlice { index: 2, count: 4 });
        for bad in ["4/4", "1", "a/2", "0/0", "env/0", "env/x", "en"] {
            assert!(check_syntax(bad).is_err(), "{bad}");
        }
        for good in ["0/1", "3/4", "env", "env/4"] {
            assert_eq!(check_syntax(good), Ok(()), "{good}");
        }
    }

    #[test]
    fn slurm_arrays_from_zero_or_one_and_refused_steps() {
        assert_eq!(resolve("env", &slurm("3", "0", "3", "4")).unwrap(), TaskSlice { index: 3, count: 4 });
        // --array=1-4: task ids 1..4 are slices 0..3.
        assert_eq!(resolve("env", &slurm("1", "1", "4", "4")).unwrap(), TaskSlice { index: 0, count: 4 });
        assert_eq!(resolve("env/4", &slurm("4", "1", "4", "4")).unwrap(), TaskSlice { index: 3, count: 4 });
        let e = resolve("env/3", &slurm("1", "1", "4", "4")).unwrap_err().to_string();
        assert!(e.contains("has 4 tasks, not 3"), "{e}");
        // --array=0-6:2 (ids 0,2,4,6) and --array=0,2,5 are refused.
        let mut stepped = slurm("2", "0", "6", "4");
        stepped.push(("SLURM_ARRAY_TASK_STEP", "2".into()));
        let e = resolve("env", &stepped).unwrap_err().to_string();
        assert!(e.contains("--array=0-3"), "{e}");
        assert!(resolve("env", &slurm("2", "0", "5", "3")).is_err());
    }

    #[test]
    fn kubernetes_needs_the_count() {
        let k8s = [("JOB_COMPLETION_INDEX", "2".to_string())];
        assert_eq!(resolve("env/3", &k8s).unwrap(), TaskSlice { index: 2, count: 3 });
        let e = resolve("env", &k8s).unwrap_err().to_string();
        assert!(e.contains("env/N"), "{e}");
        assert!(resolve("env/2", &k8s).unwrap_err().to_string().contains("not below"));
        let e = resolve("env", &[]).unwrap_err().to_string();
        assert!(e.contains("SLURM_ARRAY_TASK_ID") && e.contains("JOB_COMPLETION_INDEX"), "{e}");
    }

    #[test]
    fn round_robin_covers_every_item_once() {
        let n = 3;
        for j in 0..10 {
            assert_eq!((0..n).filter(|&i| TaskSlice { index: i, count: n }.owns(j)).count(), 1);
        }
    }
}

//! Leave-one-group-out folds of a feature cache: rows are grouped by their recorded group (a
//! manifest's `group` field), else by the first path component of their id (the vendor for the
//! emoji datasets: `apple/1f32d.png`); every group is the test split once, and validation stays
//! inside the training groups. One extracted cache serves every fold.

use crate::data::TRAIN_ONLY;
pub use crate::features::fold_spec::{FoldSpec, FoldVal, group_of};
use crate::features::{FeatureCache, FeatureSplit};
use anyhow::{Context, Result, ensure};

/// Share of a fold's training rows held out for validation when `val` is `in-style`, one image
/// of each class in turn (as `extract --dataset emoji-*` holds out one image per class).
pub const IN_STYLE_VAL_FRACTION: f64 = 0.2;

/// Every row of the cache, in split order (train, val, test).
fn all_rows(cache: &FeatureCache) -> Result<FeatureSplit> {
    for (name, split) in [("val", cache.val.as_ref()), ("test", cache.test.as_ref())] {
        ensure!(
            split.is_none_or(|s| s.text.is_some()),
            "{}: --leave-one-out trains on every group in turn, so every row needs its text, but the {name} split has none (rows without `text` in the manifest leave their whole split without); add the text to those rows and extract again, or drop --leave-one-out",
            cache.dir.display()
        );
    }
    let parts: Vec<FeatureSplit> = [Some(&cache.train), cache.val.as_ref(), cache.test.as_ref()].into_iter().flatten().cloned().collect();
    FeatureSplit::concat(&parts).with_context(|| format!("{}: folds need text features for every split", cache.dir.display()))
}

/// The sorted groups of the cache's rows.
pub fn groups(cache: &FeatureCache) -> Result<Vec<String>> {
    let rows = all_rows(cache)?;
    let mut g: Vec<String> = (0..rows.len()).map(|i| rows.meta.group(i).to_string()).collect();
    g.sort();
    g.dedup();
    if g.len() < 2 {
        let source = match rows.meta.groups.is_empty() {
            true => "the first folder of each row's image path, as no `group` is recorded",
            false => "the manifest's `group` field",
        };
        let group = g.first().map_or("none".into(), |g| format!("`{g}`"));
        anyhow::bail!(
            "{}: --leave-one-out needs rows in at least two groups, but all {} are in group {group} (from {source}); give each manifest line a `group` (the camera, site or vendor it comes from) and extract again, or drop --leave-one-out",
            cache.dir.display(),
            crate::words::count(rows.len(), "row")
        );
    }
    Ok(g)
}

/// One leave-one-group-out fold: `spec.test_group`'s rows are test, validation as `spec.val`,
/// the remaining rows train. Every class must keep a training row.
pub fn fold(cache: &FeatureCache, spec: &FoldSpec) -> Result<FeatureCache> {
    folds(cache, std::slice::from_ref(spec)).map(|mut f| f.remove(0))
}

/// Every fold of `specs`, or an error naming each class that some fold leaves without
/// training rows (every fold is checked before it fails).
pub fn folds(cache: &FeatureCache, specs: &[FoldSpec]) -> Result<Vec<FeatureCache>> {
    let rows = all_rows(cache)?;
    let all_groups = groups(cache)?;
    ensure!(
        all_groups.len() >= 3 || specs.iter().all(|s| s.val != FoldVal::Group),
        "{}: --fold-val group validates each fold on a group of its own, so --leave-one-out needs three groups or more (test, validation, training), and this cache has {} ({}); use --fold-val in-style, or give the manifest rows of more groups",
        cache.dir.display(),
        all_groups.len(),
        all_groups.iter().map(|g| format!("`{g}`")).collect::<Vec<_>>().join(" and ")
    );
    let (mut out, mut problems) = (vec![], vec![]);
    for spec in specs {
        let (fold, missing) = build(cache, &rows, &all_groups, spec)?;
        out.push(fold);
        problems.extend(missing.into_iter().filter(|m| !problems.contains(m)).collect::<Vec<_>>());
    }
    ensure!(problems.is_empty(), "{}: --leave-one-out: {}", cache.dir.display(), problems.join("; "));
    Ok(out)
}

/// The fold `spec` of `rows` (every row of `cache`), and a sentence for each class it leaves
/// without training rows.
fn build(cache: &FeatureCache, rows: &FeatureSplit, all_groups: &[String], spec: &FoldSpec) -> Result<(FeatureCache, Vec<String>)> {
    ensure!(all_groups.contains(&spec.test_group), "{}: no rows of group `{}` (groups: {})", cache.dir.display(), spec.test_group, all_groups.join(", "));
    let group = |i: usize| rows.meta.group(i);
    let train_only = |i: usize| rows.meta.ids[i].contains(TRAIN_ONLY);
    let (test, rest): (Vec<usize>, Vec<usize>) =
        (0..rows.len()).filter(|&i| !(train_only(i) && group(i) == spec.test_group)).partition(|&i| group(i) == spec.test_group);
    let (extra, rest): (Vec<usize>, Vec<usize>) = rest.into_iter().partition(|&i| train_only(i));
    let val_group = match spec.val {
        FoldVal::Group => {
            let k = all_groups.iter().position(|g| *g == spec.test_group).unwrap();
            Some(all_groups[(k + 1) % all_groups.len()].as_str())
        }
        FoldVal::InStyle => None,
    };
    let (val, mut train): (Vec<usize>, Vec<usize>) = match val_group {
        Some(vg) => rest.iter().partition(|&&i| group(i) == vg),
        None => in_style_val(rows, &rest, cache.num_classes(), spec.seed),
    };
    // Training-only images join the training rows unless their group validates.
    train.extend(extra.into_iter().filter(|&i| Some(group(i)) != val_group));
    let mut seen = vec![false; cache.num_classes()];
    train.iter().for_each(|&i| seen[rows.label[i] as usize] = true);
    let missing = (0..seen.len()).filter(|&c| !seen[c]).map(|c| no_training_rows(rows, c, &spec.test_group, val_group)).collect();
    let mut out = FeatureCache {
        dir: cache.dir.clone(),
        train: rows.subset(&train),
        val: Some(rows.subset(&val)),
        test: Some(rows.subset(&test)),
        fold: Some(spec.clone()),
    };
    for s in [Some(&mut out.train), out.val.as_mut(), out.test.as_mut()].into_iter().flatten() {
        s.meta.dataset = format!("{} ({})", s.meta.dataset, spec.name());
    }
    Ok((out, missing))
}

/// Why class `c` has no training rows in the fold that tests on `test` (and validates on
/// `val`, a group): the groups its rows are in, and what to do.
fn no_training_rows(rows: &FeatureSplit, c: usize, test: &str, val: Option<&str>) -> String {
    let name = &rows.meta.classes[c];
    let mut in_groups: Vec<&str> = (0..rows.len()).filter(|&i| rows.label[i] as usize == c).map(|i| rows.meta.group(i)).collect();
    in_groups.sort();
    in_groups.dedup();
    if in_groups.is_empty() {
        return format!("class `{name}` has no rows");
    }
    let listed: Vec<String> = in_groups.iter().map(|g| format!("`{g}`")).collect();
    let plural = if listed.len() == 1 { "" } else { "s" };
    let (held, other) = match val {
        Some(v) => (format!("`{test}` held out for test and `{v}` for validation (--fold-val group)"), ", use --fold-val in-style"),
        None => (format!("`{test}` held out"), ""),
    };
    format!(
        "class `{name}` has rows only in group{plural} {}: with {held} it has no training rows; add images of it from other groups{other}, or leave out --leave-one-out",
        listed.join(" and ")
    )
}

/// Splits `rows` (indices into `all`) into (val, train): a seeded `IN_STYLE_VAL_FRACTION` share
/// of the rows, one row of each class in a seeded order, then (while the share is not reached: a
/// dataset of few classes with many rows each) a second of each, and so on, taking only from
/// classes that keep a training row.
fn in_style_val(all: &FeatureSplit, rows: &[usize], classes: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut left: Vec<Vec<usize>> = vec![vec![]; classes];
    rows.iter().for_each(|&i| left[all.label[i] as usize].push(i));
    let n_val = (rows.len() as f64 * IN_STYLE_VAL_FRACTION).round() as usize;
    let mut rng = crate::rng::stream(seed, "fold-val", 0);
    let order = crate::rng::permutation(&mut rng, classes);
    let mut val: Vec<usize> = vec![];
    // The first round draws as the rule of one image per class did (emoji's tables stay as they were).
    while val.len() < n_val {
        let before = val.len();
        for &c in &order {
            if val.len() == n_val {
                break;
            }
            if left[c].len() < 2 {
                continue;
            }
            let k = rand::Rng::random_range(&mut rng, 0..left[c].len());
            val.push(left[c].remove(k));
        }
        if val.len() == before {
            break;
        }
    }
    val.sort();
    let train = rows.iter().copied().filter(|i| val.binary_search(i).is_err()).collect();
    (val, train)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::SplitMeta;
    use std::path::PathBuf;

    /// 3 vendors x 4 classes, one row each; the test split of the source cache is vendor `c`;
    /// vendors `a` and `b` each have one training-only extra image.
    fn cache() -> FeatureCache {
        let split = |vendors: &[&str]| {
            let mut s = FeatureSplit {
                visual: vec![],
                dv: 1,
                text: Some(vec![]),
                ds: 1,
                label: vec![],
                meta: SplitMeta::default(),
                visual_tokens: None,
                text_tokens: None,
            };
            s.meta.classes = (0..4).map(|c| format!("class{c}")).collect();
            for v in vendors {
                for c in 0..4u32 {
                    s.visual.push(c as f32);
                    s.text.as_mut().unwrap().push(c as f32);
                    s.label.push(c);
                    s.meta.ids.push(format!("{v}/{c}.png"));
                }
            }
            s
        };
        let mut train = split(&["a", "b"]);
        for v in ["a", "b"] {
            train.visual.push(0.0);
            train.text.as_mut().unwrap().push(0.0);
            train.label.push(0);
            train.meta.ids.push(format!("{v}/{TRAIN_ONLY}0-tone.png"));
        }
        FeatureCache { dir: PathBuf::from("cache"), train, val: None, test: Some(split(&["c"])), fold: None }
    }

    fn vendors(s: &FeatureSplit) -> Vec<&str> {
        let mut v: Vec<&str> = s.meta.ids.iter().map(|id| group_of(id)).collect();
        v.dedup();
        v
    }

    /// Rows labelled `labels`, nothing else.
    fn labelled(labels: Vec<u32>) -> FeatureSplit {
        FeatureSplit { visual: vec![], dv: 0, text: None, ds: 0, label: labels, meta: SplitMeta::default(), visual_tokens: None, text_tokens: None }
    }

    /// Many classes of three rows (emoji's folds): one image of 20% of the rows' classes, the
    /// rows the rule of one image per class drew; few classes of many rows: 20% of the rows,
    /// spread over the classes, each class keeping training rows.
    #[test]
    fn in_style_validation_takes_a_fifth_of_the_rows_however_many_classes() {
        let emoji = labelled((0..300u32).map(|i| i / 3).collect());
        let rows: Vec<usize> = (0..300).collect();
        let (val, _) = in_style_val(&emoji, &rows, 100, 4);
        // One image per class, as drawn before this rule took more.
        let mut rng = crate::rng::stream(4, "fold-val", 0);
        let order = crate::rng::permutation(&mut rng, 100);
        let mut one_each: Vec<usize> = order.iter().take(60).map(|&c| 3 * c + rand::Rng::random_range(&mut rng, 0..3)).collect();
        one_each.sort();
        assert_eq!(val, one_each);
        let few = labelled((0..160u32).map(|i| i % 5).chain([5]).collect());
        let rows: Vec<usize> = (0..161).collect();
        let (val, train) = in_style_val(&few, &rows, 6, 4);
        assert_eq!((val.len(), train.len()), (32, 129), "a fifth of 161 rows");
        let per_class = |c: u32| val.iter().filter(|&&i| few.label[i] == c).count();
        let mut counts: Vec<usize> = (0..5).map(per_class).collect();
        counts.sort();
        assert_eq!((counts, per_class(5)), (vec![6, 6, 6, 7, 7], 0), "spread over the classes; a class of one row keeps it");
    }

    #[test]
    fn every_group_is_test_once_and_never_trains() {
        let c = cache();
        assert_eq!(groups(&c).unwrap(), ["a", "b", "c"]);
        for g in ["a", "b", "c"] {
            let f = fold(&c, &FoldSpec { test_group: g.into(), val: FoldVal::InStyle, seed: 3 }).unwrap();
            let (train, val, test) = (&f.train, f.val.as_ref().unwrap(), f.test.as_ref().unwrap());
            assert_eq!(vendors(test), [g]);
            assert_eq!(test.len(), 4, "training-only images never test");
            assert!(train.meta.ids.iter().chain(&val.meta.ids).all(|id| group_of(id) != g));
            assert!(val.meta.ids.iter().all(|id| !id.contains(TRAIN_ONLY)));
            // 8 plain rows outside the test group: round(0.2 * 8) = 2 val rows, of distinct
            // classes; the other group's training-only image trains (not the test group's).
            let extras = train.meta.ids.iter().filter(|id| id.contains(TRAIN_ONLY)).count();
            assert_eq!((train.len(), val.len(), extras), (6 + (g != "c") as usize + 2 * (g == "c") as usize, 2, 1 + (g == "c") as usize));
            assert_ne!(val.label[0], val.label[1]);
            let mut classes = train.label.clone();
            classes.sort();
            classes.dedup();
            assert_eq!(classes.len(), 4, "every class keeps a training row");
        }
    }

    /// Token features travel with their rows through the fold (concatenation of the splits,
    /// then subsets): each row's tokens still hold its visual value.
    #[test]
    fn folds_keep_tokens_with_their_rows() {
        use crate::features::Tokens;
        use half::f16;
        let mut c = cache();
        for s in [Some(&mut c.train), c.test.as_mut()].into_iter().flatten() {
            let n = s.len();
            s.visual_tokens = Some(Tokens { data: s.visual.iter().flat_map(|&v| [f16::from_f32(v); 2]).collect(), len: 2, dim: 1, mask: None });
            let t = s.text.as_ref().unwrap();
            s.text_tokens = Some(Tokens { data: t.iter().map(|&v| f16::from_f32(v)).collect(), len: 1, dim: 1, mask: Some(vec![1; n]) });
        }
        let f = fold(&c, &FoldSpec { test_group: "b".into(), val: FoldVal::InStyle, seed: 1 }).unwrap();
        for s in [&f.train, f.val.as_ref().unwrap(), f.test.as_ref().unwrap()] {
            let (v, t) = (s.visual_tokens.as_ref().unwrap(), s.text_tokens.as_ref().unwrap());
            assert_eq!((v.rows(), t.rows()), (s.len(), s.len()));
            for r in 0..s.len() {
                assert_eq!(v.data[2 * r].to_f32(), s.visual[r]);
                assert_eq!(t.data[r].to_f32(), s.text.as_ref().unwrap()[r]);
            }
        }
    }

    /// A class whose rows are all in one group is named, with that group, for every fold that
    /// leaves it no training rows, all at once.
    #[test]
    fn a_class_in_one_group_only_is_named_for_every_fold_that_loses_it() {
        let mut c = cache();
        let keep: Vec<usize> = (0..c.train.len()).filter(|&i| c.train.label[i] != 3).collect();
        c.train = c.train.subset(&keep);
        let specs = |val| ["a", "b", "c"].map(|g| FoldSpec { test_group: g.into(), val, seed: 0 });
        let err = format!("{:#}", folds(&c, &specs(FoldVal::InStyle)).unwrap_err());
        let said = "cache: --leave-one-out: class `class3` has rows only in group `c`: with `c` held out it has no training rows; add images of it from other groups, or leave out --leave-one-out";
        assert_eq!(err, said);
        let err = format!("{:#}", folds(&c, &specs(FoldVal::Group)).unwrap_err());
        let (b, c) = ("with `b` held out for test and `c` for validation (--fold-val group)", "with `c` held out for test and `a` for validation");
        assert!(err.contains(b) && err.contains(c) && err.contains("use --fold-val in-style, or leave out --leave-one-out"), "{err}");
    }

    /// With two groups, validating on a group leaves no group to train on: one line says so.
    #[test]
    fn group_validation_needs_three_groups() {
        let c = FeatureCache { test: None, ..cache() };
        let specs = |val| ["a", "b"].map(|g| FoldSpec { test_group: g.into(), val, seed: 0 });
        let err = format!("{:#}", folds(&c, &specs(FoldVal::Group)).unwrap_err());
        assert!(err.contains("needs three groups or more") && err.contains("this cache has 2 (`a` and `b`); use --fold-val in-style"), "{err}");
        assert_eq!(folds(&c, &specs(FoldVal::InStyle)).unwrap().len(), 2);
    }

    #[test]
    fn group_validation_holds_out_the_next_group() {
        let c = cache();
        let f = fold(&c, &FoldSpec { test_group: "c".into(), val: FoldVal::Group, seed: 0 }).unwrap();
        assert_eq!((vendors(&f.train), vendors(f.val.as_ref().unwrap()), vendors(f.test.as_ref().unwrap())), (vec!["b"], vec!["a"], vec!["c"]));
        // The validating group's training-only image is dropped, the training group's kept.
        assert_eq!(f.train.meta.ids.iter().filter(|id| id.contains(TRAIN_ONLY)).collect::<Vec<_>>(), [&format!("b/{TRAIN_ONLY}0-tone.png")]);
        let f = fold(&c, &FoldSpec { test_group: "a".into(), val: FoldVal::Group, seed: 0 }).unwrap();
        assert_eq!((vendors(&f.train), vendors(f.val.as_ref().unwrap())), (vec!["c"], vec!["b"]));
        let err = fold(&c, &FoldSpec { test_group: "z".into(), val: FoldVal::Group, seed: 0 }).unwrap_err();
        assert!(format!("{err:#}").contains("no rows of group `z`"), "{err:#}");
    }
}

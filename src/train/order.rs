//! The order in which an epoch visits the training rows.

use std::collections::BTreeMap;

/// The order of an epoch's training rows. `per_class` 0: a permutation. Otherwise CAN's
/// class-aware sampling (Kang et al., CVPR 2019): each class's rows, shuffled, cut into blocks of
/// `per_class`, and the blocks shuffled, so a batch holds several rows of each of its classes.
/// Every row comes once either way.
pub fn epoch_order(rng: &mut crate::rng::SeededRng, labels: &[u32], per_class: usize) -> Vec<usize> {
    let perm = crate::rng::permutation(rng, labels.len());
    if per_class == 0 {
        return perm;
    }
    let mut by_class: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for i in perm {
        by_class.entry(labels[i]).or_default().push(i);
    }
    let blocks: Vec<&[usize]> = by_class.values().flat_map(|rows| rows.chunks(per_class)).collect();
    crate::rng::permutation(rng, blocks.len()).into_iter().flat_map(|b| blocks[b].iter().copied()).collect()
}

#[cfg(test)]
mod tests {
    use super::epoch_order;

    /// Maximal runs of consecutive rows of one class: (class, length).
    fn class_runs(order: &[usize], labels: &[u32]) -> Vec<(u32, usize)> {
        let mut runs: Vec<(u32, usize)> = vec![];
        for &i in order {
            match runs.last_mut() {
                Some((c, n)) if *c == labels[i] => *n += 1,
                _ => runs.push((labels[i], 1)),
            }
        }
        runs
    }

    #[test]
    fn class_blocks_keep_every_row_once_and_put_classmates_together() {
        let labels: Vec<u32> = (0..60).map(|i| (i % 12) as u32).collect(); // 12 classes x 5 rows
        let plain = epoch_order(&mut crate::rng::stream(1, "t", 0), &labels, 0);
        let blocks = epoch_order(&mut crate::rng::stream(1, "t", 0), &labels, 3);
        for order in [&plain, &blocks] {
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..60).collect::<Vec<_>>());
        }
        // Blocks of 3 and 2 (5 = 3 + 2): every run of one class is at least 2 long, and each
        // class forms one or two runs; a plain permutation leaves most rows alone.
        let runs = class_runs(&blocks, &labels);
        assert!(runs.iter().all(|&(_, n)| n >= 2), "{runs:?}");
        assert!((12..=24).contains(&runs.len()), "{runs:?}");
        assert!(class_runs(&plain, &labels).len() > 45);
    }
}

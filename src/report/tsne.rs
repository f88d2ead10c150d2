//! 2-D t-SNE embeddings (Barnes-Hut, from the `bhtsne` crate) with a seeded start, and the
//! nearest-neighbour class purity used to say how well classes separate.

use anyhow::{Result, ensure};

/// Whether `n` points are embedded exactly (too few for Barnes-Hut's 3 x perplexity neighbours)
/// rather than with Barnes-Hut (theta 0.5).
pub fn exact(n: usize) -> bool {
    n < 3 * 30 + 1
}

/// Embeds `rows` (each a feature vector) in 2-D. Perplexity 30, or less when there are few
/// points; the initial layout is drawn from `seed`, so the result is reproducible.
pub fn embed(rows: &[Vec<f32>], seed: u64) -> Result<Vec<[f32; 2]>> {
    let n = rows.len();
    ensure!(n >= 4, "t-SNE needs at least 4 points, got {n}");
    let perplexity = (30.0f32).min(((n - 1) / 3) as f32).max(1.0);
    let mut rng = crate::rng::stream(seed, "tsne", 0);
    let init: Vec<f32> = crate::rng::normal_vec(&mut rng, 2 * n).into_iter().map(|v| 1e-4 * v).collect();
    let samples: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
    let euclid = |a: &&[f32], b: &&[f32]| a.iter().zip(b.iter()).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt();
    // One thread: bhtsne's parallel sums would otherwise make the layout vary run to run.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let y = pool.install(|| {
        let mut tsne = bhtsne::tSNE::<f32, &[f32], 2>::new(&samples);
        tsne.perplexity(perplexity).epochs(1000).initial_embedding(init);
        if exact(n) { tsne.exact(euclid).embedding() } else { tsne.barnes_hut(0.5, euclid).embedding() }
    });
    Ok(y.chunks_exact(2).map(|p| [p[0], p[1]]).collect())
}

/// Fraction of points whose `k` nearest neighbours (in the 2-D layout) share their label.
pub fn knn_purity(points: &[[f32; 2]], labels: &[u32], k: usize) -> f64 {
    let mut agree = 0usize;
    let mut total = 0usize;
    for (i, p) in points.iter().enumerate() {
        let mut d: Vec<(f32, usize)> =
            points.iter().enumerate().filter(|&(j, _)| j != i).map(|(j, q)| ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2), j)).collect();
        d.sort_by(|a, b| a.0.total_cmp(&b.0));
        for &(_, j) in d.iter().take(k) {
            agree += (labels[j] == labels[i]) as usize;
            total += 1;
        }
    }
    agree as f64 / total.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    /// Five well-separated Gaussian clusters in 32-D stay separated in 2-D.
    #[test]
    fn separated_clusters_stay_separated() {
        let mut rng = crate::rng::stream(1, "test", 0);
        let mut rows = vec![];
        let mut labels = vec![];
        for c in 0..5u32 {
            let centre: Vec<f32> = (0..32).map(|_| rng.random_range(-10.0..10.0)).collect();
            for _ in 0..30 {
                rows.push(centre.iter().map(|&m| m + crate::rng::normal_vec(&mut rng, 1)[0] * 0.5).collect());
                labels.push(c);
            }
        }
        let y = embed(&rows, 0).unwrap();
        assert!(knn_purity(&y, &labels, 5) > 0.95, "purity {}", knn_purity(&y, &labels, 5));
        // Seeded: the same layout twice.
        assert_eq!(embed(&rows, 0).unwrap(), y);
        // A control: shuffled labels are not pure.
        let shuffled: Vec<u32> = (0..labels.len() as u32).map(|i| i % 5).collect();
        assert!(knn_purity(&y, &shuffled, 5) < 0.5);
    }
}

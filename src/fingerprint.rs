//! Fingerprints: what a run or a feature cache was made from. Finished work is reused only when
//! the code and the data it came from are the same as now; `ablate`/`compare`/`demo` redo stale
//! work, `train --resume` refuses it with both fingerprints in the message.

use crate::features::{FeatureCache, FeatureSplit};
use crate::rng::fnv1a_continue;
use serde::{Deserialize, Serialize};

/// The code (version and source hash) and the data a result came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// `marnet <version> src:<hash>` of the build ([`code`]).
    pub code: String,
    /// The git commit the build came from (`-dirty`: with uncommitted changes), for people:
    /// `code` already covers the source, so commits that change no source reuse results.
    pub commit: String,
    /// Content hash of the input: the feature cache's splits (a run), or the dataset's samples
    /// with their texts and file sizes (a cache).
    pub data: String,
}

impl Fingerprint {
    /// This build's fingerprint of `data`.
    pub fn current(data: String) -> Self {
        Self { code: code(), commit: env!("MARNET_GIT_COMMIT").to_string(), data }
    }

    /// Same code and same data (the commit is not compared).
    pub fn matches(&self, other: &Fingerprint) -> bool {
        self.code == other.code && self.data == other.data
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code.is_empty(), self.commit.is_empty()) {
            (true, _) => write!(f, "none recorded"),
            (false, true) => write!(f, "{}, data {}", self.code, self.data),
            (false, false) => write!(f, "{} (commit {}), data {}", self.code, self.commit, self.data),
        }
    }
}

/// `marnet <version> src:<hash of every library source file>` (computed by `build.rs`).
pub fn code() -> String {
    format!("marnet {} src:{}", env!("CARGO_PKG_VERSION"), env!("MARNET_SOURCE_HASH"))
}

fn hash_split(h: u64, s: &FeatureSplit) -> u64 {
    let mut h = fnv1a_continue(h, s.visual.iter().flat_map(|x| x.to_le_bytes()));
    h = fnv1a_continue(h, s.text.iter().flatten().flat_map(|x| x.to_le_bytes()));
    h = fnv1a_continue(h, s.label.iter().flat_map(|l| l.to_le_bytes()));
    for text in s.meta.ids.iter().chain(&s.meta.classes) {
        h = fnv1a_continue(h, text.bytes().chain([0]));
    }
    // Groups only when recorded, so that caches without them keep their fingerprints.
    if !s.meta.groups.is_empty() {
        h = fnv1a_continue(h, *b"groups");
        for g in &s.meta.groups {
            h = fnv1a_continue(h, g.bytes().chain([0]));
        }
    }
    // Token features, when stored: the bits of the f16 values four at a time (a byte-wise pass
    // over hundreds of MB would cost seconds per run), then the masks.
    for (tag, tokens) in [(1u8, &s.visual_tokens), (2, &s.text_tokens)] {
        if let Some(t) = tokens {
            h = fnv1a_continue(h, [tag].into_iter().chain((t.len as u64).to_le_bytes()).chain((t.dim as u64).to_le_bytes()));
            for c in t.data.chunks(4) {
                let word = c.iter().enumerate().fold(0u64, |w, (i, x)| w | (x.to_bits() as u64) << (16 * i));
                h = (h ^ word).wrapping_mul(crate::rng::FNV_PRIME);
            }
            h = fnv1a_continue(h, t.mask.iter().flatten().copied());
        }
    }
    h
}

/// Content hash of a cache as loaded (after any fold): every split's features, labels, ids and
/// classes, in split order.
pub fn cache_data(cache: &FeatureCache) -> String {
    let mut h = crate::rng::FNV_OFFSET;
    for (name, split) in [("train", Some(&cache.train)), ("val", cache.val.as_ref()), ("test", cache.test.as_ref())] {
        h = fnv1a_continue(h, name.bytes());
        if let Some(s) = split {
            h = hash_split(h, s);
        }
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(v: f32) -> FeatureSplit {
        FeatureSplit {
            visual: vec![v, 1.0],
            dv: 2,
            text: Some(vec![0.5]),
            ds: 1,
            label: vec![0],
            meta: crate::features::SplitMeta { classes: vec!["a".into()], ids: vec!["x".into()], ..Default::default() },
            visual_tokens: None,
            text_tokens: None,
        }
    }

    fn cache(v: f32) -> FeatureCache {
        FeatureCache { dir: "c".into(), train: split(v), val: None, test: Some(split(2.0)), fold: None }
    }

    #[test]
    fn the_data_hash_sees_one_changed_feature_value() {
        assert_eq!(cache_data(&cache(0.0)), cache_data(&cache(0.0)));
        assert_ne!(cache_data(&cache(0.0)), cache_data(&cache(1e-7)));
        let mut moved = cache(0.0);
        (moved.val, moved.test) = (moved.test.take(), None);
        assert_ne!(cache_data(&cache(0.0)), cache_data(&moved), "a split renamed is other data");
    }

    #[test]
    fn fingerprints_match_on_code_and_data_not_commit() {
        let a = Fingerprint::current("d1".into());
        assert!(a.code.starts_with(&format!("marnet {} src:", env!("CARGO_PKG_VERSION"))));
        assert!(a.matches(&Fingerprint { commit: "other".into(), ..a.clone() }));
        assert!(!a.matches(&Fingerprint { data: "d2".into(), ..a.clone() }));
        assert!(!a.matches(&Fingerprint { code: "marnet 0.0.0 src:0".into(), ..a.clone() }));
        assert!(!a.matches(&Fingerprint::default()), "a run from before fingerprints is stale");
    }
}

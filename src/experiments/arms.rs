//! The rows a table trains: Table 2's ablation rows and Table 1's alignment rows, each a
//! configuration with its folder name and label.

use crate::align::Alignment;
use crate::model::marnet::{MarnetConfig, Variant};

/// One row of a table: a configuration, its folder name and its label.
#[derive(Debug, Clone)]
pub struct Arm {
    pub key: String,
    pub row: String,
    pub cfg: MarnetConfig,
}

/// Table 2: the given variants (all five if empty), each as configured in `base`.
pub fn ablation_arms(base: &MarnetConfig, variants: &[Variant]) -> Vec<Arm> {
    let variants = if variants.is_empty() { &Variant::ALL[..] } else { variants };
    variants.iter().map(|&v| Arm { key: v.name().into(), row: v.table_row().into(), cfg: MarnetConfig { variant: v, ..base.clone() } }).collect()
}

/// Table 1: the visual baseline, EMA with each alignment loss, and full MARNet (with ITA).
pub fn alignment_arms(base: &MarnetConfig, aligns: &[Alignment]) -> Vec<Arm> {
    let aligns = if aligns.is_empty() { &Alignment::ALL[..] } else { aligns };
    let mut arms = vec![Arm { key: "baseline".into(), row: "Visual baseline".into(), cfg: MarnetConfig { variant: Variant::Baseline, ..base.clone() } }];
    for &a in aligns {
        arms.push(Arm {
            // EMA with ITA is the ablation's +EMA row: same folder, trained once.
            key: if a == Alignment::Ita { Variant::Ema.name().into() } else { format!("align-{}", a.name()) },
            row: a.table_row().into(),
            cfg: MarnetConfig { variant: Variant::Ema, align: a, ..base.clone() },
        });
    }
    arms.push(Arm { key: "marnet".into(), row: "MARNet".into(), cfg: MarnetConfig { variant: Variant::Marnet, align: Alignment::Ita, ..base.clone() } });
    arms
}

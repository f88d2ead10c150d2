//! DESIGN rule: every trainable parameter of every variant and fusion mode gets a finite,
//! non-zero gradient (candle's fused kernels would silently drop it).

use candle_core::{Device, Tensor};
use marnet::align::Alignment;
use marnet::checkpoint::LoadedModel;
use marnet::model::fusion::Fusion;
use marnet::model::marnet::{MarnetConfig, Variant};
use marnet::rng::{randn, stream};

fn check(variant: Variant, fusion: Fusion, d: usize) {
    check_aligned(variant, fusion, d, Alignment::Ita);
}

fn check_aligned(variant: Variant, fusion: Fusion, d: usize, align: Alignment) {
    let dev = Device::Cpu;
    let (dv, ds, c, b) = (12, 10, 5, 16);
    let cfg = MarnetConfig { fusion, align, d, hidden: 16, temb: 8, ..MarnetConfig::new(variant, dv, ds, c) };
    let m = LoadedModel::init(&cfg, 1, &dev).unwrap();
    let mut rng = stream(2, "test", 0);
    let xv = randn(&mut rng, (b, dv), &dev).unwrap();
    let xs = randn(&mut rng, (b, ds), &dev).unwrap();
    let y = Tensor::from_vec((0..b as u32).map(|i| i % c as u32).collect::<Vec<_>>(), b, &dev).unwrap();
    let losses = m.model.losses(&xv, &xs, &y, &mut rng).unwrap();
    let total = losses.iter().skip(1).fold(losses[0].1.clone(), |a, (_, l)| (a + l).unwrap());
    let vars = m.trainable_vars();
    let grads = marnet::nn::backward(&total, &vars).unwrap();
    assert!(!vars.is_empty());
    for (name, var) in vars {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{variant:?}/{fusion:?}/{align:?}: `{name}` has no gradient"));
        let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(g.iter().all(|x| x.is_finite()), "{variant:?}/{fusion:?}: `{name}` has a non-finite gradient");
        assert!(g.iter().any(|&x| x != 0.0), "{variant:?}/{fusion:?}: `{name}` has an all-zero gradient");
    }
}

#[test]
fn every_variant_trains_every_parameter() {
    for v in Variant::ALL {
        check(v, Fusion::Concat, 6);
    }
}

#[test]
fn every_fusion_mode_trains_every_parameter() {
    for f in Fusion::ALL {
        check(Variant::Marnet, f, 6);
        // d == ds: add/mul fuse without a projection.
        check(Variant::Marnet, f, 10);
    }
}

#[test]
fn every_alignment_loss_trains_every_parameter() {
    for a in Alignment::ALL {
        check_aligned(Variant::Ema, Fusion::Concat, 6, a);
        check_aligned(Variant::Marnet, Fusion::Concat, 6, a);
    }
}

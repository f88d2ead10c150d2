//! DESIGN rule: every trainable parameter of every variant and fusion mode gets a finite,
//! non-zero gradient (candle's fused kernels would silently drop it).

use candle_core::{Device, Tensor};
use marnet::align::Alignment;
use marnet::align::team_tokens::{TokenBatch, TokenDims};
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
    let mut cfg = MarnetConfig { fusion, align, d, hidden: 16, temb: 8, ..MarnetConfig::new(variant, dv, ds, c) };
    // Token widths unlike the pooled ones (the token projections are their own layers).
    let (tv, dvt, ts, dst) = (5, 7, 4, 3);
    if cfg.needs_tokens() {
        cfg.tokens = Some(TokenDims { visual: dvt, text: dst });
    }
    let m = LoadedModel::init(&cfg, 1, &dev).unwrap();
    let mut rng = stream(2, "test", 0);
    let xv = randn(&mut rng, (b, dv), &dev).unwrap();
    let xs = randn(&mut rng, (b, ds), &dev).unwrap();
    let y = Tensor::from_vec((0..b as u32).map(|i| i % c as u32).collect::<Vec<_>>(), b, &dev).unwrap();
    // Text rows of 1 to 4 real tokens, zero-padded.
    let mask: Vec<f32> = (0..b * ts).map(|i| ((i % ts) <= (i / ts) % ts) as u8 as f32).collect();
    let text =
        (randn(&mut rng, (b, ts, dst), &dev).unwrap() * Tensor::from_vec(mask.clone(), (b, ts, 1), &dev).unwrap().broadcast_as((b, ts, dst)).unwrap()).unwrap();
    let tokens = cfg.needs_tokens().then(|| TokenBatch {
        visual: randn(&mut rng, (b, tv, dvt), &dev).unwrap(),
        text,
        mask: Tensor::from_vec(mask, (b, ts), &dev).unwrap(),
    });
    let losses = m.model.losses_with_tokens(&xv, &xs, tokens.as_ref(), &y, &mut rng).unwrap();
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
    // ALL holds the pooled methods; the token-level TEAM trains its token projections too.
    for a in Alignment::ALL.into_iter().chain([Alignment::TeamTokens]) {
        check_aligned(Variant::Ema, Fusion::Concat, 6, a);
        check_aligned(Variant::Marnet, Fusion::Concat, 6, a);
    }
}

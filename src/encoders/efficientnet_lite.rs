//! EfficientNet-Lite (ImageNet) in the lukemelas `efficientnet_pytorch` weight naming, Lite0
//! and Lite2 (Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
//! Networks", ICML 2019, Table 1; the Lite variants of the TensorFlow `efficientnet/lite`
//! builder). Stem 3x3/2 conv + BN + ReLU6; MBConv blocks (1x1 expand when the expansion ratio
//! is not 1, kxk depthwise, 1x1 project; BN after each; ReLU6 after expand and depthwise; no
//! squeeze-excitation; residual when stride 1 and shapes match); head 1x1 conv to 1280 + BN +
//! ReLU6; global average pool; `_fc` to 1000 classes. TF "SAME" padding everywhere, BN eps 1e-3.
//! The block table is a [`Config`]; loading checks every tensor's shape against it.

use anyhow::{Context, Result};
use candle_core::{D, Device, Module, Tensor};
use candle_nn::VarBuilder;
use std::path::Path;

use crate::data::image::Preprocess;
use crate::nn::conv::{Placement, Then, conv2d};

/// Input scaling of the TF-Lite models: `(x - 127) / 128` (the Lite builder's MEAN_RGB and
/// STDDEV_RGB), here at Lite0's 224 px.
pub const PREPROCESS: Preprocess = Preprocess { size: 224, mean: [127.0; 3], std: [128.0; 3], resize: None };
const BN_EPS: f64 = 1e-3;

/// One stage of the block table: `repeats` MBConv blocks with a `kernel` x `kernel` depthwise
/// convolution, expansion ratio `expand`, `out` channels; the first block has `stride`, the
/// others stride 1 (the paper's Table 1 rows; the TF builder's `r1_k3_s11_e1_i32_o16` strings).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stage {
    pub repeats: usize,
    pub kernel: usize,
    pub stride: usize,
    pub expand: usize,
    pub out: usize,
}

/// One MBConv block as the table lays it out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Block {
    pub c_in: usize,
    pub kernel: usize,
    pub stride: usize,
    pub expand: usize,
    pub c_out: usize,
}

/// An EfficientNet-Lite variant: the block table, stem and head widths, input scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The `--visual` name, also recorded in feature caches.
    pub name: &'static str,
    pub stem: usize,
    pub stages: Vec<Stage>,
    pub head: usize,
    pub classes: usize,
    pub preprocess: Preprocess,
}

const fn stage(repeats: usize, kernel: usize, stride: usize, expand: usize, out: usize) -> Stage {
    Stage { repeats, kernel, stride, expand, out }
}

impl Config {
    /// EfficientNet-Lite0: the B0 table (width and depth 1.0), 16 blocks, 224 px.
    pub fn lite0() -> Self {
        let stages = vec![
            stage(1, 3, 1, 1, 16),
            stage(2, 3, 2, 6, 24),
            stage(2, 5, 2, 6, 40),
            stage(3, 3, 2, 6, 80),
            stage(3, 5, 1, 6, 112),
            stage(4, 5, 2, 6, 192),
            stage(1, 3, 1, 6, 320),
        ];
        Self { name: "efficientnet-lite0", stem: 32, stages, head: 1280, classes: 1000, preprocess: PREPROCESS }
    }

    /// EfficientNet-Lite2: width 1.1, depth 1.2, 260 px. Lite keeps the stem (32), the head
    /// (1280) and the first and last stages' repeats fixed; the other repeats are
    /// `ceil(1.2 r)` (2, 2, 3, 3, 4 -> 3, 3, 4, 4, 5: 21 blocks) and the widths
    /// `1.1 c` rounded to a multiple of 8 (16, 24, 48, 88, 120, 208, 352).
    pub fn lite2() -> Self {
        let stages = vec![
            stage(1, 3, 1, 1, 16),
            stage(3, 3, 2, 6, 24),
            stage(3, 5, 2, 6, 48),
            stage(4, 3, 2, 6, 88),
            stage(4, 5, 1, 6, 120),
            stage(5, 5, 2, 6, 208),
            stage(1, 3, 1, 6, 352),
        ];
        let preprocess = Preprocess { size: 260, ..PREPROCESS };
        Self { name: "efficientnet-lite2", stem: 32, stages, head: 1280, classes: 1000, preprocess }
    }

    /// The blocks in order, with their input widths.
    pub fn blocks(&self) -> Vec<Block> {
        let mut c_in = self.stem;
        let mut out = vec![];
        for s in &self.stages {
            for r in 0..s.repeats {
                out.push(Block { c_in, kernel: s.kernel, stride: if r == 0 { s.stride } else { 1 }, expand: s.expand, c_out: s.out });
                c_in = s.out;
            }
        }
        out
    }

    /// Indices of the blocks that downsample.
    pub fn stride2_blocks(&self) -> Vec<usize> {
        self.blocks().iter().enumerate().filter(|(_, b)| b.stride == 2).map(|(i, _)| i).collect()
    }
}

/// A convolution with its batch norm folded in (`w * scale`, bias `shift`), TF "SAME"
/// padding computed from the input size, and optionally ReLU6.
struct SameConv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    depthwise: bool,
    relu6: bool,
}

impl SameConv {
    /// Loads the `c_out` x `c_in` (per group) x `k` x `k` conv at `conv` and folds the
    /// inference-form BN at `bn` into it: `w * g / sqrt(var + eps)`, bias `b - mean * scale`.
    /// A tensor of another shape is an error naming it.
    fn load(conv: VarBuilder, bn: VarBuilder, (c_out, c_in, k): (usize, usize, usize), stride: usize, depthwise: bool, relu6: bool) -> Result<Self> {
        let weight = conv.get((c_out, c_in, k, k), "weight")?;
        let get = |n: &str| bn.get(c_out, n);
        let (w, b, mean, var) = (get("weight")?, get("bias")?, get("running_mean")?, get("running_var")?);
        let scale = (w / (var + BN_EPS)?.sqrt()?)?;
        let bias = (b - (&mean * &scale)?)?;
        let weight = weight.broadcast_mul(&scale.reshape((scale.dim(0)?, 1, 1, 1))?)?;
        Ok(Self { weight, bias, stride, depthwise, relu6 })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_plus(x, None)
    }

    /// [`Self::forward`] with `residual` added at the end (the block's skip connection).
    fn forward_plus(&self, x: &Tensor, residual: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let k = self.weight.dim(D::Minus1)?;
        let pad = |n: usize| {
            let total = ((n.div_ceil(self.stride) - 1) * self.stride + k).saturating_sub(n);
            (total / 2, total - total / 2)
        };
        let (_, c, h, w) = x.dims4()?;
        let ((t, b), (l, r)) = (pad(h), pad(w));
        if self.depthwise && x.device().is_cpu() {
            // candle runs grouped convolutions as one convolution per group: far too slow for
            // depthwise layers with hundreds of channels. Padding, bias and ReLU6 are fused.
            let op = crate::nn::depthwise::DepthwiseConv { stride: self.stride, pad: (t, l), relu6: self.relu6 };
            let y = x.contiguous()?.apply_op3_no_bwd(&self.weight.contiguous()?, &self.bias, &op)?;
            return match residual {
                Some(r) => y + r,
                None => Ok(y),
            };
        }
        if self.depthwise {
            // Elsewhere than the CPU: candle's grouped convolution.
            let y = x.pad_with_zeros(2, t, b)?.pad_with_zeros(3, l, r)?.conv2d(&self.weight, 0, self.stride, 1, c)?;
            let y = y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)?;
            let y = if self.relu6 { y.clamp(0f32, 6f32)? } else { y };
            return match residual {
                Some(r) => y + r,
                None => Ok(y),
            };
        }
        // The blocks' skip connections follow convolutions without ReLU6: the order of the two
        // never matters here.
        debug_assert!(!(self.relu6 && residual.is_some()), "ReLU6 and a skip connection after one convolution");
        let at = Placement { stride: self.stride, pad: (t, l), out: (h.div_ceil(self.stride), w.div_ceil(self.stride)) };
        conv2d(x, &self.weight, &self.bias, at, residual, if self.relu6 { Then::Relu6 } else { Then::Nothing })
    }
}

struct MbConv {
    expand: Option<SameConv>,
    depthwise: SameConv,
    project: SameConv,
    residual: bool,
}

impl MbConv {
    fn load(vb: VarBuilder, b: &Block) -> Result<Self> {
        // Expansion to `c_in * expand` channels, absent at ratio 1 (the first stage).
        let mid = b.c_in * b.expand;
        let expand = if b.expand != 1 { Some(SameConv::load(vb.pp("_expand_conv"), vb.pp("_bn0"), (mid, b.c_in, 1), 1, false, true)?) } else { None };
        let depthwise = SameConv::load(vb.pp("_depthwise_conv"), vb.pp("_bn1"), (mid, 1, b.kernel), b.stride, true, true)?;
        let project = SameConv::load(vb.pp("_project_conv"), vb.pp("_bn2"), (b.c_out, mid, 1), 1, false, false)?;
        let residual = b.stride == 1 && b.c_in == b.c_out;
        Ok(Self { expand, depthwise, project, residual })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = match &self.expand {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        self.project.forward_plus(&self.depthwise.forward(&h)?, self.residual.then_some(x))
    }
}

pub struct EfficientNetLite {
    pub config: Config,
    stem: SameConv,
    blocks: Vec<MbConv>,
    head: SameConv,
    fc: candle_nn::Linear,
}

impl EfficientNetLite {
    /// Loads the weights of the variant `config` describes; every tensor must have the shape
    /// the block table gives it, and the file may hold no further block.
    pub fn load(vb: VarBuilder, config: Config) -> Result<Self> {
        let stem = SameConv::load(vb.pp("_conv_stem"), vb.pp("_bn0"), (config.stem, 3, 3), 2, false, true)?;
        let table = config.blocks();
        let blocks = table.iter().enumerate().map(|(i, b)| MbConv::load(vb.pp(format!("_blocks.{i}")), b)).collect::<Result<_>>()?;
        let n = table.len();
        anyhow::ensure!(!vb.contains_tensor(&format!("_blocks.{n}._project_conv.weight")), "more than the {n} blocks of {}", config.name);
        let last = table.last().map_or(config.stem, |b| b.c_out);
        let head = SameConv::load(vb.pp("_conv_head"), vb.pp("_bn1"), (config.head, last, 1), 1, false, true)?;
        let w = vb.get((config.classes, config.head), "_fc.weight")?;
        let b = vb.get(config.classes, "_fc.bias")?;
        Ok(Self { config, stem, blocks, head, fc: candle_nn::Linear::new(w, Some(b)) })
    }

    /// Loads `model.safetensors` from `dir`, converting the legacy `.pth` there on first use.
    pub fn load_dir(dir: &Path, config: Config, dev: &Device) -> Result<Self> {
        let name = config.name;
        let st = dir.join("model.safetensors");
        if !st.exists() {
            let pth = std::fs::read_dir(dir)
                .with_context(|| format!("{}: {name} folder not found (run scripts/fetch-assets?)", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|e| e == "pth"))
                .with_context(|| format!("{}: neither model.safetensors nor a .pth file", dir.display()))?;
            super::torch_legacy::convert(&pth, &st)?;
        }
        // SAFETY: the file is memory-mapped read-only and not modified while in use.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&st], candle_core::DType::F32, dev)? };
        Self::load(vb, config).with_context(|| format!("{}: not {name} weights", st.display()))
    }

    /// The head's feature map [N, 1280, H/32, W/32] (7 x 7 at 224 px, 9 x 9 at 260), before
    /// pooling.
    pub fn feature_map(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        crate::nn::pool::by_image(x, |x| self.layers(x))
    }

    /// [`Self::feature_map`] of the whole batch, layer after layer.
    fn layers(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.stem.forward(x)?;
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        self.head.forward(&h)
    }

    /// The pooled 1280-d feature before the classifier: the mean of the feature map.
    pub fn features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Self::pool(&self.feature_map(x)?)
    }

    fn pool(map: &Tensor) -> candle_core::Result<Tensor> {
        map.mean(D::Minus1)?.mean(D::Minus1)
    }

    /// The pooled feature [N, 1280] (as [`Self::features`]) and the feature map as tokens
    /// [N, H*W, 1280] in row-major spatial order: 49 tokens at 224 px (81 at 260), whose mean is the pooled
    /// feature.
    pub fn features_and_tokens(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let map = self.feature_map(x)?;
        let tokens = map.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        Ok((Self::pool(&map)?, tokens))
    }

    /// ImageNet logits.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.fc.forward(&self.features(x)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The block tables: counts, downsampling blocks and widths as in the issue and checkpoints.
    #[test]
    fn block_tables() {
        let (l0, l2) = (Config::lite0().blocks(), Config::lite2().blocks());
        assert_eq!((l0.len(), Config::lite0().stride2_blocks()), (16, vec![1, 3, 5, 11]));
        assert_eq!((l2.len(), Config::lite2().stride2_blocks()), (21, vec![1, 4, 7, 15]));
        let widths = |b: &[Block]| {
            b.iter().map(|b| b.c_out).fold(vec![], |mut v, c| {
                if v.last() != Some(&c) {
                    v.push(c);
                    v
                } else {
                    v
                }
            })
        };
        assert_eq!(widths(&l2), [16, 24, 48, 88, 120, 208, 352]);
        assert_eq!(widths(&l0), [16, 24, 40, 80, 112, 192, 320]);
        assert_eq!((l2[4].kernel, l2[7].kernel, l2[20].c_in, Config::lite2().preprocess.size), (5, 3, 208, 260));
    }

    /// A small config, and the name and shape of every tensor its weights hold.
    fn tiny() -> (Config, Vec<(String, Vec<usize>)>) {
        let config = Config { name: "tiny", stem: 4, stages: vec![stage(1, 3, 1, 1, 4), stage(2, 5, 2, 2, 8)], head: 6, classes: 3, preprocess: PREPROCESS };
        let mut shapes: Vec<(String, Vec<usize>)> = vec![];
        let conv = |shapes: &mut Vec<(String, Vec<usize>)>, conv: &str, bn: &str, dims: [usize; 4]| {
            shapes.push((format!("{conv}.weight"), dims.to_vec()));
            shapes.extend(["weight", "bias", "running_mean", "running_var"].map(|n| (format!("{bn}.{n}"), vec![dims[0]])));
        };
        conv(&mut shapes, "_conv_stem", "_bn0", [4, 3, 3, 3]);
        for (i, b) in config.blocks().iter().enumerate() {
            let (p, mid) = (format!("_blocks.{i}"), b.c_in * b.expand);
            if b.expand != 1 {
                conv(&mut shapes, &format!("{p}._expand_conv"), &format!("{p}._bn0"), [mid, b.c_in, 1, 1]);
            }
            conv(&mut shapes, &format!("{p}._depthwise_conv"), &format!("{p}._bn1"), [mid, 1, b.kernel, b.kernel]);
            conv(&mut shapes, &format!("{p}._project_conv"), &format!("{p}._bn2"), [b.c_out, mid, 1, 1]);
        }
        conv(&mut shapes, "_conv_head", "_bn1", [6, 8, 1, 1]);
        shapes.extend([("_fc.weight".into(), vec![3, 6]), ("_fc.bias".into(), vec![3])]);
        (config, shapes)
    }

    /// Loading checks every shape against the table and refuses extra blocks, naming the tensor.
    #[test]
    fn loading_checks_shapes_against_the_config() {
        let (config, shapes) = tiny();
        let load = |shapes: &[(String, Vec<usize>)]| {
            let map = shapes.iter().map(|(n, s)| (n.clone(), Tensor::ones(s.as_slice(), candle_core::DType::F32, &Device::Cpu).unwrap())).collect();
            EfficientNetLite::load(VarBuilder::from_tensors(map, candle_core::DType::F32, &Device::Cpu), config.clone()).map(|_| ())
        };
        load(&shapes).unwrap();
        let mut wrong = shapes.clone();
        wrong.iter_mut().find(|(n, _)| n == "_blocks.2._depthwise_conv.weight").unwrap().1 = vec![16, 1, 3, 3];
        let err = format!("{:#}", load(&wrong).unwrap_err());
        assert!(err.contains("_blocks.2._depthwise_conv.weight") && err.contains("[16, 1, 5, 5]"), "{err}");
        let mut extra = shapes.clone();
        extra.push(("_blocks.3._project_conv.weight".into(), vec![8, 16, 1, 1]));
        assert!(format!("{:#}", load(&extra).unwrap_err()).contains("more than the 3 blocks of tiny"));
    }

    /// A batch's feature map, image by image on two threads, is the same bits as the whole
    /// batch's layer after layer.
    #[test]
    fn images_alone_give_the_batch_s_bits() {
        let (config, _) = tiny();
        let model = super::super::cnn::testing::random(|vb| EfficientNetLite::load(vb, config.clone()));
        super::super::cnn::testing::same_bits_by_image(|x| model.feature_map(x), |x| model.layers(x));
    }

    /// The fused depthwise kernel equals candle's grouped convolution on the padded input.
    #[test]
    fn depthwise_kernel_matches_grouped_conv() {
        let dev = Device::Cpu;
        let mut rng = crate::rng::stream(3, "test", 0);
        for (k, stride, h, w) in [(3, 1, 7, 9), (5, 2, 9, 8), (3, 2, 6, 5), (5, 1, 4, 3)] {
            let c = 4;
            let x = crate::rng::randn(&mut rng, (2, c, h, w), &dev).unwrap();
            let weight = crate::rng::randn(&mut rng, (c, 1, k, k), &dev).unwrap();
            let bias = crate::rng::randn(&mut rng, c, &dev).unwrap();
            let conv = SameConv { weight: weight.clone(), bias: bias.clone(), stride, depthwise: true, relu6: false };
            let got = conv.forward(&x).unwrap();
            let pad = |n: usize| {
                let total = ((n.div_ceil(stride) - 1) * stride + k).saturating_sub(n);
                (total / 2, total - total / 2)
            };
            let ((t, b), (l, r)) = (pad(h), pad(w));
            let want = x.pad_with_zeros(2, t, b).unwrap().pad_with_zeros(3, l, r).unwrap().conv2d(&weight, 0, stride, 1, c).unwrap();
            let want = want.broadcast_add(&bias.reshape((1, c, 1, 1)).unwrap()).unwrap();
            assert_eq!(got.dims(), want.dims(), "k {k} stride {stride}");
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-4, "k {k} stride {stride} {h}x{w}: max diff {diff}");
        }
    }
}

//! pytorch-fid's Inception-v3 (the FID network) in candle.
//!
//! The exact network of `pytorch_fid.inception.fid_inception_v3`: torchvision's Inception-v3
//! with 1008 classes and the FID-specific blocks (average pools that exclude padding from the
//! count in the A, C and E_1 blocks, a max pool in the last E block), BatchNorm eps 1e-3,
//! fed 299x299 images resized bilinearly (align_corners false, no antialias) and scaled from
//! [0, 1] to [-1, 1]. The output is the 2048-d average-pooled feature FID uses.
//!
//! BatchNorm is folded into the preceding convolution at load time (inference only). Weights
//! come from `pt_inception-2015-12-05-6726825d.pth` converted to safetensors by
//! `scripts/convert_inception.py`; the loader checks every tensor name and shape and refuses
//! anything missing, misshapen or unexpected. Nothing is downloaded: when the file is absent
//! FID is unavailable, with the reason.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use super::weights::sha256_hex;
use super::{detvalues, EvalError};

pub const BN_EPS: f64 = 1e-3;
pub const INPUT_SIZE: usize = 299;
pub const FEATURE_DIM: usize = 2048;
pub const NUM_CLASSES: usize = 1008;
/// File name of the converted pytorch-fid weights.
pub const WEIGHTS_FILE: &str = "pt_inception-2015-12-05-6726825d.safetensors";

/// Where the converted weights are looked for: `ABLATE_INCEPTION_WEIGHTS`, else
/// `assets/eval/pt_inception-2015-12-05-6726825d.safetensors`.
pub fn default_weights_path() -> PathBuf {
    std::env::var_os("ABLATE_INCEPTION_WEIGHTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::teacher::assets_dir().join("eval").join(WEIGHTS_FILE))
}

/// Hands out named tensors of a given shape (from a file, or generated for tests).
type Getter<'a> = dyn FnMut(&str, &[usize]) -> Result<Tensor, EvalError> + 'a;

/// Convolution (no bias) + folded BatchNorm + ReLU, with per-axis padding.
#[derive(Debug, Clone)]
struct BasicConv {
    conv: Conv2d,
    pad: (usize, usize),
}

impl BasicConv {
    fn new(g: &mut Getter, name: &str, cin: usize, cout: usize, k: (usize, usize), stride: usize, pad: (usize, usize)) -> Result<Self, EvalError> {
        let w = g(&format!("{name}.conv.weight"), &[cout, cin, k.0, k.1])?;
        let bn = |g: &mut Getter, p: &str| g(&format!("{name}.bn.{p}"), &[cout])?.to_dtype(DType::F64)?.to_vec1::<f64>().map_err(EvalError::from);
        let (gamma, beta, mean, var) = (bn(g, "weight")?, bn(g, "bias")?, bn(g, "running_mean")?, bn(g, "running_var")?);
        let scale: Vec<f64> = gamma.iter().zip(&var).map(|(g, v)| g / (v + BN_EPS).sqrt()).collect();
        let bias: Vec<f32> = (0..cout).map(|o| (beta[o] - mean[o] * scale[o]) as f32).collect();
        let dev = w.device().clone();
        let scale_t = Tensor::from_vec(scale.iter().map(|s| *s as f32).collect::<Vec<_>>(), (cout, 1, 1, 1), &dev)?;
        let w = w.to_dtype(DType::F32)?.broadcast_mul(&scale_t)?;
        let b = Tensor::from_vec(bias, cout, &dev)?;
        let square = pad.0 == pad.1;
        let cfg = Conv2dConfig { padding: if square { pad.0 } else { 0 }, stride, ..Default::default() };
        Ok(Self { conv: Conv2d::new(w, Some(b), cfg), pad: if square { (0, 0) } else { pad } })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        if self.pad.0 > 0 {
            x = x.pad_with_zeros(2, self.pad.0, self.pad.0)?;
        }
        if self.pad.1 > 0 {
            x = x.pad_with_zeros(3, self.pad.1, self.pad.1)?;
        }
        self.conv.forward(&x)?.relu()
    }
}

/// 3x3, stride 1, padding 1 average pool that divides by the number of real (non-padding)
/// pixels in each window: `F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)`.
fn avg_pool_exclude_pad(x: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let mean9 = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?.avg_pool2d_with_stride(3, 1)?;
    let valid = |i: usize, n: usize| 3.0 - (i == 0) as u8 as f32 - (i + 1 == n) as u8 as f32;
    let factor: Vec<f32> = (0..h * w).map(|k| 9.0 / (valid(k / w, h) * valid(k % w, w))).collect();
    mean9.broadcast_mul(&Tensor::from_vec(factor, (1, 1, h, w), x.device())?)
}

/// `F.max_pool2d(x, 3, stride=1, padding=1)`. Zero padding is exact here because the input is
/// a concatenation of ReLU outputs (>= 0) and every window holds at least one real pixel.
fn max_pool_same(x: &Tensor) -> candle_core::Result<Tensor> {
    x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?.max_pool2d_with_stride(3, 1)
}

#[derive(Debug, Clone)]
struct BlockA {
    b1: BasicConv,
    b5: [BasicConv; 2],
    b3: [BasicConv; 3],
    pool: BasicConv,
}

impl BlockA {
    fn new(g: &mut Getter, n: &str, cin: usize, pool_features: usize) -> Result<Self, EvalError> {
        Ok(Self {
            b1: BasicConv::new(g, &format!("{n}.branch1x1"), cin, 64, (1, 1), 1, (0, 0))?,
            b5: [
                BasicConv::new(g, &format!("{n}.branch5x5_1"), cin, 48, (1, 1), 1, (0, 0))?,
                BasicConv::new(g, &format!("{n}.branch5x5_2"), 48, 64, (5, 5), 1, (2, 2))?,
            ],
            b3: [
                BasicConv::new(g, &format!("{n}.branch3x3dbl_1"), cin, 64, (1, 1), 1, (0, 0))?,
                BasicConv::new(g, &format!("{n}.branch3x3dbl_2"), 64, 96, (3, 3), 1, (1, 1))?,
                BasicConv::new(g, &format!("{n}.branch3x3dbl_3"), 96, 96, (3, 3), 1, (1, 1))?,
            ],
            pool: BasicConv::new(g, &format!("{n}.branch_pool"), cin, pool_features, (1, 1), 1, (0, 0))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b1 = self.b1.forward(x)?;
        let b5 = self.b5[1].forward(&self.b5[0].forward(x)?)?;
        let b3 = self.b3.iter().try_fold(x.clone(), |h, c| c.forward(&h))?;
        let bp = self.pool.forward(&avg_pool_exclude_pad(x)?)?;
        Tensor::cat(&[b1, b5, b3, bp], 1)
    }
}

#[derive(Debug, Clone)]
struct BlockB {
    b3: BasicConv,
    dbl: [BasicConv; 3],
}

impl BlockB {
    fn new(g: &mut Getter, n: &str, cin: usize) -> Result<Self, EvalError> {
        Ok(Self {
            b3: BasicConv::new(g, &format!("{n}.branch3x3"), cin, 384, (3, 3), 2, (0, 0))?,
            dbl: [
                BasicConv::new(g, &format!("{n}.branch3x3dbl_1"), cin, 64, (1, 1), 1, (0, 0))?,
                BasicConv::new(g, &format!("{n}.branch3x3dbl_2"), 64, 96, (3, 3), 1, (1, 1))?,
                BasicConv::new(g, &format!("{n}.branch3x3dbl_3"), 96, 96, (3, 3), 2, (0, 0))?,
            ],
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b3 = self.b3.forward(x)?;
        let dbl = self.dbl.iter().try_fold(x.clone(), |h, c| c.forward(&h))?;
        Tensor::cat(&[b3, dbl, x.max_pool2d_with_stride(3, 2)?], 1)
    }
}

#[derive(Debug, Clone)]
struct BlockC {
    b1: BasicConv,
    b7: [BasicConv; 3],
    dbl: [BasicConv; 5],
    pool: BasicConv,
}

impl BlockC {
    fn new(g: &mut Getter, n: &str, c7: usize) -> Result<Self, EvalError> {
        let cin = 768;
        let c = |g: &mut Getter, s: &str, i, o, k, p| BasicConv::new(g, &format!("{n}.{s}"), i, o, k, 1, p);
        Ok(Self {
            b1: c(g, "branch1x1", cin, 192, (1, 1), (0, 0))?,
            b7: [
                c(g, "branch7x7_1", cin, c7, (1, 1), (0, 0))?,
                c(g, "branch7x7_2", c7, c7, (1, 7), (0, 3))?,
                c(g, "branch7x7_3", c7, 192, (7, 1), (3, 0))?,
            ],
            dbl: [
                c(g, "branch7x7dbl_1", cin, c7, (1, 1), (0, 0))?,
                c(g, "branch7x7dbl_2", c7, c7, (7, 1), (3, 0))?,
                c(g, "branch7x7dbl_3", c7, c7, (1, 7), (0, 3))?,
                c(g, "branch7x7dbl_4", c7, c7, (7, 1), (3, 0))?,
                c(g, "branch7x7dbl_5", c7, 192, (1, 7), (0, 3))?,
            ],
            pool: c(g, "branch_pool", cin, 192, (1, 1), (0, 0))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b1 = self.b1.forward(x)?;
        let b7 = self.b7.iter().try_fold(x.clone(), |h, c| c.forward(&h))?;
        let dbl = self.dbl.iter().try_fold(x.clone(), |h, c| c.forward(&h))?;
        let bp = self.pool.forward(&avg_pool_exclude_pad(x)?)?;
        Tensor::cat(&[b1, b7, dbl, bp], 1)
    }
}

#[derive(Debug, Clone)]
struct BlockD {
    b3: [BasicConv; 2],
    b7: [BasicConv; 4],
}

impl BlockD {
    fn new(g: &mut Getter, n: &str, cin: usize) -> Result<Self, EvalError> {
        let c = |g: &mut Getter, s: &str, i, o, k, st, p| BasicConv::new(g, &format!("{n}.{s}"), i, o, k, st, p);
        Ok(Self {
            b3: [c(g, "branch3x3_1", cin, 192, (1, 1), 1, (0, 0))?, c(g, "branch3x3_2", 192, 320, (3, 3), 2, (0, 0))?],
            b7: [
                c(g, "branch7x7x3_1", cin, 192, (1, 1), 1, (0, 0))?,
                c(g, "branch7x7x3_2", 192, 192, (1, 7), 1, (0, 3))?,
                c(g, "branch7x7x3_3", 192, 192, (7, 1), 1, (3, 0))?,
                c(g, "branch7x7x3_4", 192, 192, (3, 3), 2, (0, 0))?,
            ],
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b3 = self.b3.iter().try_fold(x.clone(), |h, c| c.forward(&h))?;
        let b7 = self.b7.iter().try_fold(x.clone(), |h, c| c.forward(&h))?;
        Tensor::cat(&[b3, b7, x.max_pool2d_with_stride(3, 2)?], 1)
    }
}

#[derive(Debug, Clone)]
struct BlockE {
    b1: BasicConv,
    b3: BasicConv,
    b3_split: [BasicConv; 2],
    dbl: [BasicConv; 2],
    dbl_split: [BasicConv; 2],
    pool: BasicConv,
    /// FIDInceptionE_1 averages (excluding padding); FIDInceptionE_2 takes the max.
    max_pool: bool,
}

impl BlockE {
    fn new(g: &mut Getter, n: &str, cin: usize, max_pool: bool) -> Result<Self, EvalError> {
        let c = |g: &mut Getter, s: &str, i, o, k, p| BasicConv::new(g, &format!("{n}.{s}"), i, o, k, 1, p);
        Ok(Self {
            b1: c(g, "branch1x1", cin, 320, (1, 1), (0, 0))?,
            b3: c(g, "branch3x3_1", cin, 384, (1, 1), (0, 0))?,
            b3_split: [c(g, "branch3x3_2a", 384, 384, (1, 3), (0, 1))?, c(g, "branch3x3_2b", 384, 384, (3, 1), (1, 0))?],
            dbl: [c(g, "branch3x3dbl_1", cin, 448, (1, 1), (0, 0))?, c(g, "branch3x3dbl_2", 448, 384, (3, 3), (1, 1))?],
            dbl_split: [c(g, "branch3x3dbl_3a", 384, 384, (1, 3), (0, 1))?, c(g, "branch3x3dbl_3b", 384, 384, (3, 1), (1, 0))?],
            pool: c(g, "branch_pool", cin, 192, (1, 1), (0, 0))?,
            max_pool,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b1 = self.b1.forward(x)?;
        let h = self.b3.forward(x)?;
        let b3 = Tensor::cat(&[self.b3_split[0].forward(&h)?, self.b3_split[1].forward(&h)?], 1)?;
        let h = self.dbl[1].forward(&self.dbl[0].forward(x)?)?;
        let dbl = Tensor::cat(&[self.dbl_split[0].forward(&h)?, self.dbl_split[1].forward(&h)?], 1)?;
        let pooled = if self.max_pool { max_pool_same(x)? } else { avg_pool_exclude_pad(x)? };
        Tensor::cat(&[b1, b3, dbl, self.pool.forward(&pooled)?], 1)
    }
}

#[derive(Debug, Clone)]
enum Stage {
    Conv(BasicConv),
    MaxPool,
    A(BlockA),
    B(BlockB),
    C(BlockC),
    D(BlockD),
    E(BlockE),
}

impl Stage {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Stage::Conv(c) => c.forward(x),
            Stage::MaxPool => x.max_pool2d_with_stride(3, 2),
            Stage::A(b) => b.forward(x),
            Stage::B(b) => b.forward(x),
            Stage::C(b) => b.forward(x),
            Stage::D(b) => b.forward(x),
            Stage::E(b) => b.forward(x),
        }
    }
}

/// The FID Inception network (pool features only).
#[derive(Debug, Clone)]
pub struct InceptionFid {
    stages: Vec<(&'static str, Stage)>,
    device: Device,
    /// sha256 of the weights file ("deterministic-test-weights" for generated ones).
    pub weights_hash: String,
}

impl InceptionFid {
    fn build(g: &mut Getter, device: &Device, weights_hash: String) -> Result<Self, EvalError> {
        let conv = |g: &mut Getter, n: &str, i, o, k: usize, s, p: usize| -> Result<Stage, EvalError> {
            Ok(Stage::Conv(BasicConv::new(g, n, i, o, (k, k), s, (p, p))?))
        };
        let stages = vec![
            ("Conv2d_1a_3x3", conv(g, "Conv2d_1a_3x3", 3, 32, 3, 2, 0)?),
            ("Conv2d_2a_3x3", conv(g, "Conv2d_2a_3x3", 32, 32, 3, 1, 0)?),
            ("Conv2d_2b_3x3", conv(g, "Conv2d_2b_3x3", 32, 64, 3, 1, 1)?),
            ("maxpool1", Stage::MaxPool),
            ("Conv2d_3b_1x1", conv(g, "Conv2d_3b_1x1", 64, 80, 1, 1, 0)?),
            ("Conv2d_4a_3x3", conv(g, "Conv2d_4a_3x3", 80, 192, 3, 1, 0)?),
            ("maxpool2", Stage::MaxPool),
            ("Mixed_5b", Stage::A(BlockA::new(g, "Mixed_5b", 192, 32)?)),
            ("Mixed_5c", Stage::A(BlockA::new(g, "Mixed_5c", 256, 64)?)),
            ("Mixed_5d", Stage::A(BlockA::new(g, "Mixed_5d", 288, 64)?)),
            ("Mixed_6a", Stage::B(BlockB::new(g, "Mixed_6a", 288)?)),
            ("Mixed_6b", Stage::C(BlockC::new(g, "Mixed_6b", 128)?)),
            ("Mixed_6c", Stage::C(BlockC::new(g, "Mixed_6c", 160)?)),
            ("Mixed_6d", Stage::C(BlockC::new(g, "Mixed_6d", 160)?)),
            ("Mixed_6e", Stage::C(BlockC::new(g, "Mixed_6e", 192)?)),
            ("Mixed_7a", Stage::D(BlockD::new(g, "Mixed_7a", 768)?)),
            ("Mixed_7b", Stage::E(BlockE::new(g, "Mixed_7b", 1280, false)?)),
            ("Mixed_7c", Stage::E(BlockE::new(g, "Mixed_7c", 2048, true)?)),
        ];
        // The classifier is part of the file; it is checked but FID does not use it.
        g("fc.weight", &[NUM_CLASSES, FEATURE_DIM])?;
        g("fc.bias", &[NUM_CLASSES])?;
        Ok(Self { stages, device: device.clone(), weights_hash })
    }

    /// Loads converted pytorch-fid weights, checking every name and shape.
    pub fn load(path: &Path, device: &Device) -> Result<Self, EvalError> {
        if !path.is_file() {
            return Err(EvalError::Unavailable(
                "FID".into(),
                format!(
                    "the Inception weights {} are not there; convert pytorch-fid's pt_inception-2015-12-05-6726825d.pth with `python3 scripts/convert_inception.py <pth> {}` (see docs/eval.md)",
                    path.display(),
                    path.display()
                ),
            ));
        }
        let file_err = |msg: String| EvalError::File { path: path.display().to_string(), msg };
        let bytes = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
        let hash = sha256_hex(&bytes);
        let mut tensors: HashMap<String, Tensor> =
            candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| file_err(e.to_string()))?;
        let mut get = |name: &str, shape: &[usize]| -> Result<Tensor, EvalError> {
            let t = tensors.remove(name).ok_or_else(|| file_err(format!("tensor {name} is missing: not a pytorch-fid Inception file")))?;
            if t.dims() != shape {
                return Err(file_err(format!("tensor {name} has shape {:?}, expected {shape:?}", t.dims())));
            }
            Ok(t)
        };
        let net = Self::build(&mut get, device, hash)?;
        let mut extra: Vec<String> = tensors.into_keys().filter(|k| !k.ends_with(".num_batches_tracked")).collect();
        if !extra.is_empty() {
            extra.sort();
            return Err(file_err(format!("unexpected tensors (not the FID Inception network?): {}", extra.join(", "))));
        }
        Ok(net)
    }

    /// The network with the deterministic weights of `scripts/reference/inception_fixtures.py`,
    /// for parity tests and benchmarks. Never used for a reported FID.
    pub fn deterministic(device: &Device) -> Result<Self, EvalError> {
        Self::build(&mut |name: &str, shape: &[usize]| deterministic_tensor(name, shape, device), device, "deterministic-test-weights".into())
    }

    /// Writes the deterministic weights as a weights file `load` accepts (for end-to-end
    /// tests of FID without the real weights; never for a reported FID).
    pub fn write_deterministic(path: &Path) -> Result<(), EvalError> {
        let mut tensors = HashMap::new();
        let mut get = |name: &str, shape: &[usize]| -> Result<Tensor, EvalError> {
            let t = deterministic_tensor(name, shape, &Device::Cpu)?;
            tensors.insert(name.to_string(), t.clone());
            Ok(t)
        };
        Self::build(&mut get, &Device::Cpu, String::new())?;
        super::weights::write_weights(path, &tensors, HashMap::new())
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Pool features (B, 2048) of images (B, 3, H, W), f32 in [0, 1].
    pub fn features(&self, images: &Tensor) -> Result<Tensor, EvalError> {
        self.features_with(images, &mut |_, _| {})
    }

    /// As [`features`](Self::features), handing every stage's output to `tap` (parity tests).
    pub fn features_with(&self, images: &Tensor, tap: &mut dyn FnMut(&str, &Tensor)) -> Result<Tensor, EvalError> {
        super::images::validate(images)?;
        let x = resize_bilinear(&images.to_device(&Device::Cpu)?, INPUT_SIZE, INPUT_SIZE)?;
        let mut h = ((x * 2.0)? - 1.0)?.to_device(&self.device)?;
        tap("input", &h);
        for (name, stage) in &self.stages {
            h = stage.forward(&h)?;
            tap(name, &h);
        }
        let pooled = h.mean_keepdim(3)?.mean_keepdim(2)?.flatten_from(1)?;
        tap("avgpool", &pooled);
        Ok(pooled)
    }
}

/// `F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=False)` without antialias,
/// on CPU, in f32 like PyTorch's float kernel.
pub fn resize_bilinear(x: &Tensor, oh: usize, ow: usize) -> Result<Tensor, EvalError> {
    let (b, c, h, w) = x.dims4()?;
    if (h, w) == (oh, ow) {
        return Ok(x.clone());
    }
    let src = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let taps = |n_in: usize, n_out: usize| -> Vec<(usize, usize, f32)> {
        let scale = n_in as f32 / n_out as f32;
        (0..n_out)
            .map(|o| {
                let s = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
                let i0 = (s as usize).min(n_in - 1);
                let i1 = (i0 + 1).min(n_in - 1);
                (i0, i1, s - i0 as f32)
            })
            .collect()
    };
    let (ty, tx) = (taps(h, oh), taps(w, ow));
    let mut out = vec![0f32; b * c * oh * ow];
    for (plane, dst) in out.chunks_mut(oh * ow).enumerate() {
        let p = &src[plane * h * w..(plane + 1) * h * w];
        for (oy, &(y0, y1, ly)) in ty.iter().enumerate() {
            for (ox, &(x0, x1, lx)) in tx.iter().enumerate() {
                let top = (1.0 - lx) * p[y0 * w + x0] + lx * p[y0 * w + x1];
                let bot = (1.0 - lx) * p[y1 * w + x0] + lx * p[y1 * w + x1];
                dst[oy * ow + ox] = (1.0 - ly) * top + ly * bot;
            }
        }
    }
    Ok(Tensor::from_vec(out, (b, c, oh, ow), &Device::Cpu)?)
}


/// The fixtures' deterministic value of an Inception tensor (`scripts/reference/inception_fixtures.py`).
fn deterministic_tensor(name: &str, shape: &[usize], device: &Device) -> Result<Tensor, EvalError> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = if name.ends_with(".conv.weight") {
        let fan_in: usize = shape[1..].iter().product();
        let a = (6.0 / fan_in as f64).sqrt();
        detvalues::syms(name, n).into_iter().map(|x| (x * a) as f32).collect()
    } else if name.ends_with(".bn.weight") {
        detvalues::syms(name, n).into_iter().map(|x| (1.0 + 0.1 * x) as f32).collect()
    } else if name.ends_with(".bn.bias") || name.ends_with(".bn.running_mean") {
        detvalues::syms(name, n).into_iter().map(|x| (0.1 * x) as f32).collect()
    } else if name.ends_with(".bn.running_var") {
        detvalues::units(name, n).into_iter().map(|x| (1.0 + 0.5 * x) as f32).collect()
    } else if name == "fc.weight" {
        let a = (3.0 / FEATURE_DIM as f64).sqrt();
        detvalues::syms(name, n).into_iter().map(|x| (x * a) as f32).collect()
    } else {
        detvalues::syms(name, n).into_iter().map(|x| (0.01 * x) as f32).collect()
    };
    Ok(Tensor::from_vec(v, shape, device)?)
}

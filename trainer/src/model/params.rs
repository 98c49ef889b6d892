//! Deterministic parameter creation with named tensors.
//!
//! candle's `VarBuilder::from_varmap` initialises from the device RNG, which cannot be
//! seeded on CPU, so two processes (two ranks, or a run and its rerun) would start from
//! different weights. `Params` creates every trainable tensor from our own seeded stream,
//! keyed by its full name, and registers it in a `VarMap` so optimizers, checkpoints and the
//! gradient exchange see one flat name -> `Var` table whose names follow the module tree
//! (`blocks.3.attn.qkv.weight`), as candle's model code does.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarMap;
use std::sync::Arc;

use crate::rng::Rng;

#[derive(Debug, Clone, Copy)]
pub enum Init {
    Zeros,
    Ones,
    /// Normal with this standard deviation.
    Normal(f64),
    /// PyTorch's default for `nn.Linear`: uniform in +-1/sqrt(fan_in).
    Uniform(f64),
}

#[derive(Clone)]
pub struct Params {
    map: VarMap,
    prefix: String,
    seed: u64,
    dtype: DType,
    device: Device,
    /// Set when parameters are frozen (a teacher): tensors are plain, never `Var`s.
    frozen: Option<Arc<std::collections::HashMap<String, Tensor>>>,
}

impl Params {
    pub fn new(map: VarMap, seed: u64, dtype: DType, device: &Device) -> Self {
        Self { map, prefix: String::new(), seed, dtype, device: device.clone(), frozen: None }
    }

    /// Fresh f32 CPU parameters in a map of their own: how the project's small asset networks
    /// (REPA teachers, autoencoders, the scene evaluator) start training.
    pub fn fresh_cpu(seed: u64) -> Self {
        Self::new(VarMap::new(), seed, DType::F32, &Device::Cpu)
    }

    /// Every tensor made so far, by name (the weights a trained asset network saves).
    pub fn tensors(&self) -> std::collections::HashMap<String, Tensor> {
        self.map.data().lock().expect("parameter map lock").iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect()
    }

    /// Every trainable parameter made so far, by name (`optim::trainable` of the map).
    pub fn trainable(&self) -> Vec<crate::optim::Param> {
        crate::optim::trainable(&self.map)
    }

    /// Read-only parameters from a loaded tensor table (frozen networks).
    pub fn frozen(tensors: std::collections::HashMap<String, Tensor>, dtype: DType, device: &Device) -> Self {
        Self {
            map: VarMap::new(),
            prefix: String::new(),
            seed: 0,
            dtype,
            device: device.clone(),
            frozen: Some(Arc::new(tensors)),
        }
    }

    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let mut p = self.clone();
        p.prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        p
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn varmap(&self) -> &VarMap {
        &self.map
    }

    fn full(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) }
    }

    /// The tensor `name` under the current prefix, created with `init` on first use.
    pub fn get(&self, shape: &[usize], name: &str, init: Init) -> Result<Tensor> {
        let full = self.full(name);
        if let Some(table) = &self.frozen {
            let t = table
                .get(&full)
                .ok_or_else(|| candle_core::Error::Msg(format!("missing tensor \"{full}\" in weights file")))?;
            if t.dims() != shape {
                candle_core::bail!("tensor \"{full}\" has shape {:?}, expected {:?}", t.dims(), shape);
            }
            return t.to_dtype(self.dtype)?.to_device(&self.device);
        }
        let mut data = self.map.data().lock().unwrap();
        if let Some(v) = data.get(&full) {
            if v.dims() != shape {
                candle_core::bail!("parameter \"{full}\" exists with shape {:?}, asked for {:?}", v.dims(), shape);
            }
            return Ok(v.as_tensor().clone());
        }
        let n: usize = shape.iter().product();
        let mut rng = Rng::derive(self.seed, &[fnv(&full)]);
        let values: Vec<f32> = match init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal(std) => (0..n).map(|_| (rng.normal() * std) as f32).collect(),
            Init::Uniform(b) => (0..n).map(|_| ((rng.uniform() * 2.0 - 1.0) * b) as f32).collect(),
        };
        let t = Tensor::from_vec(values, shape, &self.device)?.to_dtype(self.dtype)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(full, var);
        Ok(out)
    }
}

fn fnv(s: &str) -> u64 {
    crate::hash::fnv1a(s.as_bytes())
}

/// A linear layer `y = x W^T (+ b)` that runs in the dtype of its input: under bf16 compute
/// with fp32 master weights the weight is cast on the fly, so gradients still reach the
/// fp32 `Var` (candle's `to_dtype` is differentiable).
#[derive(Debug, Clone)]
pub struct Lin {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Lin {
    pub fn new(p: &Params, inp: usize, out: usize, bias: bool) -> Result<Self> {
        let bound = 1.0 / (inp as f64).sqrt();
        let weight = p.get(&[out, inp], "weight", Init::Uniform(bound))?;
        let bias = if bias { Some(p.get(&[out], "bias", Init::Uniform(bound))?) } else { None };
        Ok(Self { weight, bias })
    }

    /// A zero-initialised layer (adaLN-zero modulation, the final projection).
    pub fn zeros(p: &Params, inp: usize, out: usize, bias: bool) -> Result<Self> {
        let weight = p.get(&[out, inp], "weight", Init::Zeros)?;
        let bias = if bias { Some(p.get(&[out], "bias", Init::Zeros)?) } else { None };
        Ok(Self { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if crate::kernels::applies(x) && crate::kernels::applies(&self.weight) && self.bias.as_ref().is_none_or(crate::kernels::applies) {
            return crate::kernels::linear::linear(x, &self.weight, self.bias.as_ref());
        }
        if x.dtype() == candle_core::DType::BF16 {
            // as the composition: weights and bias rounded to the input's dtype first
            let w = self.weight.to_dtype(x.dtype())?;
            let b = self.bias.as_ref().map(|b| b.to_dtype(x.dtype())).transpose()?;
            let mut ins = vec![x, &w];
            ins.extend(b.as_ref());
            if let Some(f) = crate::kernels::via_f32(&ins)? {
                return crate::kernels::linear::linear(&f[0], &f[1], f.get(2))?.to_dtype(x.dtype());
            }
        }
        self.forward_composed(x)
    }

    /// The candle composition `forward` falls back to (and is tested against).
    pub fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        let dt = x.dtype();
        let w = if self.weight.dtype() == dt { self.weight.clone() } else { self.weight.to_dtype(dt)? };
        let y = match x.dims() {
            [b, n, k] => x.reshape((b * n, *k))?.matmul(&w.t()?)?.reshape((*b, *n, ()))?,
            _ => x.matmul(&w.t()?)?,
        };
        match &self.bias {
            None => Ok(y),
            Some(b) => {
                let b = if b.dtype() == dt { b.clone() } else { b.to_dtype(dt)? };
                y.broadcast_add(&b)
            }
        }
    }
}

//! What the trainer needs from a data-parallel group, as a trait with no networking in it:
//! the worker crate implements it (a TCP ring on CPU, NCCL on CUDA) and hands it to
//! [`crate::run::run_distributed`].
//!
//! The gradient exchange built on it ([`exchange_grads`]) packs every trainable tensor's
//! gradient in the fixed parameter order (sorted by name), plus one presence flag per
//! parameter and the step's loss terms, into one f32 buffer, all-reduces it once and
//! divides by the world size, so every rank applies bit-identical gradients.

use candle_core::{backprop::GradStore, DType, Tensor};
use std::time::Duration;

use crate::optim::Param;
use crate::train::StepStats;

#[derive(Debug, thiserror::Error)]
#[error("{op} on rank {rank}: {message}")]
pub struct CollectiveError {
    pub op: &'static str,
    pub rank: usize,
    pub message: String,
}

/// A data-parallel group of `world()` ranks.
pub trait Collective: Send {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Joins the group, once, after the model is built: `params_hash` (see [`params_hash`])
    /// must be the same on every rank.
    fn connect(&mut self, _params_hash: &str) -> Result<(), CollectiveError> {
        Ok(())
    }
    /// Element-wise sum over the ranks, in place; every rank ends with identical values.
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError>;
    /// `root`'s buffer copied to every rank.
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CollectiveError>;
    /// `root`'s bytes (any length) copied to every rank; the others' `bytes` are replaced.
    fn broadcast_bytes(&mut self, bytes: &mut Vec<u8>, root: usize) -> Result<(), CollectiveError>;
    /// Every rank's bytes, indexed by rank.
    fn all_gather(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError>;
    /// Returns when every rank arrived, or fails after `timeout`.
    fn barrier(&mut self, timeout: Duration) -> Result<(), CollectiveError>;
}

/// The single-rank group: every operation is the identity.
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum(&mut self, _: &mut [f32]) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn broadcast(&mut self, _: &mut [f32], _: usize) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn broadcast_bytes(&mut self, _: &mut Vec<u8>, _: usize) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn all_gather(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError> {
        Ok(vec![bytes.to_vec()])
    }
    fn barrier(&mut self, _: Duration) -> Result<(), CollectiveError> {
        Ok(())
    }
}

/// Hash of the ordered parameter list (name, shape, dtype): ranks compare it at the
/// rendezvous, so a rank built from another config or version cannot join the group.
pub fn params_hash(params: &[Param]) -> String {
    // FNV-1a, 64 bit: stable across processes and builds (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in params {
        let line = format!("{}:{:?}:{:?};", p.name, p.var.dims(), p.var.dtype());
        for b in line.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Averages `grads` over the group (missing gradients count as zero; a parameter without
/// a gradient on every rank stays without one) and the loss terms in `stats`.
pub fn exchange_grads(c: &mut dyn Collective, params: &[Param], grads: &mut GradStore, stats: &mut StepStats) -> Result<(), crate::TrainError> {
    let world = c.world();
    if world == 1 {
        return Ok(());
    }
    let total: usize = params.iter().map(|p| p.var.elem_count()).sum();
    let mut buf = Vec::with_capacity(total + params.len() + 3);
    for p in params {
        match grads.get(p.var.as_tensor()) {
            Some(g) => buf.extend(g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
            None => buf.extend(std::iter::repeat_n(0f32, p.var.elem_count())),
        }
    }
    buf.extend(params.iter().map(|p| if grads.get(p.var.as_tensor()).is_some() { 1f32 } else { 0f32 }));
    buf.extend([stats.loss as f32, stats.mse as f32, stats.repa.unwrap_or(0.0) as f32]);
    c.all_reduce_sum(&mut buf).map_err(crate::TrainError::Collective)?;
    let scale = 1.0 / world as f32;
    let mut off = 0;
    for (i, p) in params.iter().enumerate() {
        let n = p.var.elem_count();
        if buf[total + i] > 0.0 {
            let avg: Vec<f32> = buf[off..off + n].iter().map(|x| x * scale).collect();
            let g = Tensor::from_vec(avg, p.var.dims(), p.var.device())?.to_dtype(p.var.dtype())?;
            grads.insert(p.var.as_tensor(), g);
        }
        off += n;
    }
    let tail = &buf[total + params.len()..];
    stats.loss = (tail[0] * scale) as f64;
    stats.mse = (tail[1] * scale) as f64;
    stats.repa = stats.repa.map(|_| (tail[2] * scale) as f64);
    Ok(())
}

/// Copies rank 0's parameters to every rank (the start of every generation).
pub fn broadcast_params(c: &mut dyn Collective, params: &[Param]) -> Result<(), crate::TrainError> {
    if c.world() == 1 {
        return Ok(());
    }
    let mut buf = Vec::new();
    for p in params {
        buf.extend(p.var.as_tensor().to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
    }
    c.broadcast(&mut buf, 0).map_err(crate::TrainError::Collective)?;
    let mut off = 0;
    for p in params {
        let n = p.var.elem_count();
        let t = Tensor::from_slice(&buf[off..off + n], p.var.dims(), p.var.device())?.to_dtype(p.var.dtype())?;
        p.var.set(&t)?;
        off += n;
    }
    Ok(())
}

//! What the trainer needs from a data-parallel group, as a trait with no networking in it:
//! the worker crate implements it (a TCP ring on CPU, NCCL on CUDA) and hands it to
//! [`crate::run::run_distributed`].
//!
//! The gradient exchange built on it ([`exchange_grads`]) packs the trainable tensors'
//! gradients in the fixed parameter order (sorted by name) into f32 buckets of at most
//! [`BUCKET_ELEMENTS`] on the parameters' device, all-reduces each bucket and divides by the
//! world size, so every rank applies bit-identical gradients. One presence flag per parameter
//! and the step's loss terms travel at the head of the first bucket.

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
    /// Element-wise sum over the ranks of a 1-D f32 tensor, as a new tensor on its device.
    /// The default goes through host memory ([`Self::all_reduce_sum`]); a backend that
    /// works on device memory (NCCL) overrides it and never copies to the host.
    fn all_reduce_sum_tensor(&mut self, t: &Tensor) -> Result<Tensor, CollectiveError> {
        let rank = self.rank();
        let mut buf = host_vec(t, rank, "all_reduce")?;
        self.all_reduce_sum(&mut buf)?;
        Tensor::from_vec(buf, t.dims(), t.device()).map_err(|e| candle_error("all_reduce", rank, e))
    }
    /// `root`'s 1-D f32 tensor on every rank, as a new tensor on the caller's device (the
    /// default goes through host memory, as [`Self::all_reduce_sum_tensor`]).
    fn broadcast_tensor(&mut self, t: &Tensor, root: usize) -> Result<Tensor, CollectiveError> {
        let rank = self.rank();
        let mut buf = host_vec(t, rank, "broadcast")?;
        self.broadcast(&mut buf, root)?;
        Tensor::from_vec(buf, t.dims(), t.device()).map_err(|e| candle_error("broadcast", rank, e))
    }
}

fn candle_error(op: &'static str, rank: usize, e: candle_core::Error) -> CollectiveError {
    CollectiveError { op, rank, message: e.to_string() }
}

/// The tensor operations take 1-D f32 tensors (the buckets).
pub fn check_flat_f32(t: &Tensor, rank: usize, op: &'static str) -> Result<(), CollectiveError> {
    if t.rank() != 1 || t.dtype() != DType::F32 {
        return Err(CollectiveError { op, rank, message: format!("expects a 1-D f32 tensor, got {:?} {:?}", t.dtype(), t.dims()) });
    }
    Ok(())
}

fn host_vec(t: &Tensor, rank: usize, op: &'static str) -> Result<Vec<f32>, CollectiveError> {
    check_flat_f32(t, rank, op)?;
    t.to_vec1::<f32>().map_err(|e| candle_error(op, rank, e))
}

/// Largest gradient bucket, in f32 elements (64 MiB): bounds the extra device memory of the
/// exchange (a 1.2B-parameter model would otherwise need a second 4.7 GB copy of its
/// gradients). A parameter larger than this is a bucket of its own.
pub const BUCKET_ELEMENTS: usize = 16 << 20;

/// Consecutive ranges of `sizes` whose sums stay within `cap` (a larger single size is a
/// range of its own); together they cover every index once, in order.
pub fn buckets(sizes: &[usize], cap: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut filled) = (0, 0);
    for (i, &n) in sizes.iter().enumerate() {
        if i > start && filled + n > cap {
            out.push(start..i);
            (start, filled) = (i, 0);
        }
        filled += n;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
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
    // stable across processes and builds (std's hasher is not)
    let mut h = crate::hash::Fnv1a::default();
    for p in params {
        h.write(format!("{}:{:?}:{:?};", p.name, p.var.dims(), p.var.dtype()).as_bytes());
    }
    format!("{:016x}", h.finish())
}

/// Averages `grads` over the group (missing gradients count as zero; a parameter without
/// a gradient on every rank stays without one) and the loss terms in `stats`, in buckets of
/// at most [`BUCKET_ELEMENTS`].
pub fn exchange_grads(c: &mut dyn Collective, params: &[Param], grads: &mut GradStore, stats: &mut StepStats) -> Result<(), crate::TrainError> {
    exchange_grads_in(c, params, grads, stats, BUCKET_ELEMENTS)
}

/// [`exchange_grads`] with buckets of at most `bucket` elements.
pub fn exchange_grads_in(c: &mut dyn Collective, params: &[Param], grads: &mut GradStore, stats: &mut StepStats, bucket: usize) -> Result<(), crate::TrainError> {
    let world = c.world();
    if world == 1 {
        return Ok(());
    }
    let scale = 1.0 / world as f64;
    // presence flags and loss terms: the head of the first bucket (no round trip of their own)
    let mut meta: Vec<f32> = params.iter().map(|p| if grads.get(p.var.as_tensor()).is_some() { 1f32 } else { 0f32 }).collect();
    meta.extend([stats.loss as f32, stats.mse as f32, stats.repa.unwrap_or(0.0) as f32]);
    let head = meta.len();
    let sizes: Vec<usize> = params.iter().map(|p| p.var.elem_count()).collect();
    let ranges = buckets(&sizes, bucket);
    if ranges.is_empty() {
        c.all_reduce_sum(&mut meta).map_err(crate::TrainError::Collective)?;
    }
    for (b, range) in ranges.into_iter().enumerate() {
        let group = &params[range.clone()];
        let mut parts = Vec::with_capacity(group.len() + 1);
        if b == 0 {
            parts.push(Tensor::from_slice(&meta, head, group[0].var.device())?);
        }
        for p in group {
            parts.push(match grads.get(p.var.as_tensor()) {
                Some(g) => g.to_dtype(DType::F32)?.flatten_all()?,
                None => Tensor::zeros(p.var.elem_count(), DType::F32, p.var.device())?,
            });
        }
        let flat = Tensor::cat(&parts, 0)?;
        drop(parts);
        let mut sum = c.all_reduce_sum_tensor(&flat).map_err(crate::TrainError::Collective)?;
        if b == 0 {
            meta = sum.narrow(0, 0, head)?.to_vec1::<f32>()?;
            sum = sum.narrow(0, head, sum.dim(0)? - head)?;
        }
        let avg = sum.affine(scale, 0.0)?;
        let mut off = 0;
        for (p, present) in group.iter().zip(&meta[range]) {
            let n = p.var.elem_count();
            if *present > 0.0 {
                grads.insert(p.var.as_tensor(), avg.narrow(0, off, n)?.reshape(p.var.dims())?.to_dtype(p.var.dtype())?);
            }
            off += n;
        }
    }
    let tail = &meta[params.len()..];
    let scale = scale as f32;
    stats.loss = (tail[0] * scale) as f64;
    stats.mse = (tail[1] * scale) as f64;
    stats.repa = stats.repa.map(|_| (tail[2] * scale) as f64);
    Ok(())
}

/// Copies rank 0's parameters to every rank (the start of every generation), in buckets.
pub fn broadcast_params(c: &mut dyn Collective, params: &[Param]) -> Result<(), crate::TrainError> {
    broadcast_params_in(c, params, BUCKET_ELEMENTS)
}

/// [`broadcast_params`] with buckets of at most `bucket` elements.
pub fn broadcast_params_in(c: &mut dyn Collective, params: &[Param], bucket: usize) -> Result<(), crate::TrainError> {
    if c.world() == 1 {
        return Ok(());
    }
    let sizes: Vec<usize> = params.iter().map(|p| p.var.elem_count()).collect();
    for range in buckets(&sizes, bucket) {
        let group = &params[range];
        let parts = group.iter().map(|p| p.var.as_tensor().to_dtype(DType::F32)?.flatten_all()).collect::<candle_core::Result<Vec<_>>>()?;
        let flat = c.broadcast_tensor(&Tensor::cat(&parts, 0)?, 0).map_err(crate::TrainError::Collective)?;
        let mut off = 0;
        for p in group {
            let n = p.var.elem_count();
            p.var.set(&flat.narrow(0, off, n)?.reshape(p.var.dims())?.to_dtype(p.var.dtype())?)?;
            off += n;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn buckets_cover_every_parameter_once_in_order() {
        assert_eq!(buckets(&[3, 4, 2, 9, 1, 1], 7), vec![0..2, 2..3, 3..4, 4..6]);
        assert_eq!(buckets(&[10], 4), vec![0..1]);
        assert_eq!(buckets(&[], 4), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(buckets(&[1, 1, 1], 100), vec![0..3]);
    }

    /// Stands for `world` ranks whose rank r holds (r + 1) times this rank's values: the sum
    /// is world (world + 1) / 2 times the buffer. Counts the calls of each kind.
    struct Scaled {
        world: usize,
        host: usize,
        tensor: Vec<usize>,
    }

    impl Collective for Scaled {
        fn rank(&self) -> usize {
            0
        }
        fn world(&self) -> usize {
            self.world
        }
        fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError> {
            self.host += 1;
            let k = (self.world * (self.world + 1) / 2) as f32;
            buf.iter_mut().for_each(|x| *x *= k);
            Ok(())
        }
        fn all_reduce_sum_tensor(&mut self, t: &Tensor) -> Result<Tensor, CollectiveError> {
            self.tensor.push(t.elem_count());
            let rank = self.rank();
            let mut buf = host_vec(t, rank, "all_reduce")?;
            let k = (self.world * (self.world + 1) / 2) as f32;
            buf.iter_mut().for_each(|x| *x *= k);
            Tensor::from_vec(buf, t.dims(), t.device()).map_err(|e| candle_error("all_reduce", rank, e))
        }
        fn broadcast(&mut self, _: &mut [f32], _: usize) -> Result<(), CollectiveError> {
            unreachable!()
        }
        fn broadcast_bytes(&mut self, _: &mut Vec<u8>, _: usize) -> Result<(), CollectiveError> {
            unreachable!()
        }
        fn all_gather(&mut self, _: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError> {
            unreachable!()
        }
        fn barrier(&mut self, _: Duration) -> Result<(), CollectiveError> {
            Ok(())
        }
    }

    /// Buckets of any size give the same averaged gradients, in the parameters' shapes and
    /// places, and a parameter without a gradient stays without one.
    #[test]
    fn bucketed_exchange_places_every_gradient() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let shapes: [&[usize]; 5] = [&[3, 4], &[5], &[2, 2, 2], &[7], &[1]];
        let params: Vec<Param> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| Ok(Param { name: format!("p{i}"), var: Var::from_tensor(&Tensor::zeros(*s, DType::F32, &dev)?)? }))
            .collect::<candle_core::Result<_>>()?;
        // d loss / d p_i = a distinct ramp per parameter; p3 takes no part in the loss
        let mut loss = Tensor::zeros((), DType::F32, &dev)?;
        let mut want = Vec::new();
        for (i, p) in params.iter().enumerate() {
            let n = p.var.elem_count();
            let ramp = Tensor::arange(0f32, n as f32, &dev)?.affine(1.0, 100.0 * i as f64)?.reshape(p.var.dims())?;
            if i == 3 {
                want.push(None);
                continue;
            }
            loss = (loss + (p.var.as_tensor() * &ramp)?.sum_all()?)?;
            want.push(Some((ramp * 1.5)?.flatten_all()?.to_vec1::<f32>()?));
        }
        for cap in [1, 5, 13, 1000] {
            let mut grads = loss.backward()?;
            let mut stats = StepStats { step: 1, loss: 2.0, mse: 1.0, repa: Some(0.5), grad_norm: 0.0, lr: 0.0 };
            let mut c = Scaled { world: 2, host: 0, tensor: Vec::new() };
            exchange_grads_in(&mut c, &params, &mut grads, &mut stats, cap).unwrap();
            let head = params.len() + 3; // presence flags and loss terms, in the first bucket
            assert_eq!(c.host, 0, "no round trip of their own");
            assert_eq!(c.tensor.iter().sum::<usize>(), head + 12 + 5 + 8 + 7 + 1, "cap {cap}: every element once");
            assert!(c.tensor[0] <= head + cap.max(12) && c.tensor[1..].iter().all(|&n| n <= cap.max(12)), "cap {cap}: {:?}", c.tensor);
            for (p, w) in params.iter().zip(&want) {
                let got = grads.get(p.var.as_tensor());
                match w {
                    None => assert!(got.is_none(), "{} has no gradient on any rank", p.name),
                    Some(w) => {
                        let g = got.expect("averaged gradient");
                        assert_eq!(g.dims(), p.var.dims());
                        assert_eq!(&g.flatten_all()?.to_vec1::<f32>()?, w, "cap {cap}, {}", p.name);
                    }
                }
            }
            assert_eq!((stats.loss, stats.mse, stats.repa), (3.0, 1.5, Some(0.75)));
        }
        Ok(())
    }
}

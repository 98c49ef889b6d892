//! The NCCL gradient exchange (`--features nccl`): one rank per GPU, one communicator per
//! rank, owned by one thread ([`Owned`]).
//!
//! - Rendezvous: rank 0 makes the unique id and publishes it under (job, generation); the
//!   others fetch it with the rendezvous deadline ([`super::rendezvous::exchange`]). Every
//!   generation is a new id, so a restarted group never meets a stale rank.
//! - Gradients stay on the GPU: [`Collective::all_reduce_sum_tensor`] and
//!   [`Collective::broadcast_tensor`] run NCCL on the tensors' device memory, on candle's
//!   stream, so they are ordered after the kernels that made the bucket. The host-slice
//!   operations (loss terms, evaluation statistics, barriers) copy through the device.
//! - Failures: every operation waits for its own completion by polling an event and
//!   `ncclCommGetAsyncError`; an error or the collective deadline aborts the communicator
//!   (`ncclCommAbort` ends its kernels) and breaks the group, so the rank fails its
//!   generation instead of hanging on a dead peer.
//! - Creation (`ncclCommInitRank`, blocking) cannot be aborted: a peer that dies between the
//!   rendezvous and its init leaves the others waiting until the rendezvous deadline plus a
//!   5 s grace; then the rank fails (the stuck thread ends with its process).
//! - NCCL runs on candle's compute stream, so it is ordered after the kernels that made a
//!   bucket without events; the price is that a hung collective holds that stream until the
//!   abort.
//!
//! Nothing here assumes one GPU per machine or a world of one: the rank's device is the
//! `cuda:N` the worker gave it.

use std::ffi::{c_void, CStr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ablate_trainer::collective::{Collective, CollectiveError};
use candle_core::cuda_backend::cudarc;
use candle_core::{DType, Device, Storage, Tensor};
use cudarc::driver::{CudaStream, DevicePtr, DeviceRepr, ValidAsZeroBits};
use cudarc::nccl::sys;

use super::owned::{wait_until, Abort, Owned};
use super::rendezvous::{exchange, nccl_entry, nccl_id};

/// How long a caller waits past an operation's deadline for the owner thread to answer.
const GRACE: Duration = Duration::from_secs(5);
/// `sizeof(ncclUniqueId)`.
const ID_BYTES: usize = 128;

pub struct NcclGroup {
    pub coordinator: String,
    pub credentials: super::rendezvous::Credentials,
    pub job: String,
    pub generation: u64,
    pub rank: usize,
    pub world: usize,
    pub rendezvous_timeout: Duration,
    pub collective_timeout: Duration,
    device: Device,
    stream: Arc<CudaStream>,
    owned: Option<Owned<Comm>>,
}

impl NcclGroup {
    /// `device` must be the rank's CUDA device (the one the trainer runs on).
    #[allow(clippy::too_many_arguments)]
    pub fn new(coordinator: String, credentials: super::rendezvous::Credentials, job: String, generation: u64, rank: usize, world: usize, device: &Device, rendezvous_timeout: Duration, collective_timeout: Duration) -> Result<Self, CollectiveError> {
        let err = |message: String| CollectiveError { op: "init", rank, message };
        let stream = device.as_cuda_device().map_err(|_| err(format!("NCCL needs a CUDA device, not {device:?}")))?.cuda_stream();
        // SAFETY: only tries to dlopen libnccl.
        if !unsafe { sys::is_culib_present() } {
            return Err(err("libnccl cannot be loaded: put the NCCL library on LD_LIBRARY_PATH (deploy/cuda/device-env.sh), or run the ring with ABLATE_COLLECTIVE=ring".into()));
        }
        Ok(Self { coordinator, credentials, job, generation, rank, world, rendezvous_timeout, collective_timeout, device: device.clone(), stream, owned: None })
    }

    fn owned(&mut self, op: &'static str) -> Result<&mut Owned<Comm>, CollectiveError> {
        let rank = self.rank;
        self.owned.as_mut().ok_or(CollectiveError { op, rank, message: "connect() must run before any collective".into() })
    }

    /// Runs a host-buffer operation on the owner thread.
    fn host<T: NcclType>(&mut self, op: &'static str, kind: Kind, data: Vec<T>, timeout: Duration) -> Result<Vec<T>, CollectiveError> {
        self.owned(op)?.call(op, timeout, move |c, deadline| c.host(kind, data, deadline))
    }

    /// Runs `kind` from tensor `t` (1-D f32) into a new tensor of `out_len` elements.
    fn device_op(&mut self, op: &'static str, kind: Kind, t: &Tensor, out_len: usize) -> Result<Tensor, CollectiveError> {
        let rank = self.rank;
        let err = |message: String| CollectiveError { op, rank, message };
        ablate_trainer::collective::check_flat_f32(t, rank, op)?;
        if !t.device().same_device(&self.device) {
            return Err(err(format!("the tensor is on {:?}, the communicator on {:?}", t.device(), self.device)));
        }
        let x = t.contiguous().map_err(|e| err(e.to_string()))?;
        let out = Tensor::zeros(out_len, DType::F32, &self.device).map_err(|e| err(e.to_string()))?;
        let n = x.elem_count();
        if n == 0 {
            return Ok(out);
        }
        let (send, recv) = {
            let (xs, xl) = x.storage_and_layout();
            let (os, ol) = out.storage_and_layout();
            (device_ptr(&xs, xl.start_offset(), &self.stream).map_err(err)?, device_ptr(&os, ol.start_offset(), &self.stream).map_err(err)?)
        };
        let timeout = self.collective_timeout;
        // `x` and `out` live until the call has returned, and the call returns only once the
        // operation completed on the GPU or the communicator was aborted. On an error the
        // owner thread may still be inside NCCL (the caller gave up waiting): the buffers are
        // leaked rather than freed under it (the rank fails its generation next).
        match self.owned(op)?.call(op, timeout, move |c, deadline| c.run(kind, send, recv, n, sys::ncclDataType_t::ncclFloat32, deadline)) {
            Ok(()) => Ok(out),
            Err(e) => {
                std::mem::forget(x);
                std::mem::forget(out);
                Err(e)
            }
        }
    }
}

impl NcclGroup {
    /// The group's first collective, on device memory: the one-hot vectors of the ranks sum
    /// to all ones, or the communicator is unusable (and the error says so before training).
    fn probe(&mut self) -> Result<(), CollectiveError> {
        let (rank, world) = (self.rank, self.world);
        let err = |message: String| CollectiveError { op: "probe", rank, message };
        let one_hot: Vec<f32> = (0..world).map(|r| if r == rank { 1.0 } else { 0.0 }).collect();
        let t = Tensor::from_vec(one_hot, world, &self.device).map_err(|e| err(e.to_string()))?;
        let sum = self.all_reduce_sum_tensor(&t)?.to_vec1::<f32>().map_err(|e| err(e.to_string()))?;
        if sum.iter().any(|&x| x != 1.0) {
            return Err(err(format!("the first all-reduce of the ranks' one-hot vectors gave {sum:?}, not all ones")));
        }
        Ok(())
    }
}

/// The address of a CUDA f32 tensor's element `offset`.
fn device_ptr(storage: &Storage, offset: usize, stream: &CudaStream) -> Result<u64, String> {
    let Storage::Cuda(s) = storage else { return Err("the tensor is not on a CUDA device".into()) };
    let slice = s.as_cuda_slice::<f32>().map_err(|e| e.to_string())?;
    let (ptr, _read) = slice.device_ptr(stream);
    Ok(ptr + (offset * std::mem::size_of::<f32>()) as u64)
}

impl Collective for NcclGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }

    fn connect(&mut self, params_hash: &str) -> Result<(), CollectiveError> {
        let rank = self.rank;
        let err = |message: String| CollectiveError { op: "rendezvous", rank, message };
        let id = if rank == 0 {
            let id = cudarc::nccl::safe::Id::new().map_err(|e| err(format!("ncclGetUniqueId: {e:?}")))?;
            Some(id.internal().iter().map(|&c| c as u8).collect::<Vec<u8>>())
        } else {
            None
        };
        let table = exchange(&self.coordinator, self.credentials.token.as_deref(), &self.job, self.generation, rank, nccl_entry(id.as_deref()), params_hash, self.rendezvous_timeout).map_err(err)?;
        if table.len() != self.world {
            return Err(err(format!("coordinator returned {} entries for a world of {}", table.len(), self.world)));
        }
        let id = nccl_id(&table, ID_BYTES).map_err(err)?;
        let (stream, world) = (self.stream.clone(), self.world);
        self.owned = Some(Owned::spawn(&format!("nccl-rank-{rank}"), rank, self.rendezvous_timeout, GRACE, move |_| Comm::init(stream, rank, world, &id))?);
        self.probe()?;
        let version = cudarc::nccl::result::get_nccl_version().map(|v| format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100)).unwrap_or_else(|e| format!("? ({e:?})"));
        eprintln!("nccl: rank {rank} of {world} ready on {:?} (libnccl {version}, job {} generation {}); the first device all-reduce checked", self.device, self.job, self.generation);
        Ok(())
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        let out = self.host("all_reduce", Kind::Sum, buf.to_vec(), self.collective_timeout)?;
        buf.copy_from_slice(&out);
        Ok(())
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        let out = self.host("broadcast", Kind::Broadcast(root), buf.to_vec(), self.collective_timeout)?;
        buf.copy_from_slice(&out);
        Ok(())
    }

    fn broadcast_bytes(&mut self, bytes: &mut Vec<u8>, root: usize) -> Result<(), CollectiveError> {
        let len = self.host("broadcast_bytes", Kind::Broadcast(root), vec![bytes.len() as u64], self.collective_timeout)?[0] as usize;
        bytes.resize(len, 0);
        *bytes = self.host("broadcast_bytes", Kind::Broadcast(root), std::mem::take(bytes), self.collective_timeout)?;
        Ok(())
    }

    fn all_gather(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError> {
        let lens = self.host("all_gather", Kind::Gather, vec![bytes.len() as u64], self.collective_timeout)?;
        let max = lens.iter().copied().max().unwrap_or(0) as usize;
        if max == 0 {
            return Ok(vec![Vec::new(); self.world]);
        }
        let mut padded = bytes.to_vec();
        padded.resize(max, 0);
        let all = self.host("all_gather", Kind::Gather, padded, self.collective_timeout)?;
        Ok(all.chunks(max).zip(&lens).map(|(c, &n)| c[..n as usize].to_vec()).collect())
    }

    fn barrier(&mut self, timeout: Duration) -> Result<(), CollectiveError> {
        self.host("barrier", Kind::Sum, vec![1f32], timeout).map(|_| ())
    }

    fn all_reduce_sum_tensor(&mut self, t: &Tensor) -> Result<Tensor, CollectiveError> {
        self.device_op("all_reduce", Kind::Sum, t, t.elem_count())
    }

    fn broadcast_tensor(&mut self, t: &Tensor, root: usize) -> Result<Tensor, CollectiveError> {
        self.device_op("broadcast", Kind::Broadcast(root), t, t.elem_count())
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Sum,
    Broadcast(usize),
    /// Every rank's `count` elements, concatenated in rank order.
    Gather,
}

trait NcclType: DeviceRepr + ValidAsZeroBits + Copy + Send + 'static {
    const TYPE: sys::ncclDataType_t;
}
impl NcclType for f32 {
    const TYPE: sys::ncclDataType_t = sys::ncclDataType_t::ncclFloat32;
}
impl NcclType for u64 {
    const TYPE: sys::ncclDataType_t = sys::ncclDataType_t::ncclUint64;
}
impl NcclType for u8 {
    const TYPE: sys::ncclDataType_t = sys::ncclDataType_t::ncclUint8;
}

/// The communicator, on its owner thread only.
struct Comm {
    raw: sys::ncclComm_t,
    stream: Arc<CudaStream>,
    world: usize,
    aborted: std::cell::Cell<bool>,
}

impl Comm {
    fn init(stream: Arc<CudaStream>, rank: usize, world: usize, id: &[u8]) -> Result<Self, String> {
        // NCCL takes the device of the thread's current context
        stream.context().bind_to_thread().map_err(|e| format!("bind the CUDA context: {e:?}"))?;
        let mut internal = [0 as std::ffi::c_char; ID_BYTES];
        for (d, s) in internal.iter_mut().zip(id) {
            *d = *s as std::ffi::c_char;
        }
        let mut raw = std::ptr::null_mut();
        // SAFETY: `raw` receives the communicator; the id is the 128 bytes rank 0 made.
        let rc = unsafe { sys::ncclCommInitRank(&mut raw, world as i32, sys::ncclUniqueId { internal }, rank as i32) };
        check(rc, "ncclCommInitRank", None)?;
        Ok(Self { raw, stream, world, aborted: std::cell::Cell::new(false) })
    }

    /// Fails with the communicator's asynchronous error, if any (a peer's death shows here).
    fn async_error(&self) -> Result<(), String> {
        let mut e = sys::ncclResult_t::ncclSuccess;
        // SAFETY: `raw` is a live communicator; writes one enum.
        check(unsafe { sys::ncclCommGetAsyncError(self.raw, &mut e) }, "ncclCommGetAsyncError", Some(self.raw))?;
        match e {
            sys::ncclResult_t::ncclSuccess | sys::ncclResult_t::ncclInProgress => Ok(()),
            e => check(e, "asynchronous NCCL error", Some(self.raw)),
        }
    }

    /// Enqueues one collective on the stream and waits for it, polling for errors.
    fn run(&self, kind: Kind, send: u64, recv: u64, count: usize, dtype: sys::ncclDataType_t, deadline: Instant) -> Result<(), String> {
        let (s, r, st) = (send as *const c_void, recv as *mut c_void, self.stream.cu_stream() as sys::cudaStream_t);
        // SAFETY: `send` and `recv` are device buffers of `count` (for a gather: world x
        // count) elements of `dtype` that the caller keeps alive until this returns.
        let (rc, name) = unsafe {
            match kind {
                Kind::Sum => (sys::ncclAllReduce(s, r, count, dtype, sys::ncclRedOp_t::ncclSum, self.raw, st), "ncclAllReduce"),
                Kind::Broadcast(root) => (sys::ncclBroadcast(s, r, count, dtype, root as i32, self.raw, st), "ncclBroadcast"),
                Kind::Gather => (sys::ncclAllGather(s, r, count, dtype, self.raw, st), "ncclAllGather"),
            }
        };
        let waited = check(rc, name, Some(self.raw)).and_then(|_| {
            let done = self.stream.record_event(None).map_err(|e| format!("record an event after {name}: {e:?}"))?;
            wait_until(deadline, name, || {
                self.async_error()?;
                done.try_is_complete().map_err(|e| format!("{name}: CUDA error {e:?}"))
            })
        });
        if waited.is_err() {
            // at once, before the caller's buffers are freed (a free may wait for the stream,
            // which the hung kernel holds until the abort ends it)
            self.abort_once();
        }
        waited
    }

    fn abort_once(&self) {
        if !self.aborted.replace(true) {
            // SAFETY: `raw` is live and not used for collectives after this.
            unsafe { sys::ncclCommAbort(self.raw) };
        }
    }

    /// A host buffer through the device.
    fn host<T: NcclType>(&self, kind: Kind, data: Vec<T>, deadline: Instant) -> Result<Vec<T>, String> {
        if data.is_empty() {
            return Ok(data);
        }
        let dev = |e: cudarc::driver::DriverError| format!("CUDA copy: {e:?}");
        let src = self.stream.clone_htod(&data).map_err(dev)?;
        let out = match kind {
            Kind::Gather => Some(self.stream.alloc_zeros::<T>(data.len() * self.world).map_err(dev)?),
            _ => None,
        };
        let send = src.device_ptr(&self.stream).0;
        let recv = out.as_ref().map_or(send, |o| o.device_ptr(&self.stream).0);
        self.run(kind, send, recv, data.len(), T::TYPE, deadline)?;
        self.stream.clone_dtoh(out.as_ref().unwrap_or(&src)).map_err(dev)
    }
}

impl Abort for Comm {
    fn abort(&mut self) {
        self.abort_once();
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        if !self.aborted.get() {
            // SAFETY: every operation completed (each waits for its own), so the
            // communicator is idle; `raw` is not used after this.
            unsafe { sys::ncclCommDestroy(self.raw) };
        }
    }
}

fn check(rc: sys::ncclResult_t, what: &str, comm: Option<sys::ncclComm_t>) -> Result<(), String> {
    if rc == sys::ncclResult_t::ncclSuccess {
        return Ok(());
    }
    // SAFETY: NCCL returns static (or per-communicator) NUL-terminated strings.
    let text = |p: *const std::ffi::c_char| if p.is_null() { String::new() } else { unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned() };
    let mut msg = format!("{what}: {rc:?} ({})", text(unsafe { sys::ncclGetErrorString(rc) }));
    if let Some(c) = comm {
        let last = text(unsafe { sys::ncclGetLastError(c) });
        if !last.is_empty() {
            msg.push_str(&format!(": {last}"));
        }
    }
    Err(msg)
}

//! The CPU backend of [`Collective`]: a ring of TCP connections (rank r sends to r+1 and
//! receives from r-1), so it works across hosts with nothing but TCP.
//!
//! - all-reduce: reduce-scatter then all-gather over W chunks (each rank sends and receives
//!   2(W-1)/W of the buffer, the bandwidth-optimal schedule); every rank ends with the
//!   same bits because each chunk is summed once and then copied;
//! - broadcast: pipelined along the ring in 1 MiB segments;
//! - every message is length-prefixed and checked, every socket has read and write
//!   deadlines: a dead peer gives its neighbours an error at once (connection reset or
//!   closed), a stuck one within the deadline. Nothing waits forever;
//! - joining is a mutual HMAC-SHA256 challenge under the group's secret (the coordinator
//!   sends it only to the placed workers): the dialer sends its rank and a fresh nonce, the
//!   listener answers with its own nonce and a MAC over both, the dialer checks it and
//!   answers with its MAC. A connection that cannot prove the secret is dropped before any
//!   gradient moves, and a dialer refuses a listener that cannot.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use ablate_proto::auth::{ct_eq, hmac_sha256, random_bytes};
use ablate_trainer::collective::{Collective, CollectiveError};

const MAGIC: u32 = 0xab1a_7e02;
/// How long a listener waits for one connecting stranger's greeting before dropping it.
const GREETING_WAIT: Duration = Duration::from_secs(5);

/// The listener's MAC: proves the secret to the dialer of rank `from`.
fn accept_mac(key: &[u8], from: u32, dial_nonce: &[u8], accept_nonce: &[u8]) -> [u8; 32] {
    hmac_sha256(key, &[b"ablate ring accept\0", &from.to_le_bytes(), dial_nonce, accept_nonce])
}

/// The dialer's MAC, answering the listener's nonce.
fn dial_mac(key: &[u8], from: u32, dial_nonce: &[u8], accept_nonce: &[u8]) -> [u8; 32] {
    hmac_sha256(key, &[b"ablate ring dial\0", &from.to_le_bytes(), accept_nonce, dial_nonce])
}

/// The dialer's side of the handshake.
fn greet<S: Read + Write>(s: &mut S, key: &[u8], rank: u32) -> Result<(), String> {
    let nonce: [u8; 16] = random_bytes();
    let mut hello = Vec::with_capacity(24);
    hello.extend(MAGIC.to_le_bytes());
    hello.extend(rank.to_le_bytes());
    hello.extend(nonce);
    s.write_all(&hello).map_err(|e| format!("greeting: {e}"))?;
    let mut answer = [0u8; 48];
    s.read_exact(&mut answer).map_err(|e| format!("no answer to the greeting (a listener of another group, or not a rank): {e}"))?;
    let (their_nonce, mac) = answer.split_at(16);
    if !ct_eq(mac, &accept_mac(key, rank, &nonce, their_nonce)) {
        return Err("it could not prove the group's secret: it is not a rank of this job's generation".into());
    }
    s.write_all(&dial_mac(key, rank, &nonce, their_nonce)).map_err(|e| format!("answering the challenge: {e}"))
}

/// The listener's side: Ok when the dialer is rank `want` of this group.
fn challenge<S: Read + Write>(s: &mut S, key: &[u8], want: usize) -> Result<(), String> {
    let mut hello = [0u8; 24];
    s.read_exact(&mut hello).map_err(|e| e.to_string())?;
    let magic = u32::from_le_bytes(hello[0..4].try_into().expect("4 bytes"));
    let from = u32::from_le_bytes(hello[4..8].try_into().expect("4 bytes"));
    if magic != MAGIC || from as usize != want {
        return Err(format!("a greeting from rank {from} with magic {magic:#x}"));
    }
    let nonce: [u8; 16] = random_bytes();
    let mut answer = Vec::with_capacity(48);
    answer.extend(nonce);
    answer.extend(accept_mac(key, from, &hello[8..24], &nonce));
    s.write_all(&answer).map_err(|e| e.to_string())?;
    let mut mac = [0u8; 32];
    s.read_exact(&mut mac).map_err(|e| e.to_string())?;
    if !ct_eq(&mac, &dial_mac(key, from, &hello[8..24], &nonce)) {
        return Err("a dialer that does not know the group's secret".into());
    }
    Ok(())
}
const SEGMENT: usize = 1 << 20;
/// The longest message a peer may announce (a gathered evaluation or a parameter broadcast
/// fits many times over); a longer one is not a ring peer's.
const MAX_FRAME: u64 = 4 << 30;

pub struct Ring {
    rank: usize,
    world: usize,
    /// To rank + 1 and from rank - 1 (None on a group of one).
    next: Option<TcpStream>,
    prev: Option<TcpStream>,
    timeout: Duration,
    /// Receive buffer of one segment, reused.
    scratch: Vec<f32>,
}

impl Ring {
    /// Connects rank `rank` of `addrs.len()` ranks: dials `addrs[rank + 1]` and accepts the
    /// connection of rank - 1 on `listener` (bound by this rank before it published its
    /// address). `key` (the group's secret) admits the group's ranks and nobody else.
    pub fn connect(rank: usize, listener: TcpListener, addrs: &[String], key: &[u8], timeout: Duration) -> Result<Self, CollectiveError> {
        let world = addrs.len();
        let err = |message: String| CollectiveError { op: "ring connect", rank, message };
        if rank >= world {
            return Err(err(format!("rank {rank} is outside a group of {world}")));
        }
        if world == 1 {
            return Ok(Self { rank, world, next: None, prev: None, timeout, scratch: Vec::new() });
        }
        let deadline = Instant::now() + timeout;
        let next_rank = (rank + 1) % world;
        let prev_rank = (rank + world - 1) % world;
        let target: SocketAddr = addrs[next_rank].parse().map_err(|e| err(format!("rank {next_rank}'s address {:?}: {e}", addrs[next_rank])))?;
        let dial_key = key.to_vec();
        let dial = std::thread::spawn(move || -> Result<TcpStream, String> {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match TcpStream::connect_timeout(&target, left.max(Duration::from_millis(10))) {
                    Ok(mut s) => {
                        s.set_read_timeout(Some(left.max(Duration::from_millis(10)))).map_err(|e| e.to_string())?;
                        greet(&mut s, &dial_key, rank as u32).map_err(|e| format!("rank {next_rank} at {target}: {e}"))?;
                        return Ok(s);
                    }
                    Err(e) if Instant::now() >= deadline => return Err(format!("could not reach rank {next_rank} at {target} within {timeout:?}: {e}")),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        listener.set_nonblocking(true).map_err(|e| err(format!("listener: {e}")))?;
        let prev = loop {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).map_err(|e| err(e.to_string()))?;
                    let wait = deadline.saturating_duration_since(Instant::now()).min(GREETING_WAIT).max(Duration::from_millis(10));
                    s.set_read_timeout(Some(wait)).map_err(|e| err(e.to_string()))?;
                    s.set_write_timeout(Some(wait)).map_err(|e| err(e.to_string()))?;
                    // a dialer from another generation, a stranger, a stray connection: drop it, keep waiting
                    match challenge(&mut s, key, prev_rank) {
                        Ok(()) => break s,
                        Err(why) => {
                            crate::collective::refused_join();
                            tracing::warn!(rank, "ring listener dropped a connection: {why}");
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(err(format!("rank {prev_rank} did not connect within {timeout:?}")));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(err(format!("accept: {e}"))),
            }
        };
        let next = dial.join().map_err(|_| err("dialer thread panicked".into()))?.map_err(err)?;
        let mut ring = Self { rank, world, next: Some(next), prev: Some(prev), timeout, scratch: Vec::new() };
        ring.set_timeout(timeout).map_err(|e| err(e.to_string()))?;
        for s in [&ring.next, &ring.prev].into_iter().flatten() {
            s.set_nodelay(true).map_err(|e| err(e.to_string()))?;
        }
        Ok(ring)
    }

    fn set_timeout(&mut self, t: Duration) -> std::io::Result<()> {
        for s in [&self.next, &self.prev].into_iter().flatten() {
            s.set_read_timeout(Some(t))?;
            s.set_write_timeout(Some(t))?;
        }
        Ok(())
    }

    fn err(&self, op: &'static str, e: std::io::Error, dir: Dir) -> CollectiveError {
        let peer = match dir {
            Dir::Next => (self.rank + 1) % self.world,
            Dir::Prev => (self.rank + self.world - 1) % self.world,
        };
        let message = match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => format!("rank {peer} did not answer within {:?} (stuck or overloaded)", self.timeout),
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted => {
                format!("rank {peer} closed the connection (it died or left the group): {e}")
            }
            _ => format!("with rank {peer}: {e}"),
        };
        CollectiveError { op, rank: self.rank, message }
    }

    /// Sends `out` to the next rank while receiving a message from the previous one.
    fn exchange(&mut self, op: &'static str, out: &[u8]) -> Result<Vec<u8>, CollectiveError> {
        let next = self.next.as_mut().expect("world > 1");
        let prev = self.prev.as_mut().expect("world > 1");
        let (sent, got) = std::thread::scope(|sc| {
            let h = sc.spawn(|| write_msg(next, out));
            let got = read_msg(prev);
            (h.join().expect("sender thread"), got)
        });
        sent.map_err(|e| self.err(op, e, Dir::Next))?;
        got.map_err(|e| self.err(op, e, Dir::Prev))
    }
}

#[derive(Clone, Copy)]
enum Dir {
    Next,
    Prev,
}

fn write_msg(s: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    s.write_all(&(bytes.len() as u64).to_le_bytes())?;
    s.write_all(bytes)
}

/// The length a message header announces, refused past [`MAX_FRAME`].
fn frame_len(header: [u8; 8]) -> std::io::Result<usize> {
    let n = u64::from_le_bytes(header);
    if n > MAX_FRAME {
        return Err(std::io::Error::new(ErrorKind::InvalidData, format!("message of {n} bytes announced, past the ring's limit of {MAX_FRAME}: not a ring peer")));
    }
    Ok(n as usize)
}

/// One length-prefixed message. The buffer grows with the bytes that arrive (at most 64 MiB
/// reserved up front), so an announced length costs memory only once its bytes come.
fn read_msg<R: Read>(s: &mut R) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 8];
    s.read_exact(&mut len)?;
    let n = frame_len(len)?;
    let mut buf = Vec::with_capacity(n.min(64 << 20));
    s.take(n as u64).read_to_end(&mut buf)?;
    if buf.len() != n {
        return Err(std::io::Error::new(ErrorKind::UnexpectedEof, format!("message cut after {} of {n} bytes", buf.len())));
    }
    Ok(buf)
}

// Values travel in the machine's byte order; every supported target is little-endian.
#[cfg(target_endian = "big")]
compile_error!("the TCP ring sends f32 in little-endian byte order");

fn floats(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
}

/// Disjoint views of two chunks of `buf`: the one to send and the one to receive into.
fn split(buf: &mut [f32], send: (usize, usize), recv: (usize, usize)) -> (&[f32], &mut [f32]) {
    // chunks are adjacent or apart, never overlapping; either may be empty
    if send.1 <= recv.0 {
        let (lo, hi) = buf.split_at_mut(recv.0);
        (&lo[send.0..send.1], &mut hi[..recv.1 - recv.0])
    } else {
        let (lo, hi) = buf.split_at_mut(recv.1);
        (&hi[send.0 - recv.1..send.1 - recv.1], &mut lo[recv.0..recv.1])
    }
}

#[derive(Clone, Copy)]
enum Combine {
    Add,
    Copy,
}

impl Ring {
    /// Sends `out` to the next rank while receiving `into.len()` values from the previous
    /// one, combined into `into` segment by segment as they arrive (no copies of the buffer;
    /// reduction overlaps the transfer).
    fn exchange_f32(&mut self, op: &'static str, out: &[f32], into: &mut [f32], how: Combine) -> Result<(), CollectiveError> {
        let rank = self.rank;
        let next = self.next.as_mut().expect("world > 1");
        let prev = self.prev.as_mut().expect("world > 1");
        let scratch = &mut self.scratch;
        let (sent, got) = std::thread::scope(|sc| {
            let h = sc.spawn(|| write_msg(next, bytemuck::cast_slice(out)));
            let got = (|| -> std::io::Result<Result<(), String>> {
                let mut len = [0u8; 8];
                prev.read_exact(&mut len)?;
                let n = u64::from_le_bytes(len) as usize;
                if n != into.len() * 4 {
                    return Ok(Err(format!("peer sent {} values, expected {}: the ranks disagree on the buffer", n / 4, into.len())));
                }
                match how {
                    Combine::Copy => prev.read_exact(bytemuck::cast_slice_mut(into))?,
                    Combine::Add => {
                        scratch.resize(SEGMENT / 4, 0.0);
                        for seg in into.chunks_mut(SEGMENT / 4) {
                            let tmp = &mut scratch[..seg.len()];
                            prev.read_exact(bytemuck::cast_slice_mut(tmp))?;
                            for (x, y) in seg.iter_mut().zip(tmp.iter()) {
                                *x += *y;
                            }
                        }
                    }
                }
                Ok(Ok(()))
            })();
            (h.join().expect("sender thread"), got)
        });
        sent.map_err(|e| self.err(op, e, Dir::Next))?;
        got.map_err(|e| self.err(op, e, Dir::Prev))?.map_err(|message| CollectiveError { op, rank, message })
    }
}

impl Collective for Ring {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        let w = self.world;
        if w == 1 {
            return Ok(());
        }
        let n = buf.len();
        let bound = |i: usize| (i * n / w, (i + 1) * n / w);
        // reduce-scatter: after W-1 steps rank r holds the full sum of chunk r+1
        for s in 0..w - 1 {
            let send = bound((self.rank + w - s) % w);
            let recv = bound((self.rank + 2 * w - s - 1) % w);
            let (out, into) = split(buf, send, recv);
            self.exchange_f32("all-reduce", out, into, Combine::Add)?;
        }
        // all-gather the summed chunks
        for s in 0..w - 1 {
            let send = bound((self.rank + 1 + w - s) % w);
            let recv = bound((self.rank + w - s) % w);
            let (out, into) = split(buf, send, recv);
            self.exchange_f32("all-reduce", out, into, Combine::Copy)?;
        }
        Ok(())
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        let mut bytes = if self.rank == root { bytemuck::cast_slice(buf).to_vec() } else { Vec::new() };
        self.broadcast_bytes(&mut bytes, root)?;
        if bytes.len() != buf.len() * 4 {
            return Err(CollectiveError { op: "broadcast", rank: self.rank, message: format!("rank {root} sent {} values, expected {}", bytes.len() / 4, buf.len()) });
        }
        for (x, y) in buf.iter_mut().zip(floats(&bytes)) {
            *x = y;
        }
        Ok(())
    }

    fn broadcast_bytes(&mut self, bytes: &mut Vec<u8>, root: usize) -> Result<(), CollectiveError> {
        let w = self.world;
        if w == 1 {
            return Ok(());
        }
        let last = (root + w - 1) % w;
        if self.rank == root {
            let next = self.next.as_mut().expect("world > 1");
            let r = next.write_all(&(bytes.len() as u64).to_le_bytes()).and_then(|_| bytes.chunks(SEGMENT).try_for_each(|c| next.write_all(c)));
            return r.map_err(|e| self.err("broadcast", e, Dir::Next));
        }
        let forward = self.rank != last;
        let mut len = [0u8; 8];
        self.prev.as_mut().expect("world > 1").read_exact(&mut len).map_err(|e| self.err("broadcast", e, Dir::Prev))?;
        if forward {
            self.next.as_mut().expect("world > 1").write_all(&len).map_err(|e| self.err("broadcast", e, Dir::Next))?;
        }
        let n = frame_len(len).map_err(|e| self.err("broadcast", e, Dir::Prev))?;
        bytes.clear();
        bytes.resize(n, 0);
        for seg in bytes.chunks_mut(SEGMENT) {
            self.prev.as_mut().expect("world > 1").read_exact(seg).map_err(|e| self.err("broadcast", e, Dir::Prev))?;
            if forward {
                self.next.as_mut().expect("world > 1").write_all(seg).map_err(|e| self.err("broadcast", e, Dir::Next))?;
            }
        }
        Ok(())
    }

    fn all_gather(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError> {
        let w = self.world;
        let mut out = vec![Vec::new(); w];
        out[self.rank] = bytes.to_vec();
        for s in 0..w.saturating_sub(1) {
            let send = (self.rank + w - s) % w;
            let msg = out[send].clone();
            let got = self.exchange("all-gather", &msg)?;
            out[(self.rank + w - s - 1) % w] = got;
        }
        Ok(out)
    }

    fn barrier(&mut self, timeout: Duration) -> Result<(), CollectiveError> {
        let normal = self.timeout;
        self.set_timeout(timeout).map_err(|e| CollectiveError { op: "barrier", rank: self.rank, message: e.to_string() })?;
        self.timeout = timeout;
        let r = self.all_reduce_sum(&mut [1.0]);
        self.timeout = normal;
        self.set_timeout(normal).map_err(|e| CollectiveError { op: "barrier", rank: self.rank, message: e.to_string() })?;
        r
    }
}

#[cfg(test)]
mod fuzz_tests {
    use super::*;
    use ablate_proto::fuzz;

    /// A connection that reads from `input` and keeps what is written.
    struct Duplex {
        input: std::io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        [&(payload.len() as u64).to_le_bytes()[..], payload].concat()
    }

    #[test]
    fn frames_read_whole_or_are_refused() {
        let seeds = vec![frame(b"gradients"), frame(&[]), frame(&[7u8; 300]), u64::MAX.to_le_bytes().to_vec()];
        fuzz::run("ring frame", fuzz::mutations_of(seeds), |bytes| {
            match read_msg(&mut std::io::Cursor::new(&bytes)) {
                Ok(m) if bytes.len() < 8 || m.len() as u64 != u64::from_le_bytes(bytes[..8].try_into().unwrap()) => Err(format!("read {} bytes that the header did not announce", m.len())),
                _ => Ok(()),
            }
        });
        // a huge announcement with nothing behind it is refused without reserving it
        let e = read_msg(&mut std::io::Cursor::new(frame_len_header(3 << 30))).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnexpectedEof);
        assert!(read_msg(&mut std::io::Cursor::new(frame_len_header(MAX_FRAME + 1))).unwrap_err().to_string().contains("not a ring peer"));
    }

    fn frame_len_header(n: u64) -> Vec<u8> {
        n.to_le_bytes().to_vec()
    }

    #[test]
    fn handshakes_with_strangers_fail_without_panics() {
        let key = b"the group secret";
        // a well-formed greeting from rank 1, and a well-formed listener answer, as seeds
        let mut hello = Vec::new();
        hello.extend(MAGIC.to_le_bytes());
        hello.extend(1u32.to_le_bytes());
        hello.extend([9u8; 16]);
        let seeds = vec![[hello, vec![0u8; 32]].concat(), vec![0u8; 48]];
        fuzz::run("ring handshake", fuzz::mutations_of(seeds), |bytes| {
            let mut listener_side = Duplex { input: std::io::Cursor::new(bytes.clone()), output: Vec::new() };
            if challenge(&mut listener_side, key, 1).is_ok() {
                return Err("a stranger passed the listener's challenge".into());
            }
            let mut dialer_side = Duplex { input: std::io::Cursor::new(bytes), output: Vec::new() };
            if greet(&mut dialer_side, key, 0).is_ok() {
                return Err("a stranger passed as the listener".into());
            }
            Ok(())
        });
    }
}

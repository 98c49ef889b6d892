//! The etcd backend of [`Kv`]: `--store etcd://host:2379[,host:2379...][/namespace/]`.
//!
//! Every call is one etcd request (range, put, delete-range or txn), so atomicity and
//! durability are etcd's (a write returns once the cluster's quorum has it).
//!
//! - Several endpoints are members of one cluster: a call goes to the member that answered
//!   last and moves on to the next when one is unreachable (gRPC `Unavailable`).
//! - Keys live under a namespace (default `ablate/`): the store sees and touches nothing
//!   else, so several deployments can share a cluster.
//! - Revisions are etcd's cluster-wide revisions minus one (a fresh cluster is at 1), so a
//!   fresh cluster reads as revision 0 as the other backends do; revisions of keys outside
//!   the namespace advance it too.
//! - Ranges are read in pages of [`PAGE`] keys, all at the first page's revision (one
//!   snapshot), so no response nears gRPC's size limit.
//! - A transaction holds at most [`MAX_TXN_OPS`] compares and as many operations per
//!   branch (etcd's default `--max-txn-ops`): [`Kv::max_txn_ops`] tells the coordinator.
//! - Each call has a deadline ([`TIMEOUT`]); the error names the operation, the key and
//!   what etcd said.
//!
//! The gRPC client runs on a small runtime of its own, so the synchronous [`Kv`] calls work
//! from any thread; called from a task of a multi-threaded runtime (the coordinator's), the
//! wait is `block_in_place`, so the runtime's other tasks go on.
//!
//! Leader election ([`crate::leader`]) uses three more pieces: leases ([`EtcdStore::grant_lease`],
//! [`EtcdStore::keep_alive`], [`EtcdStore::revoke_lease`]), a create-if-absent bound to a
//! lease ([`EtcdStore::acquire`]), and fencing ([`EtcdStore::fence`]): once fenced, every write
//! is a transaction that first checks that the leader key is still bound to this
//! coordinator's lease, so a deposed leader can never overwrite its successor's state.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ablate_proto::etcd::{self as pb, compare, kv_client::KvClient, lease_client::LeaseClient, request_op, response_op};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use super::etcd_access::{self, Auth, Ch};
use super::{check_key, Compare, Entry, Kv, Op, StoreError, TxnResult};

/// Deadline of one etcd request (on every endpoint it tries).
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Keys per range request.
pub const PAGE: i64 = 500;
/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;
const DEFAULT_NAMESPACE: &str = "ablate/";

/// Where the store lives: `etcd://h1:p1,h2:p2/namespace/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSpec {
    pub endpoints: Vec<String>,
    pub namespace: String,
}

impl EtcdSpec {
    pub fn parse(spec: &str) -> Result<Self, StoreError> {
        let bad = |message: String| StoreError::Open { path: spec.to_string(), message };
        let rest = spec.strip_prefix("etcd://").ok_or_else(|| bad("an etcd store is etcd://host:port[,host:port...][/namespace/]".into()))?;
        let (hosts, namespace) = match rest.split_once('/') {
            Some((h, ns)) => (h, ns.to_string()),
            None => (rest, String::new()),
        };
        let namespace = if namespace.is_empty() { DEFAULT_NAMESPACE.to_string() } else { namespace };
        if !namespace.ends_with('/') || namespace.starts_with('/') {
            return Err(bad(format!("the namespace {namespace:?} must end with '/' and not start with one (e.g. etcd://127.0.0.1:2379/ablate/)")));
        }
        let endpoints: Vec<String> = hosts.split(',').map(str::trim).filter(|h| !h.is_empty()).map(str::to_string).collect();
        if endpoints.is_empty() {
            return Err(bad("no etcd endpoint (e.g. etcd://127.0.0.1:2379)".into()));
        }
        for e in &endpoints {
            let port = e.rsplit_once(':').map(|(_, p)| p);
            if port.is_none_or(|p| p.parse::<u16>().is_err()) {
                return Err(bad(format!("endpoint {e:?} is not host:port")));
            }
        }
        Ok(Self { endpoints, namespace })
    }
}

/// One channel per cluster member; calls start at the one that answered last.
#[derive(Clone)]
struct Members {
    channels: Arc<Vec<Channel>>,
    current: Arc<AtomicUsize>,
    auth: Auth,
}

impl Members {
    /// Runs `f` against the members in turn, from the current one, until one answers with
    /// something other than `Unavailable` (unreachable), each within [`TIMEOUT`]. With user
    /// auth, a missing or expired token is fetched (again) first and the call sent once more.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, tonic::Status>
    where
        F: Fn(Ch) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let n = self.channels.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut last = tonic::Status::unavailable("no etcd endpoint");
        for k in 0..n {
            let i = (first + k) % n;
            let answer = tokio::time::timeout(TIMEOUT, async {
                if self.auth.needs_token() {
                    self.auth.authenticate(self.channels[i].clone()).await?;
                }
                match f(self.auth.wrap(self.channels[i].clone())).await {
                    Err(s) if s.code() == tonic::Code::Unauthenticated && self.auth.enabled() => {
                        self.auth.authenticate(self.channels[i].clone()).await?;
                        f(self.auth.wrap(self.channels[i].clone())).await
                    }
                    r => r,
                }
            });
            match answer.await {
                Ok(Ok(v)) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Ok(Err(s)) if s.code() == tonic::Code::Unavailable => last = s,
                Ok(Err(s)) => return Err(s),
                Err(_) => last = tonic::Status::deadline_exceeded(format!("no answer within {TIMEOUT:?}")),
            }
        }
        Err(last)
    }
}

fn kv_client(channel: Ch) -> KvClient<Ch> {
    KvClient::new(channel).max_decoding_message_size(64 << 20)
}

pub struct EtcdStore {
    spec: EtcdSpec,
    prefix: Vec<u8>,
    members: Members,
    rt: Option<tokio::runtime::Runtime>,
    /// (full key, lease) that every write checks first, once fenced.
    guard: Option<(Vec<u8>, i64)>,
}

impl EtcdStore {
    /// Connects and reads the revision once: an unreachable cluster is an error here, with
    /// the endpoints named, not at the first job.
    /// The spec may end in a query naming TLS material and a user ([`etcd_access`]).
    pub fn open(spec: &str) -> Result<Self, StoreError> {
        let (base, access) = etcd_access::split(spec)?;
        let parsed = EtcdSpec::parse(base)?;
        let fail = |message: String| StoreError::Open { path: spec.to_string(), message };
        let (tls, creds) = access.load().map_err(fail)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-store")
            .enable_all()
            .build()
            .map_err(|e| fail(format!("cannot start the etcd client runtime: {e}")))?;
        let channels = {
            let _inside = rt.enter();
            parsed
                .endpoints
                .iter()
                .map(|e| {
                    let ep = Endpoint::from_shared(format!("{scheme}://{e}")).map_err(|err| fail(format!("bad endpoint {e}: {err}")))?;
                    let ep = match &tls {
                        Some(t) => ep.tls_config(t.config()).map_err(|err| fail(format!("TLS for {e}: {err}")))?,
                        None => ep,
                    };
                    Ok(ep.connect_timeout(Duration::from_secs(2)).tcp_nodelay(true).connect_lazy())
                })
                .collect::<Result<Vec<_>, StoreError>>()?
        };
        let members = Members { channels: Arc::new(channels), current: Arc::new(AtomicUsize::new(0)), auth: Auth::new(creds) };
        let store = Self { prefix: parsed.namespace.as_bytes().to_vec(), spec: parsed, members, rt: Some(rt), guard: None };
        store.revision().map_err(|e| {
            let e = e.to_string();
            let unreachable = ["(Unavailable)", "(Cancelled)", "no answer within", "transport error"].iter().any(|m| e.contains(m));
            let verb = if unreachable { format!("does not answer over {scheme}") } else { "refuses the store".to_string() };
            fail(format!("etcd at {} {verb}: {e}", store.spec.endpoints.join(",")))
        })?;
        Ok(store)
    }

    /// Auth tokens fetched so far (user auth: the first at open, then one per expiry).
    pub fn auth_tokens_fetched(&self) -> usize {
        self.members.auth.tokens_fetched()
    }

    pub fn spec(&self) -> &EtcdSpec {
        &self.spec
    }

    /// A lease of `ttl` (whole seconds, at least 1); returns its id.
    pub fn grant_lease(&self, ttl: Duration) -> Result<i64, StoreError> {
        let ttl = ttl.as_secs().max(1) as i64;
        let r = self.block("lease grant", "", move |ch| async move { LeaseClient::new(ch).lease_grant(pb::LeaseGrantRequest { ttl, id: 0 }).await }).map(|r| r.into_inner())?;
        if !r.error.is_empty() {
            return Err(StoreError::Backend { op: "lease grant", key: String::new(), message: r.error });
        }
        Ok(r.id)
    }

    /// Revokes a lease: the keys bound to it are deleted at once.
    pub fn revoke_lease(&self, id: i64) -> Result<(), StoreError> {
        self.block("lease revoke", "", move |ch| async move { LeaseClient::new(ch).lease_revoke(pb::LeaseRevokeRequest { id }).await }).map(|_| ())
    }

    /// Keeps lease `id` (granted at `granted` with `ttl`) alive until `stop`: a keep-alive
    /// every third of the ttl, reconnecting (to the next member) after errors. The returned
    /// token is cancelled when the lease is lost: etcd says it is gone, or the lease's
    /// expiry, counted from the sending of the last answered keep-alive, is less than a
    /// margin (a fifth of the ttl, at most 1 s) away. etcd cannot expire it earlier, so the
    /// holder learns of the loss before anyone else can take what the lease held.
    pub fn keep_alive(&self, id: i64, ttl: Duration, granted: std::time::Instant, stop: CancellationToken) -> CancellationToken {
        let lost = CancellationToken::new();
        let (members, lost2) = (self.members.clone(), lost.clone());
        let margin = (ttl / 5).min(Duration::from_secs(1));
        self.rt.as_ref().expect("the runtime lives as long as the store").spawn(async move {
            use tokio::time::{sleep, sleep_until, Instant};
            let every = ttl / 3;
            let mut deadline = Instant::from_std(granted) + ttl - margin;
            let mut k = members.current.load(Ordering::Relaxed);
            'connect: loop {
                let channel = members.channels[k % members.channels.len()].clone();
                k += 1;
                if members.auth.needs_token() {
                    let _ = tokio::time::timeout(TIMEOUT, members.auth.authenticate(channel.clone())).await;
                }
                let channel = members.auth.wrap(channel);
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                // the first request goes in before the call: etcd answers the call (its
                // headers) only with the first keep-alive's answer
                let mut sent = Instant::now();
                let _ = tx.send(pb::LeaseKeepAliveRequest { id }).await;
                let mut client = LeaseClient::new(channel);
                let call = tokio::select! {
                    r = client.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)) => match r {
                        Ok(r) => Some(r),
                        Err(s) => {
                            if s.code() == tonic::Code::Unauthenticated && members.auth.enabled() {
                                // the token expired: the next connection authenticates first
                                members.auth.token.clear();
                            }
                            None
                        }
                    },
                    _ = sleep(every) => None,
                    _ = sleep_until(deadline) => break 'connect,
                    _ = stop.cancelled() => return,
                };
                if let Some(r) = call {
                    let mut answers = r.into_inner();
                    let mut first = true;
                    loop {
                        if !std::mem::take(&mut first) {
                            sent = Instant::now();
                            if tx.send(pb::LeaseKeepAliveRequest { id }).await.is_err() {
                                break;
                            }
                        }
                        tokio::select! {
                            a = answers.message() => match a {
                                Ok(Some(a)) if a.ttl > 0 => deadline = sent + Duration::from_secs(a.ttl as u64) - margin,
                                Ok(Some(_)) => break 'connect, // expired or revoked
                                _ => break,                    // the stream broke: reconnect
                            },
                            _ = sleep_until(deadline) => break 'connect,
                            _ = stop.cancelled() => return,
                        }
                        tokio::select! {
                            _ = sleep(every) => {}
                            _ = sleep_until(deadline) => break 'connect,
                            _ = stop.cancelled() => return,
                        }
                    }
                }
                tokio::select! {
                    _ = sleep(Duration::from_millis(200)) => {}
                    _ = sleep_until(deadline) => break,
                    _ = stop.cancelled() => return,
                }
            }
            if !stop.is_cancelled() {
                lost2.cancel();
            }
        });
        lost
    }

    /// Creates `key` = `value` bound to `lease` if the key does not exist. Err(holder's
    /// value) when it does.
    pub fn acquire(&self, key: &str, value: &[u8], lease: i64) -> Result<Result<(), Vec<u8>>, StoreError> {
        let Some(request_op::Request::RequestPut(mut put)) = self.op(&Op::Put(key.to_string(), value.to_vec()))?.request else { unreachable!("a put") };
        put.lease = lease;
        let req = pb::TxnRequest {
            compare: vec![self.compare(&Compare::Exists(key.to_string(), false))?],
            success: vec![pb::RequestOp { request: Some(request_op::Request::RequestPut(put)) }],
            failure: vec![pb::RequestOp { request: Some(request_op::Request::RequestRange(pb::RangeRequest { key: self.full(key), ..Default::default() })) }],
        };
        let r = self.block("acquire", key, move |ch| {
            let req = req.clone();
            async move { kv_client(ch).txn(req).await }
        }).map(|r| r.into_inner())?;
        if r.succeeded {
            return Ok(Ok(()));
        }
        let holder = r.responses.into_iter().find_map(|op| match op.response {
            Some(response_op::Response::ResponseRange(rr)) => rr.kvs.into_iter().next().map(|kv| kv.value),
            _ => None,
        });
        Ok(Err(holder.unwrap_or_default()))
    }

    /// From now on every write first checks that `key` is still bound to `lease` (this
    /// coordinator's leadership: lease ids are unique in the cluster); if not, it writes
    /// nothing and fails with [`StoreError::Fenced`].
    pub fn fence(&mut self, key: &str, lease: i64) {
        self.guard = Some((self.full(key), lease));
    }

    /// Runs `inner` as is, or, when fenced, inside a transaction guarded by the leader key;
    /// returns the header and the inner response.
    fn write(&self, op: &'static str, key: &str, inner: pb::RequestOp) -> Result<(Option<pb::ResponseHeader>, response_op::Response), StoreError> {
        let bad = |message: &str| StoreError::Backend { op, key: key.to_string(), message: message.to_string() };
        let Some((gkey, lease)) = self.guard.clone() else {
            let resp = self.block(op, key, move |ch| {
                let inner = inner.clone();
                async move {
                    let mut kv = kv_client(ch);
                    Ok(match inner.request.expect("a request") {
                        request_op::Request::RequestPut(r) => response_op::Response::ResponsePut(kv.put(r).await?.into_inner()),
                        request_op::Request::RequestDeleteRange(r) => response_op::Response::ResponseDeleteRange(kv.delete_range(r).await?.into_inner()),
                        request_op::Request::RequestTxn(r) => response_op::Response::ResponseTxn(kv.txn(r).await?.into_inner()),
                        request_op::Request::RequestRange(r) => response_op::Response::ResponseRange(kv.range(r).await?.into_inner()),
                    })
                }
            })?;
            let header = match &resp {
                response_op::Response::ResponsePut(r) => r.header,
                response_op::Response::ResponseDeleteRange(r) => r.header,
                response_op::Response::ResponseTxn(r) => r.header,
                response_op::Response::ResponseRange(r) => r.header,
            };
            return Ok((header, resp));
        };
        let req = pb::TxnRequest {
            compare: vec![pb::Compare { result: compare::CompareResult::Equal as i32, target: compare::CompareTarget::Lease as i32, key: gkey.clone(), target_union: Some(compare::TargetUnion::Lease(lease)), range_end: Vec::new() }],
            success: vec![inner],
            failure: vec![pb::RequestOp { request: Some(request_op::Request::RequestRange(pb::RangeRequest { key: gkey, ..Default::default() })) }],
        };
        let r = self.block(op, key, move |ch| {
            let req = req.clone();
            async move { kv_client(ch).txn(req).await }
        }).map(|r| r.into_inner())?;
        let first = r.responses.into_iter().next().and_then(|o| o.response).ok_or_else(|| bad("etcd answered a guarded write without a response"))?;
        if !r.succeeded {
            let holder = match first {
                response_op::Response::ResponseRange(rr) => rr.kvs.into_iter().next().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
                _ => None,
            };
            return Err(StoreError::Fenced { op, key: key.to_string(), holder: holder.unwrap_or_else(|| "nobody".into()) });
        }
        Ok((r.header, first))
    }

    /// Runs `f(channel)` on the client runtime, against the members in turn (see
    /// [`Members::call`]), and waits for it.
    fn block<T, F, Fut>(&self, op: &'static str, key: &str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(Ch) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, tonic::Status>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let members = self.members.clone();
        self.rt.as_ref().expect("the runtime lives as long as the store").spawn(async move {
            let _ = tx.send(members.call(f).await);
        });
        let inside_multi_thread = tokio::runtime::Handle::try_current().is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let answer = if inside_multi_thread { tokio::task::block_in_place(|| rx.recv()) } else { rx.recv() };
        let endpoints = self.spec.endpoints.join(",");
        match answer {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(s)) => Err(StoreError::Backend { op, key: key.to_string(), message: format!("etcd at {endpoints}: {} ({:?})", s.message(), s.code()) }),
            Err(_) => Err(StoreError::Backend { op, key: key.to_string(), message: "the etcd client stopped".into() }),
        }
    }

    fn full(&self, key: &str) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(key.as_bytes());
        k
    }

    fn entry(&self, kv: pb::KeyValue) -> Result<Entry, StoreError> {
        let key = kv.key.strip_prefix(self.prefix.as_slice()).and_then(|k| String::from_utf8(k.to_vec()).ok());
        let key = key.ok_or_else(|| StoreError::Backend { op: "range", key: String::from_utf8_lossy(&kv.key).into_owned(), message: "etcd returned a key outside the namespace".into() })?;
        Ok(Entry { key, value: kv.value, create_revision: ours(kv.create_revision), mod_revision: ours(kv.mod_revision), version: kv.version.max(0) as u64 })
    }

    fn compare(&self, c: &Compare) -> Result<pb::Compare, StoreError> {
        use pb::compare::{CompareResult as R, CompareTarget as T};
        let (key, result, target, union) = match c {
            Compare::ModRevision(k, r) => (k, R::Equal, T::Mod, compare::TargetUnion::ModRevision(theirs(*r))),
            Compare::Value(k, v) => (k, R::Equal, T::Value, compare::TargetUnion::Value(v.clone())),
            Compare::Exists(k, true) => (k, R::Greater, T::Version, compare::TargetUnion::Version(0)),
            Compare::Exists(k, false) => (k, R::Equal, T::Version, compare::TargetUnion::Version(0)),
        };
        check_key(key)?;
        Ok(pb::Compare { result: result as i32, target: target as i32, key: self.full(key), target_union: Some(union), range_end: Vec::new() })
    }

    fn op(&self, o: &Op) -> Result<pb::RequestOp, StoreError> {
        let request = match o {
            Op::Put(k, v) => {
                check_key(k)?;
                request_op::Request::RequestPut(pb::PutRequest { key: self.full(k), value: v.clone(), ..Default::default() })
            }
            Op::Delete(k) => {
                check_key(k)?;
                request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest { key: self.full(k), ..Default::default() })
            }
        };
        Ok(pb::RequestOp { request: Some(request) })
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // may run inside another runtime (the coordinator's), where a blocking shutdown panics
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// etcd revision -> store revision (a fresh cluster is at etcd revision 1).
fn ours(r: i64) -> u64 {
    (r - 1).max(0) as u64
}

/// Store revision -> etcd revision; 0 (a key that does not exist) stays 0.
fn theirs(r: u64) -> i64 {
    if r == 0 {
        0
    } else {
        r as i64 + 1
    }
}

/// The first key after every key that starts with `prefix` (etcd's prefix range end);
/// `[0]` (to the end) when there is none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn header_revision(h: Option<pb::ResponseHeader>) -> u64 {
    ours(h.map(|h| h.revision).unwrap_or(0))
}

impl Kv for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        check_key(key)?;
        let req = pb::RangeRequest { key: self.full(key), ..Default::default() };
        let resp = self.block("get", key, move |ch| {
            let req = req.clone();
            async move { kv_client(ch).range(req).await }
        }).map(|r| r.into_inner())?;
        resp.kvs.into_iter().next().map(|e| self.entry(e)).transpose()
    }

    fn range(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let start = self.full(prefix);
        let end = prefix_end(&start);
        let mut out = Vec::new();
        let (mut from, mut at) = (start, 0);
        loop {
            let req = pb::RangeRequest { key: from.clone(), range_end: end.clone(), limit: PAGE, revision: at, ..Default::default() };
            let resp = self.block("range", prefix, move |ch| {
            let req = req.clone();
            async move { kv_client(ch).range(req).await }
        }).map(|r| r.into_inner())?;
            // every later page reads the first page's snapshot
            at = resp.header.map(|h| h.revision).unwrap_or(0);
            let last = resp.kvs.last().map(|e| e.key.clone());
            for e in resp.kvs {
                out.push(self.entry(e)?);
            }
            match (resp.more, last) {
                (true, Some(mut k)) => {
                    k.push(0);
                    from = k;
                }
                _ => return Ok(out),
            }
        }
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<u64, StoreError> {
        let op = self.op(&Op::Put(key.to_string(), value.to_vec()))?;
        let (header, _) = self.write("put", key, op)?;
        Ok(header_revision(header))
    }

    fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let op = self.op(&Op::Delete(key.to_string()))?;
        match self.write("delete", key, op)? {
            (_, response_op::Response::ResponseDeleteRange(r)) => Ok(r.deleted > 0),
            _ => Err(StoreError::Backend { op: "delete", key: key.to_string(), message: "etcd answered a delete with another response".into() }),
        }
    }

    fn txn(&self, compares: &[Compare], success: &[Op], failure: &[Op]) -> Result<TxnResult, StoreError> {
        let most = compares.len().max(success.len()).max(failure.len());
        if most > MAX_TXN_OPS {
            return Err(StoreError::Backend { op: "txn", key: String::new(), message: format!("{most} operations in one branch of a transaction; etcd takes at most {MAX_TXN_OPS} (its --max-txn-ops)") });
        }
        let req = pb::TxnRequest {
            compare: compares.iter().map(|c| self.compare(c)).collect::<Result<_, _>>()?,
            success: success.iter().map(|o| self.op(o)).collect::<Result<_, _>>()?,
            failure: failure.iter().map(|o| self.op(o)).collect::<Result<_, _>>()?,
        };
        match self.write("txn", "", pb::RequestOp { request: Some(request_op::Request::RequestTxn(req)) })? {
            (header, response_op::Response::ResponseTxn(r)) => Ok(TxnResult { succeeded: r.succeeded, revision: header_revision(header.or(r.header)) }),
            _ => Err(StoreError::Backend { op: "txn", key: String::new(), message: "etcd answered a transaction with another response".into() }),
        }
    }

    fn revision(&self) -> Result<u64, StoreError> {
        // a count-only range answers with the cluster's revision in its header
        let req = pb::RangeRequest { key: self.full("revision-probe"), count_only: true, ..Default::default() };
        let resp = self.block("revision", "", move |ch| {
            let req = req.clone();
            async move { kv_client(ch).range(req).await }
        }).map(|r| r.into_inner())?;
        Ok(header_revision(resp.header))
    }

    fn max_txn_ops(&self) -> usize {
        MAX_TXN_OPS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_or_say_what_is_wrong() {
        assert_eq!(EtcdSpec::parse("etcd://127.0.0.1:2379").unwrap(), EtcdSpec { endpoints: vec!["127.0.0.1:2379".into()], namespace: "ablate/".into() });
        let s = EtcdSpec::parse("etcd://a:1,b:2/team/x/").unwrap();
        assert_eq!((s.endpoints, s.namespace.as_str()), (vec!["a:1".to_string(), "b:2".to_string()], "team/x/"));
        for (bad, says) in [("etcd://", "no etcd endpoint"), ("etcd://host", "not host:port"), ("etcd://h:1/ns", "must end with '/'"), ("http://h:1", "etcd://host:port")] {
            let e = EtcdSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn prefix_ends_and_revisions() {
        assert_eq!(prefix_end(b"ablate/jobs/"), b"ablate/jobs0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
        assert_eq!((ours(1), ours(7), theirs(0), theirs(6)), (0, 6, 0, 7));
    }
}

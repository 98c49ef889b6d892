//! The etcd backend of [`Kv`]: `--store etcd://host:2379[,host:2379...][/namespace/]`.
//!
//! Every call is one etcd request (range, put, delete-range or txn), so atomicity and
//! durability are etcd's (a write returns once the cluster's quorum has it). Several
//! endpoints are members of one cluster; the client balances over those that answer.
//!
//! - Keys live under a namespace (default `ablate/`): the store sees and touches nothing
//!   else, so several deployments can share a cluster.
//! - Revisions are etcd's cluster-wide revisions minus one (a fresh cluster is at 1), so a
//!   fresh cluster reads as revision 0 as the other backends do; revisions of keys outside
//!   the namespace advance it too.
//! - Ranges are read in pages of [`PAGE`] keys, so no response nears gRPC's size limit.
//! - Each call has a deadline ([`TIMEOUT`]); the error names the operation, the key and
//!   what etcd said.
//!
//! The gRPC client runs on a small runtime of its own, so the synchronous [`Kv`] calls work
//! from any thread, including the coordinator's async tasks.
//!
//! Leader election ([`crate::leader`]) uses three more pieces: leases ([`EtcdStore::grant_lease`],
//! [`EtcdStore::keep_alive`], [`EtcdStore::revoke_lease`]), a create-if-absent bound to a
//! lease ([`EtcdStore::acquire`]), and fencing ([`EtcdStore::fence`]): once fenced, every write
//! is a transaction that first checks that the leader key still holds this coordinator's id,
//! so a deposed leader can never overwrite its successor's state.

use std::future::Future;
use std::time::Duration;

use ablate_proto::etcd::{self as pb, compare, kv_client::KvClient, lease_client::LeaseClient, request_op, response_op};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use super::{check_key, Compare, Entry, Kv, Op, StoreError, TxnResult};

/// Deadline of one etcd request.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Keys per range request.
pub const PAGE: i64 = 500;
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

pub struct EtcdStore {
    spec: EtcdSpec,
    prefix: Vec<u8>,
    kv: KvClient<Channel>,
    channel: Channel,
    rt: Option<tokio::runtime::Runtime>,
    /// (full key, value) that every write checks first, once fenced.
    guard: Option<(Vec<u8>, Vec<u8>)>,
}

impl EtcdStore {
    /// Connects and reads the revision once: an unreachable cluster is an error here, with
    /// the endpoints named, not at the first job.
    pub fn open(spec: &str) -> Result<Self, StoreError> {
        let parsed = EtcdSpec::parse(spec)?;
        let fail = |message: String| StoreError::Open { path: spec.to_string(), message };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-store")
            .enable_all()
            .build()
            .map_err(|e| fail(format!("cannot start the etcd client runtime: {e}")))?;
        let endpoints = parsed
            .endpoints
            .iter()
            .map(|e| Endpoint::from_shared(format!("http://{e}")).map(|ep| ep.connect_timeout(Duration::from_secs(3)).tcp_nodelay(true)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(format!("bad endpoint: {e}")))?;
        let channel = {
            let _inside = rt.enter();
            Channel::balance_list(endpoints.into_iter())
        };
        let kv = KvClient::new(channel.clone()).max_decoding_message_size(64 << 20);
        let store = Self { prefix: parsed.namespace.as_bytes().to_vec(), spec: parsed, kv, channel, rt: Some(rt), guard: None };
        store.revision().map_err(|e| fail(format!("etcd at {} does not answer: {e}", store.spec.endpoints.join(","))))?;
        Ok(store)
    }

    pub fn spec(&self) -> &EtcdSpec {
        &self.spec
    }

    /// A lease of `ttl` (whole seconds, at least 1); returns its id.
    pub fn grant_lease(&self, ttl: Duration) -> Result<i64, StoreError> {
        let mut lease = LeaseClient::new(self.channel.clone());
        let req = pb::LeaseGrantRequest { ttl: ttl.as_secs().max(1) as i64, id: 0 };
        let r = self.block("lease grant", "", async move { lease.lease_grant(req).await.map(|r| r.into_inner()) })?;
        if !r.error.is_empty() {
            return Err(StoreError::Backend { op: "lease grant", key: String::new(), message: r.error });
        }
        Ok(r.id)
    }

    /// Revokes a lease: the keys bound to it are deleted at once.
    pub fn revoke_lease(&self, id: i64) -> Result<(), StoreError> {
        let mut lease = LeaseClient::new(self.channel.clone());
        self.block("lease revoke", "", async move { lease.lease_revoke(pb::LeaseRevokeRequest { id }).await.map(|_| ()) })
    }

    /// Keeps lease `id` alive (a keep-alive every third of `ttl`, reconnecting after
    /// errors) until `stop`. The returned token is cancelled when the lease is lost: etcd
    /// says it expired, or no keep-alive was answered for `ttl`.
    pub fn keep_alive(&self, id: i64, ttl: Duration, stop: CancellationToken) -> CancellationToken {
        let lost = CancellationToken::new();
        let (channel, lost2) = (self.channel.clone(), lost.clone());
        self.rt.as_ref().expect("the runtime lives as long as the store").spawn(async move {
            let every = ttl / 3;
            let mut last_ok = tokio::time::Instant::now();
            let mut client = LeaseClient::new(channel);
            'connect: while !stop.is_cancelled() {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                // the first request goes in before the call: etcd answers the call (its
                // headers) only with the first keep-alive's answer
                let _ = tx.send(pb::LeaseKeepAliveRequest { id }).await;
                let call = tokio::time::timeout(every, client.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)));
                if let Ok(Ok(r)) = call.await {
                    let mut answers = r.into_inner();
                    let mut first = true;
                    loop {
                        if !std::mem::take(&mut first) && tx.send(pb::LeaseKeepAliveRequest { id }).await.is_err() {
                            break;
                        }
                        match tokio::time::timeout(every, answers.message()).await {
                            Ok(Ok(Some(a))) if a.ttl > 0 => last_ok = tokio::time::Instant::now(),
                            Ok(Ok(Some(_))) => break 'connect, // expired or revoked
                            _ => break,                        // stream broke or slow: reconnect
                        }
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(every) => {}
                        }
                        if last_ok.elapsed() >= ttl {
                            break 'connect;
                        }
                    }
                }
                if last_ok.elapsed() >= ttl {
                    break;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
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
        check_key(key)?;
        let full = self.full(key);
        let req = pb::TxnRequest {
            compare: vec![pb::Compare { result: compare::CompareResult::Equal as i32, target: compare::CompareTarget::Version as i32, key: full.clone(), target_union: Some(compare::TargetUnion::Version(0)), range_end: Vec::new() }],
            success: vec![pb::RequestOp { request: Some(request_op::Request::RequestPut(pb::PutRequest { key: full.clone(), value: value.to_vec(), lease, prev_kv: false })) }],
            failure: vec![pb::RequestOp { request: Some(request_op::Request::RequestRange(pb::RangeRequest { key: full, ..Default::default() })) }],
        };
        let mut kv = self.kv.clone();
        let r = self.block("acquire", key, async move { kv.txn(req).await.map(|r| r.into_inner()) })?;
        if r.succeeded {
            return Ok(Ok(()));
        }
        let holder = r.responses.into_iter().find_map(|op| match op.response {
            Some(response_op::Response::ResponseRange(rr)) => rr.kvs.into_iter().next().map(|kv| kv.value),
            _ => None,
        });
        Ok(Err(holder.unwrap_or_default()))
    }

    /// From now on every write first checks that `key` still holds `value` (this
    /// coordinator's leadership); if not, it writes nothing and fails with
    /// [`StoreError::Fenced`].
    pub fn fence(&mut self, key: &str, value: &[u8]) {
        self.guard = Some((self.full(key), value.to_vec()));
    }

    /// Runs `inner` as is, or, when fenced, inside a transaction guarded by the leader key;
    /// returns the inner response.
    fn write(&self, op: &'static str, key: &str, inner: pb::RequestOp) -> Result<(Option<pb::ResponseHeader>, response_op::Response), StoreError> {
        let bad = |message: &str| StoreError::Backend { op, key: key.to_string(), message: message.to_string() };
        let mut kv = self.kv.clone();
        let Some((gkey, gvalue)) = self.guard.clone() else {
            let resp = self.block(op, key, async move {
                Ok(match inner.request.expect("a request") {
                    request_op::Request::RequestPut(r) => response_op::Response::ResponsePut(kv.put(r).await?.into_inner()),
                    request_op::Request::RequestDeleteRange(r) => response_op::Response::ResponseDeleteRange(kv.delete_range(r).await?.into_inner()),
                    request_op::Request::RequestTxn(r) => response_op::Response::ResponseTxn(kv.txn(r).await?.into_inner()),
                    request_op::Request::RequestRange(r) => response_op::Response::ResponseRange(kv.range(r).await?.into_inner()),
                })
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
            compare: vec![pb::Compare { result: compare::CompareResult::Equal as i32, target: compare::CompareTarget::Value as i32, key: gkey.clone(), target_union: Some(compare::TargetUnion::Value(gvalue)), range_end: Vec::new() }],
            success: vec![inner],
            failure: vec![pb::RequestOp { request: Some(request_op::Request::RequestRange(pb::RangeRequest { key: gkey, ..Default::default() })) }],
        };
        let r = self.block(op, key, async move { kv.txn(req).await.map(|r| r.into_inner()) })?;
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

    /// Runs `f` on the client runtime and waits for it, with the deadline.
    pub fn block<T, F>(&self, op: &'static str, key: &str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, tonic::Status>> + Send + 'static,
    {
        let err = |message: String| StoreError::Backend { op, key: key.to_string(), message };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.as_ref().expect("the runtime lives as long as the store").spawn(async move {
            let _ = tx.send(tokio::time::timeout(TIMEOUT, f).await);
        });
        match rx.recv() {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(status))) => Err(err(format!("etcd at {}: {} ({:?})", self.spec.endpoints.join(","), status.message(), status.code()))),
            Ok(Err(_)) => Err(err(format!("etcd at {} did not answer within {TIMEOUT:?}", self.spec.endpoints.join(",")))),
            Err(_) => Err(err("the etcd client stopped".into())),
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
        let mut kv = self.kv.clone();
        let req = pb::RangeRequest { key: self.full(key), ..Default::default() };
        let resp = self.block("get", key, async move { kv.range(req).await.map(|r| r.into_inner()) })?;
        resp.kvs.into_iter().next().map(|e| self.entry(e)).transpose()
    }

    fn range(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let start = self.full(prefix);
        let end = prefix_end(&start);
        let mut out = Vec::new();
        let mut from = start;
        loop {
            let mut kv = self.kv.clone();
            let req = pb::RangeRequest { key: from.clone(), range_end: end.clone(), limit: PAGE, ..Default::default() };
            let resp = self.block("range", prefix, async move { kv.range(req).await.map(|r| r.into_inner()) })?;
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
        // a range of one key answers with the cluster's revision in its header
        let mut kv = self.kv.clone();
        let req = pb::RangeRequest { key: self.full("revision-probe"), count_only: true, ..Default::default() };
        let resp = self.block("revision", "", async move { kv.range(req).await.map(|r| r.into_inner()) })?;
        Ok(header_revision(resp.header))
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

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

use std::future::Future;
use std::time::Duration;

use ablate_proto::etcd::{self as pb, compare, kv_client::KvClient, request_op};
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
        let store = Self { prefix: parsed.namespace.as_bytes().to_vec(), spec: parsed, kv, channel, rt: Some(rt) };
        store.revision().map_err(|e| fail(format!("etcd at {} does not answer: {e}", store.spec.endpoints.join(","))))?;
        Ok(store)
    }

    pub fn spec(&self) -> &EtcdSpec {
        &self.spec
    }

    /// The gRPC channel to the cluster (leases share it).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
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
        check_key(key)?;
        let mut kv = self.kv.clone();
        let req = pb::PutRequest { key: self.full(key), value: value.to_vec(), ..Default::default() };
        let resp = self.block("put", key, async move { kv.put(req).await.map(|r| r.into_inner()) })?;
        Ok(header_revision(resp.header))
    }

    fn delete(&self, key: &str) -> Result<bool, StoreError> {
        check_key(key)?;
        let mut kv = self.kv.clone();
        let req = pb::DeleteRangeRequest { key: self.full(key), ..Default::default() };
        let resp = self.block("delete", key, async move { kv.delete_range(req).await.map(|r| r.into_inner()) })?;
        Ok(resp.deleted > 0)
    }

    fn txn(&self, compares: &[Compare], success: &[Op], failure: &[Op]) -> Result<TxnResult, StoreError> {
        let req = pb::TxnRequest {
            compare: compares.iter().map(|c| self.compare(c)).collect::<Result<_, _>>()?,
            success: success.iter().map(|o| self.op(o)).collect::<Result<_, _>>()?,
            failure: failure.iter().map(|o| self.op(o)).collect::<Result<_, _>>()?,
        };
        let mut kv = self.kv.clone();
        let resp = self.block("txn", "", async move { kv.txn(req).await.map(|r| r.into_inner()) })?;
        Ok(TxnResult { succeeded: resp.succeeded, revision: header_revision(resp.header) })
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

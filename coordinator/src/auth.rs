//! Who may call what: bearer tokens with roles, checked on every call of every service.
//!
//! - A token is `ablt_<id>_<secret>`: `id` (16 hex digits) names its record in the store
//!   (`auth/tokens/<id>`), `secret` (64 hex digits, 256 random bits) is shown once, when the
//!   token is created; the store keeps its SHA-256 only, compared in constant time.
//! - Roles ([`Role`]): `admin` (everything, token management), `researcher` (submit; cancel
//!   its own jobs; read every job and result), `viewer` (read only), `worker` (the
//!   WorkerService only, as the one worker id its token names).
//! - [`Auth::interceptor`] turns the `authorization` header into an [`Identity`] in the
//!   request's extensions (UNAUTHENTICATED when there is none, or it is unknown or revoked);
//!   the services then ask [`Identity::require`] for the roles a call needs
//!   (PERMISSION_DENIED naming them). Every refusal is counted in
//!   `ablate_auth_rejections_total{code}`.
//! - Ephemeral tokens ([`Auth::ephemeral`]) live in this process only: the embedded
//!   coordinator of `ablate run` hands them to its own workers and forgets them at exit.
//! - Job secrets ([`Auth::job_secret`]): an HMAC of (job, generation) under a random key
//!   kept in the store (`auth/job-key`), sent to the placed workers only, so their ranks can
//!   prove to each other that they belong to the group.

use ablate_proto::auth::{ct_eq, hex, hmac_sha256, random_bytes, sha256};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};
use tonic::Status;

use crate::domain::{Generation, JobId, WorkerId};
use crate::store::{Compare, Kv, Op, StoreError};

const TOKENS: &str = "auth/tokens/";
const JOB_KEY: &str = "auth/job-key";
const PREFIX: &str = "ablt_";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Researcher,
    Viewer,
    Worker,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Researcher, Role::Viewer, Role::Worker];

    pub fn label(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Researcher => "researcher",
            Role::Viewer => "viewer",
            Role::Worker => "worker",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.label() == s)
    }
}

/// The users' read roles.
pub const READERS: &[Role] = &[Role::Admin, Role::Researcher, Role::Viewer];
/// Who may submit jobs.
pub const SUBMITTERS: &[Role] = &[Role::Admin, Role::Researcher];
pub const ADMIN: &[Role] = &[Role::Admin];
pub const WORKER: &[Role] = &[Role::Worker];

/// A token's stored record (the secret's hash, never the secret).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// Worker tokens: the worker id they act as.
    #[serde(default)]
    pub worker: Option<String>,
    pub secret_sha256: String,
    pub created_unix_ms: u64,
    #[serde(default)]
    pub created_by: String,
    #[serde(default)]
    pub revoked: bool,
}

/// Who is calling: what the interceptor found for the call's token.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub token_id: String,
    pub name: String,
    pub role: Role,
    pub worker: Option<WorkerId>,
}

impl Identity {
    /// PERMISSION_DENIED unless the caller's role is one of `roles`; `what` says what was
    /// asked ("submit jobs").
    pub fn require(&self, roles: &[Role], what: &str) -> Result<(), Status> {
        if roles.contains(&self.role) {
            return Ok(());
        }
        let need: Vec<&str> = roles.iter().map(|r| r.label()).collect();
        Err(denied(format!("token {} ({}, role {}) may not {what}: that needs the role {}", self.token_id, self.name, self.role.label(), need.join(" or "))))
    }

    /// The worker this caller acts as: a worker token's worker, which must be `claimed`
    /// when the request names one.
    pub fn worker(&self, claimed: Option<&str>) -> Result<WorkerId, Status> {
        self.require(WORKER, "call the worker service")?;
        let mine = self.worker.clone().ok_or_else(|| denied(format!("worker token {} names no worker", self.token_id)))?;
        match claimed {
            Some(c) if c != mine.as_str() => Err(denied(format!("token {} acts as worker {mine}, not {c:?}", self.token_id))),
            _ => Ok(mine),
        }
    }
}

/// PERMISSION_DENIED, counted.
pub fn denied(message: String) -> Status {
    crate::metrics::auth_rejected("permission_denied");
    Status::permission_denied(message)
}

fn unauthenticated(message: &str) -> Status {
    crate::metrics::auth_rejected("unauthenticated");
    Status::unauthenticated(message.to_string())
}

/// The caller of a request (set by [`Auth::interceptor`]).
pub fn caller<T>(r: &tonic::Request<T>) -> Result<Identity, Status> {
    r.extensions().get::<Identity>().cloned().ok_or_else(|| unauthenticated("no identity on this call (the service is served without the token check)"))
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("stored token record {key} is damaged: {message}")]
    Damaged { key: String, message: String },
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Invalid(m) => Status::invalid_argument(m),
            e => Status::internal(e.to_string()),
        }
    }
}

/// The token table (store-backed, with an in-process cache and ephemeral tokens) and the
/// job-secret key.
pub struct Auth {
    store: Arc<dyn Kv>,
    /// Stored records seen so far, by id (a miss reads the store: another coordinator on the
    /// same store may have created it).
    cache: RwLock<HashMap<String, TokenRecord>>,
    ephemeral: RwLock<HashMap<String, TokenRecord>>,
    job_key: [u8; 32],
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn new_secret() -> (String, String, String) {
    let id = hex(&random_bytes::<8>());
    let secret = hex(&random_bytes::<32>());
    let hash = hex(&sha256(secret.as_bytes()));
    (format!("{PREFIX}{id}_{secret}"), id, hash)
}

/// A token's id and secret, or None for anything not shaped like a token.
fn split(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix(PREFIX)?.split_once('_')?;
    (id.len() == 16 && secret.len() == 64 && id.bytes().chain(secret.bytes()).all(|b| b.is_ascii_hexdigit())).then_some((id, secret))
}

impl Auth {
    /// Reads the tokens and the job-secret key from `store` (creating the key on first use).
    pub fn open(store: Arc<dyn Kv>) -> Result<Self, AuthError> {
        let job_key = match store.get(JOB_KEY)? {
            Some(e) => e.value,
            None => {
                // create-if-absent: coordinators starting together on one store agree on one key
                let fresh = random_bytes::<32>().to_vec();
                store.txn(&[Compare::Exists(JOB_KEY.into(), false)], &[Op::Put(JOB_KEY.into(), fresh)], &[])?;
                store.get(JOB_KEY)?.ok_or_else(|| AuthError::Damaged { key: JOB_KEY.into(), message: "vanished after it was written".into() })?.value
            }
        };
        let job_key: [u8; 32] = job_key.try_into().map_err(|_| AuthError::Damaged { key: JOB_KEY.into(), message: "not 32 bytes".into() })?;
        let auth = Self { store, cache: RwLock::new(HashMap::new()), ephemeral: RwLock::new(HashMap::new()), job_key };
        for t in auth.stored()? {
            auth.cache.write().expect("token cache").insert(t.id.clone(), t);
        }
        Ok(auth)
    }

    fn stored(&self) -> Result<Vec<TokenRecord>, AuthError> {
        self.store.range(TOKENS)?.into_iter().map(|e| serde_json::from_slice(&e.value).map_err(|err| AuthError::Damaged { key: e.key.clone(), message: err.to_string() })).collect()
    }

    fn check_new(name: &str, role: Role, worker: Option<&str>) -> Result<(), AuthError> {
        let ok_name = |s: &str| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@:".contains(&b));
        if !ok_name(name) {
            return Err(AuthError::Invalid(format!("token name {name:?}: 1-64 characters of letters, digits and - _ . @ :")));
        }
        match (role, worker) {
            (Role::Worker, Some(w)) if ok_name(w) => Ok(()),
            (Role::Worker, _) => Err(AuthError::Invalid("a worker token needs the worker id it acts as (--worker-id: 1-64 characters of letters, digits and - _ . @ :)".into())),
            (_, Some(w)) if !w.is_empty() => Err(AuthError::Invalid(format!("only worker tokens name a worker (got worker id {w:?} for role {})", role.label()))),
            _ => Ok(()),
        }
    }

    fn record(name: &str, role: Role, worker: Option<&str>, by: &str) -> (String, TokenRecord) {
        let (token, id, secret_sha256) = new_secret();
        let rec = TokenRecord { id, name: name.into(), role, worker: worker.filter(|w| !w.is_empty()).map(String::from), secret_sha256, created_unix_ms: now_ms(), created_by: by.into(), revoked: false };
        (token, rec)
    }

    /// A new stored token: its record and the token itself (shown once).
    pub fn create(&self, name: &str, role: Role, worker: Option<&str>, by: &str) -> Result<(TokenRecord, String), AuthError> {
        Self::check_new(name, role, worker)?;
        let (token, rec) = Self::record(name, role, worker, by);
        let key = format!("{TOKENS}{}", rec.id);
        let done = self.store.txn(&[Compare::Exists(key.clone(), false)], &[Op::Put(key, serde_json::to_vec(&rec).expect("token record serialises"))], &[])?;
        if !done.succeeded {
            return Err(AuthError::Invalid("token id collision: try again".into()));
        }
        self.cache.write().expect("token cache").insert(rec.id.clone(), rec.clone());
        Ok((rec, token))
    }

    /// A token valid in this process only, never stored.
    pub fn ephemeral(&self, name: &str, role: Role, worker: Option<&str>) -> String {
        let (token, rec) = Self::record(name, role, worker, "this process");
        self.ephemeral.write().expect("ephemeral tokens").insert(rec.id.clone(), rec);
        token
    }

    /// Every stored token (revoked ones included), oldest first.
    pub fn list(&self) -> Result<Vec<TokenRecord>, AuthError> {
        let mut all = self.stored()?;
        all.sort_by_key(|t| (t.created_unix_ms, t.id.clone()));
        Ok(all)
    }

    /// Whether a usable (not revoked) admin token is stored.
    pub fn has_admin(&self) -> Result<bool, AuthError> {
        Ok(self.stored()?.iter().any(|t| t.role == Role::Admin && !t.revoked))
    }

    pub fn revoke(&self, id: &str) -> Result<TokenRecord, AuthError> {
        let key = format!("{TOKENS}{id}");
        let Some(e) = self.store.get(&key)? else {
            return Err(AuthError::Invalid(format!("no token {id:?} (`ablate token list` shows the ids)")));
        };
        let mut rec: TokenRecord = serde_json::from_slice(&e.value).map_err(|err| AuthError::Damaged { key: key.clone(), message: err.to_string() })?;
        rec.revoked = true;
        self.store.put(&key, &serde_json::to_vec(&rec).expect("token record serialises"))?;
        self.cache.write().expect("token cache").insert(rec.id.clone(), rec.clone());
        Ok(rec)
    }

    /// The identity behind a bearer token; UNAUTHENTICATED for a missing, malformed,
    /// unknown or revoked one (without saying which: a prober learns nothing).
    pub fn authenticate(&self, header: Option<&str>) -> Result<Identity, Status> {
        let Some(h) = header else { return Err(unauthenticated("this call needs a token: set ABLATE_TOKEN or ABLATE_TOKEN_FILE (docs/security.md)")) };
        let token = h.strip_prefix("Bearer ").unwrap_or(h).trim();
        let refused = || unauthenticated("the token is not valid (unknown, revoked or mistyped)");
        let Some((id, secret)) = split(token) else { return Err(refused()) };
        let rec = self.lookup(id).ok_or_else(refused)?;
        let hash = hex(&sha256(secret.as_bytes()));
        if rec.revoked || !ct_eq(hash.as_bytes(), rec.secret_sha256.as_bytes()) {
            return Err(refused());
        }
        Ok(Identity { token_id: rec.id, name: rec.name, role: rec.role, worker: rec.worker.map(WorkerId) })
    }

    fn lookup(&self, id: &str) -> Option<TokenRecord> {
        if let Some(r) = self.ephemeral.read().expect("ephemeral tokens").get(id) {
            return Some(r.clone());
        }
        if let Some(r) = self.cache.read().expect("token cache").get(id) {
            return Some(r.clone());
        }
        let e = self.store.get(&format!("{TOKENS}{id}")).ok()??;
        let rec: TokenRecord = serde_json::from_slice(&e.value).ok()?;
        self.cache.write().expect("token cache").insert(id.to_string(), rec.clone());
        Some(rec)
    }

    /// A tonic interceptor that authenticates every call; with `worker_certs` (mTLS), a
    /// worker's call must also come over a connection with a client certificate (which the
    /// TLS layer has checked against the cluster's CA).
    pub fn interceptor(self: &Arc<Self>, worker_certs: bool) -> impl Fn(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Clone + Send + Sync + 'static {
        let auth = self.clone();
        move |mut r: tonic::Request<()>| {
            let header = r.metadata().get("authorization").map(|v| v.to_str().unwrap_or(""));
            let who = auth.authenticate(header)?;
            if worker_certs && who.role == Role::Worker && r.peer_certs().is_none_or(|c| c.is_empty()) {
                return Err(unauthenticated("worker calls need a client certificate signed by the cluster's CA (this coordinator runs with --tls-client-ca; give the worker ABLATE_TLS_CERT and ABLATE_TLS_KEY)"));
            }
            r.extensions_mut().insert(who);
            Ok(r)
        }
    }

    /// The secret of a job's generation (32 bytes), the same on every coordinator of a store.
    pub fn job_secret(&self, job: &JobId, generation: Generation) -> Vec<u8> {
        hmac_sha256(&self.job_key, &[b"ablate job secret\0", job.as_str().as_bytes(), b"\0", &generation.0.to_le_bytes()]).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[test]
    fn tokens_authenticate_until_revoked_and_keep_no_secret() {
        let store: Arc<dyn Kv> = Arc::new(MemoryStore::default());
        let auth = Auth::open(store.clone()).unwrap();
        let (rec, token) = auth.create("ana", Role::Researcher, None, "test").unwrap();
        let who = auth.authenticate(Some(&format!("Bearer {token}"))).unwrap();
        assert_eq!((who.name.as_str(), who.role), ("ana", Role::Researcher));
        // the store holds the hash only
        let stored = String::from_utf8(store.get(&format!("{TOKENS}{}", rec.id)).unwrap().unwrap().value).unwrap();
        assert!(!stored.contains(token.rsplit('_').next().unwrap()));
        // a second coordinator on the same store knows it, and the job key is shared
        let other = Auth::open(store.clone()).unwrap();
        assert!(other.authenticate(Some(&token)).is_ok());
        assert_eq!(other.job_secret(&JobId("j1".into()), Generation(2)), auth.job_secret(&JobId("j1".into()), Generation(2)));
        assert_ne!(auth.job_secret(&JobId("j1".into()), Generation(2)), auth.job_secret(&JobId("j1".into()), Generation(3)));
        // a wrong secret with a real id, garbage, nothing
        let (id_part, _) = token.rsplit_once('_').unwrap();
        let forged = format!("{id_part}_{}", "0".repeat(64));
        for bad in [Some(forged.as_str()), Some("Bearer nonsense"), None] {
            assert_eq!(auth.authenticate(bad).unwrap_err().code(), tonic::Code::Unauthenticated);
        }
        auth.revoke(&rec.id).unwrap();
        assert_eq!(auth.authenticate(Some(&token)).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert!(auth.list().unwrap()[0].revoked);
    }

    #[test]
    fn roles_and_worker_binding() {
        let auth = Auth::open(Arc::new(MemoryStore::default())).unwrap();
        assert!(auth.create("w", Role::Worker, None, "t").is_err(), "a worker token names its worker");
        assert!(auth.create("v", Role::Viewer, Some("gpu-1"), "t").is_err());
        assert!(auth.create("bad name", Role::Viewer, None, "t").is_err());
        let t = auth.ephemeral("gpu-1", Role::Worker, Some("gpu-1"));
        let who = auth.authenticate(Some(&t)).unwrap();
        assert_eq!(who.worker(Some("gpu-1")).unwrap().as_str(), "gpu-1");
        assert_eq!(who.worker(Some("gpu-2")).unwrap_err().code(), tonic::Code::PermissionDenied);
        assert_eq!(who.require(READERS, "read jobs").unwrap_err().code(), tonic::Code::PermissionDenied);
        let v = auth.authenticate(Some(&auth.ephemeral("vic", Role::Viewer, None))).unwrap();
        let e = v.require(SUBMITTERS, "submit jobs").unwrap_err();
        assert!(e.message().contains("admin or researcher"), "{}", e.message());
        assert_eq!(v.worker(None).unwrap_err().code(), tonic::Code::PermissionDenied);
    }
}

//! A throwaway single-member etcd on loopback, for tests and local trials of the etcd store:
//! its own data folder under the system temp folder, free ports, killed and removed on drop.
//! The binary is `$ABLATE_ETCD_BIN` or `etcd` on the PATH (Debian: `apt-get install
//! etcd-server`).
//!
//! [`LocalEtcd::start_secure`] starts one the way a shared cluster runs etcd: TLS on the
//! client port with client certificates required (certificates from a throwaway CA), and
//! user auth on, with a user `ablate` whose role may read and write one namespace only.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct LocalEtcd {
    child: Option<Child>,
    dir: PathBuf,
    /// `127.0.0.1:port` of the client listener.
    pub endpoint: String,
    /// Started by [`LocalEtcd::start_secure`]: the query every spec carries.
    secure: Option<String>,
}

/// The user [`LocalEtcd::start_secure`] makes for the store, and its one namespace.
pub const SECURE_USER: &str = "ablate";

/// Whether tests must have etcd (`.ci/run` sets it after installing etcd-server), so a
/// missing binary fails them instead of skipping.
pub fn required() -> bool {
    std::env::var_os("ABLATE_REQUIRE_ETCD").is_some_and(|v| v == "1")
}

/// The etcd binary for test `test`, or None, said on stderr, where none is installed (the
/// test then skips); with [`required`], a missing binary fails the test instead.
pub fn binary_or_skip(test: &str) -> Option<PathBuf> {
    let bin = LocalEtcd::binary();
    if bin.is_none() {
        assert!(!required(), "{test}: ABLATE_REQUIRE_ETCD=1 but no etcd binary (apt-get install etcd-server, or set ABLATE_ETCD_BIN)");
        eprintln!("{test}: skipped, no etcd binary (apt-get install etcd-server, or set ABLATE_ETCD_BIN)");
    }
    bin
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl LocalEtcd {
    /// The etcd binary, if there is one.
    pub fn binary() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("ABLATE_ETCD_BIN") {
            return Some(PathBuf::from(p));
        }
        std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("etcd")).find(|p| p.is_file()))
    }

    /// Starts etcd (plaintext, no auth) and waits (up to 20 s) until it answers.
    pub fn start(bin: &Path) -> Result<Self, String> {
        Self::launch(bin, None)
    }

    /// Starts etcd with TLS (client certificates required) and user auth, `auth_token_ttl`
    /// seconds for its simple tokens (etcd's default is 300). [`LocalEtcd::spec`] then names
    /// the CA, a client certificate and user [`SECURE_USER`], whose role may read and write
    /// `namespace` (ends with '/') and nothing else.
    pub fn start_secure(bin: &Path, namespace: &str, auth_token_ttl: u32) -> Result<Self, String> {
        Self::launch(bin, Some((namespace, auth_token_ttl)))
    }

    fn launch(bin: &Path, secure: Option<(&str, u32)>) -> Result<Self, String> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ablate-etcd-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let (client, peer) = (free_port().map_err(|e| e.to_string())?, free_port().map_err(|e| e.to_string())?);
        let endpoint = format!("127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.join("etcd.log")).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(bin);
        let scheme = if secure.is_some() { "https" } else { "http" };
        if let Some((_, ttl)) = secure {
            let ca = crate::pki::Ca::new("ablate local etcd CA");
            let write = |name: &str, pem: &[u8]| std::fs::write(dir.join(name), pem).map_err(|e| format!("{name}: {e}"));
            let (server, server_key) = ca.leaf(&["localhost", "127.0.0.1"]);
            let (client, client_key) = ca.leaf(&["ablate-coordinator"]);
            write("ca.pem", &ca.pem())?;
            write("server.pem", &server)?;
            write("server.key", &server_key)?;
            write("client.pem", &client)?;
            write("client.key", &client_key)?;
            cmd.arg(format!("--cert-file={}", dir.join("server.pem").display()))
                .arg(format!("--key-file={}", dir.join("server.key").display()))
                .arg(format!("--trusted-ca-file={}", dir.join("ca.pem").display()))
                .arg("--client-cert-auth")
                .arg(format!("--auth-token-ttl={ttl}"));
        }
        let child = cmd
            .arg("--name=local")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={scheme}://{endpoint}"))
            .arg(format!("--advertise-client-urls={scheme}://{endpoint}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=local={peer_url}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let tls_query = secure.map(|_| {
            let p = |f: &str| dir.join(f).display().to_string();
            format!("ca={}&cert={}&key={}", p("ca.pem"), p("client.pem"), p("client.key"))
        });
        let mut me = Self { child: Some(child), dir, endpoint, secure: tls_query };
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if super::etcd::EtcdStore::open(&me.spec("probe/")).is_ok() {
                if let Some((namespace, _)) = secure {
                    me.enable_auth(namespace)?;
                }
                return Ok(me);
            }
            if let Some(status) = me.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let log = std::fs::read_to_string(me.dir.join("etcd.log")).unwrap_or_default();
                return Err(format!("etcd exited with {status}: {}", log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")));
            }
            if Instant::now() > until {
                return Err(format!("etcd on {} did not answer within 20 s", me.endpoint));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The store spec for `namespace` (ends with '/'); for a secure etcd with its TLS
    /// material and, once auth is on, user [`SECURE_USER`].
    pub fn spec(&self, namespace: &str) -> String {
        match &self.secure {
            Some(q) => format!("etcd://{}/{namespace}?{q}", self.endpoint),
            None => format!("etcd://{}/{namespace}", self.endpoint),
        }
    }

    /// The spec's query without the user: TLS only (refused once auth is on).
    pub fn tls_only_spec(&self, namespace: &str) -> String {
        let q = self.secure.as_deref().unwrap_or_default();
        let tls = q.split('&').filter(|p| ["ca=", "cert=", "key="].iter().any(|k| p.starts_with(k))).collect::<Vec<_>>().join("&");
        format!("etcd://{}/{namespace}?{tls}", self.endpoint)
    }

    /// Users root (etcd asks for it before auth goes on) and [`SECURE_USER`] with a role
    /// on `namespace` only, then AuthEnable; the spec names the user from then on.
    fn enable_auth(&mut self, namespace: &str) -> Result<(), String> {
        use ablate_proto::etcd::{self as pb, auth_client::AuthClient};
        let password = ablate_proto::auth::hex(&ablate_proto::auth::random_bytes::<16>());
        let pw_file = self.dir.join("password");
        std::fs::write(&pw_file, format!("{password}\n")).map_err(|e| e.to_string())?;
        let tls = ablate_proto::tls::ClientTls {
            ca_pem: std::fs::read(self.dir.join("ca.pem")).map_err(|e| e.to_string())?,
            identity: Some((std::fs::read(self.dir.join("client.pem")).map_err(|e| e.to_string())?, std::fs::read(self.dir.join("client.key")).map_err(|e| e.to_string())?)),
            domain: None,
        };
        let url = format!("https://{}", self.endpoint);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        let ns = namespace.as_bytes().to_vec();
        rt.block_on(async move {
            let channel = tonic::transport::Endpoint::from_shared(url).map_err(|e| e.to_string())?.tls_config(tls.config()).map_err(|e| e.to_string())?.connect().await.map_err(|e| format!("TLS connect: {e:?}"))?;
            let mut a = AuthClient::new(channel);
            let said = |what: &'static str| move |s: tonic::Status| format!("{what}: {}", s.message());
            for user in ["root", SECURE_USER] {
                a.user_add(pb::AuthUserAddRequest { name: user.into(), password: password.clone() }).await.map_err(said("user add"))?;
            }
            a.user_grant_role(pb::AuthUserGrantRoleRequest { user: "root".into(), role: "root".into() }).await.map_err(said("grant root"))?;
            a.role_add(pb::AuthRoleAddRequest { name: SECURE_USER.into() }).await.map_err(said("role add"))?;
            let perm = pb::Permission { perm_type: pb::permission::Type::Readwrite as i32, range_end: super::etcd::prefix_end(&ns), key: ns };
            a.role_grant_permission(pb::AuthRoleGrantPermissionRequest { name: SECURE_USER.into(), perm: Some(perm) }).await.map_err(said("grant permission"))?;
            a.user_grant_role(pb::AuthUserGrantRoleRequest { user: SECURE_USER.into(), role: SECURE_USER.into() }).await.map_err(said("grant role"))?;
            a.auth_enable(pb::AuthEnableRequest {}).await.map_err(said("auth enable"))?;
            Ok::<(), String>(())
        })?;
        let q = self.secure.take().unwrap_or_default();
        self.secure = Some(format!("{q}&user={SECURE_USER}&password-file={}", pw_file.display()));
        Ok(())
    }

    /// Kills etcd (SIGKILL) and waits for it; the data folder stays until drop.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

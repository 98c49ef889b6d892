//! A throwaway single-member etcd on loopback, for tests and local trials of the etcd store:
//! its own data folder under the system temp folder, free ports, killed and removed on drop.
//! The binary is `$ABLATE_ETCD_BIN` or `etcd` on the PATH (Debian: `apt-get install
//! etcd-server`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct LocalEtcd {
    child: Option<Child>,
    dir: PathBuf,
    /// `127.0.0.1:port` of the client listener.
    pub endpoint: String,
}

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

    /// Starts etcd and waits (up to 20 s) until it answers.
    pub fn start(bin: &Path) -> Result<Self, String> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ablate-etcd-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let (client, peer) = (free_port().map_err(|e| e.to_string())?, free_port().map_err(|e| e.to_string())?);
        let endpoint = format!("127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.join("etcd.log")).map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .arg("--name=local")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls=http://{endpoint}"))
            .arg(format!("--advertise-client-urls=http://{endpoint}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=local={peer_url}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut me = Self { child: Some(child), dir, endpoint };
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if super::etcd::EtcdStore::open(&me.spec("probe/")).is_ok() {
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

    /// The store spec for `namespace` (ends with '/').
    pub fn spec(&self, namespace: &str) -> String {
        format!("etcd://{}/{namespace}", self.endpoint)
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

//! A throwaway S3-compatible server for the tests of the object-store checkpoint store:
//! moto's server (PyPI `moto[server]`, installed by `.ci/run`) on a free loopback port, with
//! one bucket, stopped (by its pid) when dropped. `ABLATE_MOTO_BIN` names the binary when it
//! is not `moto_server` on the PATH; with `ABLATE_REQUIRE_S3=1` (CI) a missing one fails the
//! test instead of skipping it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct LocalS3 {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub bucket: String,
}

/// The credentials moto takes (any); the processes that talk to it need them in their
/// environment, as a real store's would.
pub const TEST_CREDENTIALS: [(&str, &str); 2] = [("AWS_ACCESS_KEY_ID", "ablate-test"), ("AWS_SECRET_ACCESS_KEY", "ablate-test")];

fn required() -> bool {
    std::env::var("ABLATE_REQUIRE_S3").is_ok_and(|v| v == "1")
}

impl LocalS3 {
    pub fn binary() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("ABLATE_MOTO_BIN") {
            return Some(PathBuf::from(p));
        }
        std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("moto_server")).find(|p| p.is_file()))
    }

    /// Starts a server with `bucket` for test `test`; None, said on stderr, where moto is not
    /// installed (the test then skips), unless `ABLATE_REQUIRE_S3=1`.
    pub fn start_or_skip(test: &str, bucket: &str) -> Option<Self> {
        let Some(bin) = Self::binary() else {
            assert!(!required(), "{test}: ABLATE_REQUIRE_S3=1 but no moto_server (pip install 'moto[server]', or set ABLATE_MOTO_BIN)");
            eprintln!("{test}: skipped, no moto_server (pip install 'moto[server]', or set ABLATE_MOTO_BIN)");
            return None;
        };
        Some(Self::start(&bin, bucket).unwrap_or_else(|e| panic!("{test}: {e}")))
    }

    /// Starts moto on a free loopback port and creates `bucket`; waits up to 30 s for it.
    pub fn start(bin: &std::path::Path, bucket: &str) -> Result<Self, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let child = Command::new(bin).args(["-H", "127.0.0.1", "-p", &port.to_string()]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let s3 = Self { child, endpoint: format!("http://127.0.0.1:{port}"), bucket: bucket.to_string() };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match http_put(port, &format!("/{bucket}")) {
                Ok(status) if status < 300 => return Ok(s3),
                Ok(status) => return Err(format!("moto refused to create bucket {bucket}: HTTP {status}")),
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
                Err(e) => return Err(format!("moto on port {port} did not answer within 30 s: {e}")),
            }
        }
    }

    /// The store spec of `prefix` in this server's bucket.
    pub fn spec(&self, prefix: &str) -> String {
        format!("s3://{}/{}?endpoint={}", self.bucket, prefix.trim_matches('/'), self.endpoint)
    }
}

/// A bodiless HTTP PUT on loopback; the response's status.
fn http_put(port: u16, path: &str) -> std::io::Result<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut head = String::new();
    s.read_to_string(&mut head)?;
    head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {head:.80}")))
}

impl Drop for LocalS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! What clients and servers share about access: the bearer-token header every call carries
//! ([`Bearer`], read from `ABLATE_TOKEN` or `ABLATE_TOKEN_FILE` by [`client_token`]), and
//! the small primitives the coordinator and the ring handshake build on: random bytes,
//! SHA-256, HMAC-SHA256 and a constant-time comparison.

use sha2::{Digest, Sha256};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The environment variable holding a token.
pub const TOKEN_ENV: &str = "ABLATE_TOKEN";
/// The environment variable naming a file that holds a token.
pub const TOKEN_FILE_ENV: &str = "ABLATE_TOKEN_FILE";
/// The environment variable a worker hands its rank processes the job secret in (hex).
pub const JOB_SECRET_ENV: &str = "ABLATE_JOB_SECRET";

/// Adds `authorization: Bearer <token>` to every call (nothing when there is no token: the
/// coordinator then answers UNAUTHENTICATED).
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// Refuses a token that cannot travel in a header (not visible ASCII).
    pub fn new(token: Option<&str>) -> Result<Self, String> {
        match token {
            None => Ok(Self(None)),
            Some(t) => {
                let t = t.trim();
                if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err("the token is empty or has characters other than visible ASCII (was the file read whole?)".into());
                }
                format!("Bearer {t}").parse().map(|v| Self(Some(v))).map_err(|e| format!("the token cannot go in a header: {e}"))
            }
        }
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

/// A channel whose calls carry the token.
pub type Authed = InterceptedService<Channel, Bearer>;

/// The token of this process: `ABLATE_TOKEN`, else the file `ABLATE_TOKEN_FILE` names, else
/// none. A named file that cannot be read is an error (naming it), not "no token".
pub fn client_token() -> Result<Option<String>, String> {
    if let Ok(t) = std::env::var(TOKEN_ENV) {
        if !t.trim().is_empty() {
            return Ok(Some(t.trim().to_string()));
        }
    }
    match std::env::var(TOKEN_FILE_ENV) {
        Ok(path) if !path.is_empty() => read_token_file(std::path::Path::new(&path)).map(Some),
        _ => Ok(None),
    }
}

/// A token file's first line.
pub fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("token file {}: {e}", path.display()))?;
    let t = text.lines().next().unwrap_or("").trim().to_string();
    if t.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    Ok(t)
}

/// Writes `token` to `path` readable by its owner only (0600), replacing what was there.
pub fn write_token_file(path: &std::path::Path, token: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    writeln!(f, "{token}")?;
    f.sync_all()
}

/// `n` bytes from the operating system's random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the operating system's random source failed");
    b
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// HMAC-SHA256 (RFC 2104) of the concatenated `parts` under `key`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&sha256(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Equal bytes, in a time that depends on the length only.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231, test cases 1 and 2
        let t1 = hmac_sha256(&[0x0b; 20], &[b"Hi There"]);
        assert_eq!(hex(&t1), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
        let t2 = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(hex(&t2), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        // case 6: a key longer than the block is hashed first
        let t6 = hmac_sha256(&[0xaa; 131], &[b"Test Using Larger Than Block-Size Key - Hash Key First"]);
        assert_eq!(hex(&t6), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    }

    #[test]
    fn bearer_refuses_what_a_header_cannot_carry() {
        assert!(Bearer::new(Some("abc def")).is_err());
        assert!(Bearer::new(Some("")).is_err());
        assert!(Bearer::new(Some("ablt_0123.abcd\n")).is_ok());
        assert_eq!(unhex(&hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
        assert_eq!(unhex("0g"), None);
        assert!(ct_eq(b"abc", b"abc") && !ct_eq(b"abc", b"abd") && !ct_eq(b"ab", b"abc"));
    }
}

//! How the etcd store reaches a secured etcd: TLS (server certificate checked against a CA,
//! optionally a client certificate for etcd's `--client-cert-auth`) and user/password auth.
//!
//! Both are named in the store spec's query, so every command that takes `--store` takes
//! them the same way, and no secret is ever on a command line (the password is read from a
//! file):
//!
//! ```text
//! etcd://10.0.0.5:2379,10.0.0.6:2379/ablate/?ca=/etc/ablate/etcd-ca.pem&cert=/etc/ablate/etcd-client.pem&key=/etc/ablate/etcd-client.key&user=ablate&password-file=/etc/ablate/etcd-password
//! ```
//!
//! With `ca`, every member is spoken to over `https`. With `user`, the store authenticates
//! (etcd's `Authenticate`) at open and sends the token as the `token` metadata of every
//! request; etcd's simple tokens expire (5 minutes idle by default), so a request refused
//! with `UNAUTHENTICATED` authenticates again and is sent once more.

use std::sync::{Arc, RwLock};

use ablate_proto::etcd::{self as pb, auth_client::AuthClient};
use ablate_proto::tls::ClientTls;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::StoreError;

/// The query keys a spec may carry.
pub const KEYS: [&str; 6] = ["ca", "cert", "key", "domain", "user", "password-file"];

/// The security part of a spec, as written (paths, not contents).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessSpec {
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    /// The name to check the members' certificates against, when the endpoint's host is not
    /// in them.
    pub domain: Option<String>,
    pub user: Option<String>,
    pub password_file: Option<String>,
}

impl AccessSpec {
    /// Parses `k=v&k=v`; unknown keys, repeats and half-given pairs are errors naming them.
    pub fn parse(query: &str) -> Result<Self, String> {
        let mut s = Self::default();
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| format!("{part:?} is not key=value"))?;
            if v.is_empty() {
                return Err(format!("{k} has no value"));
            }
            let slot = match k {
                "ca" => &mut s.ca,
                "cert" => &mut s.cert,
                "key" => &mut s.key,
                "domain" => &mut s.domain,
                "user" => &mut s.user,
                "password-file" => &mut s.password_file,
                _ => return Err(format!("unknown option {k:?} (expected one of {})", KEYS.join(", "))),
            };
            if slot.replace(v.to_string()).is_some() {
                return Err(format!("{k} is given twice"));
            }
        }
        if s.cert.is_some() != s.key.is_some() {
            return Err("cert and key go together: give both or neither".into());
        }
        if (s.cert.is_some() || s.domain.is_some()) && s.ca.is_none() {
            return Err("cert, key and domain need ca (the CA that signed the etcd members' certificates)".into());
        }
        if s.user.is_some() != s.password_file.is_some() {
            return Err("user and password-file go together: give both or neither".into());
        }
        Ok(s)
    }

    pub fn tls(&self) -> bool {
        self.ca.is_some()
    }

    /// Reads the files: the TLS material and the user's credentials.
    pub fn load(&self) -> Result<(Option<ClientTls>, Option<Credentials>), String> {
        let read = |what: &str, p: &str| std::fs::read(p).map_err(|e| format!("cannot read the {what} {p}: {e}"));
        let tls = match &self.ca {
            None => None,
            Some(ca) => {
                let identity = match (&self.cert, &self.key) {
                    (Some(c), Some(k)) => Some((read("client certificate", c)?, read("client key", k)?)),
                    _ => None,
                };
                Some(ClientTls { ca_pem: read("CA certificate", ca)?, identity, domain: self.domain.clone() })
            }
        };
        let creds = match (&self.user, &self.password_file) {
            (Some(name), Some(file)) => {
                let password = String::from_utf8(read("password file", file)?).map_err(|_| format!("the password file {file} is not UTF-8"))?;
                let password = password.trim_end_matches(['\n', '\r']).to_string();
                if password.is_empty() {
                    return Err(format!("the password file {file} is empty"));
                }
                Some(Credentials { name: name.clone(), password })
            }
            _ => None,
        };
        Ok((tls, creds))
    }
}

/// An etcd user and its password.
pub struct Credentials {
    pub name: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <password>)", self.name)
    }
}

/// The current auth token, added as `token` metadata to every request (nothing while
/// there is none).
#[derive(Clone, Default)]
pub struct Token(Arc<RwLock<Option<MetadataValue<Ascii>>>>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = self.0.read().expect("token lock").clone() {
            req.metadata_mut().insert("token", t);
        }
        Ok(req)
    }
}

impl Token {
    /// Forgets the token (it expired): the next call authenticates again.
    pub fn clear(&self) {
        *self.0.write().expect("token lock") = None;
    }
}

/// A member's channel with the token interceptor in front.
pub type Ch = InterceptedService<Channel, Token>;

/// The auth state a store shares between its calls.
#[derive(Clone, Default)]
pub struct Auth {
    creds: Option<Arc<Credentials>>,
    pub token: Token,
    /// Tokens fetched so far.
    fetched: Arc<std::sync::atomic::AtomicUsize>,
}

impl Auth {
    pub fn new(creds: Option<Credentials>) -> Self {
        Self { creds: creds.map(Arc::new), token: Token::default(), fetched: Arc::default() }
    }

    /// Whether requests are authenticated by user/password (and so may be retried after a
    /// fresh `Authenticate`).
    pub fn enabled(&self) -> bool {
        self.creds.is_some()
    }

    /// Whether a token is still to be fetched.
    pub fn needs_token(&self) -> bool {
        self.enabled() && self.token.0.read().expect("token lock").is_none()
    }

    pub fn wrap(&self, channel: Channel) -> Ch {
        InterceptedService::new(channel, self.token.clone())
    }

    /// `Authenticate` on `channel`; keeps the token for every later request.
    pub async fn authenticate(&self, channel: Channel) -> Result<(), tonic::Status> {
        let Some(c) = &self.creds else { return Ok(()) };
        let r = AuthClient::new(channel).authenticate(pb::AuthenticateRequest { name: c.name.clone(), password: c.password.clone() }).await?;
        let token = r.into_inner().token;
        let value = MetadataValue::try_from(token.as_str()).map_err(|_| tonic::Status::internal("etcd answered Authenticate with a token that is not ASCII"))?;
        *self.token.0.write().expect("token lock") = Some(value);
        self.fetched.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// How many tokens were fetched (the first, then one per expiry).
    pub fn tokens_fetched(&self) -> usize {
        self.fetched.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Splits `etcd://hosts/ns/?query` into (`etcd://hosts/ns/`, access).
pub fn split(spec: &str) -> Result<(&str, AccessSpec), StoreError> {
    let (base, query) = spec.split_once('?').unwrap_or((spec, ""));
    let access = AccessSpec::parse(query).map_err(|message| StoreError::Open { path: spec.to_string(), message })?;
    Ok((base, access))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_or_name_what_is_wrong() {
        let a = AccessSpec::parse("ca=/c.pem&cert=/x.pem&key=/x.key&user=ablate&password-file=/pw").unwrap();
        assert_eq!((a.ca.as_deref(), a.user.as_deref(), a.tls()), (Some("/c.pem"), Some("ablate"), true));
        assert_eq!(AccessSpec::parse("").unwrap(), AccessSpec::default());
        for (bad, says) in [
            ("ca=/a&ca=/b", "ca is given twice"),
            ("cert=/x.pem&ca=/c", "cert and key go together"),
            ("cert=/x&key=/y", "need ca"),
            ("user=ablate", "user and password-file go together"),
            ("pasword-file=/pw", "unknown option \"pasword-file\""),
            ("ca", "not key=value"),
            ("ca=", "ca has no value"),
        ] {
            let e = AccessSpec::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn missing_files_and_empty_passwords_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = AccessSpec::parse("ca=/nonexistent/ca.pem").unwrap().load().err().expect("refused");
        assert!(e.contains("CA certificate /nonexistent/ca.pem"), "{e}");
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "\n").unwrap();
        let e = AccessSpec::parse(&format!("user=u&password-file={}", pw.display())).unwrap().load().err().expect("refused");
        assert!(e.contains("is empty"), "{e}");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let (tls, creds) = AccessSpec::parse(&format!("user=u&password-file={}", pw.display())).unwrap().load().unwrap();
        assert!(tls.is_none());
        let c = creds.unwrap();
        assert_eq!((c.name.as_str(), c.password.as_str()), ("u", "s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"), "the password is never printed");
    }
}

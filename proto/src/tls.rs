//! The client side of TLS on every gRPC hop (CLI, workers, ranks): an `https://` coordinator
//! URL is reached over TLS, trusting the CA in `ABLATE_TLS_CA`; `ABLATE_TLS_CERT` and
//! `ABLATE_TLS_KEY` add a client certificate (what a coordinator started with
//! `--tls-client-ca` asks of its workers). Ranks inherit their worker's environment.

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

pub const CA_ENV: &str = "ABLATE_TLS_CA";
pub const CERT_ENV: &str = "ABLATE_TLS_CERT";
pub const KEY_ENV: &str = "ABLATE_TLS_KEY";
/// The server name to check the coordinator's certificate against, when the URL's host is
/// not in it.
pub const DOMAIN_ENV: &str = "ABLATE_TLS_DOMAIN";

/// What a client trusts and presents.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// PEM: the CA that signed the coordinator's certificate.
    pub ca_pem: Vec<u8>,
    /// PEM certificate and key of this client (mTLS), if any.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    pub domain: Option<String>,
}

fn read(env: &str, path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{env}={path}: {e}"))
}

impl ClientTls {
    /// From the environment; None when `ABLATE_TLS_CA` is not set.
    pub fn from_env() -> Result<Option<Self>, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let Some(ca) = var(CA_ENV) else { return Ok(None) };
        let identity = match (var(CERT_ENV), var(KEY_ENV)) {
            (Some(c), Some(k)) => Some((read(CERT_ENV, &c)?, read(KEY_ENV, &k)?)),
            (None, None) => None,
            _ => return Err(format!("{CERT_ENV} and {KEY_ENV} go together: set both or neither")),
        };
        Ok(Some(Self { ca_pem: read(CA_ENV, &ca)?, identity, domain: var(DOMAIN_ENV) }))
    }

    pub fn config(&self) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        if let Some(d) = &self.domain {
            c = c.domain_name(d.clone());
        }
        c
    }
}

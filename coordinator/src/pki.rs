//! A throwaway certificate authority for tests and local trials of TLS: a CA and leaf
//! certificates it signs, all PEM. Operators bring their own PKI (docs/security.md).

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    /// A self-signed CA with common name `name`.
    pub fn new(name: &str) -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("no names to check");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        Self { issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().expect("a key")).expect("a CA certificate") }
    }

    /// The CA's certificate (PEM).
    pub fn pem(&self) -> Vec<u8> {
        self.issuer.pem().into_bytes()
    }

    /// A leaf certificate for `names` (DNS names or IP addresses, the first also its common
    /// name) and its key, PEM.
    pub fn leaf(&self, names: &[&str]) -> (Vec<u8>, Vec<u8>) {
        let key = KeyPair::generate().expect("a key");
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("valid names");
        if let Some(first) = names.first() {
            p.distinguished_name.push(rcgen::DnType::CommonName, *first);
        }
        let cert = p.signed_by(&key, &self.issuer).expect("a signed certificate");
        (cert.pem().into_bytes(), key.serialize_pem().into_bytes())
    }
}

//! What the secrets service says about a Secret: verdicts, never key material.
//!
//! The resolver decides routes from these alone; only the secrets service and the
//! renderers ever see the bytes of a CA bundle or a client key.

use crate::names::SecretRef;
use serde::{Deserialize, Serialize};

/// The verdict on one Secret, for both uses it can have.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretVerdict {
    pub secret: SecretRef,
    /// As a CA bundle (`ca.crt`): its summary, or why it is not valid.
    pub ca: Result<CaBundleInfo, String>,
    /// As a certificate and its key (`tls.crt` + `tls.key` of a kubernetes.io/tls
    /// Secret): the upstream client certificate, or a serving certificate (SPEC section 8).
    pub key_pair: Result<KeyPairInfo, String>,
}

/// A valid CA bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaBundleInfo {
    /// SHA-256 of the DER certificates, concatenated in order (hex). Changes when the
    /// bundle's content changes; renderers name CA files by it.
    pub sha256: String,
    pub certificates: Vec<CertificateInfo>,
    /// Some certificates expired or expire soon (SPEC section 4).
    pub warnings: Vec<String>,
}

/// A valid certificate chain and the one key that matches its leaf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPairInfo {
    /// SHA-256 of the DER chain (hex); the key is not hashed into anything published.
    pub sha256: String,
    pub leaf: CertificateInfo,
    /// The names the leaf is for, lowercase: its DNS SANs, or its CN when it has none
    /// (what a serving certificate is checked against, `covers`).
    pub dns_names: Vec<String>,
    pub warnings: Vec<String>,
}

impl KeyPairInfo {
    /// Whether the leaf covers `host` (RFC 6125 section 6.4.3): a name equal to it,
    /// ignoring case, or `*.<suffix>` with exactly one label in place of the `*` (no
    /// partial wildcards such as `w*.example.com`, which browsers refuse too). A wildcard
    /// host (`*.example.com`) needs the same wildcard.
    pub fn covers(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.dns_names.iter().any(|name| name_covers(name, &host))
    }
}

/// `KeyPairInfo::covers` for one name; `host` is lowercase.
pub fn name_covers(name: &str, host: &str) -> bool {
    if name.eq_ignore_ascii_case(host) {
        return true;
    }
    match (name.strip_prefix("*."), host.split_once('.')) {
        (Some(suffix), Some((label, rest))) => {
            suffix.contains('.') && label != "*" && !label.is_empty() && rest.eq_ignore_ascii_case(suffix)
        }
        _ => false,
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateInfo {
    pub subject: String,
    /// SHA-256 fingerprint of the DER certificate (hex).
    pub sha256: String,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
}

/// Validated trust material of one Secret, for the renderers only (never the resolver).
/// The hashes are the verdict's, so a renderer can check that the material it holds is
/// the very content the model was resolved against. `Debug` prints no PEM.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustMaterial {
    pub secret: SecretRef,
    /// The CA bundle, re-encoded from the validated certificates only.
    pub ca: Option<Pem>,
    /// The certificate chain and its key (a client or a serving certificate).
    pub key_pair: Option<KeyPairPem>,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pem {
    pub sha256: String,
    pub pem: String,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPairPem {
    pub sha256: String,
    pub chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for TrustMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustMaterial")
            .field("secret", &self.secret)
            .field("ca_sha256", &self.ca.as_ref().map(|c| &c.sha256))
            .field("key_pair_sha256", &self.key_pair.as_ref().map(|c| &c.sha256))
            .finish()
    }
}

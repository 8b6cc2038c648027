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
    /// As an upstream client certificate (`tls.crt` + `tls.key`).
    pub client_cert: Result<ClientCertInfo, String>,
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

/// A valid client certificate and key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCertInfo {
    /// SHA-256 of the DER chain (hex); the key is not hashed into anything published.
    pub sha256: String,
    pub leaf: CertificateInfo,
    pub warnings: Vec<String>,
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
    /// The client certificate chain and its key.
    pub client_cert: Option<ClientPem>,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pem {
    pub sha256: String,
    pub pem: String,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientPem {
    pub sha256: String,
    pub chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for TrustMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustMaterial")
            .field("secret", &self.secret)
            .field("ca_sha256", &self.ca.as_ref().map(|c| &c.sha256))
            .field("client_cert_sha256", &self.client_cert.as_ref().map(|c| &c.sha256))
            .finish()
    }
}

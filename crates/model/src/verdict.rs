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

//! Validation of Secrets (SPEC section 4): CA bundles under `ca.crt`, and the upstream
//! client certificate under `tls.crt` / `tls.key`.
//!
//! Pure functions: bytes and the current time in, a verdict (for the resolver, no key
//! material) and validated material (for the renderers) out. Errors carry the exact reason
//! a status shows. Nothing here logs or formats secret contents.

pub mod pem;

use portico_model::{
    CaBundleInfo, CertificateInfo, KeyPairInfo, KeyPairPem, Pem, Secret, SecretVerdict, TrustMaterial,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Certificates expiring within this many seconds get a warning.
pub const EXPIRY_WARNING_SECONDS: i64 = 14 * 24 * 3600;

pub const CA_KEY: &str = "ca.crt";
pub const CERT_KEY: &str = "tls.crt";
pub const PRIVATE_KEY_KEY: &str = "tls.key";
pub const TYPE_OPAQUE: &str = "Opaque";
pub const TYPE_TLS: &str = "kubernetes.io/tls";

/// Why a CA bundle is not valid. The texts are what statuses show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaBundleError {
    #[error("secret type {0:?} is not Opaque or kubernetes.io/tls")]
    WrongSecretType(String),
    #[error("empty \"ca.crt\" key")]
    Empty,
    #[error("failed to locate certificate")]
    NoCertificate,
    #[error("unexpected block type '{0}'")]
    UnexpectedBlock(String),
    #[error("{0}")]
    Pem(#[from] pem::PemError),
    #[error("certificate {0}: invalid DER")]
    InvalidDer(usize),
    #[error("no certificate is currently valid: {0}")]
    NoneCurrentlyValid(String),
}

/// Why a client certificate is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientCertError {
    #[error("secret type {0:?} is not kubernetes.io/tls")]
    WrongSecretType(String),
    #[error("empty {0:?} key")]
    Empty(&'static str),
    #[error("failed to locate certificate in \"tls.crt\"")]
    NoCertificate,
    #[error("\"tls.crt\": unexpected block type '{0}'")]
    UnexpectedCertBlock(String),
    #[error("\"{key}\": {error}")]
    Pem { key: &'static str, error: pem::PemError },
    #[error("certificate {0}: invalid DER")]
    InvalidDer(usize),
    #[error("the leaf certificate has neither a CN nor a DNS or IP SAN")]
    NoName,
    #[error("the leaf certificate {0}")]
    LeafNotCurrentlyValid(String),
    #[error("\"tls.key\" holds no private key")]
    NoKey,
    #[error("\"tls.key\" holds {0} private keys; exactly one is required")]
    SeveralKeys(usize),
    #[error("\"tls.key\": unsupported block type '{0}' (encrypted keys are not supported)")]
    UnsupportedKey(String),
    #[error("\"tls.key\": the private key cannot be loaded (unsupported or malformed)")]
    BadKey,
    #[error("the private key does not match the leaf certificate")]
    KeyMismatch,
}

/// Validate a Secret for both of its possible uses.
pub fn validate_secret(secret: &Secret, now: i64) -> (SecretVerdict, TrustMaterial) {
    let secret_ref = secret.reference();
    let ca = validate_ca_secret(secret, now);
    let client = validate_client_secret(secret, now);
    let material = TrustMaterial {
        secret: secret_ref.clone(),
        ca: ca.as_ref().ok().map(|(info, pem)| Pem { sha256: info.sha256.clone(), pem: pem.clone() }),
        key_pair: client.as_ref().ok().map(|(info, chain, key)| KeyPairPem {
            sha256: info.sha256.clone(),
            chain_pem: chain.clone(),
            key_pem: key.clone(),
        }),
    };
    let verdict = SecretVerdict {
        secret: secret_ref,
        ca: ca.map(|(info, _)| info).map_err(|e| e.to_string()),
        key_pair: client.map(|(info, _, _)| info).map_err(|e| e.to_string()),
    };
    (verdict, material)
}

fn validate_ca_secret(secret: &Secret, now: i64) -> Result<(CaBundleInfo, String), CaBundleError> {
    if !matches!(secret.secret_type.as_str(), "" | TYPE_OPAQUE | TYPE_TLS) {
        return Err(CaBundleError::WrongSecretType(secret.secret_type.clone()));
    }
    let bytes = secret.data.get(CA_KEY).map(Vec::as_slice).unwrap_or_default();
    validate_ca_bundle(bytes, now)
}

/// Validate a CA bundle (the value of `ca.crt`). Returns its summary and the bundle
/// re-encoded from the certificates alone.
pub fn validate_ca_bundle(bytes: &[u8], now: i64) -> Result<(CaBundleInfo, String), CaBundleError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(CaBundleError::Empty);
    }
    let blocks = pem::blocks(bytes)?;
    if blocks.is_empty() {
        return Err(CaBundleError::NoCertificate);
    }
    if let Some(other) = blocks.iter().find(|b| b.label != "CERTIFICATE") {
        return Err(CaBundleError::UnexpectedBlock(other.label.clone()));
    }
    let mut certificates = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        certificates.push(certificate_info(&block.der).ok_or(CaBundleError::InvalidDer(i + 1))?);
    }
    let mut warnings = Vec::new();
    let mut problems = Vec::new();
    for (i, cert) in certificates.iter().enumerate() {
        let n = i + 1;
        match validity_problem(cert, now) {
            Some(problem) => problems.push(format!("certificate {n} ({}) {problem}", cert.subject)),
            None if cert.not_after - now <= EXPIRY_WARNING_SECONDS => warnings.push(format!(
                "certificate {n} ({}) expires at {}, within 14 days",
                cert.subject,
                rfc3339(cert.not_after)
            )),
            None => {}
        }
    }
    if problems.len() == certificates.len() {
        return Err(CaBundleError::NoneCurrentlyValid(problems.join("; ")));
    }
    warnings.splice(0..0, problems);
    let mut all_der = Sha256::new();
    let mut normalized = String::new();
    for block in &blocks {
        all_der.update(&block.der);
        normalized.push_str(&pem::encode("CERTIFICATE", &block.der));
    }
    let info = CaBundleInfo { sha256: portico_model::hex(&all_der.finalize()), certificates, warnings };
    Ok((info, normalized))
}

fn validate_client_secret(secret: &Secret, now: i64) -> Result<(KeyPairInfo, String, String), ClientCertError> {
    if secret.secret_type != TYPE_TLS {
        return Err(ClientCertError::WrongSecretType(secret.secret_type.clone()));
    }
    let get = |key: &'static str| -> Result<&[u8], ClientCertError> {
        match secret.data.get(key) {
            Some(v) if !v.iter().all(u8::is_ascii_whitespace) => Ok(v),
            _ => Err(ClientCertError::Empty(key)),
        }
    };
    validate_client_cert(get(CERT_KEY)?, get(PRIVATE_KEY_KEY)?, now)
}

/// Validate a client certificate chain and its private key. Returns the summary, the chain
/// PEM and the key PEM, re-encoded from the validated blocks.
pub fn validate_client_cert(
    chain: &[u8],
    key: &[u8],
    now: i64,
) -> Result<(KeyPairInfo, String, String), ClientCertError> {
    let cert_blocks = pem::blocks(chain).map_err(|error| ClientCertError::Pem { key: CERT_KEY, error })?;
    if cert_blocks.is_empty() {
        return Err(ClientCertError::NoCertificate);
    }
    if let Some(other) = cert_blocks.iter().find(|b| b.label != "CERTIFICATE") {
        return Err(ClientCertError::UnexpectedCertBlock(other.label.clone()));
    }
    for (i, block) in cert_blocks.iter().enumerate() {
        certificate_info(&block.der).ok_or(ClientCertError::InvalidDer(i + 1))?;
    }
    let leaf_der = &cert_blocks[0].der;
    let (_, leaf_cert) = X509Certificate::from_der(leaf_der).map_err(|_| ClientCertError::InvalidDer(1))?;
    let has_cn = leaf_cert.subject().iter_common_name().next().is_some();
    let has_san = leaf_cert.subject_alternative_name().ok().flatten().is_some_and(|san| {
        san.value.general_names.iter().any(|n| {
            matches!(
                n,
                x509_parser::extensions::GeneralName::DNSName(_) | x509_parser::extensions::GeneralName::IPAddress(_)
            )
        })
    });
    if !has_cn && !has_san {
        return Err(ClientCertError::NoName);
    }
    let leaf = certificate_info(leaf_der).ok_or(ClientCertError::InvalidDer(1))?;
    if let Some(problem) = validity_problem(&leaf, now) {
        return Err(ClientCertError::LeafNotCurrentlyValid(problem));
    }

    let key_blocks = pem::blocks(key).map_err(|error| ClientCertError::Pem { key: PRIVATE_KEY_KEY, error })?;
    let keys: Vec<&pem::Block> = key_blocks.iter().filter(|b| b.label.ends_with("PRIVATE KEY")).collect();
    let key_block = match keys.as_slice() {
        [] => return Err(ClientCertError::NoKey),
        [one] => *one,
        several => return Err(ClientCertError::SeveralKeys(several.len())),
    };
    let private_key: PrivateKeyDer<'static> = match key_block.label.as_str() {
        "PRIVATE KEY" => PrivatePkcs8KeyDer::from(key_block.der.clone()).into(),
        "RSA PRIVATE KEY" => PrivatePkcs1KeyDer::from(key_block.der.clone()).into(),
        "EC PRIVATE KEY" => PrivateSec1KeyDer::from(key_block.der.clone()).into(),
        other => return Err(ClientCertError::UnsupportedKey(other.to_owned())),
    };
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&private_key).map_err(|_| ClientCertError::BadKey)?;
    let chain_der: Vec<CertificateDer<'static>> =
        cert_blocks.iter().map(|b| CertificateDer::from(b.der.clone())).collect();
    // Unknown consistency (a key type that cannot report its public key) fails closed.
    rustls::sign::CertifiedKey::new(chain_der, signing_key).keys_match().map_err(|_| ClientCertError::KeyMismatch)?;

    let mut warnings = Vec::new();
    if leaf.not_after - now <= EXPIRY_WARNING_SECONDS {
        warnings.push(format!(
            "the certificate ({}) expires at {}, within 14 days",
            leaf.subject,
            rfc3339(leaf.not_after)
        ));
    }
    let mut all_der = Sha256::new();
    let mut chain_pem = String::new();
    for block in &cert_blocks {
        all_der.update(&block.der);
        chain_pem.push_str(&pem::encode("CERTIFICATE", &block.der));
    }
    let key_pem = pem::encode(&key_block.label, &key_block.der);
    let info = KeyPairInfo {
        sha256: portico_model::hex(&all_der.finalize()),
        leaf,
        dns_names: leaf_names(leaf_der),
        warnings,
    };
    Ok((info, chain_pem, key_pem))
}

/// Why a serving certificate (SPEC section 8: HTTPS at the edge) cannot serve its hosts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServingCertError {
    /// What a client certificate must be, a serving one must be too: a chain, one key that
    /// matches its leaf, currently valid.
    #[error("{0}")]
    Pair(ClientCertError),
    #[error("certificate does not cover host {0:?}")]
    DoesNotCover(String),
}

/// Validate a serving certificate (`tls.crt`, `tls.key` of a kubernetes.io/tls Secret) for
/// `hosts`: the pair is judged as a client certificate is (section 4), and the leaf must
/// cover every host (RFC 6125: a DNS SAN equal to it, ignoring case, or `*.<suffix>` with
/// exactly one label in place of the `*`; the CN only when the leaf has no DNS SAN). A
/// wildcard host (`*.example.com`) needs the same wildcard. The service publishes the
/// pair's verdict with the leaf's names; the resolver checks each host against them
/// (`KeyPairInfo::covers`), the same rule.
pub fn validate_serving_cert(
    chain: &[u8],
    key: &[u8],
    hosts: &[&str],
    now: i64,
) -> Result<(KeyPairInfo, String, String), ServingCertError> {
    let validated = validate_client_cert(chain, key, now).map_err(ServingCertError::Pair)?;
    if let Some(host) = hosts.iter().find(|host| !validated.0.covers(host)) {
        return Err(ServingCertError::DoesNotCover((*host).to_owned()));
    }
    Ok(validated)
}

/// The names a leaf certificate is for: its DNS SANs, or its CN when it has none.
fn leaf_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else { return Vec::new() };
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(name) => Some(name.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if !sans.is_empty() {
        return sans;
    }
    cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_ascii_lowercase).collect()
}

/// Parse one DER certificate into its summary; `None` if it is not valid X.509 DER (or has
/// trailing bytes).
fn certificate_info(der: &[u8]) -> Option<CertificateInfo> {
    let (rest, cert) = X509Certificate::from_der(der).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let validity = cert.validity();
    Some(CertificateInfo {
        subject: cert.subject().to_string(),
        sha256: portico_model::hex(&Sha256::digest(der)),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
    })
}

fn validity_problem(cert: &CertificateInfo, now: i64) -> Option<String> {
    if now > cert.not_after {
        Some(format!("expired at {}", rfc3339(cert.not_after)))
    } else if now < cert.not_before {
        Some(format!("is not valid before {}", rfc3339(cert.not_before)))
    } else {
        None
    }
}

/// Seconds since the epoch as RFC 3339 UTC.
pub fn rfc3339(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{seconds}s since the epoch"))
}

#[cfg(feature = "service")]
pub mod service;

//! A certificate per Envoy pod for ADS's mutual TLS, through the Kubernetes certificates
//! API. renderer-envoy serves an ADS stream only to the node its client certificate names
//! (`<pod>.envoy.portico`), so a shared certificate would let any Envoy pod claim any
//! node id. Instead:
//!
//! - Each Envoy pod's init container (`portico envoy-certificate`, [`request_certificate`])
//!   makes a key that never leaves the pod and asks for a certificate with a
//!   CertificateSigningRequest of signer [`SIGNER_NAME`], using the pod's own bound service
//!   account token.
//! - The active watcher replica ([`run_signer`]) judges each pending request
//!   ([`judge`]): it must come from the Envoy pods' service account, carry the pod name
//!   the API server took from that bound token (`authentication.kubernetes.io/pod-name`,
//!   Kubernetes 1.30 and newer), and ask for exactly that pod's name. It approves and signs
//!   ([`sign`]) with the ADS CA from a Secret only it may read, or denies with the reason.
//!
//! The certificate issued never carries what the request asked for beyond its public key:
//! the name, the usage (client auth) and the validity are the signer's.

use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec};
#[cfg(feature = "service")]
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
#[cfg(feature = "service")]
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use std::path::Path;
use std::time::Duration;

/// The signer name Envoy pods' requests carry.
pub const SIGNER_NAME: &str = "portico.dev/envoy-ads";
/// The key of the pod name the API server records for a request made with a bound token.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// The node id, and the only name in the certificate, of Envoy pod `pod`.
pub fn node_of(pod: &str) -> String {
    format!("{pod}.envoy.portico")
}

#[derive(Clone, Debug)]
pub struct SignerConfig {
    /// The namespace of the Envoy pods, of their service account and of the CA Secret.
    pub namespace: String,
    /// The Envoy pods' service account.
    pub service_account: String,
    /// The Secret holding the ADS CA: `ca.crt` and `ca.key`.
    pub ca_secret: String,
    /// How long an issued certificate is valid (a request may ask for less).
    pub validity: Duration,
    /// How often pending requests are looked for.
    pub every: Duration,
}

/// What the signer does with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Approve it and issue a certificate naming this node, valid this long.
    Sign { node: String, validity: Duration },
    /// Deny it, for this reason (written into the request's `Denied` condition).
    Deny(String),
    /// Not this signer's, or already decided.
    Skip,
}

fn condition(csr: &CertificateSigningRequest, kind: &str) -> bool {
    csr.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == kind))
}

/// Judge a request (no I/O): only a pod of the Envoy service account, asking with its own
/// bound token for exactly its own name, for client authentication, gets a certificate.
pub fn judge(csr: &CertificateSigningRequest, config: &SignerConfig) -> Verdict {
    let spec = &csr.spec;
    if spec.signer_name != SIGNER_NAME
        || condition(csr, "Denied")
        || condition(csr, "Failed")
        || csr.status.as_ref().is_some_and(|s| s.certificate.is_some())
    {
        return Verdict::Skip;
    }
    let expected = format!("system:serviceaccount:{}:{}", config.namespace, config.service_account);
    let username = spec.username.clone().unwrap_or_default();
    if username != expected {
        return Verdict::Deny(format!(
            "requested by {username:?}; only the Envoy pods' service account {expected} may ask {SIGNER_NAME} for a certificate"
        ));
    }
    let pods = spec.extra.as_ref().and_then(|e| e.get(POD_NAME_EXTRA)).cloned().unwrap_or_default();
    let [pod] = pods.as_slice() else {
        return Verdict::Deny(format!(
            "the request does not name exactly one pod in {POD_NAME_EXTRA} ({pods:?}): make it with the pod's own bound service account token (Kubernetes 1.30 or newer)"
        ));
    };
    let node = node_of(pod);
    let pem = String::from_utf8_lossy(&spec.request.0);
    let requested = match rcgen::CertificateSigningRequestParams::from_pem(&pem) {
        Ok(requested) => requested,
        Err(e) => return Verdict::Deny(format!("the request is not a valid PKCS#10 certificate request: {e}")),
    };
    let names: Vec<String> = requested
        .params
        .subject_alt_names
        .iter()
        .map(|san| match san {
            rcgen::SanType::DnsName(name) => name.as_str().to_owned(),
            other => format!("{other:?}"),
        })
        .collect();
    if names != [node.clone()] {
        return Verdict::Deny(format!("the request asks for the names {names:?}; pod {pod:?} may have only {node:?}"));
    }
    if !matches!(requested.params.is_ca, rcgen::IsCa::NoCa | rcgen::IsCa::ExplicitNoCa) {
        return Verdict::Deny("the request asks for a CA certificate".into());
    }
    let usages = spec.usages.clone().unwrap_or_default();
    let allowed = ["client auth", "digital signature", "key encipherment"];
    if !usages.iter().any(|u| u == "client auth") || usages.iter().any(|u| !allowed.contains(&u.as_str())) {
        return Verdict::Deny(format!(
            "the request asks for the usages {usages:?}; an Envoy's ADS certificate is for client auth only"
        ));
    }
    let asked = spec.expiration_seconds.map(|s| Duration::from_secs(s.max(600) as u64));
    Verdict::Sign { node, validity: asked.map_or(config.validity, |a| a.min(config.validity)) }
}

/// Issue the certificate for `node` with the request's public key, signed by the CA.
pub fn sign(
    request_pem: &str,
    node: &str,
    validity: Duration,
    ca_pem: &str,
    ca_key_pem: &str,
) -> Result<String, String> {
    let requested = rcgen::CertificateSigningRequestParams::from_pem(request_pem).map_err(|e| e.to_string())?;
    let key = rcgen::KeyPair::from_pem(ca_key_pem).map_err(|e| format!("the CA key: {e}"))?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca_pem, key).map_err(|e| format!("the CA certificate: {e}"))?;
    let mut params = rcgen::CertificateParams::new(vec![node.to_owned()]).map_err(|e| e.to_string())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, node);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::seconds(validity.as_secs() as i64);
    let certificate = rcgen::CertificateSigningRequestParams { params, public_key: requested.public_key }
        .signed_by(&issuer)
        .map_err(|e| e.to_string())?;
    Ok(certificate.pem())
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("making the key and the request: {0}")]
    Key(String),
    #[error("creating CertificateSigningRequest {name}: {reason}")]
    Create { name: String, reason: String },
    #[error("CertificateSigningRequest {name} was denied: {reason}")]
    Denied { name: String, reason: String },
    #[error("CertificateSigningRequest {name} got no certificate within {waited:?}: is the watcher running, with RBAC to sign for {SIGNER_NAME}?")]
    TimedOut { name: String, waited: Duration },
    #[error("{path}: {reason}")]
    Write { path: String, reason: String },
}

/// The init container's part: a key, a request for pod `pod`'s certificate, and once it is
/// issued, `dir/envoy.key` (0600) and `dir/envoy.crt`. Fails when the request is denied
/// (with the signer's reason) or not answered within `wait`.
pub async fn request_certificate(client: Client, pod: &str, dir: &Path, wait: Duration) -> Result<(), IdentityError> {
    let node = node_of(pod);
    let key = rcgen::KeyPair::generate().map_err(|e| IdentityError::Key(e.to_string()))?;
    let mut params =
        rcgen::CertificateParams::new(vec![node.clone()]).map_err(|e| IdentityError::Key(e.to_string()))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, &node);
    let request =
        params.serialize_request(&key).and_then(|r| r.pem()).map_err(|e| IdentityError::Key(e.to_string()))?;
    // One request per start of the pod: a restarted pod makes a new key.
    let name = format!("{pod}-ads-{}", random_suffix());
    let csr = CertificateSigningRequest {
        metadata: kube::api::ObjectMeta { name: Some(name.clone()), ..Default::default() },
        spec: CertificateSigningRequestSpec {
            signer_name: SIGNER_NAME.to_owned(),
            request: k8s_openapi::ByteString(request.into_bytes()),
            usages: Some(vec!["digital signature".into(), "client auth".into()]),
            ..Default::default()
        },
        status: None,
    };
    let api: Api<CertificateSigningRequest> = Api::all(client);
    api.create(&PostParams::default(), &csr)
        .await
        .map_err(|e| IdentityError::Create { name: name.clone(), reason: e.to_string() })?;
    tracing::info!(csr = %name, node = %node, "asked for this Envoy's ADS certificate");
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Ok(current) = api.get(&name).await {
            let status = current.status.unwrap_or_default();
            if let Some(denied) = status.conditions.unwrap_or_default().into_iter().find(|c| c.type_ == "Denied") {
                return Err(IdentityError::Denied { name, reason: denied.message.unwrap_or_default() });
            }
            if let Some(certificate) = status.certificate {
                let write = |file: &str, contents: &[u8], private: bool| {
                    let path = dir.join(file);
                    let written = write_file(&path, contents, private);
                    written
                        .map_err(|e| IdentityError::Write { path: path.display().to_string(), reason: e.to_string() })
                };
                write("envoy.key", key.serialize_pem().as_bytes(), true)?;
                write("envoy.crt", &certificate.0, false)?;
                tracing::info!(csr = %name, node = %node, "this Envoy's ADS certificate was issued");
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(IdentityError::TimedOut { name, waited: wait });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn write_file(path: &Path, contents: &[u8], private: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mode = if private { 0o600 } else { 0o644 };
    std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?.write_all(contents)
}

fn random_suffix() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 4];
    if let Ok(mut urandom) = std::fs::File::open("/dev/urandom") {
        let _ = urandom.read_exact(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(feature = "service")]
/// The signer, in the active watcher replica (`active`, see `status::ActiveLease`; `None`:
/// this replica is the only one): every `config.every`, the pending requests for
/// [`SIGNER_NAME`] are judged, then approved and signed, or denied. Runs until dropped.
pub async fn run_signer(client: Client, config: SignerConfig, active: Option<crate::status::ActiveLease>) {
    let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
    let secrets: Api<Secret> = Api::namespaced(client, &config.namespace);
    let list = ListParams::default().fields(&format!("spec.signerName={SIGNER_NAME}"));
    let mut tick = tokio::time::interval(config.every);
    loop {
        tick.tick().await;
        if active.as_ref().is_some_and(|a| !a.fresh()) {
            continue;
        }
        let pending = match csrs.list(&list).await {
            Ok(list) => list.items,
            Err(e) => {
                tracing::warn!(error = %e, "listing the Envoy certificate requests failed (RBAC for certificatesigningrequests?)");
                continue;
            }
        };
        for csr in pending {
            let name = csr.metadata.name.clone().unwrap_or_default();
            match judge(&csr, &config) {
                Verdict::Skip => {}
                Verdict::Deny(reason) => {
                    tracing::warn!(csr = %name, reason = %reason, "denied an Envoy certificate request");
                    let _ = decide(&csrs, &name, "Denied", "PorticoEnvoyIdentityRefused", &reason).await;
                }
                Verdict::Sign { node, validity } => {
                    if let Err(e) = issue(&csrs, &secrets, &config, &csr, &name, &node, validity).await {
                        tracing::warn!(csr = %name, error = %e, "issuing an Envoy certificate failed; retrying");
                    }
                }
            }
        }
    }
}

#[cfg(feature = "service")]
async fn decide(
    csrs: &Api<CertificateSigningRequest>,
    name: &str,
    kind: &str,
    reason: &str,
    message: &str,
) -> Result<(), kube::Error> {
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let patch = serde_json::json!({"status": {"conditions": [{
        "type": kind, "status": "True", "reason": reason, "message": message,
        "lastUpdateTime": now, "lastTransitionTime": now,
    }]}});
    csrs.patch_subresource("approval", name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
}

#[cfg(feature = "service")]
async fn issue(
    csrs: &Api<CertificateSigningRequest>,
    secrets: &Api<Secret>,
    config: &SignerConfig,
    csr: &CertificateSigningRequest,
    name: &str,
    node: &str,
    validity: Duration,
) -> Result<(), String> {
    let ca =
        secrets.get(&config.ca_secret).await.map_err(|e| format!("reading the CA Secret {}: {e}", config.ca_secret))?;
    let data = ca.data.unwrap_or_default();
    let field = |key: &str| {
        data.get(key)
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            .ok_or_else(|| format!("the CA Secret {} has no {key}", config.ca_secret))
    };
    let certificate =
        sign(&String::from_utf8_lossy(&csr.spec.request.0), node, validity, &field("ca.crt")?, &field("ca.key")?)?;
    if !condition(csr, "Approved") {
        decide(
            csrs,
            name,
            "Approved",
            "PorticoEnvoyIdentity",
            &format!("pod identity checked: the certificate names {node}"),
        )
        .await
        .map_err(|e| format!("approving: {e}"))?;
    }
    let patch = serde_json::json!({"status": {"certificate": k8s_openapi::ByteString(certificate.into_bytes())}});
    csrs.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| format!("writing the certificate: {e}"))?;
    tracing::info!(csr = %name, node = %node, "issued an Envoy's ADS certificate");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::PublicKeyData;
    use std::collections::BTreeMap;

    fn config() -> SignerConfig {
        SignerConfig {
            namespace: "portico".into(),
            service_account: "portico-envoy".into(),
            ca_secret: "portico-ads-ca".into(),
            validity: Duration::from_secs(365 * 86_400),
            every: Duration::from_secs(1),
        }
    }

    /// A request as the API server stores it: made by `username` for pod `pod`, asking
    /// for `names`.
    fn request(username: &str, pods: &[&str], names: &[&str], usages: &[&str]) -> CertificateSigningRequest {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        CertificateSigningRequest {
            metadata: Default::default(),
            spec: CertificateSigningRequestSpec {
                signer_name: SIGNER_NAME.into(),
                request: k8s_openapi::ByteString(pem.into_bytes()),
                username: Some(username.into()),
                extra: Some(BTreeMap::from([(
                    POD_NAME_EXTRA.to_owned(),
                    pods.iter().map(|p| p.to_string()).collect(),
                )])),
                usages: Some(usages.iter().map(|u| u.to_string()).collect()),
                ..Default::default()
            },
            status: None,
        }
    }

    const ENVOY_SA: &str = "system:serviceaccount:portico:portico-envoy";
    const CLIENT: &[&str] = &["digital signature", "client auth"];

    #[test]
    fn a_pod_asking_for_its_own_name_gets_it() {
        let verdict = judge(&request(ENVOY_SA, &["envoy-1"], &["envoy-1.envoy.portico"], CLIENT), &config());
        assert_eq!(verdict, Verdict::Sign { node: "envoy-1.envoy.portico".into(), validity: config().validity });
    }

    #[test]
    fn every_other_request_is_denied_with_its_reason() {
        let cases: [(&str, CertificateSigningRequest, &str); 7] = [
            (
                "a pod asking for another pod's name",
                request(ENVOY_SA, &["envoy-1"], &["envoy-2.envoy.portico"], CLIENT),
                "pod \"envoy-1\" may have only \"envoy-1.envoy.portico\"",
            ),
            (
                "a pod asking for its name and another",
                request(ENVOY_SA, &["envoy-1"], &["envoy-1.envoy.portico", "renderer"], CLIENT),
                "may have only",
            ),
            (
                "another service account",
                request(
                    "system:serviceaccount:portico:portico-watcher",
                    &["envoy-1"],
                    &["envoy-1.envoy.portico"],
                    CLIENT,
                ),
                "only the Envoy pods' service account",
            ),
            (
                "a user, not a pod",
                request("alice", &[], &["envoy-1.envoy.portico"], CLIENT),
                "only the Envoy pods' service account",
            ),
            (
                "no pod name (a legacy token)",
                request(ENVOY_SA, &[], &["envoy-1.envoy.portico"], CLIENT),
                "bound service account token",
            ),
            (
                "a server certificate",
                request(ENVOY_SA, &["envoy-1"], &["envoy-1.envoy.portico"], &["server auth"]),
                "client auth only",
            ),
            ("a wildcard", request(ENVOY_SA, &["envoy-1"], &["*.envoy.portico"], CLIENT), "may have only"),
        ];
        for (case, csr, why) in cases {
            match judge(&csr, &config()) {
                Verdict::Deny(reason) => assert!(reason.contains(why), "{case}: {reason}"),
                other => panic!("{case}: {other:?}"),
            }
        }
    }

    #[test]
    fn another_signers_or_a_decided_request_is_left_alone() {
        let mut other = request(ENVOY_SA, &["envoy-1"], &["envoy-1.envoy.portico"], CLIENT);
        other.spec.signer_name = "kubernetes.io/kube-apiserver-client".into();
        assert_eq!(judge(&other, &config()), Verdict::Skip);
        let mut denied = request(ENVOY_SA, &["envoy-1"], &["envoy-1.envoy.portico"], CLIENT);
        denied.status = Some(k8s_openapi::api::certificates::v1::CertificateSigningRequestStatus {
            conditions: Some(vec![k8s_openapi::api::certificates::v1::CertificateSigningRequestCondition {
                type_: "Denied".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            certificate: None,
        });
        assert_eq!(judge(&denied, &config()), Verdict::Skip);
    }

    #[test]
    fn the_certificate_names_the_node_for_client_auth_with_the_requests_key() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "test ADS CA");
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let csr = request(ENVOY_SA, &["envoy-1"], &["envoy-1.envoy.portico"], CLIENT);
        let pem = sign(
            &String::from_utf8_lossy(&csr.spec.request.0),
            "envoy-1.envoy.portico",
            Duration::from_secs(3600),
            &ca_pem,
            &ca_key.serialize_pem(),
        )
        .unwrap();
        let der = pem_der(&pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let names: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, ["DNSName(envoy-1.envoy.portico)"]);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        let ca_der = pem_der(&ca_pem);
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).expect("signed by the CA");
        let requested =
            rcgen::CertificateSigningRequestParams::from_pem(&String::from_utf8_lossy(&csr.spec.request.0)).unwrap();
        assert_eq!(cert.public_key().subject_public_key.data.as_ref(), requested.public_key.der_bytes());
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(body).unwrap()
    }
}

//! `portico nats-credentials`: the Job in `deploy/kubernetes` that gives every service its
//! own NATS password, and ADS its mutual TLS. It creates the Secret `portico-nats-users`
//! (one key per service, see `nats_config::kubernetes_password_variable`) with fresh random
//! passwords, and the Secret `portico-ads-tls` (a fresh CA with its key, renderer-envoy's
//! certificate), and leaves existing ones alone, so re-applying the manifests
//! never changes the credentials of running pods. It may only create Secrets (RBAC), never
//! read them: an existing Secret shows as a conflict.

use crate::nats_config::{kubernetes_password_variable, password, KUBERNETES_USERS};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("no Kubernetes client configuration (in-cluster or KUBECONFIG): {0}")]
    Config(String),
    #[error("reading random bytes: {0}")]
    Random(std::io::Error),
    #[error(
        "creating Secret {namespace}/{name}: {reason}{hint}",
        hint = if *.forbidden { " (the Job's ServiceAccount portico-nats-credentials needs `create` on secrets: deploy/kubernetes/rbac.yaml)" } else { "" }
    )]
    Create { namespace: String, name: String, reason: String, forbidden: bool },
}

/// What happened.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    /// The Secret was there already; it was not read or changed.
    Kept,
}

/// The Secret with a fresh password per service.
pub fn secret(namespace: &str, name: &str) -> Result<Secret, CredentialsError> {
    let mut data = BTreeMap::new();
    for user in KUBERNETES_USERS {
        data.insert(kubernetes_password_variable(user), password().map_err(CredentialsError::Random)?);
    }
    Ok(opaque_secret(namespace, name, data))
}

/// An Opaque Secret of Portico's with these keys.
fn opaque_secret(namespace: &str, name: &str, data: BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            // The watcher leaves Secrets with this label out (`portico_watcher`'s INTERNAL_LABEL):
            // passwords and private keys never reach the bus.
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/part-of".to_owned(), "portico".to_owned()),
                ("portico.dev/internal".to_owned(), "true".to_owned()),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        string_data: Some(data),
        ..Secret::default()
    }
}

/// The name renderer-envoy's certificate carries in Kubernetes (its Service's name, which
/// Envoy connects to and checks).
pub const ADS_SERVER_NAME: &str = "portico-renderer-envoy";

/// The Secret with ADS's mutual TLS: a fresh CA (`ca.crt`, and `ca.key`, with which the
/// watcher signs each Envoy pod's own client certificate, see
/// `portico_watcher::envoy_identity`), and renderer-envoy's certificate and key
/// (`server.crt`, `server.key`). Pods mount only the items they need: renderer-envoy
/// `ca.crt` and its pair, Envoy pods `ca.crt`; no pod but the watcher can read the rest
/// (only it has an API token that may get this Secret).
pub fn ads_tls_secret(namespace: &str, name: &str) -> Secret {
    let ca = crate::demo::TestCa::new("Portico ADS CA");
    let server = ca.server(&[
        ADS_SERVER_NAME,
        &format!("{ADS_SERVER_NAME}.{namespace}.svc"),
        &format!("{ADS_SERVER_NAME}.{namespace}.svc.cluster.local"),
    ]);
    let data = BTreeMap::from([
        ("ca.crt".to_owned(), ca.pem.clone()),
        ("ca.key".to_owned(), ca.key_pem()),
        ("server.crt".to_owned(), server.cert_pem),
        ("server.key".to_owned(), server.key_pem),
    ]);
    opaque_secret(namespace, name, data)
}

/// Create the NATS passwords' Secret unless it exists.
pub async fn ensure(namespace: &str, name: &str) -> Result<Outcome, CredentialsError> {
    create_unless_exists(namespace, name, &secret(namespace, name)?).await
}

/// Create the ADS mutual-TLS Secret unless it exists.
pub async fn ensure_ads_tls(namespace: &str, name: &str) -> Result<Outcome, CredentialsError> {
    create_unless_exists(namespace, name, &ads_tls_secret(namespace, name)).await
}

async fn create_unless_exists(namespace: &str, name: &str, secret: &Secret) -> Result<Outcome, CredentialsError> {
    let client = kube::Client::try_default().await.map_err(|e| CredentialsError::Config(e.to_string()))?;
    let api: Api<Secret> = Api::namespaced(client, namespace);
    match api.create(&PostParams::default(), secret).await {
        Ok(_) => Ok(Outcome::Created),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Outcome::Kept),
        Err(e) => {
            let forbidden = matches!(&e, kube::Error::Api(status) if status.code == 403);
            Err(CredentialsError::Create {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                reason: e.to_string(),
                forbidden,
            })
        }
    }
}

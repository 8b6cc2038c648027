//! `portico nats-credentials`: the Job in `deploy/kubernetes` that gives every service its
//! own NATS password. It creates the Secret `portico-nats-users` (one key per service, see
//! `nats_config::kubernetes_password_variable`) with fresh random passwords, and leaves an
//! existing one alone, so re-applying the manifests never changes the passwords of running
//! pods. It may only create Secrets (RBAC), never read them: an existing Secret shows as a
//! conflict.

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
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([("app.kubernetes.io/part-of".to_owned(), "portico".to_owned())])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        string_data: Some(data),
        ..Secret::default()
    })
}

/// Create the Secret unless it exists.
pub async fn ensure(namespace: &str, name: &str) -> Result<Outcome, CredentialsError> {
    let client = kube::Client::try_default().await.map_err(|e| CredentialsError::Config(e.to_string()))?;
    let api: Api<Secret> = Api::namespaced(client, namespace);
    match api.create(&PostParams::default(), &secret(namespace, name)?).await {
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

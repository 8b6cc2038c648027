//! Bucket names, keys and value types, in one place (DESIGN.md, "The bus contract").
//! Every value is an envelope (`seal`/`open`) around the type named here.

use portico_model::{Holder, K8sName, Kind, SecretRef};

/// watcher → resolver: `<kind>.<namespace>.<name>` → `Object` (never a Secret), and
/// `sync.<kind>` markers.
pub const OBJECTS: &str = "portico-objects";
/// watcher → secrets only (memory storage): `<namespace>.<name>` → `Secret`, and the
/// `sync` marker after the initial Secrets.
pub const SECRETS: &str = "portico-secrets";
/// secrets → resolver: `<namespace>.<name>` → `SecretVerdict`, and the relayed `sync`.
pub const VERDICTS: &str = "portico-verdicts";
/// secrets → renderers (memory storage): `<namespace>.<name>` → `TrustMaterial`.
pub const TRUST: &str = "portico-trust";
/// resolver → renderers: `current` → `ModelRecord`, through `put_blob`/`get_blob`.
pub const MODEL: &str = "portico-model";
/// The model itself when it is too large for a message.
pub const MODEL_STORE: &str = "portico-model-store";
/// resolver → watcher and CLI: `<kind>.<namespace>.<name>` → `ObjectStatus`.
pub const STATUS: &str = "portico-status";
/// renderers → CLI and tests: `<renderer>.<instance>`.
pub const APPLIED: &str = "portico-applied";

/// Leases of services that run one active instance: `resolver` → `LeaseRecord`.
pub const LEASES: &str = "portico-leases";

pub const MODEL_KEY: &str = "current";

/// In the secrets bucket (written by the watcher after its initial Secrets) and in the
/// verdicts bucket (written by the secrets service once it has published the verdicts of
/// everything before the watcher's marker). Streams are ordered, so "before" is exact. No
/// dot, so it cannot be a `<namespace>.<name>` key.
pub const SECRETS_SYNC_KEY: &str = "sync";

/// The key token of a kind.
pub fn kind_token(kind: Kind) -> &'static str {
    match kind {
        Kind::EndpointSlice => "endpointslice",
        Kind::HttpProxy => "httpproxy",
        Kind::VoyagerIngress => "voyageringress",
        Kind::Secret => "secret",
        Kind::Service => "service",
        Kind::TlsCertificateDelegation => "tlscertificatedelegation",
        Kind::Ingress => "ingress",
        Kind::IngressClass => "ingressclass",
        Kind::ConfigMap => "configmap",
        Kind::GatewayClass => "gatewayclass",
        Kind::Gateway => "gateway",
        Kind::HttpRoute => "httproute",
        Kind::ReferenceGrant => "referencegrant",
        Kind::BackendTlsPolicy => "backendtlspolicy",
    }
}

fn kind_of(token: &str) -> Option<Kind> {
    Kind::ALL.into_iter().find(|k| kind_token(*k) == token)
}

/// `<kind>.<namespace>.<name>`. Namespaces are DNS labels (no dots; the watcher refuses
/// others), so the key splits back unambiguously even though names may contain dots.
pub fn object_key(kind: Kind, namespace: &K8sName, name: &K8sName) -> String {
    debug_assert!(!namespace.as_str().contains('.'), "namespaces are DNS labels");
    format!("{}.{namespace}.{name}", kind_token(kind))
}

/// The inverse of `object_key`.
pub fn parse_object_key(key: &str) -> Option<(Kind, K8sName, K8sName)> {
    let mut parts = key.splitn(3, '.');
    let kind = kind_of(parts.next()?)?;
    let namespace = parts.next()?.parse().ok()?;
    let name = parts.next()?.parse().ok()?;
    Some((kind, namespace, name))
}

/// The marker that a kind's initial list is complete.
pub fn sync_key(kind: Kind) -> String {
    format!("sync.{}", kind_token(kind))
}

/// `<namespace>.<name>` for the secrets, verdicts and trust buckets; a ConfigMap's is
/// `configmap=<namespace>.<name>` (no namespace holds a `=`, so the two never meet).
pub fn secret_key(secret: &SecretRef) -> String {
    match secret.holder {
        Holder::Secret => format!("{}.{}", secret.namespace, secret.name),
        Holder::ConfigMap => format!("{CONFIG_MAP_PREFIX}{}.{}", secret.namespace, secret.name),
    }
}

const CONFIG_MAP_PREFIX: &str = "configmap=";

/// The inverse of `secret_key`.
pub fn parse_secret_key(key: &str) -> Option<SecretRef> {
    let (rest, holder) = match key.strip_prefix(CONFIG_MAP_PREFIX) {
        Some(rest) => (rest, Holder::ConfigMap),
        None => (key, Holder::Secret),
    };
    let (namespace, name) = rest.split_once('.')?;
    Some(SecretRef { namespace: namespace.parse().ok()?, name: name.parse().ok()?, holder })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_keys_round_trip_even_with_dotted_names() {
        let (ns, name) = ("shop".parse().unwrap(), "api.v2".parse().unwrap());
        let key = object_key(Kind::HttpProxy, &ns, &name);
        assert_eq!(key, "httpproxy.shop.api.v2");
        assert_eq!(parse_object_key(&key), Some((Kind::HttpProxy, ns, name)));
        assert_eq!(parse_object_key("sync.service"), None);
        assert_eq!(parse_object_key("nope.a.b"), None);
        assert_eq!(sync_key(Kind::Service), "sync.service");
    }

    #[test]
    fn a_config_map_and_a_secret_of_the_same_name_have_two_keys() {
        let secret = SecretRef::new("shop", "ca.v2").unwrap();
        let config_map = SecretRef::config_map("shop", "ca.v2").unwrap();
        assert_eq!(secret_key(&secret), "shop.ca.v2");
        assert_eq!(secret_key(&config_map), "configmap=shop.ca.v2");
        assert_eq!(parse_secret_key(&secret_key(&secret)), Some(secret));
        assert_eq!(parse_secret_key(&secret_key(&config_map)), Some(config_map));
        assert_eq!(parse_secret_key("sync"), None);
    }
}

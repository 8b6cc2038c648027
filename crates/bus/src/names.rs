//! Bucket names and keys, in one place (DESIGN.md, "The bus contract").

use portico_model::{K8sName, Kind};

/// watcher → resolver: `<kind>.<namespace>.<name>`, and `sync.<kind>` markers.
pub const OBJECTS: &str = "portico-objects";
/// watcher → secrets only (memory storage): `<namespace>.<name>`.
pub const SECRETS: &str = "portico-secrets";
/// secrets → resolver: `<namespace>.<name>`.
pub const VERDICTS: &str = "portico-verdicts";
/// secrets → renderers: `<namespace>.<name>`.
pub const TRUST: &str = "portico-trust";
/// resolver → renderers: `current`.
pub const MODEL: &str = "portico-model";
/// The model itself when it is too large for a message.
pub const MODEL_STORE: &str = "portico-model-store";
/// resolver → watcher and CLI: `<kind>.<namespace>.<name>`.
pub const STATUS: &str = "portico-status";
/// renderers → CLI and tests: `<renderer>.<instance>`.
pub const APPLIED: &str = "portico-applied";

pub const MODEL_KEY: &str = "current";

/// The key token of a kind.
pub fn kind_token(kind: Kind) -> &'static str {
    match kind {
        Kind::EndpointSlice => "endpointslice",
        Kind::HttpProxy => "httpproxy",
        Kind::VoyagerIngress => "voyageringress",
        Kind::Secret => "secret",
        Kind::Service => "service",
        Kind::TlsCertificateDelegation => "tlscertificatedelegation",
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

/// `<namespace>.<name>` for the secrets, verdicts and trust buckets.
pub fn secret_key(namespace: &K8sName, name: &K8sName) -> String {
    format!("{namespace}.{name}")
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
}

//! The Gateway API wire types (generated from the vendored v1.6.0 CRDs) read the official
//! BackendTLSPolicy conformance manifests of the same release: every BackendTLSPolicy and
//! HTTPRoute in them decodes, and the fields SPEC section 6 resolves come through.

use portico_watcher::gateway_api::backendtlspolicies::{
    BackendTlsPolicy, BackendTlsPolicyValidationSubjectAltNamesType,
};
use portico_watcher::gateway_api::httproutes::HttpRoute;
use std::path::Path;

fn documents() -> Vec<(String, serde_yaml::Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/gateway-api/v1.6.0/conformance");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = <serde_yaml::Value as serde::Deserialize>::deserialize(document).unwrap();
            if !value.is_null() {
                out.push((path.file_name().unwrap().to_string_lossy().into_owned(), value));
            }
        }
    }
    out
}

#[test]
fn the_conformance_manifests_decode_into_the_generated_types() {
    let mut policies = Vec::new();
    let mut routes = Vec::new();
    for (file, value) in documents() {
        match value["kind"].as_str() {
            Some("BackendTLSPolicy") => policies
                .push(serde_yaml::from_value::<BackendTlsPolicy>(value).unwrap_or_else(|e| panic!("{file}: {e}"))),
            Some("HTTPRoute") => {
                routes.push(serde_yaml::from_value::<HttpRoute>(value).unwrap_or_else(|e| panic!("{file}: {e}")))
            }
            _ => {}
        }
    }
    assert_eq!((policies.len(), routes.len()), (20, 7), "every policy and route of the conformance manifests");
    // What SPEC section 6 resolves: targets by Service and sectionName, hostname, CA refs of
    // both kinds, well-known CAs, and subject alternative names of both types.
    let san_types: Vec<_> = policies
        .iter()
        .flat_map(|p| p.spec.validation.subject_alt_names.iter().flatten())
        .map(|s| s.r#type.clone())
        .collect();
    assert!(san_types.contains(&BackendTlsPolicyValidationSubjectAltNamesType::Hostname));
    assert!(san_types.contains(&BackendTlsPolicyValidationSubjectAltNamesType::Uri));
    assert!(policies.iter().all(|p| p.spec.target_refs.iter().all(|t| t.kind == "Service")));
    assert!(policies.iter().any(|p| p.spec.target_refs.iter().any(|t| t.section_name.is_some())));
    let kinds: Vec<&str> = policies
        .iter()
        .flat_map(|p| p.spec.validation.ca_certificate_refs.iter().flatten())
        .map(|r| r.kind.as_str())
        .collect();
    assert!(kinds.contains(&"ConfigMap"), "{kinds:?}");
    assert!(policies.iter().all(|p| !p.spec.validation.hostname.is_empty()), "hostname is required");
}

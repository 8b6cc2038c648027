//! The Gateway API dialect (SPEC section 6): attachment, paths, backends, ReferenceGrants,
//! BackendTLSPolicy (targets, names, CA references, well-known CAs, options, conflicts),
//! the Gateway's client certificate, and every status the spec defines.

mod support;

use portico_model::{
    ApiCondition, CaBundleInfo, CaSource, GatewayApiStatus, Kind, ObjectStatus, SecretRef, SecretVerdict, TlsVersion,
    UpstreamProtocol, Verification,
};
use support::*;

const CLASS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portico}
spec: {controllerName: portico.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: other}
spec: {controllerName: example.com/other}
"#;

const GATEWAY: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: infra, generation: 3}
spec:
  gatewayClassName: portico
  listeners:
  - {name: http, port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
  - {name: same-only, port: 8081, protocol: HTTP}
"#;

const BACKEND: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  ports:
  - {name: https, port: 443, targetPort: 8443}
  - {name: admin, port: 9443, targetPort: 9443}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: shop, labels: {kubernetes.io/service-name: api}}
ports: [{name: https, port: 8443}, {name: admin, port: 9443}]
endpoints: [{addresses: [10.0.0.1]}]
"#;

fn route(parent: &str, port: u16) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: shop, generation: 7}}
spec:
  parentRefs: [{parent}]
  hostnames: [api.example.com]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /}}}}]
    backendRefs: [{{name: api, port: {port}}}]
"#
    )
}

fn policy(name: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {{name: {name}, namespace: shop, generation: 2}}
spec:
  targetRefs: [{{group: "", kind: Service, name: api}}]
  validation:
    hostname: api.shop.internal
{extra}
"#
    )
}

const CA_CONFIGMAP: &str = "    caCertificateRefs: [{group: \"\", kind: ConfigMap, name: api-ca}]";

fn configmap_ca(ns_name: &str) -> SecretVerdict {
    let (ns, name) = ns_name.split_once('/').unwrap();
    SecretVerdict {
        secret: SecretRef::config_map(ns, name).unwrap(),
        ca: Ok(CaBundleInfo { sha256: format!("sha-of-cm-{ns_name}"), certificates: vec![], warnings: vec![] }),
        key_pair: Err("secret type \"\" is not kubernetes.io/tls".into()),
    }
}

fn docs(parts: &[&str]) -> String {
    parts.join("\n---\n")
}

fn gateway_world(extra: &[&str], verdicts: Vec<SecretVerdict>) -> World {
    let r = route("{name: edge, namespace: infra}", 443);
    let mut parts = vec![CLASS, GATEWAY, BACKEND, r.as_str()];
    parts.extend_from_slice(extra);
    world(&docs(&parts), verdicts)
}

fn gateway_status(w: &World, kind: Kind, ns_name: &str) -> GatewayApiStatus {
    w.object_status(kind, ns_name).gateway.clone().expect("a Gateway API status")
}

fn has_status(w: &World, kind: Kind, ns_name: &str) -> bool {
    w.resolved
        .statuses
        .iter()
        .any(|s| s.object.kind == kind && format!("{}/{}", s.object.namespace, s.object.name) == ns_name)
}

fn conditions_of(status: &GatewayApiStatus) -> Vec<ApiCondition> {
    match status {
        GatewayApiStatus::Parents(parents) => {
            assert_eq!(parents.len(), 1, "one parent: {parents:?}");
            parents[0].conditions.clone()
        }
        GatewayApiStatus::Class { conditions } | GatewayApiStatus::Gateway { conditions, .. } => conditions.clone(),
    }
}

/// (type, status, reason) of each condition.
fn summary(conditions: &[ApiCondition]) -> Vec<(String, bool, String)> {
    conditions.iter().map(|c| (c.condition_type.clone(), c.status, c.reason.clone())).collect()
}

fn condition<'c>(conditions: &'c [ApiCondition], kind: &str) -> &'c ApiCondition {
    conditions.iter().find(|c| c.condition_type == kind).unwrap_or_else(|| panic!("no {kind} in {conditions:?}"))
}

fn route_conditions(w: &World) -> Vec<ApiCondition> {
    conditions_of(&gateway_status(w, Kind::HttpRoute, "shop/web"))
}

fn policy_conditions(w: &World, name: &str) -> Vec<ApiCondition> {
    conditions_of(&gateway_status(w, Kind::BackendTlsPolicy, &format!("shop/{name}")))
}

#[test]
fn a_route_attached_to_a_portico_gateway_is_served_on_the_listener_with_its_hostname() {
    let w = gateway_world(&[], vec![]);
    let c = w.cluster_of(8080, "api.example.com", "/");
    assert_eq!((c.key.service.as_str(), c.key.port, c.key.protocol), ("api", 443, UpstreamProtocol::Http));
    assert_eq!(c.key.tls, None, "a Service targeted by no policy is plain HTTP");
    assert_eq!(
        summary(&route_conditions(&w)),
        vec![("Accepted".into(), true, "Accepted".into()), ("ResolvedRefs".into(), true, "ResolvedRefs".into())]
    );
    assert!(route_conditions(&w).iter().all(|c| c.observed_generation == 7), "observedGeneration is the route's");
}

#[test]
fn a_policy_targeting_the_service_makes_its_backends_tls_with_hostname_as_sni_and_name() {
    let p = policy("api-tls", CA_CONFIGMAP);
    let w = gateway_world(&[&p], vec![configmap_ca("shop/api-ca")]);
    let tls = w.cluster_of(8080, "api.example.com", "/").key.tls.clone().expect("TLS");
    assert_eq!(tls.sni.unwrap().as_str(), "api.shop.internal");
    let Verification::Required { ca, subject_names, subject_uris, exact_names } = tls.verify else { panic!() };
    assert_eq!(ca, CaSource::Secret(SecretRef::config_map("shop", "api-ca").unwrap()));
    assert_eq!(subject_names.iter().map(|n| n.as_str()).collect::<Vec<_>>(), ["api.shop.internal"]);
    assert!(subject_uris.is_empty() && exact_names);
    assert_eq!((tls.min_version, tls.max_version), (TlsVersion::Tls12, TlsVersion::Tls13));
    assert!(w.resolved.model.trust.iter().any(|t| t.secret == SecretRef::config_map("shop", "api-ca").unwrap()));
    let conditions = policy_conditions(&w, "api-tls");
    assert_eq!(
        summary(&conditions),
        vec![("Accepted".into(), true, "Accepted".into()), ("ResolvedRefs".into(), true, "ResolvedRefs".into())]
    );
    assert!(conditions.iter().all(|c| c.observed_generation == 2));
    let GatewayApiStatus::Parents(ancestors) = gateway_status(&w, Kind::BackendTlsPolicy, "shop/api-tls") else {
        panic!()
    };
    assert_eq!(ancestors[0].parent.name, "edge", "the ancestor is the Gateway whose route uses the Service");
    assert_eq!(ancestors[0].parent.namespace.as_deref(), Some("infra"));
}

#[test]
fn subject_alt_names_replace_the_hostname_as_the_names_checked_and_haproxy_cannot_check_them() {
    let extra = format!(
        "{CA_CONFIGMAP}\n    subjectAltNames:\n    - {{type: Hostname, hostname: api.example.net}}\n    - {{type: URI, uri: \"spiffe://cluster.local/ns/shop/sa/api\"}}"
    );
    let p = policy("api-tls", &extra);
    let w = gateway_world(&[&p], vec![configmap_ca("shop/api-ca")]);
    let tls = w.cluster_of(8080, "api.example.com", "/").key.tls.clone().unwrap();
    assert_eq!(tls.sni.as_ref().unwrap().as_str(), "api.shop.internal", "hostname stays the SNI");
    let Verification::Required { subject_names, subject_uris, .. } = &tls.verify else { panic!() };
    assert_eq!(subject_names.iter().map(|n| n.as_str()).collect::<Vec<_>>(), ["api.example.net"]);
    assert_eq!(subject_uris.iter().map(|n| n.as_str()).collect::<Vec<_>>(), ["spiffe://cluster.local/ns/shop/sa/api"]);
    assert!(!tls.verify.checkable_by_sni(tls.sni.as_ref()), "HAProxy answers 503 for these");
    let accepted = condition(&policy_conditions(&w, "api-tls"), "Accepted").clone();
    assert!(accepted.status, "Envoy enforces the policy");
    assert!(accepted.message.contains("HAProxy"), "the message says HAProxy answers 503: {}", accepted.message);
}

#[test]
fn a_single_hostname_san_equal_to_the_hostname_is_checkable_by_haproxy() {
    let extra = format!("{CA_CONFIGMAP}\n    subjectAltNames: [{{type: Hostname, hostname: api.shop.internal}}]");
    let p = policy("api-tls", &extra);
    let w = gateway_world(&[&p], vec![configmap_ca("shop/api-ca")]);
    let tls = w.cluster_of(8080, "api.example.com", "/").key.tls.clone().unwrap();
    assert!(tls.verify.checkable_by_sni(tls.sni.as_ref()));
}

#[test]
fn each_ca_reference_failure_has_its_reason_and_no_valid_ca_means_503() {
    struct Case {
        name: &'static str,
        refs: &'static str,
        verdicts: Vec<SecretVerdict>,
        resolved: (bool, &'static str),
        accepted: (bool, &'static str),
        forwards: bool,
    }
    let cases = vec![
        Case {
            name: "a missing ConfigMap",
            refs: "[{group: \"\", kind: ConfigMap, name: api-ca}]",
            verdicts: vec![],
            resolved: (false, "InvalidCACertificateRef"),
            accepted: (false, "NoValidCACertificate"),
            forwards: false,
        },
        Case {
            name: "a ConfigMap whose ca.crt is not valid",
            refs: "[{group: \"\", kind: ConfigMap, name: api-ca}]",
            verdicts: vec![SecretVerdict { ca: Err("empty \"ca.crt\" key".into()), ..configmap_ca("shop/api-ca") }],
            resolved: (false, "InvalidCACertificateRef"),
            accepted: (false, "NoValidCACertificate"),
            forwards: false,
        },
        Case {
            name: "a reference of another kind",
            refs: "[{group: example.com, kind: Bundle, name: api-ca}]",
            verdicts: vec![],
            resolved: (false, "InvalidKind"),
            accepted: (false, "NoValidCACertificate"),
            forwards: false,
        },
        Case {
            name: "a valid Secret",
            refs: "[{group: \"\", kind: Secret, name: api-ca}]",
            verdicts: vec![valid_ca("shop/api-ca")],
            resolved: (true, "ResolvedRefs"),
            accepted: (true, "Accepted"),
            forwards: true,
        },
        Case {
            name: "one valid and one missing",
            refs: "[{group: \"\", kind: ConfigMap, name: api-ca}, {group: \"\", kind: ConfigMap, name: gone}]",
            verdicts: vec![configmap_ca("shop/api-ca")],
            resolved: (false, "InvalidCACertificateRef"),
            accepted: (true, "Accepted"),
            forwards: true,
        },
        Case {
            name: "a Secret of the ConfigMap's name is another holder",
            refs: "[{group: \"\", kind: ConfigMap, name: api-ca}]",
            verdicts: vec![valid_ca("shop/api-ca")],
            resolved: (false, "InvalidCACertificateRef"),
            accepted: (false, "NoValidCACertificate"),
            forwards: false,
        },
    ];
    for case in cases {
        let p = policy("api-tls", &format!("    caCertificateRefs: {}", case.refs));
        let w = gateway_world(&[&p], case.verdicts);
        let conditions = policy_conditions(&w, "api-tls");
        let resolved = condition(&conditions, "ResolvedRefs");
        let accepted = condition(&conditions, "Accepted");
        assert_eq!((resolved.status, resolved.reason.as_str()), case.resolved, "{}: {conditions:?}", case.name);
        assert_eq!((accepted.status, accepted.reason.as_str()), case.accepted, "{}: {conditions:?}", case.name);
        assert_eq!(!w.rejects(8080, "api.example.com", "/"), case.forwards, "{}", case.name);
        if !resolved.status {
            assert!(
                resolved.message.contains("caCertificateRefs["),
                "{}: names the ref: {}",
                case.name,
                resolved.message
            );
        }
    }
}

#[test]
fn two_valid_ca_references_are_trusted_together() {
    let refs =
        "    caCertificateRefs: [{group: \"\", kind: ConfigMap, name: b-ca}, {group: \"\", kind: Secret, name: a-ca}]";
    let p = policy("api-tls", refs);
    let w = gateway_world(&[&p], vec![configmap_ca("shop/b-ca"), valid_ca("shop/a-ca")]);
    let tls = w.cluster_of(8080, "api.example.com", "/").key.tls.clone().unwrap();
    let Verification::Required { ca: CaSource::Union(list), .. } = &tls.verify else { panic!("{:?}", tls.verify) };
    assert_eq!(list, &vec![SecretRef::new("shop", "a-ca").unwrap(), SecretRef::config_map("shop", "b-ca").unwrap()]);
    assert_eq!(w.resolved.model.trust.len(), 2, "both bundles are in the model's trust");
}

#[test]
fn well_known_system_cas_use_the_proxy_hosts_store_and_other_values_are_invalid() {
    let p = policy("api-tls", "    wellKnownCACertificates: System");
    let w = gateway_world(&[&p], vec![]);
    let tls = w.cluster_of(8080, "api.example.com", "/").key.tls.clone().unwrap();
    assert!(matches!(tls.verify, Verification::Required { ca: CaSource::System, .. }));
    let p = policy("api-tls", "    wellKnownCACertificates: Mozilla");
    let w = gateway_world(&[&p], vec![]);
    assert!(w.rejects(8080, "api.example.com", "/"));
    let accepted = condition(&policy_conditions(&w, "api-tls"), "Accepted").clone();
    assert_eq!((accepted.status, accepted.reason.as_str()), (false, "Invalid"));
    assert!(accepted.message.contains("Mozilla"), "{}", accepted.message);
}

#[test]
fn options_set_tls_versions_and_an_unknown_option_is_invalid_never_ignored() {
    let p = policy(
        "api-tls",
        &format!(
            "{CA_CONFIGMAP}\n  options: {{portico.dev/min-tls-version: \"1.3\", portico.dev/max-tls-version: \"1.3\"}}"
        ),
    );
    // (`options` sits under spec, beside validation: two spaces in.)
    let w = gateway_world(&[&p], vec![configmap_ca("shop/api-ca")]);
    let tls = w.cluster_of(8080, "api.example.com", "/").key.tls.clone().unwrap();
    assert_eq!((tls.min_version, tls.max_version), (TlsVersion::Tls13, TlsVersion::Tls13));
    for (options, words) in [
        ("{example.com/cipher: fast}", "example.com/cipher"),
        ("{portico.dev/min-tls-version: \"1.1\"}", "1.1"),
        ("{portico.dev/min-tls-version: \"1.3\", portico.dev/max-tls-version: \"1.2\"}", "above"),
    ] {
        let p = policy("api-tls", &format!("{CA_CONFIGMAP}\n  options: {options}"));
        let w = gateway_world(&[&p], vec![configmap_ca("shop/api-ca")]);
        assert!(w.rejects(8080, "api.example.com", "/"), "{options}");
        let accepted = condition(&policy_conditions(&w, "api-tls"), "Accepted").clone();
        assert_eq!((accepted.status, accepted.reason.as_str()), (false, "Invalid"), "{options}");
        assert!(accepted.message.contains(words), "{options}: {}", accepted.message);
    }
}

#[test]
fn conflicting_policies_go_to_the_oldest_then_by_name_and_a_port_policy_beats_the_service_one() {
    let older = policy("zz-older", CA_CONFIGMAP)
        .replace("generation: 2}", "generation: 2, creationTimestamp: \"2026-01-01T00:00:00Z\"}")
        .replace("hostname: api.shop.internal", "hostname: older.shop.internal");
    let newer = policy("aa-newer", CA_CONFIGMAP)
        .replace("generation: 2}", "generation: 2, creationTimestamp: \"2026-06-01T00:00:00Z\"}");
    let w = gateway_world(&[&older, &newer], vec![configmap_ca("shop/api-ca")]);
    let tls = w.cluster_of(8080, "api.example.com", "/").key.tls.clone().unwrap();
    assert_eq!(tls.sni.unwrap().as_str(), "older.shop.internal", "the oldest wins");
    let loser = condition(&policy_conditions(&w, "aa-newer"), "Accepted").clone();
    assert_eq!((loser.status, loser.reason.as_str()), (false, "Conflicted"));
    assert!(loser.message.contains("shop/zz-older"), "{}", loser.message);
    assert!(condition(&policy_conditions(&w, "zz-older"), "Accepted").status);

    // Same age: by namespace/name.
    let a = policy("a-first", CA_CONFIGMAP).replace("hostname: api.shop.internal", "hostname: a.shop.internal");
    let b = policy("b-second", CA_CONFIGMAP);
    let w = gateway_world(&[&b, &a], vec![configmap_ca("shop/api-ca")]);
    assert_eq!(
        w.cluster_of(8080, "api.example.com", "/").key.tls.clone().unwrap().sni.unwrap().as_str(),
        "a.shop.internal"
    );

    // A policy for the port and one for the whole Service: both accepted, the port's used.
    let port = policy("by-port", CA_CONFIGMAP)
        .replace("name: api}]", "name: api, sectionName: https}]")
        .replace("hostname: api.shop.internal", "hostname: port.shop.internal");
    let whole = policy("whole", CA_CONFIGMAP);
    let w = gateway_world(&[&port, &whole], vec![configmap_ca("shop/api-ca")]);
    assert_eq!(
        w.cluster_of(8080, "api.example.com", "/").key.tls.clone().unwrap().sni.unwrap().as_str(),
        "port.shop.internal"
    );
    assert!(condition(&policy_conditions(&w, "by-port"), "Accepted").status);
    assert!(condition(&policy_conditions(&w, "whole"), "Accepted").status, "not a conflict: both are accepted");
}

#[test]
fn a_section_name_targets_only_the_port_of_that_name() {
    let p = policy("admin-only", CA_CONFIGMAP).replace("name: api}]", "name: api, sectionName: admin}]");
    let w = gateway_world(&[&p], vec![configmap_ca("shop/api-ca")]);
    assert_eq!(w.cluster_of(8080, "api.example.com", "/").key.tls, None, "port https is not targeted");
}

#[test]
fn route_attachment_failures_have_their_reasons() {
    let cases = [
        (
            "a listener allowing the same namespace only",
            "{name: edge, namespace: infra, sectionName: same-only}",
            "NotAllowedByListeners",
        ),
        ("a sectionName no listener has", "{name: edge, namespace: infra, sectionName: nope}", "NoMatchingParent"),
        ("a port no listener has", "{name: edge, namespace: infra, port: 9999}", "NoMatchingParent"),
    ];
    for (name, parent, reason) in cases {
        let r = route(parent, 443);
        let w = world(&docs(&[CLASS, GATEWAY, BACKEND, &r]), vec![]);
        let accepted = condition(&route_conditions(&w), "Accepted").clone();
        assert_eq!((accepted.status, accepted.reason.as_str()), (false, reason), "{name}: {accepted:?}");
        assert!(w.resolved.model.routes().next().is_none(), "{name}: nothing is served");
    }
    // Hostnames that do not meet the listener's.
    let gw =
        GATEWAY.replace("protocol: HTTP, allowedRoutes", "protocol: HTTP, hostname: \"*.example.org\", allowedRoutes");
    let r = route("{name: edge, namespace: infra, sectionName: http}", 443);
    let w = world(&docs(&[CLASS, &gw, BACKEND, &r]), vec![]);
    let accepted = condition(&route_conditions(&w), "Accepted").clone();
    assert_eq!((accepted.status, accepted.reason.as_str()), (false, "NoMatchingListenerHostname"));
}

#[test]
fn a_route_to_a_gateway_of_another_class_gets_no_status_and_no_routes() {
    let gw = GATEWAY.replace("gatewayClassName: portico", "gatewayClassName: other");
    let r = route("{name: edge, namespace: infra}", 443);
    let w = world(&docs(&[CLASS, &gw, BACKEND, &r]), vec![]);
    assert!(!has_status(&w, Kind::HttpRoute, "shop/web"));
    assert!(!has_status(&w, Kind::Gateway, "infra/edge"));
    assert!(!has_status(&w, Kind::GatewayClass, "cluster/other"));
    assert!(has_status(&w, Kind::GatewayClass, "cluster/portico"));
    assert!(w.resolved.model.routes().next().is_none());
}

#[test]
fn backend_reference_failures_have_their_reasons_and_answer_503() {
    let base = route("{name: edge, namespace: infra}", 443);
    let cases = [
        ("a missing Service", base.replace("name: api, port: 443", "name: gone, port: 443"), "BackendNotFound"),
        ("a missing port", base.replace("port: 443}]", "port: 444}]"), "BackendNotFound"),
        (
            "another kind",
            base.replace("name: api, port: 443", "kind: Bucket, group: example.com, name: api, port: 443"),
            "InvalidKind",
        ),
        (
            "another namespace without a ReferenceGrant",
            base.replace("name: api, port: 443", "name: api, namespace: other, port: 443"),
            "RefNotPermitted",
        ),
    ];
    for (name, r, reason) in cases {
        let other = BACKEND.replace("namespace: shop", "namespace: other");
        let w = world(&docs(&[CLASS, GATEWAY, BACKEND, &other, &r]), vec![]);
        let resolved = condition(&route_conditions(&w), "ResolvedRefs").clone();
        assert_eq!((resolved.status, resolved.reason.as_str()), (false, reason), "{name}: {resolved:?}");
        assert!(condition(&route_conditions(&w), "Accepted").status, "{name}: still accepted");
        assert!(w.rejects(8080, "api.example.com", "/"), "{name}: 503");
    }
}

#[test]
fn a_reference_grant_allows_a_backend_in_another_namespace() {
    let r = route("{name: edge, namespace: infra}", 443)
        .replace("name: api, port: 443", "name: api, namespace: other, port: 443");
    let other = BACKEND.replace("namespace: shop", "namespace: other");
    let grant = r#"
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: from-shop, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}]
  to: [{group: "", kind: Service}]
"#;
    let w = world(&docs(&[CLASS, GATEWAY, &other, &r, grant]), vec![]);
    assert_eq!(w.cluster_of(8080, "api.example.com", "/").key.namespace.as_str(), "other");
    assert!(condition(&route_conditions(&w), "ResolvedRefs").status);
    // A grant for another kind of source does not count.
    let w = world(&docs(&[CLASS, GATEWAY, &other, &r, &grant.replace("kind: HTTPRoute", "kind: GRPCRoute")]), vec![]);
    assert_eq!(condition(&route_conditions(&w), "ResolvedRefs").reason, "RefNotPermitted");
}

#[test]
fn weighted_backends_and_exact_paths_are_served() {
    let r = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{name: edge, namespace: infra}]
  hostnames: [api.example.com]
  rules:
  - matches: [{path: {type: Exact, value: /health}}, {path: {type: PathPrefix, value: /v1}}]
    backendRefs: [{name: api, port: 443, weight: 3}, {name: api, port: 9443, weight: 1}]
"#;
    let w = world(&docs(&[CLASS, GATEWAY, BACKEND, r]), vec![]);
    assert!(w.has_route(8080, "api.example.com", "/health"));
    assert!(w.has_route(8080, "api.example.com", "/v1/"));
    let portico_model::RouteAction::Forward { backends, .. } = &w.route(8080, "api.example.com", "/health").action
    else {
        panic!()
    };
    assert_eq!(backends.iter().map(|b| b.weight).collect::<Vec<_>>(), [3, 1]);
    assert!(w.route(8080, "api.example.com", "/health").exact);
}

#[test]
fn the_gateway_client_certificate_is_presented_valid_invalid_or_not_granted() {
    let p = policy("api-tls", CA_CONFIGMAP);
    let with_cert = |r: &str| {
        GATEWAY.replace("  listeners:", &format!("  tls: {{backend: {{clientCertificateRef: {r}}}}}\n  listeners:"))
    };
    // Valid, same namespace.
    let gw = with_cert("{name: client}");
    let w = world(
        &docs(&[CLASS, &gw, BACKEND, &route("{name: edge, namespace: infra}", 443), &p]),
        vec![configmap_ca("shop/api-ca"), valid_client_cert("infra/client")],
    );
    let tls = w.cluster_of(8080, "api.example.com", "/").key.tls.clone().unwrap();
    assert_eq!(tls.client_cert, Some(secret_ref("infra/client")));
    assert!(w.resolved.model.client_certs.iter().any(|t| t.secret == secret_ref("infra/client")));
    let GatewayApiStatus::Gateway { conditions, .. } = gateway_status(&w, Kind::Gateway, "infra/edge") else {
        panic!()
    };
    assert!(conditions.iter().all(|c| c.condition_type != "ResolvedRefs" || c.status));

    // Invalid: 503 and the Gateway's ResolvedRefs says why.
    let w = world(
        &docs(&[CLASS, &gw, BACKEND, &route("{name: edge, namespace: infra}", 443), &p]),
        vec![configmap_ca("shop/api-ca"), invalid_ca("infra/client", "x")],
    );
    assert!(w.rejects(8080, "api.example.com", "/"));
    let GatewayApiStatus::Gateway { conditions, .. } = gateway_status(&w, Kind::Gateway, "infra/edge") else {
        panic!()
    };
    let resolved = condition(&conditions, "ResolvedRefs");
    assert_eq!((resolved.status, resolved.reason.as_str()), (false, "InvalidClientCertificateRef"));

    // In another namespace without a grant.
    let gw = with_cert("{name: client, namespace: certs}");
    let w = world(
        &docs(&[CLASS, &gw, BACKEND, &route("{name: edge, namespace: infra}", 443), &p]),
        vec![configmap_ca("shop/api-ca"), valid_client_cert("certs/client")],
    );
    assert!(w.rejects(8080, "api.example.com", "/"));
    let GatewayApiStatus::Gateway { conditions, .. } = gateway_status(&w, Kind::Gateway, "infra/edge") else {
        panic!()
    };
    assert_eq!(condition(&conditions, "ResolvedRefs").reason, "RefNotPermitted");
    // A plain backend is not affected by the client certificate.
    let w = world(&docs(&[CLASS, &gw, BACKEND, &route("{name: edge, namespace: infra}", 443)]), vec![]);
    assert!(!w.rejects(8080, "api.example.com", "/"));
}

#[test]
fn gateway_and_listener_statuses_count_attached_routes_and_check_certificates() {
    let gw = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: infra, generation: 4}
spec:
  gatewayClassName: portico
  listeners:
  - {name: http, port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
  - name: https
    port: 8443
    protocol: HTTPS
    tls: {certificateRefs: [{name: edge-cert}]}
    allowedRoutes: {namespaces: {from: All}}
  - name: broken
    port: 8444
    protocol: HTTPS
    tls: {certificateRefs: [{name: missing}]}
    allowedRoutes: {namespaces: {from: All}}
  - {name: tcp, port: 9000, protocol: TCP}
"#;
    let r = route("{name: edge, namespace: infra}", 443);
    let w = world(&docs(&[CLASS, gw, BACKEND, &r]), vec![key_pair("infra/edge-cert", "edge-sha", &["*.example.com"])]);
    let GatewayApiStatus::Gateway { conditions, listeners } = gateway_status(&w, Kind::Gateway, "infra/edge") else {
        panic!()
    };
    let by_name = |n: &str| listeners.iter().find(|l| l.name == n).unwrap().clone();
    assert_eq!(by_name("http").attached_routes, 1);
    assert_eq!(by_name("https").attached_routes, 1);
    assert_eq!(by_name("tcp").attached_routes, 0);
    assert_eq!(condition(&by_name("broken").conditions, "ResolvedRefs").reason, "InvalidCertificateRef");
    assert_eq!(condition(&by_name("tcp").conditions, "Accepted").reason, "UnsupportedProtocol");
    assert!(condition(&by_name("https").conditions, "Programmed").status);
    assert!(!condition(&conditions, "Programmed").status, "a listener is not programmed");
    assert!(conditions.iter().chain(listeners.iter().flat_map(|l| &l.conditions)).all(|c| c.observed_generation == 4));
    // The HTTPS listener serves the route with the certificate; the broken one serves nothing.
    let vhost = w
        .resolved
        .model
        .listeners
        .iter()
        .find(|l| l.port == 8443)
        .and_then(|l| l.virtual_hosts.first())
        .expect("the HTTPS listener");
    assert_eq!(vhost.tls.as_ref().unwrap().secret, secret_ref("infra/edge-cert"));
    assert!(!w.resolved.model.listeners.iter().any(|l| l.port == 8444));
}

#[test]
fn a_gatewayclass_of_portico_is_accepted() {
    let w = world(CLASS, vec![]);
    let GatewayApiStatus::Class { conditions } = gateway_status(&w, Kind::GatewayClass, "cluster/portico") else {
        panic!()
    };
    assert_eq!(summary(&conditions), vec![("Accepted".into(), true, "Accepted".into())]);
}

#[test]
fn statuses_written_keep_other_controllers_entries_and_move_transition_times_only_on_flips() {
    let p = policy("api-tls", CA_CONFIGMAP);
    let w = gateway_world(&[&p], vec![]);
    let status: &ObjectStatus = w.object_status(Kind::HttpRoute, "shop/web");
    let previous = serde_json::json!({"parents": [
        {"parentRef": {"name": "x"}, "controllerName": "example.com/other", "conditions": []},
        {"parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "infra", "name": "edge"},
         "controllerName": "portico.dev/gateway-controller",
         "conditions": [{"type": "Accepted", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                        {"type": "ResolvedRefs", "status": "False", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    ]});
    let json = status.gateway.as_ref().unwrap().to_json(Kind::HttpRoute, &previous, "2026-12-06T00:00:00Z");
    let parents = json["parents"].as_array().unwrap();
    assert_eq!(parents.len(), 2, "the other controller's entry is kept: {json}");
    assert_eq!(parents[0]["controllerName"], "example.com/other");
    let ours = &parents[1]["conditions"];
    assert_eq!(ours[0]["lastTransitionTime"], "2026-01-01T00:00:00Z", "Accepted did not flip");
    assert_eq!(ours[1]["lastTransitionTime"], "2026-12-06T00:00:00Z", "ResolvedRefs flipped to True");
    assert_eq!(ours[0]["observedGeneration"], 7);
}

#[test]
fn a_listener_certificate_in_another_namespace_needs_a_reference_grant() {
    let gw = |grant: &str| {
        format!(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: infra}}
spec:
  gatewayClassName: portico
  listeners:
  - name: https
    port: 8443
    protocol: HTTPS
    tls: {{certificateRefs: [{{name: edge-cert, namespace: certs}}]}}
    allowedRoutes: {{namespaces: {{from: All}}}}
{grant}"#
        )
    };
    let grant = r#"---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: gateways, namespace: certs}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: infra}]
  to: [{group: "", kind: Secret, name: edge-cert}]
"#;
    let r = route("{name: edge, namespace: infra}", 443);
    let cert = || key_pair("certs/edge-cert", "edge-sha", &["api.example.com"]);
    let listener = |w: &World| {
        let GatewayApiStatus::Gateway { listeners, .. } = gateway_status(w, Kind::Gateway, "infra/edge") else {
            panic!()
        };
        listeners[0].clone()
    };
    let w = world(&docs(&[CLASS, &gw(""), BACKEND, &r]), vec![cert()]);
    let resolved = condition(&listener(&w).conditions, "ResolvedRefs").clone();
    assert_eq!((resolved.status, resolved.reason.as_str()), (false, "RefNotPermitted"), "{resolved:?}");
    assert!(!w.resolved.model.listeners.iter().any(|l| l.port == 8443), "nothing is served without its certificate");
    let w = world(&docs(&[CLASS, &gw(grant), BACKEND, &r]), vec![cert()]);
    assert!(condition(&listener(&w).conditions, "ResolvedRefs").status);
    assert_eq!(listener(&w).attached_routes, 1);
    let vhost = &w.resolved.model.listeners.iter().find(|l| l.port == 8443).unwrap().virtual_hosts[0];
    assert_eq!(vhost.tls.as_ref().unwrap().secret, secret_ref("certs/edge-cert"));
}

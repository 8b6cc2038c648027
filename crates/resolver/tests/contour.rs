//! SPEC section 2, the Contour dialect, rule by rule.

mod support;

use portico_model::{CaSource, Kind, RouteAction, Servers, UpstreamProtocol, Verification};
use portico_resolver::Config;
use support::*;

/// Services and delegations every case can use (namespace `shop`, CAs in `shop` and `infra`).
const BASE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: tls-svc, namespace: shop, annotations: {projectcontour.io/upstream-protocol.tls: "8443"}}
spec: {ports: [{name: https, port: 8443, targetPort: 9443}, {name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: tls-svc-1, namespace: shop, labels: {kubernetes.io/service-name: tls-svc}}
addressType: IPv4
ports: [{name: https, port: 9443}, {name: http, port: 8080}]
endpoints:
- addresses: [10.0.0.2]
- addresses: [10.0.0.1]
- addresses: [10.0.0.9]
  conditions: {ready: false}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: tls-svc-2, namespace: shop, labels: {kubernetes.io/service-name: tls-svc}}
addressType: IPv4
ports: [{name: https, port: 9443}]
endpoints: [{addresses: [10.0.1.1]}]
---
apiVersion: v1
kind: Service
metadata: {name: plain-svc, namespace: shop}
spec: {ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: plain-svc-1, namespace: shop, labels: {kubernetes.io/service-name: plain-svc}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.0.2.1]}]
---
apiVersion: v1
kind: Service
metadata:
  name: multi
  namespace: shop
  annotations:
    projectcontour.io/upstream-protocol.tls: " a ,, 9999 "
    projectcontour.io/upstream-protocol.h2c: "a,1002"
    projectcontour.io/upstream-protocol.h2: "1002, 1003"
spec:
  ports:
  - {name: a, port: 1001}
  - {name: b, port: 1002}
  - {name: c, port: 1003}
  - {name: d, port: 1004, targetPort: 9999}
  - {name: e, port: 1005, appProtocol: https}
  - {name: f, port: 1006, appProtocol: kubernetes.io/h2c}
  - {name: g, port: 1007, appProtocol: http}
---
apiVersion: v1
kind: Service
metadata: {name: other-annotated, namespace: shop, annotations: {projectcontour.io/upstream-protocol.tls: "1007"}}
spec: {ports: [{name: g, port: 1007, appProtocol: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: shop, annotations: {projectcontour.io/upstream-protocol.tls: "443"}}
spec: {type: ExternalName, externalName: API.example.net, ports: [{port: 443}]}
---
apiVersion: projectcontour.io/v1
kind: TLSCertificateDelegation
metadata: {name: share, namespace: infra}
spec:
  delegations:
  - {secretName: shared-ca, targetNamespaces: [shop]}
  - {secretName: star-ca, targetNamespaces: ["*"]}
  - {secretName: elsewhere-ca, targetNamespaces: [other]}
"#;

fn cas() -> Vec<portico_model::SecretVerdict> {
    vec![
        valid_ca("shop/ca"),
        valid_ca("shop/ca2"),
        valid_ca("infra/shared-ca"),
        valid_ca("infra/star-ca"),
        valid_ca("infra/elsewhere-ca"),
        valid_ca("infra/private-ca"),
        invalid_ca("shop/bad-ca", "failed to locate certificate"),
    ]
}

/// An HTTPProxy `shop/p` for www.example.com with one route `/` to one service entry.
fn proxy(service_yaml: &str) -> String {
    format!(
        "{BASE}---\napiVersion: projectcontour.io/v1\nkind: HTTPProxy\nmetadata: {{name: p, namespace: shop}}\n\
         spec:\n  virtualhost: {{fqdn: www.example.com}}\n  routes:\n  - services:\n    - {service_yaml}\n"
    )
}

fn single(service_yaml: &str) -> World {
    world(&proxy(service_yaml), cas())
}

const HOST: &str = "www.example.com";

#[test]
fn the_upstream_protocol_follows_the_precedence_of_spec_section_2() {
    let cases = [
        ("an annotation lists the port number", "{name: tls-svc, port: 8443}", UpstreamProtocol::Tls),
        ("a port absent from the annotation is plain HTTP", "{name: tls-svc, port: 80}", UpstreamProtocol::Http),
        ("the protocol field beats the annotation", "{name: tls-svc, port: 80, protocol: tls}", UpstreamProtocol::Tls),
        ("the protocol field h2c", "{name: tls-svc, port: 8443, protocol: h2c}", UpstreamProtocol::H2c),
        ("the protocol field h2", "{name: plain-svc, port: 80, protocol: h2}", UpstreamProtocol::H2),
        ("items are trimmed and names match; tls beats h2c", "{name: multi, port: 1001}", UpstreamProtocol::Tls),
        ("h2c beats h2", "{name: multi, port: 1002}", UpstreamProtocol::H2c),
        ("a number with spaces around it matches", "{name: multi, port: 1003}", UpstreamProtocol::H2),
        ("the targetPort never matches", "{name: multi, port: 1004}", UpstreamProtocol::Http),
        ("appProtocol https is TLS", "{name: multi, port: 1005}", UpstreamProtocol::Tls),
        ("appProtocol kubernetes.io/h2c is h2c", "{name: multi, port: 1006}", UpstreamProtocol::H2c),
        (
            "another appProtocol is plain and hides the annotation",
            "{name: other-annotated, port: 1007}",
            UpstreamProtocol::Http,
        ),
        ("no annotation is plain HTTP", "{name: plain-svc, port: 80}", UpstreamProtocol::Http),
    ];
    for (sentence, service, want) in cases {
        let w = single(service);
        assert_eq!(w.status("shop/p").current_status, "valid", "{sentence}: {:?}", errors(&w.status("shop/p")));
        let cluster = w.cluster_of(8080, HOST, "/");
        assert_eq!(cluster.key.protocol, want, "{sentence}");
        assert_eq!(cluster.key.tls.is_some(), want.is_tls(), "{sentence}: TLS policy exactly for TLS");
    }
}

#[test]
fn tls_without_validation_is_not_verified() {
    let w = single("{name: tls-svc, port: 8443}");
    let tls = w.cluster_of(8080, HOST, "/").key.tls.clone().unwrap();
    assert_eq!(tls.verify, Verification::None);
    assert_eq!(tls.sni, None, "no validation, no host rewrite, not ExternalName: no SNI");
}

/// (sentence, service entry, expected description, expected reason, detail the error entry must contain)
const ROUTE_ERRORS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "a missing CA secret gives the seed's exact message",
        "{name: tls-svc, port: 8443, validation: {caSecret: nope, subjectName: backend.example.com}}",
        "route \"/\": service \"tls-svc\": upstreamValidation requested but secret not found or misconfigured",
        "ServiceError/TLSUpstreamValidation",
        "secret \"shop/nope\" not found",
    ),
    (
        "a CA secret that is not a valid bundle gives the same message, with the reason as detail",
        "{name: tls-svc, port: 8443, validation: {caSecret: bad-ca, subjectName: backend.example.com}}",
        "route \"/\": service \"tls-svc\": upstreamValidation requested but secret not found or misconfigured",
        "ServiceError/TLSUpstreamValidation",
        "secret \"shop/bad-ca\": failed to locate certificate",
    ),
    (
        "a CA in another namespace without delegation is not permitted",
        "{name: tls-svc, port: 8443, validation: {caSecret: infra/private-ca, subjectName: a.b}}",
        "route \"/\": service \"tls-svc\": certificate delegation not permitted for CA secret \"infra/private-ca\"",
        "TLSError/CACertificateNotDelegated",
        "add a TLSCertificateDelegation in namespace \"infra\"",
    ),
    (
        "a delegation to another namespace does not cover this one",
        "{name: tls-svc, port: 8443, validation: {caSecret: infra/elsewhere-ca, subjectName: a.b}}",
        "route \"/\": service \"tls-svc\": certificate delegation not permitted for CA secret \"infra/elsewhere-ca\"",
        "TLSError/CACertificateNotDelegated",
        "",
    ),
    (
        "validation on a plain port is an error, not silently dropped",
        "{name: tls-svc, port: 80, validation: {caSecret: ca, subjectName: a.b}}",
        "route \"/\": service \"tls-svc\": upstreamValidation requested but service port 80 is not TLS",
        "ServiceError/TLSUpstreamValidation",
        "",
    ),
    (
        "validation on h2c is an error",
        "{name: tls-svc, port: 8443, protocol: h2c, validation: {caSecret: ca, subjectName: a.b}}",
        "route \"/\": service \"tls-svc\": upstreamValidation requested but service port 8443 is not TLS",
        "ServiceError/TLSUpstreamValidation",
        "",
    ),
    (
        "subjectName is required",
        "{name: tls-svc, port: 8443, validation: {caSecret: ca}}",
        "route \"/\": service \"tls-svc\": upstreamValidation requested but validation.subjectName is empty",
        "ServiceError/TLSUpstreamValidation",
        "",
    ),
    (
        "subjectNames must start with subjectName",
        "{name: tls-svc, port: 8443, validation: {caSecret: ca, subjectName: a.b, subjectNames: [c.d, a.b]}}",
        "route \"/\": service \"tls-svc\": validation.subjectNames[0] \"c.d\" must equal validation.subjectName \"a.b\"",
        "ServiceError/TLSUpstreamValidation",
        "",
    ),
    (
        "at most 8 subject names",
        "{name: tls-svc, port: 8443, validation: {caSecret: ca, subjectName: a1.b, subjectNames: [a1.b, a2.b, a3.b, a4.b, a5.b, a6.b, a7.b, a8.b, a9.b]}}",
        "route \"/\": service \"tls-svc\": validation.subjectNames has 9 names; at most 8 are allowed",
        "ServiceError/TLSUpstreamValidation",
        "",
    ),
    (
        "a subject name must be a DNS name",
        "{name: tls-svc, port: 8443, validation: {caSecret: ca, subjectName: \"a b\"}}",
        "route \"/\": service \"tls-svc\": validation subject name: DNS name \"a b\" is not valid",
        "ServiceError/TLSUpstreamValidation",
        "",
    ),
    (
        "a caSecret with two slashes is refused",
        "{name: tls-svc, port: 8443, validation: {caSecret: a/b/c, subjectName: a.b}}",
        "route \"/\": service \"tls-svc\": validation.caSecret: secret reference \"a/b/c\"",
        "ServiceError/TLSUpstreamValidation",
        "",
    ),
    (
        "an unknown protocol is unsupported",
        "{name: tls-svc, port: 8443, protocol: https}",
        "route \"/\": service \"tls-svc\": unsupported protocol \"https\" (use h2, h2c or tls)",
        "ServiceError/UnsupportedProtocol",
        "",
    ),
    (
        "a missing Service is an unresolved reference",
        "{name: ghost, port: 80}",
        "route \"/\": service \"ghost\": not found in namespace \"shop\"",
        "ServiceError/ServiceUnresolvedReference",
        "",
    ),
    (
        "a missing port is an unresolved reference",
        "{name: tls-svc, port: 9443}",
        "route \"/\": service \"tls-svc\": port 9443 not found on the Service",
        "ServiceError/ServiceUnresolvedReference",
        "",
    ),
];

#[test]
fn route_errors_make_the_proxy_invalid_and_the_route_answer_503() {
    for (sentence, service, description, reason, detail) in ROUTE_ERRORS {
        let w = single(service);
        let status = w.status("shop/p");
        assert_eq!(status.current_status, "invalid", "{sentence}");
        assert!(status.description.starts_with(description), "{sentence}: got {:?}", status.description);
        let first = &status.conditions[0].errors[0];
        assert_eq!(format!("{}/{}", first.condition_type, first.reason), *reason, "{sentence}");
        assert!(first.message.contains(detail), "{sentence}: entry {:?} lacks {detail:?}", first.message);
        assert!(w.rejects(8080, HOST, "/"), "{sentence}: the route must answer 503");
        assert!(w.resolved.model.clusters.is_empty(), "{sentence}: no cluster for a rejected route");
    }
}

#[test]
fn the_description_is_exactly_the_seeds_sentence_and_the_detail_goes_in_the_entry() {
    let status = single("{name: tls-svc, port: 8443, validation: {caSecret: nope, subjectName: a.b}}").status("shop/p");
    assert_eq!(
        status.description,
        "route \"/\": service \"tls-svc\": upstreamValidation requested but secret not found or misconfigured"
    );
    let condition = &status.conditions[0];
    assert_eq!((condition.condition_type.as_str(), condition.status.as_str()), ("Valid", "False"));
    assert_eq!(
        (condition.errors[0].condition_type.as_str(), condition.errors[0].reason.as_str()),
        ("ServiceError", "TLSUpstreamValidation"),
        "Contour's mapping for a missing CA secret"
    );
    assert_eq!(condition.errors[0].message, format!("{}: secret \"shop/nope\" not found", status.description));
}

#[test]
fn delegation_is_checked_before_existence() {
    let exists = single("{name: tls-svc, port: 8443, validation: {caSecret: infra/private-ca, subjectName: a.b}}");
    let missing = single("{name: tls-svc, port: 8443, validation: {caSecret: infra/ghost-ca, subjectName: a.b}}");
    let strip = |s: String| s.replace("private-ca", "X").replace("ghost-ca", "X");
    assert_eq!(
        strip(exists.status("shop/p").conditions[0].errors[0].message.clone()),
        strip(missing.status("shop/p").conditions[0].errors[0].message.clone()),
        "an unauthorised reference must not learn whether the secret exists"
    );
}

#[test]
fn valid_validation_verifies_with_the_ca_and_the_names() {
    let cases = [
        ("a CA in the proxy's namespace needs no delegation", "ca", "shop/ca"),
        ("a CA written namespace/name in the same namespace", "shop/ca", "shop/ca"),
        ("a delegation naming the proxy's namespace allows it", "infra/shared-ca", "infra/shared-ca"),
        ("a delegation to * allows it", "infra/star-ca", "infra/star-ca"),
    ];
    for (sentence, ca_secret, want) in cases {
        let w = single(&format!(
            "{{name: tls-svc, port: 8443, validation: {{caSecret: {ca_secret}, subjectName: Backend.Example.com}}}}"
        ));
        let status = w.status("shop/p");
        assert_eq!(status.current_status, "valid", "{sentence}: {:?}", errors(&status));
        assert_eq!(status.description, "Valid HTTPProxy");
        let tls = w.cluster_of(8080, HOST, "/").key.tls.clone().unwrap();
        let Verification::Required { ca: CaSource::Secret(secret), subject_names, .. } = tls.verify else {
            panic!("{sentence}: verification required expected")
        };
        assert_eq!(secret.to_string(), want, "{sentence}");
        assert_eq!(subject_names.iter().map(|n| n.as_str()).collect::<Vec<_>>(), vec!["backend.example.com"]);
        assert_eq!(tls.sni.unwrap().as_str(), "backend.example.com", "{sentence}: SNI is the first subject name");
        let trust: Vec<String> = w.resolved.model.trust.iter().map(|t| t.secret.to_string()).collect();
        assert_eq!(trust, vec![want.to_owned()], "{sentence}: the model lists the CA it needs");
    }
}

#[test]
fn h2_with_validation_is_tls_with_alpn_h2() {
    let w = single("{name: plain-svc, port: 80, protocol: h2, validation: {caSecret: ca, subjectName: a.b}}");
    let key = &w.cluster_of(8080, HOST, "/").key;
    assert_eq!(key.protocol, UpstreamProtocol::H2);
    assert_eq!(key.tls.as_ref().unwrap().alpn, vec![portico_model::Alpn::H2]);
}

#[test]
fn several_subject_names_are_all_allowed_and_haproxy_gets_a_warning() {
    let names = (1..=8).map(|i| format!("n{i}.example.com")).collect::<Vec<_>>().join(", ");
    let w = single(&format!(
        "{{name: tls-svc, port: 8443, validation: {{caSecret: ca, subjectName: n1.example.com, subjectNames: [{names}]}}}}"
    ));
    let status = w.status("shop/p");
    assert_eq!(status.current_status, "valid");
    let warns = warnings(&status);
    assert_eq!(warns[0].0, "VerificationWeakened");
    assert!(
        warns[0].1.contains("HAProxy can check only one name; it checks n1.example.com and not the other 7"),
        "{warns:?}"
    );
    let Verification::Required { subject_names, .. } = &w.cluster_of(8080, HOST, "/").key.tls.as_ref().unwrap().verify
    else {
        panic!()
    };
    assert_eq!(subject_names.len(), 8);
}

#[test]
fn sni_comes_from_host_rewrite_then_subject_then_external_name() {
    let with_host = format!(
        "{BASE}---\napiVersion: projectcontour.io/v1\nkind: HTTPProxy\nmetadata: {{name: p, namespace: shop}}\n\
         spec:\n  virtualhost: {{fqdn: www.example.com}}\n  routes:\n  - requestHeadersPolicy: {{set: [{{name: host, value: Rewritten.example.com}}]}}\n\
         \x20   services: [{{name: tls-svc, port: 8443, validation: {{caSecret: ca, subjectName: subject.example.com}}}}]\n"
    );
    let w = world(&with_host, cas());
    let RouteAction::Forward { host_rewrite, .. } = &w.route(8080, HOST, "/").action else { panic!() };
    assert_eq!(host_rewrite.as_ref().unwrap().as_str(), "rewritten.example.com");
    let sni = |w: &World| w.cluster_of(8080, HOST, "/").key.tls.as_ref().unwrap().sni.as_ref().map(|s| s.to_string());
    assert_eq!(sni(&w).as_deref(), Some("rewritten.example.com"), "a literal Host rewrite wins");
    let warns = warnings(&w.status("shop/p"));
    assert!(
        warns
            .iter()
            .any(|(r, m)| r == "VerificationWeakened"
                && m.contains("HAProxy checks the server certificate against the SNI")),
        "a rewrite that is not a subject name is flagged for HAProxy: {warns:?}"
    );

    let ext = single("{name: ext, port: 443}");
    assert_eq!(sni(&ext).as_deref(), Some("api.example.net"), "an ExternalName Service sends its name");
    assert_eq!(
        ext.cluster_of(8080, HOST, "/").servers,
        Servers::Dns { host: "api.example.net".parse().unwrap(), port: 443 },
        "ExternalName: one server, the external name and the Service port"
    );
    let ext_validated = single("{name: ext, port: 443, validation: {caSecret: ca, subjectName: sub.example.com}}");
    assert_eq!(sni(&ext_validated).as_deref(), Some("sub.example.com"), "a subject name beats the external name");
}

#[test]
fn servers_are_the_ready_endpoints_matched_by_port_name_or_number() {
    let w = single("{name: tls-svc, port: 8443}");
    let Servers::Endpoints(list) = &w.cluster_of(8080, HOST, "/").servers else { panic!() };
    let got: Vec<String> = list.iter().map(|a| a.to_string()).collect();
    assert_eq!(got, vec!["10.0.0.1:9443", "10.0.0.2:9443", "10.0.1.1:9443"], "ready only, from every slice, sorted");

    let by_name = single("{name: tls-svc, port: 80}");
    let Servers::Endpoints(list) = &by_name.cluster_of(8080, HOST, "/").servers else { panic!() };
    assert_eq!(list.iter().map(|a| a.to_string()).collect::<Vec<_>>(), vec!["10.0.0.1:8080", "10.0.0.2:8080"]);

    let unnamed = single("{name: plain-svc, port: 80}");
    let Servers::Endpoints(list) = &unnamed.cluster_of(8080, HOST, "/").servers else { panic!() };
    assert_eq!(list.iter().map(|a| a.to_string()).collect::<Vec<_>>(), vec!["10.0.2.1:8080"]);
}

#[test]
fn a_service_without_ready_endpoints_is_valid_with_a_warning() {
    let w = single("{name: multi, port: 1001}");
    let status = w.status("shop/p");
    assert_eq!(status.current_status, "valid");
    assert_eq!(warnings(&status)[0].0, "NoReadyEndpoints");
}

#[test]
fn one_broken_route_does_not_take_down_the_others() {
    let yaml = format!(
        "{BASE}---\napiVersion: projectcontour.io/v1\nkind: HTTPProxy\nmetadata: {{name: p, namespace: shop}}\n\
         spec:\n  virtualhost: {{fqdn: www.example.com}}\n  routes:\n\
         \x20 - conditions: [{{prefix: /ok}}]\n    services: [{{name: tls-svc, port: 8443}}]\n\
         \x20 - conditions: [{{prefix: /broken}}]\n    services: [{{name: tls-svc, port: 8443, validation: {{caSecret: nope, subjectName: a.b}}}}]\n"
    );
    let w = world(&yaml, cas());
    assert_eq!(w.status("shop/p").current_status, "invalid");
    assert!(w.status("shop/p").description.starts_with("route \"/broken\": service \"tls-svc\""));
    assert!(w.rejects(8080, HOST, "/broken"));
    assert_eq!(w.cluster_of(8080, HOST, "/ok").key.protocol, UpstreamProtocol::Tls, "the valid route still forwards");
}

#[test]
fn a_route_with_several_services_fails_closed_when_any_fails() {
    let w = single("{name: tls-svc, port: 8443}\n    - {name: ghost, port: 1}");
    assert!(w.rejects(8080, HOST, "/"), "never send a share of traffic to a broken backend");
}

#[test]
fn weights_follow_contour() {
    let shares = |services: &str| -> Vec<u32> {
        let w = single(services);
        let RouteAction::Forward { backends, .. } = &w.route(8080, HOST, "/").action else { panic!() };
        backends.iter().map(|b| b.weight).collect()
    };
    assert_eq!(
        shares("{name: tls-svc, port: 8443}\n    - {name: plain-svc, port: 80}"),
        vec![1, 1],
        "none given: equal"
    );
    assert_eq!(
        shares("{name: tls-svc, port: 8443, weight: 90}\n    - {name: plain-svc, port: 80}"),
        vec![90, 0],
        "unset is 0"
    );
    assert_eq!(
        shares("{name: tls-svc, port: 8443, weight: 0}\n    - {name: plain-svc, port: 80, weight: 0}"),
        vec![1, 1]
    );
}

#[test]
fn a_secret_that_appears_later_makes_the_route_valid_on_the_next_resolve() {
    let yaml = proxy("{name: tls-svc, port: 8443, validation: {caSecret: late-ca, subjectName: a.b}}");
    let mut snap = snapshot(&yaml);
    let config = Config::default();
    let before = portico_resolver::resolve(&snap, &config);
    assert!(!before.statuses[0].is_valid());
    snap.set_verdict(valid_ca("shop/late-ca"));
    let after = portico_resolver::resolve(&snap, &config);
    assert!(after.statuses[0].is_valid(), "{:?}", after.statuses[0]);
    assert!(matches!(after.model.routes().next().unwrap().2.action, RouteAction::Forward { .. }));
    assert_ne!(before.model.content_hash(), after.model.content_hash());
    snap.remove_verdict(&secret_ref("shop/late-ca"));
    assert_eq!(portico_resolver::resolve(&snap, &config), before, "removing it again restores the 503");
}

#[test]
fn a_delegation_that_appears_later_also_heals_the_route() {
    let yaml = proxy("{name: tls-svc, port: 8443, validation: {caSecret: infra/private-ca, subjectName: a.b}}");
    assert_eq!(world(&yaml, cas()).status("shop/p").current_status, "invalid");
    let delegated = format!(
        "{yaml}---\napiVersion: projectcontour.io/v1\nkind: TLSCertificateDelegation\nmetadata: {{name: late, namespace: infra}}\n\
         spec: {{delegations: [{{secretName: private-ca, targetNamespaces: [shop]}}]}}\n"
    );
    assert_eq!(world(&delegated, cas()).status("shop/p").current_status, "valid");
}

#[test]
fn clusters_differ_whenever_anything_that_shapes_them_differs() {
    // Two HTTPProxies, `shop/a` and `shop/b`, each with one route to the given service entry.
    let two = |a: &str, b: &str| {
        let proxy = |name: &str, service: &str| {
            format!(
                "---\napiVersion: projectcontour.io/v1\nkind: HTTPProxy\nmetadata: {{name: {name}, namespace: shop}}\n\
                 spec:\n  virtualhost: {{fqdn: {name}.example.com}}\n  routes: [{{services: [{service}]}}]\n"
            )
        };
        let mut verdicts = cas();
        verdicts.push(valid_ca("shop/shared-ca"));
        let w = world(&format!("{BASE}{}{}", proxy("a", a), proxy("b", b)), verdicts);
        for p in ["shop/a", "shop/b"] {
            assert_eq!(w.status(p).current_status, "valid", "{p}: {:?}", errors(&w.status(p)));
        }
        (w.cluster_of(8080, "a.example.com", "/").name.clone(), w.cluster_of(8080, "b.example.com", "/").name.clone())
    };
    let (a, b) = two(
        "{name: tls-svc, port: 8443, validation: {caSecret: shared-ca, subjectName: a.b}}",
        "{name: tls-svc, port: 8443, validation: {caSecret: infra/shared-ca, subjectName: a.b}}",
    );
    assert_ne!(a, b, "policies that differ only in the CA's namespace get different clusters");
    let (a, b) = two(
        "{name: tls-svc, port: 8443, validation: {caSecret: ca, subjectName: a.b, subjectNames: [a.b, c.d]}}",
        "{name: tls-svc, port: 8443, validation: {caSecret: ca, subjectName: a.b, subjectNames: [a.b, e.f]}}",
    );
    assert_ne!(a, b, "policies that differ only in a later subject name get different clusters");
    let (a, b) = two(
        "{name: tls-svc, port: 8443, validation: {caSecret: ca, subjectName: a.b}}",
        "{name: tls-svc, port: 8443, validation: {caSecret: ca, subjectName: a.b}}",
    );
    assert_eq!(a, b, "equal policies share a cluster");
    let a = a.as_str();
    assert!(a.starts_with("shop_tls-svc_8443_") && a.len() == "shop_tls-svc_8443_".len() + 16, "{a}");
}

#[test]
fn cluster_names_lengthen_to_the_full_digest_when_short_names_collide() {
    use portico_resolver::build::cluster_names;
    let key = |port: u16| portico_model::ClusterKey {
        namespace: "ns".parse().unwrap(),
        service: "svc".parse().unwrap(),
        port,
        protocol: UpstreamProtocol::Http,
        tls: None,
    };
    let (k1, k2) = (key(80), key(80));
    // Two digests that agree in their first 8 bytes (the 16 hex digits of a short name).
    let mut d1 = [0u8; 32];
    let mut d2 = [0u8; 32];
    d2[31] = 1;
    d1[0] = 0xab;
    d2[0] = 0xab;
    let names = cluster_names([(&k1, &d1), (&k2, &d2)].into_iter());
    assert_ne!(names[0], names[1], "colliding short names are told apart");
    assert_eq!(names[0].as_str().len(), "ns_svc_80_".len() + 64);
    let alone = cluster_names([(&k1, &d1)].into_iter());
    assert_eq!(alone[0].as_str(), "ns_svc_80_ab00000000000000");
}

#[test]
fn an_expiring_ca_is_valid_with_a_warning() {
    let mut verdicts = cas();
    verdicts.push(ca_with_warning("shop/soon", "certificate 1 (CN=x) expires at 2030-01-01T00:00:00Z, within 14 days"));
    let w = world(&proxy("{name: tls-svc, port: 8443, validation: {caSecret: soon, subjectName: a.b}}"), verdicts);
    let status = w.status("shop/p");
    assert_eq!(status.current_status, "valid");
    assert_eq!(
        warnings(&status),
        vec![(
            "CertificateExpiring".to_owned(),
            "route \"/\": service \"tls-svc\": CA secret \"shop/soon\": certificate 1 (CN=x) expires at 2030-01-01T00:00:00Z, within 14 days".to_owned()
        )]
    );
}

#[test]
fn the_client_certificate_goes_to_every_tls_upstream_and_breaks_only_them_when_invalid() {
    let yaml = format!(
        "{BASE}---\napiVersion: projectcontour.io/v1\nkind: HTTPProxy\nmetadata: {{name: p, namespace: shop}}\n\
         spec:\n  virtualhost: {{fqdn: www.example.com}}\n  routes:\n\
         \x20 - conditions: [{{prefix: /tls}}]\n    services: [{{name: tls-svc, port: 8443}}]\n\
         \x20 - conditions: [{{prefix: /plain}}]\n    services: [{{name: plain-svc, port: 80}}]\n"
    );
    let config = Config { client_cert: Some(secret_ref("portico/client")), ..Config::default() };
    let mut verdicts = cas();
    verdicts.push(valid_client_cert("portico/client"));
    let ok = world_with(&yaml, verdicts, &config);
    assert_eq!(ok.status("shop/p").current_status, "valid");
    let tls = ok.cluster_of(8080, HOST, "/tls").key.tls.clone().unwrap();
    assert_eq!(tls.client_cert.unwrap().to_string(), "portico/client");
    assert_eq!(ok.resolved.model.client_certs.iter().map(|t| t.sha256.as_str()).collect::<Vec<_>>(), ["client-sha"]);

    let missing = world_with(&yaml, cas(), &config);
    let status = missing.status("shop/p");
    assert_eq!(status.current_status, "invalid");
    assert_eq!(errors(&status)[0].0, "SecretNotValid");
    assert!(status.description.contains("client certificate secret \"portico/client\" not found or misconfigured"));
    assert!(missing.rejects(8080, HOST, "/tls"));
    assert!(!missing.rejects(8080, HOST, "/plain"), "plain HTTP routes are unaffected");
    assert!(missing.resolved.model.client_certs.is_empty());
}

#[test]
fn object_level_and_route_level_input_errors() {
    let custom = |spec: &str| {
        world(
            &format!("{BASE}---\napiVersion: projectcontour.io/v1\nkind: HTTPProxy\nmetadata: {{name: p, namespace: shop}}\nspec:\n{spec}"),
            cas(),
        )
    };
    let bad_fqdn =
        custom("  virtualhost: {fqdn: \"bad host\"}\n  routes: [{services: [{name: tls-svc, port: 8443}]}]\n");
    assert_eq!(bad_fqdn.status("shop/p").description, "spec.virtualhost.fqdn \"bad host\": DNS name \"bad host\" is not valid: only lowercase letters, digits, '-' and '.' are allowed");
    assert!(bad_fqdn.resolved.model.listeners.is_empty(), "nothing to route on");

    let two_prefixes =
        custom("  virtualhost: {fqdn: www.example.com}\n  routes: [{conditions: [{prefix: /a}, {prefix: /b}], services: [{name: tls-svc, port: 8443}]}]\n");
    assert_eq!(
        two_prefixes.status("shop/p").description,
        "route \"/a\": more than one prefix condition; use one prefix per route"
    );

    let bad_prefix =
        custom("  virtualhost: {fqdn: www.example.com}\n  routes: [{conditions: [{prefix: \"/a b\"}], services: [{name: tls-svc, port: 8443}]}]\n");
    assert!(bad_prefix.status("shop/p").description.starts_with("route \"/a b\": path prefix \"/a b\" is not valid"));

    let no_services = custom("  virtualhost: {fqdn: www.example.com}\n  routes: [{conditions: [{prefix: /x}]}]\n");
    assert_eq!(no_services.status("shop/p").description, "route \"/x\": the route has no services");
    assert!(no_services.rejects(8080, HOST, "/x"));

    let header = custom("  virtualhost: {fqdn: www.example.com}\n  routes: [{conditions: [{prefix: /h}, {header: {name: x, present: true}}], services: [{name: tls-svc, port: 8443}]}]\n");
    assert_eq!(
        header.status("shop/p").current_status,
        "invalid",
        "a header condition restricts who may reach the route"
    );
    assert_eq!(errors(&header.status("shop/p"))[0].0, "UnsupportedRestriction");
    assert!(header.rejects(8080, HOST, "/h"), "served without its header condition it would widen access");
}

#[test]
fn two_objects_claiming_the_same_route_the_later_gets_an_error() {
    let second = |name: &str| {
        format!(
            "---\napiVersion: projectcontour.io/v1\nkind: HTTPProxy\nmetadata: {{name: {name}, namespace: shop}}\n\
             spec:\n  virtualhost: {{fqdn: www.example.com}}\n  routes: [{{services: [{{name: tls-svc, port: 8443}}]}}]\n"
        )
    };
    let w = world(&format!("{BASE}{}{}", second("b"), second("a")), cas());
    assert_eq!(w.status("shop/a").current_status, "valid");
    assert_eq!(
        w.status("shop/b").description,
        "route \"/\": host www.example.com on port 8080 is already routed by HTTPProxy shop/a"
    );
    assert_eq!(w.route(8080, HOST, "/").source.name.as_str(), "a");
    assert_eq!(w.object_status(Kind::HttpProxy, "shop/b").problems[0].reason, portico_model::Reason::DuplicateRoute);
}

#[test]
fn the_output_is_deterministic_and_sorted() {
    let yaml = proxy("{name: tls-svc, port: 8443}\n    - {name: plain-svc, port: 80}");
    let a = world(&yaml, cas()).resolved;
    // Same objects, inserted in reverse order.
    let mut decoded = portico_watcher::Decoded::default();
    portico_watcher::decode_str("w.yaml", &yaml, &mut decoded);
    let mut snap = portico_resolver::Snapshot::default();
    for (o, _) in decoded.objects.into_iter().rev() {
        snap.apply(o).unwrap();
    }
    for v in cas().into_iter().rev() {
        snap.set_verdict(v);
    }
    let b = portico_resolver::resolve(&snap, &Config::default());
    assert_eq!(a, b);
    assert_eq!(a.model.content_hash(), b.model.content_hash());
    let names: Vec<&str> = a.model.clusters.iter().map(|c| c.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
}

#[test]
fn timeout_policy_response_is_parsed_and_a_bad_one_rejects_the_route() {
    use portico_model::Timeout;
    let with = |timeout: &str| {
        world(
            &format!(
                "{BASE}---\napiVersion: projectcontour.io/v1\nkind: HTTPProxy\nmetadata: {{name: p, namespace: shop}}\nspec:\n  virtualhost: {{fqdn: {HOST}}}\n  routes: [{{timeoutPolicy: {{response: \"{timeout}\"}}, services: [{{name: plain-svc, port: 80}}]}}]\n"
            ),
            cas(),
        )
    };
    let cases = [
        ("seconds", "30s", Timeout::Millis(30_000)),
        ("minutes and seconds", "1m30s", Timeout::Millis(90_000)),
        ("milliseconds", "250ms", Timeout::Millis(250)),
        ("infinity", "infinity", Timeout::Infinite),
    ];
    for (sentence, written, want) in cases {
        let w = with(written);
        assert_eq!(w.status("shop/p").current_status, "valid", "{sentence}");
        let RouteAction::Forward { timeout, .. } = &w.route(8080, HOST, "/").action else { panic!("{sentence}") };
        assert_eq!(*timeout, Some(want), "{sentence}");
    }
    for bad in ["30", "1x", "-5s", "0s", "25h", "1s\nhttp-request deny"] {
        let w = with(&bad.replace('\n', "\\n"));
        let status = w.status("shop/p");
        assert_eq!(status.current_status, "invalid", "{bad:?}");
        assert!(status.description.contains("timeoutPolicy.response"), "{bad:?}: {}", status.description);
        assert!(w.rejects(8080, HOST, "/"), "{bad:?}: the route answers 503");
    }
}

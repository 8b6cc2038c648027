//! Gateway API with BackendTLSPolicy v1 (issue #12, SPEC section 6) through real HAProxy
//! and real Envoy, each started on the files `portico translate` wrote, in front of real TLS
//! backends that report what they saw. The cases follow the official conformance tests
//! (`conformance/tests/backendtlspolicy*.go`): the SNI the backend sees is `hostname`; a
//! hostname mismatch fails; a certificate from another CA fails; Hostname and URI SANs
//! match or not (HAProxy answers 503 for names it cannot check); a SAN list with one match;
//! two conflicting policies; CA references to ConfigMaps and Secrets together; the
//! Gateway's client certificate to a backend that requires one; HTTPS in, verified TLS out.

use portico_e2e::{free_port, translated, Backend, BackendKind, TestCa, Translated, Via};
use portico_testkit::{https_get_at, Offer};
use std::path::Path;

/// (host, backend service, policy validation and options, or "" for no policy). The
/// policy targets its case's own Service.
const CASES: &[(&str, &str, &str)] = &[
    ("plain.test", "web", ""),
    ("verified.test", "api", "hostname: api.backend.test"),
    ("wrong-name.test", "api", "hostname: nope.backend.test"),
    ("other-ca.test", "api", "hostname: api.backend.test, other-ca"),
    ("both-cas.test", "api", "hostname: api.backend.test, both-cas"),
    (
        "san-host.test",
        "api",
        "hostname: sni.backend.test, subjectAltNames: [{type: Hostname, hostname: api.backend.test}]",
    ),
    (
        "san-host-miss.test",
        "api",
        "hostname: api.backend.test, subjectAltNames: [{type: Hostname, hostname: nope.backend.test}]",
    ),
    (
        "san-host-same.test",
        "api",
        "hostname: api.backend.test, subjectAltNames: [{type: Hostname, hostname: api.backend.test}]",
    ),
    (
        "san-uri.test",
        "api",
        "hostname: api.backend.test, subjectAltNames: [{type: URI, uri: \"spiffe://cluster.local/ns/shop/sa/api\"}]",
    ),
    (
        "san-uri-miss.test",
        "api",
        "hostname: api.backend.test, subjectAltNames: [{type: URI, uri: \"spiffe://cluster.local/ns/shop/sa/nope\"}]",
    ),
    (
        "san-list.test",
        "api",
        "hostname: api.backend.test, subjectAltNames: [{type: Hostname, hostname: nope.backend.test}, {type: URI, uri: \"spiffe://cluster.local/ns/shop/sa/api\"}]",
    ),
    ("system.test", "api", "hostname: api.backend.test, system"),
    ("missing-ca.test", "api", "hostname: api.backend.test, missing"),
    ("tls13.test", "old", "hostname: old.backend.test, tls13"),
    ("mtls.test", "mtls", "hostname: mtls.backend.test"),
];

fn indent(pem: &str, by: usize) -> String {
    pem.lines().map(|l| format!("{}{l}\n", " ".repeat(by))).collect()
}

/// The manifests for one proxy: its listener ports, the backends' ports.
fn manifests(
    api_ca: &TestCa,
    other_ca: &TestCa,
    edge: &portico_e2e::Issued,
    client: &portico_e2e::Issued,
    http: u16,
    https: u16,
    ports: &std::collections::BTreeMap<&str, u16>,
) -> String {
    let mut yaml = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: portico}}\n\
         spec: {{controllerName: portico.dev/gateway-controller}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: edge, namespace: infra}}\n\
         spec:\n  gatewayClassName: portico\n  tls: {{backend: {{clientCertificateRef: {{name: gateway-client}}}}}}\n  listeners:\n\
         \x20 - {{name: http, port: {http}, protocol: HTTP, allowedRoutes: {{namespaces: {{from: All}}}}}}\n\
         \x20 - {{name: https, port: {https}, protocol: HTTPS, hostname: verified.test, tls: {{certificateRefs: [{{name: edge-cert}}]}}, allowedRoutes: {{namespaces: {{from: All}}}}}}\n\
         ---\napiVersion: v1\nkind: Secret\nmetadata: {{name: edge-cert, namespace: infra}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}\
         ---\napiVersion: v1\nkind: Secret\nmetadata: {{name: gateway-client, namespace: infra}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(&edge.cert_pem, 4),
        indent(&edge.key_pem, 4),
        indent(&client.cert_pem, 4),
        indent(&client.key_pem, 4),
    );
    for (name, pem) in [("api-ca", &api_ca.pem), ("other-ca", &other_ca.pem)] {
        yaml += &format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: shop}}\ndata:\n  ca.crt: |\n{}",
            indent(pem, 4)
        );
    }
    // The same CA as a Secret too, for a policy naming both kinds.
    yaml += &format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: api-ca-secret, namespace: shop}}\nstringData:\n  ca.crt: |\n{}",
        indent(&api_ca.pem, 4)
    );
    for (i, (host, backend, validation)) in CASES.iter().enumerate() {
        let port = ports[backend];
        let service = format!("case-{i}");
        yaml += &format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {service}, namespace: shop}}\n\
             spec: {{ports: [{{name: https, port: 443}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {service}-1, namespace: shop, labels: {{kubernetes.io/service-name: {service}}}}}\n\
             addressType: IPv4\nports: [{{name: https, port: {port}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {service}, namespace: shop}}\n\
             spec:\n  parentRefs: [{{name: edge, namespace: infra}}]\n  hostnames: [{host}]\n  rules:\n\
             \x20 - backendRefs: [{{name: {service}, port: 443}}]\n"
        );
        if validation.is_empty() {
            continue;
        }
        let mut parts: Vec<&str> = validation.split(", ").collect();
        let mut refs = "caCertificateRefs: [{group: \"\", kind: ConfigMap, name: api-ca}]".to_owned();
        let mut options = String::new();
        parts.retain(|p| match *p {
            "other-ca" => {
                refs = "caCertificateRefs: [{group: \"\", kind: ConfigMap, name: other-ca}]".into();
                false
            }
            "both-cas" => {
                refs = "caCertificateRefs: [{group: \"\", kind: ConfigMap, name: other-ca}, {group: \"\", kind: Secret, name: api-ca-secret}]".into();
                false
            }
            "system" => {
                refs = "wellKnownCACertificates: System".into();
                false
            }
            "missing" => {
                refs = "caCertificateRefs: [{group: \"\", kind: ConfigMap, name: no-such-ca}]".into();
                false
            }
            "tls13" => {
                options = "  options: {portico.dev/min-tls-version: \"1.3\"}\n".into();
                false
            }
            _ => true,
        });
        // A SAN list holds ", " itself: put the pieces back together.
        let validation = parts.join(", ");
        yaml += &format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {{name: {service}, namespace: shop}}\n\
             spec:\n  targetRefs: [{{group: \"\", kind: Service, name: {service}}}]\n{options}  validation: {{{validation}, {refs}}}\n"
        );
    }
    // Two policies for one Service: the older one (by creationTimestamp) is used.
    let port = ports["api"];
    yaml += &format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: contested, namespace: shop}}\n\
         spec: {{ports: [{{name: https, port: 443}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: contested-1, namespace: shop, labels: {{kubernetes.io/service-name: contested}}}}\n\
         addressType: IPv4\nports: [{{name: https, port: {port}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: contested, namespace: shop}}\n\
         spec:\n  parentRefs: [{{name: edge, namespace: infra}}]\n  hostnames: [conflict.test]\n  rules:\n\
         \x20 - backendRefs: [{{name: contested, port: 443}}]\n"
    );
    for (name, created, hostname) in [
        ("a-newer", "2026-06-01T00:00:00Z", "sni.backend.test"),
        ("z-older", "2026-01-01T00:00:00Z", "api.backend.test"),
    ] {
        yaml += &format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {{name: {name}, namespace: shop, creationTimestamp: \"{created}\"}}\n\
             spec:\n  targetRefs: [{{group: \"\", kind: Service, name: contested}}]\n\
             \x20 validation: {{hostname: {hostname}, caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: api-ca}}]}}\n"
        );
    }
    yaml
}

/// The manifests written for free ports, and the proxy started on their translation.
fn start(yaml: impl Fn(u16, u16) -> String, out: &Path, via: Via) -> Translated {
    let (http, https) = (free_port(), free_port());
    std::fs::create_dir_all(out).unwrap();
    let file = out.join("gateway.yaml");
    std::fs::write(&file, yaml(http, https)).unwrap();
    translated(&file, out, via, http, https)
}

#[test]
fn backend_tls_policy_through_both_proxies_as_the_conformance_tests_check_it() {
    let api_ca = TestCa::new("api CA");
    let other_ca = TestCa::new("other CA");
    let client_ca = TestCa::new("client CA");
    let edge_ca = TestCa::new("edge CA");
    let api = Backend::start(
        "api",
        BackendKind::Tls {
            cert: api_ca.server_with_uris(
                &["api.backend.test", "sni.backend.test"],
                &["spiffe://cluster.local/ns/shop/sa/api"],
            ),
            client_ca: None,
        },
    );
    let web = Backend::start("web", BackendKind::Plain);
    let old = Backend::start("old", BackendKind::Tls12Only(api_ca.server(&["old.backend.test"])));
    let mtls = Backend::start(
        "mtls",
        BackendKind::Tls { cert: api_ca.server(&["mtls.backend.test"]), client_ca: Some(client_ca.pem.clone()) },
    );
    let ports: std::collections::BTreeMap<&str, u16> =
        [("api", api.port), ("web", web.port), ("old", old.port), ("mtls", mtls.port)].into();
    let edge = edge_ca.server(&["verified.test"]);
    let client = client_ca.client("portico-gateway");
    let dir = tempfile::tempdir().unwrap();
    let yaml = |http, https| manifests(&api_ca, &other_ca, &edge, &client, http, https, &ports);
    let haproxy = start(yaml, &dir.path().join("h"), Via::Haproxy);
    let envoy = start(yaml, &dir.path().join("e"), Via::Envoy);

    // The statuses say what the traffic below shows.
    let statuses = &haproxy.outcome.resolved.statuses;
    let policy = |name: &str| {
        statuses
            .iter()
            .find(|s| s.object.kind == portico_model::Kind::BackendTlsPolicy && s.object.name.as_str() == name)
            .unwrap_or_else(|| panic!("no status of {name}"))
    };
    let missing = policy(&format!("case-{}", CASES.iter().position(|c| c.0 == "missing-ca.test").unwrap()));
    assert!(missing.problems.iter().any(|p| p.message.contains("no valid CA certificate")), "{missing:?}");
    let uri = policy(&format!("case-{}", CASES.iter().position(|c| c.0 == "san-uri.test").unwrap()));
    assert!(uri.problems.iter().any(|p| p.message.contains("HAProxy")), "{uri:?}");
    assert!(policy("a-newer").problems.iter().any(|p| p.message.contains("shop/z-older")));

    // (host, HAProxy's status, Envoy's, what the backend saw when it answered)
    let expect: &[(&str, u16, u16, &[&str])] = &[
        ("plain.test", 200, 200, &["backend=web"]),
        // The SNI the backend sees is the policy's hostname, verified against it.
        ("verified.test", 200, 200, &["backend=api", "sni=api.backend.test"]),
        ("wrong-name.test", 503, 503, &[]),
        ("other-ca.test", 503, 503, &[]),
        ("both-cas.test", 200, 200, &["sni=api.backend.test"]),
        // subjectAltNames replace the hostname as the name checked; hostname stays the SNI.
        ("san-host.test", 503, 200, &["sni=sni.backend.test"]),
        ("san-host-miss.test", 503, 503, &[]),
        ("san-host-same.test", 200, 200, &["sni=api.backend.test"]),
        ("san-uri.test", 503, 200, &["sni=api.backend.test"]),
        ("san-uri-miss.test", 503, 503, &[]),
        ("san-list.test", 503, 200, &["backend=api"]),
        // The system store does not hold the test CA.
        ("system.test", 503, 503, &[]),
        ("missing-ca.test", 503, 503, &[]),
        ("tls13.test", 503, 503, &[]),
        // The Gateway's client certificate, to a backend that requires one.
        ("mtls.test", 200, 200, &["backend=mtls", "client_cert=yes"]),
        // Two policies for one Service: the older one's hostname.
        ("conflict.test", 200, 200, &["sni=api.backend.test"]),
    ];
    for (run, envoy) in [(&haproxy, false), (&envoy, true)] {
        let p = &run.proxy;
        for (host, via_haproxy, via_envoy, seen) in expect {
            let want = if envoy { via_envoy } else { via_haproxy };
            let (got, body) = p.get(host, "/");
            assert_eq!(got, *want, "{} {host}: {body}", p.name);
            for s in seen.iter().filter(|_| got == 200) {
                assert!(body.contains(s), "{} {host}: {s:?} not in {body}", p.name);
            }
        }
        // HTTPS in (the Gateway's HTTPS listener, its certificate by SNI), verified TLS out.
        let (answer, handshake) =
            https_get_at(run.https, "verified.test", "verified.test", "/", &edge_ca.pem, Offer::Any)
                .unwrap_or_else(|e| panic!("{} HTTPS: {e}\n{}", p.name, p.log()));
        assert_eq!(answer.status, 200, "{} HTTPS: {}", p.name, answer.body);
        assert!(answer.body.contains("sni=api.backend.test"), "{}", answer.body);
        assert_eq!(handshake.leaf_sha256, portico_testkit::pem_sha256(&edge.cert_pem));
    }
}

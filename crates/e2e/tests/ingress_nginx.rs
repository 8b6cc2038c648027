//! The Kubernetes Ingress dialect with ingress-nginx's backend TLS annotations (issue #13,
//! SPEC section 7) through real HAProxy and real Envoy, each started on the files
//! `portico translate` wrote, in front of real TLS backends that report what they saw.

use portico_deploy::translate;
use portico_e2e::{free_port, translated, Backend, BackendKind, Issued, Proxy, TestCa, Via};
use std::path::Path;

/// One Ingress per case: its host, and its annotations.
const CASES: &[(&str, &str)] = &[
    ("unverified.test", "backend-protocol: HTTPS"),
    ("verified.test", "backend-protocol: HTTPS, proxy-ssl-secret: shop/api-ca, proxy-ssl-verify: 'on'"),
    ("wrong-ca.test", "backend-protocol: HTTPS, proxy-ssl-secret: shop/other-ca, proxy-ssl-verify: 'on'"),
    (
        "wrong-name.test",
        "backend-protocol: HTTPS, proxy-ssl-secret: shop/api-ca, proxy-ssl-verify: 'on', proxy-ssl-name: other.test",
    ),
    (
        "sni.test",
        "backend-protocol: HTTPS, proxy-ssl-secret: shop/api-ca, proxy-ssl-verify: 'on', proxy-ssl-server-name: 'on'",
    ),
    (
        "named.test",
        "backend-protocol: HTTPS, proxy-ssl-secret: shop/api-ca, proxy-ssl-verify: 'on', proxy-ssl-server-name: 'on', proxy-ssl-name: backend.test",
    ),
    ("grpcs.test", "backend-protocol: GRPCS, proxy-ssl-secret: shop/api-ca, proxy-ssl-verify: 'on'"),
    ("plain.test", ""),
    ("mtls.test", "backend-protocol: HTTPS, proxy-ssl-secret: shop/api-client, proxy-ssl-verify: 'on'"),
    // To a backend that speaks TLS 1.2 only.
    ("tls13.test", "backend-protocol: HTTPS, proxy-ssl-protocols: TLSv1.3"),
    ("tls12.test", "backend-protocol: HTTPS, proxy-ssl-protocols: TLSv1.2"),
];

/// The ports of the backends: TLS, plain, plain (docs), TLS requiring a client certificate,
/// TLS 1.2 only.
fn manifests(api_ca: &str, other_ca: &str, client: &Issued, ports: [u16; 5]) -> String {
    let [tls, plain, docs, mtls, old] = ports;
    let indent = |pem: &str| pem.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let mut yaml = String::from(
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: portico}\n\
         spec: {controller: portico.dev/ingress-controller}\n",
    );
    for (name, pem) in [("api-ca", api_ca), ("other-ca", other_ca)] {
        yaml += &format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: shop}}\nstringData:\n  ca.crt: |\n{}",
            indent(pem)
        );
    }
    // ca.crt and a client certificate in one Secret, as ingress-nginx users have them.
    yaml += &format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: api-client, namespace: shop}}\ntype: kubernetes.io/tls\n\
         stringData:\n  ca.crt: |\n{}  tls.crt: |\n{}  tls.key: |\n{}",
        indent(api_ca),
        indent(&client.cert_pem),
        indent(&client.key_pem)
    );
    for (service, port) in [("api", tls), ("web", plain), ("docs", docs), ("mtls", mtls), ("old", old)] {
        yaml += &format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {service}, namespace: shop}}\n\
             spec: {{ports: [{{name: https, port: 443}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {service}-1, namespace: shop, labels: {{kubernetes.io/service-name: {service}}}}}\n\
             addressType: IPv4\nports: [{{name: https, port: {port}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n"
        );
    }
    for (i, (host, annotations)) in CASES.iter().enumerate() {
        let annotations: Vec<String> = annotations
            .split(", ")
            .filter(|a| !a.is_empty())
            .map(|a| format!("nginx.ingress.kubernetes.io/{a}"))
            .collect();
        let (service, exact) = match *host {
            "plain.test" => ("web", "docs"),
            "mtls.test" => ("mtls", "mtls"),
            "tls13.test" | "tls12.test" => ("old", "old"),
            _ => ("api", "api"),
        };
        yaml += &format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: case-{i}, namespace: shop, annotations: {{{}}}}}\n\
             spec:\n  ingressClassName: portico\n  rules:\n  - host: {host}\n    http:\n      paths:\n\
             \x20     - {{path: /, pathType: Prefix, backend: {{service: {{name: {service}, port: {{number: 443}}}}}}}}\n\
             \x20     - {{path: /exact, pathType: Exact, backend: {{service: {{name: {exact}, port: {{name: https}}}}}}}}\n\
             {}",
            annotations.join(", "),
            // Plain HTTP only where the annotations ask for none (they apply to every
            // backend of their Ingress, as in ingress-nginx).
            if *host == "plain.test" {
                "      - {path: /docs, pathType: Prefix, backend: {service: {name: docs, port: {number: 443}}}}\n"
            } else {
                ""
            }
        );
    }
    // Another controller's Ingress: not served.
    yaml += "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: theirs, namespace: shop}\n\
             spec:\n  ingressClassName: nginx\n  rules:\n  - host: theirs.test\n    http:\n      paths:\n\
             \x20     - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 443}}}}\n";
    yaml
}

fn proxy(manifests: &Path, out: &Path, envoy: bool) -> (Proxy, translate::Outcome) {
    let via = if envoy { Via::Envoy } else { Via::Haproxy };
    let run = translated(manifests, out, via, free_port(), free_port());
    (run.proxy, run.outcome)
}

#[test]
fn ingress_nginx_annotations_through_both_proxies() {
    let api_ca = TestCa::new("api CA");
    let other_ca = TestCa::new("other CA");
    // The backend's certificate names the Service's cluster name and backend.test.
    let tls = Backend::start(
        "api",
        BackendKind::Tls { cert: api_ca.server(&["api.shop.svc", "backend.test"]), client_ca: None },
    );
    let plain = Backend::start("web", BackendKind::Plain);
    let docs = Backend::start("docs", BackendKind::Plain);
    let client_ca = TestCa::new("client CA");
    let mtls = Backend::start(
        "mtls",
        BackendKind::Tls { cert: api_ca.server(&["mtls.shop.svc"]), client_ca: Some(client_ca.pem.clone()) },
    );
    let client = client_ca.client("portico");
    let old = Backend::start("old", BackendKind::Tls12Only(api_ca.server(&["old.shop.svc"])));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ingresses.yaml");
    std::fs::write(
        &file,
        manifests(&api_ca.pem, &other_ca.pem, &client, [tls.port, plain.port, docs.port, mtls.port, old.port]),
    )
    .unwrap();
    let (haproxy, outcome) = proxy(&file, &dir.path().join("h"), false);
    let (envoy, _) = proxy(&file, &dir.path().join("e"), true);

    let statuses = &outcome.resolved.statuses;
    assert!(!statuses.iter().any(|s| s.object.name.as_str() == "theirs"), "another controller's Ingress has no status");
    let unverified = statuses.iter().find(|s| s.object.name.as_str() == "case-0").unwrap();
    assert!(
        unverified.problems.iter().any(|p| p.message == "backend TLS is not verified: set proxy-ssl-verify: \"on\""),
        "{unverified:?}"
    );

    // (host, path, status, what the backend saw)
    let expect: &[(&str, &str, u16, &[&str])] = &[
        ("unverified.test", "/", 200, &["backend=api", "sni=-"]),
        ("verified.test", "/", 200, &["backend=api", "sni=-"]),
        ("wrong-ca.test", "/", 503, &[]),
        ("wrong-name.test", "/", 503, &[]),
        ("sni.test", "/", 200, &["sni=api.shop.svc"]),
        ("named.test", "/", 200, &["sni=backend.test"]),
        ("grpcs.test", "/", 200, &["alpn=h2", "version=HTTP/2.0"]),
        ("plain.test", "/", 200, &["backend=web"]),
        // Path types: Exact is one path; Prefix matches by path element.
        ("verified.test", "/exact", 200, &["backend=api"]),
        ("plain.test", "/exact", 200, &["backend=docs"]),
        ("plain.test", "/exact/more", 200, &["backend=web"]), // not /exact: under the Prefix "/"
        ("plain.test", "/docs", 200, &["backend=docs"]),
        ("plain.test", "/docs/a/b", 200, &["backend=docs"]),
        ("plain.test", "/docsearch", 200, &["backend=web"]), // not under /docs: the "/" route
        ("theirs.test", "/", 404, &[]),
        // proxy-ssl-secret's client certificate, to a backend that requires one.
        ("mtls.test", "/", 200, &["backend=mtls", "client_cert=yes"]),
        ("verified.test", "/", 200, &["client_cert=no"]),
        // proxy-ssl-protocols: TLS 1.3 only refuses a TLS 1.2 backend; TLS 1.2 reaches it.
        ("tls13.test", "/", 503, &[]),
        ("tls12.test", "/", 200, &["backend=old"]),
    ];
    for p in [&haproxy, &envoy] {
        for (host, path, status, seen) in expect {
            let (got, body) = p.get(host, path);
            assert_eq!(got, *status, "{} {host}{path}: {body}", p.name);
            for s in *seen {
                assert!(body.contains(s), "{} {host}{path}: {s:?} not in {body}", p.name);
            }
        }
    }
}

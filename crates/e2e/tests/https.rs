//! HTTPS at the edge (issue #14, SPEC section 8) through real HAProxy and real Envoy, each
//! started on the files `portico translate` wrote: clients that verify the served
//! certificate per host by SNI, an unknown SNI refused, an invalid certificate failing only
//! its host, the 301 and its exception, a TLS 1.3-only host refusing 1.2, and HTTPS in with
//! verified TLS out to a backend that reports the SNI it saw.

use portico_deploy::translate;
use portico_e2e::{free_port, translated, Backend, BackendKind, Issued, Proxy, TestCa, Via};
use portico_testkit::{http_answer_at, https_get_at, pem_sha256, Offer};
use std::net::SocketAddr;
use std::path::Path;

struct Certificates {
    edge_ca: TestCa,
    good: Issued,
    strict: Issued,
    bad: Issued,
    voyager: Issued,
}

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("    {l}\n")).collect()
}

fn tls_secret(name: &str, cert: &Issued) -> String {
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: edge}}\ntype: kubernetes.io/tls\n\
         stringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(&cert.cert_pem),
        indent(&cert.key_pem)
    )
}

fn manifests(certs: &Certificates, backend_ca: &str, plain: u16, tls: u16) -> String {
    let service = |name: &str, port: u16| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: edge}}\n\
             spec: {{ports: [{{name: web, port: 443}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: edge, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{name: web, port: {port}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n"
        )
    };
    let proxy = |name: &str, fqdn: &str, tls: &str, routes: &str| {
        format!(
            "---\napiVersion: projectcontour.io/v1\nkind: HTTPProxy\nmetadata: {{name: {name}, namespace: edge}}\n\
             spec:\n  virtualhost: {{fqdn: {fqdn}{tls}}}\n  routes:\n{routes}"
        )
    };
    let plain_route = "  - services: [{name: plain, port: 443}]\n";
    let mut yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: backend-ca, namespace: edge}}\nstringData:\n  ca.crt: |\n{}",
        indent(backend_ca)
    );
    yaml += &tls_secret("good-cert", &certs.good);
    yaml += &tls_secret("strict-cert", &certs.strict);
    yaml += &tls_secret("bad-cert", &certs.bad);
    yaml += &tls_secret("voyager-cert", &certs.voyager);
    yaml += &service("plain", plain);
    yaml += &service("tlsback", tls);
    yaml += &proxy(
        "good",
        "good.test",
        ", tls: {secretName: good-cert}",
        "  - services: [{name: plain, port: 443}]\n\
         \x20 - conditions: [{prefix: /insecure-ok}]\n    permitInsecure: true\n    services: [{name: plain, port: 443}]\n\
         \x20 - conditions: [{prefix: /reencrypt}]\n    services: [{name: tlsback, port: 443, protocol: tls, validation: {caSecret: backend-ca, subjectName: backend.test}}]\n",
    );
    yaml +=
        &proxy("strict", "strict.test", ", tls: {secretName: strict-cert, minimumProtocolVersion: '1.3'}", plain_route);
    yaml += &proxy("bad", "bad.test", ", tls: {secretName: bad-cert}", plain_route);
    yaml += &proxy("clear", "clear.test", "", plain_route);
    yaml += "---\napiVersion: voyager.appscode.com/v1beta1\nkind: Ingress\nmetadata: {name: ing, namespace: edge}\n\
             spec:\n  tls: [{hosts: [voyager.test], secretName: voyager-cert}]\n  rules:\n\
             \x20 - host: voyager.test\n    http: {paths: [{backend: {serviceName: plain, servicePort: '443'}}]}\n";
    yaml
}

/// A proxy on translated files, with its HTTP and HTTPS addresses.
struct Edge {
    proxy: Proxy,
    http: SocketAddr,
    https: SocketAddr,
}

fn edge(manifests: &Path, out: &Path, envoy: bool) -> (Edge, translate::Outcome) {
    let via = if envoy { Via::Envoy } else { Via::Haproxy };
    let run = translated(manifests, out, via, free_port(), free_port());
    (Edge { proxy: run.proxy, http: run.http, https: run.https }, run.outcome)
}

#[test]
fn https_at_the_edge_through_both_proxies() {
    let edge_ca = TestCa::new("edge CA");
    let backend_ca = TestCa::new("backend CA");
    let certs = Certificates {
        good: edge_ca.server(&["good.test"]),
        strict: edge_ca.server(&["strict.test"]),
        bad: edge_ca.server(&["other.test"]),
        voyager: edge_ca.server(&["voyager.test"]),
        edge_ca,
    };
    let plain = Backend::start("plain", BackendKind::Plain);
    let tls = Backend::start("tls", BackendKind::Tls { cert: backend_ca.server(&["backend.test"]), client_ca: None });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.yaml");
    std::fs::write(&file, manifests(&certs, &backend_ca.pem, plain.port, tls.port)).unwrap();

    let (haproxy, outcome) = edge(&file, &dir.path().join("h"), false);
    let (envoy, _) = edge(&file, &dir.path().join("e"), true);
    let bad = outcome.resolved.statuses.iter().find(|s| s.object.name.as_str() == "bad").unwrap();
    assert!(bad.problems.iter().any(|p| p.message.contains("certificate does not cover host \"bad.test\"")), "{bad:?}");
    let ca = &certs.edge_ca.pem;
    for edge in [&haproxy, &envoy] {
        let name = edge.proxy.name;
        let get = |sni: &str, path: &str, offer| https_get_at(edge.https, sni, sni, path, ca, offer);

        // The certificate by SNI, verified by the client (the name too).
        for (host, cert) in [("good.test", &certs.good), ("voyager.test", &certs.voyager)] {
            let (answer, handshake) = get(host, "/", Offer::Any).unwrap_or_else(|e| panic!("{name} {host}: {e}"));
            assert_eq!(answer.status, 200, "{name} {host}: {answer:?}");
            assert!(answer.body.starts_with("backend=plain"), "{name} {host}: {answer:?}");
            assert_eq!(handshake.leaf_sha256, pem_sha256(&cert.cert_pem), "{name}: {host}'s own certificate");
        }
        // TLS 1.2 is accepted by default.
        let (answer, handshake) = get("good.test", "/", Offer::Tls12Only).expect("TLS 1.2");
        assert_eq!((answer.status, handshake.version.as_str()), (200, "TLSv1_2"), "{name}");

        // An SNI no host has gets no certificate: the handshake fails.
        let unknown = get("unknown.test", "/", Offer::Any);
        assert!(unknown.is_err(), "{name}: an unknown SNI must be refused, got {unknown:?}");
        // A certificate that does not cover its host fails that host only.
        let broken = get("bad.test", "/", Offer::Any);
        assert!(broken.is_err(), "{name}: bad.test has no valid certificate, got {broken:?}");
        assert_eq!(http_answer_at(edge.http, "bad.test", "/").unwrap().status, 503, "{name}: never in the clear");
        assert_eq!(get("good.test", "/", Offer::Any).unwrap().0.status, 200, "{name}: the other hosts are unaffected");

        // TLS 1.3 only where asked.
        let old = get("strict.test", "/", Offer::Tls12Only);
        assert!(old.is_err(), "{name}: strict.test must refuse TLS 1.2, got {old:?}");
        let (answer, handshake) = get("strict.test", "/", Offer::Tls13Only).expect("TLS 1.3");
        assert_eq!((answer.status, handshake.version.as_str()), (200, "TLSv1_3"), "{name}");

        // Plain HTTP to a host with a certificate: 301 to the same host and path.
        let answer = http_answer_at(edge.http, "good.test:8080", "/a/b?c=d").unwrap();
        assert_eq!(answer.status, 301, "{name}: {answer:?}");
        assert_eq!(answer.location.as_deref(), Some("https://good.test/a/b?c=d"), "{name}");
        let answer = http_answer_at(edge.http, "voyager.test", "/").unwrap();
        assert_eq!((answer.status, answer.location.as_deref()), (301, Some("https://voyager.test/")), "{name}");
        // permitInsecure, and hosts without a certificate, are served in the clear.
        assert_eq!(http_answer_at(edge.http, "good.test", "/insecure-ok").unwrap().status, 200, "{name}");
        assert_eq!(http_answer_at(edge.http, "clear.test", "/").unwrap().status, 200, "{name}");

        // HTTPS in, verified TLS out: the backend saw the name it was verified against.
        let (answer, _) = get("good.test", "/reencrypt", Offer::Any).unwrap();
        assert_eq!(answer.status, 200, "{name}: {answer:?}");
        assert!(answer.body.contains("backend=tls sni=backend.test"), "{name}: {answer:?}");
    }
}

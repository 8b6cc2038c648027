//! The traffic matrix (issue #3): real HAProxy and real Envoy, each started on the files
//! `portico translate` wrote, in front of real TLS backends (rustls, certificates from
//! rcgen). Every case is asserted through both proxies, by HTTP status and by what the
//! backend saw (SNI, ALPN, HTTP version, client certificate).

use portico_deploy::translate;
use portico_e2e::{free_port, Backend, BackendKind, Proxy, TestCa};
use std::path::Path;

/// The world: Services pointing at the backends, CA and client-certificate Secrets, a
/// Contour HTTPProxy (host contour.test) and a Voyager Ingress (host voyager.test).
fn manifests(good_ca: &str, other_ca: &str, client: &portico_e2e::Issued, tls: u16, mtls: u16, plain: u16) -> String {
    let indent = |pem: &str| pem.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let service = |name: &str, port: u16, annotations: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: app, annotations: {{{annotations}}}}}\n\
             spec: {{ports: [{{name: web, port: 443}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: app, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{name: web, port: {port}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n"
        )
    };
    let tls_annotation = "projectcontour.io/upstream-protocol.tls: \"443\"";
    let mut yaml = String::new();
    yaml += &format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: good-ca, namespace: app}}\nstringData:\n  ca.crt: |\n{}",
        indent(good_ca)
    );
    yaml += &format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: other-ca, namespace: app}}\nstringData:\n  ca.crt: |\n{}",
        indent(other_ca)
    );
    yaml += &format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: client, namespace: portico}}\ntype: kubernetes.io/tls\n\
         stringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(&client.cert_pem),
        indent(&client.key_pem)
    );
    yaml += &service("tlsback", tls, tls_annotation);
    yaml += &service("mtlsback", mtls, tls_annotation);
    yaml += &service("plainback", plain, "");
    yaml += &service("vnone", tls, "ingress.appscode.com/backend-tls: ssl verify none");
    yaml += &service(
        "vverified",
        tls,
        "ingress.appscode.com/backend-tls: ssl verify required verifyhost backend.test, portico.dev/upstream-ca-secret: good-ca",
    );
    yaml += &service(
        "vwrong",
        tls,
        "ingress.appscode.com/backend-tls: ssl verify required verifyhost other.test, portico.dev/upstream-ca-secret: good-ca",
    );
    let route =
        |prefix: &str, service: &str| format!("  - conditions: [{{prefix: {prefix}}}]\n    services: [{service}]\n");
    yaml += "---\napiVersion: projectcontour.io/v1\nkind: HTTPProxy\nmetadata: {name: matrix, namespace: app}\n\
             spec:\n  virtualhost: {fqdn: contour.test}\n  routes:\n";
    yaml += &route("/annotation", "{name: tlsback, port: 443}");
    yaml +=
        &route("/verified", "{name: tlsback, port: 443, validation: {caSecret: good-ca, subjectName: backend.test}}");
    yaml +=
        &route("/wrong-ca", "{name: tlsback, port: 443, validation: {caSecret: other-ca, subjectName: backend.test}}");
    yaml +=
        &route("/wrong-name", "{name: tlsback, port: 443, validation: {caSecret: good-ca, subjectName: other.test}}");
    yaml += &route("/missing", "{name: tlsback, port: 443, validation: {caSecret: nope, subjectName: backend.test}}");
    yaml += &route(
        "/h2",
        "{name: tlsback, port: 443, protocol: h2, validation: {caSecret: good-ca, subjectName: backend.test}}",
    );
    yaml += &route("/mtls", "{name: mtlsback, port: 443, validation: {caSecret: good-ca, subjectName: backend.test}}");
    yaml += &route("/plain", "{name: plainback, port: 443}");
    // Timeouts agree between the proxies: the default, and timeoutPolicy.response.
    yaml += &route("/slow-default", "{name: plainback, port: 443}");
    yaml += "  - conditions: [{prefix: /slow-1s}]\n    timeoutPolicy: {response: 1s}\n    services: [{name: plainback, port: 443}]\n";
    yaml += "  - conditions: [{prefix: /idle-1s}]\n    timeoutPolicy: {idle: 1s}\n    services: [{name: plainback, port: 443}]\n";
    // Inclusion (SPEC section 9): the root includes a team's child under /team, which
    // includes a proxy that does not exist under /ghost; `team/orphan` is included by nothing.
    yaml += "  includes:\n  - {name: child, namespace: team, conditions: [{prefix: /team}]}\n";
    yaml += &service("teamplain", plain, "").replace("namespace: app", "namespace: team");
    yaml += &service("teamtls", tls, tls_annotation).replace("namespace: app", "namespace: team");
    yaml += "---\napiVersion: projectcontour.io/v1\nkind: TLSCertificateDelegation\nmetadata: {name: to-team, namespace: app}\n\
             spec: {delegations: [{secretName: good-ca, targetNamespaces: [team]}]}\n";
    yaml += "---\napiVersion: projectcontour.io/v1\nkind: HTTPProxy\nmetadata: {name: child, namespace: team}\nspec:\n\
             \x20 includes: [{name: ghost, conditions: [{prefix: /ghost}]}]\n  routes:\n";
    yaml += &route("/api", "{name: teamplain, port: 443}");
    yaml +=
        &route("/secure", "{name: teamtls, port: 443, validation: {caSecret: app/good-ca, subjectName: backend.test}}");
    yaml += "---\napiVersion: projectcontour.io/v1\nkind: HTTPProxy\nmetadata: {name: orphan, namespace: team}\nspec:\n  routes:\n";
    yaml += &route("/orphan", "{name: teamplain, port: 443}");
    yaml += "---\napiVersion: voyager.appscode.com/v1beta1\nkind: Ingress\nmetadata: {name: matrix, namespace: app}\n\
             spec:\n  rules:\n  - host: voyager.test\n    http:\n      paths:\n\
             \x20     - {path: /none, backend: {serviceName: vnone, servicePort: '443'}}\n\
             \x20     - {path: /verified, backend: {serviceName: vverified, servicePort: '443'}}\n\
             \x20     - {path: /wrong-name, backend: {serviceName: vwrong, servicePort: '443'}}\n\
             \x20 - host: '*.wild.test'\n    http:\n      paths:\n\
             \x20     - {path: /, backend: {serviceName: plainback, servicePort: '443'}}\n\
             \x20 - http:\n      paths:\n\
             \x20     - {path: /anyhost, backend: {serviceName: vnone, servicePort: '443'}}\n";
    yaml
}

/// Translate the manifests for one proxy port, as `portico translate` does.
fn translate_for(manifests: &Path, out: &Path, port: u16, client_cert: bool) -> translate::Outcome {
    let options = translate::Options {
        paths: vec![manifests.to_owned()],
        out_dir: out.to_owned(),
        http_port: port,
        https_port: free_port(),
        envoy_admin_port: free_port(),
        bind_address: "127.0.0.1".parse().unwrap(),
        client_cert: client_cert.then(|| portico_model::SecretRef::new("portico", "client").unwrap()),
        root_namespaces: Vec::new(),
        now: portico_deploy::unix_now(),
    };
    let outcome = translate::run(&options).expect("translate");
    assert!(outcome.problems.is_empty() && outcome.render_problems.is_empty(), "{outcome:?}");
    outcome
}

/// Start HAProxy and Envoy on freshly translated files.
fn proxies(manifests: &Path, root: &Path, client_cert: bool) -> (Vec<Proxy>, translate::Outcome) {
    let (haproxy_port, envoy_port) = (free_port(), free_port());
    let dir = root.join(if client_cert { "with-client-cert" } else { "without" });
    let outcome = translate_for(manifests, &dir.join("h"), haproxy_port, client_cert);
    translate_for(manifests, &dir.join("e"), envoy_port, client_cert);
    let haproxy = Proxy::haproxy(&dir.join("h/haproxy/haproxy.cfg"), haproxy_port);
    let envoy = Proxy::envoy(&dir.join("e/envoy/envoy.yaml"), envoy_port);
    (vec![haproxy, envoy], outcome)
}

/// (sentence, host, path, expected status, what the body must contain when it is 200)
const MATRIX: &[(&str, &str, &str, u16, &[&str])] = &[
    ("TLS by annotation, unverified, sends no SNI", "contour.test", "/annotation", 200, &["backend=tls", "sni=-"]),
    ("validation with the right CA and name", "contour.test", "/verified", 200, &["backend=tls", "sni=backend.test"]),
    ("validation against the wrong CA fails", "contour.test", "/wrong-ca", 503, &[]),
    ("the right CA but the wrong subject name fails", "contour.test", "/wrong-name", 503, &[]),
    ("a missing CA secret answers 503", "contour.test", "/missing", 503, &[]),
    (
        "h2 upstream over HTTP/2 with ALPN h2",
        "contour.test",
        "/h2",
        200,
        &["alpn=h2", "version=HTTP/2.0", "sni=backend.test"],
    ),
    (
        "an upstream that requires a client certificate gets it",
        "contour.test",
        "/mtls",
        200,
        &["backend=mtls", "client_cert=yes"],
    ),
    ("a plain HTTP backend", "contour.test", "/plain", 200, &["backend=plain", "version=HTTP/1.1"]),
    ("Voyager ssl verify none", "voyager.test", "/none", 200, &["backend=tls"]),
    (
        "Voyager verify required verifyhost with the CA from the Secret",
        "voyager.test",
        "/verified",
        200,
        &["sni=backend.test"],
    ),
    ("Voyager verifyhost with the wrong name fails", "voyager.test", "/wrong-name", 503, &[]),
    ("no route", "nowhere.test", "/", 404, &[]),
    (
        "a backend answering in 2.5 s is waited for by default",
        "contour.test",
        "/slow-default?delay_ms=2500",
        200,
        &["backend=plain"],
    ),
    (
        "timeoutPolicy.response 1s: a backend answering in 2.5 s times out",
        "contour.test",
        "/slow-1s?delay_ms=2500",
        504,
        &[],
    ),
    ("timeoutPolicy.idle 1s: a backend silent for 2.5 s times out", "contour.test", "/idle-1s?delay_ms=2500", 504, &[]),
    (
        "timeoutPolicy.idle 1s: a backend answering at once is served",
        "contour.test",
        "/idle-1s",
        200,
        &["backend=plain"],
    ),
    ("a wildcard host takes one label", "a.wild.test", "/", 200, &["backend=plain"]),
    ("a wildcard host does not take two labels", "a.b.wild.test", "/", 404, &[]),
    ("a wildcard host is not its own suffix", "wild.test", "/", 404, &[]),
    // Both proxies agree on a host deeper than a wildcard: it falls through to the rules
    // for any host (HAProxy's third map; in Envoy the wildcard's virtual host carries them).
    (
        "a host two labels under a wildcard falls through to any host's rules",
        "a.b.wild.test",
        "/anyhost",
        200,
        &["backend=tls"],
    ),
    (
        "a host one label under a wildcard takes the wildcard's rules",
        "a.wild.test",
        "/anyhost",
        200,
        &["backend=plain"],
    ),
    ("any host's rules serve another host", "nowhere.test", "/anyhost", 200, &["backend=tls"]),
    (
        "a child's route at the root's host under the joined prefix",
        "contour.test",
        "/team/api",
        200,
        &["backend=plain"],
    ),
    (
        "a child's TLS route verified with a CA delegated to the child's namespace",
        "contour.test",
        "/team/secure",
        200,
        &["backend=tls", "sni=backend.test"],
    ),
    ("a child's route is not served at its own prefix", "contour.test", "/api", 404, &[]),
    ("a child's route is not served on another host", "nowhere.test", "/team/api", 404, &[]),
    ("an include of a missing proxy answers 502 under its joined prefix", "contour.test", "/team/ghost", 502, &[]),
    ("an orphan is not served at the root's host", "contour.test", "/orphan", 404, &[]),
    ("an orphan is not served on any other host", "nowhere.test", "/orphan", 404, &[]),
];

#[test]
fn the_traffic_matrix_through_real_haproxy_and_real_envoy() {
    let good = TestCa::new("good ca");
    let other = TestCa::new("other ca");
    let clients = TestCa::new("client ca");
    let client = clients.client("portico-proxy");
    let tls = Backend::start("tls", BackendKind::Tls { cert: good.server(&["backend.test"]), client_ca: None });
    let mtls = Backend::start(
        "mtls",
        BackendKind::Tls { cert: good.server(&["backend.test"]), client_ca: Some(clients.pem.clone()) },
    );
    let plain = Backend::start("plain", BackendKind::Plain);

    let root = tempfile::tempdir().unwrap();
    let manifests_dir = root.path().join("manifests");
    std::fs::create_dir(&manifests_dir).unwrap();
    std::fs::write(
        manifests_dir.join("world.yaml"),
        manifests(&good.pem, &other.pem, &client, tls.port, mtls.port, plain.port),
    )
    .unwrap();

    let (with_client_cert, outcome) = proxies(&manifests_dir, root.path(), true);
    let description = outcome
        .resolved
        .statuses
        .iter()
        .find(|s| s.object.name.as_str() == "matrix" && s.object.kind == portico_model::Kind::HttpProxy)
        .map(|s| s.to_contour().description)
        .unwrap();
    assert_eq!(
        description,
        "route \"/missing\": service \"tlsback\": upstreamValidation requested but secret not found or misconfigured",
        "the missing secret's route is the status's first error"
    );

    let mut failures = Vec::new();
    for proxy in &with_client_cert {
        for (sentence, host, path, status, wants) in MATRIX {
            let (got, body) = proxy.get(host, path);
            let ok = got == *status && wants.iter().all(|w| body.contains(w));
            println!("{:8} {:55} {host}{path} -> {got} {}", proxy.name, sentence, body.trim());
            if !ok {
                failures.push(format!("{}: {sentence}: got {got} {body:?}, want {status} with {wants:?}", proxy.name));
            }
        }
    }

    // Without --client-cert, the upstream that requires one refuses the proxy.
    let (without, _) = proxies(&manifests_dir, root.path(), false);
    for proxy in &without {
        let (got, body) = proxy.get("contour.test", "/mtls");
        println!("{:8} {:55} contour.test/mtls -> {got} {}", proxy.name, "without --client-cert", body.trim());
        if got == 200 {
            failures.push(format!("{}: without a client certificate /mtls answered 200", proxy.name));
        }
        let (got, body) = proxy.get("contour.test", "/verified");
        if got != 200 || !body.contains("client_cert=no") {
            failures.push(format!("{}: /verified without client cert: {got} {body:?}", proxy.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

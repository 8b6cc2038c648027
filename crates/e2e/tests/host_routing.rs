//! How a request's host picks its routes, through the whole stack and both proxies: an
//! exact host, written in capitals or with a port; a wildcard; any host; a path the exact
//! host has no route for (it falls through to the wildcard over it, then to any host, as
//! Gateway API merges routes without hostnames into every host's); a client that sends
//! Portico's own routing header. Envoy finds an
//! exact host's routes by its scope and the rest through its fallback (see
//! `renderer-envoy/src/scopes.rs`): both proxies must answer alike, and no Portico header
//! may reach a backend.

use portico_e2e::{LocalStack, BOTH, UPSTREAM_TLS};

/// An exact host (`scoped.example.com`, only `/app`, to web), a wildcard
/// (`*.wild.example.com`, to payments) and any host (to legacy), over TLS unverified
/// (Contour's annotation for the HTTPProxy, ingress-nginx's for the Ingresses).
fn manifests(web: u16, payments: u16, legacy: u16) -> String {
    let service = |name: &str, port: u16| portico_e2e::service(name, "hosts", UPSTREAM_TLS, port);
    let ingress = |name: &str, host: &str, service: &str| {
        let host = if host.is_empty() { String::new() } else { format!("host: \"{host}\"\n    ") };
        format!(
            "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
  namespace: hosts
  annotations: {{nginx.ingress.kubernetes.io/backend-protocol: HTTPS}}
spec:
  ingressClassName: portico
  rules:
  - {host}http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: {service}, port: {{number: 8443}}}}}}}}
---
"
        )
    };
    format!(
        "apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {{name: portico}}
spec: {{controller: portico.dev/ingress-controller}}
---
{}{}{}apiVersion: projectcontour.io/v1
kind: HTTPProxy
metadata: {{name: scoped, namespace: hosts}}
spec:
  virtualhost: {{fqdn: scoped.example.com}}
  routes:
  - conditions: [{{prefix: /app}}]
    services: [{{name: exact, port: 8443}}]
---
{}{}",
        service("exact", web),
        service("wild", payments),
        service("any", legacy),
        ingress("wild", "*.wild.example.com", "wild"),
        ingress("any", "", "any"),
    )
}

/// The status and the backend's name (`-` when no backend answered) of a GET to `at`.
fn backend_at(at: std::net::SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let (status, body) =
        portico_testkit::http_get_with(at, host, path, headers).unwrap_or_else(|e| panic!("{at} {host}{path}: {e}"));
    let backend = body.split_whitespace().find_map(|f| f.strip_prefix("backend=")).unwrap_or("-").to_owned();
    assert!(
        status != 200 || body.contains("portico_headers=-"),
        "{at} {host}{path}: a Portico header reached the backend: {body}"
    );
    (status, backend)
}

type Case<'a> = (&'a str, &'a str, Vec<(&'a str, String)>, (u16, &'a str), &'a str);

/// What each request must get, on a proxy whose HTTP port is `port`.
fn cases(port: u16) -> Vec<Case<'static>> {
    // The scopes an attacker would name: the exact host's, and the fallback.
    let (exact_scope, fallback_scope) = (format!("{port}/scoped.example.com"), format!("{port}/*"));
    vec![
        ("scoped.example.com", "/app", vec![], (200, "web"), "the exact host"),
        ("SCOPED.Example.COM", "/app", vec![], (200, "web"), "the exact host in capitals"),
        ("scoped.example.com:8080", "/app/x", vec![], (200, "web"), "the exact host with a port"),
        (
            "scoped.example.com",
            "/other",
            vec![],
            (200, "legacy"),
            "a path the exact host has no route for: any host's (exact, wildcard, any)",
        ),
        ("x.wild.example.com", "/", vec![], (200, "payments"), "a host under the wildcard"),
        ("X.Wild.Example.com", "/app", vec![], (200, "payments"), "the wildcard in capitals"),
        ("a.b.wild.example.com", "/", vec![], (200, "legacy"), "two labels under the wildcard: any host's"),
        ("nowhere.example.net", "/app", vec![], (200, "legacy"), "a host no route names: any host's"),
        (
            "nowhere.example.net",
            "/app",
            vec![("x-portico-scope", exact_scope)],
            (200, "legacy"),
            "a client naming another host's scope gets its own host's routes",
        ),
        (
            "scoped.example.com",
            "/app",
            vec![("x-portico-scope", fallback_scope)],
            (200, "web"),
            "a client naming the fallback scope gets its own host's routes",
        ),
    ]
}

fn check(what: &str, at: std::net::SocketAddr, logs: &dyn Fn() -> String) {
    for (host, path, headers, (status, backend), case) in cases(at.port()) {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let got = backend_at(at, host, path, &headers);
        assert_eq!(got, (status, backend.to_owned()), "{what}: {case} ({host}{path})\n{}", logs());
    }
}

#[test]
fn a_request_finds_its_host_routes_exact_wildcard_or_any_alike_in_both_proxies() {
    let stack = LocalStack::start(&[]);
    let demo = &stack.demo;
    let hosts = manifests(demo.web.port, demo.payments.port, demo.legacy.port);
    stack.write("hosts.yaml", &hosts);
    // Each kind of host live in both proxies (an exact host answers from any host's routes
    // until its own are in: wait for its own backend).
    for (host, backend) in
        [("nowhere.example.net", "legacy"), ("x.wild.example.com", "payments"), ("scoped.example.com", "web")]
    {
        for via in BOTH {
            let started = std::time::Instant::now();
            while backend_at(stack.address(via), host, "/app", &[]) != (200, backend.to_owned()) {
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(30),
                    "{via:?}: {host} never reached {backend}"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
    for via in BOTH {
        check(&format!("{via:?} fed by the stack"), stack.address(via), &|| stack.logs());
    }

    // The same from `portico translate`'s files: HAProxy's, and Envoy's static
    // configuration (one route table, no scopes).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hosts.yaml"), &hosts).unwrap();
    for via in BOTH {
        let out = dir.path().join(format!("{via:?}"));
        let t = portico_e2e::translated(
            &dir.path().join("hosts.yaml"),
            &out,
            via,
            portico_e2e::free_port(),
            portico_e2e::free_port(),
        );
        check(&format!("{via:?} from translate"), t.http, &|| t.proxy.log());
    }
}

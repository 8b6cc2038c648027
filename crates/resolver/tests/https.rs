//! SPEC section 8: HTTPS at the edge. Which hosts are served over HTTPS with which
//! certificate, the 301 and its exception, and the statuses of every failure.

mod support;

use portico_model::{HostMatch, Kind, RouteAction, SecretVerdict, TlsVersion};
use portico_resolver::Config;
use support::*;

const HTTP: u16 = 8080;
const HTTPS: u16 = 8443;

/// A Service `web` in `shop` with one endpoint, and whatever else `rest` adds.
fn with_web(rest: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints: [{{addresses: [10.1.0.1]}}]
{rest}"#
    )
}

/// A root HTTPProxy `shop/<name>` for `fqdn` with `tls` (YAML flow, or empty) and two
/// routes: `/` and `/plain` (the latter with `permitInsecure`).
fn proxy(name: &str, fqdn: &str, tls: &str) -> String {
    let tls = if tls.is_empty() { String::new() } else { format!(", tls: {tls}") };
    format!(
        r#"
---
apiVersion: projectcontour.io/v1
kind: HTTPProxy
metadata: {{name: {name}, namespace: shop}}
spec:
  virtualhost: {{fqdn: {fqdn}{tls}}}
  routes:
  - services: [{{name: web, port: 80}}]
  - conditions: [{{prefix: /plain}}]
    permitInsecure: true
    services: [{{name: web, port: 80}}]
"#
    )
}

fn cert(secret: &str, names: &[&str]) -> SecretVerdict {
    key_pair(secret, "cert-sha", names)
}

fn serving(w: &World, host: &str) -> Option<portico_model::ServingTls> {
    let host = HostMatch::parse(host).unwrap();
    let listener = w.resolved.model.listeners.iter().find(|l| l.port == HTTPS)?;
    listener.virtual_hosts.iter().find(|v| v.host == host).and_then(|v| v.tls.clone())
}

fn redirect() -> Option<u16> {
    Some(301)
}

#[test]
fn a_host_with_a_valid_certificate_is_served_over_https_and_its_plain_routes_redirect() {
    let w = world(
        &with_web(&proxy("app", "app.example.com", "{secretName: app-cert}")),
        vec![cert("shop/app-cert", &["app.example.com"])],
    );
    assert_eq!(w.status("shop/app").current_status, "valid", "{:?}", errors(&w.status("shop/app")));
    let tls = serving(&w, "app.example.com").expect("served over HTTPS");
    assert_eq!((tls.secret.to_string().as_str(), tls.sha256.as_str()), ("shop/app-cert", "cert-sha"));
    assert_eq!(tls.min_version, TlsVersion::Tls12, "TLS 1.2 is the minimum by default");
    assert_eq!(w.cluster_of(HTTPS, "app.example.com", "/").key.service.as_str(), "web");
    assert_eq!(w.answers(HTTP, "app.example.com", "/"), redirect());
    assert_eq!(w.route(HTTP, "app.example.com", "/").action, RouteAction::RedirectHttps { port: 443 });
    assert_eq!(w.answers(HTTP, "app.example.com", "/plain"), None, "permitInsecure: served in the clear too");
    assert_eq!(w.answers(HTTPS, "app.example.com", "/plain"), None, "and over HTTPS");
    // Plain HTTP hosts are never on the HTTPS listener.
    let plain = world(&with_web(&proxy("app", "app.example.com", "")), vec![]);
    assert!(!plain.resolved.model.listeners.iter().any(|l| l.port == HTTPS));
    assert_eq!(plain.answers(HTTP, "app.example.com", "/"), None);
}

#[test]
fn the_redirect_names_the_port_clients_reach_https_on() {
    let config = Config { https_redirect_port: 9443, ..Config::default() };
    let w = world_with(
        &with_web(&proxy("app", "app.example.com", "{secretName: app-cert}")),
        vec![cert("shop/app-cert", &["app.example.com"])],
        &config,
    );
    assert_eq!(w.route(HTTP, "app.example.com", "/").action, RouteAction::RedirectHttps { port: 9443 });
}

#[test]
fn every_certificate_failure_makes_the_object_invalid_with_its_reason_and_fails_closed() {
    for (sentence, tls, verdicts, reason, message) in [
        (
            "a missing Secret",
            "{secretName: gone}",
            vec![],
            "SecretNotValid",
            "spec.virtualhost.tls.secretName: TLS Secret \"shop/gone\" not found",
        ),
        (
            "a key that does not match",
            "{secretName: app-cert}",
            vec![SecretVerdict {
                key_pair: Err("the private key does not match the leaf certificate".into()),
                ..cert("shop/app-cert", &[])
            }],
            "SecretNotValid",
            "spec.virtualhost.tls.secretName: TLS Secret \"shop/app-cert\": the private key does not match the leaf certificate",
        ),
        (
            "a certificate for another host",
            "{secretName: app-cert}",
            vec![cert("shop/app-cert", &["other.example.com", "*.example.org"])],
            "SecretNotValid",
            "spec.virtualhost.tls.secretName: TLS Secret \"shop/app-cert\": certificate does not cover host \"app.example.com\" (it is for \"other.example.com, *.example.org\")",
        ),
        (
            "a Secret of another namespace without a delegation",
            "{secretName: certs/wild}",
            vec![cert("certs/wild", &["*.example.com"])],
            "DelegationNotPermitted",
            "spec.virtualhost.tls.secretName: certificate delegation not permitted for TLS Secret \"certs/wild\": add a TLSCertificateDelegation in namespace \"certs\" listing secretName \"wild\" with targetNamespaces [\"shop\"] or [\"*\"]",
        ),
        (
            "a TLS version Portico does not offer",
            "{secretName: app-cert, minimumProtocolVersion: '1.1'}",
            vec![cert("shop/app-cert", &["app.example.com"])],
            "InvalidValue",
            "spec.virtualhost.tls.minimumProtocolVersion \"1.1\" is not supported (use 1.2 or 1.3)",
        ),
        (
            "passthrough (no secretName)",
            "{passthrough: true}",
            vec![],
            "InvalidValue",
            "spec.virtualhost.tls.secretName: it is empty; name a kubernetes.io/tls Secret (TLS passthrough is not supported)",
        ),
        (
            "a Secret name outside the grammar",
            "{secretName: 'a/b/c'}",
            vec![],
            "InvalidValue",
            "spec.virtualhost.tls.secretName: \"a/b/c\" is not a Secret name or namespace/name",
        ),
    ] {
        let yaml = with_web(&proxy("app", "app.example.com", tls));
        let w = world(&yaml, verdicts);
        let status = w.status("shop/app");
        assert_eq!(status.current_status, "invalid", "{sentence}");
        let errors = errors(&status);
        assert!(
            errors.iter().any(|(r, m)| r == reason && m == message),
            "{sentence}: {errors:?} has no {reason}: {message}"
        );
        assert!(serving(&w, "app.example.com").is_none(), "{sentence}: no certificate, not on the HTTPS listener");
        assert!(!w.has_route(HTTPS, "app.example.com", "/"), "{sentence}");
        assert!(w.rejects(HTTP, "app.example.com", "/"), "{sentence}: never served in the clear by accident");
        assert_eq!(w.answers(HTTP, "app.example.com", "/plain"), None, "{sentence}: permitInsecure still serves");
    }
}

#[test]
fn a_delegated_secret_of_another_namespace_serves_and_a_1_3_minimum_is_kept() {
    let delegation = "
---
apiVersion: projectcontour.io/v1
kind: TLSCertificateDelegation
metadata: {name: share, namespace: certs}
spec:
  delegations: [{secretName: wild, targetNamespaces: [shop]}]
";
    let yaml = with_web(&format!(
        "{}{delegation}",
        proxy("app", "app.example.com", "{secretName: certs/wild, minimumProtocolVersion: '1.3'}")
    ));
    let w = world(&yaml, vec![cert("certs/wild", &["*.example.com"])]);
    assert_eq!(w.status("shop/app").current_status, "valid", "{:?}", errors(&w.status("shop/app")));
    let tls = serving(&w, "app.example.com").expect("a wildcard certificate covers one label");
    assert_eq!(tls.secret.to_string(), "certs/wild");
    assert_eq!(tls.min_version, TlsVersion::Tls13);
}

#[test]
fn an_invalid_certificate_fails_only_its_own_host() {
    let yaml = with_web(&format!(
        "{}{}",
        proxy("good", "good.example.com", "{secretName: good-cert}"),
        proxy("bad", "bad.example.com", "{secretName: bad-cert}")
    ));
    let w =
        world(&yaml, vec![cert("shop/good-cert", &["good.example.com"]), cert("shop/bad-cert", &["good.example.com"])]);
    assert_eq!(w.status("shop/good").current_status, "valid");
    assert_eq!(w.status("shop/bad").current_status, "invalid");
    assert!(serving(&w, "good.example.com").is_some());
    assert!(serving(&w, "bad.example.com").is_none());
    assert_eq!(w.answers(HTTPS, "good.example.com", "/"), None);
}

#[test]
fn included_routes_are_served_over_https_with_their_root() {
    let yaml = with_web(
        r#"
---
apiVersion: projectcontour.io/v1
kind: HTTPProxy
metadata: {name: root, namespace: shop}
spec:
  virtualhost: {fqdn: app.example.com, tls: {secretName: app-cert}}
  includes: [{name: child, conditions: [{prefix: /team}]}]
---
apiVersion: projectcontour.io/v1
kind: HTTPProxy
metadata: {name: child, namespace: shop}
spec:
  routes:
  - services: [{name: web, port: 80}]
  - conditions: [{prefix: /open}]
    permitInsecure: true
    services: [{name: web, port: 80}]
"#,
    );
    let w = world(&yaml, vec![cert("shop/app-cert", &["app.example.com"])]);
    assert_eq!(w.answers(HTTPS, "app.example.com", "/team"), None);
    assert_eq!(w.answers(HTTP, "app.example.com", "/team"), redirect());
    assert_eq!(w.answers(HTTP, "app.example.com", "/team/open"), None, "the child's permitInsecure holds");
}

#[test]
fn a_renewed_certificate_changes_only_the_content_hash_the_host_is_served_with() {
    let yaml = with_web(&proxy("app", "app.example.com", "{secretName: app-cert}"));
    let before = world(&yaml, vec![key_pair("shop/app-cert", "one", &["app.example.com"])]);
    let after = world(&yaml, vec![key_pair("shop/app-cert", "two", &["app.example.com"])]);
    assert_eq!(serving(&before, "app.example.com").unwrap().sha256, "one");
    assert_eq!(serving(&after, "app.example.com").unwrap().sha256, "two");
    assert_eq!(before.resolved.model.clusters, after.resolved.model.clusters);
}

/// Voyager's `spec.tls`: hosts listed are served over HTTPS and redirect; others stay plain.
fn voyager(tls: &str) -> String {
    with_web(&format!(
        r#"
---
apiVersion: voyager.appscode.com/v1beta1
kind: Ingress
metadata: {{name: ing, namespace: shop}}
spec:
  tls: {tls}
  rules:
  - host: secure.example.com
    http: {{paths: [{{backend: {{serviceName: web, servicePort: '80'}}}}]}}
  - host: plain.example.com
    http: {{paths: [{{backend: {{serviceName: web, servicePort: '80'}}}}]}}
"#
    ))
}

#[test]
fn voyager_tls_hosts_are_served_over_https_and_the_others_stay_plain() {
    let w = world(
        &voyager("[{hosts: [secure.example.com], secretName: secure-cert}]"),
        vec![cert("shop/secure-cert", &["secure.example.com"])],
    );
    let status = w.voyager_status("shop/ing");
    assert_eq!(status.current_status, "valid", "{:?}", errors(&status));
    assert!(serving(&w, "secure.example.com").is_some());
    assert_eq!(w.answers(HTTP, "secure.example.com", "/"), redirect());
    assert_eq!(w.answers(HTTP, "plain.example.com", "/"), None);
    assert!(!w.has_route(HTTPS, "plain.example.com", "/"));

    let missing = world(&voyager("[{hosts: [secure.example.com], secretName: gone}]"), vec![]);
    let status = missing.voyager_status("shop/ing");
    assert_eq!(status.current_status, "invalid");
    assert_eq!(
        errors(&status),
        [("SecretNotValid".to_owned(), "spec.tls[0].secretName: TLS Secret \"shop/gone\" not found".to_owned())]
    );
    assert!(missing.rejects(HTTP, "secure.example.com", "/"), "fails closed");
    assert_eq!(missing.answers(HTTP, "plain.example.com", "/"), None, "the other host is unaffected");
    let _ = missing.object_status(Kind::VoyagerIngress, "shop/ing");
}

#[test]
fn a_voyager_rule_on_the_https_port_is_refused() {
    let yaml = with_web(
        r#"
---
apiVersion: voyager.appscode.com/v1beta1
kind: Ingress
metadata: {name: ing, namespace: shop}
spec:
  rules:
  - host: clash.example.com
    http: {port: 8443, paths: [{backend: {serviceName: web, servicePort: '80'}}]}
"#,
    );
    let w = world(&yaml, vec![]);
    let status = w.voyager_status("shop/ing");
    assert_eq!(status.current_status, "invalid");
    assert!(errors(&status)[0].1.contains("http.port 8443 is the HTTPS listener"), "{:?}", errors(&status));
    assert!(!w.has_route(HTTPS, "clash.example.com", "/"));
}

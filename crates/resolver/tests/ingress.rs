//! SPEC section 7: the Kubernetes Ingress dialect with ingress-nginx's backend TLS
//! annotations. Class selection, path types, ports by number and name, the annotations'
//! meaning in the model, cross-namespace secrets, and spec.tls (section 8).

mod support;

use portico_model::{Alpn, CaSource, Kind, RouteAction, TlsVersion, UpstreamProtocol, Verification};
use support::*;

const HTTP: u16 = 8080;
const HTTPS: u16 = 8443;

const CLASS: &str = "
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: portico}
spec: {controller: portico.dev/ingress-controller}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: nginx, annotations: {ingressclass.kubernetes.io/is-default-class: 'true'}}
spec: {controller: k8s.io/ingress-nginx}
";

/// A Service `api` in `shop` (ports https 443 and http 80) with an endpoint, the classes,
/// and an Ingress `shop/app` with `annotations`, `class` (a YAML line or empty) and paths.
fn world_of(annotations: &str, class: &str, paths: &str, extra: &str) -> String {
    format!(
        r#"{CLASS}---
apiVersion: v1
kind: Service
metadata: {{name: api, namespace: shop}}
spec: {{ports: [{{name: https, port: 443}}, {{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: api-1, namespace: shop, labels: {{kubernetes.io/service-name: api}}}}
addressType: IPv4
ports: [{{name: https, port: 8443}}, {{name: http, port: 8080}}]
endpoints: [{{addresses: [10.2.0.1]}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: app
  namespace: shop
  annotations: {{{annotations}}}
spec:
{class}  rules:
  - host: app.example.com
    http:
      paths:
{paths}{extra}"#
    )
}

const ROOT_HTTPS: &str = "      - {path: /, pathType: Prefix, backend: {service: {name: api, port: {number: 443}}}}\n";

fn ingress(annotations: &str, paths: &str) -> String {
    world_of(annotations, "  ingressClassName: portico\n", paths, "")
}

fn status(w: &World) -> portico_model::ContourStatus {
    w.object_status(Kind::Ingress, "shop/app").to_contour()
}

fn has_status(w: &World) -> bool {
    w.resolved.statuses.iter().any(|s| s.object.kind == Kind::Ingress)
}

#[test]
fn an_ingress_is_porticos_by_class_name_legacy_annotation_or_default_class() {
    for (sentence, class, annotations, ours) in [
        ("ingressClassName naming Portico's class", "  ingressClassName: portico\n", "", true),
        ("ingressClassName naming another controller's class", "  ingressClassName: nginx\n", "", false),
        ("ingressClassName naming a class that does not exist", "  ingressClassName: gone\n", "", false),
        ("the legacy annotation", "", "kubernetes.io/ingress.class: portico", true),
        (
            "ingressClassName wins over the legacy annotation",
            "  ingressClassName: nginx\n",
            "kubernetes.io/ingress.class: portico",
            false,
        ),
        ("no class while the default class is another controller's", "", "", false),
    ] {
        let w = world(&world_of(annotations, class, ROOT_HTTPS, ""), vec![]);
        assert_eq!(has_status(&w), ours, "{sentence}");
        assert_eq!(w.has_route(HTTP, "app.example.com", "/"), ours, "{sentence}");
    }
    // Portico's class as the default serves Ingresses without a class.
    let default = CLASS
        .replace(
            "metadata: {name: portico}",
            "metadata: {name: portico, annotations: {ingressclass.kubernetes.io/is-default-class: 'true'}}",
        )
        .replace(
            "metadata: {name: nginx, annotations: {ingressclass.kubernetes.io/is-default-class: 'true'}}",
            "metadata: {name: nginx}",
        );
    let yaml = world_of("", "", ROOT_HTTPS, "").replace(CLASS, &default);
    let w = world(&yaml, vec![]);
    assert!(w.has_route(HTTP, "app.example.com", "/"), "the default class is Portico's");
}

#[test]
fn path_types_match_as_kubernetes_says() {
    let paths = "      - {path: /exact, pathType: Exact, backend: {service: {name: api, port: {number: 80}}}}\n\
                 \x20     - {path: /docs/, pathType: Prefix, backend: {service: {name: api, port: {name: http}}}}\n\
                 \x20     - {path: /impl, pathType: ImplementationSpecific, backend: {service: {name: api, port: {number: 80}}}}\n\
                 \x20     - {path: /, pathType: Prefix, backend: {service: {name: api, port: {number: 80}}}}\n";
    let w = world(&ingress("", paths), vec![]);
    assert_eq!(status(&w).current_status, "valid", "{:?}", errors(&status(&w)));
    let route = |prefix: &str, exact: bool| {
        w.resolved
            .model
            .routes()
            .find(|(p, _, r)| *p == HTTP && r.prefix.as_str() == prefix && r.exact == exact)
            .map(|(_, _, r)| r.clone())
    };
    assert!(route("/exact", true).is_some() && route("/exact/", false).is_none(), "Exact is one exact path");
    // Prefix by path element: /docs/ is /docs exactly and everything under /docs/.
    assert!(route("/docs", true).is_some() && route("/docs/", false).is_some());
    assert!(route("/docs", false).is_none(), "never a string prefix (/docsearch is not under /docs)");
    assert!(route("/impl", true).is_some() && route("/impl/", false).is_some(), "ImplementationSpecific is Prefix");
    assert!(route("/", false).is_some(), "/ is every path");
    let port = |prefix: &str, exact: bool| match route(prefix, exact).unwrap().action {
        RouteAction::Forward { backends, .. } => w.resolved.model.cluster(&backends[0].cluster).unwrap().key.port,
        other => panic!("{other:?}"),
    };
    assert_eq!(port("/docs", true), 80, "a port by name");

    let bad = world(
        &ingress("", "      - {path: /x, pathType: Regex, backend: {service: {name: api, port: {number: 80}}}}\n"),
        vec![],
    );
    assert_eq!(
        errors(&status(&bad)),
        [(
            "InvalidValue".to_owned(),
            "path \"/x\": pathType \"Regex\" is not Exact, Prefix or ImplementationSpecific".to_owned()
        )]
    );
}

#[test]
fn the_backend_tls_annotations_shape_the_cluster() {
    let tls = |annotations: &str, verdicts: Vec<portico_model::SecretVerdict>| {
        let w = world(&ingress(annotations, ROOT_HTTPS), verdicts);
        let cluster = w.cluster_of(HTTP, "app.example.com", "/").clone();
        (w, cluster)
    };
    let (w, c) = tls("nginx.ingress.kubernetes.io/backend-protocol: HTTPS", vec![]);
    assert_eq!(c.key.protocol, UpstreamProtocol::Tls);
    let policy = c.key.tls.unwrap();
    assert_eq!((policy.verify, policy.sni), (Verification::None, None), "unverified, no SNI: ingress-nginx's defaults");
    assert_eq!(warnings(&status(&w))[0].1, "backend TLS is not verified: set proxy-ssl-verify: \"on\"");

    // Verified with ca.crt alone (ingress-nginx wanted a client certificate too).
    let (w, c) = tls(
        "nginx.ingress.kubernetes.io/backend-protocol: HTTPS, nginx.ingress.kubernetes.io/proxy-ssl-secret: shop/api-ca, \
         nginx.ingress.kubernetes.io/proxy-ssl-verify: 'on', nginx.ingress.kubernetes.io/proxy-ssl-server-name: 'on', \
         nginx.ingress.kubernetes.io/proxy-ssl-protocols: TLSv1.3",
        vec![valid_ca("shop/api-ca")],
    );
    assert_eq!(status(&w).current_status, "valid", "{:?}", errors(&status(&w)));
    let policy = c.key.tls.unwrap();
    assert_eq!(
        policy.verify,
        Verification::Required {
            ca: CaSource::Secret(secret_ref("shop/api-ca")),
            subject_names: vec!["api.shop.svc".parse().unwrap()],
            subject_uris: Vec::new(),
            exact_names: false
        },
        "the Service's cluster name is verified when proxy-ssl-name is absent"
    );
    assert_eq!(policy.sni.unwrap().as_str(), "api.shop.svc");
    assert_eq!((policy.min_version, policy.max_version), (TlsVersion::Tls13, TlsVersion::Tls13));

    let (_, c) = tls(
        "nginx.ingress.kubernetes.io/backend-protocol: GRPCS, nginx.ingress.kubernetes.io/proxy-ssl-name: api.internal",
        vec![],
    );
    assert_eq!(c.key.protocol, UpstreamProtocol::H2);
    let policy = c.key.tls.unwrap();
    assert_eq!(policy.alpn, vec![Alpn::H2], "GRPCS offers ALPN h2");
    assert_eq!(policy.sni, None, "proxy-ssl-name alone does not turn SNI on");
    let (_, c) = tls("nginx.ingress.kubernetes.io/backend-protocol: GRPC", vec![]);
    assert_eq!((c.key.protocol, c.key.tls), (UpstreamProtocol::H2c, None));
}

#[test]
fn a_secret_of_another_namespace_needs_a_delegation_and_errors_close_the_routes() {
    let annotations =
        "nginx.ingress.kubernetes.io/backend-protocol: HTTPS, nginx.ingress.kubernetes.io/proxy-ssl-secret: infra/ca, \
                       nginx.ingress.kubernetes.io/proxy-ssl-verify: 'on'";
    let w = world(&ingress(annotations, ROOT_HTTPS), vec![valid_ca("infra/ca")]);
    assert_eq!(status(&w).current_status, "invalid");
    assert_eq!(errors(&status(&w))[0].0, "CACertificateNotDelegated");
    assert!(w.rejects(HTTP, "app.example.com", "/"));

    let delegation = "---\napiVersion: projectcontour.io/v1\nkind: TLSCertificateDelegation\nmetadata: {name: d, namespace: infra}\n\
                      spec: {delegations: [{secretName: ca, targetNamespaces: [shop]}]}\n";
    let w = world(
        &world_of(annotations, "  ingressClassName: portico\n", ROOT_HTTPS, &format!("\n{delegation}")),
        vec![valid_ca("infra/ca")],
    );
    assert_eq!(status(&w).current_status, "valid", "{:?}", errors(&status(&w)));

    for (sentence, annotations, message) in [
        (
            "an unsupported protocol",
            "nginx.ingress.kubernetes.io/backend-protocol: FCGI",
            "unsupported backend-protocol \"FCGI\"",
        ),
        (
            "verify on without a secret",
            "nginx.ingress.kubernetes.io/backend-protocol: HTTPS, nginx.ingress.kubernetes.io/proxy-ssl-verify: 'on'",
            "proxy-ssl-verify is \"on\" but no",
        ),
        (
            "a restricting annotation",
            "nginx.ingress.kubernetes.io/whitelist-source-range: 10.0.0.0/8",
            "restricts who may reach the route",
        ),
    ] {
        let w = world(&ingress(annotations, ROOT_HTTPS), vec![]);
        assert_eq!(status(&w).current_status, "invalid", "{sentence}");
        assert!(errors(&status(&w)).iter().any(|(_, m)| m.contains(message)), "{sentence}: {:?}", errors(&status(&w)));
        assert!(w.rejects(HTTP, "app.example.com", "/"), "{sentence}: 503, never served with other TLS than asked");
    }
}

#[test]
fn spec_tls_serves_https_and_ssl_redirect_false_keeps_plain_http() {
    let tls = "  tls: [{hosts: [app.example.com], secretName: app-cert}]\n";
    let yaml =
        |annotations: &str| world_of(annotations, &format!("  ingressClassName: portico\n{tls}"), ROOT_HTTPS, "");
    let cert = || key_pair("shop/app-cert", "sha", &["app.example.com"]);
    let w = world(&yaml(""), vec![cert()]);
    assert_eq!(status(&w).current_status, "valid", "{:?}", errors(&status(&w)));
    assert_eq!(w.answers(HTTP, "app.example.com", "/"), Some(301));
    assert_eq!(w.answers(HTTPS, "app.example.com", "/"), None);
    let w = world(&yaml("nginx.ingress.kubernetes.io/ssl-redirect: 'false'"), vec![cert()]);
    assert_eq!(w.answers(HTTP, "app.example.com", "/"), None, "ssl-redirect: false serves plain HTTP too");
    assert_eq!(w.answers(HTTPS, "app.example.com", "/"), None);
    let w = world(&yaml("nginx.ingress.kubernetes.io/ssl-redirect: maybe"), vec![cert()]);
    assert!(
        errors(&status(&w))[0].1.contains("ssl-redirect: \"maybe\" is not \"true\" or \"false\""),
        "{:?}",
        errors(&status(&w))
    );
}

#[test]
fn a_default_backend_and_unknown_ports_and_services() {
    let extra = "  defaultBackend: {service: {name: api, port: {number: 80}}}\n";
    let yaml = world_of("", "  ingressClassName: portico\n", ROOT_HTTPS, "")
        .replace("spec:\n  ingressClassName", &format!("spec:\n{extra}  ingressClassName"));
    let w = world(&yaml, vec![]);
    assert!(w.has_route(HTTP, "*", "/"), "the default backend takes every host");
    let w = world(
        &ingress("", "      - {path: /, pathType: Prefix, backend: {service: {name: api, port: {number: 9}}}}\n      - {path: /b, pathType: Exact, backend: {service: {name: gone, port: {name: web}}}}\n"),
        vec![],
    );
    let errors = errors(&status(&w));
    assert!(
        errors.iter().any(|(r, m)| r == "ServiceUnresolvedReference" && m.contains("port \"9\" not found")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|(_, m)| m.contains("service \"gone\": not found")), "{errors:?}");
}

#[test]
fn the_client_certificate_of_proxy_ssl_secret_is_presented_by_these_backends_only() {
    let annotations = "nginx.ingress.kubernetes.io/backend-protocol: HTTPS, nginx.ingress.kubernetes.io/proxy-ssl-secret: shop/api-client, \
                       nginx.ingress.kubernetes.io/proxy-ssl-verify: 'on'";
    // One Secret with ca.crt and a pair: both used.
    let both = portico_model::SecretVerdict {
        ca: valid_ca("shop/api-client").ca,
        ..key_pair("shop/api-client", "pair-sha", &["client"])
    };
    let w = world(&ingress(annotations, ROOT_HTTPS), vec![both]);
    assert_eq!(status(&w).current_status, "valid", "{:?}", errors(&status(&w)));
    let policy = w.cluster_of(HTTP, "app.example.com", "/").key.tls.clone().unwrap();
    assert_eq!(policy.client_cert.unwrap().to_string(), "shop/api-client");
    assert_eq!(w.resolved.model.client_certs.iter().map(|t| t.sha256.as_str()).collect::<Vec<_>>(), ["pair-sha"]);

    // ca.crt alone: verified, nothing presented.
    let w = world(&ingress(annotations, ROOT_HTTPS), vec![valid_ca("shop/api-client")]);
    assert_eq!(status(&w).current_status, "valid");
    assert_eq!(w.cluster_of(HTTP, "app.example.com", "/").key.tls.clone().unwrap().client_cert, None);
    assert!(w.resolved.model.client_certs.is_empty());

    // A pair that is there but broken: an error, the route 503.
    let broken = portico_model::SecretVerdict {
        key_pair: Err("the private key does not match the leaf certificate".into()),
        ..valid_ca("shop/api-client")
    };
    let w = world(&ingress(annotations, ROOT_HTTPS), vec![broken]);
    assert!(
        errors(&status(&w))[0].1.contains("is not valid: the private key does not match"),
        "{:?}",
        errors(&status(&w))
    );
    assert!(w.rejects(HTTP, "app.example.com", "/"));
}

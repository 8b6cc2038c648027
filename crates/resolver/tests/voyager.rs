//! SPEC section 3, the Voyager dialect.

mod support;

use portico_model::{Alpn, CaSource, RouteAction, TlsVersion, UpstreamProtocol, Verification};
use portico_resolver::voyager::VERIFY_WITHOUT_CA;
use support::*;

/// A Service `web` in `default` with the given annotations, its endpoints, and an Ingress
/// `default/ing` routing app.example.com/ to it (and a default backend).
fn ingress(annotations: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
  annotations: {{{annotations}}}
spec: {{ports: [{{name: https, port: 443, targetPort: 8443}}, {{name: alt, port: 8443}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: https, port: 8443}}]
endpoints: [{{addresses: [10.1.0.1]}}]
---
apiVersion: voyager.appscode.com/v1beta1
kind: Ingress
metadata: {{name: ing, namespace: default}}
spec:
  backend: {{serviceName: web, servicePort: '443'}}
  rules:
  - host: app.example.com
    http:
      paths:
      - backend: {{serviceName: web, servicePort: '443'}}
"#
    )
}

fn cas() -> Vec<portico_model::SecretVerdict> {
    vec![
        valid_ca("default/web-ca"),
        valid_ca("infra/shared-ca"),
        invalid_ca("default/broken-ca", "certificate 1: invalid DER"),
    ]
}

fn with(annotations: &str) -> World {
    world(&ingress(annotations), cas())
}

const APP: &str = "app.example.com";

#[test]
fn without_the_annotation_the_backend_is_plain_http() {
    let w = with("");
    assert_eq!(w.voyager_status("default/ing").current_status, "valid");
    assert_eq!(w.voyager_status("default/ing").description, "Valid Ingress");
    assert_eq!(w.cluster_of(8080, APP, "/").key.protocol, UpstreamProtocol::Http);
    assert_eq!(w.cluster_of(8080, "*", "/").key.protocol, UpstreamProtocol::Http, "spec.backend is the default route");
}

#[test]
fn the_seeds_ssl_verify_none_connects_with_tls_unverified() {
    let w = with(r#"ingress.appscode.com/backend-tls: "ssl verify none""#);
    assert_eq!(w.voyager_status("default/ing").current_status, "valid");
    let key = &w.cluster_of(8080, APP, "/").key;
    assert_eq!(key.protocol, UpstreamProtocol::Tls);
    let tls = key.tls.as_ref().unwrap();
    assert_eq!(tls.verify, Verification::None);
    assert_eq!((tls.min_version, tls.max_version), (TlsVersion::Tls12, TlsVersion::Tls13));
}

#[test]
fn verify_required_with_a_ca_secret_checks_the_name_and_sends_it_as_sni() {
    let w = with(
        r#"ingress.appscode.com/backend-tls: "ssl verify required verifyhost backend.example.com", portico.dev/upstream-ca-secret: web-ca"#,
    );
    assert_eq!(
        w.voyager_status("default/ing").current_status,
        "valid",
        "{:?}",
        errors(&w.voyager_status("default/ing"))
    );
    let tls = w.cluster_of(8080, APP, "/").key.tls.clone().unwrap();
    let Verification::Required { ca: CaSource::Secret(secret), subject_names, .. } = &tls.verify else { panic!() };
    assert_eq!(secret.to_string(), "default/web-ca");
    assert_eq!(subject_names[0].as_str(), "backend.example.com");
    assert_eq!(tls.sni.unwrap().as_str(), "backend.example.com");
    assert_eq!(w.resolved.model.trust[0].sha256, "sha-of-default/web-ca");
}

#[test]
fn sni_alone_is_also_the_verified_name_and_ca_file_is_a_file() {
    let w = with(r#"ingress.appscode.com/backend-tls: "ssl sni str(sni.example.com) ca-file /etc/ssl/ca.pem alpn h2""#);
    let key = &w.cluster_of(8080, APP, "/").key;
    assert_eq!(key.protocol, UpstreamProtocol::H2, "alpn h2 alone means HTTP/2");
    let tls = key.tls.as_ref().unwrap();
    assert_eq!(tls.alpn, vec![Alpn::H2]);
    let Verification::Required { ca: CaSource::File(file), subject_names, .. } = &tls.verify else { panic!() };
    assert_eq!(file.as_str(), "/etc/ssl/ca.pem");
    assert_eq!(subject_names[0].as_str(), "sni.example.com");
    assert!(w.resolved.model.trust.is_empty(), "a file CA needs no secret material");
}

/// (sentence, annotations, expected description after `route "/": service "web": `, reason)
const ERRORS: &[(&str, &str, &str, &str)] = &[
    (
        "verify is required by default and no CA is given",
        r#"ingress.appscode.com/backend-tls: "ssl""#,
        VERIFY_WITHOUT_CA,
        "TLSUpstreamValidation",
    ),
    (
        "explicit verify required without a CA",
        r#"ingress.appscode.com/backend-tls: "ssl verify required verifyhost a.b""#,
        VERIFY_WITHOUT_CA,
        "TLSUpstreamValidation",
    ),
    (
        "the verfyhost misspelling gets HAProxy's hint",
        r#"ingress.appscode.com/backend-tls: "ssl verify none verfyhost a.b""#,
        "unknown keyword 'verfyhost'; did you mean 'verifyhost' maybe ?",
        "TLSUpstreamValidation",
    ),
    (
        "an unknown token is unsupported",
        r#"ingress.appscode.com/backend-tls: "ssl verify none crt /etc/x.pem""#,
        "unsupported backend-tls option \"crt\"",
        "TLSUpstreamValidation",
    ),
    (
        "a CA secret in another namespace needs delegation",
        r#"ingress.appscode.com/backend-tls: "ssl verifyhost a.b", portico.dev/upstream-ca-secret: infra/shared-ca"#,
        "certificate delegation not permitted for CA secret \"infra/shared-ca\"",
        "CACertificateNotDelegated",
    ),
    (
        "a missing CA secret",
        r#"ingress.appscode.com/backend-tls: "ssl", portico.dev/upstream-ca-secret: nope"#,
        "upstreamValidation requested but secret not found or misconfigured",
        "TLSUpstreamValidation",
    ),
    (
        "a broken CA secret",
        r#"ingress.appscode.com/backend-tls: "ssl", portico.dev/upstream-ca-secret: broken-ca"#,
        "upstreamValidation requested but secret not found or misconfigured",
        "TLSUpstreamValidation",
    ),
    (
        "ca-file and a CA secret together",
        r#"ingress.appscode.com/backend-tls: "ssl ca-file /x.pem", portico.dev/upstream-ca-secret: web-ca"#,
        "both ca-file and the portico.dev/upstream-ca-secret annotation are set; use one",
        "TLSUpstreamValidation",
    ),
    (
        "verifyhost and sni naming different servers",
        r#"ingress.appscode.com/backend-tls: "ssl ca-file /x.pem verifyhost a.b sni str(c.d)""#,
        "verifyhost a.b and sni str(c.d) name different servers",
        "TLSUpstreamValidation",
    ),
    (
        "an injection attempt through a newline",
        "ingress.appscode.com/backend-tls: \"ssl verify none\\n  server evil 6.6.6.6:80\"",
        "backend-tls option \"verify\": \"none\\n\" is not none or required",
        "TLSUpstreamValidation",
    ),
];

#[test]
fn backend_tls_errors_reject_the_route_with_the_exact_message() {
    for (sentence, annotations, what, reason) in ERRORS {
        let w = with(annotations);
        let status = w.voyager_status("default/ing");
        assert_eq!(status.current_status, "invalid", "{sentence}");
        let want = format!("route \"/\": service \"web\": {what}");
        assert!(status.description.starts_with(&want), "{sentence}: got {:?}, want {want:?}", status.description);
        assert_eq!(errors(&status)[0].0, *reason, "{sentence}");
        assert!(w.rejects(8080, APP, "/") && w.rejects(8080, "*", "/"), "{sentence}: every route to it answers 503");
        assert!(w.resolved.model.clusters.is_empty(), "{sentence}");
    }
}

#[test]
fn the_seeds_verify_message_is_haproxys_text() {
    assert!(VERIFY_WITHOUT_CA
        .starts_with("verify is enabled by default but no CA file specified. If you're running on a LAN"));
    assert!(VERIFY_WITHOUT_CA.ends_with("to disable server-side verifications by default."));
}

#[test]
fn errors_are_reported_on_every_ingress_that_uses_the_service() {
    let yaml = format!(
        "{}---\napiVersion: voyager.appscode.com/v1beta1\nkind: Ingress\nmetadata: {{name: other, namespace: default}}\n\
         spec: {{rules: [{{host: other.example.com, http: {{paths: [{{path: /x, backend: {{serviceName: web, servicePort: https}}}}]}}}}]}}\n",
        ingress(r#"ingress.appscode.com/backend-tls: "ssl""#)
    );
    let w = world(&yaml, cas());
    assert_eq!(w.voyager_status("default/ing").current_status, "invalid");
    let other = w.voyager_status("default/other");
    assert_eq!(other.current_status, "invalid");
    assert!(
        other.description.starts_with("route \"/x\": service \"web\": verify is enabled by default"),
        "{}",
        other.description
    );
}

#[test]
fn verify_required_without_a_name_warns_and_verify_none_with_a_ca_warns() {
    let w = with(r#"ingress.appscode.com/backend-tls: "ssl", portico.dev/upstream-ca-secret: web-ca"#);
    let status = w.voyager_status("default/ing");
    assert_eq!(status.current_status, "valid");
    assert!(warnings(&status).iter().any(|(r, m)| r == "VerificationWeakened" && m.contains("its name is not")));
    let w = with(r#"ingress.appscode.com/backend-tls: "ssl verify none", portico.dev/upstream-ca-secret: web-ca"#);
    assert!(warnings(&w.voyager_status("default/ing")).iter().any(|(_, m)| m.contains("the CA is not used")));
    assert!(w.resolved.model.trust.is_empty(), "an unused CA is not shipped to the proxies");
    let w = with(r#"portico.dev/upstream-ca-secret: web-ca"#);
    assert!(warnings(&w.voyager_status("default/ing")).iter().any(|(r, _)| r == "IgnoredField"));
}

#[test]
fn backends_resolve_by_port_name_listener_port_and_only_in_the_ingress_namespace() {
    let yaml = |backend: &str| {
        format!(
            "{}---\napiVersion: voyager.appscode.com/v1beta1\nkind: Ingress\nmetadata: {{name: x, namespace: default}}\n\
             spec: {{rules: [{{host: x.example.com, http: {{port: 9000, paths: [{{path: /p, backend: {backend}}}]}}}}]}}\n",
            ingress("")
        )
    };
    let w = world(&yaml("{serviceName: web, servicePort: alt}"), cas());
    assert_eq!(w.cluster_of(9000, "x.example.com", "/p").key.port, 8443, "a port name matches the Service port's name");
    let w = world(&yaml("{serviceName: web.default, servicePort: 443}"), cas());
    assert_eq!(
        w.voyager_status("default/x").current_status,
        "valid",
        "name.namespace in the Ingress's namespace is fine"
    );
    let w = world(&yaml("{serviceName: web.other, servicePort: 443}"), cas());
    let status = w.voyager_status("default/x");
    assert_eq!(errors(&status)[0].0, "ServiceUnresolvedReference");
    assert!(
        status.description.contains("backends in other namespaces are refused (namespace \"other\")"),
        "{}",
        status.description
    );
    assert!(w.rejects(9000, "x.example.com", "/p"));
    let w = world(&yaml("{serviceName: web, servicePort: nope}"), cas());
    assert!(w.voyager_status("default/x").description.ends_with("port \"nope\" not found on the Service"));
}

#[test]
fn a_rejected_route_never_carries_a_backend() {
    let w = with(r#"ingress.appscode.com/backend-tls: "ssl verfyhost a.b""#);
    assert!(matches!(w.route(8080, APP, "/").action, RouteAction::Reject));
}

#[test]
fn voyager_fields_portico_does_not_implement_are_named_and_restrictions_close_the_ingress() {
    let ingress_with = |metadata_extra: &str, spec_extra: &str, backend_extra: &str| {
        let yaml = ingress("ingress.appscode.com/backend-tls: \"ssl verify none\"")
            .replace(
                "metadata: {name: ing, namespace: default}",
                &format!("metadata: {{name: ing, namespace: default{metadata_extra}}}"),
            )
            .replace("spec:\n  backend:", &format!("spec:\n{spec_extra}  backend:"))
            .replace(
                "      - backend: {serviceName: web, servicePort: '443'}",
                &format!("      - backend: {{serviceName: web, servicePort: '443'{backend_extra}}}"),
            );
        world(&yaml, cas())
    };
    let w = ingress_with(
        ", annotations: {ingress.appscode.com/type: LoadBalancer}",
        "  nodeSelector: {disk: ssd}\n",
        ", backendRules: ['http-request set-header X-Evil 1']",
    );
    let status = w.voyager_status("default/ing");
    assert_eq!(status.current_status, "valid", "{:?}", errors(&status));
    let mut got: Vec<String> =
        warnings(&status).into_iter().filter(|(r, _)| r == "IgnoredField").map(|(_, m)| m).collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            "metadata.annotations[ingress.appscode.com/type] is not supported by Portico and is ignored",
            "spec.nodeSelector is not supported by Portico and is ignored",
            "spec.rules[0].http.paths[0].backend.backendRules is not supported by Portico and is ignored",
        ]
    );
    assert!(!w.rejects(8080, APP, "/"));

    for (sentence, metadata, spec) in [
        ("basic auth", ", annotations: {ingress.appscode.com/auth-type: basic}", ""),
        ("a source allow-list", ", annotations: {ingress.appscode.com/whitelist-source-range: 10.0.0.0/8}", ""),
        ("frontend rules", "", "  frontendRules: [{port: 80, rules: ['acl x src 10.0.0.0/8']}]\n"),
    ] {
        let w = ingress_with(metadata, spec, "");
        let status = w.voyager_status("default/ing");
        assert_eq!(status.current_status, "invalid", "{sentence}");
        assert_eq!(errors(&status)[0].0, "UnsupportedRestriction", "{sentence}");
        assert!(w.rejects(8080, APP, "/") && w.rejects(8080, "*", "/"), "{sentence}: every route answers 503");
    }
}

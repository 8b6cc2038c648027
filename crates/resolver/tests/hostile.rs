//! Hostile input: no value of any user-controlled field, however crafted, produces a model
//! value outside its grammar, and nothing panics.

mod support;

use portico_model::{
    EndpointSlice, HttpProxy, HttpProxyInclude, HttpProxyRoute, HttpProxyService, Meta, Service, ServicePort,
    ServiceType, UpstreamValidation, VoyagerBackend, VoyagerIngress, VoyagerPath, VoyagerRule,
};
use portico_resolver::{backend_tls, resolve, Config, Snapshot};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Characters that could end a token, start a comment, expand a variable or escape a
/// quote in haproxy.cfg or a YAML/JSON config.
fn is_safe_config_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~/!,;=:@+%*".contains(c)
}

/// Every string value in a JSON document.
fn strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

/// Strings an attacker would try: config metacharacters, newlines with directives,
/// control bytes, quotes, very long values, and plausible-looking near misses.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,40}",
        "[a-z0-9 .#\"'\\\\$/{}()\\n\\r\\t-]{0,40}",
        "[\\x00-\\x7f]{0,40}",
        "\\PC{0,20}",
        Just("ssl verify none\n  server evil 6.6.6.6:80".to_owned()),
        Just("ssl verifyhost a.b\r\nbackend x".to_owned()),
        Just("ssl ca-file /etc/passwd#".to_owned()),
        Just("ssl sni str(a.b) ${HOME}".to_owned()),
        Just("ssl verify none\0crt /x".to_owned()),
        Just(format!("ssl verifyhost {}", "a".repeat(70_000))),
        Just("backend.example.com\"}".to_owned()),
        Just("8443,\n8080".to_owned()),
        Just("/a\" }, \"cluster\": \"evil".to_owned()),
        (0usize..3).prop_map(|n| ["ssl", "ssl verify none", "ssl verify required verifyhost a.b"][n].to_owned()),
    ]
}

fn meta(ns: &str, name: &str) -> Meta {
    Meta { namespace: ns.parse().unwrap(), name: name.parse().unwrap() }
}

#[derive(Debug, Clone)]
struct Inputs {
    backend_tls: String,
    ca_annotation: String,
    contour_tls_annotation: String,
    external_name: String,
    fqdn: String,
    prefix: String,
    protocol: String,
    ca_secret: String,
    subject_name: String,
    host_header: String,
    voyager_host: String,
    voyager_path: String,
    service_name: String,
    service_port: String,
    endpoint_address: String,
}

fn inputs() -> impl Strategy<Value = Inputs> {
    (
        (hostile(), hostile(), hostile(), hostile(), hostile()),
        (hostile(), hostile(), hostile(), hostile(), hostile()),
        (hostile(), hostile(), hostile(), hostile(), hostile()),
    )
        .prop_map(|((a, b, c, d, e), (f, g, h, i, j), (k, l, m, n, o))| Inputs {
            backend_tls: a,
            ca_annotation: b,
            contour_tls_annotation: c,
            external_name: d,
            fqdn: e,
            prefix: f,
            protocol: g,
            ca_secret: h,
            subject_name: i,
            host_header: j,
            voyager_host: k,
            voyager_path: l,
            service_name: m,
            service_port: n,
            endpoint_address: o,
        })
}

fn snapshot(i: &Inputs, external: bool) -> Snapshot {
    let mut annotations = BTreeMap::new();
    annotations.insert("ingress.appscode.com/backend-tls".to_owned(), i.backend_tls.clone());
    annotations.insert("portico.dev/upstream-ca-secret".to_owned(), i.ca_annotation.clone());
    annotations.insert("projectcontour.io/upstream-protocol.tls".to_owned(), i.contour_tls_annotation.clone());
    let service = Service {
        meta: meta("default", "web"),
        annotations,
        service_type: if external {
            ServiceType::ExternalName(i.external_name.clone())
        } else {
            ServiceType::ClusterIp
        },
        ports: vec![ServicePort {
            name: "https".into(),
            port: 443,
            target_port: None,
            protocol: "TCP".into(),
            app_protocol: None,
        }],
    };
    let slice = EndpointSlice {
        meta: meta("default", "web-1"),
        service_name: Some("web".into()),
        ports: vec![portico_model::EndpointPort { name: "https".into(), port: Some(8443) }],
        endpoints: vec![portico_model::Endpoint {
            addresses: vec![i.endpoint_address.clone(), "10.0.0.1".into()],
            ready: true,
        }],
    };
    // The root includes a child under a hostile prefix, and a proxy of a hostile name.
    let child = HttpProxy {
        meta: meta("default", "child"),
        fqdn: None,
        tls: None,
        includes: vec![],
        routes: vec![HttpProxyRoute {
            prefixes: vec!["/c".into()],
            services: vec![HttpProxyService {
                name: "web".into(),
                port: 443,
                weight: None,
                protocol: None,
                validation: None,
            }],
            set_headers: vec![],
            // A hostile timeout: only a number of milliseconds ever reaches a config.
            response_timeout: Some(i.subject_name.clone()),
            idle_timeout: Some(i.subject_name.clone()),
            permit_insecure: true,
            ignored: vec![format!("spec.routes[0].{}", i.host_header)],
        }],
        ignored: vec![],
    };
    let proxy = HttpProxy {
        meta: meta("default", "p"),
        fqdn: Some(i.fqdn.clone()),
        tls: None,
        includes: vec![
            HttpProxyInclude {
                name: "child".into(),
                namespace: None,
                prefixes: vec![i.prefix.clone()],
                ignored: vec![],
            },
            HttpProxyInclude {
                name: i.service_name.clone(),
                namespace: Some(i.voyager_host.clone()),
                prefixes: vec![format!("{}/missing", i.voyager_path)],
                ignored: vec![i.protocol.clone()],
            },
        ],
        ignored: vec![format!("spec.{}", i.protocol)],
        routes: vec![HttpProxyRoute {
            prefixes: vec![i.prefix.clone()],
            ignored: vec![i.protocol.clone()],
            services: vec![
                HttpProxyService {
                    name: "web".into(),
                    port: 443,
                    weight: None,
                    protocol: Some(i.protocol.clone()),
                    validation: None,
                },
                HttpProxyService {
                    name: i.service_name.clone(),
                    port: 443,
                    weight: Some(3),
                    protocol: None,
                    validation: Some(UpstreamValidation {
                        ca_secret: i.ca_secret.clone(),
                        subject_name: i.subject_name.clone(),
                        subject_names: vec![i.subject_name.clone(), i.host_header.clone()],
                    }),
                },
            ],
            set_headers: vec![("Host".into(), i.host_header.clone()), (i.host_header.clone(), "x".into())],
            response_timeout: None,
            idle_timeout: None,
            permit_insecure: false,
        }],
    };
    let ingress = VoyagerIngress {
        meta: meta("default", "ing"),
        backend: Some(VoyagerBackend { service_name: "web".into(), service_port: "443".into() }),
        ignored: vec![format!("metadata.annotations[{}]", i.voyager_host)],
        rules: vec![VoyagerRule {
            host: i.voyager_host.clone(),
            port: Some(9000),
            paths: vec![VoyagerPath {
                path: Some(i.voyager_path.clone()),
                backend: VoyagerBackend { service_name: i.service_name.clone(), service_port: i.service_port.clone() },
            }],
        }],
        tls: vec![portico_model::VoyagerTls {
            hosts: vec![i.voyager_host.clone(), i.fqdn.clone()],
            secret_name: i.service_name.clone(),
        }],
    };
    // A root served over HTTPS with a hostile TLS Secret name and TLS version: quoted in
    // its status, never rendered.
    let secure = HttpProxy {
        meta: meta("default", "secure"),
        fqdn: Some(i.host_header.clone()),
        tls: Some(portico_model::HttpProxyTls {
            secret_name: i.ca_secret.clone(),
            minimum_protocol_version: Some(i.protocol.clone()),
        }),
        includes: vec![],
        ignored: vec![],
        routes: vec![HttpProxyRoute {
            prefixes: vec![i.prefix.clone()],
            ignored: vec![],
            services: vec![HttpProxyService {
                name: "web".into(),
                port: 443,
                weight: None,
                protocol: None,
                validation: None,
            }],
            set_headers: vec![],
            response_timeout: None,
            idle_timeout: None,
            permit_insecure: false,
        }],
    };
    let mut snap = Snapshot::default();
    for o in [
        portico_model::Object::Service(service),
        portico_model::Object::EndpointSlice(slice),
        portico_model::Object::HttpProxy(proxy),
        portico_model::Object::HttpProxy(child),
        portico_model::Object::HttpProxy(secure),
        portico_model::Object::VoyagerIngress(ingress),
    ] {
        snap.apply(o).unwrap();
    }
    snap.set_verdict(support::valid_ca("default/web-ca"));
    snap
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn no_hostile_input_puts_an_unsafe_character_into_the_model(i in inputs(), external in any::<bool>()) {
        let resolved = resolve(&snapshot(&i, external), &Config::default());
        let json = serde_json::to_value(&resolved.model).unwrap();
        let mut all = Vec::new();
        strings(&json, &mut all);
        for s in all {
            prop_assert!(s.chars().all(is_safe_config_char), "unsafe model string {:?}", s);
            prop_assert!(s.len() <= 1024, "oversized model string of {} bytes", s.len());
        }
        for status in &resolved.statuses {
            for p in &status.problems {
                let text = p.full_message();
                prop_assert!(!text.chars().any(|c| c.is_control()), "raw control character in {:?}", text);
                prop_assert!(text.len() < 4096, "status message of {} bytes", text.len());
            }
        }
    }

    #[test]
    fn backend_tls_values_are_within_their_grammar_or_refused(value in hostile()) {
        if let Ok(parsed) = backend_tls::parse(&value) {
            for s in [parsed.verifyhost.map(String::from), parsed.sni.map(String::from), parsed.ca_file.map(String::from)]
                .into_iter()
                .flatten()
            {
                prop_assert!(s.chars().all(is_safe_config_char), "{:?} let {:?} through", value, s);
            }
            prop_assert!(!value.contains('\n') && !value.contains('\r') && !value.contains('"') && !value.contains('#'));
        }
    }
}

#[test]
fn a_huge_annotation_is_refused_quickly_without_panicking() {
    let value = format!("ssl verify none {}", "x ".repeat(500_000));
    let err = backend_tls::parse(&value).unwrap_err();
    assert_eq!(err, "unsupported backend-tls option \"x\"");
}

#[test]
fn the_property_is_not_vacuous_valid_user_values_do_reach_the_model() {
    let i = Inputs {
        backend_tls: "ssl verify required verifyhost v.example.com".into(),
        ca_annotation: "web-ca".into(),
        contour_tls_annotation: "443".into(),
        external_name: "ext.example.com".into(),
        fqdn: "www.example.com".into(),
        prefix: "/api".into(),
        protocol: "tls".into(),
        ca_secret: "web-ca".into(),
        subject_name: "sub.example.com".into(),
        host_header: "host.example.com".into(),
        voyager_host: "*.example.org".into(),
        voyager_path: "/v".into(),
        service_name: "web".into(),
        service_port: "443".into(),
        endpoint_address: "10.0.0.2".into(),
    };
    for external in [false, true] {
        let resolved = resolve(&snapshot(&i, external), &Config::default());
        let mut all = Vec::new();
        strings(&serde_json::to_value(&resolved.model).unwrap(), &mut all);
        let mut want = vec![
            "/api",
            "/api/c",
            "/v/missing",
            "www.example.com",
            "sub.example.com",
            "host.example.com",
            "v.example.com",
            "example.org",
            "/v",
        ];
        want.push(if external { "ext.example.com" } else { "10.0.0.2:8443" });
        for w in want {
            assert!(all.iter().any(|s| s == w), "external={external}: {w:?} missing from the model");
        }
    }
}

//! Bad input, the whole pipeline (issue 10's bad-input figures): for every dialect field
//! that reaches a proxy's configuration, 1,000 hostile values, each in its own file beside
//! one valid site, through `portico translate` (the watcher's decoding, the secrets
//! service's validation, the resolver, both renderers, written to disk).
//!
//! Each value carries a canary, `ZQX<n>Q`, glued to a character that no grammar of any
//! field admits and that no parser splits on (quotes, `#`, braces, `$`, backslash, control
//! bytes, non-ASCII...), after config syntax an attacker would try (newlines with
//! directives, YAML and JSON breakers, HAProxy's `%[...]` and `${...}`). Checked:
//! - 0 panics;
//! - 0 injections: no canary in haproxy.cfg, HAProxy's map and CA files, or Envoy's
//!   configuration (a value that reached a config would carry its canary there);
//! - every bad value reported: the object that carries it (or, for a Service's, the
//!   HTTPProxy or Ingress that uses it) is not `valid` and says why, or its document is
//!   refused with a reason naming its file;
//! - the valid site is still served (one broken object never stops the others).
//!
//! `PORTICO_BAD_INPUT_VALUES` sets the values per field (default 1,000). The figures in
//! docs/RELIABILITY.md come from `cargo test -p portico-deploy --test bad_input -- --nocapture`.

use portico_deploy::translate::{run, Options};
use portico_testkit::Rng;
use serde_json::{json, Value};
use std::path::Path;

/// Characters no field's grammar admits and no value parser splits on.
const BREAKERS: &[char] = &[
    '"', '\'', '#', '{', '}', '$', '\\', '`', '<', '>', '|', '&', '(', ')', '[', ']', '^', '\0', '\u{1}', '\u{7}',
    '\u{8}', '\u{b}', '\u{c}', '\u{1b}', '\u{7f}', 'é', '\u{2028}', '\u{202e}', '\u{feff}', '→',
];

/// What attackers put before the canary.
const ATTACKS: &[&str] = &[
    "",
    "ssl verify none\n  server evil 6.6.6.6:80 ",
    "ssl verifyhost a.b\r\nbackend x ",
    "ssl ca-file /etc/passwd ",
    "ssl sni str(a.b) ",
    "%[req.hdr(host)]",
    "a.example.com\n    http-request return status 200 ",
    "/\n  use_backend evil if TRUE ",
    "8443,\n8080 ",
    "\"}, \"cluster\": \"evil",
    "web.demo.svc\n",
    "../../etc/",
    "x: y\n- z\n",
    "\t\t",
    "1s; timeout server 0 ",
];

fn canary(n: usize) -> String {
    format!("ZQX{n}Q")
}

/// The `n`th hostile value: an attack, then the canary glued to breakers, sometimes huge.
fn hostile(rng: &mut Rng, n: usize) -> String {
    let attack = *rng.pick(ATTACKS);
    let (a, b) = (*rng.pick(BREAKERS), *rng.pick(BREAKERS));
    let mut value = match rng.next_u64() % 3 {
        0 => format!("{attack}{a}{}", canary(n)),
        1 => format!("{attack}{}{a}", canary(n)),
        _ => format!("{attack}{a}{}{b}", canary(n)),
    };
    if rng.next_u64().is_multiple_of(50) {
        value.push_str(&"a".repeat(70_000)); // a huge value
    }
    value
}

/// One field that reaches a configuration: its name, and the documents of value `n` (the
/// objects that carry it, and the object whose status must report it).
/// The documents of one value, and the object (kind, name) whose status must report it.
type Documents = (Vec<Value>, (&'static str, String));

struct Field {
    name: &'static str,
    documents: fn(n: usize, value: &str) -> Documents,
    /// Values SPEC makes valid however hostile their other parts (a list whose valid item
    /// is used and whose others are ignored): not to be reported, and still never written.
    spec_accepts: fn(&str) -> bool,
}

fn none(_: &str) -> bool {
    false
}

fn service(n: usize, annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": format!("svc-{n}"), "namespace": "bad", "annotations": annotations},
           "spec": {"ports": [{"name": "https", "port": 8443}]}})
}

fn slice(n: usize) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("svc-{n}-x"), "namespace": "bad", "labels": {"kubernetes.io/service-name": format!("svc-{n}")}},
           "addressType": "IPv4", "ports": [{"name": "https", "port": 9443}],
           "endpoints": [{"addresses": ["127.0.0.1"]}]})
}

/// An HTTPProxy for site `n` with one route to `svc-<n>`, verified with the `ca` Secret;
/// `edit` makes it hostile.
fn proxy(n: usize, edit: impl FnOnce(&mut Value)) -> Documents {
    let mut p = json!({"apiVersion": "projectcontour.io/v1", "kind": "HTTPProxy",
        "metadata": {"name": format!("hp-{n}"), "namespace": "bad"},
        "spec": {"virtualhost": {"fqdn": format!("h{n}.bad.test")},
                 "routes": [{"conditions": [{"prefix": "/"}],
                             "services": [{"name": format!("svc-{n}"), "port": 8443, "protocol": "tls",
                                           "validation": {"caSecret": "ca", "subjectName": "web.bad.svc"}}]}]}});
    edit(&mut p);
    (vec![p, service(n, json!({})), slice(n)], ("HTTPProxy", format!("hp-{n}")))
}

/// A Voyager Ingress for site `n` to `svc-<n>` (whose annotations `service` gives).
fn ingress(n: usize, svc_annotations: Value, edit: impl FnOnce(&mut Value)) -> Documents {
    let mut i = json!({"apiVersion": "voyager.appscode.com/v1beta1", "kind": "Ingress",
        "metadata": {"name": format!("ing-{n}"), "namespace": "bad"},
        "spec": {"rules": [{"host": format!("v{n}.bad.test"),
                            "http": {"paths": [{"path": "/", "backend": {"serviceName": format!("svc-{n}"), "servicePort": 8443}}]}}]}});
    edit(&mut i);
    (vec![i, service(n, svc_annotations), slice(n)], ("Ingress", format!("ing-{n}")))
}

/// A Kubernetes Ingress of Portico's class for site `n` to `svc-<n>`, verified with the `ca`
/// Secret; `edit` makes it hostile.
fn k8s_ingress(n: usize, edit: impl FnOnce(&mut Value)) -> Documents {
    let mut i = json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": format!("k8s-{n}"), "namespace": "bad", "annotations": {
            "nginx.ingress.kubernetes.io/backend-protocol": "HTTPS",
            "nginx.ingress.kubernetes.io/proxy-ssl-secret": "bad/ca",
            "nginx.ingress.kubernetes.io/proxy-ssl-verify": "on"}},
        "spec": {"ingressClassName": "portico",
                 "rules": [{"host": format!("k{n}.bad.test"), "http": {"paths": [
                     {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": format!("svc-{n}"), "port": {"number": 8443}}}}]}}]}});
    edit(&mut i);
    (vec![i, service(n, json!({})), slice(n)], ("Ingress", format!("k8s-{n}")))
}

/// `k8s_ingress` with one annotation set to the value.
fn k8s_annotation(n: usize, name: &str, value: &str) -> Documents {
    k8s_ingress(n, |i| i["metadata"]["annotations"][format!("nginx.ingress.kubernetes.io/{name}")] = json!(value))
}

/// A Gateway API site for `n`: an HTTPRoute on the shared Gateway to `svc-<n>`, whose TLS a
/// BackendTLSPolicy sets (CA in the shared ConfigMap); `edit` makes one of them hostile;
/// `reporter` is the kind that must report it.
fn gateway_site(n: usize, reporter: &'static str, edit: impl FnOnce(&mut Value, &mut Value)) -> Documents {
    let mut route = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": format!("gwr-{n}"), "namespace": "bad"},
        "spec": {"parentRefs": [{"name": "gw"}], "hostnames": [format!("g{n}.bad.test")],
                 "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                            "backendRefs": [{"name": format!("svc-{n}"), "port": 8443}]}]}});
    let mut policy = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
        "metadata": {"name": format!("pol-{n}"), "namespace": "bad"},
        "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": format!("svc-{n}")}],
                 "validation": {"hostname": "web.bad.svc",
                                "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "ca"}]}}});
    edit(&mut route, &mut policy);
    let name = if reporter == "HTTPRoute" { format!("gwr-{n}") } else { format!("pol-{n}") };
    (vec![route, policy, service(n, json!({})), slice(n)], (reporter, name))
}

const FIELDS: &[Field] = &[
    Field {
        name: "HTTPRoute spec.hostnames[]",
        documents: |n, v| gateway_site(n, "HTTPRoute", |r, _| r["spec"]["hostnames"] = json!([v])),
        spec_accepts: none,
    },
    Field {
        name: "HTTPRoute rules[].matches[].path.value",
        documents: |n, v| {
            gateway_site(n, "HTTPRoute", |r, _| r["spec"]["rules"][0]["matches"][0]["path"]["value"] = json!(v))
        },
        spec_accepts: none,
    },
    Field {
        name: "HTTPRoute rules[].filters[] URLRewrite.hostname",
        documents: |n, v| {
            gateway_site(n, "HTTPRoute", |r, _| {
                r["spec"]["rules"][0]["filters"] = json!([{"type": "URLRewrite", "urlRewrite": {"hostname": v}}])
            })
        },
        spec_accepts: none,
    },
    Field {
        name: "BackendTLSPolicy validation.hostname",
        documents: |n, v| gateway_site(n, "BackendTLSPolicy", |_, p| p["spec"]["validation"]["hostname"] = json!(v)),
        spec_accepts: none,
    },
    Field {
        name: "BackendTLSPolicy validation.subjectAltNames[].hostname",
        documents: |n, v| {
            gateway_site(n, "BackendTLSPolicy", |_, p| {
                p["spec"]["validation"]["subjectAltNames"] = json!([{"type": "Hostname", "hostname": v}])
            })
        },
        spec_accepts: none,
    },
    Field {
        name: "BackendTLSPolicy validation.subjectAltNames[].uri",
        documents: |n, v| {
            gateway_site(n, "BackendTLSPolicy", |_, p| {
                p["spec"]["validation"]["subjectAltNames"] = json!([{"type": "URI", "uri": v}])
            })
        },
        spec_accepts: none,
    },
    Field {
        name: "BackendTLSPolicy validation.caCertificateRefs[].name",
        documents: |n, v| {
            gateway_site(n, "BackendTLSPolicy", |_, p| {
                p["spec"]["validation"]["caCertificateRefs"][0]["name"] = json!(v)
            })
        },
        spec_accepts: none,
    },
    Field {
        name: "BackendTLSPolicy options (key and value)",
        documents: |n, v| {
            gateway_site(n, "BackendTLSPolicy", |_, p| {
                p["spec"]["options"] = json!({v: "1.3", "portico.dev/min-tls-version": v})
            })
        },
        spec_accepts: none,
    },
    Field {
        name: "HTTPProxy spec.virtualhost.fqdn",
        documents: |n, v| proxy(n, |p| p["spec"]["virtualhost"]["fqdn"] = json!(v)),
        spec_accepts: none,
    },
    Field {
        name: "HTTPProxy routes[].conditions[].prefix",
        documents: |n, v| proxy(n, |p| p["spec"]["routes"][0]["conditions"][0]["prefix"] = json!(v)),
        spec_accepts: none,
    },
    Field {
        name: "HTTPProxy services[].name",
        documents: |n, v| proxy(n, |p| p["spec"]["routes"][0]["services"][0]["name"] = json!(v)),
        spec_accepts: none,
    },
    Field {
        name: "HTTPProxy validation.subjectName",
        documents: |n, v| proxy(n, |p| p["spec"]["routes"][0]["services"][0]["validation"]["subjectName"] = json!(v)),
        spec_accepts: none,
    },
    Field {
        name: "HTTPProxy validation.caSecret",
        documents: |n, v| proxy(n, |p| p["spec"]["routes"][0]["services"][0]["validation"]["caSecret"] = json!(v)),
        spec_accepts: none,
    },
    Field {
        name: "HTTPProxy timeoutPolicy.response",
        documents: |n, v| proxy(n, |p| p["spec"]["routes"][0]["timeoutPolicy"] = json!({"response": v})),
        spec_accepts: none,
    },
    Field {
        name: "HTTPProxy includes[].conditions[].prefix",
        documents: |n, v| {
            proxy(n, |p| p["spec"]["includes"] = json!([{"name": "child", "conditions": [{"prefix": v}]}]))
        },
        spec_accepts: none,
    },
    Field {
        name: "Service annotation projectcontour.io/upstream-protocol.tls",
        documents: |n, v| {
            let (mut docs, report) = proxy(n, |p| {
                p["spec"]["routes"][0]["services"][0].as_object_mut().unwrap().remove("protocol");
            });
            docs[1] = service(n, json!({"projectcontour.io/upstream-protocol.tls": v}));
            (docs, report)
        },
        spec_accepts: |v| v.split(',').any(|item| matches!(item.trim(), "8443" | "https")),
    },
    Field {
        name: "Service annotation ingress.appscode.com/backend-tls",
        documents: |n, v| ingress(n, json!({"ingress.appscode.com/backend-tls": v}), |_| {}),
        spec_accepts: none,
    },
    Field {
        name: "Service annotation portico.dev/upstream-ca-secret",
        documents: |n, v| {
            ingress(
                n,
                json!({"ingress.appscode.com/backend-tls": "ssl verify required verifyhost web.bad.svc", "portico.dev/upstream-ca-secret": v}),
                |_| {},
            )
        },
        spec_accepts: none,
    },
    Field {
        name: "Voyager Ingress rules[].host",
        documents: |n, v| ingress(n, json!({}), |i| i["spec"]["rules"][0]["host"] = json!(v)),
        spec_accepts: none,
    },
    Field {
        name: "Voyager Ingress rules[].http.paths[].path",
        documents: |n, v| ingress(n, json!({}), |i| i["spec"]["rules"][0]["http"]["paths"][0]["path"] = json!(v)),
        spec_accepts: none,
    },
    Field {
        name: "HTTPProxy spec.virtualhost.tls.secretName",
        documents: |n, v| proxy(n, |p| p["spec"]["virtualhost"]["tls"] = json!({"secretName": v})),
        spec_accepts: none,
    },
    Field {
        name: "HTTPProxy spec.virtualhost.tls.minimumProtocolVersion",
        documents: |n, v| {
            proxy(n, |p| p["spec"]["virtualhost"]["tls"] = json!({"secretName": "cert", "minimumProtocolVersion": v}))
        },
        spec_accepts: none,
    },
    Field {
        name: "Voyager Ingress spec.tls[].secretName",
        documents: |n, v| {
            ingress(n, json!({}), |i| {
                i["spec"]["tls"] = json!([{"hosts": [format!("v{n}.bad.test")], "secretName": v}])
            })
        },
        spec_accepts: none,
    },
    Field {
        name: "Voyager Ingress spec.tls[].hosts[]",
        documents: |n, v| ingress(n, json!({}), |i| i["spec"]["tls"] = json!([{"hosts": [v], "secretName": "cert"}])),
        spec_accepts: none,
    },
    Field {
        name: "Ingress rules[].host",
        documents: |n, v| k8s_ingress(n, |i| i["spec"]["rules"][0]["host"] = json!(v)),
        spec_accepts: none,
    },
    Field {
        name: "Ingress rules[].http.paths[].path",
        documents: |n, v| k8s_ingress(n, |i| i["spec"]["rules"][0]["http"]["paths"][0]["path"] = json!(v)),
        spec_accepts: none,
    },
    Field {
        name: "Ingress paths[].backend.service.name",
        documents: |n, v| {
            k8s_ingress(n, |i| i["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] = json!(v))
        },
        spec_accepts: none,
    },
    Field {
        name: "Ingress spec.tls[].secretName",
        documents: |n, v| {
            k8s_ingress(n, |i| i["spec"]["tls"] = json!([{"hosts": [format!("k{n}.bad.test")], "secretName": v}]))
        },
        spec_accepts: none,
    },
    Field {
        name: "Ingress annotation backend-protocol",
        documents: |n, v| k8s_annotation(n, "backend-protocol", v),
        spec_accepts: none,
    },
    Field {
        name: "Ingress annotation proxy-ssl-secret",
        documents: |n, v| k8s_annotation(n, "proxy-ssl-secret", v),
        spec_accepts: none,
    },
    Field {
        name: "Ingress annotation proxy-ssl-name",
        documents: |n, v| k8s_annotation(n, "proxy-ssl-name", v),
        spec_accepts: none,
    },
    Field {
        name: "Ingress annotation proxy-ssl-protocols",
        documents: |n, v| k8s_annotation(n, "proxy-ssl-protocols", v),
        spec_accepts: none,
    },
    Field {
        name: "Voyager Ingress backend.serviceName",
        documents: |n, v| {
            ingress(n, json!({}), |i| i["spec"]["rules"][0]["http"]["paths"][0]["backend"]["serviceName"] = json!(v))
        },
        spec_accepts: none,
    },
];

/// `portico translate`'s options for `input`, written to `out_dir`.
fn options(input: std::path::PathBuf, out_dir: std::path::PathBuf) -> Options {
    Options {
        paths: vec![input],
        out_dir,
        http_port: 8080,
        https_port: 8443,
        envoy_admin_port: 9901,
        bind_address: "127.0.0.1".parse().unwrap(),
        client_cert: None,
        root_namespaces: Vec::new(),
        now: portico_deploy::unix_now(),
    }
}

/// Every file under `dir`, read as bytes.
fn files(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn hostile_values_in_every_field_reach_no_config_and_are_each_reported() {
    let per_field: usize = std::env::var("PORTICO_BAD_INPUT_VALUES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let ca = portico_deploy::demo::TestCa::new("bad-input CA");
    let shared = [
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ca", "namespace": "bad"},
               "type": "Opaque", "stringData": {"ca.crt": ca.pem}}),
        // The valid site, which every run must still serve.
        json!({"apiVersion": "projectcontour.io/v1", "kind": "HTTPProxy", "metadata": {"name": "good", "namespace": "bad"},
               "spec": {"virtualhost": {"fqdn": "good.bad.test"},
                        "routes": [{"services": [{"name": "svc-good", "port": 8443, "protocol": "tls",
                                                  "validation": {"caSecret": "ca", "subjectName": "web.bad.svc"}}]}]}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc-good", "namespace": "bad"},
               "spec": {"ports": [{"name": "https", "port": 8443}]}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": "portico"},
               "spec": {"controller": "portico.dev/ingress-controller"}}),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "portico"},
               "spec": {"controllerName": "portico.dev/gateway-controller"}}),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "gw", "namespace": "bad"},
               "spec": {"gatewayClassName": "portico", "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ca", "namespace": "bad"},
               "data": {"ca.crt": ca.pem}}),
    ];
    // The check is not vacuous: a canary in a value within its grammar does reach the files.
    {
        let dir = tempfile::tempdir().unwrap();
        let (mut documents, _) = proxy(0, |p| p["spec"]["routes"][0]["conditions"][0]["prefix"] = json!("/ZQX0Q"));
        // And a Kubernetes Ingress, valid but for nothing: its status must say valid.
        let (k8s, _) = k8s_ingress(1, |i| i["spec"]["rules"][0]["http"]["paths"][0]["path"] = json!("/ZQX1Q"));
        documents.extend(k8s);
        let yaml: Vec<String> = shared.iter().chain(&documents).map(|d| serde_json::to_string(d).unwrap()).collect();
        std::fs::write(dir.path().join("in.yaml"), yaml.join("\n---\n")).unwrap();
        let options = options(dir.path().join("in.yaml"), dir.path().join("out"));
        let outcome = run(&options).unwrap();
        let k8s =
            outcome.resolved.statuses.iter().find(|s| s.object.name.as_str() == "k8s-1").expect("the Ingress's status");
        assert_eq!(k8s.to_contour().current_status, "valid", "{k8s:?}");
        let mut written = Vec::new();
        files(&dir.path().join("out/haproxy"), &mut written);
        files(&dir.path().join("out/envoy"), &mut written);
        for proxy in ["/haproxy/", "envoy.yaml"] {
            assert!(
                written.iter().any(|(p, c)| p.contains(proxy) && contains(c, b"ZQX0Q")),
                "a valid value with the canary is found in {proxy}"
            );
        }
    }
    let mut rng = Rng(0x5eed_0fba_d14e_u64);
    let mut summary = Vec::new();
    let (mut total_values, mut total_injections, mut total_unreported, mut total_panics) = (0, 0, 0, 0);
    for field in FIELDS {
        let dir = tempfile::tempdir().unwrap();
        let inputs = dir.path().join("in");
        std::fs::create_dir_all(&inputs).unwrap();
        let shared_yaml: Vec<String> = shared.iter().map(|d| serde_json::to_string(d).unwrap()).collect();
        std::fs::write(inputs.join("shared.yaml"), shared_yaml.join("\n---\n")).unwrap();
        let mut reporters = Vec::new();
        let mut accepted = 0;
        for n in 0..per_field {
            let value = hostile(&mut rng, n);
            let (documents, mut reporter) = (field.documents)(n, &value);
            if (field.spec_accepts)(&value) {
                accepted += 1;
                reporter.0 = ""; // valid by SPEC: nothing to report
            }
            let yaml: Vec<String> = documents.iter().map(|d| serde_json::to_string(d).unwrap()).collect();
            std::fs::write(inputs.join(format!("v{n}.yaml")), yaml.join("\n---\n")).unwrap();
            reporters.push(reporter);
        }
        let out = dir.path().join("out");
        let options = options(inputs, out.clone());
        let outcome = match std::panic::catch_unwind(|| run(&options)) {
            Ok(outcome) => outcome.unwrap_or_else(|e| panic!("{}: translate failed: {e}", field.name)),
            Err(_) => {
                total_panics += 1;
                summary.push(format!("{}: PANICKED", field.name));
                continue;
            }
        };
        // Injections: a canary in any file of either proxy's configuration.
        let mut written = Vec::new();
        files(&out.join("haproxy"), &mut written);
        files(&out.join("envoy"), &mut written);
        let mut injections = Vec::new();
        for (path, contents) in &written {
            for (at, _) in contents.windows(3).enumerate().filter(|(_, w)| *w == b"ZQX") {
                let end = (at + 16).min(contents.len());
                injections.push(format!("{} in {path}", String::from_utf8_lossy(&contents[at..end])));
            }
        }
        // Reporting: the reporter is not valid and says why, or its document was refused.
        let reported: std::collections::BTreeSet<(&str, String)> = outcome
            .resolved
            .statuses
            .iter()
            .filter(|s| {
                let contour = s.to_contour();
                contour.current_status != "valid" && !contour.description.is_empty()
            })
            .map(|s| (s.object.kind.as_str(), s.object.name.to_string()))
            .collect();
        let refused_files: std::collections::BTreeSet<&str> =
            outcome.problems.iter().map(|p| p.location.file.rsplit('/').next().unwrap_or_default()).collect();
        let mut unreported = Vec::new();
        for (n, (kind, name)) in reporters.iter().enumerate() {
            if kind.is_empty() {
                continue;
            }
            let refused = refused_files.contains(format!("v{n}.yaml").as_str());
            if !refused && !reported.contains(&(*kind, name.clone())) {
                unreported.push(n);
            }
        }
        // The valid site is served by both.
        let haproxy_maps: String = written
            .iter()
            .filter(|(p, _)| p.contains("/haproxy/"))
            .map(|(_, c)| String::from_utf8_lossy(c).into_owned())
            .collect();
        let envoy = written.iter().find(|(p, _)| p.ends_with("envoy.yaml")).map(|(_, c)| String::from_utf8_lossy(c));
        assert!(
            haproxy_maps.contains("good.bad.test"),
            "{}: the valid site is not in HAProxy's configuration",
            field.name
        );
        assert!(envoy.is_some_and(|e| e.contains("good.bad.test")), "{}: the valid site is not in Envoy's", field.name);

        let refused = outcome.problems.len();
        let example = unreported.first().map(|n| format!(" (e.g. value {n})")).unwrap_or_default();
        summary.push(format!(
            "{:<58} {per_field:>5} values  {:>4} injections  {:>5} unreported{example}  ({refused} documents refused by decoding, {accepted} valid by SPEC)",
            field.name,
            injections.len(),
            unreported.len()
        ));
        total_values += per_field;
        total_injections += injections.len();
        total_unreported += unreported.len();
        if !injections.is_empty() {
            eprintln!("{}: {}", field.name, injections.iter().take(5).cloned().collect::<Vec<_>>().join("; "));
        }
    }
    eprintln!("\nbad input through `portico translate`, {per_field} hostile values per field:");
    for line in &summary {
        eprintln!("  {line}");
    }
    eprintln!(
        "total: {total_values} values, {total_panics} panics, {total_injections} injections, {total_unreported} unreported"
    );
    assert_eq!(total_panics, 0, "{summary:#?}");
    assert_eq!(total_injections, 0, "{summary:#?}");
    assert_eq!(total_unreported, 0, "{summary:#?}");
}

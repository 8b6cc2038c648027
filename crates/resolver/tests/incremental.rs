//! Issue 9: incremental resolution gives the same model and statuses as a full resolve,
//! over random sequences of changes (objects added, changed and removed, verdicts coming
//! and going), and re-resolves only what depends on a change.

mod support;

use portico_model::{
    Delegation, Endpoint, EndpointPort, EndpointSlice, HttpProxy, HttpProxyInclude, HttpProxyRoute, HttpProxyService,
    Kind, Meta, Object, ObjectRef, Service, ServicePort, ServiceType, TlsCertificateDelegation, UpstreamValidation,
    VoyagerBackend, VoyagerIngress, VoyagerPath, VoyagerRule,
};
use portico_resolver::{resolve, Config, Incremental};
use proptest::prelude::*;
use std::collections::BTreeMap;

const NAMESPACES: [&str; 2] = ["a", "b"];

fn meta(ns: &str, name: &str) -> Meta {
    Meta { namespace: ns.parse().unwrap(), name: name.parse().unwrap() }
}

fn pick<T: Clone>(items: &[T], i: usize) -> T {
    items[i % items.len()].clone()
}

/// One change to the world, drawn from a small universe so that changes collide.
#[derive(Clone, Debug)]
enum Change {
    Apply(Object),
    Remove(ObjectRef),
    Verdict { secret: String, valid: bool },
    DropVerdict(String),
}

fn service(ns: usize, s: usize, tls: bool) -> Object {
    let mut annotations = BTreeMap::new();
    if tls {
        annotations.insert("projectcontour.io/upstream-protocol.tls".to_owned(), "443".to_owned());
        annotations.insert("ingress.appscode.com/backend-tls".to_owned(), "ssl verify none".to_owned());
    }
    Object::Service(Service {
        meta: meta(NAMESPACES[ns % 2], &format!("s{}", s % 3)),
        annotations,
        service_type: ServiceType::ClusterIp,
        ports: vec![ServicePort {
            name: "https".into(),
            port: 443,
            target_port: None,
            protocol: "TCP".into(),
            app_protocol: None,
        }],
    })
}

fn slice(ns: usize, s: usize, service: usize, addresses: usize) -> Object {
    Object::EndpointSlice(EndpointSlice {
        meta: meta(NAMESPACES[ns % 2], &format!("slice{}", s % 3)),
        service_name: Some(format!("s{}", service % 3)),
        ports: vec![EndpointPort { name: "https".into(), port: Some(8443) }],
        endpoints: (0..addresses % 3)
            .map(|i| Endpoint { addresses: vec![format!("10.0.0.{i}")], ready: true })
            .collect(),
    })
}

fn proxy(ns: usize, p: usize, shape: [usize; 8]) -> Object {
    let fqdn = [None, Some("one.example.com"), Some("two.example.com"), Some("bad host")][shape[0] % 4];
    let prefixes = ["/", "/api", "/team", "/api/v1"];
    let includes = (0..shape[1] % 3)
        .map(|i| HttpProxyInclude {
            name: format!("p{}", (shape[2] + i) % 4),
            namespace: [None, Some("a".to_owned()), Some("b".to_owned())][(shape[3] + i) % 3].clone(),
            prefixes: if (shape[4] + i).is_multiple_of(4) {
                vec![]
            } else {
                vec![pick(&prefixes, shape[4] + i).to_owned()]
            },
            ignored: if (shape[4] + i) % 7 == 3 {
                vec!["spec.includes[0].conditions[1].header".into()]
            } else {
                vec![]
            },
        })
        .collect();
    let routes = (0..1 + shape[5] % 2)
        .map(|i| HttpProxyRoute {
            prefixes: vec![pick(&prefixes, shape[6] + i).to_owned()],
            services: vec![HttpProxyService {
                name: format!("s{}", (shape[7] + i) % 3),
                port: 443,
                weight: None,
                protocol: None,
                validation: match (shape[7] + i) % 4 {
                    0 => None,
                    n => Some(UpstreamValidation {
                        ca_secret: ["ca", "a/ca", "b/ca"][n - 1].to_owned(),
                        subject_name: "backend.example.com".into(),
                        subject_names: vec![],
                    }),
                },
            }],
            set_headers: vec![],
            response_timeout: None,
            idle_timeout: None,
            permit_insecure: (shape[6] + i) % 3 == 1,
            ignored: vec![],
        })
        .collect();
    Object::HttpProxy(HttpProxy {
        meta: meta(NAMESPACES[ns % 2], &format!("p{}", p % 4)),
        fqdn: fqdn.map(str::to_owned),
        tls: [None, Some("cert"), Some("b/cert"), Some("nocert")][shape[3] % 4].map(|secret| {
            portico_model::HttpProxyTls {
                secret_name: secret.to_owned(),
                minimum_protocol_version: [None, Some("1.3".to_owned())][shape[4] % 2].clone(),
            }
        }),
        includes,
        routes,
        ignored: if shape[0] % 5 == 4 { vec!["spec.virtualhost.ipAllowPolicy".into()] } else { vec![] },
    })
}

fn delegation(ns: usize, to: usize) -> Object {
    Object::TlsCertificateDelegation(TlsCertificateDelegation {
        meta: meta(NAMESPACES[ns % 2], "share"),
        delegations: ["ca", "cert"]
            .into_iter()
            .map(|secret| Delegation {
                secret_name: secret.into(),
                target_namespaces: vec![["a", "b", "*"][to % 3].into()],
            })
            .collect(),
    })
}

fn voyager(ns: usize, shape: usize) -> Object {
    Object::VoyagerIngress(VoyagerIngress {
        meta: meta(NAMESPACES[ns % 2], "ing"),
        backend: None,
        rules: vec![VoyagerRule {
            host: ["one.example.com", "three.example.com"][shape % 2].into(),
            port: None,
            paths: vec![VoyagerPath {
                path: Some(["/", "/api", "/legacy"][shape % 3].into()),
                backend: VoyagerBackend { service_name: format!("s{}", shape % 3), service_port: "443".into() },
            }],
        }],
        tls: if shape % 4 < 2 {
            vec![portico_model::VoyagerTls {
                hosts: vec!["one.example.com".into(), "three.example.com".into()],
                secret_name: "cert".into(),
            }]
        } else {
            vec![]
        },
        ignored: vec![],
    })
}

/// A Kubernetes Ingress: its class, path type, backend port and annotations vary.
fn k8s_ingress(ns: usize, shape: usize) -> Object {
    use portico_model::{Ingress, IngressBackend, IngressPath, IngressRule, IngressServicePort, IngressTls};
    let mut annotations = BTreeMap::new();
    if shape % 3 == 1 {
        annotations.insert("nginx.ingress.kubernetes.io/backend-protocol".to_owned(), "HTTPS".to_owned());
        annotations.insert("nginx.ingress.kubernetes.io/proxy-ssl-secret".to_owned(), "a/ca".to_owned());
        annotations.insert("nginx.ingress.kubernetes.io/proxy-ssl-verify".to_owned(), "on".to_owned());
    }
    Object::Ingress(Ingress {
        meta: meta(NAMESPACES[ns % 2], "k8s"),
        annotations,
        class_name: [Some("portico".to_owned()), None, Some("other".to_owned())][shape % 3].clone(),
        default_backend: None,
        rules: vec![IngressRule {
            host: Some(["one.example.com", "four.example.com"][shape % 2].into()),
            paths: vec![IngressPath {
                path: Some(["/api", "/k8s"][shape / 2 % 2].into()),
                path_type: ["Prefix", "Exact"][shape / 4 % 2].into(),
                backend: IngressBackend::Service {
                    name: format!("s{}", shape % 3),
                    port: IngressServicePort::Number(443),
                },
            }],
        }],
        tls: if shape.is_multiple_of(5) {
            vec![IngressTls { hosts: vec!["one.example.com".into()], secret_name: Some("cert".into()) }]
        } else {
            vec![]
        },
    })
}

/// Portico's IngressClass, default or not.
fn ingress_class(default: bool) -> Object {
    Object::IngressClass(portico_model::IngressClass {
        meta: meta(portico_model::CLUSTER, "portico"),
        controller: "portico.dev/ingress-controller".into(),
        is_default: default,
    })
}

/// Gateway API: Portico's GatewayClass or another controller's.
fn gateway_class(ours: bool) -> Object {
    Object::GatewayClass(portico_model::GatewayClass {
        meta: meta(portico_model::CLUSTER, "portico"),
        lifecycle: portico_model::Lifecycle { generation: 1, created: None },
        controller: if ours { "portico.dev/gateway-controller" } else { "example.com/other" }.into(),
    })
}

fn gref(name: &str, namespace: Option<&str>) -> portico_model::GatewayRef {
    portico_model::GatewayRef { name: name.into(), namespace: namespace.map(str::to_owned), ..Default::default() }
}

/// A Gateway: who may attach, a hostname, an HTTPS listener, a client certificate.
fn gateway(ns: usize, shape: usize) -> Object {
    use portico_model::{Gateway, GatewayListener};
    let mut listeners = vec![GatewayListener {
        name: "http".into(),
        port: 8080,
        protocol: "HTTP".into(),
        hostname: (shape % 3 == 2).then(|| "*.example.com".into()),
        certificate_refs: vec![],
        tls_mode: None,
        allowed_from: Some(["Same", "All"][shape % 2].into()),
        allowed_kinds: vec![],
    }];
    if shape / 2 % 2 == 1 {
        listeners.push(GatewayListener {
            name: "https".into(),
            port: 8443,
            protocol: "HTTPS".into(),
            hostname: None,
            certificate_refs: vec![gref("cert", None)],
            tls_mode: None,
            allowed_from: Some("All".into()),
            allowed_kinds: vec![],
        });
    }
    Object::Gateway(Gateway {
        meta: meta(NAMESPACES[ns % 2], "gw"),
        lifecycle: portico_model::Lifecycle { generation: (shape % 4) as i64 + 1, created: None },
        class_name: "portico".into(),
        listeners,
        client_certificate: (shape / 4 % 2 == 1).then(|| gref("cert", None)),
    })
}

/// An HTTPRoute: its parent, hostnames, backend (here or in the other namespace).
fn http_route(ns: usize, shape: usize) -> Object {
    use portico_model::{HttpBackendRef, HttpRoute, HttpRouteMatch, HttpRouteRule};
    let mut parent = gref("gw", Some(NAMESPACES[shape % 2]));
    parent.section_name = (shape / 2 % 3 == 1).then(|| "http".into());
    let backend_ns = (shape / 6 % 3 == 2).then(|| NAMESPACES[(ns + 1) % 2]);
    Object::HttpRoute(HttpRoute {
        meta: meta(NAMESPACES[ns % 2], &format!("r{}", shape % 2)),
        lifecycle: portico_model::Lifecycle { generation: 1, created: None },
        parent_refs: vec![parent],
        hostnames: vec![["one.example.com", "two.example.com", "three.example.com"][shape % 3].into()],
        rules: vec![HttpRouteRule {
            matches: vec![HttpRouteMatch {
                path_type: ["PathPrefix", "Exact"][shape / 3 % 2].into(),
                path: "/gw".into(),
            }],
            backend_refs: vec![HttpBackendRef {
                target: portico_model::GatewayRef { port: Some(443), ..gref(&format!("s{}", shape % 3), backend_ns) },
                weight: None,
            }],
            host_rewrite: None,
            unsupported: vec![],
        }],
    })
}

/// A BackendTLSPolicy for a Service: its CA (a ConfigMap or a Secret), its age, its names.
fn backend_tls_policy(ns: usize, shape: usize) -> Object {
    let ca_kind = ["ConfigMap", "Secret"][shape % 2];
    Object::BackendTlsPolicy(portico_model::BackendTlsPolicy {
        meta: meta(NAMESPACES[ns % 2], &format!("pol{}", shape / 2 % 2)),
        lifecycle: portico_model::Lifecycle {
            generation: 1,
            created: Some(format!("2026-0{}-01T00:00:00Z", shape / 4 % 3 + 1)),
        },
        target_refs: vec![portico_model::GatewayRef {
            group: Some(String::new()),
            kind: Some("Service".into()),
            name: format!("s{}", shape / 3 % 3),
            section_name: (shape % 5 == 4).then(|| "https".into()),
            ..Default::default()
        }],
        ca_certificate_refs: vec![portico_model::GatewayRef {
            group: Some(String::new()),
            kind: Some(ca_kind.into()),
            name: "ca".into(),
            ..Default::default()
        }],
        well_known_ca_certificates: None,
        hostname: "backend.example.com".into(),
        subject_alt_names: if shape % 7 == 6 { vec![("URI".into(), "spiffe://x/y".into())] } else { vec![] },
        options: BTreeMap::new(),
    })
}

/// A ReferenceGrant letting HTTPRoutes of the other namespace reach Services here.
fn reference_grant(ns: usize) -> Object {
    Object::ReferenceGrant(portico_model::ReferenceGrant {
        meta: meta(NAMESPACES[ns % 2], "grant"),
        from: vec![portico_model::GrantFrom {
            group: "gateway.networking.k8s.io".into(),
            kind: "HTTPRoute".into(),
            namespace: NAMESPACES[(ns + 1) % 2].into(),
        }],
        to: vec![portico_model::GrantTo { group: String::new(), kind: "Service".into(), name: None }],
    })
}

fn change() -> impl Strategy<Value = Change> {
    let n = || 0usize..12;
    prop_oneof![
        (n(), n(), any::<bool>()).prop_map(|(ns, s, tls)| Change::Apply(service(ns, s, tls))),
        (n(), n(), n(), n()).prop_map(|(ns, s, svc, a)| Change::Apply(slice(ns, s, svc, a))),
        (n(), n(), proptest::array::uniform8(n())).prop_map(|(ns, p, shape)| Change::Apply(proxy(ns, p, shape))),
        (n(), n(), proptest::array::uniform8(n())).prop_map(|(ns, p, shape)| Change::Apply(proxy(ns, p, shape))),
        (n(), n()).prop_map(|(ns, to)| Change::Apply(delegation(ns, to))),
        (n(), n()).prop_map(|(ns, shape)| Change::Apply(voyager(ns, shape))),
        (n(), n()).prop_map(|(ns, shape)| Change::Apply(k8s_ingress(ns, shape))),
        any::<bool>().prop_map(|default| Change::Apply(ingress_class(default))),
        any::<bool>().prop_map(|ours| Change::Apply(gateway_class(ours))),
        (n(), n()).prop_map(|(ns, shape)| Change::Apply(gateway(ns, shape))),
        (n(), n()).prop_map(|(ns, shape)| Change::Apply(http_route(ns, shape))),
        (n(), n()).prop_map(|(ns, shape)| Change::Apply(http_route(ns, shape))),
        (n(), n()).prop_map(|(ns, shape)| Change::Apply(backend_tls_policy(ns, shape))),
        n().prop_map(|ns| Change::Apply(reference_grant(ns))),
        (0usize..14, n(), n()).prop_map(|(kind, ns, i)| {
            let (kind, name) = [
                (Kind::Service, format!("s{}", i % 3)),
                (Kind::EndpointSlice, format!("slice{}", i % 3)),
                (Kind::HttpProxy, format!("p{}", i % 4)),
                (Kind::HttpProxy, format!("p{}", (i + 1) % 4)),
                (Kind::TlsCertificateDelegation, "share".to_owned()),
                (Kind::VoyagerIngress, "ing".to_owned()),
                (Kind::Ingress, "k8s".to_owned()),
                (Kind::IngressClass, "portico".to_owned()),
                (Kind::GatewayClass, "portico".to_owned()),
                (Kind::Gateway, "gw".to_owned()),
                (Kind::HttpRoute, format!("r{}", i % 2)),
                (Kind::BackendTlsPolicy, format!("pol{}", i % 2)),
                (Kind::ReferenceGrant, "grant".to_owned()),
                (Kind::HttpRoute, format!("r{}", (i + 1) % 2)),
            ][kind]
                .clone();
            let cluster_scoped = matches!(kind, Kind::IngressClass | Kind::GatewayClass);
            let namespace = if cluster_scoped { portico_model::CLUSTER } else { NAMESPACES[ns % 2] };
            Change::Remove(ObjectRef { kind, namespace: namespace.parse().unwrap(), name: name.parse().unwrap() })
        }),
        (n(), any::<bool>())
            .prop_map(|(ns, valid)| Change::Verdict { secret: format!("{}/ca", NAMESPACES[ns % 2]), valid }),
        n().prop_map(|ns| Change::DropVerdict(format!("{}/ca", NAMESPACES[ns % 2]))),
        (n(), any::<bool>())
            .prop_map(|(ns, valid)| Change::Verdict { secret: format!("{}/cert", NAMESPACES[ns % 2]), valid }),
        n().prop_map(|ns| Change::DropVerdict(format!("{}/cert", NAMESPACES[ns % 2]))),
        (n(), any::<bool>())
            .prop_map(|(ns, valid)| Change::Verdict { secret: format!("configmap:{}/ca", NAMESPACES[ns % 2]), valid }),
        n().prop_map(|ns| Change::DropVerdict(format!("configmap:{}/ca", NAMESPACES[ns % 2]))),
    ]
}

/// `ns/name`, or `configmap:ns/name` for a ConfigMap's `ca.crt`.
fn holder(secret: &str) -> portico_model::SecretRef {
    match secret.strip_prefix("configmap:") {
        Some(rest) => {
            let (ns, name) = rest.split_once('/').unwrap();
            portico_model::SecretRef::config_map(ns, name).unwrap()
        }
        None => support::secret_ref(secret),
    }
}

fn apply(inc: &mut Incremental, change: &Change) {
    match change {
        Change::Apply(object) => inc.apply(object.clone()).unwrap(),
        Change::Remove(reference) => inc.remove(reference),
        Change::Verdict { secret, valid } => inc.set_verdict(if secret.ends_with("/cert") {
            // Covers one and three, not two: a certificate that does not cover its host.
            let names: &[&str] = if *valid { &["one.example.com", "three.example.com"] } else { &[] };
            support::key_pair(secret, &format!("sha-{}", names.len()), names)
        } else {
            let plain = secret.trim_start_matches("configmap:");
            let verdict = if *valid {
                support::valid_ca(plain)
            } else {
                support::invalid_ca(plain, "certificate 1: invalid DER")
            };
            portico_model::SecretVerdict { secret: holder(secret), ..verdict }
        }),
        Change::DropVerdict(secret) => inc.remove_verdict(&holder(secret)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn applying_changes_one_by_one_gives_the_full_resolve(changes in proptest::collection::vec(change(), 1..40)) {
        let config = Config::default();
        let mut inc = Incremental::new(config.clone());
        let mut before = inc.resolved();
        for (i, change) in changes.iter().enumerate() {
            apply(&mut inc, change);
            let reported = inc.rebuild();
            let got = inc.resolved();
            let want = resolve(inc.snapshot(), &config);
            prop_assert_eq!(&got.model, &want.model, "model after change {} ({:?})", i, change);
            // The delta the resolver publishes makes the previous model the new one.
            let mut followed = before.model.clone();
            let delta = inc.delta().expect("no cluster names collide here");
            delta.apply_to(&mut followed);
            prop_assert_eq!(&followed, &got.model, "the delta after change {} ({:?}): {:?}", i, change, delta);
            prop_assert_eq!(&got.statuses, &want.statuses, "statuses after change {} ({:?})", i, change);
            // What the rebuild says changed is exactly what changed.
            let old: BTreeMap<_, _> = before.statuses.iter().map(|s| (s.object.clone(), s)).collect();
            let new: BTreeMap<_, _> = got.statuses.iter().map(|s| (s.object.clone(), s)).collect();
            let mut changed: Vec<ObjectRef> = new.iter().filter(|(k, v)| old.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
            let mut removed: Vec<ObjectRef> = old.keys().filter(|k| !new.contains_key(*k)).cloned().collect();
            let mut said = reported.statuses.clone();
            let mut said_removed = reported.removed_statuses.clone();
            changed.sort(); removed.sort(); said.sort(); said_removed.sort();
            prop_assert_eq!(said, changed, "changed statuses after change {} ({:?})", i, change);
            prop_assert_eq!(said_removed, removed, "removed statuses after change {} ({:?})", i, change);
            before = got;
        }
    }
}

#[test]
fn the_property_is_not_vacuous_the_universe_has_includes_conflicts_and_failures() {
    // One fixed sequence that the random ones must be able to reach: a root including a
    // child across namespaces, a conflict, an orphan, a missing CA.
    let mut inc = Incremental::new(Config::default());
    for object in [
        service(0, 0, true),
        slice(0, 0, 0, 2),
        service(1, 0, false),
        proxy(0, 0, [1, 1, 1, 2, 2, 0, 0, 1]), // a/p0 on one.example.com includes b/p1 under /team
        proxy(1, 1, [0, 0, 0, 0, 0, 0, 1, 0]), // b/p1, a child
        proxy(0, 2, [1, 0, 0, 0, 0, 0, 0, 0]), // a/p2 also claims one.example.com /
        proxy(0, 3, [0, 0, 0, 0, 0, 0, 0, 0]), // a/p3: an orphan
    ] {
        inc.apply(object).unwrap();
    }
    inc.rebuild();
    let got = inc.resolved();
    let status = |ns: &str, name: &str| {
        got.statuses
            .iter()
            .find(|s| s.object.namespace.as_str() == ns && s.object.name.as_str() == name)
            .unwrap()
            .to_contour()
    };
    assert_eq!(status("a", "p3").current_status, "orphaned");
    assert_eq!(status("b", "p1").current_status, "valid", "{:?}", status("b", "p1"));
    assert!(status("a", "p2").description.contains("already routed by HTTPProxy a/p0"), "{:?}", status("a", "p2"));
    assert!(got.model.routes().any(|(_, _, r)| r.prefix.as_str() == "/team/api" && r.source.name.as_str() == "p1"));
}

#[test]
fn a_change_re_resolves_only_the_units_that_read_what_changed() {
    let mut inc = Incremental::new(Config::default());
    for ns in 0..2 {
        for s in 0..3 {
            inc.apply(service(ns, s, true)).unwrap();
            inc.apply(slice(ns, s, s, 2)).unwrap();
        }
        for p in 0..4 {
            // four roots per namespace, p on service s(p % 3), validating against `ca`
            let host = p % 2 + 1;
            inc.apply(proxy(ns, p, [host, 0, 0, 0, 0, 0, p, 4 + p])).unwrap();
        }
    }
    let first = inc.rebuild();
    assert_eq!(first.units, 8, "every unit resolves once at first");

    // An EndpointSlice of a/s0: only the roots in `a` that route to s0.
    inc.apply(slice(0, 0, 0, 1)).unwrap();
    let changes = inc.rebuild();
    let readers = (0..4).filter(|p| (4 + p) % 3 == 0).count();
    assert_eq!(changes.units, readers, "only the units that read a/s0: {changes:?}");

    // A CA verdict in b: only the roots validating against a CA in b.
    inc.set_verdict(support::valid_ca("b/ca"));
    let changes = inc.rebuild();
    assert!(changes.units >= 1 && changes.units < 8, "{changes:?}");

    // Nothing changed: nothing to do.
    assert!(!inc.is_dirty());
    assert_eq!(inc.rebuild(), portico_resolver::Changes::default());
}

#[test]
fn a_change_to_a_child_re_resolves_only_the_roots_that_include_it() {
    let mut inc = Incremental::new(Config::default());
    inc.apply(service(1, 0, false)).unwrap();
    inc.apply(proxy(0, 0, [1, 1, 1, 2, 2, 0, 0, 0])).unwrap(); // a/p0 includes b/p1
    inc.apply(proxy(0, 2, [2, 0, 0, 0, 0, 0, 0, 0])).unwrap(); // a/p2: another root, no includes
    inc.apply(proxy(1, 1, [0, 0, 0, 0, 0, 0, 1, 0])).unwrap(); // b/p1, the child
    assert_eq!(inc.rebuild().units, 3, "two roots, and the child's own (empty) unit");
    inc.apply(proxy(1, 1, [0, 0, 0, 0, 0, 1, 2, 0])).unwrap(); // the child gets another route
    let changes = inc.rebuild();
    assert_eq!(changes.units, 2, "the child's root and the child itself, not the other root: {changes:?}");
    assert!(inc.model().routes().any(|(_, _, r)| r.prefix.as_str() == "/team/team"));
}

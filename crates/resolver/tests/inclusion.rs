//! SPEC section 9: HTTPProxy inclusion (roots, children, orphans, the four include errors,
//! `--root-namespaces`) and fields Portico does not implement, case by case.

mod support;

use portico_model::Verification;
use portico_resolver::contour::join_prefix;
use portico_resolver::Config;
use support::*;

const HOST: &str = "www.example.com";

/// A TLS Service in each of the namespaces `web` (the root's) and `team` (the children's),
/// a plain one in `team`, and a delegation of `infra/shared-ca` to `team` only.
const BASE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: api, namespace: team, annotations: {projectcontour.io/upstream-protocol.tls: "443"}}
spec: {ports: [{name: https, port: 443}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: team, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: https, port: 8443}]
endpoints: [{addresses: [10.1.0.1]}]
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: team}
spec: {ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: plain-1, namespace: team, labels: {kubernetes.io/service-name: plain}}
addressType: IPv4
ports: [{port: 80}]
endpoints: [{addresses: [10.1.0.2]}]
---
apiVersion: v1
kind: Service
metadata: {name: front, namespace: web}
spec: {ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: front-1, namespace: web, labels: {kubernetes.io/service-name: front}}
addressType: IPv4
ports: [{port: 80}]
endpoints: [{addresses: [10.2.0.1]}]
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: web}
spec: {ports: [{port: 80}]}
---
apiVersion: projectcontour.io/v1
kind: TLSCertificateDelegation
metadata: {name: share, namespace: infra}
spec:
  delegations:
  - {secretName: shared-ca, targetNamespaces: [team]}
"#;

fn cas() -> Vec<portico_model::SecretVerdict> {
    vec![valid_ca("team/team-ca"), valid_ca("infra/shared-ca"), valid_ca("web/web-ca")]
}

/// An HTTPProxy document: `spec` is the YAML under `spec:`, indented by two.
fn proxy(namespace: &str, name: &str, spec: &str) -> String {
    format!("---\napiVersion: projectcontour.io/v1\nkind: HTTPProxy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}")
}

/// The root `web/root` on www.example.com with its own route `/` to `front`, and `includes`.
fn root(includes: &str) -> String {
    proxy(
        "web",
        "root",
        &format!(
            "  virtualhost: {{fqdn: {HOST}}}\n  includes: {includes}\n  routes: [{{services: [{{name: front, port: 80}}]}}]\n"
        ),
    )
}

/// A child (no virtualhost) with one route `prefix` to `service`.
fn child(namespace: &str, name: &str, prefix: &str, service: &str) -> String {
    proxy(namespace, name, &format!("  routes: [{{conditions: [{{prefix: {prefix}}}], services: [{service}]}}]\n"))
}

fn resolve(docs: &[String]) -> World {
    world(&format!("{BASE}{}", docs.concat()), cas())
}

#[test]
fn prefixes_join_as_contour_joins_them() {
    let cases = [
        ("a prefix under an include's prefix", "/team", "/api", "/team/api"),
        ("the root prefix under an include adds nothing", "/team", "/", "/team"),
        ("a trailing slash and a leading one fold into one", "/team/", "/api", "/team/api"),
        ("at the root, the route's own prefix", "", "/api", "/api"),
        ("at the root, / stays /", "", "/", "/"),
        ("runs of slashes fold", "/a//", "//b", "/a/b"),
    ];
    for (sentence, outer, inner, want) in cases {
        assert_eq!(join_prefix(outer, inner), want, "{sentence}");
    }
}

#[test]
fn a_root_with_one_include_serves_the_childs_routes_at_its_host_under_the_prefix() {
    let w = resolve(&[
        root("[{name: api, namespace: team, conditions: [{prefix: /team}]}]"),
        child("team", "api", "/v1", "{name: api, port: 443}"),
    ]);
    assert_eq!(w.status("web/root").current_status, "valid", "{:?}", errors(&w.status("web/root")));
    assert_eq!(w.status("team/api").current_status, "valid", "{:?}", errors(&w.status("team/api")));
    assert_eq!(
        w.route_list(),
        vec![
            (HOST.to_owned(), "/team/v1".to_owned(), "team/api".to_owned()),
            (HOST.to_owned(), "/".to_owned(), "web/root".to_owned()),
        ],
        "the child's route exists only at the root's host, under the joined prefix"
    );
    let cluster = w.cluster_of(8080, HOST, "/team/v1");
    assert_eq!((cluster.key.namespace.as_str(), cluster.key.service.as_str()), ("team", "api"));
}

#[test]
fn a_root_with_several_includes_and_a_multi_level_chain() {
    let w = resolve(&[
        root("[{name: a, namespace: team, conditions: [{prefix: /a}]}, {name: b, namespace: team, conditions: [{prefix: /b}]}]"),
        child("team", "a", "/", "{name: api, port: 443}"),
        proxy(
            "team",
            "b",
            "  includes: [{name: c, conditions: [{prefix: /deeper}]}]\n  routes: [{conditions: [{prefix: /own}], services: [{name: plain, port: 80}]}]\n",
        ),
        child("team", "c", "/leaf", "{name: plain, port: 80}"),
    ]);
    for name in ["web/root", "team/a", "team/b", "team/c"] {
        assert_eq!(w.status(name).current_status, "valid", "{name}: {:?}", errors(&w.status(name)));
    }
    let mut routes: Vec<(String, String)> = w.route_list().into_iter().map(|(_, p, o)| (p, o)).collect();
    routes.sort();
    assert_eq!(
        routes,
        vec![
            ("/".to_owned(), "web/root".to_owned()),
            ("/a".to_owned(), "team/a".to_owned()),
            ("/b/deeper/leaf".to_owned(), "team/c".to_owned()),
            ("/b/own".to_owned(), "team/b".to_owned()),
        ],
        "conditions accumulate down the chain; the include's namespace defaults to the includer's"
    );
}

#[test]
fn a_cross_namespace_include_resolves_services_in_the_childs_namespace() {
    // `plain` exists in both namespaces: the child's route must use team/plain.
    let w = resolve(&[
        root("[{name: c, namespace: team, conditions: [{prefix: /t}]}]"),
        child("team", "c", "/", "{name: plain, port: 80}"),
    ]);
    let cluster = w.cluster_of(8080, HOST, "/t");
    assert_eq!(cluster.key.namespace.as_str(), "team");
}

#[test]
fn an_include_of_a_missing_proxy_is_an_error_and_its_prefix_answers_502() {
    let w = resolve(&[root("[{name: ghost, namespace: team, conditions: [{prefix: /ghost}]}]")]);
    let status = w.status("web/root");
    assert_eq!(status.current_status, "invalid");
    assert_eq!(status.description, "include team/ghost not found");
    assert_eq!(errors(&status)[0].0, "IncludeNotFound");
    assert_eq!(status.conditions[0].errors[0].condition_type, "IncludeError");
    assert_eq!(w.answers(8080, HOST, "/ghost"), Some(502));
    assert_eq!(w.answers(8080, HOST, "/"), None, "the root's own route still serves");
}

#[test]
fn a_root_including_a_root_is_an_error_and_its_prefix_answers_502() {
    let other = proxy(
        "web",
        "other",
        "  virtualhost: {fqdn: other.example.com}\n  routes: [{services: [{name: front, port: 80}]}]\n",
    );
    let w = resolve(&[root("[{name: other, conditions: [{prefix: /o}]}]"), other]);
    let status = w.status("web/root");
    assert_eq!(status.description, "root httpproxy cannot include another root httpproxy (web/other)");
    assert_eq!(errors(&status)[0].0, "RootIncludesRoot");
    assert_eq!(w.answers(8080, HOST, "/o"), Some(502));
    assert_eq!(w.status("web/other").current_status, "valid", "the included root still serves its own host");
    assert_eq!(w.answers(8080, "other.example.com", "/"), None);
}

#[test]
fn include_cycles_are_errors_on_the_proxy_that_closes_them() {
    let cases: [(&str, Vec<String>, &str, &str); 3] = [
        (
            "a child that includes itself",
            vec![
                root("[{name: a, namespace: team, conditions: [{prefix: /a}]}]"),
                proxy("team", "a", "  includes: [{name: a, conditions: [{prefix: /again}]}]\n"),
            ],
            "team/a",
            "include creates an include cycle: web/root -> team/a -> team/a",
        ),
        (
            "a cycle of two",
            vec![
                root("[{name: a, namespace: team, conditions: [{prefix: /a}]}]"),
                proxy("team", "a", "  includes: [{name: b, conditions: [{prefix: /b}]}]\n"),
                proxy("team", "b", "  includes: [{name: a, conditions: [{prefix: /a}]}]\n"),
            ],
            "team/a",
            "include creates an include cycle: web/root -> team/a -> team/b -> team/a",
        ),
        (
            "a cycle of three",
            vec![
                root("[{name: a, namespace: team, conditions: [{prefix: /a}]}]"),
                proxy("team", "a", "  includes: [{name: b, conditions: [{prefix: /b}]}]\n"),
                proxy("team", "b", "  includes: [{name: c, conditions: [{prefix: /c}]}]\n"),
                proxy("team", "c", "  includes: [{name: a, conditions: [{prefix: /a}]}]\n"),
            ],
            "team/a",
            "include creates an include cycle: web/root -> team/a -> team/b -> team/c -> team/a",
        ),
    ];
    for (sentence, docs, on, message) in cases {
        let w = resolve(&docs);
        let status = w.status(on);
        assert_eq!(status.current_status, "invalid", "{sentence}");
        assert_eq!(errors(&status), vec![("IncludeCreatesCycle".to_owned(), message.to_owned())], "{sentence}");
        assert_eq!(w.status("web/root").current_status, "valid", "{sentence}: the root itself is fine");
        assert_eq!(w.answers(8080, HOST, "/"), None, "{sentence}: the root's route serves");
    }
}

#[test]
fn duplicate_include_conditions_are_an_error_and_only_the_first_is_followed() {
    let w = resolve(&[
        root("[{name: a, namespace: team, conditions: [{prefix: /x}]}, {name: b, namespace: team, conditions: [{prefix: /x}]}]"),
        child("team", "a", "/", "{name: api, port: 443}"),
        child("team", "b", "/", "{name: plain, port: 80}"),
    ]);
    let status = w.status("web/root");
    assert_eq!(
        errors(&status),
        vec![("DuplicateMatchConditions".to_owned(), "duplicate conditions defined on an include".to_owned())]
    );
    assert_eq!(w.cluster_of(8080, HOST, "/x").key.service.as_str(), "api");
    assert_eq!(w.status("team/b").current_status, "orphaned", "the duplicate include reaches nothing");
}

#[test]
fn an_orphan_is_reported_and_served_on_no_host() {
    let w = resolve(&[root("[]"), child("team", "lonely", "/secret", "{name: plain, port: 80}")]);
    let status = w.status("team/lonely");
    assert_eq!(status.current_status, "orphaned");
    assert_eq!(status.description, "this HTTPProxy is not part of a delegation chain from a root HTTPProxy");
    assert_eq!(status.conditions[0].errors[0].condition_type, "Orphaned");
    assert!(
        w.route_list().iter().all(|(_, prefix, owner)| owner != "team/lonely" && prefix != "/secret"),
        "an orphan is never served: {:?}",
        w.route_list()
    );
}

#[test]
fn a_childs_upstream_tls_is_resolved_from_its_own_namespace() {
    let tls_child = |ca: &str| {
        child(
            "team",
            "c",
            "/",
            &format!("{{name: api, port: 443, validation: {{caSecret: {ca}, subjectName: api.team.svc}}}}"),
        )
    };
    let root_doc = root("[{name: c, namespace: team, conditions: [{prefix: /t}]}]");
    let cases = [
        ("a CA without a namespace is in the child's namespace", "team-ca", "team/team-ca"),
        ("a CA delegated to the child's namespace", "infra/shared-ca", "infra/shared-ca"),
    ];
    for (sentence, ca, want) in cases {
        let w = resolve(&[root_doc.clone(), tls_child(ca)]);
        assert_eq!(w.status("team/c").current_status, "valid", "{sentence}: {:?}", errors(&w.status("team/c")));
        let tls = w.cluster_of(8080, HOST, "/t").key.tls.clone().expect("TLS");
        match tls.verify {
            Verification::Required { ca: portico_model::CaSource::Secret(s), .. } => {
                assert_eq!(s.to_string(), want, "{sentence}")
            }
            other => panic!("{sentence}: {other:?}"),
        }
    }

    // The root's namespace is web: a CA in web is not the child's, and needs delegation.
    let w = resolve(&[root_doc.clone(), tls_child("web/web-ca")]);
    assert_eq!(errors(&w.status("team/c"))[0].0, "CACertificateNotDelegated");
    assert_eq!(w.status("web/root").current_status, "valid", "the child's error is on the child");
}

#[test]
fn a_child_whose_ca_is_missing_fails_alone() {
    let w = resolve(&[
        root("[{name: c, namespace: team, conditions: [{prefix: /t}]}, {name: ok, namespace: team, conditions: [{prefix: /ok}]}]"),
        child("team", "c", "/", "{name: api, port: 443, validation: {caSecret: missing-ca, subjectName: api.team.svc}}"),
        child("team", "ok", "/", "{name: plain, port: 80}"),
    ]);
    let status = w.status("team/c");
    assert_eq!(status.current_status, "invalid");
    assert_eq!(
        status.description,
        "route \"/\": service \"api\": upstreamValidation requested but secret not found or misconfigured"
    );
    assert_eq!(w.answers(8080, HOST, "/t"), Some(503), "only the child's route fails closed");
    assert_eq!(w.answers(8080, HOST, "/ok"), None, "a sibling child still serves");
    assert_eq!(w.answers(8080, HOST, "/"), None, "the root's own route still serves");
    assert_eq!(w.status("web/root").current_status, "valid");
}

#[test]
fn root_namespaces_restrict_where_roots_may_be() {
    let docs = [
        root("[{name: c, namespace: team, conditions: [{prefix: /t}]}]"),
        child("team", "c", "/", "{name: plain, port: 80}"),
    ];
    let yaml = format!("{BASE}{}", docs.concat());
    let allowed = Config { root_namespaces: vec!["web".parse().unwrap()], ..Config::default() };
    let w = world_with(&yaml, cas(), &allowed);
    assert_eq!(w.status("web/root").current_status, "valid");
    assert_eq!(w.answers(8080, HOST, "/t"), None);

    let elsewhere = Config { root_namespaces: vec!["infra".parse().unwrap()], ..Config::default() };
    let w = world_with(&yaml, cas(), &elsewhere);
    let status = w.status("web/root");
    assert_eq!(status.description, "root HTTPProxy cannot be defined in this namespace");
    assert_eq!(errors(&status)[0].0, "RootProxyNotAllowedInNamespace");
    assert_eq!(w.status("team/c").current_status, "orphaned", "nothing reaches the child now");
    assert!(w.route_list().is_empty(), "nothing is served: {:?}", w.route_list());
}

#[test]
fn a_child_included_twice_is_served_twice_and_reports_each_problem_once() {
    let w = resolve(&[
        root("[{name: c, namespace: team, conditions: [{prefix: /one}]}, {name: c, namespace: team, conditions: [{prefix: /two}]}]"),
        child("team", "c", "/", "{name: ghost, port: 80}"),
    ]);
    assert_eq!(w.answers(8080, HOST, "/one"), Some(503));
    assert_eq!(w.answers(8080, HOST, "/two"), Some(503));
    assert_eq!(errors(&w.status("team/c")).len(), 1, "{:?}", errors(&w.status("team/c")));
}

#[test]
fn fields_portico_does_not_implement_are_named_in_a_warning() {
    let w = resolve(&[proxy(
        "web",
        "root",
        &format!(
            "  virtualhost: {{fqdn: {HOST}, corsPolicy: {{allowOrigin: ['*']}}}}\n  tcpproxy: {{services: [{{name: front, port: 80}}]}}\n  routes:\n  - services: [{{name: front, port: 80, slowStartPolicy: {{window: 5s}}}}]\n    timeoutPolicy: {{response: 30s, idle: 5m, idleConnection: 1h}}\n    retryPolicy: {{count: 3}}\n"
        ),
    )]);
    let status = w.status("web/root");
    assert_eq!(status.current_status, "valid", "{:?}", errors(&status));
    let mut messages: Vec<String> = warnings(&status).into_iter().map(|(r, m)| format!("{r}: {m}")).collect();
    messages.sort();
    assert_eq!(
        messages,
        vec![
            "IgnoredField: spec.routes[0].retryPolicy is not supported by Portico and is ignored",
            "IgnoredField: spec.routes[0].services[0].slowStartPolicy is not supported by Portico and is ignored",
            "IgnoredField: spec.routes[0].timeoutPolicy.idleConnection is not supported by Portico and is ignored",
            "IgnoredField: spec.tcpproxy is not supported by Portico and is ignored",
            "IgnoredField: spec.virtualhost.corsPolicy is not supported by Portico and is ignored",
        ]
    );
    assert_eq!(w.answers(8080, HOST, "/"), None, "a warning does not stop the route");
}

#[test]
fn fields_that_restrict_access_stop_what_they_guard_from_being_served() {
    let cases = [
        (
            "an IP allow-list on the virtual host closes every route of it, children's too",
            format!(
                "  virtualhost: {{fqdn: {HOST}, ipAllowPolicy: [{{source: Peer, cidr: 10.0.0.0/8}}]}}\n  includes: [{{name: c, namespace: team, conditions: [{{prefix: /t}}]}}]\n  routes: [{{services: [{{name: front, port: 80}}]}}]\n"
            ),
            vec!["/", "/t"],
            vec![],
        ),
        (
            "client certificate validation closes the virtual host",
            format!(
                "  virtualhost: {{fqdn: {HOST}, tls: {{secretName: s, clientValidation: {{caSecret: c}}}}}}\n  routes: [{{services: [{{name: front, port: 80}}]}}]\n"
            ),
            vec!["/"],
            vec![],
        ),
        (
            "an auth policy closes only its route",
            format!(
                "  virtualhost: {{fqdn: {HOST}}}\n  routes:\n  - {{conditions: [{{prefix: /admin}}], authPolicy: {{disabled: false}}, services: [{{name: front, port: 80}}]}}\n  - {{services: [{{name: front, port: 80}}]}}\n"
            ),
            vec!["/admin"],
            vec!["/"],
        ),
        (
            "a query condition on an include closes the routes under it",
            format!(
                "  virtualhost: {{fqdn: {HOST}}}\n  includes: [{{name: c, namespace: team, conditions: [{{prefix: /t}}, {{queryParameter: {{name: k, exact: v}}}}]}}]\n  routes: [{{services: [{{name: front, port: 80}}]}}]\n"
            ),
            vec!["/t"],
            vec!["/"],
        ),
        (
            "a mirror is never served as an ordinary backend",
            format!(
                "  virtualhost: {{fqdn: {HOST}}}\n  routes: [{{services: [{{name: front, port: 80}}, {{name: plain, port: 80, mirror: true}}]}}]\n"
            ),
            vec!["/"],
            vec![],
        ),
    ];
    for (sentence, spec, closed, open) in cases {
        let w = resolve(&[proxy("web", "root", &spec), child("team", "c", "/", "{name: plain, port: 80}")]);
        let status = w.status("web/root");
        assert_eq!(status.current_status, "invalid", "{sentence}");
        assert_eq!(errors(&status)[0].0, "UnsupportedRestriction", "{sentence}");
        assert!(status.description.contains("would widen access"), "{sentence}: {}", status.description);
        for prefix in closed {
            assert_eq!(w.answers(8080, HOST, prefix), Some(503), "{sentence}: {prefix} must answer 503");
        }
        for prefix in open {
            assert_eq!(w.answers(8080, HOST, prefix), None, "{sentence}: {prefix} still serves");
        }
    }
}

//! The file source: every kind of SPEC section 1, and every way a document can be unreadable.

use portico_model::{Object, ServiceType, TargetPort};
use portico_watcher::{decode_str, Decoded};

fn decode(text: &str) -> Decoded {
    let mut out = Decoded::default();
    decode_str("test.yaml", text, &mut out);
    out
}

const ALL_KINDS: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: secure-backend
  namespace: shop
  annotations:
    projectcontour.io/upstream-protocol.tls: "8443"
spec:
  ports:
  - name: https
    port: 8443
    targetPort: 9443
    appProtocol: https
---
apiVersion: v1
kind: Service
metadata: {name: external}
spec:
  type: ExternalName
  externalName: api.example.com
  ports: [{port: 443, targetPort: https}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: secure-backend-abc
  namespace: shop
  labels: {kubernetes.io/service-name: secure-backend}
addressType: IPv4
ports: [{name: https, port: 9443}]
endpoints:
- addresses: [10.0.0.1]
- addresses: [10.0.0.2]
  conditions: {ready: false}
---
apiVersion: v1
kind: Secret
metadata: {name: ca, namespace: shop}
type: Opaque
data:
  ca.crt: aGVsbG8=
  other: b2xk
stringData:
  other: new
---
apiVersion: projectcontour.io/v1
kind: HTTPProxy
metadata: {name: example, namespace: shop}
spec:
  virtualhost: {fqdn: www.example.com}
  routes:
  - conditions: [{prefix: /api}, {header: {name: x, present: true}}]
    requestHeadersPolicy:
      set: [{name: Host, value: backend.example.com}]
    services:
    - name: secure-backend
      port: 8443
      weight: 10
      protocol: tls
      validation: {caSecret: infra/ca, subjectName: backend.example.com}
---
apiVersion: projectcontour.io/v1
kind: TLSCertificateDelegation
metadata: {name: share, namespace: infra}
spec:
  delegations:
  - secretName: ca
    targetNamespaces: ["*"]
---
apiVersion: voyager.appscode.com/v1beta1
kind: Ingress
metadata: {name: test-ingress, namespace: default}
spec:
  backend: {serviceName: test-service, servicePort: '80'}
  rules:
  - host: appscode.example.com
    http:
      port: 8081
      paths:
      - backend: {serviceName: my-service, servicePort: 80}
"#;

#[test]
fn every_kind_decodes_into_portico_objects() {
    let out = decode(ALL_KINDS);
    assert_eq!(out.problems, vec![], "no problems expected");
    let objects: Vec<&Object> = out.objects.iter().map(|(o, _)| o).collect();
    assert_eq!(objects.len(), 7);
    let lines: Vec<usize> = out.objects.iter().map(|(_, l)| l.line).collect();
    assert_eq!(lines[0], 2, "a document's location is its first line");

    let Object::Service(svc) = objects[0] else { panic!("service") };
    assert_eq!(svc.meta.to_string(), "shop/secure-backend");
    assert_eq!(svc.annotations["projectcontour.io/upstream-protocol.tls"], "8443");
    assert_eq!(svc.ports[0].target_port, Some(TargetPort::Number(9443)));
    assert_eq!(svc.ports[0].app_protocol.as_deref(), Some("https"));

    let Object::Service(ext) = objects[1] else { panic!("service") };
    assert_eq!(ext.meta.to_string(), "default/external", "namespace defaults to default");
    assert_eq!(ext.service_type, ServiceType::ExternalName("api.example.com".into()));
    assert_eq!(ext.ports[0].name, "", "an unnamed port has an empty name");
    assert_eq!(ext.ports[0].target_port, Some(TargetPort::Name("https".into())));

    let Object::EndpointSlice(slice) = objects[2] else { panic!("slice") };
    assert_eq!(slice.service_name.as_deref(), Some("secure-backend"));
    assert_eq!(slice.ports[0].port, Some(9443));
    assert!(slice.endpoints[0].ready, "an absent ready condition means ready");
    assert!(!slice.endpoints[1].ready);

    let Object::Secret(secret) = objects[3] else { panic!("secret") };
    assert_eq!(secret.data["ca.crt"], b"hello", "data is base64-decoded");
    assert_eq!(secret.data["other"], b"new", "stringData wins over data");
    assert!(!format!("{secret:?}").contains("hello"), "Debug must not print secret data");

    let Object::HttpProxy(proxy) = objects[4] else { panic!("proxy") };
    assert_eq!(proxy.fqdn.as_deref(), Some("www.example.com"));
    let route = &proxy.routes[0];
    assert_eq!(route.prefixes, vec!["/api"]);
    assert_eq!(route.ignored, vec!["spec.routes[0].conditions[1].header"]);
    assert_eq!(route.set_headers, vec![("Host".to_owned(), "backend.example.com".to_owned())]);
    let v = route.services[0].validation.as_ref().unwrap();
    assert_eq!((v.ca_secret.as_str(), v.subject_name.as_str()), ("infra/ca", "backend.example.com"));
    assert_eq!(route.services[0].weight, Some(10));

    let Object::TlsCertificateDelegation(d) = objects[5] else { panic!("delegation") };
    assert_eq!(d.delegations[0].target_namespaces, vec!["*"]);

    let Object::VoyagerIngress(ing) = objects[6] else { panic!("voyager") };
    assert_eq!(ing.backend.as_ref().unwrap().service_port, "80", "a quoted port stays as written");
    assert_eq!(ing.rules[0].port, Some(8081));
    assert_eq!(ing.rules[0].paths[0].backend.service_port, "80", "a numeric port is written in decimal");
}

#[test]
fn unreadable_documents_are_reported_with_file_and_line_and_do_not_stop_the_others() {
    let text = "\
apiVersion: v1
kind: Service
metadata: {name: first}
---
apiVersion: v1
kind: Service
metadata: {name: broken
---
apiVersion: projectcontour.io/v1
kind: HTTPProxy
metadata: {name: typed}
spec:
  routes:
  - services:
    - name: svc
      port: not-a-number
---
apiVersion: projectcontour.io/v1
kind: HTTPProxy
metadata: {name: out-of-range}
spec:
  routes: [{services: [{name: svc, port: 70000}]}]
---
apiVersion: v1
kind: Service
metadata: {name: Bad_Name}
---
apiVersion: v1
kind: Service
metadata: {name: dotted, namespace: a.b}
---
- just a list
---
kind: Service
---
apiVersion: v1
kind: Service
metadata: {name: last}
";
    let out = decode(text);
    let names: Vec<String> = out.objects.iter().map(|(o, _)| o.meta().name.to_string()).collect();
    assert_eq!(names, vec!["first", "last"]);
    let problems: Vec<String> = out.problems.iter().map(|p| p.to_string()).collect();
    let expect = [
        "test.yaml:8: not valid YAML",
        "test.yaml:16: HTTPProxy \"typed\": spec.routes[0].services[0].port: invalid type",
        "test.yaml:18: HTTPProxy \"out-of-range\": spec.routes[0].services[0].port: 70000 is not a port number",
        "test.yaml:24: Service \"Bad_Name\": metadata.name: Kubernetes name \"Bad_Name\" is not valid",
        "test.yaml:28: Service \"dotted\": metadata.namespace: \"a.b\" is not a DNS label",
        "test.yaml:32: not a Kubernetes object",
        "test.yaml:34: apiVersion and kind are required",
    ];
    assert_eq!(problems.len(), expect.len(), "{problems:#?}");
    for (got, want) in problems.iter().zip(expect) {
        assert!(got.starts_with(want), "got {got:?}, want it to start with {want:?}");
    }
}

#[test]
fn kinds_portico_does_not_read_are_skipped_and_listed() {
    let out = decode(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: std}\n",
    );
    assert!(out.objects.is_empty() && out.problems.is_empty());
    let skipped: Vec<(String, String, usize)> =
        out.skipped.iter().map(|s| (s.kind.clone(), s.name.clone(), s.location.line)).collect();
    assert_eq!(skipped, vec![("Deployment".into(), "web".into(), 1), ("NetworkPolicy".into(), "std".into(), 5)]);
}

#[test]
fn a_list_is_read_item_by_item() {
    let out = decode(
        "apiVersion: v1\nkind: List\nitems:\n\
         - {apiVersion: v1, kind: Service, metadata: {name: a}}\n\
         - {apiVersion: v1, kind: Service}\n",
    );
    assert_eq!(out.objects.len(), 1);
    assert_eq!(out.problems[0].message, "items[1]: Service: metadata.name is missing");
}

#[test]
fn comments_empty_documents_and_markers_with_content_are_handled() {
    let out =
        decode("# only a comment\n---\n---\n--- {apiVersion: v1, kind: Service, metadata: {name: inline}}\n...\n");
    assert_eq!(out.problems, vec![]);
    assert_eq!(out.objects.len(), 1);
    assert_eq!(out.objects[0].1.line, 4);
}

#[test]
fn a_later_definition_of_the_same_object_wins_with_a_warning() {
    let out = decode(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 1}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 2}]}\n",
    );
    let (objects, warnings) = out.into_unique_objects();
    let Object::Service(s) = &objects[0] else { panic!() };
    assert_eq!(s.ports[0].port, 2);
    assert_eq!(
        warnings[0].to_string(),
        "test.yaml:6: Service default/a is also defined at test.yaml:1; this later definition wins"
    );
}

#[test]
fn directories_are_walked_in_order_skipping_hidden_and_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let svc = |n: &str| format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {n}}}\n");
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::create_dir(dir.path().join(".hidden")).unwrap();
    std::fs::write(dir.path().join("b.yaml"), svc("b")).unwrap();
    std::fs::write(dir.path().join("a.yml"), svc("a")).unwrap();
    std::fs::write(dir.path().join("sub/c.json"), r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"c"}}"#)
        .unwrap();
    std::fs::write(dir.path().join(".hidden/d.yaml"), svc("d")).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not yaml: [").unwrap();
    std::fs::write(dir.path().join("binary.yaml"), [0xff, 0xfe]).unwrap();
    let out = portico_watcher::load(&[dir.path().to_owned()]).unwrap();
    let names: Vec<String> = out.objects.iter().map(|(o, _)| o.meta().name.to_string()).collect();
    assert_eq!(names, vec!["a", "b", "c"]);
    assert_eq!(out.problems.len(), 1);
    assert!(out.problems[0].to_string().ends_with("binary.yaml:1: not UTF-8 text"));

    let missing = portico_watcher::load(&[dir.path().join("nope")]).unwrap_err().to_string();
    assert!(missing.contains("nope") && missing.contains("No such file"), "{missing}");
}

mod properties {
    use super::decode;
    use proptest::prelude::*;

    /// Fragments of real manifests, so generated documents get past the YAML parser and into
    /// the typed decoding and conversion, not only into YAML syntax errors.
    fn manifest_text() -> impl Strategy<Value = String> {
        let fragment = prop_oneof![
            Just("apiVersion: v1\n".to_owned()),
            Just("apiVersion: projectcontour.io/v1\n".to_owned()),
            Just("apiVersion: voyager.appscode.com/v1beta1\n".to_owned()),
            Just("kind: Service\n".to_owned()),
            Just("kind: HTTPProxy\n".to_owned()),
            Just("kind: Ingress\n".to_owned()),
            Just("kind: Secret\n".to_owned()),
            Just("kind: List\n".to_owned()),
            Just("metadata: {name: a}\n".to_owned()),
            Just("spec: {ports: [{port: 99999}]}\n".to_owned()),
            Just("spec: {routes: [{services: [{name: x, port: -1}]}]}\n".to_owned()),
            Just("data: {ca.crt: \"!!!\"}\n".to_owned()),
            Just("items: [1, {kind: Service}]\n".to_owned()),
            Just("---\n".to_owned()),
            "[ -~\n\t]{0,30}",
        ];
        proptest::collection::vec(fragment, 0..12).prop_map(|parts| parts.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn decoding_never_panics_and_every_problem_has_a_line(text in manifest_text()) {
            let out = decode(&text);
            let lines = text.lines().count().max(1) + 1;
            for p in &out.problems {
                prop_assert!(p.location.line >= 1 && p.location.line <= lines, "{} outside 1..={}", p, lines);
            }
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = decode(&text);
        }
    }
}

/// Bad-input figures (issue 10): a manifest cut at every byte decodes without a panic,
/// and what it lost is reported: every document is either read whole or named in a
/// problem (or skipped as empty).
#[test]
fn a_manifest_cut_at_every_byte_never_panics_and_reports_what_it_lost() {
    let texts: Vec<String> = std::fs::read_dir(portico_testkit::repo().join("examples/upstream-tls"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .chain([ALL_KINDS.to_owned()])
        .collect();
    let (mut cuts, mut with_problems) = (0, 0);
    for text in &texts {
        let whole = decode(text).objects.len();
        for end in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
            let cut = decode(&text[..end]);
            cuts += 1;
            if !cut.problems.is_empty() {
                with_problems += 1;
            }
            // Nothing is made up: a cut never yields more objects than the whole.
            assert!(cut.objects.len() <= whole, "cut at {end}: {} objects of {whole}", cut.objects.len());
        }
    }
    eprintln!("{cuts} cuts of {} manifests decoded: 0 panics, {with_problems} with a problem reported", texts.len());
    assert!(with_problems > cuts / 4, "cuts inside a document are reported ({with_problems} of {cuts})");
}

#[test]
fn a_yaml_bomb_is_refused_quickly() {
    // The "billion laughs": nine levels of nine aliases.
    let mut bomb =
        String::from("apiVersion: v1\nkind: Service\nmetadata: {name: bomb, namespace: x}\na0: &a0 [\"lol\"]\n");
    for level in 1..10 {
        let refs: Vec<String> = (0..9).map(|_| format!("*a{}", level - 1)).collect();
        bomb.push_str(&format!("a{level}: &a{level} [{}]\n", refs.join(",")));
    }
    bomb.push_str("spec: {ports: *a9}\n");
    let started = std::time::Instant::now();
    let out = decode(&bomb);
    assert!(out.objects.is_empty(), "{:?}", out.objects);
    assert_eq!(out.problems.len(), 1, "{:?}", out.problems);
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[test]
fn an_oversized_manifest_file_is_refused_with_the_limit_and_the_others_are_read() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), ALL_KINDS).unwrap();
    // Sparse: over the limit without writing 64 MiB.
    let big = std::fs::File::create(dir.path().join("b.yaml")).unwrap();
    big.set_len(portico_watcher::manifests::MAX_MANIFEST_BYTES + 1).unwrap();
    let out = portico_watcher::load(&[dir.path().to_owned()]).unwrap();
    assert_eq!(out.objects.len(), decode(ALL_KINDS).objects.len(), "the other file is read");
    assert_eq!(out.problems.len(), 1, "{:?}", out.problems);
    let problem = out.problems[0].to_string();
    assert!(
        problem.contains("b.yaml") && problem.contains("over the 64 MiB limit") && problem.contains("split it"),
        "{problem}"
    );
}

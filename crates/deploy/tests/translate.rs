//! `portico translate` as a user runs it: the real binary on files, with real certificates.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    out: tempfile::TempDir,
}

impl Run {
    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.out.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn statuses(&self) -> serde_json::Value {
        serde_json::from_str(&self.file("status.json")).unwrap()
    }
}

fn portico(args: &[&str]) -> Run {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_portico"))
        .arg("translate")
        .args(args)
        .arg("--out-dir")
        .arg(out.path())
        .current_dir(repo_root())
        .output()
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        out,
    }
}

/// Write manifests into a temporary directory and translate it.
fn translate_yaml(yaml: &str, extra_args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("world.yaml"), yaml).unwrap();
    let path = dir.path().to_str().unwrap().to_owned();
    let mut args = vec![path.as_str()];
    args.extend_from_slice(extra_args);
    let run = portico(&args);
    drop(dir);
    run
}

#[test]
fn the_bundled_example_translates_to_the_committed_statuses_and_model() {
    let run = portico(&["examples/upstream-tls"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    expect_test::expect_file!["snapshots/upstream-tls.status.json"].assert_eq(&run.file("status.json"));
    expect_test::expect_file!["snapshots/upstream-tls.model.json"].assert_eq(&run.file("model.json"));
    assert!(run.stdout.contains(
        "HTTPProxy  shop/storefront       invalid  route \"/legacy\": service \"storefront\": upstreamValidation requested but secret not found or misconfigured"
    ), "{}", run.stdout);
    assert!(run.stdout.contains("skipped 2 object(s) of kinds Portico does not read: Namespace (v1)"));
}

#[test]
fn unreadable_input_is_reported_with_file_and_line_and_exits_65_but_the_rest_is_translated() {
    let run = translate_yaml(
        "apiVersion: projectcontour.io/v1\nkind: HTTPProxy\nmetadata: {name: fine, namespace: default}\nspec: {}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: broken\n",
        &[],
    );
    assert_eq!(run.code, 65, "{}{}", run.stdout, run.stderr);
    // The parser notices the unclosed brace of line 8 at the end of the file (line 9),
    // and every line number it mentions is the file's, not the document's.
    assert!(
        run.stdout.contains(
            "world.yaml:9: not valid YAML: did not find expected ',' or '}', while parsing a flow mapping at line 8 column 11"
        ),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("1 document(s) could not be read"));
    assert_eq!(run.statuses()[0]["name"], "fine", "the readable objects still get their status");
}

#[test]
fn a_missing_path_exits_66_and_names_it() {
    let run = portico(&["does/not/exist"]);
    assert_eq!(run.code, 66);
    assert!(run.stderr.contains("does/not/exist"), "{}", run.stderr);
}

#[test]
fn a_bad_client_cert_flag_is_a_usage_error() {
    let run = portico(&["examples/upstream-tls", "--client-cert", "just-a-name"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("is not NAMESPACE/NAME"), "{}", run.stderr);
}

// Real certificates from rcgen, validated by the secrets library inside the binary.

fn cert(days_valid_from: i64, days_valid_to: i64, cn: &str) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec![format!("{cn}.example.com")]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let today = time::OffsetDateTime::now_utc();
    params.not_before = today + time::Duration::days(days_valid_from);
    params.not_after = today + time::Duration::days(days_valid_to);
    let key = rcgen::KeyPair::generate().unwrap();
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("    {l}\n")).collect()
}

fn world(ca_pem: &str, client: Option<(&str, &str)>) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: ca, namespace: shop}}\ntype: Opaque\nstringData:\n  ca.crt: |\n{}---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: api, namespace: shop, annotations: {{projectcontour.io/upstream-protocol.tls: \"443\"}}}}\n\
         spec: {{ports: [{{port: 443}}, {{port: 80, name: http}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: api-1, namespace: shop, labels: {{kubernetes.io/service-name: api}}}}\n\
         addressType: IPv4\nports: [{{port: 443}}, {{name: http, port: 80}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n---\n\
         apiVersion: projectcontour.io/v1\nkind: HTTPProxy\nmetadata: {{name: p, namespace: shop}}\nspec:\n  virtualhost: {{fqdn: shop.example.com}}\n  routes:\n\
         \x20 - conditions: [{{prefix: /verified}}]\n    services: [{{name: api, port: 443, validation: {{caSecret: ca, subjectName: api.example.com}}}}]\n\
         \x20 - conditions: [{{prefix: /plain}}]\n    services: [{{name: api, port: 80}}]\n",
        indent(ca_pem)
    );
    if let Some((chain, key)) = client {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: client, namespace: portico}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
            indent(chain),
            indent(key)
        ));
    }
    yaml
}

fn description(run: &Run) -> String {
    run.statuses()[0]["description"].as_str().unwrap().to_owned()
}

fn first_error(run: &Run) -> String {
    run.statuses()[0]["conditions"][0]["errors"][0]["message"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_valid_ca_makes_the_route_valid_and_an_expired_one_invalid_with_the_reason() {
    let (good, _) = cert(-1, 365, "ca");
    let run = translate_yaml(&world(&good, None), &[]);
    assert_eq!(description(&run), "Valid HTTPProxy", "{}", run.stdout);

    let (expired, _) = cert(-60, -30, "old-ca");
    let run = translate_yaml(&world(&expired, None), &[]);
    assert_eq!(
        description(&run),
        "route \"/verified\": service \"api\": upstreamValidation requested but secret not found or misconfigured"
    );
    assert!(
        first_error(&run).contains("no certificate is currently valid: certificate 1 (CN=old-ca) expired at"),
        "{}",
        first_error(&run)
    );

    let (soon, _) = cert(-1, 5, "soon-ca");
    let run = translate_yaml(&world(&soon, None), &[]);
    assert_eq!(run.statuses()[0]["currentStatus"], "valid");
    let warning = run.statuses()[0]["conditions"][0]["warnings"][0]["message"].as_str().unwrap().to_owned();
    assert!(warning.contains("within 14 days"), "{warning}");
    assert!(run.stdout.contains("valid (1 warning)"), "{}", run.stdout);
}

#[test]
fn the_client_certificate_is_checked_for_real_and_breaks_only_tls_routes() {
    let (ca, _) = cert(-1, 365, "ca");
    let (chain, key) = cert(-1, 365, "portico-client");
    let (_, other_key) = cert(-1, 365, "someone-else");

    let run = translate_yaml(&world(&ca, Some((&chain, &key))), &["--client-cert", "portico/client"]);
    assert_eq!(description(&run), "Valid HTTPProxy", "{}", run.stdout);
    let model: serde_json::Value = serde_json::from_str(&run.file("model.json")).unwrap();
    assert_eq!(model["client_certs"][0]["secret"]["name"], "client");

    let run = translate_yaml(&world(&ca, Some((&chain, &other_key))), &["--client-cert", "portico/client"]);
    assert_eq!(run.statuses()[0]["currentStatus"], "invalid");
    assert!(first_error(&run).contains("the private key does not match the leaf certificate"), "{}", first_error(&run));
    assert!(run.stdout.contains("(1 answering 502 or 503)"), "only the TLS route fails: {}", run.stdout);
}

#[test]
fn an_injection_attempt_in_an_annotation_rejects_only_its_route_and_reaches_no_output() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata:\n  name: evil\n  annotations:\n    ingress.appscode.com/backend-tls: \"ssl verify none\\n  server evil 6.6.6.6:80 # \"\n\
                spec: {ports: [{port: 80}]}\n---\n\
                apiVersion: v1\nkind: Service\nmetadata: {name: good, annotations: {ingress.appscode.com/backend-tls: ssl verify none}}\nspec: {ports: [{port: 80}]}\n---\n\
                apiVersion: voyager.appscode.com/v1beta1\nkind: Ingress\nmetadata: {name: ing}\nspec:\n  rules:\n  - host: a.example.com\n    http:\n      paths:\n\
                \x20     - {path: /evil, backend: {serviceName: evil, servicePort: '80'}}\n\
                \x20     - {path: /good, backend: {serviceName: good, servicePort: '80'}}\n";
    let run = translate_yaml(yaml, &[]);
    assert_eq!(run.code, 0);
    assert!(
        description(&run).starts_with("route \"/evil\": service \"evil\": backend-tls option \"verify\""),
        "{}",
        description(&run)
    );
    let model = run.file("model.json");
    assert!(!model.contains("6.6.6.6") && !model.contains("server evil"), "the injected text reached the model");
    assert!(model.contains("default_good_80_"), "the good route is still served");
}

#[test]
fn the_ingress_nginx_example_translates_to_a_verified_https_backend() {
    let run = portico(&["examples/ingress-nginx"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let statuses: serde_json::Value = serde_json::from_str(&run.file("status.json")).unwrap();
    let invoices = statuses.as_array().unwrap().iter().find(|s| s["name"] == "invoices").expect("the Ingress's status");
    assert_eq!(invoices["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(invoices["currentStatus"], "valid", "{invoices}");
    let warnings = invoices["conditions"][0]["warnings"].as_array().unwrap();
    assert_eq!(
        warnings[0]["message"],
        "these annotations are not supported by Portico and are ignored: nginx.ingress.kubernetes.io/proxy-body-size"
    );
    let model: serde_json::Value = serde_json::from_str(&run.file("model.json")).unwrap();
    let tls = &model["clusters"][0]["key"]["tls"];
    assert_eq!(tls["sni"], "invoices.billing.svc");
    assert_eq!(tls["verify"]["Required"]["ca"]["Secret"]["name"], "billing-backend-ca");
    let routes = model["listeners"][0]["virtual_hosts"][0]["routes"].as_array().unwrap();
    let paths: Vec<(String, bool)> =
        routes.iter().map(|r| (r["prefix"].as_str().unwrap().to_owned(), r["exact"].as_bool().unwrap())).collect();
    assert_eq!(
        paths,
        [("/invoices/".to_owned(), false), ("/invoices".to_owned(), true), ("/healthz".to_owned(), true)],
        "Exact is one path; Prefix is by path element"
    );
}

#[test]
fn the_gateway_api_example_translates_to_verified_tls_backends_with_gateway_api_statuses() {
    let run = portico(&["examples/gateway-api"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let statuses: serde_json::Value = serde_json::from_str(&run.file("status.json")).unwrap();
    let entry = |kind: &str, name: &str| {
        statuses
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["kind"] == kind && s["name"] == name)
            .unwrap_or_else(|| panic!("no status of {kind} {name}"))
            .clone()
    };
    let policy = entry("BackendTLSPolicy", "payments-tls");
    let ancestor = &policy["gatewayStatus"]["ancestors"][0];
    assert_eq!(ancestor["ancestorRef"]["name"], "edge");
    assert_eq!(ancestor["controllerName"], "portico.dev/gateway-controller");
    assert_eq!(ancestor["conditions"][0]["status"], "True", "{policy}");
    let gateway = entry("Gateway", "edge");
    assert_eq!(gateway["gatewayStatus"]["listeners"][0]["attachedRoutes"], 2, "{gateway}");
    // The URI SAN policy: accepted (Envoy enforces it), and told that HAProxy answers 503.
    let ledger = entry("BackendTLSPolicy", "ledger-tls");
    assert!(ledger["gatewayStatus"]["ancestors"][0]["conditions"][0]["message"].as_str().unwrap().contains("HAProxy"));
    assert!(run.stderr.contains("HAProxy checks one DNS name") || run.stdout.contains("HAProxy checks one DNS name"));
    let model: serde_json::Value = serde_json::from_str(&run.file("model.json")).unwrap();
    let clusters = model["clusters"].as_array().unwrap();
    let payments = clusters.iter().find(|c| c["key"]["service"] == "payments" && c["key"]["port"] == 443).unwrap();
    let tls = &payments["key"]["tls"];
    assert_eq!(tls["sni"], "payments.shop.svc");
    assert_eq!(tls["min_version"], "Tls13");
    assert_eq!(tls["verify"]["Required"]["ca"]["Secret"]["holder"], "ConfigMap");
    let metrics = clusters.iter().find(|c| c["key"]["port"] == 9090).unwrap();
    assert!(metrics["key"]["tls"].is_null(), "the port the policy does not target stays plain");
    let haproxy = run.file("haproxy/haproxy.cfg");
    assert!(haproxy.contains("verifyhost payments.shop.svc sni str(payments.shop.svc) ssl-min-ver TLSv1.3"));
}

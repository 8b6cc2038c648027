//! Support for end-to-end tests with real parts: a test PKI (rcgen), TLS backends (rustls
//! and hyper) that answer with what they saw of the connection, the real proxies as child
//! processes, and a minimal HTTP/1.1 client.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- PKI

/// A certificate authority for tests.
pub struct TestCa {
    pub pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A certificate and its key, in PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        TestCa { pem: cert.pem(), issuer: rcgen::Issuer::new(params, key) }
    }

    /// A server certificate for these DNS names.
    pub fn server(&self, names: &[&str]) -> Issued {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, names.first().copied().unwrap_or("server"));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate with this common name.
    pub fn client(&self, cn: &str) -> Issued {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, params: rcgen::CertificateParams) -> Issued {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }
}

// ---------------------------------------------------------------- backends

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime")
    })
}

/// How a backend speaks.
pub enum BackendKind {
    /// Plain HTTP/1.1 (and h2c).
    Plain,
    Tls {
        cert: Issued,
        /// Require a client certificate signed by this CA.
        client_ca: Option<String>,
    },
}

/// A running backend on 127.0.0.1. It answers every request with 200 and the body
/// `backend=<name> sni=<sni|-> alpn=<alpn|-> version=<HTTP version> client_cert=<yes|no> host=<Host>`.
pub struct Backend {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn pem_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).map(|c| c.expect("a certificate")).collect()
}

fn server_config(cert: &Issued, client_ca: Option<&str>) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .expect("versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in pem_certs(pem) {
                roots.add(c).expect("a CA");
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("a verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("a key");
    let mut config = builder.with_single_cert(pem_certs(&cert.cert_pem), key).expect("cert and key match");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

struct Seen {
    sni: String,
    alpn: String,
    client_cert: bool,
}

async fn serve<S>(stream: S, name: Arc<str>, seen: Seen)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let seen = Arc::new(seen);
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let name = name.clone();
        let seen = seen.clone();
        async move {
            let host = request
                .headers()
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
                .or_else(|| request.uri().authority().map(|a| a.to_string()))
                .unwrap_or_else(|| "-".to_owned());
            let body = format!(
                "backend={name} sni={} alpn={} version={:?} client_cert={} host={host}\n",
                seen.sni,
                seen.alpn,
                request.version(),
                if seen.client_cert { "yes" } else { "no" }
            );
            Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                hyper::body::Bytes::from(body),
            )))
        }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
}

impl Backend {
    pub fn start(name: &str, kind: BackendKind) -> Backend {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let name: Arc<str> = Arc::from(name);
        let tls = match &kind {
            BackendKind::Plain => None,
            BackendKind::Tls { cert, client_ca } => {
                Some(tokio_rustls::TlsAcceptor::from(server_config(cert, client_ca.as_deref())))
            }
        };
        let task = runtime().spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let name = name.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve(tcp, name, Seen { sni: "-".into(), alpn: "-".into(), client_cert: false }).await,
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(tcp).await else { return };
                            let (_, conn) = stream.get_ref();
                            let seen = Seen {
                                sni: conn.server_name().unwrap_or("-").to_owned(),
                                alpn: conn
                                    .alpn_protocol()
                                    .map(|a| String::from_utf8_lossy(a).into_owned())
                                    .unwrap_or_else(|| "-".into()),
                                client_cert: conn.peer_certificates().is_some_and(|c| !c.is_empty()),
                            };
                            serve(stream, name, seen).await
                        }
                    }
                });
            }
        });
        Backend { port, task }
    }
}

// ---------------------------------------------------------------- proxies and the client

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A proxy process, killed when dropped.
pub struct Proxy {
    pub name: &'static str,
    pub port: u16,
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    /// HAProxy in the foreground on a config `portico translate` wrote.
    pub fn haproxy(config: &Path, port: u16) -> Proxy {
        Proxy::spawn("haproxy", Command::new("haproxy").arg("-db").arg("-f").arg(config), port)
    }

    /// Envoy on a bootstrap `portico translate` wrote.
    pub fn envoy(bootstrap: &Path, port: u16) -> Proxy {
        let mut command = Command::new("envoy");
        command.arg("-c").arg(bootstrap).args(["--use-dynamic-base-id", "--log-level", "warning"]);
        Proxy::spawn("envoy", &mut command, port)
    }

    fn spawn(name: &'static str, command: &mut Command, port: u16) -> Proxy {
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(log.reopen().expect("log"))
            .stderr(log.reopen().expect("log"))
            .spawn()
            .unwrap_or_else(|e| panic!("{name} must be installed (scripts/setup.sh installs it): {e}"));
        let mut proxy = Proxy { name, port, child, log };
        proxy.wait_ready();
        proxy
    }

    /// Wait until the listener answers HTTP (or fail with the proxy's log).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited with {status}:\n{}", self.name, self.log());
            }
            if get(self.port, "ready.invalid", "/").is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{} did not answer on port {} within 30 s:\n{}", self.name, self.port, self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// GET through this proxy.
    pub fn get(&self, host: &str, path: &str) -> (u16, String) {
        get(self.port, host, path).unwrap_or_else(|e| panic!("{} on {}: {e}\n{}", self.name, self.port, self.log()))
    }
}

pub use portico_testkit::http_get as get;

//! The demo that `portico up` runs when given no manifests, and the parts the end-to-end
//! tests share with it: a certificate authority (rcgen), TLS backends (rustls and hyper)
//! that answer with what they saw of the connection, and the demo's manifests.

use std::sync::{Arc, OnceLock};

// ---------------------------------------------------------------- PKI

/// A certificate authority made on the spot: the demo's backends, and ADS's mutual TLS
/// (`portico up`, the Kubernetes credentials Job).
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

    /// The CA's private key, in PEM (the Kubernetes ADS CA keeps it for the watcher, which
    /// signs the Envoy pods' certificates).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A server certificate for these DNS names.
    pub fn server(&self, names: &[&str]) -> Issued {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, names.first().copied().unwrap_or("server"));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A server certificate for these DNS names and these URI names (SPIFFE IDs).
    pub fn server_with_uris(&self, names: &[&str], uris: &[&str]) -> Issued {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        for uri in uris {
            let uri = rcgen::string::Ia5String::try_from(uri.to_string()).expect("an ASCII URI");
            params.subject_alt_names.push(rcgen::SanType::URI(uri));
        }
        params.distinguished_name.push(rcgen::DnType::CommonName, names.first().copied().unwrap_or("server"));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate naming `name` as its DNS subject alternative name (and common
    /// name): how an Envoy proves its node id to renderer-envoy.
    pub fn client_named(&self, name: &str) -> Issued {
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
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
    /// TLS 1.2 and nothing newer (to check that a proxy told to use TLS 1.3 refuses it).
    Tls12Only(Issued),
}

/// A running backend on 127.0.0.1. It answers every request with 200 and the body
/// `backend=<name> sni=<sni|-> alpn=<alpn|-> version=<HTTP version> client_cert=<yes|no> host=<Host>
/// portico_headers=<the names of the request's x-portico-* headers, comma-separated|->`
/// (the last: none of Portico's own headers may reach a backend).
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

fn server_config(
    cert: &Issued,
    client_ca: Option<&str>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
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
            // `?delay_ms=N` (at most 30 s): a slow backend, for timeout tests.
            let delay = request
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("delay_ms=")))
                .and_then(|ms| ms.parse::<u64>().ok())
                .map(|ms| std::time::Duration::from_millis(ms.min(30_000)));
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            let host = request
                .headers()
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
                .or_else(|| request.uri().authority().map(|a| a.to_string()))
                .unwrap_or_else(|| "-".to_owned());
            let ours: Vec<&str> =
                request.headers().keys().map(|k| k.as_str()).filter(|k| k.starts_with("x-portico")).collect();
            let body = format!(
                "backend={name} sni={} alpn={} version={:?} client_cert={} host={host} portico_headers={}\n",
                seen.sni,
                seen.alpn,
                request.version(),
                if seen.client_cert { "yes" } else { "no" },
                if ours.is_empty() { "-".to_owned() } else { ours.join(",") }
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
            BackendKind::Tls { cert, client_ca } => Some(tokio_rustls::TlsAcceptor::from(server_config(
                cert,
                client_ca.as_deref(),
                &[&rustls::version::TLS12, &rustls::version::TLS13],
            ))),
            BackendKind::Tls12Only(cert) => {
                Some(tokio_rustls::TlsAcceptor::from(server_config(cert, None, &[&rustls::version::TLS12])))
            }
        };
        let task = runtime().spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                // Without it, a response written as several TLS records waits for the
                // peer's delayed ACK: 40 ms on every new connection (docs/PERFORMANCE.md).
                let _ = tcp.set_nodelay(true);
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

// ---------------------------------------------------------------- the demo

/// The demo's backends and certificate authorities, alive as long as this value.
pub struct Demo {
    /// Verified against `demo/demo-ca` by the Contour route `/` and the Voyager Ingress.
    pub web: Backend,
    /// Verified against `infra/internal-ca`, delegated to namespace `demo`.
    pub payments: Backend,
    pub legacy: Backend,
    pub manifests: String,
    /// The CA certificate (PEM) behind `demo/demo-ca`.
    pub demo_ca_pem: String,
    /// The CA of the certificate `secure.example.com` is served with over HTTPS: its PEM
    /// is what a client is given to verify it (`curl --cacert`), and it can issue a
    /// renewal.
    pub edge_ca: TestCa,
    /// The HTTPS host, and the certificate and key it is served with (`secure_site`).
    pub secure_host: &'static str,
    pub secure: Issued,
}

/// Start the demo's backends and write its manifests (to be written to a file the watcher
/// reads), the Gateway's listener on `http_port` (the proxies' HTTP port). The
/// certificates are made now; nothing secret is stored in the repository.
pub fn start(http_port: u16) -> Demo {
    let demo_ca = TestCa::new("Portico demo CA");
    let internal_ca = TestCa::new("Portico demo internal CA");
    let web = Backend::start("web", BackendKind::Tls { cert: demo_ca.server(&["web.demo.svc"]), client_ca: None });
    let payments = Backend::start(
        "payments",
        BackendKind::Tls { cert: internal_ca.server(&["payments.demo.svc"]), client_ca: None },
    );
    let legacy =
        Backend::start("legacy", BackendKind::Tls { cert: demo_ca.server(&["legacy.demo.svc"]), client_ca: None });
    let edge_ca = TestCa::new("Portico demo edge CA");
    let secure = edge_ca.server(&[SECURE_HOST]);
    let mut manifests = manifests(&demo_ca.pem, &internal_ca.pem, web.port, payments.port, legacy.port);
    manifests.push_str(&secure_site(&secure));
    manifests.push_str(INGRESS_SITE);
    manifests.push_str(&gateway_site(&demo_ca.pem, http_port));
    Demo { web, payments, legacy, manifests, demo_ca_pem: demo_ca.pem, edge_ca, secure_host: SECURE_HOST, secure }
}

/// The Kubernetes Ingress dialect with ingress-nginx's annotations: Portico's IngressClass
/// and an Ingress to the web backend, verified against demo/demo-ca's ca.crt alone.
pub const INGRESS_SITE: &str = r#"---
# Kubernetes Ingress with ingress-nginx's backend TLS annotations (SPEC section 7): HTTPS
# to the web backend, verified against the ca.crt of demo/demo-ca (no client certificate
# needed), SNI on. Portico serves the Ingresses of its IngressClass.
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: portico}
spec: {controller: portico.dev/ingress-controller}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: nginx-style
  namespace: demo
  annotations:
    nginx.ingress.kubernetes.io/backend-protocol: "HTTPS"
    nginx.ingress.kubernetes.io/proxy-ssl-secret: "demo/demo-ca"
    nginx.ingress.kubernetes.io/proxy-ssl-verify: "on"
    nginx.ingress.kubernetes.io/proxy-ssl-name: "web.demo.svc"
    nginx.ingress.kubernetes.io/proxy-ssl-server-name: "on"
spec:
  ingressClassName: portico
  rules:
  - host: ingress.example.com
    http:
      paths:
      - path: /
        pathType: Prefix
        backend: {service: {name: web, port: {number: 8443}}}
"#;

/// The demo's Gateway API host.
pub const GATEWAY_HOST: &str = "gateway.example.com";

/// Gateway API with BackendTLSPolicy v1 (SPEC section 6): Portico's GatewayClass, a
/// Gateway listening on `http_port`, an HTTPRoute to the web backend, and a policy that
/// makes it TLS verified against a ConfigMap's `ca.crt`.
pub fn gateway_site(demo_ca: &str, http_port: u16) -> String {
    format!(
        r#"---
# Gateway API (SPEC section 6): a Gateway of Portico's GatewayClass, an HTTPRoute for
# {GATEWAY_HOST}, and a BackendTLSPolicy (v1) making the web backend TLS, verified against
# the ca.crt of the ConfigMap demo-ca-bundle with the name web.demo.svc (also the SNI).
# Point caCertificateRefs at a ConfigMap that does not exist: the route answers 503 and
# the policy's status says NoValidCACertificate.
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: portico}}
spec: {{controllerName: portico.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: demo, namespace: demo}}
spec:
  gatewayClassName: portico
  listeners:
  - {{name: http, port: {http_port}, protocol: HTTP}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: gateway-web, namespace: demo}}
spec:
  parentRefs: [{{name: demo}}]
  hostnames: [{GATEWAY_HOST}]
  rules:
  - backendRefs: [{{name: web, port: 8443}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: demo-ca-bundle, namespace: demo}}
data:
  ca.crt: |
{}---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {{name: web-tls, namespace: demo}}
spec:
  targetRefs: [{{group: "", kind: Service, name: web}}]
  validation:
    hostname: web.demo.svc
    caCertificateRefs: [{{group: "", kind: ConfigMap, name: demo-ca-bundle}}]
"#,
        indent(demo_ca, 4)
    )
}

/// The demo's host served over HTTPS.
pub const SECURE_HOST: &str = "secure.example.com";

/// HTTPS at the edge: a kubernetes.io/tls Secret with a certificate made at start, and an
/// HTTPProxy serving `SECURE_HOST` with it (re-encrypting to the web backend).
pub fn secure_site(cert: &Issued) -> String {
    format!(
        r#"---
# HTTPS at the edge: {SECURE_HOST} is served over HTTPS (the proxies' --https-port)
# with a certificate `portico up` made at start (its CA is STATE_DIR/edge-ca.pem), and
# re-encrypted to the web backend; plain HTTP to it answers 301 to HTTPS. Replace the
# certificate here and both proxies serve the new one without a reload.
apiVersion: v1
kind: Secret
metadata: {{name: secure-cert, namespace: demo}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{}  tls.key: |
{}---
apiVersion: projectcontour.io/v1
kind: HTTPProxy
metadata: {{name: secure, namespace: demo}}
spec:
  virtualhost: {{fqdn: {SECURE_HOST}, tls: {{secretName: secure-cert}}}}
  routes:
  - services:
    - name: web
      port: 8443
      validation: {{subjectName: web.demo.svc, caSecret: demo-ca}}
"#,
        indent(&cert.cert_pem, 4),
        indent(&cert.key_pem, 4)
    )
}

fn indent(pem: &str, spaces: usize) -> String {
    pem.lines().map(|l| format!("{:spaces$}{l}\n", "")).collect()
}

/// The demo's objects: both dialects, a delegated CA and one broken route. Every value is
/// generated here (ports, PEM), none comes from a user.
pub fn manifests(demo_ca: &str, internal_ca: &str, web: u16, payments: u16, legacy: u16) -> String {
    let (demo_ca, internal_ca) = (indent(demo_ca, 4), indent(internal_ca, 4));
    format!(
        r#"# Portico's demo, written by `portico up`. Edit it while the stack runs: the watcher
# picks up changes within a second, and both proxies serve them.
#
#   HAProxy: curl -H 'Host: web.example.com' http://127.0.0.1:8080/
#   Envoy:   curl -H 'Host: web.example.com' http://127.0.0.2:8080/
apiVersion: v1
kind: Secret
metadata: {{name: demo-ca, namespace: demo}}
type: Opaque
stringData:
  ca.crt: |
{demo_ca}---
# The platform team's CA, in its own namespace, delegated to namespace demo.
apiVersion: v1
kind: Secret
metadata: {{name: internal-ca, namespace: infra}}
type: Opaque
stringData:
  ca.crt: |
{internal_ca}---
apiVersion: projectcontour.io/v1
kind: TLSCertificateDelegation
metadata: {{name: internal-ca-for-demo, namespace: infra}}
spec:
  delegations:
  - secretName: internal-ca
    targetNamespaces: [demo]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
  annotations:
    projectcontour.io/upstream-protocol.tls: "https"
spec:
  ports: [{{name: https, port: 8443}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: demo, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: https, port: {web}}}]
endpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: payments, namespace: demo}}
spec:
  ports: [{{name: https, port: 8443, appProtocol: https}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: payments-1, namespace: demo, labels: {{kubernetes.io/service-name: payments}}}}
addressType: IPv4
ports: [{{name: https, port: {payments}}}]
endpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]
---
# Contour dialect. /broken is broken on purpose: its CA secret does not exist, so it
# answers 503 and the HTTPProxy's status says why; the other routes keep working.
apiVersion: projectcontour.io/v1
kind: HTTPProxy
metadata: {{name: web, namespace: demo}}
spec:
  virtualhost: {{fqdn: web.example.com}}
  routes:
  - conditions: [{{prefix: /}}]
    services:
    - name: web
      port: 8443
      validation: {{caSecret: demo-ca, subjectName: web.demo.svc}}
  - conditions: [{{prefix: /payments}}]
    services:
    - name: payments
      port: 8443
      validation: {{caSecret: infra/internal-ca, subjectName: payments.demo.svc}}
  - conditions: [{{prefix: /broken}}]
    services:
    - name: web
      port: 8443
      validation: {{caSecret: missing-ca, subjectName: web.demo.svc}}
---
# Voyager dialect: backend TLS from the Service annotation, the CA from a Secret.
apiVersion: v1
kind: Service
metadata:
  name: legacy
  namespace: demo
  annotations:
    ingress.appscode.com/backend-tls: "ssl verify required verifyhost legacy.demo.svc"
    portico.dev/upstream-ca-secret: demo-ca
spec:
  ports: [{{name: https, port: 8443}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: legacy-1, namespace: demo, labels: {{kubernetes.io/service-name: legacy}}}}
addressType: IPv4
ports: [{{name: https, port: {legacy}}}]
endpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]
---
apiVersion: voyager.appscode.com/v1beta1
kind: Ingress
metadata: {{name: legacy, namespace: demo}}
spec:
  rules:
  - host: legacy.example.com
    http:
      paths:
      - path: /
        backend: {{serviceName: legacy, servicePort: 8443}}
"#
    )
}

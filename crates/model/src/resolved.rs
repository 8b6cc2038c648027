//! The resolved model: what both renderers turn into proxy configuration.
//!
//! Every field is typed and every string in it has passed its grammar (see `names`), so a
//! renderer never has to validate. Collections are sorted, so equal inputs give equal
//! models and equal content hashes.

use crate::names::{AbsPath, ClusterName, DnsName, HostMatch, K8sName, PathPrefix, SanUri, SecretRef};
use crate::objects::ObjectRef;
use crate::verdict::{KeyPairPem, Pem, TrustMaterial};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// One piece of a model as it travels on the bus: a cluster, a virtual host of a
/// listener, or the rest (trust references). A change to one object changes a few pieces,
/// so publishing and following a model by piece costs what the change costs, not what the
/// model weighs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelPiece {
    Cluster(Cluster),
    VirtualHost { port: u16, vhost: VirtualHost },
    Rest { trust: Vec<TrustRef>, client_certs: Vec<TrustRef> },
}

/// A piece borrowed from a model, to encode without copying it: it encodes exactly as the
/// `ModelPiece` it stands for (the same variants and fields, in order).
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename = "ModelPiece")]
pub enum ModelPieceRef<'a> {
    Cluster(&'a Cluster),
    VirtualHost { port: u16, vhost: &'a VirtualHost },
    Rest { trust: &'a [TrustRef], client_certs: &'a [TrustRef] },
}

impl ModelPieceRef<'_> {
    /// `ModelPiece::id` of the piece it stands for.
    pub fn id(&self) -> PieceId {
        match self {
            ModelPieceRef::Cluster(c) => PieceId::Cluster(c.name.clone()),
            ModelPieceRef::VirtualHost { port, vhost } => PieceId::VirtualHost(*port, vhost.host.clone()),
            ModelPieceRef::Rest { .. } => PieceId::Rest,
        }
    }

    /// `ModelPiece::identity` of the piece it stands for.
    pub fn identity(&self) -> String {
        match self {
            ModelPieceRef::Cluster(c) => PieceId::cluster_identity(&c.name),
            ModelPieceRef::VirtualHost { port, vhost } => PieceId::vhost_identity(*port, &vhost.host),
            ModelPieceRef::Rest { .. } => PieceId::REST.to_owned(),
        }
    }
}

impl PieceId {
    const REST: &'static str = "rest";

    fn cluster_identity(name: &ClusterName) -> String {
        format!("cluster/{name}")
    }

    fn vhost_identity(port: u16, host: &HostMatch) -> String {
        format!("vhost/{port}/{host}")
    }

    /// The identity of the piece (`ModelPiece::identity`): what its bus key is made from.
    pub fn identity(&self) -> String {
        match self {
            PieceId::Cluster(name) => PieceId::cluster_identity(name),
            PieceId::VirtualHost(port, host) => PieceId::vhost_identity(*port, host),
            PieceId::Rest => PieceId::REST.to_owned(),
        }
    }
}

/// What changed in a model since it was last read, as pieces: the clusters and virtual
/// hosts that may differ (new, or changed), those that are gone, and the rest (always
/// whole). Applied to the model it follows (`put_piece`, `remove_piece`), it gives the new
/// one; a publisher encodes only these pieces instead of the whole model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelDelta {
    pub clusters: Vec<Cluster>,
    pub virtual_hosts: Vec<(u16, VirtualHost)>,
    pub gone: Vec<PieceId>,
    pub trust: Vec<TrustRef>,
    pub client_certs: Vec<TrustRef>,
}

impl ModelDelta {
    /// The pieces it puts (clusters, virtual hosts, the rest), borrowed for encoding.
    pub fn piece_refs(&self) -> Vec<ModelPieceRef<'_>> {
        let mut out: Vec<ModelPieceRef<'_>> = self.clusters.iter().map(ModelPieceRef::Cluster).collect();
        out.extend(self.virtual_hosts.iter().map(|(port, vhost)| ModelPieceRef::VirtualHost { port: *port, vhost }));
        out.push(ModelPieceRef::Rest { trust: &self.trust, client_certs: &self.client_certs });
        out
    }

    /// `model` with this delta applied.
    pub fn apply_to(&self, model: &mut Model) {
        for id in &self.gone {
            model.remove_piece(id);
        }
        for cluster in &self.clusters {
            model.put_piece(ModelPiece::Cluster(cluster.clone()));
        }
        for (port, vhost) in &self.virtual_hosts {
            model.put_piece(ModelPiece::VirtualHost { port: *port, vhost: vhost.clone() });
        }
        model.put_piece(ModelPiece::Rest { trust: self.trust.clone(), client_certs: self.client_certs.clone() });
    }
}

/// Which part of a model a piece is (its identity, as a value).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PieceId {
    Cluster(ClusterName),
    VirtualHost(u16, HostMatch),
    Rest,
}

impl ModelPiece {
    pub fn id(&self) -> PieceId {
        match self {
            ModelPiece::Cluster(c) => PieceId::Cluster(c.name.clone()),
            ModelPiece::VirtualHost { port, vhost } => PieceId::VirtualHost(*port, vhost.host.clone()),
            ModelPiece::Rest { .. } => PieceId::Rest,
        }
    }

    /// What the piece is of, unique within a model: `cluster/<name>`,
    /// `vhost/<port>/<host>`, `rest`.
    pub fn identity(&self) -> String {
        match self {
            ModelPiece::Cluster(c) => PieceId::cluster_identity(&c.name),
            ModelPiece::VirtualHost { port, vhost } => PieceId::vhost_identity(*port, &vhost.host),
            ModelPiece::Rest { .. } => PieceId::REST.to_owned(),
        }
    }
}

/// Exact hosts first, then wildcards, then any: the order proxies should match in.
pub fn host_rank(host: &HostMatch) -> u8 {
    match host {
        HostMatch::Exact(_) => 0,
        HostMatch::Wildcard(_) => 1,
        HostMatch::Any => 2,
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    /// Sorted by port.
    pub listeners: Vec<Listener>,
    /// Sorted by name; every cluster a route forwards to, and no other.
    pub clusters: Vec<Cluster>,
    /// CA bundles that clusters verify against, sorted: which Secret, and the content
    /// hash the secrets service reported (so a rotated CA changes the model's hash).
    pub trust: Vec<TrustRef>,
    /// The client certificates clusters present to their backends, sorted: the configured
    /// upstream client certificate when it is valid and used, and those of Ingresses'
    /// `proxy-ssl-secret`.
    pub client_certs: Vec<TrustRef>,
}

impl Model {
    /// The model in pieces (see [`ModelPiece`]); [`Model::from_pieces`] puts them together.
    /// `pieces`, borrowed.
    pub fn piece_refs(&self) -> Vec<ModelPieceRef<'_>> {
        let mut out: Vec<ModelPieceRef<'_>> = self.clusters.iter().map(ModelPieceRef::Cluster).collect();
        for listener in &self.listeners {
            for vhost in &listener.virtual_hosts {
                out.push(ModelPieceRef::VirtualHost { port: listener.port, vhost });
            }
        }
        out.push(ModelPieceRef::Rest { trust: &self.trust, client_certs: &self.client_certs });
        out
    }

    pub fn pieces(&self) -> Vec<ModelPiece> {
        let mut out: Vec<ModelPiece> = self.clusters.iter().cloned().map(ModelPiece::Cluster).collect();
        for listener in &self.listeners {
            for vhost in &listener.virtual_hosts {
                out.push(ModelPiece::VirtualHost { port: listener.port, vhost: vhost.clone() });
            }
        }
        out.push(ModelPiece::Rest { trust: self.trust.clone(), client_certs: self.client_certs.clone() });
        out
    }

    /// Put one piece in, in its place (replacing the piece of the same identity): what a
    /// follower of the bus does with the pieces a generation changed, instead of putting
    /// the whole model together again.
    pub fn put_piece(&mut self, piece: ModelPiece) {
        match piece {
            ModelPiece::Cluster(cluster) => match self.clusters.binary_search_by(|c| c.name.cmp(&cluster.name)) {
                Ok(i) => self.clusters[i] = cluster,
                Err(i) => self.clusters.insert(i, cluster),
            },
            ModelPiece::VirtualHost { port, vhost } => {
                let l = match self.listeners.binary_search_by_key(&port, |l| l.port) {
                    Ok(l) => l,
                    Err(l) => {
                        self.listeners.insert(l, Listener { port, virtual_hosts: Vec::new() });
                        l
                    }
                };
                let hosts = &mut self.listeners[l].virtual_hosts;
                let (rank, host) = (host_rank(&vhost.host), vhost.host.clone());
                match hosts.binary_search_by(|v| (host_rank(&v.host), &v.host).cmp(&(rank, &host))) {
                    Ok(i) => hosts[i] = vhost,
                    Err(i) => hosts.insert(i, vhost),
                }
            }
            ModelPiece::Rest { trust, client_certs } => {
                self.trust = trust;
                self.client_certs = client_certs;
            }
        }
    }

    /// Take the piece of this identity out (a listener without virtual hosts goes too).
    pub fn remove_piece(&mut self, id: &PieceId) {
        match id {
            PieceId::Cluster(name) => {
                if let Ok(i) = self.clusters.binary_search_by(|c| c.name.cmp(name)) {
                    self.clusters.remove(i);
                }
            }
            PieceId::VirtualHost(port, host) => {
                let Ok(l) = self.listeners.binary_search_by_key(port, |l| l.port) else { return };
                let hosts = &mut self.listeners[l].virtual_hosts;
                let wanted = (host_rank(host), host);
                if let Ok(i) = hosts.binary_search_by(|v| (host_rank(&v.host), &v.host).cmp(&wanted)) {
                    hosts.remove(i);
                }
                if hosts.is_empty() {
                    self.listeners.remove(l);
                }
            }
            PieceId::Rest => {
                self.trust.clear();
                self.client_certs.clear();
            }
        }
    }

    /// The model of these pieces, in the model's order (listeners by port, virtual hosts
    /// exact-wildcard-any then by host, clusters by name), whatever order they come in.
    pub fn from_pieces<'a>(pieces: impl IntoIterator<Item = &'a ModelPiece>) -> Model {
        let mut model = Model::default();
        let mut listeners: BTreeMap<u16, Vec<VirtualHost>> = BTreeMap::new();
        for piece in pieces {
            match piece {
                ModelPiece::Cluster(c) => model.clusters.push(c.clone()),
                ModelPiece::VirtualHost { port, vhost } => listeners.entry(*port).or_default().push(vhost.clone()),
                ModelPiece::Rest { trust, client_certs } => {
                    model.trust = trust.clone();
                    model.client_certs = client_certs.clone();
                }
            }
        }
        model.clusters.sort_by(|a, b| a.name.cmp(&b.name));
        model.listeners = listeners
            .into_iter()
            .map(|(port, mut virtual_hosts)| {
                virtual_hosts.sort_by(|a, b| host_rank(&a.host).cmp(&host_rank(&b.host)).then(a.host.cmp(&b.host)));
                Listener { port, virtual_hosts }
            })
            .collect();
        model
    }

    /// SHA-256 (hex) of the model's canonical JSON form. Renderers push only when it changes.
    pub fn content_hash(&self) -> String {
        let mut hasher = HashWriter(Sha256::new());
        serde_json::to_writer(&mut hasher, self).expect("the model always serializes");
        hex(&hasher.0.finalize())
    }

    /// The CA bundle `secret` as this model names it (`trust` is sorted by secret).
    pub fn trust_ref(&self, secret: &SecretRef) -> Option<&TrustRef> {
        self.trust.binary_search_by(|t| t.secret.cmp(secret)).ok().map(|i| &self.trust[i])
    }

    /// The validated CA bundle of `secret` among `trust`, if it is the very content this
    /// model was resolved against (same content hash, a well-formed SHA-256). Renderers use
    /// nothing else: stale or missing material means the cluster is not rendered.
    pub fn ca_material<'t>(
        &self,
        secret: &SecretRef,
        trust: &'t BTreeMap<SecretRef, TrustMaterial>,
    ) -> Result<&'t Pem, String> {
        let wanted = self.trust_ref(secret).map(|t| &t.sha256);
        trust
            .get(secret)
            .and_then(|m| m.ca.as_ref())
            .filter(|p| Some(&p.sha256) == wanted && is_sha256_hex(&p.sha256))
            .ok_or_else(|| format!("no validated CA bundle of CA secret {secret} with the model's content hash"))
    }

    /// The validated client certificate of `secret`, on the same terms as `ca_material`.
    pub fn client_material<'t>(
        &self,
        secret: &SecretRef,
        trust: &'t BTreeMap<SecretRef, TrustMaterial>,
    ) -> Result<&'t KeyPairPem, String> {
        let wanted = self.client_certs.iter().find(|t| &t.secret == secret).map(|t| &t.sha256);
        trust
            .get(secret)
            .and_then(|m| m.key_pair.as_ref())
            .filter(|c| Some(&c.sha256) == wanted && is_sha256_hex(&c.sha256))
            .ok_or_else(|| format!("no validated client certificate {secret} with the model's content hash"))
    }

    /// The validated serving certificate of a virtual host, on the same terms: the very
    /// content the model was resolved against, or why not.
    pub fn serving_material<'t>(
        tls: &ServingTls,
        trust: &'t BTreeMap<SecretRef, TrustMaterial>,
    ) -> Result<&'t KeyPairPem, String> {
        trust
            .get(&tls.secret)
            .and_then(|m| m.key_pair.as_ref())
            .filter(|c| c.sha256 == tls.sha256 && is_sha256_hex(&c.sha256))
            .ok_or_else(|| {
                format!("no validated certificate of TLS secret {} with the model's content hash", tls.secret)
            })
    }

    pub fn cluster(&self, name: &ClusterName) -> Option<&Cluster> {
        self.clusters.binary_search_by(|c| c.name.cmp(name)).ok().map(|i| &self.clusters[i])
    }

    /// Every route of every listener, with its listener port and host.
    pub fn routes(&self) -> impl Iterator<Item = (u16, &HostMatch, &Route)> {
        self.listeners
            .iter()
            .flat_map(|l| l.virtual_hosts.iter().flat_map(move |v| v.routes.iter().map(move |r| (l.port, &v.host, r))))
    }
}

/// Feeds serialized bytes straight into a hasher, so hashing a large model needs no buffer.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether a string is a SHA-256 in lowercase hex (safe to use in a file name).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    pub port: u16,
    /// Sorted: exact hosts, then wildcards, then `Any` last (the order proxies match in).
    pub virtual_hosts: Vec<VirtualHost>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualHost {
    pub host: HostMatch,
    /// Served over TLS with this certificate (SPEC section 8). A listener whose virtual
    /// hosts have it is an HTTPS listener: the certificate is chosen by SNI, and an SNI no
    /// host has gets none. `None` on every host of a plain HTTP listener.
    pub tls: Option<ServingTls>,
    /// Longest path first, an exact one before a prefix of the same length, so the first
    /// match is the most specific (`route_order`).
    pub routes: Vec<Route>,
}

/// The order of a virtual host's routes: longest path first, an exact path before a
/// prefix of the same length, then by path.
pub fn route_order(a: &Route, b: &Route) -> std::cmp::Ordering {
    b.prefix.as_str().len().cmp(&a.prefix.as_str().len()).then(b.exact.cmp(&a.exact)).then(a.prefix.cmp(&b.prefix))
}

/// The certificate a virtual host serves, and the lowest TLS version it accepts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServingTls {
    /// A kubernetes.io/tls Secret whose pair the secrets service found valid, and whose
    /// leaf covers the host (the resolver checked).
    pub secret: SecretRef,
    /// The pair's content hash as the verdict said (a renewed certificate changes it, and
    /// so the virtual host).
    pub sha256: String,
    pub min_version: TlsVersion,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The path prefix, or with `exact` the whole path.
    pub prefix: PathPrefix,
    /// The request's path must equal `prefix` (Kubernetes Ingress and Gateway API
    /// `Exact`); otherwise it must start with it.
    pub exact: bool,
    /// The object the route came from.
    pub source: ObjectRef,
    pub action: RouteAction,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteAction {
    Forward {
        /// At least one; weights as configured (all equal when none were given).
        backends: Vec<WeightedCluster>,
        /// A literal Host header to send upstream.
        host_rewrite: Option<DnsName>,
        /// How long the backend may take to answer (HTTPProxy `timeoutPolicy.response`);
        /// `None`: `Timeout::DEFAULT_RESPONSE`, the same in both proxies.
        timeout: Option<Timeout>,
        /// How long the exchange may go without any activity (HTTPProxy
        /// `timeoutPolicy.idle`); `None`: no limit besides `timeout`.
        idle_timeout: Option<Timeout>,
    },
    /// The route is in error: answer 503, never forward (fail closed).
    Reject,
    /// An HTTPProxy include that cannot be followed (missing, or another root): answer 502
    /// under the include's prefix, as Contour does.
    BadGateway,
    /// A plain HTTP request for a host served over HTTPS: answer 301 with the same host
    /// and path on `https://` and this port (443 is left out of the URL).
    RedirectHttps { port: u16 },
}

impl RouteAction {
    /// The status a route answers with itself, never forwarding: `None` for `Forward`.
    pub fn direct_status(&self) -> Option<u16> {
        match self {
            RouteAction::Forward { .. } => None,
            RouteAction::RedirectHttps { .. } => Some(301),
            RouteAction::Reject => Some(503),
            RouteAction::BadGateway => Some(502),
        }
    }
}

/// A response timeout: milliseconds, or none at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Timeout {
    Millis(u64),
    Infinite,
}

impl Timeout {
    /// What both proxies give a backend to answer when no policy says otherwise (HAProxy's
    /// `timeout server`, Envoy's route timeout, which would otherwise be 15 s).
    pub const DEFAULT_RESPONSE: Timeout = Timeout::Millis(60_000);
    /// The longest finite timeout accepted (HAProxy's limit is about 24.8 days).
    pub const MAX_MILLIS: u64 = 24 * 3600 * 1000;

    /// Contour's grammar: a Go duration of `h`, `m`, `s` and `ms` parts (`1m30s`,
    /// `500ms`), or `infinity`/`infinite`. At most `MAX_MILLIS`; 0 is not a timeout.
    pub fn parse(value: &str) -> Result<Timeout, String> {
        if value == "infinity" || value == "infinite" {
            return Ok(Timeout::Infinite);
        }
        let refuse =
            || format!("{} is not a duration (use e.g. 30s, 1m30s, 500ms or infinity)", crate::names::quote(value));
        if value.is_empty() || value.len() > 32 {
            return Err(refuse());
        }
        let mut total: u64 = 0;
        let mut rest = value;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(refuse());
            }
            let number: u64 = rest[..digits].parse().map_err(|_| refuse())?;
            rest = &rest[digits..];
            let (unit, len) = if rest.starts_with("ms") {
                (1, 2)
            } else if rest.starts_with('s') {
                (1000, 1)
            } else if rest.starts_with('m') {
                (60_000, 1)
            } else if rest.starts_with('h') {
                (3_600_000, 1)
            } else {
                return Err(refuse());
            };
            rest = &rest[len..];
            total = number.checked_mul(unit).and_then(|n| total.checked_add(n)).ok_or_else(refuse)?;
        }
        if total == 0 || total > Self::MAX_MILLIS {
            return Err(format!("{} must be between 1ms and 24h, or infinity", crate::names::quote(value)));
        }
        Ok(Timeout::Millis(total))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightedCluster {
    pub cluster: ClusterName,
    pub weight: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// `<namespace>_<service>_<port>_<hash>`; the hash covers the whole `ClusterKey`, so
    /// two different keys never share a name.
    pub name: ClusterName,
    pub key: ClusterKey,
    pub servers: Servers,
}

/// Everything that shapes a cluster. Two routes that resolve to equal keys share a cluster.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterKey {
    pub namespace: K8sName,
    pub service: K8sName,
    /// The Service port (not the target port).
    pub port: u16,
    pub protocol: UpstreamProtocol,
    /// Present exactly when `protocol` is `Tls` or `H2`.
    pub tls: Option<TlsPolicy>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 in plaintext.
    Http,
    /// HTTP/2 in plaintext (prior knowledge).
    H2c,
    /// TLS, HTTP/1.1 unless ALPN negotiates otherwise.
    Tls,
    /// HTTP/2 over TLS, ALPN `h2`.
    H2,
}

impl UpstreamProtocol {
    pub fn is_tls(self) -> bool {
        matches!(self, UpstreamProtocol::Tls | UpstreamProtocol::H2)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http => "http",
            UpstreamProtocol::H2c => "h2c",
            UpstreamProtocol::Tls => "tls",
            UpstreamProtocol::H2 => "h2",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TlsPolicy {
    /// Server name to send; `None` sends no SNI.
    pub sni: Option<DnsName>,
    pub verify: Verification,
    pub alpn: Vec<Alpn>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// Present the configured client certificate.
    pub client_cert: Option<SecretRef>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Verification {
    /// The server certificate is not checked.
    None,
    Required {
        ca: CaSource,
        /// The certificate must carry one of these DNS SANs or one of `subject_uris`; both
        /// empty checks the CA only.
        subject_names: Vec<DnsName>,
        /// URI SANs (SPIFFE IDs), matched exactly (Gateway API `subjectAltNames` of type
        /// `URI`).
        subject_uris: Vec<SanUri>,
        /// The names must be checked exactly as given: a proxy that cannot (HAProxy checks
        /// one DNS name, the SNI, and no URI) answers 503 instead of checking something
        /// else (Gateway API, SPEC section 6). Without it a proxy may check the first name
        /// only, which is stricter (Contour's `subjectNames`, with a warning).
        exact_names: bool,
    },
}

impl Verification {
    /// Whether a proxy that checks only the SNI as a DNS name can honour this: no names
    /// beyond `sni`, or names it may narrow to the first one.
    pub fn checkable_by_sni(&self, sni: Option<&DnsName>) -> bool {
        match self {
            Verification::None => true,
            Verification::Required { subject_names, subject_uris, exact_names, .. } => {
                !exact_names
                    || (subject_uris.is_empty()
                        && (subject_names.is_empty() || (subject_names.len() == 1 && sni == subject_names.first())))
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CaSource {
    /// A Secret's (or a ConfigMap's) `ca.crt`, validated by the secrets service.
    Secret(SecretRef),
    /// The union of several validated bundles (Gateway API `caCertificateRefs`), at least
    /// two, sorted.
    Union(Vec<SecretRef>),
    /// The proxy host's system trust store (Gateway API `wellKnownCACertificates: System`):
    /// HAProxy's `@system-ca`, a configured bundle path for Envoy.
    System,
    /// A file already present on the proxy host (Voyager's `ca-file`).
    File(AbsPath),
}

impl CaSource {
    /// The trust material holders this source needs from the bus.
    pub fn secrets(&self) -> &[SecretRef] {
        match self {
            CaSource::Secret(s) => std::slice::from_ref(s),
            CaSource::Union(list) => list,
            CaSource::System | CaSource::File(_) => &[],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Alpn {
    H2,
    Http11,
}

impl Alpn {
    pub fn as_str(self) -> &'static str {
        match self {
            Alpn::H2 => "h2",
            Alpn::Http11 => "http/1.1",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// The spelling HAProxy and Voyager use.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "TLSv1.2",
            TlsVersion::Tls13 => "TLSv1.3",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Servers {
    /// Ready endpoints (address and target port), sorted; may be empty.
    Endpoints(Vec<SocketAddr>),
    /// An ExternalName Service: resolve this name, connect to this port.
    Dns { host: DnsName, port: u16 },
}

/// A Secret whose material a renderer needs, and the content hash that was validated.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TrustRef {
    pub secret: SecretRef,
    pub sha256: String,
}

//! The resolved model as `haproxy.cfg` (HAProxy 2.6) plus the files it references: CA
//! bundles named by the SHA-256 of their bytes, and the client certificate (chain and key
//! in one PEM, as HAProxy's `crt` wants), named likewise.
//!
//! Pure: model and trust material in, files out. Every value written comes from a model
//! newtype (which has passed its grammar), an enum, a number, or a hex digest this module
//! re-checks; nothing is templated from a raw user string.
//!
//! Routing is decided once per request, by map lookups whose cost does not grow with the
//! number of routes. The frontend keeps the request's original host in `txn.host`, then
//! sets `txn.route` from the longest prefix of `host + path` in the listener's exact-host
//! map, else of `host-without-its-first-label + path` in its wildcard map, else of `path`
//! in its any-host map (exact hosts, then wildcards, then any; longest prefix first, as the
//! model orders them). Everything else (a Host rewrite, the response timeout, the weighted
//! pick, `use_backend`) keys off `txn.route` through more maps, so a rewrite can never
//! change which route later rules see.
//!
//! Maps and server addresses are what changes most; [`Runtime`] describes them so that
//! the service can apply a change through HAProxy's runtime API instead of reloading, when
//! the rest of the configuration (the skeleton) is unchanged. Backends get server slots
//! with room to grow (see [`slots`]).

pub mod apply;
pub mod runtime;

pub use runtime::Runtime;
#[cfg(feature = "service")]
pub mod service;

use portico_model::{
    Alpn, CaSource, Cluster, HostMatch, Model, RouteAction, SecretRef, Servers, Timeout, TrustMaterial,
    UpstreamProtocol, Verification,
};
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};

/// The backend that answers 503 for routes in error.
pub const REJECT_BACKEND: &str = "portico_reject_503";
/// The backend that answers 404 when no route matches.
/// The backend of routes whose HTTPProxy include cannot be followed: answers 502.
pub const BAD_GATEWAY_BACKEND: &str = "portico_include_502";
pub const NOT_FOUND_BACKEND: &str = "portico_no_route_404";

#[derive(Clone, Debug)]
pub struct Options {
    /// The absolute directory the files will be written to; `ca-file` and `crt` paths are
    /// under it.
    pub base_dir: portico_model::AbsPath,
    /// The address listeners bind to.
    pub bind_address: IpAddr,
    /// The main HTTP port: always listened on, even when no route uses it, so that
    /// HAProxy starts (it refuses a config without listeners) and answers 404.
    pub http_port: u16,
    /// The HTTPS port: always listened on when set, with an empty certificate list until
    /// a host has a certificate, so that the first one is added without a reload.
    pub https_port: Option<u16>,
}

/// The backend that answers plain HTTP requests for a host served over HTTPS with a 301
/// to `https://<host>:<port><path?query>`.
pub fn redirect_backend(port: u16) -> String {
    format!("portico_redirect_https_{port}")
}

/// The certificate list of an HTTPS listener, relative to the base directory.
fn crt_list(port: u16) -> String {
    format!("certs/l{port}.list")
}

/// A virtual host's certificate file (chain and key, as HAProxy's `crt` wants), relative
/// to the base directory. Named by host, not by content, so that a renewed certificate is
/// the same file with new bytes (`set ssl cert`). `_` is not in a DNS name's grammar, so
/// a wildcard's file cannot be an exact host's.
fn cert_file(port: u16, host: &HostMatch) -> Option<String> {
    match host {
        HostMatch::Exact(name) => Some(format!("certs/l{port}/{name}.pem")),
        HostMatch::Wildcard(suffix) => Some(format!("certs/l{port}/_.{suffix}.pem")),
        HostMatch::Any => None,
    }
}

/// Why HAProxy would not load `bytes` as a CA file, if it would not: no PEM block, or a
/// block that is not an X.509 certificate.
fn pem_certificates_problem(bytes: &[u8]) -> Option<String> {
    let mut certificates = 0;
    for (i, pem) in x509_parser::pem::Pem::iter_from_buffer(bytes).enumerate() {
        let pem = match pem {
            Ok(pem) => pem,
            Err(e) => return Some(format!("has a malformed PEM block (#{}): {e}", i + 1)),
        };
        if pem.label != "CERTIFICATE" {
            continue;
        }
        if let Err(e) = pem.parse_x509() {
            return Some(format!("has a certificate that does not parse (#{}): {e}", i + 1));
        }
        certificates += 1;
    }
    (certificates == 0).then(|| "holds no PEM certificate".to_owned())
}

/// CA files named by the model (Voyager's `ca-file`) that HAProxy could not load, with why.
/// HAProxy refuses a whole configuration for one such file, so a cluster that names one is
/// left out and its routes answer 503 instead. Found by [`unusable_ca_files`] where
/// HAProxy runs; empty where the files cannot be looked at (`portico translate`).
pub type UnusableFiles = BTreeMap<portico_model::AbsPath, String>;

/// The CA files the model names that cannot be used on this host: missing, unreadable, or
/// holding no PEM certificate.
pub fn unusable_ca_files(model: &Model) -> UnusableFiles {
    let mut out = UnusableFiles::new();
    for cluster in &model.clusters {
        let Some(tls) = &cluster.key.tls else { continue };
        let Verification::Required { ca: CaSource::File(path), .. } = &tls.verify else { continue };
        if out.contains_key(path) {
            continue;
        }
        let why = match std::fs::read(path.as_str()) {
            Err(e) => Some(format!("CA file {path} cannot be read on the HAProxy host: {e}")),
            Ok(bytes) => pem_certificates_problem(&bytes).map(|p| format!("CA file {path} on the HAProxy host {p}")),
        };
        if let Some(why) = why {
            out.insert(path.clone(), why);
        }
    }
    out
}

/// What rendering produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    /// Relative path → contents: `haproxy.cfg`, `maps/`, `ca/<sha256>.pem`,
    /// `client/<sha256>.pem`, and per HTTPS listener `certs/l<port>.list` with the
    /// certificates it lists (`certs/l<port>/<host>.pem`).
    pub files: BTreeMap<String, Vec<u8>>,
    /// Routes rendered as 503 because the renderer could not honour them (trust material
    /// missing or not matching the model), each with the reason.
    pub problems: Vec<String>,
    /// What the runtime API can change in place: map entries and server addresses.
    pub runtime: Runtime,
}

/// Where a backend's server lines go in the skeleton (a byte no rendered value can hold).
const SERVERS: &str = "\u{1}";

/// How many spare backends a configuration loaded by a reload gets for `clusters` backends:
/// a cluster that appears (a Service newly routed, a TLS policy or CA changed) takes one
/// through the runtime API. A backend whose cluster goes becomes a spare in turn, so a
/// policy flipped back and forth keeps finding its previous backend.
pub fn spare_backends(clusters: usize) -> usize {
    16 + clusters / 32
}

/// The name of a spare backend made by a reload.
fn spare_name(i: usize) -> String {
    format!("portico_spare_{i:03}")
}

/// Trust material by secret.
pub type Trust = BTreeMap<SecretRef, TrustMaterial>;

/// The files a cluster needs, or why it cannot be rendered.
struct ClusterFiles {
    ca_file: Option<String>,
    client_file: Option<String>,
}

impl ClusterFiles {
    /// The server files these name (as the configuration names them, under `base`), with
    /// their bytes from `files`; a host CA file (Voyager's `ca-file`) without.
    fn server_files(
        &self,
        cluster: &Cluster,
        base: &str,
        files: &BTreeMap<String, Vec<u8>>,
        out: &mut BTreeMap<String, runtime::ServerFile>,
    ) -> Vec<String> {
        let mut named = Vec::new();
        for (file, certificate) in [(&self.ca_file, false), (&self.client_file, true)] {
            let Some(file) = file else { continue };
            let path = format!("{base}/{file}");
            out.entry(path.clone()).or_insert_with(|| runtime::ServerFile {
                certificate,
                pem: files.get(file).map(|bytes| std::sync::Arc::from(bytes.as_slice())),
            });
            named.push(path);
        }
        if let Some(tls) = &cluster.key.tls {
            if let Verification::Required { ca: CaSource::File(path), .. } = &tls.verify {
                out.entry(path.to_string()).or_insert(runtime::ServerFile { certificate: false, pem: None });
                named.push(path.to_string());
            }
        }
        named
    }
}

/// The file written for a secret's material in this rendering (its path, or why there is
/// none): thousands of clusters share a few CA secrets (or unions of them), whose bytes are
/// copied and digested once per rendering, not once per cluster. Keyed by the secrets (one,
/// or a union's list) and whether it is the client certificate.
type FileMemo<'m> = std::collections::HashMap<(&'m [SecretRef], bool), Result<String, String>>;

fn cluster_files<'m>(
    cluster: &'m Cluster,
    model: &Model,
    trust: &Trust,
    unusable: &UnusableFiles,
    files: &mut BTreeMap<String, Vec<u8>>,
    memo: &mut FileMemo<'m>,
) -> Result<ClusterFiles, String> {
    let mut out = ClusterFiles { ca_file: None, client_file: None };
    let Some(tls) = &cluster.key.tls else { return Ok(out) };
    if !tls.verify.checkable_by_sni(tls.sni.as_ref()) {
        // Gateway API names HAProxy cannot check exactly (a URI SAN, or DNS SANs other
        // than the SNI): 503 rather than a different check (SPEC section 6).
        return Err(format!(
            "cluster {}: HAProxy checks one DNS name, the SNI, and no URI SAN; the backend's names are enforced by Envoy only",
            cluster.name
        ));
    }
    if let Verification::Required { ca: CaSource::File(path), .. } = &tls.verify {
        if let Some(why) = unusable.get(path) {
            return Err(why.clone());
        }
    }
    // Files are named by a digest of the very bytes written (not by the material's label,
    // which covers the certificates' DER): the same name is the same content, which the
    // hard links between generations and the runtime path rely on.
    // A Secret's bundle, or a union of several in one file.
    if let Verification::Required { ca: ca @ (CaSource::Secret(_) | CaSource::Union(_)), .. } = &tls.verify {
        let secrets = ca.secrets();
        let path = memo
            .entry((secrets, false))
            .or_insert_with(|| {
                let mut bytes = Vec::new();
                for secret in secrets {
                    bytes.extend_from_slice(model.ca_material(secret, trust)?.pem.as_bytes());
                }
                let path = format!("ca/{}.pem", portico_model::hex(&sha2::Sha256::digest(&bytes)));
                files.insert(path.clone(), bytes);
                Ok(path)
            })
            .clone()?;
        out.ca_file = Some(path);
    }
    if let Some(secret) = &tls.client_cert {
        let path = memo
            .entry((std::slice::from_ref(secret), true))
            .or_insert_with(|| {
                let client = model.client_material(secret, trust)?;
                let bytes = format!("{}{}", client.chain_pem, client.key_pem).into_bytes();
                let path = format!("client/{}.pem", portico_model::hex(&sha2::Sha256::digest(&bytes)));
                files.insert(path.clone(), bytes);
                Ok(path)
            })
            .clone()?;
        out.client_file = Some(path);
    }
    Ok(out)
}

/// The options of every `server` line of a cluster.
fn server_options_of(cluster: &Cluster, files: &ClusterFiles, base: &str) -> String {
    let mut o = String::new();
    if matches!(cluster.key.protocol, UpstreamProtocol::H2 | UpstreamProtocol::H2c) {
        o.push_str(" proto h2");
    }
    let Some(tls) = &cluster.key.tls else { return o };
    o.push_str(" ssl");
    match &tls.verify {
        Verification::None => o.push_str(" verify none"),
        Verification::Required { ca, subject_names, .. } => {
            o.push_str(" verify required");
            match (ca, &files.ca_file) {
                (CaSource::File(path), _) => write!(o, " ca-file {path}").unwrap(),
                (CaSource::System, _) => o.push_str(" ca-file @system-ca"),
                (CaSource::Secret(_) | CaSource::Union(_), Some(file)) => write!(o, " ca-file {base}/{file}").unwrap(),
                (CaSource::Secret(_) | CaSource::Union(_), None) => {
                    unreachable!("cluster_files succeeded, so the CA file exists")
                }
            }
            // HAProxy checks the certificate against the SNI when one is sent, and against
            // verifyhost otherwise; it can check one name (the resolver warns about others).
            if let Some(first) = subject_names.first() {
                write!(o, " verifyhost {first}").unwrap();
            }
        }
    }
    if let Some(sni) = &tls.sni {
        write!(o, " sni str({sni})").unwrap();
    }
    if let Some(file) = &files.client_file {
        write!(o, " crt {base}/{file}").unwrap();
    }
    if !tls.alpn.is_empty() {
        let list: Vec<&str> = tls.alpn.iter().map(|a| a.as_str()).collect();
        write!(o, " alpn {}", list.join(",")).unwrap();
    } else if cluster.key.protocol == UpstreamProtocol::H2 {
        write!(o, " alpn {}", Alpn::H2.as_str()).unwrap();
    }
    write!(o, " ssl-min-ver {} ssl-max-ver {}", tls.min_version.as_str(), tls.max_version.as_str()).unwrap();
    o
}

/// A route's identifier in the maps and rules: stable across renderings (a digest of the
/// listener, host and prefix), so that adding or removing one route changes one map entry,
/// not the identifiers of all the routes after it.
fn route_id(
    port: u16,
    host: &HostMatch,
    prefix: &str,
    exact: bool,
    taken: &mut std::collections::BTreeSet<String>,
) -> String {
    // FNV-1a, 64 bits: stable across builds and platforms (std's hashers are not promised to be).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let host = match host {
        HostMatch::Any => "*any*".to_owned(),
        HostMatch::Exact(name) => name.to_string(),
        HostMatch::Wildcard(suffix) => format!("*.{suffix}"),
    };
    // An exact path hashes with a marker no prefix has (prefix routes keep their ids).
    let marker: &[u8] = if exact { b"\n=" } else { b"" };
    for b in port.to_be_bytes().iter().chain(host.as_bytes()).chain(b"\n").chain(prefix.as_bytes()).chain(marker) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let base = format!("r{h:016x}");
    let mut id = base.clone();
    let mut n = 1;
    while !taken.insert(id.clone()) {
        id = format!("{base}_{n}");
        n += 1;
    }
    id
}

/// How many server slots a backend with `n` endpoints gets: one per endpoint when it is
/// rendered afresh (a reload), since every TLS server line costs HAProxy an SSL context at
/// parse time, spare or not (at 10,000 backends, four slots each took `haproxy -c` 4.0 s
/// against 1.2 s for one, docs/PERFORMANCE.md); over a running backend, at least the slots
/// it has, so that an endpoint that goes leaves its server in maintenance (never a delete
/// under live connections), and more servers are added (`add server`) when it grows.
pub fn slots(n: usize, running: Option<usize>) -> usize {
    match running {
        Some(r) if n <= r => r,
        _ => n,
    }
}

/// Endpoints into slots: an endpoint that had a slot in the running configuration keeps
/// it, new ones take the free slots in order. Without a running configuration, in order.
fn assign_slots(endpoints: &[SocketAddr], running: Option<&Vec<Option<SocketAddr>>>) -> Vec<Option<SocketAddr>> {
    let count = slots(endpoints.len(), running.map(Vec::len));
    let mut out: Vec<Option<SocketAddr>> = vec![None; count];
    let mut placed = std::collections::BTreeSet::new();
    if let Some(running) = running.filter(|r| r.len() <= count) {
        let wanted: std::collections::BTreeSet<&SocketAddr> = endpoints.iter().collect();
        for (slot, addr) in running.iter().enumerate() {
            if let Some(addr) = addr.filter(|a| wanted.contains(a)) {
                if placed.insert(addr) {
                    out[slot] = Some(addr);
                }
            }
        }
    }
    let mut free = (0..count).filter(|i| out[*i].is_none()).collect::<Vec<_>>().into_iter();
    for addr in endpoints {
        if placed.insert(*addr) {
            out[free.next().expect("slots() leaves room for every endpoint")] = Some(*addr);
        }
    }
    out
}

/// Where the clusters' servers live: cluster → backend name, and the spare backends (with
/// what they held: their servers stay, in maintenance, until a cluster takes them).
///
/// Without a running configuration (a reload), each cluster's backend is named after it
/// and [`spare_backends`] empty spares follow. Over a running one, a cluster keeps its
/// backend while its servers' options are the same; a cluster that is new, or whose options
/// changed (a new CA bundle), takes a spare: the one named after it (a policy flipped
/// back), else one with the same options (nothing to rebuild), else an empty one, else any.
/// Only when none is left does a cluster get a new backend, which is a reload.
struct Placement<'m> {
    of_cluster: BTreeMap<&'m str, String>,
    spares: BTreeMap<String, runtime::Backend>,
}

fn place_backends<'m>(
    clusters: &[(&'m str, &str)],
    running: Option<&Runtime>,
    taken: &std::collections::BTreeSet<&str>,
) -> Placement<'m> {
    let Some(running) = running else {
        return Placement {
            of_cluster: clusters.iter().map(|(c, _)| (*c, c.to_string())).collect(),
            spares: (0..spare_backends(clusters.len())).map(|i| (spare_name(i), runtime::Backend::default())).collect(),
        };
    };
    let by_cluster: std::collections::HashMap<&str, (&str, &runtime::Backend)> =
        running.backends.iter().filter_map(|(name, b)| b.cluster.as_deref().map(|c| (c, (name.as_str(), b)))).collect();
    let mut used = std::collections::BTreeSet::new();
    let mut of_cluster = BTreeMap::new();
    for (cluster, options) in clusters {
        if let Some((name, backend)) = by_cluster.get(cluster) {
            if backend.options == *options && !taken.contains(name) {
                of_cluster.insert(*cluster, name.to_string());
                used.insert(name.to_string());
            }
        }
    }
    let mut free: BTreeMap<&str, &runtime::Backend> = running
        .backends
        .iter()
        .filter(|(name, b)| b.cluster.is_none() && !taken.contains(name.as_str()))
        .map(|(name, b)| (name.as_str(), b))
        .collect();
    let mut next_spare = 0;
    for (cluster, options) in clusters {
        if of_cluster.contains_key(cluster) {
            continue;
        }
        let pick = free
            .get_key_value(cluster)
            .or_else(|| free.iter().find(|(_, b)| b.options == *options))
            .or_else(|| free.iter().find(|(_, b)| b.slots.is_empty()))
            .or_else(|| free.iter().next())
            .map(|(name, _)| *name);
        let name = match pick {
            Some(name) => {
                free.remove(name);
                name.to_owned()
            }
            // No spare left: a new backend, which only a reload brings.
            None if !running.backends.contains_key(*cluster) && !used.contains(*cluster) => cluster.to_string(),
            None => loop {
                let name = spare_name(next_spare);
                next_spare += 1;
                if !running.backends.contains_key(&name) && !used.contains(&name) {
                    break name;
                }
            },
        };
        used.insert(name.clone());
        of_cluster.insert(*cluster, name);
    }
    let spares = running
        .backends
        .iter()
        .filter(|(name, _)| !used.contains(*name) && !taken.contains(name.as_str()))
        .map(|(name, b)| {
            let spare = runtime::Backend {
                cluster: None,
                options: b.options.clone(),
                files: b.files.clone(),
                slots: vec![None; b.slots.len()],
            };
            (name.clone(), spare)
        })
        .collect();
    Placement { of_cluster, spares }
}

/// Render the model.
pub fn render(model: &Model, trust: &Trust, options: &Options) -> Rendered {
    render_over(model, trust, options, None, &UnusableFiles::new())
}

/// Render the model so that it can be applied over `running` (the rendering HAProxy runs)
/// through the runtime API where possible: endpoints keep their server slots, and slot
/// counts are kept while they fit.
/// Clusters that name a CA file in `unusable` are left out (their routes answer 503).
pub fn render_over(
    model: &Model,
    trust: &Trust,
    options: &Options,
    running: Option<&Runtime>,
    unusable: &UnusableFiles,
) -> Rendered {
    let base = options.base_dir.as_str();
    let mut files = BTreeMap::new();
    let mut problems = Vec::new();

    // Clusters that can be rendered, with their files; the others make their routes 503.
    let mut renderable: BTreeMap<&str, ClusterFiles> = BTreeMap::new();
    let mut unrenderable: BTreeMap<&str, String> = BTreeMap::new();
    let mut memo = FileMemo::new();
    for cluster in &model.clusters {
        match cluster_files(cluster, model, trust, unusable, &mut files, &mut memo) {
            Ok(f) => {
                renderable.insert(cluster.name.as_str(), f);
            }
            Err(why) => {
                unrenderable.insert(cluster.name.as_str(), why);
            }
        }
    }

    // Where each cluster's servers live (see `place_backends`); DNS clusters keep backends
    // named after them, with their server line in the skeleton.
    let mut server_options: BTreeMap<&str, (String, Vec<String>)> = BTreeMap::new();
    let mut server_files = BTreeMap::new();
    let mut dns_backends = std::collections::BTreeSet::new();
    for cluster in &model.clusters {
        let Some(files_of) = renderable.get(cluster.name.as_str()) else { continue };
        match &cluster.servers {
            Servers::Endpoints(_) => {
                let named = files_of.server_files(cluster, base, &files, &mut server_files);
                server_options.insert(cluster.name.as_str(), (server_options_of(cluster, files_of, base), named));
            }
            Servers::Dns { .. } => {
                dns_backends.insert(cluster.name.as_str());
            }
        }
    }
    let placement = {
        let clusters: Vec<(&str, &str)> = model
            .clusters
            .iter()
            .filter_map(|c| server_options.get(c.name.as_str()).map(|(o, _)| (c.name.as_str(), o.as_str())))
            .collect();
        place_backends(&clusters, running, &dns_backends)
    };
    let backend_of =
        |cluster: &str| -> String { placement.of_cluster.get(cluster).cloned().unwrap_or_else(|| cluster.to_owned()) };

    let mut runtime = Runtime::default();
    let map_path = |name: &str| format!("{base}/maps/{name}.map");
    let (backend_map, rewrite_map, timeout_map) = (map_path("backend"), map_path("host-rewrite"), map_path("timeout"));
    for path in [&backend_map, &rewrite_map, &timeout_map] {
        runtime.maps.insert(path.clone(), BTreeMap::new());
    }

    // The configuration with a marker where each server's address goes: the skeleton. Two
    // renderings with the same skeleton differ only in map entries and server addresses,
    // which the runtime API changes without a reload.
    let mut cfg = String::new();
    // No global maxconn: HAProxy 2.6 derives it from the file-descriptor limit, and a fixed
    // value above what the limit allows makes HAProxy refuse to start (`haproxy -c` does
    // not notice; the traffic tests did).
    cfg.push_str(
        "# Generated by Portico from the resolved model. Do not edit.\n\
         global\n    ssl-server-verify required\n\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n    \
         timeout http-request 10s\n    option http-keep-alive\n\n",
    );

    let mut ids = std::collections::BTreeSet::new();
    let always: Vec<portico_model::Listener> = [Some(options.http_port), options.https_port]
        .into_iter()
        .flatten()
        .filter(|port| !model.listeners.iter().any(|l| l.port == *port))
        .map(|port| portico_model::Listener { port, virtual_hosts: Vec::new() })
        .collect();
    let mut listeners: Vec<&portico_model::Listener> = model.listeners.iter().chain(&always).collect();
    listeners.sort_by_key(|l| l.port);
    let mut redirects = std::collections::BTreeSet::new();
    for listener in listeners {
        // Route selection is three map lookups (exact host, wildcard, any host), each the
        // longest prefix of `host + path` (map_beg is a prefix tree): the same cost at 10
        // routes and at 10,000. Wildcard keys are the host without its first label.
        let exact = map_path(&format!("l{}-exact", listener.port));
        let wildcard = map_path(&format!("l{}-wildcard", listener.port));
        let any = map_path(&format!("l{}-any", listener.port));
        // Exact paths (`Route::exact`), looked up before the prefixes of the same host kind.
        let exact_path = map_path(&format!("l{}-exact-path", listener.port));
        let wildcard_path = map_path(&format!("l{}-wildcard-path", listener.port));
        let any_path = map_path(&format!("l{}-any-path", listener.port));
        for path in [&exact, &wildcard, &any, &exact_path, &wildcard_path, &any_path] {
            runtime.maps.insert(path.clone(), BTreeMap::new());
        }
        let mut weighted = String::new(); // the rules of routes split across backends
        for vhost in &listener.virtual_hosts {
            for route in &vhost.routes {
                let id = route_id(listener.port, &vhost.host, route.prefix.as_str(), route.exact, &mut ids);
                let (map, key) = match (&vhost.host, route.exact) {
                    (HostMatch::Exact(name), false) => (&exact, format!("{name}{}", route.prefix)),
                    (HostMatch::Wildcard(suffix), false) => (&wildcard, format!("{suffix}{}", route.prefix)),
                    (HostMatch::Any, false) => (&any, route.prefix.to_string()),
                    (HostMatch::Exact(name), true) => (&exact_path, format!("{name}{}", route.prefix)),
                    (HostMatch::Wildcard(suffix), true) => (&wildcard_path, format!("{suffix}{}", route.prefix)),
                    (HostMatch::Any, true) => (&any_path, route.prefix.to_string()),
                };
                // The model lists the longest prefix first, so the first route of a key is
                // the one the model means.
                runtime.maps.get_mut(map).expect("inserted above").entry(key).or_insert_with(|| id.clone());
                let mut backend = |name: &str| {
                    runtime.maps.get_mut(&backend_map).expect("inserted above").insert(id.clone(), name.to_owned())
                };
                let backends = match &route.action {
                    RouteAction::Reject => None,
                    RouteAction::BadGateway => {
                        backend(BAD_GATEWAY_BACKEND);
                        continue;
                    }
                    RouteAction::RedirectHttps { port } => {
                        backend(&redirect_backend(*port));
                        redirects.insert(*port);
                        continue;
                    }
                    RouteAction::Forward { backends, host_rewrite, timeout, idle_timeout } => {
                        let blocked: Vec<&String> =
                            backends.iter().filter_map(|b| unrenderable.get(b.cluster.as_str())).collect();
                        if let Some(why) = blocked.first() {
                            problems.push(format!(
                                "{} route {} {}: answers 503: {why}",
                                route.source, vhost.host, route.prefix
                            ));
                            None
                        } else {
                            Some((backends, host_rewrite, timeout, idle_timeout))
                        }
                    }
                };
                let Some((backends, host_rewrite, timeout, idle_timeout)) = backends else {
                    backend(REJECT_BACKEND);
                    continue;
                };
                let live: Vec<_> = backends.iter().filter(|b| b.weight > 0).collect();
                match live.as_slice() {
                    [] => {} // every weight 0: nothing to send to (404, as before)
                    [one] => {
                        backend(&backend_of(one.cluster.as_str()));
                    }
                    _ => {
                        let this = format!("{{ var(txn.route) -m str {id} }}");
                        let total: u64 = live.iter().map(|b| u64::from(b.weight)).sum();
                        writeln!(weighted, "    http-request set-var(txn.pick) rand({total}) if {this}").unwrap();
                        let mut below = 0u64;
                        for (i, b) in live.iter().enumerate() {
                            below += u64::from(b.weight);
                            if i + 1 < live.len() {
                                writeln!(
                                    weighted,
                                    "    use_backend {} if {this} {{ var(txn.pick) -m int lt {below} }}",
                                    backend_of(b.cluster.as_str())
                                )
                                .unwrap();
                            } else {
                                writeln!(weighted, "    use_backend {} if {this}", backend_of(b.cluster.as_str()))
                                    .unwrap();
                            }
                        }
                    }
                }
                if let Some(host) = host_rewrite {
                    runtime.maps.get_mut(&rewrite_map).expect("inserted above").insert(id.clone(), host.to_string());
                }
                // The default is `timeout server` in defaults (Timeout::DEFAULT_RESPONSE). A
                // frontend cannot set a server timeout: it is carried in a variable to the
                // backend, which applies it (see below).
                // HAProxy has one knob for both, the server side's inactivity (`timeout
                // server`): the response timeout is approximated by it, the idle timeout is
                // exactly it, and with both the shorter applies.
                let millis = |t: &Timeout| match t {
                    Timeout::Millis(ms) => *ms,
                    Timeout::Infinite => Timeout::MAX_MILLIS, // HAProxy has no "never"
                };
                let shortest = [timeout, idle_timeout].into_iter().flatten().map(millis).min();
                if let Some(ms) = shortest {
                    runtime.maps.get_mut(&timeout_map).expect("inserted above").insert(id.clone(), ms.to_string());
                }
            }
        }
        writeln!(cfg, "frontend listener_{}", listener.port).unwrap();
        let bind = match options.bind_address {
            IpAddr::V4(ip) => format!("{ip}:{}", listener.port),
            IpAddr::V6(ip) => format!("ipv6@{ip}:{}", listener.port),
        };
        let https = options.https_port == Some(listener.port) || listener.virtual_hosts.iter().any(|v| v.tls.is_some());
        if https {
            // The certificate by SNI from the list; an SNI no host has gets none
            // (strict-sni), never another host's.
            let list = crt_list(listener.port);
            let entries = runtime.crt_lists.entry(format!("{base}/{list}")).or_default();
            for vhost in &listener.virtual_hosts {
                let (Some(tls), Some(file)) = (&vhost.tls, cert_file(listener.port, &vhost.host)) else { continue };
                match portico_model::Model::serving_material(tls, trust) {
                    Ok(pair) => {
                        let pem = format!("{}{}", pair.chain_pem, pair.key_pem).into_bytes();
                        let options = match tls.min_version {
                            portico_model::TlsVersion::Tls12 => String::new(),
                            v => format!("[ssl-min-ver {}]", v.as_str()),
                        };
                        let sni = match &vhost.host {
                            HostMatch::Wildcard(suffix) => format!("*.{suffix}"),
                            host => host.to_string(),
                        };
                        entries.insert(format!("{base}/{file}"), runtime::CrtEntry { options, sni, pem });
                    }
                    Err(why) => problems.push(format!("host {}: HTTPS handshakes fail: {why}", vhost.host)),
                }
            }
            writeln!(cfg, "    bind {bind} ssl crt-list {base}/{list} strict-sni ssl-min-ver TLSv1.2 alpn h2,http/1.1")
                .unwrap();
        } else {
            writeln!(cfg, "    bind {bind}").unwrap();
        }
        cfg.push_str("    http-request set-var(txn.host) req.hdr(host),field(1,:),lower\n");
        cfg.push_str("    http-request set-var(txn.path) path\n");
        // Per host kind, the exact path first (it is at least as long as any prefix that
        // matches), then the longest prefix.
        writeln!(cfg, "    http-request set-var(txn.route) var(txn.host),concat(,txn.path,),map({exact_path})")
            .unwrap();
        let unrouted = "if !{ var(txn.route) -m found }";
        writeln!(
            cfg,
            "    http-request set-var(txn.route) var(txn.host),concat(,txn.path,),map_beg({exact}) {unrouted}"
        )
        .unwrap();
        for lookup in [format!("map({wildcard_path})"), format!("map_beg({wildcard})")] {
            writeln!(
                cfg,
                "    http-request set-var(txn.route) var(txn.host),field(2,.,0),concat(,txn.path,),{lookup} {unrouted}"
            )
            .unwrap();
        }
        writeln!(cfg, "    http-request set-var(txn.route) var(txn.path),map({any_path}) {unrouted}").unwrap();
        writeln!(cfg, "    http-request set-var(txn.route) var(txn.path),map_beg({any}) {unrouted}").unwrap();
        // Everything else keys off `txn.route`, so a Host rewrite never changes the route.
        writeln!(
            cfg,
            "    http-request set-header Host %[var(txn.route),map({rewrite_map})] if {{ var(txn.route),map({rewrite_map}) -m found }}"
        )
        .unwrap();
        writeln!(cfg, "    http-request set-var(txn.timeout) var(txn.route),map_str_int({timeout_map})").unwrap();
        cfg.push_str(&weighted);
        writeln!(
            cfg,
            "    use_backend %[var(txn.route),map({backend_map})] if {{ var(txn.route),map({backend_map}) -m found }}"
        )
        .unwrap();
        writeln!(cfg, "    default_backend {NOT_FOUND_BACKEND}\n").unwrap();
    }

    // Backends whose servers the runtime API manages, by name: which cluster a backend
    // serves is not in the skeleton (a spare taking a cluster is no reload).
    for cluster in &model.clusters {
        let Servers::Endpoints(list) = &cluster.servers else { continue };
        let Some((options, named)) = server_options.remove(cluster.name.as_str()) else { continue };
        let name = backend_of(cluster.name.as_str());
        let here = running.and_then(|r| r.backends.get(&name)).filter(|b| b.options == options);
        let slots = assign_slots(list, here.map(|b| &b.slots));
        let backend = runtime::Backend { cluster: Some(cluster.name.to_string()), options, files: named, slots };
        runtime.backends.insert(name, backend);
    }
    for (name, spare) in placement.spares {
        for path in &spare.files {
            // A spare keeps the files its servers name (from the running configuration).
            if let Some(file) = running.and_then(|r| r.server_files.get(path)) {
                if let (Some(pem), Some(relative)) = (&file.pem, path.strip_prefix(base)) {
                    files.entry(relative.trim_start_matches('/').to_owned()).or_insert_with(|| pem.to_vec());
                }
                server_files.entry(path.clone()).or_insert_with(|| file.clone());
            }
        }
        runtime.backends.insert(name, spare);
    }
    runtime.server_files = server_files;
    // A backend's lines before its servers: the same for every cluster's backend.
    let backend_head = |cfg: &mut String, name: &str| {
        writeln!(cfg, "backend {name}").unwrap();
        cfg.push_str("    balance roundrobin\n");
        cfg.push_str("    http-request set-timeout server var(txn.timeout) if { var(txn.timeout) -m found }\n");
    };
    for name in runtime.backends.keys() {
        backend_head(&mut cfg, name);
        cfg.push_str(SERVERS);
        cfg.push('\n');
    }
    for cluster in &model.clusters {
        let Servers::Dns { host, port } = &cluster.servers else { continue };
        let Some(cluster_files) = renderable.get(cluster.name.as_str()) else { continue };
        let opts = server_options_of(cluster, cluster_files, base);
        backend_head(&mut cfg, cluster.name.as_str());
        writeln!(cfg, "    server s1 {host}:{port} init-addr last,libc,none{opts}\n").unwrap();
    }
    writeln!(
        cfg,
        "backend {REJECT_BACKEND}\n    http-request return status 503 content-type text/plain string \"route in error, see its status\"\n"
    )
    .unwrap();
    writeln!(
        cfg,
        "backend {BAD_GATEWAY_BACKEND}\n    http-request return status 502 content-type text/plain string \"include not found, see the HTTPProxy's status\"\n"
    )
    .unwrap();
    writeln!(
        cfg,
        "backend {NOT_FOUND_BACKEND}\n    http-request return status 404 content-type text/plain string \"no route\""
    )
    .unwrap();
    for port in redirects {
        // The host as routed (lowercase, without the port the client wrote), then the
        // path and query as they came.
        let authority = if port == 443 { String::new() } else { format!(":{port}") };
        writeln!(
            cfg,
            "\nbackend {}\n    http-request redirect location https://%[var(txn.host)]{authority}%[pathq] code 301",
            redirect_backend(port)
        )
        .unwrap();
    }

    // The skeleton is the configuration without the backends' server lines. The files
    // servers load are named by their content, and the runtime API loads new ones
    // (`new ssl ca-file`, `new ssl cert`); serving certificates and their lists are changed
    // through it too (`runtime::commands`): none of them is in the skeleton.
    runtime.skeleton = runtime::digest_all(&[cfg.as_bytes()]);
    for (list, entries) in &runtime.crt_lists {
        let mut text = String::new();
        for (path, entry) in entries {
            files.insert(path.strip_prefix(base).unwrap_or(path).trim_start_matches('/').to_owned(), entry.pem.clone());
            let options = if entry.options.is_empty() { String::new() } else { format!(" {}", entry.options) };
            writeln!(text, "{path}{options} {}", entry.sni).unwrap();
        }
        files.insert(list.strip_prefix(base).unwrap_or(list).trim_start_matches('/').to_owned(), text.into_bytes());
    }
    // Each server line: its name, address and the backend's options.
    let server_bytes: usize = runtime.backends.values().map(|b| b.slots.len() * (b.options.len() + 48)).sum();
    let mut filled = String::with_capacity(cfg.len() + server_bytes);
    let mut pieces = cfg.split(SERVERS);
    filled.push_str(pieces.next().unwrap_or_default());
    for (piece, (name, backend)) in pieces.zip(&runtime.backends) {
        match &backend.cluster {
            None => filled.push_str("    # spare: no route uses it\n"),
            Some(cluster) if cluster != name => writeln!(filled, "    # cluster {cluster}").unwrap(),
            Some(_) => {}
        }
        runtime::server_lines(backend, &mut filled);
        filled.push_str(piece);
    }
    let cfg = filled;
    for (path, entries) in &runtime.maps {
        let relative = path.strip_prefix(base).unwrap_or(path).trim_start_matches('/').to_owned();
        let mut text = String::new();
        for (key, value) in entries {
            writeln!(text, "{key} {value}").unwrap();
        }
        files.insert(relative, text.into_bytes());
    }
    files.insert("haproxy.cfg".to_owned(), cfg.into_bytes());
    Rendered { files, problems, runtime }
}

#[cfg(test)]
mod tests {
    use super::pem_certificates_problem;

    #[test]
    fn a_ca_file_haproxy_cannot_load_is_told_apart() {
        // Debian's bundle (the ca-certificates package): many certificates and comments.
        let bundle = std::fs::read("/etc/ssl/certs/ca-certificates.crt").expect("ca-certificates is installed");
        assert_eq!(pem_certificates_problem(&bundle), None);
        assert_eq!(pem_certificates_problem(b"not a certificate\n"), Some("holds no PEM certificate".into()));
        let bad = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
        assert!(
            pem_certificates_problem(bad).is_some_and(|p| p.contains("does not parse")),
            "{:?}",
            pem_certificates_problem(bad)
        );
    }
}

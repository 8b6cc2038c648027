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
pub mod build;
pub mod runtime;

pub use build::ConfigBuilder;

pub use runtime::Runtime;
#[cfg(feature = "service")]
pub mod service;

use portico_model::{
    Alpn, CaSource, Cluster, HostMatch, Model, SecretRef, TrustMaterial, UpstreamProtocol, Verification,
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

/// The files a cluster needs (relative to the base directory, with their bytes).
struct ClusterFiles {
    ca_file: Option<(String, std::sync::Arc<[u8]>)>,
    client_file: Option<(String, std::sync::Arc<[u8]>)>,
}

impl ClusterFiles {
    /// The server files these name (as the configuration names them, under `base`), with
    /// their bytes; a host CA file (Voyager's `ca-file`) without.
    fn server_files(&self, cluster: &Cluster, base: &str) -> Vec<(String, runtime::ServerFile)> {
        let mut named = Vec::new();
        for (file, certificate) in [(&self.ca_file, false), (&self.client_file, true)] {
            let Some((file, bytes)) = file else { continue };
            named.push((format!("{base}/{file}"), runtime::ServerFile { certificate, pem: Some(bytes.clone()) }));
        }
        if let Some(tls) = &cluster.key.tls {
            if let Verification::Required { ca: CaSource::File(path), .. } = &tls.verify {
                named.push((path.to_string(), runtime::ServerFile { certificate: false, pem: None }));
            }
        }
        named
    }

    /// The files written for these (relative), with their bytes.
    fn written(&self) -> Vec<(String, std::sync::Arc<[u8]>)> {
        [&self.ca_file, &self.client_file].into_iter().flatten().cloned().collect()
    }
}

/// The file written for a secret's material in this rendering (its path and bytes, or why
/// there is none): thousands of clusters share a few CA secrets (or unions of them), whose
/// bytes are copied and digested once per rendering, not once per cluster. Keyed by the
/// secrets (one, or a union's list) and whether it is the client certificate.
type FileMemo<'m> = std::collections::HashMap<(&'m [SecretRef], bool), Result<(String, std::sync::Arc<[u8]>), String>>;

fn cluster_files<'m>(
    cluster: &'m Cluster,
    model: &Model,
    trust: &Trust,
    unusable: &UnusableFiles,
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
        let file = memo
            .entry((secrets, false))
            .or_insert_with(|| {
                let mut bytes = Vec::new();
                for secret in secrets {
                    bytes.extend_from_slice(model.ca_material(secret, trust)?.pem.as_bytes());
                }
                let path = format!("ca/{}.pem", portico_model::hex(&sha2::Sha256::digest(&bytes)));
                Ok((path, bytes.into()))
            })
            .clone()?;
        out.ca_file = Some(file);
    }
    if let Some(secret) = &tls.client_cert {
        let file = memo
            .entry((std::slice::from_ref(secret), true))
            .or_insert_with(|| {
                let client = model.client_material(secret, trust)?;
                let bytes = format!("{}{}", client.chain_pem, client.key_pem).into_bytes();
                let path = format!("client/{}.pem", portico_model::hex(&sha2::Sha256::digest(&bytes)));
                Ok((path, bytes.into()))
            })
            .clone()?;
        out.client_file = Some(file);
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
                (CaSource::Secret(_) | CaSource::Union(_), Some((file, _))) => {
                    write!(o, " ca-file {base}/{file}").unwrap()
                }
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
    if let Some((file, _)) = &files.client_file {
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

/// Render the model.
pub fn render(model: &Model, trust: &Trust, options: &Options) -> Rendered {
    render_over(model, trust, options, None, &UnusableFiles::new())
}

/// Render the model so that it can be applied over `running` (the rendering HAProxy runs)
/// through the runtime API where possible: clusters keep their backends while their
/// servers' options are the same (else take spares), endpoints keep their server slots,
/// and slot counts are kept while they fit. Every piece is rendered; the service keeps a
/// [`ConfigBuilder`] between changes instead, which renders only the pieces that changed.
/// Clusters that name a CA file in `unusable` are left out (their routes answer 503).
pub fn render_over(
    model: &Model,
    trust: &Trust,
    options: &Options,
    running: Option<&Runtime>,
    unusable: &UnusableFiles,
) -> Rendered {
    let mut builder = match running {
        None => ConfigBuilder::new(options),
        Some(running) => ConfigBuilder::over(options, running.clone()),
    };
    let step = builder.build(model, trust, 0, unusable, &|_| None);
    let mut changed = step.changed;
    let files = step
        .names
        .iter()
        .filter_map(|name| changed.remove(name).or_else(|| builder.file(name)).map(|bytes| (name.clone(), bytes)))
        .collect();
    Rendered { files, problems: step.problems, runtime: builder.runtime().clone() }
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

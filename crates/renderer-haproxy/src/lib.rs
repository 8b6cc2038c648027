//! The resolved model as `haproxy.cfg` (HAProxy 2.6) plus the files it references: CA
//! bundles named by their content hash, and the client certificate (chain and key in one
//! PEM, as HAProxy's `crt` wants).
//!
//! Pure: model and trust material in, files out. Every value written comes from a model
//! newtype (which has passed its grammar), an enum, a number, or a hex digest this module
//! re-checks; nothing is templated from a raw user string.
//!
//! Routing is decided once per request. The frontend keeps the request's original host in
//! `txn.host`, then ordered rules set `txn.route` to the first matching route (exact hosts,
//! then wildcards, then any; longest prefix first, the model's order). Everything else (a
//! Host rewrite, the weighted pick, `use_backend`) keys off `txn.route`, so a rewrite can
//! never change which route later rules see.

pub mod apply;
#[cfg(feature = "service")]
pub mod service;

use portico_model::{
    Alpn, CaSource, Cluster, HostMatch, Model, RouteAction, SecretRef, Servers, Timeout, TrustMaterial,
    UpstreamProtocol, Verification,
};
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
}

/// What rendering produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    /// Relative path → contents: `haproxy.cfg`, `ca/<sha256>.pem`, `client/<sha256>.pem`.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Routes rendered as 503 because the renderer could not honour them (trust material
    /// missing or not matching the model), each with the reason.
    pub problems: Vec<String>,
}

/// Trust material by secret.
pub type Trust = BTreeMap<SecretRef, TrustMaterial>;

/// The files a cluster needs, or why it cannot be rendered.
struct ClusterFiles {
    ca_file: Option<String>,
    client_file: Option<String>,
}

fn cluster_files(
    cluster: &Cluster,
    model: &Model,
    trust: &Trust,
    files: &mut BTreeMap<String, Vec<u8>>,
) -> Result<ClusterFiles, String> {
    let mut out = ClusterFiles { ca_file: None, client_file: None };
    let Some(tls) = &cluster.key.tls else { return Ok(out) };
    if let Verification::Required { ca: CaSource::Secret(secret), .. } = &tls.verify {
        let pem = model.ca_material(secret, trust)?;
        let path = format!("ca/{}.pem", pem.sha256);
        files.insert(path.clone(), pem.pem.clone().into_bytes());
        out.ca_file = Some(path);
    }
    if let Some(secret) = &tls.client_cert {
        let client = model.client_material(secret, trust)?;
        let path = format!("client/{}.pem", client.sha256);
        files.insert(path.clone(), format!("{}{}", client.chain_pem, client.key_pem).into_bytes());
        out.client_file = Some(path);
    }
    Ok(out)
}

fn address(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("ipv6@{}:{}", a.ip(), a.port()),
    }
}

/// The options of every `server` line of a cluster.
fn server_options(cluster: &Cluster, files: &ClusterFiles, base: &str) -> String {
    let mut o = String::new();
    if matches!(cluster.key.protocol, UpstreamProtocol::H2 | UpstreamProtocol::H2c) {
        o.push_str(" proto h2");
    }
    let Some(tls) = &cluster.key.tls else { return o };
    o.push_str(" ssl");
    match &tls.verify {
        Verification::None => o.push_str(" verify none"),
        Verification::Required { ca, subject_names } => {
            o.push_str(" verify required");
            match (ca, &files.ca_file) {
                (CaSource::File(path), _) => write!(o, " ca-file {path}").unwrap(),
                (CaSource::Secret(_), Some(file)) => write!(o, " ca-file {base}/{file}").unwrap(),
                (CaSource::Secret(_), None) => unreachable!("cluster_files succeeded, so the CA file exists"),
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

fn host_condition(host: &HostMatch) -> String {
    match host {
        HostMatch::Any => String::new(),
        HostMatch::Exact(name) => format!(" {{ var(txn.host) -m str {name} }}"),
        // One label, as the model (and Envoy) means it: `*.example.com` takes
        // `a.example.com`, not `a.b.example.com`. `[.]` rather than `\.`: HAProxy's parser
        // would eat the backslash. The suffix is a DNS name: letters, digits, '-' and '.'.
        HostMatch::Wildcard(suffix) => {
            format!(" {{ var(txn.host) -m reg ^[^.]+[.]{} }}", suffix.as_str().replace('.', "[.]") + "$")
        }
    }
}

/// Render the model.
pub fn render(model: &Model, trust: &Trust, options: &Options) -> Rendered {
    let base = options.base_dir.as_str();
    let mut files = BTreeMap::new();
    let mut problems = Vec::new();

    // Clusters that can be rendered, with their files; the others make their routes 503.
    let mut renderable: BTreeMap<&str, ClusterFiles> = BTreeMap::new();
    let mut unrenderable: BTreeMap<&str, String> = BTreeMap::new();
    for cluster in &model.clusters {
        match cluster_files(cluster, model, trust, &mut files) {
            Ok(f) => {
                renderable.insert(cluster.name.as_str(), f);
            }
            Err(why) => {
                unrenderable.insert(cluster.name.as_str(), why);
            }
        }
    }

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

    let mut route_id = 0usize;
    // Whether any route sets its own response timeout (then backends apply `txn.timeout`).
    let any_timeout =
        model.routes().any(|(_, _, r)| matches!(&r.action, RouteAction::Forward { timeout: Some(_), .. }));
    let main = portico_model::Listener { port: options.http_port, virtual_hosts: Vec::new() };
    let mut listeners: Vec<&portico_model::Listener> = model.listeners.iter().collect();
    if !listeners.iter().any(|l| l.port == options.http_port) {
        listeners.push(&main);
        listeners.sort_by_key(|l| l.port);
    }
    for listener in listeners {
        let mut select = String::new(); // route selection
        let mut actions = String::new(); // rewrites and weighted picks
        let mut uses = String::new(); // use_backend
        for vhost in &listener.virtual_hosts {
            for route in &vhost.routes {
                let id = format!("r{route_id}");
                route_id += 1;
                let path = if route.prefix.as_str() == "/" {
                    String::new()
                } else {
                    format!(" {{ path_beg {} }}", route.prefix)
                };
                writeln!(
                    select,
                    "    http-request set-var(txn.route) str({id}) if !{{ var(txn.route) -m found }}{}{path}",
                    host_condition(&vhost.host)
                )
                .unwrap();
                let this = format!("{{ var(txn.route) -m str {id} }}");
                let backends = match &route.action {
                    RouteAction::Reject => None,
                    RouteAction::BadGateway => {
                        writeln!(uses, "    use_backend {BAD_GATEWAY_BACKEND} if {this}").unwrap();
                        continue;
                    }
                    RouteAction::Forward { backends, host_rewrite, timeout } => {
                        let blocked: Vec<&String> =
                            backends.iter().filter_map(|b| unrenderable.get(b.cluster.as_str())).collect();
                        if let Some(why) = blocked.first() {
                            problems.push(format!(
                                "{} route {} {}: answers 503: {why}",
                                route.source, vhost.host, route.prefix
                            ));
                            None
                        } else {
                            if let Some(host) = host_rewrite {
                                writeln!(actions, "    http-request set-header Host {host} if {this}").unwrap();
                            }
                            // The default is `timeout server` in defaults (Timeout::DEFAULT_RESPONSE).
                            // A frontend cannot set a server timeout: it is carried in a
                            // variable to the backend, which applies it (see below).
                            if let Some(t) = timeout {
                                let ms = match t {
                                    Timeout::Millis(ms) => *ms,
                                    Timeout::Infinite => Timeout::MAX_MILLIS, // HAProxy has no "never"
                                };
                                writeln!(actions, "    http-request set-var(txn.timeout) int({ms}) if {this}").unwrap();
                            }
                            Some(backends)
                        }
                    }
                };
                match backends {
                    None => writeln!(uses, "    use_backend {REJECT_BACKEND} if {this}").unwrap(),
                    Some(backends) => {
                        let live: Vec<_> = backends.iter().filter(|b| b.weight > 0).collect();
                        let total: u64 = live.iter().map(|b| u64::from(b.weight)).sum();
                        if live.len() > 1 {
                            writeln!(actions, "    http-request set-var(txn.pick) rand({total}) if {this}").unwrap();
                        }
                        let mut below = 0u64;
                        for (i, b) in live.iter().enumerate() {
                            below += u64::from(b.weight);
                            if i + 1 < live.len() {
                                writeln!(
                                    uses,
                                    "    use_backend {} if {this} {{ var(txn.pick) -m int lt {below} }}",
                                    b.cluster
                                )
                                .unwrap();
                            } else {
                                writeln!(uses, "    use_backend {} if {this}", b.cluster).unwrap();
                            }
                        }
                    }
                }
            }
        }
        writeln!(cfg, "frontend listener_{}", listener.port).unwrap();
        let bind = match options.bind_address {
            IpAddr::V4(ip) => format!("{ip}:{}", listener.port),
            IpAddr::V6(ip) => format!("ipv6@{ip}:{}", listener.port),
        };
        writeln!(cfg, "    bind {bind}").unwrap();
        cfg.push_str("    http-request set-var(txn.host) req.hdr(host),field(1,:),lower\n");
        cfg.push_str(&select);
        cfg.push_str(&actions);
        cfg.push_str(&uses);
        writeln!(cfg, "    default_backend {NOT_FOUND_BACKEND}\n").unwrap();
    }

    for cluster in &model.clusters {
        let Some(cluster_files) = renderable.get(cluster.name.as_str()) else { continue };
        writeln!(cfg, "backend {}", cluster.name).unwrap();
        cfg.push_str("    balance roundrobin\n");
        if any_timeout {
            cfg.push_str("    http-request set-timeout server var(txn.timeout) if { var(txn.timeout) -m found }\n");
        }
        let opts = server_options(cluster, cluster_files, base);
        match &cluster.servers {
            Servers::Endpoints(list) => {
                for (i, addr) in list.iter().enumerate() {
                    writeln!(cfg, "    server s{} {}{opts}", i + 1, address(addr)).unwrap();
                }
            }
            Servers::Dns { host, port } => {
                writeln!(cfg, "    server s1 {host}:{port} init-addr last,libc,none{opts}").unwrap();
            }
        }
        cfg.push('\n');
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

    files.insert("haproxy.cfg".to_owned(), cfg.into_bytes());
    Rendered { files, problems }
}

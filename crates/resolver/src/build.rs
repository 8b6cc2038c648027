//! From resolved routes to the model: the route table (one owner per listener, host and
//! prefix), clusters with collision-free names, and the trust the clusters need.

use portico_model::names::quote;
use portico_model::{
    Cluster, ClusterKey, DnsName, HostMatch, Listener, Model, ObjectStatus, PathPrefix, Problem, ProblemType, Reason,
    Route, RouteAction, Servers, TrustRef, VirtualHost, WeightedCluster,
};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One service reference, resolved.
pub struct Upstream {
    pub key: ClusterKey,
    pub servers: Servers,
    pub ca_trust: Option<TrustRef>,
    pub client_cert: Option<TrustRef>,
}

pub enum PendingAction {
    Forward {
        upstreams: Vec<(Upstream, u32)>,
        host_rewrite: Option<DnsName>,
    },
    Reject,
    /// An include that cannot be followed: 502 (SPEC section 9).
    BadGateway,
}

impl PendingAction {
    /// Contour's weights: none given means equal shares; some given means the others get 0;
    /// all zero means equal shares again.
    pub fn forward(upstreams: Vec<(Upstream, Option<u32>)>, host_rewrite: Option<DnsName>) -> Self {
        let any_weight = upstreams.iter().any(|(_, w)| w.is_some());
        let mut weighted: Vec<(Upstream, u32)> =
            upstreams.into_iter().map(|(u, w)| (u, if any_weight { w.unwrap_or(0) } else { 1 })).collect();
        if weighted.iter().all(|(_, w)| *w == 0) {
            weighted.iter_mut().for_each(|(_, w)| *w = 1);
        }
        PendingAction::Forward { upstreams: weighted, host_rewrite }
    }
}

pub struct PendingRoute {
    pub listener: u16,
    pub host: HostMatch,
    pub prefix: PathPrefix,
    /// Index of the owning object's status.
    pub owner: usize,
    pub action: PendingAction,
}

/// Assemble the model. `routes` must come in a deterministic order: when two objects claim
/// the same listener, host and prefix, the first keeps it and the later gets an error.
/// Problems found here are added to `statuses[owner]`.
pub fn assemble(routes: Vec<PendingRoute>, statuses: &mut [ObjectStatus]) -> Model {
    let mut table: BTreeMap<(u16, HostMatch, PathPrefix), (usize, PendingAction)> = BTreeMap::new();
    for route in routes {
        let slot = (route.listener, route.host, route.prefix);
        if let Some((owner, _)) = table.get(&slot) {
            let (prefix, host, port) = (quote(slot.2.as_str()), &slot.1, slot.0);
            let message = if *owner == route.owner {
                format!("route {prefix}: host {host} has this prefix twice; the first route is used")
            } else {
                format!("route {prefix}: host {host} on port {port} is already routed by {}", statuses[*owner].object)
            };
            statuses[route.owner].problems.push(Problem::error(
                ProblemType::RouteError,
                Reason::DuplicateRoute,
                message,
            ));
            continue;
        }
        table.insert(slot, (route.owner, route.action));
    }

    // Intern clusters (one per distinct key), keeping routes' references as indices. The
    // lookup is by the key's SHA-256, which also names the cluster; a hit is confirmed by
    // comparing the keys, so distinct keys never merge even if their digests collided.
    let mut by_digest: DigestMap<Vec<usize>> = DigestMap::default();
    let mut scratch = Vec::with_capacity(256);
    let mut clusters: Vec<(ClusterKey, Servers, [u8; 32])> = Vec::new();
    let mut trust: BTreeSet<TrustRef> = BTreeSet::new();
    let mut client_cert: Option<TrustRef> = None;
    let mut routes: Vec<Placed> = Vec::with_capacity(table.len());
    for ((port, host, prefix), (owner, action)) in table {
        let forward = match action {
            PendingAction::Reject => None,
            PendingAction::BadGateway => Some(Forward::BadGateway),
            PendingAction::Forward { upstreams, host_rewrite } => {
                let mut backends: Vec<(usize, u32)> = Vec::with_capacity(upstreams.len());
                for (u, weight) in upstreams {
                    let digest = key_digest(&u.key, &mut scratch);
                    let same = by_digest.entry(digest).or_default();
                    let i = match same.iter().find(|&&i| clusters[i].0 == u.key) {
                        Some(&i) => i,
                        None => {
                            same.push(clusters.len());
                            clusters.push((u.key, u.servers, digest));
                            clusters.len() - 1
                        }
                    };
                    trust.extend(u.ca_trust);
                    if u.client_cert.is_some() {
                        client_cert = u.client_cert;
                    }
                    match backends.iter_mut().find(|(c, _)| *c == i) {
                        Some((_, w)) => *w += weight,
                        None => backends.push((i, weight)),
                    }
                }
                Some(Forward::To { backends, host_rewrite })
            }
        };
        routes.push(Placed { port, host, prefix, owner, forward });
    }
    let names = cluster_names(clusters.iter().map(|(k, _, d)| (k, d)));

    let mut listeners: BTreeMap<u16, BTreeMap<HostMatch, Vec<Route>>> = BTreeMap::new();
    for Placed { port, host, prefix, owner, forward } in routes {
        let action = match forward {
            None => RouteAction::Reject,
            Some(Forward::BadGateway) => RouteAction::BadGateway,
            Some(Forward::To { backends, host_rewrite }) => RouteAction::Forward {
                backends: backends
                    .into_iter()
                    .map(|(i, weight)| WeightedCluster { cluster: names[i].clone(), weight })
                    .collect(),
                host_rewrite,
            },
        };
        let source = statuses[owner].object.clone();
        listeners.entry(port).or_default().entry(host).or_default().push(Route { prefix, source, action });
    }
    let listeners = listeners
        .into_iter()
        .map(|(port, hosts)| {
            let mut virtual_hosts: Vec<VirtualHost> = hosts
                .into_iter()
                .map(|(host, mut routes)| {
                    routes.sort_by(|a, b| {
                        b.prefix.as_str().len().cmp(&a.prefix.as_str().len()).then(a.prefix.cmp(&b.prefix))
                    });
                    VirtualHost { host, routes }
                })
                .collect();
            virtual_hosts.sort_by(|a, b| host_rank(&a.host).cmp(&host_rank(&b.host)).then(a.host.cmp(&b.host)));
            Listener { port, virtual_hosts }
        })
        .collect();
    let mut clusters: Vec<Cluster> =
        clusters.into_iter().zip(names).map(|((key, servers, _), name)| Cluster { name, key, servers }).collect();
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    Model { listeners, clusters, trust: trust.into_iter().collect(), client_cert }
}

/// A route that won its slot, with its backends as cluster indices (`None`: it rejects with 503).
struct Placed {
    port: u16,
    host: HostMatch,
    prefix: PathPrefix,
    owner: usize,
    forward: Option<Forward>,
}

enum Forward {
    To { backends: Vec<(usize, u32)>, host_rewrite: Option<DnsName> },
    BadGateway,
}

/// Exact hosts first, then wildcards, then any: the order proxies should match in.
fn host_rank(host: &HostMatch) -> u8 {
    match host {
        HostMatch::Exact(_) => 0,
        HostMatch::Wildcard(_) => 1,
        HostMatch::Any => 2,
    }
}

/// SHA-256 of a cluster key's canonical encoding (bincode 2, standard config). The encoding
/// is derived from the key's serde implementation, so every field that shapes a cluster is
/// in it; it is compact and needs no string escaping. `buf` is scratch space, reused.
pub fn key_digest(key: &ClusterKey, buf: &mut Vec<u8>) -> [u8; 32] {
    buf.clear();
    bincode::serde::encode_into_std_write(key, buf, bincode::config::standard()).expect("a cluster key always encodes");
    Sha256::digest(buf.as_slice()).into()
}

/// The digests are uniformly random already: their first eight bytes are the hash.
#[derive(Default)]
struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8).take(1) {
            let mut first = [0u8; 8];
            first[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(first);
        }
    }
}

type DigestMap<V> = HashMap<[u8; 32], V, std::hash::BuildHasherDefault<DigestHasher>>;

/// `<namespace>_<service>_<port>_<hash>`, one per key, in the keys' order. The hash is 16
/// hex digits of the key's digest; if two different keys ever share a name, both get the
/// full 64 digits, so distinct keys never share a cluster. `_` cannot occur in Kubernetes
/// names, so the parts stay apart.
pub fn cluster_names<'a>(keys: impl Iterator<Item = (&'a ClusterKey, &'a [u8; 32])>) -> Vec<String> {
    let name = |key: &ClusterKey, hash: &str| format!("{}_{}_{}_{hash}", key.namespace, key.service, key.port);
    let full: Vec<(&ClusterKey, String)> = keys.map(|(k, d)| (k, portico_model::hex(d))).collect();
    let short: Vec<String> = full.iter().map(|(k, h)| name(k, &h[..16])).collect();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for n in &short {
        *count.entry(n.as_str()).or_default() += 1;
    }
    let collided: Vec<bool> = short.iter().map(|n| count[n.as_str()] > 1).collect();
    full.iter().zip(short.iter().zip(collided)).map(|((k, h), (s, c))| if c { name(k, h) } else { s.clone() }).collect()
}

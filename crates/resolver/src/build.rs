//! From resolved routes to the model: the route table (one owner per listener, host and
//! prefix), clusters with collision-free names, and the trust the clusters need.

use portico_model::names::quote;
use portico_model::{
    Cluster, ClusterKey, DnsName, HostMatch, Listener, Model, ObjectRef, PathPrefix, Problem, ProblemType, Reason,
    Route, RouteAction, Servers, TrustRef, VirtualHost, WeightedCluster,
};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// One service reference, resolved.
pub struct Upstream {
    pub key: ClusterKey,
    pub servers: Servers,
    pub ca_trust: Option<TrustRef>,
    pub client_cert: Option<TrustRef>,
}

pub enum PendingAction {
    Forward { upstreams: Vec<(Upstream, u32)>, host_rewrite: Option<DnsName> },
    Reject,
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
    pub source: ObjectRef,
    pub action: PendingAction,
}

/// Assemble the model. `routes` must come in a deterministic order: when two objects claim
/// the same listener, host and prefix, the first keeps it and the later gets an error.
pub fn assemble(routes: Vec<PendingRoute>, problems: &mut BTreeMap<ObjectRef, Vec<Problem>>) -> Model {
    let mut table: BTreeMap<(u16, HostMatch, PathPrefix), (ObjectRef, PendingAction)> = BTreeMap::new();
    for route in routes {
        let slot = (route.listener, route.host, route.prefix);
        if let Some((owner, _)) = table.get(&slot) {
            if owner != &route.source {
                let message = format!(
                    "route {}: host {} on port {} is already routed by {owner}",
                    quote(slot.2.as_str()),
                    slot.1,
                    slot.0
                );
                problems.entry(route.source).or_default().push(Problem::error(
                    ProblemType::RouteError,
                    Reason::DuplicateRoute,
                    message,
                ));
            } else {
                problems.entry(route.source).or_default().push(Problem::error(
                    ProblemType::RouteError,
                    Reason::DuplicateRoute,
                    format!(
                        "route {}: host {} has this prefix twice; the first route is used",
                        quote(slot.2.as_str()),
                        slot.1
                    ),
                ));
            }
            continue;
        }
        table.insert(slot, (route.source, route.action));
    }

    // Clusters and their names.
    let mut clusters: BTreeMap<ClusterKey, Servers> = BTreeMap::new();
    let mut trust: BTreeSet<TrustRef> = BTreeSet::new();
    let mut client_cert: Option<TrustRef> = None;
    for (_, action) in table.values() {
        if let PendingAction::Forward { upstreams, .. } = action {
            for (u, _) in upstreams {
                clusters.entry(u.key.clone()).or_insert_with(|| u.servers.clone());
                trust.extend(u.ca_trust.clone());
                if u.client_cert.is_some() {
                    client_cert.clone_from(&u.client_cert);
                }
            }
        }
    }
    let names = cluster_names(clusters.keys());

    let mut listeners: BTreeMap<u16, BTreeMap<HostMatch, Vec<Route>>> = BTreeMap::new();
    for ((port, host, prefix), (source, action)) in table {
        let action = match action {
            PendingAction::Reject => RouteAction::Reject,
            PendingAction::Forward { upstreams, host_rewrite } => {
                let mut backends: Vec<WeightedCluster> = Vec::new();
                for (u, weight) in upstreams {
                    let cluster = names[&u.key].clone();
                    match backends.iter_mut().find(|b| b.cluster == cluster) {
                        Some(b) => b.weight += weight,
                        None => backends.push(WeightedCluster { cluster, weight }),
                    }
                }
                RouteAction::Forward { backends, host_rewrite }
            }
        };
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
        clusters.into_iter().map(|(key, servers)| Cluster { name: names[&key].clone(), key, servers }).collect();
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    Model { listeners, clusters, trust: trust.into_iter().collect(), client_cert }
}

/// Exact hosts first, then wildcards, then any: the order proxies should match in.
fn host_rank(host: &HostMatch) -> u8 {
    match host {
        HostMatch::Exact(_) => 0,
        HostMatch::Wildcard(_) => 1,
        HostMatch::Any => 2,
    }
}

/// Hex SHA-256 of a cluster key's canonical JSON.
pub fn key_hash(key: &ClusterKey) -> String {
    let json = serde_json::to_vec(key).expect("a cluster key always serializes");
    portico_model::hex(&Sha256::digest(json))
}

/// `<namespace>_<service>_<port>_<hash>`. The hash is 16 hex digits of the key's SHA-256;
/// if two different keys ever share a name, both get the full 64 digits, so distinct keys
/// never share a cluster. `_` cannot occur in Kubernetes names, so the parts stay apart.
pub fn cluster_names<'a>(keys: impl Iterator<Item = &'a ClusterKey>) -> BTreeMap<ClusterKey, String> {
    let name = |key: &ClusterKey, hash: &str| format!("{}_{}_{}_{hash}", key.namespace, key.service, key.port);
    let hashed: Vec<(&ClusterKey, String)> = keys.map(|k| (k, key_hash(k))).collect();
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for (key, hash) in &hashed {
        *count.entry(name(key, &hash[..16])).or_default() += 1;
    }
    hashed
        .into_iter()
        .map(|(key, hash)| {
            let short = name(key, &hash[..16]);
            let chosen = if count[&short] > 1 { name(key, &hash) } else { short };
            (key.clone(), chosen)
        })
        .collect()
}

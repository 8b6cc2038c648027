//! From resolved routes to the model: the route table (one owner per listener, host and
//! prefix, kept across rebuilds), clusters with collision-free names, and the trust the
//! clusters need.

use portico_model::names::quote;
use portico_model::{
    host_rank, Cluster, ClusterKey, ClusterName, DnsName, HostMatch, Listener, Model, ModelDelta, ObjectRef,
    PathPrefix, PieceId, Problem, ProblemType, Reason, Route, RouteAction, Servers, ServingTls, Timeout, TrustRef,
    VirtualHost, WeightedCluster,
};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One service reference, resolved.
#[derive(Clone)]
pub struct Upstream {
    pub key: ClusterKey,
    pub servers: Servers,
    /// The CA bundles the cluster verifies against (several for a union).
    pub ca_trust: Vec<TrustRef>,
    pub client_cert: Option<TrustRef>,
}

#[derive(Clone)]
pub enum PendingAction {
    Forward {
        upstreams: Vec<(Upstream, u32)>,
        host_rewrite: Option<DnsName>,
        timeout: Option<Timeout>,
        idle_timeout: Option<Timeout>,
    },
    Reject,
    /// An include that cannot be followed: 502 (SPEC section 9).
    BadGateway,
    /// Plain HTTP for a host served over HTTPS: 301 to this port (SPEC section 8).
    RedirectHttps {
        port: u16,
    },
}

impl PendingAction {
    /// Contour's weights: none given means equal shares; some given means the others get 0;
    /// all zero means equal shares again.
    pub fn forward(
        upstreams: Vec<(Upstream, Option<u32>)>,
        host_rewrite: Option<DnsName>,
        timeout: Option<Timeout>,
        idle_timeout: Option<Timeout>,
    ) -> Self {
        let any_weight = upstreams.iter().any(|(_, w)| w.is_some());
        let mut weighted: Vec<(Upstream, u32)> =
            upstreams.into_iter().map(|(u, w)| (u, if any_weight { w.unwrap_or(0) } else { 1 })).collect();
        if weighted.iter().all(|(_, w)| *w == 0) {
            weighted.iter_mut().for_each(|(_, w)| *w = 1);
        }
        PendingAction::Forward { upstreams: weighted, host_rewrite, timeout, idle_timeout }
    }
}

#[derive(Clone)]
pub struct PendingRoute {
    pub listener: u16,
    pub host: HostMatch,
    pub prefix: PathPrefix,
    /// The path must equal `prefix` (see `Route::exact`).
    pub exact: bool,
    /// The object that wrote the route (its status gets the route's problems).
    pub owner: ObjectRef,
    pub action: PendingAction,
    /// On the HTTPS listener: the certificate of the route's host. The virtual host
    /// serves the certificate of its first claim in conflict order.
    pub tls: Option<ServingTls>,
}

/// A small map kept as a sorted vector: most slots have one claim and most owners a few,
/// where a `BTreeMap` would allocate a node of eleven entries for each.
#[derive(Clone, Debug)]
pub struct VecMap<K, V>(Vec<(K, V)>);

impl<K: Ord, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap(Vec::new())
    }
}

impl<K: Ord, V> VecMap<K, V> {
    pub fn insert(&mut self, key: K, value: V) {
        match self.0.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (key, value)),
        }
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let i = self.0.binary_search_by(|(k, _)| k.cmp(key)).ok()?;
        Some(self.0.remove(i).1)
    }

    pub fn first(&self) -> Option<(&K, &V)> {
        self.0.first().map(|(k, v)| (k, v))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A listener, host and prefix: what one route occupies.
/// A listener, host, path and whether the path is exact: what one route occupies.
pub type Slot = (u16, HostMatch, PathPrefix, bool);

/// Where a claim stands in the order conflicts are decided in: HTTPProxy units before
/// Voyager Ingresses, each by namespace and name (`UnitKey`'s order), then the claim's
/// place within its unit. The first claim of a slot keeps it.
pub type Order<U> = (U, u32);

/// What a route does, with its clusters named by key.
#[derive(Clone, Debug)]
enum Claimed {
    Forward {
        backends: Vec<(ClusterId, u32)>,
        host_rewrite: Option<DnsName>,
        timeout: Option<Timeout>,
        idle_timeout: Option<Timeout>,
        trust: Vec<TrustRef>,
        client_cert: Option<TrustRef>,
    },
    Reject,
    BadGateway,
    RedirectHttps {
        port: u16,
    },
}

#[derive(Clone, Debug)]
struct Claim {
    owner: ObjectRef,
    action: Claimed,
    tls: Option<ServingTls>,
}

/// A cluster key's digest and name, computed once per key while any claim uses it.
#[derive(Clone, Debug)]
struct Interned {
    key: ClusterKey,
    digest: [u8; 32],
    short: ClusterName,
    servers: Servers,
    claims: usize,
}

/// The route table, kept across rebuilds: every claim of every slot in conflict order,
/// and the clusters the claims use. A unit's claims are replaced as a whole
/// (`replace`); the model is read off the winners (`model`). Full and incremental
/// resolution both go through it, so they cannot disagree on how a table is assembled.
#[derive(Clone, Debug)]
pub struct Table<U: Ord + Clone + std::hash::Hash> {
    slots: BTreeMap<Slot, VecMap<Order<U>, Claim>>,
    by_unit: HashMap<U, Vec<(Slot, u32)>>,
    /// Each owner's claims, in conflict order.
    by_owner: HashMap<ObjectRef, VecMap<Order<U>, Slot>>,
    /// Cluster keys by id, and their ids: claims name clusters by id, so the model is
    /// read off without hashing or comparing keys.
    ids: HashMap<ClusterKey, ClusterId>,
    clusters: Vec<Option<Interned>>,
    free: Vec<ClusterId>,
    scratch: Vec<u8>,
    /// What changed since the model was last read (`delta`, `model_read`).
    changes: TableChanges,
}

/// How many winning claims (the first of their slot) name each cluster: a cluster is in the
/// model while its count is above zero. And what changed since the model was last read.
#[derive(Clone, Debug, Default)]
struct TableChanges {
    won: Vec<u32>,
    /// Short names of the clusters in the model, with how many clusters have each: two with
    /// one name both get their full digest (`names_of`), which a delta does not follow.
    shorts: HashMap<ClusterName, u32>,
    colliding: usize,
    /// A collision was seen since the last whole read: the next read is whole.
    collided: bool,
    hosts: BTreeSet<(u16, HostMatch)>,
    clusters: BTreeSet<ClusterId>,
    /// Clusters that left the model, by the name they had there.
    gone: BTreeSet<ClusterName>,
}

/// A cluster key's place in the table.
type ClusterId = u32;

impl<U: Ord + Clone + std::hash::Hash> Default for Table<U> {
    fn default() -> Self {
        Table {
            slots: BTreeMap::new(),
            by_unit: HashMap::new(),
            by_owner: HashMap::new(),
            ids: HashMap::new(),
            clusters: Vec::new(),
            free: Vec::new(),
            scratch: Vec::new(),
            changes: TableChanges::default(),
        }
    }
}

impl<U: Ord + Clone + std::hash::Hash> Table<U> {
    /// Replace the claims of `unit` with `routes` (none: the unit is gone). Returns the
    /// slots whose claims changed, old and new.
    pub fn replace(&mut self, unit: &U, routes: Vec<PendingRoute>) -> Vec<Slot> {
        // The slots this can change: their winners' clusters leave the count first, and
        // the winners afterwards enter it again.
        let mut affected: BTreeSet<Slot> =
            self.by_unit.get(unit).into_iter().flatten().map(|(slot, _)| slot.clone()).collect();
        affected.extend(routes.iter().map(|r| (r.listener, r.host.clone(), r.prefix.clone(), r.exact)));
        for slot in &affected {
            self.count_winner(slot, false);
            self.changes.hosts.insert((slot.0, slot.1.clone()));
        }
        let touched = self.replace_claims(unit, routes);
        for slot in &affected {
            self.count_winner(slot, true);
        }
        touched
    }

    /// Count the clusters of `slot`'s winner in (`enter`) or out of the model.
    fn count_winner(&mut self, slot: &Slot, enter: bool) {
        let Some(Claimed::Forward { backends, .. }) =
            self.slots.get(slot).and_then(|c| c.first()).map(|(_, w)| &w.action)
        else {
            return;
        };
        for (id, _) in backends {
            let id = *id;
            let i = id as usize;
            let changes = &mut self.changes;
            if changes.won.len() <= i {
                changes.won.resize(i + 1, 0);
            }
            let short = &self.clusters[i].as_ref().expect("a claimed cluster is interned").short;
            match (enter, changes.won[i]) {
                (true, n) => {
                    changes.won[i] = n + 1;
                    if n == 0 {
                        let count = changes.shorts.entry(short.clone()).or_default();
                        *count += 1;
                        if *count == 2 {
                            changes.colliding += 1;
                            changes.collided = true;
                        }
                    }
                }
                (false, n) => {
                    changes.won[i] = n - 1;
                    if n == 1 {
                        changes.gone.insert(short.clone());
                        let count = changes.shorts.get_mut(short).expect("counted when it entered");
                        *count -= 1;
                        if *count == 1 {
                            changes.colliding -= 1;
                        } else if *count == 0 {
                            changes.shorts.remove(short);
                        }
                    }
                }
            }
            changes.clusters.insert(id);
        }
    }

    /// `replace` without counting winners.
    fn replace_claims(&mut self, unit: &U, routes: Vec<PendingRoute>) -> Vec<Slot> {
        let mut touched = Vec::new();
        for (slot, seq) in self.by_unit.remove(unit).unwrap_or_default() {
            let Some(claims) = self.slots.get_mut(&slot) else { continue };
            let order = (unit.clone(), seq);
            let removed = claims.remove(&order);
            if claims.is_empty() {
                self.slots.remove(&slot);
            }
            if let Some(claim) = removed {
                if let Some(mine) = self.by_owner.get_mut(&claim.owner) {
                    mine.remove(&order);
                    if mine.is_empty() {
                        self.by_owner.remove(&claim.owner);
                    }
                }
                if let Claimed::Forward { backends, .. } = &claim.action {
                    for (id, _) in backends {
                        self.release(*id);
                    }
                }
            }
            touched.push(slot);
        }
        let mut mine = Vec::with_capacity(routes.len());
        for (seq, route) in routes.into_iter().enumerate() {
            let seq = seq as u32;
            let action = match route.action {
                PendingAction::Reject => Claimed::Reject,
                PendingAction::BadGateway => Claimed::BadGateway,
                PendingAction::RedirectHttps { port } => Claimed::RedirectHttps { port },
                PendingAction::Forward { upstreams, host_rewrite, timeout, idle_timeout } => {
                    let mut backends: Vec<(ClusterId, u32)> = Vec::with_capacity(upstreams.len());
                    let mut trust = Vec::new();
                    let mut client_cert = None;
                    for (u, weight) in upstreams {
                        trust.extend(u.ca_trust);
                        if u.client_cert.is_some() {
                            client_cert = u.client_cert;
                        }
                        let id = self.intern(u.key, u.servers);
                        match backends.iter_mut().find(|(k, _)| *k == id) {
                            Some((_, w)) => {
                                *w += weight;
                                self.release(id); // one claim holds a cluster once
                            }
                            None => backends.push((id, weight)),
                        }
                    }
                    Claimed::Forward { backends, host_rewrite, timeout, idle_timeout, trust, client_cert }
                }
            };
            let slot = (route.listener, route.host, route.prefix, route.exact);
            self.by_owner.entry(route.owner.clone()).or_default().insert((unit.clone(), seq), slot.clone());
            self.slots
                .entry(slot.clone())
                .or_default()
                .insert((unit.clone(), seq), Claim { owner: route.owner, action, tls: route.tls });
            mine.push((slot.clone(), seq));
            touched.push(slot);
        }
        if !mine.is_empty() {
            self.by_unit.insert(unit.clone(), mine);
        }
        touched
    }

    /// The id of `key`, interned with one more claim. Every claim of a key computes its
    /// servers from the same snapshot: the newest is right for all of them.
    fn intern(&mut self, key: ClusterKey, servers: Servers) -> ClusterId {
        if let Some(&id) = self.ids.get(&key) {
            let c = self.clusters[id as usize].as_mut().expect("interned");
            if c.servers != servers {
                c.servers = servers;
                self.changes.clusters.insert(id);
            }
            c.claims += 1;
            return id;
        }
        let digest = key_digest(&key, &mut self.scratch);
        let short = short_cluster_name(&key, &digest);
        let interned = Interned { key: key.clone(), digest, short, servers, claims: 1 };
        let id = match self.free.pop() {
            Some(id) => {
                self.clusters[id as usize] = Some(interned);
                id
            }
            None => {
                self.clusters.push(Some(interned));
                (self.clusters.len() - 1) as ClusterId
            }
        };
        self.ids.insert(key, id);
        id
    }

    /// Drop one claim of a cluster.
    fn release(&mut self, id: ClusterId) {
        let slot = &mut self.clusters[id as usize];
        if let Some(c) = slot.as_mut() {
            c.claims -= 1;
            if c.claims == 0 {
                let interned = slot.take().expect("present");
                self.ids.remove(&interned.key);
                self.free.push(id);
            }
        }
    }

    /// Who claims `slot`.
    pub fn claimants(&self, slot: &Slot) -> Vec<ObjectRef> {
        self.slots.get(slot).into_iter().flat_map(|c| c.iter().map(|(_, c)| c.owner.clone())).collect()
    }

    /// The `DuplicateRoute` errors of `owner`'s claims that an earlier claim beat, in
    /// conflict order.
    pub fn lost_by(&self, owner: &ObjectRef) -> Vec<(Order<U>, Problem)> {
        let mut out = Vec::new();
        for (order, slot) in self.by_owner.get(owner).into_iter().flat_map(VecMap::iter) {
            let Some(claims) = self.slots.get(slot) else { continue };
            let Some((first, winner)) = claims.first() else { continue };
            if first == order {
                continue;
            }
            let (port, host, prefix, exact) = slot;
            let quoted = if *exact { format!("{} (exact)", quote(prefix.as_str())) } else { quote(prefix.as_str()) };
            let message = if &winner.owner == owner {
                format!("route {quoted}: host {host} has this prefix twice; the first route is used")
            } else {
                format!("route {quoted}: host {host} on port {port} is already routed by {}", winner.owner)
            };
            out.push((order.clone(), Problem::error(ProblemType::RouteError, Reason::DuplicateRoute, message)));
        }
        out
    }

    /// The model was read whole (and published): what changed is counted from here.
    pub fn model_read(&mut self) {
        let changes = &mut self.changes;
        changes.hosts.clear();
        changes.clusters.clear();
        changes.gone.clear();
        changes.collided = changes.colliding > 0;
    }

    /// What changed in the model since it was last read (`model_read` or a `delta`), as
    /// pieces; `None` when only a whole read is right (two clusters of the model shared a
    /// short name since, and names of clusters no change touched may have moved).
    pub fn delta(&mut self) -> Option<ModelDelta> {
        if self.changes.collided {
            return None;
        }
        let hosts = std::mem::take(&mut self.changes.hosts);
        let mut delta = ModelDelta::default();
        for (port, host) in hosts {
            match self.virtual_host(port, &host) {
                Some(vhost) => delta.virtual_hosts.push((port, vhost)),
                None => delta.gone.push(PieceId::VirtualHost(port, host)),
            }
        }
        let mut gone = std::mem::take(&mut self.changes.gone);
        for id in std::mem::take(&mut self.changes.clusters) {
            let i = id as usize;
            if self.changes.won.get(i).copied().unwrap_or(0) == 0 {
                continue;
            }
            let interned = self.clusters[i].as_ref().expect("a cluster in the model is interned");
            gone.remove(&interned.short);
            delta.clusters.push(Cluster {
                name: interned.short.clone(),
                key: interned.key.clone(),
                servers: interned.servers.clone(),
            });
        }
        delta.gone.extend(gone.into_iter().map(PieceId::Cluster));
        let (trust, client_certs) = self.trust();
        (delta.trust, delta.client_certs) = (trust, client_certs);
        Some(delta)
    }

    /// The trust references of the winning claims: CA bundles and client certificates.
    fn trust(&self) -> (Vec<TrustRef>, Vec<TrustRef>) {
        let mut trust: BTreeSet<&TrustRef> = BTreeSet::new();
        let mut client_certs: BTreeSet<&TrustRef> = BTreeSet::new();
        for claims in self.slots.values() {
            let Some((_, winner)) = claims.first() else { continue };
            if let Claimed::Forward { trust: t, client_cert: c, .. } = &winner.action {
                trust.extend(t.iter());
                client_certs.extend(c.iter());
            }
        }
        (trust.into_iter().cloned().collect(), client_certs.into_iter().cloned().collect())
    }

    /// The virtual host `host` of listener `port` as the model has it (clusters by their
    /// short names: no collision, see `delta`), or `None` when no route is there.
    fn virtual_host(&self, port: u16, host: &HostMatch) -> Option<VirtualHost> {
        let start: Slot = (port, host.clone(), PathPrefix::root(), false);
        let name =
            |id: &ClusterId| self.clusters[*id as usize].as_ref().expect("a claimed cluster is interned").short.clone();
        let mut hosts: Hosts<'_, U> = BTreeMap::new();
        for (slot, claims) in self.slots.range(start..) {
            if slot.0 != port || &slot.1 != host {
                break;
            }
            let Some((order, winner)) = claims.first() else { continue };
            add_route(&mut hosts, slot, order, winner, &name);
        }
        hosts.into_iter().next().map(|(host, value)| virtual_host_of(host, value))
    }

    /// The model: each slot's first claim, clusters named collision-free.
    pub fn model(&self) -> Model {
        // The clusters winners use, and their names (the full digest where two short
        // names collide, so different keys never share a cluster).
        let mut used = vec![false; self.clusters.len()];
        for claims in self.slots.values() {
            let Some((_, winner)) = claims.first() else { continue };
            if let Claimed::Forward { backends, .. } = &winner.action {
                for (id, _) in backends {
                    used[*id as usize] = true;
                }
            }
        }
        let (trust, client_certs) = self.trust();
        let interned = |id: usize| self.clusters[id].as_ref().expect("a claimed cluster is interned");
        let used_ids: Vec<usize> = (0..used.len()).filter(|&i| used[i]).collect();
        let mut names: Vec<Option<ClusterName>> = vec![None; used.len()];
        let named = names_of(used_ids.iter().map(|&id| {
            let i = interned(id);
            (&i.key, &i.digest, &i.short)
        }));
        for (id, name) in used_ids.into_iter().zip(named) {
            names[id] = Some(name);
        }
        let name = |id: &ClusterId| names[*id as usize].clone().expect("a used cluster is named");

        let mut listeners: BTreeMap<u16, Hosts<'_, U>> = BTreeMap::new();
        for (slot, claims) in &self.slots {
            let Some((order, winner)) = claims.first() else { continue };
            add_route(listeners.entry(slot.0).or_default(), slot, order, winner, &name);
        }
        let listeners = listeners
            .into_iter()
            .map(|(port, hosts)| {
                let mut virtual_hosts: Vec<VirtualHost> =
                    hosts.into_iter().map(|(host, value)| virtual_host_of(host, value)).collect();
                virtual_hosts.sort_by(|a, b| host_rank(&a.host).cmp(&host_rank(&b.host)).then(a.host.cmp(&b.host)));
                Listener { port, virtual_hosts }
            })
            .collect();
        let mut clusters: Vec<Cluster> = (0..used.len())
            .filter(|&id| used[id])
            .map(|id| {
                let i = interned(id);
                Cluster { name: name(&(id as ClusterId)), key: i.key.clone(), servers: i.servers.clone() }
            })
            .collect();
        clusters.sort_by(|a, b| a.name.cmp(&b.name));
        Model { listeners, clusters, trust, client_certs }
    }
}

/// A virtual host's routes, and its certificate: that of its earliest winning claim (in
/// conflict order) that has one.
type Hosts<'t, U> = BTreeMap<&'t HostMatch, (Vec<Route>, Option<(&'t Order<U>, &'t ServingTls)>)>;

/// Add `slot`'s winning claim to the routes of its host.
fn add_route<'t, U: Ord>(
    hosts: &mut Hosts<'t, U>,
    slot: &'t Slot,
    order: &'t Order<U>,
    winner: &'t Claim,
    name: &dyn Fn(&ClusterId) -> ClusterName,
) {
    let (_, host, prefix, exact) = slot;
    let action = match &winner.action {
        Claimed::Reject => RouteAction::Reject,
        Claimed::BadGateway => RouteAction::BadGateway,
        Claimed::RedirectHttps { port } => RouteAction::RedirectHttps { port: *port },
        Claimed::Forward { backends, host_rewrite, timeout, idle_timeout, .. } => RouteAction::Forward {
            backends: backends
                .iter()
                .map(|(id, weight)| WeightedCluster { cluster: name(id), weight: *weight })
                .collect(),
            host_rewrite: host_rewrite.clone(),
            timeout: *timeout,
            idle_timeout: *idle_timeout,
        },
    };
    let (routes, tls) = hosts.entry(host).or_default();
    routes.push(Route { prefix: prefix.clone(), exact: *exact, source: winner.owner.clone(), action });
    if let Some(mine) = &winner.tls {
        if tls.is_none_or(|(first, _)| order < first) {
            *tls = Some((order, mine));
        }
    }
}

/// A host's routes (in route order) and certificate, as a virtual host.
fn virtual_host_of<U>(
    host: &HostMatch,
    (mut routes, tls): (Vec<Route>, Option<(&Order<U>, &ServingTls)>),
) -> VirtualHost {
    routes.sort_by(portico_model::route_order);
    VirtualHost { host: host.clone(), tls: tls.map(|(_, t)| t.clone()), routes }
}

/// SHA-256 of a cluster key's canonical encoding (bincode 2, standard config). The encoding
/// is derived from the key's serde implementation, so every field that shapes a cluster is
/// in it; it is compact and needs no string escaping. `buf` is scratch space, reused.
pub fn key_digest(key: &ClusterKey, buf: &mut Vec<u8>) -> [u8; 32] {
    buf.clear();
    bincode::serde::encode_into_std_write(key, buf, bincode::config::standard()).expect("a cluster key always encodes");
    Sha256::digest(buf.as_slice()).into()
}

/// `<namespace>_<service>_<port>_<hash>`.
fn cluster_name(key: &ClusterKey, hash: &str) -> ClusterName {
    ClusterName::of(&key.namespace, &key.service, key.port, hash)
}

/// `<namespace>_<service>_<port>_<hash>`, one per key, in the keys' order. The hash is 16
/// hex digits of the key's digest; if two different keys ever share a name, both get the
/// full 64 digits, so distinct keys never share a cluster. `_` cannot occur in Kubernetes
/// names, so the parts stay apart.
pub fn cluster_names<'a>(keys: impl Iterator<Item = (&'a ClusterKey, &'a [u8; 32])>) -> Vec<ClusterName> {
    let keys: Vec<(&ClusterKey, &[u8; 32], ClusterName)> =
        keys.map(|(k, d)| (k, d, short_cluster_name(k, d))).collect();
    names_of(keys.iter().map(|(k, d, s)| (*k, *d, s)))
}

/// The name a key gets when no other key's short name is the same: 16 hex digits.
fn short_cluster_name(key: &ClusterKey, digest: &[u8; 32]) -> ClusterName {
    cluster_name(key, &portico_model::hex(&digest[..8]))
}

/// `cluster_names` for keys whose short names are at hand already (the route table keeps
/// them): the collision rule in one place.
fn names_of<'a>(clusters: impl Iterator<Item = (&'a ClusterKey, &'a [u8; 32], &'a ClusterName)>) -> Vec<ClusterName> {
    let clusters: Vec<_> = clusters.collect();
    let mut count: HashMap<&ClusterName, usize> = HashMap::new();
    for (_, _, short) in &clusters {
        *count.entry(short).or_default() += 1;
    }
    clusters
        .iter()
        .map(
            |(key, digest, short)| {
                if count[short] > 1 {
                    cluster_name(key, &portico_model::hex(*digest))
                } else {
                    (*short).clone()
                }
            },
        )
        .collect()
}

//! Snapshots rendered by piece: what renderer-envoy serves, made from the previous rendering
//! plus what changed. A cluster (with its load assignment) and a virtual host are rendered
//! and encoded once per content: each is kept with the digest of its model piece (from the
//! bus, `Follower::piece_digest`) and the trust it was rendered with, and reused while
//! those are equal. A route configuration is put together from its virtual hosts'
//! encodings (protobuf's repeated field is their concatenation), so a change to one host of
//! 10,000 encodes one host. The result equals `Snapshot::new(resources(...))`, byte for
//! byte (`tests::equals_a_full_rendering`).

use crate::ads::{Entry, Snapshot};
use crate::{
    any, any_host_on, blocked_cluster, cluster_resource, cluster_trust_digest, listener_for, listener_ports,
    load_assignment, route_config_name, scopes, secrets, virtual_host, Delivery, Options, Trust,
};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, ScopedRouteConfiguration};
use envoy_types::pb::envoy::config::{cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;
use portico_model::{ClusterName, HostMatch, Model, PieceId, Servers};
use prost::{Message, Name};
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A cluster as rendered: its resources, or why it cannot be served.
#[derive(Clone)]
enum RenderedCluster {
    Ready { cluster: Entry, load: Option<Entry> },
    Blocked,
}

/// What a virtual host was rendered from, its encoding, and its shard (`None` for the
/// port's fallback).
#[derive(Clone)]
struct RenderedHost {
    key: HostKey,
    encoded: Vec<u8>,
    problems: Vec<String>,
    shard: Option<u64>,
}

/// What a virtual host's rendering depends on: its piece, for a wildcard the any-host
/// piece too (whose routes it carries), and which of the clusters its routes name are
/// blocked and why (the only way trust reaches a virtual host; a cluster can also become
/// blocked with the trust unchanged: it names another secret, whose material is not at
/// hand).
#[derive(Clone, PartialEq, Eq)]
struct HostKey {
    piece: u128,
    any_host: Option<u128>,
    blocked: u64,
}

/// Which of the clusters a host's routes (and the any-host routes it carries) name are
/// blocked, and why: 0 when none is.
fn blocked_digest(
    vhost: &portico_model::VirtualHost,
    carried: Option<&portico_model::VirtualHost>,
    blocked: &BTreeMap<String, String>,
) -> u64 {
    if blocked.is_empty() {
        return 0;
    }
    let mut h = std::hash::DefaultHasher::new();
    for route in vhost.routes.iter().chain(carried.into_iter().flat_map(|v| &v.routes)) {
        if let portico_model::RouteAction::Forward { backends, .. } = &route.action {
            for b in backends {
                blocked.get(b.cluster.as_str()).hash(&mut h);
            }
        }
    }
    h.finish()
}

/// The renderings of the previous snapshot, by piece.
#[derive(Default)]
pub struct SnapshotBuilder {
    /// By cluster: the piece digest and the digest of the trust it read
    /// (`cluster_trust_digest`) it was rendered with, and the build that last used it
    /// (entries a build did not use are dropped after it).
    clusters: HashMap<ClusterName, (u128, u64, RenderedCluster, u64)>,
    /// By port, then host (looked up by reference: no key is made per host).
    hosts: HashMap<u16, HashMap<HostMatch, (RenderedHost, u64)>>,
    builds: u64,
    /// The snapshot's clusters and load assignments as of the last build, changed where
    /// clusters were rendered again or went; `maps_valid` is false after a build that had
    /// clusters without a digest (not kept, so their going would not be seen).
    cluster_map: Arc<BTreeMap<String, Entry>>,
    load_map: Arc<BTreeMap<String, Entry>>,
    maps_valid: bool,
    /// The snapshot generations of the clusters, load assignments and secrets
    /// (`Snapshot::generations`): renewed when their entries change.
    generations: BTreeMap<String, u64>,
    /// The clusters whose trust material is not at hand, as of the trust key beside: kept
    /// while it is the same (only clusters rendered again are looked at again).
    blocked: Option<(u64, BTreeMap<String, String>)>,
    /// Each route configuration (a port's fallback or a shard), with a digest of the
    /// hosts' keys it was made of, and the build that last used it.
    routes: HashMap<String, (u64, Entry, u64)>,
    /// The scopes of the exact hosts and of each port's fallback, made again only when a
    /// port or an exact host comes or goes (each scope's entry is kept while its host is),
    /// and the ports they were made for.
    scope_map: Arc<BTreeMap<String, Entry>>,
    scope_ports: Option<Vec<u16>>,
    /// The SDS secrets, with a digest of what they were made from.
    secrets: Option<(u64, Arc<BTreeMap<String, Entry>>)>,
}

/// How many pieces a build rendered, and how many it reused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reuse {
    pub rendered: usize,
    pub reused: usize,
}

impl SnapshotBuilder {
    pub fn new() -> SnapshotBuilder {
        SnapshotBuilder::default()
    }

    /// The snapshot of `model` as `version`, and the problems (routes answering 503).
    /// `digest` gives a piece's content digest; a piece without one is rendered afresh.
    /// `trust_revision` must change whenever `trust` does.
    pub fn build(
        &mut self,
        version: String,
        model: &Model,
        trust: &Trust,
        trust_revision: u64,
        options: &Options,
        digest: impl Fn(&PieceId) -> Option<u128>,
    ) -> (Snapshot, Vec<String>, Reuse) {
        let mut reuse = Reuse::default();
        // The trust a rendering depends on: the material, and the model's list of it.
        let rest = digest(&PieceId::Rest);
        let trust_key = {
            let mut h = std::hash::DefaultHasher::new();
            trust_revision.hash(&mut h);
            rest.hash(&mut h);
            h.finish()
        };
        let cacheable = |d: Option<u128>| d.is_some() && rest.is_some();

        // Clusters and their load assignments.
        self.builds += 1;
        let build = self.builds;
        let digests: Vec<Option<u128>> =
            model.clusters.iter().map(|c| digest(&PieceId::Cluster(c.name.clone()))).collect();
        // Which clusters' trust material is missing: kept, and looked at again for each
        // cluster rendered again (below). When the trust moved, each cluster's own trust
        // digest says whether it must be (a rotated CA: the clusters verifying with it).
        let trust_moved = self.blocked.as_ref().map(|(key, _)| *key) != Some(trust_key);
        let mut blocked = match self.blocked.take() {
            Some((_, blocked)) if rest.is_some() => blocked,
            _ => BTreeMap::new(),
        };
        let all_cacheable = rest.is_some() && digests.iter().all(Option::is_some);
        if !(all_cacheable && self.maps_valid) {
            self.cluster_map = Default::default();
            self.load_map = Default::default();
        }
        let patch = self.maps_valid && all_cacheable;
        // Whether the clusters' and the load assignments' entries changed.
        let (mut clusters_changed, mut loads_changed) = (!patch, !patch);
        let (cluster_map, load_map) = (&mut self.cluster_map, &mut self.load_map);
        // An entry set or removed only when it differs: the maps are shared with the
        // snapshots served (copied on the first write), and a type whose map is untouched
        // is not copied at all.
        fn set(map: &mut Arc<BTreeMap<String, Entry>>, name: &ClusterName, entry: Option<&Entry>) -> bool {
            let same = map.get(name.as_str()).map(|e| &e.version) == entry.map(|e| &e.version);
            if !same {
                match entry {
                    Some(entry) => Arc::make_mut(map).insert(name.to_string(), entry.clone()),
                    None => Arc::make_mut(map).remove(name.as_str()),
                };
            }
            !same
        }
        let mut put = |name: &ClusterName, rendered: &RenderedCluster| match rendered {
            RenderedCluster::Ready { cluster, load } => {
                clusters_changed |= set(cluster_map, name, Some(cluster));
                loads_changed |= set(load_map, name, load.as_ref());
            }
            RenderedCluster::Blocked => {
                clusters_changed |= set(cluster_map, name, None);
                loads_changed |= set(load_map, name, None);
            }
        };
        for (c, d) in model.clusters.iter().zip(digests) {
            let fresh = |reuse: &mut Reuse, blocked: &mut BTreeMap<String, String>| {
                reuse.rendered += 1;
                let why = blocked_cluster(c, model, trust);
                let is_blocked = why.is_some();
                match why {
                    Some(why) => blocked.insert(c.name.to_string(), why),
                    None => blocked.remove(c.name.as_str()),
                };
                if is_blocked {
                    RenderedCluster::Blocked
                } else {
                    RenderedCluster::Ready {
                        cluster: Entry::of(any(&cluster_resource(c, model, Delivery::Ads))),
                        load: matches!(c.servers, Servers::Endpoints(_)).then(|| Entry::of(any(&load_assignment(c)))),
                    }
                }
            };
            let trust_of = || cluster_trust_digest(c, model, trust);
            match (d.filter(|_| cacheable(d)), self.clusters.get_mut(&c.name)) {
                (Some(d), Some(cached)) if cached.0 == d && (!trust_moved || cached.1 == trust_of()) => {
                    reuse.reused += 1;
                    cached.3 = build;
                    if !patch {
                        put(&c.name, &cached.2);
                    }
                }
                (Some(d), Some(cached)) => {
                    *cached = (d, trust_of(), fresh(&mut reuse, &mut blocked), build);
                    put(&c.name, &cached.2);
                }
                (Some(d), None) => {
                    let rendered = fresh(&mut reuse, &mut blocked);
                    put(&c.name, &rendered);
                    self.clusters.insert(c.name.clone(), (d, trust_of(), rendered, build));
                }
                (None, _) => {
                    // No digest: rendered, not kept.
                    put(&c.name, &fresh(&mut reuse, &mut blocked));
                }
            }
        }
        self.clusters.retain(|name, cached| {
            let kept = cached.3 == build;
            if !kept {
                clusters_changed |= set(cluster_map, name, None);
                loads_changed |= set(load_map, name, None);
            }
            kept
        });
        self.maps_valid = all_cacheable;
        let (cluster_entries, loads) = (self.cluster_map.clone(), self.load_map.clone());

        // Route configurations: per port, its fallback and its shards of exact hosts, each
        // from its virtual hosts' encodings; and the scopes that point at them.
        let mut problems = Vec::new();
        let (mut route_configurations, mut listeners) = (BTreeMap::new(), BTreeMap::new());
        let tails = [false, true].map(|exact| scopes::tail(exact).encode_to_vec());
        // Whether the scopes must be made again: a port or an exact host came or went.
        let ports = listener_ports(model, options);
        let mut scopes_dirty = self.scope_ports.as_ref() != Some(&ports);
        for &port in &ports {
            let any_host = any_host_on(model, port);
            let any_digest = any_host.and_then(|_| digest(&PieceId::VirtualHost(port, HostMatch::Any)));
            // Per host in order: its key in the cache, or its place among the renderings not kept.
            let mut rendered_here: Vec<Result<&HostMatch, usize>> = Vec::new();
            // Per route configuration (0: the fallback, then the shards), the hosts' keys in
            // order (the same keys, the same configuration) and their places in `rendered_here`.
            let mut groups: Vec<Option<(std::hash::DefaultHasher, Vec<usize>)>> =
                (0..=scopes::SHARDS).map(|_| None).collect();
            groups[0] = Some(Default::default());
            let cache = self.hosts.entry(port).or_default();
            let mut uncached: Vec<RenderedHost> = Vec::new();
            for vhost in model.listeners.iter().filter(|l| l.port == port).flat_map(|l| &l.virtual_hosts) {
                let d = digest(&PieceId::VirtualHost(port, vhost.host.clone()));
                let carries_any = matches!(vhost.host, HostMatch::Wildcard(_)) && any_host.is_some();
                let key = HostKey {
                    piece: d.unwrap_or_default(),
                    any_host: if carries_any { any_digest } else { None },
                    blocked: blocked_digest(vhost, any_host.filter(|_| carries_any), &blocked),
                };
                let usable = cacheable(d) && (!carries_any || any_digest.is_some());
                let made_of = (&vhost.host, key.piece, key.any_host, key.blocked, usable);
                let exact = matches!(vhost.host, HostMatch::Exact(_));
                let hit = usable && cache.get(&vhost.host).is_some_and(|(cached, _)| cached.key == key);
                let shard = if hit {
                    reuse.reused += 1;
                    let cached = cache.get_mut(&vhost.host).expect("hit");
                    cached.1 = build;
                    rendered_here.push(Ok(&vhost.host));
                    cached.0.shard
                } else {
                    reuse.rendered += 1;
                    let mut host_problems = Vec::new();
                    let message = virtual_host(vhost, any_host, &blocked, &mut host_problems);
                    let shard = match &vhost.host {
                        HostMatch::Exact(name) => Some(scopes::shard_of(name)),
                        HostMatch::Wildcard(_) | HostMatch::Any => None,
                    };
                    let rendered =
                        RenderedHost { key, encoded: message.encode_to_vec(), problems: host_problems, shard };
                    if usable {
                        // A host new to the cache may be a new exact host: a new scope.
                        scopes_dirty |= cache.insert(vhost.host.clone(), (rendered, build)).is_none() && exact;
                        rendered_here.push(Ok(&vhost.host));
                    } else {
                        // Not kept: its coming and going would not be seen.
                        scopes_dirty |= exact;
                        uncached.push(rendered);
                        rendered_here.push(Err(uncached.len() - 1));
                    }
                    shard
                };
                let group = groups[shard.map_or(0, |s| s as usize + 1)].get_or_insert_with(Default::default);
                made_of.hash(&mut group.0);
                group.1.push(rendered_here.len() - 1);
            }
            let rendered_at = |which: &Result<&HostMatch, usize>| match which {
                Ok(host) => &cache[*host].0,
                Err(i) => &uncached[*i],
            };
            for which in &rendered_here {
                problems.extend(rendered_at(which).problems.iter().cloned());
            }
            for (index, group) in groups.into_iter().enumerate() {
                let Some((made_of, places)) = group else { continue };
                let shard = index.checked_sub(1).map(|s| s as u64);
                let name = match shard {
                    Some(shard) => scopes::shard_name(port, shard),
                    None => route_config_name(port),
                };
                let made_of = made_of.finish();
                let all_kept = places.iter().all(|i| rendered_here[*i].is_ok());
                let entry = match self.routes.get_mut(&name) {
                    Some((was, entry, used)) if *was == made_of && all_kept => {
                        *used = build;
                        entry.clone()
                    }
                    _ => {
                        let hosts: Vec<&[u8]> =
                            places.iter().map(|i| rendered_at(&rendered_here[*i]).encoded.as_slice()).collect();
                        let tail = &tails[usize::from(shard.is_some())];
                        let entry = Entry::of(route_configuration(&name, &hosts, tail));
                        self.routes.insert(name.clone(), (made_of, entry.clone(), build));
                        entry
                    }
                };
                route_configurations.insert(name, entry);
            }
            let listener = listener_for(model, trust, port, options.bind_address, Delivery::Ads, &mut problems);
            if let Some(listener) = listener {
                listeners.insert(listener.name.clone(), Entry::of(any(&listener)));
            }
        }
        self.routes.retain(|_, (_, _, used)| *used == build);
        for hosts in self.hosts.values_mut() {
            hosts.retain(|host, (_, used)| {
                let kept = *used == build;
                // An exact host gone: its scope goes.
                scopes_dirty |= !kept && matches!(host, HostMatch::Exact(_));
                kept
            });
        }
        self.hosts.retain(|_, hosts| !hosts.is_empty());
        let mut scopes_changed = false;
        if scopes_dirty || self.scope_ports.is_none() {
            let old = std::mem::take(&mut self.scope_map);
            let mut map = BTreeMap::new();
            for &port in &ports {
                let exact =
                    model.listeners.iter().filter(|l| l.port == port).flat_map(|l| &l.virtual_hosts).filter_map(|v| {
                        match &v.host {
                            HostMatch::Exact(name) => Some(name),
                            HostMatch::Wildcard(_) | HostMatch::Any => None,
                        }
                    });
                for host in std::iter::once(None).chain(exact.map(Some)) {
                    let key = scopes::scope_key(port, host);
                    let entry = match old.get(&key) {
                        Some(entry) => entry.clone(),
                        None => Entry::of(any(&scopes::scope(port, host))),
                    };
                    map.insert(key, entry);
                }
            }
            // A scope is made of its key alone: the same keys, the same scopes.
            scopes_changed = !map.keys().eq(old.keys()) || self.scope_ports.is_none();
            self.scope_map = if scopes_changed { Arc::new(map) } else { old };
            self.scope_ports = Some(ports);
        }
        let mut seen = std::collections::BTreeSet::new();
        problems.retain(|p| seen.insert(p.clone()));

        // The secrets depend on the trust (material and the model's list of it), the serving
        // certificates hosts name and the CA unions clusters name.
        let secrets_of = {
            let mut h = std::hash::DefaultHasher::new();
            trust_key.hash(&mut h);
            for vhost in model.listeners.iter().flat_map(|l| &l.virtual_hosts) {
                vhost.tls.as_ref().map(|t| (&t.secret, &t.sha256)).hash(&mut h);
            }
            for c in &model.clusters {
                if let Some(portico_model::Verification::Required {
                    ca: portico_model::CaSource::Union(list), ..
                }) = c.key.tls.as_ref().map(|t| &t.verify)
                {
                    list.hash(&mut h);
                }
            }
            h.finish()
        };
        let (secrets, secrets_changed): (Arc<BTreeMap<String, Entry>>, bool) = match self.secrets.take() {
            Some((was, secrets)) if was == secrets_of && rest.is_some() => (secrets, false),
            before => {
                let made: BTreeMap<String, Entry> =
                    secrets(model, trust).into_iter().map(|s| (s.name.clone(), Entry::of(any(&s)))).collect();
                let versions = |m: &BTreeMap<String, Entry>| {
                    m.iter().map(|(n, e)| (n.clone(), e.version.clone())).collect::<Vec<_>>()
                };
                let changed = before.is_none_or(|(_, old)| versions(&old) != versions(&made));
                (Arc::new(made), changed)
            }
        };
        self.secrets = Some((secrets_of, secrets.clone()));
        self.blocked = Some((trust_key, blocked));
        let mut resources = BTreeMap::new();
        resources.insert(Secret::type_url(), secrets);
        resources.insert(Cluster::type_url(), cluster_entries);
        resources.insert(ClusterLoadAssignment::type_url(), loads);
        resources.insert(Listener::type_url(), Arc::new(listeners));
        resources.insert(RouteConfiguration::type_url(), Arc::new(route_configurations));
        resources.insert(ScopedRouteConfiguration::type_url(), self.scope_map.clone());
        for (type_url, changed) in [
            (Cluster::type_url(), clusters_changed),
            (ClusterLoadAssignment::type_url(), loads_changed),
            (Secret::type_url(), secrets_changed),
            (ScopedRouteConfiguration::type_url(), scopes_changed),
        ] {
            if changed || !self.generations.contains_key(&type_url) {
                self.generations.insert(type_url, crate::ads::next_generation());
            }
        }
        (Snapshot { version, resources, generations: self.generations.clone() }, problems, reuse)
    }
}

/// A `RouteConfiguration` with `name` and these virtual hosts, encoded: field 1, then
/// field 2 once per host, then the rest (`scopes::tail`), as prost encodes the message.
fn route_configuration(name: &str, hosts: &[&[u8]], tail: &[u8]) -> Any {
    use prost::encoding::{encode_key, encode_varint, WireType};
    let mut value = Vec::with_capacity(name.len() + 8 + tail.len() + hosts.iter().map(|h| h.len() + 6).sum::<usize>());
    if !name.is_empty() {
        prost::encoding::string::encode(1, &name.to_owned(), &mut value);
    }
    for host in hosts {
        encode_key(2, WireType::LengthDelimited, &mut value);
        encode_varint(host.len() as u64, &mut value);
        value.extend_from_slice(host);
    }
    value.extend_from_slice(tail);
    Any { type_url: RouteConfiguration::type_url(), value }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_model::{AbsPath, CaSource, Verification};

    fn options() -> Options {
        Options { bind_address: "127.0.0.1".parse().unwrap(), http_port: 8080, admin_port: 0 }
    }

    fn full(model: &Model, trust: &Trust) -> Snapshot {
        Snapshot::new("v".into(), &crate::resources(model, trust, &options(), Delivery::Ads))
    }

    fn assert_same(a: &Snapshot, b: &Snapshot, what: &str) {
        assert_eq!(a.resources.keys().collect::<Vec<_>>(), b.resources.keys().collect::<Vec<_>>(), "{what}");
        for (type_url, entries) in &a.resources {
            let other = &b.resources[type_url];
            assert_eq!(entries.keys().collect::<Vec<_>>(), other.keys().collect::<Vec<_>>(), "{what}: {type_url}");
            for (name, entry) in entries.iter() {
                assert_eq!(entry.any, other[name].any, "{what}: {type_url} {name}");
                assert_eq!(entry.version, other[name].version, "{what}: {type_url} {name}");
            }
        }
    }

    #[test]
    fn equals_a_full_rendering_through_changes_and_reuses_what_did_not_change() {
        let (model, trust) = portico_testkit::pipeline(
            &[portico_testkit::repo().join("examples/upstream-tls")],
            &portico_resolver::Config::default(),
        );
        let mut builder = SnapshotBuilder::new();
        let mut previous: Option<Snapshot> = None;
        let mut kept_generations = 0;
        let mut step = |model: &Model, trust: &Trust, revision: u64, what: &str| {
            let digests = portico_bus::model::digests_of(model);
            let (snapshot, problems, reuse) =
                builder.build("v".into(), model, trust, revision, &options(), |id| digests.get(id).copied());
            assert_same(&snapshot, &full(model, trust), what);
            // A generation kept is a promise that the type's entries are the same (the ADS
            // server then skips the type).
            if let Some(previous) = &previous {
                for (type_url, generation) in &snapshot.generations {
                    if previous.generations.get(type_url) == Some(generation) {
                        kept_generations += 1;
                        let versions = |s: &Snapshot| {
                            s.resources[type_url]
                                .iter()
                                .map(|(n, e)| (n.clone(), e.version.clone()))
                                .collect::<Vec<_>>()
                        };
                        assert_eq!(versions(previous), versions(&snapshot), "{what}: {type_url} kept its generation");
                    }
                }
            }
            previous = Some(snapshot);
            assert_eq!(problems, crate::resources(model, trust, &options(), Delivery::Ads).problems, "{what}");
            reuse
        };
        let first = step(&model, &trust, 1, "first");
        assert_eq!(first.reused, 0);
        assert_eq!(step(&model, &trust, 1, "again").rendered, 0, "nothing changed, nothing rendered");

        // One endpoint: one cluster rendered again.
        let mut endpoint = model.clone();
        let c = endpoint
            .clusters
            .iter_mut()
            .find(|c| matches!(&c.servers, Servers::Endpoints(e) if !e.is_empty()))
            .unwrap();
        let Servers::Endpoints(e) = &mut c.servers else { unreachable!() };
        let port = e[0].port() + 1;
        e[0].set_port(port);
        assert_eq!(step(&endpoint, &trust, 1, "an endpoint").rendered, 1);

        // A cluster now names a CA secret whose material is not at hand, the trust and the
        // model's list of it unchanged: blocked (its routes 503) though nothing else moved;
        // then back.
        let mut missing = endpoint.clone();
        let c = missing
            .clusters
            .iter_mut()
            .find(|c| {
                matches!(
                    c.key.tls.as_ref().map(|t| &t.verify),
                    Some(Verification::Required { ca: CaSource::Secret(_), .. })
                )
            })
            .unwrap();
        if let Some(Verification::Required { ca, .. }) = c.key.tls.as_mut().map(|t| &mut t.verify) {
            *ca = CaSource::Secret(portico_model::SecretRef::new("nowhere", "missing").unwrap());
        }
        assert!(!crate::resources(&missing, &trust, &options(), Delivery::Ads).problems.is_empty());
        step(&missing, &trust, 1, "a cluster naming material not at hand");
        step(&endpoint, &trust, 1, "and back");

        // A CA rotated (the model's content hash and the material both new): only the
        // clusters verifying with it are rendered again (their metadata names the hash),
        // no virtual host; then back.
        let shop_ca = portico_model::SecretRef::new("shop", "shop-ca").unwrap();
        let mut rotated = endpoint.clone();
        rotated.trust.iter_mut().find(|t| t.secret == shop_ca).unwrap().sha256 = "f".repeat(64);
        let mut rotated_trust = trust.clone();
        let material = rotated_trust.get_mut(&shop_ca).unwrap().ca.as_mut().unwrap();
        material.sha256 = "f".repeat(64);
        material.pem.push_str("# rotated\n");
        let using: usize = rotated
            .clusters
            .iter()
            .filter(|c| {
                matches!(c.key.tls.as_ref().map(|t| &t.verify),
                    Some(Verification::Required { ca, .. }) if ca.secrets().contains(&shop_ca))
            })
            .count();
        assert!(using > 0 && using < rotated.clusters.len());
        assert_eq!(step(&rotated, &rotated_trust, 2, "a CA rotated").rendered, using, "only its clusters");
        assert_eq!(step(&endpoint, &trust, 3, "rotated back").rendered, using);

        // One virtual host gone.
        let mut fewer = endpoint.clone();
        fewer.listeners[0].virtual_hosts.remove(0);
        step(&fewer, &trust, 1, "a host gone");

        // A wildcard and an any-host beside it; then the any-host changes (the wildcard,
        // which carries its routes, is rendered again).
        let mut wild = fewer.clone();
        let mut w = wild.listeners[0].virtual_hosts[0].clone();
        w.host = HostMatch::parse("*.wild.test").unwrap();
        wild.listeners[0].virtual_hosts.push(w);
        wild.listeners[0].virtual_hosts.sort_by(|a, b| {
            portico_model::host_rank(&a.host).cmp(&portico_model::host_rank(&b.host)).then(a.host.cmp(&b.host))
        });
        step(&wild, &trust, 1, "a wildcard");
        if let Some(any) = wild.listeners[0].virtual_hosts.iter_mut().find(|v| v.host == HostMatch::Any) {
            any.routes.pop();
            step(&wild, &trust, 1, "the any-host changed");
        }

        // Trust gone: its clusters blocked and their routes 503, then back.
        step(&wild, &Trust::new(), 2, "no trust material");
        step(&wild, &trust, 3, "trust material back");

        // A cluster's CA from a file instead (its name changes with its key).
        let mut file = wild.clone();
        if let Some(tls) = file.clusters.iter_mut().find_map(|c| c.key.tls.as_mut()) {
            tls.verify = Verification::Required {
                ca: CaSource::File("/etc/ssl/ca.pem".parse::<AbsPath>().unwrap()),
                subject_names: Vec::new(),
                subject_uris: Vec::new(),
                exact_names: false,
            };
        }
        step(&file, &trust, 3, "a CA file");
        step(&Model::default(), &Trust::new(), 4, "everything gone");
        step(&model, &trust, 5, "everything back");
        assert!(
            kept_generations >= 6,
            "types kept their generation through changes that left them alone: {kept_generations}"
        );
    }
}

#[cfg(test)]
mod bench {
    use super::*;

    /// Not a test: `cargo test --release -p portico-renderer-envoy --all-features --lib bench -- --ignored --nocapture`
    /// times a one-host change at 10,000 hosts.
    #[test]
    #[ignore = "a benchmark"]
    fn one_change_at_ten_thousand_hosts() {
        let (example, trust) = portico_testkit::pipeline(
            &[portico_testkit::repo().join("examples/upstream-tls")],
            &portico_resolver::Config::default(),
        );
        let mut model = example.clone();
        let template = model.listeners[0].virtual_hosts[0].clone();
        let cluster = model.clusters[0].clone();
        for i in 0..10_000 {
            let mut v = template.clone();
            v.host = HostMatch::parse(&format!("h{i}.bench.test")).unwrap();
            model.listeners[0].virtual_hosts.push(v);
            let mut c = cluster.clone();
            c.name = format!("bench_{i:05}_0123456789").parse().unwrap();
            model.clusters.push(c);
        }
        model.clusters.sort_by(|a, b| a.name.cmp(&b.name));
        let options = Options { bind_address: "127.0.0.1".parse().unwrap(), http_port: 8080, admin_port: 0 };
        let digests = portico_bus::model::digests_of(&model);
        // Heap in use (glibc's count of allocated bytes): what the builder and one snapshot hold.
        let heap = || {
            // SAFETY: mallinfo2 only reads the allocator's counters.
            (unsafe { libc::mallinfo2() }).uordblks as f64 / 1_048_576.0
        };
        let before = heap();
        let mut builder = SnapshotBuilder::new();
        let started = std::time::Instant::now();
        let (snapshot, _, _) = builder.build("1".into(), &model, &trust, 1, &options, |id| digests.get(id).copied());
        eprintln!("first build: {:?}", started.elapsed());
        let with_snapshot = heap() - before;
        drop(snapshot);
        eprintln!("heap held: {:.1} MiB by the builder, {with_snapshot:.1} MiB with a snapshot", heap() - before);
        for round in 0..5 {
            let started = std::time::Instant::now();
            let (_, _, reuse) = builder.build("2".into(), &model, &trust, 1, &options, |id| digests.get(id).copied());
            eprintln!("build {round} with nothing changed: {:?} {reuse:?}", started.elapsed());
        }
        // One host's routes changed: its shard is put together again.
        let mut changed = model.clone();
        let route = &mut changed.listeners[0].virtual_hosts[5000].routes[0];
        route.exact = !route.exact;
        for round in 0..5 {
            let model = if round % 2 == 0 { &changed } else { &model };
            let digests = portico_bus::model::digests_of(model);
            let started = std::time::Instant::now();
            let (_, _, reuse) = builder.build("3".into(), model, &trust, 1, &options, |id| digests.get(id).copied());
            eprintln!("build {round} with one host changed: {:?} {reuse:?}", started.elapsed());
        }
        // One CA rotated (its content hash in the model and its material), one the bench
        // hosts' clusters do not use (each of theirs is the example's first): the trust moves.
        let used = |s: &portico_model::SecretRef| {
            matches!(model.clusters[0].key.tls.as_ref().map(|t| &t.verify),
                Some(portico_model::Verification::Required { ca, .. }) if ca.secrets().contains(s))
        };
        let index = model.trust.iter().position(|t| !used(&t.secret)).expect("a CA the copies do not use");
        let secret = model.trust[index].secret.clone();
        for round in 0..5u64 {
            let mut rotated = model.clone();
            let mut rotated_trust = trust.clone();
            let sha = format!("{:064x}", round + 1);
            rotated.trust[index].sha256 = sha.clone();
            if let Some(pem) = rotated_trust.get_mut(&secret).and_then(|m| m.ca.as_mut()) {
                pem.sha256 = sha;
            }
            let digests = portico_bus::model::digests_of(&rotated);
            let started = std::time::Instant::now();
            let (_, _, reuse) = builder
                .build("4".into(), &rotated, &rotated_trust, 10 + round, &options, |id| digests.get(id).copied());
            eprintln!("build {round} with a CA rotated: {:?} {reuse:?}", started.elapsed());
        }
    }
}

//! The configuration built by piece: what renderer-haproxy keeps between changes, so that a
//! change costs what it touches, not the 10,000 routes around it.
//!
//! A [`ConfigBuilder`] holds the rendering HAProxy runs: its [`Runtime`] (maps, backends,
//! server files, certificate lists), and per model piece what the piece put there (a
//! cluster: its backend or why it cannot be served; a virtual host: its map keys, route
//! identifiers, certificate, weighted rules and problems). A build first plans
//! ([`ConfigBuilder::plan`], nothing changes): the pieces whose digest (from the bus,
//! `Follower::piece_digest`) or trust material differ, and whether the result lacks trust
//! material (a renderer may hold such a rendering back, and then nothing was changed).
//! Applying the plan ([`ConfigBuilder::apply`]) renders those pieces again, moves what they
//! put, and journals the values it replaced: the runtime commands are found between the
//! journalled values and the new ones (`runtime::commands` over these two partial
//! runtimes), and only the files they touched are produced again.
//!
//! A builder made with [`ConfigBuilder::new`] has nothing running: its first build names
//! each backend after its cluster and adds the spares (a reload). [`ConfigBuilder::over`]
//! starts from a running [`Runtime`] alone (no pieces known): every piece is rendered, and
//! the commands are those between the two whole runtimes. Both are what `render` and
//! `render_over` do; the service keeps its builder between changes, and drops it when an
//! apply fails or needs a reload (the next build starts anew).

use crate::runtime::{self, Backend, CrtEntry, Runtime, ServerFile};
use crate::{
    assign_slots, cert_file, cluster_files, crt_list, redirect_backend, route_id, server_options_of, spare_backends,
    spare_name, FileMemo, Options, Trust, UnusableFiles, BAD_GATEWAY_BACKEND, NOT_FOUND_BACKEND, REJECT_BACKEND,
};
use portico_model::{
    host_rank, CaSource, Cluster, ClusterName, HostMatch, Model, PieceId, RouteAction, Servers, Timeout, Verification,
    VirtualHost,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

/// A virtual host: its listener's port and its host.
type HostKey = (u16, HostMatch);

/// The route-selection maps of a listener, by kind: the index is what a host's entries
/// record.
const LISTENER_MAPS: [&str; 6] = ["exact", "wildcard", "any", "exact-path", "wildcard-path", "any-path"];

/// What a cluster's routes are sent to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// Its servers are in this backend, which the runtime API manages.
    Backend(String),
    /// An ExternalName Service: a backend named after the cluster, in the configuration's
    /// tail (its text in `ConfigBuilder::dns`), with the files its server line loads
    /// (relative to the base directory).
    Dns { files: Vec<String> },
    /// It cannot be served (trust material missing, a check HAProxy cannot make): its
    /// routes answer 503, for this reason.
    Blocked(String),
}

struct ClusterEntry {
    /// The digest of the piece it was rendered from (`None`: render it again next time).
    digest: Option<u128>,
    /// The trust material it was rendered with (`material_of`).
    material: u64,
    target: Target,
}

/// What a virtual host put into the rendering.
#[derive(Default)]
struct HostEntry {
    digest: Option<u128>,
    material: u64,
    /// Its route-selection map keys: (`LISTENER_MAPS` index, key).
    selections: Vec<(u8, String)>,
    /// Its routes' identifiers: keys of the backend, rewrite and timeout maps.
    ids: Vec<String>,
    /// The clusters its routes name.
    clusters: Vec<ClusterName>,
    /// The rules of its routes split across backends (in the frontend).
    weighted: String,
    /// Its routes answering 503, and why.
    route_problems: Vec<String>,
    /// Its certificate's file (as the configuration names it), or why it has none.
    certificate: Option<Result<String, String>>,
}

/// A cluster rendered again, before it is placed.
enum Render {
    Endpoints { options: String, files: Vec<(String, ServerFile)> },
    Dns { text: String, files: Vec<(String, Arc<[u8]>)> },
    Blocked(String),
}

/// A cluster with endpoints rendered again: its servers' options and files, and the
/// backend it keeps (`None`: it takes a spare).
type Placing<'m> = (&'m Cluster, String, Vec<(String, ServerFile)>, Option<String>);

/// What a build will do: the pieces to render again. Made by [`ConfigBuilder::plan`]
/// without changing anything.
pub struct Plan<'m> {
    clusters: Vec<(&'m Cluster, Option<u128>, u64, Render)>,
    gone_clusters: Vec<ClusterName>,
    hosts: Vec<(u16, &'m VirtualHost, Option<u128>, u64)>,
    gone_hosts: Vec<HostKey>,
    trust_key: (u64, Option<u128>),
    /// Routes would answer 503, or a host lack its certificate, for want of trust material.
    pub lacks_trust: bool,
    /// Pieces rendered again (the others are kept as they are).
    pub rendered: usize,
}

/// What a build changed.
#[derive(Debug)]
pub struct Step {
    /// The runtime commands that take HAProxy from the previous rendering to this one;
    /// `None` when only a reload can (the first build, a listener or backend that appears
    /// or goes, a frontend rule that changed).
    pub commands: Option<Vec<String>>,
    /// Files (relative to the base directory) whose contents are new or may differ from
    /// the previous generation's; with `commands` `None`, every file.
    pub changed: BTreeMap<String, Vec<u8>>,
    /// Every file of the rendering (the others are as in the previous generation).
    pub names: Vec<String>,
    /// Routes rendered as 503 and hosts without their certificate, with why.
    pub problems: Vec<String>,
}

/// The values a build replaced, first value per key: the running side of the commands.
#[derive(Default)]
struct Journal {
    skeleton: u64,
    map_paths: BTreeSet<String>,
    crt_paths: BTreeSet<String>,
    maps: BTreeMap<String, BTreeMap<String, Option<String>>>,
    backends: BTreeMap<String, Option<Backend>>,
    server_files: BTreeMap<String, Option<ServerFile>>,
    certificates: BTreeMap<String, BTreeMap<String, Option<CrtEntry>>>,
    /// Files of ExternalName backends added.
    dns_files: BTreeSet<String>,
    /// The configuration text changed (a server line, a frontend, a backend).
    config: bool,
}

/// The rendering HAProxy runs, by piece. See the module documentation.
pub struct ConfigBuilder {
    options: Options,
    /// Nothing runs yet: the next build is a whole rendering, loaded by a reload.
    fresh: bool,
    /// Made over a running `Runtime` whose pieces are unknown: the next build renders
    /// every piece and replaces every map entry and certificate.
    cold: bool,
    runtime: Runtime,
    clusters: HashMap<ClusterName, ClusterEntry>,
    hosts: HashMap<HostKey, HostEntry>,
    /// Cluster → the hosts whose routes name it.
    users: HashMap<ClusterName, HashSet<HostKey>>,
    /// Route identifiers in use.
    ids: BTreeSet<String>,
    /// Server file → how many backends name it.
    file_refs: HashMap<String, usize>,
    /// ExternalName backends' text, by cluster; their files (relative) with use counts.
    dns: BTreeMap<ClusterName, String>,
    dns_files: BTreeMap<String, (Arc<[u8]>, usize)>,
    /// Hosts with weighted rules, and with problems.
    weighted_hosts: usize,
    problem_hosts: usize,
    /// The configuration before and after the managed backends.
    head: String,
    tail: String,
    trust_key: Option<(u64, Option<u128>)>,
    /// The global maps' paths: backend, Host rewrite, timeout.
    backend_map: Arc<str>,
    rewrite_map: Arc<str>,
    timeout_map: Arc<str>,
    /// Each listener's route-selection maps' paths (`LISTENER_MAPS` order).
    listener_maps: HashMap<u16, [Arc<str>; 6]>,
}

impl ConfigBuilder {
    /// A builder with nothing running: its first build is a whole rendering.
    pub fn new(options: &Options) -> ConfigBuilder {
        let base = options.base_dir.as_str();
        let map = |name: &str| Arc::from(format!("{base}/maps/{name}.map"));
        ConfigBuilder {
            fresh: true,
            cold: false,
            runtime: Runtime::default(),
            clusters: HashMap::new(),
            hosts: HashMap::new(),
            users: HashMap::new(),
            ids: BTreeSet::new(),
            file_refs: HashMap::new(),
            dns: BTreeMap::new(),
            dns_files: BTreeMap::new(),
            weighted_hosts: 0,
            problem_hosts: 0,
            head: String::new(),
            tail: String::new(),
            trust_key: None,
            backend_map: map("backend"),
            rewrite_map: map("host-rewrite"),
            timeout_map: map("timeout"),
            listener_maps: HashMap::new(),
            options: options.clone(),
        }
    }

    /// A builder over a running rendering known only by its `Runtime` (clusters keep their
    /// backends where they can, spares are taken): its first build renders every piece.
    pub fn over(options: &Options, running: Runtime) -> ConfigBuilder {
        let mut builder = ConfigBuilder::new(options);
        builder.fresh = false;
        builder.cold = true;
        for (name, backend) in &running.backends {
            for file in &backend.files {
                *builder.file_refs.entry(file.clone()).or_default() += 1;
            }
            let Some(cluster) = &backend.cluster else { continue };
            if let Ok(cluster) = cluster.parse::<ClusterName>() {
                let entry = ClusterEntry { digest: None, material: 0, target: Target::Backend(name.clone()) };
                builder.clusters.insert(cluster, entry);
            }
        }
        builder.runtime = running;
        builder
    }

    /// What the builder holds: the maps, backends and files of the rendering.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The pieces of `model` to render again: those whose digest (`digest`, from the bus;
    /// `None` renders the piece again) or trust material changed, and those gone.
    /// `trust_revision` must change whenever `trust` does.
    pub fn plan<'m>(
        &self,
        model: &'m Model,
        trust: &Trust,
        trust_revision: u64,
        unusable: &UnusableFiles,
        digest: &dyn Fn(&PieceId) -> Option<u128>,
    ) -> Plan<'m> {
        let base = self.options.base_dir.as_str();
        let trust_key = (trust_revision, digest(&PieceId::Rest));
        // Trust material is looked at again only when it (or the model's list of it) moved.
        let trust_moved = self.trust_key != Some(trust_key) || trust_key.1.is_none();
        let mut plan = Plan {
            clusters: Vec::new(),
            gone_clusters: Vec::new(),
            hosts: Vec::new(),
            gone_hosts: Vec::new(),
            trust_key,
            lacks_trust: false,
            rendered: 0,
        };
        let mut memo = FileMemo::new();
        let mut materials = MaterialMemo::new();
        let mut kept = 0;
        for cluster in &model.clusters {
            let d = digest(&PieceId::Cluster(cluster.name.clone()));
            let old = self.clusters.get(&cluster.name);
            let uses_file = matches!(
                &cluster.key.tls,
                Some(tls) if matches!(&tls.verify, Verification::Required { ca: CaSource::File(_), .. })
            );
            let material = match old {
                Some(old) if !trust_moved && !uses_file => old.material,
                _ => material_of(cluster, model, trust, unusable, &mut materials),
            };
            if let Some(old) = old.filter(|o| d.is_some() && o.digest == d && o.material == material) {
                kept += 1;
                if matches!(old.target, Target::Blocked(_)) {
                    plan.lacks_trust = true;
                }
                continue;
            }
            if old.is_some() {
                kept += 1;
            }
            let render = render_cluster(cluster, model, trust, unusable, base, &mut memo);
            if matches!(render, Render::Blocked(_)) {
                plan.lacks_trust = true;
            }
            plan.clusters.push((cluster, d, material, render));
        }
        if kept < self.clusters.len() {
            let here: HashSet<&ClusterName> = model.clusters.iter().map(|c| &c.name).collect();
            plan.gone_clusters = self.clusters.keys().filter(|c| !here.contains(c)).cloned().collect();
            plan.gone_clusters.sort();
        }
        let mut kept = 0;
        for listener in &model.listeners {
            for vhost in &listener.virtual_hosts {
                let key = (listener.port, vhost.host.clone());
                let d = digest(&PieceId::VirtualHost(listener.port, vhost.host.clone()));
                let old = self.hosts.get(&key);
                let material = match old {
                    Some(old) if !trust_moved => old.material,
                    _ => host_material(vhost, trust, &mut materials),
                };
                if let Some(old) = old.filter(|o| d.is_some() && o.digest == d && o.material == material) {
                    kept += 1;
                    if old.certificate.as_ref().is_some_and(Result::is_err) {
                        plan.lacks_trust = true;
                    }
                    continue;
                }
                if old.is_some() {
                    kept += 1;
                }
                if vhost.tls.as_ref().is_some_and(|tls| Model::serving_material(tls, trust).is_err()) {
                    plan.lacks_trust = true;
                }
                plan.hosts.push((listener.port, vhost, d, material));
            }
        }
        if kept < self.hosts.len() {
            let here: HashSet<(u16, &HostMatch)> =
                model.listeners.iter().flat_map(|l| l.virtual_hosts.iter().map(move |v| (l.port, &v.host))).collect();
            plan.gone_hosts = self.hosts.keys().filter(|(p, h)| !here.contains(&(*p, h))).cloned().collect();
        }
        // (A route answers 503 only for a blocked cluster, which is flagged above whether
        // it was rendered again or kept.)
        plan.rendered = plan.clusters.len() + plan.hosts.len();
        plan
    }

    /// Render the planned pieces into the rendering; what changed, and the commands.
    pub fn apply(&mut self, model: &Model, trust: &Trust, plan: Plan<'_>) -> Step {
        let mut journal = Journal {
            skeleton: self.runtime.skeleton,
            map_paths: self.runtime.maps.keys().cloned().collect(),
            crt_paths: self.runtime.crt_lists.keys().cloned().collect(),
            ..Journal::default()
        };
        if self.cold {
            // The pieces that put the running entries are unknown: every one is put again.
            for (path, entries) in std::mem::take(&mut self.runtime.maps) {
                let old = journal.maps.entry(path.clone()).or_default();
                old.extend(entries.into_iter().map(|(k, v)| (k, Some(v))));
                self.runtime.maps.insert(path, BTreeMap::new());
            }
            for (list, entries) in std::mem::take(&mut self.runtime.crt_lists) {
                let old = journal.certificates.entry(list.clone()).or_default();
                old.extend(entries.into_iter().map(|(k, v)| (k, Some(v))));
                self.runtime.crt_lists.insert(list, BTreeMap::new());
            }
            journal.config = true;
        }
        let routed_before = |b: &ConfigBuilder, c: &ClusterName| b.clusters.get(c).map(|e| routed_to(c, &e.target));
        let mut moved: Vec<ClusterName> = Vec::new();
        let mut released: Vec<String> = Vec::new();
        for cluster in &plan.gone_clusters {
            let Some(entry) = self.clusters.remove(cluster) else { continue };
            match entry.target {
                Target::Backend(name) => released.push(name),
                Target::Dns { files, .. } => self.drop_dns(cluster, &files, &mut journal),
                Target::Blocked(_) => {}
            }
            moved.push(cluster.clone());
        }

        // Clusters rendered again: keep their backend while its servers' options are the
        // same; the others are placed below.
        let mut placed: Vec<Placing<'_>> = Vec::new();
        let mut before: HashMap<ClusterName, Option<Result<String, String>>> = HashMap::new();
        let mut entries: HashMap<ClusterName, (Option<u128>, u64, Option<Target>)> = HashMap::new();
        for (cluster, digest, material, render) in plan.clusters {
            before.insert(cluster.name.clone(), routed_before(self, &cluster.name));
            let old = self.clusters.get(&cluster.name).map(|e| e.target.clone());
            let old_backend = match &old {
                Some(Target::Backend(name)) => Some(name.clone()),
                _ => None,
            };
            if let Some(Target::Dns { files, .. }) = &old {
                self.drop_dns(&cluster.name, &files.clone(), &mut journal);
            }
            let target = match render {
                Render::Endpoints { options, files } => {
                    let keep = old_backend
                        .clone()
                        .filter(|name| self.runtime.backends.get(name).is_some_and(|b| b.options == options));
                    if keep.is_none() {
                        released.extend(old_backend);
                    }
                    placed.push((cluster, options, files, keep));
                    None
                }
                Render::Dns { text, files } => {
                    released.extend(old_backend);
                    Some(self.put_dns(cluster, text, files, &mut journal))
                }
                Render::Blocked(why) => {
                    released.extend(old_backend);
                    Some(Target::Blocked(why))
                }
            };
            entries.insert(cluster.name.clone(), (digest, material, target));
        }
        let taken: HashSet<String> = self.dns.keys().map(|c| c.to_string()).collect();
        // Spares as they are before this build: a backend released now is not taken now.
        let mut free: BTreeMap<String, (String, bool)> = if self.fresh {
            BTreeMap::new()
        } else {
            self.runtime
                .backends
                .iter()
                .filter(|(name, b)| b.cluster.is_none() && !taken.contains(*name))
                .map(|(name, b)| (name.clone(), (b.options.clone(), b.slots.is_empty())))
                .collect()
        };
        let mut used: HashSet<String> = HashSet::new();
        let mut next_spare = 0;
        let mut targets: HashMap<ClusterName, String> = HashMap::new();
        for (cluster, options, _, keep) in &placed {
            let name = match keep {
                Some(name) => name.clone(),
                None => {
                    let pick = free
                        .get_key_value(cluster.name.as_str())
                        .or_else(|| free.iter().find(|(_, (o, _))| o == options))
                        .or_else(|| free.iter().find(|(_, (_, empty))| *empty))
                        .or_else(|| free.iter().next())
                        .map(|(name, _)| name.clone());
                    match pick {
                        Some(name) => {
                            free.remove(&name);
                            name
                        }
                        // No spare left: a new backend, which only a reload brings.
                        None if !self.runtime.backends.contains_key(cluster.name.as_str())
                            && !used.contains(cluster.name.as_str()) =>
                        {
                            cluster.name.to_string()
                        }
                        None => loop {
                            let name = spare_name(next_spare);
                            next_spare += 1;
                            if !self.runtime.backends.contains_key(&name) && !used.contains(&name) {
                                break name;
                            }
                        },
                    }
                }
            };
            used.insert(name.clone());
            targets.insert(cluster.name.clone(), name);
        }
        for (cluster, options, files, _) in placed {
            let name = targets[&cluster.name].clone();
            let Servers::Endpoints(list) = &cluster.servers else { unreachable!("rendered as endpoints") };
            let here = self.runtime.backends.get(&name).filter(|b| b.options == options);
            let slots = assign_slots(list, here.map(|b| &b.slots));
            let backend = Backend {
                cluster: Some(cluster.name.to_string()),
                options,
                files: files.iter().map(|(path, _)| path.clone()).collect(),
                slots,
            };
            self.set_backend(&name, Some(backend), &files, &mut journal);
            if let Some(entry) = entries.get_mut(&cluster.name) {
                entry.2 = Some(Target::Backend(name));
            }
        }
        for name in released.into_iter().filter(|n| !used.contains(n)) {
            let Some(old) = self.runtime.backends.get(&name) else { continue };
            if taken.contains(&name) {
                // An ExternalName backend has this name now: the backend goes (a reload).
                self.set_backend(&name, None, &[], &mut journal);
                continue;
            }
            // A spare: its servers in maintenance, its options and files kept, so that the
            // cluster coming back finds it as it was.
            let spare = Backend {
                cluster: None,
                options: old.options.clone(),
                files: old.files.clone(),
                slots: vec![None; old.slots.len()],
            };
            self.set_backend(&name, Some(spare), &[], &mut journal);
        }
        for name in taken {
            if self.runtime.backends.contains_key(&name) && !used.contains(&name) {
                self.set_backend(&name, None, &[], &mut journal);
            }
        }
        if self.fresh {
            let clusters = self.runtime.backends.len();
            for i in 0..spare_backends(clusters) {
                self.set_backend(&spare_name(i), Some(Backend::default()), &[], &mut journal);
            }
        }
        for (name, (digest, material, target)) in entries {
            let target = target.expect("every cluster rendered again has a target");
            self.clusters.insert(name.clone(), ClusterEntry { digest, material, target });
            if before.get(&name).cloned().flatten() != routed_before(self, &name) {
                moved.push(name);
            }
        }

        // Virtual hosts: those rendered again, those whose clusters' backends moved, and
        // those gone.
        let mut hosts: BTreeMap<HostKey, Option<(Option<u128>, u64)>> = BTreeMap::new();
        for (port, vhost, digest, material) in &plan.hosts {
            hosts.insert((*port, vhost.host.clone()), Some((*digest, *material)));
        }
        for cluster in &moved {
            for key in self.users.get(cluster).into_iter().flatten() {
                if !hosts.contains_key(key) {
                    let old = &self.hosts[key];
                    hosts.insert(key.clone(), Some((old.digest, old.material)));
                }
            }
        }
        for key in plan.gone_hosts {
            hosts.insert(key, None);
        }
        for (key, rendered) in hosts {
            self.drop_host(&key, &mut journal);
            let Some((digest, material)) = rendered else { continue };
            let Some(vhost) = find_host(model, &key) else { continue };
            self.put_host(key.0, vhost, digest, material, trust, &mut journal);
        }

        // Listeners: one set of maps each, a certificate list for HTTPS ones.
        let listeners = self.listeners(model);
        let base = self.options.base_dir.as_str().to_owned();
        let mut map_paths: BTreeSet<String> =
            [&self.backend_map, &self.rewrite_map, &self.timeout_map].into_iter().map(|p| p.to_string()).collect();
        let mut crt_paths = BTreeSet::new();
        for (port, https) in &listeners {
            map_paths.extend((0..LISTENER_MAPS.len()).map(|kind| listener_map(&base, *port, kind as u8)));
            if *https {
                crt_paths.insert(format!("{base}/{}", crt_list(*port)));
            }
        }
        self.runtime.maps.retain(|path, _| map_paths.contains(path));
        for path in map_paths {
            self.runtime.maps.entry(path).or_default();
        }
        self.runtime.crt_lists.retain(|path, _| crt_paths.contains(path));
        for path in crt_paths {
            self.runtime.crt_lists.entry(path).or_default();
        }
        self.trust_key = Some(plan.trust_key);

        self.write_skeleton(model, &listeners);
        if self.runtime.skeleton != journal.skeleton {
            journal.config = true;
        }
        let commands = (!self.fresh).then(|| self.commands(&journal)).flatten();
        let names = self.file_names();
        let changed = match commands {
            Some(_) => self.changed_files(&journal),
            None => names.iter().filter_map(|name| self.file(name).map(|bytes| (name.clone(), bytes))).collect(),
        };
        self.fresh = false;
        self.cold = false;
        Step { commands, changed, names, problems: self.problems(model) }
    }

    /// `plan` then `apply`.
    pub fn build(
        &mut self,
        model: &Model,
        trust: &Trust,
        trust_revision: u64,
        unusable: &UnusableFiles,
        digest: &dyn Fn(&PieceId) -> Option<u128>,
    ) -> Step {
        let plan = self.plan(model, trust, trust_revision, unusable, digest);
        self.apply(model, trust, plan)
    }

    /// Set (or remove) a backend, journalling its previous value, and keep the server
    /// files its servers name (with `files`' bytes for those new to the rendering).
    fn set_backend(&mut self, name: &str, backend: Option<Backend>, files: &[(String, ServerFile)], j: &mut Journal) {
        let new_files = backend.as_ref().map(|b| b.files.clone()).unwrap_or_default();
        let old = match backend {
            Some(b) => self.runtime.backends.insert(name.to_owned(), b),
            None => self.runtime.backends.remove(name),
        };
        let old_files = old.as_ref().map(|b| b.files.clone()).unwrap_or_default();
        if !self.fresh {
            j.backends.entry(name.to_owned()).or_insert(old);
        }
        j.config = true;
        for path in new_files {
            let count = self.file_refs.entry(path.clone()).or_default();
            *count += 1;
            if *count == 1 {
                let file = files.iter().find(|(p, _)| *p == path).map(|(_, f)| f.clone());
                let file = file.unwrap_or(ServerFile { certificate: false, pem: None });
                let old = self.runtime.server_files.insert(path.clone(), file);
                j.server_files.entry(path).or_insert(old);
            }
        }
        for path in old_files {
            let Some(count) = self.file_refs.get_mut(&path) else { continue };
            *count -= 1;
            if *count == 0 {
                self.file_refs.remove(&path);
                let old = self.runtime.server_files.remove(&path);
                j.server_files.entry(path).or_insert(old);
            }
        }
    }

    fn set_map(&mut self, path: &str, key: &str, value: Option<String>, j: &mut Journal) {
        if !self.runtime.maps.contains_key(path) {
            self.runtime.maps.insert(path.to_owned(), BTreeMap::new());
        }
        let map = self.runtime.maps.get_mut(path).expect("inserted above");
        let old = match value {
            Some(v) => map.insert(key.to_owned(), v),
            None => map.remove(key),
        };
        if self.fresh {
            return; // nothing runs: no commands to find
        }
        if !j.maps.contains_key(path) {
            j.maps.insert(path.to_owned(), BTreeMap::new());
        }
        j.maps.get_mut(path).expect("inserted above").entry(key.to_owned()).or_insert(old);
    }

    /// A listener's route-selection map (`LISTENER_MAPS` index).
    fn listener_map(&mut self, port: u16, kind: u8) -> Arc<str> {
        let base = self.options.base_dir.as_str();
        let paths = self
            .listener_maps
            .entry(port)
            .or_insert_with(|| std::array::from_fn(|kind| Arc::from(listener_map(base, port, kind as u8))));
        paths[usize::from(kind)].clone()
    }

    fn set_certificate(&mut self, list: &str, path: &str, entry: Option<CrtEntry>, j: &mut Journal) {
        let certificates = self.runtime.crt_lists.entry(list.to_owned()).or_default();
        let old = match entry {
            Some(e) => certificates.insert(path.to_owned(), e),
            None => certificates.remove(path),
        };
        j.certificates.entry(list.to_owned()).or_default().entry(path.to_owned()).or_insert(old);
    }

    fn put_dns(&mut self, cluster: &Cluster, text: String, files: Vec<(String, Arc<[u8]>)>, j: &mut Journal) -> Target {
        let mut names = Vec::new();
        for (path, bytes) in files {
            let entry = self.dns_files.entry(path.clone()).or_insert_with(|| (bytes, 0));
            entry.1 += 1;
            if entry.1 == 1 {
                j.dns_files.insert(path.clone());
            }
            names.push(path);
        }
        self.dns.insert(cluster.name.clone(), text);
        j.config = true;
        Target::Dns { files: names }
    }

    fn drop_dns(&mut self, cluster: &ClusterName, files: &[String], j: &mut Journal) {
        self.dns.remove(cluster);
        for path in files {
            if let Some(entry) = self.dns_files.get_mut(path) {
                entry.1 -= 1;
                if entry.1 == 0 {
                    self.dns_files.remove(path);
                }
            }
        }
        j.config = true;
    }

    /// Take out what a virtual host put in.
    fn drop_host(&mut self, key: &HostKey, j: &mut Journal) {
        let Some(entry) = self.hosts.remove(key) else { return };
        let base = self.options.base_dir.as_str().to_owned();
        for (kind, selection) in &entry.selections {
            let map = self.listener_map(key.0, *kind);
            self.set_map(&map, selection, None, j);
        }
        for id in &entry.ids {
            for map in [self.backend_map.clone(), self.rewrite_map.clone(), self.timeout_map.clone()] {
                if self.runtime.maps.get(&*map).is_some_and(|m| m.contains_key(id)) {
                    self.set_map(&map, id, None, j);
                }
            }
            self.ids.remove(id);
        }
        for cluster in &entry.clusters {
            if let Some(users) = self.users.get_mut(cluster) {
                users.remove(key);
                if users.is_empty() {
                    self.users.remove(cluster);
                }
            }
        }
        if let Some(Ok(path)) = &entry.certificate {
            self.set_certificate(&format!("{base}/{}", crt_list(key.0)), path, None, j);
        }
        if !entry.weighted.is_empty() {
            self.weighted_hosts -= 1;
            j.config = true;
        }
        if has_problems(&entry) {
            self.problem_hosts -= 1;
        }
    }

    /// The backend a cluster's routes go to, or why they answer 503.
    fn route_target(&self, cluster: &ClusterName) -> Result<String, String> {
        match self.clusters.get(cluster) {
            Some(entry) => routed_to(cluster, &entry.target),
            None => Ok(cluster.to_string()),
        }
    }

    /// Put a virtual host's routes into the maps (and its certificate into its list).
    fn put_host(
        &mut self,
        port: u16,
        vhost: &VirtualHost,
        digest: Option<u128>,
        material: u64,
        trust: &Trust,
        j: &mut Journal,
    ) {
        let base = self.options.base_dir.as_str().to_owned();
        let mut entry = HostEntry { digest, material, ..HostEntry::default() };
        let mut clusters = BTreeSet::new();
        for route in &vhost.routes {
            let id = route_id(port, &vhost.host, route.prefix.as_str(), route.exact, &mut self.ids);
            entry.ids.push(id.clone());
            let (kind, key) = match (&vhost.host, route.exact) {
                (HostMatch::Exact(name), false) => (0, format!("{name}{}", route.prefix)),
                (HostMatch::Wildcard(suffix), false) => (1, format!("{suffix}{}", route.prefix)),
                (HostMatch::Any, false) => (2, route.prefix.to_string()),
                (HostMatch::Exact(name), true) => (3, format!("{name}{}", route.prefix)),
                (HostMatch::Wildcard(suffix), true) => (4, format!("{suffix}{}", route.prefix)),
                (HostMatch::Any, true) => (5, route.prefix.to_string()),
            };
            // The model lists the longest prefix first, so the first route of a key is
            // the one the model means.
            let map = self.listener_map(port, kind);
            if !self.runtime.maps.get(&*map).is_some_and(|m| m.contains_key(&key)) {
                self.set_map(&map, &key, Some(id.clone()), j);
                entry.selections.push((kind, key));
            }
            let backend_map = self.backend_map.clone();
            let backends = match &route.action {
                RouteAction::Reject => None,
                RouteAction::BadGateway => {
                    self.set_map(&backend_map, &id, Some(BAD_GATEWAY_BACKEND.to_owned()), j);
                    continue;
                }
                RouteAction::RedirectHttps { port } => {
                    self.set_map(&backend_map, &id, Some(redirect_backend(*port)), j);
                    continue;
                }
                RouteAction::Forward { backends, host_rewrite, timeout, idle_timeout } => {
                    clusters.extend(backends.iter().map(|b| b.cluster.clone()));
                    let blocked = backends.iter().find_map(|b| self.route_target(&b.cluster).err());
                    if let Some(why) = blocked {
                        entry.route_problems.push(format!(
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
                self.set_map(&backend_map, &id, Some(REJECT_BACKEND.to_owned()), j);
                continue;
            };
            let live: Vec<(u32, String)> = backends
                .iter()
                .filter(|b| b.weight > 0)
                .map(|b| (b.weight, self.route_target(&b.cluster).unwrap_or_default()))
                .collect();
            match live.as_slice() {
                [] => {} // every weight 0: nothing to send to (404, as before)
                [(_, name)] => self.set_map(&backend_map, &id, Some(name.clone()), j),
                _ => {
                    let this = format!("{{ var(txn.route) -m str {id} }}");
                    let total: u64 = live.iter().map(|(w, _)| u64::from(*w)).sum();
                    let weighted = &mut entry.weighted;
                    writeln!(weighted, "    http-request set-var(txn.pick) rand({total}) if {this}").unwrap();
                    let mut below = 0u64;
                    for (i, (weight, name)) in live.iter().enumerate() {
                        below += u64::from(*weight);
                        if i + 1 < live.len() {
                            writeln!(
                                weighted,
                                "    use_backend {name} if {this} {{ var(txn.pick) -m int lt {below} }}"
                            )
                            .unwrap();
                        } else {
                            writeln!(weighted, "    use_backend {name} if {this}").unwrap();
                        }
                    }
                }
            }
            if let Some(host) = host_rewrite {
                let map = self.rewrite_map.clone();
                self.set_map(&map, &id, Some(host.to_string()), j);
            }
            // The default is `timeout server` in defaults (Timeout::DEFAULT_RESPONSE). A
            // frontend cannot set a server timeout: it is carried in a variable to the
            // backend, which applies it. HAProxy has one knob for both, the server side's
            // inactivity (`timeout server`): the response timeout is approximated by it, the
            // idle timeout is exactly it, and with both the shorter applies.
            let millis = |t: &Timeout| match t {
                Timeout::Millis(ms) => *ms,
                Timeout::Infinite => Timeout::MAX_MILLIS, // HAProxy has no "never"
            };
            if let Some(ms) = [timeout, idle_timeout].into_iter().flatten().map(millis).min() {
                let map = self.timeout_map.clone();
                self.set_map(&map, &id, Some(ms.to_string()), j);
            }
        }
        // Its certificate, chosen by SNI from the listener's list.
        if let (Some(tls), Some(file)) = (&vhost.tls, cert_file(port, &vhost.host)) {
            entry.certificate = Some(match Model::serving_material(tls, trust) {
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
                    let path = format!("{base}/{file}");
                    self.set_certificate(
                        &format!("{base}/{}", crt_list(port)),
                        &path,
                        Some(CrtEntry { options, sni, pem }),
                        j,
                    );
                    Ok(path)
                }
                Err(why) => Err(format!("host {}: HTTPS handshakes fail: {why}", vhost.host)),
            });
        }
        let key = (port, vhost.host.clone());
        for cluster in &clusters {
            self.users.entry(cluster.clone()).or_default().insert(key.clone());
        }
        entry.clusters = clusters.into_iter().collect();
        if !entry.weighted.is_empty() {
            self.weighted_hosts += 1;
            j.config = true;
        }
        if has_problems(&entry) {
            self.problem_hosts += 1;
        }
        self.hosts.insert(key, entry);
    }

    /// The ports listened on (the model's listeners', and those always listened on), in
    /// order, and whether each serves HTTPS.
    fn listeners(&self, model: &Model) -> Vec<(u16, bool)> {
        let mut out: Vec<(u16, bool)> = model
            .listeners
            .iter()
            .map(|l| {
                let https = self.options.https_port == Some(l.port) || l.virtual_hosts.iter().any(|v| v.tls.is_some());
                (l.port, https)
            })
            .collect();
        for port in [Some(self.options.http_port), self.options.https_port].into_iter().flatten() {
            if !out.iter().any(|(p, _)| *p == port) {
                out.push((port, self.options.https_port == Some(port)));
            }
        }
        out.sort_by_key(|(port, _)| *port);
        out
    }

    /// The configuration around the managed backends: global and defaults, the frontends
    /// (head), the ExternalName and fixed backends (tail); the skeleton's digest.
    fn write_skeleton(&mut self, model: &Model, listeners: &[(u16, bool)]) {
        let base = self.options.base_dir.as_str();
        let mut head = String::new();
        // No global maxconn: HAProxy 2.6 derives it from the file-descriptor limit, and a
        // fixed value above what the limit allows makes HAProxy refuse to start (`haproxy
        // -c` does not notice; the traffic tests did).
        head.push_str(
            "# Generated by Portico from the resolved model. Do not edit.\n\
             global\n    ssl-server-verify required\n\n\
             defaults\n    mode http\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n    \
             timeout http-request 10s\n    option http-keep-alive\n\n",
        );
        let mut redirects = BTreeSet::new();
        for listener in &model.listeners {
            for route in listener.virtual_hosts.iter().flat_map(|v| &v.routes) {
                if let RouteAction::RedirectHttps { port } = route.action {
                    redirects.insert(port);
                }
            }
        }
        for &(port, https) in listeners {
            let map = |kind: u8| listener_map(base, port, kind);
            let (exact, wildcard, any, exact_path, wildcard_path, any_path) =
                (map(0), map(1), map(2), map(3), map(4), map(5));
            writeln!(head, "frontend listener_{port}").unwrap();
            let bind = match self.options.bind_address {
                IpAddr::V4(ip) => format!("{ip}:{port}"),
                IpAddr::V6(ip) => format!("ipv6@{ip}:{port}"),
            };
            if https {
                // The certificate by SNI from the list; an SNI no host has gets none
                // (strict-sni), never another host's.
                let list = crt_list(port);
                writeln!(
                    head,
                    "    bind {bind} ssl crt-list {base}/{list} strict-sni ssl-min-ver TLSv1.2 alpn h2,http/1.1"
                )
                .unwrap();
            } else {
                writeln!(head, "    bind {bind}").unwrap();
            }
            // Portico's own request headers (Envoy's routing key) never reach a backend, whoever
            // sent them: the same in both proxies.
            head.push_str("    http-request del-header x-portico-scope\n");
            head.push_str("    http-request set-var(txn.host) req.hdr(host),field(1,:),lower\n");
            head.push_str("    http-request set-var(txn.path) path\n");
            // Route selection is map lookups (exact host, wildcard, any host), each the
            // longest prefix of `host + path` (map_beg is a prefix tree): the same cost at 10
            // routes and at 10,000. Wildcard keys are the host without its first label. Per
            // host kind, the exact path first (it is at least as long as any prefix that
            // matches), then the longest prefix.
            writeln!(head, "    http-request set-var(txn.route) var(txn.host),concat(,txn.path,),map({exact_path})")
                .unwrap();
            let unrouted = "if !{ var(txn.route) -m found }";
            writeln!(
                head,
                "    http-request set-var(txn.route) var(txn.host),concat(,txn.path,),map_beg({exact}) {unrouted}"
            )
            .unwrap();
            for lookup in [format!("map({wildcard_path})"), format!("map_beg({wildcard})")] {
                writeln!(
                    head,
                    "    http-request set-var(txn.route) var(txn.host),field(2,.,0),concat(,txn.path,),{lookup} {unrouted}"
                )
                .unwrap();
            }
            writeln!(head, "    http-request set-var(txn.route) var(txn.path),map({any_path}) {unrouted}").unwrap();
            writeln!(head, "    http-request set-var(txn.route) var(txn.path),map_beg({any}) {unrouted}").unwrap();
            // Everything else keys off `txn.route`, so a Host rewrite never changes the route.
            let (rewrite_map, timeout_map, backend_map) = (&self.rewrite_map, &self.timeout_map, &self.backend_map);
            writeln!(
                head,
                "    http-request set-header Host %[var(txn.route),map({rewrite_map})] if {{ var(txn.route),map({rewrite_map}) -m found }}"
            )
            .unwrap();
            writeln!(head, "    http-request set-var(txn.timeout) var(txn.route),map_str_int({timeout_map})").unwrap();
            if self.weighted_hosts > 0 {
                let vhosts = model.listeners.iter().find(|l| l.port == port).map(|l| l.virtual_hosts.as_slice());
                for vhost in vhosts.unwrap_or_default() {
                    if let Some(entry) = self.hosts.get(&(port, vhost.host.clone())) {
                        head.push_str(&entry.weighted);
                    }
                }
            }
            writeln!(
                head,
                "    use_backend %[var(txn.route),map({backend_map})] if {{ var(txn.route),map({backend_map}) -m found }}"
            )
            .unwrap();
            writeln!(head, "    default_backend {NOT_FOUND_BACKEND}\n").unwrap();
        }
        let mut tail = String::new();
        for text in self.dns.values() {
            tail.push_str(text);
        }
        writeln!(
            tail,
            "backend {REJECT_BACKEND}\n    http-request return status 503 content-type text/plain string \"route in error, see its status\"\n"
        )
        .unwrap();
        writeln!(
            tail,
            "backend {BAD_GATEWAY_BACKEND}\n    http-request return status 502 content-type text/plain string \"include not found, see the HTTPProxy's status\"\n"
        )
        .unwrap();
        writeln!(
            tail,
            "backend {NOT_FOUND_BACKEND}\n    http-request return status 404 content-type text/plain string \"no route\""
        )
        .unwrap();
        for port in redirects {
            // The host as routed (lowercase, without the port the client wrote), then the
            // path and query as they came.
            let authority = if port == 443 { String::new() } else { format!(":{port}") };
            writeln!(
                tail,
                "\nbackend {}\n    http-request redirect location https://%[var(txn.host)]{authority}%[pathq] code 301",
                redirect_backend(port)
            )
            .unwrap();
        }
        // The skeleton is the configuration without the backends' server lines (managed
        // backends' names are compared as keys). The files servers load are named by
        // their content, and the runtime API loads new ones; serving certificates and
        // their lists are changed through it too: none of them is in the skeleton.
        self.runtime.skeleton = runtime::digest_all(&[head.as_bytes(), tail.as_bytes()]);
        self.head = head;
        self.tail = tail;
    }

    /// The commands between the journalled values and the current ones.
    fn commands(&self, j: &Journal) -> Option<Vec<String>> {
        let mut old = Runtime { skeleton: j.skeleton, ..Runtime::default() };
        let mut new = Runtime { skeleton: self.runtime.skeleton, ..Runtime::default() };
        (old.maps, new.maps) = sides(&j.map_paths, &self.runtime.maps, &j.maps);
        (old.crt_lists, new.crt_lists) = sides(&j.crt_paths, &self.runtime.crt_lists, &j.certificates);
        for (name, backend) in &j.backends {
            if let Some(backend) = backend {
                old.backends.insert(name.clone(), backend.clone());
            }
            if let Some(backend) = self.runtime.backends.get(name) {
                new.backends.insert(name.clone(), backend.clone());
            }
        }
        for (path, file) in &j.server_files {
            if let Some(file) = file {
                old.server_files.insert(path.clone(), file.clone());
            }
            if let Some(file) = self.runtime.server_files.get(path) {
                new.server_files.insert(path.clone(), file.clone());
            }
        }
        runtime::commands(&old, &new)
    }

    /// Every file of the rendering, relative to the base directory.
    fn file_names(&self) -> Vec<String> {
        let base = self.options.base_dir.as_str();
        let relative = |path: &str| self.relative(path);
        let mut out = vec!["haproxy.cfg".to_owned()];
        out.extend(self.runtime.maps.keys().map(|p| relative(p)));
        out.extend(self.runtime.server_files.iter().filter(|(_, f)| f.pem.is_some()).map(|(p, _)| relative(p)));
        out.extend(
            self.dns_files.keys().filter(|p| !self.runtime.server_files.contains_key(&format!("{base}/{p}"))).cloned(),
        );
        for (list, entries) in &self.runtime.crt_lists {
            out.push(relative(list));
            out.extend(entries.keys().map(|p| relative(p)));
        }
        out
    }

    /// The files a build changed (the others are as in the previous generation).
    fn changed_files(&self, j: &Journal) -> BTreeMap<String, Vec<u8>> {
        let relative = |path: &str| self.relative(path);
        let mut names = BTreeSet::new();
        if j.config {
            names.insert("haproxy.cfg".to_owned());
        }
        names.extend(j.maps.keys().filter(|p| self.runtime.maps.contains_key(*p)).map(|p| relative(p)));
        names.extend(j.server_files.keys().filter(|p| self.runtime.server_files.contains_key(*p)).map(|p| relative(p)));
        names.extend(j.dns_files.iter().cloned());
        for (list, entries) in &j.certificates {
            if self.runtime.crt_lists.contains_key(list) {
                names.insert(relative(list));
                names.extend(
                    entries.keys().filter(|p| self.runtime.crt_lists[list].contains_key(*p)).map(|p| relative(p)),
                );
            }
        }
        names.into_iter().filter_map(|name| self.file(&name).map(|bytes| (name, bytes))).collect()
    }

    /// A path as the configuration names it (under the base directory), relative to it.
    fn relative(&self, path: &str) -> String {
        path.strip_prefix(self.options.base_dir.as_str()).unwrap_or(path).trim_start_matches('/').to_owned()
    }

    /// A file of the rendering, by its path relative to the base directory.
    pub fn file(&self, name: &str) -> Option<Vec<u8>> {
        let base = self.options.base_dir.as_str();
        if name == "haproxy.cfg" {
            return Some(self.config_text().into_bytes());
        }
        let path = format!("{base}/{name}");
        if let Some(entries) = self.runtime.maps.get(&path) {
            let mut text = String::with_capacity(entries.len() * 48);
            for (key, value) in entries {
                text.push_str(key);
                text.push(' ');
                text.push_str(value);
                text.push('\n');
            }
            return Some(text.into_bytes());
        }
        if let Some(pem) = self.runtime.server_files.get(&path).and_then(|f| f.pem.as_ref()) {
            return Some(pem.to_vec());
        }
        if let Some((bytes, _)) = self.dns_files.get(name) {
            return Some(bytes.to_vec());
        }
        if let Some(entries) = self.runtime.crt_lists.get(&path) {
            let mut text = String::new();
            for (path, entry) in entries {
                let options = if entry.options.is_empty() { String::new() } else { format!(" {}", entry.options) };
                writeln!(text, "{path}{options} {}", entry.sni).unwrap();
            }
            return Some(text.into_bytes());
        }
        self.runtime.crt_lists.values().find_map(|entries| entries.get(&path)).map(|e| e.pem.clone())
    }

    /// haproxy.cfg: the head, each managed backend with its server lines, the tail.
    fn config_text(&self) -> String {
        let server_bytes: usize =
            self.runtime.backends.values().map(|b| 160 + b.slots.len() * (b.options.len() + 48)).sum();
        let mut cfg = String::with_capacity(self.head.len() + server_bytes + self.tail.len());
        cfg.push_str(&self.head);
        for (name, backend) in &self.runtime.backends {
            backend_head(name, &mut cfg);
            match &backend.cluster {
                None => cfg.push_str("    # spare: no route uses it\n"),
                Some(cluster) if cluster != name => writeln!(cfg, "    # cluster {cluster}").unwrap(),
                Some(_) => {}
            }
            runtime::server_lines(backend, &mut cfg);
            cfg.push('\n');
        }
        cfg.push_str(&self.tail);
        cfg
    }

    /// Every problem, in the order of the listeners and their hosts.
    fn problems(&self, model: &Model) -> Vec<String> {
        let mut out = Vec::new();
        if self.problem_hosts == 0 {
            return out;
        }
        for listener in &model.listeners {
            let entries: Vec<&HostEntry> = listener
                .virtual_hosts
                .iter()
                .filter_map(|v| self.hosts.get(&(listener.port, v.host.clone())))
                .collect();
            for entry in &entries {
                out.extend(entry.route_problems.iter().cloned());
            }
            for entry in &entries {
                if let Some(Err(why)) = &entry.certificate {
                    out.push(why.clone());
                }
            }
        }
        out
    }
}

/// Files of entries (a map file's keys and values, a certificate list's certificates) as
/// the journal and the builder hold them → the two sides `runtime::commands` compares:
/// each side's files (those before: `before`; now: `current`'s), with the journalled
/// entries only, as they were and as they are.
type Files<V> = BTreeMap<String, BTreeMap<String, V>>;

fn sides<V: Clone>(
    before: &BTreeSet<String>,
    current: &Files<V>,
    journalled: &Files<Option<V>>,
) -> (Files<V>, Files<V>) {
    let mut old: Files<V> = before.iter().map(|path| (path.clone(), BTreeMap::new())).collect();
    let mut new: Files<V> = current.keys().map(|path| (path.clone(), BTreeMap::new())).collect();
    for (path, entries) in journalled {
        for (key, was) in entries {
            if let (Some(file), Some(was)) = (old.get_mut(path), was) {
                file.insert(key.clone(), was.clone());
            }
            if let (Some(file), Some(is)) = (new.get_mut(path), current.get(path).and_then(|f| f.get(key))) {
                file.insert(key.clone(), is.clone());
            }
        }
    }
    (old, new)
}

/// A backend's lines before its servers: the same for every cluster's backend (its route's
/// timeout, carried from the frontend in `txn.timeout`, applied).
fn backend_head(name: &str, out: &mut String) {
    out.push_str("backend ");
    out.push_str(name);
    out.push_str("\n    balance roundrobin\n    http-request set-timeout server var(txn.timeout) if { var(txn.timeout) -m found }\n");
}

/// Where a cluster's routes go: its backend, or why they answer 503.
fn routed_to(cluster: &ClusterName, target: &Target) -> Result<String, String> {
    match target {
        Target::Backend(name) => Ok(name.clone()),
        Target::Dns { .. } => Ok(cluster.to_string()),
        Target::Blocked(why) => Err(why.clone()),
    }
}

fn has_problems(entry: &HostEntry) -> bool {
    !entry.route_problems.is_empty() || entry.certificate.as_ref().is_some_and(Result::is_err)
}

/// A listener's route-selection map (`LISTENER_MAPS` index).
fn listener_map(base: &str, port: u16, kind: u8) -> String {
    format!("{base}/maps/l{port}-{}.map", LISTENER_MAPS[usize::from(kind)])
}

fn find_host<'m>(model: &'m Model, key: &HostKey) -> Option<&'m VirtualHost> {
    let listener = model.listeners.binary_search_by_key(&key.0, |l| l.port).ok().map(|i| &model.listeners[i])?;
    let wanted = (host_rank(&key.1), &key.1);
    match listener.virtual_hosts.binary_search_by(|v| (host_rank(&v.host), &v.host).cmp(&wanted)) {
        Ok(i) => Some(&listener.virtual_hosts[i]),
        // A model not in the pieces' order (one made by hand): looked through.
        Err(_) => listener.virtual_hosts.iter().find(|v| v.host == key.1),
    }
}

/// A digest of the material at hand for each secret, made once per plan: what is written
/// is its bytes, so the bytes are what a rendering depends on (not only the hash the
/// material is labelled with).
type MaterialMemo<'t> = HashMap<&'t portico_model::SecretRef, u64>;

fn secret_material<'t>(secret: &'t portico_model::SecretRef, trust: &Trust, memo: &mut MaterialMemo<'t>) -> u64 {
    *memo.entry(secret).or_insert_with(|| {
        let mut h = std::hash::DefaultHasher::new();
        if let Some(material) = trust.get(secret) {
            material.ca.as_ref().map(|p| (&p.sha256, &p.pem)).hash(&mut h);
            material.key_pair.as_ref().map(|k| (&k.sha256, &k.chain_pem, &k.key_pem)).hash(&mut h);
        }
        h.finish()
    })
}

/// The trust material a cluster's rendering depends on: the content hashes the model names
/// for its secrets, the material at hand, and whether its CA file is usable.
fn material_of<'t>(
    cluster: &'t Cluster,
    model: &Model,
    trust: &Trust,
    unusable: &UnusableFiles,
    memo: &mut MaterialMemo<'t>,
) -> u64 {
    let Some(tls) = &cluster.key.tls else { return 0 };
    let mut h = std::hash::DefaultHasher::new();
    if let Verification::Required { ca, .. } = &tls.verify {
        for secret in ca.secrets() {
            model.trust_ref(secret).map(|t| &t.sha256).hash(&mut h);
            secret_material(secret, trust, memo).hash(&mut h);
        }
        if let CaSource::File(path) = ca {
            unusable.get(path).hash(&mut h);
        }
    }
    if let Some(secret) = &tls.client_cert {
        model.client_certs.iter().find(|t| &t.secret == secret).map(|t| &t.sha256).hash(&mut h);
        secret_material(secret, trust, memo).hash(&mut h);
    }
    h.finish()
}

/// The trust material a virtual host's rendering depends on: its certificate's.
fn host_material<'t>(vhost: &'t VirtualHost, trust: &Trust, memo: &mut MaterialMemo<'t>) -> u64 {
    vhost.tls.as_ref().map_or(0, |tls| secret_material(&tls.secret, trust, memo))
}

/// A cluster's servers' options and files, its ExternalName backend, or why it cannot be
/// served.
fn render_cluster<'m>(
    cluster: &'m Cluster,
    model: &Model,
    trust: &Trust,
    unusable: &UnusableFiles,
    base: &str,
    memo: &mut FileMemo<'m>,
) -> Render {
    let files = match cluster_files(cluster, model, trust, unusable, memo) {
        Ok(files) => files,
        Err(why) => return Render::Blocked(why),
    };
    let options = server_options_of(cluster, &files, base);
    match &cluster.servers {
        Servers::Endpoints(_) => Render::Endpoints { options, files: files.server_files(cluster, base) },
        Servers::Dns { host, port } => {
            let mut text = String::new();
            backend_head(cluster.name.as_str(), &mut text);
            writeln!(text, "    server s1 {host}:{port} init-addr last,libc,none{options}\n").unwrap();
            Render::Dns { text, files: files.written() }
        }
    }
}

//! Issue 9: the builder renders only the pieces that changed, and what it gives equals a
//! whole rendering over the running configuration: the same maps, backends and files
//! (the files it did not produce are those of the previous generation), the same runtime
//! commands, the same problems. Over random sequences of changes to real models: endpoints,
//! route prefixes, hosts coming and going, clusters new (a TLS policy changed) and
//! swapped, weighted routes, new listeners, trust material going and coming back (or its
//! bytes changing under the same hash), HTTPS hosts.

use portico_bus::model::digests_of;
use portico_model::{
    Cluster, ClusterName, HostMatch, KeyPairPem, Model, RouteAction, SecretRef, Servers, ServingTls, TlsVersion,
    TrustMaterial, Verification, VirtualHost, WeightedCluster,
};
use portico_renderer_haproxy::{render_over, runtime, ConfigBuilder, Options, Trust};
use portico_resolver::Config;
use portico_testkit::{pipeline, repo, testdata, Rng};
use std::collections::BTreeMap;

fn options() -> Options {
    Options {
        base_dir: "/run/portico/current".parse().unwrap(),
        bind_address: "127.0.0.1".parse().unwrap(),
        http_port: 8080,
        https_port: Some(8443),
    }
}

/// A model and its trust material to start from, with spare material to change to.
fn bases() -> Vec<(Model, Trust)> {
    let (mut tls, mut trust) = pipeline(&[repo().join("examples/upstream-tls")], &Config::default());
    // HTTPS hosts: a certificate for two of the hosts (the renderer copies the PEM).
    let secret = SecretRef::new("shop", "site-cert").unwrap();
    let pair = KeyPairPem { sha256: "a".repeat(64), chain_pem: "CHAIN\n".into(), key_pem: "KEY\n".into() };
    trust.insert(secret.clone(), TrustMaterial { secret: secret.clone(), ca: None, key_pair: Some(pair) });
    let serving = ServingTls { secret, sha256: "a".repeat(64), min_version: TlsVersion::Tls12 };
    for vhost in tls.listeners.iter_mut().flat_map(|l| l.virtual_hosts.iter_mut()).take(2) {
        if !matches!(vhost.host, HostMatch::Any) {
            vhost.tls = Some(serving.clone());
        }
    }
    let edge = pipeline(&[testdata("edge-cases.yaml")], &Config::default());
    vec![(tls, trust), edge]
}

/// Clusters no route names go (the resolver never lists them).
fn prune(model: &mut Model) {
    let named: std::collections::BTreeSet<ClusterName> = model
        .routes()
        .filter_map(|(_, _, r)| match &r.action {
            RouteAction::Forward { backends, .. } => Some(backends.iter().map(|b| b.cluster.clone())),
            _ => None,
        })
        .flatten()
        .collect();
    model.clusters.retain(|c| named.contains(&c.name));
}

fn forwards(model: &mut Model) -> Vec<&mut Vec<WeightedCluster>> {
    model
        .listeners
        .iter_mut()
        .flat_map(|l| l.virtual_hosts.iter_mut())
        .flat_map(|v| v.routes.iter_mut())
        .filter_map(|r| match &mut r.action {
            RouteAction::Forward { backends, .. } => Some(backends),
            _ => None,
        })
        .collect()
}

/// One random change to the model or the trust material.
fn change(rng: &mut Rng, model: &mut Model, trust: &mut Trust, base: &(Model, Trust), n: usize) {
    let addresses = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:8443", "[fd00::1]:443", "10.0.0.4:81"];
    match rng.below(13) {
        0 | 1 | 10 | 11 | 12 => {
            // Endpoints come, go and move.
            let Some(cluster) = pick_mut(rng, &mut model.clusters) else { return };
            if let Servers::Endpoints(list) = &mut cluster.servers {
                *list = addresses.iter().filter(|_| rng.below(2) == 0).map(|a| a.parse().unwrap()).collect();
                list.sort();
            }
        }
        2 => {
            // A route's prefix changes.
            let Some(listener) = pick_mut(rng, &mut model.listeners) else { return };
            let Some(vhost) = pick_mut(rng, &mut listener.virtual_hosts) else { return };
            let Some(route) = pick_mut(rng, &mut vhost.routes) else { return };
            route.prefix = rng.pick(&["/", "/a", "/b/c", "/shop", "/x"]).parse().unwrap();
            vhost.routes.sort_by(portico_model::route_order);
        }
        3 => {
            // A host goes, or comes back as it was.
            if rng.below(2) == 0 {
                let Some(listener) = pick_mut(rng, &mut model.listeners) else { return };
                let i = rng.below(listener.virtual_hosts.len().max(1) as u64) as usize;
                if i < listener.virtual_hosts.len() {
                    listener.virtual_hosts.remove(i);
                }
                model.listeners.retain(|l| !l.virtual_hosts.is_empty());
            } else {
                let (base_model, _) = base;
                let Some(listener) = base_model.listeners.get(rng.below(base_model.listeners.len() as u64) as usize)
                else {
                    return;
                };
                let Some(vhost) = listener.virtual_hosts.first() else { return };
                put_host(model, listener.port, vhost.clone());
                for cluster in &base_model.clusters {
                    if model.cluster(&cluster.name).is_none() {
                        let at = model.clusters.partition_point(|c| c.name < cluster.name);
                        model.clusters.insert(at, cluster.clone());
                    }
                }
            }
        }
        4 => {
            // A route is sent to another cluster of the model.
            let names: Vec<ClusterName> = model.clusters.iter().map(|c| c.name.clone()).collect();
            if names.is_empty() {
                return;
            }
            let to = rng.pick(&names).clone();
            let mut all = forwards(model);
            let Some(backends) = pick_mut(rng, &mut all) else { return };
            if let Some(b) = backends.first_mut() {
                b.cluster = to;
            }
        }
        5 => {
            // A new cluster (what a TLS policy, a CA or a Service change makes), routed to.
            let Some(old) = model.clusters.get(rng.below(model.clusters.len().max(1) as u64) as usize).cloned() else {
                return;
            };
            let mut new = Cluster { name: format!("{}-v{n}", old.name).parse().unwrap(), ..old };
            if let Some(tls) = &mut new.key.tls {
                if rng.below(2) == 0 {
                    tls.verify = Verification::None;
                }
                tls.sni = None;
            }
            let name = new.name.clone();
            let at = model.clusters.partition_point(|c| c.name < name);
            model.clusters.insert(at, new);
            let mut all = forwards(model);
            let Some(backends) = pick_mut(rng, &mut all) else { return };
            if let Some(b) = backends.first_mut() {
                b.cluster = name;
            }
        }
        6 => {
            // A route split across two clusters, or back to one.
            let names: Vec<ClusterName> = model.clusters.iter().map(|c| c.name.clone()).collect();
            let mut all = forwards(model);
            let Some(backends) = pick_mut(rng, &mut all) else { return };
            if backends.len() > 1 {
                backends.truncate(1);
            } else if let Some(other) = names.get(rng.below(names.len().max(1) as u64) as usize) {
                backends.push(WeightedCluster { cluster: other.clone(), weight: 30 });
                backends[0].weight = 70;
            }
        }
        7 => {
            // Trust material goes (its clusters' routes answer 503), or comes back.
            let secrets: Vec<SecretRef> = base.1.keys().cloned().collect();
            let Some(secret) = secrets.get(rng.below(secrets.len().max(1) as u64) as usize) else { return };
            if rng.below(3) == 0 {
                // Other bytes under the same content hash: what is written is the bytes.
                if let Some(ca) = trust.get_mut(secret).and_then(|m| m.ca.as_mut()) {
                    ca.pem.push_str("# again\n");
                }
            } else if trust.remove(secret).is_none() {
                trust.insert(secret.clone(), base.1[secret].clone());
            }
        }
        8 if rng.below(3) == 0 => {
            // A host on a new listener (a reload).
            let Some(vhost) = model.listeners.first().and_then(|l| l.virtual_hosts.first()).cloned() else { return };
            put_host(model, 9000 + rng.below(2) as u16, vhost);
        }
        _ => {
            // An HTTPS host's certificate goes or comes back.
            let Some(listener) = pick_mut(rng, &mut model.listeners) else { return };
            let Some(vhost) = pick_mut(rng, &mut listener.virtual_hosts) else { return };
            let serving = base.0.listeners.iter().flat_map(|l| &l.virtual_hosts).find_map(|v| v.tls.clone());
            if vhost.tls.is_some() {
                vhost.tls = None;
            } else if !matches!(vhost.host, HostMatch::Any) {
                vhost.tls = serving;
            }
        }
    }
    prune(model);
}

fn pick_mut<'a, T>(rng: &mut Rng, items: &'a mut [T]) -> Option<&'a mut T> {
    if items.is_empty() {
        return None;
    }
    let i = rng.below(items.len() as u64) as usize;
    items.get_mut(i)
}

fn put_host(model: &mut Model, port: u16, vhost: VirtualHost) {
    let at = model.listeners.partition_point(|l| l.port < port);
    if model.listeners.get(at).is_none_or(|l| l.port != port) {
        model.listeners.insert(at, portico_model::Listener { port, virtual_hosts: Vec::new() });
    }
    let hosts = &mut model.listeners[at].virtual_hosts;
    let key = |v: &VirtualHost| (portico_model::host_rank(&v.host), v.host.clone());
    match hosts.binary_search_by(|v| key(v).cmp(&key(&vhost))) {
        Ok(i) => hosts[i] = vhost,
        Err(i) => hosts.insert(i, vhost),
    }
}

#[test]
fn a_build_by_piece_equals_a_whole_rendering_over_the_running_one() {
    let options = options();
    let (mut runtime_steps, mut reloads, mut rendered_pieces, mut total_pieces) = (0, 0, 0, 0);
    for (b, base) in bases().iter().enumerate() {
        for seed in 1..=40u64 {
            let mut rng = Rng(seed * 7919 + b as u64);
            let (mut model, mut trust) = base.clone();
            let mut revision = 0;
            let unusable = portico_renderer_haproxy::unusable_ca_files(&model);
            let mut builder = ConfigBuilder::new(&options);
            let digests = digests_of(&model);
            let first = builder.build(&model, &trust, revision, &unusable, &|id| digests.get(id).copied());
            assert!(first.commands.is_none(), "a first build is a reload");
            let mut files: BTreeMap<String, Vec<u8>> = first.changed;
            for step in 0..12 {
                let before = format!("{:?}", trust.values().map(|m| m.ca.as_ref().map(|c| &c.pem)).collect::<Vec<_>>());
                for _ in 0..=rng.below(3) {
                    change(&mut rng, &mut model, &mut trust, base, step);
                }
                if before != format!("{:?}", trust.values().map(|m| m.ca.as_ref().map(|c| &c.pem)).collect::<Vec<_>>())
                {
                    revision += 1;
                }
                let running = builder.runtime().clone();
                let whole = render_over(&model, &trust, &options, Some(&running), &unusable);
                let expected = runtime::commands(&running, &whole.runtime);
                // The pieces' digests, as the bus gives them.
                let digests = digests_of(&model);
                let plan = builder.plan(&model, &trust, revision, &unusable, &|id| digests.get(id).copied());
                assert_eq!(plan.lacks_trust, !whole.problems.is_empty(), "seed {seed} step {step}: lacks trust");
                rendered_pieces += plan.rendered;
                total_pieces +=
                    model.clusters.len() + model.listeners.iter().map(|l| l.virtual_hosts.len()).sum::<usize>();
                let built = builder.apply(&model, &trust, plan);
                let context = format!("base {b} seed {seed} step {step}");
                assert_eq!(built.problems, whole.problems, "{context}: problems");
                assert_eq!(built.commands, expected, "{context}: commands");
                if built.commands.is_none() {
                    // The service renders afresh and reloads; so does the test.
                    reloads += 1;
                    builder = ConfigBuilder::new(&options);
                    files = builder.build(&model, &trust, revision, &unusable, &|id| digests.get(id).copied()).changed;
                    continue;
                }
                runtime_steps += 1;
                assert_eq!(builder.runtime(), &whole.runtime, "{context}: the runtime");
                let mut changed = built.changed;
                let next: BTreeMap<String, Vec<u8>> = built
                    .names
                    .iter()
                    .map(|name| {
                        let bytes = changed.remove(name).or_else(|| files.get(name).cloned());
                        (name.clone(), bytes.unwrap_or_else(|| panic!("{context}: {name} neither new nor kept")))
                    })
                    .collect();
                assert!(changed.is_empty(), "{context}: files changed that are not in the rendering: {changed:?}");
                for (name, bytes) in &whole.files {
                    assert_eq!(
                        next.get(name).map(|b| String::from_utf8_lossy(b).into_owned()),
                        Some(String::from_utf8_lossy(bytes).into_owned()),
                        "{context}: {name}"
                    );
                }
                assert_eq!(next.keys().collect::<Vec<_>>(), whole.files.keys().collect::<Vec<_>>(), "{context}");
                files = next;
            }
        }
    }
    // Not vacuous: most steps went through the runtime API, some were reloads, and builds
    // rendered a small part of the pieces.
    assert!(runtime_steps > 600 && reloads > 20, "runtime {runtime_steps}, reloads {reloads}");
    eprintln!("runtime {runtime_steps}, reloads {reloads}, rendered {rendered_pieces} of {total_pieces}");
    assert!(rendered_pieces * 3 < total_pieces, "rendered {rendered_pieces} of {total_pieces} pieces");
}

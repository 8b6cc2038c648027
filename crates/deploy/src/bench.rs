//! `portico bench`: a synthetic cluster at the scale of DESIGN.md's targets (10,000
//! HTTPProxies, 10,000 Services with EndpointSlices, 1,000 CA secrets), timed through the
//! real secrets validation and the real resolver.

use portico_model::{
    Delegation, Endpoint, EndpointPort, EndpointSlice, HttpProxy, HttpProxyRoute, HttpProxyService, Meta, Object,
    Secret, Service, ServicePort, ServiceType, TlsCertificateDelegation, UpstreamValidation,
};
use portico_resolver::{resolve, Config, Snapshot};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Options {
    pub proxies: usize,
    pub services: usize,
    pub ca_secrets: usize,
    pub namespaces: usize,
    pub runs: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { proxies: 10_000, services: 10_000, ca_secrets: 1_000, namespaces: 100, runs: 7 }
    }
}

#[derive(Debug)]
pub struct Report {
    pub options: Options,
    pub generate: Duration,
    pub validate_secrets: Duration,
    pub resolve: Vec<Duration>,
    /// A one-object change through the incremental resolver: re-resolving the units
    /// that depend on it and updating the route table (`Incremental::rebuild`).
    pub one_change: Vec<Duration>,
    /// Reading the whole model off the table after that change (`Incremental::model`).
    pub one_change_model: Vec<Duration>,
    /// The pieces that one-object change touched (`Incremental::delta`): what the resolver
    /// reads off and publishes after its first model.
    pub one_change_delta: Vec<Duration>,
    /// An EndpointSlice changed (the most frequent change in a real cluster): rebuild.
    pub endpoint_change: Vec<Duration>,
    pub content_hash: Duration,
    /// haproxy.cfg and its files.
    pub render_haproxy: Vec<Duration>,
    /// A rendering over the running one and the runtime commands between them.
    pub render_haproxy_over: Vec<Duration>,
    /// renderer-haproxy's builder taking a one-piece change (commands and changed files):
    /// an endpoint moved, a route's prefix changed; the most bytes of files such a change
    /// produced.
    pub render_haproxy_piece: Vec<Duration>,
    pub render_haproxy_route: Vec<Duration>,
    /// renderer-envoy's builder taking the same changes (the snapshot it serves).
    pub render_envoy_piece: Vec<Duration>,
    pub render_haproxy_piece_files: usize,
    /// Envoy's xDS resources (typed).
    pub render_envoy: Vec<Duration>,
    /// Envoy's static bootstrap as YAML (typed resources through prost-reflect).
    pub envoy_yaml: Duration,
    pub haproxy_cfg_bytes: usize,
    pub routes: usize,
    pub clusters: usize,
    pub invalid: usize,
    pub model_json_bytes: usize,
    /// Resident set after generating the world and validating the secrets.
    pub inputs_rss_kib: Option<u64>,
    /// Peak through resolving and rendering (what a service holds).
    pub peak_rss_kib: Option<u64>,
    /// Peak after also writing the static bootstrap as YAML (translate only).
    pub peak_with_yaml_rss_kib: Option<u64>,
}

fn meta(ns: &str, name: &str) -> Meta {
    Meta {
        namespace: ns.parse().expect("generated names are valid"),
        name: name.parse().expect("generated names are valid"),
    }
}

/// One CA certificate PEM per secret (distinct keys, so distinct hashes).
fn ca_pems(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            params.distinguished_name.push(rcgen::DnType::CommonName, format!("bench ca {i}"));
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.not_before = rcgen::date_time_ymd(2024, 1, 1);
            params.not_after = rcgen::date_time_ymd(2124, 1, 1);
            let key = rcgen::KeyPair::generate().expect("key");
            params.self_signed(&key).expect("self-signed").pem()
        })
        .collect()
}

/// The synthetic world: Services in `namespaces` namespaces, each TLS on 8443 by annotation
/// with three ready endpoints; CA secrets spread over the namespaces plus a shared
/// namespace delegated to all; every proxy validates its service against a CA (one in ten
/// cross-namespace through the delegation), one in a hundred references a missing CA.
pub fn generate(options: &Options) -> (Snapshot, Vec<Secret>) {
    let ns = |i: usize| format!("ns-{}", i % options.namespaces);
    let pems = ca_pems(options.ca_secrets.min(64));
    let mut secrets = Vec::new();
    for i in 0..options.ca_secrets {
        let namespace = if i % 10 == 0 { "shared".to_owned() } else { ns(i) };
        let mut data = BTreeMap::new();
        data.insert("ca.crt".to_owned(), pems[i % pems.len()].clone().into_bytes());
        secrets.push(Secret {
            meta: meta(&namespace, &format!("ca-{i}")),
            secret_type: "Opaque".into(),
            data,
            holder: portico_model::Holder::Secret,
        });
    }
    // The non-shared CAs of each namespace.
    let mut local_cas: Vec<Vec<usize>> = vec![Vec::new(); options.namespaces];
    for c in (0..options.ca_secrets).filter(|c| c % 10 != 0) {
        local_cas[c % options.namespaces].push(c);
    }
    let mut snapshot = Snapshot::default();
    let mut objects = Vec::new();
    objects.push(Object::TlsCertificateDelegation(TlsCertificateDelegation {
        meta: meta("shared", "all"),
        delegations: (0..options.ca_secrets)
            .filter(|i| i % 10 == 0)
            .map(|i| Delegation { secret_name: format!("ca-{i}"), target_namespaces: vec!["*".into()] })
            .collect(),
    }));
    for i in 0..options.services {
        let mut annotations = BTreeMap::new();
        annotations.insert("projectcontour.io/upstream-protocol.tls".to_owned(), "8443".to_owned());
        objects.push(Object::Service(Service {
            meta: meta(&ns(i), &format!("svc-{i}")),
            annotations,
            service_type: ServiceType::ClusterIp,
            ports: vec![
                ServicePort {
                    name: "https".into(),
                    port: 8443,
                    target_port: None,
                    protocol: "TCP".into(),
                    app_protocol: None,
                },
                ServicePort {
                    name: "http".into(),
                    port: 80,
                    target_port: None,
                    protocol: "TCP".into(),
                    app_protocol: None,
                },
            ],
        }));
        objects.push(Object::EndpointSlice(EndpointSlice {
            meta: meta(&ns(i), &format!("svc-{i}-abcde")),
            service_name: Some(format!("svc-{i}")),
            ports: vec![
                EndpointPort { name: "https".into(), port: Some(8443) },
                EndpointPort { name: "http".into(), port: Some(8080) },
            ],
            endpoints: (0..3)
                .map(|e| Endpoint {
                    addresses: vec![format!("10.{}.{}.{}", i / 250 % 250, i % 250, e + 1)],
                    ready: true,
                })
                .collect(),
        }));
    }
    for i in 0..options.proxies {
        let service = i % options.services.max(1);
        let namespace = ns(service);
        // A CA in the proxy's own namespace, or (one in ten) the shared delegated one.
        let ca = if i % 10 == 0 {
            format!("shared/ca-{}", (i / 10 * 10) % options.ca_secrets.max(1))
        } else {
            let local = &local_cas[service % options.namespaces];
            match local.get(i % local.len().max(1)) {
                Some(c) => format!("ca-{c}"),
                None => "missing".to_owned(),
            }
        };
        let ca = if i % 100 == 99 { "missing-ca".to_owned() } else { ca };
        objects.push(Object::HttpProxy(HttpProxy {
            meta: meta(&namespace, &format!("proxy-{i}")),
            fqdn: Some(format!("app-{i}.example.com")),
            tls: None,
            includes: vec![],
            ignored: vec![],
            routes: vec![HttpProxyRoute {
                prefixes: vec![],
                permit_insecure: false,
                ignored: vec![],
                services: vec![HttpProxyService {
                    name: format!("svc-{service}"),
                    port: 8443,
                    weight: None,
                    protocol: None,
                    validation: Some(UpstreamValidation {
                        ca_secret: ca,
                        subject_name: format!("svc-{service}.{namespace}.svc"),
                        subject_names: vec![],
                    }),
                }],
                set_headers: vec![],
                response_timeout: None,
                idle_timeout: None,
            }],
        }));
    }
    for o in objects {
        snapshot.apply(o).expect("no secrets among the objects");
    }
    (snapshot, secrets)
}

/// A `/proc/self/status` memory figure (Linux), in KiB: `VmHWM` (peak) or `VmRSS` (now).
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Peak resident set size of this process, in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    proc_status_kib("VmHWM:")
}

pub fn run(options: &Options, now: i64) -> Report {
    let started = Instant::now();
    let (mut snapshot, secrets) = generate(options);
    let generate = started.elapsed();

    let started = Instant::now();
    let mut trust = BTreeMap::new();
    for secret in &secrets {
        let (verdict, material) = portico_secrets::validate_secret(secret, now);
        snapshot.set_verdict(verdict);
        trust.insert(material.secret.clone(), material);
    }
    let validate_secrets = started.elapsed();
    let inputs_rss_kib = proc_status_kib("VmRSS:");

    let config = Config::default();
    let mut resolve_times = Vec::new();
    let mut resolved = None;
    for _ in 0..options.runs.max(1) {
        let started = Instant::now();
        let r = resolve(&snapshot, &config);
        resolve_times.push(started.elapsed());
        resolved = Some(r);
    }
    let resolved = resolved.expect("at least one run");

    // One-object changes through the incremental resolver (what the resolver service
    // does): an HTTPProxy's subject name, then an EndpointSlice's endpoints.
    let mut incremental = portico_resolver::Incremental::from_snapshot(snapshot.clone(), config.clone());
    incremental.rebuild();
    incremental.model_read(); // as after the resolver's first (whole) publish
    let (mut one_change, mut one_change_model, mut endpoint_change) = (Vec::new(), Vec::new(), Vec::new());
    let mut one_change_delta = Vec::new();
    let proxy = snapshot.http_proxies.values().next().cloned();
    let slice = snapshot.endpoint_slices.values().next().cloned();
    for run in 0..options.runs.max(1) {
        if let Some(mut proxy) = proxy.clone() {
            if let Some(v) = proxy.routes[0].services[0].validation.as_mut() {
                v.subject_name = format!("changed-{run}.example.com");
            }
            incremental.apply(Object::HttpProxy(proxy)).expect("not a secret");
        }
        let started = Instant::now();
        let changes = incremental.rebuild();
        one_change.push(started.elapsed());
        let started = Instant::now();
        let delta = incremental.delta();
        one_change_delta.push(started.elapsed());
        let started = Instant::now();
        let model = incremental.model();
        one_change_model.push(started.elapsed());
        drop((changes, delta, model)); // outside the timed region, like the full-resolve runs
        if let Some(mut slice) = slice.clone() {
            slice.endpoints.truncate(1 + run % 3);
            incremental.apply(Object::EndpointSlice(slice)).expect("not a secret");
        }
        let started = Instant::now();
        let changes = incremental.rebuild();
        endpoint_change.push(started.elapsed());
        drop(changes);
    }

    let started = Instant::now();
    let _hash = resolved.model.content_hash();
    let content_hash = started.elapsed();

    let haproxy_options = portico_renderer_haproxy::Options {
        base_dir: "/etc/portico/haproxy".parse().expect("a valid path"),
        bind_address: std::net::IpAddr::from([0, 0, 0, 0]),
        http_port: config.http_port,
        https_port: Some(config.https_port),
    };
    let envoy_options = portico_renderer_envoy::Options {
        bind_address: std::net::IpAddr::from([0, 0, 0, 0]),
        http_port: config.http_port,
        admin_port: 9901,
    };
    let (mut render_haproxy, mut render_envoy, mut haproxy_cfg_bytes) = (Vec::new(), Vec::new(), 0);
    let mut render_haproxy_over = Vec::new();
    for _ in 0..options.runs.max(1) {
        let started = Instant::now();
        let rendered = portico_renderer_haproxy::render(&resolved.model, &trust, &haproxy_options);
        render_haproxy.push(started.elapsed());
        haproxy_cfg_bytes = rendered.files.get("haproxy.cfg").map(Vec::len).unwrap_or(0);
        let started = Instant::now();
        let resources = portico_renderer_envoy::resources(
            &resolved.model,
            &trust,
            &envoy_options,
            portico_renderer_envoy::Delivery::Ads,
        );
        render_envoy.push(started.elapsed());
        // What renderer-haproxy does per change: render over the running configuration
        // (slots and spare backends kept) and find the runtime commands between the two.
        let started = Instant::now();
        let over = portico_renderer_haproxy::render_over(
            &resolved.model,
            &trust,
            &haproxy_options,
            Some(&rendered.runtime),
            &Default::default(),
        );
        let commands = portico_renderer_haproxy::runtime::commands(&rendered.runtime, &over.runtime);
        render_haproxy_over.push(started.elapsed());
        assert_eq!(commands.map(|c| c.len()), Some(0), "the same model over itself: nothing to change");
        drop((rendered, resources, over));
    }
    let (render_haproxy_piece, render_haproxy_route, render_haproxy_piece_files, render_envoy_piece) =
        by_piece(&resolved.model, &trust, &haproxy_options, &envoy_options, options.runs);
    let peak_before_yaml = peak_rss_kib();
    let started = Instant::now();
    let (bootstrap, _) = portico_renderer_envoy::bootstrap(&resolved.model, &trust, &envoy_options);
    let _yaml = portico_renderer_envoy::json::to_yaml(&bootstrap);
    let envoy_yaml = started.elapsed();

    Report {
        options: options.clone(),
        generate,
        validate_secrets,
        resolve: resolve_times,
        one_change,
        one_change_model,
        one_change_delta,
        endpoint_change,
        content_hash,
        render_haproxy,
        render_haproxy_over,
        render_haproxy_piece,
        render_haproxy_route,
        render_haproxy_piece_files,
        render_envoy_piece,
        render_envoy,
        envoy_yaml,
        haproxy_cfg_bytes,
        routes: resolved.model.routes().count(),
        clusters: resolved.model.clusters.len(),
        invalid: resolved.statuses.iter().filter(|s| !s.is_valid()).count(),
        model_json_bytes: serde_json::to_vec(&resolved.model).map(|v| v.len()).unwrap_or(0),
        inputs_rss_kib,
        peak_rss_kib: peak_before_yaml,
        peak_with_yaml_rss_kib: peak_rss_kib(),
    }
}

/// What the renderers do per change: their builders, kept between changes, take a
/// one-piece change (an endpoint moved, a route's prefix changed, in turn); renderer-haproxy's
/// produces the runtime commands and the files that changed, renderer-envoy's the snapshot.
/// renderer-haproxy's times of each kind, the most bytes of files a change produced, and
/// renderer-envoy's times.
fn by_piece(
    model: &portico_model::Model,
    trust: &portico_renderer_haproxy::Trust,
    options: &portico_renderer_haproxy::Options,
    envoy_options: &portico_renderer_envoy::Options,
    runs: usize,
) -> (Vec<Duration>, Vec<Duration>, usize, Vec<Duration>) {
    use portico_bus::model::{digest_of, digests_of};
    use portico_model::ModelPieceRef;
    use portico_model::{PieceId, RouteAction, Servers};
    // The pieces' digests, as the bus gives them.
    let mut digests = digests_of(model);
    let unusable = portico_renderer_haproxy::UnusableFiles::new();
    let mut builder = portico_renderer_haproxy::ConfigBuilder::new(options);
    builder.build(model, trust, 0, &unusable, &|id| digests.get(id).copied());
    let mut envoy = portico_renderer_envoy::incremental::SnapshotBuilder::new();
    let _ = envoy.build("0".into(), model, trust, 0, envoy_options, |id| digests.get(id).copied());
    let mut model = model.clone();
    let (mut endpoints, mut routes, mut bytes, mut envoy_times) = (Vec::new(), Vec::new(), 0, Vec::new());
    for run in 0..runs.max(1) * 2 {
        let id = if run % 2 == 0 {
            let cluster = &mut model.clusters[run % 7];
            if let Servers::Endpoints(list) = &mut cluster.servers {
                if let Some(first) = list.first_mut() {
                    first.set_port(first.port() ^ 1);
                }
            }
            let id = PieceId::Cluster(cluster.name.clone());
            digests.insert(id.clone(), digest_of(&ModelPieceRef::Cluster(cluster)));
            id
        } else {
            let listener = &mut model.listeners[0];
            let vhost = &mut listener.virtual_hosts[run % 5];
            if let Some(route) = vhost.routes.first_mut().filter(|r| matches!(r.action, RouteAction::Forward { .. })) {
                route.prefix = format!("/changed-{run}").parse().expect("a path");
            }
            let id = PieceId::VirtualHost(listener.port, vhost.host.clone());
            digests.insert(id.clone(), digest_of(&ModelPieceRef::VirtualHost { port: listener.port, vhost }));
            id
        };
        let started = Instant::now();
        let step = builder.build(&model, trust, 0, &unusable, &|id| digests.get(id).copied());
        if run % 2 == 0 {
            endpoints.push(started.elapsed())
        } else {
            routes.push(started.elapsed())
        }
        assert!(step.commands.as_ref().is_some_and(|c| !c.is_empty()), "{id:?}: through the runtime API");
        bytes = bytes.max(step.changed.values().map(Vec::len).sum());
        let started = Instant::now();
        let (snapshot, _, reuse) =
            envoy.build(format!("{run}"), &model, trust, 0, envoy_options, |id| digests.get(id).copied());
        envoy_times.push(started.elapsed());
        assert_eq!(reuse.rendered, 1, "{id:?}: one piece rendered for Envoy");
        drop(snapshot);
    }
    (endpoints, routes, bytes, envoy_times)
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn mib(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.1} MiB", k as f64 / 1024.0)).unwrap_or_else(|| "unknown".into())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

impl Report {
    pub fn render(&self) -> String {
        let o = &self.options;
        let min = self.resolve.iter().min().copied().unwrap_or_default();
        let max = self.resolve.iter().max().copied().unwrap_or_default();
        format!(
            "portico bench: {} HTTPProxies, {} Services (+{} EndpointSlices, 3 endpoints each), {} CA secrets, {} namespaces\n\
             generate world            {}\n\
             validate {} CA secrets  {}\n\
             full resolve              median {} (min {}, max {}, {} runs)\n\
             one-object change         median {} (incremental: the dependents of one HTTPProxy)\n\
             + delta read-off          median {} (the pieces it touched: what the resolver publishes)\n\
             + model read-off          median {} (the whole model from the route table)\n\
             EndpointSlice change      median {} (incremental)\n\
             model content hash        {}\n\
             render haproxy.cfg        median {} ({:.1} MiB)\n\
             + over the running one    median {} (slots and spares kept, runtime commands found)\n\
             + by piece                median {} an endpoint, {} a route (renderer-haproxy per change; up to {:.1} MiB of files)\n\
             render Envoy resources    median {} (typed, for xDS)\n\
             + by piece                median {} (renderer-envoy per change: one piece, the snapshot)\n\
             Envoy bootstrap as YAML   {}\n\
             result                    {} routes, {} clusters, {} invalid objects, model JSON {:.1} MiB\n\
             RSS with inputs loaded    {}\n\
             peak RSS                  {} (inputs, two models, rendered configs)\n\
             peak RSS with YAML        {} (after the bootstrap YAML, translate only)\n",
            o.proxies,
            o.services,
            o.services,
            o.ca_secrets,
            o.namespaces,
            ms(self.generate),
            o.ca_secrets,
            ms(self.validate_secrets),
            ms(median(&self.resolve)),
            ms(min),
            ms(max),
            self.resolve.len(),
            ms(median(&self.one_change)),
            ms(median(&self.one_change_delta)),
            ms(median(&self.one_change_model)),
            ms(median(&self.endpoint_change)),
            ms(self.content_hash),
            ms(median(&self.render_haproxy)),
            self.haproxy_cfg_bytes as f64 / 1_048_576.0,
            ms(median(&self.render_haproxy_over)),
            ms(median(&self.render_haproxy_piece)),
            ms(median(&self.render_haproxy_route)),
            self.render_haproxy_piece_files as f64 / 1_048_576.0,
            ms(median(&self.render_envoy)),
            ms(median(&self.render_envoy_piece)),
            ms(self.envoy_yaml),
            self.routes,
            self.clusters,
            self.invalid,
            self.model_json_bytes as f64 / 1_048_576.0,
            mib(self.inputs_rss_kib),
            mib(self.peak_rss_kib),
            mib(self.peak_with_yaml_rss_kib),
        )
    }
}

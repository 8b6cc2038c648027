//! The resolved model as Envoy v3 resources (envoy-types), and as a static bootstrap.
//!
//! `resources` gives what an xDS server serves: listeners (HTTP connection manager with
//! scoped routes: a host's routes are found by its scope, see `scopes`), scopes, route
//! configurations, clusters (EDS, or STRICT_DNS for ExternalName), load assignments
//! and SDS secrets. CA bundles and the client certificate are SDS secrets named after the
//! Secret (not its content), so rotating them changes a secret, not the clusters.
//! `bootstrap` inlines the same resources as static resources for `envoy -c`.
//!
//! Pure: every value written is a model newtype (which has passed its grammar), an enum
//! or a number; nothing is templated from a raw user string.

#[cfg(feature = "service")]
pub mod ads;
#[cfg(feature = "service")]
pub mod incremental;
pub mod json;
pub mod scopes;
#[cfg(feature = "service")]
pub mod service;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use portico_model::{
    Alpn, CaSource, Cluster, HostMatch, Model, RouteAction, SecretRef, Servers, Timeout, TlsVersion, TrustMaterial,
    UpstreamProtocol, Verification,
};
use prost::{Message, Name};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// Trust material by secret.
pub type Trust = BTreeMap<SecretRef, TrustMaterial>;

#[derive(Clone, Debug)]
pub struct Options {
    /// The address listeners bind to.
    pub bind_address: IpAddr,
    /// The main HTTP port: always listened on, even when no route uses it (404).
    pub http_port: u16,
    /// Envoy's admin port (bootstrap only), bound to 127.0.0.1.
    pub admin_port: u16,
}

/// Envoy resources for one model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    pub listeners: Vec<listener::Listener>,
    pub route_configurations: Vec<route::RouteConfiguration>,
    /// Over ADS, the scopes that pick a route configuration by host (`scopes`).
    pub scoped_routes: Vec<route::ScopedRouteConfiguration>,
    pub clusters: Vec<cluster::Cluster>,
    pub load_assignments: Vec<endpoint::ClusterLoadAssignment>,
    pub secrets: Vec<tls::Secret>,
    /// Routes rendered as a 503 because their trust material is missing or stale.
    pub problems: Vec<String>,
}

pub fn any<M: Message + Name>(message: &M) -> Any {
    Any { type_url: M::type_url(), value: message.encode_to_vec() }
}

fn socket_address(ip: IpAddr, port: u16) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

fn dns_address(host: &str, port: u16) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: host.to_owned(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

/// The SDS secret name of a CA bundle or client certificate: stable per Secret (or
/// ConfigMap).
pub fn ca_secret_name(secret: &SecretRef) -> String {
    match secret.holder {
        portico_model::Holder::Secret => format!("ca/{}/{}", secret.namespace, secret.name),
        portico_model::Holder::ConfigMap => format!("ca-configmap/{}/{}", secret.namespace, secret.name),
    }
}

/// The SDS secret name of the union of several CA bundles (a BackendTLSPolicy with several
/// `caCertificateRefs`): stable per list of holders.
pub fn ca_union_name(list: &[SecretRef]) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for secret in list {
        hasher.update(ca_secret_name(secret).as_bytes());
        hasher.update(b"\n");
    }
    format!("ca-union/{}", &portico_model::hex(&hasher.finalize())[..32])
}

/// The system trust store on the Envoy host (Gateway API `wellKnownCACertificates:
/// System`): Debian's and Ubuntu's bundle, which the Envoy image Portico ships has.
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

pub fn client_secret_name(secret: &SecretRef) -> String {
    format!("client/{}/{}", secret.namespace, secret.name)
}

/// The SDS secret name of a serving certificate (SPEC section 8): stable per Secret, so a
/// renewed certificate is a new version of the same secret, and no listener changes.
pub fn serving_secret_name(secret: &SecretRef) -> String {
    format!("serving/{}/{}", secret.namespace, secret.name)
}

pub fn route_config_name(port: u16) -> String {
    format!("routes_{port}")
}

fn tls_version(v: TlsVersion) -> i32 {
    match v {
        TlsVersion::Tls12 => tls::tls_parameters::TlsProtocol::TlSv12 as i32,
        TlsVersion::Tls13 => tls::tls_parameters::TlsProtocol::TlSv13 as i32,
    }
}

/// How an SDS secret is found: over ADS for xDS, or among the static secrets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    Ads,
    Static,
}

fn sds(name: String, delivery: Delivery) -> tls::SdsSecretConfig {
    tls::SdsSecretConfig { name, sds_config: (delivery == Delivery::Ads).then(ads_source) }
}

fn ads_source() -> core::ConfigSource {
    core::ConfigSource {
        resource_api_version: core::ApiVersion::V3 as i32,
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(core::AggregatedConfigSource {})),
        ..Default::default()
    }
}

/// Check the trust material a cluster needs is at hand, with the model's content hash.
fn trust_ready(cluster: &Cluster, model: &Model, trust: &Trust) -> Result<(), String> {
    let Some(policy) = &cluster.key.tls else { return Ok(()) };
    if let Verification::Required { ca, .. } = &policy.verify {
        for secret in ca.secrets() {
            model.ca_material(secret, trust)?;
        }
    }
    if let Some(secret) = &policy.client_cert {
        model.client_material(secret, trust)?;
    }
    Ok(())
}

/// A digest of all the trust a cluster's rendering reads (`trust_ready`, `ca_digests`):
/// for each secret it names, the model's content hash of it and the material's at hand.
/// Two trusts with the same digest render the cluster alike, so a rotated CA renders
/// again only the clusters that verify with it.
pub fn cluster_trust_digest(cluster: &Cluster, model: &Model, trust: &Trust) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    let Some(policy) = &cluster.key.tls else { return 0 };
    if let Verification::Required { ca, .. } = &policy.verify {
        for secret in ca.secrets() {
            let material = trust.get(secret).and_then(|m| m.ca.as_ref()).map(|p| &p.sha256);
            (secret, model.trust_ref(secret).map(|t| &t.sha256), material).hash(&mut h);
        }
    }
    if let Some(secret) = &policy.client_cert {
        let wanted = model.client_certs.iter().find(|t| &t.secret == secret).map(|t| &t.sha256);
        let material = trust.get(secret).and_then(|m| m.key_pair.as_ref()).map(|c| &c.sha256);
        (secret, wanted, material).hash(&mut h);
    }
    h.finish()
}

fn upstream_tls(cluster: &Cluster, delivery: Delivery) -> Option<core::TransportSocket> {
    let policy = cluster.key.tls.as_ref()?;
    let validation = match &policy.verify {
        Verification::None => None,
        Verification::Required { ca, subject_names, subject_uris, .. } => {
            let matcher =
                |san_type: tls::subject_alt_name_matcher::SanType, value: String| tls::SubjectAltNameMatcher {
                    san_type: san_type as i32,
                    matcher: Some(matcher::StringMatcher {
                        match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(value)),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
            use tls::subject_alt_name_matcher::SanType;
            let sans: Vec<tls::SubjectAltNameMatcher> = subject_names
                .iter()
                .map(|name| matcher(SanType::Dns, name.to_string()))
                .chain(subject_uris.iter().map(|uri| matcher(SanType::Uri, uri.to_string())))
                .collect();
            let by_sds = |name: String| {
                tls::common_tls_context::ValidationContextType::CombinedValidationContext(
                    tls::common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(tls::CertificateValidationContext {
                            match_typed_subject_alt_names: sans.clone(),
                            ..Default::default()
                        }),
                        validation_context_sds_secret_config: Some(sds(name, delivery)),
                        ..Default::default()
                    },
                )
            };
            let by_file = |path: &str| {
                tls::common_tls_context::ValidationContextType::ValidationContext(tls::CertificateValidationContext {
                    trusted_ca: Some(core::DataSource {
                        specifier: Some(core::data_source::Specifier::Filename(path.to_owned())),
                        ..Default::default()
                    }),
                    match_typed_subject_alt_names: sans.clone(),
                    ..Default::default()
                })
            };
            Some(match ca {
                CaSource::Secret(secret) => by_sds(ca_secret_name(secret)),
                CaSource::Union(list) => by_sds(ca_union_name(list)),
                CaSource::File(path) => by_file(path.as_str()),
                CaSource::System => by_file(SYSTEM_CA_FILE),
            })
        }
    };
    let mut alpn: Vec<String> = policy.alpn.iter().map(|a| a.as_str().to_owned()).collect();
    if alpn.is_empty() && cluster.key.protocol == UpstreamProtocol::H2 {
        alpn.push(Alpn::H2.as_str().to_owned());
    }
    let context = tls::UpstreamTlsContext {
        sni: policy.sni.as_ref().map(|s| s.to_string()).unwrap_or_default(),
        common_tls_context: Some(tls::CommonTlsContext {
            tls_params: Some(tls::TlsParameters {
                tls_minimum_protocol_version: tls_version(policy.min_version),
                tls_maximum_protocol_version: tls_version(policy.max_version),
                ..Default::default()
            }),
            alpn_protocols: alpn,
            tls_certificate_sds_secret_configs: policy
                .client_cert
                .iter()
                .map(|secret| sds(client_secret_name(secret), delivery))
                .collect(),
            validation_context_type: validation,
            ..Default::default()
        }),
        ..Default::default()
    };
    Some(core::TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(&context))),
    })
}

fn protocol_options(cluster: &Cluster) -> std::collections::HashMap<String, Any> {
    use upstream_http::http_protocol_options::{explicit_http_config::ProtocolConfig, UpstreamProtocolOptions};
    let options = match cluster.key.protocol {
        UpstreamProtocol::H2 | UpstreamProtocol::H2c => {
            UpstreamProtocolOptions::ExplicitHttpConfig(upstream_http::http_protocol_options::ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(Default::default())),
            })
        }
        UpstreamProtocol::Tls
            if cluster.key.tls.as_ref().is_some_and(|t| t.alpn.contains(&Alpn::H2) && t.alpn.len() > 1) =>
        {
            UpstreamProtocolOptions::AutoConfig(upstream_http::http_protocol_options::AutoHttpConfig::default())
        }
        _ => return Default::default(),
    };
    let message = upstream_http::HttpProtocolOptions { upstream_protocol_options: Some(options), ..Default::default() };
    [(upstream_http::HttpProtocolOptions::full_name(), any(&message))].into_iter().collect()
}

fn load_assignment(cluster: &Cluster) -> endpoint::ClusterLoadAssignment {
    let addresses: Vec<core::Address> = match &cluster.servers {
        Servers::Endpoints(list) => list.iter().map(|a: &SocketAddr| socket_address(a.ip(), a.port())).collect(),
        Servers::Dns { host, port } => vec![dns_address(host.as_str(), *port)],
    };
    endpoint::ClusterLoadAssignment {
        cluster_name: cluster.name.to_string(),
        endpoints: vec![endpoint::LocalityLbEndpoints {
            lb_endpoints: addresses
                .into_iter()
                .map(|address| endpoint::LbEndpoint {
                    host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(endpoint::Endpoint {
                        address: Some(address),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The content hashes of the CA bundles a cluster verifies against, as the model names
/// them (`None` for a cluster that verifies nothing from the bus).
fn ca_digests(cluster: &Cluster, model: &Model) -> Option<String> {
    let Verification::Required { ca, .. } = &cluster.key.tls.as_ref()?.verify else { return None };
    let shas: Vec<&str> = ca.secrets().iter().filter_map(|s| model.trust_ref(s).map(|t| t.sha256.as_str())).collect();
    (!shas.is_empty()).then(|| shas.join(","))
}

/// A cluster's `metadata.filter_metadata["portico"]`: the content hashes of its CA bundles.
/// They make a rotated CA a changed cluster, which Envoy replaces, draining the connections
/// made under the previous CA: an SDS update of the validation context alone would leave
/// pooled upstream connections verified by a CA no longer trusted serving for as long as
/// they live.
fn trust_metadata(digests: Option<String>) -> Option<core::Metadata> {
    use envoy_types::pb::google::protobuf::{value::Kind as ValueKind, Struct, Value};
    let digests = digests?;
    let fields = [("ca_sha256".to_owned(), Value { kind: Some(ValueKind::StringValue(digests)) })].into();
    Some(core::Metadata { filter_metadata: [("portico".to_owned(), Struct { fields })].into(), ..Default::default() })
}

fn cluster_resource(cluster: &Cluster, model: &Model, delivery: Delivery) -> cluster::Cluster {
    use cluster::cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig};
    let (discovery, eds, load) = match (&cluster.servers, delivery) {
        (Servers::Dns { .. }, _) => (DiscoveryType::StrictDns, None, Some(load_assignment(cluster))),
        (Servers::Endpoints(_), Delivery::Ads) => (
            DiscoveryType::Eds,
            Some(EdsClusterConfig { eds_config: Some(ads_source()), service_name: String::new() }),
            None,
        ),
        (Servers::Endpoints(_), Delivery::Static) => (DiscoveryType::Static, None, Some(load_assignment(cluster))),
    };
    cluster::Cluster {
        name: cluster.name.to_string(),
        connect_timeout: Some(Duration { seconds: 5, nanos: 0 }),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(discovery as i32)),
        eds_cluster_config: eds,
        load_assignment: load,
        lb_policy: cluster::cluster::LbPolicy::RoundRobin as i32,
        dns_lookup_family: cluster::cluster::DnsLookupFamily::V4Preferred as i32,
        transport_socket: upstream_tls(cluster, delivery),
        typed_extension_protocol_options: protocol_options(cluster),
        metadata: trust_metadata(ca_digests(cluster, model)),
        ..Default::default()
    }
}

fn domains(host: &HostMatch) -> Vec<String> {
    match host {
        HostMatch::Any => vec!["*".to_owned()],
        HostMatch::Exact(name) => vec![name.to_string(), format!("{name}:*")],
        HostMatch::Wildcard(suffix) => vec![format!("*.{suffix}"), format!("*.{suffix}:*")],
    }
}

/// Envoy's `*.example.com` domain takes any depth; the model's wildcard is one label (as
/// HAProxy renders it, and as Contour does it): a wildcard's routes also match the
/// authority against one label before the suffix, with an optional port.
fn one_label(host: &HostMatch) -> Vec<route::HeaderMatcher> {
    let HostMatch::Wildcard(suffix) = host else { return Vec::new() };
    // Case-insensitive, as Envoy's domains and HAProxy's lookup (which lowercases) are.
    let regex = format!("(?i)^[^.]+[.]{}(:[0-9]+)?$", suffix.as_str().replace('.', "[.]"));
    vec![route::HeaderMatcher {
        name: ":authority".to_owned(),
        header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(
            matcher::StringMatcher {
                match_pattern: Some(matcher::string_matcher::MatchPattern::SafeRegex(matcher::RegexMatcher {
                    regex,
                    ..Default::default()
                })),
                ..Default::default()
            },
        )),
        ..Default::default()
    }]
}

fn reject() -> route::route::Action {
    direct(503, "route in error, see its status")
}

/// 301 to the same host and path on `https://` and `port` (443 is left out of the URL).
fn redirect_https(port: u16) -> route::route::Action {
    route::route::Action::Redirect(route::RedirectAction {
        scheme_rewrite_specifier: Some(route::redirect_action::SchemeRewriteSpecifier::HttpsRedirect(true)),
        // Envoy writes `:443` when told 443; without a port it keeps the request's, which
        // the listener strips (`StripAnyHostPort`).
        port_redirect: if port == 443 { 0 } else { u32::from(port) },
        response_code: route::redirect_action::RedirectResponseCode::MovedPermanently as i32,
        ..Default::default()
    })
}

fn direct(status: u32, body: &str) -> route::route::Action {
    route::route::Action::DirectResponse(route::DirectResponseAction {
        status,
        body: Some(core::DataSource {
            specifier: Some(core::data_source::Specifier::InlineString(body.to_owned())),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The clusters that cannot be served (trust material missing or stale), with why: their
/// routes answer 503, never unverified.
pub fn blocked_clusters(model: &Model, trust: &Trust) -> BTreeMap<String, String> {
    model
        .clusters
        .iter()
        .filter_map(|c| blocked_cluster(c, model, trust).map(|why| (c.name.to_string(), why)))
        .collect()
}

/// Why a cluster cannot be served (its trust material is not at hand), if it cannot.
pub fn blocked_cluster(cluster: &Cluster, model: &Model, trust: &Trust) -> Option<String> {
    trust_ready(cluster, model, trust).err()
}

/// The ports Envoy listens on: the model's, and always the main HTTP port.
pub fn listener_ports(model: &Model, options: &Options) -> Vec<u16> {
    let mut ports: Vec<u16> = model.listeners.iter().map(|l| l.port).collect();
    if !ports.contains(&options.http_port) {
        ports.push(options.http_port);
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The any-host virtual host on `port`, if there is one: a host deeper than a wildcard
/// takes its routes, as in HAProxy (whose third lookup is any host's).
pub fn any_host_on(model: &Model, port: u16) -> Option<&portico_model::VirtualHost> {
    model.listeners.iter().filter(|l| l.port == port).flat_map(|l| &l.virtual_hosts).find(|v| v.host == HostMatch::Any)
}

/// One virtual host: its routes (a wildcard's checked against one label), and for a
/// wildcard the any-host routes after them. Routes whose cluster is blocked answer 503,
/// and say so in `problems`.
pub fn virtual_host(
    vhost: &portico_model::VirtualHost,
    any_host: Option<&portico_model::VirtualHost>,
    blocked: &BTreeMap<String, String>,
    problems: &mut Vec<String>,
) -> route::VirtualHost {
    let mut route_of = |vhost: &portico_model::VirtualHost, r: &portico_model::Route, headers| {
        let action = match &r.action {
            RouteAction::Reject => reject(),
            RouteAction::BadGateway => direct(502, "include not found, see the HTTPProxy's status"),
            RouteAction::RedirectHttps { port } => redirect_https(*port),
            RouteAction::Forward { backends, host_rewrite, timeout, idle_timeout } => {
                if let Some(why) = backends.iter().find_map(|b| blocked.get(b.cluster.as_str())) {
                    problems.push(format!("{} route {} {}: answers 503: {why}", r.source, vhost.host, r.prefix));
                    reject()
                } else {
                    forward(
                        backends,
                        host_rewrite.as_ref(),
                        timeout.unwrap_or(Timeout::DEFAULT_RESPONSE),
                        *idle_timeout,
                    )
                }
            }
        };
        route::Route {
            name: format!(
                "{}/{}{}{}",
                r.source.namespace,
                r.source.name,
                r.prefix,
                if r.exact { " (exact)" } else { "" }
            ),
            r#match: Some(route::RouteMatch {
                path_specifier: Some(if r.exact {
                    route::route_match::PathSpecifier::Path(r.prefix.to_string())
                } else {
                    route::route_match::PathSpecifier::Prefix(r.prefix.to_string())
                }),
                headers,
                ..Default::default()
            }),
            action: Some(action),
            ..Default::default()
        }
    };
    let mut routes: Vec<route::Route> =
        vhost.routes.iter().map(|r| route_of(vhost, r, one_label(&vhost.host))).collect();
    if let (HostMatch::Wildcard(_), Some(any)) = (&vhost.host, any_host) {
        routes.extend(any.routes.iter().map(|r| route_of(any, r, Vec::new())));
    }
    route::VirtualHost {
        // The host itself: unique within a route configuration, and the same whatever other
        // hosts come and go (an incremental rendering reuses it).
        name: vhost.host.to_string(),
        domains: domains(&vhost.host),
        routes,
        ..Default::default()
    }
}

/// In one route table (a static configuration, which has no fallback scope), an exact
/// host's routes are followed by those its requests fall through to when none of its own
/// match: the wildcard's over it (which carry any host's), else any host's. The order
/// HAProxy looks up in, and what the scoped table does (see `scopes`).
fn fall_through(vhosts: &[&portico_model::VirtualHost], rendered: &mut [route::VirtualHost]) {
    let find = |wanted: &dyn Fn(&HostMatch) -> bool| vhosts.iter().position(|v| wanted(&v.host));
    let any = find(&|h| *h == HostMatch::Any);
    let extra: Vec<Option<usize>> = vhosts
        .iter()
        .map(|v| match &v.host {
            HostMatch::Exact(name) => {
                let over = name
                    .as_str()
                    .split_once('.')
                    .and_then(|(_, suffix)| find(&|h| matches!(h, HostMatch::Wildcard(s) if s.as_str() == suffix)));
                over.or(any)
            }
            HostMatch::Wildcard(_) | HostMatch::Any => None,
        })
        .collect();
    for (i, from) in extra.into_iter().enumerate() {
        if let Some(from) = from {
            let routes = rendered[from].routes.clone();
            rendered[i].routes.extend(routes);
        }
    }
}

/// The SDS secrets: every CA bundle the model names, the client certificate, and the
/// serving certificates of HTTPS hosts.
pub fn secrets(model: &Model, trust: &Trust) -> Vec<tls::Secret> {
    let mut out = Vec::new();
    let mut serving = BTreeMap::new();
    for vhost in model.listeners.iter().flat_map(|l| &l.virtual_hosts) {
        if let Some(t) = &vhost.tls {
            if let Ok(pair) = Model::serving_material(t, trust) {
                serving.insert(serving_secret_name(&t.secret), pair);
            }
        }
    }
    for (name, pair) in serving {
        out.push(tls::Secret {
            name,
            r#type: Some(tls::secret::Type::TlsCertificate(tls::TlsCertificate {
                certificate_chain: Some(inline(&pair.chain_pem)),
                private_key: Some(inline(&pair.key_pem)),
                ..Default::default()
            })),
        });
    }
    for t in &model.trust {
        if let Ok(pem) = model.ca_material(&t.secret, trust) {
            out.push(tls::Secret {
                name: ca_secret_name(&t.secret),
                r#type: Some(tls::secret::Type::ValidationContext(tls::CertificateValidationContext {
                    trusted_ca: Some(inline(&pem.pem)),
                    ..Default::default()
                })),
            });
        }
    }
    // Unions of several bundles, each member as the model resolved it.
    let mut unions = std::collections::BTreeSet::new();
    for cluster in &model.clusters {
        if let Some(Verification::Required { ca: CaSource::Union(list), .. }) =
            cluster.key.tls.as_ref().map(|t| &t.verify)
        {
            unions.insert(list);
        }
    }
    for list in unions {
        let members: Result<Vec<&portico_model::Pem>, String> =
            list.iter().map(|secret| model.ca_material(secret, trust)).collect();
        if let Ok(members) = members {
            let pem: String = members.iter().map(|p| p.pem.as_str()).collect();
            out.push(tls::Secret {
                name: ca_union_name(list),
                r#type: Some(tls::secret::Type::ValidationContext(tls::CertificateValidationContext {
                    trusted_ca: Some(inline(&pem)),
                    ..Default::default()
                })),
            });
        }
    }
    for t in &model.client_certs {
        if let Ok(c) = model.client_material(&t.secret, trust) {
            out.push(tls::Secret {
                name: client_secret_name(&t.secret),
                r#type: Some(tls::secret::Type::TlsCertificate(tls::TlsCertificate {
                    certificate_chain: Some(inline(&c.chain_pem)),
                    private_key: Some(inline(&c.key_pem)),
                    ..Default::default()
                })),
            });
        }
    }
    out
}

/// Every resource of the model. Trust material must be at hand for each TLS cluster; a
/// cluster without it is left out and its routes answer 503 (never unverified).
pub fn resources(model: &Model, trust: &Trust, options: &Options, delivery: Delivery) -> Resources {
    let mut out = Resources::default();
    let blocked = blocked_clusters(model, trust);
    for c in model.clusters.iter().filter(|c| !blocked.contains_key(c.name.as_str())) {
        out.clusters.push(cluster_resource(c, model, delivery));
        if delivery == Delivery::Ads && matches!(c.servers, Servers::Endpoints(_)) {
            out.load_assignments.push(load_assignment(c));
        }
    }
    for port in listener_ports(model, options) {
        let any_host = any_host_on(model, port);
        let vhosts = model.listeners.iter().filter(|l| l.port == port).flat_map(|l| &l.virtual_hosts);
        match delivery {
            Delivery::Static => {
                let vhosts: Vec<&portico_model::VirtualHost> = vhosts.collect();
                let mut virtual_hosts: Vec<route::VirtualHost> =
                    vhosts.iter().map(|vhost| virtual_host(vhost, any_host, &blocked, &mut out.problems)).collect();
                fall_through(&vhosts, &mut virtual_hosts);
                out.route_configurations.push(route::RouteConfiguration {
                    name: route_config_name(port),
                    virtual_hosts,
                    // Portico's routing header never reaches a backend, as over ADS.
                    request_headers_to_remove: vec![scopes::SCOPE_HEADER.to_owned()],
                    ..Default::default()
                });
            }
            Delivery::Ads => {
                // Exact hosts by shard, each with its scope; the others in the fallback.
                let (mut shards, mut rest) = (BTreeMap::<u64, Vec<route::VirtualHost>>::new(), Vec::new());
                for vhost in vhosts {
                    let rendered = virtual_host(vhost, any_host, &blocked, &mut out.problems);
                    match &vhost.host {
                        HostMatch::Exact(name) => {
                            shards.entry(scopes::shard_of(name)).or_default().push(rendered);
                            out.scoped_routes.push(scopes::scope(port, Some(name)));
                        }
                        HostMatch::Wildcard(_) | HostMatch::Any => rest.push(rendered),
                    }
                }
                out.route_configurations.push(scopes::route_configuration(route_config_name(port), rest, false));
                out.scoped_routes.push(scopes::scope(port, None));
                for (shard, hosts) in shards {
                    out.route_configurations.push(scopes::route_configuration(
                        scopes::shard_name(port, shard),
                        hosts,
                        true,
                    ));
                }
            }
        }
        out.listeners.extend(listener_for(model, trust, port, options.bind_address, delivery, &mut out.problems));
    }
    out.secrets = secrets(model, trust);
    // A route appended to a wildcard's virtual host (any host's) reports its problem once.
    let mut seen = std::collections::BTreeSet::new();
    out.problems.retain(|p| seen.insert(p.clone()));
    out
}

fn inline(text: &str) -> core::DataSource {
    core::DataSource {
        specifier: Some(core::data_source::Specifier::InlineString(text.to_owned())),
        ..Default::default()
    }
}

/// A timeout as protobuf's Duration; zero disables it (`infinity`).
fn duration(timeout: Timeout) -> Duration {
    match timeout {
        Timeout::Millis(ms) => Duration { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 },
        Timeout::Infinite => Duration { seconds: 0, nanos: 0 },
    }
}

fn forward(
    backends: &[portico_model::WeightedCluster],
    host_rewrite: Option<&portico_model::DnsName>,
    timeout: Timeout,
    idle_timeout: Option<Timeout>,
) -> route::route::Action {
    use route::route_action::{ClusterSpecifier, HostRewriteSpecifier};
    let live: Vec<_> = backends.iter().filter(|b| b.weight > 0).collect();
    let specifier = match live.as_slice() {
        [one] => ClusterSpecifier::Cluster(one.cluster.to_string()),
        _ => ClusterSpecifier::WeightedClusters(route::WeightedCluster {
            clusters: live
                .iter()
                .map(|b| route::weighted_cluster::ClusterWeight {
                    name: b.cluster.to_string(),
                    weight: Some(UInt32Value { value: b.weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    route::route::Action::Route(route::RouteAction {
        cluster_specifier: Some(specifier),
        host_rewrite_specifier: host_rewrite.map(|h| HostRewriteSpecifier::HostRewriteLiteral(h.to_string())),
        // Explicit: Envoy's own default is 15 s, HAProxy's `timeout server` is 60 s.
        // Zero disables the timeout (`infinity`).
        timeout: Some(duration(timeout)),
        // The route's idle timeout: how long the stream may go without activity.
        idle_timeout: idle_timeout.map(duration),
        ..Default::default()
    })
}

/// The listener on `port`: plain HTTP, or, when its hosts have certificates, HTTPS with one
/// filter chain per host chosen by SNI (an SNI no host has matches no chain, and the
/// handshake fails). A host whose certificate is not at hand gets no chain (its handshakes
/// fail, said in `problems`); an HTTPS listener without any chain is not served.
pub fn listener_for(
    model: &Model,
    trust: &Trust,
    port: u16,
    bind: IpAddr,
    delivery: Delivery,
    problems: &mut Vec<String>,
) -> Option<listener::Listener> {
    let hosts: Vec<&portico_model::VirtualHost> =
        model.listeners.iter().filter(|l| l.port == port).flat_map(|l| &l.virtual_hosts).collect();
    if !hosts.iter().any(|v| v.tls.is_some()) {
        return Some(http_listener(port, bind, delivery));
    }
    let mut chains = Vec::new();
    for vhost in hosts {
        let Some(t) = &vhost.tls else { continue };
        if let Err(why) = Model::serving_material(t, trust) {
            problems.push(format!("host {}: HTTPS handshakes fail: {why}", vhost.host));
            continue;
        }
        let sni = match &vhost.host {
            HostMatch::Exact(name) => name.to_string(),
            HostMatch::Wildcard(suffix) => format!("*.{suffix}"),
            HostMatch::Any => continue,
        };
        let context = tls::DownstreamTlsContext {
            common_tls_context: Some(tls::CommonTlsContext {
                tls_params: Some(tls::TlsParameters {
                    tls_minimum_protocol_version: tls_version(t.min_version),
                    tls_maximum_protocol_version: tls_version(TlsVersion::Tls13),
                    ..Default::default()
                }),
                tls_certificate_sds_secret_configs: vec![sds(serving_secret_name(&t.secret), delivery)],
                alpn_protocols: vec![Alpn::H2.as_str().to_owned(), Alpn::Http11.as_str().to_owned()],
                ..Default::default()
            }),
            ..Default::default()
        };
        chains.push(listener::FilterChain {
            name: sni.clone(),
            filter_chain_match: Some(listener::FilterChainMatch { server_names: vec![sni], ..Default::default() }),
            filters: vec![http_manager(port, delivery)],
            transport_socket: Some(core::TransportSocket {
                name: "envoy.transport_sockets.tls".to_owned(),
                config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(&context))),
            }),
            ..Default::default()
        });
    }
    if chains.is_empty() {
        return None;
    }
    use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
    Some(listener::Listener {
        name: format!("listener_{port}"),
        address: Some(socket_address(bind, port)),
        listener_filters: vec![listener::ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".to_owned(),
            config_type: Some(listener::listener_filter::ConfigType::TypedConfig(any(&TlsInspector::default()))),
            ..Default::default()
        }],
        filter_chains: chains,
        ..Default::default()
    })
}

/// The HTTP connection manager of a listener's filter chains (routes by RDS, or filled in
/// by the bootstrap).
fn http_manager(port: u16, delivery: Delivery) -> listener::Filter {
    let router = hcm::HttpFilter {
        name: "envoy.filters.http.router".to_owned(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(&Router::default()))),
        ..Default::default()
    };
    let (early_header_mutation_extensions, route_specifier, http_filters) = match delivery {
        Delivery::Ads => {
            let (early, scoped, lua) = scopes::manager(port);
            (early, scoped, vec![lua, router])
        }
        // The bootstrap fills the route configuration in (see `bootstrap`).
        Delivery::Static => {
            (Vec::new(), hcm::http_connection_manager::RouteSpecifier::RouteConfig(Default::default()), vec![router])
        }
    };
    let manager = hcm::HttpConnectionManager {
        stat_prefix: format!("listener_{port}"),
        codec_type: hcm::http_connection_manager::CodecType::Auto as i32,
        // Hosts are matched without the port the client wrote (as HAProxy does), and a
        // redirect to HTTPS does not carry the HTTP port over.
        strip_port_mode: Some(hcm::http_connection_manager::StripPortMode::StripAnyHostPort(true)),
        route_specifier: Some(route_specifier),
        early_header_mutation_extensions,
        http_filters,
        ..Default::default()
    };
    listener::Filter {
        name: "envoy.filters.network.http_connection_manager".to_owned(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(any(&manager))),
    }
}

fn http_listener(port: u16, bind: IpAddr, delivery: Delivery) -> listener::Listener {
    listener::Listener {
        name: format!("listener_{port}"),
        address: Some(socket_address(bind, port)),
        filter_chains: vec![listener::FilterChain {
            filters: vec![http_manager(port, delivery)],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A static bootstrap with the same resources: route configurations inlined into their
/// listeners, load assignments into their clusters, secrets as static secrets.
/// A bootstrap for an Envoy configured only by ADS from `ads` (plaintext HTTP/2): the node
/// id it reports (its applied record is `envoy.<node_id>`), the admin port on 127.0.0.1,
/// and the one static cluster that reaches the ADS server. Every value is a number, an
/// address or a node id the caller controls; `node_id` must be a plain token.
pub fn ads_bootstrap(node_id: &str, admin_port: u16, ads: std::net::SocketAddr) -> String {
    ads_bootstrap_with(node_id, admin_port, ads, AdsApi::Delta, None)
}

/// How an Envoy reaches renderer-envoy over mutual TLS: its own certificate and key (which
/// name its node id), the CA of the server's certificate, and the name that certificate
/// carries. Typed paths and names: nothing unchecked reaches the bootstrap.
#[derive(Clone, Debug)]
pub struct AdsClientTls {
    pub ca: portico_model::AbsPath,
    pub cert: portico_model::AbsPath,
    pub key: portico_model::AbsPath,
    pub server_name: portico_model::DnsName,
}

/// Which ADS variant a bootstrap asks for: incremental (what Portico writes) or state of
/// the world (what older control planes' bootstraps say; renderer-envoy serves both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdsApi {
    Delta,
    StateOfTheWorld,
}

/// [`ads_bootstrap`] with the ADS variant chosen.
pub fn ads_bootstrap_with(
    node_id: &str,
    admin_port: u16,
    ads: std::net::SocketAddr,
    api: AdsApi,
    tls: Option<&AdsClientTls>,
) -> String {
    assert!(
        !node_id.is_empty() && node_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'),
        "node id {node_id:?} is not a plain token"
    );
    let (ads_ip, ads_port) = (ads.ip(), ads.port());
    let api_type = match api {
        AdsApi::Delta => "DELTA_GRPC",
        AdsApi::StateOfTheWorld => "GRPC",
    };
    let transport_socket = match tls {
        None => String::new(),
        Some(t) => format!(
            r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: {name}
        common_tls_context:
          alpn_protocols: [h2]
          tls_certificates: [{{certificate_chain: {{filename: "{cert}"}}, private_key: {{filename: "{key}"}}}}]
          validation_context:
            trusted_ca: {{filename: "{ca}"}}
            match_typed_subject_alt_names: [{{san_type: DNS, matcher: {{exact: {name}}}}}]
"#,
            name = t.server_name,
            cert = t.cert,
            key = t.key,
            ca = t.ca
        ),
    };
    format!(
        r#"node: {{id: {node_id}, cluster: portico}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}}}
# No stats sink: statistics are merged when the admin asks for them, not every 5 s (at
# 10,000 clusters that periodic merge was most of an idle Envoy's CPU).
stats_flush_on_admin: true
dynamic_resources:
  ads_config: {{api_type: {api_type}, transport_api_version: V3, grpc_services: [{{envoy_grpc: {{cluster_name: portico_ads}}}}]}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: portico_ads
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: portico_ads
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: "{ads_ip}", port_value: {ads_port}}}}}}}}}]}}]
{transport_socket}"#
    )
}

pub fn bootstrap(
    model: &Model,
    trust: &Trust,
    options: &Options,
) -> (envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap, Vec<String>) {
    use envoy_types::pb::envoy::config::bootstrap::v3 as bootstrap;
    let mut res = resources(model, trust, options, Delivery::Static);
    for listener in &mut res.listeners {
        let name = listener.name.replacen("listener_", "routes_", 1);
        let Some(routes) = res.route_configurations.iter().find(|r| r.name == name) else { continue };
        for chain in &mut listener.filter_chains {
            let filter = &mut chain.filters[0];
            let manager = hcm::HttpConnectionManager {
                route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(routes.clone())),
                ..hcm_of(filter)
            };
            filter.config_type = Some(listener::filter::ConfigType::TypedConfig(any(&manager)));
        }
    }
    let config = bootstrap::Bootstrap {
        // No stats sink: statistics are merged when the admin asks for them (see
        // `ads_bootstrap_with`).
        stats_flush: Some(bootstrap::bootstrap::StatsFlush::StatsFlushOnAdmin(true)),
        admin: Some(bootstrap::Admin {
            address: Some(socket_address(IpAddr::from([127, 0, 0, 1]), options.admin_port)),
            ..Default::default()
        }),
        static_resources: Some(bootstrap::bootstrap::StaticResources {
            listeners: res.listeners,
            clusters: res.clusters,
            secrets: res.secrets,
        }),
        ..Default::default()
    };
    (config, res.problems)
}

fn hcm_of(filter: &listener::Filter) -> hcm::HttpConnectionManager {
    match &filter.config_type {
        Some(listener::filter::ConfigType::TypedConfig(any)) => {
            hcm::HttpConnectionManager::decode(any.value.as_slice()).expect("rendered by http_listener")
        }
        _ => unreachable!("http_listener always sets a typed config"),
    }
}

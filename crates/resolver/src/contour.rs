//! The Contour dialect (SPEC sections 2 and 9): HTTPProxy roots and the children they
//! include, routes, the upstream protocol's precedence, `validation`, delegation, and the
//! fields Portico does not implement.

use crate::build::{PendingAction, PendingRoute, Upstream};
use crate::common::{
    error_count, ignored_field, no_endpoints_warning, route_prefix, service_label, unresolved, Dep, Index,
};
use crate::serving::{min_version, serve_https, CertificateRequest};
use crate::snapshot::Key;
use portico_model::names::quote;
use portico_model::{
    Alpn, ClusterKey, DnsName, HostMatch, HttpProxy, HttpProxyInclude, HttpProxyRoute, HttpProxyService, HttpProxyTls,
    K8sName, Kind, ObjectRef, PathPrefix, Problem, ProblemType, Reason, SecretRef, Service, ServicePort, ServingTls,
    Timeout, TlsPolicy, TlsVersion, UpstreamProtocol, Verification,
};

pub const ANNOTATION_TLS: &str = "projectcontour.io/upstream-protocol.tls";
pub const ANNOTATION_H2C: &str = "projectcontour.io/upstream-protocol.h2c";
pub const ANNOTATION_H2: &str = "projectcontour.io/upstream-protocol.h2";
/// At most this many subject names in `validation`.
pub const MAX_SUBJECT_NAMES: usize = 8;

/// The fields Portico does not implement whose absence would widen who may reach a route
/// (SPEC section 9): a route (or virtual host) that has one is not served at all.
const RESTRICTING_FIELDS: &[&str] = &[
    "header",
    "queryParameter",
    "exact",
    "regex",
    "authPolicy",
    "authorization",
    "ipAllowPolicy",
    "ipDenyPolicy",
    "jwtVerificationPolicy",
    "jwtProviders",
    "clientValidation",
    // A mirror served as an ordinary backend would answer real requests.
    "mirror",
];

/// Whether leaving out the field at `path` would widen access: its last name (without an
/// index) is one of `RESTRICTING_FIELDS`.
pub fn restricts_access(path: &str) -> bool {
    let last = path.rsplit('.').next().unwrap_or(path);
    let name = last.split('[').next().unwrap_or(last);
    RESTRICTING_FIELDS.contains(&name)
}

/// Contour's `IncludeError` entries.
fn include_error(reason: Reason, message: String) -> Problem {
    Problem::error(ProblemType::IncludeError, reason, message)
}

/// What Contour says of an HTTPProxy that no root includes.
pub const ORPHANED: &str = "this HTTPProxy is not part of a delegation chain from a root HTTPProxy";

/// Join an include's prefix and the prefix under it as Contour does: concatenated, runs of
/// `/` folded into one; a `/` under a prefix adds nothing (`/team` + `/` = `/team`).
pub fn join_prefix(outer: &str, inner: &str) -> String {
    if inner == "/" && !outer.is_empty() {
        return outer.to_owned();
    }
    let mut joined = String::with_capacity(outer.len() + inner.len());
    for c in outer.chars().chain(inner.chars()) {
        if !(c == '/' && joined.ends_with('/')) {
            joined.push(c);
        }
    }
    joined
}

/// What resolving one unit produced: a root HTTPProxy with everything it includes, or a
/// Voyager Ingress.
#[derive(Default)]
pub struct UnitOutput {
    /// In the order they were found: the order route conflicts are decided in.
    pub routes: Vec<PendingRoute>,
    /// Problems by the object they belong to, in the order they were found.
    pub problems: Vec<(ObjectRef, Problem)>,
    /// The HTTPProxies an include reached (so they are not orphans).
    pub reached: Vec<Key>,
    /// An HTTPRoute's parents, attachments and policies used (Gateway API).
    pub gateway: crate::gateway::GatewayFacts,
}

/// Resolve one root HTTPProxy and the children it includes (SPEC sections 2 and 9): the
/// root on its own host, each child under the include's prefix on the root's host. A
/// route's owner is the proxy that wrote it; a child's problems are the child's.
pub fn resolve_root(index: &Index<'_>, root: &HttpProxy) -> UnitOutput {
    let mut out = UnitOutput::default();
    let Some(fqdn) = &root.fqdn else { return out };
    let this = root.meta.object_ref(Kind::HttpProxy);
    let host = match DnsName::parse(fqdn) {
        Ok(name) => HostMatch::Exact(name),
        Err(e) => {
            let why = if fqdn.is_empty() { "it is empty".to_owned() } else { e.0 };
            out.problems.push((
                this,
                Problem::error(
                    ProblemType::VirtualHostError,
                    Reason::InvalidValue,
                    format!("spec.virtualhost.fqdn {}: {why}", quote(fqdn)),
                ),
            ));
            return out;
        }
    };
    if !index.config.root_allowed(&root.meta.namespace) {
        out.problems.push((
            this,
            Problem::error(
                ProblemType::RootNamespaceError,
                Reason::RootProxyNotAllowedInNamespace,
                "root HTTPProxy cannot be defined in this namespace",
            ),
        ));
        return out;
    }
    // A restriction of the whole virtual host that Portico cannot enforce closes it.
    let closed = root.ignored.iter().any(|p| p.starts_with("spec.virtualhost.") && restricts_access(p));
    let mut walk = Walk { index, host, out, permit_insecure: Vec::new() };
    let mut visited = vec![root];
    walk.proxy(root, "", closed, &mut visited);
    let Walk { host, mut out, permit_insecure, .. } = walk;
    if let Some(tls) = &root.tls {
        let serving = serving_certificate(index, root, tls, &host);
        if let Err(problem) = &serving {
            out.problems.push((this, problem.clone()));
        }
        serve_https(index.config, &mut out.routes, &host, serving.as_ref().ok(), |i| {
            permit_insecure.get(i).copied().unwrap_or(false)
        });
    }
    out
}

/// The certificate `spec.virtualhost.tls` names for the root's host.
fn serving_certificate(
    index: &Index<'_>,
    root: &HttpProxy,
    tls: &HttpProxyTls,
    host: &HostMatch,
) -> Result<ServingTls, Problem> {
    const FIELD: &str = "spec.virtualhost.tls.secretName";
    let invalid = |why: String| Problem::error(ProblemType::TLSError, Reason::InvalidValue, format!("{FIELD}: {why}"));
    let written = tls.secret_name.as_str();
    if written.is_empty() {
        return Err(invalid("it is empty; name a kubernetes.io/tls Secret (TLS passthrough is not supported)".into()));
    }
    let (namespace, name) = match written.split_once('/') {
        Some((ns, name)) => (ns, name),
        None => (root.meta.namespace.as_str(), written),
    };
    let secret = match (namespace.parse::<K8sName>(), name.parse::<K8sName>()) {
        (Ok(namespace), Ok(name)) => SecretRef { namespace, name, holder: portico_model::Holder::Secret },
        _ => return Err(invalid(format!("{} is not a Secret name or namespace/name", quote(written)))),
    };
    let min_version =
        min_version("spec.virtualhost.tls.minimumProtocolVersion", tls.minimum_protocol_version.as_deref())?;
    let request = CertificateRequest { field: FIELD, secret, from_namespace: &root.meta.namespace, min_version };
    index.serving_certificate(&request, host)
}

/// Every field of `proxy` that Portico does not implement, as a warning or (when leaving
/// it out would widen access) an error.
pub fn ignored_fields(proxy: &HttpProxy) -> Vec<Problem> {
    let mut problems: Vec<Problem> = proxy
        .ignored
        .iter()
        .map(|p| {
            let guards =
                if p.starts_with("spec.virtualhost.") { "no route of this virtual host" } else { "this HTTPProxy" };
            ignored_field(p, restricts_access(p), guards)
        })
        .collect();
    for include in &proxy.includes {
        problems.extend(
            include.ignored.iter().map(|p| ignored_field(p, restricts_access(p), "no route under this include")),
        );
    }
    for route in &proxy.routes {
        problems.extend(route.ignored.iter().map(|p| ignored_field(p, restricts_access(p), "the route")));
    }
    problems
}

/// The walk from one root down its includes.
struct Walk<'i, 'a> {
    index: &'i Index<'a>,
    host: HostMatch,
    out: UnitOutput,
    /// `permitInsecure` of each of `out.routes`, in order.
    permit_insecure: Vec<bool>,
}

impl<'a> Walk<'_, 'a> {
    /// The routes of `proxy` and of what it includes, under `outer` (the joined prefixes
    /// of the includes above it; empty at the root). `closed`: an enclosing restriction
    /// Portico cannot enforce, so every route answers 503. `visited`: the chain from the
    /// root to `proxy`, to find cycles.
    fn proxy(&mut self, proxy: &'a HttpProxy, outer: &str, closed: bool, visited: &mut Vec<&'a HttpProxy>) {
        let owner = proxy.meta.object_ref(Kind::HttpProxy);
        let mut seen_prefixes: Vec<String> = Vec::new();
        for include in &proxy.includes {
            let mut problems = Vec::new();
            self.include(proxy, include, outer, closed, visited, &mut seen_prefixes, &owner, &mut problems);
            self.out.problems.extend(problems.into_iter().map(|p| (owner.clone(), p)));
        }
        for route in &proxy.routes {
            let mut problems = Vec::new();
            self.route(proxy, route, outer, closed, &owner, &mut problems);
            self.out.problems.extend(problems.into_iter().map(|p| (owner.clone(), p)));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn include(
        &mut self,
        proxy: &'a HttpProxy,
        include: &HttpProxyInclude,
        outer: &str,
        closed: bool,
        visited: &mut Vec<&'a HttpProxy>,
        seen_prefixes: &mut Vec<String>,
        owner: &ObjectRef,
        problems: &mut Vec<Problem>,
    ) {
        let namespace = include.namespace.as_deref().unwrap_or(proxy.meta.namespace.as_str());
        let inner = match include.prefixes.as_slice() {
            [] => String::new(),
            [one] => match route_prefix(one, problems) {
                Some(p) => p.to_string(),
                None => return,
            },
            _ => {
                problems.push(include_error(
                    Reason::InvalidValue,
                    "include: more than one prefix is not allowed in a condition block".to_owned(),
                ));
                return;
            }
        };
        let joined = join_prefix(outer, &inner);
        // Conditions Portico does not implement make two includes differ in ways it cannot
        // see; they are errors already, so only plain prefixes are compared.
        if include.ignored.is_empty() {
            if seen_prefixes.contains(&joined) {
                problems.push(include_error(
                    Reason::DuplicateMatchConditions,
                    "duplicate conditions defined on an include".to_owned(),
                ));
                return;
            }
            seen_prefixes.push(joined.clone());
        }
        let key: Option<Key> = match (namespace.parse::<K8sName>(), include.name.parse::<K8sName>()) {
            (Ok(ns), Ok(name)) => Some((ns, name)),
            _ => None, // names outside the grammar can never exist
        };
        if let Some(key) = &key {
            self.index.record(Dep::Proxy(key.clone()));
        }
        let target = key.as_ref().and_then(|k| self.index.snapshot.http_proxies.get(k));
        let broken = match target {
            None => {
                // Names outside the grammar are the user's bytes: quoted, never raw.
                let named = match &key {
                    Some((ns, name)) => format!("{ns}/{name}"),
                    None => format!("{}/{}", quote(namespace), quote(&include.name)),
                };
                Some(include_error(Reason::IncludeNotFound, format!("include {named} not found")))
            }
            Some(child) if child.is_root() => Some(include_error(
                Reason::RootIncludesRoot,
                format!("root httpproxy cannot include another root httpproxy ({})", child.meta),
            )),
            Some(_) => None,
        };
        if let Some(problem) = broken {
            // Contour answers 502 under the include's prefix.
            problems.push(problem);
            let served_at = if joined.is_empty() { "/" } else { joined.as_str() };
            match served_at.parse::<PathPrefix>() {
                Ok(prefix) => {
                    self.out.routes.push(PendingRoute {
                        listener: self.index.config.http_port,
                        host: self.host.clone(),
                        prefix,
                        exact: false,
                        owner: owner.clone(),
                        action: PendingAction::BadGateway,
                        tls: None,
                    });
                    self.permit_insecure.push(false);
                }
                Err(e) => problems.push(too_long(served_at, e)),
            }
            return;
        }
        let (Some(child), Some(key)) = (target, key) else { return };
        self.out.reached.push(key);
        if visited.iter().any(|v| v.meta == child.meta) {
            let chain: Vec<String> = visited.iter().chain([&child]).map(|v| v.meta.to_string()).collect();
            self.out.problems.push((
                child.meta.object_ref(Kind::HttpProxy),
                include_error(
                    Reason::IncludeCreatesCycle,
                    format!("include creates an include cycle: {}", chain.join(" -> ")),
                ),
            ));
            return;
        }
        let closed = closed || include.ignored.iter().any(|p| restricts_access(p));
        visited.push(child);
        self.proxy(child, &joined, closed, visited);
        visited.pop();
    }

    fn route(
        &mut self,
        proxy: &HttpProxy,
        route: &HttpProxyRoute,
        outer: &str,
        closed: bool,
        owner: &ObjectRef,
        problems: &mut Vec<Problem>,
    ) {
        let written = route.prefixes.first().map(String::as_str).unwrap_or("/");
        let route_label = format!("route {}", quote(written));
        let own = match route.prefixes.as_slice() {
            [] => PathPrefix::root(),
            [one] => match route_prefix(one, problems) {
                Some(p) => p,
                None => return,
            },
            _ => {
                problems.push(Problem::error(
                    ProblemType::RouteError,
                    Reason::InvalidValue,
                    format!("{route_label}: more than one prefix condition; use one prefix per route"),
                ));
                return;
            }
        };
        let joined = join_prefix(outer, own.as_str());
        let prefix = match joined.parse::<PathPrefix>() {
            Ok(p) => p,
            Err(e) => {
                problems.push(too_long(&joined, e));
                return;
            }
        };
        let mut action = resolve_route(self.index, proxy, route, written, &route_label, problems);
        if closed || route.ignored.iter().any(|p| restricts_access(p)) {
            action = PendingAction::Reject;
        }
        self.out.routes.push(PendingRoute {
            listener: self.index.config.http_port,
            host: self.host.clone(),
            prefix,
            exact: false,
            owner: owner.clone(),
            action,
            tls: None,
        });
        self.permit_insecure.push(route.permit_insecure);
    }
}

/// A joined prefix outside the grammar (only its length can be wrong: its parts passed).
fn too_long(joined: &str, e: portico_model::GrammarError) -> Problem {
    Problem::error(ProblemType::IncludeError, Reason::InvalidValue, format!("the joined prefix {}: {e}", quote(joined)))
}

fn resolve_route(
    index: &Index<'_>,
    proxy: &HttpProxy,
    route: &HttpProxyRoute,
    prefix: &str,
    route_label: &str,
    problems: &mut Vec<Problem>,
) -> PendingAction {
    let errors_before = error_count(problems);
    let mut host_rewrite = None;
    for (name, value) in &route.set_headers {
        if name.eq_ignore_ascii_case("host") {
            match DnsName::parse(value) {
                Ok(host) => host_rewrite = Some(host),
                Err(e) => problems.push(Problem::error(
                    ProblemType::RouteError,
                    Reason::InvalidValue,
                    format!("{route_label}: requestHeadersPolicy Host: {e}"),
                )),
            }
        } else {
            problems.push(Problem::warning(
                ProblemType::RouteError,
                Reason::IgnoredField,
                format!("{route_label}: requestHeadersPolicy header {} is not applied by Portico", quote(name)),
            ));
        }
    }
    if route.services.is_empty() {
        problems.push(Problem::error(
            ProblemType::RouteError,
            Reason::ServiceUnresolvedReference,
            format!("{route_label}: the route has no services"),
        ));
    }
    let mut upstreams = Vec::new();
    for svc in &route.services {
        match resolve_service(index, proxy, svc, prefix, host_rewrite.as_ref(), problems) {
            Ok(upstream) => upstreams.push((upstream, svc.weight)),
            Err(problem) => problems.push(problem),
        }
    }
    let mut timeout_of = |field: &str, value: Option<&str>| match value.map(Timeout::parse) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            problems.push(Problem::error(
                ProblemType::RouteError,
                Reason::InvalidValue,
                format!("{route_label}: timeoutPolicy.{field} {e}"),
            ));
            None
        }
    };
    let timeout = timeout_of("response", route.response_timeout.as_deref());
    let idle_timeout = timeout_of("idle", route.idle_timeout.as_deref());
    if error_count(problems) > errors_before {
        return PendingAction::Reject;
    }
    PendingAction::forward(upstreams, host_rewrite, timeout, idle_timeout)
}

/// The effective upstream protocol of a Service port, from the `protocol` field, then
/// `appProtocol`, then the annotations (SPEC section 2, first match wins).
pub fn effective_protocol(
    field: Option<&str>,
    service: &Service,
    port: &ServicePort,
) -> Result<UpstreamProtocol, String> {
    if let Some(protocol) = field {
        return match protocol {
            "h2" => Ok(UpstreamProtocol::H2),
            "h2c" => Ok(UpstreamProtocol::H2c),
            "tls" => Ok(UpstreamProtocol::Tls),
            other => Err(format!("unsupported protocol {} (use h2, h2c or tls)", quote(other))),
        };
    }
    if let Some(app_protocol) = &port.app_protocol {
        return Ok(match app_protocol.as_str() {
            "https" => UpstreamProtocol::Tls,
            "kubernetes.io/h2c" => UpstreamProtocol::H2c,
            _ => UpstreamProtocol::Http,
        });
    }
    let number = port.port.to_string();
    for (annotation, protocol) in [
        (ANNOTATION_TLS, UpstreamProtocol::Tls),
        (ANNOTATION_H2C, UpstreamProtocol::H2c),
        (ANNOTATION_H2, UpstreamProtocol::H2),
    ] {
        let Some(list) = service.annotations.get(annotation) else {
            continue;
        };
        let listed = list
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .any(|item| item == number || (!port.name.is_empty() && item == port.name));
        if listed {
            return Ok(protocol);
        }
    }
    Ok(UpstreamProtocol::Http)
}

fn resolve_service(
    index: &Index<'_>,
    proxy: &HttpProxy,
    svc: &HttpProxyService,
    prefix: &str,
    host_rewrite: Option<&DnsName>,
    problems: &mut Vec<Problem>,
) -> Result<Upstream, Problem> {
    let label = service_label(prefix, &svc.name);
    let namespace = &proxy.meta.namespace;
    let service = index
        .service(namespace, &svc.name)
        .ok_or_else(|| unresolved(&label, format!("not found in namespace \"{namespace}\"")))?;
    let port = service
        .ports
        .iter()
        .find(|p| p.port == svc.port)
        .ok_or_else(|| unresolved(&label, format!("port {} not found on the Service", svc.port)))?;
    let protocol = effective_protocol(svc.protocol.as_deref(), service, port)
        .map_err(|e| Problem::error(ProblemType::ServiceError, Reason::UnsupportedProtocol, format!("{label}: {e}")))?;

    let tls_error = |what: String| {
        Problem::error(ProblemType::ServiceError, Reason::TLSUpstreamValidation, format!("{label}: {what}"))
    };
    let mut ca_trust = None;
    let mut verify = Verification::None;
    let mut first_subject = None;
    if let Some(v) = &svc.validation {
        if !protocol.is_tls() {
            return Err(tls_error(format!("upstreamValidation requested but service port {} is not TLS", svc.port)));
        }
        if v.subject_name.is_empty() {
            return Err(tls_error("upstreamValidation requested but validation.subjectName is empty".to_owned()));
        }
        let names: &[String] =
            if v.subject_names.is_empty() { std::slice::from_ref(&v.subject_name) } else { &v.subject_names };
        if names[0] != v.subject_name {
            return Err(tls_error(format!(
                "validation.subjectNames[0] {} must equal validation.subjectName {}",
                quote(&names[0]),
                quote(&v.subject_name)
            )));
        }
        if names.len() > MAX_SUBJECT_NAMES {
            return Err(tls_error(format!(
                "validation.subjectNames has {} names; at most {MAX_SUBJECT_NAMES} are allowed",
                names.len()
            )));
        }
        let mut subject_names = Vec::new();
        for name in names {
            subject_names.push(DnsName::parse(name).map_err(|e| tls_error(format!("validation subject name: {e}")))?);
        }
        let secret_ref = SecretRef::parse(&v.ca_secret, namespace.as_str())
            .map_err(|e| tls_error(format!("validation.caSecret: {e}")))?;
        let (ca, trust_ref) = index.ca_secret(&label, &secret_ref, namespace, problems)?;
        ca_trust = Some(trust_ref);
        if subject_names.len() > 1 {
            problems.push(Problem::warning(
                ProblemType::TLSError,
                Reason::VerificationWeakened,
                format!(
                    "{label}: HAProxy can check only one name; it checks {} and not the other {} subject names",
                    subject_names[0],
                    subject_names.len() - 1
                ),
            ));
        }
        first_subject = Some(subject_names[0].clone());
        verify = Verification::Required { ca, subject_names, subject_uris: Vec::new(), exact_names: false };
    }

    let servers = index.servers(service, port).map_err(|e| unresolved(&label, e))?;
    if let Some(w) = no_endpoints_warning(&label, &servers, port.port) {
        problems.push(w);
    }
    let mut client_cert = None;
    let mut tls = None;
    if protocol.is_tls() {
        client_cert = index.client_cert(&label, problems)?;
        let external = match &servers {
            portico_model::Servers::Dns { host, .. } => Some(host.clone()),
            portico_model::Servers::Endpoints(_) => None,
        };
        if let (Some(rewrite), Verification::Required { subject_names, .. }) = (host_rewrite, &verify) {
            if !subject_names.contains(rewrite) {
                problems.push(Problem::warning(
                    ProblemType::TLSError,
                    Reason::VerificationWeakened,
                    format!(
                        "{label}: the SNI is the rewritten Host {rewrite}; HAProxy checks the server certificate against the SNI, so on HAProxy it must also be valid for {rewrite} (Envoy checks the subject names)"
                    ),
                ));
            }
        }
        tls = Some(TlsPolicy {
            // SPEC: a literal Host rewrite, else the first subject name, else the external name.
            sni: host_rewrite.cloned().or(first_subject).or(external),
            verify,
            alpn: if protocol == UpstreamProtocol::H2 { vec![Alpn::H2] } else { Vec::new() },
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            client_cert: client_cert.as_ref().map(|t: &portico_model::TrustRef| t.secret.clone()),
        });
    }
    Ok(Upstream {
        key: ClusterKey {
            namespace: service.meta.namespace.clone(),
            service: service.meta.name.clone(),
            port: port.port,
            protocol,
            tls,
        },
        servers,
        ca_trust: ca_trust.into_iter().collect(),
        client_cert,
    })
}

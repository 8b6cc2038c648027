//! The Contour dialect (SPEC section 2): HTTPProxy routes, the upstream protocol's
//! precedence, `validation`, and delegation.

use crate::build::{PendingAction, PendingRoute, Upstream};
use crate::common::{error_count, no_endpoints_warning, route_prefix, service_label, unresolved, Index};
use portico_model::names::quote;
use portico_model::{
    Alpn, ClusterKey, DnsName, HostMatch, HttpProxy, HttpProxyRoute, HttpProxyService, PathPrefix, Problem,
    ProblemType, Reason, SecretRef, Service, ServicePort, TlsPolicy, TlsVersion, UpstreamProtocol, Verification,
};

pub const ANNOTATION_TLS: &str = "projectcontour.io/upstream-protocol.tls";
pub const ANNOTATION_H2C: &str = "projectcontour.io/upstream-protocol.h2c";
pub const ANNOTATION_H2: &str = "projectcontour.io/upstream-protocol.h2";
/// At most this many subject names in `validation`.
pub const MAX_SUBJECT_NAMES: usize = 8;

/// Resolve one HTTPProxy into routes, pushing its problems.
pub fn resolve_proxy(
    index: &Index<'_>,
    proxy: &HttpProxy,
    owner: usize,
    problems: &mut Vec<Problem>,
) -> Vec<PendingRoute> {
    let host = match &proxy.fqdn {
        None => HostMatch::Any,
        Some(fqdn) => match DnsName::parse(fqdn) {
            Ok(name) => HostMatch::Exact(name),
            Err(e) => {
                let why = if fqdn.is_empty() { "it is empty".to_owned() } else { e.0 };
                problems.push(Problem::error(
                    ProblemType::VirtualHostError,
                    Reason::InvalidValue,
                    format!("spec.virtualhost.fqdn {}: {why}", quote(fqdn)),
                ));
                return Vec::new();
            }
        },
    };
    let mut routes = Vec::new();
    for route in &proxy.routes {
        let written = route.prefixes.first().map(String::as_str).unwrap_or("/");
        let route_label = format!("route {}", quote(written));
        let prefix = match route.prefixes.as_slice() {
            [] => PathPrefix::root(),
            [one] => match route_prefix(one, problems) {
                Some(p) => p,
                None => continue,
            },
            _ => {
                problems.push(Problem::error(
                    ProblemType::RouteError,
                    Reason::InvalidValue,
                    format!("{route_label}: more than one prefix condition; use one prefix per route"),
                ));
                continue;
            }
        };
        let action = resolve_route(index, proxy, route, written, &route_label, problems);
        routes.push(PendingRoute { listener: index.config.http_port, host: host.clone(), prefix, owner, action });
    }
    routes
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
    for ignored in &route.ignored_conditions {
        problems.push(Problem::warning(
            ProblemType::RouteError,
            Reason::IgnoredField,
            format!(
                "{route_label}: condition {} is not read by Portico; the route matches on its prefix alone",
                quote(ignored)
            ),
        ));
    }
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
    if error_count(problems) > errors_before {
        return PendingAction::Reject;
    }
    PendingAction::forward(upstreams, host_rewrite)
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

    let tls_error =
        |what: String| Problem::error(ProblemType::TLSError, Reason::TLSUpstreamValidation, format!("{label}: {what}"));
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
        verify = Verification::Required { ca, subject_names };
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
        ca_trust,
        client_cert,
    })
}

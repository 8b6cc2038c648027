//! The Voyager dialect (SPEC section 3): voyager.appscode.com/v1beta1 Ingress rules and
//! the Service annotation `ingress.appscode.com/backend-tls`.

use crate::backend_tls;
use crate::build::{PendingAction, PendingRoute, Upstream};
use crate::common::{error_count, ignored_field, no_endpoints_warning, route_prefix, service_label, unresolved, Index};
use crate::serving::serve_tls_list;
use portico_model::names::quote;
use portico_model::{
    Alpn, CaSource, ClusterKey, HostMatch, Problem, ProblemType, Reason, SecretRef, TlsPolicy, TlsVersion,
    UpstreamProtocol, Verification, VoyagerBackend, VoyagerIngress,
};

pub const ANNOTATION_BACKEND_TLS: &str = "ingress.appscode.com/backend-tls";
/// Portico's extension: the CA for `verify required` from a Secret instead of a file.
pub const ANNOTATION_CA_SECRET: &str = "portico.dev/upstream-ca-secret";

/// HAProxy's own text for `verify required` without a CA, from the seed.
pub const VERIFY_WITHOUT_CA: &str = "verify is enabled by default but no CA file specified. If you're running on a LAN where you're certain to trust the server's certificate, please set an explicit 'verify none' statement on the 'server' line, or use 'ssl-server-verify none' in the global section to disable server-side verifications by default.";

/// Whether leaving out a Voyager field or annotation would widen access: authentication,
/// source allow-lists, and frontend rules (which carry ACLs).
pub fn restricts_access(path: &str) -> bool {
    let annotation = path.strip_prefix("metadata.annotations[").unwrap_or("");
    path.contains("frontendRules") || annotation.contains("auth") || annotation.contains("whitelist-source-range")
}

/// Resolve one Voyager Ingress into routes, pushing its problems.
pub fn resolve_ingress(index: &Index<'_>, ingress: &VoyagerIngress, problems: &mut Vec<Problem>) -> Vec<PendingRoute> {
    let owner = ingress.meta.object_ref(portico_model::Kind::VoyagerIngress);
    let mut routes = Vec::new();
    // What Portico does not implement is named; a restriction it cannot enforce closes
    // every route of the Ingress (SPEC section 9).
    let mut closed = false;
    for path in &ingress.ignored {
        let restricts = restricts_access(path);
        closed |= restricts;
        problems.push(ignored_field(path, restricts, "no route of this Ingress"));
    }
    let mut add =
        |listener: u16, host: HostMatch, path: &str, backend: &VoyagerBackend, problems: &mut Vec<Problem>| {
            let Some(prefix) = route_prefix(path, problems) else { return };
            let errors_before = error_count(problems);
            let action = match resolve_backend(index, ingress, backend, path, problems) {
                Ok(upstream) => PendingAction::forward(vec![(upstream, None)], None, None, None),
                Err(problem) => {
                    problems.push(problem);
                    PendingAction::Reject
                }
            };
            let failed = error_count(problems) > errors_before;
            let action = if failed || closed { PendingAction::Reject } else { action };
            routes.push(PendingRoute { listener, host, prefix, exact: false, owner: owner.clone(), action, tls: None });
        };
    for rule in &ingress.rules {
        let host = match HostMatch::parse(&rule.host) {
            Ok(h) => h,
            Err(e) => {
                problems.push(Problem::error(
                    ProblemType::VirtualHostError,
                    Reason::InvalidValue,
                    format!("rule host: {e}"),
                ));
                continue;
            }
        };
        let listener = rule.port.unwrap_or(index.config.http_port);
        if listener == index.config.https_port {
            problems.push(Problem::error(
                ProblemType::VirtualHostError,
                Reason::InvalidValue,
                format!(
                    "rule host {host}: http.port {listener} is the HTTPS listener; list the host under spec.tls to serve it over HTTPS"
                ),
            ));
            continue;
        }
        for path in &rule.paths {
            add(listener, host.clone(), path.path.as_deref().unwrap_or("/"), &path.backend, problems);
        }
    }
    if let Some(backend) = &ingress.backend {
        add(index.config.http_port, HostMatch::Any, "/", backend, problems);
    }
    // spec.tls: in the Ingress's namespace (Voyager has no delegation); always redirected.
    let tls = ingress.tls.iter().map(|t| (t.hosts.as_slice(), t.secret_name.as_str()));
    serve_tls_list(index, &ingress.meta.namespace, tls, false, &mut routes, problems);
    routes
}

fn resolve_backend(
    index: &Index<'_>,
    ingress: &VoyagerIngress,
    backend: &VoyagerBackend,
    prefix: &str,
    problems: &mut Vec<Problem>,
) -> Result<Upstream, Problem> {
    let label = service_label(prefix, &backend.service_name);
    let namespace = &ingress.meta.namespace;
    // Voyager's `name.namespace` form: only the Ingress's own namespace is allowed.
    let name = match backend.service_name.split_once('.') {
        None => backend.service_name.as_str(),
        Some((name, ns)) if ns == namespace.as_str() => name,
        Some((_, ns)) => {
            return Err(unresolved(
                &label,
                format!(
                    "backends in other namespaces are refused (namespace {}): no delegation mechanism covers Voyager backends",
                    quote(ns)
                ),
            ))
        }
    };
    let service = index
        .service(namespace, name)
        .ok_or_else(|| unresolved(&label, format!("not found in namespace \"{namespace}\"")))?;
    let wanted = &backend.service_port;
    let port = service
        .ports
        .iter()
        .find(|p| match wanted.parse::<u16>() {
            Ok(n) => p.port == n,
            Err(_) => !p.name.is_empty() && &p.name == wanted,
        })
        .ok_or_else(|| unresolved(&label, format!("port {} not found on the Service", quote(wanted))))?;

    let servers = index.servers(service, port).map_err(|e| unresolved(&label, e))?;
    if let Some(w) = no_endpoints_warning(&label, &servers, port.port) {
        problems.push(w);
    }
    let key = |protocol, tls| ClusterKey {
        namespace: service.meta.namespace.clone(),
        service: service.meta.name.clone(),
        port: port.port,
        protocol,
        tls,
    };
    let ca_secret = service.annotations.get(ANNOTATION_CA_SECRET);
    let Some(value) = service.annotations.get(ANNOTATION_BACKEND_TLS) else {
        if ca_secret.is_some() {
            problems.push(Problem::warning(
                ProblemType::TLSError,
                Reason::IgnoredField,
                format!("{label}: annotation {ANNOTATION_CA_SECRET} is ignored: the Service has no {ANNOTATION_BACKEND_TLS} annotation, so the backend is plain HTTP"),
            ));
        }
        return Ok(Upstream {
            key: key(UpstreamProtocol::Http, None),
            servers,
            ca_trust: Vec::new(),
            client_cert: None,
        });
    };
    let tls_error =
        |what: String| Problem::error(ProblemType::TLSError, Reason::TLSUpstreamValidation, format!("{label}: {what}"));
    let options = backend_tls::parse(value).map_err(&tls_error)?;

    let mut ca_trust = None;
    let ca = match (&options.ca_file, ca_secret) {
        (Some(_), Some(_)) => {
            return Err(tls_error(format!("both ca-file and the {ANNOTATION_CA_SECRET} annotation are set; use one")))
        }
        (Some(file), None) => Some(CaSource::File(file.clone())),
        (None, Some(reference)) => {
            let secret = SecretRef::parse(reference, service.meta.namespace.as_str())
                .map_err(|e| tls_error(format!("annotation {ANNOTATION_CA_SECRET}: {e}")))?;
            let (ca, trust) = index.ca_secret(&label, &secret, namespace, problems)?;
            ca_trust = Some(trust);
            Some(ca)
        }
        (None, None) => None,
    };
    let name = match (&options.verifyhost, &options.sni) {
        (Some(a), Some(b)) if a != b => {
            return Err(tls_error(format!(
                "verifyhost {a} and sni str({b}) name different servers; HAProxy would check {b}, give one name"
            )))
        }
        (a, b) => a.clone().or_else(|| b.clone()),
    };
    let verify = if options.verify_required() {
        let ca = ca.ok_or_else(|| tls_error(VERIFY_WITHOUT_CA.to_owned()))?;
        if name.is_none() {
            problems.push(Problem::warning(
                ProblemType::TLSError,
                Reason::VerificationWeakened,
                format!("{label}: no verifyhost or sni: the server certificate is checked against the CA but its name is not"),
            ));
        }
        Verification::Required {
            ca,
            subject_names: name.iter().cloned().collect(),
            subject_uris: Vec::new(),
            exact_names: false,
        }
    } else {
        if ca.is_some() {
            problems.push(Problem::warning(
                ProblemType::TLSError,
                Reason::VerificationWeakened,
                format!("{label}: verify none: the CA is not used and the server certificate is not checked"),
            ));
        }
        ca_trust = None;
        Verification::None
    };
    let protocol = if options.alpn == [Alpn::H2] { UpstreamProtocol::H2 } else { UpstreamProtocol::Tls };
    let client_cert = index.client_cert(&label, problems)?;
    let tls = TlsPolicy {
        sni: name,
        verify,
        alpn: options.alpn.clone(),
        min_version: options.min_version.unwrap_or(TlsVersion::Tls12),
        max_version: options.max_version.unwrap_or(TlsVersion::Tls13),
        client_cert: client_cert.as_ref().map(|t| t.secret.clone()),
    };
    Ok(Upstream { key: key(protocol, Some(tls)), servers, ca_trust: ca_trust.into_iter().collect(), client_cert })
}

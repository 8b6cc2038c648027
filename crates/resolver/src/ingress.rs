//! The Kubernetes Ingress dialect (networking.k8s.io/v1, SPEC section 7): the Ingresses of
//! Portico's IngressClass, their rules and paths, and their backends' TLS from
//! ingress-nginx's annotations (`ingress_nginx`, parsed from an allow-list). `spec.tls` is
//! HTTPS at the edge (`serving`).

use crate::build::{PendingAction, PendingRoute, Upstream};
use crate::common::{error_count, no_endpoints_warning, route_prefix, service_label, unresolved, Dep, Index};
use crate::ingress_nginx::{self, BackendProtocol, NginxBackendTls};
use crate::serving::serve_tls_list;
use portico_model::names::quote;
use portico_model::{
    Alpn, ClusterKey, DnsName, HostMatch, Ingress, IngressBackend, IngressServicePort, Kind, PathPrefix, Problem,
    ProblemType, Reason, SecretRef, TlsPolicy, TlsVersion, UpstreamProtocol, Verification,
};

/// The controller name of Portico's IngressClasses.
pub const CONTROLLER: &str = "portico.dev/ingress-controller";
/// The legacy annotation naming an Ingress's class.
pub const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// The annotation that makes an IngressClass the default.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// Whether Portico serves `ingress`: its `spec.ingressClassName` (else the legacy
/// annotation) names an IngressClass of Portico's controller, or it names none and
/// Portico's IngressClass is the default. Another controller's Ingress gets no status.
pub fn is_ours(index: &Index<'_>, ingress: &Ingress) -> bool {
    index.record(Dep::IngressClasses);
    let named = ingress.class_name.as_deref().or(ingress.annotations.get(CLASS_ANNOTATION).map(String::as_str));
    let classes = index.snapshot.ingress_classes.values();
    match named {
        Some(name) => classes.into_iter().any(|c| c.meta.name.as_str() == name && c.controller == CONTROLLER),
        None => classes.into_iter().any(|c| c.is_default && c.controller == CONTROLLER),
    }
}

fn error(reason: Reason, message: String) -> Problem {
    Problem::error(ProblemType::RouteError, reason, message)
}

/// The routes a path gives: `Exact` one exact route; `Prefix` and `ImplementationSpecific`
/// (as Prefix) match by path element, so `/foo` is the exact path `/foo` and the prefix
/// `/foo/` (a trailing `/` is ignored, as Kubernetes says), and `/` every path.
fn paths(written: &str, path_type: &str, problems: &mut Vec<Problem>) -> Vec<(PathPrefix, bool)> {
    let Some(prefix) = route_prefix(written, problems) else { return Vec::new() };
    match path_type {
        "Exact" => vec![(prefix, true)],
        "Prefix" | "ImplementationSpecific" => {
            let trimmed = prefix.as_str().trim_end_matches('/');
            if trimmed.is_empty() {
                return vec![(PathPrefix::root(), false)];
            }
            let (Ok(exact), Ok(below)) = (trimmed.parse::<PathPrefix>(), format!("{trimmed}/").parse::<PathPrefix>())
            else {
                problems.push(error(Reason::InvalidValue, format!("path {}: too long", quote(written))));
                return Vec::new();
            };
            vec![(exact, true), (below, false)]
        }
        other => {
            problems.push(error(
                Reason::InvalidValue,
                format!(
                    "path {}: pathType {} is not Exact, Prefix or ImplementationSpecific",
                    quote(written),
                    quote(other)
                ),
            ));
            Vec::new()
        }
    }
}

/// Resolve one Ingress of Portico's class into routes, pushing its problems.
pub fn resolve_ingress(index: &Index<'_>, ingress: &Ingress, problems: &mut Vec<Problem>) -> Vec<PendingRoute> {
    let owner = ingress.meta.object_ref(Kind::Ingress);
    let parsed = ingress_nginx::parse(&ingress.annotations, ingress.meta.namespace.as_str());
    // Annotation errors close every route of the Ingress: its TLS is not what was asked.
    let closed = !parsed.errors.is_empty();
    problems.extend(parsed.errors.iter().map(|e| error(Reason::TLSUpstreamValidation, e.clone())));
    problems.extend(
        parsed
            .warnings
            .iter()
            .map(|w| Problem::warning(ProblemType::TLSError, Reason::VerificationWeakened, w.clone())),
    );
    let options = &parsed.options;
    let mut routes = Vec::new();
    let mut add =
        |host: HostMatch, written: &str, path_type: &str, backend: &IngressBackend, problems: &mut Vec<Problem>| {
            let matches = paths(written, path_type, problems);
            if matches.is_empty() {
                return;
            }
            let errors_before = error_count(problems);
            let action = match resolve_backend(index, ingress, options, backend, written, problems) {
                Ok(upstream) => PendingAction::forward(vec![(upstream, None)], None, None, None),
                Err(problem) => {
                    problems.push(problem);
                    PendingAction::Reject
                }
            };
            let action = if closed || error_count(problems) > errors_before { PendingAction::Reject } else { action };
            for (prefix, exact) in matches {
                routes.push(PendingRoute {
                    listener: index.config.http_port,
                    host: host.clone(),
                    prefix,
                    exact,
                    owner: owner.clone(),
                    action: action.clone(),
                    tls: None,
                });
            }
        };
    for rule in &ingress.rules {
        let host = match rule.host.as_deref() {
            None | Some("") => HostMatch::Any,
            Some(written) => match HostMatch::parse(written) {
                Ok(host) => host,
                Err(e) => {
                    problems.push(Problem::error(
                        ProblemType::VirtualHostError,
                        Reason::InvalidValue,
                        format!("rule host: {e}"),
                    ));
                    continue;
                }
            },
        };
        for path in &rule.paths {
            add(host.clone(), path.path.as_deref().unwrap_or("/"), &path.path_type, &path.backend, problems);
        }
    }
    if let Some(backend) = &ingress.default_backend {
        add(HostMatch::Any, "/", "Prefix", backend, problems);
    }
    // spec.tls (SPEC section 8): in the Ingress's namespace; ssl-redirect: "false" keeps
    // plain HTTP too.
    let tls = ingress.tls.iter().map(|t| (t.hosts.as_slice(), t.secret_name.as_deref().unwrap_or_default()));
    serve_tls_list(index, &ingress.meta.namespace, tls, !options.ssl_redirect, &mut routes, problems);
    routes
}

fn resolve_backend(
    index: &Index<'_>,
    ingress: &Ingress,
    options: &NginxBackendTls,
    backend: &IngressBackend,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Result<Upstream, Problem> {
    let IngressBackend::Service { name, port: wanted } = backend else {
        return Err(error(
            Reason::ServiceUnresolvedReference,
            format!("path {}: a resource backend is not supported; use a Service", quote(path)),
        ));
    };
    let label = service_label(path, name);
    let namespace = &ingress.meta.namespace;
    let service = index
        .service(namespace, name)
        .ok_or_else(|| unresolved(&label, format!("not found in namespace \"{namespace}\"")))?;
    let port = service
        .ports
        .iter()
        .find(|p| match wanted {
            IngressServicePort::Number(n) => p.port == *n,
            IngressServicePort::Name(n) => !p.name.is_empty() && &p.name == n,
        })
        .ok_or_else(|| {
            let written = match wanted {
                IngressServicePort::Number(n) => n.to_string(),
                IngressServicePort::Name(n) => n.clone(),
            };
            unresolved(&label, format!("port {} not found on the Service", quote(&written)))
        })?;
    let servers = index.servers(service, port).map_err(|e| unresolved(&label, e))?;
    if let Some(w) = no_endpoints_warning(&label, &servers, port.port) {
        problems.push(w);
    }
    let protocol = match options.protocol {
        BackendProtocol::Http => UpstreamProtocol::Http,
        BackendProtocol::Grpc => UpstreamProtocol::H2c,
        BackendProtocol::Https => UpstreamProtocol::Tls,
        BackendProtocol::Grpcs => UpstreamProtocol::H2,
    };
    let mut ca_trust = None;
    let mut client_cert = None;
    let tls = if protocol.is_tls() {
        // The name verified and sent: proxy-ssl-name, else the Service's cluster name.
        let service_name = format!("{}.{}.svc", service.meta.name, service.meta.namespace);
        let name = match &options.name {
            Some(name) => name.clone(),
            None => DnsName::parse(&service_name).map_err(|e| unresolved(&label, e.0))?,
        };
        let verify = match (&options.secret, options.verify) {
            (Some(secret), true) => {
                let (ca, trust) = index.ca_secret(&label, secret, namespace, problems)?;
                ca_trust = Some(trust);
                Verification::Required {
                    ca,
                    subject_names: vec![name.clone()],
                    subject_uris: Vec::new(),
                    exact_names: false,
                }
            }
            _ => Verification::None,
        };
        if let Some(secret) = &options.secret {
            client_cert = client_certificate(index, &label, secret, namespace)?;
        }
        let (min_version, max_version) = options.versions.unwrap_or((TlsVersion::Tls12, TlsVersion::Tls13));
        Some(TlsPolicy {
            sni: options.server_name.then_some(name),
            verify,
            alpn: if protocol == UpstreamProtocol::H2 { vec![Alpn::H2] } else { Vec::new() },
            min_version,
            max_version,
            client_cert: client_cert.as_ref().map(|t: &portico_model::TrustRef| t.secret.clone()),
        })
    } else {
        None
    };
    let key = ClusterKey {
        namespace: service.meta.namespace.clone(),
        service: service.meta.name.clone(),
        port: port.port,
        protocol,
        tls,
    };
    Ok(Upstream { key, servers, ca_trust: ca_trust.into_iter().collect(), client_cert })
}

/// The client certificate of `proxy-ssl-secret` (its `tls.crt` and `tls.key`), presented
/// to these backends only, when the Secret has a valid pair. Without one (a Secret with
/// `ca.crt` alone, which ingress-nginx did not accept) nothing is presented; a pair that
/// is there but broken is an error, never silently dropped.
fn client_certificate(
    index: &Index<'_>,
    label: &crate::common::Label<'_>,
    secret: &SecretRef,
    namespace: &portico_model::K8sName,
) -> Result<Option<portico_model::TrustRef>, Problem> {
    if !index.delegated(secret, namespace) {
        return Err(Problem::error(
            ProblemType::TLSError,
            Reason::CACertificateNotDelegated,
            format!("{label}: certificate delegation not permitted for proxy-ssl-secret \"{secret}\""),
        ));
    }
    index.record(Dep::Secret(secret.clone()));
    let Some(verdict) = index.snapshot.verdicts.get(secret) else { return Ok(None) };
    match &verdict.key_pair {
        Ok(pair) => Ok(Some(portico_model::TrustRef { secret: secret.clone(), sha256: pair.sha256.clone() })),
        // No pair at all: a CA-only Secret.
        Err(why) if why.starts_with("secret type") || why.starts_with("empty ") => Ok(None),
        Err(why) => Err(Problem::error(
            ProblemType::TLSError,
            Reason::SecretNotValid,
            format!("{label}: the client certificate of proxy-ssl-secret \"{secret}\" is not valid: {why}"),
        )),
    }
}

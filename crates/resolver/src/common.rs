//! What both dialects share: finding a Service and its port, its servers, the CA-secret
//! rules (delegation before existence, then the verdict), and the client certificate.

use crate::snapshot::{Key, Snapshot};
use crate::Config;
use portico_model::names::quote;
use portico_model::{
    CaSource, DnsName, K8sName, PathPrefix, Problem, ProblemType, Reason, SecretRef, SecretVerdict, Servers, Service,
    ServicePort, ServiceType, Severity, TargetPort, TrustRef,
};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

/// The seed's words for a CA secret that is missing or not a valid CA bundle.
pub const SECRET_NOT_FOUND_OR_MISCONFIGURED: &str =
    "upstreamValidation requested but secret not found or misconfigured";

/// What a resolution read besides its own object: a change to any of these may change
/// its result (the resolver's dependency index, `incremental`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dep {
    /// An HTTPProxy an include names (found or not).
    Proxy(Key),
    /// A Service (and so its EndpointSlices), found or not.
    Service(Key),
    /// A Secret's verdict: a CA bundle or the client certificate.
    Secret(SecretRef),
    /// The TLSCertificateDelegations of a namespace.
    Delegations(K8sName),
    /// Every IngressClass (which Ingresses are Portico's).
    IngressClasses,
    /// Every Gateway and GatewayClass (where HTTPRoutes attach; there are few).
    GatewayApi,
    /// The ReferenceGrants of a namespace.
    ReferenceGrants(K8sName),
    /// The BackendTLSPolicies naming a Service (namespace, Service name) in a targetRef.
    BackendTlsPolicies(Key),
}

/// Lookups into the snapshot for one unit of resolution (a root HTTPProxy with what it
/// includes, or a Voyager Ingress), recording what they read.
pub struct Index<'a> {
    pub snapshot: &'a Snapshot,
    pub config: &'a Config,
    deps: RefCell<BTreeSet<Dep>>,
}

impl<'a> Index<'a> {
    pub fn new(snapshot: &'a Snapshot, config: &'a Config) -> Self {
        Index { snapshot, config, deps: RefCell::new(BTreeSet::new()) }
    }

    /// Everything read since the last call.
    pub fn take_deps(&self) -> BTreeSet<Dep> {
        std::mem::take(&mut *self.deps.borrow_mut())
    }

    pub fn record(&self, dep: Dep) {
        self.deps.borrow_mut().insert(dep);
    }

    pub fn service(&self, namespace: &K8sName, name: &str) -> Option<&'a Service> {
        let name: K8sName = name.parse().ok()?; // an invalid name can never exist
        let key = (namespace.clone(), name);
        let found = self.snapshot.services.get(&key);
        self.record(Dep::Service(key));
        found
    }

    /// Whether a secret may be used from `target_namespace`: same namespace, or a
    /// TLSCertificateDelegation in the secret's namespace names it for that namespace or `*`.
    pub fn delegated(&self, secret: &SecretRef, target_namespace: &K8sName) -> bool {
        if &secret.namespace == target_namespace {
            return true;
        }
        self.record(Dep::Delegations(secret.namespace.clone()));
        self.snapshot.delegations_in(&secret.namespace).flat_map(|d| &d.delegations).any(|d| {
            d.secret_name == secret.name.as_str()
                && d.target_namespaces.iter().any(|t| t == "*" || t == target_namespace.as_str())
        })
    }

    /// The servers of a Service port: ready endpoints, or the external name.
    pub fn servers(&self, service: &Service, port: &ServicePort) -> Result<Servers, String> {
        if let ServiceType::ExternalName(name) = &service.service_type {
            let host = DnsName::parse(name).map_err(|e| format!("ExternalName: {e}"))?;
            return Ok(Servers::Dns { host, port: port.port });
        }
        let mut addresses = Vec::new();
        for slice in self.snapshot.slices_of(&service.meta.namespace, service.meta.name.as_str()) {
            let Some(slice_port) = matching_slice_port(slice, port) else {
                continue;
            };
            for endpoint in slice.endpoints.iter().filter(|e| e.ready) {
                for address in &endpoint.addresses {
                    if let Ok(ip) = address.parse::<IpAddr>() {
                        addresses.push(SocketAddr::new(ip, slice_port));
                    }
                }
            }
        }
        addresses.sort();
        addresses.dedup();
        Ok(Servers::Endpoints(addresses))
    }

    /// Check a CA secret reference for use from `from_namespace`: delegation first (so an
    /// unauthorised reference never learns whether the secret exists), then the verdict.
    /// `label` is the `route "...": service "..."` part of messages.
    pub fn ca_secret(
        &self,
        label: &Label<'_>,
        secret: &SecretRef,
        from_namespace: &K8sName,
        warnings: &mut Vec<Problem>,
    ) -> Result<(CaSource, TrustRef), Problem> {
        if !self.delegated(secret, from_namespace) {
            return Err(Problem::error(
                ProblemType::TLSError,
                Reason::CACertificateNotDelegated,
                format!("{label}: certificate delegation not permitted for CA secret \"{secret}\""),
            )
            .with_detail(format!(
                "add a TLSCertificateDelegation in namespace \"{}\" listing secretName \"{}\" with targetNamespaces [\"{from_namespace}\"] or [\"*\"]",
                secret.namespace, secret.name
            )));
        }
        let info = self.usable(secret, |v| &v.ca).map_err(|detail| {
            // Contour's mapping (SPEC section 2): ServiceError / TLSUpstreamValidation.
            Problem::error(
                ProblemType::ServiceError,
                Reason::TLSUpstreamValidation,
                format!("{label}: {SECRET_NOT_FOUND_OR_MISCONFIGURED}"),
            )
            .with_detail(detail)
        })?;
        for w in &info.warnings {
            warnings.push(Problem::warning(
                ProblemType::TLSError,
                Reason::CertificateExpiring,
                format!("{label}: CA secret \"{secret}\": {w}"),
            ));
        }
        Ok((CaSource::Secret(secret.clone()), TrustRef { secret: secret.clone(), sha256: info.sha256.clone() }))
    }

    /// One use of a secret (`pick` chooses the CA bundle or the client certificate): its
    /// summary, or why it cannot be used (the detail of a `SecretNotValid` error).
    fn usable<T>(
        &self,
        secret: &SecretRef,
        pick: impl Fn(&'a SecretVerdict) -> &'a Result<T, String>,
    ) -> Result<&'a T, String> {
        self.record(Dep::Secret(secret.clone()));
        let verdict = self.snapshot.verdicts.get(secret).ok_or_else(|| format!("secret \"{secret}\" not found"))?;
        pick(verdict).as_ref().map_err(|reason| format!("secret \"{secret}\": {reason}"))
    }

    /// The configured client certificate for a TLS upstream, if any; an error when it is
    /// configured but missing or not valid (every TLS upstream then answers 503).
    pub fn client_cert(&self, label: &Label<'_>, warnings: &mut Vec<Problem>) -> Result<Option<TrustRef>, Problem> {
        let Some(secret) = &self.config.client_cert else {
            return Ok(None);
        };
        let info = self.usable(secret, |v| &v.key_pair).map_err(|detail| {
            Problem::error(
                ProblemType::TLSError,
                Reason::SecretNotValid,
                format!("{label}: client certificate secret \"{secret}\" not found or misconfigured"),
            )
            .with_detail(detail)
        })?;
        for w in &info.warnings {
            warnings.push(Problem::warning(
                ProblemType::TLSError,
                Reason::CertificateExpiring,
                format!("{label}: {w}"),
            ));
        }
        Ok(Some(TrustRef { secret: secret.clone(), sha256: info.sha256.clone() }))
    }
}

/// The EndpointSlice port for a Service port: by name, or for an unnamed Service port the
/// unnamed slice port (preferring the one whose number is the numeric target port).
fn matching_slice_port(slice: &portico_model::EndpointSlice, port: &ServicePort) -> Option<u16> {
    if !port.name.is_empty() {
        return slice.ports.iter().find(|p| p.name == port.name).and_then(|p| p.port);
    }
    let unnamed: Vec<u16> = slice.ports.iter().filter(|p| p.name.is_empty()).filter_map(|p| p.port).collect();
    let wanted = match &port.target_port {
        Some(TargetPort::Number(n)) => Some(*n),
        None => Some(port.port),
        Some(TargetPort::Name(_)) => None,
    };
    match wanted {
        Some(n) if unnamed.contains(&n) => Some(n),
        _ => unnamed.first().copied(),
    }
}

/// Error for a Service or port that cannot be found.
pub fn unresolved(label: &Label<'_>, what: String) -> Problem {
    Problem::error(ProblemType::ServiceError, Reason::ServiceUnresolvedReference, format!("{label}: {what}"))
}

/// `route "<prefix>": service "<name>"`, quoted safely, formatted only when a message is
/// actually written (most services have no problem, and this runs for every one).
#[derive(Clone, Copy)]
pub struct Label<'a> {
    pub prefix: &'a str,
    pub service: &'a str,
}

impl std::fmt::Display for Label<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "route {}: service {}", quote(self.prefix), quote(self.service))
    }
}

pub fn service_label<'a>(prefix: &'a str, service: &'a str) -> Label<'a> {
    Label { prefix, service }
}

/// A warning when a cluster has nothing to send traffic to.
pub fn no_endpoints_warning(label: &Label<'_>, servers: &Servers, port: u16) -> Option<Problem> {
    match servers {
        Servers::Endpoints(list) if list.is_empty() => Some(Problem::warning(
            ProblemType::ServiceError,
            Reason::NoReadyEndpoints,
            format!("{label}: port {port} has no ready endpoints; requests will get 503 until one is ready"),
        )),
        _ => None,
    }
}

/// Parse a route's path prefix as written; a bad one is a route error, and the route is
/// not rendered (there is no safe way to match on it).
pub fn route_prefix(written: &str, problems: &mut Vec<Problem>) -> Option<PathPrefix> {
    match written.parse::<PathPrefix>() {
        Ok(prefix) => Some(prefix),
        Err(e) => {
            problems.push(Problem::error(
                ProblemType::RouteError,
                Reason::InvalidValue,
                format!("route {}: {e}", quote(written)),
            ));
            None
        }
    }
}

/// The number of errors in a problem list: resolving a route failed when it grew.
pub fn error_count(problems: &[Problem]) -> usize {
    problems.iter().filter(|p| p.severity == Severity::Error).count()
}

/// The words of SPEC section 9 for a field Portico does not implement: a warning, or an
/// error when the field restricts access (`restricts`: then `guards`, what it guards, is
/// not served). Every dialect words it the same.
pub fn ignored_field(path: &str, restricts: bool, guards: &str) -> Problem {
    // A field's name is the user's: quoted unless it is a plain path.
    let plain = path.len() <= 200 && path.bytes().all(|b| b.is_ascii_alphanumeric() || b"._[]-/".contains(&b));
    let path = if plain { path.to_owned() } else { quote(path) };
    if restricts {
        Problem::error(
            ProblemType::SpecError,
            Reason::UnsupportedRestriction,
            format!(
                "{path} is not supported by Portico; {guards} is not served (503), since serving it without this restriction would widen access"
            ),
        )
    } else {
        Problem::warning(
            ProblemType::SpecError,
            Reason::IgnoredField,
            format!("{path} is not supported by Portico and is ignored"),
        )
    }
}

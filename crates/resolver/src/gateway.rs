//! The Gateway API dialect (SPEC section 6): Gateways of Portico's GatewayClass, HTTPRoutes
//! attached to their listeners, and BackendTLSPolicy v1 deciding how their backends are
//! reached. An HTTPRoute is a unit of resolution (`UnitKey::HttpRoute`): it reads the
//! Gateways (`Dep::GatewayApi`), the ReferenceGrants and BackendTLSPolicies of the
//! namespaces it reaches into, Services and verdicts, and says which listeners it attached
//! to and which policies it applied for which Gateway (`GatewayFacts`). The statuses of
//! Gateways (attachedRoutes) and BackendTLSPolicies (ancestors) are put together from those
//! facts (`gateway_status`, `policy_status`).

use crate::build::{PendingAction, PendingRoute, Upstream};
use crate::common::{Dep, Index};
use crate::serving::CertificateRequest;
use crate::snapshot::Key;
use portico_model::names::quote;
use portico_model::{
    ApiCondition, BackendTlsPolicy, CaSource, ClusterKey, DnsName, Gateway, GatewayApiStatus, GatewayListener,
    GatewayRef, HostMatch, HttpRoute, K8sName, Kind, ListenerStatus, ParentStatus, PathPrefix, Problem, ProblemType,
    Reason, SanUri, SecretRef, ServingTls, TlsPolicy, TlsVersion, TrustRef, UpstreamProtocol, Verification,
    GATEWAY_CONTROLLER,
};

/// The Gateway API group.
pub const GROUP: &str = "gateway.networking.k8s.io";
/// The most CA references a policy may have (the CRD's limit).
const MAX_CA_REFS: usize = 8;
/// The most ancestors a policy's status lists (the CRD's limit).
const MAX_ANCESTORS: usize = 16;
/// The options Portico reads from `spec.options`.
pub const MIN_VERSION_OPTION: &str = "portico.dev/min-tls-version";
pub const MAX_VERSION_OPTION: &str = "portico.dev/max-tls-version";

/// What an HTTPRoute unit found besides routes, for the statuses of other objects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayFacts {
    /// The HTTPRoute's own `status.parents` (Portico's Gateways only).
    pub parents: Vec<ParentStatus>,
    /// The listeners it attached to: (Gateway, listener name).
    pub attached: Vec<(Key, String)>,
    /// The policies it applied and for which Gateway: (policy, Gateway).
    pub policy_ancestors: Vec<(Key, Key)>,
}

fn condition(kind: &str, result: &Result<&str, (&str, String)>, generation: i64) -> ApiCondition {
    match result {
        Ok(reason) => ApiCondition::new(kind, true, reason, "", generation),
        Err((reason, message)) => ApiCondition::new(kind, false, reason, message.clone(), generation),
    }
}

fn problem(message: String) -> Problem {
    Problem::error(ProblemType::SpecError, Reason::InvalidValue, message)
}

impl Index<'_> {
    /// Whether Portico serves this GatewayClass name.
    pub(crate) fn class_is_ours(&self, name: &str) -> bool {
        self.record(Dep::GatewayApi);
        let Ok(name) = name.parse::<K8sName>() else { return false };
        let key = (portico_model::CLUSTER.parse::<K8sName>().expect("a valid name"), name);
        self.snapshot.gateway_classes.get(&key).is_some_and(|c| c.controller == GATEWAY_CONTROLLER)
    }

    /// The Gateway of Portico's class `namespace/name`, if there is one.
    fn our_gateway(&self, namespace: &K8sName, name: &str) -> Option<&Gateway> {
        self.record(Dep::GatewayApi);
        let name: K8sName = name.parse().ok()?;
        let gateway = self.snapshot.gateways.get(&(namespace.clone(), name))?;
        self.class_is_ours(&gateway.class_name).then_some(gateway)
    }

    /// Whether a ReferenceGrant in `to_namespace` lets a `from_kind` in `from_namespace`
    /// refer to the `to_group`/`to_kind` object `to_name` there.
    pub fn granted(
        &self,
        from_kind: &str,
        from_namespace: &K8sName,
        to_group: &str,
        to_kind: &str,
        to_namespace: &K8sName,
        to_name: &str,
    ) -> bool {
        if from_namespace == to_namespace {
            return true;
        }
        self.record(Dep::ReferenceGrants(to_namespace.clone()));
        crate::Snapshot::in_namespace(&self.snapshot.reference_grants, to_namespace).any(|grant| {
            grant.from.iter().any(|f| f.group == GROUP && f.kind == from_kind && f.namespace == from_namespace.as_str())
                && grant
                    .to
                    .iter()
                    .any(|t| t.group == to_group && t.kind == to_kind && t.name.as_deref().is_none_or(|n| n == to_name))
        })
    }
}

// ---------------------------------------------------------------------------------------
// BackendTLSPolicy

/// What a BackendTLSPolicy asks, judged: its conditions and, when it can be applied, the
/// TLS it gives a cluster (without the client certificate, which is the Gateway's).
#[derive(Clone, Debug)]
pub struct PolicyJudgement {
    pub accepted: Result<&'static str, (&'static str, String)>,
    pub resolved_refs: Result<&'static str, (&'static str, String)>,
    /// `Some` when backends get TLS with this verification; `None`: they answer 503.
    pub tls: Option<(TlsPolicy, Vec<TrustRef>)>,
}

/// Whether `policy` targets this Service port: `Some(true)` by its `sectionName` (the
/// port's name), `Some(false)` as the whole Service, `None` not at all.
fn targets(policy: &BackendTlsPolicy, service: &str, port_name: &str) -> Option<bool> {
    let mut found = None;
    for t in &policy.target_refs {
        if !(t.group.as_deref().unwrap_or("").is_empty() && t.kind.as_deref() == Some("Service")) || t.name != service {
            continue;
        }
        match t.section_name.as_deref() {
            Some(section) if section == port_name && !port_name.is_empty() => return Some(true),
            Some(_) => {}
            None => found = Some(false),
        }
    }
    found
}

/// The order conflicts are decided in: oldest first, then `namespace/name`.
fn age(policy: &BackendTlsPolicy) -> (Option<&str>, &K8sName, &K8sName) {
    (policy.lifecycle.created.as_deref(), &policy.meta.namespace, &policy.meta.name)
}

impl Index<'_> {
    /// The policy that decides how the Service port `port_name` of `namespace/service` is
    /// reached: one for that port beats one for the whole Service; among equals the oldest
    /// wins (the others are `Conflicted`).
    pub fn policy_for(&self, namespace: &K8sName, service: &str, port_name: &str) -> Option<&BackendTlsPolicy> {
        self.policies_targeting(namespace, service, port_name)
            .into_iter()
            .min_by(|(a, a_section), (b, b_section)| b_section.cmp(a_section).then(age(a).cmp(&age(b))))
            .map(|(p, _)| p)
    }

    /// Every policy that targets the Service port, and whether by its `sectionName`: each
    /// has the Gateways of the routes using that port as ancestors, winner or not.
    pub fn policies_targeting(
        &self,
        namespace: &K8sName,
        service: &str,
        port_name: &str,
    ) -> Vec<(&BackendTlsPolicy, bool)> {
        self.record_policies(namespace, service);
        self.snapshot
            .policies_naming(namespace, service)
            .filter_map(|p| targets(p, service, port_name).map(|by_section| (p, by_section)))
            .collect()
    }

    fn record_policies(&self, namespace: &K8sName, service: &str) {
        if let Ok(name) = service.parse::<K8sName>() {
            self.record(Dep::BackendTlsPolicies((namespace.clone(), name)));
        }
    }

    /// The policy that wins over `policy` for one of its targets, if any: it is then
    /// `Conflicted`.
    fn conflicting(&self, policy: &BackendTlsPolicy) -> Option<&BackendTlsPolicy> {
        for target in &policy.target_refs {
            self.record_policies(&policy.meta.namespace, &target.name);
            let same_target = |other: &BackendTlsPolicy| {
                other.target_refs.iter().any(|t| {
                    t.group == target.group
                        && t.kind == target.kind
                        && t.name == target.name
                        && t.section_name == target.section_name
                })
            };
            let winner = self
                .snapshot
                .policies_naming(&policy.meta.namespace, &target.name)
                .filter(|other| same_target(other))
                .min_by(|a, b| age(a).cmp(&age(b)));
            if let Some(winner) = winner.filter(|w| w.meta != policy.meta) {
                return Some(winner);
            }
        }
        None
    }

    /// Judge a policy (SPEC section 6): its targets, CA references, well-known CAs, names,
    /// options and conflicts.
    pub fn judge_policy(&self, policy: &BackendTlsPolicy) -> PolicyJudgement {
        let namespace = &policy.meta.namespace;
        let mut invalid: Option<(&'static str, String)> = None;
        let mut set_invalid = |reason: &'static str, message: String| {
            if invalid.is_none() {
                invalid = Some((reason, message));
            }
        };
        if let Some(winner) = self.conflicting(policy) {
            set_invalid(
                "Conflicted",
                format!(
                    "BackendTLSPolicy {}/{} targets the same Service port and is older (or sorts first); this one is not applied",
                    winner.meta.namespace, winner.meta.name
                ),
            );
        }
        for target in &policy.target_refs {
            if !(target.group.as_deref().unwrap_or("").is_empty() && target.kind.as_deref() == Some("Service")) {
                set_invalid(
                    "Invalid",
                    format!(
                        "targetRefs: {} {} is not a Service (group \"\", kind Service)",
                        quote(target.kind.as_deref().unwrap_or("")),
                        quote(&target.name)
                    ),
                );
            }
        }
        // Names: hostname is the SNI; subjectAltNames, when set, are what is verified.
        let sni = match DnsName::parse(&policy.hostname) {
            Ok(name) => Some(name),
            Err(e) => {
                set_invalid("Invalid", format!("validation.hostname: {e}"));
                None
            }
        };
        let mut subject_names = Vec::new();
        let mut subject_uris = Vec::new();
        for (i, (kind, value)) in policy.subject_alt_names.iter().enumerate() {
            match kind.as_str() {
                "Hostname" => match DnsName::parse(value) {
                    Ok(name) => subject_names.push(name),
                    Err(e) => set_invalid("Invalid", format!("validation.subjectAltNames[{i}].hostname: {e}")),
                },
                "URI" => match value.parse::<SanUri>() {
                    Ok(uri) => subject_uris.push(uri),
                    Err(e) => set_invalid("Invalid", format!("validation.subjectAltNames[{i}].uri: {e}")),
                },
                other => set_invalid(
                    "Invalid",
                    format!("validation.subjectAltNames[{i}].type {} is not Hostname or URI", quote(other)),
                ),
            }
        }
        if policy.subject_alt_names.is_empty() {
            subject_names.extend(sni.clone());
        }
        // Options.
        let mut versions = (TlsVersion::Tls12, TlsVersion::Tls13);
        for (key, value) in &policy.options {
            let version = match value.as_str() {
                "1.2" => Some(TlsVersion::Tls12),
                "1.3" => Some(TlsVersion::Tls13),
                _ => None,
            };
            match (key.as_str(), version) {
                (MIN_VERSION_OPTION, Some(v)) => versions.0 = v,
                (MAX_VERSION_OPTION, Some(v)) => versions.1 = v,
                (MIN_VERSION_OPTION | MAX_VERSION_OPTION, None) => {
                    set_invalid("Invalid", format!("options: {key} {} is not 1.2 or 1.3", quote(value)))
                }
                _ => set_invalid(
                    "Invalid",
                    format!(
                        "options: {} is not an option Portico knows (it reads {MIN_VERSION_OPTION} and {MAX_VERSION_OPTION}); the policy is not applied rather than applied without it",
                        quote(key)
                    ),
                ),
            }
        }
        if versions.0 > versions.1 {
            set_invalid("Invalid", format!("options: {MIN_VERSION_OPTION} is above {MAX_VERSION_OPTION}"));
        }
        // Trust: the well-known store, or the union of the valid references.
        let mut resolved_refs: Result<&'static str, (&'static str, String)> = Ok("ResolvedRefs");
        let mut trust = Vec::new();
        let ca = match policy.well_known_ca_certificates.as_deref() {
            Some("System") if policy.ca_certificate_refs.is_empty() => Some(CaSource::System),
            Some("System") => {
                set_invalid(
                    "Invalid",
                    "validation: caCertificateRefs and wellKnownCACertificates are both set; set one".into(),
                );
                None
            }
            Some(other) => {
                set_invalid(
                    "Invalid",
                    format!("validation.wellKnownCACertificates {} is not supported (only System)", quote(other)),
                );
                None
            }
            None => {
                let mut valid: Vec<SecretRef> = Vec::new();
                let mut failures = Vec::new();
                let mut invalid_kind = false;
                for (i, r) in policy.ca_certificate_refs.iter().enumerate().take(MAX_CA_REFS) {
                    let group = r.group.as_deref().unwrap_or("");
                    let kind = r.kind.as_deref().unwrap_or("");
                    let reference = match (group, kind) {
                        ("", "ConfigMap") => SecretRef::config_map(namespace.as_str(), &r.name),
                        ("", "Secret") => SecretRef::new(namespace.as_str(), &r.name),
                        _ => {
                            invalid_kind = true;
                            failures.push(format!(
                                "caCertificateRefs[{i}]: {} {} is not a ConfigMap or a Secret",
                                quote(kind),
                                quote(&r.name)
                            ));
                            continue;
                        }
                    };
                    let reference = match reference {
                        Ok(reference) => reference,
                        Err(e) => {
                            failures.push(format!("caCertificateRefs[{i}]: {e}"));
                            continue;
                        }
                    };
                    self.record(Dep::Secret(reference.clone()));
                    let what = if reference.is_config_map() { "ConfigMap" } else { "Secret" };
                    match self.snapshot.verdicts.get(&reference).map(|v| &v.ca) {
                        None => {
                            failures.push(format!("caCertificateRefs[{i}]: {what} \"{}\" not found", reference.name))
                        }
                        Some(Err(why)) => {
                            failures.push(format!("caCertificateRefs[{i}]: {what} \"{}\": {why}", reference.name))
                        }
                        Some(Ok(info)) => {
                            trust.push(TrustRef { secret: reference.clone(), sha256: info.sha256.clone() });
                            valid.push(reference);
                        }
                    }
                }
                if policy.ca_certificate_refs.len() > MAX_CA_REFS {
                    failures.push(format!("caCertificateRefs: more than {MAX_CA_REFS}; the rest are not read"));
                }
                if !failures.is_empty() {
                    let reason = if invalid_kind { "InvalidKind" } else { "InvalidCACertificateRef" };
                    resolved_refs = Err((reason, failures.join("; ")));
                }
                valid.sort();
                valid.dedup();
                match valid.len() {
                    0 => {
                        let why = match &resolved_refs {
                            Err((_, m)) => m.clone(),
                            Ok(_) => "validation: set caCertificateRefs or wellKnownCACertificates".to_owned(),
                        };
                        set_invalid("NoValidCACertificate", format!("no valid CA certificate: {why}"));
                        None
                    }
                    1 => Some(CaSource::Secret(valid.remove(0))),
                    _ => Some(CaSource::Union(valid)),
                }
            }
        };
        let accepted = match invalid {
            Some(failure) => Err(failure),
            None => Ok("Accepted"),
        };
        let tls = match (&accepted, ca, sni) {
            (Ok(_), Some(ca), Some(sni)) => Some((
                TlsPolicy {
                    sni: Some(sni),
                    verify: Verification::Required { ca, subject_names, subject_uris, exact_names: true },
                    alpn: Vec::new(),
                    min_version: versions.0,
                    max_version: versions.1,
                    client_cert: None,
                },
                trust,
            )),
            _ => None,
        };
        PolicyJudgement { accepted, resolved_refs, tls }
    }
}

// ---------------------------------------------------------------------------------------
// Gateways and their listeners

/// A listener as Portico serves it, or why not.
pub struct ListenerState {
    /// The `Accepted` condition: `Err` for a protocol or option Portico does not serve.
    pub accepted: Result<&'static str, (&'static str, String)>,
    /// The `ResolvedRefs` condition: the certificate of an HTTPS listener.
    pub resolved_refs: Result<&'static str, (&'static str, String)>,
    /// The listener's hostname, parsed (`Any` when absent).
    pub hostname: HostMatch,
    /// The certificate reference of an HTTPS listener that resolved.
    pub certificate: Option<SecretRef>,
}

impl Index<'_> {
    pub fn listener_state(&self, gateway: &Gateway, listener: &GatewayListener) -> ListenerState {
        let mut out = ListenerState {
            accepted: Ok("Accepted"),
            resolved_refs: Ok("ResolvedRefs"),
            hostname: HostMatch::Any,
            certificate: None,
        };
        if let Some(h) = listener.hostname.as_deref() {
            match HostMatch::parse(h) {
                Ok(host) => out.hostname = host,
                Err(e) => out.accepted = Err(("UnsupportedValue", format!("hostname: {e}"))),
            }
        }
        if !listener.allowed_kinds.is_empty() && !listener.allowed_kinds.iter().any(|k| k == "HTTPRoute") {
            out.resolved_refs = Err(("InvalidRouteKinds", "allowedRoutes.kinds: Portico serves HTTPRoute only".into()));
        }
        match listener.protocol.as_str() {
            "HTTP" => {}
            "HTTPS" => {
                if listener.tls_mode.as_deref().is_some_and(|m| m != "Terminate") {
                    out.accepted = Err(("UnsupportedValue", "tls.mode: Portico terminates TLS only".into()));
                    return out;
                }
                match self.listener_certificate(gateway, listener) {
                    Ok(secret) => out.certificate = Some(secret),
                    Err(failure) => out.resolved_refs = Err(failure),
                }
            }
            other => {
                out.accepted =
                    Err(("UnsupportedProtocol", format!("protocol {} is not served (HTTP or HTTPS)", quote(other))))
            }
        }
        out
    }

    /// The first certificate reference of an HTTPS listener, checked: a Secret, granted
    /// when in another namespace, with a valid pair.
    fn listener_certificate(
        &self,
        gateway: &Gateway,
        listener: &GatewayListener,
    ) -> Result<SecretRef, (&'static str, String)> {
        let Some(r) = listener.certificate_refs.first() else {
            return Err(("InvalidCertificateRef", "tls.certificateRefs: an HTTPS listener needs one".into()));
        };
        self.gateway_key_pair(gateway, r, "tls.certificateRefs[0]", "InvalidCertificateRef").map(|(secret, _)| secret)
    }

    /// The Gateway's client certificate for its TLS backends: `None` when it names none
    /// (the configured one applies), the valid pair, or why its TLS backends answer 503.
    pub fn gateway_client_certificate(&self, gateway: &Gateway) -> Result<Option<TrustRef>, (&'static str, String)> {
        let Some(r) = &gateway.client_certificate else { return Ok(None) };
        let field = "spec.tls.backend.clientCertificateRef";
        let (secret, sha256) = self.gateway_key_pair(gateway, r, field, "InvalidClientCertificateRef")?;
        Ok(Some(TrustRef { secret, sha256 }))
    }

    /// A Secret with a key pair that a Gateway names at `field`: of kind Secret, granted by
    /// a ReferenceGrant when in another namespace (else `RefNotPermitted`), found, and valid;
    /// any other failure has `invalid` as its reason. The Secret and the pair's hash.
    fn gateway_key_pair(
        &self,
        gateway: &Gateway,
        r: &GatewayRef,
        field: &str,
        invalid: &'static str,
    ) -> Result<(SecretRef, String), (&'static str, String)> {
        if !(r.group.as_deref().unwrap_or("").is_empty() && r.kind.as_deref().unwrap_or("Secret") == "Secret") {
            return Err((invalid, format!("{field}: {} is not a Secret", quote(&r.name))));
        }
        let namespace = r.namespace.as_deref().unwrap_or(gateway.meta.namespace.as_str());
        let secret = SecretRef::new(namespace, &r.name).map_err(|e| (invalid, format!("{field}: {e}")))?;
        if !self.granted("Gateway", &gateway.meta.namespace, "", "Secret", &secret.namespace, &r.name) {
            return Err((
                "RefNotPermitted",
                format!("{field}: Secret {secret} is in another namespace and no ReferenceGrant there allows it"),
            ));
        }
        self.record(Dep::Secret(secret.clone()));
        match self.snapshot.verdicts.get(&secret).map(|v| &v.key_pair) {
            None => Err((invalid, format!("{field}: Secret {secret} not found"))),
            Some(Err(why)) => Err((invalid, format!("{field}: Secret {secret}: {why}"))),
            Some(Ok(pair)) => Ok((secret, pair.sha256.clone())),
        }
    }
}

/// The hosts a route serves on a listener: the intersection of the listener's hostname and
/// the route's hostnames (SPEC section 6, Gateway API's rules), `None` when they do not
/// meet.
fn intersect(listener: &HostMatch, route: &[HostMatch]) -> Option<Vec<HostMatch>> {
    if route.is_empty() {
        return Some(vec![listener.clone()]);
    }
    let covers = |wildcard: &DnsName, name: &DnsName| {
        name.as_str().strip_suffix(wildcard.as_str()).is_some_and(|label| label.ends_with('.') && label.len() > 1)
    };
    let mut out = Vec::new();
    for r in route {
        let host = match (listener, r) {
            (HostMatch::Any, r) => Some(r.clone()),
            (l, HostMatch::Any) => Some(l.clone()),
            (HostMatch::Exact(l), HostMatch::Exact(r)) => (l == r).then(|| HostMatch::Exact(r.clone())),
            (HostMatch::Wildcard(l), HostMatch::Exact(r)) => covers(l, r).then(|| HostMatch::Exact(r.clone())),
            (HostMatch::Exact(l), HostMatch::Wildcard(r)) => covers(r, l).then(|| HostMatch::Exact(l.clone())),
            (HostMatch::Wildcard(l), HostMatch::Wildcard(r)) => {
                if l == r || covers(l, r) {
                    Some(HostMatch::Wildcard(r.clone()))
                } else if covers(r, l) {
                    Some(HostMatch::Wildcard(l.clone()))
                } else {
                    None
                }
            }
        };
        if let Some(host) = host.filter(|h| !out.contains(h)) {
            out.push(host);
        }
    }
    (!out.is_empty()).then_some(out)
}

// ---------------------------------------------------------------------------------------
// HTTPRoute

/// Resolve one HTTPRoute: routes on the listeners of Portico's Gateways it attaches to,
/// its problems, and the facts other statuses need.
pub fn resolve_http_route(
    index: &Index<'_>,
    route: &HttpRoute,
    problems: &mut Vec<Problem>,
    facts: &mut GatewayFacts,
) -> Vec<PendingRoute> {
    let owner = route.meta.object_ref(Kind::HttpRoute);
    let generation = route.lifecycle.generation;
    let mut routes = Vec::new();
    // The route's hostnames; a bad one is dropped with a problem (the CRD's pattern
    // refuses them before Portico sees them, except in files).
    let mut hostnames = Vec::new();
    for h in &route.hostnames {
        match HostMatch::parse(h) {
            Ok(HostMatch::Any) | Err(_) => {
                problems.push(problem(format!("spec.hostnames: {} is not a host name", quote(h))))
            }
            Ok(host) => hostnames.push(host),
        }
    }
    // Hostnames were given and none is valid: serving on every host instead would widen the
    // route, so it attaches nowhere.
    let no_valid_hostname = !route.hostnames.is_empty() && hostnames.is_empty();
    for parent in &route.parent_refs {
        if parent.group.as_deref().unwrap_or(GROUP) != GROUP || parent.kind.as_deref().unwrap_or("Gateway") != "Gateway"
        {
            continue; // another kind of parent: not Portico's to judge
        }
        let Ok(gw_namespace) = parent.namespace.as_deref().unwrap_or(route.meta.namespace.as_str()).parse::<K8sName>()
        else {
            continue;
        };
        let Some(gateway) = index.our_gateway(&gw_namespace, &parent.name) else { continue };
        let gateway_key: Key = (gateway.meta.namespace.clone(), gateway.meta.name.clone());
        let mut accepted: Result<&str, (&str, String)> = Ok("Accepted");
        let mut resolved: Result<&str, (&str, String)> = Ok("ResolvedRefs");
        let candidates: Vec<&GatewayListener> = gateway
            .listeners
            .iter()
            .filter(|l| parent.section_name.as_deref().is_none_or(|s| s == l.name))
            .filter(|l| parent.port.is_none_or(|p| p == l.port))
            .collect();
        let mut attached = Vec::new();
        let mut refusals = Vec::new();
        for listener in &candidates {
            let state = index.listener_state(gateway, listener);
            if let Err((_, why)) = &state.accepted {
                refusals.push(format!("listener {}: {why}", quote(&listener.name)));
                continue;
            }
            let allowed = match listener.allowed_from.as_deref().unwrap_or("Same") {
                "All" => true,
                "Same" => route.meta.namespace == gateway.meta.namespace,
                _ => false,
            };
            if !allowed {
                let from = listener.allowed_from.as_deref().unwrap_or("Same");
                refusals.push(format!(
                    "listener {} allows routes from {}{}",
                    quote(&listener.name),
                    quote(from),
                    if from == "Selector" {
                        " (Portico does not read namespace labels: no namespace matches)"
                    } else {
                        ""
                    }
                ));
                continue;
            }
            if state.resolved_refs.as_ref().is_err_and(|(r, _)| *r == "InvalidRouteKinds") {
                refusals.push(format!("listener {} does not allow HTTPRoutes", quote(&listener.name)));
                continue;
            }
            let Some(hosts) = intersect(&state.hostname, &hostnames) else {
                refusals.push(format!("listener {}: no hostname in common", quote(&listener.name)));
                continue;
            };
            attached.push((*listener, state, hosts));
        }
        if no_valid_hostname {
            attached.clear();
            accepted = Err(("UnsupportedValue", "spec.hostnames: none is a valid host name".to_owned()));
        } else if candidates.is_empty() {
            accepted = Err((
                "NoMatchingParent",
                format!("Gateway {gw_namespace}/{} has no listener matching sectionName/port", parent.name),
            ));
        } else if attached.is_empty() {
            let reason = if refusals.iter().all(|r| r.ends_with("no hostname in common")) {
                "NoMatchingListenerHostname"
            } else {
                "NotAllowedByListeners"
            };
            accepted = Err((reason, refusals.join("; ")));
        }
        let client_cert = index.gateway_client_certificate(gateway);
        for (listener, state, hosts) in &attached {
            facts.attached.push((gateway_key.clone(), listener.name.clone()));
            // An HTTPS listener without a valid certificate serves nothing (its status says why).
            let serving = match (&state.certificate, listener.protocol.as_str()) {
                (Some(secret), _) => Some(secret.clone()),
                (None, "HTTPS") => continue,
                (None, _) => None,
            };
            for (r, rule) in route.rules.iter().enumerate() {
                let action = if !rule.unsupported.is_empty() {
                    problems.push(crate::common::ignored_field(
                        &rule.unsupported.join(", "),
                        true,
                        &format!("rule {r}"),
                    ));
                    PendingAction::Reject
                } else {
                    resolve_rule(index, route, rule, r, &gateway_key, &client_cert, &mut resolved, facts)
                };
                let matches: Vec<(PathPrefix, bool)> = if rule.matches.is_empty() {
                    vec![(PathPrefix::root(), false)]
                } else {
                    rule.matches.iter().filter_map(|m| path_match(m, r, problems)).collect()
                };
                for host in hosts {
                    let tls = match &serving {
                        None => None,
                        Some(secret) => {
                            let request = CertificateRequest {
                                field: "tls.certificateRefs[0]",
                                secret: secret.clone(),
                                from_namespace: &secret.namespace,
                                min_version: TlsVersion::Tls12,
                            };
                            match index.serving_certificate(&request, host) {
                                Ok(tls) => Some(tls),
                                Err(p) => {
                                    problems.push(Problem::warning(
                                        ProblemType::TLSError,
                                        Reason::SecretNotValid,
                                        format!("listener {} of Gateway {gw_namespace}/{}: host {host} is not served over HTTPS: {}", quote(&listener.name), parent.name, p.full_message()),
                                    ));
                                    continue;
                                }
                            }
                        }
                    };
                    for (prefix, exact) in &matches {
                        routes.push(PendingRoute {
                            listener: listener.port,
                            host: host.clone(),
                            prefix: prefix.clone(),
                            exact: *exact,
                            owner: owner.clone(),
                            action: action.clone(),
                            tls: tls.clone() as Option<ServingTls>,
                        });
                    }
                }
            }
        }
        if let Err((_, why)) = &accepted {
            problems.push(problem(format!("parentRef Gateway {gw_namespace}/{}: {why}", parent.name)));
        }
        if let Err((_, why)) = &resolved {
            problems.push(Problem::error(ProblemType::ServiceError, Reason::ServiceUnresolvedReference, why.clone()));
        }
        facts.parents.push(ParentStatus {
            parent: GatewayRef {
                group: Some(GROUP.into()),
                kind: Some("Gateway".into()),
                namespace: Some(gw_namespace.to_string()),
                name: parent.name.clone(),
                section_name: parent.section_name.clone(),
                port: parent.port,
            },
            conditions: vec![
                condition("Accepted", &accepted, generation),
                condition("ResolvedRefs", &resolved, generation),
            ],
        });
    }
    facts.attached.sort();
    facts.attached.dedup();
    facts.policy_ancestors.sort();
    facts.policy_ancestors.dedup();
    routes
}

fn path_match(
    m: &portico_model::HttpRouteMatch,
    rule: usize,
    problems: &mut Vec<Problem>,
) -> Option<(PathPrefix, bool)> {
    let exact = match m.path_type.as_str() {
        "Exact" => true,
        "PathPrefix" => false,
        other => {
            problems.push(problem(format!(
                "spec.rules[{rule}].matches: path type {} is not supported (PathPrefix or Exact); the match is not served",
                quote(other)
            )));
            return None;
        }
    };
    let prefix = crate::common::route_prefix(&m.path, problems)?;
    if exact {
        return Some((prefix, true));
    }
    // PathPrefix matches by path element, like Kubernetes Ingress's Prefix.
    let trimmed = prefix.as_str().trim_end_matches('/');
    if trimmed.is_empty() {
        return Some((PathPrefix::root(), false));
    }
    format!("{trimmed}/").parse::<PathPrefix>().ok().map(|p| (p, false))
}

/// One rule's backends for one Gateway: forward to them, or 503 when one cannot be used.
#[allow(clippy::too_many_arguments)]
fn resolve_rule(
    index: &Index<'_>,
    route: &HttpRoute,
    rule: &portico_model::HttpRouteRule,
    r: usize,
    gateway_key: &Key,
    client_cert: &Result<Option<TrustRef>, (&'static str, String)>,
    resolved: &mut Result<&str, (&str, String)>,
    facts: &mut GatewayFacts,
) -> PendingAction {
    let mut fail = |reason: &'static str, message: String| {
        if resolved.is_ok() {
            *resolved = Err((reason, message));
        }
        PendingAction::Reject
    };
    if rule.backend_refs.is_empty() {
        return fail("BackendNotFound", format!("spec.rules[{r}]: no backendRefs"));
    }
    let host_rewrite = match rule.host_rewrite.as_deref().map(DnsName::parse) {
        None => None,
        Some(Ok(name)) => Some(name),
        Some(Err(e)) => return fail("UnsupportedValue", format!("spec.rules[{r}] URLRewrite hostname: {e}")),
    };
    let mut upstreams = Vec::new();
    for (b, backend) in rule.backend_refs.iter().enumerate() {
        let at = format!("spec.rules[{r}].backendRefs[{b}]");
        let target = &backend.target;
        if !(target.group.as_deref().unwrap_or("").is_empty()
            && target.kind.as_deref().unwrap_or("Service") == "Service")
        {
            return fail(
                "InvalidKind",
                format!("{at}: {} is not a Service", quote(target.kind.as_deref().unwrap_or(""))),
            );
        }
        let Ok(namespace) = target.namespace.as_deref().unwrap_or(route.meta.namespace.as_str()).parse::<K8sName>()
        else {
            return fail(
                "BackendNotFound",
                format!("{at}: namespace {} is not valid", quote(target.namespace.as_deref().unwrap_or(""))),
            );
        };
        if !index.granted("HTTPRoute", &route.meta.namespace, "", "Service", &namespace, &target.name) {
            return fail(
                "RefNotPermitted",
                format!(
                    "{at}: Service {namespace}/{} is in another namespace and no ReferenceGrant there allows it",
                    target.name
                ),
            );
        }
        let Some(service) = index.service(&namespace, &target.name) else {
            return fail("BackendNotFound", format!("{at}: Service {namespace}/{} not found", target.name));
        };
        let Some(wanted) = target.port else {
            return fail("BackendNotFound", format!("{at}: port is required for a Service"));
        };
        let Some(port) = service.ports.iter().find(|p| p.port == wanted) else {
            return fail("BackendNotFound", format!("{at}: Service {namespace}/{} has no port {wanted}", target.name));
        };
        let servers = match index.servers(service, port) {
            Ok(servers) => servers,
            Err(e) => return fail("BackendNotFound", format!("{at}: {e}")),
        };
        let mut key = ClusterKey {
            namespace: service.meta.namespace.clone(),
            service: service.meta.name.clone(),
            port: port.port,
            protocol: UpstreamProtocol::Http,
            tls: None,
        };
        let mut ca_trust = Vec::new();
        let mut client = None;
        for (policy, _) in index.policies_targeting(&namespace, &target.name, &port.name) {
            facts
                .policy_ancestors
                .push(((policy.meta.namespace.clone(), policy.meta.name.clone()), gateway_key.clone()));
        }
        if let Some(policy) = index.policy_for(&namespace, &target.name, &port.name) {
            let judgement = index.judge_policy(policy);
            // A policy that cannot be applied: 503, never plaintext, never unverified.
            let Some((mut tls, trust)) = judgement.tls else { return PendingAction::Reject };
            match client_cert {
                Ok(Some(pair)) => {
                    tls.client_cert = Some(pair.secret.clone());
                    client = Some(pair.clone());
                }
                Ok(None) => {
                    match index.client_cert(&crate::common::service_label("/", &target.name), &mut Vec::new()) {
                        Ok(pair) => {
                            tls.client_cert = pair.as_ref().map(|p| p.secret.clone());
                            client = pair;
                        }
                        Err(_) => return PendingAction::Reject,
                    }
                }
                Err(_) => return PendingAction::Reject, // the Gateway's status says why
            }
            key.protocol = UpstreamProtocol::Tls;
            key.tls = Some(tls);
            ca_trust = trust;
        }
        upstreams.push((Upstream { key, servers, ca_trust, client_cert: client }, backend.weight));
    }
    PendingAction::forward(upstreams, host_rewrite, None, None)
}

// ---------------------------------------------------------------------------------------
// Statuses

/// The GatewayClass's status, when it is Portico's.
pub fn class_status(class: &portico_model::GatewayClass) -> Option<GatewayApiStatus> {
    (class.controller == GATEWAY_CONTROLLER).then(|| GatewayApiStatus::Class {
        conditions: vec![ApiCondition::new("Accepted", true, "Accepted", "", class.lifecycle.generation)],
    })
}

/// A Gateway's status from its listeners and the routes attached to them (`attached`:
/// listener name → number of routes), with its problems.
pub fn gateway_status(
    index: &Index<'_>,
    gateway: &Gateway,
    attached: &std::collections::BTreeMap<String, i32>,
) -> (GatewayApiStatus, Vec<Problem>) {
    let generation = gateway.lifecycle.generation;
    let mut problems = Vec::new();
    let mut listeners = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    let mut all_programmed = true;
    for listener in &gateway.listeners {
        let state = index.listener_state(gateway, listener);
        let mut accepted = state.accepted.clone();
        if !names.insert(&listener.name) {
            accepted = Err(("UnsupportedValue", format!("listener name {} is used twice", quote(&listener.name))));
        }
        let programmed: Result<&str, (&str, String)> = match (&accepted, &state.resolved_refs) {
            (Ok(_), Ok(_)) => Ok("Programmed"),
            (Err((_, why)), _) | (_, Err((_, why))) => Err(("Invalid", why.clone())),
        };
        all_programmed &= programmed.is_ok();
        for failure in [&accepted, &state.resolved_refs] {
            if let Err((_, why)) = failure {
                problems.push(problem(format!("listener {}: {why}", quote(&listener.name))));
            }
        }
        let kinds = if state.resolved_refs.as_ref().is_err_and(|(r, _)| *r == "InvalidRouteKinds") {
            Vec::new()
        } else {
            vec!["HTTPRoute".to_owned()]
        };
        listeners.push(ListenerStatus {
            name: listener.name.clone(),
            attached_routes: attached.get(&listener.name).copied().unwrap_or(0),
            supported_kinds: kinds,
            conditions: vec![
                condition("Accepted", &accepted, generation),
                condition("ResolvedRefs", &state.resolved_refs, generation),
                condition("Programmed", &programmed, generation),
                ApiCondition::new("Conflicted", false, "NoConflicts", "", generation),
            ],
        });
    }
    let client: Result<&str, (&str, String)> = match index.gateway_client_certificate(gateway) {
        Ok(_) => Ok("ResolvedRefs"),
        Err((reason, why)) => {
            problems.push(problem(format!("{why}; its TLS backends answer 503")));
            Err((reason, why))
        }
    };
    let programmed: Result<&str, (&str, String)> = if all_programmed {
        Ok("Programmed")
    } else {
        Err(("Invalid", "a listener is not programmed; see its conditions".into()))
    };
    let mut conditions = vec![
        ApiCondition::new("Accepted", true, "Accepted", "", generation),
        condition("Programmed", &programmed, generation),
    ];
    if client.is_err() {
        conditions.push(condition("ResolvedRefs", &client, generation));
    }
    (GatewayApiStatus::Gateway { conditions, listeners }, problems)
}

/// A BackendTLSPolicy's status: one ancestor per Gateway whose routes use a targeted
/// Service (at most 16), with the policy's conditions; `None` when no Gateway of Portico's
/// uses it (another implementation's, or unused).
pub fn policy_status(
    index: &Index<'_>,
    policy: &BackendTlsPolicy,
    ancestors: &std::collections::BTreeSet<Key>,
) -> Option<(GatewayApiStatus, Vec<Problem>)> {
    if ancestors.is_empty() {
        return None;
    }
    let generation = policy.lifecycle.generation;
    let judgement = index.judge_policy(policy);
    let mut accepted = judgement.accepted.clone();
    let mut problems = Vec::new();
    if let (Ok(_), Some((tls, _))) = (&accepted, &judgement.tls) {
        if !tls.verify.checkable_by_sni(tls.sni.as_ref()) {
            // Accepted, but HAProxy cannot check these names: it answers 503.
            accepted = Ok("Accepted");
            problems.push(Problem::warning(
                ProblemType::TLSError,
                Reason::VerificationWeakened,
                "HAProxy can check one DNS name, the SNI, and no URI SAN: through HAProxy these backends answer 503 (Envoy enforces the names)",
            ));
        }
    }
    for failure in [&accepted, &judgement.resolved_refs] {
        if let Err((_, why)) = failure {
            problems.push(Problem::error(ProblemType::TLSError, Reason::SecretNotValid, why.clone()));
        }
    }
    let mut accepted_condition = condition("Accepted", &accepted, generation);
    if accepted.is_ok() && !problems.is_empty() {
        accepted_condition.message = problems[0].message.clone();
    }
    let conditions = vec![accepted_condition, condition("ResolvedRefs", &judgement.resolved_refs, generation)];
    let parents = ancestors
        .iter()
        .take(MAX_ANCESTORS)
        .map(|(ns, name)| ParentStatus {
            parent: GatewayRef {
                group: Some(GROUP.into()),
                kind: Some("Gateway".into()),
                namespace: Some(ns.to_string()),
                name: name.to_string(),
                section_name: None,
                port: None,
            },
            conditions: conditions.clone(),
        })
        .collect();
    Some((GatewayApiStatus::Parents(parents), problems))
}

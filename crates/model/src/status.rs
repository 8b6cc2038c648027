//! Problems found while resolving, and statuses in Contour's shape.

use crate::objects::{GatewayRef, Kind, ObjectRef};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Severity {
    Error,
    Warning,
}

/// The condition types Contour uses for error and warning entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ProblemType {
    ServiceError,
    TLSError,
    RouteError,
    VirtualHostError,
    SpecError,
    /// Contour's `IncludeError`: an include that cannot be followed.
    IncludeError,
    /// Contour's `RootNamespaceError`: a root outside `--root-namespaces`.
    RootNamespaceError,
    /// Contour's `Orphaned`: no root includes this HTTPProxy.
    Orphaned,
}

/// Why, in Contour's vocabulary where Contour has a word for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Reason {
    /// Validation asked of a non-TLS port, bad subject names, bad backend-tls options.
    TLSUpstreamValidation,
    /// A cross-namespace CA secret without a TLSCertificateDelegation.
    CACertificateNotDelegated,
    /// A cross-namespace TLS (serving) Secret without a TLSCertificateDelegation.
    DelegationNotPermitted,
    UnsupportedProtocol,
    /// A Service or port that does not exist, or that may not be referenced.
    ServiceUnresolvedReference,
    /// A CA secret or client certificate that is missing or not valid.
    SecretNotValid,
    /// A prefix, host, or header value that is not of its grammar.
    InvalidValue,
    /// Another object already routes this listener, host and prefix.
    DuplicateRoute,
    /// Warning: certificates expired or expiring soon.
    CertificateExpiring,
    /// Warning: a name that HAProxy cannot check, a check that is off.
    VerificationWeakened,
    /// Warning: the Service has no ready endpoints for this port.
    NoReadyEndpoints,
    /// Warning: fields Portico does not read.
    IgnoredField,
    /// Error: a field Portico does not implement that restricts who may reach a route
    /// (header or query conditions, auth, IP filters): serving without it would widen access.
    UnsupportedRestriction,
    /// An include names an HTTPProxy that does not exist (the include's prefix answers 502).
    IncludeNotFound,
    /// An include names another root (the include's prefix answers 502).
    RootIncludesRoot,
    IncludeCreatesCycle,
    /// Two includes of one HTTPProxy with the same conditions.
    DuplicateMatchConditions,
    /// A root HTTPProxy outside the namespaces `--root-namespaces` allows.
    RootProxyNotAllowedInNamespace,
    /// No root includes this HTTPProxy: it is served nowhere.
    Orphaned,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TLSUpstreamValidation => "TLSUpstreamValidation",
            Reason::CACertificateNotDelegated => "CACertificateNotDelegated",
            Reason::UnsupportedProtocol => "UnsupportedProtocol",
            Reason::ServiceUnresolvedReference => "ServiceUnresolvedReference",
            Reason::SecretNotValid => "SecretNotValid",
            Reason::InvalidValue => "InvalidValue",
            Reason::DuplicateRoute => "DuplicateRoute",
            Reason::CertificateExpiring => "CertificateExpiring",
            Reason::VerificationWeakened => "VerificationWeakened",
            Reason::NoReadyEndpoints => "NoReadyEndpoints",
            Reason::IgnoredField => "IgnoredField",
            Reason::UnsupportedRestriction => "UnsupportedRestriction",
            Reason::IncludeNotFound => "IncludeNotFound",
            Reason::RootIncludesRoot => "RootIncludesRoot",
            Reason::IncludeCreatesCycle => "IncludeCreatesCycle",
            Reason::DuplicateMatchConditions => "DuplicateMatchConditions",
            Reason::RootProxyNotAllowedInNamespace => "RootProxyNotAllowedInNamespace",
            Reason::Orphaned => "Orphaned",
            Reason::DelegationNotPermitted => "DelegationNotPermitted",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem of one object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub severity: Severity,
    pub problem_type: ProblemType,
    pub reason: Reason,
    /// The headline: `route "<prefix>": service "<name>": <what is wrong>` for route
    /// problems. This is what `description` shows.
    pub message: String,
    /// Which check failed, when the headline does not say (e.g. why a secret is not a
    /// valid CA bundle). Appended to the message in the condition's entry.
    pub detail: Option<String>,
}

impl Problem {
    pub fn error(problem_type: ProblemType, reason: Reason, message: impl Into<String>) -> Self {
        Problem { severity: Severity::Error, problem_type, reason, message: message.into(), detail: None }
    }

    pub fn warning(problem_type: ProblemType, reason: Reason, message: impl Into<String>) -> Self {
        Problem { severity: Severity::Warning, problem_type, reason, message: message.into(), detail: None }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The message with its detail, as written in a condition's entry.
    pub fn full_message(&self) -> String {
        match &self.detail {
            Some(detail) => format!("{}: {detail}", self.message),
            None => self.message.clone(),
        }
    }
}

/// The problems of one object, in the order they were found; a Gateway API object's
/// status in that API's shape besides (`gateway`), its problems being the conditions that
/// are not as they should be (for `portico status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectStatus {
    pub object: ObjectRef,
    pub problems: Vec<Problem>,
    pub gateway: Option<GatewayApiStatus>,
}

impl ObjectStatus {
    pub fn is_valid(&self) -> bool {
        !self.problems.iter().any(|p| p.severity == Severity::Error)
    }

    /// Contour's status shape.
    pub fn to_contour(&self) -> ContourStatus {
        let entries = |severity: Severity| -> Vec<SubCondition> {
            self.problems
                .iter()
                .filter(|p| p.severity == severity)
                .map(|p| SubCondition {
                    condition_type: format!("{:?}", p.problem_type),
                    status: "True".to_owned(),
                    reason: p.reason.as_str().to_owned(),
                    message: p.full_message(),
                })
                .collect()
        };
        let errors = entries(Severity::Error);
        let warnings = entries(Severity::Warning);
        let valid_text = match self.object.kind {
            Kind::VoyagerIngress | Kind::Ingress => "Valid Ingress".to_owned(),
            Kind::HttpProxy => "Valid HTTPProxy".to_owned(),
            other => format!("Valid {other}"),
        };
        let valid_text = valid_text.as_str();
        let first_error = self.problems.iter().find(|p| p.severity == Severity::Error);
        let orphaned = self.problems.iter().any(|p| p.problem_type == ProblemType::Orphaned);
        let (current_status, description, condition) = match first_error {
            None => (
                "valid",
                valid_text.to_owned(),
                DetailedCondition {
                    condition_type: "Valid".to_owned(),
                    status: "True".to_owned(),
                    reason: "Valid".to_owned(),
                    message: valid_text.to_owned(),
                    last_transition_time: None,
                    observed_generation: None,
                    errors,
                    warnings,
                },
            ),
            Some(first) => (
                "invalid",
                first.message.clone(),
                DetailedCondition {
                    condition_type: "Valid".to_owned(),
                    status: "False".to_owned(),
                    reason: "ErrorPresent".to_owned(),
                    message: "At least one error present, see Errors for details".to_owned(),
                    last_transition_time: None,
                    observed_generation: None,
                    errors,
                    warnings,
                },
            ),
        };
        // Contour's own words for a proxy that no root includes.
        let current_status = if orphaned { "orphaned" } else { current_status };
        ContourStatus { current_status: current_status.to_owned(), description, conditions: vec![condition] }
    }
}

/// `status` of an HTTPProxy (and, in the same shape, of a Voyager Ingress).
///
/// JSON only: its conditions skip empty `errors` and `warnings` as Contour does, which a
/// non-self-describing codec cannot read back. The bus carries `ObjectStatus`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContourStatus {
    pub current_status: String,
    pub description: String,
    pub conditions: Vec<DetailedCondition>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetailedCondition {
    #[serde(rename = "type")]
    pub condition_type: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    /// Set by the status writer, which knows when the status last flipped and which
    /// generation of the object it describes (Contour's CRD requires the first).
    #[serde(rename = "lastTransitionTime", default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(rename = "observedGeneration", default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<SubCondition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<SubCondition>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubCondition {
    #[serde(rename = "type")]
    pub condition_type: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// The controller name Portico writes its Gateway API status entries under.
pub const GATEWAY_CONTROLLER: &str = "portico.dev/gateway-controller";

/// A Gateway API condition (metav1.Condition) as the resolver decides it; the writer adds
/// `lastTransitionTime` (`GatewayApiStatus::to_json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiCondition {
    pub condition_type: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
    pub observed_generation: i64,
}

impl ApiCondition {
    pub fn new(condition_type: &str, status: bool, reason: &str, message: impl Into<String>, generation: i64) -> Self {
        ApiCondition {
            condition_type: condition_type.to_owned(),
            status,
            reason: reason.to_owned(),
            message: message.into(),
            observed_generation: generation,
        }
    }
}

/// One entry of an HTTPRoute's `status.parents` or a BackendTLSPolicy's
/// `status.ancestors`: the parent as referenced, and Portico's conditions for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentStatus {
    pub parent: GatewayRef,
    pub conditions: Vec<ApiCondition>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerStatus {
    pub name: String,
    pub attached_routes: i32,
    pub supported_kinds: Vec<String>,
    pub conditions: Vec<ApiCondition>,
}

/// A Gateway API object's status in that API's shape (SPEC section 6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GatewayApiStatus {
    /// GatewayClass `status.conditions`.
    Class { conditions: Vec<ApiCondition> },
    /// Gateway `status.conditions` and `status.listeners`.
    Gateway { conditions: Vec<ApiCondition>, listeners: Vec<ListenerStatus> },
    /// HTTPRoute `status.parents`, BackendTLSPolicy `status.ancestors` (Portico's
    /// entries only).
    Parents(Vec<ParentStatus>),
}

fn parent_json(r: &GatewayRef) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    out.insert("group".into(), r.group.clone().unwrap_or_else(|| "gateway.networking.k8s.io".into()).into());
    out.insert("kind".into(), r.kind.clone().unwrap_or_else(|| "Gateway".into()).into());
    if let Some(ns) = &r.namespace {
        out.insert("namespace".into(), ns.clone().into());
    }
    out.insert("name".into(), r.name.clone().into());
    if let Some(section) = &r.section_name {
        out.insert("sectionName".into(), section.clone().into());
    }
    if let Some(port) = r.port {
        out.insert("port".into(), port.into());
    }
    serde_json::Value::Object(out)
}

/// `lastTransitionTime` of a condition: the previous one's when its status did not flip.
fn conditions_json(conditions: &[ApiCondition], previous: &serde_json::Value, now: &str) -> serde_json::Value {
    let before = |t: &str| previous.as_array().into_iter().flatten().find(|c| c["type"] == t);
    let list: Vec<serde_json::Value> = conditions
        .iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            let since = before(&c.condition_type)
                .filter(|p| p["status"] == status)
                .and_then(|p| p["lastTransitionTime"].as_str())
                .unwrap_or(now);
            serde_json::json!({
                "type": c.condition_type,
                "status": status,
                "reason": c.reason,
                "message": c.message,
                "observedGeneration": c.observed_generation,
                "lastTransitionTime": since,
            })
        })
        .collect();
    serde_json::Value::Array(list)
}

impl GatewayApiStatus {
    /// The status JSON Portico writes, given the object's current `status` (`previous`,
    /// `null` when none): Portico's entries replace Portico's, other controllers' entries
    /// of `parents`/`ancestors` are kept as they are, and a condition's
    /// `lastTransitionTime` moves only when its status flips. `now` is RFC 3339.
    pub fn to_json(&self, kind: Kind, previous: &serde_json::Value, now: &str) -> serde_json::Value {
        match self {
            GatewayApiStatus::Class { conditions } => {
                serde_json::json!({ "conditions": conditions_json(conditions, &previous["conditions"], now) })
            }
            GatewayApiStatus::Gateway { conditions, listeners } => {
                let listeners: Vec<serde_json::Value> = listeners
                    .iter()
                    .map(|l| {
                        let before = previous["listeners"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .find(|p| p["name"] == l.name.as_str())
                            .map(|p| p["conditions"].clone())
                            .unwrap_or_default();
                        let kinds: Vec<serde_json::Value> = l
                            .supported_kinds
                            .iter()
                            .map(|k| serde_json::json!({ "group": "gateway.networking.k8s.io", "kind": k }))
                            .collect();
                        serde_json::json!({
                            "name": l.name,
                            "attachedRoutes": l.attached_routes,
                            "supportedKinds": kinds,
                            "conditions": conditions_json(&l.conditions, &before, now),
                        })
                    })
                    .collect();
                serde_json::json!({
                    "conditions": conditions_json(conditions, &previous["conditions"], now),
                    "listeners": listeners,
                })
            }
            GatewayApiStatus::Parents(parents) => {
                let field = if kind == Kind::BackendTlsPolicy { "ancestors" } else { "parents" };
                let others = previous[field]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["controllerName"] != GATEWAY_CONTROLLER)
                    .cloned();
                let ours = parents.iter().map(|p| {
                    let reference = parent_json(&p.parent);
                    let before = previous[field]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|q| q["controllerName"] == GATEWAY_CONTROLLER && q[ref_field(kind)] == reference)
                        .map(|q| q["conditions"].clone())
                        .unwrap_or_default();
                    serde_json::json!({
                        ref_field(kind): reference,
                        "controllerName": GATEWAY_CONTROLLER,
                        "conditions": conditions_json(&p.conditions, &before, now),
                    })
                });
                let list: Vec<serde_json::Value> = others.chain(ours).collect();
                serde_json::json!({ field: list })
            }
        }
    }
}

fn ref_field(kind: Kind) -> &'static str {
    if kind == Kind::BackendTlsPolicy {
        "ancestorRef"
    } else {
        "parentRef"
    }
}

//! Problems found while resolving, and statuses in Contour's shape.

use crate::objects::{Kind, ObjectRef};
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

/// The problems of one HTTPProxy or Voyager Ingress, in the order they were found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectStatus {
    pub object: ObjectRef,
    pub problems: Vec<Problem>,
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
            Kind::VoyagerIngress | Kind::Ingress => "Valid Ingress",
            _ => "Valid HTTPProxy",
        };
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

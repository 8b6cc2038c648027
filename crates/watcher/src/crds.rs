//! Wire types of the custom resources Portico reads: the fields of SPEC section 1, as
//! Contour and Voyager define them. Fields that users may omit default here, so that a
//! missing `subjectName` becomes a status error on the route (the resolver's job) rather
//! than a document that cannot be read.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// projectcontour.io/v1 HTTPProxy (the fields Portico reads).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(group = "projectcontour.io", version = "v1", kind = "HTTPProxy", namespaced, schema = "disabled")]
#[serde(rename_all = "camelCase")]
pub struct HTTPProxySpec {
    #[serde(default)]
    pub virtualhost: Option<VirtualHost>,
    #[serde(default)]
    pub includes: Vec<Include>,
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Every other field (`tcpproxy`, `httpVersions`...): Portico does not implement them
    /// and says so in the status, never dropping one silently (SPEC section 9).
    #[serde(flatten)]
    pub other: Unimplemented,
}

/// The fields of one level of an object that Portico does not implement, kept by name so
/// that each can be reported.
pub type Unimplemented = BTreeMap<String, serde_json::Value>;

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualHost {
    #[serde(default)]
    pub fqdn: String,
    #[serde(default)]
    pub tls: Option<VirtualHostTls>,
    /// `ipAllowPolicy`, `authorization`...
    #[serde(flatten)]
    pub other: Unimplemented,
}

/// `spec.virtualhost.tls`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualHostTls {
    #[serde(default)]
    pub secret_name: String,
    #[serde(default)]
    pub minimum_protocol_version: Option<String>,
    /// `passthrough`, `clientValidation`, `enableFallbackCertificate`...
    #[serde(flatten)]
    pub other: Unimplemented,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Include {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub conditions: Vec<MatchCondition>,
    #[serde(flatten)]
    pub other: Unimplemented,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    #[serde(default)]
    pub conditions: Vec<MatchCondition>,
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default)]
    pub request_headers_policy: Option<HeadersPolicy>,
    #[serde(default)]
    pub timeout_policy: Option<TimeoutPolicy>,
    #[serde(default)]
    pub permit_insecure: bool,
    /// `retryPolicy`, `authPolicy`...
    #[serde(flatten)]
    pub other: Unimplemented,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MatchCondition {
    #[serde(default)]
    pub prefix: Option<String>,
    /// `header`, `queryParameter`, `exact`, `regex`: Portico does not implement them.
    #[serde(flatten)]
    pub other: Unimplemented,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    #[serde(default)]
    pub name: String,
    pub port: i64,
    #[serde(default)]
    pub weight: Option<i64>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub validation: Option<UpstreamValidation>,
    /// `mirror`, `requestHeadersPolicy`, `slowStartPolicy`...
    #[serde(flatten)]
    pub other: Unimplemented,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamValidation {
    #[serde(default)]
    pub ca_secret: String,
    #[serde(default)]
    pub subject_name: String,
    #[serde(default)]
    pub subject_names: Vec<String>,
    #[serde(flatten)]
    pub other: Unimplemented,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TimeoutPolicy {
    #[serde(default)]
    pub response: Option<String>,
    #[serde(default)]
    pub idle: Option<String>,
    /// `idleConnection`.
    #[serde(flatten)]
    pub other: Unimplemented,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HeadersPolicy {
    #[serde(default)]
    pub set: Vec<HeaderValue>,
    /// `remove`.
    #[serde(flatten)]
    pub other: Unimplemented,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HeaderValue {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub value: String,
    #[serde(flatten)]
    pub other: Unimplemented,
}

/// projectcontour.io/v1 TLSCertificateDelegation.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(group = "projectcontour.io", version = "v1", kind = "TLSCertificateDelegation", namespaced, schema = "disabled")]
#[serde(rename_all = "camelCase")]
pub struct TLSCertificateDelegationSpec {
    #[serde(default)]
    pub delegations: Vec<CertificateDelegation>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateDelegation {
    #[serde(default)]
    pub secret_name: String,
    #[serde(default)]
    pub target_namespaces: Vec<String>,
}

/// voyager.appscode.com/v1beta1 Ingress (the fields Portico reads).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "voyager.appscode.com",
    version = "v1beta1",
    kind = "Ingress",
    root = "VoyagerIngress",
    namespaced,
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct VoyagerIngressSpec {
    #[serde(default)]
    pub backend: Option<VoyagerBackend>,
    #[serde(default)]
    pub rules: Vec<VoyagerRule>,
    #[serde(default)]
    pub tls: Vec<VoyagerTls>,
    /// `frontendRules`, the pod settings...
    #[serde(flatten)]
    pub other: Unimplemented,
}

/// `spec.tls[]`: hosts and the Secret of their certificate.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VoyagerTls {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub secret_name: String,
    /// `ref` (a Secret or a Voyager Certificate by kind): not read.
    #[serde(flatten)]
    pub other: Unimplemented,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VoyagerRule {
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub http: Option<VoyagerHttpRule>,
    /// `tcp`.
    #[serde(flatten)]
    pub other: Unimplemented,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VoyagerHttpRule {
    #[serde(default)]
    pub port: Option<IntOrString>,
    #[serde(default)]
    pub paths: Vec<VoyagerPath>,
    /// `address`, `noTLS`, `nodePort`.
    #[serde(flatten)]
    pub other: Unimplemented,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VoyagerPath {
    #[serde(default)]
    pub path: Option<String>,
    pub backend: VoyagerBackend,
    #[serde(flatten)]
    pub other: Unimplemented,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VoyagerBackend {
    #[serde(default)]
    pub service_name: String,
    pub service_port: IntOrString,
    /// `headerRules`, `rewriteRules`, `backendRules` (raw HAProxy lines, never copied)...
    #[serde(flatten)]
    pub other: Unimplemented,
}

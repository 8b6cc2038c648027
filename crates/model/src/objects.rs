//! Portico's own typed input objects.
//!
//! These are what the watcher produces from Kubernetes objects (API or YAML) and what the
//! resolver consumes. They keep exactly the fields of SPEC section 1. Names and namespaces
//! are already checked (Kubernetes guarantees them; the file source checks them); every
//! other user string is kept raw here and validated by the resolver, which can attribute
//! a bad value to the route that uses it.

use crate::names::K8sName;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The kinds Portico reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    EndpointSlice,
    HttpProxy,
    /// voyager.appscode.com/v1beta1 Ingress.
    VoyagerIngress,
    Secret,
    Service,
    TlsCertificateDelegation,
    /// networking.k8s.io/v1 Ingress (SPEC section 7).
    Ingress,
    /// networking.k8s.io/v1 IngressClass (cluster-scoped: its namespace is `CLUSTER`).
    IngressClass,
    /// A ConfigMap holding a `ca.crt` (Gateway API `caCertificateRefs`); it travels with
    /// the Secrets, to the secrets service only.
    ConfigMap,
    /// gateway.networking.k8s.io/v1 GatewayClass (cluster-scoped, SPEC section 6).
    GatewayClass,
    Gateway,
    HttpRoute,
    /// gateway.networking.k8s.io/v1beta1 ReferenceGrant.
    ReferenceGrant,
    /// gateway.networking.k8s.io/v1 BackendTLSPolicy.
    BackendTlsPolicy,
}

/// The namespace cluster-scoped objects (IngressClass) are kept under.
pub const CLUSTER: &str = "cluster";

impl Kind {
    pub const ALL: [Kind; 14] = [
        Kind::EndpointSlice,
        Kind::HttpProxy,
        Kind::VoyagerIngress,
        Kind::Secret,
        Kind::Service,
        Kind::TlsCertificateDelegation,
        Kind::Ingress,
        Kind::IngressClass,
        Kind::ConfigMap,
        Kind::GatewayClass,
        Kind::Gateway,
        Kind::HttpRoute,
        Kind::ReferenceGrant,
        Kind::BackendTlsPolicy,
    ];

    /// The Kubernetes kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "EndpointSlice",
            Kind::HttpProxy => "HTTPProxy",
            Kind::VoyagerIngress => "Ingress",
            Kind::Secret => "Secret",
            Kind::Service => "Service",
            Kind::TlsCertificateDelegation => "TLSCertificateDelegation",
            Kind::Ingress => "Ingress",
            Kind::IngressClass => "IngressClass",
            Kind::ConfigMap => "ConfigMap",
            Kind::GatewayClass => "GatewayClass",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
            Kind::BackendTlsPolicy => "BackendTLSPolicy",
        }
    }

    /// The Gateway API kinds, whose statuses have the Gateway API's shape.
    pub fn is_gateway_api(self) -> bool {
        matches!(
            self,
            Kind::GatewayClass | Kind::Gateway | Kind::HttpRoute | Kind::ReferenceGrant | Kind::BackendTlsPolicy
        )
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::HttpProxy | Kind::TlsCertificateDelegation => "projectcontour.io/v1",
            Kind::VoyagerIngress => "voyager.appscode.com/v1beta1",
            Kind::Secret | Kind::Service | Kind::ConfigMap => "v1",
            Kind::Ingress | Kind::IngressClass => "networking.k8s.io/v1",
            Kind::GatewayClass | Kind::Gateway | Kind::HttpRoute | Kind::BackendTlsPolicy => {
                "gateway.networking.k8s.io/v1"
            }
            Kind::ReferenceGrant => "gateway.networking.k8s.io/v1beta1",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which object: kind, namespace, name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    pub kind: Kind,
    pub namespace: K8sName,
    pub name: K8sName,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// Namespace and name, the identity of an object within its kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Meta {
    pub namespace: K8sName,
    pub name: K8sName,
}

impl Meta {
    pub fn object_ref(&self, kind: Kind) -> ObjectRef {
        ObjectRef { kind, namespace: self.namespace.clone(), name: self.name.clone() }
    }
}

impl fmt::Display for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Any object Portico reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Object {
    Service(Service),
    EndpointSlice(EndpointSlice),
    Secret(Secret),
    HttpProxy(HttpProxy),
    TlsCertificateDelegation(TlsCertificateDelegation),
    VoyagerIngress(VoyagerIngress),
    Ingress(Ingress),
    IngressClass(IngressClass),
    GatewayClass(GatewayClass),
    Gateway(Gateway),
    HttpRoute(HttpRoute),
    ReferenceGrant(ReferenceGrant),
    BackendTlsPolicy(BackendTlsPolicy),
}

impl Object {
    pub fn meta(&self) -> &Meta {
        match self {
            Object::Service(o) => &o.meta,
            Object::EndpointSlice(o) => &o.meta,
            Object::Secret(o) => &o.meta,
            Object::HttpProxy(o) => &o.meta,
            Object::TlsCertificateDelegation(o) => &o.meta,
            Object::VoyagerIngress(o) => &o.meta,
            Object::Ingress(o) => &o.meta,
            Object::IngressClass(o) => &o.meta,
            Object::GatewayClass(o) => &o.meta,
            Object::Gateway(o) => &o.meta,
            Object::HttpRoute(o) => &o.meta,
            Object::ReferenceGrant(o) => &o.meta,
            Object::BackendTlsPolicy(o) => &o.meta,
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Secret(s) if s.holder == crate::names::Holder::ConfigMap => Kind::ConfigMap,
            Object::Secret(_) => Kind::Secret,
            Object::HttpProxy(_) => Kind::HttpProxy,
            Object::TlsCertificateDelegation(_) => Kind::TlsCertificateDelegation,
            Object::VoyagerIngress(_) => Kind::VoyagerIngress,
            Object::Ingress(_) => Kind::Ingress,
            Object::IngressClass(_) => Kind::IngressClass,
            Object::GatewayClass(_) => Kind::GatewayClass,
            Object::Gateway(_) => Kind::Gateway,
            Object::HttpRoute(_) => Kind::HttpRoute,
            Object::ReferenceGrant(_) => Kind::ReferenceGrant,
            Object::BackendTlsPolicy(_) => Kind::BackendTlsPolicy,
        }
    }

    pub fn object_ref(&self) -> ObjectRef {
        self.meta().object_ref(self.kind())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
    /// `spec.externalName`, unvalidated.
    ExternalName(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub meta: Meta,
    pub annotations: BTreeMap<String, String>,
    pub service_type: ServiceType,
    pub ports: Vec<ServicePort>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// Empty for an unnamed port.
    pub name: String,
    pub port: u16,
    pub target_port: Option<TargetPort>,
    pub protocol: String,
    pub app_protocol: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSlice {
    pub meta: Meta,
    /// The `kubernetes.io/service-name` label.
    pub service_name: Option<String>,
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPort {
    /// Empty for an unnamed port.
    pub name: String,
    pub port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub addresses: Vec<String>,
    /// `conditions.ready`; Kubernetes says an absent value means ready.
    pub ready: bool,
}

/// A Secret, or a ConfigMap's `ca.crt` (`holder`; its `secret_type` is empty). Its
/// `Debug` never prints the data.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    pub meta: Meta,
    pub secret_type: String,
    pub data: BTreeMap<String, Vec<u8>>,
    pub holder: crate::names::Holder,
}

impl Secret {
    /// The reference the verdict and the trust material of this object carry.
    pub fn reference(&self) -> crate::names::SecretRef {
        crate::names::SecretRef {
            namespace: self.meta.namespace.clone(),
            name: self.meta.name.clone(),
            holder: self.holder,
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("meta", &self.meta)
            .field("secret_type", &self.secret_type)
            .field("holder", &self.holder)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpProxy {
    pub meta: Meta,
    /// `spec.virtualhost.fqdn`. `None` when there is no `virtualhost`: the proxy is not a
    /// root and is served only where a root includes it (SPEC section 9), never on its own.
    pub fqdn: Option<String>,
    /// `spec.virtualhost.tls`: serve the host over HTTPS (SPEC section 8).
    pub tls: Option<HttpProxyTls>,
    /// `spec.includes`, in order.
    pub includes: Vec<HttpProxyInclude>,
    pub routes: Vec<HttpProxyRoute>,
    /// Fields of `spec` and `spec.virtualhost` that Portico does not implement, as paths
    /// (`spec.virtualhost.ipAllowPolicy`, `spec.tcpproxy`). The resolver decides whether
    /// each is a warning or, when it restricts access, an error.
    pub ignored: Vec<FieldPath>,
}

impl HttpProxy {
    /// A root has a `virtualhost`; only roots are served on their own.
    pub fn is_root(&self) -> bool {
        self.fqdn.is_some()
    }
}

/// `spec.virtualhost.tls` of a root HTTPProxy, as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpProxyTls {
    /// `name`, or `namespace/name` (which needs a TLSCertificateDelegation).
    pub secret_name: String,
    /// `1.2` or `1.3`; absent means 1.2.
    pub minimum_protocol_version: Option<String>,
}

/// The path of a field in an object as written (`spec.routes[0].retryPolicy`), naming
/// what Portico did not implement. Never rendered into a proxy's configuration.
pub type FieldPath = String;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpProxyInclude {
    /// The included HTTPProxy's name, as written.
    pub name: String,
    /// Its namespace as written; absent means the includer's namespace.
    pub namespace: Option<String>,
    /// Every `conditions[].prefix`, in order (Contour accepts at most one).
    pub prefixes: Vec<String>,
    /// Conditions and fields of the include that Portico does not implement (`header`,
    /// `queryParameter`...), as paths.
    pub ignored: Vec<FieldPath>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpProxyRoute {
    /// Every `conditions[].prefix`, in order (Portico accepts at most one).
    pub prefixes: Vec<String>,
    pub services: Vec<HttpProxyService>,
    /// `requestHeadersPolicy.set` entries, in order.
    pub set_headers: Vec<(String, String)>,
    /// `timeoutPolicy.response`, as written.
    pub response_timeout: Option<String>,
    /// `timeoutPolicy.idle`, as written.
    pub idle_timeout: Option<String>,
    /// `permitInsecure`: on a host served over HTTPS, serve this route over plain HTTP too
    /// instead of redirecting.
    pub permit_insecure: bool,
    /// Fields of the route and of its services that Portico does not implement, as paths
    /// (`spec.routes[0].conditions[1].header`, `spec.routes[0].services[0].mirror`).
    pub ignored: Vec<FieldPath>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpProxyService {
    pub name: String,
    pub port: u16,
    pub weight: Option<u32>,
    pub protocol: Option<String>,
    pub validation: Option<UpstreamValidation>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamValidation {
    pub ca_secret: String,
    pub subject_name: String,
    pub subject_names: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsCertificateDelegation {
    pub meta: Meta,
    pub delegations: Vec<Delegation>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    pub secret_name: String,
    pub target_namespaces: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoyagerIngress {
    pub meta: Meta,
    /// `spec.backend`: the default for requests no rule matches.
    pub backend: Option<VoyagerBackend>,
    pub rules: Vec<VoyagerRule>,
    /// `spec.tls`: hosts served over HTTPS and their certificates (SPEC section 8).
    pub tls: Vec<VoyagerTls>,
    /// Fields and `ingress.appscode.com/` annotations Portico does not implement, as paths
    /// (`spec.frontendRules`, `metadata.annotations[ingress.appscode.com/auth-type]`).
    pub ignored: Vec<FieldPath>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoyagerTls {
    pub hosts: Vec<String>,
    /// A kubernetes.io/tls Secret in the Ingress's namespace.
    pub secret_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoyagerRule {
    pub host: String,
    /// `http.port`: the listener; absent means the configured HTTP port.
    pub port: Option<u16>,
    pub paths: Vec<VoyagerPath>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoyagerPath {
    /// Absent means `/`.
    pub path: Option<String>,
    pub backend: VoyagerBackend,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoyagerBackend {
    /// `name`, or Voyager's `name.namespace` form.
    pub service_name: String,
    /// A port number or a port name, as written.
    pub service_port: String,
}

/// A networking.k8s.io/v1 Ingress (SPEC section 7), as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ingress {
    pub meta: Meta,
    /// Every annotation; the resolver reads `kubernetes.io/ingress.class` and the
    /// `nginx.ingress.kubernetes.io/` ones.
    pub annotations: BTreeMap<String, String>,
    /// `spec.ingressClassName`.
    pub class_name: Option<String>,
    pub default_backend: Option<IngressBackend>,
    pub rules: Vec<IngressRule>,
    pub tls: Vec<IngressTls>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressRule {
    /// Absent: every host.
    pub host: Option<String>,
    pub paths: Vec<IngressPath>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressPath {
    /// Absent means `/`.
    pub path: Option<String>,
    /// `Prefix`, `Exact` or `ImplementationSpecific`, as written.
    pub path_type: String,
    pub backend: IngressBackend,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IngressBackend {
    Service {
        name: String,
        port: IngressServicePort,
    },
    /// `resource` (an object of another kind): Portico does not serve it.
    Resource,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IngressServicePort {
    Number(u16),
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressTls {
    pub hosts: Vec<String>,
    pub secret_name: Option<String>,
}

/// A networking.k8s.io/v1 IngressClass: which controller serves the Ingresses that name
/// it, and whether it is the default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressClass {
    /// Its namespace is `CLUSTER` (IngressClasses are cluster-scoped).
    pub meta: Meta,
    pub controller: String,
    /// The annotation `ingressclass.kubernetes.io/is-default-class: "true"`.
    pub is_default: bool,
}

/// What every Gateway API object carries besides its name: the generation its status
/// describes (`observedGeneration`) and when it was created (conflicts go to the oldest).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    /// `metadata.generation`; 1 for a file without one.
    pub generation: i64,
    /// `metadata.creationTimestamp` as RFC 3339 UTC (`2026-01-02T03:04:05Z`, which sorts
    /// as it reads); `None` for a file without one (sorts first, then by name).
    pub created: Option<String>,
}

/// A reference to another object as a Gateway API object writes it (parentRefs,
/// backendRefs, certificateRefs, targetRefs, caCertificateRefs), with the defaults of
/// each field left to the resolver (they differ by field).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GatewayRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: String,
    pub section_name: Option<String>,
    pub port: Option<u16>,
}

/// gateway.networking.k8s.io/v1 GatewayClass.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayClass {
    /// Its namespace is `CLUSTER` (GatewayClasses are cluster-scoped).
    pub meta: Meta,
    pub lifecycle: Lifecycle,
    pub controller: String,
}

/// gateway.networking.k8s.io/v1 Gateway, the fields SPEC section 6 reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gateway {
    pub meta: Meta,
    pub lifecycle: Lifecycle,
    pub class_name: String,
    pub listeners: Vec<GatewayListener>,
    /// `spec.tls.backend.clientCertificateRef`.
    pub client_certificate: Option<GatewayRef>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayListener {
    pub name: String,
    pub port: u16,
    /// `HTTP`, `HTTPS`, or another the resolver refuses.
    pub protocol: String,
    pub hostname: Option<String>,
    /// `tls.certificateRefs`.
    pub certificate_refs: Vec<GatewayRef>,
    /// `tls.mode`, absent meaning `Terminate`.
    pub tls_mode: Option<String>,
    /// `allowedRoutes.namespaces.from`: `Same` (the default), `All` or `Selector`.
    pub allowed_from: Option<String>,
    /// `allowedRoutes.kinds[].kind`; empty means HTTPRoute.
    pub allowed_kinds: Vec<String>,
}

/// gateway.networking.k8s.io/v1 HTTPRoute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRoute {
    pub meta: Meta,
    pub lifecycle: Lifecycle,
    pub parent_refs: Vec<GatewayRef>,
    pub hostnames: Vec<String>,
    pub rules: Vec<HttpRouteRule>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRouteRule {
    /// Empty means one match: the path prefix `/`.
    pub matches: Vec<HttpRouteMatch>,
    pub backend_refs: Vec<HttpBackendRef>,
    /// `URLRewrite.hostname`, or a `RequestHeaderModifier` that sets `Host`: the Host sent
    /// upstream, as written.
    pub host_rewrite: Option<String>,
    /// Filters and match conditions Portico does not implement, as paths
    /// (`spec.rules[0].filters[1]`, `spec.rules[0].matches[0].headers`): the rule answers
    /// 503 rather than serving without them.
    pub unsupported: Vec<FieldPath>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRouteMatch {
    /// `PathPrefix` (the default), `Exact` or another the resolver refuses.
    pub path_type: String,
    /// Absent means `/`.
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpBackendRef {
    pub target: GatewayRef,
    /// Absent means 1.
    pub weight: Option<u32>,
}

/// gateway.networking.k8s.io/v1beta1 ReferenceGrant: who (`from`) may refer to what
/// (`to`) in its namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceGrant {
    pub meta: Meta,
    pub from: Vec<GrantFrom>,
    pub to: Vec<GrantTo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantFrom {
    pub group: String,
    pub kind: String,
    pub namespace: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantTo {
    pub group: String,
    pub kind: String,
    /// Absent: every object of the kind.
    pub name: Option<String>,
}

/// gateway.networking.k8s.io/v1 BackendTLSPolicy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendTlsPolicy {
    pub meta: Meta,
    pub lifecycle: Lifecycle,
    pub target_refs: Vec<GatewayRef>,
    pub ca_certificate_refs: Vec<GatewayRef>,
    pub well_known_ca_certificates: Option<String>,
    pub hostname: String,
    /// `subjectAltNames`: (type, value) as written, `Hostname` or `URI`.
    pub subject_alt_names: Vec<(String, String)>,
    pub options: BTreeMap<String, String>,
}

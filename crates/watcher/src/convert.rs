//! Wire types (Kubernetes API objects) to Portico's objects. Used by the file source
//! now and by the Kubernetes source later, so both give identical objects.

use crate::crds;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use portico_model as model;
use portico_model::{K8sName, Meta};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Why an object cannot become a Portico object. Says which field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("metadata.name is missing")]
    MissingName,
    #[error("metadata.{field}: {error}")]
    BadMeta { field: &'static str, error: model::GrammarError },
    #[error("{field}: {value} is not a port number (1-65535)")]
    BadPort { field: String, value: i64 },
    #[error("{field}: {value} is not a valid weight (0-4294967295)")]
    BadWeight { field: String, value: i64 },
    /// A ConfigMap without `ca.crt` (the Kubernetes source relays none of those).
    #[error("data.ca.crt is missing")]
    NoCaCertificate,
}

pub(crate) fn meta(m: &ObjectMeta) -> Result<Meta, ConvertError> {
    let name = m.name.as_deref().ok_or(ConvertError::MissingName)?;
    let namespace = m.namespace.as_deref().unwrap_or("default");
    if namespace.contains('.') {
        // Kubernetes namespaces are DNS labels; the bus's keys rely on it.
        return Err(ConvertError::BadMeta {
            field: "namespace",
            error: model::GrammarError(format!("{namespace:?} is not a DNS label: namespaces have no dots")),
        });
    }
    Ok(Meta {
        namespace: namespace.parse::<K8sName>().map_err(|error| ConvertError::BadMeta { field: "namespace", error })?,
        name: name.parse::<K8sName>().map_err(|error| ConvertError::BadMeta { field: "name", error })?,
    })
}

pub(crate) fn port(field: impl FnOnce() -> String, value: i64) -> Result<u16, ConvertError> {
    match u16::try_from(value) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(ConvertError::BadPort { field: field(), value }),
    }
}

pub fn service(s: &core::Service) -> Result<model::Service, ConvertError> {
    let meta = meta(&s.metadata)?;
    let spec = s.spec.clone().unwrap_or_default();
    let service_type = match spec.type_.as_deref() {
        Some("ExternalName") => model::ServiceType::ExternalName(spec.external_name.clone().unwrap_or_default()),
        Some("NodePort") => model::ServiceType::NodePort,
        Some("LoadBalancer") => model::ServiceType::LoadBalancer,
        _ => model::ServiceType::ClusterIp,
    };
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let target_port = match &p.target_port {
            None => None,
            Some(IntOrString::Int(n)) => {
                Some(model::TargetPort::Number(port(|| format!("spec.ports[{i}].targetPort"), i64::from(*n))?))
            }
            Some(IntOrString::String(name)) => Some(model::TargetPort::Name(name.clone())),
        };
        ports.push(model::ServicePort {
            name: p.name.clone().unwrap_or_default(),
            port: port(|| format!("spec.ports[{i}].port"), i64::from(p.port))?,
            target_port,
            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
            app_protocol: p.app_protocol.clone(),
        });
    }
    Ok(model::Service { meta, annotations: s.metadata.annotations.clone().unwrap_or_default(), service_type, ports })
}

pub fn endpoint_slice(e: &discovery::EndpointSlice) -> Result<model::EndpointSlice, ConvertError> {
    let meta = meta(&e.metadata)?;
    let service_name = e.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)).cloned();
    let mut ports = Vec::new();
    for (i, p) in e.ports.iter().flatten().enumerate() {
        ports.push(model::EndpointPort {
            name: p.name.clone().unwrap_or_default(),
            port: p.port.map(|n| port(|| format!("ports[{i}].port"), i64::from(n))).transpose()?,
        });
    }
    let endpoints = e
        .endpoints
        .iter()
        .map(|ep| model::Endpoint {
            addresses: ep.addresses.clone(),
            ready: ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
        })
        .collect();
    Ok(model::EndpointSlice { meta, service_name, ports, endpoints })
}

pub fn secret(s: &core::Secret) -> Result<model::Secret, ConvertError> {
    let meta = meta(&s.metadata)?;
    let mut data: std::collections::BTreeMap<String, Vec<u8>> =
        s.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect();
    // The API server merges stringData over data on write; do the same for files.
    for (k, v) in s.string_data.iter().flatten() {
        data.insert(k.clone(), v.clone().into_bytes());
    }
    Ok(model::Secret {
        meta,
        secret_type: s.type_.clone().unwrap_or_else(|| "Opaque".to_owned()),
        data,
        holder: model::Holder::Secret,
    })
}

/// A ConfigMap, for its `ca.crt` only (Gateway API `caCertificateRefs`): it travels with
/// the Secrets to the secrets service, which judges it as a CA bundle. Other keys are
/// left behind (a ConfigMap holds anything; only this one is trust material).
pub fn config_map(c: &core::ConfigMap) -> Result<model::Secret, ConvertError> {
    let meta = meta(&c.metadata)?;
    let mut data = std::collections::BTreeMap::new();
    if let Some(ca) = c.data.as_ref().and_then(|d| d.get("ca.crt")) {
        data.insert("ca.crt".to_owned(), ca.clone().into_bytes());
    } else if let Some(ca) = c.binary_data.as_ref().and_then(|d| d.get("ca.crt")) {
        data.insert("ca.crt".to_owned(), ca.0.clone());
    }
    Ok(model::Secret { meta, secret_type: String::new(), data, holder: model::Holder::ConfigMap })
}

pub fn http_proxy(p: &crds::HTTPProxy) -> Result<model::HttpProxy, ConvertError> {
    let meta = meta(&p.metadata)?;
    let mut routes = Vec::new();
    for (r, route) in p.spec.routes.iter().enumerate() {
        let at = format!("spec.routes[{r}]");
        let mut ignored = unimplemented(&at, &route.other);
        ignored.extend(unimplemented_conditions(&at, &route.conditions));
        let mut services = Vec::new();
        for (s, svc) in route.services.iter().enumerate() {
            let field = |f: &str| format!("{at}.services[{s}].{f}");
            let weight = svc
                .weight
                .map(|w| u32::try_from(w).map_err(|_| ConvertError::BadWeight { field: field("weight"), value: w }))
                .transpose()?;
            ignored.extend(unimplemented(&format!("{at}.services[{s}]"), &svc.other));
            if let Some(v) = &svc.validation {
                ignored.extend(unimplemented(&format!("{at}.services[{s}].validation"), &v.other));
            }
            services.push(model::HttpProxyService {
                name: svc.name.clone(),
                port: port(|| field("port"), svc.port)?,
                weight,
                protocol: svc.protocol.clone(),
                validation: svc.validation.as_ref().map(|v| model::UpstreamValidation {
                    ca_secret: v.ca_secret.clone(),
                    subject_name: v.subject_name.clone(),
                    subject_names: v.subject_names.clone(),
                }),
            });
        }
        if let Some(policy) = &route.request_headers_policy {
            ignored.extend(unimplemented(&format!("{at}.requestHeadersPolicy"), &policy.other));
            for (h, header) in policy.set.iter().enumerate() {
                ignored.extend(unimplemented(&format!("{at}.requestHeadersPolicy.set[{h}]"), &header.other));
            }
        }
        if let Some(policy) = &route.timeout_policy {
            ignored.extend(unimplemented(&format!("{at}.timeoutPolicy"), &policy.other));
        }
        routes.push(model::HttpProxyRoute {
            prefixes: route.conditions.iter().filter_map(|c| c.prefix.clone()).collect(),
            response_timeout: route.timeout_policy.as_ref().and_then(|p| p.response.clone()),
            idle_timeout: route.timeout_policy.as_ref().and_then(|p| p.idle.clone()),
            permit_insecure: route.permit_insecure,
            services,
            set_headers: route
                .request_headers_policy
                .iter()
                .flat_map(|p| p.set.iter().map(|h| (h.name.clone(), h.value.clone())))
                .collect(),
            ignored,
        });
    }
    let includes = p
        .spec
        .includes
        .iter()
        .enumerate()
        .map(|(i, include)| {
            let at = format!("spec.includes[{i}]");
            let mut ignored = unimplemented(&at, &include.other);
            ignored.extend(unimplemented_conditions(&at, &include.conditions));
            model::HttpProxyInclude {
                name: include.name.clone(),
                namespace: include.namespace.clone().filter(|n| !n.is_empty()),
                prefixes: include.conditions.iter().filter_map(|c| c.prefix.clone()).collect(),
                ignored,
            }
        })
        .collect();
    let mut ignored = unimplemented("spec", &p.spec.other);
    if let Some(v) = &p.spec.virtualhost {
        ignored.extend(unimplemented("spec.virtualhost", &v.other));
        // `clientValidation` restricts who may connect: the resolver closes the virtual
        // host for it rather than only warning (`contour::RESTRICTING_FIELDS`).
        if let Some(tls) = &v.tls {
            ignored.extend(unimplemented("spec.virtualhost.tls", &tls.other));
        }
    }
    let fqdn = p.spec.virtualhost.as_ref().map(|v| v.fqdn.clone());
    let tls = p.spec.virtualhost.as_ref().and_then(|v| v.tls.as_ref()).map(|t| model::HttpProxyTls {
        secret_name: t.secret_name.clone(),
        minimum_protocol_version: t.minimum_protocol_version.clone(),
    });
    Ok(model::HttpProxy { meta, fqdn, tls, includes, routes, ignored })
}

/// The paths of the fields at `at` that Portico does not implement (`at.name`).
fn unimplemented(at: &str, fields: &crds::Unimplemented) -> Vec<model::FieldPath> {
    fields.keys().map(|name| format!("{at}.{name}")).collect()
}

/// The paths of the match conditions other than `prefix` (`at.conditions[1].header`).
fn unimplemented_conditions(at: &str, conditions: &[crds::MatchCondition]) -> Vec<model::FieldPath> {
    conditions
        .iter()
        .enumerate()
        .flat_map(|(c, condition)| unimplemented(&format!("{at}.conditions[{c}]"), &condition.other))
        .collect()
}

pub fn delegation(d: &crds::TLSCertificateDelegation) -> Result<model::TlsCertificateDelegation, ConvertError> {
    Ok(model::TlsCertificateDelegation {
        meta: meta(&d.metadata)?,
        delegations: d
            .spec
            .delegations
            .iter()
            .map(|d| model::Delegation {
                secret_name: d.secret_name.clone(),
                target_namespaces: d.target_namespaces.clone(),
            })
            .collect(),
    })
}

fn int_or_string(v: &IntOrString) -> String {
    match v {
        IntOrString::Int(n) => n.to_string(),
        IntOrString::String(s) => s.clone(),
    }
}

fn voyager_backend(b: &crds::VoyagerBackend) -> model::VoyagerBackend {
    model::VoyagerBackend { service_name: b.service_name.clone(), service_port: int_or_string(&b.service_port) }
}

pub fn voyager_ingress(i: &crds::VoyagerIngress) -> Result<model::VoyagerIngress, ConvertError> {
    let meta = meta(&i.metadata)?;
    let mut ignored: Vec<model::FieldPath> = i
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("ingress.appscode.com/"))
        .map(|(k, _)| format!("metadata.annotations[{k}]"))
        .collect();
    ignored.extend(unimplemented("spec", &i.spec.other));
    if let Some(b) = &i.spec.backend {
        ignored.extend(unimplemented("spec.backend", &b.other));
    }
    let mut rules = Vec::new();
    for (r, rule) in i.spec.rules.iter().enumerate() {
        ignored.extend(unimplemented(&format!("spec.rules[{r}]"), &rule.other));
        let http = rule.http.clone().unwrap_or_default();
        ignored.extend(unimplemented(&format!("spec.rules[{r}].http"), &http.other));
        for (p, path) in http.paths.iter().enumerate() {
            ignored.extend(unimplemented(&format!("spec.rules[{r}].http.paths[{p}]"), &path.other));
            ignored.extend(unimplemented(&format!("spec.rules[{r}].http.paths[{p}].backend"), &path.backend.other));
        }
        let listener = match &http.port {
            None => None,
            Some(IntOrString::Int(n)) => Some(port(|| format!("spec.rules[{r}].http.port"), i64::from(*n))?),
            Some(IntOrString::String(s)) => {
                let n = s.parse::<i64>().unwrap_or(0);
                Some(port(|| format!("spec.rules[{r}].http.port"), n)?)
            }
        };
        rules.push(model::VoyagerRule {
            host: rule.host.clone(),
            port: listener,
            paths: http
                .paths
                .iter()
                .map(|p| model::VoyagerPath { path: p.path.clone(), backend: voyager_backend(&p.backend) })
                .collect(),
        });
    }
    let mut tls = Vec::new();
    for (t, entry) in i.spec.tls.iter().enumerate() {
        ignored.extend(unimplemented(&format!("spec.tls[{t}]"), &entry.other));
        tls.push(model::VoyagerTls { hosts: entry.hosts.clone(), secret_name: entry.secret_name.clone() });
    }
    Ok(model::VoyagerIngress { meta, backend: i.spec.backend.as_ref().map(voyager_backend), rules, tls, ignored })
}

fn ingress_backend(b: &networking::IngressBackend, field: &str) -> Result<model::IngressBackend, ConvertError> {
    let Some(service) = &b.service else { return Ok(model::IngressBackend::Resource) };
    let port = match &service.port {
        Some(networking::ServiceBackendPort { number: Some(n), .. }) => {
            model::IngressServicePort::Number(port(|| format!("{field}.service.port.number"), i64::from(*n))?)
        }
        Some(networking::ServiceBackendPort { name: Some(name), .. }) => model::IngressServicePort::Name(name.clone()),
        _ => return Err(ConvertError::BadPort { field: format!("{field}.service.port"), value: 0 }),
    };
    Ok(model::IngressBackend::Service { name: service.name.clone(), port })
}

/// A networking.k8s.io/v1 Ingress (SPEC section 7).
pub fn ingress(i: &networking::Ingress) -> Result<model::Ingress, ConvertError> {
    let meta = meta(&i.metadata)?;
    let spec = i.spec.clone().unwrap_or_default();
    let mut rules = Vec::new();
    for (r, rule) in spec.rules.iter().flatten().enumerate() {
        let mut paths = Vec::new();
        for (p, path) in rule.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
            paths.push(model::IngressPath {
                path: path.path.clone(),
                path_type: path.path_type.clone(),
                backend: ingress_backend(&path.backend, &format!("spec.rules[{r}].http.paths[{p}].backend"))?,
            });
        }
        rules.push(model::IngressRule { host: rule.host.clone(), paths });
    }
    Ok(model::Ingress {
        meta,
        annotations: i.metadata.annotations.clone().unwrap_or_default(),
        class_name: spec.ingress_class_name.clone(),
        default_backend: spec
            .default_backend
            .as_ref()
            .map(|b| ingress_backend(b, "spec.defaultBackend"))
            .transpose()?,
        rules,
        tls: spec
            .tls
            .iter()
            .flatten()
            .map(|t| model::IngressTls {
                hosts: t.hosts.clone().unwrap_or_default(),
                secret_name: t.secret_name.clone(),
            })
            .collect(),
    })
}

/// A networking.k8s.io/v1 IngressClass (cluster-scoped: kept under namespace `CLUSTER`).
pub fn ingress_class(c: &networking::IngressClass) -> Result<model::IngressClass, ConvertError> {
    let name = c.metadata.name.as_deref().ok_or(ConvertError::MissingName)?;
    let meta = Meta {
        namespace: model::CLUSTER.parse::<K8sName>().expect("a valid name"),
        name: name.parse::<K8sName>().map_err(|error| ConvertError::BadMeta { field: "name", error })?,
    };
    let is_default = c
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("ingressclass.kubernetes.io/is-default-class"))
        .is_some_and(|v| v == "true");
    let controller = c.spec.as_ref().and_then(|s| s.controller.clone()).unwrap_or_default();
    Ok(model::IngressClass { meta, controller, is_default })
}

//! Gateway API wire types (`gateway_api`, generated from the vendored CRDs) to Portico's
//! objects (SPEC section 6). Values stay as written; the resolver validates them and
//! attributes a bad one to its field.

use crate::convert::{meta, port, ConvertError};
use crate::gateway_api::referencegrants as rg;
use crate::gateway_api::{backendtlspolicies as btp, gatewayclasses as gc, gateways as gw, httproutes as hr};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use portico_model as model;
use portico_model::{GatewayRef, K8sName, Lifecycle, Meta};

fn lifecycle(m: &ObjectMeta) -> Lifecycle {
    Lifecycle {
        generation: m.generation.unwrap_or(1),
        created: m.creation_timestamp.as_ref().map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
    }
}

/// The JSON spelling of a generated enum value (`URLRewrite`, `PathPrefix`).
fn spelled<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn optional_port(field: impl FnOnce() -> String, value: Option<i32>) -> Result<Option<u16>, ConvertError> {
    value.map(|p| port(field, i64::from(p))).transpose()
}

/// A reference to a whole object (no section, no port).
fn object_ref(group: Option<String>, kind: Option<String>, namespace: Option<String>, name: &str) -> GatewayRef {
    GatewayRef { group, kind, namespace, name: name.to_owned(), section_name: None, port: None }
}

pub fn gateway_class(c: &gc::GatewayClass) -> Result<model::GatewayClass, ConvertError> {
    let name = c.metadata.name.as_deref().ok_or(ConvertError::MissingName)?;
    let meta = Meta {
        namespace: model::CLUSTER.parse::<K8sName>().expect("a valid name"),
        name: name.parse::<K8sName>().map_err(|error| ConvertError::BadMeta { field: "name", error })?,
    };
    Ok(model::GatewayClass { meta, lifecycle: lifecycle(&c.metadata), controller: c.spec.controller_name.clone() })
}

pub fn gateway(g: &gw::Gateway) -> Result<model::Gateway, ConvertError> {
    let meta = meta(&g.metadata)?;
    let mut listeners = Vec::new();
    for (i, l) in g.spec.listeners.iter().enumerate() {
        let port = port(|| format!("spec.listeners[{i}].port"), i64::from(l.port))?;
        let tls = l.tls.as_ref();
        let certificate_refs = tls
            .and_then(|t| t.certificate_refs.as_ref())
            .into_iter()
            .flatten()
            .map(|r| object_ref(r.group.clone(), r.kind.clone(), r.namespace.clone(), &r.name))
            .collect();
        let allowed = l.allowed_routes.as_ref();
        listeners.push(model::GatewayListener {
            name: l.name.clone(),
            port,
            protocol: l.protocol.clone(),
            hostname: l.hostname.clone(),
            certificate_refs,
            tls_mode: tls.and_then(|t| t.mode.as_ref()).map(spelled),
            allowed_from: allowed.and_then(|a| a.namespaces.as_ref()).and_then(|n| n.from.as_ref()).map(spelled),
            allowed_kinds: allowed
                .and_then(|a| a.kinds.as_ref())
                .into_iter()
                .flatten()
                .map(|k| k.kind.clone())
                .collect(),
        });
    }
    let client_certificate = g
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.backend.as_ref())
        .and_then(|b| b.client_certificate_ref.as_ref())
        .map(|r| object_ref(r.group.clone(), r.kind.clone(), r.namespace.clone(), &r.name));
    Ok(model::Gateway {
        meta,
        lifecycle: lifecycle(&g.metadata),
        class_name: g.spec.gateway_class_name.clone(),
        listeners,
        client_certificate,
    })
}

pub fn http_route(r: &hr::HttpRoute) -> Result<model::HttpRoute, ConvertError> {
    let meta = meta(&r.metadata)?;
    let mut parent_refs = Vec::new();
    for (i, p) in r.spec.parent_refs.iter().flatten().enumerate() {
        parent_refs.push(GatewayRef {
            group: p.group.clone(),
            kind: p.kind.clone(),
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            section_name: p.section_name.clone(),
            port: optional_port(|| format!("spec.parentRefs[{i}].port"), p.port)?,
        });
    }
    let mut rules = Vec::new();
    for (i, rule) in r.spec.rules.iter().flatten().enumerate() {
        let mut unsupported = Vec::new();
        let mut matches = Vec::new();
        for (j, m) in rule.matches.iter().flatten().enumerate() {
            let at = format!("spec.rules[{i}].matches[{j}]");
            if m.headers.as_ref().is_some_and(|h| !h.is_empty()) {
                unsupported.push(format!("{at}.headers"));
            }
            if m.query_params.as_ref().is_some_and(|q| !q.is_empty()) {
                unsupported.push(format!("{at}.queryParams"));
            }
            if m.method.is_some() {
                unsupported.push(format!("{at}.method"));
            }
            let path = m.path.as_ref();
            matches.push(model::HttpRouteMatch {
                path_type: path.and_then(|p| p.r#type.as_ref()).map(spelled).unwrap_or_else(|| "PathPrefix".into()),
                path: path.and_then(|p| p.value.clone()).unwrap_or_else(|| "/".into()),
            });
        }
        let mut host_rewrite = None;
        for (j, f) in rule.filters.iter().flatten().enumerate() {
            let at = format!("spec.rules[{i}].filters[{j}]");
            match (&f.r#type, &f.url_rewrite, &f.request_header_modifier) {
                (hr::HttpRouteRulesFiltersType::UrlRewrite, Some(rewrite), _) if rewrite.path.is_none() => {
                    host_rewrite = rewrite.hostname.clone();
                }
                (hr::HttpRouteRulesFiltersType::RequestHeaderModifier, _, Some(m))
                    if m.add.as_ref().is_none_or(Vec::is_empty)
                        && m.remove.as_ref().is_none_or(Vec::is_empty)
                        && m.set.iter().flatten().all(|s| s.name.eq_ignore_ascii_case("host")) =>
                {
                    if let Some(set) = m.set.iter().flatten().next() {
                        host_rewrite = Some(set.value.clone());
                    }
                }
                _ => unsupported.push(format!("{at} ({})", spelled(&f.r#type))),
            }
        }
        if rule.timeouts.is_some() {
            unsupported.push(format!("spec.rules[{i}].timeouts"));
        }
        let mut backend_refs = Vec::new();
        for (j, b) in rule.backend_refs.iter().flatten().enumerate() {
            if b.filters.as_ref().is_some_and(|f| !f.is_empty()) {
                unsupported.push(format!("spec.rules[{i}].backendRefs[{j}].filters"));
            }
            let weight = match b.weight {
                None => None,
                Some(w) => Some(u32::try_from(w).map_err(|_| ConvertError::BadWeight {
                    field: format!("spec.rules[{i}].backendRefs[{j}].weight"),
                    value: i64::from(w),
                })?),
            };
            backend_refs.push(model::HttpBackendRef {
                target: GatewayRef {
                    group: b.group.clone(),
                    kind: b.kind.clone(),
                    namespace: b.namespace.clone(),
                    name: b.name.clone(),
                    section_name: None,
                    port: optional_port(|| format!("spec.rules[{i}].backendRefs[{j}].port"), b.port)?,
                },
                weight,
            });
        }
        rules.push(model::HttpRouteRule { matches, backend_refs, host_rewrite, unsupported });
    }
    Ok(model::HttpRoute {
        meta,
        lifecycle: lifecycle(&r.metadata),
        parent_refs,
        hostnames: r.spec.hostnames.clone().unwrap_or_default(),
        rules,
    })
}

pub fn reference_grant(g: &rg::ReferenceGrant) -> Result<model::ReferenceGrant, ConvertError> {
    Ok(model::ReferenceGrant {
        meta: meta(&g.metadata)?,
        from: g
            .spec
            .from
            .iter()
            .map(|f| model::GrantFrom { group: f.group.clone(), kind: f.kind.clone(), namespace: f.namespace.clone() })
            .collect(),
        to: g
            .spec
            .to
            .iter()
            .map(|t| model::GrantTo { group: t.group.clone(), kind: t.kind.clone(), name: t.name.clone() })
            .collect(),
    })
}

pub fn backend_tls_policy(p: &btp::BackendTlsPolicy) -> Result<model::BackendTlsPolicy, ConvertError> {
    let validation = &p.spec.validation;
    Ok(model::BackendTlsPolicy {
        meta: meta(&p.metadata)?,
        lifecycle: lifecycle(&p.metadata),
        target_refs: p
            .spec
            .target_refs
            .iter()
            .map(|t| GatewayRef {
                group: Some(t.group.clone()),
                kind: Some(t.kind.clone()),
                namespace: None,
                name: t.name.clone(),
                section_name: t.section_name.clone(),
                port: None,
            })
            .collect(),
        ca_certificate_refs: validation
            .ca_certificate_refs
            .iter()
            .flatten()
            .map(|r| object_ref(Some(r.group.clone()), Some(r.kind.clone()), None, &r.name))
            .collect(),
        well_known_ca_certificates: validation.well_known_ca_certificates.clone(),
        hostname: validation.hostname.clone(),
        subject_alt_names: validation
            .subject_alt_names
            .iter()
            .flatten()
            .map(|s| {
                let value = match s.r#type {
                    btp::BackendTlsPolicyValidationSubjectAltNamesType::Hostname => s.hostname.clone(),
                    btp::BackendTlsPolicyValidationSubjectAltNamesType::Uri => s.uri.clone(),
                };
                (spelled(&s.r#type), value.unwrap_or_default())
            })
            .collect(),
        options: p.spec.options.clone().unwrap_or_default(),
    })
}

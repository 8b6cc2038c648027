//! Helpers for the resolver's tests: worlds written as YAML (decoded by the real watcher),
//! verdicts as the secrets service would publish them, and lookups into the result.
#![allow(dead_code)]

use portico_model::{
    CaBundleInfo, Cluster, ContourStatus, HostMatch, KeyPairInfo, Kind, ObjectStatus, Route, RouteAction, SecretRef,
    SecretVerdict,
};
use portico_resolver::{resolve, Config, Resolved, Snapshot};

/// Decode YAML documents into a snapshot; any decoding problem fails the test.
pub fn snapshot(yaml: &str) -> Snapshot {
    let mut decoded = portico_watcher::Decoded::default();
    portico_watcher::decode_str("world.yaml", yaml, &mut decoded);
    assert_eq!(decoded.problems, vec![], "the test's YAML must decode");
    let mut snapshot = Snapshot::default();
    for (object, _) in decoded.objects {
        snapshot.apply(object).expect("no Secrets in resolver worlds; use verdicts");
    }
    snapshot
}

pub fn secret_ref(s: &str) -> SecretRef {
    let (ns, name) = s.split_once('/').expect("namespace/name");
    SecretRef::new(ns, name).unwrap()
}

/// A valid CA bundle verdict whose hash is derived from the name (so CAs differ).
pub fn valid_ca(secret: &str) -> SecretVerdict {
    SecretVerdict {
        secret: secret_ref(secret),
        ca: Ok(CaBundleInfo { sha256: format!("sha-of-{secret}"), certificates: vec![], warnings: vec![] }),
        key_pair: Err("secret type \"Opaque\" is not kubernetes.io/tls".into()),
    }
}

pub fn ca_with_warning(secret: &str, warning: &str) -> SecretVerdict {
    let mut v = valid_ca(secret);
    if let Ok(info) = &mut v.ca {
        info.warnings.push(warning.into());
    }
    v
}

pub fn invalid_ca(secret: &str, reason: &str) -> SecretVerdict {
    SecretVerdict { ca: Err(reason.into()), ..valid_ca(secret) }
}

pub fn valid_client_cert(secret: &str) -> SecretVerdict {
    key_pair(secret, "client-sha", &["portico"])
}

/// A valid certificate and key (a kubernetes.io/tls Secret) for these names.
pub fn key_pair(secret: &str, sha256: &str, names: &[&str]) -> SecretVerdict {
    SecretVerdict {
        secret: secret_ref(secret),
        ca: Err("empty \"ca.crt\" key".into()),
        key_pair: Ok(KeyPairInfo {
            sha256: sha256.into(),
            leaf: portico_model::CertificateInfo {
                subject: "CN=portico".into(),
                sha256: "x".into(),
                not_before: 0,
                not_after: 0,
            },
            dns_names: names.iter().map(|n| n.to_string()).collect(),
            warnings: vec![],
        }),
    }
}

pub struct World {
    pub resolved: Resolved,
}

pub fn world(yaml: &str, verdicts: Vec<SecretVerdict>) -> World {
    world_with(yaml, verdicts, &Config::default())
}

pub fn world_with(yaml: &str, verdicts: Vec<SecretVerdict>, config: &Config) -> World {
    let mut snap = snapshot(yaml);
    for v in verdicts {
        snap.set_verdict(v);
    }
    World { resolved: resolve(&snap, config) }
}

impl World {
    pub fn object_status(&self, kind: Kind, ns_name: &str) -> &ObjectStatus {
        self.resolved
            .statuses
            .iter()
            .find(|s| s.object.kind == kind && format!("{}/{}", s.object.namespace, s.object.name) == ns_name)
            .unwrap_or_else(|| panic!("no status for {kind} {ns_name}"))
    }

    pub fn status(&self, ns_name: &str) -> ContourStatus {
        self.object_status(Kind::HttpProxy, ns_name).to_contour()
    }

    pub fn voyager_status(&self, ns_name: &str) -> ContourStatus {
        self.object_status(Kind::VoyagerIngress, ns_name).to_contour()
    }

    /// The route for a host and prefix on a listener.
    pub fn route(&self, port: u16, host: &str, prefix: &str) -> &Route {
        let host = HostMatch::parse(host).unwrap();
        self.resolved
            .model
            .routes()
            .find(|(p, h, r)| *p == port && **h == host && r.prefix.as_str() == prefix)
            .map(|(_, _, r)| r)
            .unwrap_or_else(|| panic!("no route {host} {prefix} on {port}"))
    }

    pub fn has_route(&self, port: u16, host: &str, prefix: &str) -> bool {
        let host = HostMatch::parse(host).unwrap();
        self.resolved.model.routes().any(|(p, h, r)| p == port && *h == host && r.prefix.as_str() == prefix)
    }

    /// The single cluster a route forwards to; panics if it rejects.
    pub fn cluster_of(&self, port: u16, host: &str, prefix: &str) -> &Cluster {
        match &self.route(port, host, prefix).action {
            RouteAction::Forward { backends, .. } => {
                assert_eq!(backends.len(), 1, "one backend expected");
                self.resolved.model.cluster(&backends[0].cluster).expect("the cluster exists")
            }
            other => panic!("route {host}{prefix} does not forward: {other:?}"),
        }
    }

    pub fn rejects(&self, port: u16, host: &str, prefix: &str) -> bool {
        self.route(port, host, prefix).action == RouteAction::Reject
    }

    /// The status a route answers with itself (502 or 503), or `None` when it forwards.
    pub fn answers(&self, port: u16, host: &str, prefix: &str) -> Option<u16> {
        self.route(port, host, prefix).action.direct_status()
    }

    /// Every route as (host, prefix, the object that wrote it), in the model's order.
    pub fn route_list(&self) -> Vec<(String, String, String)> {
        self.resolved
            .model
            .routes()
            .map(|(_, h, r)| (h.to_string(), r.prefix.to_string(), format!("{}/{}", r.source.namespace, r.source.name)))
            .collect()
    }
}

/// The messages of a status's errors (or warnings).
pub fn errors(status: &ContourStatus) -> Vec<(String, String)> {
    status.conditions[0].errors.iter().map(|e| (e.reason.clone(), e.message.clone())).collect()
}

pub fn warnings(status: &ContourStatus) -> Vec<(String, String)> {
    status.conditions[0].warnings.iter().map(|e| (e.reason.clone(), e.message.clone())).collect()
}

//! The resolver: joins objects and the secrets service's verdicts into one model and the
//! statuses of every HTTPProxy and Voyager Ingress (SPEC sections 2 and 3).
//!
//! Architecture invariant: pure. No I/O, no clock, no runtime; `resolve` is a function of
//! the snapshot and the configuration, and its output is sorted, so equal inputs give
//! byte-equal models.

pub mod backend_tls;
pub mod build;
pub mod common;
pub mod contour;
pub mod snapshot;
pub mod voyager;

use portico_model::{Kind, Model, ObjectRef, ObjectStatus, Problem, SecretRef};
use std::collections::BTreeMap;

pub use snapshot::Snapshot;

/// What the resolver needs besides the objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The listener for HTTPProxies and for Voyager rules without `http.port`.
    pub http_port: u16,
    /// The upstream client certificate (Contour's "Envoy client certificate").
    pub client_cert: Option<SecretRef>,
}

impl Default for Config {
    fn default() -> Self {
        Config { http_port: 8080, client_cert: None }
    }
}

/// The model and the status of every HTTPProxy and Voyager Ingress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub model: Model,
    /// Sorted by kind, namespace, name.
    pub statuses: Vec<ObjectStatus>,
}

/// Resolve a snapshot into the model and statuses.
pub fn resolve(snapshot: &Snapshot, config: &Config) -> Resolved {
    let index = common::Index::new(snapshot, config);
    let mut problems: BTreeMap<ObjectRef, Vec<Problem>> = BTreeMap::new();
    let mut routes = Vec::new();
    // HTTPProxies first, then Voyager Ingresses, each by namespace and name: the order in
    // which route conflicts are decided.
    for proxy in snapshot.http_proxies.values() {
        let list = problems.entry(proxy.meta.object_ref(Kind::HttpProxy)).or_default();
        routes.extend(contour::resolve_proxy(&index, proxy, list));
    }
    for ingress in snapshot.voyager_ingresses.values() {
        let list = problems.entry(ingress.meta.object_ref(Kind::VoyagerIngress)).or_default();
        routes.extend(voyager::resolve_ingress(&index, ingress, list));
    }
    let model = build::assemble(routes, &mut problems);
    let statuses = problems.into_iter().map(|(object, problems)| ObjectStatus { object, problems }).collect();
    Resolved { model, statuses }
}

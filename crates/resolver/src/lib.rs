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

#[cfg(feature = "service")]
pub mod service;

use portico_model::{K8sName, Kind, Model, ObjectStatus, SecretRef};

pub use snapshot::Snapshot;

/// What the resolver needs besides the objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The listener for HTTPProxies and for Voyager rules without `http.port`.
    pub http_port: u16,
    /// The upstream client certificate (Contour's "Envoy client certificate").
    pub client_cert: Option<SecretRef>,
    /// Contour's `--root-namespaces`: where root HTTPProxies may be defined; empty means
    /// anywhere.
    pub root_namespaces: Vec<K8sName>,
}

impl Config {
    /// Whether a root HTTPProxy may be defined in `namespace`.
    pub fn root_allowed(&self, namespace: &K8sName) -> bool {
        self.root_namespaces.is_empty() || self.root_namespaces.contains(namespace)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config { http_port: 8080, client_cert: None, root_namespaces: Vec::new() }
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
    let mut statuses = Vec::with_capacity(snapshot.http_proxies.len() + snapshot.voyager_ingresses.len());
    let mut routes = Vec::new();
    // HTTPProxies first, then Voyager Ingresses, each by namespace and name: the order in
    // which route conflicts are decided, and (Kind's order) the order of the statuses.
    routes.extend(contour::resolve_proxies(&index, &mut statuses));
    for ingress in snapshot.voyager_ingresses.values() {
        let mut problems = Vec::new();
        routes.extend(voyager::resolve_ingress(&index, ingress, statuses.len(), &mut problems));
        statuses.push(ObjectStatus { object: ingress.meta.object_ref(Kind::VoyagerIngress), problems });
    }
    let model = build::assemble(routes, &mut statuses);
    Resolved { model, statuses }
}

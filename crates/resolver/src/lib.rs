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
pub mod gateway;
pub mod incremental;
pub mod ingress;
pub mod ingress_nginx;
pub mod serving;
pub mod snapshot;
pub mod voyager;

#[cfg(feature = "service")]
pub mod service;

use portico_model::{K8sName, Model, ObjectStatus, SecretRef};

pub use incremental::{Changes, Incremental, UnitKey};
pub use snapshot::Snapshot;

/// What the resolver needs besides the objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The listener for HTTPProxies and for Voyager rules without `http.port`.
    pub http_port: u16,
    /// The HTTPS listener: hosts with a valid certificate are served there too (SPEC
    /// section 8).
    pub https_port: u16,
    /// The port that plain HTTP requests to those hosts are redirected to: where clients
    /// reach the HTTPS listener (443 behind a Service, the listener's own port locally).
    pub https_redirect_port: u16,
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
        Config {
            http_port: 8080,
            https_port: 8443,
            https_redirect_port: 443,
            client_cert: None,
            root_namespaces: Vec::new(),
        }
    }
}

/// The model and the status of every HTTPProxy and Voyager Ingress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub model: Model,
    /// Sorted by kind, namespace, name.
    pub statuses: Vec<ObjectStatus>,
}

/// Resolve a snapshot into the model and statuses: the incremental resolver with every
/// unit dirty, so full and incremental resolution cannot differ.
pub fn resolve(snapshot: &Snapshot, config: &Config) -> Resolved {
    let mut incremental = Incremental::from_snapshot(snapshot.clone(), config.clone());
    incremental.rebuild();
    incremental.resolved()
}

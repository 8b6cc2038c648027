//! The bus contract: bucket names and keys, the message envelope (schema version, W3C trace
//! context) with its codec, and the NATS connection and JetStream setup every service
//! shares. All state on the bus is derived; the Kubernetes API or the files are the truth.

pub mod cli;
pub mod codec;
pub mod envelope;
pub mod follow;
pub mod names;
pub mod nats;

pub use envelope::{open, seal, OpenError, TraceContext, SCHEMA_VERSION};

use serde::{Deserialize, Serialize};

/// The value of `portico-model/current`: what the resolver published, for the renderers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// Increases by one with every published model; renderers never apply an older one.
    pub generation: u64,
    /// `Model::content_hash`.
    pub hash: String,
    pub model: portico_model::Model,
}

/// The value of a lease key: who holds it. Liveness is judged by renewals being seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub holder: String,
}

/// The value of `portico-applied/<renderer>.<instance>`: what a renderer last tried to apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRecord {
    pub generation: u64,
    pub hash: String,
    /// `None` when applied; otherwise why not (the proxy kept its previous configuration).
    pub error: Option<String>,
    /// Routes rendered as 503 because their trust material was missing or stale.
    pub problems: Vec<String>,
    /// Milliseconds since the Unix epoch, and how long the apply took.
    pub at_unix_ms: u64,
    pub took_ms: u64,
}

//! The bus contract: bucket names and keys, the message envelope (schema version, W3C trace
//! context) with its codec, and the NATS connection and JetStream setup every service
//! shares. All state on the bus is derived; the Kubernetes API or the files are the truth.

pub mod codec;
pub mod envelope;
pub mod names;
pub mod nats;

pub use envelope::{open, seal, OpenError, TraceContext, SCHEMA_VERSION};

//! Portico's shared types: the objects it reads, the secrets service's verdicts, the
//! resolved model the renderers consume, and statuses.
//!
//! Architecture invariant: this crate does no I/O and depends on no runtime. Everything
//! here is serializable because it crosses the bus.

pub mod names;
pub mod objects;
pub mod resolved;
pub mod status;
pub mod verdict;

pub use names::{
    AbsPath, ClusterName, DnsName, GrammarError, Holder, HostMatch, K8sName, PathPrefix, SanUri, SecretRef,
};
pub use objects::*;
pub use resolved::*;
pub use status::*;
pub use verdict::*;

//! The watcher's library: Kubernetes wire types, their conversion into Portico's objects,
//! and the file source (multi-document YAML files and directories).

pub mod convert;
pub mod crds;
pub mod manifests;

pub use manifests::{decode_str, load, DecodeProblem, Decoded, LoadError, Location, Skipped};

#[cfg(feature = "service")]
pub mod service;

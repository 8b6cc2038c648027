//! The watcher's library: Kubernetes wire types, their conversion into Portico's objects,
//! the file source (multi-document YAML files and directories) and, with the `service`
//! feature, both sources on the bus: files (`service`) and the Kubernetes API (`kubernetes`).

pub mod convert;
pub mod convert_gateway;
pub mod crds;
pub mod gateway_api;
pub mod manifests;

pub use manifests::{decode_str, load, DecodeProblem, Decoded, LoadError, Location, Skipped};

#[cfg(feature = "envoy-identity")]
pub mod envoy_identity;
#[cfg(feature = "service")]
pub mod kubernetes;
#[cfg(feature = "service")]
pub mod service;
#[cfg(feature = "service")]
pub mod status;

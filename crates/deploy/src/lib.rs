//! The composition root's library: the `portico` command's subcommands, callable from tests.

pub mod bench;
pub mod credentials;
pub mod demo;
pub mod nats_config;
pub mod status;
pub mod translate;
pub mod up;

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Parse `--client-cert`: exactly `namespace/name`.
pub fn parse_client_cert(value: &str) -> Result<portico_model::SecretRef, String> {
    match value.split_once('/') {
        Some((ns, name)) if !name.contains('/') => {
            portico_model::SecretRef::new(ns, name).map_err(|e| format!("{e} (expected NAMESPACE/NAME)"))
        }
        _ => Err(format!("{value:?} is not NAMESPACE/NAME")),
    }
}

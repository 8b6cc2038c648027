//! The bus contract: bucket names and keys, the message envelope (schema version, W3C trace
//! context) with its codec, the value types, the model by piece, and the NATS connection
//! and JetStream setup every service shares. All state on the bus is derived; the
//! Kubernetes API or the files are the truth. What a service process needs besides (its
//! admin port, flags, telemetry, the renderers' inputs) is `portico-kit`.

pub mod codec;
pub mod envelope;
pub mod model;
pub mod names;
pub mod nats;

pub use envelope::{open, seal, OpenError, TraceContext, SCHEMA_VERSION};

use serde::{Deserialize, Serialize};

/// A generation of the model as a renderer holds it: put together from the pieces on the
/// bus by `model::Follower` (the bus carries pieces and a `model::ModelIndex`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// When this sequence of generations began (milliseconds since the Unix epoch). A
    /// resolver that finds no readable record on the bus (NATS lost its state, a schema
    /// change, a failed read) starts a new epoch, so its generations still order after
    /// every earlier one and the renderers follow it instead of ignoring it.
    pub epoch: u64,
    /// Increases by one with every published model within an epoch.
    pub generation: u64,
    /// The index's digest of the pieces (`model::ModelIndex::digest`): equal models, equal hashes.
    pub hash: String,
    /// `model::ModelIndex::changed_at_ms` and `published_at_ms`: when the change reached
    /// the bus and when this generation was published (0: not known).
    pub changed_at_ms: u64,
    pub published_at_ms: u64,
    pub model: portico_model::Model,
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Seconds from `since_ms` (wall-clock milliseconds) to now; `None` when `since_ms` is not
/// known (0) or lies ahead (clocks of two machines disagree).
pub fn seconds_since(since_ms: u64) -> Option<f64> {
    let now = unix_ms();
    (since_ms != 0 && now >= since_ms).then(|| (now - since_ms) as f64 / 1000.0)
}

impl ModelRecord {
    /// What orders models: epoch, then generation. Renderers never apply an older one.
    pub fn version(&self) -> Version {
        Version { epoch: self.epoch, generation: self.generation }
    }
}

/// A model's place in the order models were published in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    pub epoch: u64,
    pub generation: u64,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (epoch {})", self.generation, self.epoch)
    }
}

/// The value of a lease key: who holds it. Liveness is judged by renewals being seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub holder: String,
}

/// The value of `portico-applied/<renderer>.<instance>`: what a renderer last tried to apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRecord {
    /// The model's epoch and generation (`ModelRecord`).
    pub epoch: u64,
    pub generation: u64,
    pub hash: String,
    /// `None` when applied; otherwise why not (the proxy kept its previous configuration).
    pub error: Option<String>,
    /// Routes rendered as 503 because their trust material was missing or stale: the
    /// first `AppliedRecord::MAX_PROBLEMS`, then how many more (see `capped`).
    pub problems: Vec<String>,
    /// Milliseconds since the Unix epoch, and how long the apply took.
    pub at_unix_ms: u64,
    pub took_ms: u64,
}

impl AppliedRecord {
    pub fn version(&self) -> Version {
        Version { epoch: self.epoch, generation: self.generation }
    }

    /// The most problems a record lists: it must fit in one NATS message (1 MiB), and
    /// 10,000 routes missing one CA would not.
    pub const MAX_PROBLEMS: usize = 20;

    /// `problems` cut to `MAX_PROBLEMS`, with a last line saying how many were left out.
    pub fn capped(mut problems: Vec<String>) -> Vec<String> {
        if problems.len() > Self::MAX_PROBLEMS {
            let more = problems.len() - Self::MAX_PROBLEMS;
            problems.truncate(Self::MAX_PROBLEMS);
            problems.push(format!("... and {more} more"));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::AppliedRecord;

    #[test]
    fn an_applied_record_lists_at_most_twenty_problems_and_counts_the_rest() {
        let few: Vec<String> = (0..3).map(|i| i.to_string()).collect();
        assert_eq!(AppliedRecord::capped(few.clone()), few);
        let many = AppliedRecord::capped((0..10_000).map(|i| i.to_string()).collect());
        assert_eq!(many.len(), 21);
        assert_eq!(many[19], "19");
        assert_eq!(many[20], "... and 9980 more");
    }
}

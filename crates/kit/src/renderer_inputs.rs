//! What every renderer renders from: the newest complete model and the validated trust
//! material, kept current from the bus.

use futures_util::StreamExt;
use portico_bus::model::{Followed, Follower};
use portico_bus::nats::{watch_current_and_new, Buckets, BusError};
use portico_bus::{names, open, ModelRecord, TraceContext};
use portico_model::{SecretRef, TrustMaterial};
use std::collections::BTreeMap;

/// The renderers' inputs, kept current by `next`.
pub struct RendererInputs {
    model_watch: async_nats::jetstream::kv::Watch,
    /// The pieces of the model bucket, put together into `model` generation by generation.
    follower: Follower,
    trust_watch: async_nats::jetstream::kv::Watch,
    pub trust: BTreeMap<SecretRef, TrustMaterial>,
    /// Counts trust changes, so a renderer can tell two renderings of one generation apart.
    pub trust_revision: u64,
    /// When these inputs were opened (a session start), and when trust material last
    /// changed: what `hold_back` measures its graces from.
    clock: TrustClock,
    /// An entry taken from a watch and not yet applied: kept across a cancelled `next`.
    taken: Option<Entry>,
    /// Changes applied and not yet returned by `next` (when the first was, and the
    /// traces): kept across a cancelled `next`.
    changes: Option<(std::time::Instant, Vec<TraceContext>)>,
}

/// When a renderer's inputs were opened, and when their trust material last changed.
#[derive(Clone, Copy, Debug)]
pub struct TrustClock {
    pub opened: std::time::Instant,
    pub trust_changed: Option<std::time::Instant>,
}

impl TrustClock {
    /// For a rendering that lacks trust material: how much longer to hold it back (`None`:
    /// apply now). Two graces:
    /// - `TRUST_GRACE` after the inputs were opened: after a NATS restart the
    ///   memory-stored material comes back a moment after the model;
    /// - `ROTATION_GRACE` after the material changed: a renewed certificate or a rotated
    ///   CA reaches the renderers straight from the secrets service, before the model that
    ///   names its new content hash (which goes through the resolver). Rendered at once, the
    ///   old model finds no material of its hash: a host's certificate would be taken out,
    ///   a cluster's routes would answer 503, until the model follows. Held back, the proxy
    ///   keeps the previous material until the new model arrives (make before break).
    ///
    /// Applying after a grace is right: the material is really missing, and the routes
    /// fail closed.
    pub fn hold_back(&self, lacks_trust: bool) -> Option<std::time::Duration> {
        if !lacks_trust {
            return None;
        }
        let left = |since: std::time::Instant, grace: std::time::Duration| grace.checked_sub(since.elapsed());
        let opened = left(self.opened, TRUST_GRACE);
        let rotated = self.trust_changed.and_then(|at| left(at, ROTATION_GRACE));
        opened.into_iter().chain(rotated).max().filter(|d| !d.is_zero())
    }
}

/// How long a renderer holds back a rendering that lacks trust material, after its inputs
/// were opened.
pub const TRUST_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a renderer waits for the model to follow a change of trust material before it
/// applies a rendering that lacks some (see `TrustClock::hold_back`).
pub const ROTATION_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

impl RendererInputs {
    pub async fn new(buckets: &Buckets) -> Result<RendererInputs, BusError> {
        let model_watch = watch_current_and_new(&buckets.model).await?;
        let trust_watch = watch_current_and_new(&buckets.trust).await?;
        let mut inputs = RendererInputs {
            model_watch,
            follower: Follower::new(),
            trust_watch,
            trust: BTreeMap::new(),
            trust_revision: 0,
            clock: TrustClock { opened: std::time::Instant::now(), trust_changed: None },
            taken: None,
            changes: None,
        };
        inputs.catch_up_trust(buckets).await?;
        Ok(inputs)
    }

    /// For a rendering that lacks trust material: how much longer to wait for it before
    /// applying it anyway (`None`: apply now). Applying then is right: the material is
    /// really missing, and the routes fail closed.
    pub fn hold_back(&self, lacks_trust: bool) -> Option<std::time::Duration> {
        self.clock.hold_back(lacks_trust)
    }

    /// The newest complete model; an older version (epoch, generation) never replaces it.
    pub fn model(&self) -> Option<&ModelRecord> {
        self.follower.current()
    }

    /// The content digest of a piece of `model()` (see `Follower::piece_digest`).
    pub fn piece_digest(&self, id: &portico_model::PieceId) -> Option<u128> {
        self.follower.piece_digest(id)
    }

    /// When these inputs were opened, and when their trust material last changed.
    pub fn clock(&self) -> TrustClock {
        self.clock
    }

    /// Read the trust material already on the bus before the first model is handed out, so
    /// a restarted renderer never renders a model without material that exists (its
    /// routes would answer 503 for a moment).
    async fn catch_up_trust(&mut self, buckets: &Buckets) -> Result<(), BusError> {
        let failed = |reason: String| BusError::WatchFailed { bucket: names::TRUST, reason };
        if portico_bus::nats::messages(&buckets.trust).await? == 0 {
            return Ok(());
        }
        while let Some(entry) = self.trust_watch.next().await {
            let entry = entry.map_err(|e| failed(e.to_string()))?;
            let caught_up = entry.delta == 0;
            self.apply_trust(entry);
            if caught_up {
                return Ok(());
            }
        }
        Err(BusError::WatchEnded { bucket: names::TRUST })
    }

    /// Apply one trust entry; the trace it carried, or `None` when it could not be opened.
    fn apply_trust(&mut self, entry: async_nats::jetstream::kv::Entry) -> Option<TraceContext> {
        let trace = if entry.operation == async_nats::jetstream::kv::Operation::Put {
            match open::<TrustMaterial>(&entry.value) {
                Ok((material, trace)) => {
                    self.trust.insert(material.secret.clone(), material);
                    trace
                }
                Err(e) => {
                    undecodable();
                    tracing::warn!(key = %entry.key, error = %e, "skipping trust material that cannot be opened");
                    return None;
                }
            }
        } else {
            self.trust.retain(|s, _| names::secret_key(s) != entry.key);
            TraceContext::default()
        };
        self.trust_revision += 1;
        self.clock.trust_changed = Some(std::time::Instant::now());
        Some(trace)
    }

    /// Wait for the next change that matters (a newer model, or trust material added,
    /// replaced or removed) and apply it, together with every change that follows within
    /// `COALESCE_QUIET` of the last one (for at most `COALESCE_MAX`): 1,000 CA secrets
    /// arriving one by one become a few renderings, not 1,000. Returns the traces of the
    /// changes, oldest first, at most `MAX_CAUSES` (see `telemetry::fold_causes`). Entries that
    /// cannot be opened are logged and skipped.
    ///
    /// Cancel-safe: a caller may give up on `next` (a `select!` with a timer) and call it
    /// again without losing an entry or a change. An entry taken from a watch is kept until
    /// it is applied (applying one again is harmless), and the changes until returned.
    pub async fn next(&mut self, buckets: &Buckets) -> Result<Vec<TraceContext>, BusError> {
        while self.changes.is_none() {
            self.take_and_apply(buckets, None).await?;
        }
        let started = self.changes.as_ref().map(|(at, _)| *at).unwrap_or_else(std::time::Instant::now);
        while started.elapsed() < COALESCE_MAX {
            // Only the wait for an entry is given up after `COALESCE_QUIET`.
            if !self.take_and_apply(buckets, Some(COALESCE_QUIET)).await? {
                break;
            }
        }
        let mut traces = self.changes.take().map(|(_, traces)| traces).unwrap_or_default();
        traces.retain(|t| t.traceparent.is_some());
        Ok(traces)
    }

    /// Take the next entry (waiting at most `quiet`, if given: `false` when none came) and
    /// apply it, noting a change in `changes`.
    async fn take_and_apply(
        &mut self,
        buckets: &Buckets,
        quiet: Option<std::time::Duration>,
    ) -> Result<bool, BusError> {
        if self.taken.is_none() {
            let entry = match quiet {
                None => self.next_entry().await?,
                Some(quiet) => match tokio::time::timeout(quiet, self.next_entry()).await {
                    Ok(entry) => entry?,
                    Err(_) => return Ok(false),
                },
            };
            self.taken = Some(entry);
        }
        let entry = self.taken.clone().expect("taken above");
        let changed = self.apply(entry, buckets).await?;
        self.taken = None;
        if let Some(trace) = changed {
            let (_, traces) = self.changes.get_or_insert_with(|| (std::time::Instant::now(), Vec::new()));
            if traces.len() < MAX_CAUSES && trace.traceparent.is_some() {
                traces.push(trace);
            }
        }
        Ok(true)
    }

    async fn next_entry(&mut self) -> Result<Entry, BusError> {
        let failed = |bucket, e: async_nats::error::Error<async_nats::jetstream::kv::WatcherErrorKind>| {
            BusError::WatchFailed { bucket, reason: e.to_string() }
        };
        tokio::select! {
            entry = self.model_watch.next() => match entry {
                Some(Ok(entry)) => Ok(Entry::Model(entry)),
                Some(Err(e)) => Err(failed(names::MODEL, e)),
                None => Err(BusError::WatchEnded { bucket: names::MODEL }),
            },
            entry = self.trust_watch.next() => match entry {
                Some(Ok(entry)) => Ok(Entry::Trust(entry)),
                Some(Err(e)) => Err(failed(names::TRUST, e)),
                None => Err(BusError::WatchEnded { bucket: names::TRUST }),
            },
        }
    }

    /// Apply one entry; its trace when it changed something.
    async fn apply(&mut self, entry: Entry, buckets: &Buckets) -> Result<Option<TraceContext>, BusError> {
        match entry {
            Entry::Trust(entry) => Ok(self.apply_trust(entry)),
            // The follower hands out only generations newer than the last it did.
            Entry::Model(entry) => match self.follower.apply(buckets, &entry).await? {
                Followed::Model(trace) => Ok(Some(trace)),
                Followed::Nothing => Ok(None),
                Followed::Unreadable(what) => {
                    undecodable();
                    tracing::warn!(key = %entry.key, error = %what, "skipping a model entry that cannot be opened");
                    Ok(None)
                }
            },
        }
    }
}

/// Count an entry a renderer could not open (another schema version, garbage).
fn undecodable() {
    crate::admin::counter(
        "portico_renderer_undecodable_total",
        "Bus entries that could not be read (another schema version, garbage); skipped.",
        1.0,
    );
}

#[derive(Clone)]
enum Entry {
    Model(async_nats::jetstream::kv::Entry),
    Trust(async_nats::jetstream::kv::Entry),
}

/// The most traces one rendering links to (1,000 secrets folded into one rendering link
/// the first 32).
pub const MAX_CAUSES: usize = 32;

/// How long a renderer waits for more changes after one, and at most in all.
pub const COALESCE_QUIET: std::time::Duration = std::time::Duration::from_millis(5);
pub const COALESCE_MAX: std::time::Duration = std::time::Duration::from_millis(250);

#[cfg(test)]
mod tests {
    use super::{TrustClock, ROTATION_GRACE, TRUST_GRACE};
    use std::time::{Duration, Instant};

    fn ago(seconds: u64) -> Instant {
        Instant::now().checked_sub(Duration::from_secs(seconds)).expect("the clock is past that")
    }

    #[test]
    fn a_rendering_lacking_trust_waits_for_the_model_to_follow_a_trust_change() {
        let settled = TrustClock { opened: ago(60), trust_changed: Some(ago(30)) };
        assert_eq!(settled.hold_back(true), None, "long after both: apply, failing closed");
        assert_eq!(settled.hold_back(false), None, "nothing lacking: never held");
        let renewed = TrustClock { opened: ago(60), trust_changed: Some(ago(1)) };
        let wait = renewed.hold_back(true).expect("held back after a renewal");
        assert!(wait <= ROTATION_GRACE - Duration::from_secs(1) && wait > Duration::from_secs(3), "{wait:?}");
        let opened = TrustClock { opened: ago(1), trust_changed: None };
        let wait = opened.hold_back(true).expect("held back after a session start");
        assert!(wait <= TRUST_GRACE - Duration::from_secs(1) && wait > Duration::from_secs(8), "{wait:?}");
    }
}

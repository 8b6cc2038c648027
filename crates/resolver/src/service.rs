//! The resolver service: objects and verdicts from the bus in, the model and statuses out.
//!
//! - Nothing is published before every kind's initial-sync marker and the secrets
//!   service's verdict marker have been seen.
//! - Rebuilds are debounced: after a change, wait `holdoff` for quiet, but never more than
//!   `max_delay` from the first change.
//! - The model is published by piece (`portico_bus::model`): the pieces that changed, then
//!   an index with a generation one above the last published; nothing when no piece
//!   changed. Statuses only when they change.
//! - One instance is active: it holds the `resolver` lease and renews it with
//!   compare-and-set; a standby takes over when it has seen no renewal for `lease_ttl`
//!   (judged on its own monotonic clock, so clock skew cannot matter). A holder whose
//!   renewal fails stops publishing at once.

use crate::{Config, Incremental};
use futures_util::StreamExt;
use portico_bus::model::{current_index, Publisher};
use portico_bus::nats::{watch_current_and_new, Buckets, BusError};
use portico_bus::{codec, names, open, seal, LeaseRecord, TraceContext, Version};
use portico_model::{Kind, Object, ObjectStatus, SecretVerdict};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub bus: portico_bus::nats::ConnectConfig,
    pub resolver: Config,
    /// This instance's name in the lease.
    pub instance: String,
    pub holdoff: Duration,
    pub max_delay: Duration,
    pub lease_ttl: Duration,
}

impl ServiceConfig {
    pub fn new(bus: portico_bus::nats::ConnectConfig, resolver: Config, instance: String) -> Self {
        ServiceConfig {
            bus,
            resolver,
            instance,
            holdoff: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("the watch of {0} ended")]
    WatchEnded(&'static str),
}

const LEASE_KEY: &str = "resolver";

struct Lease {
    held: bool,
    /// The revision of the lease key last seen (ours or another holder's).
    revision: Option<u64>,
    /// When the lease key last changed, as this instance saw it.
    last_change: Instant,
}

async fn lease_step(buckets: &Buckets, config: &ServiceConfig, lease: &mut Lease) {
    let record = seal(&LeaseRecord { holder: config.instance.clone() }, &TraceContext::default());
    let result = match (lease.held, lease.revision) {
        // Renew ours, or take over a silent one, with compare-and-set on what we saw.
        (true, Some(rev)) => buckets.leases.update(LEASE_KEY, record.into(), rev).await.map_err(|e| e.to_string()),
        (false, Some(rev)) if lease.last_change.elapsed() >= config.lease_ttl => {
            buckets.leases.update(LEASE_KEY, record.into(), rev).await.map_err(|e| e.to_string())
        }
        (false, None) => buckets.leases.create(LEASE_KEY, record.into()).await.map_err(|e| e.to_string()),
        _ => return,
    };
    match result {
        Ok(revision) => {
            if !lease.held {
                tracing::info!(instance = %config.instance, "acquired the resolver lease; active");
            }
            lease.held = true;
            lease.revision = Some(revision);
            lease.last_change = Instant::now();
        }
        Err(e) => {
            if lease.held {
                tracing::warn!(instance = %config.instance, error = %e, "lost the resolver lease; standing by");
            }
            lease.held = false;
            // Learn the current revision so a later takeover compares against it.
            if let Ok(Some(entry)) = buckets.leases.entry(LEASE_KEY).await {
                if lease.revision != Some(entry.revision) {
                    lease.revision = Some(entry.revision);
                    lease.last_change = Instant::now();
                }
            }
        }
    }
}

#[derive(Default)]
struct Published {
    epoch: u64,
    generation: u64,
    /// The model index's revision after our last write (or as read on becoming active):
    /// the next write is a compare-and-set on it, so a holder that stalled past its lease
    /// cannot overwrite its successor's model. Pieces are fenced the same way (`Publisher`).
    model_revision: Option<u64>,
    /// What this holder wrote of the model; a new holder starts with a new one, which
    /// writes every piece once.
    pieces: Publisher,
    /// Status keys whose delete failed: deleted again at the next publish, never forgotten.
    undeleted: BTreeSet<String>,
    /// Status key → SHA-256 (first 16 bytes) of the status last written there: a status
    /// is written again only when it changed (the digest, not the encoding, is kept: at
    /// 10,000 routes the encodings were megabytes of the resolver's memory).
    statuses: BTreeMap<String, [u8; 16]>,
}

/// How a rebuild's model is read off the route table for publishing.
enum Read {
    /// The pieces the rebuild touched.
    Delta(portico_model::ModelDelta),
    Whole(portico_model::Model),
}

async fn publish(
    buckets: &Buckets,
    state: &mut Incremental,
    published: &mut Published,
    trace: &TraceContext,
) -> Result<(), BusError> {
    let started = std::time::Instant::now();
    // Only the units that read what changed are resolved again (`Incremental`).
    let changes = state.rebuild();
    // After a whole model, only the pieces the rebuild touched are read off and compared
    // (`Table::delta`); the whole model when this publisher has not written one, or when
    // the delta cannot be trusted (cluster names collided).
    let read = match published.pieces.can_publish_delta().then(|| state.delta()).flatten() {
        Some(delta) => Read::Delta(delta),
        None => {
            let model = state.model();
            state.model_read();
            Read::Whole(model)
        }
    };
    portico_kit::admin::counter("portico_resolver_rebuilds_total", "Rebuilds of the model.", 1.0);
    portico_kit::admin::counter(
        "portico_resolver_units_resolved_total",
        "Units (root HTTPProxies with their includes, Voyager Ingresses) resolved again.",
        changes.units as f64,
    );
    let resolved_ms = started.elapsed().as_millis() as u64;
    let version = Version { epoch: published.epoch, generation: published.generation + 1 };
    let outcome = match &read {
        Read::Delta(delta) => {
            published.pieces.publish_delta(buckets, delta, version, trace, published.model_revision).await?
        }
        Read::Whole(model) => {
            published.pieces.publish(buckets, model, version, trace, published.model_revision).await?
        }
    };
    portico_kit::admin::histogram(
        "portico_resolver_rebuild_duration_seconds",
        "How long rebuilds (resolve, and publishing what changed) took.",
        started.elapsed().as_secs_f64(),
    );
    if let Some((index, revision)) = outcome.index {
        portico_kit::admin::histogram_since(
            "portico_resolver_change_to_published_seconds",
            "From a change reaching the bus (the watcher's or the secrets service's write) to the model carrying it being published, debounce included.",
            &[],
            index.changed_at_ms,
        );
        published.generation = index.generation;
        published.model_revision = Some(revision);
        tracing::info!(
            generation = published.generation,
            epoch = published.epoch,
            model_hash = &index.digest[..12],
            units = changes.units,
            pieces_written = outcome.written,
            pieces_deleted = outcome.deleted,
            resolved_ms,
            elapsed_ms = started.elapsed().as_millis() as u64,
            trace_id = trace.trace_id().unwrap_or("-"),
            "model published"
        );
        portico_kit::admin::gauge(
            "portico_resolver_model_generation",
            "The generation of the last model published.",
            published.generation as f64,
        );
    }
    // Statuses of deleted objects first (and those whose delete failed before): a status
    // written by this publish then tells a reader that the deletes before it were tried.
    for gone in &changes.removed_statuses {
        let key = names::object_key(gone.kind, &gone.namespace, &gone.name);
        published.statuses.remove(&key);
        published.undeleted.insert(key);
    }
    let keys: Vec<String> = published.undeleted.iter().cloned().collect();
    for key in keys {
        match buckets.status.delete(&key).await {
            Ok(()) => {
                published.undeleted.remove(&key);
            }
            Err(e) => {
                portico_kit::admin::counter(
                    "portico_resolver_status_delete_failures_total",
                    "Statuses of deleted objects whose removal from the bus failed (each is retried with the next change).",
                    1.0,
                );
                tracing::warn!(key, error = %e, "a status of a deleted object could not be removed; retrying with the next change")
            }
        }
    }
    // A new holder has no cache and writes every status once; after that, only the
    // statuses the rebuild changed.
    let candidates: Vec<&ObjectStatus> = if published.statuses.is_empty() {
        state.statuses().collect()
    } else {
        changes.statuses.iter().filter_map(|r| state.status_of(r)).collect()
    };
    for status in candidates {
        let key = names::object_key(status.object.kind, &status.object.namespace, &status.object.name);
        // The bus carries the problems; readers render Contour's shape with `to_contour`.
        let digest: [u8; 16] = {
            use sha2::Digest as _;
            sha2::Sha256::digest(codec::encode(status))[..16].try_into().expect("16 bytes")
        };
        if published.statuses.get(&key) != Some(&digest) {
            buckets.status.put(&key, seal(status, trace).into()).await.map_err(|e| BusError::StoreFailed {
                operation: "putting",
                bucket: names::STATUS.to_owned(),
                key: key.clone(),
                reason: e.to_string(),
            })?;
            published.statuses.insert(key, digest);
        }
    }
    Ok(())
}

/// Changes waiting for the debounce, and the traces they came with.
struct Pending {
    first: Instant,
    last: Instant,
    /// The traces of the changes, oldest first, at most `renderer_inputs::MAX_CAUSES`: the rebuild
    /// continues the first and links the others (`telemetry::fold_causes`).
    traces: Vec<TraceContext>,
    /// When the oldest of these changes reached the bus (wall-clock ms), for changes made
    /// while this session ran (not the history it read at its start).
    changed_at_ms: Option<u64>,
}

impl Pending {
    fn add(pending: &mut Option<Pending>, trace: TraceContext, changed_at_ms: Option<u64>) {
        let now = Instant::now();
        let p =
            pending.get_or_insert_with(|| Pending { first: now, last: now, traces: Vec::new(), changed_at_ms: None });
        p.last = now;
        p.changed_at_ms = match (p.changed_at_ms, changed_at_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if trace.traceparent.is_some() && p.traces.len() < portico_kit::renderer_inputs::MAX_CAUSES {
            p.traces.push(trace);
        }
    }
}

/// The epoch, generation and hash on the bus, so that a new holder continues the sequence
/// (and republishes every status, whose cache it does not have). When there is no record it
/// can read (NATS lost its state, another schema, a failed read), it starts a new epoch: its
/// generations then order after every earlier one, so no renderer ignores them.
async fn current_published(buckets: &Buckets) -> Published {
    let model_revision = buckets.model.entry(names::MODEL_KEY).await.ok().flatten().map(|e| e.revision);
    let read = match current_index(&buckets.model).await {
        Ok(Some((index, _))) => Ok(index),
        Ok(None) => Err("no model on the bus".to_owned()),
        Err(e) => Err(e.to_string()),
    };
    match read {
        Ok(index) => {
            Published { epoch: index.epoch, generation: index.generation, model_revision, ..Published::default() }
        }
        Err(why) => {
            let epoch = new_epoch();
            tracing::info!(epoch, reason = %why, "starting a new epoch of model generations");
            Published { epoch, model_revision, ..Published::default() }
        }
    }
}

/// A new epoch: the wall clock in milliseconds, which orders after every earlier epoch as
/// long as the clock does not go back further than the time between two epochs.
fn new_epoch() -> u64 {
    portico_bus::unix_ms().max(1)
}

/// Log and count an entry that cannot be opened (another schema version, garbage).
fn undecodable(key: &str, error: &portico_bus::OpenError) {
    portico_kit::admin::counter(
        "portico_resolver_undecodable_total",
        "Bus entries that could not be read (another schema version, garbage); skipped.",
        1.0,
    );
    tracing::warn!(key, error = %error, "skipping an entry that cannot be opened");
}

/// Run until `shutdown` completes. Each session (see `portico_bus::nats::supervise`) reads
/// the objects and verdicts again and waits for their sync markers before publishing.
pub async fn run(config: ServiceConfig, shutdown: impl Future<Output = ()>) -> Result<(), ServiceError> {
    tracing::info!(instance = %config.instance, "resolver running");
    let bus = config.bus.clone();
    let mut config = config;
    portico_bus::nats::supervise(
        &bus,
        &[names::MODEL, names::MODEL_STORE, names::STATUS, names::LEASES],
        &mut config,
        shutdown,
        session,
    )
    .await?;
    tracing::info!(instance = %config.instance, "resolver stopped");
    Ok(())
}

async fn session(config: &mut ServiceConfig, buckets: Buckets) -> Result<std::convert::Infallible, ServiceError> {
    let (config, buckets) = (&*config, &buckets);
    let session_started_ms = portico_bus::unix_ms();
    let mut objects = watch_current_and_new(&buckets.objects).await?;
    let mut verdicts = watch_current_and_new(&buckets.verdicts).await?;
    let mut state = Incremental::new(config.resolver.clone());
    let mut synced_kinds: BTreeSet<Kind> = BTreeSet::new();
    let mut verdicts_synced = false;
    let mut published = Published::default();
    let mut lease = Lease { held: false, revision: None, last_change: Instant::now() };
    let mut holder = None;
    if let Ok(Some(entry)) = buckets.leases.entry(LEASE_KEY).await {
        lease.revision = Some(entry.revision);
        holder = open::<LeaseRecord>(&entry.value).ok().map(|(l, _)| l.holder);
        // Our own lease from before this session (a reconnect): renew it at once.
        lease.held = holder.as_deref() == Some(config.instance.as_str());
    }
    lease_step(buckets, config, &mut lease).await;
    if !lease.held {
        tracing::info!(
            instance = %config.instance,
            holder = holder.as_deref().unwrap_or("-"),
            "standing by: another instance holds the resolver lease"
        );
    }
    let mut renew = tokio::time::interval(config.lease_ttl / 3);
    // Debounce: the changes not yet published.
    let mut pending: Option<Pending> = None;
    let mut was_active = false;
    loop {
        let deadline = pending.as_ref().map(|p| (p.last + config.holdoff).min(p.first + config.max_delay));
        tokio::select! {
            _ = renew.tick() => {
                lease_step(buckets, config, &mut lease).await;
                if lease.held && !was_active {
                    // Newly active: continue from what is on the bus now, and publish what we
                    // know (the previous holder may have missed changes).
                    published = current_published(buckets).await;
                    Pending::add(&mut pending, TraceContext::default(), None);
                }
                was_active = lease.held;
            }
            () = async { tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => {
                let ready = synced_kinds.len() == Kind::ALL.len() && verdicts_synced;
                portico_kit::admin::set_ready(ready);
                portico_kit::admin::gauge("portico_resolver_active", "1 while this instance holds the lease.", if lease.held { 1.0 } else { 0.0 });
                if ready && lease.held {
                    // Fence: renew by compare-and-set before publishing. A holder that
                    // stalled past its lease (a long pause, SIGSTOP) finds it taken and
                    // publishes nothing; the model itself is written by compare-and-set too.
                    lease_step(buckets, config, &mut lease).await;
                }
                if ready && lease.held {
                    let changes = pending.take().expect("a deadline means a pending change");
                    let span = tracing::info_span!(
                        parent: None,
                        "resolver.rebuild",
                        changes_traced = changes.traces.len(),
                        candidate_generation = published.generation + 1
                    );
                    let trace = portico_kit::telemetry::fold_causes(&span, &changes.traces);
                    published.pieces.changed_at_ms = changes.changed_at_ms;
                    match publish(buckets, &mut state, &mut published, &trace).instrument(span).await {
                        Ok(()) => portico_kit::admin::release_memory(),
                        Err(e @ BusError::Fenced { .. }) => {
                            tracing::warn!(instance = %config.instance, error = %e, "another resolver published since this one last held the lease; standing by");
                            lease.held = false;
                            // Should the lease come back to this instance, it starts afresh
                            // from what is on the bus (every piece written again).
                            was_active = false;
                        }
                        Err(e) => return Err(e.into()),
                    }
                } else {
                    pending = None; // published when the sync completes or the lease is won
                    if ready {
                        tracing::debug!(instance = %config.instance, "standing by: not publishing");
                    }
                }
            }
            entry = objects.next() => {
                let entry = match entry {
                    Some(Ok(e)) => e,
                    Some(Err(e)) => return Err(BusError::WatchFailed { bucket: names::OBJECTS, reason: e.to_string() }.into()),
                    None => return Err(ServiceError::WatchEnded(names::OBJECTS)),
                };
                let mut trace = TraceContext::default();
                if let Some(kind) = entry.key.strip_prefix("sync.") {
                    if let Some(kind) = Kind::ALL.into_iter().find(|k| names::kind_token(*k) == kind) {
                        synced_kinds.insert(kind);
                    }
                } else if entry.operation == async_nats::jetstream::kv::Operation::Put {
                    match open::<Object>(&entry.value) {
                        Ok((object, t)) => {
                            trace = t;
                            if let Err(e) = state.apply(object) {
                                tracing::warn!(error = %e, "ignored");
                            }
                        }
                        Err(e) => { undecodable(&entry.key, &e); continue; }
                    }
                } else if let Some((kind, ns, name)) = names::parse_object_key(&entry.key) {
                    state.remove(&portico_model::ObjectRef { kind, namespace: ns, name });
                }
                Pending::add(&mut pending, trace, changed_since(&entry, session_started_ms));
            }
            entry = verdicts.next() => {
                let entry = match entry {
                    Some(Ok(e)) => e,
                    Some(Err(e)) => return Err(BusError::WatchFailed { bucket: names::VERDICTS, reason: e.to_string() }.into()),
                    None => return Err(ServiceError::WatchEnded(names::VERDICTS)),
                };
                let mut trace = TraceContext::default();
                if entry.key == "sync" {
                    verdicts_synced = true;
                } else if entry.operation == async_nats::jetstream::kv::Operation::Put {
                    match open::<SecretVerdict>(&entry.value) {
                        Ok((verdict, t)) => { trace = t; state.set_verdict(verdict); }
                        Err(e) => { undecodable(&entry.key, &e); continue; }
                    }
                } else if let Some(secret) = names::parse_secret_key(&entry.key) {
                    state.remove_verdict(&secret);
                }
                Pending::add(&mut pending, trace, changed_since(&entry, session_started_ms));
            }
        }
    }
}

/// When `entry` reached the bus (wall-clock ms), if that was after `session_started_ms`:
/// the history a session reads at its start is not a change to measure.
fn changed_since(entry: &async_nats::jetstream::kv::Entry, session_started_ms: u64) -> Option<u64> {
    let at = u64::try_from(entry.created.unix_timestamp_nanos() / 1_000_000).ok()?;
    (at >= session_started_ms).then_some(at)
}

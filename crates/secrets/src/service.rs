//! The secrets service: watches raw Secrets on the bus, validates them, and publishes the
//! verdict (for the resolver, no key material) and the validated trust material (for the
//! renderers). Stateless apart from the Secrets it has seen, which it re-validates
//! periodically because certificates expire without their Secret changing. Several
//! replicas may run side by side: a value is written by compare-and-set unless the bus
//! already holds the same one, so a change is written once, by whichever replica is
//! first, and the others find it there.

use crate::validate_secret;
use futures_util::StreamExt;
use portico_bus::nats::{watch_current_and_new, Buckets, BusError, ConnectConfig};
use portico_bus::{names, open, seal, TraceContext};
use portico_model::{Secret, SecretVerdict, TrustMaterial};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use tracing::Instrument;

/// Plain, documented configuration; the binary fills it from flags and environment.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub bus: ConnectConfig,
    /// How often every known Secret is validated again (expiry and the 14-day warning
    /// change with time alone).
    pub revalidate_every: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("watching {bucket}: {reason}")]
    WatchFailed { bucket: &'static str, reason: String },
}

/// What the loop knows: the latest Secret per key, and what it last published.
#[derive(Default)]
struct State {
    secrets: BTreeMap<String, Secret>,
    published: BTreeMap<String, (Vec<u8>, Vec<u8>)>,
    /// Entries that could not be opened (another schema version, garbage); never fatal.
    pub undecodable: u64,
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Validate and publish one Secret, unless the result is what was published last. The
/// span continues `cause`, the trace of the change that brought the Secret (none when the
/// periodic revalidation found that time alone changed the verdict).
async fn publish(buckets: &Buckets, state: &mut State, key: &str, cause: &TraceContext) -> Result<(), BusError> {
    let Some(secret) = state.secrets.get(key) else { return Ok(()) };
    let (verdict, material) = validate_secret(secret, now());
    // Compare the payloads without the trace, so a new trace alone does not republish.
    let fingerprint = (portico_bus::codec::encode(&verdict), portico_bus::codec::encode(&material));
    if state.published.get(key) == Some(&fingerprint) {
        return Ok(());
    }
    let span = tracing::info_span!(parent: None, "secrets.verdict", secret = %key);
    portico_kit::telemetry::continue_trace(&span, cause);
    let trace = portico_kit::telemetry::outgoing(&span, cause);
    put_verdict(buckets, state, key, (verdict, material, fingerprint), &trace).instrument(span).await
}

async fn put_verdict(
    buckets: &Buckets,
    state: &mut State,
    key: &str,
    (verdict, material, fingerprint): (SecretVerdict, TrustMaterial, (Vec<u8>, Vec<u8>)),
    trace: &TraceContext,
) -> Result<(), BusError> {
    let failed = |bucket: &str, e: String| BusError::StoreFailed {
        operation: "putting",
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        reason: e,
    };
    let wrote_trust = put_unless_same(&buckets.trust, key, seal(&material, trace), &fingerprint.1)
        .await
        .map_err(|e| failed(names::TRUST, e))?;
    let wrote_verdict = put_unless_same(&buckets.verdicts, key, seal(&verdict, trace), &fingerprint.0)
        .await
        .map_err(|e| failed(names::VERDICTS, e))?;
    if !wrote_trust && !wrote_verdict {
        // Another replica published this very verdict first.
        state.published.insert(key.to_owned(), fingerprint);
        portico_kit::admin::counter(
            "portico_secrets_verdicts_already_published_total",
            "Verdicts another replica had published already (not written again).",
            1.0,
        );
        return Ok(());
    }
    tracing::info!(
        secret = %verdict.secret,
        ca = verdict.ca.as_ref().map(|_| "valid").unwrap_or_else(|e| e),
        key_pair = verdict.key_pair.as_ref().map(|_| "valid").unwrap_or_else(|e| e),
        trace_id = trace.trace_id().unwrap_or("-"),
        "published verdict"
    );
    state.published.insert(key.to_owned(), fingerprint);
    portico_kit::admin::counter(
        "portico_secrets_verdicts_published_total",
        "Verdicts published (new or changed).",
        1.0,
    );
    match verdict.ca.as_ref().ok().and_then(|ca| ca.certificates.iter().map(|c| c.not_after).min()) {
        Some(expiry) => portico_kit::admin::gauge_with(
            "portico_secrets_ca_expiry_timestamp_seconds",
            "When the first certificate of a valid CA bundle expires (Unix seconds).",
            "secret",
            key,
            expiry as f64,
        ),
        None => portico_kit::admin::remove_with("portico_secrets_ca_expiry_timestamp_seconds", "secret", key),
    }
    Ok(())
}

/// Write `sealed` under `key` unless the bucket holds the same payload (whatever its
/// trace); by compare-and-set on the revision read, so that of replicas publishing the
/// same change one writes and the others find it. Whether this call wrote.
async fn put_unless_same(
    kv: &async_nats::jetstream::kv::Store,
    key: &str,
    sealed: Vec<u8>,
    payload: &[u8],
) -> Result<bool, String> {
    use async_nats::jetstream::kv::Operation;
    for _ in 0..5 {
        let current = kv.entry(key).await.map_err(|e| e.to_string())?;
        let written = match current.filter(|e| e.operation == Operation::Put) {
            Some(entry) => {
                if portico_bus::envelope::open_raw(&entry.value).is_ok_and(|(p, _)| p == payload) {
                    return Ok(false);
                }
                kv.update(key, sealed.clone().into(), entry.revision).await.map(|_| ()).map_err(|e| e.to_string())
            }
            None => kv.create(key, sealed.clone().into()).await.map(|_| ()).map_err(|e| e.to_string()),
        };
        match written {
            Ok(()) => return Ok(true),
            // Another writer got in between: read again.
            Err(e) => tracing::debug!(key, error = %e, "the value changed while writing; reading it again"),
        }
    }
    // Five writers in a row got in first: write over them (the value is derived; the
    // latest Secret's verdict is what counts).
    kv.put(key, sealed.into()).await.map(|_| true).map_err(|e| e.to_string())
}

async fn remove(buckets: &Buckets, state: &mut State, key: &str) -> Result<(), BusError> {
    state.secrets.remove(key);
    state.published.remove(key);
    for (bucket, store) in [(names::VERDICTS, &buckets.verdicts), (names::TRUST, &buckets.trust)] {
        store.delete(key).await.map_err(|e| BusError::StoreFailed {
            operation: "deleting",
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
    }
    portico_kit::admin::remove_with("portico_secrets_ca_expiry_timestamp_seconds", "secret", key);
    tracing::info!(key, "secret deleted; verdict and trust material removed");
    Ok(())
}

async fn mark_synced(buckets: &Buckets) -> Result<(), BusError> {
    buckets.verdicts.put(names::SECRETS_SYNC_KEY, seal(&true, &TraceContext::default()).into()).await.map_err(|e| {
        BusError::StoreFailed {
            operation: "putting",
            bucket: names::VERDICTS.to_owned(),
            key: names::SECRETS_SYNC_KEY.to_owned(),
            reason: e.to_string(),
        }
    })?;
    portico_kit::admin::set_ready(true);
    tracing::info!("verdicts for the initial Secrets published");
    Ok(())
}

/// Run until `shutdown` completes. Each session (see `portico_bus::nats::supervise`)
/// reads every Secret again and publishes verdicts and material it has not published in
/// that session, so a restarted NATS gets its memory-stored trust material back.
pub async fn run(config: ServiceConfig, shutdown: impl Future<Output = ()>) -> Result<(), ServiceError> {
    tracing::info!("secrets service running");
    let bus = config.bus.clone();
    let mut config = config;
    portico_bus::nats::supervise(&bus, &[names::VERDICTS, names::TRUST], &mut config, shutdown, session).await?;
    tracing::info!("secrets service stopped");
    Ok(())
}

async fn session(config: &mut ServiceConfig, buckets: Buckets) -> Result<std::convert::Infallible, ServiceError> {
    let buckets = &buckets;
    let mut watch = watch_current_and_new(&buckets.secrets).await?;
    let mut state = State::default();
    let mut tick = tokio::time::interval(config.revalidate_every);
    tick.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let keys: Vec<String> = state.secrets.keys().cloned().collect();
                for key in keys {
                    publish(buckets, &mut state, &key, &TraceContext::default()).await?;
                }
            }
            entry = watch.next() => {
                let entry = match entry {
                    Some(Ok(entry)) => entry,
                    Some(Err(e)) => return Err(ServiceError::WatchFailed { bucket: names::SECRETS, reason: e.to_string() }),
                    None => return Err(ServiceError::WatchFailed { bucket: names::SECRETS, reason: "the watch ended".into() }),
                };
                if entry.key == names::SECRETS_SYNC_KEY {
                    // Everything before the watcher's marker has been handled (the stream is
                    // ordered): the initial Secrets have their verdicts.
                    if entry.operation == async_nats::jetstream::kv::Operation::Put {
                        mark_synced(buckets).await?;
                    }
                    continue;
                }
                match entry.operation {
                    async_nats::jetstream::kv::Operation::Put => match open::<Secret>(&entry.value) {
                        Ok((secret, trace)) => {
                            let key = names::secret_key(&secret.reference());
                            if key == entry.key {
                                state.secrets.insert(key.clone(), secret);
                                publish(buckets, &mut state, &key, &trace).await?;
                            } else {
                                state.undecodable += 1;
                                portico_kit::admin::counter("portico_secrets_undecodable_total", "Entries that could not be read (another schema version, garbage).", 1.0);
                                tracing::warn!(entry = %entry.key, secret = %key, "secret stored under another key; ignored");
                            }
                        }
                        Err(e) => {
                            state.undecodable += 1;
                            portico_kit::admin::counter("portico_secrets_undecodable_total", "Entries that could not be read (another schema version, garbage).", 1.0);
                            tracing::warn!(key = %entry.key, error = %e, undecodable = state.undecodable, "skipping an entry that cannot be opened");
                        }
                    },
                    _ => remove(buckets, &mut state, &entry.key).await?,
                }
            }
        }
    }
}

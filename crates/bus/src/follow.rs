//! What every renderer follows: the newest model and the validated trust material.

use crate::nats::{get_blob, watch_current_and_new, Buckets, BusError};
use crate::{names, open, ModelRecord, TraceContext};
use futures_util::StreamExt;
use portico_model::{SecretRef, TrustMaterial};
use std::collections::BTreeMap;

/// The renderers' inputs, kept current by `next`.
pub struct RendererInputs {
    model_watch: async_nats::jetstream::kv::Watch,
    trust_watch: async_nats::jetstream::kv::Watch,
    /// The newest model seen; an older generation never replaces it.
    pub model: Option<ModelRecord>,
    pub trust: BTreeMap<SecretRef, TrustMaterial>,
    /// Counts trust changes, so a renderer can tell two renderings of one generation apart.
    pub trust_revision: u64,
}

impl RendererInputs {
    pub async fn new(buckets: &Buckets) -> Result<RendererInputs, BusError> {
        let model_watch =
            buckets.model.watch_with_history(names::MODEL_KEY).await.map_err(|e| BusError::StoreFailed {
                operation: "watching",
                bucket: names::MODEL.to_owned(),
                key: names::MODEL_KEY.to_owned(),
                reason: e.to_string(),
            })?;
        let trust_watch = watch_current_and_new(&buckets.trust).await?;
        Ok(RendererInputs { model_watch, trust_watch, model: None, trust: BTreeMap::new(), trust_revision: 0 })
    }

    /// Wait for the next change that matters (a newer model, or trust material added,
    /// replaced or removed) and apply it; returns the trace it carried. Entries that cannot
    /// be opened are logged and skipped.
    pub async fn next(&mut self, buckets: &Buckets) -> Result<TraceContext, BusError> {
        use async_nats::jetstream::kv::Operation;
        loop {
            tokio::select! {
                entry = self.model_watch.next() => {
                    let entry = match entry {
                        Some(Ok(entry)) => entry,
                        Some(Err(e)) => { tracing::warn!(error = %e, "model watch error"); continue; }
                        None => return Err(BusError::WatchEnded { bucket: names::MODEL }),
                    };
                    if entry.operation != Operation::Put {
                        continue;
                    }
                    let Some(bytes) = get_blob(&buckets.model, &buckets.model_store, names::MODEL_KEY).await? else {
                        continue;
                    };
                    match open::<ModelRecord>(&bytes) {
                        Ok((record, trace)) => {
                            if self.model.as_ref().is_none_or(|m| record.generation > m.generation) {
                                self.model = Some(record);
                                return Ok(trace);
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "skipping a model that cannot be opened"),
                    }
                }
                entry = self.trust_watch.next() => {
                    let entry = match entry {
                        Some(Ok(entry)) => entry,
                        Some(Err(e)) => { tracing::warn!(error = %e, "trust watch error"); continue; }
                        None => return Err(BusError::WatchEnded { bucket: names::TRUST }),
                    };
                    let trace = if entry.operation == Operation::Put {
                        match open::<TrustMaterial>(&entry.value) {
                            Ok((material, trace)) => {
                                self.trust.insert(material.secret.clone(), material);
                                trace
                            }
                            Err(e) => {
                                tracing::warn!(key = %entry.key, error = %e, "skipping trust material that cannot be opened");
                                continue;
                            }
                        }
                    } else {
                        self.trust.retain(|s, _| names::secret_key(&s.namespace, &s.name) != entry.key);
                        TraceContext::default()
                    };
                    self.trust_revision += 1;
                    return Ok(trace);
                }
            }
        }
    }
}

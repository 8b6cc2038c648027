//! Status write-back, in the watcher's Kubernetes mode: the resolver's statuses (from the
//! `portico-status` bucket) patched onto HTTPProxies and Voyager Ingresses through their
//! `status` subresource, in Contour's shape; onto GatewayClasses, Gateways, HTTPRoutes and
//! BackendTLSPolicies in the Gateway API's (Portico's entries only); Events on Kubernetes
//! Ingresses.
//!
//! - Only the holder of a coordination.k8s.io Lease writes (and publishes objects to the
//!   bus, see `ActiveLease`), so several watcher replicas never fight; a holder whose
//!   renewal fails stops writing at once. A takeover needs the lease to have stayed
//!   unchanged for its duration on this replica's own clock, so clock skew between nodes
//!   does not matter.
//! - Writes are fenced: before each batch the holder renews by compare-and-set on the
//!   Lease's resourceVersion, and it stops a batch once that renewal is a lease duration
//!   old on its own monotonic clock. A holder that stalled (a long GC pause, SIGSTOP, a
//!   frozen node) past its lease finds the Lease taken and writes nothing. What no Lease
//!   can fence is a stall between the renewal and a request already on its way; the
//!   patch is then one the new holder rewrites.
//! - A status is patched only when it differs from the last one this writer patched for
//!   the object (a new leader patches everything once), and at most `max_per_second`.

use crate::crds;
use crate::service::ServiceError;
use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use portico_bus::nats::{watch_current_and_new, Buckets, BusError};
use portico_bus::{names, open, TraceContext};
use portico_model::{Kind, ObjectRef, ObjectStatus};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

#[derive(Clone, Debug)]
pub struct StatusConfig {
    /// Where the Lease lives, and its name.
    pub lease_namespace: String,
    pub lease_name: String,
    /// This replica's identity in the Lease.
    pub identity: String,
    pub lease_duration: Duration,
    /// Patches per second at most (the API server's fairness matters more than speed).
    pub max_per_second: u32,
    /// Where clients reach the proxies (an IP or a host name): the
    /// `status.loadBalancer.ingress` of the Kubernetes Ingresses Portico serves.
    pub publish_address: Option<String>,
}

/// What outlives a bus session: what to write, what was written, the lease.
pub struct StatusWriter {
    client: Client,
    config: StatusConfig,
    /// Contour-shaped status JSON by object, as the resolver last said, with the trace of
    /// the rebuild that said it (the patch is the last span of that change's trace).
    desired: BTreeMap<ObjectRef, (serde_json::Value, TraceContext)>,
    /// The last status patched per object while holding the lease (as the resolver said
    /// it, before the writer's stamps).
    written: BTreeMap<ObjectRef, serde_json::Value>,
    /// Per object, the `Valid` condition's status last written and when it last flipped:
    /// `lastTransitionTime` changes only when the status does.
    transitions: BTreeMap<ObjectRef, (String, serde_json::Value)>,
    /// Where the last write stopped: the next starts after it, so objects whose patch keeps
    /// failing do not take every tick's budget from the others.
    cursor: Option<ObjectRef>,
    lease: LeaseState,
    /// When this replica last renewed the Lease while holding it (`None` while it does not
    /// hold it), for the object publisher (`ActiveLease`).
    active: tokio::sync::watch::Sender<Option<Instant>>,
    /// Kubernetes Events on the Ingresses (networking.k8s.io/v1) Portico serves: they have
    /// no conditions, so their problems are told this way (SPEC section 7).
    recorder: kube::runtime::events::Recorder,
}

/// Whether this watcher replica is the active one: it holds the Lease, renewed less than a
/// lease duration ago on its own monotonic clock. Only the active replica publishes objects
/// (and writes statuses); the others keep their Kubernetes watches current and stand by.
#[derive(Clone)]
pub struct ActiveLease {
    renewed: tokio::sync::watch::Receiver<Option<Instant>>,
    duration: Duration,
}

impl ActiveLease {
    pub fn fresh(&self) -> bool {
        renewed_within(*self.renewed.borrow(), self.duration)
    }

    /// Until the Lease was stepped again, or at most `within`: freshness also runs out
    /// with time alone.
    pub async fn changed(&mut self, within: Duration) {
        let _ = tokio::time::timeout(within, async {
            if self.renewed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        })
        .await;
    }
}

/// Whether a renewal at `renewed` (this replica's monotonic clock) still holds: the one
/// rule of freshness, for the object publisher and the status writer alike.
fn renewed_within(renewed: Option<Instant>, duration: Duration) -> bool {
    renewed.is_some_and(|at| at.elapsed() < duration)
}

#[derive(Default)]
struct LeaseState {
    held: bool,
    /// The resourceVersion last seen, and when (on our clock) it last changed.
    seen: Option<(String, Instant)>,
    /// When this writer last created or renewed the Lease (on its monotonic clock).
    renewed: Option<Instant>,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl StatusWriter {
    pub fn new(client: Client, config: StatusConfig) -> StatusWriter {
        let reporter = kube::runtime::events::Reporter {
            controller: "portico-watcher".into(),
            instance: Some(config.identity.clone()),
        };
        StatusWriter {
            recorder: kube::runtime::events::Recorder::new(client.clone(), reporter),
            client,
            config,
            desired: BTreeMap::new(),
            written: BTreeMap::new(),
            transitions: BTreeMap::new(),
            cursor: None,
            lease: LeaseState::default(),
            active: tokio::sync::watch::Sender::new(None),
        }
    }

    /// Whether this replica is the active one, as its Lease steps say.
    pub fn active(&self) -> ActiveLease {
        ActiveLease { renewed: self.active.subscribe(), duration: self.config.lease_duration }
    }

    /// One step of the lease: create, renew, take over, or stand by. Whether we hold it.
    async fn lease_step(&mut self) -> bool {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.config.lease_namespace);
        let name = &self.config.lease_name;
        let me = &self.config.identity;
        let spec = LeaseSpec {
            holder_identity: Some(me.clone()),
            lease_duration_seconds: Some(self.config.lease_duration.as_secs().max(1) as i32),
            renew_time: Some(now()),
            ..Default::default()
        };
        let was_held = self.lease.held;
        self.lease.held = match api.get_opt(name).await {
            Err(e) => {
                tracing::warn!(lease = %name, error = %e, "reading the watcher lease failed; not writing");
                false
            }
            Ok(None) => {
                let lease = Lease {
                    metadata: kube::api::ObjectMeta { name: Some(name.clone()), ..Default::default() },
                    spec: Some(LeaseSpec { acquire_time: Some(now()), ..spec }),
                };
                let created = api.create(&PostParams::default(), &lease).await.is_ok();
                if created {
                    self.lease.renewed = Some(Instant::now());
                }
                created
            }
            Ok(Some(current)) => {
                let version = current.metadata.resource_version.clone().unwrap_or_default();
                let holder = current.spec.as_ref().and_then(|s| s.holder_identity.clone());
                if self.lease.seen.as_ref().is_none_or(|(v, _)| *v != version) {
                    self.lease.seen = Some((version, Instant::now()));
                }
                let silent = self.lease.seen.as_ref().is_some_and(|(_, at)| at.elapsed() >= self.config.lease_duration);
                if holder.as_deref() == Some(me.as_str()) || silent || holder.is_none() {
                    let mut lease = current.clone();
                    let acquire = if holder.as_deref() == Some(me.as_str()) {
                        current.spec.as_ref().and_then(|s| s.acquire_time.clone())
                    } else {
                        Some(now())
                    };
                    lease.spec = Some(LeaseSpec { acquire_time: acquire, ..spec });
                    // replace carries the resourceVersion: a concurrent writer makes it fail.
                    match api.replace(name, &PostParams::default(), &lease).await {
                        Ok(updated) => {
                            self.lease.seen = updated.metadata.resource_version.map(|v| (v, Instant::now()));
                            self.lease.renewed = Some(Instant::now());
                            true
                        }
                        Err(_) => false,
                    }
                } else {
                    false
                }
            }
        };
        self.active.send_replace(if self.lease.held { self.lease.renewed } else { None });
        if self.lease.held && !was_held {
            tracing::info!(identity = %me, "acquired the watcher lease; publishing objects and writing statuses");
            self.written.clear(); // write everything once: the previous writer may have missed some
            self.transitions.clear(); // and read the transitions off the objects again
        } else if !self.lease.held && was_held {
            tracing::warn!(identity = %me, "lost the watcher lease; no longer publishing or writing");
        }
        self.lease.held
    }

    /// Patch up to `budget` statuses that differ from what was written.
    async fn write(&mut self, budget: usize) {
        let rotated = rotated(&self.desired, self.cursor.as_ref());
        let pending: Vec<(ObjectRef, serde_json::Value, TraceContext)> = rotated
            .filter(|(o, (s, _))| self.written.get(*o) != Some(s))
            .take(budget)
            .map(|(o, (s, t))| (o.clone(), s.clone(), t.clone()))
            .collect();
        if pending.is_empty() {
            return;
        }
        // Fence: renew by compare-and-set first. A holder that stalled past its lease finds
        // it taken (the resourceVersion moved) and writes nothing.
        if !self.lease_step().await {
            return;
        }
        if let Some((last, _, _)) = pending.last() {
            self.cursor = Some(last.clone());
        }
        for (object, status, trace) in pending {
            // A batch that runs (or stalls) past the lease stops: the lease may be another's.
            if !renewed_within(self.lease.renewed, self.config.lease_duration) {
                tracing::warn!("the watcher lease is a lease duration old; stopping this batch until it is renewed");
                return;
            }
            let span = tracing::info_span!(parent: None, "watcher.status", object = %object);
            portico_kit::telemetry::continue_trace(&span, &trace);
            let (ns, name) = (object.namespace.as_str(), object.name.as_str());
            if object.kind.is_gateway_api() {
                match self.write_gateway_api(&object, &status).instrument(span.clone()).await {
                    Ok(()) => {
                        tracing::info!(parent: &span, object = %object, "Gateway API status written");
                        self.written.insert(object, status);
                    }
                    Err(kube::Error::Api(e)) if e.code == 404 => {
                        self.desired.remove(&object);
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        // Another writer (another controller's entry) came between our read
                        // and our patch: read again next tick.
                        tracing::debug!(parent: &span, object = %object, "status changed under us; retrying")
                    }
                    Err(e) => {
                        tracing::warn!(parent: &span, object = %object, error = %e, "writing the status failed; retrying")
                    }
                }
                continue;
            }
            if object.kind == Kind::Ingress {
                match self.tell_ingress(&object, &status).instrument(span.clone()).await {
                    Ok(()) => {
                        tracing::info!(parent: &span, object = %object, status = %status["currentStatus"], "events and load balancer written");
                        self.written.insert(object, status);
                    }
                    Err(kube::Error::Api(e)) if e.code == 404 => {
                        self.desired.remove(&object);
                    }
                    Err(e) => {
                        tracing::warn!(parent: &span, object = %object, error = %e, "telling the Ingress failed; retrying")
                    }
                }
                continue;
            }
            let stamped = self.stamp(&object, &status).instrument(span.clone()).await;
            let patch = Patch::Merge(serde_json::json!({ "status": stamped }));
            let params = PatchParams::default();
            let result = match object.kind {
                Kind::HttpProxy => Api::<crds::HTTPProxy>::namespaced(self.client.clone(), ns)
                    .patch_status(name, &params, &patch)
                    .instrument(span.clone())
                    .await
                    .map(|_| ()),
                Kind::VoyagerIngress => Api::<crds::VoyagerIngress>::namespaced(self.client.clone(), ns)
                    .patch_status(name, &params, &patch)
                    .instrument(span.clone())
                    .await
                    .map(|_| ()),
                _ => Ok(()),
            };
            let _entered = span.enter();
            match result {
                Ok(()) => {
                    tracing::info!(object = %object, status = %status["currentStatus"], "status written");
                    let condition = &stamped["conditions"][0];
                    if let Some(flipped) = condition["status"].as_str() {
                        self.transitions
                            .insert(object.clone(), (flipped.to_owned(), condition["lastTransitionTime"].clone()));
                    }
                    self.written.insert(object, status);
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    // The object is gone; its status will be deleted from the bus too.
                    self.desired.remove(&object);
                }
                Err(e) => tracing::warn!(object = %object, error = %e, "writing the status failed; retrying"),
            }
        }
    }

    /// A Gateway API object's status (SPEC section 6): read the object, put Portico's
    /// entries in place of Portico's (other controllers' `parents`/`ancestors` kept), keep
    /// each condition's `lastTransitionTime` unless it flipped, and patch with the
    /// resourceVersion read, so a concurrent writer's entry is never overwritten (409, read
    /// again next tick).
    async fn write_gateway_api(&self, object: &ObjectRef, desired: &serde_json::Value) -> Result<(), kube::Error> {
        use crate::gateway_api::{backendtlspolicies, gatewayclasses, gateways, httproutes};
        use kube::api::{ApiResource, DynamicObject};
        let status: Option<portico_model::GatewayApiStatus> =
            serde_json::from_value(desired.clone()).map_err(kube::Error::SerdeError)?;
        let Some(status) = status else { return Ok(()) };
        let resource = match object.kind {
            Kind::GatewayClass => ApiResource::erase::<gatewayclasses::GatewayClass>(&()),
            Kind::Gateway => ApiResource::erase::<gateways::Gateway>(&()),
            Kind::HttpRoute => ApiResource::erase::<httproutes::HttpRoute>(&()),
            Kind::BackendTlsPolicy => ApiResource::erase::<backendtlspolicies::BackendTlsPolicy>(&()),
            _ => return Ok(()),
        };
        let api: Api<DynamicObject> = if object.kind == Kind::GatewayClass {
            Api::all_with(self.client.clone(), &resource)
        } else {
            Api::namespaced_with(self.client.clone(), object.namespace.as_str(), &resource)
        };
        let name = object.name.as_str();
        let current = api.get_status(name).await?;
        let previous = current.data.get("status").cloned().unwrap_or_default();
        let now = serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ))
        .unwrap_or_default();
        let body = status.to_json(object.kind, &previous, now.as_str().unwrap_or_default());
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": current.metadata.resource_version },
            "status": body,
        });
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        Ok(())
    }

    /// A Kubernetes Ingress has no conditions: its problems become Events (reason
    /// `PorticoError` or `PorticoWarning`, the statuses' messages; `PorticoValid` when
    /// there are none), and `status.loadBalancer.ingress` is the configured address.
    async fn tell_ingress(&self, object: &ObjectRef, status: &serde_json::Value) -> Result<(), kube::Error> {
        use k8s_openapi::api::networking::v1 as networking;
        use kube::runtime::events::{Event, EventType};
        let api: Api<networking::Ingress> = Api::namespaced(self.client.clone(), object.namespace.as_str());
        let current = api.get(object.name.as_str()).await?;
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("networking.k8s.io/v1".into()),
            kind: Some("Ingress".into()),
            namespace: Some(object.namespace.to_string()),
            name: Some(object.name.to_string()),
            uid: current.metadata.uid.clone(),
            resource_version: current.metadata.resource_version.clone(),
            ..Default::default()
        };
        let condition = &status["conditions"][0];
        let mut events: Vec<(EventType, &str, String)> = Vec::new();
        for (list, reason) in [("errors", "PorticoError"), ("warnings", "PorticoWarning")] {
            for problem in condition[list].as_array().into_iter().flatten() {
                let message = problem["message"].as_str().unwrap_or_default();
                events.push((EventType::Warning, reason, message.to_owned()));
            }
        }
        if events.is_empty() {
            events.push((EventType::Normal, "PorticoValid", "Valid Ingress: served by Portico".to_owned()));
        }
        for (type_, reason, note) in events {
            // An Event's note holds at most 1 kB.
            let note: String = note.chars().take(1000).collect();
            let event =
                Event { type_, reason: reason.into(), note: Some(note), action: "Resolve".into(), secondary: None };
            self.recorder.publish(&event, &reference).await?;
        }
        if let Some(address) = &self.config.publish_address {
            let entry = if address.parse::<std::net::IpAddr>().is_ok() {
                serde_json::json!({ "ip": address })
            } else {
                serde_json::json!({ "hostname": address })
            };
            let patch = Patch::Merge(serde_json::json!({ "status": { "loadBalancer": { "ingress": [entry] } } }));
            api.patch_status(object.name.as_str(), &PatchParams::default(), &patch).await?;
        }
        Ok(())
    }

    /// The status as patched: the resolver's, with the `Valid` condition stamped with
    /// `lastTransitionTime` (kept while the condition's status stays the same, from what
    /// this writer wrote or what the object already says; now when it flips) and
    /// `observedGeneration` (the object's generation as it is read now). Contour's CRD
    /// requires the first; without it every patch would be refused.
    async fn stamp(&mut self, object: &ObjectRef, status: &serde_json::Value) -> serde_json::Value {
        let mut stamped = status.clone();
        let Some(condition) = stamped["conditions"].get_mut(0) else { return stamped };
        let flipped_to = condition["status"].as_str().unwrap_or_default().to_owned();
        let current = self.current(object).await;
        let known = self.transitions.get(object).filter(|(s, _)| *s == flipped_to).map(|(_, t)| t.clone());
        let on_object = current.as_ref().and_then(|o| {
            let c = o.data["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Valid")?.clone();
            (c["status"] == flipped_to.as_str() && c["lastTransitionTime"].is_string())
                .then(|| c["lastTransitionTime"].clone())
        });
        let now = serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ))
        .unwrap_or_default();
        condition["lastTransitionTime"] = known.or(on_object).unwrap_or(now);
        if let Some(generation) = current.and_then(|o| o.metadata.generation) {
            condition["observedGeneration"] = serde_json::json!(generation);
        }
        stamped
    }

    /// The object as the API server has it now (`None` when it cannot be read: the patch
    /// then says what it can).
    async fn current(&self, object: &ObjectRef) -> Option<kube::api::DynamicObject> {
        use kube::api::{ApiResource, DynamicObject};
        let resource = match object.kind {
            Kind::HttpProxy => ApiResource::erase::<crds::HTTPProxy>(&()),
            Kind::VoyagerIngress => ApiResource::erase::<crds::VoyagerIngress>(&()),
            _ => return None,
        };
        Api::<DynamicObject>::namespaced_with(self.client.clone(), object.namespace.as_str(), &resource)
            .get_status(object.name.as_str())
            .await
            .ok()
    }

    fn apply_entry(&mut self, entry: async_nats::jetstream::kv::Entry) {
        use async_nats::jetstream::kv::Operation;
        if entry.operation == Operation::Put {
            match open::<ObjectStatus>(&entry.value) {
                Ok((status, trace)) => {
                    let desired = if status.object.kind.is_gateway_api() {
                        serde_json::to_value(&status.gateway).unwrap_or_default()
                    } else {
                        serde_json::to_value(status.to_contour()).unwrap_or_default()
                    };
                    self.desired.insert(status.object, (desired, trace));
                }
                Err(e) => tracing::warn!(key = %entry.key, error = %e, "skipping a status that cannot be opened"),
            }
        } else if let Some((kind, namespace, name)) = names::parse_object_key(&entry.key) {
            let object = ObjectRef { kind, namespace, name };
            self.desired.remove(&object);
            self.written.remove(&object);
            self.transitions.remove(&object);
            if matches!(kind, Kind::HttpRoute | Kind::BackendTlsPolicy) {
                // No Gateway of Portico's uses it any more (or it is gone): take Portico's
                // entries out of its parents or ancestors, leaving other controllers' (a
                // deleted object answers 404 and is forgotten).
                let none = portico_model::GatewayApiStatus::Parents(Vec::new());
                let desired = serde_json::to_value(Some(none)).unwrap_or_default();
                self.desired.insert(object, (desired, TraceContext::default()));
            }
        }
    }
}

/// The entries of `map` in the order a writer that stopped at `cursor` takes them: those
/// after the cursor first, then from the start up to it.
fn rotated<'a, K: Ord, V>(map: &'a BTreeMap<K, V>, cursor: Option<&K>) -> impl Iterator<Item = (&'a K, &'a V)> {
    let (before, after): (Vec<_>, Vec<_>) = map.iter().partition(|(k, _)| cursor.is_some_and(|c| *k <= c));
    after.into_iter().chain(before)
}

/// A bus session of the status writer: follow the statuses, keep the lease, write.
pub async fn session(w: &mut StatusWriter, buckets: Buckets) -> Result<std::convert::Infallible, ServiceError> {
    let mut statuses = watch_current_and_new(&buckets.status).await?;
    let per_tick = (w.config.max_per_second / 10).max(1) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut renew = tokio::time::interval(w.config.lease_duration / 3);
    loop {
        tokio::select! {
            entry = statuses.next() => match entry {
                Some(Ok(entry)) => w.apply_entry(entry),
                Some(Err(e)) => return Err(BusError::WatchFailed { bucket: names::STATUS, reason: e.to_string() }.into()),
                None => return Err(BusError::WatchEnded { bucket: names::STATUS }.into()),
            },
            _ = renew.tick() => { w.lease_step().await; }
            _ = tick.tick() => {
                if w.lease.held {
                    w.write(per_tick).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rotated;
    use std::collections::BTreeMap;

    #[test]
    fn each_tick_starts_after_where_the_last_one_stopped() {
        let map: BTreeMap<u32, ()> = (1..=5).map(|k| (k, ())).collect();
        let keys = |cursor: Option<&u32>| rotated(&map, cursor).map(|(k, _)| *k).collect::<Vec<_>>();
        assert_eq!(keys(None), vec![1, 2, 3, 4, 5]);
        assert_eq!(keys(Some(&2)), vec![3, 4, 5, 1, 2], "failing 1 and 2 do not take the next tick's budget");
        assert_eq!(keys(Some(&5)), vec![1, 2, 3, 4, 5]);
    }
}

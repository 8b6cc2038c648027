//! The model on the bus by piece (DESIGN.md, "Propagation at scale").
//!
//! Bucket `portico-model`: `piece.<32 hex>` → one `ModelPiece` (a cluster, a virtual host,
//! the rest; the hex is a digest of the piece's identity), and `current` → the `ModelIndex`
//! of the newest generation: its version, how many pieces make it and their digest (the
//! wrapping sum of a 128-bit digest of each piece's key and encoding). A one-object change
//! writes the few pieces it changed and a small index, whatever the size of the model.
//!
//! The resolver ([`Publisher`]) writes the changed pieces, deletes the removed ones, then
//! the index (compare-and-set, so a holder that stalled past its lease never overwrites its
//! successor's). Pieces are written compare-and-set on the revision the publisher last saw
//! too, so a stalled holder's late write fails instead of mixing into the successor's
//! model. A renderer ([`Follower`]) watches the whole bucket and holds a generation only
//! when the pieces it has add up to the index's count and digest: streams are ordered, so
//! that is the case when the index arrives, unless a newer generation's pieces are already
//! in (then the newer index follows).
//!
//! Storage is bounded: one value per key (history 1), so the bucket holds one model; a
//! piece too large for a message goes to the object store under its key's two slots.

use crate::nats::{blob_of_entry, delete_blob, put_piece_blob, Buckets, BusError};
use crate::{codec, names, open, seal, ModelRecord, TraceContext, Version};
use async_nats::jetstream::kv;
use futures_util::{StreamExt, TryStreamExt};
use portico_model::{Model, ModelPiece, ModelPieceRef, PieceId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

/// The value of `portico-model/current`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIndex {
    /// See `ModelRecord::epoch`.
    pub epoch: u64,
    pub generation: u64,
    /// How many pieces make this generation.
    pub pieces: u64,
    /// The wrapping sum of the pieces' digests, 32 hex digits: the model's content hash.
    pub digest: String,
    /// Wall-clock milliseconds since the Unix epoch when the oldest change this generation
    /// carries reached the bus (0: not known, e.g. the first model of a session). With
    /// `published_at_ms`, what the latency histograms are measured from.
    pub changed_at_ms: u64,
    /// Wall-clock milliseconds when the index was written.
    pub published_at_ms: u64,
}

impl ModelIndex {
    pub fn version(&self) -> Version {
        Version { epoch: self.epoch, generation: self.generation }
    }
}

/// Keys of pieces start with this.
pub const PIECE_PREFIX: &str = "piece.";

/// The key of the piece with this identity (`ModelPiece::identity`): a digest, so that no
/// host or cluster name has to fit the key grammar.
pub fn piece_key(identity: &str) -> String {
    format!("{PIECE_PREFIX}{}", &portico_model::hex(&Sha256::digest(identity.as_bytes()))[..32])
}

/// A piece's part of the model digest: 128 bits of SHA-256 over its key and encoding.
fn piece_digest(key: &str, encoded: &[u8]) -> u128 {
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    h.update([0]);
    h.update(encoded);
    u128::from_be_bytes(h.finalize()[..16].try_into().expect("16 bytes"))
}

/// The digest the renderers' follower gives a piece (`Follower::piece_digest`), made
/// without a bus: for renderings in tests and benchmarks, keyed as the services' are.
pub fn digest_of(piece: &ModelPieceRef<'_>) -> u128 {
    piece_digest(&piece_key(&piece.identity()), &codec::encode(piece))
}

/// `digest_of` every piece of `model`.
pub fn digests_of(model: &Model) -> HashMap<PieceId, u128> {
    model.piece_refs().iter().map(|piece| (piece.id(), digest_of(piece))).collect()
}

fn digest_hex(sum: u128) -> String {
    format!("{sum:032x}")
}

/// A cheap check of whether a piece changed since it was last written.
fn check(encoded: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    encoded.hash(&mut h);
    h.finish()
}

/// What the publisher last wrote under a key.
struct Written {
    check: u64,
    digest: u128,
    revision: u64,
}

/// What `Publisher::publish` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// Pieces written and deleted. Both zero: the model did not change, and no generation
    /// was published.
    pub written: usize,
    pub deleted: usize,
    /// The index written, and its revision.
    pub index: Option<(ModelIndex, u64)>,
}

/// The resolver's side: publishes models as the pieces that changed plus an index.
#[derive(Default)]
pub struct Publisher {
    /// Piece key → what was written there, for every piece key in the bucket (after the
    /// first publish: before it, the bucket's keys are read).
    written: BTreeMap<String, Written>,
    /// The revision of every piece key found in the bucket that this publisher has not
    /// written itself (until the first publish: pieces of a predecessor).
    found: BTreeMap<String, u64>,
    synced: bool,
    sum: u128,
    /// When the oldest change of the next publish reached the bus (`ModelIndex::changed_at_ms`);
    /// taken by the next publish.
    pub changed_at_ms: Option<u64>,
}

/// How many pieces are written at once.
const IN_FLIGHT: usize = 64;

impl Publisher {
    /// A publisher that knows nothing of the bucket: its first publish reads the keys there,
    /// writes every piece and deletes the pieces the model does not have.
    pub fn new() -> Publisher {
        Publisher::default()
    }

    /// The digest of what was last published (`ModelIndex::digest`).
    pub fn digest(&self) -> String {
        digest_hex(self.sum)
    }

    /// Publish `model` as generation `version` unless it equals what was last published:
    /// changed pieces, removed pieces, then the index, written only if `portico-model/current`
    /// is still at `index_revision` (`None`: only if it does not exist). Every write is
    /// compare-and-set: `BusError::Fenced` means another writer got in between.
    pub async fn publish(
        &mut self,
        buckets: &Buckets,
        model: &Model,
        version: Version,
        trace: &TraceContext,
        index_revision: Option<u64>,
    ) -> Result<Published, BusError> {
        self.publish_with(buckets, model.piece_refs(), None, version, trace, Some(index_revision)).await
    }

    /// Whether `publish_delta` can follow: this publisher wrote a whole model, and no piece
    /// of a predecessor is left that it has not written.
    pub fn can_publish_delta(&self) -> bool {
        self.synced && self.found.is_empty() && !self.written.is_empty()
    }

    /// `publish` of the model that `delta` makes of the last one published: only the
    /// delta's pieces are encoded and compared, its gone pieces deleted. The index is the
    /// same as a whole publish of that model would write. Only when `can_publish_delta`.
    pub async fn publish_delta(
        &mut self,
        buckets: &Buckets,
        delta: &portico_model::ModelDelta,
        version: Version,
        trace: &TraceContext,
        index_revision: Option<u64>,
    ) -> Result<Published, BusError> {
        assert!(self.can_publish_delta(), "a delta follows a whole model this publisher wrote");
        self.publish_with(buckets, delta.piece_refs(), Some(&delta.gone), version, trace, Some(index_revision)).await
    }

    /// `publish` without compare-and-set (tests, tools): writes over whatever is there.
    pub async fn publish_unfenced(
        &mut self,
        buckets: &Buckets,
        model: &Model,
        version: Version,
        trace: &TraceContext,
    ) -> Result<Published, BusError> {
        self.publish_with(buckets, model.piece_refs(), None, version, trace, None).await
    }

    /// Write `pieces` where they changed, and delete: with `gone` `None` (a whole model)
    /// every piece key not among `pieces`; else the keys of `gone` (a delta).
    async fn publish_with(
        &mut self,
        buckets: &Buckets,
        pieces: Vec<ModelPieceRef<'_>>,
        gone: Option<&[PieceId]>,
        version: Version,
        trace: &TraceContext,
        fence: Option<Option<u64>>,
    ) -> Result<Published, BusError> {
        let kv = &buckets.model;
        if !self.synced {
            self.found = piece_revisions(kv).await?;
            self.synced = true;
        }
        let fenced = fence.is_some();
        // The pieces whose encoding differs from what was written.
        let mut wanted: BTreeMap<String, ()> = BTreeMap::new();
        let mut changes: Vec<(String, Vec<u8>, u64)> = Vec::new();
        // Borrowed: encoded as the pieces they stand for, without copying the model.
        for piece in pieces {
            let key = piece_key(&piece.identity());
            let encoded = codec::encode(&piece);
            let c = check(&encoded);
            if self.written.get(&key).is_none_or(|w| w.check != c) {
                changes.push((key.clone(), encoded, c));
            }
            wanted.insert(key, ());
        }
        let removed: Vec<(String, Option<u64>)> = match gone {
            None => self
                .written
                .iter()
                .map(|(k, w)| (k.clone(), Some(w.revision)))
                .chain(self.found.iter().map(|(k, r)| (k.clone(), Some(*r))))
                .filter(|(k, _)| !wanted.contains_key(k))
                .collect(),
            Some(gone) => gone
                .iter()
                .map(|id| piece_key(&id.identity()))
                .filter(|k| !wanted.contains_key(k))
                .filter_map(|k| self.written.get(&k).map(|w| w.revision).map(|r| (k, Some(r))))
                .collect(),
        };
        if changes.is_empty() && removed.is_empty() {
            return Ok(Published::default());
        }
        // Owned futures (clones of the handles, which name buckets, not connections): the
        // service's future must be Send for every lifetime, which borrowed ones defeat.
        let writes: Vec<_> = changes
            .iter()
            .map(|(key, encoded, _)| {
                let expected = self.written.get(key).map(|w| w.revision).or_else(|| self.found.get(key).copied());
                let (kv, store, key) = (kv.clone(), buckets.model_store.clone(), key.clone());
                let sealed = seal_encoded(encoded, trace);
                async move { put_piece_blob(&kv, &store, &key, &sealed, fenced.then_some(expected)).await }
            })
            .collect();
        let revisions: Vec<u64> = futures_util::stream::iter(writes).buffered(IN_FLIGHT).try_collect().await?;
        for ((key, encoded, c), revision) in changes.iter().zip(revisions) {
            let digest = piece_digest(key, encoded);
            self.found.remove(key);
            if let Some(old) = self.written.insert(key.clone(), Written { check: *c, digest, revision }) {
                self.sum = self.sum.wrapping_sub(old.digest);
            }
            self.sum = self.sum.wrapping_add(digest);
        }
        let deletes: Vec<_> = removed
            .iter()
            .map(|(key, revision)| {
                let (kv, store, key) = (kv.clone(), buckets.model_store.clone(), key.clone());
                let expected = if fenced { *revision } else { None };
                async move { delete_blob(&kv, &store, &key, expected).await }
            })
            .collect();
        futures_util::stream::iter(deletes).buffered(IN_FLIGHT).try_collect::<Vec<()>>().await?;
        for (key, _) in &removed {
            self.found.remove(key);
            if let Some(old) = self.written.remove(key) {
                self.sum = self.sum.wrapping_sub(old.digest);
            }
        }
        let index = ModelIndex {
            epoch: version.epoch,
            generation: version.generation,
            pieces: self.written.len() as u64,
            digest: self.digest(),
            changed_at_ms: self.changed_at_ms.take().unwrap_or(0),
            published_at_ms: crate::unix_ms(),
        };
        let value: Vec<u8> = seal(&index, trace);
        let revision = match fence {
            None => kv.put(names::MODEL_KEY, value.into()).await.map_err(|e| store_failed(kv, "putting", e))?,
            Some(Some(expected)) => {
                kv.update(names::MODEL_KEY, value.into(), expected).await.map_err(|e| fenced_error(kv, e))?
            }
            Some(None) => kv.create(names::MODEL_KEY, value.into()).await.map_err(|e| fenced_error(kv, e))?,
        };
        Ok(Published { written: changes.len(), deleted: removed.len(), index: Some((index, revision)) })
    }
}

fn store_failed(kv: &kv::Store, operation: &'static str, e: impl std::fmt::Display) -> BusError {
    BusError::StoreFailed {
        operation,
        bucket: kv.name.clone(),
        key: names::MODEL_KEY.to_owned(),
        reason: e.to_string(),
    }
}

fn fenced_error(kv: &kv::Store, e: impl std::fmt::Display) -> BusError {
    BusError::Fenced { bucket: kv.name.clone(), key: names::MODEL_KEY.to_owned(), reason: e.to_string() }
}

/// An envelope around an already encoded payload (the pieces are encoded once, for their
/// change check, their digest and the envelope).
fn seal_encoded(encoded: &[u8], trace: &TraceContext) -> Vec<u8> {
    crate::envelope::seal_raw(encoded.to_vec(), trace)
}

/// Publish `model` as generation `version` over whatever is on the bus (tests, tools).
pub async fn publish_whole(buckets: &Buckets, model: &Model, version: Version) -> Result<Published, BusError> {
    Publisher::new().publish_unfenced(buckets, model, version, &TraceContext::default()).await
}

/// The revision of every piece key in the bucket.
async fn piece_revisions(kv: &kv::Store) -> Result<BTreeMap<String, u64>, BusError> {
    let failed = |e: String| BusError::WatchFailed { bucket: names::MODEL, reason: e };
    let mut out = BTreeMap::new();
    if crate::nats::messages(kv).await? == 0 {
        return Ok(out);
    }
    let mut watch = crate::nats::watch_current_and_new(kv).await?;
    while let Some(entry) = watch.next().await {
        let entry = entry.map_err(|e| failed(e.to_string()))?;
        if entry.key.starts_with(PIECE_PREFIX) && entry.operation == kv::Operation::Put {
            out.insert(entry.key.clone(), entry.revision);
        }
        if entry.delta == 0 {
            break;
        }
    }
    Ok(out)
}

/// The latest index in the model bucket and its revision; `Ok(None)` when there is none.
pub async fn current_index(kv: &kv::Store) -> Result<Option<(ModelIndex, u64)>, BusError> {
    let entry = kv.entry(names::MODEL_KEY).await.map_err(|e| store_failed(kv, "getting", e))?;
    let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else { return Ok(None) };
    let (index, _) = open::<ModelIndex>(&entry.value).map_err(|e| BusError::ValueCorrupt {
        bucket: kv.name.clone(),
        key: names::MODEL_KEY.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(Some((index, entry.revision)))
}

/// The renderers' side: the digests of the bucket's pieces, and the newest complete
/// generation, kept by applying the pieces each generation changed to the one before (no
/// second copy of the model, and no putting together of 20,000 pieces per change).
#[derive(Default)]
pub struct Follower {
    /// Piece key → its digest, for every piece in the bucket.
    digests: HashMap<String, u128>,
    sum: u128,
    /// Pieces put (`Some`) or deleted (`None`) since the last generation handed out.
    pending: HashMap<String, Option<ModelPiece>>,
    /// Piece key → what of `current`'s model it is.
    in_model: HashMap<String, PieceId>,
    /// What of `current`'s model a piece is → its digest: a content hash renderers key
    /// their caches with (equal digests, equal pieces).
    by_id: HashMap<PieceId, u128>,
    /// The newest index seen whose pieces are not all in yet.
    waiting: Option<(ModelIndex, TraceContext)>,
    /// The last generation handed out.
    current: Option<ModelRecord>,
}

/// What one entry of the model bucket did.
pub enum Followed {
    /// A newer generation is complete (`Follower::current`), with the trace of its index.
    Model(TraceContext),
    /// Nothing to hand out yet.
    Nothing,
    /// The entry could not be read (logged by the caller).
    Unreadable(String),
}

impl Follower {
    pub fn new() -> Follower {
        Follower::default()
    }

    /// The last complete generation handed out.
    pub fn current(&self) -> Option<&ModelRecord> {
        self.current.as_ref()
    }

    /// The digest of a piece of `current`'s model (a content hash: two generations whose
    /// piece has the same digest have the same piece).
    pub fn piece_digest(&self, id: &PieceId) -> Option<u128> {
        self.by_id.get(id).copied()
    }

    fn held(&self) -> Option<Version> {
        self.current.as_ref().map(ModelRecord::version)
    }

    /// Apply one entry of the model bucket.
    pub async fn apply(&mut self, buckets: &Buckets, entry: &kv::Entry) -> Result<Followed, BusError> {
        let put = entry.operation == kv::Operation::Put;
        if entry.key == names::MODEL_KEY {
            if !put {
                return Ok(Followed::Nothing);
            }
            match open::<ModelIndex>(&entry.value) {
                // Epoch, then generation: a resolver that started a new epoch (NATS lost
                // its state) is followed, never ignored.
                Ok((index, trace)) => {
                    if self.held().is_none_or(|h| index.version() > h) {
                        self.waiting = Some((index, trace));
                    }
                }
                Err(e) => return Ok(Followed::Unreadable(format!("the model index: {e}"))),
            }
        } else if entry.key.starts_with(PIECE_PREFIX) {
            if let Some(old) = self.digests.remove(&entry.key) {
                self.sum = self.sum.wrapping_sub(old);
            }
            self.pending.insert(entry.key.clone(), None);
            if put {
                let bytes = match blob_of_entry(&buckets.model, &buckets.model_store, &entry.key, &entry.value).await {
                    Ok(Some(bytes)) => bytes,
                    Ok(None) => return Ok(Followed::Nothing),
                    // Skipped, not fatal: the session would read it again at every start.
                    // Without the piece, no generation adds up until it is written again.
                    Err(BusError::ValueCorrupt { reason, .. }) => {
                        return Ok(Followed::Unreadable(format!("model piece {}: {reason}", entry.key)))
                    }
                    Err(e) => return Err(e),
                };
                let opened = crate::envelope::open_raw(&bytes).map_err(|e| e.to_string()).and_then(|(payload, _)| {
                    codec::decode::<ModelPiece>(&payload).map(|p| (payload, p)).map_err(|e| e.to_string())
                });
                match opened {
                    Ok((payload, piece)) => {
                        let digest = piece_digest(&entry.key, &payload);
                        self.sum = self.sum.wrapping_add(digest);
                        self.digests.insert(entry.key.clone(), digest);
                        self.pending.insert(entry.key.clone(), Some(piece));
                    }
                    Err(e) => return Ok(Followed::Unreadable(format!("model piece {}: {e}", entry.key))),
                }
            }
        } else {
            return Ok(Followed::Nothing);
        }
        Ok(self.complete().map_or(Followed::Nothing, Followed::Model))
    }

    /// The waiting generation, once the pieces held add up to it: the pending pieces go
    /// into the model.
    fn complete(&mut self) -> Option<TraceContext> {
        let (index, _) = self.waiting.as_ref()?;
        if index.pieces != self.digests.len() as u64 || index.digest != digest_hex(self.sum) {
            return None;
        }
        let (index, trace) = self.waiting.take()?;
        let mut record = self.current.take().unwrap_or_else(|| ModelRecord {
            epoch: 0,
            generation: 0,
            hash: String::new(),
            changed_at_ms: 0,
            published_at_ms: 0,
            model: Model::default(),
        });
        for (key, change) in self.pending.drain() {
            if let Some(old) = self.in_model.remove(&key) {
                self.by_id.remove(&old);
                record.model.remove_piece(&old);
            }
            if let Some(piece) = change {
                let id = piece.id();
                if let Some(digest) = self.digests.get(&key) {
                    self.by_id.insert(id.clone(), *digest);
                }
                self.in_model.insert(key, id);
                record.model.put_piece(piece);
            }
        }
        record.epoch = index.epoch;
        record.generation = index.generation;
        record.hash = index.digest;
        record.changed_at_ms = index.changed_at_ms;
        record.published_at_ms = index.published_at_ms;
        self.current = Some(record);
        Some(trace)
    }
}

/// The model on the bus now, put together from its pieces; `None` when there is no index or
/// its pieces do not add up (a publish in progress: read again).
pub async fn read_current(buckets: &Buckets) -> Result<Option<ModelRecord>, BusError> {
    let kv = &buckets.model;
    if crate::nats::messages(kv).await? == 0 {
        return Ok(None);
    }
    let mut watch = crate::nats::watch_current_and_new(kv).await?;
    let mut follower = Follower::new();
    let mut newest = None;
    while let Some(entry) = watch.next().await {
        let entry = entry.map_err(|e| BusError::WatchFailed { bucket: names::MODEL, reason: e.to_string() })?;
        if let Followed::Model(_) = follower.apply(buckets, &entry).await? {
            newest = follower.current().cloned();
        }
        if entry.delta == 0 {
            break;
        }
    }
    Ok(newest)
}

//! The watcher's file source on the bus: YAML files and directories → the objects bucket
//! (and raw Secrets → the secrets bucket, nowhere else), with initial-sync markers.
//!
//! It scans when the file system says something changed (inotify, through `notify`), and
//! otherwise only every `rescan_every` as a safety net (a missed event, a file system
//! without notifications): idle, it reads nothing. A scan reads the files off the async
//! workers, re-decodes only those whose content changed, and a change is published once
//! a scan `poll_every` later sees the same thing (the debounce).
//! Safety rules, because a half-saved file is normal:
//! - a file that cannot be read or decoded keeps its last good objects published;
//! - if a configured path cannot be read at all, nothing changes this cycle;
//! - on start, keys on the bus that the files no longer define are deleted, so a restart
//!   converges to the files.

use crate::manifests::{decode_str, manifest_files, Decoded};
use futures_util::StreamExt;
use portico_bus::nats::{Buckets, BusError, ConnectConfig};
use portico_bus::{codec, names, seal, TraceContext};
use portico_model::{Kind, Object};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub paths: Vec<PathBuf>,
    pub bus: ConnectConfig,
    /// The debounce: after a change, the files are read again this much later, and the
    /// change is published once two reads agree (so it is live within about two).
    pub poll_every: Duration,
    /// The safety rescan when no notification came.
    pub rescan_every: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("connecting to the Kubernetes API: {0}")]
    Kubernetes(String),
    #[error("listing the keys of {bucket}: {reason}")]
    ListFailed { bucket: &'static str, reason: String },
    #[error("the watch of {watch} ended ({reason}); the watcher stops so that it is restarted with every watch")]
    WatchEnded { watch: String, reason: String },
}

/// Where an object goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Bucket {
    Objects,
    Secrets,
}

/// One file's last decoding.
struct FileState {
    sha256: [u8; 32],
    /// Its metadata when it was read, once that can be trusted to tell a change (see
    /// `Stat::settled`): a scan then skips reading and hashing it while the metadata is
    /// the same. A 7 MiB manifest was read and hashed twice per change (the debounce).
    stat: Option<Stat>,
    /// The objects of the last version of the file that decoded without problems, each
    /// with its encoding (made once, when the file is decoded).
    good: Vec<Arc<Encoded>>,
}

/// An object and its encoding on the bus, compared with what was published.
pub(crate) struct Encoded {
    pub(crate) object: Object,
    pub(crate) bytes: Vec<u8>,
}

impl Encoded {
    pub(crate) fn new(object: Object) -> Arc<Encoded> {
        let bytes = codec::encode(&object);
        Arc::new(Encoded { object, bytes })
    }
}

/// The objects the sources define, by key.
pub(crate) type Desired = BTreeMap<(Bucket, String), Arc<Encoded>>;

/// Every file's last decoding.
#[derive(Default)]
struct Files {
    files: BTreeMap<PathBuf, FileState>,
    /// The files in the order the last scan read them (the configured paths' order): a
    /// later definition of an object wins.
    order: Vec<PathBuf>,
    /// How many times a scan read a file (the others it skipped).
    reads: u64,
    /// `SETTLE`, but for tests.
    settle: Option<Duration>,
}

#[derive(Default)]
pub(crate) struct State {
    files: Files,
    /// What is on the bus: key → encoded object (empty when unknown, i.e. found at start).
    pub(crate) published: BTreeMap<(Bucket, String), Vec<u8>>,
    /// The fingerprint of the previous scan's files, for the debounce.
    previous: Option<[u8; 32]>,
    pub(crate) synced: bool,
}

pub(crate) fn key_of(object: &Object) -> (Bucket, String) {
    let meta = object.meta();
    match object {
        Object::Secret(s) => (Bucket::Secrets, names::secret_key(&s.reference())),
        _ => (Bucket::Objects, names::object_key(object.kind(), &meta.namespace, &meta.name)),
    }
}

/// A fresh W3C trace for one change.
fn new_trace(seed: &[u8]) -> TraceContext {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut hasher = Sha256::new();
    hasher.update(nanos.to_le_bytes());
    hasher.update(seed);
    let digest = hasher.finalize();
    let hex = portico_model::hex(&digest);
    TraceContext::new(&format!("00-{}-{}-01", &hex[..32], &hex[32..48]), None)
}

/// What a scan compares before reading a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stat {
    len: u64,
    modified: std::time::SystemTime,
    changed: (i64, i64),
    inode: (u64, u64),
}

impl Stat {
    fn of(meta: &std::fs::Metadata) -> Option<Stat> {
        use std::os::unix::fs::MetadataExt;
        Some(Stat {
            len: meta.len(),
            modified: meta.modified().ok()?,
            changed: (meta.ctime(), meta.ctime_nsec()),
            inode: (meta.dev(), meta.ino()),
        })
    }

    /// Whether the file last changed long enough before it was read that a later write
    /// must show in its metadata. The kernel stamps times from a coarse clock (a few
    /// milliseconds), so a write of the same length within the same tick as the read leaves
    /// the metadata as it was: a file changed within `settle` of its read is read again
    /// every scan (git's "racily clean" entries, the same rule). Judged by the change time,
    /// which no tool can set back (`cp -p` and `tar` restore the modification time).
    fn settled(&self, read_at: std::time::SystemTime, settle: Duration) -> bool {
        let (secs, nanos) = self.changed;
        let (Ok(secs), Ok(nanos)) = (u64::try_from(secs), u32::try_from(nanos)) else { return false };
        let changed = std::time::UNIX_EPOCH + Duration::new(secs, nanos);
        read_at.duration_since(changed).is_ok_and(|d| d > settle)
    }
}

/// See `Stat::settled`.
const SETTLE: Duration = Duration::from_secs(2);

/// Read the files, decoding those whose contents changed; `None` when a configured path
/// cannot be read at all (then nothing may change). Returns the fingerprint of what was
/// read: the files' paths and contents (a file that could not be read keeps its last good
/// objects and counts as unchanged), so two scans that agree saw the same objects, with no
/// need to encode 10,000 of them to tell.
/// Unless `thorough`, a file whose metadata is as when it was last read (and settled) is
/// not read again.
fn scan(paths: &[PathBuf], state: &mut Files, thorough: bool) -> Option<[u8; 32]> {
    let files = match manifest_files(paths) {
        Ok(files) => files,
        Err(e) => {
            tracing::error!(error = %e, "cannot read a configured path; keeping what is published");
            return None;
        }
    };
    let present: BTreeSet<PathBuf> = files.iter().cloned().collect();
    state.files.retain(|path, _| present.contains(path));
    state.order = files.clone();
    let mut fingerprint = Sha256::new();
    for file in files {
        let stat = std::fs::metadata(&file).ok().as_ref().and_then(Stat::of);
        if let (false, Some(stat), Some(previous)) = (thorough, stat, state.files.get(&file)) {
            if previous.stat == Some(stat) {
                fingerprint.update(file.as_os_str().as_encoded_bytes());
                fingerprint.update(previous.sha256);
                continue;
            }
        }
        let read_at = std::time::SystemTime::now();
        let stat = stat.filter(|s| s.settled(read_at, state.settle.unwrap_or(SETTLE)));
        state.reads += 1;
        let bytes = match crate::manifests::read_manifest(&file) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "keeping its last good objects");
                if let Some(previous) = state.files.get(&file) {
                    fingerprint.update(file.as_os_str().as_encoded_bytes());
                    fingerprint.update(previous.sha256);
                }
                continue;
            }
        };
        let sha256: [u8; 32] = Sha256::digest(&bytes).into();
        fingerprint.update(file.as_os_str().as_encoded_bytes());
        fingerprint.update(sha256);
        if let Some(same) = state.files.get_mut(&file).filter(|f| f.sha256 == sha256) {
            same.stat = stat;
        } else {
            let name = file.display().to_string();
            let mut decoded = Decoded::default();
            match String::from_utf8(bytes) {
                Ok(text) => decode_str(&name, &text, &mut decoded),
                Err(_) => decoded.problems.push(crate::DecodeProblem {
                    location: crate::Location { file: name.clone(), line: 1 },
                    message: "not UTF-8 text".into(),
                }),
            }
            for p in &decoded.problems {
                tracing::warn!(problem = %p, "document cannot be read; the file keeps its last good objects");
            }
            let good = if decoded.problems.is_empty() {
                decoded.objects.into_iter().map(|(o, _)| Encoded::new(o)).collect()
            } else {
                state.files.get(&file).map(|f| f.good.clone()).unwrap_or_default()
            };
            state.files.insert(file.clone(), FileState { sha256, stat, good });
        }
    }
    Some(fingerprint.finalize().into())
}

/// The objects the files define (a later definition of the same object wins).
fn desired(state: &Files) -> Desired {
    let mut desired = Desired::new();
    for file in &state.order {
        let Some(file_state) = state.files.get(file) else { continue };
        for encoded in &file_state.good {
            if desired.insert(key_of(&encoded.object), encoded.clone()).is_some() {
                tracing::warn!(object = %encoded.object.object_ref(), file = %file.display(), "defined more than once; the later definition wins");
            }
        }
    }
    desired
}

/// Put what differs from what was published (compared by encoding) and delete what is no
/// longer desired.
pub(crate) async fn apply(buckets: &Buckets, state: &mut State, desired: Desired) -> Result<usize, BusError> {
    let mut changes = 0;
    for ((bucket, key), encoded) in &desired {
        let (object, encoded) = (&encoded.object, &encoded.bytes);
        if state.published.get(&(*bucket, key.clone())) == Some(encoded) {
            continue;
        }
        let store = match bucket {
            Bucket::Objects => &buckets.objects,
            Bucket::Secrets => &buckets.secrets,
        };
        // A change starts a trace: every service that handles it continues this span.
        let span = tracing::info_span!(parent: None, "watcher.publish", object = %object.object_ref());
        let trace = portico_kit::telemetry::outgoing(&span, &new_trace(encoded));
        // The secrets bucket holds bare Secrets; the objects bucket holds `Object`s.
        let value = match object {
            Object::Secret(secret) => seal(secret, &trace),
            other => seal(other, &trace),
        };
        store.put(key, value.into()).instrument(span.clone()).await.map_err(|e| BusError::StoreFailed {
            operation: "putting",
            bucket: store.name.clone(),
            key: key.clone(),
            reason: e.to_string(),
        })?;
        span.in_scope(
            || tracing::info!(object = %object.object_ref(), trace_id = trace.trace_id().unwrap_or("-"), "published"),
        );
        state.published.insert((*bucket, key.clone()), encoded.clone());
        changes += 1;
    }
    let gone: Vec<(Bucket, String)> = state.published.keys().filter(|k| !desired.contains_key(*k)).cloned().collect();
    for (bucket, key) in gone {
        let store = match bucket {
            Bucket::Objects => &buckets.objects,
            Bucket::Secrets => &buckets.secrets,
        };
        // A KV delete carries no envelope, so the trace of a delete ends here; the resolver
        // starts its own for the rebuild that follows.
        let span = tracing::info_span!(parent: None, "watcher.delete", key = %key);
        store.delete(&key).instrument(span.clone()).await.map_err(|e| BusError::StoreFailed {
            operation: "deleting",
            bucket: store.name.clone(),
            key: key.clone(),
            reason: e.to_string(),
        })?;
        span.in_scope(|| tracing::info!(key, "deleted"));
        state.published.remove(&(bucket, key));
        changes += 1;
    }
    portico_kit::admin::counter(
        "portico_watcher_changes_published_total",
        "Objects put or deleted on the bus.",
        changes as f64,
    );
    portico_kit::admin::gauge(
        "portico_watcher_objects",
        "Objects (Secrets included) the sources define.",
        state.published.len() as f64,
    );
    Ok(changes)
}

/// The keys already on the bus (from a previous run), so that stale ones are deleted.
pub(crate) async fn existing_keys(buckets: &Buckets, state: &mut State) -> Result<(), ServiceError> {
    for (bucket, store, name) in
        [(Bucket::Objects, &buckets.objects, names::OBJECTS), (Bucket::Secrets, &buckets.secrets, names::SECRETS)]
    {
        let mut keys =
            store.keys().await.map_err(|e| ServiceError::ListFailed { bucket: name, reason: e.to_string() })?;
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| ServiceError::ListFailed { bucket: name, reason: e.to_string() })?;
            if !key.starts_with("sync.") && key != names::SECRETS_SYNC_KEY {
                state.published.insert((bucket, key), Vec::new());
            }
        }
    }
    Ok(())
}

/// Run until `shutdown` completes. Each session (see `portico_bus::nats::supervise`)
/// learns what is on the bus and republishes the files' objects with sync markers, so a
/// restarted NATS gets everything back, Secrets included.
pub async fn run(config: ServiceConfig, shutdown: impl Future<Output = ()>) -> Result<(), ServiceError> {
    tracing::info!(paths = ?config.paths, "watcher (file source) running");
    let bus = config.bus.clone();
    let mut state = (config, State::default());
    portico_bus::nats::supervise(&bus, &[names::OBJECTS, names::SECRETS], &mut state, shutdown, session).await?;
    tracing::info!("watcher stopped");
    Ok(())
}

async fn session(
    (config, state): &mut (ServiceConfig, State),
    buckets: Buckets,
) -> Result<std::convert::Infallible, ServiceError> {
    let buckets = &buckets;
    // What was published in an earlier session may be gone (a new server): start from
    // what the bus holds now. The files' cache survives.
    state.published.clear();
    state.synced = false;
    existing_keys(buckets, state).await?;
    let changed = Arc::new(tokio::sync::Notify::new());
    // Dropped with the session, which stops the notifications.
    let _watcher = watch_files(&config.paths, changed.clone());
    // The first scan of a session runs at once; after that, a notification (or the safety
    // rescan) scans at once, and one more scan follows `poll_every` later until two agree:
    // a change is published about `poll_every` after it was written, never half-written.
    let mut unsettled = true;
    let mut first = true;
    loop {
        // The first scan and the safety rescan read every file; the others skip those
        // whose metadata did not change.
        let mut thorough = first;
        if !first {
            let quiet = if unsettled { config.poll_every } else { config.rescan_every };
            tokio::select! {
                () = changed.notified() => unsettled = true,
                () = tokio::time::sleep(quiet) => thorough = !unsettled,
            }
        }
        first = false;
        // Reading, decoding and fingerprinting 10,000 objects is blocking work.
        let paths = config.paths.clone();
        let mut files = std::mem::take(&mut state.files);
        let synced = state.synced;
        let previous = state.previous;
        let scanned = tokio::task::spawn_blocking(move || {
            let scanned = scan(&paths, &mut files, thorough).map(|fingerprint| {
                // Debounce: publish a scan only when the one before it saw the same files
                // (the first scan of a session is published at once); only then is the
                // desired set put together.
                let stable = previous == Some(fingerprint) || !synced;
                (fingerprint, stable.then(|| desired(&files)))
            });
            (files, scanned)
        })
        .await;
        let Ok((files, scanned)) = scanned else {
            tracing::error!("the file scan panicked; scanning again");
            continue;
        };
        state.files = files;
        let Some((fingerprint, desired)) = scanned else { continue };
        unsettled = state.previous != Some(fingerprint);
        state.previous = Some(fingerprint);
        let Some(desired) = desired else { continue };
        let changes = apply(buckets, state, desired).await?;
        portico_kit::admin::release_memory();
        if !state.synced {
            for kind in Kind::ALL {
                put_marker(&buckets.objects, &names::sync_key(kind)).await?;
            }
            // After the initial Secrets, in their own (ordered) bucket: the secrets service
            // relays it once their verdicts are out.
            put_marker(&buckets.secrets, names::SECRETS_SYNC_KEY).await?;
            state.synced = true;
            portico_kit::admin::set_ready(true);
            tracing::info!(objects = state.published.len(), "initial sync published");
        } else if changes > 0 {
            tracing::info!(changes, "changes published");
        }
    }
}

/// Watch the configured paths: a directory recursively, a file through its directory
/// (editors replace files by renaming, which a watch on the file itself would miss).
/// `None` when notifications cannot be had; the safety rescan still finds changes.
fn watch_files(paths: &[PathBuf], changed: Arc<tokio::sync::Notify>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watcher = match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            changed.notify_one();
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "no file notifications; changes are found by the periodic rescan only");
            return None;
        }
    };
    for path in paths {
        let (target, mode) = if path.is_dir() {
            (path.as_path(), notify::RecursiveMode::Recursive)
        } else {
            (
                path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new(".")),
                notify::RecursiveMode::NonRecursive,
            )
        };
        if let Err(e) = watcher.watch(target, mode) {
            tracing::warn!(path = %target.display(), error = %e, "cannot watch; changes there are found by the periodic rescan only");
        }
    }
    Some(watcher)
}

pub(crate) async fn put_marker(store: &async_nats::jetstream::kv::Store, key: &str) -> Result<(), BusError> {
    store.put(key, seal(&true, &TraceContext::default()).into()).await.map_err(|e| BusError::StoreFailed {
        operation: "putting",
        bucket: store.name.clone(),
        key: key.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(())
}

#[cfg(test)]
mod scan_tests {
    use super::{scan, Files};
    use std::time::{Duration, SystemTime};

    fn service(name: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec: {{ports: [{{port: 80}}]}}\n")
    }

    fn names(files: &Files) -> Vec<String> {
        files.files.values().flat_map(|f| &f.good).map(|e| e.object.meta().name.to_string()).collect()
    }

    #[test]
    fn a_settled_file_whose_metadata_did_not_change_is_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.yaml");
        std::fs::write(&path, service("one")).unwrap();
        let paths = vec![dir.path().to_owned()];
        let mut files = Files::default();
        let first = scan(&paths, &mut files, false).unwrap();
        assert_eq!((files.reads, names(&files)), (1, vec!["one".to_owned()]));
        // Just written: read again (a write within the same clock tick would not show).
        assert_eq!(scan(&paths, &mut files, false), Some(first));
        assert_eq!(files.reads, 2, "a file written just now is read every scan");
        // Changed long before it is read (as if `SETTLE` had passed): its metadata tells a
        // change from now on.
        files.settle = Some(Duration::ZERO);
        assert_eq!(scan(&paths, &mut files, false), Some(first));
        assert_eq!(files.reads, 3);
        assert_eq!(scan(&paths, &mut files, false), Some(first));
        assert_eq!(files.reads, 3, "settled and unchanged: not read");
        assert_eq!(scan(&paths, &mut files, true), Some(first));
        assert_eq!(files.reads, 4, "the safety rescan reads every file");
        // The same length, another content, and the old modification time put back: the
        // change time (which nobody can set) still tells it.
        std::fs::write(&path, service("two")).unwrap();
        let old = SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(old).unwrap();
        let second = scan(&paths, &mut files, false).unwrap();
        assert_ne!(second, first);
        assert_eq!((files.reads, names(&files)), (5, vec!["two".to_owned()]));
    }
}

//! NATS: connecting (with reconnects, credentials and TLS), creating the JetStream buckets
//! of the bus contract idempotently, and values too large for one message.

use crate::{codec, names};
use async_nats::jetstream::{self, kv, object_store, stream::StorageType};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::Duration;

/// How to reach NATS. Plain data; services fill it from flags and environment.
#[derive(Clone, Debug, Default)]
pub struct ConnectConfig {
    /// `nats://host:port` (comma-separated for a cluster).
    pub url: String,
    /// The client name NATS shows (`portico-resolver`, ...).
    pub name: String,
    /// A `.creds` file (JWT + NKey).
    pub credentials_file: Option<PathBuf>,
    /// User and password, for the per-service users of `portico up`.
    pub user_password: Option<(String, String)>,
    /// A CA bundle to verify the NATS server with; implies TLS.
    pub ca_file: Option<PathBuf>,
    /// How many servers of a NATS cluster keep each bucket the service creates (and
    /// updates, when an existing bucket it owns has another count); 0 or 1: one.
    pub replicas: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("reading NATS credentials {path}: {source}")]
    CredentialsUnreadable { path: PathBuf, source: std::io::Error },
    #[error("connecting to NATS at {url}: {reason}")]
    ConnectFailed { url: String, reason: String },
    #[error("creating or opening bucket {bucket}: {reason}")]
    BucketSetupFailed { bucket: &'static str, reason: String },
    #[error("{operation} {key} in {bucket}: {reason}")]
    StoreFailed { operation: &'static str, bucket: String, key: String, reason: String },
    #[error("the watch of {bucket} ended")]
    WatchEnded { bucket: &'static str },
    #[error("the watch of {bucket} failed: {reason}")]
    WatchFailed { bucket: &'static str, reason: String },
    #[error("value {key} in {bucket}: {reason}")]
    ValueCorrupt { bucket: String, key: String, reason: String },
    #[error("{key} in {bucket} changed since this writer last saw it (another holder wrote it): {reason}")]
    Fenced { bucket: String, key: String, reason: String },
}

/// Connect, retrying the first connection and reconnecting forever after.
pub async fn connect(config: &ConnectConfig) -> Result<async_nats::Client, BusError> {
    Ok(connect_watched(config).await?.0)
}

/// Counts the times the connection came back after being lost. A reconnected client
/// works on, but the server may be a new one that lost its memory-stored buckets, so
/// services start their session over (see `supervise`).
pub type Reconnects = tokio::sync::watch::Receiver<u64>;

/// `connect`, plus a counter of reconnections.
pub async fn connect_watched(config: &ConnectConfig) -> Result<(async_nats::Client, Reconnects), BusError> {
    let (reconnected, reconnects) = tokio::sync::watch::channel(0u64);
    let lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let name = config.name.clone();
    let mut options = async_nats::ConnectOptions::new()
        .name(&config.name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let (reconnected, lost, name) = (reconnected.clone(), lost.clone(), name.clone());
            async move {
                use std::sync::atomic::Ordering;
                match event {
                    async_nats::Event::Disconnected => {
                        lost.store(true, Ordering::SeqCst);
                        tracing::warn!(client = %name, "lost the connection to NATS; reconnecting");
                    }
                    async_nats::Event::Connected if lost.swap(false, Ordering::SeqCst) => {
                        tracing::info!(client = %name, "reconnected to NATS");
                        reconnected.send_modify(|n| *n += 1);
                    }
                    other => tracing::debug!(client = %name, event = %other, "NATS connection event"),
                }
            }
        });
    if let Some(path) = &config.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|source| BusError::CredentialsUnreadable { path: path.clone(), source })?;
    }
    if let Some((user, password)) = &config.user_password {
        // Replies and watch deliveries come to this user's own inbox subjects, which the
        // server lets only this user subscribe to (see `portico up`'s NATS configuration).
        options = options.user_and_password(user.clone(), password.clone()).custom_inbox_prefix(inbox_prefix(user));
    }
    if let Some(ca) = &config.ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    // A cluster's servers, comma-separated: async-nats takes a list, not the joined string
    // (it read "a:4222,nats://b" as one URL with an invalid port).
    let servers: Vec<async_nats::ServerAddr> = config
        .url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| u.parse::<async_nats::ServerAddr>())
        .collect::<Result<_, _>>()
        .map_err(|e| BusError::ConnectFailed { url: config.url.clone(), reason: e.to_string() })?;
    let client = options
        .connect(servers)
        .await
        .map_err(|e| BusError::ConnectFailed { url: config.url.clone(), reason: e.to_string() })?;
    Ok((client, reconnects))
}

/// The inbox subjects of a NATS user: `_INBOX_<user>`.
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX_{user}")
}

/// Run a service as a sequence of sessions over one connection, until `shutdown`.
///
/// A session opens the buckets and works from the bus's current state: it reads
/// everything it needs again and republishes what it owns. It is started over, after a
/// back-off, when it fails (a watch ended, a store refused a write), and at once when the
/// connection to NATS came back, because a restarted server may have lost buckets and
/// nobody would otherwise republish them. What must survive a session (a running
/// HAProxy, the ADS server, the files already read) lives outside it, in `state`.
pub async fn supervise<S, E: std::fmt::Display>(
    config: &ConnectConfig,
    role: Role,
    state: &mut S,
    shutdown: impl std::future::Future<Output = ()>,
    mut session: impl AsyncFnMut(&mut S, Buckets) -> Result<std::convert::Infallible, E>,
) -> Result<(), BusError> {
    // With a NATS user of its own (per-service permissions, as `portico up` configures),
    // a service may create only the buckets it writes; without, it creates whatever is
    // missing, so a cluster without an admin step never waits on a service not yet running.
    let role = if config.user_password.is_some() || config.credentials_file.is_some() { role } else { ALL_BUCKETS };
    let (client, mut reconnects) = connect_watched(config).await?;
    let mut elections = LeaderElections::subscribe(&client, &config.name).await;
    let js = jetstream::ContextBuilder::new().timeout(JETSTREAM_TIMEOUT).build(client);
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(250);
    loop {
        reconnects.borrow_and_update();
        let started = std::time::Instant::now();
        let outcome = tokio::select! {
            () = &mut shutdown => return Ok(()),
            _ = reconnects.changed() => None,
            stream = elections.next() => {
                tracing::info!(client = %config.name, stream = %stream, "a bucket's stream elected a leader (it was created, or a NATS server was lost); starting the session over");
                None
            }
            reason = async {
                let buckets = match open_buckets_replicated(&js, role, config.replicas).await {
                    Ok(buckets) => buckets,
                    Err(e) => return e.to_string(),
                };
                match session(state, buckets).await {
                    Ok(never) => match never {},
                    Err(e) => e.to_string(),
                }
            } => Some(reason),
        };
        match outcome {
            None => {
                tracing::info!(client = %config.name, "starting the session over from the bus's current state");
                backoff = Duration::from_millis(250);
            }
            Some(reason) => {
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = Duration::from_millis(250);
                }
                tracing::warn!(client = %config.name, error = %reason, retry_in_ms = backoff.as_millis() as u64, "session failed; starting over");
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// How long a session waits for an answer to a JetStream request (and a write's
/// acknowledgement) before it starts over; async-nats's default is 10 s. On a cluster that
/// lost a server, requests made before JetStream's metadata leader is elected again get no
/// answer (that election is announced only to the system account), so this bounds how
/// long a service stays stuck after one.
pub const JETSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

/// Where NATS announces that a stream elected a leader: its name is the last token.
pub const LEADER_ELECTED: &str = "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.*";

/// The leader elections of the bus's streams. In a cluster, a stream whose leader's server
/// died is led again after an election, and the consumers (watches) that lived on the dead
/// server are gone: a client connected elsewhere would learn it only from missed
/// heartbeats (async-nats's ordered consumer: 10 s), and requests made meanwhile time out.
/// The announcement of the new leader lets a service start its session over at once.
struct LeaderElections(Option<async_nats::Subscriber>);

impl LeaderElections {
    async fn subscribe(client: &async_nats::Client, name: &str) -> LeaderElections {
        match client.subscribe(LEADER_ELECTED).await {
            Ok(subscriber) => LeaderElections(Some(subscriber)),
            Err(e) => {
                tracing::warn!(client = %name, error = %e, "not following stream leader elections; a lost NATS server is noticed only by timeouts");
                LeaderElections(None)
            }
        }
    }

    /// The next election of a bucket's stream (several at once, as when one server led
    /// many, count as one); pending forever without a subscription.
    async fn next(&mut self) -> String {
        use futures_util::{FutureExt, StreamExt};
        let Some(subscriber) = self.0.as_mut() else { return std::future::pending().await };
        loop {
            let Some(message) = subscriber.next().await else { return std::future::pending().await };
            let stream = message.subject.as_str().rsplit('.').next().unwrap_or_default().to_owned();
            if !is_bus_stream(&stream) {
                continue;
            }
            // The other streams the dead server led elect within moments of each other.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while let Some(Some(_)) = subscriber.next().now_or_never() {}
            return stream;
        }
    }
}

/// Whether a stream holds one of the bus's buckets (`KV_<bucket>`, `OBJ_<store>`).
fn is_bus_stream(stream: &str) -> bool {
    let name = stream.strip_prefix("KV_").or_else(|| stream.strip_prefix("OBJ_"));
    name.is_some_and(|n| ALL_BUCKETS.contains(&n) || n == names::MODEL_STORE)
}

/// The buckets of the bus contract.
#[derive(Clone)]
pub struct Buckets {
    pub objects: kv::Store,
    pub secrets: kv::Store,
    pub verdicts: kv::Store,
    pub trust: kv::Store,
    pub model: kv::Store,
    pub status: kv::Store,
    pub applied: kv::Store,
    pub leases: kv::Store,
    pub model_store: object_store::ObjectStore,
}

/// Open a bucket, creating it when it does not exist and `create` allows. Opening first
/// means a service needs the right to create only the buckets it owns (see `Role`).
async fn bucket(
    js: &jetstream::Context,
    name: &'static str,
    storage: StorageType,
    create: bool,
    replicas: usize,
) -> Result<kv::Store, BusError> {
    let opened = js.get_key_value(name).await;
    if let Ok(mut store) = opened {
        if create {
            follow_replicas(js, &mut store.stream, name, replicas).await?;
        }
        return Ok(store);
    }
    if !create {
        let why = opened.err().map(|e| e.to_string()).unwrap_or_default();
        return Err(BusError::BucketSetupFailed {
            bucket: name,
            reason: format!(
                "it does not exist yet (the service that writes it creates it), or its stream has no leader now ({why})"
            ),
        });
    }
    js.create_key_value(kv::Config {
        bucket: name.to_owned(),
        history: 1,
        storage,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| BusError::BucketSetupFailed { bucket: name, reason: e.to_string() })
}

/// Give an existing bucket's stream `replicas` replicas if it has another count: a
/// configuration that asks for three is not silently kept at one (and back).
async fn follow_replicas(
    js: &jetstream::Context,
    stream: &mut jetstream::stream::Stream,
    bucket: &'static str,
    replicas: usize,
) -> Result<(), BusError> {
    let failed = |e: String| BusError::BucketSetupFailed { bucket, reason: e };
    let info = stream.info().await.map_err(|e| failed(e.to_string()))?;
    if info.config.num_replicas == replicas {
        return Ok(());
    }
    let mut config = info.config.clone();
    let was = config.num_replicas;
    config.num_replicas = replicas;
    js.update_stream(config)
        .await
        .map_err(|e| failed(format!("changing its replicas from {was} to {replicas}: {e}")))?;
    tracing::info!(bucket, from = was, to = replicas, "bucket replicas changed to follow the configuration");
    Ok(())
}

/// The buckets a service may create when they are missing: the ones it writes. Whoever
/// creates a stream chooses its subjects, so with per-service NATS users only the writer
/// may (a memory-stored bucket lost in a NATS restart comes back with its writer), and
/// `portico up` creates them all first as its admin user. `supervise` applies the role
/// only to a service with a NATS user or credentials of its own.
pub type Role = &'static [&'static str];

/// Every bucket: for tests and for `portico up`'s set-up, which run as an admin.
pub const ALL_BUCKETS: Role = &[
    names::OBJECTS,
    names::SECRETS,
    names::VERDICTS,
    names::TRUST,
    names::MODEL,
    names::MODEL_STORE,
    names::STATUS,
    names::APPLIED,
    names::LEASES,
];

/// Open every bucket, creating the missing ones. Safe to call from every service at once.
/// Raw Secrets and trust material are kept in memory only: they are derived state, and
/// never hit a disk here (a restarted server loses them, and the services republish).
pub async fn ensure_buckets(js: &jetstream::Context) -> Result<Buckets, BusError> {
    open_buckets(js, ALL_BUCKETS).await
}

/// `ensure_buckets` with `replicas` replicas per bucket (a NATS cluster).
pub async fn ensure_buckets_replicated(js: &jetstream::Context, replicas: usize) -> Result<Buckets, BusError> {
    open_buckets_replicated(js, ALL_BUCKETS, replicas).await
}

/// Open every bucket, creating the missing ones among `role`'s; a missing bucket of
/// another service's is an error (the session is retried until its writer created it).
pub async fn open_buckets(js: &jetstream::Context, role: Role) -> Result<Buckets, BusError> {
    open_buckets_replicated(js, role, 1).await
}

/// `open_buckets`, creating (or updating) the buckets of `role` with `replicas` replicas.
pub async fn open_buckets_replicated(
    js: &jetstream::Context,
    role: Role,
    replicas: usize,
) -> Result<Buckets, BusError> {
    let replicas = replicas.max(1);
    let owns = |name: &str| role.contains(&name);
    let model_store = match js.get_object_store(names::MODEL_STORE).await {
        Ok(store) => {
            if owns(names::MODEL_STORE) {
                let mut stream = js
                    .get_stream(format!("OBJ_{}", names::MODEL_STORE))
                    .await
                    .map_err(|e| BusError::BucketSetupFailed { bucket: names::MODEL_STORE, reason: e.to_string() })?;
                follow_replicas(js, &mut stream, names::MODEL_STORE, replicas).await?;
            }
            store
        }
        Err(_) if owns(names::MODEL_STORE) => js
            .create_object_store(object_store::Config {
                bucket: names::MODEL_STORE.to_owned(),
                storage: StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::BucketSetupFailed { bucket: names::MODEL_STORE, reason: e.to_string() })?,
        Err(e) => return Err(BusError::BucketSetupFailed { bucket: names::MODEL_STORE, reason: e.to_string() }),
    };
    let open = async |name: &'static str, storage| bucket(js, name, storage, owns(name), replicas).await;
    Ok(Buckets {
        objects: open(names::OBJECTS, StorageType::File).await?,
        secrets: open(names::SECRETS, StorageType::Memory).await?,
        verdicts: open(names::VERDICTS, StorageType::File).await?,
        trust: open(names::TRUST, StorageType::Memory).await?,
        model: open(names::MODEL, StorageType::File).await?,
        status: open(names::STATUS, StorageType::File).await?,
        applied: open(names::APPLIED, StorageType::File).await?,
        leases: open(names::LEASES, StorageType::File).await?,
        model_store,
    })
}

/// Values up to this size travel in the key-value entry itself (NATS's default maximum
/// payload is 1 MiB; this leaves room for the envelope and headers).
pub const INLINE_LIMIT: usize = 512 * 1024;

/// What a key-value entry holds for a value that may be large.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Blob {
    Inline(Vec<u8>),
    /// In the object store under `object`, with its size and SHA-256 to check on reading.
    Stored {
        object: String,
        size: u64,
        sha256: String,
    },
}

/// Put a value of any size: inline when small, else into `store` and a pointer into `kv`.
/// The object is written before the pointer, so a reader never sees a pointer to nothing.
///
/// Storage is bounded: a key has two object slots, `<key>.a` and `<key>.b`, and a new
/// value goes into the one the current pointer does not name, so a reader of the current
/// value is never overwritten, and the store holds at most two objects per key however
/// many values were put (it held one per value, forever). Objects of any other name
/// (an older layout) are deleted. A reader that fell two values behind finds its object
/// replaced; `get_blob` then reads the pointer again.
pub async fn put_blob(
    kv: &kv::Store,
    store: &object_store::ObjectStore,
    key: &str,
    bytes: &[u8],
) -> Result<u64, BusError> {
    write_blob(kv, store, key, bytes, Write::Always).await
}

/// `put_blob` fenced by compare-and-set: the pointer is written only if the key is still
/// at `expected` (`None`: only if the key does not exist). A writer that lost its lease
/// while it stalled finds the key moved on (its successor wrote it) and writes nothing
/// that readers see (`BusError::Fenced`).
pub async fn put_blob_fenced(
    kv: &kv::Store,
    store: &object_store::ObjectStore,
    key: &str,
    bytes: &[u8],
    expected: Option<u64>,
) -> Result<u64, BusError> {
    write_blob(kv, store, key, bytes, Write::If(expected)).await
}

/// `put_blob_fenced` (or `put_blob` when `expected` is `Unfenced`) for one of many keys
/// written together (the model's pieces): no listing of the object store for objects of
/// an older layout, which would cost a round trip per key.
pub(crate) async fn put_piece_blob(
    kv: &kv::Store,
    store: &object_store::ObjectStore,
    key: &str,
    bytes: &[u8],
    expected: Option<Option<u64>>,
) -> Result<u64, BusError> {
    let write = match expected {
        None => Write::AlwaysQuick,
        Some(expected) => Write::IfQuick(expected),
    };
    write_blob(kv, store, key, bytes, write).await
}

/// Delete a key written by `put_blob` and its objects (`expected`: only if the key is still
/// at that revision).
pub(crate) async fn delete_blob(
    kv: &kv::Store,
    store: &object_store::ObjectStore,
    key: &str,
    expected: Option<u64>,
) -> Result<(), BusError> {
    let stored =
        matches!(kv.get(key).await, Ok(Some(raw)) if matches!(codec::decode::<Blob>(&raw), Ok(Blob::Stored { .. })));
    match expected {
        Some(revision) => kv.delete_expect_revision(key, Some(revision)).await.map_err(|e| BusError::Fenced {
            bucket: kv.name.clone(),
            key: key.to_owned(),
            reason: e.to_string(),
        })?,
        None => kv.delete(key).await.map_err(|e| BusError::StoreFailed {
            operation: "deleting",
            bucket: kv.name.clone(),
            key: key.to_owned(),
            reason: e.to_string(),
        })?,
    }
    if stored {
        for slot in [format!("{key}.a"), format!("{key}.b")] {
            let _ = store.delete(slot.as_str()).await;
        }
    }
    Ok(())
}

/// The bytes of a value written by `put_blob`, from a watched entry's raw value (an object
/// store read only for a large one).
pub(crate) async fn blob_of_entry(
    kv: &kv::Store,
    store: &object_store::ObjectStore,
    key: &str,
    raw: &[u8],
) -> Result<Option<Vec<u8>>, BusError> {
    match codec::decode::<Blob>(raw) {
        Ok(Blob::Inline(bytes)) => Ok(Some(bytes)),
        // Read through the key: the object may have been replaced since this entry.
        Ok(Blob::Stored { .. }) => get_blob(kv, store, key).await,
        Err(e) => Err(BusError::ValueCorrupt { bucket: kv.name.clone(), key: key.to_owned(), reason: e.to_string() }),
    }
}

enum Write {
    Always,
    If(Option<u64>),
    /// As `Always` and `If`, without the clean-up of objects of an older layout.
    AlwaysQuick,
    IfQuick(Option<u64>),
}

async fn write_blob(
    kv: &kv::Store,
    store: &object_store::ObjectStore,
    key: &str,
    bytes: &[u8],
    write: Write,
) -> Result<u64, BusError> {
    let failed = |operation, reason: String| BusError::StoreFailed {
        operation,
        bucket: kv.name.clone(),
        key: key.to_owned(),
        reason,
    };
    let slots = [format!("{key}.a"), format!("{key}.b")];
    let blob = if bytes.len() <= INLINE_LIMIT {
        Blob::Inline(bytes.to_vec())
    } else {
        let current = match kv.get(key).await {
            Ok(Some(raw)) => match codec::decode::<Blob>(&raw) {
                Ok(Blob::Stored { object, .. }) => Some(object),
                _ => None,
            },
            _ => None,
        };
        let object = if current.as_deref() == Some(slots[0].as_str()) { &slots[1] } else { &slots[0] };
        let sha256 = portico_model::hex(&Sha256::digest(bytes));
        store
            .put(object.as_str(), &mut &bytes[..])
            .await
            .map_err(|e| failed("storing the object for", e.to_string()))?;
        Blob::Stored { object: object.clone(), size: bytes.len() as u64, sha256 }
    };
    let value: Vec<u8> = codec::encode(&blob);
    let quick = matches!(write, Write::AlwaysQuick | Write::IfQuick(_));
    let revision = match write {
        Write::Always | Write::AlwaysQuick => {
            kv.put(key, value.into()).await.map_err(|e| failed("putting", e.to_string()))?
        }
        Write::If(Some(expected)) | Write::IfQuick(Some(expected)) => kv
            .update(key, value.into(), expected)
            .await
            .map_err(|e| BusError::Fenced { bucket: kv.name.clone(), key: key.to_owned(), reason: e.to_string() })?,
        Write::If(None) | Write::IfQuick(None) => kv.create(key, value.into()).await.map_err(|e| BusError::Fenced {
            bucket: kv.name.clone(),
            key: key.to_owned(),
            reason: e.to_string(),
        })?,
    };
    if quick {
        return Ok(revision);
    }
    // Objects of this key under another name are from an older layout: gone.
    if let Ok(mut list) = store.list().await {
        use futures_util::StreamExt;
        let mut stale = Vec::new();
        while let Some(Ok(info)) = list.next().await {
            let ours = info.name.strip_prefix(key).is_some_and(|rest| rest.starts_with('-'));
            if ours && !slots.contains(&info.name) {
                stale.push(info.name);
            }
        }
        for name in stale {
            let _ = store.delete(name.as_str()).await;
        }
    }
    Ok(revision)
}

/// Read a value written by `put_blob`; `None` when the key has no value.
pub async fn get_blob(
    kv: &kv::Store,
    store: &object_store::ObjectStore,
    key: &str,
) -> Result<Option<Vec<u8>>, BusError> {
    // An object replaced while it was read (the reader fell two values behind) does not
    // match its pointer: the pointer is read again.
    let mut attempt = 0;
    loop {
        match get_blob_once(kv, store, key).await {
            Err(BusError::ValueCorrupt { .. }) if attempt < 3 => attempt += 1,
            other => return other,
        }
    }
}

async fn get_blob_once(
    kv: &kv::Store,
    store: &object_store::ObjectStore,
    key: &str,
) -> Result<Option<Vec<u8>>, BusError> {
    let corrupt = |reason: String| BusError::ValueCorrupt { bucket: kv.name.clone(), key: key.to_owned(), reason };
    let Some(raw) = kv.get(key).await.map_err(|e| BusError::StoreFailed {
        operation: "getting",
        bucket: kv.name.clone(),
        key: key.to_owned(),
        reason: e.to_string(),
    })?
    else {
        return Ok(None);
    };
    match codec::decode::<Blob>(&raw).map_err(|e| corrupt(e.to_string()))? {
        Blob::Inline(bytes) => Ok(Some(bytes)),
        Blob::Stored { object, size, sha256 } => {
            use tokio::io::AsyncReadExt;
            let mut reader = store.get(object.as_str()).await.map_err(|e| corrupt(format!("object {object}: {e}")))?;
            let mut bytes = Vec::with_capacity(size as usize);
            reader.read_to_end(&mut bytes).await.map_err(|e| corrupt(format!("object {object}: {e}")))?;
            if bytes.len() as u64 != size || portico_model::hex(&Sha256::digest(&bytes)) != sha256 {
                return Err(corrupt(format!("object {object} does not match its size and hash")));
            }
            Ok(Some(bytes))
        }
    }
}

/// How many messages a bucket's stream holds now. (`kv::Store::status` answers from the
/// stream information cached when the store was opened, which can be long stale.)
pub async fn messages(kv: &kv::Store) -> Result<u64, BusError> {
    kv.stream
        .get_info()
        .await
        .map(|info| info.state.messages)
        .map_err(|e| BusError::WatchFailed { bucket: "stream info", reason: format!("{}: {e}", kv.name) })
}

/// Watch every key of a bucket: first the current value of each key (deleted keys as
/// deletes), then every change. Services use this, not async-nats's `watch_all`, which
/// delivers new changes only, so values written before a service started would be missed.
/// The initial values are caught up when an entry's `delta` is 0.
pub async fn watch_current_and_new(kv: &kv::Store) -> Result<kv::Watch, BusError> {
    kv.watch_with_history(">").await.map_err(|e| BusError::StoreFailed {
        operation: "watching",
        bucket: kv.name.clone(),
        key: ">".to_owned(),
        reason: e.to_string(),
    })
}

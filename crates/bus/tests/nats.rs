//! The bus against a real nats-server with JetStream.

use futures_util::StreamExt;
use portico_bus::nats::{
    connect, ensure_buckets, get_blob, put_blob, put_blob_fenced, BusError, ConnectConfig, INLINE_LIMIT,
};
use portico_bus::{names, open, seal, TraceContext};
use portico_testkit::NatsServer;

async fn setup(server: &NatsServer) -> (async_nats::Client, portico_bus::nats::Buckets) {
    let client = connect(&ConnectConfig { url: server.url(), name: "portico-test".into(), ..Default::default() })
        .await
        .expect("connect");
    let buckets = ensure_buckets(&async_nats::jetstream::new(client.clone())).await.expect("buckets");
    (client, buckets)
}

#[tokio::test]
async fn buckets_are_created_once_and_secrets_never_touch_disk() {
    let server = NatsServer::start();
    let (client, buckets) = setup(&server).await;
    // A second service setting up at the same time, or later, gets the same buckets.
    let again = ensure_buckets(&async_nats::jetstream::new(client)).await.expect("idempotent");
    assert_eq!(again.objects.name, buckets.objects.name);
    let secrets = buckets.secrets.status().await.expect("status");
    assert_eq!(secrets.info.config.storage, async_nats::jetstream::stream::StorageType::Memory);
    let trust = buckets.trust.status().await.expect("status");
    assert_eq!(trust.info.config.storage, async_nats::jetstream::stream::StorageType::Memory);
    let objects = buckets.objects.status().await.expect("status");
    assert_eq!(objects.info.config.storage, async_nats::jetstream::stream::StorageType::File);
    assert_eq!(objects.history(), 1);
}

async fn next(watch: &mut async_nats::jetstream::kv::Watch) -> async_nats::jetstream::kv::Entry {
    tokio::time::timeout(std::time::Duration::from_secs(5), watch.next()).await.unwrap().unwrap().unwrap()
}

#[tokio::test]
async fn a_watch_sees_the_values_written_before_it_then_the_new_ones() {
    let server = NatsServer::start();
    let (_client, buckets) = setup(&server).await;
    buckets.verdicts.put("shop.before", vec![1].into()).await.unwrap();
    buckets.verdicts.put("shop.gone", vec![2].into()).await.unwrap();
    buckets.verdicts.delete("shop.gone").await.unwrap();
    let mut watch = portico_bus::nats::watch_current_and_new(&buckets.verdicts).await.unwrap();
    let first = next(&mut watch).await;
    assert_eq!((first.key.as_str(), first.operation), ("shop.before", async_nats::jetstream::kv::Operation::Put));
    let second = next(&mut watch).await;
    assert_eq!((second.key.as_str(), second.operation), ("shop.gone", async_nats::jetstream::kv::Operation::Delete));
    assert_eq!(second.delta, 0, "caught up after the initial values");
    buckets.verdicts.put("shop.after", vec![3].into()).await.unwrap();
    assert_eq!(next(&mut watch).await.key, "shop.after");
}

#[tokio::test]
async fn an_envelope_travels_through_a_watch_with_its_trace() {
    let server = NatsServer::start();
    let (_client, buckets) = setup(&server).await;
    let mut watch = buckets.objects.watch_all().await.expect("watch");
    let trace = TraceContext::new("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None);
    let key = names::object_key(portico_model::Kind::Service, &"shop".parse().unwrap(), &"api.v2".parse().unwrap());
    buckets.objects.put(&key, seal(&"the object".to_owned(), &trace).into()).await.expect("put");
    let entry = tokio::time::timeout(std::time::Duration::from_secs(5), watch.next())
        .await
        .expect("the watch delivers")
        .expect("an entry")
        .expect("no error");
    assert_eq!(entry.key, "service.shop.api.v2");
    let (value, got): (String, _) = open(&entry.value).expect("opens");
    assert_eq!(value, "the object");
    assert_eq!(got.trace_id(), Some("4bf92f3577b34da6a3ce929d0e0e4736"), "the trace crosses the hop");
}

#[tokio::test]
async fn large_values_go_through_the_object_store_and_come_back_intact() {
    let server = NatsServer::start();
    let (_client, buckets) = setup(&server).await;
    let small = vec![7u8; 1000];
    put_blob(&buckets.model, &buckets.model_store, names::MODEL_KEY, &small).await.expect("small");
    assert_eq!(get_blob(&buckets.model, &buckets.model_store, names::MODEL_KEY).await.unwrap(), Some(small));

    // Larger than NATS's default 1 MiB maximum payload.
    let large: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
    assert!(large.len() > INLINE_LIMIT);
    put_blob(&buckets.model, &buckets.model_store, names::MODEL_KEY, &large).await.expect("large");
    let raw = buckets.model.get(names::MODEL_KEY).await.unwrap().unwrap();
    assert!(raw.len() < 1024, "the key-value entry holds a pointer, not the value");
    assert_eq!(get_blob(&buckets.model, &buckets.model_store, names::MODEL_KEY).await.unwrap(), Some(large));

    assert_eq!(get_blob(&buckets.model, &buckets.model_store, "absent").await.unwrap(), None);
    buckets.model.put("garbage", vec![9, 9, 9].into()).await.unwrap();
    let err = get_blob(&buckets.model, &buckets.model_store, "garbage").await.unwrap_err();
    assert!(matches!(err, BusError::ValueCorrupt { .. }), "{err}");
}

#[tokio::test]
async fn the_object_store_stays_flat_however_many_models_are_put() {
    let server = NatsServer::start();
    let (client, buckets) = setup(&server).await;
    // An object of the older layout (one per value, never deleted) is cleaned up.
    let legacy = format!("{}-deadbeef", names::MODEL_KEY);
    buckets.model_store.put(legacy.as_str(), &mut &[1u8, 2, 3][..]).await.unwrap();
    let size = INLINE_LIMIT + 64 * 1024;
    for n in 0..40u32 {
        let value: Vec<u8> = (0..size).map(|i| (i as u32).wrapping_mul(n + 1) as u8).collect();
        put_blob(&buckets.model, &buckets.model_store, names::MODEL_KEY, &value).await.unwrap();
        assert_eq!(get_blob(&buckets.model, &buckets.model_store, names::MODEL_KEY).await.unwrap(), Some(value));
    }
    let mut names_left = Vec::new();
    let mut list = buckets.model_store.list().await.unwrap();
    while let Some(info) = futures_util::StreamExt::next(&mut list).await {
        names_left.push(info.unwrap().name);
    }
    names_left.sort();
    assert_eq!(names_left, vec![format!("{}.a", names::MODEL_KEY), format!("{}.b", names::MODEL_KEY)]);
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(format!("OBJ_{}", names::MODEL_STORE)).await.unwrap();
    let bytes = stream.info().await.unwrap().state.bytes;
    assert!(
        bytes < 3 * size as u64,
        "40 values of {size} bytes left {bytes} bytes in the object store's stream: it must hold two at most"
    );
}

#[tokio::test]
async fn a_fenced_put_writes_only_over_the_revision_its_writer_last_saw() {
    let server = NatsServer::start();
    let (_client, buckets) = setup(&server).await;
    let key = names::MODEL_KEY;
    let put = |value: Vec<u8>, expected: Option<u64>| {
        let buckets = buckets.clone();
        async move { put_blob_fenced(&buckets.model, &buckets.model_store, key, &value, expected).await }
    };
    let first = put(vec![1; 10], None).await.expect("the first write creates the key");
    assert!(matches!(put(vec![2; 10], None).await, Err(BusError::Fenced { .. })), "create-only fails when it exists");
    // The holder writes over what it saw; a successor then writes; the old holder, resumed
    // after a stall, writes over the revision it saw: refused, and readers keep the successor's.
    let holder = put(vec![3; 10], Some(first)).await.expect("over the revision it saw");
    let successor = put(vec![4; INLINE_LIMIT + 1], Some(holder)).await.expect("the successor's write");
    let stale = put(vec![5; INLINE_LIMIT + 1], Some(holder)).await;
    assert!(matches!(stale, Err(BusError::Fenced { .. })), "{stale:?}");
    assert_eq!(get_blob(&buckets.model, &buckets.model_store, key).await.unwrap(), Some(vec![4; INLINE_LIMIT + 1]));
    assert!(put(vec![6; 10], Some(successor)).await.is_ok());
}

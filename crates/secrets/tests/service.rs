//! The secrets service in process, against a real nats-server: Secrets in, verdicts and
//! trust material out, deletes followed, garbage survived, shutdown clean.

use portico_bus::nats::{connect, ensure_buckets, Buckets, ConnectConfig};
use portico_bus::{names, open, seal, TraceContext};
use portico_model::{Meta, Secret, SecretVerdict, TrustMaterial};
use portico_secrets::service::{run, ServiceConfig};
use portico_testkit::NatsServer;
use std::time::Duration;

fn ca_pem() -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "service test ca");
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().pem()
}

fn secret(ca: &str) -> Secret {
    Secret {
        meta: Meta { namespace: "shop".parse().unwrap(), name: "ca".parse().unwrap() },
        secret_type: "Opaque".into(),
        holder: portico_model::Holder::Secret,
        data: [("ca.crt".to_owned(), ca.as_bytes().to_vec())].into_iter().collect(),
    }
}

/// Wait until `bucket`'s `key` satisfies `done` (its raw value, `None` when absent).
async fn wait_for(store: &async_nats::jetstream::kv::Store, key: &str, done: impl Fn(Option<&[u8]>) -> bool) {
    for _ in 0..100 {
        let value = store.get(key).await.unwrap();
        if done(value.as_deref()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{key} in {} never reached the expected state", store.name);
}

fn verdict(raw: Option<&[u8]>) -> Option<SecretVerdict> {
    raw.map(|r| open::<SecretVerdict>(r).expect("a verdict").0)
}

#[tokio::test]
async fn the_sync_marker_follows_the_verdicts_of_the_secrets_present_at_start() {
    let server = NatsServer::start();
    let bus = ConnectConfig { url: server.url(), name: "test".into(), ..Default::default() };
    let client = connect(&bus).await.unwrap();
    let Buckets { secrets, verdicts, .. } = ensure_buckets(&async_nats::jetstream::new(client)).await.unwrap();
    // Secrets exist before the service starts, followed by the watcher's marker.
    for name in ["a", "b", "c"] {
        let mut s = secret(&ca_pem());
        s.meta.name = name.parse().unwrap();
        secrets.put(format!("shop.{name}"), seal(&s, &TraceContext::default()).into()).await.unwrap();
    }
    secrets.put(names::SECRETS_SYNC_KEY, seal(&true, &TraceContext::default()).into()).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(run(ServiceConfig { bus, revalidate_every: Duration::from_secs(3600) }, async move {
        let _ = stopped.await;
    }));
    wait_for(&verdicts, names::SECRETS_SYNC_KEY, |v| v.is_some()).await;
    for name in ["a", "b", "c"] {
        assert!(
            verdicts.get(format!("shop.{name}")).await.unwrap().is_some(),
            "{name} has its verdict before the marker"
        );
    }
    stop.send(()).unwrap();
    service.await.unwrap().unwrap();
}

#[tokio::test]
async fn secrets_in_verdicts_and_trust_material_out() {
    let server = NatsServer::start();
    let bus = ConnectConfig { url: server.url(), name: "test".into(), ..Default::default() };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(run(
        ServiceConfig { bus: bus.clone(), revalidate_every: Duration::from_secs(3600) },
        async move {
            let _ = stopped.await;
        },
    ));
    let client = connect(&bus).await.unwrap();
    let Buckets { secrets, verdicts, trust, .. } = ensure_buckets(&async_nats::jetstream::new(client)).await.unwrap();
    let key = names::secret_key(&portico_model::SecretRef::new("shop", "ca").unwrap());
    let trace = TraceContext::new("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None);

    // Garbage first: the service must skip it and keep going.
    secrets.put("shop.garbage", vec![0xff, 0x01].into()).await.unwrap();

    secrets.put(&key, seal(&secret(&ca_pem()), &trace).into()).await.unwrap();
    wait_for(&verdicts, &key, |v| verdict(v).is_some_and(|v| v.ca.is_ok())).await;
    let (material, carried) = open::<TrustMaterial>(&trust.get(&key).await.unwrap().unwrap()).unwrap();
    let (valid, _) = open::<SecretVerdict>(&verdicts.get(&key).await.unwrap().unwrap()).unwrap();
    assert_eq!(material.ca.unwrap().sha256, valid.ca.unwrap().sha256, "material and verdict agree");
    assert_eq!(carried.trace_id(), trace.trace_id(), "the trace continues into what the service publishes");
    let raw_verdict = verdicts.get(&key).await.unwrap().unwrap();
    assert!(
        !String::from_utf8_lossy(&raw_verdict).contains("BEGIN CERTIFICATE"),
        "the verdict carries no certificate material"
    );

    // A broken bundle: the verdict says why.
    secrets.put(&key, seal(&secret("not a pem"), &trace).into()).await.unwrap();
    wait_for(&verdicts, &key, |v| verdict(v).is_some_and(|v| v.ca == Err("failed to locate certificate".to_owned())))
        .await;

    // Deleted: the verdict and the material go too.
    secrets.delete(&key).await.unwrap();
    wait_for(&verdicts, &key, |v| v.is_none()).await;
    wait_for(&trust, &key, |v| v.is_none()).await;

    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), service).await.expect("stops promptly").unwrap();
    assert!(result.is_ok(), "{result:?}");
}

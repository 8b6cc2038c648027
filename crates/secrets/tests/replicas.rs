//! Two secrets services side by side (issue 11: services that may scale out write without
//! duplicates): each change of a Secret is written to the verdicts once, by whichever
//! replica is first; the other finds it there. Its own process: the barrier counts both
//! replicas' work in the process-wide metrics.

use futures_util::StreamExt;
use portico_bus::nats::{connect, ensure_buckets, Buckets, ConnectConfig};
use portico_bus::{seal, TraceContext};
use portico_model::{Meta, Secret};
use portico_secrets::service::{run, ServiceConfig};
use portico_testkit::NatsServer;
use std::time::Duration;

fn secret_with_a_new_ca() -> Secret {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "replicas test ca");
    let key = rcgen::KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    Secret {
        meta: Meta { namespace: "shop".parse().unwrap(), name: "ca".parse().unwrap() },
        secret_type: "Opaque".into(),
        holder: portico_model::Holder::Secret,
        data: [("ca.crt".to_owned(), pem.into_bytes())].into_iter().collect(),
    }
}

/// Verdicts both replicas handled: written, or found already written.
fn handled() -> f64 {
    let metrics = portico_kit::admin::render();
    ["portico_secrets_verdicts_published_total ", "portico_secrets_verdicts_already_published_total "]
        .iter()
        .filter_map(|name| metrics.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_write_each_change_once() {
    let server = NatsServer::start();
    let bus = ConnectConfig { url: server.url(), name: "test".into(), ..Default::default() };
    let client = connect(&bus).await.unwrap();
    let Buckets { secrets, verdicts, .. } = ensure_buckets(&async_nats::jetstream::new(client)).await.unwrap();
    let mut writes = verdicts.watch(">").await.unwrap();
    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    let replicas: Vec<_> = (0..2)
        .map(|_| {
            let mut stopped = stop.subscribe();
            tokio::spawn(run(
                ServiceConfig { bus: bus.clone(), revalidate_every: Duration::from_secs(3600) },
                async move {
                    let _ = stopped.recv().await;
                },
            ))
        })
        .collect();

    for change in 1..=3u32 {
        let before = handled();
        secrets.put("shop.ca", seal(&secret_with_a_new_ca(), &TraceContext::default()).into()).await.unwrap();
        // Barrier: both replicas have handled this change.
        for _ in 0..200 {
            if handled() >= before + 2.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(handled() >= before + 2.0, "both replicas handled change {change}");
    }
    // Every write is in the watch before this marker.
    verdicts.put("zz-barrier", "x".into()).await.unwrap();
    let mut written = 0;
    while let Some(entry) = tokio::time::timeout(Duration::from_secs(10), writes.next()).await.unwrap() {
        let entry = entry.unwrap();
        if entry.key == "zz-barrier" {
            break;
        }
        if entry.key == "shop.ca" {
            written += 1;
        }
    }
    assert_eq!(written, 3, "three changes, three verdicts written (not one per replica)");

    stop.send(()).unwrap();
    for replica in replicas {
        replica.await.unwrap().unwrap();
    }
}

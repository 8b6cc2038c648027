//! The bus on a NATS cluster (issue 11): three real nats-servers on loopback with routes.
//! Buckets are created with the configured replica count, an existing bucket follows a
//! changed count, and a client given every server's URL keeps working when the server it
//! is connected to dies.

use portico_bus::nats::{connect, ensure_buckets_replicated, Buckets, ConnectConfig};
use portico_testkit::NatsCluster;
use std::time::Duration;

async fn replicas(buckets: &Buckets) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for kv in [
        &buckets.objects,
        &buckets.secrets,
        &buckets.verdicts,
        &buckets.trust,
        &buckets.model,
        &buckets.status,
        &buckets.applied,
        &buckets.leases,
    ] {
        let info = kv.stream.get_info().await.unwrap();
        out.push((info.config.name.clone(), info.config.num_replicas));
    }
    out
}

/// Buckets on the cluster, retried while JetStream elects its meta leader.
async fn buckets_on(js: &async_nats::jetstream::Context, count: usize) -> Buckets {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match ensure_buckets_replicated(js, count).await {
            Ok(buckets) => return buckets,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("waiting for the cluster: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("the cluster never served JetStream: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_follow_the_configured_replicas_and_a_client_survives_its_servers_death() {
    let mut cluster = NatsCluster::start(3);
    let config = ConnectConfig { url: cluster.urls(), name: "test".into(), replicas: 3, ..Default::default() };
    let client = connect(&config).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());

    let buckets = buckets_on(&js, 3).await;
    for (stream, count) in replicas(&buckets).await {
        assert_eq!(count, 3, "{stream} created with three replicas");
    }
    let store = js.get_stream("OBJ_portico-model-store").await.unwrap().get_info().await.unwrap();
    assert_eq!(store.config.num_replicas, 3, "the object store too");

    // A configuration of one replica: the existing buckets follow, not silently kept.
    let buckets = buckets_on(&js, 1).await;
    for (stream, count) in replicas(&buckets).await {
        assert_eq!(count, 1, "{stream} changed to one replica");
    }
    let buckets = buckets_on(&js, 3).await;
    for (stream, count) in replicas(&buckets).await {
        assert_eq!(count, 3, "{stream} changed back to three");
    }

    // Kill the server this client is connected to: it reconnects to another, and an R3
    // bucket still has the value written before.
    buckets.objects.put("before", "1".into()).await.unwrap();
    let connected = client.server_info().port;
    let i = cluster.ports.iter().position(|p| *p == connected).expect("connected to one of them");
    cluster.kill(i);
    let killed_at = tokio::time::Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match buckets.objects.get("before").await {
            Ok(Some(value)) => {
                assert_eq!(&value[..], b"1");
                break;
            }
            other if tokio::time::Instant::now() < deadline => {
                eprintln!("waiting for the failover: {other:?}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            other => panic!("no failover within 30 s: {other:?}"),
        }
    }
    // Writes resume once the stream has elected a leader among the survivors (the services
    // retry as this does: a failed write restarts their session).
    loop {
        match buckets.objects.put("after", "2".into()).await {
            Ok(_) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("waiting for a stream leader: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("no write within 30 s of the server's death: {e}"),
        }
    }
    eprintln!("reads and writes resumed {:?} after the server died", killed_at.elapsed());
    assert_ne!(client.server_info().port, connected, "now connected to another server");
}

//! `portico status` on a NATS cluster (issue 11): for each bucket it reads, the replicas,
//! the server leading its stream and whether the other replicas are current, also after
//! the leader's server died. Three real nats-servers on loopback.

use portico_bus::nats::{connect, ensure_buckets_replicated, ConnectConfig};
use portico_deploy::status;
use portico_testkit::NatsCluster;
use std::time::Duration;

async fn report_where(
    client: &async_nats::Client,
    what: &str,
    done: impl Fn(&status::Report) -> bool,
) -> status::Report {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let report = match status::open(client).await {
            Ok(buckets) => status::collect(&buckets).await.ok(),
            Err(_) => None,
        };
        if let Some(report) = report {
            if done(&report) {
                return report;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what} never happened: {:?}", report.nats);
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: the status could not be read");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_each_buckets_replicas_leader_and_their_health() {
    let mut cluster = NatsCluster::start(3);
    let config = ConnectConfig { url: cluster.urls(), name: "test".into(), replicas: 3, ..Default::default() };
    let client = connect(&config).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Err(e) = ensure_buckets_replicated(&js, 3).await {
        assert!(tokio::time::Instant::now() < deadline, "the cluster never served JetStream: {e}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let healthy = |r: &status::Report| {
        r.nats.len() == 4
            && r.nats
                .iter()
                .all(|h| h.replicas == 3 && h.leader.is_some() && h.peers.len() == 2 && h.peers.iter().all(|p| p.1))
    };
    let report = report_where(&client, "every bucket led, with two current replicas", healthy).await;
    let text = status::render(&report);
    assert!(text.contains("BUCKET") && text.contains("OTHER REPLICAS"), "{text}");
    let model = report.nats.iter().find(|h| h.bucket == "portico-model").expect("the model bucket").clone();
    let leader = model.leader.clone().unwrap();
    let line = text.lines().find(|l| l.starts_with("portico-model ")).expect("the model bucket's line");
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&columns[..3], &["portico-model", "3", leader.as_str()], "{text}");
    assert!(text.contains("NATS servers: n0 up, n1 up, n2 up"), "{text}");

    // The model stream's leader dies: another server leads it, and the dead one is shown
    // as not current.
    let dead: usize = leader.trim_start_matches('n').parse().expect("servers are named n0, n1, n2");
    cluster.kill(dead);
    let report = report_where(&client, "a new leader, the dead server behind", |r| {
        r.nats.iter().any(|h| {
            h.bucket == "portico-model"
                && h.leader.as_deref().is_some_and(|l| l != leader)
                && h.peers.iter().any(|(name, current)| *name == leader && !current)
        })
    })
    .await;
    let text = status::render(&report);
    assert!(text.contains(&format!("{leader} BEHIND")), "{text}");
    let servers = text.lines().find(|l| l.starts_with("NATS servers: ")).expect("the servers' line");
    assert!(servers.contains(&format!("{leader} BEHIND or down")), "{servers}");
    assert_eq!(servers.matches(" up").count(), 2, "the two others are up: {servers}");
}

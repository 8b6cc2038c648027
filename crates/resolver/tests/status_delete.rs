//! A status whose delete fails is deleted later, never forgotten (the resolver keeps the
//! key and retries it with the next change). The failure is real: the nats-server's
//! configuration is changed under the running resolver (SIGHUP reload) to deny its user
//! the one subject of that status, and allowed again afterwards. In its own process: the
//! failure counter it waits for is process-wide.

use portico_bus::nats::{connect, ensure_buckets, Buckets, ConnectConfig};
use portico_resolver::service::{run, ServiceConfig};
use portico_testkit::{eventually, NatsServer};
use std::time::Duration;

const GONE_KEY: &str = "httpproxy.shop.gone";

/// Every service but the resolver logs in as `all`; the resolver as `resolver`, denied the
/// subjects in `denied` (and, to tell when a reload took effect, `probe.denied` with them).
fn config(denied: &[&str]) -> String {
    let deny: Vec<String> = denied
        .iter()
        .chain(["probe.denied"].iter().filter(|_| !denied.is_empty()))
        .map(|s| format!("\"{s}\""))
        .collect();
    let permissions = if deny.is_empty() {
        String::new()
    } else {
        format!(", permissions: {{ publish: {{ deny: [{}] }} }}", deny.join(", "))
    };
    format!(
        "authorization {{ users: [\n  {{ user: \"all\", password: \"all\" }},\n  {{ user: \"resolver\", password: \"resolver\"{permissions} }}\n] }}"
    )
}

fn bus(server: &NatsServer, user: &str) -> ConnectConfig {
    ConnectConfig {
        url: server.url(),
        name: format!("test-{user}"),
        user_password: Some((user.into(), user.into())),
        ..Default::default()
    }
}

/// Whether the resolver's user may publish to `probe.denied` now: a request there is
/// answered (by `all`'s subscriber) only when it may.
async fn resolver_may_publish(resolver: &async_nats::Client) -> bool {
    let request = resolver.request("probe.denied", "?".into());
    matches!(tokio::time::timeout(Duration::from_millis(500), request).await, Ok(Ok(_)))
}

fn delete_failures() -> f64 {
    portico_kit::admin::render()
        .lines()
        .find_map(|l| l.strip_prefix("portico_resolver_status_delete_failures_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn proxy(name: &str) -> String {
    format!(
        "apiVersion: projectcontour.io/v1\nkind: HTTPProxy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  virtualhost: {{fqdn: {name}.example.com}}\n  routes:\n  - services: [{{name: missing, port: 80}}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_whose_delete_failed_is_deleted_with_a_later_change() {
    let server = NatsServer::start_configured(&config(&[]));
    let all = bus(&server, "all");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gone.yaml"), proxy("gone")).unwrap();
    std::fs::write(dir.path().join("kept.yaml"), proxy("kept")).unwrap();

    let (stop, stopped) = tokio::sync::broadcast::channel::<()>(1);
    let until_stopped = |mut rx: tokio::sync::broadcast::Receiver<()>| async move {
        let _ = rx.recv().await;
    };
    let watcher = tokio::spawn(portico_watcher::service::run(
        portico_watcher::service::ServiceConfig {
            paths: vec![dir.path().to_owned()],
            bus: all.clone(),
            poll_every: Duration::from_millis(50),
            rescan_every: Duration::from_secs(3600),
        },
        until_stopped(stop.subscribe()),
    ));
    let secrets = tokio::spawn(portico_secrets::service::run(
        portico_secrets::service::ServiceConfig { bus: all.clone(), revalidate_every: Duration::from_secs(3600) },
        until_stopped(stop.subscribe()),
    ));
    let mut resolver_config =
        ServiceConfig::new(bus(&server, "resolver"), portico_resolver::Config::default(), "resolver".into());
    resolver_config.holdoff = Duration::from_millis(20);
    let resolver = tokio::spawn(run(resolver_config, until_stopped(stopped)));

    let client = connect(&all).await.unwrap();
    let buckets: Buckets = ensure_buckets(&async_nats::jetstream::new(client.clone())).await.unwrap();
    // Answers the probe requests of the resolver's user.
    let mut probes = client.subscribe("probe.denied").await.unwrap();
    let answerer = {
        let client = client.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            while let Some(message) = probes.next().await {
                if let Some(reply) = message.reply {
                    let _ = client.publish(reply, "yes".into()).await;
                }
            }
        })
    };
    let resolver_user = connect(&bus(&server, "resolver")).await.unwrap();
    eventually("both statuses", || async {
        buckets.status.get(GONE_KEY).await.unwrap().is_some()
            && buckets.status.get("httpproxy.shop.kept").await.unwrap().is_some()
    })
    .await;

    // The resolver may no longer write the status of `gone`; then `gone` is deleted.
    server.reconfigure(&config(&[&format!("$KV.portico-status.{GONE_KEY}")]));
    eventually("the reload to deny the resolver", || async { !resolver_may_publish(&resolver_user).await }).await;
    let failures = delete_failures();
    std::fs::remove_file(dir.path().join("gone.yaml")).unwrap();
    eventually("the delete to fail", || async { delete_failures() > failures }).await;
    assert!(buckets.status.get(GONE_KEY).await.unwrap().is_some(), "the delete was refused");

    // Allowed again; a later change (a new object) makes the resolver publish, and the
    // status of `gone` is deleted with it.
    server.reconfigure(&config(&[]));
    eventually("the reload to allow the resolver", || resolver_may_publish(&resolver_user)).await;
    std::fs::write(dir.path().join("later.yaml"), proxy("later")).unwrap();
    eventually("the later object's status", || async {
        buckets.status.get("httpproxy.shop.later").await.unwrap().is_some()
    })
    .await;
    // The retry runs in the same publish as that status, before it.
    assert!(buckets.status.get(GONE_KEY).await.unwrap().is_none(), "the status of the deleted object is still there");

    answerer.abort();
    stop.send(()).unwrap();
    let limit = Duration::from_secs(5);
    tokio::time::timeout(limit, resolver).await.expect("stops").unwrap().unwrap();
    tokio::time::timeout(limit, secrets).await.expect("stops").unwrap().unwrap();
    tokio::time::timeout(limit, watcher).await.expect("stops").unwrap().unwrap();
}

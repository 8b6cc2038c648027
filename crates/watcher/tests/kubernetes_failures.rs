//! The Kubernetes source when a watch fails: its own process (readiness is per process),
//! against the fake API server of `fake_api` and a real nats-server.

mod fake_api;

use fake_api::*;
use portico_bus::nats::ConnectConfig;
use portico_testkit::NatsServer;
use portico_watcher::kubernetes::run;
use std::time::Duration;

async fn until(what: &str, limit: Duration, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "{what} never happened:\n{}", portico_kit::admin::render());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_fails_makes_the_watcher_not_ready_until_it_works_again() {
    let nats = NatsServer::start();
    let bus = ConnectConfig { url: nats.url(), name: "test".into(), ..Default::default() };
    let api = FakeApi::start().await;
    api.put(PROXIES, proxy("shop"), false);
    let client = client(&api);
    let config = kube_config(&bus, None);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(config, client, async move {
        let _ = stopped.await;
    }));
    until("the first sync", Duration::from_secs(20), portico_kit::admin::is_ready).await;

    // RBAC takes HTTPProxies away and the watch restarts (410): the relist is refused.
    api.forbid(PROXIES, true);
    api.expire(PROXIES);
    until("not ready while a watch fails", Duration::from_secs(20), || !portico_kit::admin::is_ready()).await;
    assert!(portico_kit::admin::render().contains("portico_watcher_failing_watches 1"));

    // Access comes back: the watch's backoff retries, lists, and the watcher is ready again.
    api.forbid(PROXIES, false);
    until("ready again", Duration::from_secs(60), portico_kit::admin::is_ready).await;
    assert!(portico_kit::admin::render().contains("portico_watcher_failing_watches 0"));

    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

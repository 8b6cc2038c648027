//! The file source in process, against a real nats-server: initial sync, edits, a
//! half-saved file that must not delete anything, deletions, Secrets to their own bucket,
//! and a restart that converges.

use portico_bus::nats::{connect, ensure_buckets, Buckets, ConnectConfig};
use portico_bus::{names, open};
use portico_model::Object;
use portico_testkit::NatsServer;
use portico_watcher::service::{run, ServiceConfig};
use std::path::Path;
use std::time::Duration;

const POLL: Duration = Duration::from_millis(50);

fn service(port: u16, name: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{ports: [{{port: {port}}}]}}\n")
}

const SECRET: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: ca, namespace: shop}\nstringData: {ca.crt: x}\n";

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), portico_watcher::service::ServiceError>>,
}

fn start(dir: &Path, bus: &ConnectConfig) -> Running {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // The safety rescan is an hour away: every change below is found by notification.
    let config = ServiceConfig {
        paths: vec![dir.to_owned()],
        bus: bus.clone(),
        poll_every: POLL,
        rescan_every: Duration::from_secs(3600),
    };
    let task = tokio::spawn(run(config, async move {
        let _ = stopped.await;
    }));
    Running { stop, task }
}

impl Running {
    async fn stop(self) {
        self.stop.send(()).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(5), self.task).await.expect("stops").unwrap();
        assert!(result.is_ok(), "{result:?}");
    }
}

async fn wait_for(store: &async_nats::jetstream::kv::Store, key: &str, done: impl Fn(Option<Object>) -> bool) {
    for _ in 0..200 {
        let value = store.get(key).await.unwrap().map(|raw| open::<Object>(&raw).expect("an object").0);
        if done(value) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{key} in {} never reached the expected state", store.name);
}

fn port_is(expected: u16) -> impl Fn(Option<Object>) -> bool {
    move |o| matches!(o, Some(Object::Service(s)) if s.ports[0].port == expected)
}

#[tokio::test]
async fn files_become_objects_on_the_bus_and_follow_every_edit() {
    let server = NatsServer::start();
    let bus = ConnectConfig { url: server.url(), name: "test".into(), ..Default::default() };
    let client = connect(&bus).await.unwrap();
    let Buckets { objects, secrets, .. } = ensure_buckets(&async_nats::jetstream::new(client)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.yaml");
    std::fs::write(&file, format!("{}---\n{SECRET}", service(80, "web"))).unwrap();
    std::fs::write(dir.path().join("other.yaml"), service(81, "other")).unwrap();

    let watcher = start(dir.path(), &bus);
    let web = "service.shop.web";
    wait_for(&objects, web, port_is(80)).await;
    assert!(objects.get(names::sync_key(portico_model::Kind::HttpProxy)).await.unwrap().is_some(), "sync markers");
    assert!(secrets.get("shop.ca").await.unwrap().is_some(), "the Secret is in the secrets bucket");
    assert!(objects.get("secret.shop.ca").await.unwrap().is_none(), "and nowhere else");

    // An edit.
    std::fs::write(&file, format!("{}---\n{SECRET}", service(8080, "web"))).unwrap();
    wait_for(&objects, web, port_is(8080)).await;

    // A half-saved file: nothing of it is deleted or changed. The barrier: another file
    // written after it, whose object can be published only by a scan that read both.
    std::fs::write(&file, "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop\n").unwrap();
    std::fs::write(dir.path().join("barrier.yaml"), service(82, "barrier")).unwrap();
    wait_for(&objects, "service.shop.barrier", port_is(82)).await;
    let web_now = objects.get(web).await.unwrap().map(|raw| open::<Object>(&raw).unwrap().0);
    assert!(port_is(8080)(web_now), "the broken file's Service is kept as it was");
    assert!(secrets.get("shop.ca").await.unwrap().is_some(), "the Secret of the broken file stays");

    // Fixed, with the Secret removed: the Secret goes.
    std::fs::write(&file, service(9090, "web")).unwrap();
    wait_for(&objects, web, port_is(9090)).await;
    for _ in 0..200 {
        if secrets.get("shop.ca").await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(secrets.get("shop.ca").await.unwrap().is_none(), "a removed Secret is deleted");

    // A whole file removed while the watcher is down: the restart deletes its object.
    watcher.stop().await;
    std::fs::remove_file(dir.path().join("other.yaml")).unwrap();
    assert!(objects.get("service.shop.other").await.unwrap().is_some());
    let watcher = start(dir.path(), &bus);
    wait_for(&objects, "service.shop.other", |o| o.is_none()).await;
    wait_for(&objects, web, port_is(9090)).await;
    watcher.stop().await;
}

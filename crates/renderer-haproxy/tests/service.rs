//! The HAProxy renderer service in process, with a real nats-server and a real HAProxy in
//! master-worker mode: models applied by hitless reload, a broken configuration refused
//! (HAProxy keeps serving the last good one, the applied record says why), and an older
//! generation never applied after a newer one.

use portico_bus::nats::{connect, ensure_buckets, Buckets, ConnectConfig};
use portico_bus::{names, open, seal, AppliedRecord, TraceContext};
use portico_model::{AbsPath, CaSource, Model, Verification};
use portico_renderer_haproxy::service::{run, ServiceConfig};
use portico_resolver::Config;
use portico_testkit::{http_get, pipeline, repo, NatsServer};
use std::time::Duration;

async fn publish(buckets: &Buckets, generation: u64, model: &Model) {
    publish_in(buckets, 1, generation, model).await
}

async fn publish_in(buckets: &Buckets, epoch: u64, generation: u64, model: &Model) {
    let version = portico_bus::Version { epoch, generation };
    portico_bus::model::publish_whole(buckets, model, version).await.unwrap();
}

/// The first record of this renderer that `wanted` accepts.
async fn applied_where(buckets: &Buckets, wanted: impl Fn(&AppliedRecord) -> bool) -> AppliedRecord {
    let mut last = None;
    for _ in 0..400 {
        if let Some(raw) = buckets.applied.get("haproxy.test").await.unwrap() {
            let (record, _) = open::<AppliedRecord>(&raw).unwrap();
            if wanted(&record) {
                return record;
            }
            last = Some(record);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no such record was reported; the last: {last:?}");
}

async fn applied(buckets: &Buckets, generation: u64) -> AppliedRecord {
    for _ in 0..200 {
        if let Some(raw) = buckets.applied.get("haproxy.test").await.unwrap() {
            let (record, _) = open::<AppliedRecord>(&raw).unwrap();
            if record.generation == generation {
                return record;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("generation {generation} was never reported");
}

// A current-thread runtime on purpose: the renderer must do its blocking work (haproxy -c,
// the reload confirmation) on blocking threads; block_in_place would panic here.
#[tokio::test(flavor = "current_thread")]
async fn models_are_applied_by_reload_and_a_broken_one_never_replaces_a_working_one() {
    let server = NatsServer::start();
    let bus = ConnectConfig { url: server.url(), name: "test".into(), ..Default::default() };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let work = tempfile::tempdir().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(run(
        ServiceConfig {
            bus: bus.clone(),
            work_dir: work.path().canonicalize().unwrap(),
            haproxy: "haproxy".into(),
            http_port: port,
            https_port: None,
            bind_address: "127.0.0.1".parse().unwrap(),
            instance: "test".into(),
            external_haproxy: false,
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let get = |host: &'static str, path: &'static str| async move {
        tokio::task::spawn_blocking(move || http_get(port, host, path)).await.unwrap()
    };
    // Before any model: HAProxy runs and answers 404.
    let mut first = None;
    for _ in 0..100 {
        if let Ok(answer) = get("any.test", "/").await {
            first = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(first.expect("HAProxy listens before any model").0, 404);

    let client = connect(&bus).await.unwrap();
    let buckets = ensure_buckets(&async_nats::jetstream::new(client)).await.unwrap();
    let config = Config { http_port: port, ..Config::default() };
    let (model, trust) = pipeline(&[repo().join("examples/upstream-tls")], &config);
    for material in trust.values() {
        let key = names::secret_key(&material.secret);
        buckets.trust.put(key, seal(material, &TraceContext::default()).into()).await.unwrap();
    }
    publish(&buckets, 1, &model).await;
    let one = applied(&buckets, 1).await;
    assert_eq!(one.error, None, "{one:?}");
    let (status, body) = get("shop.example.com", "/legacy").await.unwrap();
    assert_eq!((status, body.as_str()), (503, "route in error, see its status"));

    // A Voyager-style CA file that does not exist on this host (issue 10, item 8): only the
    // routes of its cluster answer 503; HAProxy is not made to refuse the whole config.
    let mut one_bad = model.clone();
    let storefront =
        one_bad.clusters.iter_mut().find(|c| c.name.as_str().starts_with("shop_storefront_")).expect("storefront");
    if let Some(tls) = &mut storefront.key.tls {
        if let Verification::Required { ca, .. } = &mut tls.verify {
            *ca = CaSource::File("/nonexistent/portico/ca.pem".parse::<AbsPath>().unwrap());
        }
    }
    publish(&buckets, 2, &one_bad).await;
    let two = applied(&buckets, 2).await;
    assert_eq!(two.error, None, "{two:?}");
    assert!(two.problems.iter().any(|p| p.contains("cannot be read on the HAProxy host")), "{two:?}");
    let (status, body) = get("shop.example.com", "/").await.unwrap();
    assert_eq!((status, body.as_str()), (503, "route in error, see its status"), "the bad file's route");
    let (_, body) = get("shop.example.com", "/payments").await.unwrap();
    assert_ne!(body, "route in error, see its status", "another cluster's route is served as before");

    // A configuration HAProxy refuses (trust material that does not parse, whatever its
    // hash says): it never replaces the working one, and the record says why.
    let internal = trust.values().find(|m| m.secret.name.as_str() == "internal-ca").expect("internal-ca").clone();
    let mut corrupt = internal.clone();
    corrupt.ca.as_mut().unwrap().pem =
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n".into();
    let key = names::secret_key(&internal.secret);
    buckets.trust.put(key.clone(), seal(&corrupt, &TraceContext::default()).into()).await.unwrap();
    let refused = applied_where(&buckets, |r| r.generation == 2 && r.error.is_some()).await;
    assert!(refused.error.as_deref().unwrap_or_default().contains("haproxy -c refused"), "{refused:?}");
    let (status, body) = get("shop.example.com", "/").await.unwrap();
    assert_eq!((status, body.as_str()), (503, "route in error, see its status"), "still serving what was applied");
    buckets.trust.put(key, seal(&internal, &TraceContext::default()).into()).await.unwrap();
    assert_eq!(applied_where(&buckets, |r| r.generation == 2 && r.error.is_none()).await.error, None);

    // A good generation after the broken one is applied; an older one afterwards is not.
    publish(&buckets, 3, &Model::default()).await;
    assert_eq!(applied(&buckets, 3).await.error, None);
    assert_eq!(get("shop.example.com", "/legacy").await.unwrap().0, 404, "generation 3 has no routes");
    // An older generation is never applied; a new epoch (a resolver that found no model
    // on the bus: NATS lost its state) is followed although its generation is lower. The
    // second is the barrier for the first: models are taken in order.
    let mut reports = buckets.applied.watch("haproxy.test").await.unwrap();
    publish(&buckets, 1, &model).await;
    publish_in(&buckets, 2, 1, &model).await;
    loop {
        use futures_util::StreamExt;
        let entry = tokio::time::timeout(Duration::from_secs(20), reports.next()).await.unwrap().unwrap().unwrap();
        let (record, _) = open::<AppliedRecord>(&entry.value).unwrap();
        assert_ne!((record.epoch, record.generation), (1, 1), "an older generation was applied");
        if (record.epoch, record.generation) == (2, 1) {
            assert_eq!(record.error, None);
            break;
        }
    }
    assert_eq!(get("shop.example.com", "/legacy").await.unwrap().0, 503, "the new epoch's model is served");

    // HAProxy is killed (its workers end with the master): the renderer starts it again
    // on the configuration it ran, without a new model.
    let work_dir = work.path().canonicalize().unwrap();
    let killed = portico_renderer_haproxy::apply::running_master(&work_dir).expect("a master answers");
    // SAFETY: kill(2) on the HAProxy this test's renderer started.
    unsafe { libc::kill(killed as libc::pid_t, libc::SIGKILL) };
    let mut back = None;
    for _ in 0..200 {
        let master = portico_renderer_haproxy::apply::running_master(&work_dir);
        if master.is_some_and(|pid| pid != killed) {
            if let Ok(answer) = get("shop.example.com", "/legacy").await {
                back = Some(answer.0);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(back, Some(503), "a new HAProxy serves the last applied model");

    stop.send(()).unwrap();
    service.await.unwrap().unwrap();
}

/// HAProxy in its own container (here: a process the test starts) sharing the work
/// directory: the renderer writes a first configuration, waits for the master socket,
/// applies models by reload through it, and leaves HAProxy running when it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_haproxy_is_configured_through_the_shared_directory_and_outlives_the_renderer() {
    let server = NatsServer::start();
    let bus = ConnectConfig { url: server.url(), name: "test".into(), ..Default::default() };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let work = tempfile::tempdir().unwrap();
    let work_dir = work.path().canonicalize().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(run(
        ServiceConfig {
            bus: bus.clone(),
            work_dir: work_dir.clone(),
            haproxy: "haproxy".into(),
            http_port: port,
            https_port: None,
            bind_address: "127.0.0.1".parse().unwrap(),
            instance: "test".into(),
            external_haproxy: true,
        },
        async move {
            let _ = stopped.await;
        },
    ));
    // The "haproxy container": waits for the configuration, then runs HAProxy.
    for _ in 0..100 {
        if work_dir.join("haproxy.cfg").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut haproxy = std::process::Command::new("haproxy")
        .args(["-W", "-db", "-S"])
        .arg(work_dir.join("master.sock"))
        .arg("-f")
        .arg(work_dir.join("haproxy.cfg"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("haproxy");

    let client = connect(&bus).await.unwrap();
    let buckets = ensure_buckets(&async_nats::jetstream::new(client)).await.unwrap();
    let (model, trust) =
        pipeline(&[repo().join("examples/upstream-tls")], &Config { http_port: port, ..Config::default() });
    for material in trust.values() {
        let key = names::secret_key(&material.secret);
        buckets.trust.put(key, seal(material, &TraceContext::default()).into()).await.unwrap();
    }
    publish(&buckets, 1, &model).await;
    assert_eq!(applied(&buckets, 1).await.error, None);
    let get = || tokio::task::spawn_blocking(move || http_get(port, "shop.example.com", "/legacy"));
    assert_eq!(get().await.unwrap().unwrap(), (503, "route in error, see its status".to_owned()));

    stop.send(()).unwrap();
    service.await.unwrap().unwrap();
    assert!(haproxy.try_wait().unwrap().is_none(), "the renderer leaves an external HAProxy running");
    assert_eq!(get().await.unwrap().unwrap().0, 503, "and it keeps serving the last configuration");
    let _ = haproxy.kill();
    let _ = haproxy.wait();
}

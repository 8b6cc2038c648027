//! `RendererInputs::next` is cancel-safe: a renderer gives up on it whenever a timer fires
//! (the hold-back for trust material, HAProxy's liveness check), and no entry or change
//! may be lost when it does. Against a real nats-server, with a large piece that goes
//! through the object store (the longest await inside `next`).

use portico_bus::model::Publisher;
use portico_bus::nats::{connect, ensure_buckets, ConnectConfig};
use portico_bus::{TraceContext, Version};
use portico_kit::renderer_inputs::RendererInputs;
use portico_model::{Model, PathPrefix, Route};
use portico_testkit::{pipeline, repo, NatsServer};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_given_up_on_again_and_again_loses_no_generation() {
    let server = NatsServer::start();
    let client =
        connect(&ConnectConfig { url: server.url(), name: "test".into(), ..Default::default() }).await.unwrap();
    let buckets = ensure_buckets(&async_nats::jetstream::new(client)).await.unwrap();
    let mut model: Model = pipeline(&[repo().join("examples/upstream-tls")], &portico_resolver::Config::default()).0;
    // Eight virtual hosts each too large for a message: their pieces go through the object
    // store. Generation 1 has them all; generation 1 + i changes host i alone, so an entry
    // lost on the way is never written again and its generation never completes.
    const HOSTS: usize = 8;
    const ROUTES: usize = 20_000;
    let template = model.listeners[0].virtual_hosts[0].clone();
    let route = template.routes[0].clone();
    let mut routes: Vec<Route> = (0..ROUTES)
        .map(|i| Route {
            prefix: PathPrefix::try_from(format!("/p-{i:05}/with/a/longer/path")).unwrap(),
            ..route.clone()
        })
        .collect();
    routes.sort_by(|a, b| b.prefix.as_str().len().cmp(&a.prefix.as_str().len()).then(a.prefix.cmp(&b.prefix)));
    for i in 0..HOSTS {
        model.listeners[0].virtual_hosts.push(portico_model::VirtualHost {
            host: portico_model::HostMatch::parse(&format!("large-{i}.example.com")).unwrap(),
            tls: None,
            routes: routes.clone(),
        });
    }
    let large = |m: &Model, i: usize| {
        let host = format!("large-{i}.example.com");
        m.listeners[0].virtual_hosts.iter().find(|v| v.host.to_string() == host).map(|v| v.routes.len())
    };

    let publisher = {
        let (buckets, model) = (buckets.clone(), model.clone());
        tokio::spawn(async move {
            let mut publisher = Publisher::new();
            let mut next = model;
            for generation in 1..=(1 + HOSTS as u64) {
                if generation > 1 {
                    let host = format!("large-{}.example.com", generation - 2);
                    let vhost =
                        next.listeners[0].virtual_hosts.iter_mut().find(|v| v.host.to_string() == host).unwrap();
                    vhost.routes.pop();
                }
                let version = Version { epoch: 1, generation };
                publisher.publish_unfenced(&buckets, &next, version, &TraceContext::default()).await.unwrap();
            }
        })
    };

    let mut inputs = RendererInputs::new(&buckets).await.unwrap();
    let mut given_up = 0u32;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let last = 1 + HOSTS as u64;
    while inputs.model().is_none_or(|m| m.generation < last) {
        assert!(tokio::time::Instant::now() < deadline, "generation {last} never completed ({given_up} give-ups)");
        tokio::select! {
            change = inputs.next(&buckets) => { change.unwrap(); }
            () = tokio::time::sleep(Duration::from_millis(2)) => given_up += 1,
        }
    }
    publisher.await.unwrap();
    let held = inputs.model().unwrap();
    for i in 0..HOSTS {
        assert_eq!(large(&held.model, i), Some(ROUTES - 1), "large host {i}");
    }
    assert!(given_up > 10, "the test gave up on next often ({given_up})");
}

//! The model on the bus by piece, against a real nats-server: a change writes the pieces it
//! changed and nothing else, a reader puts together exactly the published model (large
//! pieces through the object store too), storage stays flat however many generations are
//! published, and a publisher whose successor took over is fenced.

use portico_bus::model::{current_index, read_current, Publisher};
use portico_bus::nats::{connect, ensure_buckets, Buckets, BusError, ConnectConfig};
use portico_bus::{TraceContext, Version};
use portico_model::{Model, PathPrefix, Route, Servers};
use portico_testkit::{pipeline, repo, NatsServer};

async fn setup(server: &NatsServer) -> Buckets {
    let client = connect(&ConnectConfig { url: server.url(), name: "portico-test".into(), ..Default::default() })
        .await
        .expect("connect");
    ensure_buckets(&async_nats::jetstream::new(client)).await.expect("buckets")
}

fn example() -> Model {
    pipeline(&[repo().join("examples/upstream-tls")], &portico_resolver::Config::default()).0
}

fn v(generation: u64) -> Version {
    Version { epoch: 7, generation }
}

async fn stream_bytes(buckets: &Buckets) -> u64 {
    // Fresh information: `status()` answers from what was cached at opening.
    buckets.model.stream.get_info().await.unwrap().state.bytes
}

#[tokio::test]
async fn a_change_writes_only_its_pieces_and_readers_get_the_published_model() {
    let server = NatsServer::start();
    let buckets = setup(&server).await;
    let trace = TraceContext::default();
    let model = example();
    let pieces = model.pieces().len();
    let mut publisher = Publisher::new();

    // A follower that lives through every generation (as a renderer's does), beside
    // readers that start afresh each time.
    let mut watch = portico_bus::nats::watch_current_and_new(&buckets.model).await.unwrap();
    let mut follower = portico_bus::model::Follower::new();
    let first = publisher.publish(&buckets, &model, v(1), &trace, None).await.unwrap();
    assert_eq!((first.written, first.deleted), (pieces, 0), "the first publish writes every piece");
    assert_eq!(follow_until(&buckets, &mut watch, &mut follower, None).await.unwrap().model, model);
    let (index, revision) = first.index.clone().unwrap();
    assert_eq!(index.pieces, pieces as u64);
    assert_eq!(read_current(&buckets).await.unwrap().unwrap().model, model, "the same model, in its order");

    // One cluster's endpoints change: one piece.
    let mut moved = model.clone();
    let Servers::Endpoints(endpoints) = &mut moved.clusters[0].servers else { panic!("endpoints") };
    let port = endpoints[0].port();
    endpoints[0].set_port(port + 1);
    let second = publisher.publish(&buckets, &moved, v(2), &trace, Some(revision)).await.unwrap();
    assert_eq!((second.written, second.deleted), (1, 0));
    let read = read_current(&buckets).await.unwrap().unwrap();
    assert_eq!((read.model, read.generation), (moved.clone(), 2));
    assert_eq!(follow_until(&buckets, &mut watch, &mut follower, None).await.unwrap().model, moved);
    assert_ne!(read.hash, index.digest, "another model, another digest");

    // Nothing changed: no generation.
    let (_, revision) = second.index.unwrap();
    let same = publisher.publish(&buckets, &moved, v(3), &trace, Some(revision)).await.unwrap();
    assert_eq!(same, Default::default());
    assert_eq!(current_index(&buckets.model).await.unwrap().unwrap().0.generation, 2);

    // A virtual host goes: one piece deleted (and the rest of that listener stays).
    let mut fewer = moved.clone();
    let listener = fewer.listeners.iter_mut().find(|l| l.virtual_hosts.len() > 1).expect("a listener with two hosts");
    listener.virtual_hosts.pop();
    let third = publisher.publish(&buckets, &fewer, v(3), &trace, Some(revision)).await.unwrap();
    assert_eq!((third.written, third.deleted), (0, 1));
    assert_eq!(read_current(&buckets).await.unwrap().unwrap().model, fewer);
    assert_eq!(follow_until(&buckets, &mut watch, &mut follower, None).await.unwrap().model, fewer);
}

/// A delta (what the resolver publishes after its first model) writes and deletes only its
/// pieces, and the generation it makes is the one a whole publish of the new model makes:
/// the same model for readers and followers, the same index digest and piece count.
#[tokio::test]
async fn a_delta_publishes_the_model_it_makes_with_the_digest_of_a_whole_publish() {
    let server = NatsServer::start();
    let buckets = setup(&server).await;
    let trace = TraceContext::default();
    let model = example();
    let mut publisher = Publisher::new();
    assert!(!publisher.can_publish_delta(), "a delta follows a whole model");
    let mut watch = portico_bus::nats::watch_current_and_new(&buckets.model).await.unwrap();
    let mut follower = portico_bus::model::Follower::new();
    let (_, revision) = publisher.publish(&buckets, &model, v(1), &trace, None).await.unwrap().index.unwrap();
    assert!(publisher.can_publish_delta());
    assert_eq!(follow_until(&buckets, &mut watch, &mut follower, None).await.unwrap().model, model);

    // One cluster's endpoints move, one virtual host goes, and an unchanged cluster is in
    // the delta too (a delta may name pieces that did not change: they are not written).
    let mut next = model.clone();
    let Servers::Endpoints(endpoints) = &mut next.clusters[0].servers else { panic!("endpoints") };
    let port = endpoints[0].port();
    endpoints[0].set_port(port + 1);
    let listener = next.listeners.iter_mut().find(|l| l.virtual_hosts.len() > 1).expect("a listener with two hosts");
    let gone = listener.virtual_hosts.pop().unwrap();
    let gone = portico_model::PieceId::VirtualHost(listener.port, gone.host);
    let delta = portico_model::ModelDelta {
        clusters: next.clusters[..2].to_vec(),
        virtual_hosts: Vec::new(),
        gone: vec![gone],
        trust: next.trust.clone(),
        client_certs: next.client_certs.clone(),
    };
    let mut applied = model.clone();
    delta.apply_to(&mut applied);
    assert_eq!(applied, next, "the delta makes the new model");
    let published = publisher.publish_delta(&buckets, &delta, v(2), &trace, Some(revision)).await.unwrap();
    assert_eq!((published.written, published.deleted), (1, 1), "only the changed cluster and the gone host");
    let read = read_current(&buckets).await.unwrap().unwrap();
    assert_eq!((&read.model, read.generation), (&next, 2));
    assert_eq!(follow_until(&buckets, &mut watch, &mut follower, None).await.unwrap().model, next);

    // A whole publish of the same model elsewhere: the same index.
    let other = NatsServer::start();
    let other = setup(&other).await;
    let whole = Publisher::new().publish(&other, &next, v(2), &trace, None).await.unwrap().index.unwrap().0;
    let (index, _) = published.index.unwrap();
    assert_eq!((index.digest, index.pieces), (whole.digest, whole.pieces));
}

#[tokio::test]
async fn a_piece_too_large_for_a_message_goes_through_the_object_store() {
    let server = NatsServer::start();
    let buckets = setup(&server).await;
    let mut model = example();
    let vhost = &mut model.listeners[0].virtual_hosts[0];
    let route = vhost.routes[0].clone();
    vhost.routes = (0..20_000)
        .map(|i| Route {
            prefix: PathPrefix::try_from(format!("/p-{i:05}/with/a/longer/path")).unwrap(),
            ..route.clone()
        })
        .collect();
    vhost.routes.sort_by(|a, b| b.prefix.as_str().len().cmp(&a.prefix.as_str().len()).then(a.prefix.cmp(&b.prefix)));
    let mut publisher = Publisher::new();
    publisher.publish(&buckets, &model, v(1), &TraceContext::default(), None).await.unwrap();
    assert_eq!(read_current(&buckets).await.unwrap().unwrap().model, model);
}

#[tokio::test]
async fn storage_stays_flat_however_many_generations_are_published() {
    let server = NatsServer::start();
    let buckets = setup(&server).await;
    let trace = TraceContext::default();
    let model = example();
    let mut other = model.clone();
    let Servers::Endpoints(endpoints) = &mut other.clusters[0].servers else { panic!("endpoints") };
    endpoints[0].set_port(1);
    let mut publisher = Publisher::new();
    let mut revision = None;
    let mut after_two = 0;
    for generation in 1..=1000u64 {
        let next = if generation % 2 == 1 { &model } else { &other };
        let published = publisher.publish(&buckets, next, v(generation), &trace, revision).await.unwrap();
        revision = Some(published.index.unwrap().1);
        if generation == 2 {
            after_two = stream_bytes(&buckets).await;
        }
    }
    let after = stream_bytes(&buckets).await;
    assert!(
        after <= after_two + 1024,
        "the model bucket grew from {after_two} to {after} bytes over 1,000 generations"
    );
}

#[tokio::test]
async fn a_publisher_whose_successor_took_over_is_fenced_and_readers_keep_the_successors_model() {
    let server = NatsServer::start();
    let buckets = setup(&server).await;
    let trace = TraceContext::default();
    let model = example();
    let mut stalled = Publisher::new();
    let (_, revision) = stalled.publish(&buckets, &model, v(1), &trace, None).await.unwrap().index.unwrap();

    // The successor reads the index, and writes every piece once.
    let mut successor = Publisher::new();
    let mut theirs = model.clone();
    theirs.listeners[0].virtual_hosts.pop();
    let (_, _) = successor.publish(&buckets, &theirs, v(2), &trace, Some(revision)).await.unwrap().index.unwrap();

    // The stalled one wakes up with a change of its own: nothing of it lands.
    let mut mine = model.clone();
    let Servers::Endpoints(endpoints) = &mut mine.clusters[0].servers else { panic!("endpoints") };
    endpoints[0].set_port(2);
    let err = stalled.publish(&buckets, &mine, v(2), &trace, Some(revision)).await.unwrap_err();
    assert!(matches!(err, BusError::Fenced { .. }), "{err}");
    let read = read_current(&buckets).await.unwrap().unwrap();
    assert_eq!((read.model, read.generation), (theirs, 2));
}

/// Entries of the model bucket into a follower until it hands out a generation, or until
/// the entry with key `until` (a barrier) has been applied.
async fn follow_until(
    buckets: &Buckets,
    watch: &mut async_nats::jetstream::kv::Watch,
    follower: &mut portico_bus::model::Follower,
    until: Option<&str>,
) -> Option<portico_bus::ModelRecord> {
    use futures_util::StreamExt;
    loop {
        let entry = tokio::time::timeout(std::time::Duration::from_secs(10), watch.next())
            .await
            .expect("an entry within 10 s")
            .unwrap()
            .unwrap();
        if let portico_bus::model::Followed::Model(_) = follower.apply(buckets, &entry).await.unwrap() {
            return follower.current().cloned();
        }
        if until == Some(entry.key.as_str()) {
            return None;
        }
    }
}

#[tokio::test]
async fn a_publish_interrupted_half_way_is_never_handed_out_and_the_next_one_is_whole() {
    let server = NatsServer::start();
    let buckets = setup(&server).await;
    let trace = TraceContext::default();
    let model = example();
    Publisher::new().publish(&buckets, &model, v(1), &trace, None).await.unwrap();
    let mut watch = portico_bus::nats::watch_current_and_new(&buckets.model).await.unwrap();
    let mut follower = portico_bus::model::Follower::new();
    let first = follow_until(&buckets, &mut watch, &mut follower, None).await.unwrap();
    assert_eq!((first.generation, first.model), (1, model.clone()));

    // A resolver dies after writing one piece of its next generation, before the index.
    let mut half = model.clone();
    let Servers::Endpoints(endpoints) = &mut half.clusters[0].servers else { panic!("endpoints") };
    endpoints[0].set_port(3);
    let piece = half.pieces().into_iter().next().unwrap();
    let key = portico_bus::model::piece_key(&piece.identity());
    let sealed = portico_bus::seal(&piece, &trace);
    portico_bus::nats::put_blob(&buckets.model, &buckets.model_store, &key, &sealed).await.unwrap();
    // And a piece that cannot be read: skipped, never fatal to the follower.
    buckets.model.put("piece.garbage", b"\xff\xff".to_vec().into()).await.unwrap();
    let mut unreadable = None;
    while unreadable.is_none() {
        use futures_util::StreamExt;
        let entry = watch.next().await.unwrap().unwrap();
        match follower.apply(&buckets, &entry).await.expect("a bad entry is not an error") {
            portico_bus::model::Followed::Unreadable(what) => unreadable = Some(what),
            portico_bus::model::Followed::Model(..) => panic!("a generation was handed out"),
            portico_bus::model::Followed::Nothing => {}
        }
    }
    // The barrier: a later entry, applied after those two.
    buckets.model.put("barrier", b"x".to_vec().into()).await.unwrap();
    assert_eq!(follow_until(&buckets, &mut watch, &mut follower, Some("barrier")).await, None, "nothing handed out");
    assert_eq!(read_current(&buckets).await.unwrap(), None, "nor to a renderer that starts now");

    // Its successor publishes the next generation whole: exactly its model is handed out.
    let mut next = model.clone();
    next.listeners[0].virtual_hosts.pop();
    let (_, revision) = current_index(&buckets.model).await.unwrap().unwrap();
    Publisher::new().publish(&buckets, &next, v(2), &trace, Some(revision)).await.unwrap();
    let second = follow_until(&buckets, &mut watch, &mut follower, None).await.unwrap();
    assert_eq!((second.generation, second.model), (2, next));
}

#[test]
fn pieces_put_in_or_taken_out_one_by_one_give_the_model_put_together_whole() {
    let model = example();
    let mut pieces = model.pieces();
    // Any order: reversed, then every other one first.
    pieces.reverse();
    let (even, odd): (Vec<_>, Vec<_>) = pieces.iter().cloned().enumerate().partition(|(i, _)| i % 2 == 0);
    let mut built = Model::default();
    for (_, piece) in even.into_iter().chain(odd) {
        built.put_piece(piece);
    }
    assert_eq!(built, model);
    // Taking pieces out leaves what the rest put together would be.
    let gone: Vec<_> =
        pieces.iter().filter(|p| !matches!(p, portico_model::ModelPiece::Rest { .. })).step_by(3).cloned().collect();
    for piece in &gone {
        built.remove_piece(&piece.id());
    }
    let rest: Vec<_> = pieces.iter().filter(|p| !gone.contains(p)).collect();
    assert_eq!(built, Model::from_pieces(rest));
    // Putting a piece again replaces it.
    built.put_piece(gone[0].clone());
    built.put_piece(gone[0].clone());
    assert_eq!(built.pieces().iter().filter(|p| p.id() == gone[0].id()).count(), 1);
}

/// Renderers key their caches by piece digest: the follower gives one for every piece of
/// the model it hands out, and a generation changes exactly the digests of the pieces it
/// changed.
#[tokio::test]
async fn the_follower_gives_each_piece_a_digest_that_changes_with_it_alone() {
    use futures_util::StreamExt;
    use portico_bus::model::{Followed, Follower};
    let server = NatsServer::start();
    let buckets = setup(&server).await;
    let model = example();
    let mut changed = model.clone();
    let Servers::Endpoints(endpoints) = &mut changed.clusters[0].servers else { panic!("endpoints") };
    endpoints[0].set_port(1);
    let mut publisher = Publisher::new();
    let mut watch = portico_bus::nats::watch_current_and_new(&buckets.model).await.unwrap();
    let mut follower = Follower::new();
    let mut digests = Vec::new();
    for (generation, next) in [(1, &model), (2, &changed)] {
        publisher
            .publish(&buckets, next, v(generation), &TraceContext::default(), digests.last().map(|(_, r)| *r))
            .await
            .unwrap();
        let revision = current_index(&buckets.model).await.unwrap().unwrap().1;
        loop {
            let entry = watch.next().await.unwrap().unwrap();
            if let Followed::Model(_) = follower.apply(&buckets, &entry).await.unwrap() {
                if follower.current().unwrap().generation == generation {
                    break;
                }
            }
        }
        let of: std::collections::HashMap<_, _> =
            next.pieces().iter().map(|p| (p.id(), follower.piece_digest(&p.id()).expect("a digest"))).collect();
        // What tests and benchmarks that render without a bus key their builders with.
        assert_eq!(of, portico_bus::model::digests_of(next), "digests_of gives the follower's digests");
        digests.push((of, revision));
    }
    let (one, two) = (&digests[0].0, &digests[1].0);
    let differ: Vec<_> = one.keys().filter(|id| one[*id] != two[*id]).collect();
    assert_eq!(differ, vec![&portico_model::PieceId::Cluster(model.clusters[0].name.clone())]);
}

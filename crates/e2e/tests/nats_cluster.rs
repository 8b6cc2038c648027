//! Scale-out on a NATS cluster (issue 11), end to end: three real nats-servers on loopback
//! with routes and every bucket at three replicas; two secrets services, two resolvers
//! (one publishing by lease), two renderer-envoys with an Envoy each, the watcher, and
//! renderer-haproxy with HAProxy; a request loop through all three proxies.
//!
//! The nats-server leading the model stream is killed just after a change is written,
//! later brought back with an empty store (a lost volume), and once it has caught up, the
//! server then leading the model stream is killed too. Every change made before, during
//! and after is served by every proxy, no applied generation goes back, and requests to a
//! route that never changes never fail. The figures printed: changes made and served, and
//! the time from each server's loss until a change made at that moment is served.

use portico_deploy::nats_config::User;
use portico_deploy::status;
use portico_deploy::up::{Part, Replicas};
use portico_e2e::{steps, LocalStack};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// GETs of the demo's unchanged route through each proxy, one after the other on new
/// connections, until stopped.
struct Requests {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Requests {
    fn start(proxies: &[(String, SocketAddr)]) -> Requests {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let threads = proxies
            .iter()
            .cloned()
            .map(|(name, address)| {
                let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let answer = portico_testkit::http_get_at(address, "web.example.com", "/");
                        sent.fetch_add(1, Ordering::SeqCst);
                        match answer {
                            Ok((200, _)) => {}
                            Ok((status, body)) => failed.lock().unwrap().push(format!("{name}: {status} {body}")),
                            Err(e) => failed.lock().unwrap().push(format!("{name}: {e}")),
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        Requests { stop, sent, failed, threads }
    }

    /// Stop the loop: how many were sent, and the failures.
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            thread.join().expect("a request thread");
        }
        (self.sent.load(Ordering::SeqCst), self.failed.lock().unwrap().clone())
    }
}

/// What the bus says, as `portico status` reads it; `None` while it cannot be read (a
/// server just died, a stream elects a leader).
fn report(stack: &LocalStack) -> Option<status::Report> {
    let bus = stack.stack.bus(User::Cli);
    portico_deploy::up::runtime().block_on(async {
        let read = async {
            let client = portico_bus::nats::connect(&bus).await.ok()?;
            let buckets = status::open(&client).await.ok()?;
            status::collect(&buckets).await.ok()
        };
        tokio::time::timeout(Duration::from_secs(5), read).await.ok().flatten()
    })
}

/// Wait until `found` gives something from the bus's report (30 s).
fn wait_for<T>(stack: &LocalStack, what: &str, found: impl Fn(&status::Report) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = report(stack).as_ref().and_then(&found) {
            return value;
        }
        assert!(Instant::now() < deadline, "{what} never happened\n{}", stack.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The server (its index) leading the model's stream.
fn model_leader(report: &status::Report) -> Option<u8> {
    let model = report.nats.iter().find(|h| h.bucket == portico_bus::names::MODEL)?;
    model.leader.as_deref()?.strip_prefix("portico-")?.parse().ok()
}

/// Every bucket led, with all its other replicas current.
fn all_current(report: &status::Report) -> Option<()> {
    let healthy = !report.nats.is_empty()
        && report.nats.iter().all(|h| {
            h.error.is_none() && h.leader.is_some() && h.peers.len() == 2 && h.peers.iter().all(|(_, current)| *current)
        });
    healthy.then_some(())
}

#[test]
fn every_change_is_served_while_nats_servers_die_and_one_comes_back_empty() {
    let replicas = Replicas { nats: 3, secrets: 2, resolvers: 2, envoys: 2 };
    let steps_yaml = steps(0);
    let mut stack = LocalStack::start_with(&[("steps.yaml", &steps_yaml)], &[], replicas);
    let proxies: Vec<(String, SocketAddr)> = vec![
        ("haproxy".into(), stack.address(portico_e2e::Via::Haproxy)),
        ("envoy".into(), stack.envoy_address(0)),
        ("envoy-1".into(), stack.envoy_address(1)),
    ];
    let limit = Duration::from_secs(60);
    // Every proxy serves `/step-n` (each step replaces the last, so an older configuration
    // answers 404); how long since `since`.
    let served = |stack: &LocalStack, n: u64, since: Instant| -> Duration {
        std::thread::scope(|s| {
            let waits: Vec<_> = proxies
                .iter()
                .map(|(_, address)| {
                    s.spawn(move || stack.until_at(*address, "steps.example.com", &format!("/step-{n}"), 200, limit))
                })
                .collect();
            for wait in waits {
                wait.join().expect("the change is served");
            }
        });
        since.elapsed()
    };
    served(&stack, 0, Instant::now());
    wait_for(&stack, "every bucket at three current replicas", all_current);

    let requests = Requests::start(&proxies);
    let mut generations: BTreeMap<String, portico_bus::Version> = BTreeMap::new();
    let mut went_back = Vec::new();
    let mut losses: Vec<(String, Duration)> = Vec::new();
    let mut first_victim = None;
    let changes = 16u64;
    for n in 1..=changes {
        let mut lost = None;
        if n == 9 {
            // The first victim comes back with an empty store, and catches up.
            let victim = first_victim.expect("a server was killed");
            stack.stack.restart_nats_wiped(victim).unwrap_or_else(|e| panic!("restarting nats-server {victim}: {e}"));
            let since = Instant::now();
            wait_for(&stack, "the wiped server catching up", all_current);
            eprintln!("nats-server-{victim} back with an empty store: every bucket current in {:?}", since.elapsed());
        }
        stack.write("steps.yaml", &steps(n));
        let written = Instant::now();
        if n == 4 || n == 12 {
            // While the change is on its way: kill the server leading the model stream.
            let leader = wait_for(&stack, "a model stream leader", model_leader);
            stack.stack.stop(Part::Nats(leader), true);
            first_victim.get_or_insert(leader);
            lost = Some(format!("nats-server-{leader} (leading the model stream) killed at change {n}"));
        }
        let took = served(&stack, n, written);
        eprintln!("change {n:>2} served by all three proxies in {:>5} ms", took.as_millis());
        if let Some(what) = lost {
            losses.push((what, took));
        }
        // Applied generations never go back.
        let applied = wait_for(&stack, "a readable report", |r| {
            Some(r.applied.iter().map(|(proxy, a)| (proxy.clone(), a.version())).collect::<Vec<_>>())
        });
        for (proxy, version) in applied {
            if let Some(before) = generations.get(&proxy) {
                if version < *before {
                    went_back.push(format!("{proxy}: {version} after {before} (change {n})"));
                }
            }
            generations.insert(proxy, version);
        }
    }
    let (sent, failed) = requests.finish();

    eprintln!("\nNATS cluster run: 3 servers, 2 secrets, 2 resolvers, 2 renderer-envoy + Envoy, HAProxy");
    eprintln!("changes made: {changes}; served by all three proxies: {changes}");
    for (what, took) in &losses {
        eprintln!("  {what}: that change served {} ms after the loss", took.as_millis());
    }
    eprintln!("requests to the unchanged route: {sent} sent, {} failed", failed.len());
    assert_eq!(losses.len(), 2, "two servers were lost");
    assert!(failed.is_empty(), "requests to a route that never changed failed: {failed:?}\n{}", stack.logs());
    assert!(went_back.is_empty(), "applied generations went back: {went_back:?}");
    assert!(sent > 100, "the request loop ran ({sent} requests)");
    let proxies_reported = generations.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        proxies_reported,
        ["envoy.portico-local", "envoy.portico-local-1", "haproxy.local"],
        "each proxy reports what it applied"
    );
}

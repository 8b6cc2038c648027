//! The whole stack as `portico up` runs it, as separate processes: a real nats-server with
//! per-service users, the five service binaries, HAProxy run by its renderer, Envoy fed by
//! ADS, and TLS backends. Edits to the manifests go live in both proxies; restarts of
//! every part, NATS included, converge without a proxy ever going back; the standby
//! resolver takes over; 50 changes under load lose no request.
//!
//! The service binaries are the workspace's (`cargo test --workspace --all-features`
//! builds them next to the test binaries).

use portico_deploy::up::Part;
use portico_e2e::{applied, steps, LocalStack, Via, BOTH};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WEB: &str = "web.example.com";

fn report_timing(what: &str, took: [Duration; 2]) {
    eprintln!("{what:<60} HAProxy {:>5} ms   Envoy {:>5} ms", took[0].as_millis(), took[1].as_millis());
}

#[test]
fn edits_to_the_manifests_go_live_in_both_proxies() {
    let wrong_ca = "apiVersion: projectcontour.io/v1
kind: HTTPProxy
metadata: {name: wrong-ca, namespace: demo}
spec:
  virtualhost: {fqdn: wrong.example.com}
  routes:
  - services:
    - name: web
      port: 8443
      validation: {caSecret: infra/internal-ca, subjectName: web.demo.svc}
";
    let stack = LocalStack::start(&[("wrong-ca.yaml", wrong_ca)]);

    // The starting point through both proxies.
    for via in BOTH {
        let (status, body) = stack.get(via, WEB, "/").unwrap();
        assert_eq!(status, 200, "{via:?}: {body}");
        assert!(body.contains("backend=web sni=web.demo.svc"), "{via:?} sends the subject name as SNI: {body}");
        assert_eq!(stack.get(via, "legacy.example.com", "/").unwrap().0, 200, "{via:?}: Voyager verifyhost");
        assert_eq!(stack.get(via, WEB, "/payments").unwrap().0, 200, "{via:?}: the delegated CA");
        assert_eq!(stack.get(via, "wrong.example.com", "/").unwrap().0, 503, "{via:?}: verified against the wrong CA");
        assert_eq!(stack.get(via, WEB, "/broken").unwrap().0, 503, "{via:?}: missing CA secret");
    }
    let web = stack.report().statuses.into_iter().find(|s| s.object.name.as_str() == "web").expect("web's status");
    let contour = web.to_contour();
    assert_eq!(contour.current_status, "invalid");
    assert_eq!(
        contour.description,
        "route \"/broken\": service \"web\": upstreamValidation requested but secret not found or misconfigured"
    );

    eprintln!("\nfrom the file write to the proxy serving the change:");
    // 1. Add a route.
    stack.write(
        "new.yaml",
        &steps(1).replace("name: steps", "name: new").replace("steps.example.com", "new.example.com"),
    );
    report_timing("add an HTTPProxy", stack.until_both("new.example.com", "/step-1", 200));

    // 2. Fix the secret: the missing CA appears, the broken route heals without other edits.
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: missing-ca, namespace: demo}}\ntype: Opaque\nstringData:\n  ca.crt: |\n{}",
        stack.demo.demo_ca_pem.lines().map(|l| format!("    {l}\n")).collect::<String>()
    );
    stack.write("fix.yaml", &secret);
    report_timing("create the missing CA secret", stack.until_both(WEB, "/broken", 200));
    let web = stack.report().statuses.into_iter().find(|s| s.object.name.as_str() == "web").unwrap();
    assert_eq!(web.to_contour().current_status, "valid", "{:?}", web.to_contour());

    // 3. Change the subject name: the backend's certificate no longer matches.
    let demo = &stack.demo.manifests;
    let from = "{caSecret: demo-ca, subjectName: web.demo.svc}";
    assert_eq!(demo.matches(from).count(), 1);
    stack.write("demo.yaml", &demo.replace(from, "{caSecret: demo-ca, subjectName: other.demo.svc}"));
    report_timing("change the subject name of /", stack.until_both(WEB, "/", 503));
    assert_eq!(stack.get(Via::Haproxy, WEB, "/payments").unwrap().0, 200, "other routes are untouched");

    // 4. Delete a Service: the Voyager Ingress's route fails closed.
    let without_legacy: Vec<&str> = demo
        .split("\n---\n")
        .filter(|doc| !(doc.contains("kind: Service\n") && doc.contains("name: legacy\n")))
        .collect();
    assert_eq!(without_legacy.len() + 1, demo.split("\n---\n").count(), "exactly the legacy Service is removed");
    stack.write("demo.yaml", &without_legacy.join("\n---\n"));
    report_timing("delete the Service behind the Voyager Ingress", stack.until_both("legacy.example.com", "/", 503));
    let legacy = stack.report().statuses.into_iter().find(|s| s.object.name.as_str() == "legacy").unwrap();
    assert_eq!(legacy.to_contour().current_status, "invalid", "{:?}", legacy.to_contour());

    // 5. Delete a file: its objects go away.
    stack.remove("new.yaml");
    report_timing("delete a manifest file", stack.until_both("new.example.com", "/step-1", 404));

    // Every service is healthy and ready, and reports what an operator needs.
    let expected: [(Part, &[&str]); 5] = [
        (Part::Watcher, &["portico_watcher_changes_published_total", "portico_watcher_objects "]),
        (
            Part::Secrets(0),
            &[
                "portico_secrets_verdicts_published_total",
                "portico_secrets_ca_expiry_timestamp_seconds{secret=\"demo.demo-ca\"}",
            ],
        ),
        (
            Part::Resolver(0),
            &[
                "portico_resolver_rebuild_duration_seconds_bucket",
                // The changes above were made while the stack ran: their latency is measured.
                "portico_resolver_change_to_published_seconds_count",
                "portico_resolver_model_generation",
                "portico_resolver_active 1",
            ],
        ),
        (
            Part::RendererHaproxy,
            &[
                "portico_renderer_haproxy_applies_total",
                "portico_renderer_haproxy_generation",
                "portico_renderer_haproxy_apply_duration_seconds_bucket",
                "portico_renderer_haproxy_published_to_applied_seconds_count",
                "portico_renderer_haproxy_change_to_applied_seconds_count",
            ],
        ),
        (
            Part::RendererEnvoy(0),
            &[
                "portico_renderer_envoy_connected_nodes 1",
                "portico_renderer_envoy_generation",
                "portico_renderer_envoy_change_to_applied_seconds_count{node=",
            ],
        ),
    ];
    for (part, metrics) in expected {
        let port = stack.stack.admin_port(part).expect("an admin port");
        assert_eq!(portico_testkit::http_get(port, "localhost", "/healthz").unwrap().0, 200, "{}", part.name());
        assert_eq!(portico_testkit::http_get(port, "localhost", "/readyz").unwrap().0, 200, "{} is ready", part.name());
        let (status, text) = portico_testkit::http_get(port, "localhost", "/metrics").unwrap();
        assert_eq!(status, 200);
        for metric in metrics {
            assert!(text.contains(metric), "{} reports {metric}:\n{text}", part.name());
        }
    }
}

/// Requests the current step's route on both proxies in a loop and records any answer
/// other than 200 once that step has been served (a proxy going back), and any
/// connection failure outside the windows where a proxy is expected to restart.
struct Watch {
    /// The step both proxies have served.
    step: Arc<AtomicU64>,
    /// The step last written (ahead of `step` while a change travels).
    written: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// While set, connection failures to that proxy are expected (it is being restarted).
    haproxy_restarting: Arc<AtomicBool>,
    envoy_restarting: Arc<AtomicBool>,
    problems: Arc<Mutex<Vec<String>>>,
    requests: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Watch {
    fn start(stack: &LocalStack) -> Watch {
        let step = Arc::new(AtomicU64::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let haproxy_restarting = Arc::new(AtomicBool::new(false));
        let envoy_restarting = Arc::new(AtomicBool::new(false));
        let problems = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicU64::new(0));
        let threads = BOTH
            .into_iter()
            .map(|via| {
                let restarting = if via == Via::Haproxy { &haproxy_restarting } else { &envoy_restarting }.clone();
                let (step, written, stop, problems, requests) =
                    (step.clone(), written.clone(), stop.clone(), problems.clone(), requests.clone());
                let address = stack.address(via);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let n = step.load(Ordering::SeqCst);
                        let result = portico_testkit::http_get_at(address, "steps.example.com", &format!("/step-{n}"));
                        requests.fetch_add(1, Ordering::SeqCst);
                        match result {
                            Ok((200, _)) => {}
                            // Only while no newer step is on its way may the route be missing.
                            Ok((status, body))
                                if step.load(Ordering::SeqCst) == n && written.load(Ordering::SeqCst) == n =>
                            {
                                problems.lock().unwrap().push(format!("{via:?} answered {status} for step {n}: {body}"))
                            }
                            Ok(_) => {} // the step moved on while the request ran
                            Err(e) if !restarting.load(Ordering::SeqCst) => {
                                problems.lock().unwrap().push(format!("{via:?}: {e} at step {n}"))
                            }
                            Err(_) => {}
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        Watch { step, written, stop, haproxy_restarting, envoy_restarting, problems, requests, threads }
    }

    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        (self.requests.load(Ordering::SeqCst), self.problems.lock().unwrap().clone())
    }
}

/// Make step `n` the current one: write it, wait until both proxies serve it, then let
/// the watch hold them to it.
fn advance(stack: &LocalStack, watch: &Watch, n: u64, what: &str) {
    watch.written.store(n, Ordering::SeqCst);
    stack.write("steps.yaml", &steps(n));
    let took = stack.until_both("steps.example.com", &format!("/step-{n}"), 200);
    watch.step.store(n, Ordering::SeqCst);
    report_timing(what, took);
}

#[test]
fn every_part_restarts_and_nats_too_and_no_proxy_ever_goes_back() {
    let mut stack = LocalStack::start(&[("steps.yaml", &steps(0))]);
    stack.until_both("steps.example.com", "/step-0", 200);
    let statuses_before = stack.report().statuses;
    let watch = Watch::start(&stack);
    let mut generations = applied(&stack);

    eprintln!("\nrestart, then one change; from the file write to the proxy serving it:");
    // (part, SIGKILL instead of SIGTERM, its store wiped too, what it is)
    let restarts: [(Part, bool, bool, &str); 10] = [
        (Part::Watcher, false, false, "watcher restarted (SIGTERM)"),
        (Part::Secrets(0), false, false, "secrets restarted (SIGTERM)"),
        (Part::Resolver(0), false, false, "resolver restarted (SIGTERM)"),
        (Part::Resolver(0), true, false, "resolver killed (SIGKILL) and started"),
        (Part::RendererHaproxy, true, false, "renderer-haproxy killed: takes over the running HAProxy"),
        (Part::RendererHaproxy, false, false, "renderer-haproxy restarted: HAProxy on the last applied"),
        (Part::RendererEnvoy(0), false, false, "renderer-envoy restarted (SIGTERM)"),
        (Part::Envoy(0), false, false, "Envoy restarted: configured again over ADS"),
        (Part::Nats(0), true, false, "nats-server killed and started (memory buckets lost)"),
        // A lost volume: the model record is gone, the resolver starts a new epoch at
        // generation 1, and both proxies must follow it (issue 10, item 1).
        (Part::Nats(0), true, true, "nats-server killed, its store wiped, started"),
    ];
    for (i, (part, kill, wipe, what)) in restarts.into_iter().enumerate() {
        let stops_haproxy = part == Part::RendererHaproxy && !kill;
        if stops_haproxy {
            watch.haproxy_restarting.store(true, Ordering::SeqCst);
        }
        if part == Part::Envoy(0) {
            // Envoy itself restarts: its connection failures are not a regression either.
            watch.envoy_restarting.store(true, Ordering::SeqCst);
        }
        if wipe {
            stack.stack.restart_nats_wiped(0).unwrap_or_else(|e| panic!("wiping nats-server's store: {e}"));
        } else {
            stack.stack.restart(part, kill).unwrap_or_else(|e| panic!("restarting {}: {e}", part.name()));
        }
        if stops_haproxy {
            stack.until(Via::Haproxy, "steps.example.com", &format!("/step-{i}"), 200, Duration::from_secs(30));
            watch.haproxy_restarting.store(false, Ordering::SeqCst);
        }
        if part == Part::Envoy(0) {
            // The first thing the new Envoy serves is the current configuration.
            stack.until(Via::Envoy, "steps.example.com", &format!("/step-{i}"), 200, Duration::from_secs(30));
            watch.envoy_restarting.store(false, Ordering::SeqCst);
        }
        advance(&stack, &watch, i as u64 + 1, what);
        // A renderer reports after its proxy runs the change: give the record a moment.
        let risen = |now: &[(String, portico_bus::Version)]| {
            now.iter().all(|(p, g)| *g > generations.iter().find(|(q, _)| q == p).map(|(_, g)| *g).unwrap_or_default())
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut now = applied(&stack);
        while !risen(&now) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            now = applied(&stack);
        }
        for (proxy, generation) in &now {
            let before = generations.iter().find(|(p, _)| p == proxy).map(|(_, g)| *g).unwrap_or_default();
            assert!(*generation > before, "{proxy} applied generation {generation} after {before} ({what})");
        }
        generations = now;
    }
    stack.stack.check_running().unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()));
    let (requests, problems) = watch.finish();
    assert!(
        problems.is_empty(),
        "{} of {requests} requests went wrong:\n{}\n{}",
        problems.len(),
        problems.join("\n"),
        stack.logs()
    );
    assert!(requests > 100, "the request loop ran ({requests} requests)");

    // Converged to the same statuses (the steps HTTPProxy is valid at every step).
    assert_eq!(stack.report().statuses, statuses_before);
}

/// The barrier for "the second resolver did not take the lease": it says it stands by,
/// after its first attempt at the lease.
fn standing_by(stack: &LocalStack) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !stack.stack.log(Part::Resolver(1)).contains("standing by: another instance holds the resolver lease") {
        assert!(std::time::Instant::now() < deadline, "the second resolver never said it stands by\n{}", stack.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_standby_resolver_takes_over_when_the_active_one_dies() {
    let mut stack = LocalStack::start(&[("steps.yaml", &steps(0))]);
    stack.stack.spawn(Part::Resolver(1)).unwrap();
    standing_by(&stack);
    assert_eq!(stack.report().resolver.as_deref(), Some("resolver"), "the first resolver holds the lease");

    stack.stack.stop(Part::Resolver(0), true);
    stack.write("steps.yaml", &steps(1));
    let took = stack.until_both("steps.example.com", "/step-1", 200);
    report_timing("change after the active resolver was killed", took);
    assert_eq!(stack.report().resolver.as_deref(), Some("resolver-1"), "the standby holds the lease");
    assert!(stack.stack.log(Part::Resolver(1)).contains("acquired the resolver lease"));
}

/// Issue 10, item 2: a resolver paused (SIGSTOP) inside its debounce, past its lease,
/// resumes after its successor published newer models: it publishes nothing (its renewal
/// and its model write are both compare-and-set), and the model on the bus never goes back.
#[test]
fn a_resolver_paused_past_its_lease_never_overwrites_its_successor() {
    let mut stack = LocalStack::start(&[("steps.yaml", &steps(0))]);
    stack.until_both("steps.example.com", "/step-0", 200);
    stack.stack.spawn(Part::Resolver(1)).unwrap();
    standing_by(&stack);
    assert_eq!(stack.report().resolver.as_deref(), Some("resolver"), "the first resolver holds the lease");
    let paused = stack.stack.pid(Part::Resolver(0)).unwrap() as libc::pid_t;

    // A change the first resolver receives, then it stops inside its 100 ms debounce.
    stack.write("steps.yaml", &steps(1));
    std::thread::sleep(Duration::from_millis(170));
    // SAFETY: kill(2) on a child of this test's stack.
    unsafe { libc::kill(paused, libc::SIGSTOP) };
    stack.until_both("steps.example.com", "/step-1", 200);
    stack.write("steps.yaml", &steps(2));
    stack.until_both("steps.example.com", "/step-2", 200);
    assert_eq!(stack.report().resolver.as_deref(), Some("resolver-1"), "the standby took over");
    let before = stack.report().model.unwrap();

    // SAFETY: as above.
    unsafe { libc::kill(paused, libc::SIGCONT) };
    // The barrier: the resumed resolver says it stands by.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !stack.stack.log(Part::Resolver(0)).contains("lost the resolver lease") {
        assert!(std::time::Instant::now() < deadline, "the resumed resolver never stood by\n{}", stack.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = stack.report().model.unwrap();
    assert!(after.0 >= before.0, "the model went back from {} to {}", before.0, after.0);
    assert_eq!(after.1, before.1, "the model on the bus is still the successor's");
    assert_eq!(stack.report().resolver.as_deref(), Some("resolver-1"));
    // And the successor still publishes.
    stack.write("steps.yaml", &steps(3));
    stack.until_both("steps.example.com", "/step-3", 200);
}

#[test]
fn fifty_changes_under_load_lose_no_request() {
    let stack = LocalStack::start(&[("steps.yaml", &steps(0))]);
    stack.until_both("steps.example.com", "/step-0", 200);
    // A bounded loop on a route every change leaves alone, through both proxies.
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = BOTH
        .into_iter()
        .map(|via| {
            let (address, stop) = (stack.address(via), stop.clone());
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u64, Vec::new());
                while !stop.load(Ordering::SeqCst) {
                    match portico_testkit::http_get_at(address, WEB, "/") {
                        Ok((200, _)) => ok += 1,
                        Ok((status, body)) => failed.push(format!("{via:?}: {status} {body}")),
                        Err(e) => failed.push(format!("{via:?}: {e}")),
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                (ok, failed)
            })
        })
        .collect();
    let started = std::time::Instant::now();
    let mut generation = stack.report().model.unwrap().0;
    for n in 1..=50u64 {
        // Each change touches routes (RDS/haproxy.cfg) and, every other time, a cluster.
        let mut yaml = steps(n);
        if n % 2 == 0 {
            yaml = yaml.replace(
                "subjectName: web.demo.svc}",
                "subjectName: web.demo.svc, subjectNames: [web.demo.svc, alt.demo.svc]}",
            );
        }
        stack.write("steps.yaml", &yaml);
        stack.until_both("steps.example.com", &format!("/step-{n}"), 200);
        let now = stack.report().model.unwrap().0;
        assert!(now > generation, "change {n} published a new model");
        generation = now;
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    for (via, handle) in BOTH.into_iter().zip(loops) {
        let (ok, failed) = handle.join().unwrap();
        eprintln!("{via:?}: {ok} requests answered 200 during 50 changes in {elapsed:?}");
        assert!(failed.is_empty(), "{} requests failed through {via:?}:\n{}", failed.len(), failed.join("\n"));
        assert!(ok > 200, "the loop ran through {via:?}");
    }
}

/// A site of its own: a Service, its endpoints (the demo's web backend) and an HTTPProxy
/// verifying it with the demo's CA, so a new cluster, new endpoints and a new route.
fn new_site(n: u64, web_port: u16) -> String {
    let validation = "{caSecret: demo-ca, subjectName: web.demo.svc}";
    portico_e2e::site(&format!("new-{n}"), web_port, portico_e2e::UPSTREAM_TLS, validation)
}

/// Issue 9, item 6 (make before break): a new site (a new cluster, its endpoints, its CA
/// and its route at once) is never seen half-applied. Polled through both proxies from the
/// moment its file is written, it answers 404 (not there yet) until it answers 200, and
/// 200 from then on: never a 503 or 502 of a route that arrived before its cluster,
/// endpoints or trust, and no failed request.
#[test]
fn a_new_site_goes_live_whole_never_half_applied() {
    let stack = LocalStack::start(&[]);
    let web_port = stack.demo.web.port;
    for n in 0..8u64 {
        let host = format!("new-{n}.example.com");
        let stop = Arc::new(AtomicBool::new(false));
        let pollers: Vec<_> = BOTH
            .into_iter()
            .map(|via| {
                let (address, stop, host) = (stack.address(via), stop.clone(), host.clone());
                std::thread::spawn(move || {
                    let mut seen: Vec<String> = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let answer = match portico_testkit::http_get_at(address, &host, "/") {
                            Ok((status, _)) => status.to_string(),
                            Err(e) => format!("error: {e}"),
                        };
                        if seen.last() != Some(&answer) {
                            seen.push(answer);
                        }
                    }
                    (via, seen)
                })
            })
            .collect();
        stack.write(&format!("new-{n}.yaml"), &new_site(n, web_port));
        stack.until_both(&host, "/", 200);
        // Keep polling a while after it first answered: it must stay up.
        for via in BOTH {
            for _ in 0..20 {
                assert_eq!(stack.get(via, &host, "/").unwrap().0, 200, "{via:?} {host} after it went live");
            }
        }
        stop.store(true, Ordering::SeqCst);
        for poller in pollers {
            let (via, seen) = poller.join().unwrap();
            let allowed = [vec!["200".to_owned()], vec!["404".to_owned(), "200".to_owned()]];
            assert!(allowed.contains(&seen), "{via:?} saw {host} go through {seen:?}, not 404 then 200");
        }
    }
}

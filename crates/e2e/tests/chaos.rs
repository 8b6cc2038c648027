//! The chaos run (issue 10): the whole stack as processes (`portico up`'s: nats-server, the
//! five services, HAProxy run by its renderer, Envoy), a request loop through both proxies,
//! and random faults interleaved with manifest changes. A fault is one of: a service,
//! Envoy or nats-server killed (SIGKILL) or stopped (SIGTERM) and started again, as an
//! orchestrator would; any of them, or HAProxy's master, paused (SIGSTOP, then SIGCONT)
//! for up to 2.5 s; HAProxy's master killed (its renderer starts it again); nats-server
//! killed and started with its store wiped (a lost volume). Half of the changes are
//! written before their fault, half after.
//!
//! Checked: every change is served by both proxies; no proxy's applied generation ever
//! goes back; requests to a route that never changes never fail (except while that
//! proxy's own process is down: counted apart); no request to the current route is
//! answered by an older configuration; the statuses converge to what they were.
//!
//! `PORTICO_CHAOS_FAULTS` sets the number of faults (default 10, what CI runs);
//! `PORTICO_CHAOS_SEED` replays a run. The figures in docs/RELIABILITY.md come from:
//!
//!     cargo build --workspace --all-features --bins
//!     PORTICO_CHAOS_FAULTS=200 cargo test -p portico-e2e --test chaos -- --nocapture

use portico_deploy::up::Part;
use portico_e2e::{applied, steps, LocalStack, Via, BOTH};
use portico_testkit::Rng;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const STABLE: &str = "apiVersion: projectcontour.io/v1
kind: HTTPProxy
metadata: {name: stable, namespace: demo}
spec:
  virtualhost: {fqdn: stable.example.com}
  routes:
  - services:
    - name: web
      port: 8443
      validation: {caSecret: demo-ca, subjectName: web.demo.svc}
";

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL, then started again.
    Kill(Part),
    /// SIGTERM, then started again.
    Stop(Part),
    /// SIGSTOP for this long, then SIGCONT.
    Pause(Part, Duration),
    KillHaproxy,
    PauseHaproxy(Duration),
    NatsWiped,
}

impl Fault {
    fn name(self) -> String {
        match self {
            Fault::Kill(p) => format!("{} killed", p.name()),
            Fault::Stop(p) => format!("{} stopped", p.name()),
            Fault::Pause(p, _) => format!("{} paused", p.name()),
            Fault::KillHaproxy => "haproxy killed".into(),
            Fault::PauseHaproxy(_) => "haproxy paused".into(),
            Fault::NatsWiped => "nats-server wiped".into(),
        }
    }

    /// The proxy whose own process is down for a while with this fault.
    fn takes_down(self) -> Option<Via> {
        match self {
            Fault::Kill(Part::Envoy(0)) | Fault::Stop(Part::Envoy(0)) => Some(Via::Envoy),
            // A stopped renderer stops its HAProxy (a killed one leaves it running).
            Fault::Stop(Part::RendererHaproxy) | Fault::KillHaproxy => Some(Via::Haproxy),
            _ => None,
        }
    }
}

fn pick(rng: &mut Rng, parts: &[Part]) -> Fault {
    let part = parts[rng.below(parts.len() as u64) as usize];
    let pause = Duration::from_millis(200 + rng.below(2300));
    match rng.below(10) {
        0..=2 => Fault::Kill(part),
        3..=4 => Fault::Stop(part),
        5..=6 => Fault::Pause(part, pause),
        7 => Fault::KillHaproxy,
        8 => Fault::PauseHaproxy(pause),
        _ => Fault::NatsWiped,
    }
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a process of this test's stack.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

fn haproxy_master(stack: &LocalStack) -> u32 {
    portico_renderer_haproxy::apply::running_master(&stack.haproxy_dir()).expect("an HAProxy master answers")
}

fn inject(stack: &mut LocalStack, fault: Fault) {
    let restart = |stack: &mut LocalStack, part: Part, kill: bool| {
        stack.stack.restart(part, kill).unwrap_or_else(|e| panic!("restarting {}: {e}\n{}", part.name(), stack.logs()))
    };
    match fault {
        Fault::Kill(part) => restart(stack, part, true),
        Fault::Stop(part) => restart(stack, part, false),
        Fault::Pause(part, how_long) => {
            let pid = stack.stack.pid(part).expect("a running part");
            signal(pid, libc::SIGSTOP);
            std::thread::sleep(how_long);
            signal(pid, libc::SIGCONT);
        }
        Fault::KillHaproxy => signal(haproxy_master(stack), libc::SIGKILL),
        Fault::PauseHaproxy(how_long) => {
            let pid = haproxy_master(stack);
            signal(pid, libc::SIGSTOP);
            std::thread::sleep(how_long);
            signal(pid, libc::SIGCONT);
        }
        Fault::NatsWiped => {
            stack.stack.restart_nats_wiped(0).unwrap_or_else(|e| panic!("wiping nats-server's store: {e}"))
        }
    }
}

/// What the request loop saw.
#[derive(Default)]
struct Seen {
    requests: u64,
    /// Requests to the unchanged route that failed while the proxy was up.
    failed: Vec<String>,
    /// Requests to the current route answered by an older configuration.
    older: Vec<String>,
    /// Requests refused while that proxy's own process was down (expected).
    while_down: u64,
}

struct Loop {
    step: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
    down: [Arc<AtomicBool>; 2],
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Loop {
    fn start(stack: &LocalStack) -> Loop {
        let step = Arc::new(AtomicU64::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let down = [Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false))];
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let threads = BOTH
            .into_iter()
            .enumerate()
            .map(|(i, via)| {
                let (step, written, down, stop, seen) =
                    (step.clone(), written.clone(), down[i].clone(), stop.clone(), seen.clone());
                let address = stack.address(via);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let was_down = down.load(Ordering::SeqCst);
                        let stable = portico_testkit::http_get_at(address, "stable.example.com", "/");
                        let n = step.load(Ordering::SeqCst);
                        let current = portico_testkit::http_get_at(address, "steps.example.com", &format!("/step-{n}"));
                        let is_down = was_down || down.load(Ordering::SeqCst);
                        let mut seen = seen.lock().unwrap();
                        seen.requests += 2;
                        match stable {
                            Ok((200, _)) => {}
                            _ if is_down => seen.while_down += 1,
                            Ok((status, body)) => seen.failed.push(format!("{via:?}: unchanged route {status} {body}")),
                            Err(e) => seen.failed.push(format!("{via:?}: unchanged route: {e}")),
                        }
                        match current {
                            Ok((200, _)) => {}
                            _ if is_down => seen.while_down += 1,
                            // Only while no newer step is on its way must the route be there.
                            Ok((status, body))
                                if step.load(Ordering::SeqCst) == n && written.load(Ordering::SeqCst) == n =>
                            {
                                seen.older.push(format!("{via:?} answered {status} for step {n}: {body}"))
                            }
                            Ok(_) => {}
                            Err(e) if step.load(Ordering::SeqCst) == n => {
                                seen.failed.push(format!("{via:?}: step {n}: {e}"))
                            }
                            Err(_) => {}
                        }
                        drop(seen);
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        Loop { step, written, down, stop, seen, threads }
    }

    fn finish(self) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        std::mem::take(&mut self.seen.lock().unwrap())
    }
}

/// Percentile of sorted durations.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn faults_interleaved_with_changes_lose_no_change_and_no_request() {
    let faults: usize = std::env::var("PORTICO_CHAOS_FAULTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let seed: u64 = std::env::var("PORTICO_CHAOS_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("chaos run: {faults} faults, PORTICO_CHAOS_SEED={seed}");
    let mut rng = Rng(seed);
    let mut stack = LocalStack::start(&[("steps.yaml", &steps(0)), ("stable.yaml", STABLE)]);
    stack.until_both("steps.example.com", "/step-0", 200);
    stack.until_both("stable.example.com", "/", 200);
    let statuses_before = stack.report().statuses;
    let requests = Loop::start(&stack);
    let mut generations: BTreeMap<String, portico_bus::Version> = applied(&stack).into_iter().collect();
    let mut went_back = Vec::new();
    let mut latencies: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let limit = Duration::from_secs(60);
    let started = Instant::now();

    for i in 0..faults {
        let fault = pick(&mut rng, &stack.stack.options.parts());
        let n = i as u64 + 1;
        let change_first = rng.below(2) == 0;
        let down = fault.takes_down().map(|via| &requests.down[if via == Via::Haproxy { 0 } else { 1 }]);
        if let Some(flag) = down {
            flag.store(true, Ordering::SeqCst);
        }
        let written_at = Instant::now();
        if change_first {
            requests.written.store(n, Ordering::SeqCst);
            stack.write("steps.yaml", &steps(n));
        }
        inject(&mut stack, fault);
        if let (Some(flag), Some(via)) = (down, fault.takes_down()) {
            // Up again once it answers the route that never changes.
            stack.until(via, "stable.example.com", "/", 200, limit);
            flag.store(false, Ordering::SeqCst);
        }
        let written_at = if change_first {
            written_at
        } else {
            requests.written.store(n, Ordering::SeqCst);
            stack.write("steps.yaml", &steps(n));
            Instant::now()
        };
        std::thread::scope(|s| {
            let stack = &stack;
            let waits = BOTH
                .map(|via| s.spawn(move || stack.until(via, "steps.example.com", &format!("/step-{n}"), 200, limit)));
            for wait in waits {
                wait.join().expect("the change is served");
            }
        });
        let took = written_at.elapsed();
        requests.step.store(n, Ordering::SeqCst);
        latencies.entry(fault.name()).or_default().push(took);
        eprintln!(
            "{i:>4} {:<28} {} → served by both in {:>5} ms",
            fault.name(),
            if change_first { "change, fault" } else { "fault, change" },
            took.as_millis()
        );
        stack.stack.check_running().unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()));
        // Applied generations never go back (a renderer reports a moment after applying).
        for (proxy, version) in applied(&stack) {
            if let Some(before) = generations.get(&proxy) {
                if version < *before {
                    went_back.push(format!("{proxy}: {version} after {before} ({})", fault.name()));
                }
            }
            generations.insert(proxy, version);
        }
    }
    let seen = requests.finish();
    let mut all: Vec<Duration> = latencies.values().flatten().copied().collect();
    all.sort();
    eprintln!("\nchaos run, seed {seed}, {:.0} s", started.elapsed().as_secs_f64());
    eprintln!("faults survived: {faults}; changes made and served by both proxies: {faults}");
    for (kind, took) in &mut latencies {
        took.sort();
        eprintln!(
            "  {kind:<28} {:>3}×  change served in p50 {:>5} ms, max {:>5} ms",
            took.len(),
            percentile(took, 0.5).as_millis(),
            took.last().unwrap().as_millis()
        );
    }
    eprintln!(
        "change served, all faults: p50 {} ms, p99 {} ms, max {} ms",
        percentile(&all, 0.5).as_millis(),
        percentile(&all, 0.99).as_millis(),
        all.last().map_or(0, |d| d.as_millis())
    );
    eprintln!(
        "requests: {} sent, {} failed, {} answered by an older configuration, {} refused while their proxy's own process was down",
        seen.requests,
        seen.failed.len(),
        seen.older.len(),
        seen.while_down
    );
    eprintln!("applied generations that went back: {}", went_back.len());

    assert!(seen.failed.is_empty(), "requests failed:\n{}\n{}", seen.failed.join("\n"), stack.logs());
    assert!(seen.older.is_empty(), "older configurations answered:\n{}", seen.older.join("\n"));
    assert!(went_back.is_empty(), "generations went back:\n{}", went_back.join("\n"));
    assert!(seen.requests > 100, "the request loop ran ({} requests)", seen.requests);
    // The statuses converge to what they were (the steps HTTPProxy is valid at every step).
    let deadline = Instant::now() + limit;
    while stack.report().statuses != statuses_before {
        assert!(Instant::now() < deadline, "the statuses did not converge\n{}", stack.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

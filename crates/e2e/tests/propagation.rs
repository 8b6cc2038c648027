//! The propagation benchmark (DESIGN.md: "from an object change to the config being live in
//! Envoy and in HAProxy: p99 under 200 ms plus the debounce, at 10,000 routes"), and each
//! service's resident memory at that size. A benchmark, not a test: it is ignored by
//! default and prints figures; run it in release mode (it uses the release binaries):
//!
//! ```sh
//! cargo build --release --workspace --all-features --bins
//! cargo test --release -p portico-e2e --test propagation -- --ignored --nocapture
//! PORTICO_BENCH_ROUTES=2000 cargo test --release ...   # another size
//! ```

use portico_deploy::up::Part;
use portico_e2e::{site, tls_policy_flips, until_state, LocalStack, Via, UPSTREAM_TLS as TLS};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Duration, Instant};

/// `routes` HTTPProxies (one route each), as many Services with an EndpointSlice to the
/// demo's web backend, and `cas` CA secrets (the demo CA under many names) that the
/// proxies verify against in turn.
fn world(routes: usize, cas: usize, web_port: u16, ca_pem: &str) -> String {
    let ca: String = ca_pem.lines().map(|l| format!("    {l}\n")).collect();
    let mut out = String::with_capacity(routes * 900);
    for k in 0..cas {
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: ca-{k}, namespace: bench}}\ntype: Opaque\nstringData:\n  ca.crt: |\n{ca}"
        );
    }
    for i in 0..routes {
        let _ = write!(
            out,
            "---
apiVersion: v1
kind: Service
metadata: {{name: svc-{i}, namespace: bench}}
spec:
  ports: [{{name: https, port: 8443, appProtocol: https}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: svc-{i}-1, namespace: bench, labels: {{kubernetes.io/service-name: svc-{i}}}}}
addressType: IPv4
ports: [{{name: https, port: {web_port}}}]
endpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]
---
apiVersion: projectcontour.io/v1
kind: HTTPProxy
metadata: {{name: p-{i}, namespace: bench}}
spec:
  virtualhost: {{fqdn: p-{i}.bench.example.com}}
  routes:
  - services:
    - name: svc-{i}
      port: 8443
      validation: {{caSecret: ca-{}, subjectName: web.demo.svc}}
",
            i % cas
        );
    }
    out
}

fn change(n: usize) -> String {
    format!(
        "apiVersion: projectcontour.io/v1
kind: HTTPProxy
metadata: {{name: change, namespace: demo}}
spec:
  virtualhost: {{fqdn: change.example.com}}
  routes:
  - conditions: [{{prefix: /change-{n}}}]
    services:
    - name: web
      port: 8443
      validation: {{caSecret: demo-ca, subjectName: web.demo.svc}}
"
    )
}

/// A Service whose one endpoint is the demo's web or payments backend, and an HTTPProxy
/// to it (TLS, not verified: the two have certificates of different CAs): moving the
/// endpoint is an endpoint change alone (the most frequent change in a real cluster),
/// seen from outside in which backend answers. (Not a dead port: HAProxy retries a refused
/// connection for seconds before its 503, which would time the retries, not the change.)
fn churn(port: u16) -> String {
    site("churn", port, TLS, "")
}

/// Wait until `via` answers from the backend `name` (each demo backend says its name).
fn until_backend(stack: &LocalStack, via: Via, host: &str, name: &str) -> Duration {
    let started = Instant::now();
    let want = format!("backend={name} ");
    while started.elapsed() < Duration::from_secs(30) {
        if let Ok((200, body)) = stack.get(via, host, "/") {
            if body.starts_with(&want) {
                return started.elapsed();
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{via:?} never answered from {name}\n{}", stack.logs())
}

/// The median time of `n` requests to an unchanged route through each proxy.
fn request_latency(stack: &LocalStack, n: usize) -> [Duration; 2] {
    [Via::Haproxy, Via::Envoy].map(|via| {
        let mut times: Vec<Duration> = (0..n)
            .map(|_| {
                let started = Instant::now();
                let (status, _) = stack.get(via, "change.example.com", "/change-0").expect("request");
                assert_eq!(status, 200);
                started.elapsed()
            })
            .collect();
        times.sort();
        percentile(&times, 0.5)
    })
}

/// Bytes under a directory (JetStream's store on disk).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// CPU time (user + system) a process has used, from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: u64 = [11, 12].iter().filter_map(|i| fields.get(*i)?.parse::<u64>().ok()).sum();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// How many reloads renderer-haproxy has logged (a first start is one).
/// A service's heap in use and held, from its metrics (`portico_kit::admin::release_memory`).
fn heap_mib(admin_port: u16) -> String {
    let Ok((200, metrics)) = portico_testkit::http_get(admin_port, "localhost", "/metrics") else {
        return String::new();
    };
    let value = |name: &str| {
        metrics.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).map(|b| b / 1_048_576.0)
    };
    match (value("portico_heap_in_use_bytes "), value("portico_heap_held_bytes ")) {
        (Some(used), Some(held)) => format!("   heap {used:>6.1} in use, {held:>6.1} held"),
        _ => String::new(),
    }
}

fn haproxy_reloads(stack: &LocalStack) -> usize {
    let log =
        std::fs::read_to_string(stack.stack.options.state_dir.join("logs/renderer-haproxy.log")).unwrap_or_default();
    log.lines().filter(|l| l.contains(" applied generation=") && l.contains("how=Reload")).count()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[test]
#[ignore = "a benchmark: run with --release -- --ignored --nocapture"]
fn propagation_and_memory_at_ten_thousand_routes() {
    let routes: usize = std::env::var("PORTICO_BENCH_ROUTES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let changes = 20;
    // Endpoint moves: HAProxy must take every one through its runtime API (0 reloads).
    let endpoint_changes = 100;
    // Each of the other kinds of change, flipped this many times.
    let flips = 10;
    // The world goes in after the stack is up, as a second file: the start-up wait stays short.
    let stack = LocalStack::start(&[("change.yaml", &change(0))]);
    stack.write("churn.yaml", &churn(stack.demo.payments.port));
    stack.until_both("change.example.com", "/change-0", 200);
    let small = request_latency(&stack, 200);
    let big = world(routes, (routes / 10).max(1), stack.demo.web.port, &stack.demo.demo_ca_pem);
    let loaded = Instant::now();
    stack.write("world.yaml", &big);
    let last = routes - 1;
    let took = stack.until_both(&format!("p-{last}.bench.example.com"), "/", 200);
    // Then until both proxies have applied the model the load made (Envoy acknowledged every
    // resource of it, the clusters' endpoints among them): the timed changes measure a
    // change, not the end of the load.
    let settling = Instant::now();
    loop {
        let report = stack.report();
        let model = report.model.as_ref().map(|(version, _)| *version);
        let applied: Vec<portico_bus::Version> = report.applied.values().map(|a| a.version()).collect();
        if model.is_some() && applied.len() >= 2 && applied.iter().all(|v| Some(*v) == model) {
            break;
        }
        assert!(settling.elapsed() < Duration::from_secs(120), "the load was never applied by both proxies");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "{routes} routes ({} MiB of YAML) live: HAProxy after {:?}, Envoy after {:?} (wall {:?}); both applied it {:?} later",
        big.len() / (1 << 20),
        took[0],
        took[1],
        loaded.elapsed() - settling.elapsed(),
        settling.elapsed()
    );

    let large = request_latency(&stack, 200);
    let store = stack.stack.options.state_dir.join("nats");
    let store_before = dir_bytes(&store);

    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut churned: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let other_ca = portico_deploy::demo::TestCa::new("another CA").pem;
    let kinds = tls_policy_flips(stack.demo.web.port, &stack.demo.demo_ca_pem, &other_ca);
    let mut flipped: Vec<(&str, [Vec<Duration>; 2])> = Vec::new();
    let (mut reloads_before_churn, mut reloads_during_churn, mut reloads_during_flips) = (0, 0, 0);
    // Requests to an unchanged route through both proxies for as long as the changes below
    // are made: none may fail.
    let stop_loop = std::sync::atomic::AtomicBool::new(false);
    let (sent, failed) = (std::sync::atomic::AtomicUsize::new(0), std::sync::atomic::AtomicUsize::new(0));
    std::thread::scope(|scope| {
        scope.spawn(|| {
            use std::sync::atomic::Ordering::SeqCst;
            while !stop_loop.load(SeqCst) {
                for via in [Via::Haproxy, Via::Envoy] {
                    sent.fetch_add(1, SeqCst);
                    if !matches!(stack.get(via, "p-1.bench.example.com", "/"), Ok((200, _))) {
                        failed.fetch_add(1, SeqCst);
                    }
                }
            }
        });

        for n in 1..=changes {
            stack.write("change.yaml", &change(n));
            let took = stack.until_both("change.example.com", &format!("/change-{n}"), 200);
            times[0].push(took[0]);
            times[1].push(took[1]);
        }
        // Endpoint churn: the one endpoint of `churn` moves between two backends, and each
        // proxy is timed until the other one answers.
        reloads_before_churn = haproxy_reloads(&stack);
        for n in 1..=endpoint_changes {
            let (port, name) =
                if n % 2 == 1 { (stack.demo.web.port, "web") } else { (stack.demo.payments.port, "payments") };
            stack.write("churn.yaml", &churn(port));
            let took = std::thread::scope(|s| {
                let h = s.spawn(|| until_backend(&stack, Via::Haproxy, "churn.example.com", name));
                let e = s.spawn(|| until_backend(&stack, Via::Envoy, "churn.example.com", name));
                [h.join().expect("haproxy wait"), e.join().expect("envoy wait")]
            });
            churned[0].push(took[0]);
            churned[1].push(took[1]);
        }
        reloads_during_churn = haproxy_reloads(&stack) - reloads_before_churn;
        let reloads_before_flips = haproxy_reloads(&stack);
        // The other kinds of change, each flipping a site of its own.
        for (what, file, host, states) in &kinds {
            stack.write(file, &states[0]);
            stack.until_both(host, "/", 200);
            let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
            for n in 1..=flips {
                let serving = n % 2 == 0;
                stack.write(file, &states[usize::from(!serving)]);
                let took = std::thread::scope(|s| {
                    let h = s.spawn(|| until_state(&stack, Via::Haproxy, host, serving));
                    let e = s.spawn(|| until_state(&stack, Via::Envoy, host, serving));
                    [h.join().expect("haproxy wait"), e.join().expect("envoy wait")]
                });
                times[0].push(took[0]);
                times[1].push(took[1]);
            }
            flipped.push((*what, times));
        }
        reloads_during_flips = haproxy_reloads(&stack) - reloads_before_flips;
        stop_loop.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let store_timed = dir_bytes(&store);
    // More changes, one every 150 ms (each its own generation: the debounces are shorter),
    // for the store's size: it must not grow with the number of changes.
    let more: usize = std::env::var("PORTICO_BENCH_STORE_CHANGES").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    for n in 1..=more {
        stack.write("change.yaml", &change(1000 + n));
        std::thread::sleep(Duration::from_millis(150));
    }
    stack.until_both("change.example.com", &format!("/change-{}", 1000 + more), 200);
    let store_after = dir_bytes(&store);
    // The idle stack: CPU used over 10 s with nothing changing.
    let parts = stack.stack.options.parts();
    std::thread::sleep(Duration::from_secs(2)); // the last change's follow-up work
    let before: Vec<(Part, Duration)> =
        parts.iter().filter_map(|p| stack.stack.pid(*p).map(|pid| (*p, cpu_time(pid)))).collect();
    let idle = Duration::from_secs(10);
    std::thread::sleep(idle);
    let idle_cpu: Vec<(Part, f64)> = before
        .iter()
        .filter_map(|(p, t)| {
            let now = cpu_time(stack.stack.pid(*p)?);
            Some((*p, (now.saturating_sub(*t)).as_secs_f64() / idle.as_secs_f64() * 100.0))
        })
        .collect();
    let resolver_log =
        std::fs::read_to_string(stack.stack.options.state_dir.join("logs/resolver.log")).unwrap_or_default();
    let generations = resolver_log.lines().filter(|l| l.contains("model published")).count();
    let mut report = String::new();
    let _ = writeln!(
        report,
        "JetStream store on disk: {:.1} MiB after loading, {:.1} MiB after {} changes, {:.1} MiB after {} more ({generations} generations in all)",
        store_before as f64 / 1_048_576.0,
        store_timed as f64 / 1_048_576.0,
        2 * changes,
        store_after as f64 / 1_048_576.0,
        more
    );
    let mut timed = vec![
        ("one-object change (a route's prefix)", times),
        ("endpoint change (an EndpointSlice's address)", churned),
    ];
    timed.extend(flipped);
    for (what, times) in timed {
        let _ =
            writeln!(report, "{what} at {routes} routes, file write → proxy showing it ({} changes):", times[0].len());
        for (name, mut t) in ["HAProxy", "Envoy"].into_iter().zip(times) {
            t.sort();
            let _ = writeln!(
                report,
                "  {name:<8} p50 {:>5} ms  p99 {:>5} ms  max {:>5} ms",
                percentile(&t, 0.5).as_millis(),
                percentile(&t, 0.99).as_millis(),
                t.last().unwrap().as_millis()
            );
        }
    }
    let log =
        std::fs::read_to_string(stack.stack.options.state_dir.join("logs/renderer-haproxy.log")).unwrap_or_default();
    let applied: Vec<&str> = log.lines().filter(|l| l.contains(" applied generation=")).collect();
    let how = |kind: &str| applied.iter().filter(|l| l.contains(&format!("how={kind}"))).count();
    let _ = writeln!(
        report,
        "HAProxy applies: {} through the runtime API, {} by reload, {} by reload after a refused command",
        how("Runtime"),
        how("Reload "),
        how("ReloadAfterDrift")
    );
    let _ = writeln!(report, "HAProxy reloads during the {endpoint_changes} endpoint changes: {reloads_during_churn}");
    let _ = writeln!(
        report,
        "HAProxy reloads during the {} TLS policy flips (first states and flips): {reloads_during_flips}",
        kinds.len() * (flips + 1)
    );
    for line in applied.iter().rev().take(3).rev() {
        let _ = writeln!(report, "  {}", line.split_once("applied ").map_or(*line, |(_, l)| l));
    }
    // Envoy's own time to apply what it was sent, per xDS type (its admin's histograms:
    // P50 and P99 of every update since it started, the initial load included). Envoy
    // merges its histograms when the admin asks (`stats_flush_on_admin`): the first answer
    // may have none yet.
    let envoy_stats = || {
        portico_testkit::http_get(stack.stack.options.envoy_admin_port, "localhost", "/stats?filter=update_duration")
            .ok()
            .filter(|(status, body)| *status == 200 && body.contains("P50"))
            .map(|(_, body)| body)
    };
    let merged = (0..20).find_map(|_| {
        envoy_stats().or_else(|| {
            std::thread::sleep(Duration::from_millis(100));
            None
        })
    });
    if let Some(stats) = merged {
        let _ = writeln!(report, "Envoy applying updates (its update_duration histograms, ms, since it started):");
        // Per-resource subscriptions (a cluster's endpoints, an SDS secret, a shard of a
        // port's routes) folded into one line each: how many, and the largest p99.
        let mut folded: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
        for line in stats.lines().filter(|l| l.contains("P50")) {
            let (name, values) = line.split_once(": ").unwrap_or((line, ""));
            let pick = |p: &str| {
                values.split_whitespace().find_map(|v| {
                    // `P50(interval,cumulative)`: the cumulative one.
                    v.strip_prefix(&format!("{p}("))
                        .map(|v| v.trim_end_matches(')').rsplit(',').next().unwrap_or_default().to_owned())
                })
            };
            let (p50, p99) = (pick("P50").unwrap_or_default(), pick("P99").unwrap_or_default());
            let shard = name.starts_with("http.") && name.contains(".rds.routes_") && name.matches('.').count() > 4;
            let kind = if shard {
                Some("http.*.rds.<shard>.")
            } else {
                ["cluster.", "sds."].into_iter().find(|p| name.starts_with(p))
            };
            match kind {
                Some(prefix) => {
                    let entry = folded.entry(prefix).or_default();
                    entry.0 += 1;
                    entry.1 = entry.1.max(p99.parse().unwrap_or(0.0));
                }
                None => {
                    let _ = writeln!(report, "  {name:<50} p50 {p50:>6} p99 {p99:>6}");
                }
            }
        }
        for (prefix, (count, p99)) in folded {
            let _ = writeln!(report, "  {prefix}* ({count} subscriptions){:<26} largest p99 {p99:.0}", "");
        }
    }
    // Where the time of the last changes went, as the services log it.
    for (service, marker) in [("resolver", "model published"), ("renderer-envoy", " serving ")] {
        let log = std::fs::read_to_string(stack.stack.options.state_dir.join(format!("logs/{service}.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(marker)).collect();
        let _ = writeln!(report, "{service}, last changes:");
        for line in lines.iter().rev().take(3).rev() {
            let _ = writeln!(report, "  {}", line.split_once(": ").map_or(*line, |(_, l)| l));
        }
    }
    // The last change hop by hop: every log line carrying its trace id, in time order.
    if let Some(trace) = applied.last().and_then(|l| l.split("trace_id=\"").nth(1)).and_then(|t| t.get(..32)) {
        let mut lines: Vec<(String, String, String)> = Vec::new();
        for service in ["watcher", "resolver", "renderer-haproxy", "renderer-envoy"] {
            let log = std::fs::read_to_string(stack.stack.options.state_dir.join(format!("logs/{service}.log")))
                .unwrap_or_default();
            for line in log.lines().filter(|l| l.contains(trace)) {
                let (at, rest) = line.split_once(' ').unwrap_or((line, ""));
                lines.push((at.to_owned(), service.to_owned(), rest.chars().take(150).collect()));
            }
        }
        lines.sort();
        let _ = writeln!(report, "the last change, hop by hop (trace {trace}):");
        for (at, service, rest) in &lines {
            let _ = writeln!(report, "  {at} {service:<17} {rest}");
        }
    }
    let (sent, failed) = (sent.into_inner(), failed.into_inner());
    let _ = writeln!(report, "requests to an unchanged route during the timed changes: {sent} sent, {failed} failed");
    let _ = writeln!(report, "idle CPU over {} s (% of one core):", idle.as_secs());
    for (part, percent) in &idle_cpu {
        let _ = writeln!(report, "  {:<18} {percent:>5.2} %", part.name());
    }
    let _ = writeln!(report, "request latency to an unchanged route (median of 200 sequential requests):");
    for (i, name) in ["HAProxy", "Envoy"].into_iter().enumerate() {
        let _ = writeln!(
            report,
            "  {name:<8} {:>6.2} ms with the demo's routes, {:>6.2} ms at {routes} routes",
            small[i].as_secs_f64() * 1000.0,
            large[i].as_secs_f64() * 1000.0
        );
    }
    let _ =
        writeln!(report, "resident memory at {routes} routes (a service's heap in use, and held by its allocator):");
    for part in parts {
        if let Some(pid) = stack.stack.pid(part) {
            let heap = stack.stack.admin_port(part).map(heap_mib).unwrap_or_default();
            let _ = writeln!(report, "  {:<18} {:>7.1} MiB{heap}", part.name(), rss_mib(pid));
        }
    }
    if let Some(pid) = portico_renderer_haproxy::apply::running_master(&stack.haproxy_dir()) {
        let _ = writeln!(report, "  {:<18} {:>7.1} MiB (master)", "haproxy", rss_mib(pid));
    }
    eprintln!("{report}");
}

//! HTTPS at the edge through `portico up`'s stack (issue #14): the demo's HTTPS host, and
//! a renewed certificate served under a request loop over keep-alive and new connections,
//! with no failed request and no HAProxy reload; no private key in any log.

use portico_deploy::demo::secure_site;
use portico_e2e::{LocalStack, Via, BOTH};
use portico_testkit::{https_get_at, pem_sha256, HttpsConnection, Offer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wait until new handshakes through `via` see the certificate `want` (SHA-256 of its DER)
/// and get a 200; how long it took.
fn until_served(stack: &LocalStack, via: Via, want: &str, limit: Duration) -> Duration {
    let (host, ca) = (stack.demo.secure_host, &stack.demo.edge_ca.pem);
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < limit {
        match https_get_at(stack.https_address(via), host, host, "/", ca, Offer::Any) {
            Ok((answer, handshake)) if answer.status == 200 && handshake.leaf_sha256 == want => {
                return started.elapsed()
            }
            Ok((answer, handshake)) => last = format!("{} with {}", answer.status, handshake.leaf_sha256),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("{via:?} never served {want} within {limit:?} (last: {last})\n{}", stack.logs())
}

#[test]
fn a_renewed_certificate_is_served_without_a_reload_or_a_failed_request() {
    let stack = LocalStack::start(&[]);
    let up = Instant::now();
    let (host, ca) = (stack.demo.secure_host, stack.demo.edge_ca.pem.clone());
    let first = pem_sha256(&stack.demo.secure.cert_pem);
    for via in BOTH {
        until_served(&stack, via, &first, Duration::from_secs(30));
        // HTTP to the host redirects to the stack's HTTPS port.
        let answer = portico_testkit::http_answer_at(stack.address(via), host, "/x").unwrap();
        let port = stack.stack.options.https_port;
        assert_eq!((answer.status, answer.location), (301, Some(format!("https://{host}:{port}/x"))), "{via:?}");
    }
    // Past the renderers' start-up grace for missing trust material (TRUST_GRACE), which
    // would otherwise hide a renewal applied before the model that names it.
    // (portico_kit::renderer_inputs::TRUST_GRACE, 10 s from the renderers' session start,
    // which was before the stack first served.)
    std::thread::sleep(Duration::from_secs(11).saturating_sub(up.elapsed()));
    let reloads = stack.haproxy_reloads();

    // The loops: per proxy, one keep-alive connection and one new connection per request.
    let stop = AtomicBool::new(false);
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let counts: Mutex<[u64; 4]> = Mutex::new([0; 4]);
    let renewed = stack.demo.edge_ca.server(&[host]);
    let second = pem_sha256(&renewed.cert_pem);
    let took = std::thread::scope(|s| {
        for (i, via) in BOTH.into_iter().enumerate() {
            let (stop, failures, counts, ca) = (&stop, &failures, &counts, &ca);
            let address = stack.https_address(via);
            s.spawn(move || {
                let mut connection = HttpsConnection::open(address, host, ca, Offer::Any).expect("a connection");
                while !stop.load(Ordering::SeqCst) {
                    match connection.get(host, "/") {
                        Ok(a) if a.status == 200 => counts.lock().unwrap()[2 * i] += 1,
                        other => failures.lock().unwrap().push(format!("{via:?} keep-alive: {other:?}")),
                    }
                }
            });
            s.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match https_get_at(address, host, host, "/", ca, Offer::Any) {
                        Ok((a, _)) if a.status == 200 => counts.lock().unwrap()[2 * i + 1] += 1,
                        other => failures.lock().unwrap().push(format!("{via:?} new connection: {other:?}")),
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(500));
        // Renew the certificate through the bus: the Secret changes in the manifests.
        let demo = &stack.demo.manifests;
        let old = secure_site(&stack.demo.secure);
        assert!(demo.contains(&old));
        stack.write("demo.yaml", &demo.replace(&old, &secure_site(&renewed)));
        let took = std::thread::scope(|w| {
            let h = w.spawn(|| until_served(&stack, Via::Haproxy, &second, Duration::from_secs(30)));
            let e = w.spawn(|| until_served(&stack, Via::Envoy, &second, Duration::from_secs(30)));
            [h.join().unwrap(), e.join().unwrap()]
        });
        // Keep the loops going over the new certificate for a while.
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::SeqCst);
        took
    });
    let counts = counts.into_inner().unwrap();
    eprintln!(
        "renewed certificate served by new handshakes: HAProxy {} ms, Envoy {} ms; requests (keep-alive, new) HAProxy {:?}, Envoy {:?}",
        took[0].as_millis(),
        took[1].as_millis(),
        &counts[0..2],
        &counts[2..4]
    );
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{} failed requests: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    assert!(counts.iter().all(|n| *n > 10), "every loop ran: {counts:?}");
    assert_eq!(stack.haproxy_reloads(), reloads, "a renewal is applied through HAProxy's runtime API");
    // The files on disk are what runs: the renewed certificate is in HAProxy's directory.
    let on_disk = std::fs::read_to_string(
        stack
            .stack
            .options
            .state_dir
            .join(format!("haproxy/current/certs/l{}/{host}.pem", stack.stack.options.https_port)),
    )
    .expect("the certificate file");
    assert!(on_disk.contains(renewed.cert_pem.lines().nth(1).unwrap()));

    // No private key in any log: not the old one, not the new one.
    let logs_dir = stack.stack.options.state_dir.join("logs");
    for key in [&stack.demo.secure.key_pem, &renewed.key_pem] {
        let body: Vec<&str> = key.lines().filter(|l| !l.starts_with("-----")).collect();
        for entry in std::fs::read_dir(&logs_dir).unwrap() {
            let path = entry.unwrap().path();
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(!log.contains("PRIVATE KEY"), "{} mentions a private key", path.display());
            for line in &body {
                assert!(!log.contains(line), "{} holds key material", path.display());
            }
        }
    }
}

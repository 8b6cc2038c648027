//! A change to a cluster's TLS policy (a Service's TLS annotation, a CA secret rotated, a
//! subject name, a TLSCertificateDelegation) reaches HAProxy through its runtime API, not
//! by a reload: the new cluster takes a spare backend whose servers are added with the new
//! TLS parameters (`add server`, after `new ssl ca-file` for a new CA bundle), and the
//! route's map entry moves to it. Each is flipped both ways twice through `portico up`'s
//! stack, both proxies are checked, HAProxy's master counts no reload, and a reload of the
//! files on disk afterwards serves the same (the files are what runs).

use portico_e2e::{tls_policy_flips, until_state, LocalStack, TestCa, Via, BOTH};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

#[test]
fn tls_policy_changes_reach_haproxy_without_a_reload() {
    let other_ca = TestCa::new("a CA that signed nothing here");
    // The flips' files are written once the demo's backends are known, in their first state.
    let stack = LocalStack::start(&[]);
    let kinds = tls_policy_flips(stack.demo.web.port, &stack.demo.demo_ca_pem, &other_ca.pem);
    for (_, file, _, states) in &kinds {
        stack.write(file, &states[0]);
    }
    for (_, _, host, _) in &kinds {
        for via in BOTH {
            until_state(&stack, via, host, true);
        }
    }
    let reloads = stack.haproxy_reloads();
    for round in 0..2 {
        for (what, file, host, states) in &kinds {
            for (state, serving) in [(1, false), (0, true)] {
                stack.write(file, &states[state]);
                let took: Vec<Duration> = BOTH.iter().map(|via| until_state(&stack, *via, host, serving)).collect();
                eprintln!(
                    "round {round}, {what}, {}: HAProxy {:?}, Envoy {:?}",
                    ["on", "off"][state],
                    took[0],
                    took[1]
                );
            }
        }
    }
    assert_eq!(stack.haproxy_reloads(), reloads, "every TLS policy change went through the runtime API");

    // HAProxy reloaded on the files as they are (each site in its serving state): the same.
    let work_dir = stack.haproxy_dir();
    let (_, failed) = portico_renderer_haproxy::apply::master_counters(&work_dir).expect("the master answers");
    let mut master = std::os::unix::net::UnixStream::connect(work_dir.join("master.sock")).expect("the master socket");
    master.write_all(b"reload\n").unwrap();
    let _ = master.read_to_end(&mut Vec::new());
    let started = Instant::now();
    // The master re-executes: its socket may not answer for a moment.
    while portico_renderer_haproxy::apply::master_reloads(&work_dir).is_none_or(|r| r == reloads) {
        assert!(started.elapsed() < Duration::from_secs(30), "HAProxy did not reload\n{}", stack.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, failed_now) = portico_renderer_haproxy::apply::master_counters(&work_dir).expect("the master answers");
    assert_eq!(failed_now, failed, "HAProxy accepted the files on disk\n{}", stack.logs());
    for (what, _, host, _) in &kinds {
        let (status, _) = stack.get(Via::Haproxy, host, "/").unwrap();
        assert_eq!(status, 200, "{what}: served from the files on disk as through the runtime API");
    }
}

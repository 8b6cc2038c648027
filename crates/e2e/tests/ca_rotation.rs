//! A CA rotated to one that no longer trusts the backend is enforced at once in both
//! proxies, on upstream connections already open too: Envoy replaces a cluster whose CA
//! changed (its bundles' hashes are in the cluster's metadata) instead of only updating the
//! validation context over SDS, which would leave pooled connections verified by the
//! previous CA serving. Rotated back, both serve again.

use portico_e2e::{LocalStack, TestCa, Via};

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("    {l}\n")).collect()
}

#[test]
fn a_ca_that_stops_trusting_the_backend_is_enforced_on_open_connections() {
    let stack = LocalStack::start(&[]);
    let host = "web.example.com";
    stack.until_both(host, "/", 200);
    // Pooled upstream connections: a few requests through each proxy.
    for via in [Via::Haproxy, Via::Envoy] {
        for _ in 0..5 {
            assert_eq!(stack.get(via, host, "/").unwrap().0, 200);
        }
    }
    let other = TestCa::new("a CA that signed nothing here");
    let rotated = stack.demo.manifests.replace(&indent(&stack.demo.demo_ca_pem), &indent(&other.pem));
    assert_ne!(rotated, stack.demo.manifests, "the demo's CA is in its manifests");
    stack.write("demo.yaml", &rotated);
    let took = stack.until_both(host, "/", 503);
    eprintln!("refused after the rotation: HAProxy {:?}, Envoy {:?}", took[0], took[1]);
    stack.write("demo.yaml", &stack.demo.manifests);
    stack.until_both(host, "/", 200);
}

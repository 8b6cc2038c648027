//! Gateway API through `portico up`'s stack (issue #12): the demo's Gateway, HTTPRoute and
//! BackendTLSPolicy, and the ConfigMap lifecycle of the conformance test
//! `BackendTLSPolicyInvalidCACertificateRef`, live: the policy repointed to a ConfigMap that
//! does not exist (NoValidCACertificate, 5xx), the ConfigMap created (200), its `ca.crt`
//! blanked (5xx again), restored (200). Every step through both proxies, read back from
//! the status the resolver published.

use portico_deploy::demo::GATEWAY_HOST;
use portico_e2e::LocalStack;
use portico_model::{GatewayApiStatus, Kind};

/// The policy's (Accepted, ResolvedRefs) as (status, reason), and its problems' messages.
fn policy(stack: &LocalStack) -> ((bool, String), (bool, String), Vec<String>) {
    let report = stack.report();
    let status = report
        .statuses
        .iter()
        .find(|s| s.object.kind == Kind::BackendTlsPolicy && s.object.name.as_str() == "web-tls")
        .expect("the policy has a status");
    let Some(GatewayApiStatus::Parents(ancestors)) = &status.gateway else { panic!("{status:?}") };
    let conditions = &ancestors[0].conditions;
    let find = |t: &str| {
        let c = conditions.iter().find(|c| c.condition_type == t).expect("the condition");
        (c.status, c.reason.clone())
    };
    (find("Accepted"), find("ResolvedRefs"), status.problems.iter().map(|p| p.message.clone()).collect())
}

/// Wait until the policy's Accepted reason is `want` (the status follows the model).
fn until_accepted(stack: &LocalStack, want: &str) -> ((bool, String), (bool, String), Vec<String>) {
    let started = std::time::Instant::now();
    loop {
        let got = policy(stack);
        if got.0 .1 == want {
            return got;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "never {want}: {got:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn config_map(ca_crt: &str) -> String {
    let indented: String = ca_crt.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: later-ca, namespace: demo}}\ndata:\n  ca.crt: |\n{}",
        if indented.is_empty() { "    \n".to_owned() } else { indented }
    )
}

#[test]
fn the_ca_config_map_lifecycle_through_portico_up() {
    let stack = LocalStack::start(&[]);
    stack.until_both(GATEWAY_HOST, "/", 200);
    let (accepted, resolved, _) = policy(&stack);
    assert_eq!((accepted, resolved), ((true, "Accepted".into()), (true, "ResolvedRefs".into())));
    let (_, body) = stack.get(portico_e2e::Via::Envoy, GATEWAY_HOST, "/").unwrap();
    assert!(body.contains("backend=web") && body.contains("sni=web.demo.svc"), "{body}");

    // Repointed to a ConfigMap that does not exist.
    let repointed =
        stack.demo.manifests.replace("kind: ConfigMap, name: demo-ca-bundle}]", "kind: ConfigMap, name: later-ca}]");
    assert_ne!(repointed, stack.demo.manifests);
    stack.write("demo.yaml", &repointed);
    stack.until_both(GATEWAY_HOST, "/", 503);
    let (accepted, resolved, problems) = until_accepted(&stack, "NoValidCACertificate");
    assert!(!accepted.0);
    assert_eq!(resolved, (false, "InvalidCACertificateRef".into()));
    assert!(problems.iter().any(|p| p.contains("ConfigMap \"later-ca\" not found")), "{problems:?}");

    // Created.
    stack.write("later.yaml", &config_map(&stack.demo.demo_ca_pem));
    stack.until_both(GATEWAY_HOST, "/", 200);
    until_accepted(&stack, "Accepted");

    // Blanked.
    stack.write("later.yaml", &config_map(""));
    stack.until_both(GATEWAY_HOST, "/", 503);
    let (_, _, problems) = until_accepted(&stack, "NoValidCACertificate");
    assert!(problems.iter().any(|p| p.contains("later-ca")), "{problems:?}");

    // Restored.
    stack.write("later.yaml", &config_map(&stack.demo.demo_ca_pem));
    stack.until_both(GATEWAY_HOST, "/", 200);
    until_accepted(&stack, "Accepted");
}

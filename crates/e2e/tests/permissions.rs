//! The NATS users `portico up` configures: only the secrets service (and the watcher, which
//! writes them) reads raw Secrets; only the renderers (and the secrets service, which
//! writes it) read trust material; nobody can listen on the raw subjects or on another
//! service's inbox. Checked against the running stack's real nats-server.

use async_nats::jetstream;
use futures_util::StreamExt;
use portico_bus::names;
use portico_deploy::nats_config::User;
use portico_e2e::LocalStack;
use std::time::Duration;

const SECRET: &str = "demo.demo-ca";

/// Try to read one key of a bucket as `user`: Ok(found) or the error.
async fn read(stack: &LocalStack, user: User, bucket: &str) -> Result<bool, String> {
    let client = portico_bus::nats::connect(&stack.stack.bus(user)).await.map_err(|e| e.to_string())?;
    let js = jetstream::ContextBuilder::new().timeout(Duration::from_secs(1)).build(client);
    let kv = js.get_key_value(bucket).await.map_err(|e| format!("open: {e}"))?;
    kv.get(SECRET).await.map(|v| v.is_some()).map_err(|e| format!("get: {e}"))
}

/// Try to watch a bucket as `user`: Ok(number of entries seen within a second) or the error.
async fn watch(stack: &LocalStack, user: User, bucket: &str) -> Result<usize, String> {
    let client = portico_bus::nats::connect(&stack.stack.bus(user)).await.map_err(|e| e.to_string())?;
    let js = jetstream::ContextBuilder::new().timeout(Duration::from_secs(1)).build(client);
    let kv = js.get_key_value(bucket).await.map_err(|e| format!("open: {e}"))?;
    let mut watch = kv.watch_with_history(">").await.map_err(|e| format!("watch: {e}"))?;
    let mut seen = 0;
    while let Ok(Some(entry)) = tokio::time::timeout(Duration::from_secs(1), watch.next()).await {
        entry.map_err(|e| format!("watch: {e}"))?;
        seen += 1;
    }
    Ok(seen)
}

#[test]
fn each_service_user_reads_only_the_buckets_the_bus_contract_gives_it() {
    let stack = LocalStack::start(&[]);
    portico_deploy::up::runtime().block_on(async {
        // Raw Secrets: the secrets service and the watcher, nobody else.
        assert_eq!(read(&stack, User::Secrets, names::SECRETS).await, Ok(true));
        assert_eq!(read(&stack, User::Watcher, names::SECRETS).await, Ok(true));
        for user in [User::Resolver, User::RendererHaproxy, User::RendererEnvoy, User::Cli] {
            let got = read(&stack, user, names::SECRETS).await;
            assert!(got.is_err(), "{user:?} must not read raw Secrets: {got:?}");
            let got = watch(&stack, user, names::SECRETS).await;
            assert!(got.is_err() || got == Ok(0), "{user:?} must not watch raw Secrets: {got:?}");
        }
        // Trust material: the renderers and the secrets service.
        for user in [User::RendererHaproxy, User::RendererEnvoy, User::Secrets] {
            assert_eq!(read(&stack, user, names::TRUST).await, Ok(true), "{user:?} reads trust material");
        }
        for user in [User::Resolver, User::Watcher, User::Cli] {
            let got = read(&stack, user, names::TRUST).await;
            assert!(got.is_err(), "{user:?} must not read trust material: {got:?}");
        }
        // Verdicts (no key material) are the resolver's input.
        assert_eq!(read(&stack, User::Resolver, names::VERDICTS).await, Ok(true));
        assert!(read(&stack, User::RendererEnvoy, names::VERDICTS).await.is_err());

        // Nobody listens on the raw subjects or on another service's inbox: subscribe as
        // the resolver, then make the watcher publish a Secret and the secrets service
        // receive it (a new Secret in the files).
        let client = portico_bus::nats::connect(&stack.stack.bus(User::Resolver)).await.unwrap();
        let mut raw = client.subscribe(format!("$KV.{}.>", names::SECRETS)).await.unwrap();
        let mut inbox = client.subscribe(format!("{}.>", portico_bus::nats::inbox_prefix("secrets"))).await.unwrap();
        let mut everything = client.subscribe(">").await.unwrap();
        stack.write(
            "extra.yaml",
            &format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{name: extra-ca, namespace: demo}}\ntype: Opaque\nstringData:\n  ca.crt: |\n{}",
                stack.demo.demo_ca_pem.lines().map(|l| format!("    {l}\n")).collect::<String>()
            ),
        );
        // The secrets service did see it: its verdict appears.
        let verdicts = jetstream::new(client.clone()).get_key_value(names::VERDICTS).await.unwrap();
        let mut found = false;
        for _ in 0..100 {
            if verdicts.get("demo.extra-ca").await.unwrap().is_some() {
                found = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(found, "the new Secret was validated (the positive control)");
        for (name, subscription) in [("raw subjects", &mut raw), ("the secrets inbox", &mut inbox), ("'>'", &mut everything)] {
            let got = tokio::time::timeout(Duration::from_millis(500), subscription.next()).await;
            assert!(got.is_err() || matches!(got, Ok(None)), "the resolver received a message on {name}: {got:?}");
        }
    });
}

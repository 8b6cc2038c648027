//! The resolver's live memory at 10,000 routes, in process (a figure, ignored by default):
//! glibc's in-use bytes (`mallinfo2`, the test binary's allocator) after `portico bench`'s
//! world is generated and its verdicts set, and after `Incremental` has resolved it all,
//! which is the state the resolver service keeps. docs/PERFORMANCE.md quotes it:
//!
//!     cargo test --release -p portico-deploy --test resolver_memory -- --ignored --nocapture

fn in_use_mib() -> f64 {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    unsafe { libc::mallinfo2() }.uordblks as f64 / 1_048_576.0
}

#[test]
#[ignore = "a figure: run with --release -- --ignored --nocapture"]
fn the_resolvers_state_at_ten_thousand_routes() {
    let start = in_use_mib();
    let (mut snapshot, secrets) = portico_deploy::bench::generate(&portico_deploy::bench::Options::default());
    for secret in &secrets {
        let (verdict, _) = portico_secrets::validate_secret(secret, 1_800_000_000);
        snapshot.set_verdict(verdict);
    }
    drop(secrets);
    let inputs = in_use_mib() - start;
    let mut state = portico_resolver::Incremental::from_snapshot(snapshot, Default::default());
    let changes = state.rebuild();
    assert_eq!(changes.units, 10_000, "every HTTPProxy resolved");
    let whole = in_use_mib() - start;
    eprintln!(
        "in use: inputs {inputs:.1} MiB, with the incremental state {whole:.1} MiB (state {:.1} MiB)",
        whole - inputs
    );
}

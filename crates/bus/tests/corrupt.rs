//! Corrupted and hostile bus values (issue 10, item 5): every value type the services read
//! decodes to an error or a valid value, never a panic, whatever the bytes. A malformed
//! trace context in an envelope starts a new trace instead of reaching code that slices it.

use portico_bus::{open, seal, AppliedRecord, LeaseRecord, ModelRecord, OpenError, TraceContext};
use portico_model::{Object, ObjectStatus, SecretVerdict, TrustMaterial};
use portico_testkit::{pipeline, repo};
use proptest::prelude::*;

/// One sealed sample of every type on the bus, from the bundled example.
fn samples() -> Vec<(&'static str, Vec<u8>)> {
    let paths = [repo().join("examples/upstream-tls")];
    let config = portico_resolver::Config::default();
    let (model, trust) = pipeline(&paths, &config);
    let trace = TraceContext::new("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Some("k=v"));
    let mut out = Vec::new();
    let decoded = portico_watcher::load(&paths).unwrap();
    let mut snapshot = portico_resolver::Snapshot::default();
    for (object, _) in decoded.objects.into_iter().take(12) {
        out.push(("Object", seal(&object, &trace)));
        if let Object::Secret(secret) = &object {
            let (verdict, _) = portico_secrets::validate_secret(secret, portico_testkit::now());
            out.push(("SecretVerdict", seal(&verdict, &trace)));
            snapshot.set_verdict(verdict);
        } else {
            snapshot.apply(object).unwrap();
        }
    }
    for status in portico_resolver::resolve(&snapshot, &config).statuses.iter().take(3) {
        out.push(("ObjectStatus", seal(status, &trace)));
    }
    for material in trust.values().take(2) {
        out.push(("TrustMaterial", seal(material, &trace)));
    }
    for piece in model.pieces().into_iter().take(3) {
        out.push(("ModelPiece", seal(&piece, &trace)));
    }
    let index = portico_bus::model::ModelIndex {
        epoch: 1,
        generation: 2,
        pieces: 3,
        digest: "0".repeat(32),
        changed_at_ms: 5,
        published_at_ms: 6,
    };
    out.push(("ModelIndex", seal(&index, &trace)));
    let record = ModelRecord {
        epoch: 1,
        generation: 2,
        hash: model.content_hash(),
        changed_at_ms: 0,
        published_at_ms: 0,
        model,
    };
    out.push(("ModelRecord", seal(&record, &trace)));
    let applied = AppliedRecord {
        epoch: 1,
        generation: 2,
        hash: record.hash.clone(),
        error: Some("x".into()),
        problems: vec!["p".into()],
        at_unix_ms: 3,
        took_ms: 4,
    };
    out.push(("AppliedRecord", seal(&applied, &trace)));
    out.push(("LeaseRecord", seal(&LeaseRecord { holder: "resolver-1".into() }, &trace)));
    out.push(("bool", seal(&true, &trace)));
    out
}

/// Open `bytes` as the type named `kind` and use what a service uses of it.
fn open_as(kind: &str, bytes: &[u8]) {
    fn use_trace(trace: &TraceContext) {
        let _ = trace.trace_id();
    }
    macro_rules! check {
        ($t:ty) => {
            match open::<$t>(bytes) {
                Ok((_, trace)) => use_trace(&trace),
                Err(
                    OpenError::IncompatibleSchema { .. }
                    | OpenError::MalformedEnvelope(_)
                    | OpenError::MalformedPayload(_),
                ) => {}
            }
        };
    }
    match kind {
        "Object" => check!(Object),
        "SecretVerdict" => check!(SecretVerdict),
        "ObjectStatus" => check!(ObjectStatus),
        "TrustMaterial" => check!(TrustMaterial),
        "ModelRecord" => {
            if let Ok((record, trace)) = open::<ModelRecord>(bytes) {
                use_trace(&trace);
                let _ = record.version();
                let _ = record.model.content_hash();
            }
        }
        "AppliedRecord" => check!(AppliedRecord),
        "ModelIndex" => check!(portico_bus::model::ModelIndex),
        "ModelPiece" => {
            if let Ok((piece, trace)) = open::<portico_model::ModelPiece>(bytes) {
                use_trace(&trace);
                let _ = portico_model::Model::from_pieces([&piece]);
            }
        }
        "LeaseRecord" => check!(LeaseRecord),
        "bool" => check!(bool),
        other => panic!("no check for {other}"),
    }
}

/// A corruption of a valid encoding: bytes flipped, cut, repeated or appended.
#[derive(Clone, Debug)]
enum Corruption {
    Flip { at: usize, xor: u8 },
    Truncate { keep: usize },
    Extend { bytes: Vec<u8> },
    Splice { at: usize, bytes: Vec<u8> },
}

fn corruption() -> impl Strategy<Value = Corruption> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, xor)| Corruption::Flip { at, xor }),
        any::<usize>().prop_map(|keep| Corruption::Truncate { keep }),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(|bytes| Corruption::Extend { bytes }),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Corruption::Splice { at, bytes }),
    ]
}

fn corrupt(mut bytes: Vec<u8>, corruptions: &[Corruption]) -> Vec<u8> {
    for c in corruptions {
        let len = bytes.len().max(1);
        match c {
            Corruption::Flip { at, xor } => {
                if !bytes.is_empty() {
                    bytes[at % len] ^= xor;
                }
            }
            Corruption::Truncate { keep } => bytes.truncate(keep % len),
            Corruption::Extend { bytes: more } => bytes.extend_from_slice(more),
            Corruption::Splice { at, bytes: more } => {
                let at = at % len;
                bytes.splice(at.min(bytes.len())..(at + more.len()).min(bytes.len()), more.iter().copied());
            }
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn corrupted_values_of_every_type_never_panic_a_reader(
        which in any::<usize>(),
        corruptions in proptest::collection::vec(corruption(), 1..4),
    ) {
        let samples = samples_cached();
        let (kind, bytes) = &samples[which % samples.len()];
        open_as(kind, &corrupt(bytes.clone(), &corruptions));
    }

    #[test]
    fn random_bytes_never_panic_a_reader(which in any::<usize>(), bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let samples = samples_cached();
        let (kind, _) = &samples[which % samples.len()];
        open_as(kind, &bytes);
    }
}

fn samples_cached() -> &'static [(&'static str, Vec<u8>)] {
    static SAMPLES: std::sync::OnceLock<Vec<(&'static str, Vec<u8>)>> = std::sync::OnceLock::new();
    SAMPLES.get_or_init(samples)
}

#[test]
fn the_samples_cover_every_type_the_services_read() {
    let kinds: std::collections::BTreeSet<&str> = samples_cached().iter().map(|(k, _)| *k).collect();
    for kind in [
        "Object",
        "SecretVerdict",
        "ObjectStatus",
        "TrustMaterial",
        "ModelRecord",
        "AppliedRecord",
        "LeaseRecord",
        "bool",
    ] {
        assert!(kinds.contains(kind), "no sample of {kind}");
    }
}

#[test]
fn a_malformed_trace_context_on_the_bus_starts_a_new_trace() {
    for bad in ["x", "00-short", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", "é".repeat(40).as_str()] {
        let hostile = TraceContext { traceparent: Some(bad.to_owned()), tracestate: Some("a\nb".into()) };
        let (value, trace) = open::<u32>(&seal(&7u32, &hostile)).expect("the payload is fine");
        assert_eq!(value, 7);
        assert_eq!(trace, TraceContext::default(), "{bad:?} was carried");
        assert_eq!(trace.trace_id(), None);
    }
    let good = TraceContext::new("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None);
    let (_, trace) = open::<u32>(&seal(&7u32, &good)).unwrap();
    assert_eq!(trace.trace_id(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
}

//! Every boundary type survives the bus codec (bincode is not self-describing: serde
//! attributes that skip fields or flatten break it silently, so each type is checked).

use portico_bus::{open, seal, ModelRecord, TraceContext};
use portico_testkit::{pipeline, repo, testdata};

#[test]
fn models_statuses_verdicts_and_trust_material_round_trip() {
    for paths in [vec![repo().join("examples/upstream-tls")], vec![testdata("edge-cases.yaml")]] {
        let config = portico_resolver::Config::default();
        let (model, trust) = pipeline(&paths, &config);
        let mut snapshot = portico_resolver::Snapshot::default();
        let decoded = portico_watcher::load(&paths).unwrap();
        for (object, _) in decoded.objects {
            let (_, back) =
                (0, open::<portico_model::Object>(&seal(&object, &TraceContext::default())).expect("object"));
            assert_eq!(back.0, object);
            match object {
                portico_model::Object::Secret(s) => {
                    let (verdict, _) = portico_secrets::validate_secret(&s, portico_testkit::now());
                    let (back, _) = open::<portico_model::SecretVerdict>(&seal(&verdict, &TraceContext::default()))
                        .expect("verdict");
                    assert_eq!(back, verdict);
                    snapshot.set_verdict(verdict);
                }
                other => snapshot.apply(other).unwrap(),
            }
        }
        for status in portico_resolver::resolve(&snapshot, &config).statuses {
            let (back, _) =
                open::<portico_model::ObjectStatus>(&seal(&status, &TraceContext::default())).expect("status");
            assert_eq!(back, status);
        }
        let record = ModelRecord {
            epoch: 1_764_672_000_000,
            generation: 7,
            hash: model.content_hash(),
            changed_at_ms: 0,
            published_at_ms: 0,
            model: model.clone(),
        };
        let (back, _) = open::<ModelRecord>(&seal(&record, &TraceContext::default())).expect("the model record");
        assert_eq!(back, record);
        for material in trust.values() {
            let (back, _) = open::<portico_model::TrustMaterial>(&seal(material, &TraceContext::default()))
                .expect("trust material");
            assert_eq!(&back, material);
        }
    }
}

/// The publisher encodes borrowed pieces (`Model::piece_refs`): each must encode exactly as
/// the `ModelPiece` it stands for, which the followers decode.
#[test]
fn a_borrowed_piece_encodes_as_the_piece() {
    let (model, _) = portico_testkit::pipeline(
        &[
            portico_testkit::repo().join("testdata/edge-cases.yaml"),
            portico_testkit::repo().join("examples/upstream-tls"),
        ],
        &portico_resolver::Config::default(),
    );
    let (owned, borrowed) = (model.pieces(), model.piece_refs());
    assert_eq!(owned.len(), borrowed.len());
    assert!(owned.len() > 5, "a model with several pieces");
    for (piece, piece_ref) in owned.iter().zip(&borrowed) {
        assert_eq!(portico_bus::codec::encode(piece), portico_bus::codec::encode(piece_ref), "{}", piece.identity());
        assert_eq!(piece.identity(), piece_ref.identity());
    }
}

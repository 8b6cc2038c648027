//! Test support: the pipeline from manifest files to the model and its trust material (as
//! `portico translate` runs it), and the shared fixtures under `testdata/`.

use portico_model::{Model, Object, SecretRef, TrustMaterial};
use portico_resolver::{resolve, Config, Snapshot};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repository exists")
}

/// A file under `testdata/`.
pub fn testdata(name: &str) -> PathBuf {
    repo().join("testdata").join(name)
}

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Decode, validate secrets, resolve. Panics if a document cannot be read.
pub fn pipeline(paths: &[PathBuf], config: &Config) -> (Model, BTreeMap<SecretRef, TrustMaterial>) {
    let decoded = portico_watcher::load(paths).expect("the paths exist");
    assert_eq!(decoded.problems, vec![], "test manifests must be readable");
    let mut snapshot = Snapshot::default();
    let mut trust = BTreeMap::new();
    for (object, _) in decoded.objects {
        match object {
            Object::Secret(secret) => {
                let (verdict, material) = portico_secrets::validate_secret(&secret, now());
                trust.insert(material.secret.clone(), material);
                snapshot.set_verdict(verdict);
            }
            other => snapshot.apply(other).expect("not a secret"),
        }
    }
    (resolve(&snapshot, config).model, trust)
}

/// The same, from YAML text.
pub fn pipeline_yaml(yaml: &str, config: &Config) -> (Model, BTreeMap<SecretRef, TrustMaterial>) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("world.yaml"), yaml).expect("writable");
    pipeline(&[dir.path().to_owned()], config)
}

//! A certificate per Envoy pod (ADS mutual TLS) through the certificates API, against the
//! fake API server: the init container's request (`request_certificate`) and the active
//! watcher's signer, end to end. A pod gets a certificate naming exactly itself, signed by
//! the ADS CA, with the key it made; a pod asking for another pod's name, and anything that
//! is not an Envoy pod, is denied with the reason, and gets nothing.

mod fake_api;

use fake_api::*;
use portico_bus::nats::ConnectConfig;
use portico_testkit::NatsServer;
use portico_watcher::envoy_identity::{request_certificate, IdentityError, SignerConfig};
use serde_json::json;
use std::time::Duration;

const ENVOY_SA: &str = "system:serviceaccount:portico:portico-envoy";

fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_pod_gets_a_certificate_naming_itself_and_nothing_else() {
    use base64::Engine;
    let nats = NatsServer::start();
    let bus = ConnectConfig { url: nats.url(), name: "test".into(), ..Default::default() };
    let api = FakeApi::start().await;
    // The ADS CA, as the credentials Job stores it (labelled internal: never on the bus).
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "Portico ADS CA");
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    api.put(
        SECRETS,
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": "portico-ads-ca", "namespace": "portico", "labels": {"portico.dev/internal": "true"}},
               "data": {"ca.crt": b64(&ca_pem), "ca.key": b64(&ca_key.serialize_pem())}}),
        false,
    );

    let mut config = kube_config(&bus, Some(status_config("watcher-a", 2)));
    config.envoy_signer = Some(SignerConfig {
        namespace: "portico".into(),
        service_account: "portico-envoy".into(),
        ca_secret: "portico-ads-ca".into(),
        validity: Duration::from_secs(86_400),
        every: Duration::from_millis(100),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(portico_watcher::kubernetes::run(config, client(&api), async move {
        let _ = stopped.await;
    }));

    // envoy-1, with its own bound token, asks for its certificate.
    api.state.lock().unwrap().requester = (ENVOY_SA.into(), vec!["envoy-1".into()]);
    let dir = tempfile::tempdir().unwrap();
    request_certificate(client(&api), "envoy-1", dir.path(), Duration::from_secs(20)).await.expect("issued");
    let cert_pem = std::fs::read_to_string(dir.path().join("envoy.crt")).unwrap();
    let key_pem = std::fs::read_to_string(dir.path().join("envoy.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("envoy.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the key is the owner's only");
    let der = pem_der(&cert_pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let names: Vec<String> =
        cert.subject_alternative_name().unwrap().unwrap().value.general_names.iter().map(|n| n.to_string()).collect();
    assert_eq!(names, ["DNSName(envoy-1.envoy.portico)"]);
    let ca_der = pem_der(&ca_pem);
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    cert.verify_signature(Some(ca_cert.public_key())).expect("signed by the ADS CA");
    let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        rcgen::PublicKeyData::der_bytes(&key),
        "the certificate carries the key the pod made"
    );
    let approved = api.state.lock().unwrap().csrs.values().next().unwrap()["status"]["conditions"][0].clone();
    assert_eq!(approved["type"], "Approved");

    // envoy-1 asking for envoy-2's name, and a pod of another service account: denied, with
    // the reason, and no certificate.
    let refused = [
        ((ENVOY_SA, "envoy-1"), "envoy-2", "may have only \"envoy-1.envoy.portico\""),
        (("system:serviceaccount:shop:default", "web-1"), "web-1", "only the Envoy pods' service account"),
    ];
    for ((username, pod), asks_for, why) in refused {
        api.state.lock().unwrap().requester = (username.into(), vec![pod.into()]);
        let dir = tempfile::tempdir().unwrap();
        match request_certificate(client(&api), asks_for, dir.path(), Duration::from_secs(20)).await {
            Err(IdentityError::Denied { reason, .. }) => assert!(reason.contains(why), "{reason}"),
            other => panic!("{username} for {asks_for}: {other:?}"),
        }
        assert!(!dir.path().join("envoy.crt").exists());
    }
    let issued = api.state.lock().unwrap().csrs.values().filter(|c| c["status"]["certificate"].is_string()).count();
    assert_eq!(issued, 1, "one certificate issued in all");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), watcher).await.expect("stops").unwrap().unwrap();
}

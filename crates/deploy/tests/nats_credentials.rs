//! `portico nats-credentials` (the Job of deploy/kubernetes) against a fake API server at
//! the HTTP level, with kube's real client: it creates the Secret with a fresh password per
//! service, keeps an existing one (a conflict) without reading it, and explains a refusal.

use http_body_util::BodyExt;
use std::sync::{Arc, Mutex};

/// What the fake API server saw: method, path, body.
type Seen = Arc<Mutex<Vec<(String, String, serde_json::Value)>>>;

/// Answers every request with the next of `answers` (status, body), recording it.
async fn serve(listener: tokio::net::TcpListener, answers: Vec<(u16, serde_json::Value)>, seen: Seen) {
    let answers = Arc::new(Mutex::new(answers.into_iter()));
    loop {
        let Ok((stream, _)) = listener.accept().await else { return };
        let (answers, seen) = (answers.clone(), seen.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let (answers, seen) = (answers.clone(), seen.clone());
                async move {
                    let method = request.method().to_string();
                    let path = request.uri().path().to_owned();
                    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                    let (status, answer) = answers.lock().unwrap().next().expect("an answer left");
                    seen.lock().unwrap().push((method, path, body));
                    let mut response =
                        hyper::Response::new(http_body_util::Full::new(hyper::body::Bytes::from(answer.to_string())));
                    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                    response.headers_mut().insert("content-type", "application/json".parse().unwrap());
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn status(code: u16, reason: &str, message: &str) -> serde_json::Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code})
}

#[test]
fn the_job_creates_the_secret_once_and_never_reads_it() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let created = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "portico-nats-users", "namespace": "portico"}, "type": "Opaque"});
    runtime.spawn(serve(
        listener,
        vec![
            (201, created.clone()),
            (201, created),
            (409, status(409, "AlreadyExists", "secrets \"portico-nats-users\" already exists")),
            (409, status(409, "AlreadyExists", "secrets \"portico-ads-tls\" already exists")),
            (
                403,
                status(
                    403,
                    "Forbidden",
                    "secrets is forbidden: User \"system:serviceaccount:portico:default\" cannot create resource \"secrets\"",
                ),
            ),
        ],
        seen.clone(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]\n\
             users: [{{name: fake, user: {{}}}}]\ncontexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n\
             current-context: fake\n"
        ),
    )
    .unwrap();
    let run = || {
        let out = std::process::Command::new(portico_deploy::up::sibling_bin_dir().join("portico"))
            .args(["nats-credentials", "--namespace", "portico"])
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .expect("the portico binary (cargo test --workspace builds it)");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, stdout, stderr) = run();
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("created Secret portico/portico-nats-users"), "{stdout}");
    assert!(stdout.contains("created Secret portico/portico-ads-tls"), "{stdout}");
    let (code, stdout, stderr) = run();
    assert_eq!(code, Some(0), "an existing Secret is kept: {stdout}{stderr}");
    assert!(stdout.contains("exists; kept it"), "{stdout}");
    let (code, stdout, stderr) = run();
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("cannot create resource") && stderr.contains("needs `create` on secrets"), "{stderr}");

    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|(method, path, _)| method == "POST" && path == "/api/v1/namespaces/portico/secrets"),
        "only creates, never reads: {seen:?}"
    );
    let body = &seen[0].2;
    assert_eq!(body["metadata"]["name"], "portico-nats-users");
    assert_eq!(body["type"], "Opaque");
    let data = body["stringData"].as_object().expect("stringData");
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "PASSWORD_RENDERER_ENVOY",
            "PASSWORD_RENDERER_HAPROXY",
            "PASSWORD_RESOLVER",
            "PASSWORD_SECRETS",
            "PASSWORD_WATCHER"
        ]
    );
    let passwords: std::collections::BTreeSet<&str> = data.values().map(|v| v.as_str().unwrap()).collect();
    assert!(passwords.iter().all(|p| p.len() == 48 && p.bytes().all(|b| b.is_ascii_hexdigit())), "{passwords:?}");
    assert_eq!(passwords.len(), 5, "a different password per service");
    let second = seen[2].2["stringData"].as_object().unwrap();
    assert_ne!(second.values().next(), data.values().next(), "fresh passwords at every attempt");

    // ADS's mutual TLS: a CA with its key (the watcher signs each Envoy pod's certificate),
    // renderer-envoy's certificate and key; no shared Envoy certificate.
    let ads = &seen[1].2;
    assert_eq!(ads["metadata"]["name"], "portico-ads-tls");
    for created in [&seen[0].2, ads] {
        assert_eq!(created["metadata"]["labels"]["portico.dev/internal"], "true", "the watcher leaves it out");
    }
    let files = ads["stringData"].as_object().expect("stringData");
    let keys: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(keys, ["ca.crt", "ca.key", "server.crt", "server.key"]);
    for (name, value) in files {
        let pem = value.as_str().unwrap();
        let header = if name.ends_with(".key") { "-----BEGIN PRIVATE KEY-----" } else { "-----BEGIN CERTIFICATE-----" };
        assert!(pem.starts_with(header), "{name}: {pem}");
    }
    assert_ne!(seen[3].2["stringData"]["ca.crt"], files["ca.crt"], "a fresh CA at every attempt");
}

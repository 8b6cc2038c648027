//! `telemetry::init` as a service runs it, exporting with OTLP's default protocol
//! (HTTP/protobuf) to a receiver in this test: the standard variables are honoured, a span
//! continues the carried trace, `RUST_LOG` does not silence spans, and only Portico's own
//! spans are exported. One test per binary: it sets the process's environment.

use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use portico_bus::TraceContext;
use portico_kit::telemetry;
use prost::Message;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
struct Received {
    path: String,
    content_type: String,
    request: ExportTraceServiceRequest,
}

async fn receive(listener: tokio::net::TcpListener, got: Arc<Mutex<Vec<Received>>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { return };
        let got = got.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let got = got.clone();
                async move {
                    let path = request.uri().path().to_owned();
                    let content_type = request
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace request");
                    got.lock().unwrap().push(Received { path, content_type, request });
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                        hyper::body::Bytes::new(),
                    )))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

#[test]
fn spans_are_exported_over_otlp_http_when_the_standard_variables_say_so() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    runtime.spawn(receive(listener, got.clone()));

    // SAFETY (edition 2021: not unsafe): this binary's only test, before any thread reads them.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{port}"));
    std::env::remove_var("OTEL_EXPORTER_OTLP_PROTOCOL");
    std::env::set_var("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test");
    std::env::set_var("RUST_LOG", "error");
    let telemetry = {
        let _in_runtime = runtime.enter();
        telemetry::init("portico-example")
    };
    assert_eq!(telemetry.exporting_to.as_deref(), Some(format!("http://127.0.0.1:{port}").as_str()));

    let carried = TraceContext::new("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None);
    let passed_on = {
        let span = tracing::info_span!(target: "portico_example::service", "example.unit", object = "demo/web");
        telemetry::continue_trace(&span, &carried);
        let _child = span.in_scope(|| tracing::info_span!(target: "portico_example::service", "example.step"));
        telemetry::outgoing(&span, &TraceContext::default())
    };
    // A unit that folds two changes: the child of the first, linked to the second.
    let second = TraceContext::new("00-11111111111111111111111111111111-2222222222222222-01", None);
    let folded = tracing::info_span!(target: "portico_example::service", "example.folded");
    telemetry::fold_causes(&folded, &[carried.clone(), second]);
    drop(folded);
    drop(tracing::info_span!(target: "hyper::client", "not.ours"));
    runtime.block_on(async move { tokio::task::spawn_blocking(move || telemetry.shutdown()).await }).unwrap();

    let got = got.lock().unwrap().clone();
    assert!(!got.is_empty(), "nothing exported");
    assert!(got.iter().all(|r| r.path == "/v1/traces" && r.content_type == "application/x-protobuf"), "{got:?}");
    let resources: Vec<_> = got.iter().flat_map(|r| &r.request.resource_spans).collect();
    let attribute = |key: &str| -> Vec<String> {
        resources
            .iter()
            .flat_map(|r| r.resource.iter().flat_map(|r| &r.attributes))
            .filter(|a| a.key == key)
            .map(|a| match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                other => format!("{other:?}"),
            })
            .collect()
    };
    assert_eq!(attribute("service.name"), ["portico-example"]);
    assert_eq!(attribute("deployment.environment"), ["test"], "OTEL_RESOURCE_ATTRIBUTES");
    let spans: Vec<_> = resources.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans).collect();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names.len(), 3, "our three spans and not the other crate's: {names:?}");
    let unit = spans.iter().find(|s| s.name == "example.unit").expect("the unit's span");
    let step = spans.iter().find(|s| s.name == "example.step").expect("the step's span");
    assert_eq!(hex(&unit.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736", "the carried trace");
    assert_eq!(hex(&unit.parent_span_id), "00f067aa0ba902b7", "the carried span is the parent");
    assert_eq!(step.parent_span_id, unit.span_id, "a step is the unit's child");
    let folded = spans.iter().find(|s| s.name == "example.folded").expect("the folding unit's span");
    assert_eq!(hex(&folded.parent_span_id), "00f067aa0ba902b7", "the first change is the parent");
    let links: Vec<(String, String)> = folded.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect();
    assert_eq!(links, [("11111111111111111111111111111111".to_owned(), "2222222222222222".to_owned())]);
    assert_eq!(
        passed_on.traceparent.as_deref(),
        Some(format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", hex(&unit.span_id)).as_str()),
        "what the unit publishes names the unit's span"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

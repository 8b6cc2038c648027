//! One change is one trace: the stack as `portico up` runs it, exporting spans with OTLP
//! (gRPC) to a receiver in this test. Creating the CA secret the demo's `/broken` route is
//! missing goes watcher → secrets → resolver → both renderers → Envoy's ACK, and every
//! span of that work is in the trace the watcher started, each the child of the step
//! before it.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use portico_e2e::LocalStack;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A span as the receiver got it.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    start_unix_nanos: u64,
    attributes: Vec<(String, String)>,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// An OTLP/gRPC trace receiver that keeps every span.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .map(|a| text(a.value.as_ref()))
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                    start_unix_nanos: span.start_time_unix_nano,
                    attributes: span.attributes.iter().map(|a| (a.key.clone(), text(a.value.as_ref()))).collect(),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn unix_nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn describe(spans: &[Received]) -> String {
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    spans
        .iter()
        .map(|s| {
            let attributes: Vec<_> =
                s.attributes.iter().filter(|(k, _)| !k.starts_with("code.") && k != "target").collect();
            format!(
                "  trace {} span {} parent {:16} {} {} {:?}\n",
                hex(&s.trace_id),
                hex(&s.span_id),
                hex(&s.parent_span_id),
                s.service,
                s.name,
                attributes
            )
        })
        .collect()
}

#[test]
fn one_change_is_one_trace_from_the_watcher_to_both_proxies() {
    let runtime = portico_deploy::up::runtime();
    let receiver = Receiver::default();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = TraceServiceServer::new(receiver.clone());
    runtime.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tokio_stream_of(listener))
            .await
            .expect("the OTLP receiver");
    });

    let endpoint = format!("http://127.0.0.1:{port}");
    let stack = LocalStack::start_with_env(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    // Every service exports: the start-up already produced spans from each.
    let services = [
        "portico-watcher",
        "portico-secrets",
        "portico-resolver",
        "portico-renderer-haproxy",
        "portico-renderer-envoy",
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans = receiver.spans.lock().unwrap().clone();
        if services.iter().all(|s| spans.iter().any(|r| r.service == *s)) {
            break;
        }
        assert!(Instant::now() < deadline, "not every service exported spans:\n{}\n{}", describe(&spans), stack.logs());
        std::thread::sleep(Duration::from_millis(100));
    }

    // The change: the CA secret /broken is missing.
    let before = unix_nanos();
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: missing-ca, namespace: demo}}\ntype: Opaque\nstringData:\n  ca.crt: |\n{}",
        stack.demo.demo_ca_pem.lines().map(|l| format!("    {l}\n")).collect::<String>()
    );
    stack.write("fix.yaml", &secret);
    stack.until_both("web.example.com", "/broken", 200);

    // The trace the watcher started for it, and every span in it once Envoy's ACK is in.
    let wanted =
        ["watcher.publish", "secrets.verdict", "resolver.rebuild", "haproxy.apply", "envoy.serve", "envoy.ack"];
    let deadline = Instant::now() + Duration::from_secs(20);
    let (root, trace) = loop {
        let spans = receiver.spans.lock().unwrap().clone();
        let root = spans
            .iter()
            .find(|s| s.name == "watcher.publish" && s.attribute("object").is_some_and(|o| o.contains("missing-ca")))
            .cloned();
        if let Some(root) = root {
            let trace: Vec<Received> = spans.iter().filter(|s| s.trace_id == root.trace_id).cloned().collect();
            // Complete: every step there, and every parent (a child ends, and is exported,
            // before its parent).
            let closed = trace
                .iter()
                .all(|s| s.parent_span_id.is_empty() || trace.iter().any(|p| p.span_id == s.parent_span_id));
            if closed && wanted.iter().all(|w| trace.iter().any(|s| s.name == *w)) {
                break (root, trace);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the change's trace did not reach every service within 20 s; spans since the change:\n{}",
            describe(&spans.iter().filter(|s| s.start_unix_nanos >= before).cloned().collect::<Vec<_>>())
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    // A new trace: the watcher's span has no parent.
    assert!(root.parent_span_id.is_empty(), "the watcher starts the trace: {root:?}");
    assert_eq!(root.service, "portico-watcher");
    let by_name = |name: &str| -> Vec<&Received> { trace.iter().filter(|s| s.name == name).collect() };
    let parent_of = |span: &Received| -> &Received {
        trace.iter().find(|s| s.span_id == span.parent_span_id).unwrap_or_else(|| {
            panic!("the parent of {} ({}) is not in the trace:\n{}", span.name, span.service, describe(&trace))
        })
    };
    // Each service's span is the child of the step before it, and comes from that service.
    for (name, service, parents) in [
        ("secrets.verdict", "portico-secrets", &["watcher.publish"][..]),
        ("resolver.rebuild", "portico-resolver", &["secrets.verdict"][..]),
        // A renderer continues the last input it folded in: the model, or the trust
        // material the secrets service published for it.
        ("haproxy.apply", "portico-renderer-haproxy", &["resolver.rebuild", "secrets.verdict"][..]),
        ("envoy.serve", "portico-renderer-envoy", &["resolver.rebuild", "secrets.verdict"][..]),
        ("envoy.ack", "portico-renderer-envoy", &["envoy.serve"][..]),
    ] {
        let spans = by_name(name);
        assert!(!spans.is_empty(), "no {name} span in the trace:\n{}", describe(&trace));
        for span in spans {
            assert_eq!(span.service, service, "{name}");
            let parent = parent_of(span);
            assert!(
                parents.contains(&parent.name.as_str()),
                "{name}'s parent is {}, not one of {parents:?}",
                parent.name
            );
        }
    }
    // HAProxy ran the change through its runtime API (a new cluster takes a spare
    // backend) or by a reload: either is the child of the apply.
    let ran: Vec<&Received> = by_name("haproxy.runtime").into_iter().chain(by_name("haproxy.reload")).collect();
    assert!(!ran.is_empty(), "no haproxy.runtime or haproxy.reload span in the trace:\n{}", describe(&trace));
    for span in ran {
        assert_eq!(span.service, "portico-renderer-haproxy");
        assert_eq!(parent_of(span).name, "haproxy.apply", "{}", describe(&trace));
    }
    assert_eq!(by_name("envoy.ack")[0].attribute("nack"), Some("false"));

    // One trace: the rebuild and the applies the change caused are all in it.
    let spans = receiver.spans.lock().unwrap().clone();
    for name in ["resolver.rebuild", "haproxy.apply", "envoy.serve"] {
        let elsewhere: Vec<&Received> = spans
            .iter()
            .filter(|s| s.name == name && s.start_unix_nanos >= before && s.trace_id != root.trace_id)
            .collect();
        assert!(elsewhere.is_empty(), "{name} in another trace after the change: {elsewhere:?}");
    }
}

/// The listener as the incoming-connection stream tonic's server takes.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    })
}

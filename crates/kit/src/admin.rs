//! Every service's admin port: `/healthz` (the process serves), `/readyz` (the service has
//! done its first unit of work: the initial sync, a published model, an applied
//! configuration) and `/metrics` (Prometheus text format 0.0.4, names
//! `portico_<service>_<what>_<unit>`).
//!
//! One process is one service, so the registry is global: the service's code calls
//! `counter`, `gauge`, `histogram` and `set_ready` wherever the work happens, without
//! threading a handle through every function. The metrics are `prometheus-client`'s, the
//! server is hyper's.

use http_body_util::Full;
use hyper::body::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

static READY: AtomicBool = AtomicBool::new(false);

type Labels = Vec<(&'static str, String)>;
type CounterF = Counter<f64, AtomicU64>;
type GaugeF = Gauge<f64, AtomicU64>;

/// A metric as the service's code names it; each is registered on first use.
enum Metric {
    Counter(CounterF),
    Gauge(GaugeF),
    LabelledGauge(Family<Labels, GaugeF>),
    Histogram(Family<Labels, Histogram>),
}

#[derive(Default)]
struct Metrics {
    registry: Registry,
    by_name: HashMap<&'static str, Metric>,
}

static METRICS: Mutex<Option<Metrics>> = Mutex::new(None);

/// The buckets of every latency histogram: 1 ms to ~33 s, doubling.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16)
}

/// Run `use_it` on the metric called `name`, registering it with `make` on first use.
/// prometheus-client appends `_total` to counters and a full stop to help texts, so both
/// are taken off what the service's code wrote.
fn with_metric<R>(
    name: &'static str,
    help: &'static str,
    make: impl FnOnce() -> Metric,
    use_it: impl FnOnce(&Metric) -> R,
) -> R {
    let mut guard = METRICS.lock().unwrap_or_else(|e| e.into_inner());
    let metrics = guard.get_or_insert_with(Metrics::default);
    if !metrics.by_name.contains_key(name) {
        let metric = make();
        let help = help.strip_suffix('.').unwrap_or(help);
        match &metric {
            Metric::Counter(c) => {
                metrics.registry.register(name.strip_suffix("_total").unwrap_or(name), help, c.clone())
            }
            Metric::Gauge(g) => metrics.registry.register(name, help, g.clone()),
            Metric::LabelledGauge(f) => metrics.registry.register(name, help, f.clone()),
            Metric::Histogram(f) => metrics.registry.register(name, help, f.clone()),
        }
        metrics.by_name.insert(name, metric);
    }
    use_it(&metrics.by_name[name])
}

fn labelled_gauges() -> Metric {
    Metric::LabelledGauge(Family::default())
}

fn histograms() -> Metric {
    Metric::Histogram(Family::new_with_constructor(|| Histogram::new(latency_buckets())))
}

/// Mark the service ready (or not) for `/readyz`.
pub fn set_ready(ready: bool) {
    READY.store(ready, Ordering::SeqCst);
}

pub fn is_ready() -> bool {
    READY.load(Ordering::SeqCst)
}

/// Add to a counter (`name` ends in `_total`).
pub fn counter(name: &'static str, help: &'static str, by: f64) {
    with_metric(
        name,
        help,
        || Metric::Counter(CounterF::default()),
        |m| {
            if let Metric::Counter(c) = m {
                c.inc_by(by);
            }
        },
    );
}

/// Set a gauge.
pub fn gauge(name: &'static str, help: &'static str, value: f64) {
    with_metric(
        name,
        help,
        || Metric::Gauge(GaugeF::default()),
        |m| {
            if let Metric::Gauge(g) = m {
                g.set(value);
            }
        },
    );
}

/// Set a gauge with one label (the text format's escaping is the library's).
pub fn gauge_with(name: &'static str, help: &'static str, label: &'static str, label_value: &str, value: f64) {
    with_metric(name, help, labelled_gauges, |m| {
        if let Metric::LabelledGauge(f) = m {
            f.get_or_create(&vec![(label, label_value.to_owned())]).set(value);
        }
    });
}

/// Record one observation, in seconds, in a latency histogram (buckets 1 ms … 33 s).
pub fn histogram(name: &'static str, help: &'static str, seconds: f64) {
    histogram_with(name, help, &[], seconds);
}

/// `histogram` with labels (e.g. the Envoy node a configuration was applied on).
pub fn histogram_with(name: &'static str, help: &'static str, labels: &[(&'static str, &str)], seconds: f64) {
    let labels: Labels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    with_metric(name, help, histograms, |m| {
        if let Metric::Histogram(f) = m {
            f.get_or_create(&labels).observe(seconds);
        }
    });
}

/// Record the time from `since_ms` (wall-clock milliseconds, e.g. a model's
/// `changed_at_ms`) to now in a latency histogram; nothing when it is not known (0) or lies
/// ahead (another machine's clock), see `portico_bus::seconds_since`.
pub fn histogram_since(name: &'static str, help: &'static str, labels: &[(&'static str, &str)], since_ms: u64) {
    if let Some(seconds) = portico_bus::seconds_since(since_ms) {
        histogram_with(name, help, labels, seconds);
    }
}

/// Remove one labelled series (a secret that is gone, a node that left).
pub fn remove_with(name: &'static str, label: &'static str, label_value: &str) {
    let guard = METRICS.lock().unwrap_or_else(|e| e.into_inner());
    let labels = vec![(label, label_value.to_owned())];
    match guard.as_ref().and_then(|m| m.by_name.get(name)) {
        Some(Metric::LabelledGauge(f)) => {
            f.remove(&labels);
        }
        Some(Metric::Histogram(f)) => {
            f.remove(&labels);
        }
        _ => {}
    }
}

/// Everything in the Prometheus text format.
pub fn render() -> String {
    let guard = METRICS.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = String::new();
    if let Some(metrics) = guard.as_ref() {
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &metrics.registry);
    }
    out
}

/// The answer to a GET of `path`: status, content type, body.
pub fn answer(path: &str) -> (u16, &'static str, String) {
    match path {
        "/healthz" => (200, "text/plain", "ok\n".to_owned()),
        "/readyz" if is_ready() => (200, "text/plain", "ready\n".to_owned()),
        "/readyz" => (503, "text/plain", "not ready\n".to_owned()),
        "/metrics" => (200, prometheus_client::encoding::prometheus_text::CONTENT_TYPE, render()),
        _ => (404, "text/plain", "try /healthz, /readyz or /metrics\n".to_owned()),
    }
}

/// Serve the admin port until the process ends (HTTP/1.1, hyper). A bind failure is
/// returned at once.
pub async fn serve(addr: SocketAddr) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "admin endpoints: /healthz /readyz /metrics");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: hyper::Request<hyper::body::Incoming>| async move {
                    let (status, content_type, body) = answer(request.uri().path());
                    hyper::Response::builder()
                        .status(status)
                        .header(hyper::header::CONTENT_TYPE, content_type)
                        .body(Full::new(Bytes::from(body)))
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .header_read_timeout(std::time::Duration::from_secs(5))
                    .timer(hyper_util::rt::TokioTimer::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "admin connection ended with an error");
                }
            });
        }
    }))
}

/// Give memory freed by a unit of work back to the system. glibc's allocator keeps what a
/// large piece of work freed (the first load of 10,000 routes, a full rendering) as its
/// own, so the resident size stays at the peak. Called after each unit of work: the trim
/// (which walks the free lists) runs on a blocking thread, one at a time, never on the
/// path of a change. Without a tokio runtime, it runs here.
pub fn release_memory() {
    static RUNNING: AtomicBool = AtomicBool::new(false);
    if RUNNING.swap(true, Ordering::SeqCst) {
        return; // one is on its way; it sees this work's frees too
    }
    let trim = || {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            // SAFETY: malloc_trim only returns free memory to the system; it is thread-safe.
            unsafe {
                libc::malloc_trim(0);
            }
            // What the allocator holds against what is in use: a resident size far above
            // the heap in use is the allocator's, not live data.
            // SAFETY: mallinfo2 only reads the allocator's counters.
            let info = unsafe { libc::mallinfo2() };
            gauge(
                "portico_heap_in_use_bytes",
                "Heap in use after the last unit of work (glibc's allocated bytes).",
                (info.uordblks + info.hblkhd) as f64,
            );
            gauge(
                "portico_heap_held_bytes",
                "Heap the allocator holds after the last unit of work and its trim (in use and free).",
                (info.arena + info.hblkhd) as f64,
            );
        }
        RUNNING.store(false, Ordering::SeqCst);
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => drop(handle.spawn_blocking(trim)),
        Err(_) => trim(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_service_and_metrics_render_in_the_text_format() {
        set_ready(false);
        assert_eq!(answer("/readyz").0, 503);
        assert_eq!(answer("/healthz").0, 200);
        set_ready(true);
        assert_eq!(answer("/readyz").0, 200);
        counter("portico_test_events_total", "Events handled.", 2.0);
        counter("portico_test_events_total", "Events handled.", 1.0);
        gauge_with("portico_test_expiry_timestamp_seconds", "Expiry.", "secret", "shop/\"ca\"", 17.0);
        histogram("portico_test_apply_seconds", "Applies.", 0.003);
        histogram("portico_test_apply_seconds", "Applies.", 0.1);
        let text = render();
        assert!(
            text.contains("# HELP portico_test_events_total Events handled.\n# TYPE portico_test_events_total counter\nportico_test_events_total 3"),
            "{text}"
        );
        assert!(text.contains("portico_test_expiry_timestamp_seconds{secret=\"shop/\\\"ca\\\"\"} 17"), "{text}");
        assert!(text.contains("# TYPE portico_test_apply_seconds histogram\n"), "{text}");
        assert!(text.contains("portico_test_apply_seconds_bucket{le=\"0.004\"} 1\n"), "{text}");
        assert!(text.contains("portico_test_apply_seconds_count 2\n"), "{text}");
        remove_with("portico_test_expiry_timestamp_seconds", "secret", "shop/\"ca\"");
        assert!(!render().contains("shop/"), "a removed series is gone");
        assert_eq!(answer("/nope").0, 404);
    }

    #[tokio::test]
    async fn the_admin_port_answers_over_http() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let server = serve(addr).await.unwrap();
        let answer = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .await
        .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok\n"), "{answer}");
        server.abort();
    }
}

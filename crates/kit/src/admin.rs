//! Every service's admin port: `/healthz` (the process serves), `/readyz` (the service has
//! done its first unit of work: the initial sync, a published model, an applied
//! configuration) and `/metrics` (Prometheus text format, names
//! `portico_<service>_<what>_<unit>`).
//!
//! One process is one service, so the registry is global: the service's code calls
//! `counter`, `gauge` and `set_ready` wherever the work happens, without threading a
//! handle through every function.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static READY: AtomicBool = AtomicBool::new(false);

#[derive(Clone, Copy, PartialEq, Eq)]
enum MetricKind {
    Counter,
    Gauge,
}

struct Metric {
    kind: MetricKind,
    help: &'static str,
    /// Label set (rendered, e.g. `secret="shop/ca"`, or empty) → value.
    values: BTreeMap<String, f64>,
}

static METRICS: Mutex<BTreeMap<&'static str, Metric>> = Mutex::new(BTreeMap::new());

/// Mark the service ready (or not) for `/readyz`.
pub fn set_ready(ready: bool) {
    READY.store(ready, Ordering::SeqCst);
}

pub fn is_ready() -> bool {
    READY.load(Ordering::SeqCst)
}

fn record(name: &'static str, help: &'static str, kind: MetricKind, labels: &str, update: impl FnOnce(&mut f64)) {
    let mut metrics = METRICS.lock().unwrap_or_else(|e| e.into_inner());
    let metric = metrics.entry(name).or_insert_with(|| Metric { kind, help, values: BTreeMap::new() });
    update(metric.values.entry(labels.to_owned()).or_insert(0.0));
}

/// Add to a counter (`name` ends in `_total`).
pub fn counter(name: &'static str, help: &'static str, by: f64) {
    record(name, help, MetricKind::Counter, "", |v| *v += by);
}

/// Set a gauge.
pub fn gauge(name: &'static str, help: &'static str, value: f64) {
    record(name, help, MetricKind::Gauge, "", |v| *v = value);
}

/// Set a gauge with one label. The label value is escaped for the text format.
pub fn gauge_with(name: &'static str, help: &'static str, label: &'static str, label_value: &str, value: f64) {
    let escaped = label_value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    record(name, help, MetricKind::Gauge, &format!("{label}=\"{escaped}\""), |v| *v = value);
}

/// Remove one labelled series (a secret that is gone).
pub fn remove_with(name: &'static str, label: &'static str, label_value: &str) {
    let escaped = label_value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    if let Some(metric) = METRICS.lock().unwrap_or_else(|e| e.into_inner()).get_mut(name) {
        metric.values.remove(&format!("{label}=\"{escaped}\""));
    }
}

/// Everything in the Prometheus text format.
pub fn render() -> String {
    use std::fmt::Write;
    let metrics = METRICS.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = String::new();
    for (name, metric) in metrics.iter() {
        let kind = if metric.kind == MetricKind::Counter { "counter" } else { "gauge" };
        let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {kind}", metric.help);
        for (labels, value) in &metric.values {
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        }
    }
    out
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The answer to one request line.
pub fn answer(request_line: &str) -> String {
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    match path {
        "/healthz" => response("200 OK", "text/plain", "ok\n"),
        "/readyz" if is_ready() => response("200 OK", "text/plain", "ready\n"),
        "/readyz" => response("503 Service Unavailable", "text/plain", "not ready\n"),
        "/metrics" => response("200 OK", "text/plain; version=0.0.4", &render()),
        _ => response("404 Not Found", "text/plain", "try /healthz, /readyz or /metrics\n"),
    }
}

/// Serve the admin port until the process ends. A bind failure is returned at once.
pub async fn serve(addr: SocketAddr) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "admin endpoints: /healthz /readyz /metrics");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 2048];
                let mut read = 0;
                // Read up to the end of the request head (or 2 KiB): only the path matters.
                while read < buffer.len() {
                    match tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buffer[read..]))
                        .await
                    {
                        Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                        Ok(Ok(n)) => read += n,
                    }
                    if buffer[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let head = String::from_utf8_lossy(&buffer[..read]);
                let line = head.lines().next().unwrap_or_default().to_owned();
                let _ = stream.write_all(answer(&line).as_bytes()).await;
                let _ = stream.shutdown().await;
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
        // SAFETY: malloc_trim only returns free memory to the system; it is thread-safe.
        unsafe {
            libc::malloc_trim(0);
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
        assert!(answer("GET /readyz HTTP/1.1").starts_with("HTTP/1.1 503"));
        assert!(answer("GET /healthz HTTP/1.1").starts_with("HTTP/1.1 200"));
        set_ready(true);
        assert!(answer("GET /readyz HTTP/1.1").starts_with("HTTP/1.1 200"));
        counter("portico_test_events_total", "Events handled.", 2.0);
        counter("portico_test_events_total", "Events handled.", 1.0);
        gauge_with("portico_test_expiry_timestamp_seconds", "Expiry.", "secret", "shop/\"ca\"", 17.0);
        let text = render();
        assert!(text.contains("# TYPE portico_test_events_total counter\nportico_test_events_total 3\n"), "{text}");
        assert!(text.contains("portico_test_expiry_timestamp_seconds{secret=\"shop/\\\"ca\\\"\"} 17\n"), "{text}");
        remove_with("portico_test_expiry_timestamp_seconds", "secret", "shop/\"ca\"");
        assert!(!render().contains("shop/"), "a removed series is gone");
        assert!(answer("GET /nope HTTP/1.1").starts_with("HTTP/1.1 404"));
    }
}

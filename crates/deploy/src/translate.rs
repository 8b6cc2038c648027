//! `portico translate`: the whole pipeline in one process, from manifest files to statuses
//! (and, with the renderers, proxy configurations). No NATS.

use portico_model::{ContourStatus, Object, ObjectStatus, SecretRef};
use portico_resolver::{resolve, Config, Resolved, Snapshot};
use portico_watcher::{DecodeProblem, Skipped};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Options of `portico translate`.
#[derive(Clone, Debug)]
pub struct Options {
    pub paths: Vec<PathBuf>,
    pub out_dir: PathBuf,
    pub http_port: u16,
    /// The HTTPS listener of hosts with a certificate (plain requests to them are
    /// redirected to 443).
    pub https_port: u16,
    /// Envoy's admin listener (127.0.0.1) in the bootstrap.
    pub envoy_admin_port: u16,
    /// The address the proxies' listeners bind to.
    pub bind_address: std::net::IpAddr,
    pub client_cert: Option<SecretRef>,
    /// Contour's `--root-namespaces`; empty means any namespace.
    pub root_namespaces: Vec<portico_model::K8sName>,
    /// Seconds since the epoch, for certificate expiry.
    pub now: i64,
}

/// What a translation produced, for printing and for tests.
#[derive(Debug)]
pub struct Outcome {
    pub resolved: Resolved,
    /// Documents that could not be read: the command exits non-zero when there are any.
    pub problems: Vec<DecodeProblem>,
    pub warnings: Vec<DecodeProblem>,
    pub skipped: Vec<Skipped>,
    pub secrets: usize,
    pub objects: usize,
    /// Routes a renderer had to turn into 503s (trust material it could not use).
    pub render_problems: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    #[error(transparent)]
    InputUnreadable(#[from] portico_watcher::LoadError),
    #[error("cannot write {path}: {source}")]
    OutputFailed { path: PathBuf, source: std::io::Error },
    #[error("output directory {path}: {error}; HAProxy's file paths are written unquoted, so choose a path of letters, digits and -._/+")]
    OutputPathNotSafe { path: PathBuf, error: portico_model::GrammarError },
}

/// One entry of `status.json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusEntry {
    /// Tells Voyager's Ingress from Kubernetes' (both are kind `Ingress`).
    #[serde(rename = "apiVersion")]
    pub api_version: &'static str,
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    #[serde(flatten)]
    pub status: ContourStatus,
    /// A Gateway API object's `status` as Portico would write it (SPEC section 6):
    /// conditions, parents or ancestors, listeners.
    #[serde(rename = "gatewayStatus", skip_serializing_if = "Option::is_none")]
    pub gateway_status: Option<serde_json::Value>,
}

/// Sorted by kind, namespace, name (DESIGN.md, `portico translate`). `now` (seconds since
/// the epoch) is the `lastTransitionTime` of Gateway API conditions.
pub fn status_entries(statuses: &[ObjectStatus], now: i64) -> Vec<StatusEntry> {
    let now = portico_secrets::rfc3339(now);
    let mut entries: Vec<StatusEntry> = statuses
        .iter()
        .map(|s| StatusEntry {
            api_version: s.object.kind.api_version(),
            kind: s.object.kind.as_str(),
            namespace: s.object.namespace.to_string(),
            name: s.object.name.to_string(),
            status: s.to_contour(),
            gateway_status: s.gateway.as_ref().map(|g| g.to_json(s.object.kind, &serde_json::Value::Null, &now)),
        })
        .collect();
    entries.sort_by(|a, b| {
        (a.kind, a.api_version, &a.namespace, &a.name).cmp(&(b.kind, b.api_version, &b.namespace, &b.name))
    });
    entries
}

/// Read, validate, resolve, and write the outputs.
pub fn run(options: &Options) -> Result<Outcome, TranslateError> {
    let decoded = portico_watcher::load(&options.paths)?;
    let problems = decoded.problems.clone();
    let skipped = decoded.skipped.clone();
    let (objects, warnings) = decoded.into_unique_objects();

    let mut snapshot = Snapshot::default();
    let mut trust = std::collections::BTreeMap::new();
    let mut secrets = 0;
    let count = objects.len();
    for object in objects {
        match object {
            Object::Secret(secret) => {
                secrets += 1;
                let (verdict, material) = portico_secrets::validate_secret(&secret, options.now);
                snapshot.set_verdict(verdict);
                trust.insert(material.secret.clone(), material);
            }
            other => snapshot.apply(other).expect("secrets are handled above"),
        }
    }
    let config = Config {
        http_port: options.http_port,
        https_port: options.https_port,
        client_cert: options.client_cert.clone(),
        root_namespaces: options.root_namespaces.clone(),
        ..Config::default()
    };
    let resolved = resolve(&snapshot, &config);

    write(&options.out_dir.join("status.json"), &json(&status_entries(&resolved.statuses, options.now)))?;
    write(&options.out_dir.join("model.json"), &json(&resolved.model))?;
    let mut render_problems = write_haproxy(options, &resolved.model, &trust)?;
    render_problems.extend(write_envoy(options, &resolved.model, &trust)?);
    Ok(Outcome { resolved, problems, warnings, skipped, secrets, objects: count, render_problems })
}

/// Replace `DIR/<name>/` with a fresh, empty directory (it holds only Portico's output).
fn fresh_dir(out_dir: &Path, name: &str) -> Result<PathBuf, TranslateError> {
    let dir = out_dir.join(name);
    let failed = |source| TranslateError::OutputFailed { path: dir.clone(), source };
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(failed)?;
    }
    std::fs::create_dir_all(&dir).map_err(failed)?;
    Ok(dir)
}

fn write_haproxy(
    options: &Options,
    model: &portico_model::Model,
    trust: &portico_renderer_haproxy::Trust,
) -> Result<Vec<String>, TranslateError> {
    let dir = fresh_dir(&options.out_dir, "haproxy")?;
    let absolute = dir.canonicalize().map_err(|source| TranslateError::OutputFailed { path: dir.clone(), source })?;
    let base_dir = absolute
        .to_str()
        .unwrap_or_default()
        .parse()
        .map_err(|error| TranslateError::OutputPathNotSafe { path: absolute.clone(), error })?;
    let rendered = portico_renderer_haproxy::render(
        model,
        trust,
        &portico_renderer_haproxy::Options {
            base_dir,
            bind_address: options.bind_address,
            http_port: options.http_port,
            https_port: Some(options.https_port),
        },
    );
    // The same writer the HAProxy renderer service uses (client keys owner-only).
    portico_renderer_haproxy::apply::write_files(&dir, &rendered.files).map_err(|e| match e {
        portico_renderer_haproxy::apply::ApplyError::WriteFailed { path, source } => {
            TranslateError::OutputFailed { path, source }
        }
        other => TranslateError::OutputFailed { path: dir.clone(), source: std::io::Error::other(other.to_string()) },
    })?;
    Ok(rendered.problems)
}

fn write_envoy(
    options: &Options,
    model: &portico_model::Model,
    trust: &portico_renderer_envoy::Trust,
) -> Result<Vec<String>, TranslateError> {
    let dir = fresh_dir(&options.out_dir, "envoy")?;
    let (bootstrap, problems) = portico_renderer_envoy::bootstrap(
        model,
        trust,
        &portico_renderer_envoy::Options {
            bind_address: options.bind_address,
            http_port: options.http_port,
            admin_port: options.envoy_admin_port,
        },
    );
    let path = dir.join("envoy.yaml");
    let yaml = format!(
        "# Generated by Portico from the resolved model. Run: envoy -c {}\n{}",
        path.display(),
        portico_renderer_envoy::json::to_yaml(&bootstrap)
    );
    write(&path, &yaml)?;
    // The bootstrap inlines the client key when one is configured.
    restrict(&path)?;
    Ok(problems)
}

/// Owner-only permissions for files that may hold a private key.
fn restrict(path: &Path) -> Result<(), TranslateError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|source| TranslateError::OutputFailed { path: path.to_owned(), source })
}

fn json(value: &impl Serialize) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("statuses and models always serialize");
    text.push('\n');
    text
}

fn write(path: &Path, contents: &str) -> Result<(), TranslateError> {
    let failed = |source| TranslateError::OutputFailed { path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    // Write then rename, so a reader never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(failed)?;
    std::fs::rename(&tmp, path).map_err(failed)
}

/// The human summary: problems, skipped kinds, and a status table.
/// Rows under a header, in columns two spaces apart (the last column unpadded).
pub fn table(header: [&str; 4], rows: &[[String; 4]]) -> String {
    use std::fmt::Write;
    let header = header.map(String::from);
    let width = |i: usize| rows.iter().chain([&header]).map(|r| r[i].len()).max().unwrap_or(0);
    let (w0, w1, w2) = (width(0), width(1), width(2));
    let mut s = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let _ = writeln!(s, "{:w0$}  {:w1$}  {:w2$}  {}", row[0], row[1], row[2], row[3]);
    }
    s
}

/// The status table: kind, name, status (with the number of warnings), description.
pub fn status_table(statuses: &[ObjectStatus]) -> String {
    let mut s = String::new();
    let entries = status_entries(statuses, 0);
    let rows: Vec<[String; 4]> = entries
        .iter()
        .map(|e| {
            let warnings = e.status.conditions.iter().map(|c| c.warnings.len()).sum::<usize>();
            let mut status = e.status.current_status.clone();
            if warnings > 0 {
                status = format!("{status} ({warnings} warning{})", if warnings == 1 { "" } else { "s" });
            }
            [e.kind.to_owned(), format!("{}/{}", e.namespace, e.name), status, e.status.description.clone()]
        })
        .collect();
    s.push_str(&table(["KIND", "NAME", "STATUS", "DESCRIPTION"], &rows));
    s
}

pub fn report(outcome: &Outcome, out_dir: &Path) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for p in &outcome.problems {
        let _ = writeln!(s, "error: {p}");
    }
    for w in &outcome.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    for p in &outcome.render_problems {
        let _ = writeln!(s, "warning: {p}");
    }
    if !outcome.skipped.is_empty() {
        let kinds: std::collections::BTreeSet<String> =
            outcome.skipped.iter().map(|k| format!("{} ({})", k.kind, k.api_version)).collect();
        let _ = writeln!(
            s,
            "skipped {} object(s) of kinds Portico does not read: {}",
            outcome.skipped.len(),
            kinds.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    s.push_str(&status_table(&outcome.resolved.statuses));
    let model = &outcome.resolved.model;
    let routes = model.routes().count();
    let rejected = model.routes().filter(|(_, _, r)| r.action.direct_status().is_some_and(|s| s >= 500)).count();
    let _ = writeln!(
        s,
        "\n{} objects and {} secrets read; {routes} routes ({rejected} answering 502 or 503), {} clusters; model {}",
        outcome.objects - outcome.secrets,
        outcome.secrets,
        model.clusters.len(),
        &model.content_hash()[..12]
    );
    let d = out_dir.display();
    let _ = writeln!(s, "wrote {d}/status.json, {d}/model.json, {d}/haproxy/haproxy.cfg and {d}/envoy/envoy.yaml");
    s
}

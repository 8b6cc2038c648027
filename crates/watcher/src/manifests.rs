//! The file source's decoding: multi-document YAML (and `kind: List`) into Portico's
//! objects, each problem with its file and line. One bad document never stops the others.

use crate::{convert, convert_gateway, crds, gateway_api};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use portico_model::{Kind, Object};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a document starts: file and 1-based line.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub file: String,
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A document that could not be read, with where and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeProblem {
    pub location: Location,
    pub message: String,
}

impl fmt::Display for DecodeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// A document of a kind Portico does not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub location: Location,
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

/// Everything read from a set of files.
#[derive(Clone, Debug, Default)]
pub struct Decoded {
    /// In input order.
    pub objects: Vec<(Object, Location)>,
    pub skipped: Vec<Skipped>,
    /// Documents that could not be read (the caller decides whether that is fatal).
    pub problems: Vec<DecodeProblem>,
    /// Readable but suspicious: an object defined twice (the later definition wins).
    pub warnings: Vec<DecodeProblem>,
}

impl Decoded {
    /// The objects with duplicates removed (the later definition of a kind/namespace/name
    /// wins, and a warning names both places).
    pub fn into_unique_objects(mut self) -> (Vec<Object>, Vec<DecodeProblem>) {
        let mut seen: BTreeMap<_, (Object, Location)> = BTreeMap::new();
        for (object, location) in std::mem::take(&mut self.objects) {
            if let Some((_, earlier)) = seen.insert(object.object_ref(), (object.clone(), location.clone())) {
                self.warnings.push(DecodeProblem {
                    location,
                    message: format!(
                        "{} is also defined at {earlier}; this later definition wins",
                        object.object_ref()
                    ),
                });
            }
        }
        (seen.into_values().map(|(o, _)| o).collect(), self.warnings)
    }
}

/// Split a YAML stream into documents with the 1-based line each starts on.
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        let marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        let end = line == "..." || line.starts_with("... ");
        if marker || end {
            docs.push((start, std::mem::take(&mut current)));
            start = i + 2;
            // `--- key: value` keeps content on the marker line; keep it with its line.
            if marker && line.len() > 4 {
                current.push_str(&line[4..]);
                current.push('\n');
                start = i + 1;
            }
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    docs.push((start, current));
    docs.into_iter()
        .filter(|(_, d)| d.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')))
        .collect()
}

/// Where a document's text is and how to read it typed.
enum Source<'a> {
    Text(&'a str),
    Value(serde_yaml::Value),
}

/// The message of a serde_yaml error and its 1-based line within the document. The
/// location itself is cut from the message (the caller prints it as `file:line`).
fn yaml_error(e: &serde_yaml::Error) -> (Option<usize>, String) {
    let message = e.to_string();
    match e.location() {
        Some(loc) => {
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            (Some(loc.line()), message.replacen(&suffix, "", 1))
        }
        None => (None, message),
    }
}

/// Rewrite every `line N` in a parser message from document-relative to file-absolute.
fn shift_lines(message: &str, offset: usize) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("line ") {
        out.push_str(&rest[..at + 5]);
        rest = &rest[at + 5..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        match rest[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

fn typed<T: DeserializeOwned>(source: &Source<'_>) -> Result<T, (Option<usize>, String)> {
    match source {
        Source::Text(text) => serde_yaml::from_str(text).map_err(|e| yaml_error(&e)),
        Source::Value(value) => serde_yaml::from_value(value.clone()).map_err(|e| yaml_error(&e)),
    }
}

/// Decode every document of one file's text into `out`.
pub fn decode_str(file: &str, text: &str, out: &mut Decoded) {
    for (start, doc) in documents(text) {
        // Without a line of its own, a problem points at the document's first content line.
        let first = doc.lines().position(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')).unwrap_or(0) + 1;
        let at = |line: Option<usize>| Location { file: file.to_owned(), line: start + line.unwrap_or(first) - 1 };
        let value: serde_yaml::Value = match serde_yaml::from_str(&doc) {
            Ok(v) => v,
            Err(e) => {
                let (line, message) = yaml_error(&e);
                let message = shift_lines(&message, start - 1);
                out.problems.push(DecodeProblem { location: at(line), message: format!("not valid YAML: {message}") });
                continue;
            }
        };
        if value.is_null() {
            continue;
        }
        let header = header(&value);
        if header.kind == "List" && header.api_version == "v1" {
            let items = value.get("items").and_then(|i| i.as_sequence()).cloned().unwrap_or_default();
            for (i, item) in items.into_iter().enumerate() {
                decode_one(&item, Source::Value(item.clone()), &|_| at(None), &format!("items[{i}]: "), out);
            }
            continue;
        }
        decode_one(&value, Source::Text(&doc), &at, "", out);
    }
}

struct Header {
    api_version: String,
    kind: String,
    name: String,
}

fn header(value: &serde_yaml::Value) -> Header {
    let s = |v: Option<&serde_yaml::Value>| v.and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    Header {
        api_version: s(value.get("apiVersion")),
        kind: s(value.get("kind")),
        name: s(value.get("metadata").and_then(|m| m.get("name"))),
    }
}

/// Decode one object. `value` is the document already parsed; `source` is what typed
/// decoding reads (the text where there is one, so errors carry a line).
fn decode_one(
    value: &serde_yaml::Value,
    source: Source<'_>,
    at: &dyn Fn(Option<usize>) -> Location,
    prefix: &str,
    out: &mut Decoded,
) {
    if !value.is_mapping() {
        out.problems.push(DecodeProblem {
            location: at(None),
            message: format!("{prefix}not a Kubernetes object (expected a mapping with apiVersion and kind)"),
        });
        return;
    }
    let h = header(value);
    if h.api_version.is_empty() || h.kind.is_empty() {
        out.problems
            .push(DecodeProblem { location: at(None), message: format!("{prefix}apiVersion and kind are required") });
        return;
    }
    let kind = match (h.api_version.as_str(), h.kind.as_str()) {
        ("v1", "Service") => Kind::Service,
        ("v1", "Secret") => Kind::Secret,
        ("discovery.k8s.io/v1", "EndpointSlice") => Kind::EndpointSlice,
        ("projectcontour.io/v1", "HTTPProxy") => Kind::HttpProxy,
        ("projectcontour.io/v1", "TLSCertificateDelegation") => Kind::TlsCertificateDelegation,
        ("voyager.appscode.com/v1beta1", "Ingress") => Kind::VoyagerIngress,
        ("networking.k8s.io/v1", "Ingress") => Kind::Ingress,
        ("networking.k8s.io/v1", "IngressClass") => Kind::IngressClass,
        ("v1", "ConfigMap") => Kind::ConfigMap,
        ("gateway.networking.k8s.io/v1", "GatewayClass") => Kind::GatewayClass,
        ("gateway.networking.k8s.io/v1", "Gateway") => Kind::Gateway,
        ("gateway.networking.k8s.io/v1", "HTTPRoute") => Kind::HttpRoute,
        ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant") => Kind::ReferenceGrant,
        ("gateway.networking.k8s.io/v1", "BackendTLSPolicy") => Kind::BackendTlsPolicy,
        _ => {
            out.skipped.push(Skipped { location: at(None), api_version: h.api_version, kind: h.kind, name: h.name });
            return;
        }
    };
    let result: Result<Object, (Option<usize>, String)> = match kind {
        Kind::Service => typed::<core::Service>(&source)
            .and_then(|o| convert::service(&o).map_err(|e| (None, e.to_string())))
            .map(Object::Service),
        Kind::Secret => typed::<core::Secret>(&source)
            .and_then(|o| convert::secret(&o).map_err(|e| (None, e.to_string())))
            .map(Object::Secret),
        Kind::EndpointSlice => typed::<discovery::EndpointSlice>(&source)
            .and_then(|o| convert::endpoint_slice(&o).map_err(|e| (None, e.to_string())))
            .map(Object::EndpointSlice),
        Kind::HttpProxy => typed::<crds::HTTPProxy>(&source)
            .and_then(|o| convert::http_proxy(&o).map_err(|e| (None, e.to_string())))
            .map(Object::HttpProxy),
        Kind::TlsCertificateDelegation => typed::<crds::TLSCertificateDelegation>(&source)
            .and_then(|o| convert::delegation(&o).map_err(|e| (None, e.to_string())))
            .map(Object::TlsCertificateDelegation),
        Kind::VoyagerIngress => typed::<crds::VoyagerIngress>(&source)
            .and_then(|o| convert::voyager_ingress(&o).map_err(|e| (None, e.to_string())))
            .map(Object::VoyagerIngress),
        Kind::Ingress => typed::<networking::Ingress>(&source)
            .and_then(|o| convert::ingress(&o).map_err(|e| (None, e.to_string())))
            .map(Object::Ingress),
        Kind::IngressClass => typed::<networking::IngressClass>(&source)
            .and_then(|o| convert::ingress_class(&o).map_err(|e| (None, e.to_string())))
            .map(Object::IngressClass),
        Kind::ConfigMap => typed::<core::ConfigMap>(&source)
            .and_then(|o| convert::config_map(&o).map_err(|e| (None, e.to_string())))
            .map(Object::Secret),
        Kind::GatewayClass => typed::<gateway_api::gatewayclasses::GatewayClass>(&source)
            .and_then(|o| convert_gateway::gateway_class(&o).map_err(|e| (None, e.to_string())))
            .map(Object::GatewayClass),
        Kind::Gateway => typed::<gateway_api::gateways::Gateway>(&source)
            .and_then(|o| convert_gateway::gateway(&o).map_err(|e| (None, e.to_string())))
            .map(Object::Gateway),
        Kind::HttpRoute => typed::<gateway_api::httproutes::HttpRoute>(&source)
            .and_then(|o| convert_gateway::http_route(&o).map_err(|e| (None, e.to_string())))
            .map(Object::HttpRoute),
        Kind::ReferenceGrant => typed::<gateway_api::referencegrants::ReferenceGrant>(&source)
            .and_then(|o| convert_gateway::reference_grant(&o).map_err(|e| (None, e.to_string())))
            .map(Object::ReferenceGrant),
        Kind::BackendTlsPolicy => typed::<gateway_api::backendtlspolicies::BackendTlsPolicy>(&source)
            .and_then(|o| convert_gateway::backend_tls_policy(&o).map_err(|e| (None, e.to_string())))
            .map(Object::BackendTlsPolicy),
    };
    match result {
        Ok(object) => out.objects.push((object, at(None))),
        Err((line, message)) => {
            let what = if h.name.is_empty() { h.kind } else { format!("{} {:?}", h.kind, h.name) };
            let message = match &source {
                Source::Text(_) => shift_lines(&message, at(Some(1)).line - 1),
                Source::Value(_) => message,
            };
            out.problems.push(DecodeProblem { location: at(line), message: format!("{prefix}{what}: {message}") });
        }
    }
}

/// Why a path given on the command line cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    ReadFailed { path: PathBuf, source: std::io::Error },
}

/// The manifest files under `paths`: files as given, directories walked recursively for
/// `*.yaml`, `*.yml` and `*.json`, hidden entries skipped, in sorted order.
pub fn manifest_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|source| LoadError::ReadFailed { path: path.clone(), source })?;
        if meta.is_dir() {
            walk(path, &mut files)?;
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let read_failed = |source| LoadError::ReadFailed { path: dir.to_owned(), source };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_failed)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(read_failed)?;
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            walk(&path, files)?;
        } else if [".yaml", ".yml", ".json"].iter().any(|ext| name.ends_with(ext)) {
            files.push(path);
        }
    }
    Ok(())
}

/// The largest manifest file read (64 MiB): far above any real one (a Kubernetes object is
/// at most ~1.5 MiB, and 10,000 HTTPProxies in one file are ~5 MiB), and low enough that a
/// stray dump or a file growing without end cannot exhaust the watcher's memory.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024 * 1024;

/// A manifest file's bytes, unless it is over `MAX_MANIFEST_BYTES` (checked before reading,
/// and while reading: a file that grows meanwhile is cut off too) or cannot be read.
pub fn read_manifest(file: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let too_large = |size: u64| {
        format!(
            "the file is {:.1} MiB, over the {} MiB limit for one manifest file; split it",
            size as f64 / (1024.0 * 1024.0),
            MAX_MANIFEST_BYTES / (1024 * 1024)
        )
    };
    let opened = std::fs::File::open(file).map_err(|e| format!("cannot read: {e}"))?;
    let size = opened.metadata().map_err(|e| format!("cannot read: {e}"))?.len();
    if size > MAX_MANIFEST_BYTES {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    opened.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Read and decode every manifest under `paths`. A path that does not exist is an error;
/// a file that cannot be read or decoded is a problem in the result.
pub fn load(paths: &[PathBuf]) -> Result<Decoded, LoadError> {
    let mut out = Decoded::default();
    for file in manifest_files(paths)? {
        let name = file.display().to_string();
        match read_manifest(&file) {
            Err(message) => out.problems.push(DecodeProblem { location: Location { file: name, line: 0 }, message }),
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => decode_str(&name, &text, &mut out),
                Err(_) => out.problems.push(DecodeProblem {
                    location: Location { file: name, line: 1 },
                    message: "not UTF-8 text".to_owned(),
                }),
            },
        }
    }
    Ok(out)
}

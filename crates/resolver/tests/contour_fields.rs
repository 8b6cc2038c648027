//! SPEC section 9: no HTTPProxy field is silently ignored. Walks every field of Contour's
//! published HTTPProxy API (the npm package `@kubernetes-models/contour`, generated from
//! Contour's CRDs; `scripts/contour-models.sh` brings it), sets each one on an otherwise
//! valid root HTTPProxy, and checks that Portico either implements it or names it (or the
//! field that contains it) in a warning or error. A field Contour adds is caught when the
//! package is bumped.

mod support;

use portico_resolver::{resolve, Config};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The fields Portico implements (SPEC sections 1, 2 and 9), with `[0]` for array items.
const IMPLEMENTED: &[&str] = &[
    "spec.virtualhost.fqdn",
    "spec.virtualhost.tls.secretName",
    "spec.virtualhost.tls.minimumProtocolVersion",
    "spec.routes[0].permitInsecure",
    "spec.includes[0].name",
    "spec.includes[0].namespace",
    "spec.includes[0].conditions[0].prefix",
    "spec.routes[0].conditions[0].prefix",
    "spec.routes[0].services[0].name",
    "spec.routes[0].services[0].port",
    "spec.routes[0].services[0].weight",
    "spec.routes[0].services[0].protocol",
    "spec.routes[0].services[0].validation.caSecret",
    "spec.routes[0].services[0].validation.subjectName",
    "spec.routes[0].services[0].validation.subjectNames",
    "spec.routes[0].requestHeadersPolicy.set[0].name",
    "spec.routes[0].requestHeadersPolicy.set[0].value",
    "spec.routes[0].timeoutPolicy.response",
    "spec.routes[0].timeoutPolicy.idle",
];

/// The package's directory: brought by the script if it is not there yet, so that a plain
/// `cargo test` works on a fresh machine too.
fn models() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/contour-models.sh");
    let out = std::process::Command::new("bash").arg(&script).output().expect("run scripts/contour-models.sh");
    assert!(out.status.success(), "scripts/contour-models.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("projectcontour.io/v1")
}

/// A TypeScript type of the generated declarations, as far as a field's value needs it.
#[derive(Clone, Debug)]
enum Type {
    Scalar(Value),
    Array(Box<Type>),
    Object(String),
    Map,
}

/// The first `export interface I... { ... }` of a declaration file: its fields and types.
fn interface(dir: &Path, file: &str) -> Vec<(String, Type)> {
    let text = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let imports: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("import { ")?;
            let (name, from) = rest.split_once(" } from \"")?;
            let from = from.trim_end_matches("\";");
            Some((name.to_owned(), from.to_owned()))
        })
        .collect();
    let body = text.split("export interface ").nth(1).unwrap_or_else(|| panic!("{file}: no interface"));
    let body = &body[body.find('{').unwrap() + 1..];
    let mut fields = Vec::new();
    let mut depth = 0usize;
    for line in body.lines() {
        let t = line.trim();
        if depth == 0 && t.starts_with('}') {
            break;
        }
        if depth == 0 && t.starts_with('"') {
            let (name, rest) = t[1..].split_once('"').unwrap();
            let ty = rest.trim_start_matches('?').trim_start_matches(':').trim().trim_end_matches(';');
            fields.push((name.to_owned(), parse_type(dir, ty, &imports)));
        }
        depth = (depth + t.matches('{').count()).saturating_sub(t.matches('}').count());
    }
    assert!(!fields.is_empty(), "{file}: no fields read; has the package's format changed?");
    fields
}

fn parse_type(dir: &Path, ty: &str, imports: &BTreeMap<String, String>) -> Type {
    if let Some(inner) = ty.strip_prefix("Array<").and_then(|t| t.strip_suffix('>')) {
        return Type::Array(Box::new(parse_type(dir, inner, imports)));
    }
    if ty.starts_with('{') {
        return Type::Map;
    }
    match ty {
        "string" => return Type::Scalar(json!("x")),
        "number" => return Type::Scalar(json!(1)),
        "boolean" => return Type::Scalar(json!(true)),
        _ => {}
    }
    let first = ty.split('|').next().unwrap().trim();
    if first.starts_with('"') {
        return Type::Scalar(json!(first.trim_matches('"')));
    }
    if let Ok(n) = first.parse::<i64>() {
        return Type::Scalar(json!(n));
    }
    match imports.get(ty) {
        Some(from) if from.starts_with("./") => {
            let file = from.trim_start_matches("./").replace(".js", ".d.ts");
            let text = std::fs::read_to_string(dir.join(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            if text.contains("export interface ") {
                return Type::Object(file);
            }
            // A type alias (`export type IRedirectResponseCode = 301 | 302;`).
            let alias = text.lines().find_map(|l| l.strip_prefix("export type I")?.split_once(" = ")).map(|(_, t)| t);
            parse_type(dir, alias.unwrap_or("string").trim_end_matches(';'), &BTreeMap::new())
        }
        // IntOrString and other apimachinery types: a number serves.
        _ => Type::Scalar(json!(1)),
    }
}

/// Every field path under `file` (`prefix.name`, `[0]` for array items), with the type of
/// its value; recursion stops at depth 8.
fn paths(dir: &Path, file: &str, prefix: &str, depth: usize, out: &mut Vec<(String, Type)>) {
    if depth > 8 {
        return;
    }
    for (name, ty) in interface(dir, file) {
        let path = format!("{prefix}.{name}");
        out.push((path.clone(), ty.clone()));
        let mut item = (path, ty);
        while let Type::Array(inner) = item.1 {
            item = (format!("{}[0]", item.0), *inner);
        }
        if let (p, Type::Object(f)) = item {
            paths(dir, &f, &p, depth + 1, out);
        }
    }
}

/// The smallest value of a type: an object with nothing in it, an array of one.
fn sample(ty: &Type) -> Value {
    match ty {
        Type::Scalar(v) => v.clone(),
        Type::Array(inner) => json!([sample(inner)]),
        Type::Object(_) | Type::Map => json!({}),
    }
}

/// Put `value` at `path` (`spec.routes[0].services[0].mirror`) into `doc`, creating objects
/// and first array items on the way.
fn set(doc: &mut Value, path: &str, value: Value) {
    let mut at = doc;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let (name, indexed) = match part.find('[') {
            Some(k) => (&part[..k], part[k..].matches("[0]").count()),
            None => (*part, 0),
        };
        let last = i + 1 == parts.len() && indexed == 0;
        let obj = at.as_object_mut().expect("an object on the way");
        if last {
            obj.insert(name.to_owned(), value);
            return;
        }
        at = obj.entry(name.to_owned()).or_insert_with(|| if indexed > 0 { json!([]) } else { json!({}) });
        for n in 0..indexed {
            let arr = at.as_array_mut().expect("an array on the way");
            if arr.is_empty() {
                arr.push(if n + 1 < indexed { json!([]) } else { json!({}) });
            }
            at = &mut arr[0];
            if i + 1 == parts.len() && n + 1 == indexed {
                *at = value;
                return;
            }
        }
    }
}

#[test]
fn every_httpproxy_field_of_contours_api_is_implemented_or_named_in_the_status() {
    let dir = models();
    let mut all = Vec::new();
    paths(&dir, "HTTPProxySpec.d.ts", "spec", 0, &mut all);
    assert!(all.len() > 150, "only {} fields read from Contour's API; the walk is broken", all.len());
    for known in IMPLEMENTED {
        assert!(all.iter().any(|(p, _)| p == known), "{known} is not in Contour's API; fix IMPLEMENTED");
    }

    let mut silent = Vec::new();
    let mut checked = 0;
    for (path, ty) in &all {
        if IMPLEMENTED
            .iter()
            .any(|k| k == path || k.starts_with(&format!("{path}.")) || k.starts_with(&format!("{path}[")))
        {
            continue; // implemented, or a container of something implemented
        }
        // A valid root with one include and one route, then the field.
        let mut doc = json!({
            "apiVersion": "projectcontour.io/v1",
            "kind": "HTTPProxy",
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {
                "virtualhost": {"fqdn": "www.example.com"},
                "includes": [{"name": "child"}],
                "routes": [{"services": [{"name": "svc", "port": 80}], "requestHeadersPolicy": {"set": [{"name": "X", "value": "y"}]}}],
            }
        });
        set(&mut doc, path, sample(ty));
        let yaml = serde_json::to_string(&doc).unwrap(); // JSON is YAML
        let mut snap = support::snapshot(&yaml);
        snap.apply(portico_model::Object::HttpProxy(portico_model::HttpProxy {
            meta: portico_model::Meta { namespace: "shop".parse().unwrap(), name: "child".parse().unwrap() },
            fqdn: None,
            tls: None,
            includes: vec![],
            routes: vec![],
            ignored: vec![],
        }))
        .unwrap();
        let resolved = resolve(&snap, &Config::default());
        let status = resolved.statuses.iter().find(|s| s.object.name.as_str() == "p").unwrap();
        let named = status.problems.iter().any(|p| {
            p.message.contains("is not supported by Portico") && {
                let named = p.message.split(' ').next().unwrap();
                path == named || path.starts_with(&format!("{named}.")) || path.starts_with(&format!("{named}["))
            }
        });
        checked += 1;
        if !named {
            silent.push(path.clone());
        }
    }
    println!("{checked} unimplemented HTTPProxy fields checked");
    assert!(silent.is_empty(), "fields Portico ignores without a word: {silent:#?}");
}

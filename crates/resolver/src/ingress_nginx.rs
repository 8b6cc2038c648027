//! ingress-nginx's backend TLS annotations (SPEC section 7), parsed from an allow-list into
//! typed options. ingress-nginx pasted annotation values into nginx.conf, which is how its
//! worst holes came about; here every value must match its grammar, an error names the
//! annotation, and only typed values go on. Other `nginx.ingress.kubernetes.io/`
//! annotations are never executed: those that restrict who may reach a route are errors
//! (serving the route without the restriction would widen access, SPEC section 9), the
//! rest are listed in one warning.
//!
//! What is kept from ingress-nginx: the annotation names and values, `proxy-ssl-verify`
//! off by default, a verify depth of 1 by default. What is fixed: a `proxy-ssl-secret`
//! holding `ca.crt` alone is enough (ingress-nginx #4503, #6728: it wanted a client
//! certificate too before it verified anything), and a secret in another namespace needs a
//! TLSCertificateDelegation there (checked by the resolver, like Contour's `caSecret`).
//!
//! The Ingress v1 dialect (`ingress`) reads its options from here.

use portico_model::names::quote;
use portico_model::{DnsName, SecretRef, TlsVersion};
use std::collections::BTreeMap;

/// The annotations' prefix.
pub const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// `backend-protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendProtocol {
    /// `HTTP` (the default) and `AUTO_HTTP`.
    #[default]
    Http,
    /// `HTTPS`: TLS.
    Https,
    /// `GRPCS`: TLS with ALPN h2.
    Grpcs,
    /// `GRPC`: HTTP/2 in clear text (h2c).
    Grpc,
}

impl BackendProtocol {
    pub fn is_tls(self) -> bool {
        matches!(self, BackendProtocol::Https | BackendProtocol::Grpcs)
    }
}

/// The typed options of one Ingress's annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NginxBackendTls {
    pub protocol: BackendProtocol,
    /// `proxy-ssl-secret`: `ca.crt` to verify with, and optionally `tls.crt` + `tls.key`, a
    /// client certificate for these backends.
    pub secret: Option<SecretRef>,
    /// `proxy-ssl-verify` (default off, as ingress-nginx).
    pub verify: bool,
    /// `proxy-ssl-name`: the name verified, and the SNI when SNI is on.
    pub name: Option<DnsName>,
    /// `proxy-ssl-server-name` (default off): send SNI.
    pub server_name: bool,
    /// `proxy-ssl-verify-depth`, 1 to 10 (default 1, as ingress-nginx).
    pub verify_depth: u8,
    /// `proxy-ssl-protocols`: the lowest and highest version allowed.
    pub versions: Option<(TlsVersion, TlsVersion)>,
    /// `ssl-redirect` (default true): plain HTTP to a host with a certificate answers
    /// 301 to HTTPS (SPEC section 8); `"false"` serves it in the clear too.
    pub ssl_redirect: bool,
}

impl Default for NginxBackendTls {
    fn default() -> Self {
        NginxBackendTls {
            protocol: BackendProtocol::Http,
            secret: None,
            verify: false,
            name: None,
            server_name: false,
            verify_depth: 1,
            versions: None,
            ssl_redirect: true,
        }
    }
}

/// The options, with the problems found: an error makes the Ingress's routes answer 503;
/// a warning is reported and changes nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub options: NginxBackendTls,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// The annotations this module reads.
pub const SUPPORTED: [&str; 8] = [
    "ssl-redirect",
    "backend-protocol",
    "proxy-ssl-secret",
    "proxy-ssl-verify",
    "proxy-ssl-name",
    "proxy-ssl-server-name",
    "proxy-ssl-verify-depth",
    "proxy-ssl-protocols",
];

/// ingress-nginx annotations that restrict who may reach a route. Portico implements none,
/// and serving the route without them would widen access: each is an error.
pub const RESTRICTING: [&str; 16] = [
    "whitelist-source-range",
    "allowlist-source-range",
    "denylist-source-range",
    "auth-url",
    "auth-type",
    "auth-secret",
    "auth-secret-type",
    "auth-realm",
    "auth-signin",
    "auth-method",
    "auth-tls-secret",
    "auth-tls-verify-client",
    "auth-tls-verify-depth",
    "auth-tls-match-cn",
    "enable-global-auth",
    "satisfy",
];

/// Longer values than this are refused before any grammar is tried (an annotation may hold
/// 256 KiB; none of these needs more than a DNS name's 253 characters).
const MAX_VALUE: usize = 512;

/// Parse the annotations of an Ingress in `namespace`.
pub fn parse(annotations: &BTreeMap<String, String>, namespace: &str) -> Parsed {
    let mut out = Parsed::default();
    let mut ignored: Vec<&str> = Vec::new();
    for (key, value) in annotations {
        let Some(name) = key.strip_prefix(PREFIX) else { continue };
        let error = |why: String| format!("annotation {key}: {why}");
        if RESTRICTING.contains(&name) {
            out.errors.push(error(
                "restricts who may reach the route, which Portico does not implement; the route is not served (503) rather than served without the restriction".to_owned(),
            ));
            continue;
        }
        if !SUPPORTED.contains(&name) {
            ignored.push(key.as_str());
            continue;
        }
        if value.len() > MAX_VALUE {
            out.errors.push(error(format!("the value is {} bytes long; none is valid above {MAX_VALUE}", value.len())));
            continue;
        }
        if let Err(why) = apply(&mut out.options, name, value, namespace) {
            out.errors.push(error(why));
        }
    }
    let o = &out.options;
    let asks_tls = o.protocol.is_tls();
    if o.verify && o.secret.is_none() {
        out.errors.push(format!(
            "annotation {PREFIX}proxy-ssl-verify is \"on\" but no {PREFIX}proxy-ssl-secret gives a CA to verify with"
        ));
    }
    if o.verify && !asks_tls {
        out.errors.push(format!(
            "annotation {PREFIX}proxy-ssl-verify is \"on\" but {PREFIX}backend-protocol is not HTTPS or GRPCS: the backend would be reached without TLS"
        ));
    }
    if !o.verify && (asks_tls || o.secret.is_some()) {
        out.warnings.push("backend TLS is not verified: set proxy-ssl-verify: \"on\"".to_owned());
    }
    // Neither proxy limits the depth yet (Envoy could, HAProxy cannot): said whenever the
    // annotation is given, since depth 1 is the strict case.
    if annotations.contains_key(&format!("{PREFIX}proxy-ssl-verify-depth")) && out.errors.is_empty() {
        out.warnings.push(format!(
            "{PREFIX}proxy-ssl-verify-depth {} is not enforced: Portico does not limit the chain depth yet (HAProxy cannot)",
            o.verify_depth
        ));
    }
    if !ignored.is_empty() {
        out.warnings
            .push(format!("these annotations are not supported by Portico and are ignored: {}", ignored.join(", ")));
    }
    out
}

fn on_off(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{} is not \"on\" or \"off\"", quote(value))),
    }
}

fn apply(o: &mut NginxBackendTls, name: &str, value: &str, namespace: &str) -> Result<(), String> {
    match name {
        "backend-protocol" => {
            o.protocol = match value.to_ascii_uppercase().as_str() {
                "HTTP" | "AUTO_HTTP" => BackendProtocol::Http,
                "HTTPS" => BackendProtocol::Https,
                "GRPCS" => BackendProtocol::Grpcs,
                "GRPC" => BackendProtocol::Grpc,
                _ => return Err(format!("unsupported backend-protocol {}", quote(value))),
            }
        }
        "proxy-ssl-secret" => {
            // ingress-nginx requires namespace/name; a bare name is taken in the Ingress's
            // namespace, as it is everywhere else in Portico.
            let secret = SecretRef::parse(value, namespace)
                .map_err(|e| format!("{} is not namespace/name: {}", quote(value), e.0))?;
            o.secret = Some(secret);
        }
        "proxy-ssl-verify" => o.verify = on_off(value)?,
        "ssl-redirect" => {
            o.ssl_redirect = match value.to_ascii_lowercase().as_str() {
                "true" => true,
                "false" => false,
                _ => return Err(format!("{} is not \"true\" or \"false\"", quote(value))),
            }
        }
        "proxy-ssl-server-name" => o.server_name = on_off(value)?,
        "proxy-ssl-name" => o.name = Some(DnsName::parse(value).map_err(|e| e.0)?),
        "proxy-ssl-verify-depth" => {
            o.verify_depth = value
                .parse::<u8>()
                .ok()
                .filter(|d| (1..=10).contains(d))
                .ok_or_else(|| format!("{} is not a depth from 1 to 10", quote(value)))?;
        }
        "proxy-ssl-protocols" => {
            let mut versions: Vec<TlsVersion> = Vec::new();
            for item in value.split([' ', '\t']).filter(|i| !i.is_empty()) {
                let version = match item {
                    "TLSv1.2" => TlsVersion::Tls12,
                    "TLSv1.3" => TlsVersion::Tls13,
                    "SSLv2" | "SSLv3" | "TLSv1" | "TLSv1.1" => {
                        return Err(format!("{} is refused: Portico connects with TLS 1.2 or 1.3 only", quote(item)))
                    }
                    _ => return Err(format!("{} is not TLSv1.2 or TLSv1.3", quote(item))),
                };
                if !versions.contains(&version) {
                    versions.push(version);
                }
            }
            let (Some(min), Some(max)) = (versions.iter().min(), versions.iter().max()) else {
                return Err("lists no protocol".to_owned());
            };
            o.versions = Some((*min, *max));
        }
        _ => unreachable!("only SUPPORTED names reach here"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(pairs: &[(&str, &str)]) -> Parsed {
        let annotations = pairs.iter().map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string())).collect();
        parse(&annotations, "shop")
    }

    fn secret(ns: &str, name: &str) -> Option<SecretRef> {
        Some(SecretRef::new(ns, name).unwrap())
    }

    /// A case: its sentence, the annotations (without the prefix), the options they give.
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, NginxBackendTls);

    #[test]
    fn valid_annotations_become_typed_options() {
        let cases: Vec<Case> = vec![
            ("no annotation is plain HTTP, unverified, depth 1", vec![], NginxBackendTls::default()),
            (
                "HTTPS verified against a CA secret alone, with a name and SNI",
                vec![
                    ("backend-protocol", "HTTPS"),
                    ("proxy-ssl-secret", "shop/backend-ca"),
                    ("proxy-ssl-verify", "on"),
                    ("proxy-ssl-name", "api.shop.svc"),
                    ("proxy-ssl-server-name", "on"),
                ],
                NginxBackendTls {
                    protocol: BackendProtocol::Https,
                    secret: secret("shop", "backend-ca"),
                    verify: true,
                    name: Some(DnsName::parse("api.shop.svc").unwrap()),
                    server_name: true,
                    ..Default::default()
                },
            ),
            (
                "the protocol is case-insensitive, and AUTO_HTTP is HTTP",
                vec![("backend-protocol", "auto_http")],
                NginxBackendTls::default(),
            ),
            (
                "GRPCS is TLS, a bare secret name is in the Ingress's namespace",
                vec![("backend-protocol", "grpcs"), ("proxy-ssl-secret", "ca"), ("proxy-ssl-verify", "ON")],
                NginxBackendTls {
                    protocol: BackendProtocol::Grpcs,
                    secret: secret("shop", "ca"),
                    verify: true,
                    ..Default::default()
                },
            ),
            (
                "GRPC is h2c",
                vec![("backend-protocol", "GRPC")],
                NginxBackendTls { protocol: BackendProtocol::Grpc, ..Default::default() },
            ),
            (
                "protocols give the lowest and highest version, in any order",
                vec![("proxy-ssl-protocols", "TLSv1.3  TLSv1.2"), ("proxy-ssl-verify-depth", "1")],
                NginxBackendTls { versions: Some((TlsVersion::Tls12, TlsVersion::Tls13)), ..Default::default() },
            ),
        ];
        for (case, pairs, want) in cases {
            let got = parsed(&pairs);
            assert!(got.errors.is_empty(), "{case}: {:?}", got.errors);
            assert_eq!(got.options, want, "{case}");
        }
    }

    #[test]
    fn each_invalid_value_is_an_error_naming_its_annotation() {
        let cases: [(&str, (&str, &str), &str); 12] = [
            ("an unsupported protocol", ("backend-protocol", "FCGI"), "unsupported backend-protocol \"FCGI\""),
            ("a verify that is neither on nor off", ("proxy-ssl-verify", "yes please"), "is not \"on\" or \"off\""),
            ("a secret with two slashes", ("proxy-ssl-secret", "a/b/c"), "is not namespace/name"),
            (
                "a secret name that is no Kubernetes name",
                ("proxy-ssl-secret", "shop/Bad_Name"),
                "is not namespace/name",
            ),
            ("a name that is no DNS name", ("proxy-ssl-name", "api shop"), "proxy-ssl-name"),
            ("a depth of 0", ("proxy-ssl-verify-depth", "0"), "not a depth from 1 to 10"),
            ("a depth of 11", ("proxy-ssl-verify-depth", "11"), "not a depth from 1 to 10"),
            ("a depth that is no number", ("proxy-ssl-verify-depth", "two"), "not a depth from 1 to 10"),
            ("TLS 1.1", ("proxy-ssl-protocols", "TLSv1.1 TLSv1.2"), "TLS 1.2 or 1.3 only"),
            ("an unknown protocol", ("proxy-ssl-protocols", "TLSv1.2 QUIC"), "is not TLSv1.2 or TLSv1.3"),
            ("no protocol at all", ("proxy-ssl-protocols", "  "), "lists no protocol"),
            ("an SNI switch that is neither on nor off", ("proxy-ssl-server-name", "2"), "is not \"on\" or \"off\""),
        ];
        for (case, (name, value), why) in cases {
            let got = parsed(&[(name, value)]);
            assert_eq!(got.errors.len(), 1, "{case}: {:?}", got.errors);
            let error = &got.errors[0];
            assert!(error.starts_with(&format!("annotation {PREFIX}{name}: ")), "{case}: {error}");
            assert!(error.contains(why), "{case}: {error}");
        }
    }

    #[test]
    fn hostile_values_are_refused_and_nothing_of_them_is_kept() {
        let hostile = [
            "HTTPS;\n proxy_pass http://evil;",
            "on\"; deny all; \"",
            "shop/ca\nserver-snippet: x",
            "api.shop.svc\r\nX-Injected: 1",
            "api.shop.svc verify none",
            "${jndi:ldap://x}",
            "\u{0}",
        ];
        let long = "a".repeat(100_000);
        for name in SUPPORTED {
            for value in hostile.iter().copied().chain([long.as_str()]) {
                let got = parsed(&[(name, value)]);
                assert_eq!(got.errors.len(), 1, "{name}={value:?}: {:?}", got.errors);
                assert_eq!(got.options, NginxBackendTls::default(), "{name}={value:?}: nothing of it is kept");
                for problem in got.errors.iter().chain(&got.warnings) {
                    assert!(!problem.contains('\n') && !problem.contains('\r'), "{name}: a line break in {problem:?}");
                }
            }
        }
    }

    #[test]
    fn tls_without_verification_warns_and_verification_without_a_ca_or_tls_is_an_error() {
        let warns = "backend TLS is not verified: set proxy-ssl-verify: \"on\"";
        let got = parsed(&[("backend-protocol", "HTTPS")]);
        assert_eq!((got.errors.len(), got.warnings.as_slice()), (0, [warns.to_owned()].as_slice()));
        let got =
            parsed(&[("backend-protocol", "HTTPS"), ("proxy-ssl-secret", "shop/ca"), ("proxy-ssl-verify", "off")]);
        assert_eq!(got.warnings, [warns], "a CA present with verify off warns once");
        let got = parsed(&[("backend-protocol", "HTTPS"), ("proxy-ssl-verify", "on")]);
        assert!(
            got.errors[0].contains("no nginx.ingress.kubernetes.io/proxy-ssl-secret gives a CA"),
            "{:?}",
            got.errors
        );
        let got = parsed(&[("proxy-ssl-secret", "shop/ca"), ("proxy-ssl-verify", "on")]);
        assert!(got.errors[0].contains("would be reached without TLS"), "{:?}", got.errors);
    }

    #[test]
    fn other_annotations_are_listed_in_one_warning_and_access_rules_are_errors() {
        let got = parsed(&[
            ("rewrite-target", "/$1"),
            ("configuration-snippet", "more_set_headers \"X: y\";"),
            ("whitelist-source-range", "10.0.0.0/8"),
            ("auth-url", "http://auth.example/check"),
        ]);
        assert_eq!(
            got.warnings,
            ["these annotations are not supported by Portico and are ignored: nginx.ingress.kubernetes.io/configuration-snippet, nginx.ingress.kubernetes.io/rewrite-target"]
        );
        assert_eq!(got.errors.len(), 2, "{:?}", got.errors);
        assert!(got.errors.iter().all(|e| e.contains("restricts who may reach the route")), "{:?}", got.errors);
        // Other prefixes are not ingress-nginx's, and not this module's business.
        let mut annotations = BTreeMap::new();
        annotations.insert("kubernetes.io/ingress.class".to_owned(), "portico".to_owned());
        assert_eq!(parse(&annotations, "shop"), Parsed::default());
    }

    #[test]
    fn a_depth_above_one_is_kept_and_said_to_be_envoys_only() {
        let got = parsed(&[("proxy-ssl-verify-depth", "3")]);
        assert_eq!(got.options.verify_depth, 3);
        assert!(
            got.warnings.iter().any(|w| w.contains("is not enforced: Portico does not limit the chain depth")),
            "{:?}",
            got.warnings
        );
    }
}

//! Validated value types: the grammar gate.
//!
//! Every user-supplied string that can reach a proxy's configuration passes through one
//! of these constructors first. The types can only be built (or deserialized) from a value
//! that matches their grammar, so a renderer that receives a `DnsName` may write it
//! verbatim. The grammars are deliberately narrower than what the proxies accept: no
//! whitespace, quotes, `#`, `$`, backslashes, control or non-ASCII characters anywhere.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a value was refused. The message names the grammar it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GrammarError(pub String);

fn refuse(what: &str, value: &str, why: &str) -> GrammarError {
    GrammarError(format!("{what} {} is not valid: {why}", quote(value)))
}

/// Quote a user value for an error message, escaping control characters and cutting
/// very long values so a hostile input cannot flood a status or a log line.
pub fn quote(value: &str) -> String {
    const MAX: usize = 80;
    let mut out = String::from("\"");
    for (i, c) in value.chars().enumerate() {
        if i == MAX {
            out.push_str("...");
            break;
        }
        out.extend(c.escape_debug());
    }
    out.push('"');
    out
}

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident, $check:path) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(std::sync::Arc<str>);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = GrammarError;
            fn try_from(value: String) -> Result<Self, GrammarError> {
                $check(&value).map(|()| $name(value.into()))
            }
        }

        impl std::str::FromStr for $name {
            type Err = GrammarError;
            fn from_str(value: &str) -> Result<Self, GrammarError> {
                Self::try_from(value.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0.to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
    };
}

fn check_dns_name(value: &str) -> Result<(), GrammarError> {
    let what = "DNS name";
    if value.is_empty() {
        return Err(refuse(what, value, "it is empty"));
    }
    if value.len() > 253 {
        return Err(refuse(what, value, "it is longer than 253 characters"));
    }
    for label in value.split('.') {
        if label.is_empty() {
            return Err(refuse(what, value, "it has an empty label"));
        }
        if label.len() > 63 {
            return Err(refuse(what, value, "a label is longer than 63 characters"));
        }
        if !label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err(refuse(what, value, "only lowercase letters, digits, '-' and '.' are allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(refuse(what, value, "a label starts or ends with '-'"));
        }
    }
    Ok(())
}

string_newtype!(
    /// An RFC 1123 host name in lowercase: labels of `[a-z0-9-]`, 1 to 63 characters,
    /// not starting or ending with `-`, at most 253 characters in all. No wildcard.
    /// Use [`DnsName::parse`] to accept mixed case input (DNS is case-insensitive).
    DnsName,
    check_dns_name
);

impl DnsName {
    /// Parse a DNS name, folding ASCII upper case to lower case first.
    pub fn parse(value: &str) -> Result<Self, GrammarError> {
        Self::try_from(value.to_ascii_lowercase())
    }
}

fn check_path_prefix(value: &str) -> Result<(), GrammarError> {
    let what = "path prefix";
    if !value.starts_with('/') {
        return Err(refuse(what, value, "it must start with '/'"));
    }
    if value.len() > 1024 {
        return Err(refuse(what, value, "it is longer than 1024 characters"));
    }
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let ok = b.is_ascii_alphanumeric() || b"-._~/!,;=:@+".contains(&b);
        if b == b'%' {
            let hex = |j: usize| bytes.get(j).is_some_and(|c| c.is_ascii_hexdigit());
            if !(hex(i + 1) && hex(i + 2)) {
                return Err(refuse(what, value, "'%' must be followed by two hex digits"));
            }
            i += 3;
            continue;
        }
        if !ok {
            return Err(refuse(what, value, "only letters, digits, '%XX' escapes and -._~/!,;=:@+ are allowed"));
        }
        i += 1;
    }
    Ok(())
}

string_newtype!(
    /// A URL path prefix: starts with `/`, at most 1024 characters of RFC 3986 path
    /// characters (letters, digits, `-._~/!,;=:@+` and `%XX` escapes).
    PathPrefix,
    check_path_prefix
);

impl PathPrefix {
    pub fn root() -> Self {
        PathPrefix("/".into())
    }
}

fn check_cluster_name(value: &str) -> Result<(), GrammarError> {
    let what = "cluster name";
    if value.is_empty() || value.len() > 255 {
        return Err(refuse(what, value, "it must be 1 to 255 characters"));
    }
    if !value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)) {
        return Err(refuse(what, value, "only lowercase letters, digits and ._- are allowed"));
    }
    Ok(())
}

string_newtype!(
    /// A cluster's name as both proxies write it (an HAProxy backend, an Envoy cluster):
    /// `<namespace>_<service>_<port>_<hash>`, only `[a-z0-9._-]`, at most 255 characters.
    ClusterName,
    check_cluster_name
);

impl ClusterName {
    /// The name of a cluster of `service` `port` in `namespace`, told apart by `hash` (hex):
    /// valid by construction (Kubernetes names, a number, hex digits).
    pub fn of(namespace: &K8sName, service: &K8sName, port: u16, hash: &str) -> ClusterName {
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "a lowercase hex digest");
        ClusterName(format!("{namespace}_{service}_{port}_{hash}").into())
    }
}

fn check_abs_path(value: &str) -> Result<(), GrammarError> {
    let what = "file path";
    if !value.starts_with('/') {
        return Err(refuse(what, value, "it must be an absolute path"));
    }
    if value.len() > 4096 {
        return Err(refuse(what, value, "it is longer than 4096 characters"));
    }
    if !value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._/+".contains(&b)) {
        return Err(refuse(what, value, "only letters, digits and -._/+ are allowed"));
    }
    if value.split('/').any(|c| c == "..") {
        return Err(refuse(what, value, "'..' is not allowed"));
    }
    if value.ends_with('/') {
        return Err(refuse(what, value, "it names a directory"));
    }
    Ok(())
}

string_newtype!(
    /// An absolute file path on the proxy host: `/` then letters, digits and `-._/+`,
    /// no `..` component, not ending in `/`.
    AbsPath,
    check_abs_path
);

fn check_k8s_name(value: &str) -> Result<(), GrammarError> {
    let what = "Kubernetes name";
    if value.is_empty() || value.len() > 253 {
        return Err(refuse(what, value, "it must be 1 to 253 characters"));
    }
    let b = value.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !alnum(&b[0]) || !alnum(&b[b.len() - 1]) {
        return Err(refuse(what, value, "it must start and end with a lowercase letter or digit"));
    }
    if !b.iter().all(|c| alnum(c) || *c == b'-' || *c == b'.') {
        return Err(refuse(what, value, "only lowercase letters, digits, '-' and '.' are allowed"));
    }
    Ok(())
}

string_newtype!(
    /// A Kubernetes object name or namespace (RFC 1123 subdomain: `[a-z0-9.-]`, at most 253
    /// characters, starting and ending with a letter or digit).
    K8sName,
    check_k8s_name
);

/// A host a virtual host answers for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum HostMatch {
    /// Any host (a Voyager rule without a host, a default backend, an HTTPProxy without
    /// a virtualhost).
    Any,
    /// `*.<suffix>`: exactly one more label in front of the suffix.
    Wildcard(DnsName),
    Exact(DnsName),
}

impl HostMatch {
    /// `""` and `"*"` mean any host; `*.example.com` is a wildcard; otherwise a DNS name.
    pub fn parse(value: &str) -> Result<Self, GrammarError> {
        match value {
            "" | "*" => Ok(HostMatch::Any),
            _ => match value.strip_prefix("*.") {
                Some(suffix) => DnsName::parse(suffix)
                    .map(HostMatch::Wildcard)
                    .map_err(|_| refuse("host", value, "a wildcard must be '*.' followed by a DNS name")),
                None => DnsName::parse(value).map(HostMatch::Exact),
            },
        }
    }
}

impl fmt::Display for HostMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMatch::Any => f.write_str("*"),
            HostMatch::Wildcard(suffix) => write!(f, "*.{suffix}"),
            HostMatch::Exact(name) => write!(f, "{name}"),
        }
    }
}

/// Which kind of object holds trust material: a Secret, or (Gateway API's
/// `caCertificateRefs`) a ConfigMap. A ConfigMap and a Secret of the same name are two
/// different holders, kept apart in every key and file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Holder {
    Secret,
    ConfigMap,
}

/// A reference to an object holding trust material: a Secret, as written `name` (in a
/// default namespace) or `namespace/name`, or a ConfigMap (`holder`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SecretRef {
    pub namespace: K8sName,
    pub name: K8sName,
    pub holder: Holder,
}

impl SecretRef {
    pub fn new(namespace: &str, name: &str) -> Result<Self, GrammarError> {
        Ok(SecretRef { namespace: namespace.parse()?, name: name.parse()?, holder: Holder::Secret })
    }

    /// A ConfigMap's `ca.crt` (Gateway API).
    pub fn config_map(namespace: &str, name: &str) -> Result<Self, GrammarError> {
        Ok(SecretRef { namespace: namespace.parse()?, name: name.parse()?, holder: Holder::ConfigMap })
    }

    pub fn is_config_map(&self) -> bool {
        self.holder == Holder::ConfigMap
    }

    /// Parse `name` or `namespace/name`; `name` alone is in `default_namespace`.
    pub fn parse(value: &str, default_namespace: &str) -> Result<Self, GrammarError> {
        let parts: Vec<&str> = value.split('/').collect();
        let parsed = match parts.as_slice() {
            [name] => SecretRef::new(default_namespace, name),
            [namespace, name] => SecretRef::new(namespace, name),
            _ => Err(GrammarError(String::new())),
        };
        parsed.map_err(|e| {
            let why = if e.0.is_empty() { "it has more than one '/'".to_owned() } else { e.0 };
            GrammarError(format!(
                "secret reference {} is not of the form <name> or <namespace>/<name>: {why}",
                quote(value)
            ))
        })
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.holder {
            Holder::Secret => write!(f, "{}/{}", self.namespace, self.name),
            Holder::ConfigMap => write!(f, "configmap {}/{}", self.namespace, self.name),
        }
    }
}

fn check_san_uri(value: &str) -> Result<(), GrammarError> {
    let what = "URI";
    if value.is_empty() || value.len() > 2048 {
        return Err(refuse(what, value, "it must be 1 to 2048 characters"));
    }
    let Some((scheme, rest)) = value.split_once(':') else {
        return Err(refuse(what, value, "it has no scheme (such as spiffe://)"));
    };
    let b = scheme.as_bytes();
    if b.is_empty()
        || !b[0].is_ascii_alphabetic()
        || !b.iter().all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(c))
        || rest.is_empty()
    {
        return Err(refuse(what, value, "it is not <scheme>:<rest>"));
    }
    // RFC 3986's unreserved and reserved characters and '%', without quotes ("'" is
    // reserved, but no SAN needs it) and without '#' (a SAN names no fragment).
    if !value.bytes().all(|c| c.is_ascii_alphanumeric() || b"-._~:/?[]@!$&()*+,;=%".contains(&c)) {
        return Err(refuse(what, value, "only RFC 3986 characters without quotes and '#' are allowed"));
    }
    Ok(())
}

string_newtype!(
    /// A URI subject alternative name to match exactly (a SPIFFE ID such as
    /// `spiffe://cluster.local/ns/shop/sa/api`): `<scheme>:<rest>` of RFC 3986 characters,
    /// no quotes, no `#`, no whitespace, at most 2048 characters.
    SanUri,
    check_san_uri
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_follow_rfc1123_and_fold_case() {
        assert_eq!(DnsName::parse("Backend.Example.COM").unwrap().as_str(), "backend.example.com");
        for bad in ["", "a..b", "-a.b", "a-.b", "a b", "a\nb", "a_b", "a.b.", "*.a.b", "\"a\""] {
            assert!(DnsName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(DnsName::parse(&"a".repeat(64)).is_err());
        assert!(DnsName::parse(&["a"; 128].join(".")).is_err(), "255 characters accepted");
        assert!(DnsName::parse(&["a"; 127].join(".")).is_ok(), "253 characters refused");
    }

    #[test]
    fn deserializing_a_newtype_checks_its_grammar() {
        let bad: Result<DnsName, _> = serde_json::from_str("\"evil host\"");
        assert!(bad.is_err());
        let good: DnsName = serde_json::from_str("\"a.b\"").unwrap();
        assert_eq!(good.as_str(), "a.b");
    }

    #[test]
    fn path_prefixes_refuse_config_metacharacters() {
        for good in ["/", "/api/v1", "/a%20b", "/a-b_c.d~e"] {
            assert!(PathPrefix::try_from(good.to_owned()).is_ok(), "{good:?} refused");
        }
        for bad in ["", "api", "/a b", "/a#b", "/a\"b", "/a%2", "/a\\b", "/a$b", "/a\nb", "/é"] {
            assert!(PathPrefix::try_from(bad.to_owned()).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn cluster_names_are_what_both_proxies_can_write() {
        let ns: K8sName = "shop".parse().unwrap();
        let svc: K8sName = "web".parse().unwrap();
        let made = ClusterName::of(&ns, &svc, 8443, "0123456789abcdef");
        assert_eq!(made.as_str(), "shop_web_8443_0123456789abcdef");
        assert_eq!(ClusterName::try_from(made.to_string()).unwrap(), made, "what `of` makes passes the grammar");
        for bad in ["", "a b", "A_b", "a{b}", "a\nb", "a#b", "a/b", "a;b"] {
            assert!(ClusterName::try_from(bad.to_owned()).is_err(), "{bad:?} accepted");
        }
        assert!(ClusterName::try_from("a".repeat(256)).is_err());
        let bad: Result<ClusterName, _> = serde_json::from_str("\"use_backend evil\"");
        assert!(bad.is_err(), "a model from the bus is checked too");
    }

    #[test]
    fn abs_paths_must_be_absolute_and_plain() {
        assert!(AbsPath::try_from("/etc/ssl/ca.pem".to_owned()).is_ok());
        for bad in ["ca.pem", "/etc/../x", "/etc/", "/a b", "/a\"b", "/a#b"] {
            assert!(AbsPath::try_from(bad.to_owned()).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn secret_refs_take_a_name_or_namespace_slash_name() {
        assert_eq!(SecretRef::parse("ca", "team").unwrap().to_string(), "team/ca");
        assert_eq!(SecretRef::parse("infra/ca", "team").unwrap().to_string(), "infra/ca");
        let err = SecretRef::parse("a/b/c", "team").unwrap_err().0;
        assert!(err.contains("more than one '/'"), "{err}");
        assert!(SecretRef::parse("Bad_Name", "team").is_err());
        assert!(SecretRef::parse("/ca", "team").is_err());
    }

    #[test]
    fn host_matches_take_any_exact_or_one_wildcard() {
        assert_eq!(HostMatch::parse("").unwrap(), HostMatch::Any);
        assert_eq!(HostMatch::parse("*.Example.com").unwrap().to_string(), "*.example.com");
        assert!(HostMatch::parse("*.*.example.com").is_err());
        assert!(HostMatch::parse("a*.example.com").is_err());
    }

    #[test]
    fn quoting_escapes_and_cuts_hostile_values() {
        assert_eq!(quote("a\nb\""), "\"a\\nb\\\"\"");
        assert!(quote(&"x".repeat(1000)).len() < 100);
    }
}

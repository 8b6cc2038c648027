//! Voyager's `ingress.appscode.com/backend-tls` annotation, parsed from an allow-list.
//!
//! Voyager pasted this value into haproxy.cfg verbatim, so any HAProxy directive could be
//! injected through a Service annotation. Here every token must be a known keyword and
//! every argument must match its grammar; the result is typed, and only the typed values
//! are ever rendered. Tokens are separated by spaces and tabs only, so a newline or other
//! control character stays inside a token and fails that token's grammar.

use portico_model::names::quote;
use portico_model::{AbsPath, Alpn, DnsName, TlsVersion};

/// The parsed options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendTls {
    /// `verify none` gives `Some(false)`, `verify required` `Some(true)`; absent is `None`
    /// and means required (HAProxy's default).
    pub verify: Option<bool>,
    pub verifyhost: Option<DnsName>,
    pub ca_file: Option<AbsPath>,
    pub sni: Option<DnsName>,
    pub alpn: Vec<Alpn>,
    pub min_version: Option<TlsVersion>,
    pub max_version: Option<TlsVersion>,
}

impl BackendTls {
    pub fn verify_required(&self) -> bool {
        self.verify.unwrap_or(true)
    }
}

const KEYWORDS: [&str; 8] = ["ssl", "verify", "verifyhost", "ca-file", "sni", "alpn", "ssl-min-ver", "ssl-max-ver"];

/// Parse the annotation's value. The error is the message a status shows.
pub fn parse(value: &str) -> Result<BackendTls, String> {
    let mut tokens = value.split([' ', '\t']).filter(|t| !t.is_empty());
    match tokens.next() {
        Some("ssl") => {}
        None => return Err("backend-tls is empty; it must start with \"ssl\"".to_owned()),
        Some(first) => {
            return Err(match keyword_error(first) {
                Some(e) => e,
                None => format!("backend-tls must start with \"ssl\", not {}", quote(first)),
            })
        }
    }
    let mut out = BackendTls::default();
    let mut seen: Vec<&str> = vec!["ssl"];
    while let Some(token) = tokens.next() {
        let Some(keyword) = KEYWORDS.iter().copied().find(|k| *k == token) else {
            return Err(
                keyword_error(token).unwrap_or_else(|| format!("unsupported backend-tls option {}", quote(token)))
            );
        };
        if seen.contains(&keyword) {
            return Err(format!("backend-tls option \"{keyword}\" is given more than once"));
        }
        seen.push(keyword);
        let arg = tokens.next().ok_or_else(|| format!("backend-tls option \"{keyword}\" needs an argument"))?;
        let bad = |why: String| format!("backend-tls option \"{keyword}\": {why}");
        match keyword {
            "verify" => {
                out.verify = Some(match arg {
                    "none" => false,
                    "required" => true,
                    _ => return Err(bad(format!("{} is not none or required", quote(arg)))),
                })
            }
            "verifyhost" => out.verifyhost = Some(DnsName::parse(arg).map_err(|e| bad(e.0))?),
            "ca-file" => out.ca_file = Some(arg.parse::<AbsPath>().map_err(|e| bad(e.0))?),
            "sni" => {
                let name = arg
                    .strip_prefix("str(")
                    .and_then(|a| a.strip_suffix(')'))
                    .ok_or_else(|| bad(format!("{} is not of the form str(<dns-name>)", quote(arg))))?;
                out.sni = Some(DnsName::parse(name).map_err(|e| bad(e.0))?);
            }
            "alpn" => {
                for item in arg.split(',') {
                    let alpn = match item {
                        "h2" => Alpn::H2,
                        "http/1.1" => Alpn::Http11,
                        _ => return Err(bad(format!("{} is not h2 or http/1.1", quote(item)))),
                    };
                    if out.alpn.contains(&alpn) {
                        return Err(bad(format!("{} is listed twice", quote(item))));
                    }
                    out.alpn.push(alpn);
                }
            }
            "ssl-min-ver" | "ssl-max-ver" => {
                let v = match arg {
                    "TLSv1.2" => TlsVersion::Tls12,
                    "TLSv1.3" => TlsVersion::Tls13,
                    _ => return Err(bad(format!("{} is not TLSv1.2 or TLSv1.3", quote(arg)))),
                };
                if keyword == "ssl-min-ver" {
                    out.min_version = Some(v);
                } else {
                    out.max_version = Some(v);
                }
            }
            _ => unreachable!("every keyword but ssl takes an argument"),
        }
    }
    if let (Some(min), Some(max)) = (out.min_version, out.max_version) {
        if min > max {
            return Err(format!("backend-tls ssl-min-ver {} is above ssl-max-ver {}", min.as_str(), max.as_str()));
        }
    }
    Ok(out)
}

/// HAProxy's message for a near miss of a known keyword (`verfyhost`), if the token is one.
fn keyword_error(token: &str) -> Option<String> {
    if token.len() < 3 || !token.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
        return None;
    }
    let (best, distance) =
        KEYWORDS.iter().map(|k| (*k, edit_distance(token, k))).min_by_key(|(_, d)| *d).expect("keywords");
    (distance > 0 && distance <= 2).then(|| format!("unknown keyword '{token}'; did you mean '{best}' maybe ?"))
}

fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(value: &str) -> String {
        parse(value).unwrap_err()
    }

    #[test]
    fn the_seeds_example_parses() {
        let got = parse("ssl verify none").unwrap();
        assert_eq!(got.verify, Some(false));
        assert!(!got.verify_required());
    }

    #[test]
    fn every_option_parses_into_its_typed_value() {
        let got = parse(
            "ssl  verify required\tverifyhost Backend.Example.com ca-file /etc/ssl/ca.pem sni str(sni.example.com) \
             alpn h2,http/1.1 ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.3",
        )
        .unwrap();
        assert_eq!(got.verifyhost.unwrap().as_str(), "backend.example.com");
        assert_eq!(got.ca_file.unwrap().as_str(), "/etc/ssl/ca.pem");
        assert_eq!(got.sni.unwrap().as_str(), "sni.example.com");
        assert_eq!(got.alpn, vec![Alpn::H2, Alpn::Http11]);
        assert_eq!((got.min_version, got.max_version), (Some(TlsVersion::Tls12), Some(TlsVersion::Tls13)));
        assert!(parse("ssl").unwrap().verify_required(), "verify defaults to required");
    }

    #[test]
    fn refusals_name_the_token_and_why() {
        let cases = [
            ("", "backend-tls is empty; it must start with \"ssl\""),
            ("verify none", "backend-tls must start with \"ssl\", not \"verify\""),
            ("ssl verfyhost a.b", "unknown keyword 'verfyhost'; did you mean 'verifyhost' maybe ?"),
            ("ssl verifyhst a.b", "unknown keyword 'verifyhst'; did you mean 'verifyhost' maybe ?"),
            ("ssl crt /x.pem", "unsupported backend-tls option \"crt\""),
            ("ssl check-ssl", "unsupported backend-tls option \"check-ssl\""),
            ("ssl verify maybe", "backend-tls option \"verify\": \"maybe\" is not none or required"),
            ("ssl verify", "backend-tls option \"verify\" needs an argument"),
            ("ssl verify none verify none", "backend-tls option \"verify\" is given more than once"),
            ("ssl ssl", "backend-tls option \"ssl\" is given more than once"),
            ("ssl verifyhost a_b", "backend-tls option \"verifyhost\": DNS name \"a_b\" is not valid"),
            (
                "ssl ca-file ca.pem",
                "backend-tls option \"ca-file\": file path \"ca.pem\" is not valid: it must be an absolute path",
            ),
            (
                "ssl sni req.hdr(host)",
                "backend-tls option \"sni\": \"req.hdr(host)\" is not of the form str(<dns-name>)",
            ),
            ("ssl sni str(\"x\")", "backend-tls option \"sni\": DNS name \"\\\"x\\\"\" is not valid"),
            ("ssl alpn h3", "backend-tls option \"alpn\": \"h3\" is not h2 or http/1.1"),
            ("ssl alpn h2,h2", "backend-tls option \"alpn\": \"h2\" is listed twice"),
            ("ssl ssl-min-ver TLSv1.0", "backend-tls option \"ssl-min-ver\": \"TLSv1.0\" is not TLSv1.2 or TLSv1.3"),
            (
                "ssl ssl-min-ver TLSv1.3 ssl-max-ver TLSv1.2",
                "backend-tls ssl-min-ver TLSv1.3 is above ssl-max-ver TLSv1.2",
            ),
            (
                "ssl verify none\nserver evil 1.2.3.4:80",
                "backend-tls option \"verify\": \"none\\nserver\" is not none or required",
            ),
            ("ssl verifyhost a.b#comment", "backend-tls option \"verifyhost\": DNS name \"a.b#comment\" is not valid"),
            (
                "ssl ca-file /etc/ssl/ca.pem\r\nbackend x",
                "backend-tls option \"ca-file\": file path \"/etc/ssl/ca.pem\\r\\nbackend\" is not valid",
            ),
        ];
        for (value, want) in cases {
            let got = err(value);
            assert!(got.starts_with(want), "for {value:?}: got {got:?}, want {want:?}");
        }
    }
}

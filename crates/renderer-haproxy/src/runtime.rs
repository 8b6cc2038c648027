//! What HAProxy's runtime API can change without a reload, and the commands that take a
//! running configuration to a new one.
//!
//! A rendering is a skeleton (the configuration with a marker where each server address
//! goes) plus its map entries and server slots. When the skeleton of the new rendering is
//! the skeleton HAProxy runs, the difference is only map entries (routes added, removed or
//! pointed elsewhere; Host rewrites; timeouts) and server addresses (endpoints added,
//! removed or moved), and [`commands`] expresses it as runtime commands. Anything else
//! (a backend or listener that appears or goes, TLS settings, weighted routes, a backend
//! that outgrew its slots) needs a reload.
//!
//! The commands are ordered so that a request arriving between two of them is routed as
//! by the old configuration or by the new one, never to nothing: the entries a route needs
//! (its backend, rewrite, timeout, and the servers) are added before the host entry that
//! selects it, and removed after.

use std::collections::BTreeMap;
use std::net::SocketAddr;

/// The parts of a rendering that the runtime API changes in place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Runtime {
    /// A digest of the skeleton (the configuration without server addresses) and of the
    /// files it loads at start: equal skeletons differ only in maps and servers. Keyed per
    /// process (it is only compared within one renderer), 64 bits of SipHash: a fifth of
    /// SHA-256's time over the ~8 MB of a 10,000-route configuration.
    pub skeleton: u64,
    /// Map file path (as the configuration names it) → key → value.
    pub maps: BTreeMap<String, BTreeMap<String, String>>,
    /// Backend → its server slots (`s1`, `s2`, …), each with an endpoint or empty.
    pub servers: BTreeMap<String, Vec<Option<SocketAddr>>>,
    /// Certificate list path (as the configuration names it) → certificate file path →
    /// its line: the serving certificates of an HTTPS listener.
    pub crt_lists: BTreeMap<String, BTreeMap<String, CrtEntry>>,
}

/// One line of a certificate list, and the certificate file's bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct CrtEntry {
    /// `[ssl-min-ver TLSv1.3]`, or empty.
    pub options: String,
    /// The SNI filter: the host, or `*.<suffix>`.
    pub sni: String,
    /// Chain and key, PEM.
    pub pem: Vec<u8>,
}

impl std::fmt::Debug for CrtEntry {
    /// Without the bytes: they hold a private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrtEntry").field("options", &self.options).field("sni", &self.sni).finish_non_exhaustive()
    }
}

impl Runtime {
    /// The certificate files (paths as the configuration names them) whose bytes are the
    /// same in `next` as here: the renderer links them into the next generation instead of
    /// writing thousands of unchanged certificates for a one-route change.
    pub fn same_certificates<'a>(&'a self, next: &'a Runtime) -> impl Iterator<Item = &'a str> + 'a {
        next.crt_lists.iter().flat_map(move |(list, entries)| {
            entries
                .iter()
                .filter(move |(path, entry)| {
                    self.crt_lists.get(list).and_then(|old| old.get(*path)).is_some_and(|old| old.pem == entry.pem)
                })
                .map(|(path, _)| path.as_str())
        })
    }
}

/// `set ssl cert` with the file's bytes as the payload: PEM lines, ended by an empty line.
/// The one kind of command sent alone, never in a batch (`;` cannot follow a payload).
fn set_cert(path: &str, pem: &[u8]) -> String {
    let text = String::from_utf8_lossy(pem);
    format!("set ssl cert {} <<\n{}\n", arg(path), text.trim_end_matches('\n'))
}

/// A keyed digest over several byte strings, each prefixed by its length. The key is drawn
/// once per process, so nobody can choose inputs that collide.
pub(crate) fn digest_all(parts: &[&[u8]]) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
    let mut h = KEYS.get_or_init(std::collections::hash_map::RandomState::new).build_hasher();
    for part in parts {
        h.write_u64(part.len() as u64);
        h.write(part);
    }
    h.finish()
}

/// Whether a map holds route selection (host and path keys): changed last when adding,
/// first when removing.
fn selects_routes(path: &str) -> bool {
    path.ends_with("-exact.map")
        || path.ends_with("-wildcard.map")
        || path.ends_with("-any.map")
        || path.ends_with("-path.map")
}

/// A CLI argument: `;` separates commands and `\` escapes, so both are escaped. Keys and
/// values come from model newtypes (host names, path prefixes, backend names, numbers),
/// which hold neither spaces nor control characters.
fn arg(s: &str) -> String {
    s.replace('\\', "\\\\").replace(';', "\\;")
}

/// The runtime commands that take `running` to `next`, or `None` when the skeletons differ
/// (a reload is needed). An empty list: nothing to change.
pub fn commands(running: &Runtime, next: &Runtime) -> Option<Vec<String>> {
    if running.skeleton != next.skeleton
        || running.maps.keys().ne(next.maps.keys())
        || running.servers.keys().ne(next.servers.keys())
        || running.servers.iter().zip(&next.servers).any(|((_, a), (_, b))| a.len() != b.len())
        || running.crt_lists.keys().ne(next.crt_lists.keys())
    {
        return None;
    }
    // A certificate whose line changes (its SNI or its TLS version) is taken out and put
    // back by a reload, never by a delete and an add that would leave a moment without it.
    for (list, entries) in &next.crt_lists {
        for (path, entry) in entries {
            if running.crt_lists[list]
                .get(path)
                .is_some_and(|old| (&old.options, &old.sni) != (&entry.options, &entry.sni))
            {
                return None;
            }
        }
    }
    let empty = BTreeMap::new();
    let upserts = |path: &String, out: &mut Vec<String>| {
        let old = running.maps.get(path).unwrap_or(&empty);
        for (key, value) in &next.maps[path] {
            match old.get(key) {
                None => out.push(format!("add map {} {} {}", arg(path), arg(key), arg(value))),
                Some(v) if v != value => out.push(format!("set map {} {} {}", arg(path), arg(key), arg(value))),
                Some(_) => {}
            }
        }
    };
    let deletes = |path: &String, out: &mut Vec<String>| {
        let new = &next.maps[path];
        for key in running.maps[path].keys().filter(|k| !new.contains_key(*k)) {
            out.push(format!("del map {} {}", arg(path), arg(key)));
        }
    };
    let mut out = Vec::new();
    // Certificates first: a new host's before the route entries that select it; a renewed
    // one replaced in place (new handshakes get it, open connections keep theirs).
    for (list, entries) in &next.crt_lists {
        let old = &running.crt_lists[list];
        for (path, entry) in entries {
            match old.get(path) {
                None => {
                    out.push(format!("new ssl cert {}", arg(path)));
                    out.push(set_cert(path, &entry.pem));
                    out.push(format!("commit ssl cert {}", arg(path)));
                    let options = if entry.options.is_empty() { String::new() } else { format!(" {}", entry.options) };
                    out.push(format!("add ssl crt-list {} <<\n{}{options} {}\n", arg(list), path, entry.sni));
                }
                Some(was) if was.pem != entry.pem => {
                    out.push(set_cert(path, &entry.pem));
                    out.push(format!("commit ssl cert {}", arg(path)));
                }
                Some(_) => {}
            }
        }
    }
    for path in next.maps.keys().filter(|p| !selects_routes(p)) {
        upserts(path, &mut out);
    }
    for (backend, slots) in &next.servers {
        for (i, (old, new)) in running.servers[backend].iter().zip(slots).enumerate() {
            let server = format!("{backend}/s{}", i + 1);
            match (old, new) {
                (_, Some(addr)) if old != new => {
                    out.push(format!("set server {server} addr {} port {}", addr.ip(), addr.port()));
                    if old.is_none() {
                        out.push(format!("set server {server} state ready"));
                    }
                }
                (Some(_), None) => out.push(format!("set server {server} state maint")),
                _ => {}
            }
        }
    }
    for path in next.maps.keys().filter(|p| selects_routes(p)) {
        upserts(path, &mut out);
    }
    for path in next.maps.keys().filter(|p| selects_routes(p)) {
        deletes(path, &mut out);
    }
    for path in next.maps.keys().filter(|p| !selects_routes(p)) {
        deletes(path, &mut out);
    }
    // A gone host's certificate last, once nothing routes to it.
    for (list, entries) in &running.crt_lists {
        for path in entries.keys().filter(|p| !next.crt_lists[list].contains_key(*p)) {
            out.push(format!("del ssl crt-list {} {}", arg(list), arg(path)));
            out.push(format!("del ssl cert {}", arg(path)));
        }
    }
    Some(out)
}

/// Whether a line HAProxy answered to a runtime command reports success. Map and state
/// commands answer nothing; `set server … addr` says what it changed.
pub fn is_success_line(line: &str) -> bool {
    let line = line.trim();
    line.is_empty()
        || line.starts_with("IP changed from")
        || line.starts_with("no need to change the addr")
        || line.starts_with("port changed from")
        // The certificate commands (HAProxy 2.6's words; a failure says "Can't" or "Error").
        || line.starts_with("New empty certificate store '")
        || line.starts_with("Transaction created for certificate ")
        || line.starts_with("Committing ")
        || line == "Success!"
        || line.starts_with("Inserting certificate '")
        || (line.starts_with("Entry '") && line.contains("' deleted in crtlist '"))
        || (line.starts_with("Certificate '") && line.ends_with("' deleted!"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(maps: &[(&str, &[(&str, &str)])], servers: &[(&str, &[Option<&str>])]) -> Runtime {
        Runtime {
            skeleton: 7,
            maps: maps
                .iter()
                .map(|(p, e)| (p.to_string(), e.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()))
                .collect(),
            servers: servers
                .iter()
                .map(|(b, s)| (b.to_string(), s.iter().map(|a| a.map(|a| a.parse().unwrap())).collect()))
                .collect(),
            crt_lists: BTreeMap::new(),
        }
    }

    fn with_certs(mut r: Runtime, certs: &[(&str, &str, &str)]) -> Runtime {
        let list = r.crt_lists.entry("/c/l443.list".to_owned()).or_default();
        for (path, options, pem) in certs {
            let entry = CrtEntry { options: options.to_string(), sni: "a.com".into(), pem: pem.as_bytes().to_vec() };
            list.insert(path.to_string(), entry);
        }
        r
    }

    #[test]
    fn a_certificate_is_added_before_its_host_is_routed_renewed_in_place_and_removed_after() {
        let maps = |entries: &'static [(&'static str, &'static str)]| {
            runtime(&[("/m/backend.map", &[("r1", "b1")]), ("/m/l443-exact.map", entries)], &[])
        };
        let empty = with_certs(maps(&[]), &[]);
        let routed = with_certs(maps(&[("a.com/", "r1")]), &[("/c/a.pem", "", "PEM1\n")]);
        let added = commands(&empty, &routed).unwrap();
        assert_eq!(added[0], "new ssl cert /c/a.pem");
        assert_eq!(added[1], "set ssl cert /c/a.pem <<\nPEM1\n");
        assert_eq!(added[2], "commit ssl cert /c/a.pem");
        assert_eq!(added[3], "add ssl crt-list /c/l443.list <<\n/c/a.pem a.com\n");
        assert_eq!(added[4], "add map /m/l443-exact.map a.com/ r1", "the route after its certificate");
        assert_eq!(added.len(), 5);

        let renewed = with_certs(maps(&[("a.com/", "r1")]), &[("/c/a.pem", "", "PEM2\n")]);
        assert_eq!(
            commands(&routed, &renewed).unwrap(),
            ["set ssl cert /c/a.pem <<\nPEM2\n", "commit ssl cert /c/a.pem"],
            "a renewal replaces the certificate in place"
        );
        let removed = commands(&renewed, &empty).unwrap();
        assert_eq!(
            removed,
            ["del map /m/l443-exact.map a.com/", "del ssl crt-list /c/l443.list /c/a.pem", "del ssl cert /c/a.pem"],
            "the certificate goes after the route"
        );
        let two = with_certs(maps(&[]), &[("/c/a.pem", "", "PEM2\n"), ("/c/b.pem", "", "B\n")]);
        assert_eq!(
            renewed.same_certificates(&two).collect::<Vec<_>>(),
            ["/c/a.pem"],
            "an unchanged certificate is linked, a new one written"
        );
        assert_eq!(routed.same_certificates(&renewed).count(), 0, "a renewed one is written");
        let stricter = with_certs(maps(&[("a.com/", "r1")]), &[("/c/a.pem", "[ssl-min-ver TLSv1.3]", "PEM2\n")]);
        assert_eq!(commands(&renewed, &stricter), None, "another TLS version is a reload, never a gap");
    }

    #[test]
    fn a_new_route_is_selected_only_after_its_backend_exists_and_an_old_one_released_before() {
        let before = runtime(
            &[("/m/backend.map", &[("r1", "b1")]), ("/m/l80-exact.map", &[("a.com/", "r1")])],
            &[("b1", &[Some("10.0.0.1:80"), Some("10.0.0.2:80"), None, None])],
        );
        let after = runtime(
            &[("/m/backend.map", &[("r2", "b1")]), ("/m/l80-exact.map", &[("a.com/x;y", "r2")])],
            &[("b1", &[Some("10.0.0.1:80"), None, Some("[::1]:8443"), None])],
        );
        assert_eq!(
            commands(&before, &after).unwrap(),
            [
                "add map /m/backend.map r2 b1",
                "set server b1/s2 state maint",
                "set server b1/s3 addr ::1 port 8443",
                "set server b1/s3 state ready",
                "add map /m/l80-exact.map a.com/x\\;y r2",
                "del map /m/l80-exact.map a.com/",
                "del map /m/backend.map r1",
            ]
        );
        assert_eq!(commands(&after, &after).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn another_skeleton_or_slot_count_needs_a_reload() {
        let a = runtime(&[], &[("b1", &[None, None, None, None])]);
        let mut b = a.clone();
        b.skeleton = 8;
        assert_eq!(commands(&a, &b), None);
        let c = runtime(&[], &[("b1", &[None; 8])]);
        assert_eq!(commands(&a, &c), None);
        let d = runtime(&[], &[("b2", &[None, None, None, None])]);
        assert_eq!(commands(&a, &d), None);
    }

    #[test]
    fn haproxy_answers_are_told_apart() {
        assert!(is_success_line(""));
        assert!(is_success_line(
            "IP changed from '127.0.0.1' to '10.0.0.9', port changed from '1' to '8443' by 'stats socket command'"
        ));
        assert!(is_success_line(
            "no need to change the addr, port changed from '1' to '18181' by 'stats socket command'"
        ));
        assert!(!is_success_line("No such server."));
        assert!(!is_success_line("Key not found."));
        assert!(!is_success_line("Unknown map identifier. Please use #<id> or <file>."));
    }
}

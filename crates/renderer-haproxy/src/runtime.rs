//! What HAProxy's runtime API can change without a reload, and the commands that take a
//! running configuration to a new one.
//!
//! A rendering is a skeleton (the configuration with a marker where each backend's server
//! lines go) plus its map entries, its backends' servers and the files those servers load.
//! When the skeleton of the new rendering is the skeleton HAProxy runs, the difference is
//! map entries (routes added, removed or pointed elsewhere; Host rewrites; timeouts),
//! server addresses (endpoints added, removed or moved), servers added (an endpoint beyond
//! a backend's servers), and backends that serve another cluster: HAProxy 2.6
//! cannot add a backend at runtime, so the renderer keeps spare backends, and a cluster
//! that is new (a TLS policy changed, which is a cluster's identity, a CA rotated, a new
//! Service) takes a spare whose servers are rebuilt (`del server`, then `add server` with
//! the new TLS parameters, after `new ssl ca-file` for a new CA bundle). [`commands`]
//! expresses it as runtime commands. Anything else (a listener that appears or goes, a
//! weighted route's backends, no spare left) needs a reload.
//!
//! The commands are ordered so that a request arriving between two of them is routed as
//! by the old configuration or by the new one, never to nothing: the entries a route needs
//! (its backend and its servers, rewrite, timeout) are in place before the entry that
//! selects it, and what only the old configuration used (servers, files) is taken away
//! after. A backend that still serves a route in the running configuration is never
//! rebuilt: only spares are.

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
    /// Backend → the cluster it serves (or none: a spare) and its servers.
    pub backends: BTreeMap<String, Backend>,
    /// The files servers load (CA bundles, client certificates), as the configuration names
    /// them: the runtime API loads a new one before a server that names it is added.
    pub server_files: BTreeMap<String, ServerFile>,
    /// Certificate list path (as the configuration names it) → certificate file path →
    /// its line: the serving certificates of an HTTPS listener.
    pub crt_lists: BTreeMap<String, BTreeMap<String, CrtEntry>>,
}

/// A backend whose servers the runtime API manages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// The cluster it serves; `None` for a spare (no route uses it).
    pub cluster: Option<String>,
    /// What every server line has after the address (TLS parameters, protocol): a backend
    /// whose options change is rebuilt, which only a spare may be.
    pub options: String,
    /// The server files (`server_files` keys) the options name.
    pub files: Vec<String>,
    /// Its server slots (`s1`, `s2`, …), each with an endpoint or empty (in maintenance).
    pub slots: Vec<Option<SocketAddr>>,
}

/// A file servers load.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerFile {
    /// A client certificate and key (`crt`), else a CA bundle (`ca-file`).
    pub certificate: bool,
    /// Its bytes, or `None` for a file on the HAProxy host that the renderer does not
    /// write (Voyager's `ca-file`): HAProxy loads it at start only, so a server naming it
    /// for the first time needs a reload.
    pub pem: Option<std::sync::Arc<[u8]>>,
}

impl ServerFile {
    /// Its store in HAProxy's runtime API: `ssl cert` or `ssl ca-file`.
    fn store(&self) -> &'static str {
        if self.certificate {
            "cert"
        } else {
            "ca-file"
        }
    }
}

impl std::fmt::Debug for ServerFile {
    /// Without the bytes: a client certificate holds a private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerFile").field("certificate", &self.certificate).finish_non_exhaustive()
    }
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

/// `set ssl cert` with the file's bytes as the payload: PEM lines, ended by an empty line.
/// The one kind of command sent alone, never in a batch (`;` cannot follow a payload).
fn set_cert(path: &str, pem: &[u8]) -> String {
    set_payload("cert", path, pem)
}

/// `set ssl <what> <path>` with a PEM payload (`cert` or `ca-file`).
fn set_payload(what: &str, path: &str, pem: &[u8]) -> String {
    let text = String::from_utf8_lossy(pem);
    format!("set ssl {what} {} <<\n{}\n", arg(path), text.trim_end_matches('\n'))
}

/// The address written for a slot without an endpoint (the server is in maintenance).
pub(crate) const EMPTY_ADDRESS: &str = "127.0.0.1:1";

/// A server's address as HAProxy reads it, in the configuration and in `add server`.
pub(crate) fn address(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("ipv6@{}:{}", a.ip(), a.port()),
    }
}

/// The server lines of a backend, as the configuration holds them.
pub(crate) fn server_lines(backend: &Backend, out: &mut String) {
    use std::fmt::Write;
    for (i, slot) in backend.slots.iter().enumerate() {
        match slot {
            Some(addr) => writeln!(out, "    server s{} {}{}", i + 1, address(addr), backend.options).unwrap(),
            None => writeln!(out, "    server s{} {EMPTY_ADDRESS} disabled{}", i + 1, backend.options).unwrap(),
        }
    }
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
/// or a change needs what only a reload does (a live backend rebuilt, a host CA file
/// named for the first time). An empty list: nothing to change.
pub fn commands(running: &Runtime, next: &Runtime) -> Option<Vec<String>> {
    if running.skeleton != next.skeleton
        || running.maps.keys().ne(next.maps.keys())
        || running.backends.keys().ne(next.backends.keys())
        || running.crt_lists.keys().ne(next.crt_lists.keys())
    {
        return None;
    }
    for (name, backend) in &next.backends {
        let old = &running.backends[name];
        if old.options != backend.options && old.cluster.is_some() {
            return None; // a route uses it: rebuilding its servers would leave it empty a moment
        }
    }
    if next.server_files.iter().any(|(path, file)| file.pem.is_none() && !running.server_files.contains_key(path)) {
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
    // The files new servers load, before the servers.
    for (path, file) in &next.server_files {
        let (false, Some(pem)) = (running.server_files.contains_key(path), &file.pem) else { continue };
        let what = file.store();
        out.push(format!("new ssl {what} {}", arg(path)));
        out.push(set_payload(what, path, pem));
        out.push(format!("commit ssl {what} {}", arg(path)));
    }
    // Servers: a spare rebuilt for its new cluster, slots added, addresses set; what only
    // the running configuration routes to is put in maintenance after the maps moved.
    let mut after_maps = Vec::new();
    let add = |backend: &str, i: usize, slot: &Option<SocketAddr>, options: &str, out: &mut Vec<String>| {
        let server = format!("{backend}/s{}", i + 1);
        let addr = slot.as_ref().map_or_else(|| EMPTY_ADDRESS.to_owned(), address);
        // A dynamic server starts in maintenance.
        out.push(format!("add server {server} {addr}{}", arg(options)));
        if slot.is_some() {
            out.push(format!("set server {server} state ready"));
        }
    };
    for (name, backend) in &next.backends {
        let old = &running.backends[name];
        if old.options != backend.options {
            // A spare (checked above): nothing routes to it.
            for i in 0..old.slots.len() {
                out.push(format!("del server {name}/s{}", i + 1));
            }
            for (i, slot) in backend.slots.iter().enumerate() {
                add(name, i, slot, &backend.options, &mut out);
            }
            continue;
        }
        for (i, new) in backend.slots.iter().enumerate() {
            let server = format!("{name}/s{}", i + 1);
            match (old.slots.get(i), new) {
                (None, _) => add(name, i, new, &backend.options, &mut out),
                (Some(old), Some(addr)) if old.as_ref() != Some(addr) => {
                    out.push(format!("set server {server} addr {} port {}", addr.ip(), addr.port()));
                    if old.is_none() {
                        out.push(format!("set server {server} state ready"));
                    }
                }
                (Some(Some(_)), None) => after_maps.push(format!("set server {server} state maint")),
                _ => {}
            }
        }
        for (i, slot) in old.slots.iter().enumerate().skip(backend.slots.len()) {
            if slot.is_some() {
                after_maps.push(format!("set server {name}/s{} state maint", i + 1));
            }
            after_maps.push(format!("del server {name}/s{}", i + 1));
        }
    }
    for path in next.maps.keys().filter(|p| !selects_routes(p)) {
        upserts(path, &mut out);
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
    out.append(&mut after_maps);
    // Files no server names any more (their servers were rebuilt above).
    for (path, file) in &running.server_files {
        if !next.server_files.contains_key(path) && file.pem.is_some() {
            out.push(format!("del ssl {} {}", file.store(), arg(path)));
        }
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
        // Dynamic servers and CA files (HAProxy 2.6's words).
        || line == "New server registered."
        || line == "Server deleted."
        || line.starts_with("New CA file created '")
        || line.starts_with("transaction created for CA ")
        || (line.starts_with("CA file '") && line.ends_with("' deleted!"))
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
            backends: servers
                .iter()
                .map(|(b, s)| {
                    let slots = s.iter().map(|a| a.map(|a| a.parse().unwrap())).collect();
                    (b.to_string(), Backend { cluster: Some(format!("c_{b}")), slots, ..Backend::default() })
                })
                .collect(),
            server_files: BTreeMap::new(),
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
                "set server b1/s3 addr ::1 port 8443",
                "set server b1/s3 state ready",
                "add map /m/backend.map r2 b1",
                "add map /m/l80-exact.map a.com/x\\;y r2",
                "del map /m/l80-exact.map a.com/",
                "del map /m/backend.map r1",
                "set server b1/s2 state maint",
            ]
        );
        assert_eq!(commands(&after, &after).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn another_skeleton_or_backend_set_needs_a_reload_more_slots_do_not() {
        let a = runtime(&[], &[("b1", &[Some("10.0.0.1:80"), None, None, None])]);
        let mut b = a.clone();
        b.skeleton = 8;
        assert_eq!(commands(&a, &b), None);
        let d = runtime(&[], &[("b2", &[None, None, None, None])]);
        assert_eq!(commands(&a, &d), None);
        let mut grown = runtime(&[], &[("b1", &[Some("10.0.0.1:80"), None, None, None, Some("10.0.0.5:80")])]);
        grown.backends.get_mut("b1").unwrap().options = " ssl verify none".into();
        assert_eq!(commands(&a, &grown), None, "a live backend's servers are never rebuilt");
        grown.backends.get_mut("b1").unwrap().options = String::new();
        assert_eq!(
            commands(&a, &grown).unwrap(),
            ["add server b1/s5 10.0.0.5:80", "set server b1/s5 state ready"],
            "a slot beyond the running ones is a server added"
        );
        assert_eq!(
            commands(&grown, &a).unwrap(),
            ["set server b1/s5 state maint", "del server b1/s5"],
            "and one fewer a server deleted"
        );
    }

    #[test]
    fn a_spare_is_rebuilt_for_a_new_cluster_its_ca_loaded_first_and_the_route_moved_after() {
        let ca = "/c/ca/1.pem".to_owned();
        let before = {
            let mut r = runtime(
                &[("/m/backend.map", &[("r1", "live")]), ("/m/l80-exact.map", &[("a.com/", "r1")])],
                &[("live", &[Some("10.0.0.1:443"), None]), ("spare", &[None])],
            );
            let spare = r.backends.get_mut("spare").unwrap();
            spare.cluster = None;
            spare.options = " ssl verify none".into();
            r
        };
        let mut after = runtime(
            &[("/m/backend.map", &[("r1", "spare")]), ("/m/l80-exact.map", &[("a.com/", "r1")])],
            &[("live", &[None, None]), ("spare", &[Some("10.0.0.1:443"), None])],
        );
        after.backends.get_mut("live").unwrap().cluster = None;
        let options = format!(" ssl verify required ca-file {ca} sni str(a.com)");
        after.backends.get_mut("spare").unwrap().options = options.clone();
        after.server_files.insert(ca.clone(), ServerFile { certificate: false, pem: Some(b"PEM\n"[..].into()) });
        assert_eq!(
            commands(&before, &after).unwrap(),
            [
                "new ssl ca-file /c/ca/1.pem".to_owned(),
                "set ssl ca-file /c/ca/1.pem <<\nPEM\n".to_owned(),
                "commit ssl ca-file /c/ca/1.pem".to_owned(),
                "del server spare/s1".to_owned(),
                format!("add server spare/s1 10.0.0.1:443{options}"),
                "set server spare/s1 state ready".to_owned(),
                format!("add server spare/s2 127.0.0.1:1{options}"),
                "set map /m/backend.map r1 spare".to_owned(),
                "set server live/s1 state maint".to_owned(),
            ]
        );
        // Back: the route returns to "live", whose servers have the options they had:
        // nothing is rebuilt, and "spare" keeps its servers (in maintenance) and the CA file
        // they name.
        let mut back = after.clone();
        back.maps = before.maps.clone();
        let live = back.backends.get_mut("live").unwrap();
        (live.cluster, live.slots) = (Some("c_live".into()), vec![Some("10.0.0.1:443".parse().unwrap()), None]);
        let spare = back.backends.get_mut("spare").unwrap();
        (spare.cluster, spare.slots) = (None, vec![None, None]);
        assert_eq!(
            commands(&after, &back).unwrap(),
            [
                "set server live/s1 addr 10.0.0.1 port 443",
                "set server live/s1 state ready",
                "set map /m/backend.map r1 live",
                "set server spare/s1 state maint",
            ]
        );
        // The spare rebuilt for another cluster that names no CA file: the file goes last.
        let mut other = back.clone();
        let spare = other.backends.get_mut("spare").unwrap();
        (spare.cluster, spare.options) = (Some("c_other".into()), " ssl verify none".into());
        spare.slots = vec![Some("10.0.0.2:443".parse().unwrap())];
        other.maps.get_mut("/m/backend.map").unwrap().insert("r2".into(), "spare".into());
        other.server_files.clear();
        assert_eq!(
            commands(&back, &other).unwrap(),
            [
                "del server spare/s1",
                "del server spare/s2",
                "add server spare/s1 10.0.0.2:443 ssl verify none",
                "set server spare/s1 state ready",
                "add map /m/backend.map r2 spare",
                "del ssl ca-file /c/ca/1.pem",
            ]
        );
        // Never a backend a route uses: "spare" while it serves r1, "live" after.
        let mut rebuilt = after.clone();
        rebuilt.backends.get_mut("spare").unwrap().options = " ssl verify none".into();
        assert_eq!(commands(&after, &rebuilt), None, "a spare's options differ only when nothing routes to it");
        let mut rebuilt = back.clone();
        rebuilt.backends.get_mut("live").unwrap().options = " ssl verify none".into();
        assert_eq!(commands(&back, &rebuilt), None, "a backend a route uses is not rebuilt");
        let host_file = ServerFile { certificate: false, pem: None };
        let mut host = after.clone();
        host.server_files.insert("/etc/ssl/voyager.pem".into(), host_file);
        assert_eq!(commands(&after, &host), None, "a host CA file HAProxy has not loaded needs a reload");
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

//! Changes applied through HAProxy's runtime API, against a real HAProxy 2.6: route edits
//! (map entries) and endpoint moves (server slots) take effect without a reload, the files
//! on disk are what runs (a restart on them serves the same), and a command HAProxy refuses
//! is followed by a checked reload that brings it to the files.

use portico_renderer_haproxy::apply::{
    current_base, prune_store, write_files, write_generation, Applied, ApplyError, Haproxy, Started,
};
use portico_renderer_haproxy::{render, render_over, runtime, Options, Rendered};
use portico_resolver::Config;
use portico_testkit::{http_get, pipeline_yaml};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;

/// A plain HTTP backend answering every request with its name.
fn backend(name: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                    name.len()
                );
            });
        }
    });
    port
}

fn world(prefix: &str, endpoint_port: u16, rewrite: Option<&str>) -> String {
    let rewrite = rewrite
        .map(|h| format!("\n    requestHeadersPolicy: {{set: [{{name: Host, value: {h}}}]}}"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: demo}}
spec: {{ports: [{{port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: demo, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{port: {endpoint_port}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
---
apiVersion: projectcontour.io/v1
kind: HTTPProxy
metadata: {{name: site, namespace: demo}}
spec:
  virtualhost: {{fqdn: a.test}}
  routes:
  - conditions: [{{prefix: {prefix}}}]
    services: [{{name: web, port: 80}}]{rewrite}
"
    )
}

/// A free port, and a work directory: its guard and its canonical path (the configuration
/// names files under it, and the tests compare those paths).
fn place() -> (u16, tempfile::TempDir, std::path::PathBuf) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().canonicalize().unwrap();
    (port, dir, path)
}

/// HAProxy started on the first generation (route `/one` to the backend `one`), serving it.
fn started(work: &Path, port: u16, one: u16) -> (Rendered, Haproxy) {
    let first = rendering(work, port, &world("/one", one, None), None);
    let gen1 = work.join("gen-1-1-1");
    write_files(&gen1, &first.files).unwrap();
    let haproxy = Haproxy::start("haproxy", work, &gen1, &work.join("haproxy.log")).unwrap();
    assert_eq!(http_get(port, "a.test", "/one/x").unwrap(), (200, "one".to_owned()));
    (first, haproxy)
}

fn rendering(work: &Path, port: u16, yaml: &str, running: Option<&portico_renderer_haproxy::Runtime>) -> Rendered {
    let (model, trust) = pipeline_yaml(yaml, &Config { http_port: port, ..Config::default() });
    let options = Options {
        base_dir: current_base(work).to_str().unwrap().parse().unwrap(),
        bind_address: "127.0.0.1".parse().unwrap(),
        http_port: port,
        https_port: None,
    };
    match running {
        None => render(&model, &trust, &options),
        Some(r) => render_over(&model, &trust, &options, Some(r), &Default::default()),
    }
}

#[test]
fn route_and_endpoint_changes_apply_without_a_reload_and_the_files_are_what_runs() {
    let (one, two) = (backend("one"), backend("two"));
    let (port, _dir, work) = place();

    let (first, mut haproxy) = started(&work, port, one);
    let reloads = haproxy.reloads().unwrap();

    // The route's prefix and the endpoint's port change, and a Host rewrite appears.
    let second = rendering(&work, port, &world("/two", two, Some("inside.test")), Some(&first.runtime));
    let commands = runtime::commands(&first.runtime, &second.runtime).expect("the same skeleton");
    assert!(commands.iter().any(|c| c.starts_with("set server ")), "{commands:?}");
    assert!(commands.iter().any(|c| c.starts_with("add map ")), "{commands:?}");
    assert!(commands.iter().any(|c| c.starts_with("del map ")), "{commands:?}");
    let gen2 = work.join("gen-1-2-2");
    write_files(&gen2, &second.files).unwrap();
    assert_eq!(haproxy.update(&gen2, Some(&commands)).unwrap(), Applied::Runtime(commands.len()));
    assert_eq!(http_get(port, "a.test", "/two/x").unwrap(), (200, "two".to_owned()));
    assert_eq!(http_get(port, "a.test", "/one/x").unwrap().0, 404, "the old prefix is gone");
    assert_eq!(haproxy.reloads().unwrap(), reloads, "no reload");
    assert_eq!(haproxy.current_dir(), Some(gen2.as_path()));

    // What is on disk is what runs: HAProxy started afresh on the files serves the same.
    drop(haproxy);
    let first_files = render(
        &Default::default(),
        &Default::default(),
        &Options {
            base_dir: current_base(&work).to_str().unwrap().parse().unwrap(),
            bind_address: "127.0.0.1".parse().unwrap(),
            http_port: port,
            https_port: None,
        },
    )
    .files;
    let (mut haproxy, started) =
        Haproxy::start_or_adopt("haproxy", &work, &work.join("gen-0"), &first_files, &work.join("haproxy.log"))
            .unwrap();
    assert_eq!(started, Started::LastApplied(gen2.clone()));
    assert_eq!(http_get(port, "a.test", "/two/x").unwrap(), (200, "two".to_owned()));
    assert_eq!(http_get(port, "a.test", "/one/x").unwrap().0, 404);

    // A command HAProxy refuses (here a map it does not have): it is brought to the files
    // by a checked reload.
    let third = rendering(&work, port, &world("/three", one, None), Some(&second.runtime));
    let gen3 = work.join("gen-1-3-3");
    write_files(&gen3, &third.files).unwrap();
    let refused = vec!["del map /nonexistent/portico.map key".to_owned()];
    assert_eq!(haproxy.update(&gen3, Some(&refused)).unwrap(), Applied::ReloadAfterDrift);
    assert_eq!(http_get(port, "a.test", "/three/x").unwrap(), (200, "one".to_owned()));
    assert_eq!(http_get(port, "a.test", "/two/x").unwrap().0, 404);
}

#[test]
fn a_new_endpoint_is_a_server_added_and_a_new_backend_takes_a_spare_not_a_reload() {
    let work = Path::new("/w");
    let yaml = |endpoints: usize, service: &str| {
        let addresses: Vec<String> = (1..=endpoints).map(|i| format!("127.0.0.{i}")).collect();
        world("/", 8080, None)
            .replace(
                "endpoints: [{addresses: [127.0.0.1]}]",
                &format!("endpoints: [{{addresses: [{}]}}]", addresses.join(", ")),
            )
            .replace("services: [{name: web", &format!("services: [{{name: {service}"))
            .replace(
                "metadata: {name: web, namespace: demo}",
                &format!("metadata: {{name: {service}, namespace: demo}}"),
            )
            .replace("kubernetes.io/service-name: web", &format!("kubernetes.io/service-name: {service}"))
    };
    let three = rendering(work, 80, &yaml(3, "web"), None);
    let slots_of = |r: &Rendered| r.runtime.backends.values().find(|b| b.cluster.is_some()).unwrap().slots.len();
    assert_eq!(slots_of(&three), 3, "afresh, one server per endpoint: no spare TLS contexts to parse");
    let four = rendering(work, 80, &yaml(4, "web"), Some(&three.runtime));
    let added = runtime::commands(&three.runtime, &four.runtime).expect("a fourth endpoint is a server added");
    let backend = four.runtime.backends.iter().find(|(_, b)| b.cluster.is_some()).unwrap().0.clone();
    assert_eq!(
        added,
        [format!("add server {backend}/s4 127.0.0.4:8080"), format!("set server {backend}/s4 state ready")],
        "the other three keep their servers"
    );
    // Shrinking keeps the servers a running backend has (in maintenance: never deleted
    // under live connections).
    let two = rendering(work, 80, &yaml(2, "web"), Some(&four.runtime));
    let shrunk = runtime::commands(&four.runtime, &two.runtime).unwrap();
    assert_eq!(slots_of(&two), 4);
    assert!(shrunk.iter().all(|c| !c.starts_with("del server")), "{shrunk:?}");
    assert_eq!(shrunk.iter().filter(|c| c.ends_with("state maint")).count(), 2, "{shrunk:?}");
    // Another Service's cluster takes a spare backend; the one it leaves becomes a spare.
    let other = rendering(work, 80, &yaml(3, "api"), Some(&three.runtime));
    let moved = runtime::commands(&three.runtime, &other.runtime).expect("a spare backend, no reload");
    let spare = other.runtime.backends.iter().find(|(_, b)| b.cluster.as_deref().is_some_and(|c| c.contains("api")));
    let (spare, _) = spare.expect("the api cluster has a backend");
    assert!(spare.starts_with("portico_spare_"), "{spare}");
    assert!(moved.contains(&format!("add server {spare}/s1 127.0.0.1:8080")), "{moved:?}");
    let cfg = String::from_utf8(other.files["haproxy.cfg"].clone()).unwrap();
    assert!(cfg.contains(&format!("backend {spare}\n")) && cfg.contains("    # spare: no route uses it\n"), "{cfg}");
    // With no spare left, a new cluster is a new backend: a reload.
    let mut none_left = three.runtime.clone();
    none_left.backends.retain(|_, b| b.cluster.is_some());
    let other = rendering(work, 80, &yaml(3, "api"), Some(&none_left));
    assert_eq!(runtime::commands(&none_left, &other.runtime), None, "a new backend");
}

/// A rollback that cannot be done is said, not ignored. HAProxy refuses a runtime command,
/// the checked reload of the new files is refused too (their haproxy.cfg is broken), and
/// switching back to the running generation fails: the link's temporary name is taken by
/// a directory, so creating the link there fails as any write can. The error says that the
/// files on disk are not what runs, HAProxy still serves the previous generation, and once
/// the way is clear a checked reload of the next change repairs both.
#[test]
fn a_rollback_that_fails_is_reported_and_the_next_reload_repairs_it() {
    let one = backend("one");
    let (port, _dir, work) = place();
    let (first, mut haproxy) = started(&work, port, one);

    // The next generation, whose configuration HAProxy refuses.
    let second = rendering(&work, port, &world("/two", one, None), Some(&first.runtime));
    let gen2 = work.join("gen-1-2-2");
    write_files(&gen2, &second.files).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(gen2.join("haproxy.cfg"))
        .unwrap()
        .write_all(b"\nthis is not haproxy configuration\n")
        .unwrap();
    // The link already names it (the switch that starts an update), and the name the link
    // back would be made under is taken.
    let link = current_base(&work);
    let tmp = work.join("switched");
    std::os::unix::fs::symlink(&gen2, &tmp).unwrap();
    std::fs::rename(&tmp, &link).unwrap();
    let blocker = link.with_extension("next");
    std::fs::create_dir_all(blocker.join("in-the-way")).unwrap();

    let refused = vec!["del map /nonexistent/portico.map key".to_owned()];
    let error = haproxy.update(&gen2, Some(&refused)).unwrap_err();
    assert!(matches!(error, ApplyError::RollbackFailed { .. }), "{error}");
    let said = error.to_string();
    assert!(said.contains("a restart of HAProxy now would read the refused one"), "{said}");
    assert!(said.contains("unknown keyword 'this'"), "the refusal itself is named: {said}");
    assert_eq!(http_get(port, "a.test", "/one/x").unwrap(), (200, "one".to_owned()), "HAProxy runs the first");

    // The way is clear again: the next change, by a checked reload, serves and is on disk.
    std::fs::remove_dir_all(&blocker).unwrap();
    let third = rendering(&work, port, &world("/three", one, None), None);
    let gen3 = work.join("gen-1-3-3");
    write_files(&gen3, &third.files).unwrap();
    haproxy.apply(&gen3).unwrap();
    assert_eq!(http_get(port, "a.test", "/three/x").unwrap(), (200, "one".to_owned()));
    assert_eq!(std::fs::read_link(&link).unwrap(), gen3);
}

/// A master that dies during a reload (killed, crashed) is said at once: the renderer does
/// not wait out `RELOAD_LIMIT` (120 s) for a confirmation that cannot come, which kept its
/// liveness check from starting HAProxy again for two minutes (found by the chaos run: an
/// HAProxy master killed while its renderer reloaded it). The master is killed as soon as
/// its log says it took the reload; the new configuration has 3,000 more TLS server lines
/// than it needs, so that its parse cannot finish first.
#[test]
fn a_master_that_dies_during_a_reload_is_said_at_once_and_current_goes_back() {
    let one = backend("one");
    let (port, _dir, work) = place();
    let (_, mut haproxy) = started(&work, port, one);
    let second = rendering(&work, port, &world("/two", one, None), None);
    let gen2 = work.join("gen-1-2-2");
    write_files(&gen2, &second.files).unwrap();
    let mut padding = String::from("\nbackend padding\n");
    for i in 0..3000 {
        padding.push_str(&format!("    server s{i} 127.0.0.1:1 disabled ssl verify none\n"));
    }
    std::fs::OpenOptions::new()
        .append(true)
        .open(gen2.join("haproxy.cfg"))
        .unwrap()
        .write_all(padding.as_bytes())
        .unwrap();

    let log = work.join("haproxy.log");
    let before = std::fs::read_to_string(&log).unwrap().matches("Reloading HAProxy").count();
    let pid = haproxy.pid() as libc::pid_t;
    let killer = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if std::fs::read_to_string(&log).unwrap_or_default().matches("Reloading HAProxy").count() > before {
                // SAFETY: kill(2) on the master this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        false
    });
    let applying = std::time::Instant::now();
    let error = haproxy.apply(&gen2).unwrap_err();
    assert!(killer.join().unwrap(), "the master took the reload and was killed");
    assert!(matches!(error, ApplyError::ExitedDuringReload), "{error}");
    assert!(
        applying.elapsed() < std::time::Duration::from_secs(60),
        "not after the 120 s limit: {:?}",
        applying.elapsed()
    );
    assert_eq!(std::fs::read_link(current_base(&work)).unwrap(), work.join("gen-1-1-1"), "current goes back");
}

/// Files named by their content live once in the work directory's store, which each
/// generation reaches through its `ca` and `client` links; a generation links the other
/// files it did not change from the previous one; the store keeps what the running
/// generation names.
#[test]
fn content_addressed_files_live_once_in_a_store_that_keeps_what_runs() {
    use std::os::unix::fs::MetadataExt;
    let (_, _dir, work) = place();
    let store = work.join(portico_renderer_haproxy::apply::STORE);
    let files = |list: &[(&str, &str)]| -> std::collections::BTreeMap<String, Vec<u8>> {
        list.iter().map(|(n, b)| (n.to_string(), b.as_bytes().to_vec())).collect()
    };
    let names = |list: &[&str]| list.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let (gen1, gen2) = (work.join("gen-1-1-1"), work.join("gen-1-2-2"));
    let first = files(&[("haproxy.cfg", "one"), ("ca/a.pem", "A"), ("client/c.pem", "C")]);
    let all = names(&["haproxy.cfg", "ca/a.pem", "client/c.pem"]);
    write_generation(&gen1, &all, &first, None, Some(&store), |_| None).unwrap();
    assert_eq!(std::fs::read_link(gen1.join("ca")).unwrap(), std::path::Path::new("../files/ca"));
    assert_eq!(std::fs::read(gen1.join("ca/a.pem")).unwrap(), b"A");
    assert_eq!(std::fs::metadata(store.join("client/c.pem")).unwrap().mode() & 0o777, 0o600, "a key: owner only");

    // The next generation: a new CA file, the configuration and the client file unchanged.
    let second = files(&[("ca/b.pem", "B")]);
    let all = names(&["haproxy.cfg", "ca/b.pem", "client/c.pem"]);
    write_generation(&gen2, &all, &second, Some(&gen1), Some(&store), |_| None).unwrap();
    assert_eq!(std::fs::read(gen2.join("ca/b.pem")).unwrap(), b"B");
    assert_eq!(std::fs::read(gen2.join("client/c.pem")).unwrap(), b"C");
    let inode = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(inode(&gen2.join("haproxy.cfg")), inode(&gen1.join("haproxy.cfg")), "linked, not written");
    prune_store(&work, &all);
    assert!(!store.join("ca/a.pem").exists(), "no longer named: removed");
    assert!(store.join("ca/b.pem").exists() && store.join("client/c.pem").exists());
}

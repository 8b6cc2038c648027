//! Support for end-to-end tests with real parts: a test PKI (rcgen), TLS backends (rustls
//! and hyper) that answer with what they saw of the connection, the real proxies as child
//! processes, the `portico up` stack in a temporary directory, and the manifests the
//! stack tests change.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use portico_deploy::demo::{Backend, BackendKind, Issued, TestCa};
use portico_deploy::up::{Options, Part, Replicas, Stack};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

// ---------------------------------------------------------------- proxies and the client

/// A free TCP port on 127.0.0.1, outside the ephemeral range (see `up::pick_port`).
pub fn free_port() -> u16 {
    portico_deploy::up::pick_port(&[IpAddr::from([127, 0, 0, 1])]).expect("a free port")
}

/// A proxy process, killed when dropped.
pub struct Proxy {
    pub name: &'static str,
    pub port: u16,
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    /// HAProxy in the foreground on a config `portico translate` wrote.
    pub fn haproxy(config: &Path, port: u16) -> Proxy {
        Proxy::spawn("haproxy", Command::new("haproxy").arg("-db").arg("-f").arg(config), port)
    }

    /// Envoy on a bootstrap `portico translate` wrote.
    pub fn envoy(bootstrap: &Path, port: u16) -> Proxy {
        let mut command = Command::new("envoy");
        command.arg("-c").arg(bootstrap).args(["--use-dynamic-base-id", "--log-level", "warning"]);
        Proxy::spawn("envoy", &mut command, port)
    }

    fn spawn(name: &'static str, command: &mut Command, port: u16) -> Proxy {
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(log.reopen().expect("log"))
            .stderr(log.reopen().expect("log"))
            .spawn()
            .unwrap_or_else(|e| panic!("{name} must be installed (scripts/setup.sh installs it): {e}"));
        let mut proxy = Proxy { name, port, child, log };
        proxy.wait_ready();
        proxy
    }

    /// Wait until the listener answers HTTP (or fail with the proxy's log).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited with {status}:\n{}", self.name, self.log());
            }
            if get(self.port, "ready.invalid", "/").is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{} did not answer on port {} within 30 s:\n{}", self.name, self.port, self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// GET through this proxy.
    pub fn get(&self, host: &str, path: &str) -> (u16, String) {
        get(self.port, host, path).unwrap_or_else(|e| panic!("{} on {}: {e}\n{}", self.name, self.port, self.log()))
    }
}

pub use portico_testkit::http_get as get;

/// A proxy started on the files `portico translate` wrote for `manifests` into `out`, with
/// the ports it was given, and what translate said (which must have been no problem).
pub struct Translated {
    pub proxy: Proxy,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub outcome: portico_deploy::translate::Outcome,
}

/// Translate `manifests` for HTTP on `http_port` and HTTPS on `https_port` (of 127.0.0.1)
/// and start `via` on the result.
pub fn translated(manifests: &Path, out: &Path, via: Via, http_port: u16, https_port: u16) -> Translated {
    let options = portico_deploy::translate::Options {
        paths: vec![manifests.to_owned()],
        out_dir: out.to_owned(),
        http_port,
        https_port,
        envoy_admin_port: free_port(),
        bind_address: "127.0.0.1".parse().unwrap(),
        client_cert: None,
        root_namespaces: Vec::new(),
        now: portico_deploy::unix_now(),
    };
    let outcome = portico_deploy::translate::run(&options).expect("translate");
    assert!(outcome.problems.is_empty(), "{:?}", outcome.problems);
    let proxy = match via {
        Via::Envoy => Proxy::envoy(&out.join("envoy/envoy.yaml"), http_port),
        Via::Haproxy => Proxy::haproxy(&out.join("haproxy/haproxy.cfg"), http_port),
    };
    let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
    Translated { proxy, http: at(http_port), https: at(https_port), outcome }
}

// ---------------------------------------------------------------- the whole stack

/// Which proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Haproxy,
    Envoy,
}

pub const BOTH: [Via; 2] = [Via::Haproxy, Via::Envoy];

/// `portico up`'s stack on the demo, in a temporary directory with free ports: real
/// nats-server, the five service binaries, HAProxy and Envoy.
pub struct LocalStack {
    pub stack: Stack,
    pub demo: portico_deploy::demo::Demo,
    pub dir: tempfile::TempDir,
}

impl LocalStack {
    /// Start it with the demo's manifests plus `extra` files, and wait until both proxies
    /// applied the first model.
    pub fn start(extra: &[(&str, &str)]) -> LocalStack {
        LocalStack::start_with_env(extra, &[])
    }

    /// `start`, with extra environment for the service binaries.
    pub fn start_with_env(extra: &[(&str, &str)], service_env: &[(&str, &str)]) -> LocalStack {
        LocalStack::start_with(extra, service_env, Replicas::default())
    }

    /// `start_with_env`, running `replicas` of the parts.
    pub fn start_with(extra: &[(&str, &str)], service_env: &[(&str, &str)], replicas: Replicas) -> LocalStack {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // Free on HAProxy's address and on every Envoy's (127.0.0.2 and up).
        let addresses: Vec<IpAddr> = (1..=1 + replicas.envoys).map(|last| IpAddr::from([127, 0, 0, last])).collect();
        let http_port = portico_deploy::up::pick_port(&addresses).expect("a free port");
        let https_port = std::iter::repeat_with(|| portico_deploy::up::pick_port(&addresses).expect("a free port"))
            .find(|p| *p != http_port)
            .expect("another free port");
        let demo = portico_deploy::demo::start(http_port);
        let manifests = dir.path().join("manifests");
        std::fs::create_dir_all(&manifests).expect("manifests directory");
        std::fs::write(manifests.join("demo.yaml"), &demo.manifests).expect("demo.yaml");
        for (name, contents) in extra {
            std::fs::write(manifests.join(name), contents).expect("an extra manifest");
        }
        let options = Options {
            state_dir: dir.path().join("state"),
            manifests: vec![manifests],
            http_port,
            https_port,
            nats_port: free_port(),
            ads_port: free_port(),
            envoy_admin_port: free_port(),
            haproxy_address: IpAddr::from([127, 0, 0, 1]),
            envoy_address: IpAddr::from([127, 0, 0, 2]),
            bin_dir: portico_deploy::up::sibling_bin_dir(),
            client_cert: None,
            poll: Duration::from_millis(50),
            service_env: service_env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            replicas,
        };
        let stack = Stack::start(options).unwrap_or_else(|e| panic!("the stack did not start: {e}"));
        let local = LocalStack { stack, demo, dir };
        if local.stack.wait_applied(Duration::from_secs(60)).is_none() {
            panic!("the proxies did not apply the first model within 60 s\n{}", local.logs());
        }
        local
    }

    /// The HAProxy renderer's work directory (generations, `master.sock`, `haproxy.log`).
    pub fn haproxy_dir(&self) -> PathBuf {
        self.stack.options.state_dir.join("haproxy")
    }

    /// How many times HAProxy's master has reloaded, by its own count (`show proc`).
    pub fn haproxy_reloads(&self) -> u64 {
        portico_renderer_haproxy::apply::master_reloads(&self.haproxy_dir()).expect("HAProxy's master answers")
    }

    pub fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    /// Write a manifest file the way an editor saves it: a new file renamed into place.
    pub fn write(&self, name: &str, contents: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).expect("write");
        std::fs::rename(&tmp, self.manifests().join(name)).expect("rename");
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.manifests().join(name)).expect("remove");
    }

    pub fn address(&self, via: Via) -> SocketAddr {
        let o = &self.stack.options;
        SocketAddr::new(if via == Via::Haproxy { o.haproxy_address } else { o.envoy_address }, o.http_port)
    }

    /// Where Envoy `n` of a stack with several listens.
    /// Where a proxy serves HTTPS.
    pub fn https_address(&self, via: Via) -> SocketAddr {
        let o = &self.stack.options;
        SocketAddr::new(if via == Via::Haproxy { o.haproxy_address } else { o.envoy_address }, o.https_port)
    }

    pub fn envoy_address(&self, n: u8) -> SocketAddr {
        let o = &self.stack.options;
        SocketAddr::new(o.envoy_address_of(n), o.http_port)
    }

    pub fn get(&self, via: Via, host: &str, path: &str) -> std::io::Result<(u16, String)> {
        portico_testkit::http_get_at(self.address(via), host, path)
    }

    /// Wait until `via` answers `want` for host and path; how long it took, or a panic
    /// with every part's log.
    pub fn until(&self, via: Via, host: &str, path: &str, want: u16, limit: Duration) -> Duration {
        self.until_at(self.address(via), host, path, want, limit)
    }

    /// `until` for the proxy at `address`.
    pub fn until_at(&self, address: SocketAddr, host: &str, path: &str, want: u16, limit: Duration) -> Duration {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < limit {
            match portico_testkit::http_get_at(address, host, path) {
                Ok((status, _)) if status == want => return started.elapsed(),
                Ok((status, body)) => last = format!("{status} {body}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{address} never answered {want} for {host}{path} within {limit:?} (last: {last})\n{}", self.logs())
    }

    /// `until` on both proxies, in parallel; the time each took.
    pub fn until_both(&self, host: &str, path: &str, want: u16) -> [Duration; 2] {
        let limit = Duration::from_secs(30);
        std::thread::scope(|s| {
            let h = s.spawn(|| self.until(Via::Haproxy, host, path, want, limit));
            let e = s.spawn(|| self.until(Via::Envoy, host, path, want, limit));
            [h.join().expect("haproxy wait"), e.join().expect("envoy wait")]
        })
    }

    /// What the bus says (statuses, model, applied records), as the cli user reads it.
    pub fn report(&self) -> portico_deploy::status::Report {
        let bus = self.stack.bus(portico_deploy::nats_config::User::Cli);
        portico_deploy::up::runtime().block_on(async {
            let client = portico_bus::nats::connect(&bus).await.expect("connect as cli");
            let buckets = portico_deploy::status::open(&client).await.expect("open buckets");
            portico_deploy::status::collect(&buckets).await.expect("collect")
        })
    }

    /// Every part's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut parts = self.stack.options.parts();
        // A standby some tests start beside the stack.
        parts.push(Part::Resolver(1));
        parts.sort();
        parts.dedup();
        let mut out = String::new();
        for part in parts {
            let log = self.stack.log(part);
            if !log.is_empty() {
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                out.push_str(&format!("==== {} (last 40 lines)\n", part.name()));
                for line in tail.into_iter().rev() {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        // HAProxy's own words (its renderer starts it with this log).
        let haproxy = std::fs::read_to_string(self.haproxy_dir().join("haproxy.log")).unwrap_or_default();
        if !haproxy.is_empty() {
            out.push_str("==== haproxy (last 40 lines)\n");
            let tail: Vec<&str> = haproxy.lines().rev().take(40).collect();
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// An HTTPProxy with one route, `/step-<n>`, to the demo's web backend: each step replaces
/// the last, so an older configuration shows as a 404 for the current step's route.
pub fn steps(n: u64) -> String {
    format!(
        "apiVersion: projectcontour.io/v1
kind: HTTPProxy
metadata: {{name: steps, namespace: demo}}
spec:
  virtualhost: {{fqdn: steps.example.com}}
  routes:
  - conditions: [{{prefix: /step-{n}}}]
    services:
    - name: web
      port: 8443
      validation: {{caSecret: demo-ca, subjectName: web.demo.svc}}
"
    )
}

/// Applied model versions (epoch, generation) per proxy, as the cli user reads them.
pub fn applied(stack: &LocalStack) -> Vec<(String, portico_bus::Version)> {
    stack.report().applied.into_iter().map(|(k, a)| (k, a.version())).collect()
}

/// The Contour annotation that makes a `site`'s Service port TLS.
pub const UPSTREAM_TLS: &str = "projectcontour.io/upstream-protocol.tls: \"8443\"";

/// A site of its own: a Service `name` on port 8443 with `annotations`, whose one endpoint
/// is 127.0.0.1:`port` (one of the demo's backends), and an HTTPProxy `name`.example.com to
/// it with `validation` (YAML flow, or empty): a new cluster, endpoints and route at once.
pub fn site(name: &str, port: u16, annotations: &str, validation: &str) -> String {
    let validation = if validation.is_empty() { String::new() } else { format!(", validation: {validation}") };
    format!(
        "{}apiVersion: projectcontour.io/v1
kind: HTTPProxy
metadata: {{name: {name}, namespace: demo}}
spec:
  virtualhost: {{fqdn: {name}.example.com}}
  routes:
  - services: [{{name: {name}, port: 8443{validation}}}]
",
        service(name, "demo", annotations, port)
    )
}

/// A Service `name` in `namespace` on port 8443 with `annotations` (YAML flow, inside the
/// braces), and its EndpointSlice: one endpoint, 127.0.0.1:`port`. Each document ends
/// with `---`.
pub fn service(name: &str, namespace: &str, annotations: &str, port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}, annotations: {{{annotations}}}}}
spec: {{ports: [{{port: 8443}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: {namespace}, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{port: {port}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
---
"
    )
}

/// The changes to a cluster's TLS policy the propagation benchmark times (and
/// `tests/tls_policy.rs` checks): each flips a site
/// between serving (200) and refusing (not 200), so that each proxy's answer shows which
/// state it runs. `(what, file, host, the file's contents in each state)`.
pub fn tls_policy_flips(
    web_port: u16,
    demo_ca: &str,
    other_ca: &str,
) -> Vec<(&'static str, &'static str, &'static str, [String; 2])> {
    let secret = |ns: &str, name: &str, pem: &str| {
        let pem: String = pem.lines().map(|l| format!("    {l}\n")).collect();
        format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ntype: Opaque\nstringData:\n  ca.crt: |\n{pem}")
    };
    let validated = |name: &str, ca: &str, subject: &str| {
        site(name, web_port, UPSTREAM_TLS, &format!("{{caSecret: {ca}, subjectName: {subject}}}"))
    };
    let delegation = "apiVersion: projectcontour.io/v1
kind: TLSCertificateDelegation
metadata: {name: to-demo, namespace: bench-ca}
spec:
  delegations: [{secretName: ca, targetNamespaces: [demo]}]
";
    let delegated = |on: bool| {
        let mut out =
            format!("{}---\n{}", secret("bench-ca", "ca", demo_ca), validated("deleg", "bench-ca/ca", "web.demo.svc"));
        if on {
            out.push_str("---\n");
            out.push_str(delegation);
        }
        out
    };
    vec![
        (
            "a Service's TLS annotation (on / off)",
            "flip-annotation.yaml",
            "annot.example.com",
            [site("annot", web_port, UPSTREAM_TLS, ""), site("annot", web_port, "", "")],
        ),
        (
            "a CA secret rotated (the right CA / another)",
            "flip-ca.yaml",
            "rot.example.com",
            [
                format!("{}---\n{}", secret("demo", "rot-ca", demo_ca), validated("rot", "rot-ca", "web.demo.svc")),
                format!("{}---\n{}", secret("demo", "rot-ca", other_ca), validated("rot", "rot-ca", "web.demo.svc")),
            ],
        ),
        (
            "a subject name (the backend's / another)",
            "flip-subject.yaml",
            "subj.example.com",
            [validated("subj", "demo-ca", "web.demo.svc"), validated("subj", "demo-ca", "other.demo.svc")],
        ),
        (
            "a TLSCertificateDelegation (added / removed)",
            "flip-delegation.yaml",
            "deleg.example.com",
            [delegated(true), delegated(false)],
        ),
    ]
}

/// Wait until `via` shows `serving` (200) or not (any other answer) for `host`: how long
/// after the call the first request that showed it was sent. A request goes out every
/// 10 ms without waiting for the previous answers, because a refusal can be slow to come
/// back (HAProxy retries a failed TLS handshake three times, a second apart, before its
/// 503): timed by its answer, a change would look seconds slower than it reached the proxy.
pub fn until_state(stack: &LocalStack, via: Via, host: &str, serving: bool) -> Duration {
    use std::sync::{Arc, Mutex};
    let started = Instant::now();
    let address = stack.address(via);
    // (the earliest send time of a request that showed the state, the last other answer)
    let seen: Arc<Mutex<(Option<Duration>, String)>> = Arc::default();
    while started.elapsed() < Duration::from_secs(30) {
        if seen.lock().unwrap().0.is_some() {
            // Answers of one kind take about as long each: a request sent a little earlier
            // that shows the state too has answered by now, or within a moment.
            std::thread::sleep(Duration::from_millis(20));
            return seen.lock().unwrap().0.expect("seen above");
        }
        let (seen, host, sent) = (seen.clone(), host.to_owned(), started.elapsed());
        std::thread::spawn(move || {
            let answer = portico_testkit::http_get_at(address, &host, "/");
            let mut seen = seen.lock().unwrap();
            match answer {
                Ok((status, _)) if (status == 200) == serving => seen.0 = Some(seen.0.map_or(sent, |at| at.min(sent))),
                Ok((status, _)) => seen.1 = status.to_string(),
                Err(e) => seen.1 = e.to_string(),
            }
        });
        std::thread::sleep(Duration::from_millis(10));
    }
    let last = seen.lock().unwrap().1.clone();
    panic!("{via:?} never {} {host} (last: {last})\n{}", if serving { "served" } else { "refused" }, stack.logs())
}

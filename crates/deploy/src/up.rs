//! `portico up`: the whole stack as local processes. nats-server with JetStream and one
//! user per service, the five services, HAProxy (run by its renderer) and Envoy (configured
//! only by ADS). The end-to-end tests drive the same `Stack`, so what they prove is what a
//! newcomer runs.
//!
//! Layout of the state directory (default `.portico/`):
//! `nats/nats.conf` (0600, passwords), `nats/store/` (JetStream), `nats/url` and
//! `nats/cli.password` (0600; for `portico status`), `haproxy/` (the renderer's work directory), `envoy/`
//! (bootstrap), `logs/<part>.log`, and `manifests/demo.yaml` when the demo runs. A second
//! and further replica of a part has its files suffixed: `nats/nats-1.conf`,
//! `nats/store-1/`, `envoy/bootstrap-1.yaml`, `logs/secrets-1.log`.

use crate::nats_config::{self, User};
use portico_bus::nats::ConnectConfig;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Plain, documented configuration of a local stack.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where configuration, JetStream's store, HAProxy's files and the logs go.
    pub state_dir: PathBuf,
    /// Manifest files or directories the watcher reads.
    pub manifests: Vec<PathBuf>,
    /// The proxies' HTTP port (the model's default listener).
    pub http_port: u16,
    /// The proxies' HTTPS port: hosts with a certificate, chosen by SNI. Plain HTTP
    /// requests to those hosts are redirected here.
    pub https_port: u16,
    pub nats_port: u16,
    /// renderer-envoy's ADS port (on 127.0.0.1).
    pub ads_port: u16,
    pub envoy_admin_port: u16,
    /// HAProxy and Envoy listen on the same port, on different loopback addresses.
    pub haproxy_address: IpAddr,
    pub envoy_address: IpAddr,
    /// Where the `portico-*` service binaries are.
    pub bin_dir: PathBuf,
    pub client_cert: Option<portico_model::SecretRef>,
    /// The watcher's debounce (`--poll-ms`).
    pub poll: Duration,
    /// Extra environment for the service binaries (they inherit this process's, too):
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` and friends, say.
    pub service_env: Vec<(String, String)>,
    /// How many of each part run.
    pub replicas: Replicas,
}

/// How many of each part a local stack runs. `portico up` runs one of each, and a NATS
/// cluster with `--nats-cluster`; the tests run more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replicas {
    /// nats-servers. More than one form a cluster (routes on loopback), and every bucket
    /// has this many replicas (1 to 5; JetStream needs a majority of them up).
    pub nats: u8,
    /// Secrets services, side by side (each writes a verdict only if it differs).
    pub secrets: u8,
    /// Resolvers: one publishes (the lease), the others stand by.
    pub resolvers: u8,
    /// renderer-envoy replicas, each with an Envoy of its own: node `portico-local`,
    /// `portico-local-1`, ..., the n-th listening on `envoy_address` + n (IPv4).
    pub envoys: u8,
}

impl Default for Replicas {
    fn default() -> Self {
        Replicas { nats: 1, secrets: 1, resolvers: 1, envoys: 1 }
    }
}

impl Options {
    /// Every part this stack runs, in start order.
    pub fn parts(&self) -> Vec<Part> {
        let r = self.replicas;
        let mut parts: Vec<Part> = (0..r.nats).map(Part::Nats).collect();
        parts.push(Part::Watcher);
        parts.extend((0..r.secrets).map(Part::Secrets));
        parts.extend((0..r.resolvers).map(Part::Resolver));
        parts.push(Part::RendererHaproxy);
        parts.extend((0..r.envoys).map(Part::RendererEnvoy));
        parts.extend((0..r.envoys).map(Part::Envoy));
        parts
    }

    /// Where Envoy `n` listens: `envoy_address`, then the next IPv4 addresses.
    pub fn envoy_address_of(&self, n: u8) -> IpAddr {
        match self.envoy_address {
            IpAddr::V4(v4) if n > 0 => {
                let mut octets = v4.octets();
                octets[3] = octets[3].wrapping_add(n);
                IpAddr::from(octets)
            }
            address => address,
        }
    }
}

/// The parts of a local stack, in start order. The number is the replica: 0 is the one
/// `portico up` runs (`Options::parts` lists the others a stack runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    Nats(u8),
    Watcher,
    Secrets(u8),
    /// A resolver; one holds the lease.
    Resolver(u8),
    RendererHaproxy,
    RendererEnvoy(u8),
    /// The Envoy that `RendererEnvoy` with the same number configures.
    Envoy(u8),
}

/// `base` for replica 0, `base-<n>` for the others: names of logs, files and nodes.
fn indexed(base: &str, n: u8) -> String {
    if n == 0 {
        base.to_owned()
    } else {
        format!("{base}-{n}")
    }
}

impl Part {
    pub fn name(self) -> String {
        match self {
            Part::Nats(n) => indexed("nats-server", n),
            Part::Watcher => "watcher".into(),
            Part::Secrets(n) => indexed("secrets", n),
            Part::Resolver(n) => indexed("resolver", n),
            Part::RendererHaproxy => "renderer-haproxy".into(),
            Part::RendererEnvoy(n) => indexed("renderer-envoy", n),
            Part::Envoy(n) => indexed("envoy", n),
        }
    }
}

/// The Envoy node id of the stack's Envoy; its applied record is `envoy.<NODE>`.
pub const ENVOY_NODE: &str = "portico-local";

/// The node id of Envoy `n` (`ENVOY_NODE` for the first).
pub fn envoy_node(n: u8) -> String {
    indexed(ENVOY_NODE, n)
}
/// The HAProxy renderer's instance; its applied record is `haproxy.<INSTANCE>`.
pub const HAPROXY_INSTANCE: &str = "local";

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the state directory {0} must be an absolute path of plain characters (letters, digits and -._/+): its paths go into NATS's and Envoy's configuration; choose another with --state-dir or PORTICO_STATE_DIR")]
    StateDirUnusable(PathBuf),
    #[error("{binary} not found in {dir}: build the services first (cargo build --release --workspace --all-features --bins)")]
    BinaryMissing { binary: String, dir: PathBuf },
    #[error("{program} could not be started: {reason}; scripts/setup.sh installs it")]
    SpawnFailed { program: String, reason: String },
    #[error("{part} exited during start-up ({status}); see {log}")]
    Exited { part: String, status: String, log: PathBuf },
    #[error("nats-server did not accept connections on port {0} within 20 s; see its log")]
    NatsNotListening(u16),
    #[error("{0}")]
    Replicas(String),
    #[error("{what} {address} is in use (is another `portico up` running?); choose another with {flag}")]
    PortInUse { what: &'static str, address: std::net::SocketAddr, flag: &'static str },
    #[error("creating the buckets: {0}")]
    Buckets(String),
    #[error("interrupted during start-up; everything started so far was stopped")]
    Interrupted,
}

/// Set once SIGINT or SIGTERM arrives. Installing it replaces the default (die at once)
/// with a flag that start-up and supervision check, so that whatever was started is
/// stopped, at any moment.
pub fn interrupt_flag() -> Arc<AtomicBool> {
    use tokio::signal::unix::{signal, SignalKind};
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    runtime().block_on(async {
        // Registered here, before anything starts; awaited in the background.
        let mut interrupt = signal(SignalKind::interrupt()).expect("a SIGINT handler");
        let mut terminate = signal(SignalKind::terminate()).expect("a SIGTERM handler");
        runtime().spawn(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            set.store(true, Ordering::SeqCst);
        });
    });
    flag
}

/// What `Stack::wait_applied` saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Both proxies run this generation of the model on the bus.
    Generation(u64),
    /// Nothing moved (no new model, no new applied record) for the whole quiet limit.
    Stalled,
    Interrupted,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> UpError + '_ {
    move |source| UpError::Io { path: path.to_owned(), source }
}

fn write_private(path: &Path, contents: &str) -> Result<(), UpError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io(path))?;
    file.write_all(contents.as_bytes()).map_err(io(path))
}

/// A port that is free now on each of `addresses`, chosen at random below Linux's
/// ephemeral range (32768 and up), so that no outgoing connection can take it between now
/// and the moment its process binds it. One process never hands out a port twice (stacks
/// started side by side in one test binary); across processes the bind check catches most
/// collisions.
pub fn pick_port(addresses: &[IpAddr]) -> std::io::Result<u16> {
    use std::io::Read;
    // Never the same port twice in one process: stacks started side by side (the tests
    // start several at once) pick before any of them binds, and a port free for both
    // would then be taken by one and refused to the other (a part exiting at start-up).
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut random = [0u8; 256];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
    for pair in random.chunks(2) {
        let port = 20_000 + (u16::from_le_bytes([pair[0], pair[1]]) % 12_000);
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed_out.contains(&port) {
            continue;
        }
        if addresses.iter().all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok()) {
            handed_out.insert(port);
            return Ok(port);
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "no free port found in 20000-31999"))
}

/// The directory of the running executable, or of the package's binaries when it is a test
/// (`target/<profile>/deps/<test>` → `target/<profile>`).
pub fn sibling_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

/// A local stack. Dropping it stops every part (SIGTERM, then SIGKILL after 5 s).
pub struct Stack {
    pub options: Options,
    passwords: BTreeMap<User, String>,
    children: BTreeMap<Part, Child>,
    /// Each service's admin port (/healthz, /readyz, /metrics) on 127.0.0.1.
    admin_ports: BTreeMap<Part, u16>,
    ports: ReplicaPorts,
}

/// The ports of each replica, the first from `Options`, the others chosen at start.
#[derive(Debug, Default)]
struct ReplicaPorts {
    /// nats-servers' client ports.
    nats: Vec<u16>,
    /// nats-servers' route ports (a cluster only).
    routes: Vec<u16>,
    /// renderer-envoys' ADS ports.
    ads: Vec<u16>,
    /// Envoys' admin ports.
    envoy_admin: Vec<u16>,
}

impl ReplicaPorts {
    fn choose(o: &Options) -> Result<ReplicaPorts, UpError> {
        let loopback = [IpAddr::from([127, 0, 0, 1])];
        let picked = |count: u8| -> Result<Vec<u16>, UpError> {
            (0..count).map(|_| pick_port(&loopback).map_err(io(Path::new("127.0.0.1")))).collect()
        };
        // The first of each from the options, the others picked.
        let first_and = |first: u16, count: u8| -> Result<Vec<u16>, UpError> {
            Ok(std::iter::once(first).chain(picked(count.saturating_sub(1))?).collect())
        };
        let r = o.replicas;
        Ok(ReplicaPorts {
            nats: first_and(o.nats_port, r.nats)?,
            routes: if r.nats > 1 { picked(r.nats)? } else { Vec::new() },
            ads: first_and(o.ads_port, r.envoys)?,
            envoy_admin: first_and(o.envoy_admin_port, r.envoys)?,
        })
    }

    /// Every nats-server's URL, comma-separated: what a client is given to fail over.
    fn nats_urls(&self) -> String {
        self.nats.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }
}

impl Stack {
    /// Write the configuration and start nats-server, the buckets, the five services and
    /// Envoy. Returns once every process runs; `wait_applied` tells when the proxies serve.
    pub fn start(options: Options) -> Result<Stack, UpError> {
        Stack::start_interruptible(options, &AtomicBool::new(false))
    }

    /// `start`, giving up as soon as `interrupted` is set: what was started so far is
    /// stopped (the partial stack is dropped), and `UpError::Interrupted` returned.
    pub fn start_interruptible(options: Options, interrupted: &AtomicBool) -> Result<Stack, UpError> {
        let check = || if interrupted.load(Ordering::SeqCst) { Err(UpError::Interrupted) } else { Ok(()) };
        let state = &options.state_dir;
        // The paths go into Envoy's bootstrap and NATS's configuration: the file-path grammar.
        let plain = |p: &Path| p.to_str().is_some_and(|s| s.parse::<portico_model::AbsPath>().is_ok());
        if !plain(state) {
            return Err(UpError::StateDirUnusable(state.clone()));
        }
        let r = options.replicas;
        if !(1..=5).contains(&r.nats) || r.secrets == 0 || r.resolvers == 0 || r.envoys == 0 {
            return Err(UpError::Replicas(format!(
                "a stack runs 1 to 5 nats-servers and at least one of each service, not {r:?}; choose --nats-cluster 1 to 5"
            )));
        }
        let loopback = IpAddr::from([127, 0, 0, 1]);
        for n in 1..r.envoys {
            for (port, flag) in [(options.http_port, "--http-port"), (options.https_port, "--https-port")] {
                let address = std::net::SocketAddr::new(options.envoy_address_of(n), port);
                if std::net::TcpListener::bind(address).is_err() {
                    return Err(UpError::PortInUse { what: "another Envoy's port", address, flag });
                }
            }
        }
        if options.https_port == options.http_port {
            return Err(UpError::PortInUse {
                what: "the HTTP port (HTTPS needs its own)",
                address: std::net::SocketAddr::new(options.haproxy_address, options.https_port),
                flag: "--https-port",
            });
        }
        for (what, ip, port, flag) in [
            ("NATS's port", loopback, options.nats_port, "--nats-port"),
            ("HAProxy's port", options.haproxy_address, options.http_port, "--http-port"),
            ("Envoy's port", options.envoy_address, options.http_port, "--http-port"),
            ("HAProxy's HTTPS port", options.haproxy_address, options.https_port, "--https-port"),
            ("Envoy's HTTPS port", options.envoy_address, options.https_port, "--https-port"),
            ("the ADS port", loopback, options.ads_port, "--ads-port"),
            ("Envoy's admin port", loopback, options.envoy_admin_port, "--envoy-admin-port"),
        ] {
            let address = std::net::SocketAddr::new(ip, port);
            if std::net::TcpListener::bind(address).is_err() {
                return Err(UpError::PortInUse { what, address, flag });
            }
        }
        for dir in ["nats", "logs", "envoy", "ads"] {
            std::fs::create_dir_all(state.join(dir)).map_err(io(&state.join(dir)))?;
        }
        // A fresh bus and a fresh HAProxy directory for every `up`: all of it is derived.
        let mut stale: Vec<PathBuf> = (0..5).map(|n| nats_store(state, n)).collect();
        stale.push(state.join("haproxy"));
        for stale in stale {
            if stale.exists() {
                std::fs::remove_dir_all(&stale).map_err(io(&stale))?;
            }
        }
        let ports = ReplicaPorts::choose(&options)?;
        let mut passwords = BTreeMap::new();
        for user in User::ALL {
            passwords.insert(user, nats_config::password().map_err(io(Path::new("/dev/urandom")))?);
        }
        let listed: Vec<(User, String)> = passwords.iter().map(|(u, p)| (*u, p.clone())).collect();
        let route_password = nats_config::password().map_err(io(Path::new("/dev/urandom")))?;
        for n in 0..r.nats {
            let peer = nats_config::ClusterPeer {
                index: usize::from(n),
                route_ports: &ports.routes,
                route_password: &route_password,
            };
            let conf = nats_config::render(
                ports.nats[usize::from(n)],
                &nats_store(state, n),
                &listed,
                (r.nats > 1).then_some(&peer),
            );
            write_private(&nats_conf(state, n), &conf)?;
        }
        write_private(&state.join("nats/cli.password"), &passwords[&User::Cli])?;
        let url = state.join("nats/url");
        std::fs::write(&url, format!("{}\n", ports.nats_urls())).map_err(io(&url))?;
        write_ads_pki(&state.join("ads"), r.envoys)?;
        for n in 0..r.envoys {
            let bootstrap = state.join("envoy").join(format!("{}.yaml", indexed("bootstrap", n)));
            let yaml = envoy_bootstrap(&options, n, ports.ads[usize::from(n)], ports.envoy_admin[usize::from(n)])?;
            std::fs::write(&bootstrap, yaml).map_err(io(&bootstrap))?;
        }

        check()?;
        let parts = options.parts();
        let mut stack = Stack { options, passwords, children: BTreeMap::new(), admin_ports: BTreeMap::new(), ports };
        for part in parts.iter().filter(|p| matches!(p, Part::Nats(_))) {
            check()?;
            stack.spawn(*part)?;
        }
        check()?;
        stack.create_buckets(interrupted)?;
        for part in parts.into_iter().filter(|p| !matches!(p, Part::Nats(_))) {
            check()?;
            stack.spawn(part)?;
        }
        std::thread::sleep(Duration::from_millis(200));
        check()?;
        stack.check_running()?;
        Ok(stack)
    }

    /// How a user of this stack connects to NATS.
    pub fn bus(&self, user: User) -> ConnectConfig {
        ConnectConfig {
            url: self.ports.nats_urls(),
            name: format!("portico-{}", user.name()),
            user_password: Some((user.name().to_owned(), self.passwords[&user].clone())),
            replicas: usize::from(self.options.replicas.nats),
            ..Default::default()
        }
    }

    /// nats-server `n`'s client port.
    pub fn nats_port(&self, n: u8) -> u16 {
        self.ports.nats[usize::from(n)]
    }

    pub fn log_path(&self, part: Part) -> PathBuf {
        self.options.state_dir.join("logs").join(format!("{}.log", part.name()))
    }

    /// A part's log so far.
    pub fn log(&self, part: Part) -> String {
        std::fs::read_to_string(self.log_path(part)).unwrap_or_default()
    }

    fn binary(&self, name: &str) -> Result<PathBuf, UpError> {
        let path = self.options.bin_dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(UpError::BinaryMissing { binary: name.to_owned(), dir: self.options.bin_dir.clone() })
        }
    }

    /// A service's admin port (chosen when it is first started).
    pub fn admin_port(&self, part: Part) -> Option<u16> {
        self.admin_ports.get(&part).copied()
    }

    fn command(&mut self, part: Part) -> Result<Command, UpError> {
        if !matches!(part, Part::Nats(_) | Part::Envoy(_)) && !self.admin_ports.contains_key(&part) {
            let port = pick_port(&[IpAddr::from([127, 0, 0, 1])]).map_err(io(Path::new("127.0.0.1")))?;
            self.admin_ports.insert(part, port);
        }
        let admin = self.admin_ports.get(&part).map(|p| format!("127.0.0.1:{p}")).unwrap_or_default();
        let o = &self.options;
        let service = |binary: &str, user: User| -> Result<Command, UpError> {
            let mut command = Command::new(self.binary(binary)?);
            command
                .env("PORTICO_NATS_URL", self.ports.nats_urls())
                .env("PORTICO_NATS_REPLICAS", o.replicas.nats.to_string())
                .env("PORTICO_NATS_USER", user.name())
                .env("PORTICO_NATS_PASSWORD", &self.passwords[&user])
                .env("PORTICO_ADMIN_LISTEN", &admin)
                .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
                .envs(o.service_env.iter().map(|(k, v)| (k, v)));
            Ok(command)
        };
        let http_port = o.http_port.to_string();
        let https_port = o.https_port.to_string();
        Ok(match part {
            Part::Nats(n) => {
                let mut command = Command::new("nats-server");
                command.arg("-c").arg(nats_conf(&o.state_dir, n));
                command
            }
            Part::Watcher => {
                let mut command = service("portico-watcher", User::Watcher)?;
                command.args(&o.manifests).arg("--poll-ms").arg(o.poll.as_millis().to_string());
                command
            }
            Part::Secrets(_) => service("portico-secrets", User::Secrets)?,
            Part::Resolver(_) => {
                let mut command = service("portico-resolver", User::Resolver)?;
                // Clients reach the proxies' HTTPS port directly: redirects name it.
                command.args(["--http-port", &http_port, "--instance", &part.name()]).args([
                    "--https-port",
                    &https_port,
                    "--https-redirect-port",
                    &https_port,
                ]);
                if let Some(cert) = &o.client_cert {
                    command.arg("--client-cert").arg(format!("{}/{}", cert.namespace, cert.name));
                }
                command
            }
            Part::RendererHaproxy => {
                let mut command = service("portico-renderer-haproxy", User::RendererHaproxy)?;
                command
                    .arg("--work-dir")
                    .arg(o.state_dir.join("haproxy"))
                    .args(["--http-port", &http_port, "--https-port", &https_port, "--instance", HAPROXY_INSTANCE])
                    .arg("--bind-address")
                    .arg(o.haproxy_address.to_string());
                command
            }
            Part::RendererEnvoy(n) => {
                let mut command = service("portico-renderer-envoy", User::RendererEnvoy)?;
                let ads = o.state_dir.join("ads");
                command
                    .arg("--listen")
                    .arg(format!("127.0.0.1:{}", self.ports.ads[usize::from(n)]))
                    .arg("--tls-cert")
                    .arg(ads.join("server.crt"))
                    .arg("--tls-key")
                    .arg(ads.join("server.key"))
                    .arg("--client-ca")
                    .arg(ads.join("ca.pem"))
                    .args(["--http-port", &http_port])
                    .arg("--bind-address")
                    .arg(o.envoy_address_of(n).to_string());
                command
            }
            Part::Envoy(n) => {
                let mut command = Command::new("envoy");
                command
                    .arg("-c")
                    .arg(o.state_dir.join("envoy").join(format!("{}.yaml", indexed("bootstrap", n))))
                    .args(["--use-dynamic-base-id", "--log-level", "warning"]);
                command
            }
        })
    }

    /// Start one part (its log is appended to).
    pub fn spawn(&mut self, part: Part) -> Result<(), UpError> {
        let mut command = self.command(part)?;
        let path = self.log_path(part);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
        let child =
            command.stdin(Stdio::null()).stdout(log.try_clone().map_err(io(&path))?).stderr(log).spawn().map_err(
                |e| UpError::SpawnFailed {
                    program: command.get_program().to_string_lossy().into_owned(),
                    reason: e.to_string(),
                },
            )?;
        self.children.insert(part, child);
        if let Part::Nats(n) = part {
            let port = self.nats_port(n);
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                self.check_running()?;
                if Instant::now() > deadline {
                    return Err(UpError::NatsNotListening(port));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Stop one part: SIGTERM (`kill: false`) and wait, or SIGKILL, as a crash would.
    pub fn stop(&mut self, part: Part, kill: bool) {
        if let Some(mut child) = self.children.remove(&part) {
            terminate(&mut child, kill);
        }
    }

    /// Kill nats-server `n`, delete its JetStream store (a lost volume), and start it
    /// again: on a single server everything on the bus is gone, and the services must
    /// rebuild it; in a cluster the server catches up from the others.
    pub fn restart_nats_wiped(&mut self, n: u8) -> Result<(), UpError> {
        self.stop(Part::Nats(n), true);
        let store = nats_store(&self.options.state_dir, n);
        if store.exists() {
            std::fs::remove_dir_all(&store).map_err(io(&store))?;
        }
        self.spawn(Part::Nats(n))
    }

    /// Stop and start one part again.
    pub fn restart(&mut self, part: Part, kill: bool) -> Result<(), UpError> {
        self.stop(part, kill);
        self.spawn(part)
    }

    /// A running part's process id.
    pub fn pid(&self, part: Part) -> Option<u32> {
        self.children.get(&part).map(Child::id)
    }

    /// Start again every part that has exited.
    pub fn restart_exited(&mut self) {
        let exited: Vec<Part> =
            self.children.iter_mut().filter_map(|(p, c)| matches!(c.try_wait(), Ok(Some(_))).then_some(*p)).collect();
        for part in exited {
            self.children.remove(&part);
            if let Err(e) = self.spawn(part) {
                eprintln!("portico: {e}");
            }
        }
    }

    /// An error for the first part that has exited.
    pub fn check_running(&mut self) -> Result<(), UpError> {
        for (part, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                let part = *part;
                return Err(UpError::Exited {
                    part: part.name(),
                    status: status.to_string(),
                    log: self.log_path(part),
                });
            }
        }
        Ok(())
    }

    /// Create the buckets. A cluster first elects its JetStream leader (a few seconds), so
    /// failures are retried for 30 s; the last one is the error.
    fn create_buckets(&self, interrupted: &AtomicBool) -> Result<(), UpError> {
        let bus = self.bus(User::Admin);
        runtime().block_on(async {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let attempt = async {
                    let client = portico_bus::nats::connect(&bus).await.map_err(|e| e.to_string())?;
                    let js = async_nats::jetstream::new(client);
                    portico_bus::nats::ensure_buckets_replicated(&js, bus.replicas).await.map_err(|e| e.to_string())
                };
                match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(e)) if Instant::now() > deadline => return Err(UpError::Buckets(e)),
                    Err(_) if Instant::now() > deadline => return Err(UpError::Buckets("timed out".into())),
                    _ if interrupted.load(Ordering::SeqCst) => return Err(UpError::Interrupted),
                    _ => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        })
    }

    /// Wait until both proxies have applied the model generation on the bus (without
    /// error) and return it; `None` after `limit`.
    pub fn wait_applied(&self, limit: Duration) -> Option<u64> {
        match self.wait_applied_while_moving(limit, &AtomicBool::new(false)) {
            Applied::Generation(g) => Some(g),
            Applied::Stalled | Applied::Interrupted => None,
        }
    }

    /// Wait until both proxies have applied the model generation on the bus (without
    /// error). The limit follows the work: it is how long nothing may move (no new model,
    /// no new applied record), so a world of 10,000 routes that takes a minute to load is
    /// waited for, and a stack that is stuck is not.
    pub fn wait_applied_while_moving(&self, quiet_limit: Duration, interrupted: &AtomicBool) -> Applied {
        let bus = self.bus(User::Cli);
        runtime().block_on(async {
            let mut deadline = Instant::now() + quiet_limit;
            let mut last_seen = None;
            let mut buckets = None;
            while Instant::now() < deadline {
                if interrupted.load(Ordering::SeqCst) {
                    return Applied::Interrupted;
                }
                if buckets.is_none() {
                    let open = async {
                        let client = portico_bus::nats::connect(&bus).await.ok()?;
                        crate::status::open(&client).await.ok()
                    };
                    buckets = tokio::time::timeout(Duration::from_secs(5), open).await.ok().flatten();
                }
                let report = match &buckets {
                    Some(b) => tokio::time::timeout(Duration::from_secs(5), crate::status::collect(b)).await.ok(),
                    None => None,
                };
                if let Some(report) = report.and_then(Result::ok) {
                    if let Some(model) = &report.model {
                        let applied = |key: &str| {
                            report.applied.get(key).is_some_and(|a| a.version() == model.0 && a.error.is_none())
                        };
                        let envoys =
                            (0..self.options.replicas.envoys).all(|n| applied(&format!("envoy.{}", envoy_node(n))));
                        if applied(&format!("haproxy.{HAPROXY_INSTANCE}")) && envoys {
                            return Applied::Generation(model.0.generation);
                        }
                    }
                    let seen = (
                        report.model.as_ref().map(|m| m.0),
                        report.applied.values().map(|a| (a.version(), a.at_unix_ms)).collect::<Vec<_>>(),
                        report.statuses.len(),
                    );
                    if last_seen.as_ref() != Some(&seen) {
                        last_seen = Some(seen);
                        deadline = Instant::now() + quiet_limit;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Applied::Stalled
        })
    }

    /// Supervise until `interrupted` is set: a part that exits is reported and started
    /// again.
    pub fn supervise(&mut self, interrupted: &AtomicBool) {
        while !interrupted.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
            if let Err(e) = self.check_running() {
                eprintln!("portico: {e}; starting it again");
                if let UpError::Exited { .. } = e {
                    self.restart_exited();
                }
            }
        }
    }
}

fn terminate(child: &mut Child, kill: bool) {
    if kill {
        let _ = child.kill();
    } else {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Reverse start order: proxies first, NATS last.
        while let Some((_, mut child)) = self.children.pop_last() {
            terminate(&mut child, false);
        }
        // An HAProxy whose renderer was killed outlives it; stop it through its pid.
        if let Some(pid) = portico_renderer_haproxy::apply::running_master(&self.options.state_dir.join("haproxy")) {
            // SAFETY: kill(2) with the pid the master reported on its own socket.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
    }
}

/// nats-server `n`'s configuration file.
fn nats_conf(state_dir: &Path, n: u8) -> PathBuf {
    state_dir.join("nats").join(format!("{}.conf", indexed("nats", n)))
}

/// nats-server `n`'s JetStream store.
fn nats_store(state_dir: &Path, n: u8) -> PathBuf {
    state_dir.join("nats").join(indexed("store", n))
}

/// How `portico status` reaches the bus of a stack started in `state_dir`.
pub fn cli_bus(state_dir: &Path) -> Result<ConnectConfig, UpError> {
    let read = |name: &str| {
        let path = state_dir.join("nats").join(name);
        std::fs::read_to_string(&path).map(|s| s.trim().to_owned()).map_err(io(&path))
    };
    Ok(ConnectConfig {
        url: read("url")?,
        name: "portico-status".into(),
        user_password: Some((User::Cli.name().to_owned(), read("cli.password")?)),
        ..Default::default()
    })
}

/// A runtime for the few async calls `up` makes (bucket setup, status).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a tokio runtime")
    })
}

/// The name renderer-envoy's ADS certificate carries, which Envoy checks.
pub const ADS_SERVER_NAME: &str = "ads.portico";

/// The ADS port's mutual TLS, made afresh at every `up` (like the NATS passwords): a CA,
/// renderer-envoy's certificate, and each local Envoy's, which names its node id. Keys are
/// readable by the owner only.
fn write_ads_pki(dir: &Path, envoys: u8) -> Result<(), UpError> {
    let ca = crate::demo::TestCa::new("portico up ADS CA");
    let mut issued = vec![("server".to_owned(), ca.server(&[ADS_SERVER_NAME]))];
    for n in 0..envoys {
        issued.push((indexed("envoy", n), ca.client_named(&envoy_node(n))));
    }
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, &ca.pem).map_err(io(&ca_path))?;
    for (name, issued) in &issued {
        let cert = dir.join(format!("{name}.crt"));
        std::fs::write(&cert, &issued.cert_pem).map_err(io(&cert))?;
        write_private(&dir.join(format!("{name}.key")), &issued.key_pem)?;
    }
    Ok(())
}

/// Envoy `n`'s bootstrap: its node id, its admin port, and ADS (over mutual TLS, with the
/// certificates `write_ads_pki` made) as the only source of config.
fn envoy_bootstrap(o: &Options, n: u8, ads_port: u16, admin_port: u16) -> Result<String, UpError> {
    let ads = std::net::SocketAddr::new(IpAddr::from([127, 0, 0, 1]), ads_port);
    let dir = o.state_dir.join("ads");
    let path = |name: &str| {
        dir.join(name)
            .to_str()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| UpError::StateDirUnusable(o.state_dir.clone()))
    };
    let tls = portico_renderer_envoy::AdsClientTls {
        ca: path("ca.pem")?,
        cert: path(&format!("{}.crt", indexed("envoy", n)))?,
        key: path(&format!("{}.key", indexed("envoy", n)))?,
        server_name: ADS_SERVER_NAME.parse().expect("a DNS name"),
    };
    Ok(format!(
        "# Written by `portico up`: everything else comes from renderer-envoy over ADS.\n{}",
        portico_renderer_envoy::ads_bootstrap_with(
            &envoy_node(n),
            admin_port,
            ads,
            portico_renderer_envoy::AdsApi::Delta,
            Some(&tls)
        )
    ))
}

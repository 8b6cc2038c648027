//! The nats-server configuration `portico up` writes: JetStream, and one user per service
//! whose subject permissions follow the bus contract, so that only the secrets service
//! (and the watcher, which writes them) reads raw Secrets and only the renderers (and the
//! secrets service, which writes it) read trust material.
//!
//! How JetStream maps onto subjects: a key-value bucket `B` is the stream `KV_B` with the
//! subjects `$KV.B.<key>`; the object store `O` is the stream `OBJ_O` with `$O.O.>`.
//! Reading a stream means creating a consumer on it (or a direct get), and its messages
//! are delivered to the reader's inbox. Every user gets its own inbox prefix
//! (`_INBOX_<user>`, see `portico_bus::nats::inbox_prefix`) and may subscribe to nothing
//! else, so nobody can listen in on another service's deliveries or on the raw subjects.

use portico_bus::names;
use std::fmt::Write;

/// A service's NATS user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum User {
    Watcher,
    Secrets,
    Resolver,
    RendererHaproxy,
    RendererEnvoy,
    /// `portico status`: statuses, the model record and applied records.
    Cli,
    /// `portico up` itself, creating the buckets before the services start.
    Admin,
}

impl User {
    pub const ALL: [User; 7] = [
        User::Watcher,
        User::Secrets,
        User::Resolver,
        User::RendererHaproxy,
        User::RendererEnvoy,
        User::Cli,
        User::Admin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            User::Watcher => "watcher",
            User::Secrets => "secrets",
            User::Resolver => "resolver",
            User::RendererHaproxy => "renderer-haproxy",
            User::RendererEnvoy => "renderer-envoy",
            User::Cli => "cli",
            User::Admin => "admin",
        }
    }

    /// The buckets this user reads, writes and may create (a memory-stored bucket is
    /// recreated by its writer after a NATS restart). Creating is limited to the owner
    /// because whoever creates a stream chooses its subjects.
    fn access(self) -> Access {
        use names::*;
        let (reads, writes): (&[&str], &[&str]) = match self {
            User::Watcher => (&[OBJECTS, SECRETS, STATUS], &[OBJECTS, SECRETS]),
            User::Secrets => (&[SECRETS, VERDICTS, TRUST], &[VERDICTS, TRUST]),
            User::Resolver => (&[OBJECTS, VERDICTS, MODEL, LEASES], &[MODEL, STATUS, LEASES]),
            User::RendererHaproxy | User::RendererEnvoy => (&[MODEL, TRUST, APPLIED], &[APPLIED]),
            User::Cli => (&[STATUS, MODEL, APPLIED, LEASES], &[]),
            User::Admin => (&[], &[]),
        };
        let store: (bool, bool) = match self {
            User::Resolver => (true, true),
            User::RendererHaproxy | User::RendererEnvoy | User::Cli => (true, false),
            _ => (false, false),
        };
        Access { reads, writes, reads_model_store: store.0, writes_model_store: store.1 }
    }
}

struct Access {
    reads: &'static [&'static str],
    writes: &'static [&'static str],
    reads_model_store: bool,
    writes_model_store: bool,
}

/// What reading a stream takes: consumers on it, direct and stream gets, flow control.
fn read_stream(stream: &str, out: &mut Vec<String>) {
    for subject in [
        "$JS.API.CONSUMER.CREATE.{s}",
        "$JS.API.CONSUMER.CREATE.{s}.>",
        "$JS.API.CONSUMER.DELETE.{s}.>",
        "$JS.API.CONSUMER.INFO.{s}.>",
        "$JS.API.DIRECT.GET.{s}",
        "$JS.API.DIRECT.GET.{s}.>",
        "$JS.API.STREAM.MSG.GET.{s}",
        "$JS.FC.{s}.>",
        "$JS.ACK.{s}.>",
    ] {
        out.push(subject.replace("{s}", stream));
    }
}

/// The subjects a user may publish to.
pub fn publish_allow(user: User) -> Vec<String> {
    if user == User::Admin {
        return vec![">".into()];
    }
    // Stream metadata (never contents) for opening buckets, and the account info.
    let mut out = vec!["$JS.API.INFO".to_owned(), "$JS.API.STREAM.INFO.*".to_owned()];
    let access = user.access();
    for bucket in access.reads {
        read_stream(&format!("KV_{bucket}"), &mut out);
    }
    for bucket in access.writes {
        out.push(format!("$KV.{bucket}.>"));
        out.push(format!("$JS.API.STREAM.CREATE.KV_{bucket}"));
    }
    let store = names::MODEL_STORE;
    if access.reads_model_store {
        read_stream(&format!("OBJ_{store}"), &mut out);
    }
    if access.writes_model_store {
        out.push(format!("$O.{store}.>"));
        out.push(format!("$JS.API.STREAM.CREATE.OBJ_{store}"));
        out.push(format!("$JS.API.STREAM.PURGE.OBJ_{store}"));
    }
    out
}

/// The subjects a user may subscribe to: its own inbox, and the announcements of stream
/// leader elections (names only, no contents), which tell a service at once that a NATS
/// server of a cluster was lost and its watches must start over.
pub fn subscribe_allow(user: User) -> Vec<String> {
    vec![format!("{}.>", portico_bus::nats::inbox_prefix(user.name())), portico_bus::nats::LEADER_ELECTED.to_owned()]
}

/// A password: 24 random bytes from the kernel, hex. Only the config file and the
/// services' environment hold it.
pub fn password() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(portico_model::hex(&bytes))
}

fn quoted(items: &[String]) -> String {
    // Subjects and passwords are ours (bucket names, hex), never a user's string; quoting
    // keeps `$` from being read as a variable.
    items.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ")
}

/// The `users` entries of the authorization block; `password` gives each user's password
/// as it stands in the file (a quoted literal, or a `$VARIABLE` reference).
fn users(s: &mut String, users: &[User], password: impl Fn(User) -> String) {
    let _ = writeln!(s, "authorization {{\n  users: [");
    for user in users {
        let _ = writeln!(
            s,
            "    {{ user: \"{}\", password: {},\n      permissions: {{\n        publish: {{ allow: [{}] }},\n        subscribe: {{ allow: [{}] }}\n      }} }}",
            user.name(),
            password(*user),
            quoted(&publish_allow(*user)),
            quoted(&subscribe_allow(*user)),
        );
    }
    let _ = writeln!(s, "  ]\n}}");
}

/// A server's place in a local cluster (`portico up --nats-cluster N`).
#[derive(Clone, Debug)]
pub struct ClusterPeer<'a> {
    /// This server's index (its name is `portico-<index>`).
    pub index: usize,
    /// Every server's route port on 127.0.0.1, in index order.
    pub route_ports: &'a [u16],
    /// The routes' shared password (hex, ours): another local process cannot join the
    /// cluster and read every message past the users' permissions.
    pub route_password: &'a str,
}

/// The name of the user the servers' routes log in as.
pub const ROUTE_USER: &str = "route";

/// The configuration file of a single server (`cluster: None`) or of one member of a
/// local cluster.
pub fn render(
    port: u16,
    store_dir: &std::path::Path,
    passwords: &[(User, String)],
    cluster: Option<&ClusterPeer>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Written by `portico up`; regenerated (with new passwords) on every start.");
    let _ = writeln!(s, "listen: \"127.0.0.1:{port}\"");
    match cluster {
        None => {
            let _ = writeln!(s, "server_name: portico");
        }
        Some(peer) => {
            let _ = writeln!(s, "server_name: portico-{}", peer.index);
            let routes: Vec<String> = peer
                .route_ports
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != peer.index)
                .map(|(_, p)| format!("nats://{ROUTE_USER}:{}@127.0.0.1:{p}", peer.route_password))
                .collect();
            let _ = writeln!(
                s,
                "cluster {{\n  name: portico\n  listen: \"127.0.0.1:{}\"\n  authorization {{ user: \"{ROUTE_USER}\", password: \"{}\" }}\n  routes: [{}]\n}}",
                peer.route_ports[peer.index],
                peer.route_password,
                quoted(&routes),
            );
        }
    }
    let _ = writeln!(s, "jetstream {{ store_dir: \"{}\" }}", store_dir.display());
    let listed: Vec<User> = passwords.iter().map(|(u, _)| *u).collect();
    users(&mut s, &listed, |user| {
        let password = &passwords.iter().find(|(u, _)| *u == user).expect("listed").1;
        format!("\"{password}\"")
    });
    s
}

/// The services that run in Kubernetes, each with its own NATS user there.
pub const KUBERNETES_USERS: [User; 5] =
    [User::Watcher, User::Secrets, User::Resolver, User::RendererHaproxy, User::RendererEnvoy];

/// The key of `user`'s password in the Kubernetes Secret `portico-nats-users` (which
/// `portico nats-credentials` creates), and the variable nats-server reads it from.
pub fn kubernetes_password_variable(user: User) -> String {
    format!("PASSWORD_{}", user.name().to_uppercase().replace('-', "_"))
}

/// How many NATS servers `deploy/kubernetes/nats.yaml` runs, and so the replicas of every
/// bucket there.
pub const KUBERNETES_NATS_SERVERS: usize = 3;

/// The route URL of StatefulSet pod `i` (`nats-<i>`, through the headless Service `nats`,
/// in the pods' own namespace).
pub fn kubernetes_route(i: usize) -> String {
    format!("nats://nats-{i}.nats:6222")
}

/// What the services' `PORTICO_NATS_URL` is in `deploy/kubernetes`: every server's client
/// URL, so that a client fails over when its server goes.
pub fn kubernetes_client_urls() -> String {
    (0..KUBERNETES_NATS_SERVERS).map(|i| format!("nats://nats-{i}.nats:4222")).collect::<Vec<_>>().join(",")
}

/// `nats.conf` of `deploy/kubernetes/nats.yaml`: the same users and permissions as
/// `portico up`'s, with each password read from the environment, which the StatefulSet
/// fills from the Secret. Every service creates the buckets it owns (there is no admin).
/// The servers form one JetStream cluster over routes between the StatefulSet's pods;
/// only those pods reach the route port (the NetworkPolicy in nats.yaml). The server name
/// is the pod's (`$SERVER_NAME`, from the downward API), which a restarted pod keeps.
pub fn render_kubernetes() -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Generated by crates/deploy/src/nats_config.rs (render_kubernetes); a test keeps it equal.");
    let _ = writeln!(s, "listen: 0.0.0.0:4222");
    let _ = writeln!(s, "http: 0.0.0.0:8222");
    let _ = writeln!(s, "server_name: $SERVER_NAME");
    let routes: Vec<String> = (0..KUBERNETES_NATS_SERVERS).map(kubernetes_route).collect();
    let _ = writeln!(s, "cluster {{\n  name: portico\n  listen: 0.0.0.0:6222\n  routes: [{}]\n}}", routes.join(", "));
    let _ = writeln!(s, "jetstream {{ store_dir: /data }}");
    users(&mut s, &KUBERNETES_USERS, |user| format!("${}", kubernetes_password_variable(user)));
    s
}

//! `portico status`: every object's status, and which model generation each proxy applied,
//! read from the bus with the read-only `cli` user.

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use portico_bus::{names, open as open_envelope, AppliedRecord, LeaseRecord};
use portico_model::ObjectStatus;
use std::collections::BTreeMap;

/// The buckets `status` reads; opened, never created.
pub struct Buckets {
    status: kv::Store,
    model: kv::Store,
    applied: kv::Store,
    leases: kv::Store,
}

/// What the bus says now.
#[derive(Debug, Default)]
pub struct Report {
    pub statuses: Vec<ObjectStatus>,
    /// The published model's version (epoch, generation) and content hash.
    pub model: Option<(portico_bus::Version, String)>,
    /// `haproxy.<instance>` / `envoy.<node>` → what it applied last.
    pub applied: BTreeMap<String, AppliedRecord>,
    /// The active resolver.
    pub resolver: Option<String>,
    /// How NATS keeps the buckets `status` reads: replicas, leader, peers.
    pub nats: Vec<StreamHealth>,
}

/// One bucket's stream as NATS reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamHealth {
    pub bucket: String,
    /// Replicas configured.
    pub replicas: usize,
    /// The server leading the stream's group; `None` on a single server, or while a
    /// cluster elects one.
    pub leader: Option<String>,
    /// The other replicas: server name and whether it is current.
    pub peers: Vec<(String, bool)>,
    /// Set when the stream could not be read.
    pub error: Option<String>,
}

fn failed(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// Open the buckets (they exist once any service has run).
pub async fn open(client: &async_nats::Client) -> Result<Buckets, String> {
    let js = jetstream::new(client.clone());
    let kv = async |name: &str| js.get_key_value(name).await.map_err(|e| failed(&format!("opening {name}"), e));
    Ok(Buckets {
        status: kv(names::STATUS).await?,
        model: kv(names::MODEL).await?,
        applied: kv(names::APPLIED).await?,
        leases: kv(names::LEASES).await?,
    })
}

async fn values(store: &kv::Store) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut keys = store.keys().await.map_err(|e| failed(&format!("listing {}", store.name), e))?;
    let mut out = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| failed(&format!("listing {}", store.name), e))?;
        if let Some(value) = store.get(&key).await.map_err(|e| failed(&format!("reading {key}"), e))? {
            out.push((key, value.to_vec()));
        }
    }
    Ok(out)
}

pub async fn collect(buckets: &Buckets) -> Result<Report, String> {
    let mut report = Report::default();
    for (key, value) in values(&buckets.status).await? {
        match open_envelope::<ObjectStatus>(&value) {
            Ok((status, _)) => report.statuses.push(status),
            Err(e) => eprintln!("warning: the status {key} cannot be read: {e}"),
        }
    }
    report.statuses.sort_by(|a, b| a.object.cmp(&b.object));
    for (key, value) in values(&buckets.applied).await? {
        if let Ok((record, _)) = open_envelope::<AppliedRecord>(&value) {
            report.applied.insert(key, record);
        }
    }
    // The index names the generation and its digest; the pieces are not needed here.
    if let Ok(Some((index, _))) = portico_bus::model::current_index(&buckets.model).await {
        report.model = Some((index.version(), index.digest));
    }
    if let Ok(Some(value)) = buckets.leases.get("resolver").await {
        report.resolver = open_envelope::<LeaseRecord>(&value).ok().map(|(l, _)| l.holder);
    }
    for store in [&buckets.status, &buckets.model, &buckets.applied, &buckets.leases] {
        report.nats.push(stream_health(store).await);
    }
    Ok(report)
}

async fn stream_health(store: &kv::Store) -> StreamHealth {
    let bucket = store.name.clone();
    match store.stream.get_info().await {
        Ok(info) => {
            let cluster = info.cluster.unwrap_or_default();
            StreamHealth {
                bucket,
                replicas: info.config.num_replicas,
                leader: cluster.leader,
                peers: cluster.replicas.into_iter().map(|p| (p.name, p.current && !p.offline)).collect(),
                error: None,
            }
        }
        Err(e) => StreamHealth { bucket, error: Some(e.to_string()), ..StreamHealth::default() },
    }
}

fn ago(unix_ms: u64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64);
    match now.unwrap_or(0).checked_sub(unix_ms) {
        Some(ms) if ms < 1000 => "just now".into(),
        Some(ms) if ms < 120_000 => format!("{}s ago", ms / 1000),
        Some(ms) => format!("{}m ago", ms / 60_000),
        None => "just now".into(),
    }
}

/// The report as text: the objects' table (as `translate` prints it), then the proxies.
pub fn render(report: &Report) -> String {
    use std::fmt::Write;
    let mut s = crate::translate::status_table(&report.statuses);
    let _ = writeln!(s);
    match &report.model {
        Some((version, hash)) => {
            let _ = writeln!(
                s,
                "model: generation {version} ({}), published by {}",
                hash.get(..12).unwrap_or(hash), // a hash from the bus: never sliced blindly
                report.resolver.as_deref().unwrap_or("-")
            );
        }
        None => {
            let _ = writeln!(s, "model: none published yet (the resolver waits for every kind's initial sync)");
        }
    }
    let rows: Vec<[String; 4]> = report
        .applied
        .iter()
        .map(|(proxy, a)| {
            let current = report.model.as_ref().is_some_and(|(v, _)| *v == a.version());
            let state = match &a.error {
                Some(e) => format!("NOT APPLIED: {e}"),
                None if current => "applied (current)".into(),
                None => "applied (behind)".into(),
            };
            let problems = if a.problems.is_empty() {
                String::new()
            } else {
                format!("; {} route(s) lack trust material", a.problems.len())
            };
            [proxy.clone(), a.generation.to_string(), ago(a.at_unix_ms), format!("{state}{problems}")]
        })
        .collect();
    s.push_str(&crate::translate::table(["PROXY", "GENERATION", "WHEN", "STATE"], &rows));
    if rows.is_empty() {
        let _ = writeln!(s, "(no proxy has reported yet)");
    }
    let _ = writeln!(s);
    let nats: Vec<[String; 4]> = report
        .nats
        .iter()
        .map(|h| {
            let (leader, peers) = match (&h.error, &h.leader) {
                (Some(e), _) => ("?".to_owned(), format!("cannot be read: {e}")),
                (None, None) if h.replicas <= 1 => ("(one server)".to_owned(), "-".to_owned()),
                (None, None) => ("NONE (electing)".to_owned(), "-".to_owned()),
                (None, Some(leader)) => {
                    let peers: Vec<String> = h
                        .peers
                        .iter()
                        .map(|(name, current)| format!("{name} {}", if *current { "current" } else { "BEHIND" }))
                        .collect();
                    (leader.clone(), if peers.is_empty() { "-".to_owned() } else { peers.join(", ") })
                }
            };
            [h.bucket.clone(), h.replicas.to_string(), leader, peers]
        })
        .collect();
    s.push_str(&crate::translate::table(["BUCKET", "REPLICAS", "LEADER", "OTHER REPLICAS"], &nats));
    if let Some(servers) = servers_line(&report.nats) {
        let _ = writeln!(s, "{servers}");
    }
    s
}

/// On a cluster, every server the buckets' streams name, and whether it is well: `up` when
/// it leads a stream or is current in every stream it replicates, `BEHIND or down`
/// otherwise (NATS tells a replica that is catching up from one that is gone only by time).
fn servers_line(health: &[StreamHealth]) -> Option<String> {
    let mut servers: std::collections::BTreeMap<&str, bool> = std::collections::BTreeMap::new();
    for h in health.iter().filter(|h| h.error.is_none()) {
        if let Some(leader) = &h.leader {
            servers.entry(leader).or_insert(true);
        }
        for (name, current) in &h.peers {
            let well = servers.entry(name).or_insert(true);
            *well &= *current;
        }
    }
    if servers.is_empty() {
        return None;
    }
    let listed: Vec<String> =
        servers.iter().map(|(name, well)| format!("{name} {}", if *well { "up" } else { "BEHIND or down" })).collect();
    Some(format!("NATS servers: {}", listed.join(", ")))
}

/// The status table `portico up` prints once the proxies run, or why the statuses could not
/// be read: never an empty table, which would look like "no objects".
pub fn table_or_why(report: &Result<Report, String>, state_dir: &std::path::Path) -> String {
    match report {
        Ok(report) => crate::translate::status_table(&report.statuses),
        Err(e) => format!(
            "(the statuses could not be read: {e}; `portico status --state-dir {}` shows them)\n",
            state_dir.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_that_cannot_be_read_are_said_so_never_shown_as_an_empty_table() {
        let failed = Err("connecting to nats://127.0.0.1:4222: connection refused".to_owned());
        let text = table_or_why(&failed, std::path::Path::new(".portico"));
        assert!(text.contains("the statuses could not be read: connecting to nats"), "{text}");
        assert!(text.contains("portico status --state-dir .portico"), "{text}");
        let empty = Ok(Report::default());
        assert_ne!(table_or_why(&empty, std::path::Path::new(".portico")), text);
    }
}

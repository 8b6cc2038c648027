//! Running HAProxy in master-worker mode and applying rendered configurations to it:
//! check, switch, hitless reload through the master socket, confirmation, and rollback.
//!
//! Layout under the work directory: `gen-<epoch>-<generation>-<ms>/` holds one rendered
//! configuration with its files (the service's generations reach the files named by their
//! content, `ca/` and `client/`, through links into `files/`, see [`STORE`]); the symlink
//! `current` points at the one HAProxy runs, and
//! `haproxy.cfg` (what HAProxy is started with) points at `current/haproxy.cfg`. The
//! configuration names its files through `current` (`<work_dir>/current/maps/…`), so two
//! generations that differ only in map entries and server addresses have the same text
//! apart from those addresses, and the runtime API can take HAProxy from one to the other
//! without a reload ([`Haproxy::update`]).
//!
//! A configuration is made current by a reload that the master confirms, and `current`
//! goes back if the reload fails, so a broken configuration never replaces a working one:
//! the master parses the new configuration itself and, when it refuses it, keeps its
//! workers serving the previous one (HAProxy 2.6 counts the failure in `show proc`). There
//! is no separate `haproxy -c` before a reload: at 10,000 TLS backends it took as long as
//! the reload (4 s each); it runs after a refusal, for HAProxy's own words in the error,
//! and before a first start. A runtime update whose commands
//! HAProxy refuses leaves HAProxy drifted from the files; a checked reload brings it back.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("writing {path}: {source}")]
    WriteFailed { path: PathBuf, source: std::io::Error },
    #[error("haproxy -c refused the configuration: {0}")]
    CheckFailed(String),
    #[error("starting haproxy: {0}")]
    StartFailed(String),
    #[error("the master socket: {0}")]
    MasterSocket(String),
    #[error("the reload failed; HAProxy kept the previous configuration (see its log)")]
    ReloadFailed,
    #[error("the reload was not confirmed within {0:?}")]
    ReloadUnconfirmed(Duration),
    #[error("HAProxy refused a runtime command ({answer}) in: {commands}")]
    Refused { answer: String, commands: String },
    #[error("{failed}; and switching back to the running configuration failed ({rollback}): a restart of HAProxy now would read the refused one")]
    RollbackFailed { failed: Box<ApplyError>, rollback: String },
    #[error("HAProxy is not running (its restart was interrupted); the liveness check starts it again")]
    NotRunning,
    #[error("HAProxy exited during the reload; the liveness check starts it again on the configuration it ran")]
    ExitedDuringReload,
}

/// How long a reload may take before it counts as failed. A reload parses the whole
/// configuration in the new worker: at 10,000 TLS backends (40,000 server lines) that took
/// 4 s on one machine and 8.6 s on another, so a tight limit called reloads that were only
/// slow failed, and the renderer stepped back to files HAProxy no longer ran.
pub const RELOAD_LIMIT: Duration = Duration::from_secs(120);
const RELOAD_NOTE_EVERY: Duration = Duration::from_secs(10);

/// An HAProxy master process and the directory it runs from.
pub struct Haproxy {
    pub work_dir: PathBuf,
    binary: String,
    /// Our child, or `None` for a master taken over from a renderer that died or run by
    /// someone else (`external`).
    child: Option<Child>,
    /// HAProxy runs in its own container: never stopped by us.
    external: bool,
    /// The master's process id.
    pid: u32,
    current: Option<PathBuf>,
}

/// How `Haproxy::start_or_adopt` got its HAProxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Started {
    /// A master left running in the work directory (its renderer died): taken over.
    Adopted { pid: u32 },
    /// Started on the configuration last applied in the work directory.
    LastApplied(PathBuf),
    /// Started on the empty configuration.
    Empty,
}

impl Drop for Haproxy {
    /// Stopping the renderer stops its HAProxy.
    fn drop(&mut self) {
        match &mut self.child {
            Some(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            None if self.external => {}
            None => {
                // SAFETY: kill(2) with a pid read from the master's own `show proc`.
                unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
            }
        }
    }
}

/// The generation directory `work_dir/current` points at, if any (or, in the layout before
/// `current`, the one `work_dir/haproxy.cfg` points into).
fn link_target(work_dir: &Path) -> Option<PathBuf> {
    let target = match std::fs::read_link(work_dir.join(CURRENT)) {
        Ok(dir) => dir,
        Err(_) => std::fs::read_link(work_dir.join("haproxy.cfg")).ok()?.parent()?.to_owned(),
    };
    Some(target).filter(|dir| dir.join("haproxy.cfg").is_file() && dir.file_name() != Some(CURRENT.as_ref()))
}

/// The symlink to the generation HAProxy runs; configurations name their files through it.
pub const CURRENT: &str = "current";

/// The base directory configurations applied in `work_dir` name their files under.
pub fn current_base(work_dir: &Path) -> PathBuf {
    work_dir.join(CURRENT)
}

/// `(pid, reloads, failed)` from the master's line of `show proc`.
fn master_line(out: &str) -> Result<(u32, u64, u64), ApplyError> {
    let line = out
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("master"))
        .ok_or_else(|| ApplyError::MasterSocket(format!("no master line in {out:?}")))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let pid = words.first().and_then(|w| w.parse().ok());
    let reloads = words.get(2).and_then(|w| w.parse().ok());
    let failed = words.get(4).and_then(|w| w.trim_end_matches(']').parse().ok());
    match (pid, reloads, failed) {
        (Some(p), Some(r), Some(f)) => Ok((p, r, f)),
        _ => Err(ApplyError::MasterSocket(format!("unexpected master line {line:?}"))),
    }
}

/// How many times the HAProxy master running in `work_dir` has reloaded since it started,
/// if one answers on its socket (`show proc`'s count, not the renderer's word for it).
pub fn master_reloads(work_dir: &Path) -> Option<u64> {
    master_counters(work_dir).map(|(reloads, _)| reloads)
}

/// `(reloads, failed reloads)` of the HAProxy master running in `work_dir`, if one answers.
pub fn master_counters(work_dir: &Path) -> Option<(u64, u64)> {
    master_command(&work_dir.join("master.sock"), "show proc")
        .and_then(|o| master_line(&o))
        .ok()
        .map(|(_, r, f)| (r, f))
}

/// The pid of the HAProxy master running in `work_dir`, if one answers on its socket.
pub fn running_master(work_dir: &Path) -> Option<u32> {
    master_command(&work_dir.join("master.sock"), "show proc").and_then(|o| master_line(&o)).ok().map(|(pid, _, _)| pid)
}

fn master_command(socket: &Path, command: &str) -> Result<String, ApplyError> {
    let mut stream = UnixStream::connect(socket).map_err(|e| ApplyError::MasterSocket(e.to_string()))?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| ApplyError::MasterSocket(e.to_string()))?;
    stream.write_all(format!("{command}\n").as_bytes()).map_err(|e| ApplyError::MasterSocket(e.to_string()))?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut out = String::new();
    stream.read_to_string(&mut out).map_err(|e| ApplyError::MasterSocket(e.to_string()))?;
    Ok(out)
}

fn write(path: &Path, contents: &[u8]) -> Result<(), ApplyError> {
    let failed = |source| ApplyError::WriteFailed { path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    std::fs::write(path, contents).map_err(failed)
}

/// Write rendered files into `dir` (client and serving keys owner-only).
pub fn write_files(dir: &Path, files: &std::collections::BTreeMap<String, Vec<u8>>) -> Result<(), ApplyError> {
    let names: Vec<String> = files.keys().cloned().collect();
    write_generation(dir, &names, files, None, None, |_| None)
}

/// Where the renderer keeps the files named by their content (`ca/`, `client/`), shared
/// by its generations: each generation's `ca` and `client` are links to it, so that a
/// generation is not 1,000 hard links to CA bundles (12 ms to make, 6 ms to prune on the
/// machine of docs/PERFORMANCE.md).
pub const STORE: &str = "files";

/// Remove the files of `work_dir`'s store (see [`STORE`]) that no file of `names` (the
/// generation HAProxy runs) is.
pub fn prune_store(work_dir: &Path, names: &[String]) {
    let store = work_dir.join(STORE);
    let wanted: std::collections::HashSet<&str> =
        names.iter().map(String::as_str).filter(|n| content_addressed(n)).collect();
    for top in ["ca", "client"] {
        let Ok(entries) = std::fs::read_dir(store.join(top)) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !wanted.contains(format!("{top}/{name}").as_str()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Whether a file is named by its content (the same name is the same bytes).
fn content_addressed(relative: &str) -> bool {
    relative.starts_with("ca/") || relative.starts_with("client/")
}

/// Write a generation directory: the files `changed` holds are written, the others of
/// `names` are linked from `previous` (the generation HAProxy runs, whose files they are),
/// and made with `file` when it lacks one. Files named by their content (`ca/`, `client/`)
/// are linked whenever `previous` has them: the same name is the same content, and 1,000
/// CA bundles are not written again for a one-route change. With a `store` (see
/// [`STORE`]), those files go there, once, and the generation's `ca` and `client` link to
/// it.
pub fn write_generation(
    dir: &Path,
    names: &[String],
    changed: &std::collections::BTreeMap<String, Vec<u8>>,
    previous: Option<&Path>,
    store: Option<&Path>,
    file: impl Fn(&str) -> Option<Vec<u8>>,
) -> Result<(), ApplyError> {
    use std::os::unix::fs::PermissionsExt;
    let mut made = std::collections::HashSet::new();
    for relative in names {
        let addressed = content_addressed(relative);
        let (root, linked) = match store.filter(|_| addressed) {
            // One the previous generation had is in the store (it was written there, and
            // the store keeps what the running generation names): no look at the disk.
            Some(store) => (store, !changed.contains_key(relative) || store.join(relative).exists()),
            None => (dir, false),
        };
        let path = root.join(relative);
        let failed = |source| ApplyError::WriteFailed { path: path.clone(), source };
        if let (Some(store), Some(top)) = (store.filter(|_| addressed), relative.split('/').next()) {
            // The generation's `ca` (or `client`): a relative link into the store, which
            // reads the same from another container sharing the work directory.
            if made.insert(dir.join(top)) {
                let target = Path::new("..").join(store.file_name().unwrap_or_default()).join(top);
                std::fs::create_dir_all(store.join(top)).map_err(failed)?;
                std::fs::create_dir_all(dir).map_err(failed)?;
                std::os::unix::fs::symlink(&target, dir.join(top)).map_err(failed)?;
            }
        }
        if linked {
            continue;
        }
        if let Some(parent) = path.parent() {
            if made.insert(parent.to_owned()) {
                std::fs::create_dir_all(parent).map_err(failed)?;
            }
        }
        let bytes = changed.get(relative);
        if let Some(source) = previous.filter(|_| bytes.is_none() || addressed).map(|p| p.join(relative)) {
            if std::fs::hard_link(&source, &path).is_ok() {
                continue;
            }
        }
        let made_now;
        let bytes = match bytes {
            Some(bytes) => bytes,
            None => {
                made_now = file(relative)
                    .ok_or_else(|| failed(std::io::Error::new(std::io::ErrorKind::NotFound, "not in the rendering")))?;
                &made_now
            }
        };
        std::fs::write(&path, bytes).map_err(failed)?;
        if relative.starts_with("client/") || (relative.starts_with("certs/") && relative.ends_with(".pem")) {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
        }
    }
    Ok(())
}

/// `haproxy -c` on a generation directory's configuration, with the files of that
/// directory: the configuration names them through `current`, which points elsewhere
/// until the generation is applied, so the check reads a copy naming them in `dir`.
pub fn check_generation(binary: &str, dir: &Path) -> Result<(), ApplyError> {
    let cfg = dir.join("haproxy.cfg");
    let text = std::fs::read_to_string(&cfg).map_err(|e| ApplyError::CheckFailed(format!("{}: {e}", cfg.display())))?;
    let (Some(work_dir), Some(dir_str)) = (dir.parent(), dir.to_str()) else {
        return check(binary, &cfg);
    };
    let base = format!("{}/", current_base(work_dir).display());
    if !text.contains(&base) {
        return check(binary, &cfg);
    }
    let copy = dir.join("haproxy.check.cfg");
    write(&copy, text.replace(&base, &format!("{dir_str}/")).as_bytes())?;
    let result = check(binary, &copy);
    let _ = std::fs::remove_file(&copy);
    result
}

/// `haproxy -c` on a file.
pub fn check(binary: &str, config: &Path) -> Result<(), ApplyError> {
    let out = Command::new(binary)
        .arg("-c")
        .arg("-f")
        .arg(config)
        .output()
        .map_err(|e| ApplyError::CheckFailed(format!("cannot run {binary}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(&out.stderr);
        let alerts: Vec<&str> = text.lines().filter(|l| l.contains("ALERT")).collect();
        Err(ApplyError::CheckFailed(if alerts.is_empty() { text.trim().to_owned() } else { alerts.join("; ") }))
    }
}

/// Point `work_dir/current` at a generation directory, atomically (and `haproxy.cfg` at
/// `current/haproxy.cfg`, once).
fn switch(work_dir: &Path, dir: &Path) -> Result<(), ApplyError> {
    let relink = |link: PathBuf, target: PathBuf| {
        if std::fs::read_link(&link).ok().as_ref() == Some(&target) {
            return Ok(());
        }
        let tmp = link.with_extension("next");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp)
            .and_then(|()| std::fs::rename(&tmp, &link))
            .map_err(|source| ApplyError::WriteFailed { path: link, source })
    };
    relink(current_base(work_dir), dir.to_owned())?;
    relink(work_dir.join("haproxy.cfg"), current_base(work_dir).join("haproxy.cfg"))
}

/// How [`Haproxy::update`] applied a generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Through the runtime API, this many commands, no reload.
    Runtime(usize),
    /// By a checked reload.
    Reload,
    /// The runtime API refused a command; a checked reload brought HAProxy to the files.
    ReloadAfterDrift,
}

/// The largest command line sent to the master socket at once (HAProxy's buffer is 16 kB).
const BATCH_BYTES: usize = 8 * 1024;

impl Haproxy {
    pub fn master_socket(&self) -> PathBuf {
        self.work_dir.join("master.sock")
    }

    /// Take over an HAProxy master still running in `work_dir`; else start one on the
    /// configuration last applied there (if it still passes the check); else on `first`,
    /// written from `first_files`. So a renderer that restarts never makes its proxy serve
    /// an older configuration than the one it had applied.
    pub fn start_or_adopt(
        binary: &str,
        work_dir: &Path,
        first: &Path,
        first_files: &std::collections::BTreeMap<String, Vec<u8>>,
        log: &Path,
    ) -> Result<(Haproxy, Started), ApplyError> {
        if let Ok((pid, _, _)) =
            master_command(&work_dir.join("master.sock"), "show proc").and_then(|o| master_line(&o))
        {
            let haproxy = Haproxy {
                work_dir: work_dir.to_owned(),
                binary: binary.to_owned(),
                child: None,
                external: false,
                pid,
                current: link_target(work_dir),
            };
            return Ok((haproxy, Started::Adopted { pid }));
        }
        if let Some(dir) = link_target(work_dir) {
            if check_generation(binary, &dir).is_ok() {
                return Ok((Haproxy::start(binary, work_dir, &dir, log)?, Started::LastApplied(dir)));
            }
        }
        write_files(first, first_files)?;
        Ok((Haproxy::start(binary, work_dir, first, log)?, Started::Empty))
    }

    /// Wait for an HAProxy that someone else runs (its own container, sharing `work_dir`)
    /// as `haproxy -W -db -S <work_dir>/master.sock -f <work_dir>/haproxy.cfg`. Unless a
    /// configuration was applied here before, `first` (written from `first_files`) is made
    /// current first, so that HAProxy has something to start on. `waiting` is called
    /// every 10 s while nothing answers.
    pub fn adopt_external(
        binary: &str,
        work_dir: &Path,
        first: &Path,
        first_files: &std::collections::BTreeMap<String, Vec<u8>>,
        mut waiting: impl FnMut(Duration),
    ) -> Result<Haproxy, ApplyError> {
        match link_target(work_dir) {
            None => {
                write_files(first, first_files)?;
                check_generation(binary, first)?;
                switch(work_dir, first)?;
            }
            // A work directory of the layout before `current`: HAProxy reads `haproxy.cfg`.
            Some(dir) => switch(work_dir, &dir)?,
        }
        let started = Instant::now();
        let mut next_note = Duration::from_secs(10);
        loop {
            if let Some(pid) = running_master(work_dir) {
                return Ok(Haproxy {
                    work_dir: work_dir.to_owned(),
                    binary: binary.to_owned(),
                    child: None,
                    external: true,
                    pid,
                    current: link_target(work_dir),
                });
            }
            if started.elapsed() >= next_note {
                waiting(started.elapsed());
                next_note += Duration::from_secs(10);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The directory of the configuration HAProxy runs.
    pub fn current_dir(&self) -> Option<&Path> {
        self.current.as_deref()
    }

    /// The model epoch and generation HAProxy runs, from its directory's name
    /// (`gen-<epoch>-<generation>-<ms>`; the first, empty one is `gen-0`: epoch 0,
    /// generation 0). A directory named otherwise (an older layout) gives `None`.
    pub fn current_version(&self) -> Option<(u64, u64)> {
        let name = self.current.as_ref()?.file_name()?.to_str()?;
        let mut parts = name.strip_prefix("gen-")?.split('-');
        let epoch = parts.next()?.parse().ok()?;
        let generation = match parts.next() {
            None => 0,
            Some(g) => g.parse().ok()?,
        };
        parts.next().is_none_or(|ms| ms.parse::<u64>().is_ok()).then_some((epoch, generation))
    }

    /// The master's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the master still runs (its workers end with it). For our child, without
    /// leaving a zombie; for a master taken over or run by someone else, by its pid.
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            // SAFETY: kill(2) with signal 0 only checks that the process exists.
            None => unsafe { libc::kill(self.pid as libc::pid_t, 0) == 0 },
        }
    }

    /// Follow an external HAProxy that its container started again (a new master on the
    /// shared work directory's socket).
    pub fn follow_external(&mut self, pid: u32) {
        self.pid = pid;
    }

    /// HAProxy runs in its own container (never started or stopped by the renderer).
    pub fn is_external(&self) -> bool {
        self.external
    }

    /// Start HAProxy (master-worker, foreground) on an already rendered directory.
    pub fn start(binary: &str, work_dir: &Path, first: &Path, log: &Path) -> Result<Haproxy, ApplyError> {
        check_generation(binary, first)?;
        switch(work_dir, first)?;
        let socket = work_dir.join("master.sock");
        let _ = std::fs::remove_file(&socket);
        // Appended to: a restart after a crash keeps what the crashed one logged.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| ApplyError::StartFailed(e.to_string()))?;
        let child = Command::new(binary)
            .arg("-W")
            .arg("-db")
            .arg("-S")
            .arg(&socket)
            .arg("-f")
            .arg(work_dir.join("haproxy.cfg"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| ApplyError::StartFailed(e.to_string()))?)
            .stderr(log)
            .spawn()
            .map_err(|e| ApplyError::StartFailed(format!("{binary}: {e}")))?;
        let mut haproxy = Haproxy {
            work_dir: work_dir.to_owned(),
            binary: binary.to_owned(),
            pid: child.id(),
            child: Some(child),
            external: false,
            current: Some(first.to_owned()),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while haproxy.reload_counters().is_err() {
            if let Some(Ok(Some(status))) = haproxy.child.as_mut().map(|c| c.try_wait()) {
                return Err(ApplyError::StartFailed(format!("haproxy exited with {status}")));
            }
            if Instant::now() > deadline {
                return Err(ApplyError::StartFailed("the master socket did not answer within 10 s".into()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(haproxy)
    }

    fn master(&self, command: &str) -> Result<String, ApplyError> {
        master_command(&self.master_socket(), command)
    }

    /// How many times the master has reloaded since it started.
    pub fn reloads(&self) -> Result<u64, ApplyError> {
        Ok(self.reload_counters()?.0)
    }

    /// `(reloads, failed)` from the master's line of `show proc`.
    fn reload_counters(&self) -> Result<(u64, u64), ApplyError> {
        let (_, reloads, failed) = master_line(&self.master("show proc")?)?;
        Ok((reloads, failed))
    }

    /// Make `dir` (a rendered generation) current: switch, reload, confirm; on any failure
    /// the previous configuration stays current (HAProxy's workers keep running it, and
    /// `current` goes back).
    pub fn apply(&mut self, dir: &Path) -> Result<(), ApplyError> {
        let (reloads, failed) = self.reload_counters()?;
        switch(&self.work_dir, dir)?;
        let result = tracing::info_span!("haproxy.reload").in_scope(|| self.reload_and_confirm(reloads, failed));
        // A refused configuration: HAProxy's own words for why, from a check of its files.
        let result = result.map_err(|e| match e {
            ApplyError::ReloadFailed => tracing::info_span!("haproxy.check")
                .in_scope(|| check_generation(&self.binary, dir))
                .err()
                .unwrap_or(ApplyError::ReloadFailed),
            other => other,
        });
        match result {
            Ok(()) => {
                self.current = Some(dir.to_owned());
                Ok(())
            }
            Err(failed) => {
                // What is on disk must be what runs: switch back, and say so when that fails.
                if let Some(previous) = &self.current {
                    if let Err(e) = switch(&self.work_dir, previous) {
                        return Err(ApplyError::RollbackFailed { failed: Box::new(failed), rollback: e.to_string() });
                    }
                }
                Err(failed)
            }
        }
    }

    /// Make `dir` current through the runtime API when `commands` is `Some` (the commands
    /// that take what runs to `dir`'s configuration, see `runtime::commands`), else by
    /// [`Haproxy::apply`]. When HAProxy refuses a command, it has drifted from the files:
    /// a checked reload of `dir` brings it back, and if that fails too, a reload of the
    /// previous configuration.
    pub fn update(&mut self, dir: &Path, commands: Option<&[String]>) -> Result<Applied, ApplyError> {
        let Some(commands) = commands else {
            return self.apply(dir).map(|()| Applied::Reload);
        };
        let previous = self.current.clone();
        switch(&self.work_dir, dir)?;
        let refused =
            tracing::info_span!("haproxy.runtime", commands = commands.len()).in_scope(|| self.run_commands(commands));
        let Err(refused) = refused else {
            self.current = Some(dir.to_owned());
            return Ok(Applied::Runtime(commands.len()));
        };
        tracing::warn!(error = %refused, "HAProxy refused a runtime command; reloading to match the files");
        match self.apply(dir) {
            Ok(()) => Ok(Applied::ReloadAfterDrift),
            Err(failed) => {
                // HAProxy runs part of the change: back to the previous files, reloaded.
                if let Some(previous) = previous {
                    let back = switch(&self.work_dir, &previous).and_then(|()| {
                        let (reloads, failures) = self.reload_counters()?;
                        self.reload_and_confirm(reloads, failures)
                    });
                    if let Err(e) = back {
                        return Err(ApplyError::RollbackFailed { failed: Box::new(failed), rollback: e.to_string() });
                    }
                }
                Err(failed)
            }
        }
    }

    /// Send runtime commands to the current worker (`@1`), in batches; an answer other
    /// than success is an error naming the batch's first refused command.
    fn run_commands(&self, commands: &[String]) -> Result<(), ApplyError> {
        let mut batch = String::new();
        let mut first = 0;
        for (i, command) in commands.iter().enumerate() {
            // A command with a payload (a certificate) goes alone: nothing may follow the
            // payload on its line.
            let alone = command.contains('\n');
            if !batch.is_empty() && (alone || batch.len() + command.len() + 6 > BATCH_BYTES) {
                self.run_batch(&batch, &commands[first..i])?;
                batch.clear();
                first = i;
            }
            if alone {
                self.run_batch(&format!("@1 {command}"), &commands[i..=i])?;
                first = i + 1;
                continue;
            }
            if !batch.is_empty() {
                batch.push_str("; ");
            }
            batch.push_str("@1 ");
            batch.push_str(command);
        }
        if !batch.is_empty() {
            self.run_batch(&batch, &commands[first..])?;
        }
        Ok(())
    }

    fn run_batch(&self, batch: &str, commands: &[String]) -> Result<(), ApplyError> {
        let out = self.master(batch)?;
        match out.lines().find(|l| !crate::runtime::is_success_line(l)) {
            None => Ok(()),
            // A payload (a certificate and its key) is never repeated: the first line only.
            Some(answer) => Err(ApplyError::Refused {
                answer: answer.trim().to_owned(),
                commands: commands
                    .iter()
                    .take(3)
                    .map(|c| c.lines().next().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join("; "),
            }),
        }
    }

    fn reload_and_confirm(&mut self, reloads: u64, failed: u64) -> Result<(), ApplyError> {
        // HAProxy 2.6's `reload` answers nothing; `show proc` says what happened. The
        // master re-executes, so the socket may refuse connections for a moment.
        let _ = self.master("reload");
        let started = Instant::now();
        let mut next_note = RELOAD_NOTE_EVERY;
        while started.elapsed() < RELOAD_LIMIT {
            std::thread::sleep(Duration::from_millis(50));
            // A master that died (killed, crashed) never confirms: said at once, so that
            // the liveness check starts HAProxy again instead of waiting out the limit.
            if !self.alive() {
                return Err(ApplyError::ExitedDuringReload);
            }
            match self.reload_counters() {
                Ok((_, f)) if f > failed => return Err(ApplyError::ReloadFailed),
                Ok((r, _)) if r > reloads => return Ok(()),
                _ => {}
            }
            if started.elapsed() >= next_note {
                tracing::info!(
                    waited_s = started.elapsed().as_secs(),
                    "HAProxy is still reloading (a large configuration: about 0.2 ms per TLS server line on a slow core)"
                );
                next_note += RELOAD_NOTE_EVERY;
            }
        }
        Err(ApplyError::ReloadUnconfirmed(RELOAD_LIMIT))
    }

    /// Remove generation directories other than the current one and `keep`.
    pub fn prune(&self, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(&self.work_dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_gen = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("gen-"));
            if is_gen && Some(&path) != self.current.as_ref() && path != keep {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }
}

//! The HAProxy renderer service: runs beside one HAProxy, follows the model and the trust
//! material on the bus, and applies each newer model (check, switch, hitless reload,
//! confirmation). It never applies a generation older than one it applied, keeps the
//! last good configuration when a new one fails, and reports every attempt in
//! `portico-applied/haproxy.<instance>`.

use crate::apply::{current_base, write_generation, Applied, ApplyError, Haproxy, Started};
use crate::build::{ConfigBuilder, Step};
use crate::{render, Options, Trust};
use portico_bus::nats::{Buckets, BusError};
use portico_bus::{names, seal, AppliedRecord, TraceContext, Version};
use portico_kit::renderer_inputs::RendererInputs;
use portico_model::Model;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use tracing::Instrument;

#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub bus: portico_bus::nats::ConnectConfig,
    /// Absolute; generations, the symlink HAProxy reads, the master socket and the log.
    pub work_dir: PathBuf,
    /// The haproxy binary.
    pub haproxy: String,
    pub http_port: u16,
    pub https_port: Option<u16>,
    pub bind_address: IpAddr,
    /// This renderer's name in `portico-applied`.
    pub instance: String,
    /// HAProxy runs in another container sharing `work_dir`: wait for its master socket
    /// instead of starting it, and never stop it.
    pub external_haproxy: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("work directory {0}: {1}")]
    WorkDir(PathBuf, String),
    #[error(transparent)]
    Haproxy(#[from] ApplyError),
}

struct Renderer {
    config: ServiceConfig,
    /// The HAProxy the renderer drives, shared with the blocking thread that applies to it:
    /// a session cancelled mid-apply (NATS reconnected, a stream elected a leader) leaves it
    /// here for the next session, never lost. `None` only after a restart was cancelled:
    /// the liveness check starts (or adopts) it again.
    haproxy: std::sync::Arc<tokio::sync::Mutex<Option<Haproxy>>>,
    /// What HAProxy runs.
    applied: Option<AppliedState>,
    /// The record of the last attempt while it is not yet on the bus (the put failed, say
    /// while NATS restarted): written again before anything else, so `portico status` never
    /// keeps showing an older generation than HAProxy runs.
    unreported: Option<(AppliedRecord, TraceContext)>,
    /// Whether the last record written says an attempt failed: when the same version then
    /// renders to what HAProxy runs (the cause went away), a record saying so is written,
    /// instead of leaving the failure as the last word.
    reported_error: bool,
}

/// What `Renderer::prepare` made of the newest model.
enum Next {
    /// No model, or one older than HAProxy runs.
    Nothing,
    /// It lacks trust material: try again after this long.
    Hold(std::time::Duration),
    Apply(Box<Prepared>),
}

/// A model rendered: the builder that rendered it and what it changed.
struct Prepared {
    header: Header,
    builder: ConfigBuilder,
    step: Step,
    /// Pieces rendered again.
    rendered: usize,
    started: std::time::Instant,
}

/// What the renderer keeps of a model record once it is rendered.
struct Header {
    version: Version,
    hash: String,
    changed_at_ms: u64,
    published_at_ms: u64,
}

/// What HAProxy runs, as far as the renderer knows.
struct AppliedState {
    version: Version,
    /// The digest of the files (`files_digest`), once needed: the same version rendered to
    /// the same files is not applied again. Computed only when the same version comes back
    /// (trust material changed), never on the path of a new generation.
    files: Option<[u8; 32]>,
    /// The rendering HAProxy runs, by piece; `None` when not known (HAProxy was started on
    /// or taken over with a configuration applied earlier, or an apply failed): the next
    /// change is rendered whole and applied by a reload.
    builder: Option<ConfigBuilder>,
}

/// SHA-256 over the files' paths and contents, in order.
fn files_digest<'a>(files: impl Iterator<Item = (&'a str, &'a [u8])>) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for (path, contents) in files {
        h.update((path.len() as u64).to_be_bytes());
        h.update(path.as_bytes());
        h.update((contents.len() as u64).to_be_bytes());
        h.update(contents);
    }
    h.finalize().into()
}

/// The files of an applied generation directory, as `render` named them.
fn read_generation(dir: &std::path::Path) -> Option<std::collections::BTreeMap<String, Vec<u8>>> {
    fn walk(
        root: &std::path::Path,
        dir: &std::path::Path,
        out: &mut std::collections::BTreeMap<String, Vec<u8>>,
    ) -> Option<()> {
        for entry in std::fs::read_dir(dir).ok()? {
            let path = entry.ok()?.path();
            if path.is_dir() {
                walk(root, &path, out)?;
            } else {
                let relative = path.strip_prefix(root).ok()?.to_str()?.to_owned();
                if relative != "haproxy.check.cfg" {
                    out.insert(relative, std::fs::read(&path).ok()?);
                }
            }
        }
        Some(())
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out)?;
    Some(out)
}

impl Renderer {
    /// Render the newest model with the trust material at hand, by piece over what HAProxy
    /// runs (or whole when that is not known). Synchronous: it borrows the inputs, which
    /// the async part must not hold.
    fn prepare(&mut self, inputs: &RendererInputs) -> Result<Next, ServiceError> {
        let Some(record) = inputs.model() else { return Ok(Next::Nothing) };
        if let Some(applied) = &self.applied {
            if record.version() < applied.version {
                tracing::debug!(version = %record.version(), applied = %applied.version, "older than the applied one; ignored");
                return Ok(Next::Nothing); // never go back
            }
        }
        let started = std::time::Instant::now();
        // Voyager's `ca-file`s live here, beside HAProxy: one it could not load would make
        // it refuse the whole configuration, so such a cluster's routes answer 503 instead.
        let unusable = crate::unusable_ca_files(&record.model);
        let options = Renderer::options_for(&self.config)?;
        let digest = |id: &portico_model::PieceId| inputs.piece_digest(id);
        // The rendering HAProxy runs, changed by the pieces that changed; or, when it is not
        // known, a whole rendering (a reload).
        let (mut builder, warm) = match self.applied.as_mut().and_then(|a| a.builder.take()) {
            Some(builder) => (builder, true),
            None => (ConfigBuilder::new(&options), false),
        };
        let plan = builder.plan(&record.model, &inputs.trust, inputs.trust_revision, &unusable, &digest);
        if let Some(wait) = inputs.hold_back(plan.lacks_trust) {
            tracing::info!(generation = record.generation, "waiting for trust material before applying");
            if let (Some(applied), true) = (&mut self.applied, warm) {
                applied.builder = Some(builder); // unchanged: a plan changes nothing
            }
            return Ok(Next::Hold(wait));
        }
        let rendered = plan.rendered;
        let mut step = builder.apply(&record.model, &inputs.trust, plan);
        if warm && step.commands.is_none() {
            // A reload: rendered afresh, so that backends are named after their clusters
            // again and the spares are renewed.
            builder = ConfigBuilder::new(&options);
            step = builder.build(&record.model, &inputs.trust, inputs.trust_revision, &unusable, &digest);
        }
        let header = Header {
            version: record.version(),
            hash: record.hash.clone(),
            changed_at_ms: record.changed_at_ms,
            published_at_ms: record.published_at_ms,
        };
        Ok(Next::Apply(Box::new(Prepared { header, builder, step, rendered, started })))
    }

    /// Apply a prepared rendering when it differs from what is applied, and report the
    /// attempt. How long to wait before trying again when it was held back for missing
    /// trust material (`RendererInputs::hold_back`).
    async fn converge(
        &mut self,
        next: Next,
        buckets: &Buckets,
        causes: &[TraceContext],
    ) -> Result<Option<std::time::Duration>, ServiceError> {
        let Prepared { header: record, builder, step, rendered, started } = match next {
            Next::Nothing => return Ok(None),
            Next::Hold(wait) => return Ok(Some(wait)),
            Next::Apply(prepared) => *prepared,
        };
        let record = &record;
        let dir = self.config.work_dir.join(format!(
            "gen-{}-{}-{}",
            record.version.epoch,
            record.version.generation,
            portico_bus::unix_ms()
        ));
        if let Some(applied) = &mut self.applied {
            // The same version again (trust material changed): nothing to do when HAProxy
            // runs the same rendering.
            if applied.version == record.version {
                let same = match &step.commands {
                    Some(commands) => commands.is_empty(),
                    None => {
                        let digest = files_digest(step.changed.iter().map(|(p, c)| (p.as_str(), c.as_slice())));
                        if applied.files.is_none() {
                            let current = self
                                .haproxy
                                .lock()
                                .await
                                .as_ref()
                                .and_then(|h| h.current_dir())
                                .and_then(read_generation);
                            applied.files = current
                                .map(|files| files_digest(files.iter().map(|(p, c)| (p.as_str(), c.as_slice()))));
                        }
                        applied.files == Some(digest)
                    }
                };
                if same {
                    applied.builder = Some(builder);
                    if self.reported_error {
                        let record = AppliedRecord {
                            epoch: record.version.epoch,
                            generation: record.version.generation,
                            hash: record.hash.clone(),
                            error: None,
                            problems: AppliedRecord::capped(step.problems),
                            at_unix_ms: portico_bus::unix_ms(),
                            took_ms: 0,
                        };
                        tracing::info!(
                            generation = record.generation,
                            "HAProxy runs this generation as applied before"
                        );
                        self.unreported = Some((record, TraceContext::default()));
                        self.reported_error = false;
                        self.report(buckets).await?;
                    }
                    return Ok(None);
                }
            }
        }
        let span = tracing::info_span!(
            parent: None,
            "haproxy.apply",
            generation = record.version.generation,
            pieces_rendered = rendered,
            render_ms = started.elapsed().as_millis() as u64
        );
        let trace = portico_kit::telemetry::fold_causes(&span, causes);
        self.apply_rendered(record, builder, step, &dir, started, buckets, &trace).instrument(span).await?;
        Ok(None)
    }

    /// Write the generation to `dir` and make it what HAProxy runs (runtime commands, or a
    /// checked reload), and report the attempt in the applied bucket.
    #[allow(clippy::too_many_arguments)]
    async fn apply_rendered(
        &mut self,
        record: &Header,
        builder: ConfigBuilder,
        step: Step,
        dir: &std::path::Path,
        started: std::time::Instant,
        buckets: &Buckets,
        trace: &TraceContext,
    ) -> Result<(), ServiceError> {
        let (version, hash) = (record.version, record.hash.clone());
        let generation = version.generation;
        // The files the step did not change are those of the running generation: linked.
        let previous = self.haproxy.lock().await.as_ref().and_then(|h| h.current_dir()).map(std::path::Path::to_owned);
        let Step { commands, changed, names: file_names, problems } = step;
        let store = self.config.work_dir.join(crate::apply::STORE);
        let written =
            write_generation(dir, &file_names, &changed, previous.as_deref(), Some(&store), |name| builder.file(name));
        drop(changed);
        let result = match written {
            // The check and the reload confirmation block: on a blocking thread, never on an
            // async worker (block_in_place would also panic on a current-thread runtime).
            Ok(()) => {
                let slot = self.haproxy.clone();
                let dir = dir.to_owned();
                // The check and reload spans are children of haproxy.apply: the span goes along.
                let span = tracing::Span::current();
                match tokio::task::spawn_blocking(move || {
                    let _entered = span.enter();
                    let mut haproxy = slot.blocking_lock();
                    match haproxy.as_mut() {
                        Some(haproxy) => haproxy.update(&dir, commands.as_deref()),
                        None => Err(ApplyError::NotRunning),
                    }
                })
                .await
                {
                    Ok(result) => result,
                    // A panic while applying: the same as if it had happened here.
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                }
            }
            Err(e) => Err(e),
        };
        let error = match &result {
            Ok(how) => {
                self.applied = Some(AppliedState { version, files: None, builder: Some(builder) });
                portico_kit::admin::set_ready(true);
                portico_kit::admin::counter(
                    "portico_renderer_haproxy_applies_total",
                    "Configurations applied (through the runtime API, or by a confirmed reload).",
                    1.0,
                );
                match how {
                    Applied::Runtime(_) => portico_kit::admin::counter(
                        "portico_renderer_haproxy_runtime_updates_total",
                        "Configurations applied through the runtime API, without a reload.",
                        1.0,
                    ),
                    Applied::Reload => portico_kit::admin::counter(
                        "portico_renderer_haproxy_reloads_total",
                        "Configurations applied by a reload.",
                        1.0,
                    ),
                    Applied::ReloadAfterDrift => portico_kit::admin::counter(
                        "portico_renderer_haproxy_drift_reloads_total",
                        "Reloads after HAProxy refused a runtime command (it had drifted from the files).",
                        1.0,
                    ),
                }
                portico_kit::admin::gauge(
                    "portico_renderer_haproxy_generation",
                    "The model generation HAProxy runs.",
                    generation as f64,
                );
                portico_kit::admin::histogram(
                    "portico_renderer_haproxy_apply_duration_seconds",
                    "How long applies took (render, check, runtime commands or reload, confirmation).",
                    started.elapsed().as_secs_f64(),
                );
                portico_kit::admin::histogram_since(
                    "portico_renderer_haproxy_published_to_applied_seconds",
                    "From a model being published to HAProxy running it.",
                    &[],
                    record.published_at_ms,
                );
                portico_kit::admin::histogram_since(
                    "portico_renderer_haproxy_change_to_applied_seconds",
                    "End to end: from a change reaching the bus to HAProxy running it.",
                    &[],
                    record.changed_at_ms,
                );
                if let Some(haproxy) = self.haproxy.lock().await.as_ref() {
                    haproxy.prune(dir);
                    crate::apply::prune_store(&self.config.work_dir, &file_names);
                }
                tracing::info!(
                    generation,
                    how = ?how,
                    model_hash = hash.get(..12).unwrap_or(&hash), // from the bus: never sliced blindly
                    took_ms = started.elapsed().as_millis() as u64,
                    trace_id = trace.trace_id().unwrap_or("-"),
                    "applied"
                );
                None
            }
            Err(e) => {
                // The builder went ahead of what HAProxy runs: the next change is rendered
                // whole and applied by a checked reload (HAProxy keeps the previous one).
                drop(builder);
                portico_kit::admin::counter(
                    "portico_renderer_haproxy_apply_failures_total",
                    "Configurations refused or not confirmed (HAProxy kept the previous one).",
                    1.0,
                );
                let _ = std::fs::remove_dir_all(dir);
                tracing::warn!(generation, error = %e, "not applied; HAProxy keeps its previous configuration");
                Some(e.to_string())
            }
        };
        let record = AppliedRecord {
            epoch: version.epoch,
            generation,
            hash,
            error,
            problems: AppliedRecord::capped(problems),
            at_unix_ms: portico_bus::unix_ms(),
            took_ms: started.elapsed().as_millis() as u64,
        };
        self.reported_error = record.error.is_some();
        self.unreported = Some((record, trace.clone()));
        self.report(buckets).await
    }

    /// Put the record of the last attempt, unless it is on the bus already.
    async fn report(&mut self, buckets: &Buckets) -> Result<(), ServiceError> {
        let Some((record, trace)) = &self.unreported else { return Ok(()) };
        let key = format!("haproxy.{}", self.config.instance);
        buckets.applied.put(&key, seal(record, trace).into()).await.map_err(|e| BusError::StoreFailed {
            operation: "putting",
            bucket: names::APPLIED.to_owned(),
            key,
            reason: e.to_string(),
        })?;
        self.unreported = None;
        Ok(())
    }
}

/// Run until `shutdown` completes. HAProxy keeps running across sessions (see
/// `portico_bus::nats::supervise`); it starts on the last configuration applied in this
/// work directory, if any (so a restarted renderer never serves an older one), or on an
/// empty model (404 on the HTTP port), and an HAProxy left running by a renderer that died
/// is taken over through its master socket.
pub async fn run(config: ServiceConfig, shutdown: impl Future<Output = ()>) -> Result<(), ServiceError> {
    std::fs::create_dir_all(&config.work_dir)
        .map_err(|e| ServiceError::WorkDir(config.work_dir.clone(), e.to_string()))?;
    let (haproxy, started) = if config.external_haproxy {
        let (first, first_files) = first_generation(&config)?;
        let (binary, work_dir) = (config.haproxy.clone(), config.work_dir.clone());
        let haproxy = tokio::task::spawn_blocking(move || {
            Haproxy::adopt_external(&binary, &work_dir, &first, &first_files, |waited| {
                tracing::warn!(
                    waited_s = waited.as_secs(),
                    socket = %work_dir.join("master.sock").display(),
                    "no HAProxy answers on the master socket yet (is the haproxy container running?)"
                )
            })
        })
        .await
        .map_err(|e| ServiceError::WorkDir(config.work_dir.clone(), e.to_string()))??;
        let pid = haproxy.pid();
        (haproxy, Started::Adopted { pid })
    } else {
        start_or_adopt(&config).await?
    };
    match &started {
        Started::Adopted { pid } => tracing::info!(pid, "took over the HAProxy left running in the work directory"),
        Started::LastApplied(dir) => {
            tracing::info!(dir = %dir.display(), "started HAProxy on the last applied configuration")
        }
        Started::Empty => tracing::info!("started HAProxy on an empty configuration"),
    }
    // What HAProxy runs now, so that an older generation is never applied over it.
    let applied = haproxy.current_version().map(|(epoch, generation)| AppliedState {
        version: Version { epoch, generation },
        files: None,
        builder: None,
    });
    if let Some(AppliedState { version, .. }) = &applied {
        if version.generation > 0 {
            portico_kit::admin::set_ready(true);
        }
        tracing::info!(version = %version, "HAProxy runs a configuration applied earlier");
    }
    let mut renderer = Renderer {
        config,
        haproxy: std::sync::Arc::new(tokio::sync::Mutex::new(Some(haproxy))),
        applied,
        unreported: None,
        reported_error: false,
    };
    tracing::info!("HAProxy renderer running");
    let bus = renderer.config.bus.clone();
    portico_bus::nats::supervise(&bus, &[names::APPLIED], &mut renderer, shutdown, session).await?;
    tracing::info!("HAProxy renderer stopped");
    Ok(())
}

/// The empty first generation (`gen-0`) HAProxy starts on when nothing was applied in
/// the work directory: its directory and files.
fn first_generation(
    config: &ServiceConfig,
) -> Result<(PathBuf, std::collections::BTreeMap<String, Vec<u8>>), ServiceError> {
    let empty = Renderer::options_for(config)?;
    Ok((config.work_dir.join("gen-0"), render(&Model::default(), &Trust::new(), &empty).files))
}

/// `Haproxy::start_or_adopt` in the work directory: at start, and when HAProxy exited.
/// Starting (haproxy -c, waiting for the master socket) blocks: off the async workers.
async fn start_or_adopt(config: &ServiceConfig) -> Result<(Haproxy, Started), ServiceError> {
    let (first, first_files) = first_generation(config)?;
    let (binary, work_dir) = (config.haproxy.clone(), config.work_dir.clone());
    tokio::task::spawn_blocking(move || {
        Haproxy::start_or_adopt(&binary, &work_dir, &first, &first_files, &work_dir.join("haproxy.log"))
    })
    .await
    .map_err(|e| ServiceError::WorkDir(config.work_dir.clone(), e.to_string()))?
    .map_err(ServiceError::from)
}

/// How often the renderer checks that its HAProxy still runs.
const LIVENESS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

async fn session(renderer: &mut Renderer, buckets: Buckets) -> Result<std::convert::Infallible, ServiceError> {
    let buckets = &buckets;
    let mut inputs = RendererInputs::new(buckets).await?;
    let mut causes = Vec::new();
    // A deadline, not a duration: the other arms must not restart the wait.
    let mut wait: Option<tokio::time::Instant> = None;
    let mut liveness = tokio::time::interval(LIVENESS_EVERY);
    liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            change = inputs.next(buckets) => causes = change?,
            () = async { tokio::time::sleep_until(wait.unwrap_or_else(tokio::time::Instant::now)).await }, if wait.is_some() => {}
            _ = liveness.tick() => {
                if !renderer.keep_haproxy_running().await? {
                    continue;
                }
            }
        }
        renderer.report(buckets).await?;
        let next = renderer.prepare(&inputs)?;
        wait = renderer.converge(next, buckets, &causes).await?.map(|wait| tokio::time::Instant::now() + wait);
        portico_kit::admin::release_memory();
    }
}

impl Renderer {
    /// Check that HAProxy runs. One that exited (killed, crashed) is started again on the
    /// configuration it ran (the files on disk always equal what runs); an external one is
    /// waited for and followed once its container has started it again. Whether anything
    /// changed (then the renderer converges again).
    async fn keep_haproxy_running(&mut self) -> Result<bool, ServiceError> {
        let mut slot = self.haproxy.clone().lock_owned().await;
        let Some(haproxy) = slot.as_mut() else {
            // A restart was cancelled with its session: start (or adopt) it now.
            drop(slot);
            let (haproxy, _) = start_or_adopt(&self.config).await?;
            tracing::info!(pid = haproxy.pid(), "HAProxy runs again");
            self.applied = None;
            *self.haproxy.lock().await = Some(haproxy);
            return Ok(true);
        };
        if haproxy.alive() {
            return Ok(false);
        }
        let dead = haproxy.pid();
        if haproxy.is_external() {
            portico_kit::admin::set_ready(false);
            match crate::apply::running_master(&self.config.work_dir) {
                Some(pid) => {
                    tracing::info!(pid, "HAProxy (its own container) runs again; following it");
                    haproxy.follow_external(pid);
                    portico_kit::admin::set_ready(self.applied.is_some());
                    return Ok(true);
                }
                None => {
                    tracing::warn!(pid = dead, "HAProxy (its own container) is not running; waiting for it");
                    return Ok(false);
                }
            }
        }
        tracing::error!(pid = dead, "HAProxy exited; starting it again on the configuration it ran");
        portico_kit::admin::counter(
            "portico_renderer_haproxy_restarts_total",
            "Times HAProxy exited (killed, crashed) and the renderer started it again.",
            1.0,
        );
        // The dead master's socket and pid go with it; start anew from the work directory.
        *slot = None;
        drop(slot);
        let (haproxy, started) = start_or_adopt(&self.config).await?;
        tracing::info!(pid = haproxy.pid(), started = ?started, "HAProxy runs again");
        if !matches!(started, Started::LastApplied(_)) {
            // Not on what it ran: apply the current model from scratch.
            self.applied = None;
        }
        *self.haproxy.lock().await = Some(haproxy);
        Ok(true)
    }

    /// Files are named through `current` (see `apply`), so that generations differing in
    /// maps and addresses only have the same configuration text.
    fn options_for(config: &ServiceConfig) -> Result<Options, ServiceError> {
        let dir = current_base(&config.work_dir);
        let base_dir = dir
            .to_str()
            .unwrap_or_default()
            .parse()
            .map_err(|e: portico_model::GrammarError| ServiceError::WorkDir(dir.to_owned(), e.0))?;
        Ok(Options {
            base_dir,
            bind_address: config.bind_address,
            http_port: config.http_port,
            https_port: config.https_port,
        })
    }
}

//! `afas-sync run`: one process with the scheduler, the delivery worker,
//! the HTTP server and the control socket, on tokio (redb work runs on the
//! blocking pool). Like mini-redis, [`run`] takes a bound listener and a
//! shutdown future, so tests drive the real daemon.

pub mod control;
pub mod schedule;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use jiff::{Timestamp, ToSpan};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, RwLock};

use crate::app::{self, Deliver, Reply, Request};
use crate::config::Config;
use crate::http::Health;
use crate::store::Store;
use schedule::{Decision, Schedule};

/// How often the loop wakes: watchdog pings, delivery retries, and a
/// re-check of the wall clock (a suspended VM or a clock step is noticed
/// within this time, because sleeps are never longer).
const TICK: Duration = Duration::from_secs(15);

struct Shared {
    config: RwLock<Config>,
    store: Arc<Store>,
    /// Serializes everything that changes the state file.
    run_lock: Mutex<()>,
    health: Arc<Health>,
    /// A run committed: look at the target's unmanaged users once its
    /// changes are delivered.
    sweep_due: std::sync::atomic::AtomicBool,
    /// What delivery passes learnt about each target, for the next pass.
    limiters: crate::delivery::Limiters,
}

fn notify(state: &[sd_notify::NotifyState]) {
    // Not under systemd (no NOTIFY_SOCKET): nothing to do.
    let _ = sd_notify::notify(state);
}

/// When the latest run started (any outcome): the slot it served.
fn last_run_started(store: &Store) -> Option<Timestamp> {
    let runs = store.runs(200).ok()?;
    runs.iter()
        .find(|r| r.outcome != crate::model::Outcome::OnDemand)?
        .started_at
        .parse()
        .ok()
}

fn last_success(store: &Store) -> Option<Timestamp> {
    let runs = store.runs(200).ok()?;
    runs.iter()
        .find(|r| {
            matches!(
                r.outcome,
                crate::sync::Outcome::Success | crate::sync::Outcome::NothingToDo
            )
        })
        .and_then(|r| r.finished_at.parse().ok())
}

/// A scheduled run. Its changes are delivered by the worker, not here.
async fn run_sync(shared: &Shared) -> bool {
    let _guard = shared.run_lock.lock().await;
    let config = shared.config.read().await.clone();
    let req = Request::Sync {
        as_of: None,
        dry_run: false,
    };
    let result = app::handle(&config, &shared.store, &req, Deliver::Leave, &mut |_| {}).await;
    if let Some(ts) = last_success(&shared.store) {
        shared.health.last_success.store(ts.as_second(), Ordering::SeqCst);
    }
    match result {
        // Held is not a failure to retry: it waits for a person.
        Ok(Reply::Synced { run, .. }) => {
            if matches!(
                run.outcome,
                crate::model::Outcome::Success | crate::model::Outcome::NothingToDo
            ) {
                shared.sweep_due.store(true, Ordering::SeqCst);
            }
            !matches!(run.outcome, crate::model::Outcome::Failed)
        }
        Ok(Reply::SyncFailed { error, .. }) => {
            tracing::error!("sync failed, nothing was changed: {error}");
            false
        }
        Ok(_) => true,
        Err(e) => {
            tracing::error!("sync: {e}");
            false
        }
    }
}

/// Answers one control-socket call on the daemon's open store.
async fn answer(shared: &Shared, call: control::Call, stream: &mut tokio::net::UnixStream) -> std::io::Result<()> {
    let mutating = !matches!(
        call.request,
        Request::Status
            | Request::History { .. }
            | Request::RunShow { .. }
            | Request::Employee { .. }
            | Request::PlanShow { .. }
            | Request::Export { .. }
            | Request::Unmanaged { deactivate: None }
            | Request::OutboxList { .. }
            | Request::OutboxShow { .. }
    );
    let _guard = if mutating {
        Some(shared.run_lock.lock().await)
    } else {
        None
    };
    let config = shared.config.read().await.clone();
    let result = if let Request::Export { .. } = call.request {
        // Rows go out as the store yields them, through a small channel.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<control::Line>(256);
        let store = shared.store.clone();
        let reader = tokio::task::spawn_blocking(move || {
            app::export(&store, &mut |p| {
                let _ = tx.blocking_send(control::Line::Row(Box::new(p.clone())));
            })
        });
        while let Some(line) = rx.recv().await {
            control::write_line(stream, &line).await?;
        }
        reader
            .await
            .unwrap_or_else(|e| Err(app::AppError::Store(format!("export: {e}"))))
    } else {
        app::handle(&config, &shared.store, &call.request, Deliver::Wait, &mut |_| {}).await
    };
    if mutating {
        if let Some(ts) = last_success(&shared.store) {
            shared.health.last_success.store(ts.as_second(), Ordering::SeqCst);
        }
    }
    control::write_line(stream, &control::Line::Done(Box::new(result))).await
}

async fn control_loop(listener: tokio::net::UnixListener, shared: Arc<Shared>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            match control::read_call(&mut stream).await {
                Ok(call) => {
                    let _ = answer(&shared, call, &mut stream).await;
                }
                Err(e) => {
                    let refused = control::Line::Done(Box::new(Err(app::AppError::Request(e))));
                    let _ = control::write_line(&mut stream, &refused).await;
                }
            }
        });
    }
}

/// Publishes when the AFAS credentials stop working, and warns in the log
/// when that is near (a classic token always: it has an end date).
fn warn_expiry(config: &Config) {
    let expiry = crate::afas::expiry::publish_for(&config.afas, None);
    if let Some(w) = expiry.warning(jiff::Zoned::now().date()) {
        tracing::warn!("{w}");
    }
}

/// Reloads the configuration; an invalid one is refused and the old one
/// stays. Settings that need a restart are named.
async fn reload(shared: &Shared, config_path: &std::path::Path) {
    match Config::load(config_path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                tracing::warn!("{w}");
            }
            let mut current = shared.config.write().await;
            if loaded.config.store.path != current.store.path || loaded.config.http.bind != current.http.bind {
                tracing::warn!("store.path and http.bind changes take effect after a restart");
            }
            shared
                .health
                .max_staleness_secs
                .store(loaded.config.http.max_staleness_hours * 3600, Ordering::SeqCst);
            *current = loaded.config;
            tracing::info!("configuration reloaded from {}", config_path.display());
            warn_expiry(&current);
        }
        Err(e) => tracing::error!("reload refused, keeping the running configuration: {e}"),
    }
}

/// Opens the state file and the health figures the probes report.
async fn open_state(config: &Config) -> Result<(Arc<Store>, Arc<Health>), String> {
    let store = Arc::new(Store::open(&config.store.path).map_err(|e| e.to_string())?);
    let health = Health::new(config.http.max_staleness_hours * 3600);
    health.store_open.store(true, Ordering::SeqCst);
    if let Some(ts) = last_success(&store) {
        health.last_success.store(ts.as_second(), Ordering::SeqCst);
        crate::metrics::metrics().last_success.set(ts.as_second() as f64);
    }
    let s = store.clone();
    let _ = tokio::task::spawn_blocking(move || crate::sync::refresh_state_metrics(&s)).await;
    Ok((store, health))
}

/// The probes and /metrics get a thread and a runtime of their own: a sync
/// decodes AFAS pages on this runtime's workers, and a scrape that queued
/// behind a page decode was the p99 of /metrics under load.
fn spawn_http(
    http: TcpListener,
    health: Arc<Health>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<std::thread::JoinHandle<()>, String> {
    let http = http
        .into_std()
        .map_err(|e| format!("cannot hand the HTTP listener over: {e}"))?;
    std::thread::Builder::new()
        .name("afas-sync-http".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return tracing::error!("cannot start the HTTP runtime: {e}"),
            };
            rt.block_on(async move {
                match TcpListener::from_std(http) {
                    Ok(listener) => {
                        crate::http::serve(listener, health, async move {
                            let _ = stop.wait_for(|s| *s).await;
                        })
                        .await
                    }
                    Err(e) => tracing::error!("cannot serve HTTP: {e}"),
                }
            });
        })
        .map_err(|e| format!("cannot start the HTTP thread: {e}"))
}

/// When to try a failed run again: after 5, 15, 45 … minutes, at most
/// `schedule.retries` times; `None` after a success or the last retry.
fn next_retry(ok: bool, prev: Option<(Timestamp, u32)>, retries: u32, now: Timestamp) -> Option<(Timestamp, u32)> {
    match (ok, prev) {
        (true, _) => None,
        (false, Some((_, n))) if n >= retries => None,
        (false, prev) => {
            let n = prev.map(|(_, n)| n + 1).unwrap_or(1);
            let wait = 5 * 3i64.pow(n - 1);
            tracing::warn!("sync failed; retrying in {wait} minutes");
            now.checked_add((wait * 60).seconds()).ok().map(|t| (t, n))
        }
    }
}

/// The scheduler's state between ticks.
struct Ticks {
    installation_id: u64,
    last_slot_run: Option<Timestamp>,
    retry: Option<(Timestamp, u32)>,
    last_delivery: Timestamp,
    running: Option<tokio::task::JoinHandle<bool>>,
}

impl Ticks {
    /// Collects a finished run and plans its retry.
    async fn collect(&mut self, shared: &Shared, now: Timestamp) {
        let Some(task) = self.running.as_mut().filter(|t| t.is_finished()) else {
            return;
        };
        let ok = task.await.unwrap_or(false);
        self.running = None;
        // The run's changes go out now, not at the next 30 s mark.
        self.last_delivery = Timestamp::UNIX_EPOCH;
        let retries = shared.config.read().await.schedule.retries;
        self.retry = next_retry(ok, self.retry, retries, now);
    }

    /// Starts a run when a slot or a retry is due; returns when to look again.
    fn start_due(&mut self, shared: &Arc<Shared>, config: &Config, now: Timestamp, wake: Timestamp) -> Timestamp {
        let seed = schedule::installation_seed(self.installation_id, config.afas.base_url.as_str());
        let sched = match Schedule::new(
            &config.schedule.times,
            &config.schedule.time_zone,
            config.schedule.jitter_secs,
            seed,
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("schedule: {e}");
                return wake;
            }
        };
        let due_retry = self.retry.is_some_and(|(t, _)| now >= t);
        let start = || {
            let s = shared.clone();
            Some(tokio::spawn(async move { run_sync(&s).await }))
        };
        match sched.decide(now, self.last_slot_run) {
            Decision::RunNow => {
                self.last_slot_run = sched.last_at_or_before(now);
                self.retry = None;
                self.running = start();
                wake
            }
            _ if due_retry => {
                self.running = start();
                wake
            }
            Decision::WaitUntil(t) => wake.min(t),
        }
    }
}

/// Delivers what is due between runs (retries, after an outage, right
/// after a run). SIGTERM stops the pass at once and what it delivered is
/// recorded; returns true when SIGTERM came.
async fn deliver_due(
    shared: &Shared,
    config: &Config,
    now: Timestamp,
    stop: &tokio::sync::watch::Sender<bool>,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> bool {
    let Ok(_guard) = shared.run_lock.try_lock() else {
        return false;
    };
    let sinks = match crate::delivery::sinks(config, shared.store.clone()) {
        Ok(s) if !s.is_empty() => s,
        _ => return false,
    };
    let pass = crate::delivery::deliver_pass_until(
        config,
        &shared.store,
        &sinks,
        &shared.limiters,
        now.as_second(),
        false,
        stop.subscribe(),
    );
    tokio::pin!(pass);
    let mut stopping = false;
    let report = tokio::select! {
        r = &mut pass => r,
        _ = shutdown.as_mut() => {
            stopping = true;
            let _ = stop.send(true);
            pass.await
        }
    };
    if let Err(e) = report {
        tracing::error!("delivery: {e}");
    }
    if !stopping && shared.sweep_due.load(Ordering::SeqCst) {
        // A sweep that skipped itself (changes still wait, a held plan)
        // is tried again after the next pass.
        let skipped = app::unmanaged::sweep(config, &shared.store, app::Ask::Setting)
            .await
            .is_some_and(|s| s.skipped.is_some());
        shared.sweep_due.store(skipped, Ordering::SeqCst);
    }
    stopping
}

/// Runs the daemon until `shutdown` completes. `http` is already bound.
pub async fn run(
    config_path: PathBuf,
    config: Config,
    http: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let (store, health) = open_state(&config).await?;
    warn_expiry(&config);
    let socket = control::socket_path(&config);
    let control_listener =
        control::bind(&socket).map_err(|e| format!("cannot create the control socket {}: {e}", socket.display()))?;
    let shared = Arc::new(Shared {
        config: RwLock::new(config),
        store,
        run_lock: Mutex::new(()),
        health: health.clone(),
        sweep_due: false.into(),
        limiters: crate::delivery::Limiters::default(),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let http_task = spawn_http(http, health, stop_rx)?;
    let control_task = tokio::spawn(control_loop(control_listener, shared.clone()));
    // A long first import is seen moving in the journal.
    let progress_task = tokio::spawn(crate::progress::log_while_running());

    notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!("afas-sync daemon ready");
    let watchdog = sd_notify::watchdog_enabled().is_some();
    #[cfg(unix)]
    let mut hangup =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(|e| e.to_string())?;
    tokio::pin!(shutdown);
    let installation_id = {
        let s = shared.store.clone();
        tokio::task::spawn_blocking(move || s.installation_id())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot read the installation id from the state file: {e}"))?
    };
    let mut t = Ticks {
        installation_id,
        last_slot_run: last_run_started(&shared.store),
        retry: None,
        last_delivery: Timestamp::UNIX_EPOCH,
        running: None,
    };
    loop {
        if watchdog {
            notify(&[sd_notify::NotifyState::Watchdog]);
        }
        let now = Timestamp::now();
        t.collect(&shared, now).await;
        let mut wake = now
            .checked_add(jiff::SignedDuration::try_from(TICK).unwrap_or_default())
            .unwrap_or(now);
        if t.running.is_none() {
            let config = shared.config.read().await.clone();
            wake = t.start_due(&shared, &config, now, wake);
            if t.running.is_none() && now.as_second() - t.last_delivery.as_second() >= 30 {
                t.last_delivery = now;
                if deliver_due(&shared, &config, now, &stop_tx, &mut shutdown).await {
                    break;
                }
            }
        }
        if let Some((at, _)) = t.retry {
            wake = wake.min(at);
        }
        let sleep_for = Duration::from_millis(
            (wake.as_millisecond() - Timestamp::now().as_millisecond()).clamp(50, TICK.as_millis() as i64) as u64,
        );
        #[cfg(unix)]
        tokio::select! {
            _ = &mut shutdown => break,
            _ = hangup.recv() => reload(&shared, &config_path).await,
            _ = tokio::time::sleep(sleep_for) => {}
        }
        #[cfg(not(unix))]
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(sleep_for) => {}
        }
    }

    notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    // A run still fetching is abandoned: nothing of it was written. A commit
    // already under way runs on its own thread and completes before the
    // process exits (the runtime waits for it), so the state file holds the
    // whole run or none of it; delivery is the worker's, which stopped above.
    if let Some(task) = t.running {
        task.abort();
        let _ = task.await;
    }
    control_task.abort();
    progress_task.abort();
    let _ = tokio::task::spawn_blocking(move || http_task.join()).await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

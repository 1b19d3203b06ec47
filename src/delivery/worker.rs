//! The delivery worker: one pass over each sink's due entries, in order per
//! employee and employees in parallel, with backoff, `Retry-After`, dead
//! letters, and a sink that stops when its target refuses everything.

use super::limit::Limiter;
use super::pass::*;
use super::record::*;
use super::*;

/// One pass over every sink's due entries at time `now` (Unix seconds; the
/// tests pass a simulated clock). `force` tries every pending entry now,
/// backoff or not: each sync run gives the outbox one full attempt.
pub async fn deliver_pass(
    config: &Config,
    store: &Arc<Store>,
    sinks: &[Arc<Sink>],
    limiters: &Limiters,
    now: i64,
    force: bool,
) -> Result<PassReport, DeliveryError> {
    let (_keep, never) = tokio::sync::watch::channel(false);
    deliver_pass_until(config, store, sinks, limiters, now, force, never).await
}

/// [`deliver_pass`] that stops as soon as `stop` turns true (SIGTERM): no
/// new entry is started, requests in flight are dropped (their entries stay
/// pending and are sent again, idempotently, by the next process), and what
/// was delivered is recorded before it returns.
pub async fn deliver_pass_until(
    config: &Config,
    store: &Arc<Store>,
    sinks: &[Arc<Sink>],
    limiters: &Limiters,
    now: i64,
    force: bool,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<PassReport, DeliveryError> {
    let mut report = PassReport::default();
    for sink in sinks {
        if *stop.borrow() {
            break;
        }
        let pass = SinkPass {
            sink: sink.clone(),
            name: sink.name(),
            now,
            max_age: (config.delivery.max_age_hours * 3600) as i64,
            limiter: limiters.get(sink, &config.delivery, store, now).await,
            window: config.delivery.window as usize,
            in_flight: 2 * config.delivery.max_parallelism as usize,
            down: std::sync::Mutex::new(None),
            refusals: std::sync::Mutex::new(Refusals::default()),
            stop: stop.clone(),
        };
        let mut recorder = Recorder {
            store: store.clone(),
            name: sink.name(),
            batch: Vec::new(),
            report: &mut report,
        };
        let limiter = pass.limiter.clone();
        let outcome = pass_over(Arc::new(pass), store, force, &mut recorder).await?;
        recorder.finish(outcome).await?;
        keep_pace(store, sink, &limiter, now).await;
    }
    crate::progress::idle();
    Ok(report)
}

/// Each sink's limiter, owned by the daemon (for its life) or by a command
/// (for its passes) and handed to every pass, so what a pass learnt about
/// the target carries into the next; a reload with other numbers or
/// another target starts afresh. A new owner starts from what the last
/// process learnt about the same target (kept in the state file), if
/// recent.
#[derive(Default)]
pub struct Limiters {
    all: std::sync::Mutex<std::collections::HashMap<&'static str, (LimiterKey, Arc<Limiter>)>>,
}

/// What a limiter was made for: the parallelism settings and the target.
type LimiterKey = (u32, u32, u64);

impl Limiters {
    async fn get(&self, sink: &Sink, c: &crate::config::DeliveryConfig, store: &Arc<Store>, now: i64) -> Arc<Limiter> {
        let (name, key) = (sink.name(), (c.parallelism, c.max_parallelism, sink.target()));
        if let Some((_, l)) = self
            .all
            .lock()
            .ok()
            .and_then(|a| a.get(name).filter(|(k, _)| *k == key).cloned())
        {
            return l;
        }
        let s = store.clone();
        let kept = match blocking(move || s.sink_pace(name)).await {
            Ok(kept) => kept,
            Err(e) => {
                tracing::debug!(
                    sink = name,
                    "what the last process learnt about the target cannot be read: {e}"
                );
                None
            }
        };
        let kept = kept.filter(|p| p.target == key.2 && now - p.at <= PACE_KEPT_FOR && p.at <= now);
        if let Some(p) = &kept {
            tracing::debug!(sink = name, concurrency = p.concurrency, rate = ?p.rate, "starting at the pace learnt before");
        }
        let l = Limiter::new(name, c.parallelism, c.max_parallelism, kept.as_ref());
        if let Ok(mut a) = self.all.lock() {
            a.insert(name, (key, l.clone()));
        }
        l
    }
}

/// How long what a sink learnt about its target is trusted: a target's
/// limits change, and a pace last changed a week ago is learnt anew.
const PACE_KEPT_FOR: i64 = 7 * 24 * 3600;

/// Keeps what the pass taught the sink's limiter, for the next process. A
/// failure only means the next process learns it again.
async fn keep_pace(store: &Arc<Store>, sink: &Sink, limiter: &Arc<Limiter>, now: i64) {
    let Some(pace) = limiter.to_keep(sink.target(), now) else {
        return;
    };
    let (s, name) = (store.clone(), sink.name());
    match blocking(move || s.set_sink_pace(name, &pace)).await {
        Ok(()) => {}
        Err(e) => tracing::debug!(sink = name, "cannot keep what the sink learnt about its target: {e}"),
    }
}

/// Delivers the due chains of one sink, as many employees at a time as its
/// limiter allows, recording results as they come. The outbox is read in
/// windows of whole chains, in employee order, one ahead of delivery; no
/// more chains are started than one window holds, so memory stays the same
/// whatever the outbox holds.
async fn pass_over(
    pass: Arc<SinkPass>,
    store: &Arc<Store>,
    force: bool,
    recorder: &mut Recorder<'_>,
) -> Result<SinkOutcome, DeliveryError> {
    let (name, now) = (pass.name, pass.now);
    let (due, run_chain) = {
        let s = store.clone();
        blocking(move || Ok((s.due_summary(name, now, force)?, s.due_run_chain(name, now, force)?))).await?
    };
    crate::progress::begin_delivery(name, due.entries + run_chain.len() as u64);
    if due.chains > 0 {
        pass.sink.prepare(&due).await;
    }
    let bulk = match pass.sink.as_scim() {
        Some(s) if due.chains > 0 => s.bulk_plan().await,
        _ => None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Handled>();
    let windows = read_windows(store.clone(), name, now, force, pass.window, due.chains > 0);
    let driver = {
        let pass = pass.clone();
        tokio::spawn(async move {
            drive(&pass, bulk, windows, &tx).await?;
            // Run events ("sync.completed" …) go after the employee events
            // of the same pass, so a receiver sees the run's changes first.
            run_chain_of(&pass, run_chain, &tx).await;
            Ok::<(), DeliveryError>(())
        })
    };
    let mut refused = Vec::new();
    let mut tick = tokio::time::interval(RECORD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let recorded: Result<(), DeliveryError> = async {
        loop {
            tokio::select! {
                h = rx.recv() => match h {
                    Some(Handled::Result(seq, r)) => {
                        recorder.batch.push((seq, r));
                        if recorder.batch.len() >= RECORD_BATCH {
                            recorder.flush().await?;
                        }
                    }
                    Some(r @ Handled::Refused(..)) => {
                        refused.push(r);
                        if refused.len() >= REFUSALS_HELD {
                            settle_old_refusals(&pass, &mut refused, recorder);
                        }
                    }
                    None => return Ok(()),
                },
                _ = tick.tick() => recorder.flush().await?,
            }
        }
    }
    .await;
    if let Err(e) = recorded {
        // Nothing more is delivered that could not be recorded.
        driver.abort();
        return Err(e);
    }
    driver.await.map_err(|e| DeliveryError::Task(e.to_string()))??;
    Ok(SinkOutcome {
        refused,
        stopped_on: pass.refusals.lock().ok().and_then(|r| r.stopped_on.clone()),
        stop_message: pass.down.lock().ok().and_then(|d| d.clone()),
    })
}

/// Refusals a pass holds for its end before it settles the ones that can
/// no longer stop the sink: memory stays bounded when every change is
/// refused with words of its own (a detail quoting each address).
const REFUSALS_HELD: usize = 1024;

/// Settles, as dead, the held refusals whose reason is neither the one of
/// the current run of refusals nor the one that stopped the sink. (One of
/// them could still become the stopping reason later in the pass; then it
/// stays dead-lettered, with its reason, for `outbox retry`.)
fn settle_old_refusals(pass: &SinkPass, refused: &mut Vec<Handled>, recorder: &mut Recorder<'_>) {
    let (last, stopped) = pass
        .refusals
        .lock()
        .map(|r| (r.last.clone(), r.stopped_on.clone()))
        .unwrap_or_default();
    refused.retain(|h| {
        let Handled::Refused(seq, e, attempt) = h else {
            return true;
        };
        let reason = Some(&attempt.message);
        if reason == last.as_ref() || reason == stopped.as_ref() {
            return true;
        }
        let dead = super::fate::settle_refusal(e, &attempt.message, None, None);
        recorder
            .batch
            .push((*seq, EntryResult::Update(dead, Some(attempt.clone()))));
        false
    });
}

/// The windows of a sink's due chains, read on the blocking pool one
/// ahead of the one being delivered. A read that fails ends the stream
/// with its error.
fn read_windows(
    store: Arc<Store>,
    sink: &'static str,
    now: i64,
    force: bool,
    window: usize,
    any: bool,
) -> tokio::sync::mpsc::Receiver<Result<Vec<Vec<Job>>, DeliveryError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    if !any {
        return rx;
    }
    tokio::spawn(async move {
        let mut after: Option<String> = None;
        loop {
            let s = store.clone();
            let from = after.take();
            let w = blocking(move || s.due_window(sink, from.as_deref(), window, now, force)).await;
            let (chains, next) = match w {
                Ok(w) => (Ok(w.chains), w.next),
                Err(e) => (Err(e), None),
            };
            let last = chains.is_err() || next.is_none();
            if tx.send(chains).await.is_err() || last {
                return;
            }
            after = next;
        }
    });
    rx
}

/// Delivers the windows' chains: one task per employee, twice as many at
/// once as the limiter may let send (a task costs far more memory than the
/// entries a window holds), or in Bulk rounds a window at a time. What the
/// sink remembers of an employee is let go once its chain is done.
async fn drive(
    pass: &Arc<SinkPass>,
    bulk: Option<super::scim::bulk::BulkPlan>,
    mut windows: tokio::sync::mpsc::Receiver<Result<Vec<Vec<Job>>, DeliveryError>>,
    out: &Out,
) -> Result<(), DeliveryError> {
    let mut tasks = tokio::task::JoinSet::new();
    let at_once = pass.in_flight.max(1);
    while going(pass) {
        let Some(chains) = windows.recv().await else { break };
        let chains = chains?;
        if let Some(plan) = &bulk {
            let keys: Vec<String> = chains.iter().filter_map(|c| c.first()).map(chain_key).collect();
            super::batch::rounds(pass, plan, chains, out).await?;
            for key in keys {
                pass.sink.chain_done(&key);
            }
            continue;
        }
        for chain in chains {
            while tasks.len() >= at_once {
                if let Some(r) = tasks.join_next().await {
                    joined(r)?;
                }
            }
            if !going(pass) {
                break;
            }
            let (pass, out) = (pass.clone(), out.clone());
            tasks.spawn(async move {
                let key = chain.first().map(chain_key);
                run_chain_of(&pass, chain, &out).await;
                if let Some(key) = key {
                    pass.sink.chain_done(&key);
                }
            });
        }
    }
    while let Some(r) = tasks.join_next().await {
        joined(r)?;
    }
    Ok(())
}

fn chain_key(job: &Job) -> String {
    job.entry.item.order_key().to_string()
}

fn joined(r: Result<(), tokio::task::JoinError>) -> Result<(), DeliveryError> {
    r.map_err(|e| DeliveryError::Task(e.to_string()))
}

/// Delivers one employee's entries in order, until one must wait.
async fn run_chain_of(pass: &SinkPass, chain: Vec<Job>, out: &Out) {
    for job in chain {
        if !deliver_one(pass, job, out).await {
            break;
        }
    }
}

/// Delivers until the outbox is empty, every sink is down, or `wait` has
/// passed. Returns what all passes delivered and dead-lettered, and the
/// last pass's view of what is left.
pub async fn deliver_until_done(
    config: &Config,
    store: &Arc<Store>,
    sinks: &[Arc<Sink>],
    limiters: &Limiters,
    wait: Duration,
    mut force: bool,
) -> Result<PassReport, DeliveryError> {
    let deadline = tokio::time::Instant::now() + wait;
    let (mut delivered, mut dead_lettered) = (0, 0);
    loop {
        let now = jiff::Timestamp::now().as_second();
        let mut report = deliver_pass(config, store, sinks, limiters, now, force).await?;
        force = false;
        delivered += report.delivered;
        dead_lettered += report.dead_lettered;
        report.delivered = delivered;
        report.dead_lettered = dead_lettered;
        if report.pending == 0 || report.down.len() == sinks.len() {
            return Ok(report);
        }
        let due_in = report.next_due.map(|d| (d - now).max(0) as u64).unwrap_or(1);
        let next = tokio::time::Instant::now() + Duration::from_secs(due_in.max(1));
        if next > deadline {
            return Ok(report);
        }
        tokio::time::sleep_until(next).await;
    }
}

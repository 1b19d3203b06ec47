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
    now: i64,
    force: bool,
) -> Result<PassReport, DeliveryError> {
    let (_keep, never) = tokio::sync::watch::channel(false);
    deliver_pass_until(config, store, sinks, now, force, never).await
}

/// [`deliver_pass`] that stops as soon as `stop` turns true (SIGTERM): no
/// new entry is started, requests in flight are dropped (their entries stay
/// pending and are sent again, idempotently, by the next process), and what
/// was delivered is recorded before it returns.
pub async fn deliver_pass_until(
    config: &Config,
    store: &Arc<Store>,
    sinks: &[Arc<Sink>],
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
            limiter: limiter_for(sink, &config.delivery, store).await,
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
        keep_pace(store, sink, &limiter).await;
    }
    crate::progress::idle();
    Ok(report)
}

/// One limiter per sink for the life of the process, so what a pass learnt
/// about the target carries into the next; a reload with other numbers or
/// another target starts afresh. A new process starts from what the last
/// one learnt about the same target (kept in the state file), if recent.
async fn limiter_for(sink: &Sink, c: &crate::config::DeliveryConfig, store: &Arc<Store>) -> Arc<Limiter> {
    type Limiters = std::collections::HashMap<&'static str, ((u32, u32, u64), Arc<Limiter>)>;
    static LIMITERS: std::sync::OnceLock<std::sync::Mutex<Limiters>> = std::sync::OnceLock::new();
    let (name, key) = (sink.name(), (c.parallelism, c.max_parallelism, sink.target()));
    let all = LIMITERS.get_or_init(Default::default);
    if let Some((_, l)) = all
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
    let now = jiff::Timestamp::now().as_second();
    let kept = kept.filter(|p| p.target == key.2 && now - p.at <= PACE_KEPT_FOR && p.at <= now);
    if let Some(p) = &kept {
        tracing::debug!(sink = name, concurrency = p.concurrency, rate = ?p.rate, "starting at the pace learnt before");
    }
    let l = Limiter::new(name, c.parallelism, c.max_parallelism, kept.as_ref());
    if let Ok(mut a) = all.lock() {
        a.insert(name, (key, l.clone()));
    }
    l
}

/// How long what a sink learnt about its target is trusted: a target's
/// limits change, and a pace last changed a week ago is learnt anew.
const PACE_KEPT_FOR: i64 = 7 * 24 * 3600;

/// Keeps what the pass taught the sink's limiter, for the next process. A
/// failure only means the next process learns it again.
async fn keep_pace(store: &Arc<Store>, sink: &Sink, limiter: &Arc<Limiter>) {
    let now = jiff::Timestamp::now().as_second();
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
/// limiter allows, recording results as they come.
async fn pass_over(
    pass: Arc<SinkPass>,
    store: &Arc<Store>,
    force: bool,
    recorder: &mut Recorder<'_>,
) -> Result<SinkOutcome, DeliveryError> {
    let name = pass.name;
    let jobs = {
        let s = store.clone();
        blocking(move || load_jobs(&s, name)).await?
    };
    // Chains per employee, in outbox order.
    let mut chains: BTreeMap<String, Vec<Job>> = BTreeMap::new();
    for job in jobs.into_iter().filter(|j| !j.entry.dead) {
        chains
            .entry(job.entry.item.order_key().to_string())
            .or_default()
            .push(job);
    }
    let due = |chain: &Vec<Job>| chain.first().is_some_and(|j| force || j.entry.next_at <= pass.now);
    chains.retain(|_, chain| due(chain));
    // Run events ("sync.completed" …) go after the employee events of the
    // same pass, so a receiver sees the run's changes first.
    let run_chain = chains.remove("");
    let entries = chains.values().chain(run_chain.iter()).map(|c| c.len() as u64).sum();
    crate::progress::begin_delivery(name, entries);
    if !chains.is_empty() {
        let first: Vec<&Job> = chains.values().filter_map(|c| c.first()).collect();
        pass.sink.prepare(&first).await;
    }
    let bulk = match pass.sink.as_scim() {
        Some(s) if !chains.is_empty() => s.bulk_plan().await,
        _ => None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Handled>();
    let driver = {
        let pass = pass.clone();
        tokio::spawn(async move {
            if let Some(plan) = bulk {
                super::batch::rounds(&pass, plan, chains.into_values().collect(), &tx).await?;
            } else {
                let mut tasks = tokio::task::JoinSet::new();
                for chain in chains.into_values() {
                    let (pass, tx) = (pass.clone(), tx.clone());
                    tasks.spawn(async move { run_chain_of(&pass, chain, &tx).await });
                }
                while let Some(r) = tasks.join_next().await {
                    r.map_err(|e| DeliveryError::Task(e.to_string()))?;
                }
            }
            // The first entry of a waiting chain holds the later ones back.
            if let Some(chain) = run_chain {
                run_chain_of(&pass, chain, &tx).await;
            }
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
                    Some(r @ Handled::Refused(..)) => refused.push(r),
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

/// Delivers one employee's entries in order, until one must wait.
async fn run_chain_of(pass: &SinkPass, chain: Vec<Job>, out: &Out) {
    for job in chain {
        if !deliver_one(pass, job, out).await {
            break;
        }
    }
}

pub(super) fn load_jobs(store: &Store, sink: &str) -> Result<Vec<Job>, StoreError> {
    let mut jobs = Vec::new();
    let mut runs: BTreeMap<u64, Option<RunRecord>> = BTreeMap::new();
    for (seq, entry) in store.outbox_entries(sink)? {
        let (mutation, run, target_id, target_version) = match &entry.item {
            OutboxItem::Mutation { run, index, key } => (
                store.mutation(*run, *index)?,
                None,
                store.target_id(sink, key.as_str())?,
                store.target_version(sink, key.as_str())?,
            ),
            OutboxItem::Run { run } => {
                if !runs.contains_key(run) {
                    runs.insert(*run, store.run_if_exists(*run)?);
                }
                (None, runs.get(run).cloned().flatten(), None, None)
            }
        };
        jobs.push(Job {
            seq,
            entry,
            mutation,
            run,
            target_id,
            target_version,
        });
    }
    Ok(jobs)
}

/// Delivers until the outbox is empty, every sink is down, or `wait` has
/// passed. Returns what all passes delivered and dead-lettered, and the
/// last pass's view of what is left.
pub async fn deliver_until_done(
    config: &Config,
    store: &Arc<Store>,
    sinks: &[Arc<Sink>],
    wait: Duration,
    mut force: bool,
) -> Result<PassReport, DeliveryError> {
    let deadline = tokio::time::Instant::now() + wait;
    let (mut delivered, mut dead_lettered) = (0, 0);
    loop {
        let now = jiff::Timestamp::now().as_second();
        let mut report = deliver_pass(config, store, sinks, now, force).await?;
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

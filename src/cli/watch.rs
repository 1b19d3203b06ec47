//! Watching long work from the command line. At a terminal (stderr is a
//! TTY, no `--json`): live bars per AFAS connector and per sink, cleared
//! when the work ends so the summary lines print as they always did.
//! Anywhere else: no bars and no control characters, an INFO line with the
//! same counts at a steady interval instead (`crate::progress`).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::Config;
use crate::progress::{Phase, Snapshot};

/// Where the counts come from: this process, or a running daemon that
/// does the work for us.
pub(super) enum Source {
    Local,
    Daemon(Box<Config>),
}

pub(super) struct Watch {
    task: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The bars on screen, if any: log lines are written around them.
static ON_SCREEN: std::sync::Mutex<Option<MultiProgress>> = std::sync::Mutex::new(None);

fn on_screen() -> std::sync::MutexGuard<'static, Option<MultiProgress>> {
    ON_SCREEN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where log lines go: stderr, with the bars lifted out of the way while
/// a line is written, so neither garbles the other.
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bars = on_screen().clone();
        match bars {
            Some(m) => m.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Starts watching; `finish` ends it. `no_bars`: `--json`, or output that
/// bars would tear.
pub(super) fn start(no_bars: bool, source: Source) -> Watch {
    if no_bars || !std::io::stderr().is_terminal() {
        // The daemon logs its own progress in its journal.
        let task = match source {
            Source::Local => tokio::spawn(crate::progress::log_while_running()),
            Source::Daemon(_) => tokio::spawn(async {}),
        };
        return Watch { task, stop: None };
    }
    bars(source)
}

/// Bars, whatever stderr is (the caller checked it is a terminal).
fn bars(source: Source) -> Watch {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8));
    *on_screen() = Some(multi.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(draw(multi, source, stopped));
    Watch { task, stop: Some(stop) }
}

/// Bars at a terminal, nothing elsewhere: for work whose progress is
/// already logged (the demo's in-process daemon logs its own).
pub(super) fn bars_at_terminal() -> Option<Watch> {
    std::io::stderr().is_terminal().then(|| bars(Source::Local))
}

impl Watch {
    /// Stops drawing and removes every bar from the terminal before the
    /// caller prints its summary.
    pub(super) async fn finish(self) {
        match self.stop {
            Some(stop) => {
                let _ = stop.send(());
                let _ = self.task.await;
            }
            None => self.task.abort(),
        }
    }
}

async fn snapshot(source: &Source) -> Option<Snapshot> {
    match source {
        Source::Local => Some(crate::progress::snapshot()),
        Source::Daemon(cfg) => {
            let mut ignore = |_: &crate::model::Provisioned| {};
            match crate::daemon::control::call(cfg, &crate::app::Request::Status, &mut ignore).await {
                Ok(Some(Ok(crate::app::Reply::Status(s)))) => Some(s.now.unwrap_or_default()),
                _ => None,
            }
        }
    }
}

async fn draw(multi: MultiProgress, source: Source, mut stopped: tokio::sync::oneshot::Receiver<()>) {
    let spinner = ProgressStyle::with_template("{spinner} {prefix:.bold} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let bar = ProgressStyle::with_template("{spinner} {prefix:.bold} [{bar:30}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let phase = multi.add(ProgressBar::new_spinner().with_style(spinner.clone()));
    let mut connectors: Vec<(String, ProgressBar)> = Vec::new();
    let mut sinks: Vec<(String, ProgressBar)> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(150));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stopped => break,
        }
        let Some(snap) = snapshot(&source).await else { continue };
        // Between phases (a run committed, delivery not begun) say so.
        phase.set_prefix(match snap.phase {
            Phase::Idle => "working",
            p => p.as_str(),
        });
        phase.set_message(format!("{} s", snap.phase_secs));
        if snap.phase == Phase::Exporting {
            phase.set_message(format!("{} rows", snap.exported));
        }
        phase.tick();
        for c in &snap.connectors {
            let pb = match connectors.iter().find(|(n, _)| *n == c.connector) {
                Some((_, pb)) => pb.clone(),
                None => {
                    let pb = multi.add(ProgressBar::new_spinner().with_style(spinner.clone()));
                    pb.set_prefix(c.connector.clone());
                    connectors.push((c.connector.clone(), pb.clone()));
                    pb
                }
            };
            pb.set_message(format!("{} pages, {} rows", c.pages, c.rows));
            pb.tick();
        }
        for s in snap.sinks.iter().filter(|s| s.active) {
            let pb = match sinks.iter().find(|(n, _)| *n == s.sink) {
                Some((_, pb)) => pb.clone(),
                None => {
                    let pb = multi.add(ProgressBar::new(s.due).with_style(bar.clone()));
                    pb.set_prefix(format!("delivering to {}", s.sink));
                    sinks.push((s.sink.clone(), pb.clone()));
                    pb
                }
            };
            pb.set_length(s.due);
            pb.set_position(s.done + s.failed);
            let eta = s.eta_secs.map(|e| format!(", about {e} s left")).unwrap_or_default();
            pb.set_message(format!("{} failed, {:.0}/s{eta}", s.failed, s.rate));
        }
    }
    for pb in connectors.iter().chain(sinks.iter()).map(|(_, pb)| pb).chain([&phase]) {
        pb.finish_and_clear();
    }
    let _ = multi.clear();
    *on_screen() = None;
}

//! The process around the appliance: `run` (start, sd_notify, signals,
//! reload on SIGHUP with its outcome in a status file, drain on SIGTERM),
//! the file-descriptor check, and `request_reload` for `sms-conduit reload`.

use super::*;

/// Descriptors beyond the listeners' connection limits: the store, the
/// audit log, carrier and webhook connections, listeners, logs.
pub(super) const FD_HEADROOM: u64 = 256;

/// Makes sure the open-file limit can hold every connection the config
/// allows (`api.max_connections` + `smpp_server.max_connections` +
/// [`FD_HEADROOM`]): raises the soft limit up to the hard one if needed,
/// and warns when even that is short (then accepts would fail with "Too
/// many open files" before the configured limits refuse anything).
pub(super) fn check_fd_limit(config: &Config) {
    let smpp =
        if config.smpp_server.listen.is_some() || config.smpp_server.plaintext_listen.is_some() {
            config.smpp_server.max_connections as u64
        } else {
            0
        };
    let needed = config.api.max_connections as u64 + smpp + FD_HEADROOM;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur < needed {
        let raised = libc::rlimit {
            rlim_cur: needed.min(lim.rlim_max),
            rlim_max: lim.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = raised.rlim_cur;
        }
    }
    if lim.rlim_cur < needed {
        tracing::warn!(
            limit = lim.rlim_cur,
            needed,
            "the open-file limit is below api.max_connections + smpp_server.max_connections + {FD_HEADROOM}: raise LimitNOFILE= in the unit or lower those limits"
        );
    } else {
        tracing::info!(limit = lim.rlim_cur, needed, "open-file limit");
    }
}

/// `sms-conduit run`, whole: loads the config, builds the async runtime
/// with `node.worker_threads` threads, and runs the appliance on it.
///
/// One thread by default. At a steady rate each network event (a request,
/// a submit_sm_resp, a receipt, a webhook's answer) wakes the process;
/// with two threads the runtime also wakes the idle one to share the work,
/// which on a small VM costs more than it brings. Measured on this 2-core
/// VM (BENCHMARKS.md, session 10): one thread against two, 0.89 of the
/// CPU per message at 1,000 and 3,000 msg/s and 0.92 flat out, with 6%
/// less flat-out throughput; the p99 latency no worse.
///
/// One thread is tokio's current-thread runtime, not the multi-thread one
/// with one worker: no work-stealing bookkeeping or hand-off between the
/// thread that blocks on the appliance and the worker on each wake-up.
/// Measured (session 11): 0.92–0.93 of the CPU per message at 1,000 and
/// 3,000 msg/s, 0.96 flat out with 6% more throughput. Nothing in the
/// appliance blocks its runtime thread (the store's writer and its
/// fsyncs are a thread of their own; `block_in_place`, which a current-
/// thread runtime refuses, is not used).
pub fn run_blocking(config_path: &Path) -> Result<(), AppError> {
    let config = Config::load(config_path)?;
    let threads = config.node.worker_threads;
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let rt = builder
        .enable_all()
        .build()
        .map_err(|e| AppError::Other(format!("starting the async runtime: {e}")))?;
    rt.block_on(run_loaded(config, config_path))
}

/// The appliance under systemd (or a terminal), on the runtime built for it.
async fn run_loaded(config: Config, config_path: &Path) -> Result<(), AppError> {
    service::harden_process(config.node.lock_memory)?;
    check_fd_limit(&config);
    let mut signals = Signals::new()?;
    let drain = config.node.drain;
    let status_path = config.node.state_dir.join(RELOAD_STATUS_FILE);
    let mut app = App::start(config).await?;
    let mut generation: u64 = 0;
    write_reload_status(&status_path, generation, &Ok(()));

    let watchdog = notify::Watchdog::from_env();
    let heartbeat = watchdog.as_ref().map(|w| w.heartbeat());
    let beat_every = watchdog
        .as_ref()
        .map_or(Duration::from_secs(5), |w| w.beat_every());
    // The process's own phase of the shutdown tree, after the app's: the
    // watchdog pings until the drain is over.
    let watchdog_stop = tokio_util::sync::CancellationToken::new();
    let process_tasks = tokio_util::task::TaskTracker::new();
    if let Some(w) = watchdog {
        w.spawn(watchdog_stop.clone(), &process_tasks);
    }
    notify_or_log(notify::ready());
    let mut tick = tokio::time::interval(beat_every);
    loop {
        tokio::select! {
            ev = signals.recv() => match ev {
                Event::Reload => {
                    notify_or_log(notify::reloading());
                    let outcome = match Config::load(config_path) {
                        Ok(new) => app.reload(new).await.map_err(|e| e.to_string()),
                        Err(e) => Err(AppError::from(e).to_string()),
                    };
                    if let Err(e) = &outcome {
                        tracing::error!("reload refused, keeping the running configuration: {e}");
                    }
                    generation += 1;
                    write_reload_status(&status_path, generation, &outcome);
                    notify_or_log(notify::ready());
                }
                Event::Shutdown => break,
            },
            _ = tick.tick() => {
                if let Some(h) = &heartbeat {
                    h.beat();
                }
            }
        }
    }
    notify_or_log(notify::stopping());
    tracing::info!("draining (up to {} s)", drain.as_secs());
    let clean = app.stop(drain).await;
    watchdog_stop.cancel();
    process_tasks.close();
    process_tasks.wait().await;
    if clean {
        tracing::info!("stopped cleanly");
        Ok(())
    } else {
        Err(AppError::Other(
            "drain deadline passed with work still in flight".into(),
        ))
    }
}

/// The file in `node.state_dir` where `run` records the outcome of each
/// reload, for `sms-conduit reload` (systemd's `ExecReload=`).
pub const RELOAD_STATUS_FILE: &str = "reload-status";

/// How long `sms-conduit reload` waits for the outcome: a reload rebinds
/// changed carriers in the background, so it is quick; this only bounds a
/// process that died or hangs.
pub const RELOAD_WAIT: Duration = Duration::from_secs(60);

/// One reload outcome as the status file holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadStatus {
    /// The running process.
    pub pid: u32,
    /// 0 at start, one more after every reload.
    pub generation: u64,
    /// `Err(reason)` when the reload was refused.
    pub outcome: Result<(), String>,
}

impl ReloadStatus {
    fn render(&self) -> String {
        let outcome = match &self.outcome {
            Ok(()) => "ok\n".to_owned(),
            Err(e) => format!("refused\n{e}\n"),
        };
        format!(
            "pid {}\ngeneration {}\n{outcome}",
            self.pid, self.generation
        )
    }

    /// Parses the file; `None` when it is not (yet) a complete status.
    pub fn parse(text: &str) -> Option<ReloadStatus> {
        let mut lines = text.lines();
        let pid = lines.next()?.strip_prefix("pid ")?.parse().ok()?;
        let generation = lines.next()?.strip_prefix("generation ")?.parse().ok()?;
        let outcome = match lines.next()? {
            "ok" => Ok(()),
            "refused" => Err(lines.collect::<Vec<_>>().join("\n")),
            _ => return None,
        };
        Some(ReloadStatus {
            pid,
            generation,
            outcome,
        })
    }

    /// Reads `path`; `None` when it is missing or incomplete.
    pub fn read(path: &Path) -> Option<ReloadStatus> {
        ReloadStatus::parse(&std::fs::read_to_string(path).ok()?)
    }
}

/// Replaces the status file (a temp file renamed over it, so a reader never
/// sees half of one). A failure is logged: the reload itself stands.
pub(super) fn write_reload_status(path: &Path, generation: u64, outcome: &Result<(), String>) {
    let status = ReloadStatus {
        pid: std::process::id(),
        generation,
        outcome: outcome.clone(),
    };
    let tmp = path.with_extension("tmp");
    let r = std::fs::write(&tmp, status.render()).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        tracing::error!(path = %path.display(), "cannot write the reload status: {e}");
    }
}

/// `sms-conduit reload`: validates the config at `config_path` (a config
/// that fails is refused here, and the running process is not disturbed),
/// sends SIGHUP to the running process (`pid`, else the one named in the
/// status file) and waits up to `wait` for its outcome. `Ok` carries the
/// new status; `Err` the reason the reload was refused or not confirmed.
pub fn request_reload(
    config_path: &Path,
    pid: Option<u32>,
    wait: Duration,
) -> Result<ReloadStatus, String> {
    let config = Config::load(config_path).map_err(|e| AppError::from(e).to_string())?;
    let path = config.node.state_dir.join(RELOAD_STATUS_FILE);
    let before = ReloadStatus::read(&path);
    let pid = match (pid, &before) {
        (Some(p), _) => p,
        (None, Some(s)) => s.pid,
        (None, None) => {
            return Err(format!(
                "{} not found: is sms-conduit running with this config? (or pass --pid)",
                path.display()
            ))
        }
    };
    let generation = before
        .as_ref()
        .filter(|s| s.pid == pid)
        .map_or(0, |s| s.generation);
    let target = libc::pid_t::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
    // SAFETY: kill(2) with a plain pid and signal number has no memory
    // effects.
    if unsafe { libc::kill(target, libc::SIGHUP) } != 0 {
        return Err(format!(
            "cannot signal pid {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let deadline = std::time::Instant::now() + wait;
    loop {
        if let Some(s) = ReloadStatus::read(&path) {
            if s.pid == pid && s.generation > generation {
                return match &s.outcome {
                    Ok(()) => Ok(s),
                    Err(e) => Err(format!(
                        "reload refused, the running configuration is kept: {e}"
                    )),
                };
            }
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "no reload outcome from pid {pid} within {} s",
                wait.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(super) fn notify_or_log(r: Result<(), service::ServiceError>) {
    if let Err(e) = r {
        tracing::warn!("systemd notify: {e}");
    }
}

//! The old generation's side of a restart or a takeover: claiming the one restart
//! slot, starting the next generation (or answering a newcomer), the commit, and a
//! failed restart's clean-up.

use super::*;

impl Process {
    /// [`Process::restart`], running `settled` once the outcome is known and logged,
    /// before this generation starts draining (SIGHUP's post hooks go here).
    pub(super) async fn restart_then(
        &self,
        settled: Box<dyn FnOnce() + Send>,
    ) -> Result<u32, RestartError> {
        let claimed = match self.claim_restart().await {
            Ok(c) => c,
            Err(e) => {
                log_outcome(Err(&e));
                settled();
                return Err(e);
            }
        };
        let p = self.clone();
        // Runs to its end in a task of its own, even if the caller stops waiting (a
        // timeout around this call, a client gone from an admin endpoint): cut short,
        // it would leave the restart slot taken for good and a new generation unwatched.
        tokio::spawn(async move { p.run_restart(claimed, settled).await })
            .await
            .unwrap_or_else(|e| {
                Err(RestartError::Io(std::io::Error::other(format!(
                    "restart task failed: {e}"
                ))))
            })
    }

    /// Takes the single restart slot, or says why a restart cannot start now. A slot
    /// still held by a failed restart whose generation is being stopped is waited for:
    /// the restart asked for meanwhile starts as soon as it is free.
    async fn claim_restart(&self) -> Result<Claimed, RestartError> {
        let deadline = tokio::time::Instant::now() + FIRST_READY_WAIT;
        loop {
            {
                let mut core = self.lock();
                match core.state.phase {
                    Phase::Serving if self.inner.restart_running.try_lock().is_ok() => {
                        return self.begin_restart(&mut core)
                    }
                    Phase::Serving => {}
                    Phase::Draining(_) | Phase::LameDuck => return Err(RestartError::ShuttingDown),
                    // Declared ready, in the exchange with the previous generation: its own
                    // restart is not over (it is live once the previous one's `live`
                    // comes; the PID file names it from then on). Refused at once, not
                    // deferred: a restart that began seconds after the request was made
                    // would surprise whoever made it.
                    Phase::Restarting | Phase::Confirming => return Err(RestartError::InProgress),
                    // A new generation not ready yet: the restart that started it is
                    // still in progress, and some of its servers may not have taken
                    // their sockets over yet, so a handover now would lose them.
                    Phase::Starting if core.inherited.parent.is_some() => {
                        return Err(RestartError::InProgress)
                    }
                    // A first generation: its servers may be a moment from ready.
                    Phase::Starting => {
                        if tokio::time::Instant::now() >= deadline {
                            return Err(if core.listeners_taken == 0 {
                                RestartError::NoServer
                            } else {
                                RestartError::NotYetReady
                            });
                        }
                    }
                }
            }
            if self.inner.restart_running.try_lock().is_ok() {
                // A first generation starting: look again in a moment.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            // A failed generation is still being stopped: wait for the slot (its stop
            // is bounded by the stop grace), then look again.
            let wait = self.inner.stop_grace + Duration::from_secs(5);
            if tokio::time::timeout(wait, self.inner.restart_running.lock())
                .await
                .is_err()
            {
                return Err(RestartError::InProgress);
            }
        }
    }

    fn begin_restart(&self, core: &mut Core) -> Result<Claimed, RestartError> {
        if !core
            .registry
            .iter()
            .any(|r| matches!(r.name, Name::Listener { .. }))
        {
            return Err(RestartError::NoServer);
        }
        let mut names = Vec::with_capacity(core.registry.len());
        let mut fds = Vec::with_capacity(core.registry.len());
        for r in &core.registry {
            names.push(r.name.clone());
            fds.push(r.fd.try_clone()?);
        }
        // Free unless the last restart's task is still finishing.
        let running = self
            .inner
            .restart_running
            .clone()
            .try_lock_owned()
            .map_err(|_| RestartError::InProgress)?;
        let abort = CancellationToken::new();
        core.abort = Some(abort.clone());
        core.state.phase = Phase::Restarting;
        core.emit(&Transition::RestartBegun);
        self.inner.publisher.publish(core.state);
        Ok(Claimed {
            names,
            fds,
            abort,
            _running: running,
        })
    }

    async fn run_restart(
        &self,
        claimed: Claimed,
        settled: Box<dyn FnOnce() + Send>,
    ) -> Result<u32, RestartError> {
        let Claimed {
            mut names,
            mut fds,
            abort,
            _running,
        } = claimed;
        let inner = &self.inner;
        // The application's state for the new generation, made before it starts.
        let state = match &inner.state {
            Some(p) => Some(crate::handover::state::produce(p, inner.ready_timeout).await),
            None => None,
        };
        let started: Result<Successor, RestartError> = async {
            if let Some(s) = state {
                fds.push(s?);
                names.push(Name::Fd(crate::handover::state::NAME.into()));
            }
            let carried = inner.book.child_env();
            let supervisor = crate::restart::supervise::link().map(|l| (l.supervisor(), l.fd()));
            let next = restart::spawn(
                &inner.exe,
                &names,
                fds,
                inner.generation,
                inner.max_draining,
                carried,
                supervisor,
            )
            .await?;
            tracing::info!(pid = std::process::id(), new_pid = next.successor.pid, path = %inner.exe.path.display(), spawn_us = next.spawn_us, forked = next.forked, "started the next generation; waiting for it to be ready");
            Ok(next.successor)
        }
        .await;
        self.settle(started, abort, _running, settled).await
    }

    /// Answers `takeover` on the control socket: hands the listeners to the process at
    /// the other end, waits for it to be ready, commits or calls it off (see the
    /// `takeover` module).
    pub(super) async fn serve_takeover(&self, stream: tokio::net::UnixStream) {
        use tokio::io::AsyncWriteExt;
        let pid = std::process::id();
        let newcomer = stream
            .peer_cred()
            .ok()
            .and_then(|c| c.pid())
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(0);
        tracing::info!(
            pid,
            new_pid = newcomer,
            "takeover requested on the control socket"
        );
        let refused = if crate::restart::supervise::link().is_some() {
            Err(RestartError::TakeoverRefused(
                "this process runs under the supervisor",
            ))
        } else if newcomer == 0 {
            Err(RestartError::TakeoverRefused(
                "the new process's pid is unknown",
            ))
        } else {
            self.claim_restart().await
        };
        let claimed = match refused {
            Ok(c)
                if c.fds.len() + usize::from(self.inner.state.is_some())
                    > crate::sys::fdpass::MAX_FDS =>
            {
                let e = RestartError::TakeoverRefused("more sockets than one message carries");
                let reply = format!("error {}\n", e.to_string().replace(['\n', '\r'], " "));
                let _ = self
                    .restart_failed(None, e, c._running, Box::new(|| {}))
                    .await;
                let mut stream = stream;
                let _ = stream.write_all(reply.as_bytes()).await;
                return;
            }
            Ok(c) => c,
            Err(e) => {
                log_outcome(Err(&e));
                let mut stream = stream;
                let reply = format!("error {}\n", e.to_string().replace(['\n', '\r'], " "));
                let _ = stream.write_all(reply.as_bytes()).await;
                return;
            }
        };
        let p = self.clone();
        // Runs to its end in a task of its own, as a restart does.
        let _ = tokio::spawn(async move { p.run_takeover(claimed, stream, newcomer).await }).await;
    }

    async fn run_takeover(
        &self,
        claimed: Claimed,
        stream: tokio::net::UnixStream,
        newcomer: u32,
    ) -> Result<u32, RestartError> {
        let Claimed {
            mut names,
            mut fds,
            abort,
            _running,
        } = claimed;
        let started = async {
            // The application's state, as a restart hands it over.
            if let Some(p) = &self.inner.state {
                fds.push(crate::handover::state::produce(p, self.inner.ready_timeout).await?);
                names.push(Name::Fd(crate::handover::state::NAME.into()));
            }
            let plan = crate::handover::lineage::plan(self.inner.max_draining);
            let offer = crate::handover::Offer {
                generation: self.inner.generation,
                pid: std::process::id(),
                draining: plan.kept,
                names,
            };
            crate::restart::takeover::offer(&stream, &offer, &fds)
                .await
                .map_err(RestartError::Io)?;
            drop(fds);
            tracing::info!(
                pid = std::process::id(),
                new_pid = newcomer,
                "handed the listeners to the new process; waiting for it to be ready"
            );
            Ok(crate::restart::takeover::newcomer(
                newcomer,
                stream,
                plan.hammer,
                self.inner.max_draining,
            ))
        }
        .await;
        self.settle(started, abort, _running, Box::new(|| {})).await
    }

    /// A successor started (or failed to): runs the commit's exchange with it (the
    /// `commit` module), then commits the handover or stops it, and records the
    /// outcome. The tail of a restart and of a takeover alike.
    async fn settle(
        &self,
        started: Result<Successor, RestartError>,
        abort: CancellationToken,
        running: tokio::sync::OwnedMutexGuard<()>,
        settled: Box<dyn FnOnce() + Send>,
    ) -> Result<u32, RestartError> {
        let mut next = match started {
            Ok(n) => n,
            Err(e) => return self.restart_failed(None, e, running, settled).await,
        };
        // The restart is on until a shutdown calls it off (the phase leaves Restarting).
        let on = |core: &Core| core.state.phase == Phase::Restarting && !abort.is_cancelled();
        let still_on = || on(&self.lock());
        let held = next
            .until_holding(self.inner.ready_timeout, &abort, still_on)
            .await;
        // The commit point: under the lock, so that a shutdown lands before it (and
        // calls the restart off) or after it (and finds this generation draining).
        let decided = held.and_then(|()| {
            let mut core = self.lock();
            next.decide(on(&core))?;
            core.committing = true;
            Ok(())
        });
        if let Err(e) = decided {
            return self.restart_failed(Some(next), e, running, settled).await;
        }
        let new_pid = next.pid;
        // The PID file first, then the log and the hooks, then the drain (and
        // MAINPID=): whoever learns of the new pid can read it in the file.
        self.lock().emit(&Transition::Committed { new_pid });
        log_outcome(Ok(new_pid));
        settled();
        let parks = {
            let mut core = self.lock();
            core.committing = false;
            core.abort = None;
            // With a probation, this generation parks behind the new one once drained.
            let parks = self.may_park(&core);
            core.state.parked = parks.is_some();
            self.enter_drain(&mut core, Served::HandedOver { pid: new_pid });
            parks
        };
        match parks {
            Some(period) => self.park(next, period).await,
            None => next.commit().await,
        }
        drop(running);
        Ok(new_pid)
    }

    /// A restart failed: this generation, which never stopped accepting, serves on. The
    /// failure is recorded first (a restart asked for from now on waits for the slot),
    /// then the successor is stopped and reaped, then the outcome logged.
    async fn restart_failed(
        &self,
        next: Option<Successor>,
        e: RestartError,
        running: tokio::sync::OwnedMutexGuard<()>,
        settled: Box<dyn FnOnce() + Send>,
    ) -> Result<u32, RestartError> {
        {
            let mut core = self.lock();
            core.abort = None;
            if core.state.phase == Phase::Restarting {
                core.state.phase = Phase::Serving;
                core.emit(&Transition::RestartFailed(&e));
                self.inner.publisher.publish(core.state);
            }
        }
        if let Some(next) = next {
            next.stop(self.inner.stop_grace).await;
        }
        drop(running);
        // Logged once recorded: a reader of the line finds it in the status.
        log_outcome(Err(&e));
        settled();
        Err(e)
    }
}

#[cfg(feature = "control")]
/// Takes the listeners over from the process serving the control socket at `path`:
/// they replace whatever this process found in its environment (socket activation).
pub(super) fn take_over(path: &Path, found: Inherited) -> Result<Inherited, Error> {
    let fail = |source| {
        let e = Error::Takeover {
            path: path.to_path_buf(),
            source,
        };
        tracing::error!(error = %e, "takeover failed; nothing was bound");
        e
    };
    if crate::restart::supervise::link().is_some() {
        return Err(fail(crate::error::TakeoverError::Supervised));
    }
    let taken = crate::restart::takeover::request(path, TAKEOVER_WAIT).map_err(fail)?;
    let mut found = found;
    found.close_unclaimed();
    crate::handover::lineage::tell(taken.draining);
    tracing::info!(
        pid = std::process::id(),
        from = taken.pid,
        generation = taken.generation,
        sockets = taken.entries.len(),
        "took the listeners over; ready soon"
    );
    Ok(Inherited::from_takeover(
        taken.pid,
        taken.generation,
        taken.entries,
        taken.channel,
    ))
}

/// What a restart took from the registry.
struct Claimed {
    names: Vec<Name>,
    fds: Vec<OwnedFd>,
    abort: CancellationToken,
    /// Released when the restart's task ends.
    _running: tokio::sync::OwnedMutexGuard<()>,
}

fn log_outcome(outcome: Result<u32, &RestartError>) {
    let pid = std::process::id();
    match outcome {
        Ok(new_pid) => tracing::info!(pid, new_pid, "restart succeeded; draining"),
        Err(e) => tracing::error!(pid, error = %e, "restart failed; this generation carries on"),
    }
}

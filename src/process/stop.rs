//! The way out: the lame-duck period, the drain, and the hammer.

use super::*;

impl Process {
    pub(super) fn begin_shutdown(&self, core: &mut Core) -> bool {
        match core.state.phase {
            // A parked generation's probation ends: it exits.
            #[cfg(unix)]
            Phase::Draining(_) if core.state.parked => self.end_parking(core),
            Phase::Draining(_) => false,
            Phase::Confirming => {
                if !core.shutdown_deferred {
                    core.shutdown_deferred = true;
                    let p = self.clone();
                    self.spawn(async move {
                        tokio::time::sleep(CONFIRM_WAIT).await;
                        let mut core = p.lock();
                        if core.state.phase == Phase::Confirming {
                            tracing::warn!(
                                "no word from the previous generation; draining as not live"
                            );
                            p.abandon(&mut core);
                        }
                    });
                }
                true
            }
            // A generation a restart or a takeover started, not ready yet: the previous
            // one serves, and this one will never be live.
            Phase::Starting if !core.state.live => {
                self.abandon(core);
                true
            }
            Phase::Restarting if core.committing => false,
            Phase::Restarting => {
                // The restart is called off (its successor is stopped by the restart's
                // task); this generation never stopped accepting, and shuts down as it
                // would have without the restart: lame duck first.
                if let Some(a) = core.abort.take() {
                    a.cancel();
                }
                self.lame_duck_or_drain(core);
                true
            }
            Phase::Serving => {
                self.lame_duck_or_drain(core);
                true
            }
            // A second request during the lame-duck period: drain now.
            Phase::LameDuck | Phase::Starting => {
                self.enter_drain(core, Served::Shutdown);
                true
            }
        }
    }

    /// A shutdown of the live generation: the lame-duck period if there is one, then
    /// the drain.
    fn lame_duck_or_drain(&self, core: &mut Core) {
        let Some(period) = self.inner.lame_duck else {
            self.enter_drain(core, Served::Shutdown);
            return;
        };
        core.state.phase = Phase::LameDuck;
        self.inner.publisher.publish(core.state);
        // Logged once the health check says 503, so that the line means it does.
        tracing::info!(
            pid = std::process::id(),
            ms = crate::duration::millis(period),
            "lame duck: the health check says 503 while everything is still served"
        );
        let p = self.clone();
        self.spawn(async move {
            crate::duration::sleep_until(crate::duration::deadline(period)).await;
            let mut core = p.lock();
            if core.state.phase == Phase::LameDuck {
                p.enter_drain(&mut core, Served::Shutdown);
            }
        });
    }

    pub(super) fn enter_drain(&self, core: &mut Core, why: Served) {
        core.state.phase = Phase::Draining(why);
        self.hammer_other_servers();
        #[cfg_attr(not(unix), allow(unused_mut))]
        let mut remove: Vec<std::path::PathBuf> = Vec::new();
        match why {
            Served::HandedOver { pid: new_pid } => {
                core.state.live = false;
                core.emit(&Transition::HandedOver { new_pid });
            }
            Served::Shutdown => {
                let live = core.state.live;
                #[cfg(unix)]
                if live {
                    for r in &core.registry {
                        match &r.name {
                            Name::Listener {
                                addr: ListenAddr::Unix(p),
                                managed: false,
                            } => remove.push(p.clone()),
                            Name::Control(p) => remove.push(p.clone()),
                            _ => {}
                        }
                    }
                }
                core.emit(&Transition::ShutdownBegun { live });
            }
        }
        // Our duplicates go now, so that (on shutdown) new connections are refused as
        // soon as the servers drop their own listeners. A generation that parks keeps
        // them for a rollback (until its probation is over).
        #[cfg(unix)]
        if !core.state.parked {
            core.registry.clear();
            core.inherited.close_unclaimed();
        }
        self.inner.publisher.publish(core.state);
        for p in remove {
            if let Err(e) = std::fs::remove_file(&p) {
                tracing::debug!(error = %e, path = %p.display(), "cannot remove a socket file");
            }
        }
    }

    /// The bound on the connections of servers other than ceaseless's
    /// ([`ProcessBuilder::hammer_time`](crate::ProcessBuilder::hammer_time)): at the
    /// hammer time or the first hammer, then a grace for ceaseless's own servers and
    /// the application to finish, a generation that did not finish (no ceaseless
    /// server drains, [`Process::finish`] was not called) exits. The connections it
    /// cuts so are ones only the process's exit can reach.
    fn hammer_other_servers(&self) {
        let Some(after) = self.inner.hammer_time else {
            return;
        };
        let p = self.clone();
        self.spawn(async move {
            let mut hammer = p.watch().hammer;
            hammer.borrow_and_update();
            tokio::select! {
                _ = tokio::time::sleep(after) => {}
                _ = hammer.changed() => {}
            }
            tokio::time::sleep(HAMMER_GRACE).await;
            {
                let core = p.lock();
                if core.done.is_some() || core.servers_running > 0 {
                    return;
                }
            }
            tracing::warn!(
                pid = std::process::id(),
                "[STOP - Hammer Time] the connections of a server other than ceaseless's \
                 outlived the drain; exiting"
            );
            // What finishing does (the PID file at a final shutdown, the observers),
            // bounded: then the exit, whatever still waits.
            let _ = tokio::time::timeout(HAMMER_GRACE, p.finish()).await;
            std::process::exit(0);
        });
    }

    pub(super) fn hammer(&self) -> bool {
        let core = self.lock();
        // A hammer of a parked generation ends its probation.
        #[cfg(unix)]
        if core.state.parked {
            self.end_parking(&core);
        }
        if core.state.is_draining() {
            self.inner.publisher.hammer();
            true
        } else {
            false
        }
    }
}

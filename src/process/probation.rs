//! The probation after a commit ([`ProcessBuilder::probation`]), both sides: an old
//! generation that parks behind the new one and takes the service back on a rollback,
//! and a new generation on probation, which asks for the rollback (its error policy,
//! [`Process::rollback`], the control socket) or leaves the probation (a shutdown, a
//! restart). Each side is driven by its machine in the handover's `probation` module,
//! which states the invariant and the exchange.

use super::*;
use crate::error::RollbackError;
use crate::handover::probation::{
    OnProbation, Parked, ParkedDo, ParkedHeard, ProbationDo, ProbationHeard,
};
use crate::lifecycle::RollbackTrigger;
use crate::restart::successor::Parking;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// How often the error policy looks at the counts.
const POLICY_EVERY: Duration = Duration::from_millis(100);

/// A rollback asked for, and where its outcome goes.
type Ask = (
    RollbackTrigger,
    tokio::sync::oneshot::Sender<Result<u32, RollbackError>>,
);

/// Where a generation on probation's driver hears the rollbacks asked for.
pub(super) type AskReceiver = tokio::sync::mpsc::UnboundedReceiver<Ask>;

/// The probation a generation is in, kept by its owner.
pub(super) enum Probation {
    /// Parked behind the live generation `live_pid` until `ends`.
    Parked {
        live_pid: u32,
        ends: std::time::SystemTime,
        /// Cancelled by a shutdown or a hammer of the parked generation: the probation
        /// ends, and it exits.
        stop: CancellationToken,
    },
    /// On probation, the generation `parked_pid` parked behind it until `ends`.
    On {
        parked_pid: u32,
        ends: std::time::SystemTime,
        asks: tokio::sync::mpsc::UnboundedSender<Ask>,
    },
}

impl Process {
    /// Whether this generation can park at its commit: a probation is set, and every
    /// listener it hands over is served by one of ceaseless's servers (which resume on
    /// a rollback). The caller holds the lock, and marks the state parked.
    pub(super) fn may_park(&self, core: &Core) -> Option<Duration> {
        let period = self.inner.probation?;
        if core.servers_running < core.listeners_taken || core.servers_running == 0 {
            tracing::warn!(
                servers = core.servers_running,
                listeners = core.listeners_taken,
                "no probation: a listener is served by another server than ceaseless's, \
                 which cannot resume it; draining and exiting as without probation"
            );
            return None;
        }
        Some(period)
    }

    /// The old side, once committed with a probation of `period`: tells the successor,
    /// then watches it until the probation ends or the service rolls back here.
    pub(super) async fn park(&self, next: Successor, period: Duration) {
        let ms = crate::duration::millis(period);
        // Registered first: a shutdown from now on ends the probation.
        let stop = CancellationToken::new();
        self.lock().probation = Some(Probation::Parked {
            live_pid: next.pid,
            ends: std::time::SystemTime::now() + period,
            stop: stop.clone(),
        });
        let Some(link) = next.commit_parked(ms).await else {
            self.unpark();
            return;
        };
        // (The supervisor, if any, then waits for this one after a crash of the new one.)
        self.lock().emit(&Transition::Parked { ms });
        crate::sys::memory::trim();
        tracing::info!(
            pid = std::process::id(),
            live_pid = link.pid,
            ms,
            "parked for the probation: the listeners are kept, nothing is accepted"
        );
        let p = self.clone();
        self.spawn(async move { p.parked(link, period, stop).await });
    }

    /// The parked generation's watch, driven by the `Parked` machine.
    async fn parked(&self, mut link: Parking, period: Duration, stop: CancellationToken) {
        let from = link.pid;
        let until = crate::duration::deadline(period);
        let mut machine = Parked::Waiting;
        let mut trigger = RollbackTrigger::Crash;
        let mut asked_at = std::time::Instant::now();
        loop {
            let heard = tokio::select! {
                m = link.next() => match m {
                    Some(m) => ParkedHeard::Word(m),
                    None => ParkedHeard::Closed,
                },
                _ = crate::duration::sleep_until(until), if machine == Parked::Waiting => ParkedHeard::TimeUp,
                _ = stop.cancelled(), if machine == Parked::Waiting => ParkedHeard::Shutdown,
            };
            if let ParkedHeard::Word(Message::Rollback(t)) = &heard {
                trigger = *t;
                asked_at = std::time::Instant::now();
            }
            let (next, act) = machine.step(heard);
            machine = next;
            match act {
                ParkedDo::Wait => {}
                ParkedDo::Resume => {
                    self.resume();
                    tracing::info!(pid = std::process::id(), from, %trigger, "rollback asked for: accepting again");
                    // A failure shows as the channel closing, next.
                    let _ = link.send(&Message::Holding).await;
                }
                ParkedDo::TakeBack => {
                    // Accepting first: whatever waits in the listeners' queues is ours.
                    let seen = std::time::Instant::now();
                    self.resume();
                    self.live_again(from, RollbackTrigger::Crash, seen);
                    let status = link.ended().await;
                    tracing::error!(
                        pid = std::process::id(),
                        from,
                        status = ?status,
                        "the generation on probation exited without a shutdown; rolled back to this one"
                    );
                    link.let_go();
                    return;
                }
                ParkedDo::BecomeLive => {
                    self.live_again(from, trigger, asked_at);
                    link.let_go();
                    return;
                }
                ParkedDo::End => {
                    let _ = link.send(&Message::Ended).await;
                    link.let_go();
                    self.unpark();
                    return;
                }
                ParkedDo::ShutDown => {
                    tracing::info!(
                        pid = std::process::id(),
                        "the generation on probation shuts down: so does this one"
                    );
                    link.let_go();
                    self.shutdown();
                    return;
                }
            }
        }
    }

    /// Accepting again: the servers and the control socket resume on the listeners
    /// they kept. Not live yet.
    fn resume(&self) {
        let mut core = self.lock();
        core.state = State {
            phase: Phase::Serving,
            live: false,
            parked: false,
        };
        self.inner.publisher.publish(core.state);
    }

    /// The rollback is done: this generation is live again.
    fn live_again(&self, from_pid: u32, trigger: RollbackTrigger, since: std::time::Instant) {
        let mut core = self.lock();
        core.probation = None;
        core.state.live = true;
        let ms = crate::duration::millis(since.elapsed());
        tracing::info!(pid = std::process::id(), from = from_pid, %trigger, ms, "rolled back: this generation is live again");
        core.emit(&Transition::RolledBack {
            from_pid,
            trigger,
            ms,
        });
        self.inner.publisher.publish(core.state);
    }

    /// The probation is over without a rollback: this generation drains out and exits
    /// as without probation.
    pub(super) fn unpark(&self) {
        let mut core = self.lock();
        core.probation = None;
        core.state.parked = false;
        core.registry.clear();
        core.inherited.close_unclaimed();
        self.inner.publisher.publish(core.state);
        tracing::info!(
            pid = std::process::id(),
            "the probation is over; exiting once drained"
        );
    }

    /// A shutdown or a hammer of a parked generation ends its probation. Whether it was
    /// parked.
    pub(super) fn end_parking(&self, core: &Core) -> bool {
        match &core.probation {
            Some(Probation::Parked { stop, .. }) => {
                stop.cancel();
                true
            }
            _ => false,
        }
    }

    /// The new side, live, told it is on probation for `ms` behind `parked_pid`:
    /// follows the `OnProbation` machine on the channel until the probation ends or the
    /// service is handed back.
    /// Puts this generation, live this instant, on probation for `ms` (under the lock,
    /// before its state is published): where rollbacks are asked for.
    pub(super) fn probation_on(&self, core: &mut Core, ms: u64) -> AskReceiver {
        let (tx, asks) = tokio::sync::mpsc::unbounded_channel::<Ask>();
        core.probation = Some(Probation::On {
            parked_pid: core.parent().unwrap_or(0),
            ends: std::time::SystemTime::now() + Duration::from_millis(ms),
            asks: tx,
        });
        core.emit(&Transition::Probation { ms: Some(ms) });
        asks
    }

    pub(super) fn begin_probation(
        &self,
        reader: tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
        writer: tokio::net::unix::OwnedWriteHalf,
        ms: u64,
        asks: AskReceiver,
    ) {
        let p = self.clone();
        self.spawn(async move { p.on_probation(reader, writer, ms, asks).await });
    }

    async fn on_probation(
        &self,
        mut reader: tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
        mut writer: tokio::net::unix::OwnedWriteHalf,
        ms: u64,
        mut asks: AskReceiver,
    ) {
        let parked_pid = self.lock().parent().unwrap_or(0);
        tracing::info!(
            pid = std::process::id(),
            parked_pid,
            ms,
            "on probation: the previous generation is parked behind this one"
        );
        if let Some((ratio, min)) = self.inner.rollback_on_errors {
            self.inner.outcomes.count(true);
            let p = self.clone();
            self.spawn(async move { p.error_policy(ratio, min).await });
        }
        let mut state = self.watch().state;
        let mut machine = OnProbation::On;
        let mut pending: Option<Ask> = None;
        let mut line = String::new();
        // How long a rollback asked for waits for the parked generation's answer.
        let mut answer_by: Option<tokio::time::Instant> = None;
        let handed_back = loop {
            let heard = tokio::select! {
                _ = tokio::time::sleep_until(answer_by.unwrap_or_else(tokio::time::Instant::now)), if answer_by.is_some() => {
                    tracing::error!(
                        pid = std::process::id(),
                        parked_pid,
                        timeout = ?self.inner.ready_timeout,
                        "the parked generation did not answer the rollback; giving the probation up"
                    );
                    ProbationHeard::TimedOut
                }
                // (A line read in part when another branch wins stays in `line`.)
                read = reader.read_line(&mut line) => match read {
                    Ok(n) if n > 0 => {
                        let m = Message::decode(&line);
                        line.clear();
                        match m {
                            Some(m) => ProbationHeard::Word(m),
                            None => continue,
                        }
                    }
                    _ => ProbationHeard::Closed,
                },
                ask = asks.recv() => match ask {
                    Some((t, reply)) if pending.is_none() => {
                        pending = Some((t, reply));
                        ProbationHeard::Ask(t)
                    }
                    Some((_, reply)) => {
                        let _ = reply.send(Err(RollbackError::InProgress));
                        continue;
                    }
                    None => continue,
                },
                changed = state.changed() => {
                    let s = *state.borrow_and_update();
                    if changed.is_ok() && s.phase == Phase::Serving {
                        continue;
                    }
                    ProbationHeard::Leaving
                }
            };
            let timed_out = heard == ProbationHeard::TimedOut;
            let (next, act) = machine.step(heard);
            machine = next;
            answer_by = match machine {
                OnProbation::Asking => answer_by
                    .or_else(|| Some(tokio::time::Instant::now() + self.inner.ready_timeout)),
                _ => None,
            };
            match act {
                ProbationDo::Wait if machine == OnProbation::Over => break false,
                ProbationDo::Wait => {}
                ProbationDo::Send(m) => {
                    // A failure shows as the channel closing, next.
                    let _ = writer.write_all(m.encode().as_bytes()).await;
                }
                ProbationDo::HandBack => {
                    let trigger = pending.as_ref().map_or(RollbackTrigger::Operator, |a| a.0);
                    let handed = self.hand_back(parked_pid, trigger);
                    let word = if handed {
                        Message::Live
                    } else {
                        Message::Release
                    };
                    let _ = writer.write_all(word.encode().as_bytes()).await;
                    if let Some((_, reply)) = pending.take() {
                        let _ = reply.send(if handed {
                            Ok(parked_pid)
                        } else {
                            Err(RollbackError::NotServing)
                        });
                    }
                    break handed;
                }
                ProbationDo::Refuse => {
                    if let Some((_, reply)) = pending.take() {
                        let _ = reply.send(Err(RollbackError::Ended));
                    }
                    break false;
                }
                ProbationDo::Leave => {
                    let _ = writer.write_all(Message::Release.encode().as_bytes()).await;
                    if let Some((_, reply)) = pending.take() {
                        let _ = reply.send(Err(if timed_out {
                            RollbackError::Unanswered {
                                timeout: self.inner.ready_timeout,
                            }
                        } else {
                            RollbackError::NotServing
                        }));
                    }
                    break false;
                }
            }
        };
        self.inner.outcomes.count(false);
        let mut core = self.lock();
        if matches!(core.probation, Some(Probation::On { .. })) {
            core.probation = None;
        }
        if !handed_back {
            tracing::info!(
                pid = std::process::id(),
                "the probation is over: the previous generation exits"
            );
            // (Said only while serving: a shutdown or a restart that ended it says its own.)
            if core.state.phase == Phase::Serving && core.state.live {
                core.emit(&Transition::Probation { ms: None });
            }
        }
    }

    /// The parked generation accepts again: this one stops accepting and drains, as an
    /// old generation does at a restart. Whether it did (it is not the serving one any
    /// more: a shutdown, or a commit to a next generation, came first).
    fn hand_back(&self, to_pid: u32, trigger: RollbackTrigger) -> bool {
        let mut core = self.lock();
        match core.state.phase {
            Phase::Serving if core.state.live => {}
            // A restart of this generation under way, not committed: called off.
            Phase::Restarting if core.state.live && !core.committing => {
                if let Some(a) = core.abort.take() {
                    a.cancel();
                }
            }
            _ => return false,
        }
        core.probation = None;
        core.emit(&Transition::HandedBack { to_pid, trigger });
        self.enter_drain(&mut core, Served::HandedOver { pid: to_pid });
        tracing::warn!(pid = std::process::id(), to_pid, %trigger, "rolled back: the parked generation serves again; draining");
        true
    }

    /// The error policy: a rollback once more than `ratio` of at least `min` responses
    /// were server errors, while the probation lasts.
    async fn error_policy(&self, ratio: f64, min: u64) {
        let mut every = tokio::time::interval(POLICY_EVERY);
        loop {
            every.tick().await;
            if !matches!(self.lock().probation, Some(Probation::On { .. })) {
                return;
            }
            let (total, errors) = self.inner.outcomes.counts();
            if total >= min && errors as f64 > ratio * total as f64 {
                tracing::error!(
                    pid = std::process::id(),
                    responses = total,
                    server_errors = errors,
                    ratio,
                    "the error policy of the probation tripped; rolling back"
                );
                let _ = self.ask_rollback(RollbackTrigger::Errors).await;
                return;
            }
        }
    }

    /// Asks the probation's driver for a rollback, and waits for its outcome.
    pub(super) async fn ask_probation(&self, t: RollbackTrigger) -> Result<u32, RollbackError> {
        let rx = {
            let core = self.lock();
            let Some(Probation::On { asks, .. }) = &core.probation else {
                return Err(RollbackError::NoProbation);
            };
            if !(core.state.phase == Phase::Serving && core.state.live) {
                return Err(RollbackError::NotServing);
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            asks.send((t, tx)).map_err(|_| RollbackError::Ended)?;
            rx
        };
        rx.await.unwrap_or(Err(RollbackError::Ended))
    }

    /// What the status shows of the probation: the other generation's pid, whether
    /// this one is the parked one, and when the probation ends.
    pub(super) fn probation_status(&self) -> Option<crate::observe::status::ProbationStatus> {
        let core = self.lock();
        let (pid, parked, ends) = match core.probation.as_ref()? {
            Probation::Parked { live_pid, ends, .. } => (*live_pid, true, *ends),
            Probation::On {
                parked_pid, ends, ..
            } => (*parked_pid, false, *ends),
        };
        Some(crate::observe::status::ProbationStatus::new(
            pid, parked, ends,
        ))
    }
}

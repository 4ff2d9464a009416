//! The process that takes over from this generation, as the old generation sees it: a
//! child a restart started, or a newcomer that asked for a takeover on the control
//! socket. One type for both, one exchange (the [`commit`](crate::handover::commit) module's
//! state machine, driven here), one way to commit to it and one to stop it; only how
//! its exit is seen and how it is signalled differ.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::error::RestartError;
use crate::handover::commit::{Act, Failure, Old, Seen};
use crate::handover::{Message, ProcId};
use crate::sys::process::Signal;

/// How the successor is known to this process.
pub(crate) enum Who {
    /// Our child: waited for, reaped, killed if it does not stop.
    Child(Proc),
    /// An independently started process (a takeover): signalled through its pid and the
    /// start time it had when it connected, never waited for nor killed.
    Newcomer(Option<ProcId>),
}

/// A successor not committed to yet.
pub(crate) struct Successor {
    pub(crate) pid: u32,
    who: Who,
    channel: tokio::io::BufReader<tokio::net::UnixStream>,
    state: Old,
    /// How the child ended, once it did.
    status: Option<std::process::ExitStatus>,
    /// Old generations to hammer once committed (the draining bound), and the bound.
    hammer: Vec<ProcId>,
    max_draining: usize,
}

impl Successor {
    pub(crate) fn new(
        pid: u32,
        who: Who,
        channel: tokio::net::UnixStream,
        hammer: Vec<ProcId>,
        max_draining: usize,
    ) -> Successor {
        Successor {
            pid,
            who,
            channel: tokio::io::BufReader::new(channel),
            state: Old::AwaitReady,
            status: None,
            hammer,
            max_draining,
        }
    }

    /// The next thing that happens to the successor.
    async fn next(
        &mut self,
        deadline: Option<tokio::time::Instant>,
        abort: &CancellationToken,
    ) -> Seen {
        let Successor {
            pid,
            who,
            channel,
            status,
            ..
        } = self;
        let mut line = String::new();
        loop {
            line.clear();
            let exited = async {
                match who {
                    Who::Child(c) if status.is_none() => c.wait().await.ok(),
                    // A newcomer's exit shows as its end of the connection closing.
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                read = channel.read_line(&mut line) => return match read {
                    Ok(n) if n > 0 => match Message::decode(&line) {
                        Some(m) => Seen::Word(m),
                        None => {
                            tracing::warn!(new_pid = *pid, line = %line.trim_end(), "unexpected message from the new generation");
                            continue;
                        }
                    },
                    _ => Seen::Closed,
                },
                got = exited => {
                    *status = got;
                    return Seen::Exited;
                }
                _ = crate::duration::sleep_until(deadline) => return Seen::TimedOut,
                _ = abort.cancelled() => return Seen::CalledOff,
            }
        }
    }

    async fn send(&mut self, m: &Message) -> std::io::Result<()> {
        self.channel
            .get_mut()
            .write_all(m.encode().as_bytes())
            .await
    }

    /// Runs the exchange until the successor says it holds every listener, within
    /// `timeout`; its failure otherwise. `still_on`: whether the restart is still on.
    /// The commit itself is the caller's: [`Successor::decide`], under its lock.
    pub(crate) async fn until_holding(
        &mut self,
        timeout: Duration,
        abort: &CancellationToken,
        still_on: impl Fn() -> bool,
    ) -> Result<(), RestartError> {
        let deadline = crate::duration::deadline(timeout);
        loop {
            let seen = self.next(deadline, abort).await;
            if self.state == Old::AwaitHolding && seen == Seen::Word(Message::Holding) {
                return Ok(());
            }
            let (next, act) = self.state.step(seen, still_on());
            self.state = next;
            match act {
                Act::Wait => {}
                Act::Send(m) => {
                    if self.send(&m).await.is_err() {
                        // Its end is closed: it is gone.
                        let (next, _) = self.state.step(Seen::Closed, true);
                        self.state = next;
                        return Err(self.failure(Failure::Closed, timeout).await);
                    }
                    tracing::debug!(
                        new_pid = self.pid,
                        "the new generation is ready; told it to hold every listener"
                    );
                }
                Act::Fail(f) => return Err(self.failure(f, timeout).await),
                Act::Commit => unreachable!("a commit is decided by `decide`"),
            }
        }
    }

    /// The commit's decision, once the successor holds every listener: `still_on`, read
    /// under the owner's lock, says whether the restart was called off meanwhile.
    pub(crate) fn decide(&mut self, still_on: bool) -> Result<(), RestartError> {
        let (next, act) = self.state.step(Seen::Word(Message::Holding), still_on);
        self.state = next;
        match act {
            Act::Commit => Ok(()),
            _ => Err(RestartError::Aborted { pid: self.pid }),
        }
    }

    /// The error for a failed exchange.
    async fn failure(&mut self, f: Failure, timeout: Duration) -> RestartError {
        let pid = self.pid;
        match (f, &mut self.who) {
            (Failure::CalledOff, _) => RestartError::Aborted { pid },
            (Failure::TimedOut, Who::Child(_)) => RestartError::NotReady { pid, timeout },
            (Failure::TimedOut, Who::Newcomer(_)) => {
                RestartError::TakeoverNotReady { pid, timeout }
            }
            (Failure::Closed | Failure::Exited, Who::Child(c)) => {
                let status = match self.status {
                    Some(s) => Some(s),
                    // Its end closed: it exited or is about to.
                    None => tokio::time::timeout(Duration::from_secs(5), c.wait())
                        .await
                        .ok()
                        .and_then(Result::ok),
                };
                self.status = status;
                match status {
                    Some(status) => RestartError::Exited { pid, status },
                    None => RestartError::Left { pid },
                }
            }
            (Failure::Closed | Failure::Exited, Who::Newcomer(_)) => RestartError::Left { pid },
        }
    }

    /// Committed: tells the successor it is live; reaps a child whenever it exits
    /// (this generation may outlive it while it drains); hammers the generations
    /// beyond the draining bound.
    pub(crate) async fn commit(mut self) {
        if let Err(e) = self.send(&Message::Live).await {
            tracing::warn!(error = %e, new_pid = self.pid, "cannot tell the new generation it is live");
        }
        let _ = self.channel.get_mut().shutdown().await;
        crate::handover::lineage::hammer(&self.hammer, self.max_draining);
        self.into_parking().let_go();
    }

    /// The committed successor, as what watches it from now on holds it.
    fn into_parking(self) -> Parking {
        Parking {
            pid: self.pid,
            who: self.who,
            channel: self.channel,
            status: self.status,
            line: String::new(),
        }
    }

    /// Committed, with a probation of `ms`: tells the successor so, then that it is
    /// live, and waits (briefly) for it to echo the probation. The channel it keeps is
    /// what the parked generation watches; `None` if the successor does not follow a
    /// probation (a version before it closes the channel after `live`): this generation
    /// then drains and exits as without probation.
    pub(crate) async fn commit_parked(mut self, ms: u64) -> Option<Parking> {
        let sent = async {
            self.send(&Message::Probation(ms)).await?;
            self.send(&Message::Live).await
        }
        .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, new_pid = self.pid, "cannot tell the new generation it is live");
        }
        crate::handover::lineage::hammer(&self.hammer, self.max_draining);
        let mut parking = self.into_parking();
        let echoed = tokio::time::timeout(ECHO_WAIT, async {
            loop {
                match parking.next().await {
                    Some(Message::Probation(m)) if m == ms => return true,
                    Some(_) => {}
                    None => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        if echoed {
            Some(parking)
        } else {
            tracing::warn!(
                new_pid = parking.pid,
                "the new generation does not follow a probation; draining without parking"
            );
            parking.let_go();
            None
        }
    }

    /// Calls the handover off: `abort`, and SIGTERM so that it drains what it accepted
    /// (a generation that never went live and has nothing to finish exits at once). A
    /// child is waited for, and killed if it is still there after `grace`; a newcomer
    /// is not ours to wait for or kill. Returns once a child is reaped.
    pub(crate) async fn stop(mut self, grace: Duration) {
        let pid = self.pid;
        let _ = self.send(&Message::Abort).await;
        match self.who {
            Who::Child(mut child) => {
                if self.status.is_some() || child.try_wait().ok().flatten().is_some() {
                    return;
                }
                child.signal(Signal::TERM);
                match tokio::time::timeout(grace, child.wait()).await {
                    Ok(_) => tracing::info!(new_pid = pid, "the failed generation stopped"),
                    Err(_) => {
                        tracing::warn!(new_pid = pid, grace = ?grace, "the failed generation did not stop in time; killing it");
                        child.signal(Signal::KILL);
                        let _ = child.wait().await;
                    }
                }
            }
            Who::Newcomer(id) => {
                drop(self.channel);
                match id.map(|id| crate::handover::lineage::signal(&id, Signal::TERM)) {
                    Some(Ok(true)) => tracing::info!(
                        new_pid = pid,
                        "told the failed new process to stop (SIGTERM)"
                    ),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, new_pid = pid, "cannot stop the failed new process")
                    }
                    _ => tracing::debug!(new_pid = pid, "the failed new process is gone"),
                }
            }
        }
    }
}

/// How long a committed successor has to echo `probation` before the old generation
/// takes it as one that does not follow it.
const ECHO_WAIT: Duration = Duration::from_secs(2);

/// The live generation as its parked predecessor watches it (see the `probation`
/// module of the handover).
pub(crate) struct Parking {
    pub(crate) pid: u32,
    who: Who,
    channel: tokio::io::BufReader<tokio::net::UnixStream>,
    status: Option<std::process::ExitStatus>,
    /// A line read in part (when the caller stopped waiting for it).
    line: String,
}

impl Parking {
    /// The next word from the live generation; `None` once its end closed (it died,
    /// or is done with the probation).
    /// Cancel-safe: a line read in part is kept for the next call.
    pub(crate) async fn next(&mut self) -> Option<Message> {
        loop {
            match self.channel.read_line(&mut self.line).await {
                Ok(n) if n > 0 => {
                    let m = Message::decode(&self.line);
                    if m.is_none() {
                        tracing::warn!(new_pid = self.pid, line = %self.line.trim_end(), "unexpected message from the generation on probation");
                    }
                    self.line.clear();
                    if m.is_some() {
                        return m;
                    }
                }
                _ => return None,
            }
        }
    }

    pub(crate) async fn send(&mut self, m: &Message) -> io::Result<()> {
        self.channel
            .get_mut()
            .write_all(m.encode().as_bytes())
            .await
    }

    /// How a child that closed its end ended, if it did within a moment (a newcomer's
    /// is not ours to learn).
    pub(crate) async fn ended(&mut self) -> Option<std::process::ExitStatus> {
        if let (Who::Child(c), None) = (&mut self.who, self.status) {
            self.status = tokio::time::timeout(Duration::from_millis(500), c.wait())
                .await
                .ok()
                .and_then(Result::ok);
        }
        self.status
    }

    /// Done watching: a child is reaped whenever it exits (this generation may outlive
    /// it while it drains).
    pub(crate) fn let_go(self) {
        if let (Who::Child(mut child), None) = (self.who, self.status) {
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
        }
    }
}

/// A started next generation, as the way it was started gives it.
pub(crate) enum Proc {
    #[cfg(target_os = "linux")]
    Cloned(crate::sys::spawn::Child),
    Forked(tokio::process::Child),
}

impl Proc {
    pub(crate) fn pid(&self) -> u32 {
        match self {
            #[cfg(target_os = "linux")]
            Proc::Cloned(c) => c.pid,
            Proc::Forked(c) => c.id().unwrap_or(0),
        }
    }

    pub(crate) async fn wait(&mut self) -> io::Result<std::process::ExitStatus> {
        match self {
            #[cfg(target_os = "linux")]
            Proc::Cloned(c) => c.wait().await,
            Proc::Forked(c) => c.wait().await,
        }
    }

    pub(crate) fn try_wait(&mut self) -> io::Result<Option<std::process::ExitStatus>> {
        match self {
            #[cfg(target_os = "linux")]
            Proc::Cloned(c) => c.try_wait(),
            Proc::Forked(c) => c.try_wait(),
        }
    }

    /// Sends `sig` unless it was reaped (then its pid may be another process's).
    pub(crate) fn signal(&mut self, sig: Signal) {
        match self {
            #[cfg(target_os = "linux")]
            Proc::Cloned(c) => {
                let _ = c.signal(sig);
            }
            Proc::Forked(c) => {
                // `id()` is `None` once the child is reaped, so the pid is still ours.
                if let Some(p) = c.id() {
                    let _ = crate::sys::process::kill(p, sig);
                }
            }
        }
    }
}

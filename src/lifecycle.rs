//! What the rest of the crate sees of the process owner ([`Process`](crate::Process)):
//! its state, the transitions it makes, and the signals it sends servers. The owner is
//! the only writer; servers, connections, the control socket, the PID file and the
//! service-manager notifications only observe.
//!
//! ```text
//!            ready()            the exchange with the previous generation:
//! Starting ───────────► Confirming ── "go", "holding", "live" (the `commit` module) ──► Serving ◄──┐
//!    │  (first generation, or a pipe: no answer to wait for) ──────────────────────────►   │      │ failed
//!    │                                                                                restart   │
//!    │                                                                                    ▼      │
//!    │                                                                               Restarting ─┘
//!    │ TERM, "abort" (a generation that never went live and has                           │ the new one holds
//!    │ nothing to finish exits at once)                                                   ▼ every listener
//!    ▼                                                                        Draining(HandedOver)
//! Draining(Shutdown) ◄── TERM (Serving, no lame-duck period)
//!         ▲
//!         └── LameDuck ◄── TERM (Serving, or Restarting: the restart is called off)
//! ```
//!
//! With a probation ([`ProcessBuilder::probation`](crate::ProcessBuilder::probation)),
//! a generation that handed over is also **parked** while it drains and after: its
//! servers keep their listeners, accepting nothing. A rollback takes it from
//! `Draining(HandedOver)` back to `Serving`, live again once the generation on probation
//! stopped accepting (or died); the probation's end unparks it, and it finishes as any
//! draining generation. The generation on probation hands back as it hands over at a
//! restart: `Draining(HandedOver)`, to the parked one's pid. (The exchange is the
//! `probation` module's, in `handover`.)
//!
//! Orthogonal to the phase is whether this generation is **live**: whether it owns the
//! files it serves on (Unix socket files, the control socket, the PID file). The first
//! generation is live from the start; a new generation becomes live when its parent
//! commits the handover, and the parent stops being live at that same instant. Only a
//! live generation removes those files at a shutdown, so a SIGTERM at any moment of a
//! restart leaves one live generation with all its files, or none.

use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Arc;

use tokio::sync::watch;

use crate::error::RestartError;

/// Default [`ProcessBuilder::stop_grace`](crate::ProcessBuilder::stop_grace) (and the
/// supervisor's): 10 s.
pub const DEFAULT_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The default [`ProcessBuilder::max_draining`](crate::ProcessBuilder::max_draining).
pub const DEFAULT_MAX_DRAINING: usize = 4;

/// Default [`Server::hammer_time`](crate::Server::hammer_time) and
/// [`ProcessBuilder::hammer_time`](crate::ProcessBuilder::hammer_time): 60 s, as
/// endless's `DefaultHammerTime`.
pub const DEFAULT_HAMMER_TIME: std::time::Duration = std::time::Duration::from_secs(60);

/// How serving ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// A graceful shutdown: nothing serves the addresses any more. A service that
    /// registers with service discovery deregisters now.
    Shutdown,
    /// The next generation, with this pid, serves the addresses now.
    HandedOver {
        /// The new generation's pid.
        pid: u32,
    },
}

impl std::fmt::Display for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Served::Shutdown => f.write_str("shutdown"),
            Served::HandedOver { pid } => write!(f, "handed over to pid {pid}"),
        }
    }
}

/// What took the service back from a generation on probation to the one parked
/// before it (see [`ProcessBuilder::probation`](crate::ProcessBuilder::probation)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "control",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
#[non_exhaustive]
pub enum RollbackTrigger {
    /// The generation on probation exited without a shutdown (a crash, an abort, a
    /// kill): the parked one resumed on its own.
    Crash,
    /// The error policy tripped
    /// ([`ProcessBuilder::rollback_on_errors`](crate::ProcessBuilder::rollback_on_errors)).
    Errors,
    /// The application called [`Process::rollback`](crate::Process::rollback).
    Application,
    /// An operator asked on the control socket (`rollback`).
    Operator,
}

impl RollbackTrigger {
    /// Its name: `crash`, `errors`, `application`, `operator`.
    pub fn as_str(self) -> &'static str {
        match self {
            RollbackTrigger::Crash => "crash",
            RollbackTrigger::Errors => "errors",
            RollbackTrigger::Application => "application",
            RollbackTrigger::Operator => "operator",
        }
    }

    /// The trigger named `s` ([`RollbackTrigger::as_str`]).
    pub fn parse(s: &str) -> Option<RollbackTrigger> {
        [
            RollbackTrigger::Crash,
            RollbackTrigger::Errors,
            RollbackTrigger::Application,
            RollbackTrigger::Operator,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for RollbackTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The responses a generation on probation answered, for its error policy
/// ([`ProcessBuilder::rollback_on_errors`](crate::ProcessBuilder::rollback_on_errors)):
/// counted only while the policy watches, one relaxed load per response otherwise.
#[derive(Debug, Default)]
pub(crate) struct Outcomes {
    counting: std::sync::atomic::AtomicBool,
    total: AtomicU64,
    errors: AtomicU64,
}

impl Outcomes {
    /// A response with this status was answered.
    pub(crate) fn record(&self, status: http::StatusCode) {
        if self.counting.load(Ordering::Relaxed) {
            self.total.fetch_add(1, Ordering::Relaxed);
            if status.is_server_error() {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counting from zero on, or not.
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) fn count(&self, on: bool) {
        self.total.store(0, Ordering::Relaxed);
        self.errors.store(0, Ordering::Relaxed);
        self.counting.store(on, Ordering::Relaxed);
    }

    /// Responses and server errors counted so far.
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.total.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

/// The phase of a generation. See the module docs for the diagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// The phases of a restart never come on Windows, which has none.
#[cfg_attr(not(unix), allow(dead_code))]
pub(crate) enum Phase {
    /// Servers are starting; readiness not declared yet.
    Starting,
    /// Declared ready; in the exchange with the previous generation, which commits the
    /// handover once this one holds every listener.
    Confirming,
    /// Ready, and the generation that serves.
    Serving,
    /// A new generation is starting.
    Restarting,
    /// A shutdown was asked for, and the lame-duck period runs: everything is served as
    /// before, but the health check says 503 so that balancers stop sending here.
    LameDuck,
    /// Draining, for this reason.
    Draining(Served),
}

/// A generation's state: its phase, and whether it owns its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct State {
    pub(crate) phase: Phase,
    pub(crate) live: bool,
    /// Handed over and on probation: the servers keep their listeners (accepting
    /// nothing) until the probation ends or a rollback resumes them.
    pub(crate) parked: bool,
}

impl State {
    pub(crate) fn draining(&self) -> Option<Served> {
        match self.phase {
            Phase::Draining(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining().is_some()
    }

    /// Ready and live: the generation that answers for the process (and may restart).
    #[cfg(unix)]
    pub(crate) fn is_serving(&self) -> bool {
        matches!(self.phase, Phase::Serving | Phase::Restarting) && self.live
    }
}

/// A transition, as the owner tells its observers (in order: the PID file first, then
/// the service manager, so whoever hears of a pid can read it in the file).
#[derive(Debug)]
// The transitions of a restart never come on Windows, which has none.
#[cfg_attr(not(unix), allow(dead_code))]
pub(crate) enum Transition<'a> {
    /// This generation declared ready. `first`: it has no previous generation to tell,
    /// so it is live and the process's main one at once.
    Ready { first: bool },
    /// The previous generation committed the handover: this one is live.
    Live,
    /// A restart begins: the next generation is about to be started.
    RestartBegun,
    /// The restart failed; this generation carries on.
    RestartFailed(&'a RestartError),
    /// The new generation is ready and the handover committed to; the drain follows.
    Committed { new_pid: u32 },
    /// The new generation is live; this one drains and is no longer live.
    HandedOver { new_pid: u32 },
    /// A shutdown begins. `live`: this generation owns its files and is the main one.
    ShutdownBegun { live: bool },
    /// Every server of this generation is drained.
    Done { served: Served, live: bool },
    /// This parked generation took the service back from `from_pid`: it is live again.
    RolledBack {
        from_pid: u32,
        trigger: RollbackTrigger,
        /// From the trigger (the ask, or the crash seen) to live again.
        ms: u64,
    },
    /// This generation, on probation, handed the service back to the parked `to_pid`;
    /// it drains and is no longer live.
    HandedBack {
        to_pid: u32,
        trigger: RollbackTrigger,
    },
    /// The probation that followed this generation's going live ended: `None` once
    /// it is over, `Some(ms)` when it begins.
    Probation { ms: Option<u64> },
    /// This generation handed over and parks behind the new one for `ms`.
    Parked { ms: u64 },
}

/// Something that follows the owner's transitions.
pub(crate) trait Observer: Send {
    fn observe(&mut self, t: &Transition<'_>);
}

/// What a server or connection holds to follow the owner: the state and the hammer.
#[derive(Clone)]
pub(crate) struct Watch {
    pub(crate) state: watch::Receiver<State>,
    pub(crate) hammer: watch::Receiver<u64>,
}

/// Set the instant the drain begins, before anyone is woken: responses finished from
/// then on say `Connection: close`. Read on every response, hence one plain atomic
/// rather than a field behind an `Arc` cloned into every request (there is one process
/// owner per process).
/// The instant (coarse clock, [`crate::duration::now_ms`]) the drain began; 0 before.
static DRAINING: AtomicU64 = AtomicU64::new(0);

/// When this generation's drain began (coarse clock), 0 while serving.
pub(crate) fn draining_since() -> u64 {
    DRAINING.load(Ordering::Acquire)
}

/// That this generation began draining, and why: [`Drain::current`] in a handler
/// ceaseless's [`Server`](crate::Server) serves (an axum extractor with the `axum`
/// feature, a request extension with `Server::request_extensions(true)`), for handlers
/// of long-lived connections (a WebSocket's close frame, the end of an event stream).
/// Also from [`Process::drain`](crate::Process::drain).
///
/// ```no_run
/// use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
/// use axum::http::StatusCode;
/// use axum::response::{IntoResponse, Response};
/// use ceaseless::{Drain, Served};
///
/// async fn ws(upgrade: WebSocketUpgrade) -> Response {
///     // Taken here: the socket's task is not polled by ceaseless.
///     let Some(drain) = Drain::current() else {
///         return StatusCode::INTERNAL_SERVER_ERROR.into_response();
///     };
///     upgrade.on_upgrade(move |mut socket: WebSocket| async move {
///         loop {
///             tokio::select! {
///                 served = drain.wait() => {
///                     // 1012 "service restart" on a restart, 1001 "going away" on shutdown.
///                     let code = match served { Served::HandedOver { .. } => 1012, Served::Shutdown => 1001 };
///                     let frame = CloseFrame { code, reason: "draining".into() };
///                     let _ = socket.send(Message::Close(Some(frame))).await;
///                     break;
///                 }
///                 msg = socket.recv() => match msg {
///                     Some(Ok(Message::Text(t))) => { let _ = socket.send(Message::Text(t)).await; }
///                     Some(Ok(_)) => {}
///                     _ => return,
///                 },
///             }
///         }
///         // Read on until the client answers the close.
///         while let Some(Ok(_)) = socket.recv().await {}
///     })
/// }
/// ```
///
/// The `Drain` of a request completes once its server has stopped accepting, so a client
/// told to reconnect reaches the new generation.
#[derive(Clone)]
pub struct Drain {
    // Behind an `Arc` of its own per connection (see `for_connection`): cloning it
    // into every request then touches that connection's counter, not the shared
    // counters of the server's channel, which every worker would contend for.
    served: Arc<watch::Receiver<Option<Served>>>,
}

impl std::fmt::Debug for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drain")
            .field("served", &self.served())
            .finish()
    }
}

impl Drain {
    pub(crate) fn new(served: watch::Receiver<Option<Served>>) -> Self {
        Drain {
            served: Arc::new(served),
        }
    }

    /// A copy for one connection's requests (see the field's comment).
    pub(crate) fn for_connection(&self) -> Self {
        Drain::new((*self.served).clone())
    }

    /// Completes when this generation starts draining, with why: a restart handed the
    /// sockets over ([`Served::HandedOver`]), or a shutdown began ([`Served::Shutdown`]).
    pub async fn wait(&self) -> Served {
        let mut rx = (*self.served).clone();
        let drained = rx.wait_for(|s| s.is_some()).await;
        match drained {
            Ok(s) => s.unwrap_or(Served::Shutdown),
            // Whoever announces it is gone: the process is ending.
            Err(_) => Served::Shutdown,
        }
    }

    /// Whether the drain began, and why; `None` while serving.
    pub fn served(&self) -> Option<Served> {
        *self.served.borrow()
    }
}

/// The owner's side of a [`Watch`].
pub(crate) struct Publisher {
    state: watch::Sender<State>,
    hammer: watch::Sender<u64>,
    served: watch::Sender<Option<Served>>,
}

impl Publisher {
    pub(crate) fn new(initial: State) -> Self {
        Publisher {
            state: watch::Sender::new(initial),
            hammer: watch::Sender::new(0),
            served: watch::Sender::new(None),
        }
    }

    /// The process-wide [`Drain`]: complete as soon as the drain begins.
    pub(crate) fn drain(&self) -> Drain {
        Drain::new(self.served.subscribe())
    }

    pub(crate) fn watch(&self) -> Watch {
        Watch {
            state: self.state.subscribe(),
            hammer: self.hammer.subscribe(),
        }
    }

    /// The state last published.
    pub(crate) fn current(&self) -> State {
        *self.state.borrow()
    }

    pub(crate) fn publish(&self, s: State) {
        if s.is_draining() {
            let _ = DRAINING.compare_exchange(
                0,
                crate::duration::now_ms(),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            self.served.send_if_modified(|v| {
                let first = v.is_none();
                if first {
                    *v = s.draining();
                }
                first
            });
        }
        self.state.send_replace(s);
    }

    pub(crate) fn hammer(&self) {
        self.hammer.send_modify(|n| *n += 1);
    }
}

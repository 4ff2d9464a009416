//! What a process is doing, as one typed snapshot: [`Process::status`], and the
//! control socket's `status` request (as JSON, with the `control` feature).
//!
//! The snapshot is read when asked for: the phase from the process owner, the
//! connection counts from each server's own counter (nothing is added to the
//! connection path for it), the restart history from a small book kept by the process
//! owner. The book outlives each generation: the parent writes it into the child's
//! environment at each restart (see the `handover` module), and the child records the
//! restart it came from itself, once it is live — how long it took from the start of
//! the restart (SIGHUP) to its readiness, and, once the previous generation exited,
//! from its readiness to that exit (the old generation's drain). A failed restart is
//! recorded by the generation that stays. Only restarts that began are recorded: a
//! request refused at once (one already in progress, a shutdown under way) is not.
//!
//! [`Process::status`]: crate::Process::status

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

pub use crate::handover::history::{Outcome, Restart, RestartCounts, RollbackCounts};
#[cfg(unix)]
use crate::handover::{self, Began, History, MAX_REASON, MAX_RESTARTS};
#[cfg(unix)]
use crate::lifecycle::{Observer, Transition};
use crate::lifecycle::{Phase as LPhase, State};
use crate::sys::clock::mono_ns;

/// A snapshot of the process: [`Process::status`](crate::Process::status).
///
/// As JSON (the control socket's `status`, with the `control` feature), times are
/// RFC 3339 strings in UTC with milliseconds, and absent values are `null`:
///
/// ```text
/// {"pid":4188,"generation":4,"phase":"serving","live":true,
///  "started_at":"2026-12-02T01:20:03.117Z","uptime_ms":5120,
///  "listeners":[{"address":"127.0.0.1:4242","origin":"inherited",
///                 "connections":{"open":3,"active":1,"idle":1,"upgraded":1}}],
///  "connections":{"open":3,"active":1,"idle":1,"upgraded":1},
///  "restarts_total":{"ok":3,"failed":1},
///  "restarts":[{"at":"2026-12-02T01:20:02.981Z","generation":4,"outcome":"ok","pid":4188,
///               "reason":null,"sighup_to_ready_ms":136,"ready_to_old_gone_ms":1004},
///              {"at":"2026-12-02T01:20:04.530Z","generation":4,"outcome":"failed","pid":null,
///               "reason":"cannot start /srv/hello: No such file or directory (os error 2)",
///               "sighup_to_ready_ms":null,"ready_to_old_gone_ms":null}]}
/// ```
///
/// ```no_run
/// # fn f(process: &ceaseless::Process) {
/// let s = process.status();
/// println!("pid {} generation {} {:?}: {} open connections", s.pid, s.generation, s.phase, s.connections.open);
/// for r in &s.restarts {
///     println!("{:?} {:?} {:?}", r.at, r.outcome, r.reason);
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "control", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Status {
    /// This process's pid.
    pub pid: u32,
    /// The generation number: 1 for the first process, one more at each successful
    /// restart.
    pub generation: u64,
    /// Where the generation is in its life.
    pub phase: Phase,
    /// Whether this generation owns the files it serves on (socket files, the control
    /// socket, the PID file): the one that answers for the process.
    pub live: bool,
    /// When this process started (its process owner, precisely).
    #[cfg_attr(feature = "control", serde(with = "crate::handover::history::rfc3339"))]
    pub started_at: SystemTime,
    /// Milliseconds since `started_at`.
    pub uptime_ms: u64,
    /// Each listener this generation took, in the order taken.
    pub listeners: Vec<ListenerStatus>,
    /// The connections of every listener together.
    pub connections: Connections,
    /// Requests this generation received, every listener together (a ceaseless
    /// [`Server`](crate::Server)'s; not those of a listener handed to another server).
    pub requests: u64,
    /// Every restart since the first generation, by outcome.
    pub restarts_total: RestartCounts,
    /// The most recent restarts (16 at most), oldest first.
    pub restarts: Vec<Restart>,
    /// The probation this generation is in, parked or on it (see
    /// [`ProcessBuilder::probation`](crate::ProcessBuilder::probation)); `None` when
    /// there is none.
    #[cfg_attr(feature = "control", serde(default))]
    pub probation: Option<ProbationStatus>,
}

/// A probation, as one of its two generations sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "control", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct ProbationStatus {
    /// This generation is the parked one (else it is the one on probation).
    pub parked: bool,
    /// The other generation's pid: the live one this one is parked behind, or the one
    /// parked behind this one.
    pub other_pid: u32,
    /// When the probation ends (the parked generation then exits).
    #[cfg_attr(feature = "control", serde(with = "crate::handover::history::rfc3339"))]
    pub ends_at: SystemTime,
}

impl ProbationStatus {
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) fn new(other_pid: u32, parked: bool, ends_at: SystemTime) -> Self {
        ProbationStatus {
            parked,
            other_pid,
            ends_at,
        }
    }
}

/// A generation's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "control",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
#[non_exhaustive]
pub enum Phase {
    /// Servers are starting; not ready yet.
    Starting,
    /// Ready; waiting for the previous generation to commit the handover.
    Confirming,
    /// Ready and serving.
    Serving,
    /// Serving, and a restart is under way.
    Restarting,
    /// A shutdown's lame-duck period: serving, while the health check says 503.
    LameDuck,
    /// Draining after a shutdown or a handover.
    Draining,
    /// Handed over and parked for a probation: keeps the listeners, accepts nothing,
    /// until the probation ends or the service rolls back here.
    Parked,
}

impl Phase {
    /// The name used in JSON and metrics: `starting`, `serving`, `lame_duck`, …
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Confirming => "confirming",
            Phase::Serving => "serving",
            Phase::Restarting => "restarting",
            Phase::LameDuck => "lame_duck",
            Phase::Draining => "draining",
            Phase::Parked => "parked",
        }
    }

    /// Every phase.
    pub const ALL: [Phase; 7] = [
        Phase::Starting,
        Phase::Confirming,
        Phase::Serving,
        Phase::Restarting,
        Phase::LameDuck,
        Phase::Draining,
        Phase::Parked,
    ];

    fn of(p: LPhase) -> Phase {
        match p {
            LPhase::Starting => Phase::Starting,
            LPhase::Confirming => Phase::Confirming,
            LPhase::Serving => Phase::Serving,
            LPhase::Restarting => Phase::Restarting,
            LPhase::LameDuck => Phase::LameDuck,
            LPhase::Draining(_) => Phase::Draining,
        }
    }
}

/// One listener.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "control", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct ListenerStatus {
    /// The address it listens on (`127.0.0.1:4242`, `unix:/run/app.sock`).
    pub address: String,
    /// Where the socket came from.
    pub origin: Origin,
    /// Its connections, when a ceaseless [`Server`](crate::Server) serves it (`None`
    /// for a listener handed to another server with
    /// [`Process::tcp_listener`](crate::Process::tcp_listener)).
    pub connections: Option<Connections>,
}

/// Where a listening socket came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "control",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
#[non_exhaustive]
pub enum Origin {
    /// Handed over by the previous generation.
    Inherited,
    /// Handed over by the service manager (socket activation).
    Activated,
    /// Bound by this process.
    Bound,
}

/// Connection counts: every open one, and the same by state (`active + idle +
/// upgraded == open`, counted together from the connections' own state when the
/// snapshot is taken).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "control", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Connections {
    /// Open connections (accepted and not closed yet), in whatever state.
    pub open: usize,
    /// With a request in flight (HTTP/2: with a stream open).
    pub active: usize,
    /// Open, between requests (keep-alive).
    pub idle: usize,
    /// Switched protocols (WebSockets and other upgrades): no longer HTTP, still
    /// drained.
    pub upgraded: usize,
}

impl Connections {
    fn of(c: Census) -> Connections {
        Connections {
            open: c.active + c.idle + c.upgraded,
            active: c.active,
            idle: c.idle,
            upgraded: c.upgraded,
        }
    }

    fn add(self, o: Connections) -> Connections {
        Connections {
            open: self.open + o.open,
            active: self.active + o.active,
            idle: self.idle + o.idle,
            upgraded: self.upgraded + o.upgraded,
        }
    }
}

/// Connections of one server by state, as a server counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Census {
    /// A request in flight (or an HTTP/2 connection with a stream open).
    pub(crate) active: usize,
    /// Open, between requests.
    pub(crate) idle: usize,
    /// Switched protocols (WebSockets).
    pub(crate) upgraded: usize,
    /// Requests received so far, over open and closed connections.
    pub(crate) requests: u64,
}

/// What the status reads of a server's connections: the server's connection tracker
/// implements it, and hands itself over with [`Book::count_connections`].
pub(crate) trait Counts: Send + Sync {
    /// The open connections by state.
    fn census(&self) -> Census;
    /// How many are open.
    fn open(&self) -> usize;
}

#[cfg(unix)]
fn now_began() -> Began {
    Began {
        mono_ns: mono_ns(),
        unix_ms: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    }
}

fn ms_between(from_ns: u64, to_ns: u64) -> u64 {
    to_ns.saturating_sub(from_ns) / 1_000_000
}

/// A listener as the book knows it.
struct Entry {
    address: String,
    origin: Origin,
    tracker: Option<Arc<dyn Counts>>,
}

/// The process owner's record of its listeners and restarts.
pub(crate) struct Book {
    started_at: SystemTime,
    started_mono: u64,
    #[cfg_attr(not(unix), allow(dead_code))] // no parent there
    parent: Option<u32>,
    generation: u64,
    inner: Mutex<Pages>,
}

#[derive(Default)]
struct Pages {
    listeners: Vec<Entry>,
    history: VecDeque<Restart>,
    totals: RestartCounts,
    /// When the restart under way (of this generation) began.
    #[cfg(unix)]
    began: Option<Began>,
    /// When the restart that started this generation began (from the parent).
    #[cfg(unix)]
    inherited_began: Option<Began>,
    /// When this generation reported ready to its parent.
    #[cfg(unix)]
    ready_ns: Option<u64>,
}

fn lock(m: &Mutex<Pages>) -> std::sync::MutexGuard<'_, Pages> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Book {
    /// A book for this generation, empty (see [`Book::inherit_history`]).
    pub(crate) fn new(parent: Option<u32>, generation: u64) -> Arc<Book> {
        Arc::new(Book {
            started_at: SystemTime::now(),
            started_mono: mono_ns(),
            parent,
            generation,
            inner: Mutex::new(Pages::default()),
        })
    }

    /// Reads the history the parent carried over, if there is a parent (a stale
    /// variable left by another process is never read). Malformed entries are logged
    /// and dropped.
    #[cfg(unix)]
    pub(crate) fn inherit_history(&self, env: &dyn handover::Env) {
        if self.parent.is_none() {
            return;
        }
        let mut pages = lock(&self.inner);
        if let Some(v) = env.get(handover::ENV_RESTARTS) {
            let (h, rejected) = handover::decode_history(&v);
            for e in rejected {
                tracing::warn!(error = %e, "dropping a line of the restart history");
            }
            pages.totals = h.totals;
            pages.history = h.restarts.into();
        }
        match env
            .get(handover::ENV_RESTART_BEGAN)
            .map(|v| handover::Began::decode(&v))
        {
            Some(Ok(b)) => pages.inherited_began = Some(b),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "the restart's start time is unreadable")
            }
            None => {}
        }
    }

    /// A listener was taken.
    pub(crate) fn listener(&self, address: String, origin: Origin) {
        lock(&self.inner).listeners.push(Entry {
            address,
            origin,
            tracker: None,
        });
    }

    /// A ceaseless server counts the connections of the listener at `address`.
    pub(crate) fn count_connections(&self, address: &str, tracker: Arc<dyn Counts>) {
        let mut p = lock(&self.inner);
        // A listener not counted yet; else (a parked generation serving again, in a
        // new round) the one at that address.
        let found = match p
            .listeners
            .iter()
            .rposition(|e| e.address == address && e.tracker.is_none())
        {
            Some(i) => Some(i),
            None => p.listeners.iter().rposition(|e| e.address == address),
        };
        if let Some(i) = found {
            p.listeners[i].tracker = Some(tracker);
        }
    }

    /// Connections open on this generation's listeners now; `None` when a listener is
    /// served by something that does not count them (a server other than ceaseless's).
    pub(crate) fn open_connections(&self) -> Option<usize> {
        lock(&self.inner)
            .listeners
            .iter()
            .map(|e| e.tracker.as_ref().map(|t| t.open()))
            .sum()
    }

    /// The variables that carry the history to the child of the restart under way.
    #[cfg(unix)]
    pub(crate) fn child_env(&self) -> Vec<(&'static str, String)> {
        let p = lock(&self.inner);
        let h = History {
            totals: p.totals,
            restarts: p.history.iter().cloned().collect(),
        };
        let mut vars = vec![(handover::ENV_RESTARTS, handover::encode_history(&h))];
        if let Some(b) = p.began {
            vars.push((handover::ENV_RESTART_BEGAN, b.encode()));
        }
        vars
    }

    pub(crate) fn snapshot(&self, state: State) -> Status {
        let p = lock(&self.inner);
        let mut requests = 0;
        let listeners: Vec<ListenerStatus> = p
            .listeners
            .iter()
            .map(|e| ListenerStatus {
                address: e.address.clone(),
                origin: e.origin,
                connections: e.tracker.as_ref().map(|t| {
                    let c = t.census();
                    requests += c.requests;
                    Connections::of(c)
                }),
            })
            .collect();
        let total = listeners
            .iter()
            .filter_map(|l| l.connections)
            .fold(Connections::default(), Connections::add);
        Status {
            pid: std::process::id(),
            generation: self.generation,
            phase: if state.parked {
                Phase::Parked
            } else {
                Phase::of(state.phase)
            },
            live: state.live,
            started_at: self.started_at,
            uptime_ms: ms_between(self.started_mono, mono_ns()),
            listeners,
            connections: total,
            requests,
            restarts_total: p.totals,
            restarts: p.history.iter().cloned().collect(),
            probation: None,
        }
    }

    #[cfg(unix)]
    fn push(p: &mut Pages, r: Restart) {
        p.totals.count(&r);
        p.history.push_back(r);
        while p.history.len() > MAX_RESTARTS {
            p.history.pop_front();
        }
    }

    /// Fills in the drain time of the restart that started this generation once the
    /// previous one is gone.
    #[cfg(unix)]
    fn watch_parent(self: &Arc<Self>, parent: u32, ready_ns: u64) {
        let book = self.clone();
        tokio::spawn(async move {
            parent_gone(parent).await;
            let gone = ms_between(ready_ns, mono_ns());
            tracing::debug!(
                previous = parent,
                ms = gone,
                "the previous generation is gone"
            );
            #[cfg(feature = "metrics")]
            crate::observe::metrics_record::drained(gone);
            let mut p = lock(&book.inner);
            let me = book.generation;
            if let Some(r) = p
                .history
                .iter_mut()
                .rev()
                .find(|r| r.generation == me && r.outcome == Outcome::Ok)
            {
                r.ready_to_old_gone_ms = Some(gone);
            }
        });
    }
}

/// Completes when process `pid` (the parent) has exited.
#[cfg(unix)]
async fn parent_gone(pid: u32) {
    crate::sys::process::parent_exited(pid).await
}

/// Follows the owner's transitions into the book: the restarts (there are none on
/// Windows).
#[cfg(unix)]
pub(crate) struct Recorder(pub(crate) Arc<Book>);

#[cfg(unix)]
impl Observer for Recorder {
    fn observe(&mut self, t: &Transition<'_>) {
        let book = &self.0;
        let mut p = lock(&book.inner);
        match t {
            Transition::RestartBegun => p.began = Some(now_began()),
            Transition::RestartFailed(e) => {
                let began = p.began.take().unwrap_or_else(now_began);
                let reason = e.to_string();
                let r = Restart {
                    at: at(began),
                    generation: book.generation,
                    outcome: Outcome::Failed,
                    pid: e.pid(),
                    reason: Some(handover::cut(&reason, MAX_REASON).to_string()),
                    sighup_to_ready_ms: None,
                    ready_to_old_gone_ms: None,
                    trigger: None,
                    rollback_ms: None,
                };
                Book::push(&mut p, r);
            }
            Transition::RolledBack {
                from_pid,
                trigger,
                ms,
            } => {
                let r = Restart {
                    // To the millisecond, as the history carries times.
                    at: at(now_began()),
                    generation: book.generation,
                    outcome: Outcome::RolledBack,
                    pid: Some(std::process::id()),
                    reason: Some(format!("rolled back from pid {from_pid} ({trigger})")),
                    sighup_to_ready_ms: None,
                    ready_to_old_gone_ms: None,
                    trigger: Some(*trigger),
                    rollback_ms: Some(*ms),
                };
                Book::push(&mut p, r);
            }
            Transition::Ready { first: false } => p.ready_ns = Some(mono_ns()),
            Transition::Live => {
                let (Some(parent), Some(ready_ns)) = (book.parent, p.ready_ns) else {
                    return;
                };
                let began = p.inherited_began;
                let ready_ms = began.map(|b| ms_between(b.mono_ns, ready_ns));
                #[cfg(feature = "metrics")]
                if let Some(ms) = ready_ms {
                    crate::observe::metrics_record::restarted(ms);
                }
                let r = Restart {
                    at: began.map_or_else(SystemTime::now, at),
                    generation: book.generation,
                    outcome: Outcome::Ok,
                    pid: Some(std::process::id()),
                    reason: None,
                    sighup_to_ready_ms: ready_ms,
                    ready_to_old_gone_ms: None,
                    trigger: None,
                    rollback_ms: None,
                };
                Book::push(&mut p, r);
                drop(p);
                book.watch_parent(parent, ready_ns);
            }
            _ => {}
        }
    }
}

#[cfg(unix)]
fn at(b: Began) -> SystemTime {
    SystemTime::UNIX_EPOCH
        .checked_add(std::time::Duration::from_millis(b.unix_ms))
        .unwrap_or_else(SystemTime::now)
}

/// `t` in RFC 3339, in UTC with milliseconds (`2026-12-02T01:20:03.117Z`): how the
/// JSON carries times, for a report of your own.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// let t = UNIX_EPOCH + Duration::from_millis(1_796_174_403_117);
/// assert_eq!(ceaseless::status::format_time(t), "2026-12-02T01:20:03.117Z");
/// ```
pub fn format_time(t: SystemTime) -> String {
    crate::handover::history::rfc3339::format(t)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::error::RestartError;

    struct Vars(Vec<(&'static str, String)>);
    impl handover::Env for Vars {
        fn get(&self, name: &str) -> Option<String> {
            self.0
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        }
    }

    fn restart(generation: u64) -> Restart {
        Restart {
            at: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(generation),
            generation,
            outcome: Outcome::Ok,
            pid: Some(100 + generation as u32),
            reason: None,
            sighup_to_ready_ms: Some(5),
            ready_to_old_gone_ms: Some(7),
            trigger: None,
            rollback_ms: None,
        }
    }

    #[tokio::test]
    async fn the_book_carries_and_bounds_the_history() {
        // A parent with a full history hands it over.
        let full = History {
            totals: {
                let mut t = RestartCounts::default();
                (t.ok, t.failed, t.rollbacks.errors) = (20, 2, 3);
                t
            },
            restarts: (2..2 + MAX_RESTARTS as u64).map(restart).collect(),
        };
        let began = now_began();
        let env = Vars(vec![
            (handover::ENV_RESTARTS, handover::encode_history(&full)),
            (handover::ENV_RESTART_BEGAN, began.encode()),
        ]);
        let me = 2 + MAX_RESTARTS as u64;
        let book = Book::new(Some(std::process::id()), me);
        book.inherit_history(&env);
        let mut rec = Recorder(book.clone());
        rec.observe(&Transition::Ready { first: false });
        rec.observe(&Transition::Live);
        let serving = State {
            phase: LPhase::Serving,
            live: true,
            parked: false,
        };
        let s = book.snapshot(serving);
        assert_eq!(s.restarts.len(), MAX_RESTARTS);
        assert_eq!((s.restarts_total.ok, s.restarts_total.failed), (21, 2));
        assert_eq!(s.restarts_total.rollbacks.errors, 3, "carried across");
        // A rollback to this generation is recorded with its trigger and time.
        rec.observe(&Transition::RolledBack {
            from_pid: 9999,
            trigger: crate::RollbackTrigger::Operator,
            ms: 4,
        });
        let s2 = book.snapshot(serving);
        let rb = s2.restarts.last().unwrap();
        assert_eq!(
            (rb.outcome, rb.trigger, rb.rollback_ms),
            (
                Outcome::RolledBack,
                Some(crate::RollbackTrigger::Operator),
                Some(4)
            )
        );
        assert_eq!(s2.restarts_total.rollbacks.operator, 1);
        assert_eq!(s2.restarts_total.ok, 21, "a rollback is not a restart");
        assert_eq!(s.restarts[0].generation, 3, "the oldest is dropped");
        let last = s.restarts.last().unwrap();
        assert_eq!((last.generation, last.outcome), (me, Outcome::Ok));
        assert_eq!(last.pid, Some(std::process::id()));
        assert!(last.sighup_to_ready_ms.is_some() && last.ready_to_old_gone_ms.is_none());

        // A failed restart of this generation is recorded by it, with its reason.
        rec.observe(&Transition::RestartBegun);
        let e = RestartError::NotReady {
            pid: 9999,
            timeout: std::time::Duration::from_secs(1),
        };
        rec.observe(&Transition::RestartFailed(&e));
        let s = book.snapshot(serving);
        let f = s.restarts.last().unwrap();
        assert_eq!(
            (f.outcome, f.pid, f.generation),
            (Outcome::Failed, Some(9999), me)
        );
        assert!(f.reason.as_deref().unwrap().contains("did not take over"));
        assert_eq!(s.restarts_total.failed, 3);

        // And all of it goes to the next child.
        rec.observe(&Transition::RestartBegun);
        let vars = book.child_env();
        let next = Book::new(Some(1), me + 1);
        next.inherit_history(&Vars(vars));
        let n = next.snapshot(serving);
        assert_eq!(n.restarts, s.restarts);
        assert_eq!(n.restarts_total, s.restarts_total);
        assert!(lock(&next.inner).inherited_began.is_some());
    }

    #[test]
    fn a_first_generation_ignores_stale_variables() {
        let env = Vars(vec![(
            handover::ENV_RESTARTS,
            "totals 5 5\n1000 2 ok 41 12 - -".into(),
        )]);
        let book = Book::new(None, 1);
        book.inherit_history(&env);
        let s = book.snapshot(State {
            phase: LPhase::Starting,
            parked: false,
            live: true,
        });
        assert!(s.restarts.is_empty());
        assert_eq!(s.restarts_total, RestartCounts::default());
        assert_eq!(s.phase, Phase::Starting);
    }
}

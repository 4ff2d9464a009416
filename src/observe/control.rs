//! The control socket: a restart with an answer, asked for from outside the process.
//!
//! SIGHUP restarts, but whoever sends it never learns whether the restart worked. A
//! process that opened a control socket ([`ProcessBuilder::control_socket`]) also restarts on
//! request there, and answers once the outcome is known; [`request_restart`] is the
//! client, for a deploy script or a service manager's `ExecReload=`.
//!
//! The protocol is one line each way over a Unix stream socket:
//!
//! ```text
//! -> restart
//! <- ok 4187               the new generation (pid 4187) serves; this one drains
//! <- error <reason>        nothing changed, the old generation still serves: the new
//!                          one exited (with its status), was not ready in time, could
//!                          not be started, or a restart was already under way
//! -> rollback             (to a generation on probation: ProcessBuilder::probation)
//! <- ok 4102               the parked generation (pid 4102) serves again; this one drains
//! <- error <reason>        nothing changed: no generation is parked (the probation is
//!                          over, or off), or a rollback is already under way
//! -> status
//! <- {"pid":4187,...}      the process's [`Status`](super::status::Status) as one line of JSON
//!                          (its fields are documented there); [`request_status`] reads it
//! -> reload-tls
//! <- ok 1                  the TLS servers' certificate files were read again and are
//!                          served to new handshakes ([`request_reload_tls`])
//! <- error <reason>        nothing changed (a file missing, a key that does not match)
//! -> takeover             (sent by a process started independently, with
//!                          ProcessBuilder::takeover: the listeners go to it over this
//!                          connection, which stays open for its readiness; see the
//!                          `takeover` module)
//! <- handover ...          the sockets attached, then ready/live/abort
//! <- error <reason>        refused, nothing changed
//! -> anything else
//! <- error unknown command "..."
//! ```
//!
//! The JSON is written with `serde_json`, a dependency of this feature, so that the
//! typed [`Status`](super::status::Status) the client reads back is the one the server wrote.
//!
//! The socket file gets mode 0600 before the socket listens, and only peers with the
//! same user id (or root) are answered. It survives restarts as the listeners do: it is
//! handed over under the name `control:<path>`, the new generation takes it, the old one
//! stops accepting when it drains, and the file is removed only at a final shutdown. A
//! generation answers only once it is ready; until then the previous one, still
//! accepting on the same socket, answers (with "a restart is already in progress").
//!
//! [`ProcessBuilder::control_socket`]: crate::ProcessBuilder::control_socket

#![cfg_attr(not(feature = "control"), allow(dead_code))]

use std::future::Future;
use std::io;
#[cfg(feature = "control")]
use std::io::{Read, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
#[cfg(feature = "control")]
use std::time::Instant;

use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

#[cfg(feature = "control")]
use crate::error::ControlError;
use crate::error::{Error, RestartError};
use crate::lifecycle::State;
/// The longest request or answer line accepted.
const MAX_LINE: u64 = 4096;
/// The longest `status` answer a client reads.
#[cfg(feature = "control")]
const MAX_STATUS: u64 = 1 << 20;
/// How long a connected client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopping server waits for the control socket's last answers.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);
const BACKLOG: i32 = 64;

/// Asks the process serving the control socket at `path` to restart, and waits for the
/// outcome: the new generation's pid, or why nothing changed.
///
/// Blocking; from async code, call it in `tokio::task::spawn_blocking`. `timeout`
/// bounds the whole exchange; it should exceed the server's ready timeout (30 s by
/// default), since the answer comes once the new generation is ready or given up on.
///
/// ```no_run
/// use std::time::Duration;
///
/// match ceaseless::control::request_restart("/run/hello/control.sock", Duration::from_secs(60)) {
///     Ok(pid) => println!("restarted: now served by pid {pid}"),
///     Err(e) => {
///         eprintln!("{e}"); // e.g. "restart failed: the new generation (pid 4188) exited ..."
///         std::process::exit(1);
///     }
/// }
/// ```
#[cfg(feature = "control")]
pub fn request_restart(path: impl AsRef<Path>, timeout: Duration) -> Result<u32, ControlError> {
    let answer = exchange(path.as_ref(), b"restart\n", timeout, MAX_LINE)?;
    parse_answer(&answer)
}

/// Asks the process serving the control socket at `path`, a generation on probation
/// ([`ProcessBuilder::probation`]), to roll the service back to the generation parked
/// behind it: the pid that serves again, once it does and the generation on probation
/// drains, or why not ([`ControlError::Refused`]: no generation is parked, the probation
/// is over, a rollback is already under way).
///
/// Blocking, like [`request_restart`]; a few seconds are plenty for `timeout`.
///
/// ```no_run
/// use std::time::Duration;
///
/// match ceaseless::control::request_rollback("/run/hello/control.sock", Duration::from_secs(10)) {
///     Ok(pid) => println!("rolled back: pid {pid} serves again"),
///     Err(e) => eprintln!("nothing changed: {e}"),
/// }
/// ```
///
/// [`ProcessBuilder::probation`]: crate::ProcessBuilder::probation
#[cfg(feature = "control")]
pub fn request_rollback(path: impl AsRef<Path>, timeout: Duration) -> Result<u32, ControlError> {
    let answer = exchange(path.as_ref(), b"rollback\n", timeout, MAX_LINE)?;
    match parse_answer(&answer) {
        Err(ControlError::Failed(reason)) => Err(ControlError::Refused(reason)),
        other => other,
    }
}

/// Asks the process serving the control socket at `path` for its [`Status`]: pid,
/// generation, phase, listeners and their connections, recent restarts.
///
/// Blocking, like [`request_restart`]; `timeout` bounds the whole exchange (a second
/// is plenty: the answer needs no restart).
///
/// ```no_run
/// use std::time::Duration;
///
/// let s = ceaseless::control::request_status("/run/hello/control.sock", Duration::from_secs(5))?;
/// println!("pid {} generation {} ({})", s.pid, s.generation, s.phase.as_str());
/// for r in &s.restarts {
///     println!("{:?} -> {:?} {}", r.outcome, r.pid, r.reason.as_deref().unwrap_or(""));
/// }
/// # Ok::<(), ceaseless::ControlError>(())
/// ```
///
/// [`Status`]: super::status::Status
#[cfg(feature = "control")]
pub fn request_status(
    path: impl AsRef<Path>,
    timeout: Duration,
) -> Result<super::status::Status, ControlError> {
    let answer = exchange(path.as_ref(), b"status\n", timeout, MAX_STATUS)?;
    parse_status(&answer)
}

/// Asks the process serving the control socket at `path` to read its TLS certificate
/// and key files again ([`Process::reload_tls`](crate::Process::reload_tls)): how many
/// servers were reloaded, or why nothing changed ([`ControlError::Refused`], e.g. a key
/// that does not match its certificate).
///
/// ```no_run
/// use std::time::Duration;
///
/// match ceaseless::control::request_reload_tls("/run/hello/control.sock", Duration::from_secs(5)) {
///     Ok(n) => println!("{n} certificates reloaded"),
///     Err(e) => eprintln!("nothing changed: {e}"),
/// }
/// ```
#[cfg(feature = "control")]
pub fn request_reload_tls(
    path: impl AsRef<Path>,
    timeout: Duration,
) -> Result<usize, ControlError> {
    let answer = exchange(path.as_ref(), b"reload-tls\n", timeout, MAX_LINE)?;
    let text = String::from_utf8_lossy(&answer);
    let line = text.lines().next().unwrap_or("").trim_end();
    if line.is_empty() {
        return Err(ControlError::Closed);
    }
    if let Some(reason) = line.strip_prefix("error ") {
        return Err(ControlError::Refused(reason.to_string()));
    }
    line.strip_prefix("ok ")
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| ControlError::Protocol(line.to_string()))
}

/// Sends `request`, reads one answer line (at most `max` bytes), within `timeout`.
#[cfg(feature = "control")]
fn exchange(
    path: &Path,
    request: &[u8],
    timeout: Duration,
    max: u64,
) -> Result<Vec<u8>, ControlError> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(ControlError::Timeout(timeout))
    };
    let mut stream = connect(path, deadline, timeout)?;
    let timed_out = |e: io::Error| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ControlError::Timeout(timeout),
        _ => ControlError::Io(e),
    };
    stream
        .set_write_timeout(Some(left()?))
        .map_err(ControlError::Io)?;
    stream.write_all(request).map_err(timed_out)?;

    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.contains(&b'\n') && (answer.len() as u64) < max {
        stream
            .set_read_timeout(Some(left()?))
            .map_err(ControlError::Io)?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(timed_out(e)),
        }
    }
    Ok(answer)
}

/// Connects without blocking past the deadline (a full accept queue makes `connect` on
/// a Unix socket wait).
#[cfg(feature = "control")]
pub(crate) fn connect(
    path: &Path,
    deadline: Instant,
    timeout: Duration,
) -> Result<std::os::unix::net::UnixStream, ControlError> {
    let fail = |source| ControlError::Connect {
        path: path.to_path_buf(),
        source,
    };
    let addr = SockAddr::unix(path).map_err(fail)?;
    let sock = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(fail)?;
    sock.set_nonblocking(true).map_err(fail)?;
    loop {
        match sock.connect(&addr) {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(ControlError::Timeout(timeout));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(fail(e)),
        }
    }
    sock.set_nonblocking(false).map_err(fail)?;
    Ok(sock.into())
}

#[cfg(feature = "control")]
fn parse_answer(answer: &[u8]) -> Result<u32, ControlError> {
    let text = String::from_utf8_lossy(answer);
    let line = text.lines().next().unwrap_or("").trim_end();
    if line.is_empty() {
        return Err(ControlError::Closed);
    }
    if let Some(pid) = line.strip_prefix("ok ") {
        return pid
            .trim()
            .parse()
            .map_err(|_| ControlError::Protocol(line.to_string()));
    }
    if let Some(reason) = line.strip_prefix("error ") {
        return Err(ControlError::Failed(reason.to_string()));
    }
    Err(ControlError::Protocol(line.to_string()))
}

#[cfg(feature = "control")]
fn parse_status(answer: &[u8]) -> Result<super::status::Status, ControlError> {
    let text = String::from_utf8_lossy(answer);
    let line = text.lines().next().unwrap_or("").trim_end();
    if line.is_empty() {
        return Err(ControlError::Closed);
    }
    if let Some(reason) = line.strip_prefix("error ") {
        return Err(ControlError::Refused(reason.to_string()));
    }
    serde_json::from_str(line).map_err(|e| {
        let shown: String = line.chars().take(200).collect();
        ControlError::Protocol(format!("{shown} ({e})"))
    })
}

/// Opens the control socket at `path`: the descriptor handed over by the previous
/// generation if there is one, else a fresh socket. Returns the listener and the name
/// it is handed over under.
pub(crate) fn open(
    path: &Path,
    inherited: Option<std::os::fd::OwnedFd>,
) -> Result<std::os::unix::net::UnixListener, Error> {
    let err = |source| Error::Control {
        path: path.to_path_buf(),
        source,
    };
    let listener = match inherited {
        Some(fd) => {
            if let Err(e) = restrict(path) {
                tracing::warn!(error = %e, path = %path.display(), "cannot make the control socket owner-only");
            }
            tracing::debug!(path = %path.display(), "took over the control socket");
            std::os::unix::net::UnixListener::from(fd)
        }
        None => bind(path).map_err(err)?,
    };
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

/// Binds a fresh control socket, owner-only before it listens (connecting needs write
/// permission on the file, and nothing connects to a socket that does not listen yet).
fn bind(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    crate::handover::listen::remove_stale_socket(path)?;
    let sock = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    sock.bind(&SockAddr::unix(path)?)?;
    if let Err(e) = restrict(path).and_then(|()| sock.listen(BACKLOG)) {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(sock.into())
}

fn restrict(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Restarts the process and says how it went (the process owner's restart).
pub(crate) type RestartFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<u32, RestartError>> + Send>> + Send + Sync>;

/// Rolls a generation on probation back to the parked one, and says how it went.
pub(crate) type RollbackFn = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<u32, crate::error::RollbackError>> + Send>>
        + Send
        + Sync,
>;

/// A snapshot of the process (the owner's [`Process::status`](crate::Process::status)).
pub(crate) type StatusFn = Arc<dyn Fn() -> super::status::Status + Send + Sync>;

/// Reloads the TLS certificates: how many, or why nothing changed.
pub(crate) type ReloadFn = Arc<dyn Fn() -> Result<usize, String> + Send + Sync>;
/// Hands the listeners to the process at the other end of the connection (see the
/// `takeover` module); answers on the connection itself.
pub(crate) type TakeoverFn =
    Arc<dyn Fn(UnixStream) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What the control socket answers with.
#[derive(Clone)]
pub(crate) struct Handlers {
    pub(crate) restart: RestartFn,
    pub(crate) rollback: RollbackFn,
    pub(crate) status: StatusFn,
    pub(crate) reload_tls: ReloadFn,
    pub(crate) takeover: TakeoverFn,
}

/// A control socket being served.
pub(crate) struct Control {
    tracker: TaskTracker,
}

impl Control {
    /// Serves `listener`: accepts once this generation is live and serving, stops when
    /// it drains. (The owner removes the file, when it is the live generation's to
    /// remove.)
    pub(crate) fn serve(
        listener: std::os::unix::net::UnixListener,
        state: watch::Receiver<State>,
        handlers: Handlers,
    ) -> Result<Control, io::Error> {
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let tracker = TaskTracker::new();
        tracker.spawn(accept_loop(listener, state, handlers, tracker.clone()));
        Ok(Control { tracker })
    }

    /// Waits (boundedly) until the control socket stopped accepting and every accepted
    /// connection got its answer, so that the process does not exit before answering
    /// the request that restarted it.
    pub(crate) async fn finish(&self) {
        self.tracker.close();
        if tokio::time::timeout(FINISH_TIMEOUT, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("the control socket still has connections; exiting anyway");
        }
    }
}

/// The accept loop: starts once this generation is live and serving, stops when it
/// drains. A generation parked for a probation keeps the socket, and accepts again if
/// the service rolls back to it.
async fn accept_loop(
    listener: tokio::net::UnixListener,
    mut state: watch::Receiver<State>,
    handlers: Handlers,
    tracker: TaskTracker,
) {
    loop {
        if state
            .wait_for(|s| s.is_serving() || s.is_draining())
            .await
            .is_err()
        {
            return;
        }
        loop {
            if state.borrow_and_update().is_draining() {
                break;
            }
            tokio::select! {
                biased;
                changed = state.changed() => if changed.is_err() { return },
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let handlers = handlers.clone();
                        tracker.spawn(async move { answer(stream, handlers).await });
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "control socket: accept failed");
                        if crate::sys::net::out_of_resources(&e) {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                },
            }
        }
        // Parked: wait for the probation's end (exit) or a rollback (serve again).
        match state.wait_for(|s| !s.parked || !s.is_draining()).await {
            Ok(s) if !s.is_draining() => continue,
            _ => return,
        }
    }
}

/// One connection: reads the request line, acts, answers.
async fn answer(stream: UnixStream, handlers: Handlers) {
    let allowed = stream.peer_cred().is_ok_and(|c| {
        let me = crate::sys::process::euid();
        c.uid() == me || c.uid() == 0
    });
    let mut reader = tokio::io::BufReader::new(stream);
    let reply = if allowed {
        let mut line = Vec::new();
        let mut limited = (&mut reader).take(MAX_LINE);
        let read = limited.read_until(b'\n', &mut line);
        match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
            Ok(Ok(n)) if n > 0 => {
                if line.trim_ascii() == b"takeover" {
                    // The connection becomes the newcomer's: the takeover answers on it.
                    return (handlers.takeover)(reader.into_inner()).await;
                }
                handle(&line, &handlers).await
            }
            Ok(Ok(_)) => return, // connected and hung up
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "control socket: cannot read the request");
                return;
            }
            Err(_) => "error no request received\n".to_string(),
        }
    } else {
        "error permission denied\n".to_string()
    };
    let mut stream = reader.into_inner();
    if let Err(e) = stream.write_all(reply.as_bytes()).await {
        tracing::debug!(error = %e, "control socket: cannot answer");
    }
    let _ = stream.shutdown().await;
}

async fn handle(request: &[u8], handlers: &Handlers) -> String {
    let request = String::from_utf8_lossy(request);
    let pid = std::process::id();
    match request.trim() {
        "restart" => {
            tracing::info!(pid, "restart requested on the control socket");
            // The restart logs its own outcome.
            match (handlers.restart)().await {
                Ok(new_pid) => format!("ok {new_pid}\n"),
                Err(e) => format!("error {}\n", one_line(&e.to_string())),
            }
        }
        "rollback" => {
            tracing::info!(pid, "rollback requested on the control socket");
            match (handlers.rollback)().await {
                Ok(pid) => format!("ok {pid}\n"),
                Err(e) => format!("error {}\n", one_line(&e.to_string())),
            }
        }
        "status" => status_line(&(handlers.status)()),
        "reload-tls" => {
            tracing::info!(pid, "TLS reload requested on the control socket");
            match (handlers.reload_tls)() {
                Ok(n) => format!("ok {n}\n"),
                Err(e) => format!("error {}\n", one_line(&e)),
            }
        }
        other => {
            let shown: String = other.chars().take(64).collect();
            format!(
                "error unknown command {}\n",
                one_line(&format!("{shown:?}"))
            )
        }
    }
}

#[cfg(feature = "control")]
fn status_line(s: &super::status::Status) -> String {
    match serde_json::to_string(s) {
        Ok(json) => json + "\n",
        Err(e) => {
            tracing::error!(error = %e, "control socket: cannot write the status");
            format!(
                "error cannot write the status: {}\n",
                one_line(&e.to_string())
            )
        }
    }
}

#[cfg(not(feature = "control"))]
fn status_line(_: &super::status::Status) -> String {
    "error built without the `control` feature\n".into()
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(all(test, feature = "control"))]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        assert_eq!(parse_answer(b"ok 4187\n").unwrap(), 4187);
        assert!(matches!(
            parse_answer(b"error the new generation exited\n"),
            Err(ControlError::Failed(r)) if r == "the new generation exited"
        ));
        assert!(matches!(parse_answer(b""), Err(ControlError::Closed)));
        assert!(matches!(
            parse_answer(b"ok many\n"),
            Err(ControlError::Protocol(_))
        ));
        assert!(matches!(
            parse_answer(b"HTTP/1.1 400\r\n"),
            Err(ControlError::Protocol(_))
        ));
    }

    #[test]
    fn a_status_round_trips_as_one_line() {
        use crate::observe::status::*;
        use std::time::{Duration, UNIX_EPOCH};
        let s = Status {
            pid: 4188,
            generation: 4,
            phase: Phase::LameDuck,
            live: true,
            started_at: UNIX_EPOCH + Duration::from_millis(1_796_174_403_117),
            uptime_ms: 5120,
            listeners: vec![ListenerStatus {
                address: "unix:/run/a b.sock".into(),
                origin: Origin::Activated,
                connections: None,
            }],
            connections: Connections {
                open: 3,
                active: 1,
                idle: 1,
                upgraded: 1,
            },
            requests: 1234,
            restarts_total: {
                let mut t = RestartCounts::default();
                (t.ok, t.failed, t.rollbacks.crash) = (1, 1, 1);
                t
            },
            restarts: vec![
                Restart {
                    at: UNIX_EPOCH + Duration::from_millis(1_796_174_402_981),
                    generation: 4,
                    outcome: Outcome::Failed,
                    pid: Some(4190),
                    reason: Some("exited: \"signal 9\"\nagain".into()),
                    sighup_to_ready_ms: None,
                    ready_to_old_gone_ms: None,
                    trigger: None,
                    rollback_ms: None,
                },
                Restart {
                    at: UNIX_EPOCH + Duration::from_millis(1_796_174_403_001),
                    generation: 4,
                    outcome: Outcome::RolledBack,
                    pid: Some(4188),
                    reason: Some("rolled back from pid 4191 (crash)".into()),
                    sighup_to_ready_ms: None,
                    ready_to_old_gone_ms: None,
                    trigger: Some(crate::RollbackTrigger::Crash),
                    rollback_ms: Some(1),
                },
            ],
            probation: Some(ProbationStatus::new(
                4192,
                false,
                UNIX_EPOCH + Duration::from_millis(1_796_174_463_001),
            )),
        };
        let line = status_line(&s);
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.contains(r#""phase":"lame_duck""#), "{line}");
        assert!(line.contains(r#""outcome":"rolled_back""#), "{line}");
        assert!(line.contains(r#""trigger":"crash""#), "{line}");
        assert!(
            line.contains(r#""started_at":"2026-12-02T01:20:03.117Z""#),
            "{line}"
        );
        assert_eq!(parse_status(line.as_bytes()).unwrap(), s);
        assert!(matches!(
            parse_status(b"error unknown command \"status\"\n"),
            Err(ControlError::Refused(_))
        ));
        assert!(matches!(
            parse_status(b"{\"pid\":1}\n"),
            Err(ControlError::Protocol(_))
        ));
        assert!(matches!(parse_status(b""), Err(ControlError::Closed)));
    }
}

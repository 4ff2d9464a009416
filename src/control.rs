//! The control socket: a restart with an answer, asked for from outside the process.
//!
//! SIGHUP restarts, but whoever sends it never learns whether the restart worked. A
//! process that opened a control socket ([`Server::control_socket`]) also restarts on
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
//! ```
//!
//! The socket file gets mode 0600 before the socket listens, and only peers with the
//! same user id (or root) are answered. It survives restarts as the listeners do: it is
//! handed over under the name `control:<path>`, the new generation takes it, the old one
//! stops accepting when it drains, and the file is removed only at a final shutdown. A
//! generation answers only once it is ready; until then the previous one, still
//! accepting on the same socket, answers (with "a restart is already in progress").
//!
//! [`Server::control_socket`]: crate::Server::control_socket

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;

use crate::error::{ControlError, Error};
use crate::generation::{lock, Drain, Generation, Phase};
use crate::listener::ListenAddr;

/// The prefix of the control socket's name in a handover.
pub(crate) const NAME_PREFIX: &str = "control:";
/// The longest request or answer line accepted.
const MAX_LINE: u64 = 4096;
/// How long a connected client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopping server waits for the control socket's last answers.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);
const BACKLOG: i32 = 64;

/// The control socket this process opened, if any.
static OPENED: Mutex<Option<PathBuf>> = Mutex::new(None);

/// What a stopping server waits for: the accept loop to finish (and remove the file on a
/// final shutdown), and every accepted connection to get its answer.
#[derive(Debug, Clone, Copy, Default)]
struct Activity {
    accepting: bool,
    connections: usize,
}

fn activity() -> &'static watch::Sender<Activity> {
    static ACTIVITY: OnceLock<watch::Sender<Activity>> = OnceLock::new();
    ACTIVITY.get_or_init(|| watch::Sender::new(Activity::default()))
}

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
pub fn request_restart(path: impl AsRef<Path>, timeout: Duration) -> Result<u32, ControlError> {
    let path = path.as_ref();
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
    stream.write_all(b"restart\n").map_err(timed_out)?;

    let mut answer = Vec::new();
    let mut buf = [0u8; 256];
    while !answer.contains(&b'\n') && (answer.len() as u64) < MAX_LINE {
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
    parse_answer(&answer)
}

/// Connects without blocking past the deadline (a full accept queue makes `connect` on
/// a Unix socket wait).
fn connect(
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

/// Opens the process's control socket at `path` (once per process: later calls with the
/// same path do nothing, with another path are logged and ignored): takes it over from
/// the previous generation if it was handed one, else binds it. Then serves it.
pub(crate) fn start(gen: &'static Generation, path: &Path) -> Result<(), Error> {
    let err = |source| Error::Control {
        path: path.to_path_buf(),
        source,
    };
    let path = std::path::absolute(path).map_err(err)?;
    let name = format!("{NAME_PREFIX}{}", path.display());
    if name.contains(['\n', '\0']) {
        return Err(err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path contains a newline or NUL byte",
        )));
    }
    let mut opened = lock(&OPENED);
    if let Some(p) = opened.as_ref() {
        if *p != path {
            tracing::warn!(open = %p.display(), ignored = %path.display(), "the process has a control socket already; ignoring another path");
        }
        return Ok(());
    }
    let claimed = gen
        .inherited()
        .as_mut()
        .and_then(|i| i.claim(&ListenAddr::Unix(path.clone()), Some(&name)));
    let listener = match claimed {
        Some(entry) => {
            if let Err(e) = restrict(&path) {
                tracing::warn!(error = %e, path = %path.display(), "cannot make the control socket owner-only");
            }
            tracing::debug!(path = %path.display(), origin = ?entry.origin, "took over the control socket");
            std::os::unix::net::UnixListener::from(entry.fd)
        }
        None => bind(&path).map_err(err)?,
    };
    listener.set_nonblocking(true).map_err(err)?;
    let dup = listener.as_fd().try_clone_to_owned().map_err(err)?;
    let listener = tokio::net::UnixListener::from_std(listener).map_err(err)?;
    let id = gen.register(name, dup);
    activity().send_modify(|a| a.accepting = true);
    *opened = Some(path.clone());
    tokio::spawn(serve(gen, listener, id, path));
    Ok(())
}

/// Binds a fresh control socket, owner-only before it listens (connecting needs write
/// permission on the file, and nothing connects to a socket that does not listen yet).
fn bind(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    crate::listener::remove_stale_socket(path)?;
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

/// Waits (boundedly) until the control socket stopped accepting and every accepted
/// connection got its answer, so that the process does not exit before answering the
/// request that restarted it.
pub(crate) async fn finish() {
    let mut rx = activity().subscribe();
    let idle = rx.wait_for(|a| !a.accepting && a.connections == 0);
    if tokio::time::timeout(FINISH_TIMEOUT, idle).await.is_err() {
        tracing::warn!("the control socket still has connections; exiting anyway");
    }
}

/// The accept loop: starts once this generation is ready, stops when it drains.
async fn serve(
    gen: &'static Generation,
    listener: tokio::net::UnixListener,
    id: u64,
    path: PathBuf,
) {
    let mut phase = gen.subscribe();
    tokio::select! {
        _ = crate::notify::wait_ready() => {}
        _ = phase.wait_for(|p| p.is_draining()) => {}
    }
    loop {
        if phase.borrow_and_update().is_draining() {
            break;
        }
        tokio::select! {
            biased;
            changed = phase.changed() => if changed.is_err() { break },
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    activity().send_modify(|a| a.connections += 1);
                    tokio::spawn(async move {
                        answer(stream).await;
                        activity().send_modify(|a| a.connections -= 1);
                    });
                }
                Err(e) => {
                    tracing::debug!(error = %e, "control socket: accept failed");
                    if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            },
        }
    }
    drop(listener);
    gen.unregister(id);
    if gen.phase() == Phase::Draining(Drain::Shutdown) {
        let _ = std::fs::remove_file(&path);
    }
    activity().send_modify(|a| a.accepting = false);
}

/// One connection: reads the request line, acts, answers.
async fn answer(stream: UnixStream) {
    let allowed = stream.peer_cred().is_ok_and(|c| {
        // SAFETY: geteuid has no failure mode and no memory effects.
        let me = unsafe { libc::geteuid() };
        c.uid() == me || c.uid() == 0
    });
    let mut reader = tokio::io::BufReader::new(stream);
    let reply = if allowed {
        let mut line = Vec::new();
        let mut limited = (&mut reader).take(MAX_LINE);
        let read = limited.read_until(b'\n', &mut line);
        match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
            Ok(Ok(n)) if n > 0 => handle(&line).await,
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

async fn handle(request: &[u8]) -> String {
    let request = String::from_utf8_lossy(request);
    let pid = std::process::id();
    match request.trim() {
        "restart" => {
            tracing::info!(pid, "restart requested on the control socket");
            // The restart logs its own outcome.
            match crate::restart::restart().await {
                Ok(new_pid) => format!("ok {new_pid}\n"),
                Err(e) => format!("error {}\n", one_line(&e.to_string())),
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

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
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
}

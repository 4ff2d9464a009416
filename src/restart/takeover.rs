//! A takeover by an independently started process: a deploy script, a service
//! manager, a second container sharing a volume starts the new version itself, naming
//! the running process's control socket
//! ([`ProcessBuilder::takeover`](crate::ProcessBuilder::takeover)); the running process
//! hands it its listeners over that socket, and drains once the newcomer is ready.
//!
//! # The protocol
//! On the control socket (the peer must be the same user, or root: `SO_PEERCRED`, as
//! for every command; the newcomer checks the same of the process answering):
//!
//! ```text
//! -> takeover
//! <- handover <generation> <pid> <draining> <n> <name>…
//!                                               the n sockets attached (SCM_RIGHTS)
//! <- error <reason>                             refused: restarting, draining, not
//!                                               ready yet, under the supervisor
//! -> ready <pid>                                the newcomer declared ready
//! <- go                                         the old one still accepts
//! -> holding                                    it accepts on every listener
//! <- live | abort                               committed (the old one drains) or not;
//!                                               abort may come at any step before
//! ```
//!
//! The names are the handover's (the `handover` module), the control socket among
//! them. The old process claims the restart slot exactly as a restart does (the same
//! `Restarting` phase: a restart and a takeover never race, and a second takeover is
//! refused meanwhile), and from the offer on, the connection is the newcomer's
//! readiness channel, with the re-exec commit's messages: the newcomer uses what it
//! received as what a restarted generation inherits (readiness, claiming, closing
//! what nobody claimed work unchanged), as generation `<generation> + 1`, and is
//! told of the generations still draining (`<draining>`, as `CEASELESS_DRAINING`, the
//! old process among them once it commits) so that the bound on draining generations
//! holds across the takeover.
//!
//! # Failure
//! The old process never stops accepting before the commit, which comes only after the
//! newcomer's `holding` (the `commit` module): it only duplicated its descriptors. If
//! the newcomer closes the connection (it exited, crashed, gave up) or is not ready
//! and holding within the old process's ready timeout, or a shutdown calls the
//! handover off, the old one answers `abort` (when it still can), sends the newcomer
//! SIGTERM (checked against the start time it had when it connected, so a reused pid
//! is never signalled) as it would stop a failed child, logs why, and serves on. The
//! newcomer is not its child: it neither waits for it nor kills it. A newcomer that is
//! refused, or finds no ceaseless control socket there, fails to start with a typed
//! [`TakeoverError`](crate::TakeoverError) rather than binding afresh.
//!
//! A process started by a restart of the newcomer inherits from it as usual: the
//! takeover option (still in its arguments) applies to a process started afresh only.
//! Under the stable-PID supervisor a takeover is out of scope, and refused on both
//! sides.

#![cfg_attr(not(feature = "control"), allow(dead_code))]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use tokio::io::Interest;

use crate::handover::{Name, Offer, ProcId};
use crate::restart::successor::{Successor, Who};
use crate::sys::fdpass;

/// Sends the offer, with its descriptors, on the control connection.
pub(crate) async fn offer(
    stream: &tokio::net::UnixStream,
    offer: &Offer<Name>,
    fds: &[OwnedFd],
) -> std::io::Result<()> {
    let bytes = offer.encode();
    let bytes = bytes.as_bytes();
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    let mut sent = 0;
    while sent < bytes.len() {
        let attach: &[BorrowedFd<'_>] = if sent == 0 { &borrowed } else { &[] };
        let n = stream
            .async_io(Interest::WRITABLE, || {
                fdpass::send(
                    stream.as_fd(),
                    &bytes[sent..],
                    attach,
                    fdpass::Wait::DontWait,
                )
            })
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        sent += n;
    }
    Ok(())
}

/// The newcomer at the other end of `stream`, once it received the offer: a successor
/// like a restart's child, signalled (never waited for) through the start time it had
/// when it connected.
pub(crate) fn newcomer(
    pid: u32,
    stream: tokio::net::UnixStream,
    hammer: Vec<ProcId>,
    max_draining: usize,
) -> Successor {
    let id = crate::handover::lineage::proc_id(pid);
    Successor::new(pid, Who::Newcomer(id), stream, hammer, max_draining)
}

#[cfg(feature = "control")]
pub(crate) use newcomer::request;

#[cfg(feature = "control")]
mod newcomer {
    use std::io::{self, Write};
    use std::os::fd::{AsFd, OwnedFd};
    use std::path::Path;
    use std::time::{Duration, Instant};

    use crate::error::TakeoverError;
    use crate::handover::{Name, Offer, OfferError, MAX_OFFER, TAKEOVER_REQUEST};

    /// What a newcomer received.
    pub(crate) struct Taken {
        /// The running process.
        pub(crate) pid: u32,
        pub(crate) generation: u64,
        /// Older generations still draining, for the bound on draining.
        pub(crate) draining: Vec<crate::handover::ProcId>,
        pub(crate) entries: Vec<(Result<Name, String>, OwnedFd)>,
        /// The connection, now the readiness channel.
        pub(crate) channel: OwnedFd,
    }

    /// Asks the process serving the control socket at `path` for its listeners.
    /// Blocking, bounded by `timeout`.
    pub(crate) fn request(path: &Path, timeout: Duration) -> Result<Taken, TakeoverError> {
        let deadline = Instant::now() + timeout;
        let mut stream =
            crate::observe::control::connect(path, deadline, timeout).map_err(|e| match e {
                crate::error::ControlError::Connect { source, .. } => {
                    TakeoverError::Connect(source)
                }
                crate::error::ControlError::Timeout(t) => TakeoverError::Timeout(t),
                other => TakeoverError::Io(io::Error::other(other.to_string())),
            })?;
        let uid = crate::sys::fdpass::peer_uid(stream.as_fd()).map_err(TakeoverError::Io)?;
        let me = crate::sys::process::euid();
        if uid != me && uid != 0 {
            return Err(TakeoverError::NotAllowed { uid });
        }
        let left = || {
            deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or(TakeoverError::Timeout(timeout))
        };
        let timed_out = |e: io::Error| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => TakeoverError::Timeout(timeout),
            _ => TakeoverError::Io(e),
        };
        stream
            .set_write_timeout(Some(left()?))
            .map_err(TakeoverError::Io)?;
        stream
            .write_all(TAKEOVER_REQUEST.as_bytes())
            .map_err(timed_out)?;
        // One line, the descriptors with its first bytes. Nothing follows it until this
        // process reports ready, so reading up to the newline takes nothing more.
        let mut line = Vec::new();
        let mut fds = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        while !line.contains(&b'\n') {
            if line.len() > MAX_OFFER {
                return Err(TakeoverError::Protocol(
                    String::from_utf8_lossy(&line[..200]).into_owned(),
                ));
            }
            stream
                .set_read_timeout(Some(left()?))
                .map_err(TakeoverError::Io)?;
            let got = match crate::sys::fdpass::recv(
                stream.as_fd(),
                &mut buf,
                crate::sys::fdpass::MAX_FDS,
                crate::sys::fdpass::Wait::Block,
            ) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(timed_out(e)),
            };
            fds.extend(got.fds);
            if got.len == 0 {
                break;
            }
            if got.truncated {
                return Err(TakeoverError::Protocol("descriptors cut short".into()));
            }
            line.extend_from_slice(&buf[..got.len]);
        }
        if line.is_empty() {
            return Err(TakeoverError::Closed);
        }
        let text = String::from_utf8_lossy(&line);
        let offer = Offer::decode(&text).map_err(|e| match e {
            OfferError::Refused(r) => TakeoverError::Refused(r),
            OfferError::Garbage(g) => TakeoverError::Protocol(g),
        })?;
        if offer.names.len() != fds.len() {
            return Err(TakeoverError::Descriptors {
                named: offer.names.len(),
                attached: fds.len(),
            });
        }
        stream.set_read_timeout(None).map_err(TakeoverError::Io)?;
        stream.set_write_timeout(None).map_err(TakeoverError::Io)?;
        Ok(Taken {
            pid: offer.pid,
            generation: offer.generation,
            draining: offer.draining,
            entries: offer.names.into_iter().zip(fds).collect(),
            channel: stream.into(),
        })
    }
}

//! Listening sockets: binding, adopting an inherited socket, accepting.

use std::io;
#[cfg(unix)]
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
#[cfg(unix)]
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
#[cfg(unix)]
use tokio::net::{UnixListener, UnixStream};

use crate::addr::ListenAddr;
use crate::error::Error;

/// Backlog of every socket we bind (the kernel caps it at `somaxconn`).
const BACKLOG: i32 = 1024;

/// What kind of listening socket a descriptor is, as read from the kernel.
#[cfg(unix)]
pub(crate) fn describe_listener(fd: BorrowedFd<'_>) -> Result<ListenAddr, String> {
    crate::sys::fd::listening_stream(fd)?;
    let local = socket2::SockRef::from(&fd)
        .local_addr()
        .map_err(|e| format!("getsockname: {e}"))?;
    if let Some(a) = local.as_socket() {
        return Ok(ListenAddr::Tcp(a));
    }
    match local.as_pathname() {
        Some(p) => Ok(ListenAddr::Unix(p.to_path_buf())),
        None => Err("an abstract or unnamed Unix socket".into()),
    }
}

/// Who is at the other end of a connection: [`ConnInfo::current`] in a handler (an
/// extractor with the `axum` feature; a request extension with
/// `Server::request_extensions(true)`).
///
/// ```
/// # async fn handler(_req: http::Request<hyper::body::Incoming>) -> String {
/// match ceaseless::ConnInfo::current() {
///     Some(ceaseless::ConnInfo::Tcp { peer, .. }) => format!("hello, {peer}\n"),
///     Some(ceaseless::ConnInfo::Unix { .. }) => "hello, neighbour\n".into(),
///     Some(other) => format!("hello, {other}\n"), // a kind a later version adds
///     None => "not served by ceaseless\n".into(),
/// }
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnInfo {
    /// A TCP connection.
    Tcp {
        /// The client's address.
        peer: std::net::SocketAddr,
        /// The address it connected to.
        local: std::net::SocketAddr,
    },
    /// A Unix socket connection, with the peer's credentials when the kernel gives them.
    Unix {
        /// The peer process's user id, group id and pid.
        cred: Option<(u32, u32, Option<i32>)>,
    },
}

impl std::fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnInfo::Tcp { peer, .. } => write!(f, "{peer}"),
            ConnInfo::Unix {
                cred: Some((uid, _, Some(pid))),
            } => write!(f, "unix:uid={uid},pid={pid}"),
            ConnInfo::Unix { .. } => f.write_str("unix"),
        }
    }
}

/// A listening socket, TCP or Unix.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(UnixListener),
}

impl Listener {
    /// Binds a fresh socket for `addr`.
    pub(crate) fn bind(addr: &ListenAddr) -> Result<Self, Error> {
        let err = |source: io::Error| Error::Bind {
            addr: addr.to_string(),
            source,
        };
        match addr {
            ListenAddr::Tcp(a) => {
                let sock = Socket::new(Domain::for_address(*a), Type::STREAM, None).map_err(err)?;
                sock.set_reuse_address(true).map_err(err)?;
                if a.is_ipv6() {
                    sock.set_only_v6(true).map_err(err)?;
                }
                sock.set_nonblocking(true).map_err(err)?;
                sock.bind(&(*a).into()).map_err(err)?;
                sock.listen(BACKLOG).map_err(err)?;
                Self::tcp(sock.into()).map_err(err)
            }
            #[cfg(not(unix))]
            ListenAddr::Unix(_) => Err(Error::Unsupported {
                what: "a Unix socket",
                platform: crate::sys::PLATFORM,
            }),
            #[cfg(unix)]
            ListenAddr::Unix(p) => {
                remove_stale_socket(p).map_err(err)?;
                let sock = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(err)?;
                sock.set_nonblocking(true).map_err(err)?;
                let sa = socket2::SockAddr::unix(p).map_err(err)?;
                sock.bind(&sa).map_err(err)?;
                sock.listen(BACKLOG).map_err(err)?;
                Self::unix(sock.into()).map_err(err)
            }
        }
    }

    #[cfg(unix)]
    /// Wraps an inherited listening socket. Sets O_NONBLOCK (which the old generation
    /// has set too: it lives on the shared open file description) and never the reverse.
    pub(crate) fn adopt(fd: OwnedFd, kind: &ListenAddr) -> io::Result<Self> {
        match kind {
            ListenAddr::Tcp(_) => Self::tcp(fd.into()),
            ListenAddr::Unix(_) => Self::unix(fd.into()),
        }
    }

    fn tcp(std: std::net::TcpListener) -> io::Result<Self> {
        std.set_nonblocking(true)?;
        Ok(Listener::Tcp(TcpListener::from_std(std)?))
    }

    #[cfg(unix)]
    fn unix(std: std::os::unix::net::UnixListener) -> io::Result<Self> {
        std.set_nonblocking(true)?;
        Ok(Listener::Unix(UnixListener::from_std(std)?))
    }

    /// The address the socket is really bound to (the port the kernel chose for port 0).
    pub(crate) fn local_addr(&self, requested: &ListenAddr) -> ListenAddr {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(ListenAddr::Tcp)
                .unwrap_or_else(|_| requested.clone()),
            #[cfg(unix)]
            Listener::Unix(_) => requested.clone(),
        }
    }

    #[cfg(unix)]
    /// A duplicate of the descriptor (close-on-exec), kept for the handover.
    pub(crate) fn dup(&self) -> io::Result<OwnedFd> {
        match self {
            Listener::Tcp(l) => l.as_fd().try_clone_to_owned(),
            #[cfg(unix)]
            Listener::Unix(l) => l.as_fd().try_clone_to_owned(),
        }
    }

    pub(crate) async fn accept(&self) -> io::Result<(Stream, ConnInfo)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                // Small responses must not wait for Nagle; failure here is harmless.
                let _ = s.set_nodelay(true);
                let local = s.local_addr().unwrap_or(peer);
                Ok((Stream::Tcp(s), ConnInfo::Tcp { peer, local }))
            }
            #[cfg(unix)]
            Listener::Unix(l) => {
                let (s, _) = l.accept().await?;
                let cred = s.peer_cred().ok().map(|c| (c.uid(), c.gid(), c.pid()));
                Ok((Stream::Unix(s), ConnInfo::Unix { cred }))
            }
        }
    }
}

#[cfg(unix)]
impl Listener {
    /// Whether `fd` is this very socket: the same kind, bound to the same address (two
    /// listening sockets of ours never share one).
    pub(crate) fn is(&self, fd: BorrowedFd<'_>) -> bool {
        let mine = match self {
            Listener::Tcp(l) => socket2::SockRef::from(l).local_addr(),
            Listener::Unix(l) => socket2::SockRef::from(l).local_addr(),
        };
        match (mine, socket2::SockRef::from(&fd).local_addr()) {
            (Ok(a), Ok(b)) => match (a.as_socket(), b.as_socket()) {
                (Some(a), Some(b)) => a == b,
                (None, None) => a.as_pathname().is_some() && a.as_pathname() == b.as_pathname(),
                _ => false,
            },
            _ => false,
        }
    }
}

#[cfg(unix)]
impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> i32 {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            #[cfg(unix)]
            Listener::Unix(l) => l.as_raw_fd(),
        }
    }
}

#[cfg(unix)]
/// Removes a socket file left by a process that is gone, so a fresh bind can succeed.
/// A live socket (one that accepts a connection) is left alone: the bind then fails
/// with "address in use", as it should.
pub(crate) fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Ok(()); // let bind report EADDRINUSE for a regular file
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process is listening on this socket",
        )),
        Err(_) => std::fs::remove_file(path),
    }
}

/// An accepted connection, TCP or Unix.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

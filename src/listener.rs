//! Listening sockets: addresses, binding, adopting an inherited socket, accepting.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::error::Error;

/// Backlog of every socket we bind (the kernel caps it at `somaxconn`).
const BACKLOG: i32 = 1024;

/// Where a server listens: a TCP address or a Unix domain socket path.
///
/// Parsed from the string given to [`Server::new`](crate::Server::new):
/// `"127.0.0.1:4242"`, `"[::1]:8080"`, `"localhost:4242"` and `"tcp:…"` are TCP;
/// `"unix:/run/app.sock"` and anything starting with `/` or `./` is a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix domain socket path.
    Unix(PathBuf),
}

impl ListenAddr {
    /// Parses and resolves an address as written by a user.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::Address {
            addr: s.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = s.trim();
        if let Some(path) = trimmed.strip_prefix("unix:") {
            return Self::unix(path).map_err(|r| bad(&r));
        }
        if trimmed.starts_with('/') || trimmed.starts_with("./") {
            return Self::unix(trimmed).map_err(|r| bad(&r));
        }
        let tcp = trimmed.strip_prefix("tcp:").unwrap_or(trimmed);
        if tcp.is_empty() {
            return Err(bad("empty address"));
        }
        let mut addrs = tcp
            .to_socket_addrs()
            .map_err(|e| bad(&format!("cannot resolve: {e}")))?;
        addrs
            .next()
            .map(ListenAddr::Tcp)
            .ok_or_else(|| bad("resolves to no address"))
    }

    fn unix(path: &str) -> Result<Self, String> {
        if path.is_empty() {
            return Err("empty socket path".into());
        }
        if path.contains('\n') || path.contains('\0') {
            return Err("socket path contains a newline or NUL byte".into());
        }
        Ok(ListenAddr::Unix(PathBuf::from(path)))
    }

    /// The name a listener is handed over under: `tcp:127.0.0.1:4242` or
    /// `unix:/run/app.sock`. For the requested address, so that a server asking for
    /// port 0 gets its old socket back after a restart.
    pub(crate) fn handover_name(&self) -> String {
        match self {
            ListenAddr::Tcp(a) => format!("tcp:{a}"),
            ListenAddr::Unix(p) => format!("unix:{}", p.display()),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// What kind of listening socket a descriptor is, as read from the kernel.
pub(crate) fn describe_listener(fd: BorrowedFd<'_>) -> Result<ListenAddr, String> {
    let sock = socket2::SockRef::from(&fd);
    let ty = sock.r#type().map_err(|e| format!("not a socket: {e}"))?;
    if ty != Type::STREAM {
        return Err("not a stream socket".into());
    }
    if !sock
        .is_listener()
        .map_err(|e| format!("SO_ACCEPTCONN: {e}"))?
    {
        return Err("not a listening socket".into());
    }
    let local = sock.local_addr().map_err(|e| format!("getsockname: {e}"))?;
    if let Some(a) = local.as_socket() {
        return Ok(ListenAddr::Tcp(a));
    }
    if let Some(p) = local.as_pathname() {
        return Ok(ListenAddr::Unix(p.to_path_buf()));
    }
    Err("unsupported socket family (abstract or unnamed unix socket)".into())
}

/// A listening socket, TCP or Unix.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
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
                Self::adopt_tcp(sock.into()).map_err(err)
            }
            ListenAddr::Unix(p) => {
                remove_stale_socket(p).map_err(err)?;
                let sock = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(err)?;
                sock.set_nonblocking(true).map_err(err)?;
                let sa = socket2::SockAddr::unix(p).map_err(err)?;
                sock.bind(&sa).map_err(err)?;
                sock.listen(BACKLOG).map_err(err)?;
                Self::adopt_unix(sock.into()).map_err(err)
            }
        }
    }

    /// Wraps an inherited listening socket. Sets O_NONBLOCK (which the old generation
    /// has set too: it lives on the shared open file description) and never the reverse.
    pub(crate) fn adopt(fd: OwnedFd, kind: &ListenAddr) -> io::Result<Self> {
        match kind {
            ListenAddr::Tcp(_) => Self::adopt_tcp(fd),
            ListenAddr::Unix(_) => Self::adopt_unix(fd),
        }
    }

    fn adopt_tcp(fd: OwnedFd) -> io::Result<Self> {
        let std = std::net::TcpListener::from(fd);
        std.set_nonblocking(true)?;
        Ok(Listener::Tcp(TcpListener::from_std(std)?))
    }

    fn adopt_unix(fd: OwnedFd) -> io::Result<Self> {
        let std = std::os::unix::net::UnixListener::from(fd);
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
            Listener::Unix(_) => requested.clone(),
        }
    }

    /// A duplicate of the descriptor (close-on-exec), kept for the handover.
    pub(crate) fn dup(&self) -> io::Result<OwnedFd> {
        match self {
            Listener::Tcp(l) => l.as_fd().try_clone_to_owned(),
            Listener::Unix(l) => l.as_fd().try_clone_to_owned(),
        }
    }

    pub(crate) async fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                // Small responses must not wait for Nagle; failure here is harmless.
                let _ = s.set_nodelay(true);
                Ok(Stream::Tcp(s))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept().await?;
                Ok(Stream::Unix(s))
            }
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> i32 {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l) => l.as_raw_fd(),
        }
    }
}

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
pub(crate) enum Stream {
    Tcp(TcpStream),
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
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!(
            ListenAddr::parse("127.0.0.1:4242").unwrap(),
            ListenAddr::Tcp("127.0.0.1:4242".parse().unwrap())
        );
        assert_eq!(
            ListenAddr::parse("tcp:[::1]:80").unwrap(),
            ListenAddr::Tcp("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            ListenAddr::parse("unix:/tmp/x.sock").unwrap(),
            ListenAddr::Unix("/tmp/x.sock".into())
        );
        assert_eq!(
            ListenAddr::parse("/tmp/y.sock").unwrap().handover_name(),
            "unix:/tmp/y.sock"
        );
        assert!(ListenAddr::parse("").is_err());
        assert!(ListenAddr::parse("nonsense").is_err());
        assert!(ListenAddr::parse("unix:").is_err());
    }
}

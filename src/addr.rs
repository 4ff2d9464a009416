//! Addresses a server listens on, as a user writes them.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use crate::error::Error;

/// Where a server listens: a TCP address or a Unix domain socket path.
///
/// Parsed from the string given to [`Server::new`](crate::Server::new):
/// `"127.0.0.1:4242"`, `"[::1]:8080"`, `"localhost:4242"` and `"tcp:…"` are TCP;
/// `"unix:/run/app.sock"`, `"unix:app.sock"` (relative to the working directory at
/// start-up) and anything starting with `/` or `./` is a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
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
        if path.contains('\0') {
            return Err("socket path contains a NUL byte".into());
        }
        Ok(ListenAddr::Unix(PathBuf::from(path)))
    }

    /// Both TCP, or both Unix.
    #[cfg(unix)]
    pub(crate) fn same_kind(&self, other: &ListenAddr) -> bool {
        matches!(
            (self, other),
            (ListenAddr::Tcp(_), ListenAddr::Tcp(_)) | (ListenAddr::Unix(_), ListenAddr::Unix(_))
        )
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
            ListenAddr::parse("unix:rel.sock").unwrap(),
            ListenAddr::Unix("rel.sock".into())
        );
        assert_eq!(
            ListenAddr::parse("/tmp/y.sock").unwrap(),
            ListenAddr::Unix("/tmp/y.sock".into())
        );
        assert!(ListenAddr::parse("").is_err());
        assert!(ListenAddr::parse("nonsense").is_err());
        assert!(ListenAddr::parse("unix:").is_err());
    }
}

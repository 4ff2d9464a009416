//! A blocking probe: one fresh connection, one `GET /` with `Connection: close`, the
//! pid from the answer. On its own thread, apart from the load, so that its timing does
//! not wait on the load generator's runtime.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls_pki_types::ServerName;

/// The pid in an answer of the hello example or the tls example ("… pid 1234, …").
pub fn pid_in(body: &str) -> Option<u32> {
    let i = body.find("pid ")?;
    let digits: String = body[i + 4..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// One request on a new connection; the pid that answered it.
pub fn once(
    addr: SocketAddr,
    tls: Option<&Arc<ClientConfig>>,
    timeout: Duration,
) -> Result<u32, String> {
    let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(timeout)).ok();
    tcp.set_write_timeout(Some(timeout)).ok();
    tcp.set_nodelay(true).ok();
    let req = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut answer = Vec::with_capacity(256);
    match tls {
        None => {
            let mut s = tcp;
            s.write_all(req.as_bytes())
                .map_err(|e| format!("write: {e}"))?;
            s.read_to_end(&mut answer)
                .map_err(|e| format!("read: {e}"))?;
        }
        Some(cfg) => {
            let name = ServerName::try_from("localhost").expect("valid name");
            let conn = rustls::ClientConnection::new(cfg.clone(), name)
                .map_err(|e| format!("tls: {e}"))?;
            let mut s = rustls::StreamOwned::new(conn, tcp);
            s.write_all(req.as_bytes())
                .map_err(|e| format!("tls write: {e}"))?;
            // A server that closes without close_notify is fine here: the body is
            // delimited by Content-Length, which we do not need to check for a pid.
            if let Err(e) = s.read_to_end(&mut answer) {
                if answer.is_empty() {
                    return Err(format!("tls read: {e}"));
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&answer);
    if !text.starts_with("HTTP/1.1 200") {
        let first = text.lines().next().unwrap_or("(nothing)");
        return Err(format!("answer: {first}"));
    }
    pid_in(&text).ok_or_else(|| "no pid in the answer".to_string())
}

/// The outcome of waiting for a (new) generation to answer.
#[derive(Debug, Clone)]
pub struct Serving {
    pub at: Instant,
    pub pid: u32,
    pub probes: u64,
    pub errors: Vec<String>,
}

/// Probes every `interval` until a pid other than `not` answers (any pid if `not` is
/// None), for at most `timeout`.
pub fn wait_serving(
    addr: SocketAddr,
    tls: Option<&Arc<ClientConfig>>,
    not: Option<u32>,
    interval: Duration,
    timeout: Duration,
) -> Result<Serving, (u64, Vec<String>)> {
    let deadline = Instant::now() + timeout;
    let mut probes = 0;
    let mut errors = Vec::new();
    while Instant::now() < deadline {
        probes += 1;
        match once(addr, tls, Duration::from_secs(2)) {
            Ok(pid) if Some(pid) != not => {
                return Ok(Serving {
                    at: Instant::now(),
                    pid,
                    probes,
                    errors,
                })
            }
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
        std::thread::sleep(interval);
    }
    Err((probes, errors))
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_pids() {
        assert_eq!(
            super::pid_in("hello from pid 1234, version 0.1.0\n"),
            Some(1234)
        );
        assert_eq!(
            super::pid_in("hello over TLS from pid 77, HTTP/2.0\n"),
            Some(77)
        );
        assert_eq!(super::pid_in("nothing"), None);
    }
}

//! HTTPS with ceaseless: HTTP/2 and HTTP/1.1 by ALPN, restarts included.
//!
//! ```text
//! cargo run --release --example tls                    # makes a self-signed cert if none is given
//! curl -k https://localhost:4243/                      # HTTP/2
//! curl -k --http1.1 https://localhost:4243/
//! ```
//!
//! With your own certificate: `--cert cert.pem --key key.pem`. To make one with openssl:
//! `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30
//!  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1
//!  -keyout key.pem -out cert.pem`.
//! Other options: `--addr ADDR` (default 127.0.0.1:4243), `--hammer-ms N` (0: none),
//! `--drain-spread-ms N`, `--client-ca CA.pem` (ask every client for a certificate signed
//! by that CA: the application's own rustls configuration, through `Server::tls_config`),
//! `--control PATH` (a control socket: `tls reload-cert --control PATH` makes the server
//! read its certificate and key files again, without a restart), `--takeover PATH` (take
//! over from the server whose control socket is PATH, as `hello --takeover` does: its
//! listeners and its TLS session-ticket key come over that socket, so the sessions it
//! gave out resume here).

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::{extract::Request, routing::get, Router};

fn self_signed() -> std::io::Result<(PathBuf, PathBuf)> {
    let dir = std::env::temp_dir().join(format!("ceaseless-tls-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let ck = rcgen::generate_simple_self_signed(names).map_err(std::io::Error::other)?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem())?;
    std::fs::write(&key, ck.signing_key.serialize_pem())?;
    Ok((cert, key))
}

/// `tls reload-cert --control PATH`: the server reads its certificate and key files
/// again; exit 0 once it serves them, 1 with the reason when it kept the old ones.
/// (A control socket is a Unix socket.)
#[cfg(unix)]
fn reload_cert(mut args: impl Iterator<Item = String>) -> std::process::ExitCode {
    let path = match (args.next().as_deref(), args.next()) {
        (Some("--control"), Some(p)) => p,
        _ => {
            eprintln!("usage: tls reload-cert --control PATH");
            return std::process::ExitCode::from(2);
        }
    };
    match ceaseless::control::request_reload_tls(&path, Duration::from_secs(10)) {
        Ok(n) => {
            println!("reloaded {n} certificate(s)");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tls reload-cert: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

/// A rustls configuration that asks every client for a certificate signed by the CA
/// in `ca` (ring, as ceaseless's own configuration uses).
fn mutual_tls(cert: &Path, key: &Path, ca: &Path) -> Result<rustls::ServerConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    // (ring, as ceaseless's own configuration uses; rustls deprecates it for its lack
    // of post-quantum key exchange.)
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("{}: {e}", ca.display()))?;
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| format!("{}: {e}", cert.display()))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let mut addr = "127.0.0.1:4243".to_string();
    let (mut cert, mut key, mut hammer) = (None, None, Some(ceaseless::DEFAULT_HAMMER_TIME));
    let mut spread = ceaseless::DEFAULT_DRAIN_SPREAD;
    let mut client_ca: Option<PathBuf> = None;
    let mut control: Option<PathBuf> = None;
    let mut takeover: Option<PathBuf> = None;
    if std::env::args().nth(1).as_deref() == Some("reload-cert") {
        #[cfg(unix)]
        return reload_cert(std::env::args().skip(2));
        #[cfg(not(unix))]
        {
            eprintln!("tls reload-cert: the control socket needs Unix");
            return std::process::ExitCode::from(2);
        }
    }
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        let mut ms = |a: &str| -> Result<u64, String> {
            let v = value();
            v.parse()
                .map_err(|_| format!("{a} needs a number of milliseconds, not {v:?}"))
        };
        let parsed = match a.as_str() {
            "--addr" => {
                addr = value();
                Ok(())
            }
            "--cert" => {
                cert = Some(PathBuf::from(value()));
                Ok(())
            }
            "--key" => {
                key = Some(PathBuf::from(value()));
                Ok(())
            }
            // 0: no hammer time.
            "--hammer-ms" => ms(&a).map(|n| hammer = (n > 0).then(|| Duration::from_millis(n))),
            "--drain-spread-ms" => ms(&a).map(|n| spread = Duration::from_millis(n)),
            "--client-ca" => {
                client_ca = Some(PathBuf::from(value()));
                Ok(())
            }
            "--control" => {
                control = Some(PathBuf::from(value()));
                Ok(())
            }
            "--takeover" => {
                takeover = Some(PathBuf::from(value()));
                Ok(())
            }
            other => Err(format!("unknown argument {other:?}")),
        };
        if let Err(e) = parsed {
            eprintln!("tls: {e}");
            return std::process::ExitCode::from(2);
        }
    }
    let (cert, key) = match (cert, key) {
        (Some(c), Some(k)) => (c, k),
        _ => match self_signed() {
            Ok((c, k)) => {
                eprintln!("tls: using a self-signed certificate: {}", c.display());
                (c, k)
            }
            Err(e) => {
                eprintln!("tls: cannot make a certificate: {e}");
                return std::process::ExitCode::from(1);
            }
        },
    };
    let app = Router::new().route(
        "/",
        get(|req: Request| async move {
            format!(
                "hello over TLS from pid {}, {:?}\n",
                std::process::id(),
                req.version()
            )
        }),
    );
    if control.is_some() || takeover.is_some() {
        let mut builder = ceaseless::Process::builder();
        if let Some(path) = control {
            // A control socket: `tls reload-cert --control PATH` swaps the certificate.
            builder = builder.control_socket(path);
        }
        if let Some(path) = takeover {
            builder = builder.takeover(path);
        }
        if let Err(e) = builder.start() {
            eprintln!("tls: {e}");
            return std::process::ExitCode::from(1);
        }
    }
    let server = ceaseless::Server::new(addr, app);
    let server = match &client_ca {
        // The application's own rustls configuration: here, client certificates.
        Some(ca) => match mutual_tls(&cert, &key, ca) {
            Ok(config) => server.tls_config(std::sync::Arc::new(config)),
            Err(e) => {
                eprintln!("tls: {e}");
                return std::process::ExitCode::from(1);
            }
        },
        None => server.tls(cert, key),
    };
    let served = server
        .hammer_time(hammer)
        .drain_spread(spread)
        .listen_and_serve()
        .await;
    match served {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tls: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

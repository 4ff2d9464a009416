//! TLS through rustls (the `tls` cargo feature, on by default): a server configuration
//! from PEM files, with ALPN `h2` and `http/1.1` (endless forces HTTP/1.1; we do not).
//! Without the feature, [`Acceptor`] is a type with no values, so the serving code has
//! one path for both builds and the TLS one compiles away.
//!
//! The crypto provider is named explicitly (ring with `tls-ring`, the default; aws-lc-rs
//! with `tls-aws-lc-rs`), so that another provider pulled into the same binary by some
//! other crate cannot make rustls panic at start-up. With `tls` alone, ceaseless takes
//! the provider the application installed as the process default, and a missing one is
//! an [`Error::TlsConfig`] at start.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;

use crate::error::Error;
use crate::handover::listen::Stream;
use crate::serve::conn::Shared;
use crate::serve::drain::Registration;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What accepts TLS connections of one server.
#[cfg(feature = "tls")]
pub(crate) type Acceptor = tokio_rustls::TlsAcceptor;

/// Without the `tls` feature no server has an acceptor.
#[cfg(not(feature = "tls"))]
#[derive(Clone)]
pub(crate) enum Acceptor {}

/// Where a server's TLS configuration comes from.
#[derive(Clone)]
pub(crate) enum Source {
    /// A certificate chain and key in PEM files.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    Files(std::path::PathBuf, std::path::PathBuf),
    /// The application's own configuration.
    #[cfg(feature = "tls")]
    Config(Arc<rustls::ServerConfig>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Files(c, k) => f.debug_tuple("Files").field(c).field(k).finish(),
            #[cfg(feature = "tls")]
            Source::Config(_) => f.write_str("Config(..)"),
        }
    }
}

impl Source {
    /// The acceptor; with PEM files, its tickets are sealed with the service's shared
    /// key (`process`'s), so that sessions resume across restarts.
    pub(crate) fn acceptor(&self, process: &crate::process::Process) -> Result<Acceptor, Error> {
        match self {
            #[cfg(feature = "tls")]
            Source::Files(cert, key) => {
                let (config, reloadable) = server_config(cert, key)?;
                process.tls_reloadable(reloadable);
                #[cfg(any(feature = "tls-ring", feature = "tls-aws-lc-rs"))]
                let config = {
                    let mut config = config;
                    let k = process.tls_ticket_key(crate::serve::tickets::new_key)?;
                    if let Some(t) = crate::serve::tickets::Tickets::new(&k) {
                        Arc::make_mut(&mut config).ticketer = Arc::new(t);
                    }
                    config
                };
                Ok(tokio_rustls::TlsAcceptor::from(config))
            }
            #[cfg(not(feature = "tls"))]
            Source::Files(cert, key) => {
                let _ = process;
                acceptor(cert, key)
            }
            #[cfg(feature = "tls")]
            Source::Config(c) => Ok(tokio_rustls::TlsAcceptor::from(with_alpn(c))),
        }
    }
}

/// The application's configuration, offering `h2` and `http/1.1` by ALPN when it
/// names no protocol itself (as the PEM-file configuration does); one that names its
/// own is used as it is.
#[cfg(feature = "tls")]
fn with_alpn(c: &Arc<rustls::ServerConfig>) -> Arc<rustls::ServerConfig> {
    if !c.alpn_protocols.is_empty() {
        return c.clone();
    }
    let mut c = (**c).clone();
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(c)
}

#[cfg(not(feature = "tls"))]
pub(crate) fn acceptor(cert: &Path, _key: &Path) -> Result<Acceptor, Error> {
    Err(Error::Setting {
        name: "tls",
        reason: format!("{}: built without the `tls` feature", cert.display()),
    })
}

/// One TLS connection: the handshake (bounded in time, and cut short by the drain),
/// then HTTP with the protocol ALPN chose.
pub(crate) async fn serve<S, B>(
    stream: Stream,
    acceptor: Acceptor,
    app: S,
    shared: Arc<Shared>,
    handshake_timeout: Duration,
    reg: Registration,
) where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    #[cfg(feature = "tls")]
    if let Some(tls_stream) = crate::serve::conn::tls_handshake(
        stream,
        &acceptor,
        &shared,
        &reg.tracker().clone(),
        handshake_timeout,
    )
    .await
    {
        let proto = match tls_stream.get_ref().1.alpn_protocol() {
            Some(b"h2") => crate::serve::http::Proto::H2,
            Some(b"http/1.1") => crate::serve::http::Proto::H1,
            _ => crate::serve::http::Proto::Sniff,
        };
        crate::serve::conn::serve(tls_stream, app, shared, proto, reg).await
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = (stream, app, shared, handshake_timeout, reg);
        match acceptor {}
    }
}

/// A certificate and key from PEM files, swapped in place by a reload
/// ([`Process::reload_tls`](crate::Process::reload_tls)): new handshakes get the new
/// pair, connections already made keep theirs.
#[cfg(feature = "tls")]
pub(crate) struct Reloadable {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

#[cfg(feature = "tls")]
impl std::fmt::Debug for Reloadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloadable")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "tls")]
impl rustls::server::ResolvesServerCert for Reloadable {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

#[cfg(feature = "tls")]
impl crate::process::Reloadable for Reloadable {
    /// Reads the files again: the new pair, checked (the key must match the
    /// certificate), installed by what comes back.
    fn load(&self) -> Result<Box<dyn FnOnce() + '_>, Error> {
        let k = certified_key(&self.cert, &self.key)?;
        Ok(Box::new(move || {
            *self.current.write().unwrap_or_else(|p| p.into_inner()) = k;
            tracing::info!(cert = %self.cert.display(), key = %self.key.display(), "TLS certificate reloaded");
        }))
    }
}

/// The crypto provider: ring's or aws-lc-rs's as the cargo features choose (ring if
/// both), else the one the application installed as the process default.
#[cfg(feature = "tls")]
fn provider() -> Result<Arc<rustls::crypto::CryptoProvider>, rustls::Error> {
    #[cfg(feature = "tls-ring")]
    {
        // rustls 0.23.48 deprecates ring's provider for its lack of post-quantum key
        // exchange; ring is what the `tls-ring` feature asks for (`tls-aws-lc-rs`, or a
        // provider the application installs, gives the post-quantum groups).
        #[allow(deprecated)]
        Ok(Arc::new(rustls::crypto::ring::default_provider()))
    }
    #[cfg(all(feature = "tls-aws-lc-rs", not(feature = "tls-ring")))]
    {
        Ok(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
    }
    #[cfg(not(any(feature = "tls-ring", feature = "tls-aws-lc-rs")))]
    {
        rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .ok_or_else(|| {
                rustls::Error::General(
                    "no crypto provider: enable ceaseless's `tls-ring` or `tls-aws-lc-rs` \
                     feature, or install one with `CryptoProvider::install_default`"
                        .into(),
                )
            })
    }
}

/// The certificate chain and key in these files, checked against each other. Every
/// failure names the file at fault.
#[cfg(feature = "tls")]
fn certified_key(cert: &Path, key: &Path) -> Result<Arc<rustls::sign::CertifiedKey>, Error> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| Error::TlsFile {
            path: path.to_path_buf(),
            source,
        })
    };
    let pem_err = |path: &Path, reason: String| Error::TlsPem {
        path: path.to_path_buf(),
        reason,
    };
    let cert_pem = read(cert)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert, format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(pem_err(cert, "no CERTIFICATE block found".into()));
    }
    let key_pem = read(key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| pem_err(key, format!("no usable private key: {e}")))?;
    provider()
        .and_then(|p| rustls::sign::CertifiedKey::from_der(certs, key_der, &p))
        .map(Arc::new)
        .map_err(|source| Error::TlsConfig {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            source: Box::new(source),
        })
}

/// Builds the server configuration for PEM files, with the pair behind a reloadable
/// resolver.
#[cfg(feature = "tls")]
fn server_config(
    cert: &Path,
    key: &Path,
) -> Result<(Arc<rustls::ServerConfig>, Arc<Reloadable>), Error> {
    let reloadable = Arc::new(Reloadable {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        current: std::sync::RwLock::new(certified_key(cert, key)?),
    });
    let config_err = |source| Error::TlsConfig {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source: Box::new(source),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider().map_err(config_err)?)
        .with_safe_default_protocol_versions()
        .map_err(|source| Error::TlsConfig {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            source: Box::new(source),
        })?
        .with_no_client_auth()
        .with_cert_resolver(reloadable.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), reloadable))
}

#[cfg(all(test, feature = "tls"))]
mod tests {
    use super::*;

    /// A self-signed certificate for localhost, in PEM files under a fresh directory.
    fn pem_files(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("ceaseless-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    /// The provider the features chose completes a real handshake over TCP, offering
    /// `h2` first, and a client that offers only `http/1.1` gets that.
    #[cfg(any(feature = "tls-ring", feature = "tls-aws-lc-rs"))]
    #[tokio::test]
    async fn the_chosen_provider_completes_a_handshake_with_alpn() {
        use rustls_pki_types::pem::PemObject;
        let (cert, key) = pem_files("handshake");
        let (config, _) = server_config(&cert, &key).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (tcp, _) = listener.accept().await.unwrap();
                let tls = acceptor.accept(tcp).await.unwrap();
                let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                drop(tls);
                assert!(alpn.is_some());
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        let der = rustls_pki_types::CertificateDer::from_pem_file(&cert).unwrap();
        roots.add(der).unwrap();
        for (offered, expected) in [
            (vec![b"h2".to_vec(), b"http/1.1".to_vec()], b"h2".to_vec()),
            (vec![b"http/1.1".to_vec()], b"http/1.1".to_vec()),
        ] {
            let mut client = rustls::ClientConfig::builder_with_provider(provider().unwrap())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            client.alpn_protocols = offered;
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(name, tcp)
                .await
                .unwrap();
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&expected[..]));
        }
        server.await.unwrap();
    }

    /// With `tls` alone and no provider installed, PEM files are refused at start with
    /// an error that says what to do, naming the files.
    #[cfg(not(any(feature = "tls-ring", feature = "tls-aws-lc-rs")))]
    #[test]
    fn without_a_provider_the_error_says_what_to_do() {
        let (cert, key) = pem_files("no-provider");
        let e = server_config(&cert, &key).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Error::TlsConfig { .. }), "{e:?}");
        assert!(
            text.contains("no crypto provider") && text.contains("tls-ring"),
            "{text}"
        );
        assert!(text.contains("cert.pem"), "{text}");
    }
}

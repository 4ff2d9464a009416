//! Descriptors beyond the HTTP listeners, handed over across restarts: a UDP socket
//! (`hello --udp`, `Process::udp_socket`, built on `Process::fd`), and the application's
//! state (`ProcessBuilder::state`, hello's `GET /count`).
#![cfg(unix)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::generations::{
    expect_gone, install, install_script, installed, newest, restart_fails, restart_ok, udp_inode,
};
use common::load::get_tcp;
use common::{become_subreaper, example_bin, Proc};

/// A UDP client sends a numbered datagram every 5 ms through 5 restarts: every one is
/// answered (by the generation holding the socket then), the answers come from every
/// generation in turn, and the socket's inode never changes.
#[test]
fn a_udp_socket_is_kept_across_restarts_and_no_datagram_is_lost() {
    become_subreaper();
    let port = common::generations::free_udp_port();
    let udp = format!("127.0.0.1:{port}");
    let p = Proc::spawn(
        &example_bin("hello"),
        &["--addr", "127.0.0.1:0", "--udp", &udp],
    );
    p.ready_addr(1);
    let inode = udp_inode(port).expect("the UDP socket is bound");

    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.connect(&udp).unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let answers: Arc<Mutex<BTreeMap<u64, u32>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (client, answers, stop) = (client.try_clone().unwrap(), answers.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            let mut quiet_since = None;
            loop {
                match client.recv(&mut buf) {
                    Ok(n) => {
                        quiet_since = None;
                        // "pid <pid>: seq <n>"
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        let (pid, seq) = text
                            .strip_prefix("pid ")
                            .and_then(|t| t.split_once(": seq "))
                            .unwrap_or_else(|| panic!("a malformed answer: {text:?}"));
                        let old = answers
                            .lock()
                            .unwrap()
                            .insert(seq.parse().unwrap(), pid.parse().unwrap());
                        assert!(old.is_none(), "answered twice: {text:?}");
                    }
                    Err(_) if stop.load(Ordering::Acquire) => {
                        // Stopped sending: done once nothing came for a second.
                        let since = *quiet_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_secs(1) {
                            return;
                        }
                    }
                    Err(_) => {}
                }
            }
        })
    };
    let sender = {
        let (client, stop) = (client.try_clone().unwrap(), stop.clone());
        std::thread::spawn(move || {
            let mut seq = 0u64;
            while !stop.load(Ordering::Acquire) && seq < 20_000 {
                client.send(format!("seq {seq}").as_bytes()).unwrap();
                seq += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            seq
        })
    };

    let mut pids = vec![p.pid];
    for i in 1..=5 {
        std::thread::sleep(Duration::from_millis(150));
        let (old, new) = restart_ok(&p);
        expect_gone(&p, old, &format!("restart {i}: the old generation"));
        assert_eq!(udp_inode(port), Some(inode), "restart {i}: another socket");
        pids.push(new);
    }
    std::thread::sleep(Duration::from_millis(150));
    stop.store(true, Ordering::Release);
    let sent = sender.join().unwrap();
    receiver.join().unwrap();

    let answers = answers.lock().unwrap();
    let missing: Vec<u64> = (0..sent).filter(|s| !answers.contains_key(s)).collect();
    assert!(
        missing.is_empty(),
        "{} of {sent} datagrams unanswered: {:?}…; output:\n{}",
        missing.len(),
        &missing[..missing.len().min(20)],
        p.output()
    );
    let by: BTreeSet<u32> = answers.values().copied().collect();
    assert_eq!(
        by,
        pids.iter().copied().collect::<BTreeSet<u32>>(),
        "every generation answered its share"
    );
    println!("[udp] {sent} datagrams through 5 restarts, all answered, by {pids:?}");
    let last = *pids.last().unwrap();
    common::signal(last, libc::SIGTERM);
    expect_gone(&p, last, "the last generation");
}

fn count(addr: &str) -> u64 {
    let r = get_tcp(addr, "/count");
    assert_eq!(r.status, 200, "{r:?}");
    r.body
        .trim()
        .strip_prefix("count ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a count: {:?}", r.body))
}

/// `GET /count` counts the `GET /` of every generation: the count is handed over as
/// state at each of 5 restarts. A new build that cannot read the state fails to start,
/// the restart rolls back and the old generation keeps counting; with the good build
/// back, the next restart carries the count on.
#[test]
fn state_is_handed_over_and_a_generation_that_cannot_read_it_is_rolled_back() {
    become_subreaper();
    let (dir, app) = installed("state", "hello");
    let p = Proc::spawn(&app, &["--addr", "127.0.0.1:0"]);
    let addr = p.ready_addr(1);
    let mut sent = 0;
    let mut get = |n: u64| {
        for _ in 0..n {
            assert_eq!(get_tcp(&addr, "/").status, 200);
        }
        sent += n;
        sent
    };
    for i in 1..=5 {
        let expected = get(7);
        let (old, _) = restart_ok(&p);
        expect_gone(&p, old, &format!("restart {i}: the old generation"));
        assert_eq!(count(&addr), expected, "after restart {i}");
    }
    assert_eq!(p.count("took over the count"), 5);

    // A build that cannot read the state: its start fails, nothing changes.
    let good = dir.join("good");
    install(&app, &good);
    install_script(
        &app,
        &format!(
            "#!/bin/sh\nHELLO_REJECT_STATE=1 exec {} \"$@\"\n",
            good.display()
        ),
    );
    let before = newest(&p);
    let line = restart_fails(&p);
    assert!(line.contains("exited before it took over"), "{line}");
    assert_eq!(newest(&p), before, "the old generation serves on");
    let expected = get(3);
    assert_eq!(count(&addr), expected, "the old generation kept counting");

    // The good build again: the count goes on.
    install(&good, &app);
    let expected = get(2);
    let (old, new) = restart_ok(&p);
    expect_gone(&p, old, "after the rollback");
    assert_eq!(count(&addr), expected);
    common::signal(new, libc::SIGTERM);
    expect_gone(&p, new, "the last generation");
}

/// A TLS connection to `addr` as `localhost`, with `config`.
#[cfg(feature = "tls-ring")]
async fn tls_connect(
    config: &Arc<rustls::ClientConfig>,
    addr: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))
}

/// `GET /` on `tls` (the connection closing after it), and the answer read to its end:
/// a TLS 1.3 server sends its session tickets after the handshake, and they are read
/// with it.
#[cfg(feature = "tls-ring")]
async fn get_over(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> Result<Vec<u8>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    Ok(answer)
}

/// One HTTPS request over a fresh connection with `config` (whose session store keeps
/// what the server sent), and how the handshake went.
#[cfg(feature = "tls-ring")]
fn tls_get(
    rt: &tokio::runtime::Runtime,
    config: &Arc<rustls::ClientConfig>,
    addr: &str,
) -> rustls::HandshakeKind {
    rt.block_on(async {
        let mut tls = tls_connect(config, addr).await.unwrap();
        let answer = get_over(&mut tls).await.unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
        tls.get_ref().1.handshake_kind().expect("handshake done")
    })
}

/// Writes `pair`'s certificate and key to `cert` and `key`.
#[cfg(feature = "tls-ring")]
fn write_pair(
    pair: &rcgen::CertifiedKey<rcgen::KeyPair>,
    cert: &std::path::Path,
    key: &std::path::Path,
) {
    std::fs::write(cert, pair.cert.pem()).unwrap();
    std::fs::write(key, pair.signing_key.serialize_pem()).unwrap();
}

/// The tls example serving `cert` and `key` on a port of its choosing, once ready.
#[cfg(feature = "tls-ring")]
fn start_tls(cert: &std::path::Path, key: &std::path::Path, extra: &[&str]) -> (Proc, String) {
    let mut args = vec![
        "--addr",
        "127.0.0.1:0",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let p = Proc::spawn(&example_bin("tls"), &args);
    let addr = p.ready_addr(1);
    (p, addr)
}

/// A self-signed certificate for localhost written into `dir` (its files), and a client
/// of TLS 1.3 and one of TLS 1.2 trusting it, each keeping the sessions it was given.
#[cfg(feature = "tls-ring")]
fn resumable_clients(
    dir: &std::path::Path,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    [(&'static str, Arc<rustls::ClientConfig>); 2],
) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    write_pair(&ck, &cert, &key);
    let client = |v: &'static rustls::SupportedProtocolVersion| Arc::new(tls_client(&[&ck], &[v]));
    let clients = [
        ("TLS 1.3", client(&rustls::version::TLS13)),
        ("TLS 1.2", client(&rustls::version::TLS12)),
    ];
    (cert, key, clients)
}

/// A rustls client trusting `roots`, speaking `versions`.
#[cfg(feature = "tls-ring")]
fn tls_client(
    roots: &[&rcgen::CertifiedKey<rcgen::KeyPair>],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    use rustls_pki_types::pem::PemObject;
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        let der = rustls_pki_types::CertificateDer::from_pem_slice(r.cert.pem().as_bytes());
        store.add(der.unwrap()).unwrap();
    }
    #[allow(deprecated)] // ring's provider: rustls deprecates it for post-quantum's sake
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth()
}

#[cfg(feature = "tls-ring")]
fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A TLS client that saved its session resumes it after a restart, over TLS 1.3 and
/// TLS 1.2: the generations share the session-ticket key, handed over with the sockets.
#[test]
#[cfg_attr(not(feature = "tls-ring"), ignore = "needs the `tls-ring` feature")]
fn tls_sessions_resume_across_restarts() {
    #[cfg(feature = "tls-ring")]
    {
        use rustls::HandshakeKind::{Full, Resumed};
        become_subreaper();
        let dir = common::scratch_dir("tickets");
        let (cert, key, clients) = resumable_clients(&dir);
        let (p, addr) = start_tls(&cert, &key, &[]);
        let rt = current_thread();
        for (v, c) in &clients {
            assert_eq!(tls_get(&rt, c, &addr), Full, "{v}: the first handshake");
        }
        for i in 1..=2 {
            let (old, _) = restart_ok(&p);
            expect_gone(&p, old, &format!("restart {i}: the old generation"));
            for (v, c) in &clients {
                assert_eq!(
                    tls_get(&rt, c, &addr),
                    Resumed,
                    "{v}: after restart {i}, the session saved before it"
                );
            }
        }
        let last = newest(&p);
        common::signal(last, libc::SIGTERM);
        expect_gone(&p, last, "the last generation");
    }
}

/// Where the descriptors of process `pid` lead (`/proc/<pid>/fd`).
#[cfg(feature = "tls-ring")]
fn fd_targets(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .map(|t| t.to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `CEASELESS_PORTABLE` switches Linux to the mechanisms of macOS and FreeBSD, and only
/// then: the next generation is forked (not cloned), and the session-ticket key travels
/// in an unlinked temporary file (not a sealed memory file); sessions resume either way.
#[test]
#[cfg_attr(not(feature = "tls-ring"), ignore = "needs the `tls-ring` feature")]
fn the_portable_mode_forks_and_hands_the_key_over_in_an_unlinked_file() {
    #[cfg(feature = "tls-ring")]
    {
        use rustls::HandshakeKind::{Full, Resumed};
        become_subreaper();
        for portable in [false, true] {
            let dir = common::scratch_dir(if portable { "portable" } else { "native" });
            let (cert, key, clients) = resumable_clients(&dir);
            let mut cmd = std::process::Command::new(example_bin("tls"));
            cmd.args(["--addr", "127.0.0.1:0", "--cert", cert.to_str().unwrap()])
                .args(["--key", key.to_str().unwrap()]);
            if portable {
                cmd.env("CEASELESS_PORTABLE", "1");
            } else {
                cmd.env_remove("CEASELESS_PORTABLE");
            }
            let p = Proc::spawn_with(&mut cmd);
            let addr = p.ready_addr(1);
            let rt = current_thread();
            let (v, c) = &clients[0];
            assert_eq!(tls_get(&rt, c, &addr), Full, "{v}: the first handshake");
            let (old, new) = restart_ok(&p);
            let started = p
                .wait_for_nth("started the next generation", 1, common::generations::LONG)
                .unwrap();
            assert!(
                started.contains(&format!("forked={portable}")),
                "portable={portable}: {started}"
            );
            let key_files: Vec<String> = fd_targets(new)
                .into_iter()
                .filter(|t| t.contains("ceaseless"))
                .collect();
            let (expected, other) = if portable {
                (".ceaseless-", "memfd:")
            } else {
                ("memfd:ceaseless-sealed", ".ceaseless-")
            };
            assert!(
                key_files
                    .iter()
                    .any(|t| t.contains(expected) && t.ends_with("(deleted)")),
                "portable={portable}: the key's file among {key_files:?}"
            );
            assert!(
                !key_files.iter().any(|t| t.contains(other)),
                "portable={portable}: {key_files:?}"
            );
            assert_eq!(tls_get(&rt, c, &addr), Resumed, "{v}, portable={portable}");
            expect_gone(&p, old, "the old generation");
            common::signal(new, libc::SIGTERM);
            expect_gone(&p, new, "the last generation");
        }
    }
}

/// The session-ticket key goes through a takeover as through a restart: a session saved
/// with the old process resumes with the newcomer that took over from it.
#[test]
#[cfg_attr(
    not(all(feature = "tls-ring", feature = "control")),
    ignore = "needs the `tls` and `control` features"
)]
fn tls_sessions_resume_across_a_takeover() {
    #[cfg(all(feature = "tls-ring", feature = "control"))]
    {
        use rustls::HandshakeKind::{Full, Resumed};
        become_subreaper();
        let dir = common::scratch_dir("tickets-takeover");
        let (cert, key, clients) = resumable_clients(&dir);
        let control = common::generations::socket_path(&dir, "c.sock");
        let ctl = control.to_str().unwrap();
        let (mut old, addr) = start_tls(&cert, &key, &["--control", ctl]);
        let rt = current_thread();
        for (v, c) in &clients {
            assert_eq!(tls_get(&rt, c, &addr), Full, "{v}: the first handshake");
        }
        let new = Proc::spawn(
            &example_bin("tls"),
            &[
                "--takeover",
                ctl,
                "--addr",
                &addr,
                "--cert",
                cert.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
            ],
        );
        use common::generations::LONG;
        new.expect_line("declared ready", LONG);
        let status = old
            .wait_exit(LONG)
            .unwrap_or_else(|| panic!("no takeover; new:\n{}", new.output()));
        assert!(status.success(), "old:\n{}", old.output());
        for (v, c) in &clients {
            assert_eq!(
                tls_get(&rt, c, &addr),
                Resumed,
                "{v}: the session saved with the old process, after the takeover"
            );
        }
    }
}

/// The DER of the certificate a fresh TLS connection to `addr` is served.
#[cfg(feature = "tls-ring")]
fn served_cert(
    rt: &tokio::runtime::Runtime,
    config: &Arc<rustls::ClientConfig>,
    addr: &str,
) -> Vec<u8> {
    rt.block_on(async {
        let tls = tls_connect(config, addr).await.unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    })
}

/// `tls reload-cert --control PATH`: the server reads its certificate and key files
/// again and serves the new certificate to new connections, with no restart and no
/// failed request; a key that does not match its certificate is refused, with the
/// reason, and the certificate in use stays.
#[test]
#[cfg_attr(not(feature = "tls-ring"), ignore = "needs the `tls-ring` feature")]
fn a_certificate_reload_swaps_it_without_a_restart_and_refuses_a_bad_key() {
    #[cfg(feature = "tls-ring")]
    {
        let dir = common::scratch_dir("reload-cert");
        let make = || rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (a, b) = (make(), make());
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let control = common::generations::socket_path(&dir, "ctl.sock");
        write_pair(&a, &cert, &key);
        let (p, addr) = start_tls(&cert, &key, &["--control", control.to_str().unwrap()]);
        let rt = current_thread();
        let config = Arc::new(tls_client(&[&a, &b], rustls::DEFAULT_VERSIONS));
        // Without resumption to look at the certificate: a resumed session reports the
        // certificate of the session it resumed.
        let fresh = {
            let mut c = (*config).clone();
            c.resumption = rustls::client::Resumption::disabled();
            Arc::new(c)
        };
        let config = &fresh;
        assert_eq!(served_cert(&rt, config, &addr), a.cert.der().to_vec());
        // Requests on fresh connections all along, none of which may fail.
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(std::sync::atomic::AtomicU32::new(0));
        // Until the load has served `more` requests beyond now.
        let more = |n: u32| {
            let target = served.load(Ordering::Acquire) + n;
            let deadline = Instant::now() + Duration::from_secs(20);
            while served.load(Ordering::Acquire) < target {
                assert!(Instant::now() < deadline, "the load stalled");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        let load = {
            let (config, addr, stop, served) =
                (config.clone(), addr.clone(), stop.clone(), served.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(Ordering::Acquire) && ok < 100_000 {
                    let got: Result<Vec<u8>, String> = rt.block_on(async {
                        get_over(&mut tls_connect(&config, &addr).await?).await
                    });
                    match got {
                        Ok(a) if a.starts_with(b"HTTP/1.1 200") => {
                            ok += 1;
                            served.store(ok, Ordering::Release);
                        }
                        Ok(a) => failed.push(String::from_utf8_lossy(&a).into_owned()),
                        Err(e) => failed.push(e),
                    }
                }
                (ok, failed)
            })
        };
        let reload = || {
            std::process::Command::new(example_bin("tls"))
                .args(["reload-cert", "--control"])
                .arg(&control)
                .output()
                .unwrap()
        };

        // The new pair, by rename as a deploy writes it.
        let write = |path: &std::path::Path, text: String| {
            let tmp = path.with_extension("new");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        };
        more(20);
        write(&key, b.signing_key.serialize_pem());
        write(&cert, b.cert.pem());
        let out = reload();
        more(20);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(served_cert(&rt, config, &addr), b.cert.der().to_vec());
        assert_eq!(p.generation_pids(), vec![p.pid], "no restart happened");

        // A key that is not the certificate's: refused, and b stays.
        write(&key, make().signing_key.serialize_pem());
        let out = reload();
        more(20);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("key.pem"), "the reason names the file: {err}");
        assert_eq!(served_cert(&rt, config, &addr), b.cert.der().to_vec());
        stop.store(true, Ordering::Release);
        let (ok, failed) = load.join().unwrap();
        assert!(
            failed.is_empty(),
            "{} requests failed: {failed:?}",
            failed.len()
        );
        assert!(ok > 0, "the load never ran");
        println!(
            "[reload] {ok} requests on fresh TLS connections through two reloads, none failed"
        );
        p.signal(libc::SIGTERM);
        expect_gone(&p, p.pid, "after the reloads");
    }
}

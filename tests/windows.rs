//! Windows: a process serves, and shuts down gracefully with a request in flight
//! answered; what it cannot do there (a restart, the supervisor, a control socket, a
//! Unix socket) is a clear error, the refused restart logged once. CI builds this test
//! for Windows and runs it under Wine; on Unix it is empty.
#![cfg(windows)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::{routing::get, Router};
use ceaseless::{Error, ListenAddr, Process, RestartError, Served, Server};

/// The log, kept to be read back.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn unsupported(e: &Error) -> bool {
    matches!(
        e,
        Error::Unsupported {
            platform: "Windows",
            ..
        }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_shuts_down_gracefully_and_refuses_what_needs_unix() {
    let log = Log::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    // What needs Unix is refused before anything starts.
    #[cfg(feature = "control")]
    for builder in [
        Process::builder().control_socket("control.sock"),
        Process::builder().takeover("control.sock"),
    ] {
        let e = builder.start().unwrap_err();
        assert!(unsupported(&e), "{e}");
    }
    let e = ceaseless::supervise().unwrap_err();
    assert!(unsupported(&e), "{e}");

    let process = Process::builder().start().unwrap();
    // A request in flight at the shutdown: it says when it started, and is answered.
    let started = Arc::new(tokio::sync::Notify::new());
    let in_handler = started.clone();
    let app = Router::new().route("/", get(|| async { "hello\n" })).route(
        "/slow",
        get(move || {
            let started = in_handler.clone();
            async move {
                started.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await;
                "slow, and answered\n"
            }
        }),
    );
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server = Server::new("127.0.0.1:0", app.clone()).before_begin(move |a| {
        let _ = tx.send(a.clone());
    });
    let server = tokio::spawn(server.listen_and_serve());
    let ListenAddr::Tcp(addr) = rx.await.unwrap() else {
        panic!("a TCP address")
    };

    let client = reqwest::Client::new();
    let r = client.get(format!("http://{addr}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello\n");

    // A Unix socket: refused.
    let e = Server::new("unix:ceaseless-windows.sock", app)
        .listen_and_serve()
        .await
        .unwrap_err();
    assert!(unsupported(&e), "{e}");

    // A restart: refused, however asked, and logged once; the process serves on.
    for _ in 0..2 {
        let e = process.restart().await.unwrap_err();
        assert!(
            matches!(
                e,
                RestartError::Unsupported {
                    platform: "Windows"
                }
            ),
            "{e}"
        );
        let e = ceaseless::restart().await.unwrap_err();
        assert!(
            matches!(
                e,
                RestartError::Unsupported {
                    platform: "Windows"
                }
            ),
            "{e}"
        );
    }
    assert_eq!(
        log.text().matches("restart refused").count(),
        1,
        "{}",
        log.text()
    );
    let s = process.status();
    assert_eq!((s.generation, s.listeners.len(), s.live), (1, 1, true));
    let r = client.get(format!("http://{addr}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // The graceful shutdown (what Ctrl-C asks for): the request in flight is answered,
    // told to close its connection, and the server returns once drained.
    let slow = tokio::spawn(client.get(format!("http://{addr}/slow")).send());
    started.notified().await;
    assert!(ceaseless::shutdown());
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["connection"], "close");
    assert_eq!(r.text().await.unwrap(), "slow, and answered\n");
    assert_eq!(server.await.unwrap().unwrap(), Served::Shutdown);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
    assert!(!ceaseless::shutdown(), "already draining");
}

/// An example binary, built beside this test (`cargo build --examples` first).
fn example(name: &str) -> std::path::PathBuf {
    let deps = std::env::current_exe().unwrap();
    let target = deps.parent().unwrap().parent().unwrap();
    target.join("examples").join(format!("{name}.exe"))
}

/// The demo, as a Windows user runs it: it serves, says why it cannot restart, and
/// shuts down gracefully when asked; the fault injector and the control socket's
/// commands say that they need Unix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_and_shuts_down() {
    use tokio::io::AsyncBufReadExt;
    let mut hello = tokio::process::Command::new(example("hello"))
        .args(["--addr", "127.0.0.1:0", "--admin"])
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(hello.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            log.push_str(&line);
            log.push('\n');
            if line.contains("serving") {
                let at = line.find("addr=").expect("the address") + "addr=".len();
                return line[at..].split_whitespace().next().unwrap().to_string();
            }
        }
        panic!("hello exited before serving:\n{log}")
    })
    .await
    .expect("hello serves within a minute");
    // The rest of its log goes on being read, so that it never blocks on a full pipe.
    let rest = tokio::spawn(async move {
        let mut log = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            log.push_str(&line);
            log.push('\n');
        }
        log
    });

    let client = reqwest::Client::new();
    let r = client.get(format!("http://{addr}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .post(format!("http://{addr}/admin/restart"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("restarts are not supported on Windows"),
        "{body}"
    );
    let r = client
        .post(format!("http://{addr}/admin/shutdown"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let status = tokio::time::timeout(Duration::from_secs(60), hello.wait())
        .await
        .expect("hello exits once drained")
        .unwrap();
    let log = rest.await.unwrap();
    assert!(status.success(), "{status}\n{log}");
    assert!(log.contains("restart refused"), "{log}");

    for (name, args, says) in [
        ("fault", &[][..], "restarts need Unix"),
        (
            "hello",
            &["status", "--control", "c.sock"][..],
            "needs Unix",
        ),
        (
            "hello",
            &["restart", "--control", "c.sock"][..],
            "needs Unix",
        ),
    ] {
        let out = tokio::process::Command::new(example(name))
            .args(args)
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name} {args:?}: {err}");
        assert!(err.contains(says), "{name} {args:?}: {err}");
    }
}

//! The process owner in this very process (a test binary of its own: the owner is one
//! per process): asked from a thread of the application's, outside the runtime, it
//! does what it would do from inside.
#![cfg(unix)]

use std::time::Duration;

use ceaseless::{ListenAddr, Process, Readiness, Served, Server};

#[test]
fn ready_and_shutdown_from_a_thread_outside_the_runtime() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (process, server, addr) = rt.block_on(async {
        let process = Process::builder()
            .readiness(Readiness::Manual)
            .lame_duck(Duration::from_millis(200))
            .start()
            .unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello\n" }));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let server = Server::new("127.0.0.1:0", app).before_begin(move |a| {
            let _ = tx.send(a.clone());
        });
        let server = tokio::spawn(server.listen_and_serve());
        let ListenAddr::Tcp(addr) = rx.await.unwrap() else {
            panic!("a TCP address")
        };
        (process, server, addr)
    });

    // The application's own thread: declares ready, then asks for the shutdown (the
    // lame duck, then the drain: tasks of the owner's, spawned on its runtime).
    let p = process.clone();
    std::thread::spawn(move || {
        p.ready();
        assert!(ceaseless::shutdown());
    })
    .join()
    .expect("ready() and shutdown() outside the runtime");

    let served = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .expect("the server drains")
            .unwrap()
            .unwrap()
    });
    assert_eq!(served, Served::Shutdown);
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still listening"
    );
    assert_eq!(process.served(), Some(Served::Shutdown));
}

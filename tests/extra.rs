//! Descriptors beyond the HTTP listeners, handed over across restarts: a UDP socket
//! (`hello --udp`, `Process::udp_socket`, built on `Process::fd`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::generations::{expect_gone, restart_ok};
use common::{become_subreaper, example_bin, Proc};

/// The inode of the UDP socket bound to 127.0.0.1:`port`, from /proc/net/udp.
fn udp_inode(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        (cols.get(1) == Some(&local.as_str()))
            .then(|| cols.get(9)?.parse().ok())
            .flatten()
    })
}

/// A UDP client sends a numbered datagram every 5 ms through 5 restarts: every one is
/// answered (by the generation holding the socket then), the answers come from every
/// generation in turn, and the socket's inode never changes.
#[test]
fn a_udp_socket_is_kept_across_restarts_and_no_datagram_is_lost() {
    become_subreaper();
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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

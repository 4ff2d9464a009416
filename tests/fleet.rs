//! A fleet behind a real load balancer: HAProxy in front of three `hello` instances,
//! health-checking each on `GET /healthz`, under keep-alive load through the balancer.
//!
//! The instances are restarted one after the other (SIGHUP, each new generation live
//! before the next instance is touched), then one is scaled down with SIGTERM and a
//! lame-duck period. What is checked is what the clients and the balancer saw: no
//! request through the balancer failed, the balancer never marked an instance down
//! during the restarts nor retried a request, and the instance scaled down left the
//! rotation because its health check said 503 (HAProxy's own check status), while its
//! listener still accepted connections, before it closed.
//!
//! HAProxy runs in the foreground from a configuration written to the test's scratch
//! directory, and is killed at the end. It must be installed (`apt-get install haproxy`);
//! without it the test fails and says so. See docs/fleet.md for the settings and why.
//! Nothing here asserts on timing: every wait is bounded and generous.
#![cfg(unix)]

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use common::generations::{
    expect_gone, free_ports, install, lines_of, log_time, logged_at, newest, restart_ok,
    socket_path, wait_status, LONG,
};
use common::load::{Client, Load};
use common::probe::probe;
use common::{become_subreaper, example_bin, scratch_dir, signal, wait_until, Proc};

/// The instances behind the balancer.
const INSTANCES: usize = 3;
/// Keep-alive clients of the balancer.
const CLIENTS: usize = 8;
/// Every instance's lame-duck period, as a fleet sets it on all (the one scaled down
/// goes through it): 40 of HAProxy's health-check intervals (100 ms).
const LAME_DUCK_MS: &str = "4000";

/// The HAProxy binary: `$HAPROXY`, else `haproxy` on the PATH, else where Debian puts it
/// (`/usr/sbin` is not on every user's PATH). Panics, saying what to install, if none.
fn haproxy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HAPROXY") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "HAPROXY={} is not a file: this test needs HAProxy (Debian/Ubuntu: apt-get \
             install haproxy)",
            p.display()
        );
        return p;
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let sbin = [PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")];
    on_path
        .iter()
        .chain(&sbin)
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "HAProxy is not installed: this test proves ceaseless behind a real load \
                 balancer and needs it (Debian/Ubuntu: apt-get install haproxy; or set \
                 HAPROXY to its path)"
            )
        })
}

/// The configuration: one frontend on `front`, one backend with the instances at
/// `servers`, health-checked on `/healthz`. What each setting is for: docs/fleet.md.
fn haproxy_config(stats: &Path, front: u16, servers: &[String]) -> String {
    let mut cfg = format!(
        "global
    stats socket {stats} level admin
    log stderr format iso local0 info

defaults
    mode http
    log global
    option httplog
    option dontlog-normal
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout check 2s

frontend fleet
    bind 127.0.0.1:{front}
    default_backend hello

backend hello
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    default-server check inter 100ms fall 1 rise 2
",
        stats = stats.display()
    );
    for (i, s) in servers.iter().enumerate() {
        cfg.push_str(&format!("    server s{} {s}\n", i + 1));
    }
    cfg
}

/// HAProxy, running in the foreground (`-db`) as a child of the test, killed on drop.
struct Balancer {
    proc: Proc,
    /// The frontend's address, where the clients send their requests.
    front: String,
    /// The stats socket (admin level).
    stats: PathBuf,
}

impl Balancer {
    /// Starts HAProxy in front of `servers`; returns once its stats socket answers (its
    /// frontend is bound by then). A frontend port taken between picking and binding it
    /// is picked again (at most three times).
    fn start(bin: &Path, dir: &Path, servers: &[String]) -> Balancer {
        let stats = socket_path(dir, "haproxy.sock");
        let cfg_path = dir.join("haproxy.cfg");
        for _ in 0..3 {
            let _ = std::fs::remove_file(&stats);
            let port = free_ports(1)[0];
            std::fs::write(&cfg_path, haproxy_config(&stats, port, servers)).unwrap();
            let check = Command::new(bin)
                .arg("-c")
                .arg("-f")
                .arg(&cfg_path)
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
            assert!(
                check.status.success(),
                "HAProxy refuses the configuration:\n{}{}",
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            );
            let mut proc = Proc::spawn_with(Command::new(bin).arg("-f").arg(&cfg_path).arg("-db"));
            let front = format!("127.0.0.1:{port}");
            let deadline = Instant::now() + LONG;
            // The stats socket answering means HAProxy runs: it binds every listener,
            // its frontend's too, before it serves any of them. (No probe connection to
            // the frontend: its counters count only the clients' requests.)
            let up = loop {
                if try_command(&stats, "show info").is_ok_and(|info| info.contains("Pid:")) {
                    break true;
                }
                if proc.child.try_wait().ok().flatten().is_some() {
                    break false;
                }
                assert!(
                    Instant::now() < deadline,
                    "HAProxy did not start within {LONG:?}; output:\n{}",
                    proc.output()
                );
                std::thread::sleep(Duration::from_millis(10));
            };
            if up {
                return Balancer { proc, front, stats };
            }
            let out = proc.output();
            assert!(
                out.contains("cannot bind"),
                "HAProxy exited at start:\n{out}"
            );
            let _ = proc.wait_exit(LONG);
        }
        panic!("HAProxy could not bind a free port three times in a row");
    }

    /// One command on the stats socket, and its whole answer.
    fn command(&self, cmd: &str) -> String {
        try_command(&self.stats, cmd)
            .unwrap_or_else(|e| panic!("HAProxy's stats socket, {cmd:?}: {e}"))
    }

    /// `show stat`: one row per frontend, server and backend, by (proxy, name).
    fn stat(&self) -> Stats {
        let text = self.command("show stat");
        let mut lines = text.lines();
        let header: Vec<String> = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .unwrap_or_else(|| panic!("no header in HAProxy's stats: {text:?}"))
            .split(',')
            .map(String::from)
            .collect();
        let mut rows = HashMap::new();
        for l in lines.filter(|l| !l.is_empty()) {
            let row: HashMap<String, String> = header
                .iter()
                .cloned()
                .zip(l.split(',').map(String::from))
                .collect();
            let key = (row["pxname"].clone(), row["svname"].clone());
            rows.insert(key, row);
        }
        Stats { rows, text }
    }

    /// Waits until every server of the backend is `UP` in HAProxy's view.
    fn wait_all_up(&self, servers: usize) {
        let last = RefCell::new(String::new());
        wait_until(
            "HAProxy sees every instance UP",
            LONG,
            || {
                let st = self.stat();
                let up = (1..=servers).all(|i| st.server(i, "status") == "UP");
                *last.borrow_mut() = st.text;
                up
            },
            || {
                format!(
                    "HAProxy's stats:\n{}\noutput:\n{}",
                    last.borrow(),
                    self.proc.output()
                )
            },
        );
    }
}

/// One command on the stats socket at `path` (HAProxy answers, then closes).
fn try_command(path: &Path, cmd: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("{cmd}\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

impl Balancer {
    /// The time of HAProxy's first log line containing `pat`, waiting for it. Its log
    /// lines start with an ISO 8601 time and the local offset (`format iso`).
    fn logged_at(&self, pat: &str) -> SystemTime {
        let deadline = Instant::now() + LONG;
        loop {
            let found = self.proc.output().lines().find_map(|l| {
                let (time, rest) = l.split_once(' ')?;
                rest.contains(pat).then(|| iso_time(time)).flatten()
            });
            if let Some(t) = found {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "no {pat:?} with a time in HAProxy's log within {LONG:?}:\n{}",
                self.proc.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// `2026-12-07T02:39:55.224369+01:00` as a point in time.
fn iso_time(s: &str) -> Option<SystemTime> {
    let (local, offset) = s.split_at(s.len().checked_sub(6)?);
    let (sign, hm) = offset.split_at(1);
    let (h, m) = hm.split_once(':')?;
    let secs = h.parse::<u64>().ok()? * 3600 + m.parse::<u64>().ok()? * 60;
    let t = log_time(&format!("{local}Z"))?;
    match sign {
        "+" => t.checked_sub(Duration::from_secs(secs)),
        "-" => t.checked_add(Duration::from_secs(secs)),
        _ => None,
    }
}

/// HAProxy's `show stat`, parsed.
struct Stats {
    rows: HashMap<(String, String), HashMap<String, String>>,
    text: String,
}

impl Stats {
    fn get(&self, proxy: &str, name: &str, col: &str) -> &str {
        self.rows
            .get(&(proxy.to_string(), name.to_string()))
            .and_then(|r| r.get(col))
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {col} of {proxy}/{name} in:\n{}", self.text))
    }

    fn num(&self, proxy: &str, name: &str, col: &str) -> u64 {
        let v = self.get(proxy, name, col);
        v.parse()
            .unwrap_or_else(|_| panic!("{proxy}/{name} {col} is {v:?}, not a number"))
    }

    /// A column of server `s<i>`.
    fn server(&self, i: usize, col: &str) -> &str {
        self.get("hello", &format!("s{i}"), col)
    }

    fn server_num(&self, i: usize, col: &str) -> u64 {
        self.num("hello", &format!("s{i}"), col)
    }
}

/// Waits until the balancer's clients got `n` more answers from `pid`.
fn wait_answers_from(load: &Load, pid: u32, n: u64, what: &str) {
    let from = |pid| {
        *load
            .shared
            .tally
            .by_pid
            .lock()
            .unwrap()
            .get(&pid)
            .unwrap_or(&0)
    };
    let target = from(pid) + n;
    wait_until(
        what,
        LONG,
        || from(pid) >= target,
        || {
            format!(
                "{} answers from pid {pid}; answers by pid: {:?}; {} failed; first problems: {:?}",
                from(pid),
                load.shared.tally.by_pid.lock().unwrap(),
                load.shared.tally.failed.load(Ordering::Relaxed),
                load.shared.tally.notes.lock().unwrap()
            )
        },
    );
}

#[test]
fn rolling_restart_and_scale_down_behind_haproxy() {
    // First: without HAProxy the test fails here, before it starts anything.
    let haproxy = haproxy_bin();
    become_subreaper();
    let dir = scratch_dir("fleet");
    // Each instance runs its own installed copy, as each host of a fleet does.
    let instances: Vec<Proc> = (1..=INSTANCES)
        .map(|i| {
            let app = dir.join(format!("hello-{i}"));
            install(&example_bin("hello"), &app);
            Proc::spawn(
                &app,
                &["--addr", "127.0.0.1:0", "--lame-duck-ms", LAME_DUCK_MS],
            )
        })
        .collect();
    let addrs: Vec<String> = instances.iter().map(|p| p.ready_addr(1)).collect();
    let lb = Balancer::start(&haproxy, &dir, &addrs);
    lb.wait_all_up(INSTANCES);

    let front = lb.front.parse().unwrap();
    let load = Load::start("fleet", || {
        (0..CLIENTS).map(|_| Client::Tcp(front)).collect()
    });
    for p in &instances {
        wait_answers_from(
            &load,
            p.pid,
            20,
            "every instance answers through the balancer",
        );
    }

    // 1. A rolling restart: each instance in turn, the next one only once the new
    //    generation is live, serves through the balancer, and the old one has exited.
    let mut gens: Vec<Vec<u32>> = instances.iter().map(|p| vec![p.pid]).collect();
    for (i, p) in instances.iter().enumerate() {
        let (old, new) = restart_ok(p);
        wait_answers_from(
            &load,
            new,
            200,
            &format!(
                "instance {}'s new generation answers through the balancer",
                i + 1
            ),
        );
        expect_gone(p, old, &format!("instance {}'s old generation", i + 1));
        gens[i].push(new);
    }
    let st = lb.stat();
    for i in 1..=INSTANCES {
        assert_eq!(
            (st.server(i, "status"), st.server_num(i, "chkdown")),
            ("UP", 0),
            "HAProxy saw instance {i} go down during the rolling restart:\n{}\n{}",
            st.text,
            lb.proc.output()
        );
    }

    // 2. A scale-down: SIGTERM to the last instance, whose lame-duck period lets the
    //    balancer's health check take it out before its listener closes.
    let leaving = &instances[INSTANCES - 1];
    let (leaving_pid, leaving_addr) = (newest(leaving), addrs[INSTANCES - 1].clone());
    signal(leaving_pid, libc::SIGTERM);
    let deadline = Instant::now() + LONG;
    loop {
        let st = lb.stat();
        if st.server(INSTANCES, "status").starts_with("DOWN") {
            break;
        }
        assert!(
            lines_of(leaving, "stopped accepting", leaving_pid).is_empty(),
            "the instance closed its listener before HAProxy marked it DOWN:\n{}\n\
             HAProxy's output:\n{}\ninstance's output:\n{}",
            st.text,
            lb.proc.output(),
            leaving.output()
        );
        assert!(
            Instant::now() < deadline,
            "HAProxy did not take the instance in its lame-duck period out of rotation \
             within {LONG:?}:\n{}\nHAProxy's output:\n{}",
            st.text,
            lb.proc.output()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // HAProxy's view at that moment: its check got an answer, and the answer was 503
    // (L7STS), not a refused or reset connection (L4CON).
    let st = lb.stat();
    let (check_status, check_code) = (
        st.server(INSTANCES, "check_status").to_string(),
        st.server(INSTANCES, "check_code").to_string(),
    );
    // How often HAProxy had picked the instance for a request so far: it must not pick
    // it again.
    let picked_before_down = st.server_num(INSTANCES, "lbtot");
    // And the instance's, after HAProxy's: its listener still accepts new connections,
    // and serves them, while its health check says 503.
    let after_down = (probe(&leaving_addr, "/"), probe(&leaving_addr, "/healthz"));
    let still_accepting = lines_of(leaving, "stopped accepting", leaving_pid).is_empty();
    assert_eq!(
        (check_status.as_str(), check_code.as_str()),
        ("L7STS", "503"),
        "HAProxy took the instance out for another reason than its 503:\n{}\n{}",
        st.text,
        lb.proc.output()
    );
    assert_eq!(
        (&after_down, still_accepting),
        (&(Ok(200), Ok(503)), true),
        "once HAProxy marked the instance DOWN, its listener should still serve (/: 200, \
         /healthz: 503); instance's output:\n{}",
        leaving.output()
    );
    // HAProxy's log says so too, stamped by the clock the instance's log reads.
    let down_at = lb.logged_at(&format!("Server hello/s{INSTANCES} is DOWN"));

    // The lame-duck period ends, the listener closes, the drain ends, the process exits 0.
    let closed_at = logged_at(leaving, "stopped accepting", leaving_pid);
    assert!(
        down_at < closed_at,
        "HAProxy's log has the instance DOWN after it closed its listener:\n{}\n{}",
        lb.proc.output(),
        leaving.output()
    );
    let status: ExitStatus = wait_status(leaving_pid, LONG).unwrap_or_else(|| {
        panic!(
            "the instance scaled down did not exit:\n{}",
            leaving.output()
        )
    });
    assert!(status.success(), "{status}; output:\n{}", leaving.output());
    // The two instances left serve on through the balancer.
    for p in &instances[..INSTANCES - 1] {
        wait_answers_from(&load, newest(p), 50, "the instances left answer");
    }

    let summary = load.stop();
    summary.print("fleet");
    let st = lb.stat();
    println!(
        "[fleet] generations per instance: {gens:?}; HAProxy: {} requests through the \
         frontend, {} 5xx; instance {INSTANCES} picked for {picked_before_down} requests \
         before DOWN, {} in all; DOWN at check {check_status} {check_code}, then its \
         listener answered / {:?} and /healthz {:?}",
        st.num("fleet", "FRONTEND", "req_tot"),
        st.num("fleet", "FRONTEND", "hrsp_5xx"),
        st.server_num(INSTANCES, "lbtot"),
        after_down.0,
        after_down.1,
    );
    let lame_duck_at = logged_at(leaving, "lame duck", leaving_pid);
    // Signed: HAProxy may log the DOWN before the instance's own line is written.
    let ms = |a: SystemTime, b: SystemTime| match b.duration_since(a) {
        Ok(d) => d.as_millis() as i128,
        Err(e) => -(e.duration().as_millis() as i128),
    };
    println!(
        "[fleet] instance {INSTANCES}: lame duck at SIGTERM, DOWN in HAProxy's log {} ms \
         later, listener closed {} ms after the DOWN ({LAME_DUCK_MS} ms lame duck)",
        ms(lame_duck_at, down_at),
        ms(down_at, closed_at)
    );
    summary.assert_clean("fleet");
    // Every request of the clients went through the balancer, and it counted no other.
    assert_eq!(
        st.num("fleet", "FRONTEND", "req_tot"),
        summary.ok + summary.failed,
        "HAProxy's frontend counted another number of requests than the clients sent:\n{}",
        st.text
    );
    // Once DOWN, the instance got no request from the balancer.
    assert_eq!(
        st.server_num(INSTANCES, "lbtot"),
        picked_before_down,
        "HAProxy sent requests to the instance after marking it DOWN:\n{}",
        st.text
    );
    // The balancer's own account agrees: no 5xx, no failed connect or response, no
    // retry, no redispatch, and only the instance scaled down ever went DOWN (once).
    assert_eq!(
        st.num("fleet", "FRONTEND", "hrsp_5xx"),
        0,
        "HAProxy answered 5xx:\n{}\n{}",
        st.text,
        lb.proc.output()
    );
    for i in 1..=INSTANCES {
        let errors: Vec<(&str, u64)> = ["econ", "eresp", "wretr", "wredis", "hrsp_5xx"]
            .iter()
            .map(|c| (*c, st.server_num(i, c)))
            .filter(|(_, n)| *n > 0)
            .collect();
        assert!(
            errors.is_empty(),
            "HAProxy counted errors or retries for instance {i}: {errors:?}\n{}\n{}",
            st.text,
            lb.proc.output()
        );
        let expected_downs = u64::from(i == INSTANCES);
        assert_eq!(
            st.server_num(i, "chkdown"),
            expected_downs,
            "instance {i} went DOWN {} times in HAProxy's view:\n{}\n{}",
            st.server_num(i, "chkdown"),
            st.text,
            lb.proc.output()
        );
    }
}

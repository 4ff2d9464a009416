//! The status and the metrics seen from outside, with real processes: `hello status` on
//! the real control socket before and after real SIGHUP restarts (one of them with the
//! binary gone), and `GET /metrics` parsed as Prometheus text through restarts.
//!
//! Nothing asserts on timing: what is checked is what the process reports, against
//! what the test made happen (which pids, which generations, which outcomes). Every
//! wait is bounded and waits for an event.
#![cfg(unix)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::generations::{
    expect_gone, install, installed, restart_fails, restart_ok, socket_path, LONG,
};
use common::load::{connect_tcp, exchange_blocking, get_tcp};
use common::{become_subreaper, example_bin, Proc};
use serde_json::Value;

/// `hello status --control PATH [extra]`.
fn status_command(control: &Path, extra: &[&str]) -> Output {
    Command::new(example_bin("hello"))
        .arg("status")
        .arg("--control")
        .arg(control)
        .args(extra)
        .output()
        .expect("run hello status")
}

/// `hello status --control PATH`, which must succeed, as JSON.
fn status(control: &Path) -> Value {
    let out = status_command(control, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "hello status failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

fn set<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
    names.iter().copied().collect()
}

/// Every documented field, and no other, with the documented types.
fn check_shape(s: &Value) {
    assert_eq!(
        keys(s),
        set(&[
            "pid",
            "generation",
            "phase",
            "live",
            "started_at",
            "uptime_ms",
            "listeners",
            "connections",
            "requests",
            "restarts_total",
            "restarts",
            "probation"
        ]),
        "{s:#}"
    );
    // A probation's, when one is on: the other generation and its end.
    if !s["probation"].is_null() {
        assert_eq!(
            keys(&s["probation"]),
            set(&["parked", "other_pid", "ends_at"]),
            "{s:#}"
        );
        assert!(rfc3339(&s["probation"]["ends_at"]), "{s:#}");
    }
    assert!(s["pid"].is_u64() && s["generation"].is_u64() && s["uptime_ms"].is_u64());
    assert!(s["requests"].is_u64(), "{s:#}");
    assert!(s["live"].is_boolean() && s["phase"].is_string());
    assert!(rfc3339(&s["started_at"]), "{}", s["started_at"]);
    let by_state = set(&["open", "active", "idle", "upgraded"]);
    assert_eq!(keys(&s["connections"]), by_state);
    assert_eq!(
        keys(&s["restarts_total"]),
        set(&["ok", "failed", "rollbacks"])
    );
    assert_eq!(
        keys(&s["restarts_total"]["rollbacks"]),
        set(&["crash", "errors", "application", "operator"])
    );
    for l in s["listeners"].as_array().expect("listeners") {
        assert_eq!(keys(l), set(&["address", "origin", "connections"]), "{l}");
        assert!(l["address"].is_string());
        assert!(["inherited", "activated", "bound"].contains(&l["origin"].as_str().unwrap()));
        let c = &l["connections"];
        assert_eq!(keys(c), by_state, "{l}");
        let n = |k: &str| c[k].as_u64().unwrap();
        assert_eq!(n("open"), n("active") + n("idle") + n("upgraded"), "{l}");
    }
    for r in s["restarts"].as_array().expect("restarts") {
        assert_eq!(
            keys(r),
            set(&[
                "at",
                "generation",
                "outcome",
                "pid",
                "reason",
                "sighup_to_ready_ms",
                "ready_to_old_gone_ms",
                "trigger",
                "rollback_ms"
            ]),
            "{r}"
        );
        assert!(rfc3339(&r["at"]), "{r}");
        assert!(
            ["ok", "failed", "rolled_back"].contains(&r["outcome"].as_str().unwrap()),
            "{r}"
        );
    }
}

/// `2026-12-02T01:20:03.117Z`.
fn rfc3339(v: &Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    let b = s.as_bytes();
    b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
        && common::generations::log_time(&format!("{s} x")).is_some()
}

/// Polls the status until `done` holds (bounded: LONG).
fn status_until(control: &Path, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + LONG;
    loop {
        let s = status(control);
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {LONG:?}: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
fn status_follows_three_restarts_and_a_failed_one() {
    become_subreaper();
    let (dir, app) = installed("status", "hello");
    let control = socket_path(&dir, "control.sock");
    let mut cmd = Command::new(&app);
    cmd.args(["--addr", "127.0.0.1:0", "--control"])
        .arg(&control);
    let p = Proc::spawn_with(&mut cmd);
    let addr = p.serving_addr(1);

    // The first generation, with one connection held open (a request answered on it,
    // so it is surely accepted).
    let mut held = connect_tcp(&addr).unwrap();
    assert_eq!(exchange_blocking(&mut held, "/").unwrap().status, 200);
    let s = status(&control);
    check_shape(&s);
    println!("[status] before: {s}");
    assert_eq!(s["pid"], p.pid);
    assert_eq!(s["generation"], 1);
    assert_eq!(s["phase"], "serving");
    assert_eq!(s["live"], true);
    assert_eq!(s["listeners"][0]["address"], addr.as_str());
    assert_eq!(s["listeners"][0]["origin"], "bound");
    let one_idle = serde_json::json!({"open": 1, "active": 0, "idle": 1, "upgraded": 0});
    assert_eq!(s["listeners"][0]["connections"], one_idle, "{s:#}");
    assert_eq!(s["connections"], one_idle);
    // The one request so far, counted from the connection's own counter.
    assert_eq!(s["requests"], 1, "{s:#}");
    // A request in flight on a second connection makes it active.
    let slow = {
        let addr = addr.clone();
        std::thread::spawn(move || get_tcp(&addr, "/slow?ms=2000").status)
    };
    let s = status_until(&control, "a request in flight", |s| {
        s["connections"]["active"] == 1
    });
    assert_eq!(
        s["connections"],
        serde_json::json!({"open": 2, "active": 1, "idle": 1, "upgraded": 0})
    );
    assert_eq!(s["requests"], 2, "{s:#}");
    assert_eq!(slow.join().unwrap(), 200);
    assert_eq!(s["restarts"], serde_json::json!([]));
    assert_eq!(
        s["restarts_total"],
        serde_json::json!({"ok": 0, "failed": 0, "rollbacks": {"crash": 0, "errors": 0, "application": 0, "operator": 0}})
    );
    drop(held);

    // Three restarts by SIGHUP; each old generation exits.
    let mut pids = vec![p.pid];
    for i in 1..=3 {
        let (old, new) = restart_ok(&p);
        expect_gone(&p, old, &format!("restart {i}: the old generation"));
        // The control socket answers once the new generation is live.
        status_until(&control, "the new generation live", |s| {
            s["pid"] == new && s["live"] == true
        });
        pids.push(new);
    }
    // The newest generation learns of its parent's exit on its own: wait for it.
    let newest = pids[3];
    let s = status_until(&control, "the last drain recorded", |s| {
        s["restarts"][2]["ready_to_old_gone_ms"].is_u64()
    });

    // A deploy gone wrong: the binary is missing. The restart fails, and the
    // generation that stays records why.
    std::fs::remove_file(&app).unwrap();
    let failed_line = restart_fails(&p);
    install(&example_bin("hello"), &app);
    assert!(failed_line.contains("No such file"), "{failed_line}");

    let after = status(&control);
    check_shape(&after);
    println!("[status] after: {after}");
    assert_eq!(after["pid"], newest);
    assert_eq!(after["generation"], 4);
    assert_eq!(after["phase"], "serving");
    assert_eq!(after["live"], true);
    assert_eq!(after["listeners"][0]["address"], addr.as_str());
    assert_eq!(after["listeners"][0]["origin"], "inherited");
    assert_eq!(
        after["restarts_total"],
        serde_json::json!({"ok": 3, "failed": 1, "rollbacks": {"crash": 0, "errors": 0, "application": 0, "operator": 0}})
    );
    let restarts = after["restarts"].as_array().unwrap();
    assert_eq!(restarts.len(), 4, "{after:#}");
    for (i, r) in restarts[..3].iter().enumerate() {
        assert_eq!(r["outcome"], "ok", "{r}");
        assert_eq!(r["generation"], i as u64 + 2, "{r}");
        assert_eq!(r["pid"], pids[i + 1], "{r}");
        assert!(r["reason"].is_null(), "{r}");
        assert!(r["sighup_to_ready_ms"].is_u64(), "{r}");
        assert!(r["ready_to_old_gone_ms"].is_u64(), "{r}");
    }
    let f = &restarts[3];
    assert_eq!(f["outcome"], "failed", "{f}");
    assert_eq!(f["generation"], 4, "{f}");
    let reason = f["reason"].as_str().unwrap();
    assert!(
        reason.contains("cannot start") && reason.contains(app.to_str().unwrap()),
        "{reason}"
    );
    assert!(reason.contains("No such file"), "{reason}");
    assert!(f["sighup_to_ready_ms"].is_null() && f["ready_to_old_gone_ms"].is_null());
    // Times in order: each restart after the one before, all after the first start.
    let times: Vec<&str> = restarts.iter().map(|r| r["at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(s["restarts"][0]["at"].as_str() <= after["started_at"].as_str());

    // The table, for a person.
    let out = status_command(&control, &["--table"]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    println!("[status] table:\n{table}");
    assert!(table.contains("generation  4"), "{table}");
    assert!(table.contains(&addr), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.contains(" ok ")).count(),
        3,
        "{table}"
    );
    assert!(table.contains("No such file"), "{table}");

    // An unknown command on the socket is answered, not dropped.
    {
        use std::io::{BufRead, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&control).unwrap();
        s.set_read_timeout(Some(LONG)).unwrap();
        s.write_all(b"statu\n").unwrap();
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line).unwrap();
        assert!(line.starts_with("error unknown command"), "{line:?}");
    }

    common::signal(newest, libc::SIGTERM);
    expect_gone(&p, newest, "the last generation");
    // Nothing answers now: a clear message, and a failure exit.
    let out = status_command(&control, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no status from") && err.contains("control"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
fn status_of_nothing_says_so() {
    let dir = common::scratch_dir("status-nothing");
    let out = status_command(&dir.join("nobody.sock"), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot connect to the control socket"),
        "{err}"
    );
    let out = Command::new(example_bin("hello"))
        .args(["status", "--tabel"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
}

/// One sample of a Prometheus text exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict reader of the Prometheus text format (0.0.4): `# HELP`/`# TYPE` comments,
/// at most one TYPE per family and before its samples, samples `name{k="v",...} value`
/// with valid names and escapes, and suffixes that fit the declared type.
fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    fn valid_name(n: &str) -> bool {
        let mut c = n.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
    }
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut seen_samples: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    for (no, line) in text.lines().enumerate() {
        let bad = |why: &str| Err(format!("line {}: {why}: {line:?}", no + 1));
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix("# ") {
            let mut parts = c.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(n), _) if valid_name(n) => {}
                (Some("TYPE"), Some(n), Some(t)) if valid_name(n) => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                        return bad("unknown type");
                    }
                    if seen_samples.contains(n) || types.insert(n.into(), t.into()).is_some() {
                        return bad("TYPE after samples or twice");
                    }
                }
                _ => return bad("a comment that is neither HELP nor TYPE"),
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (name_end, rest) = match line.find(['{', ' ']) {
            Some(i) => (i, &line[i..]),
            None => return bad("no value"),
        };
        let name = &line[..name_end];
        if !valid_name(name) {
            return bad("bad metric name");
        }
        let mut labels = BTreeMap::new();
        let rest = if let Some(r) = rest.strip_prefix('{') {
            let mut r = r;
            loop {
                if let Some(after) = r.strip_prefix('}') {
                    break after;
                }
                let eq = r.find('=').ok_or("label without '='")?;
                let k = &r[..eq];
                if !valid_name(k) || k.contains(':') {
                    return bad("bad label name");
                }
                let v = r[eq + 1..]
                    .strip_prefix('"')
                    .ok_or("label value not quoted")?;
                let mut val = String::new();
                let mut chars = v.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => val.push('\n'),
                            Some((_, c @ ('\\' | '"'))) => val.push(c),
                            _ => return bad("bad escape"),
                        },
                        Some((i, '"')) => break i,
                        Some((_, c)) => val.push(c),
                        None => return bad("unterminated label value"),
                    }
                };
                labels.insert(k.to_string(), val);
                r = &v[end + 1..];
                r = r.strip_prefix(',').unwrap_or(r);
            }
        } else {
            rest
        };
        let mut fields = rest.trim_start_matches(' ').split(' ');
        let value = match fields.next() {
            Some("+Inf") => f64::INFINITY,
            Some("-Inf") => f64::NEG_INFINITY,
            Some("NaN") => f64::NAN,
            Some(v) => v
                .parse()
                .map_err(|_| format!("line {}: bad value {v:?}", no + 1))?,
            None => return bad("no value"),
        };
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|_| format!("line {}: bad timestamp", no + 1))?;
        }
        if fields.next().is_some() {
            return bad("trailing fields");
        }
        // The family the sample belongs to, and whether its suffix fits the type.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                let base = name.strip_suffix(s)?;
                matches!(
                    types.get(base).map(String::as_str),
                    Some("histogram" | "summary")
                )
                .then_some(base)
            })
            .unwrap_or(name);
        match types.get(family).map(String::as_str) {
            Some("counter") if value < 0.0 => return bad("a negative counter"),
            Some("histogram") if name == family => return bad("a bare histogram sample"),
            Some("histogram") if name.ends_with("_bucket") && !labels.contains_key("le") => {
                return bad("a bucket without le")
            }
            _ => {}
        }
        seen_samples.insert(family.to_string());
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(out)
}

fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// Scrapes until `done` holds (bounded: LONG). A new generation serves before its
/// parent's word that it is live, and records the restart it came from at that word.
fn scrape_until(addr: &str, what: &str, done: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let deadline = Instant::now() + LONG;
    loop {
        let m = scrape(addr);
        if done(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {LONG:?}: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn scrape(addr: &str) -> Vec<Sample> {
    let r = get_tcp(addr, "/metrics");
    assert_eq!(r.status, 200, "{}", r.body);
    parse_prometheus(&r.body).unwrap_or_else(|e| panic!("not Prometheus text: {e}\n{}", r.body))
}

#[test]
fn the_prometheus_parser_is_strict() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\"} 3\n\n\
                # TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n";
    let s = parse_prometheus(good).unwrap();
    assert_eq!(s.len(), 4);
    assert_eq!(s[0].labels["y"], "q\"");
    for bad in [
        "a b c d\n",
        "a{x=1} 2\n",
        "a{x=\"1} 2\n",
        "1a 2\n",
        "a two\n",
        "# TYPE a counter\na -1\n",
        "a 1\n# TYPE a gauge\n",
        "# TYPE h histogram\nh 1\n",
        "# BOGUS a\n",
    ] {
        assert!(parse_prometheus(bad).is_err(), "accepted {bad:?}");
    }
}

/// `hello --no-metrics` installs no recorder: `GET /metrics` says so with a 404, and
/// the rest is served as usual.
#[test]
#[cfg_attr(not(feature = "metrics"), ignore = "needs the `metrics` feature")]
fn without_a_recorder_metrics_answer_404() {
    let p = Proc::spawn_with(Command::new(example_bin("hello")).args([
        "--addr",
        "127.0.0.1:0",
        "--no-metrics",
    ]));
    let addr = p.serving_addr(1);
    let r = get_tcp(&addr, "/metrics");
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(
        r.body,
        "no metrics recorder (--no-metrics, or it could not be installed)\n"
    );
    assert_eq!(get_tcp(&addr, "/").status, 200);
}

#[test]
#[cfg_attr(not(feature = "metrics"), ignore = "needs the `metrics` feature")]
fn metrics_move_with_restarts() {
    become_subreaper();
    let (dir, app) = installed("metrics", "hello");
    let p = Proc::spawn_with(Command::new(&app).args(["--addr", "127.0.0.1:0"]));
    let addr = p.serving_addr(1);

    let m = scrape(&addr);
    assert_eq!(metric(&m, "ceaseless_generation", &[]), Some(1.0));
    assert_eq!(metric(&m, "ceaseless_live", &[]), Some(1.0));
    assert_eq!(
        metric(&m, "ceaseless_phase", &[("phase", "serving")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "ceaseless_phase", &[("phase", "draining")]),
        Some(0.0)
    );
    assert_eq!(
        metric(&m, "ceaseless_restarts_total", &[("outcome", "ok")]),
        Some(0.0)
    );
    assert_eq!(
        metric(&m, "ceaseless_restarts_total", &[("outcome", "failed")]),
        Some(0.0)
    );
    assert!(metric(&m, "ceaseless_start_time_seconds", &[]).is_some_and(|t| t > 1.0e9));
    // The requests counter moves with the requests: the scrape counts itself.
    let requests = |m: &[Sample]| metric(m, "ceaseless_requests_total", &[]).unwrap_or(-1.0);
    let first = requests(&m);
    assert!(first >= 1.0, "{m:?}");
    for _ in 0..3 {
        assert_eq!(get_tcp(&addr, "/").status, 200);
    }
    assert_eq!(requests(&scrape(&addr)), first + 4.0);
    // The scrape's own request is in flight while it is answered.
    let conns = |state| {
        metric(
            &m,
            "ceaseless_connections",
            &[("listener", &addr), ("state", state)],
        )
    };
    assert!(
        conns("active").is_some_and(|n| n >= 1.0),
        "{:?}",
        conns("active")
    );
    assert!(conns("idle").is_some() && conns("upgraded").is_some());

    let mut newest = p.pid;
    for i in 1..=2u32 {
        let (old, new) = restart_ok(&p);
        expect_gone(&p, old, &format!("restart {i}: the old generation"));
        newest = new;
        let m = scrape_until(&addr, "the new generation live", |m| {
            metric(m, "ceaseless_live", &[]) == Some(1.0)
                && metric(m, "ceaseless_restart_duration_seconds_count", &[]).is_some()
        });
        assert_eq!(
            metric(&m, "ceaseless_generation", &[]),
            Some(f64::from(i + 1))
        );
        assert_eq!(
            metric(&m, "ceaseless_restarts_total", &[("outcome", "ok")]),
            Some(f64::from(i)),
            "the counter is carried across restarts"
        );
        // Recorded by the new generation once it was live: one restart each.
        assert_eq!(
            metric(&m, "ceaseless_restart_duration_seconds_count", &[]),
            Some(1.0)
        );
    }
    // The drain of the old generation, once the new one saw it exit.
    scrape_until(&addr, "the drain recorded", |m| {
        metric(m, "ceaseless_drain_duration_seconds_count", &[]) == Some(1.0)
    });

    std::fs::remove_file(&app).unwrap();
    restart_fails(&p);
    install(&example_bin("hello"), &app);
    let m = scrape_until(&addr, "the failed restart counted", |m| {
        metric(m, "ceaseless_restarts_total", &[("outcome", "failed")]) == Some(1.0)
    });
    assert_eq!(
        metric(&m, "ceaseless_restarts_total", &[("outcome", "ok")]),
        Some(2.0)
    );
    assert_eq!(metric(&m, "ceaseless_generation", &[]), Some(3.0));

    // The health check of the same server.
    assert_eq!(get_tcp(&addr, "/healthz").status, 200);

    common::signal(newest, libc::SIGTERM);
    expect_gone(&p, newest, "the last generation");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A WebSocket is counted as an upgraded connection, apart from the idle and active
/// ones: the realtime example's `/ws` with a real client, read through the library's
/// own client of the control socket.
#[test]
#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
fn a_websocket_is_an_upgraded_connection() {
    #[cfg(feature = "control")]
    {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;

        let dir = common::scratch_dir("status-ws");
        let control = socket_path(&dir, "control.sock");
        let mut cmd = Command::new(example_bin("realtime"));
        cmd.args(["--addr", "127.0.0.1:0", "--control"])
            .arg(&control);
        let mut p = Proc::spawn_with(&mut cmd);
        let addr = p.serving_addr(1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut ws = rt.block_on(async {
            let url = format!("ws://{addr}/ws");
            let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .expect("connect the WebSocket");
            ws.send(Message::text("hi")).await.unwrap();
            let answer = tokio::time::timeout(LONG, ws.next())
                .await
                .expect("an answer");
            assert!(matches!(answer, Some(Ok(Message::Text(_)))), "{answer:?}");
            ws
        });
        let idle_http = connect_tcp(&addr).unwrap();
        let deadline = Instant::now() + LONG;
        let s = loop {
            let s = ceaseless::control::request_status(&control, LONG).expect("status");
            if s.connections.open == 2 || Instant::now() > deadline {
                break s;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        println!("[status] with a WebSocket: {:?}", s.connections);
        assert_eq!(s.connections.upgraded, 1, "{s:?}");
        assert_eq!(s.connections.open, 2, "{s:?}");
        assert_eq!(s.listeners[0].connections, Some(s.connections));
        drop(idle_http);
        rt.block_on(async {
            let _ = ws.close(None).await;
        });
        p.signal(libc::SIGTERM);
        assert!(p.wait_exit(LONG).is_some(), "{}", p.output());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

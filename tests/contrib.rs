//! What `contrib/` and `docs/fleet.md` promise, checked: the Kubernetes manifests parse
//! and their numbers agree with each other, the systemd unit has the keys the README
//! relies on, and a real `hello` started with the manifest's arguments behaves as the
//! probes in it expect.
//!
//! No timing is asserted beyond loose upper bounds: what is checked is what each probe
//! got (every probe is a fresh TCP connection, as a kubelet's or a balancer's is).
#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::generations::{
    expect_gone, newest, restart_ok, socket_path, wait_line_of, wait_status,
};
use common::probe::{probe, Prober};
use common::{become_subreaper, example_bin, scratch_dir, Proc};
use serde_norway::Value;

fn contrib(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(rel)
}

/// Every YAML document of every file under contrib/kubernetes, with its file name.
fn k8s_documents() -> Vec<(String, Value)> {
    let mut docs = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(contrib("kubernetes"))
        .expect("contrib/kubernetes")
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML under contrib/kubernetes");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let mut doc = String::new();
        for line in text.lines().chain(["---"]) {
            if line.trim_end() != "---" {
                doc.push_str(line);
                doc.push('\n');
                continue;
            }
            let doc = std::mem::take(&mut doc);
            let blank = |l: &str| l.trim().is_empty() || l.trim_start().starts_with('#');
            if doc.lines().all(blank) {
                continue;
            }
            let v: Value = serde_norway::from_str(&doc)
                .unwrap_or_else(|e| panic!("{name}: not valid YAML: {e}"));
            if !matches!(v, Value::Null) {
                docs.push((name.clone(), v));
            }
        }
    }
    docs
}

fn kind<'a>(docs: &'a [(String, Value)], k: &str) -> &'a Value {
    let found: Vec<_> = docs.iter().filter(|(_, d)| d["kind"] == k).collect();
    assert_eq!(found.len(), 1, "expected one {k} under contrib/kubernetes");
    &found[0].1
}

fn int(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what}: not a number: {v:?}"))
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {v:?}"))
}

/// The value of the last `flag` in an argument list (hello's parser lets later flags
/// win).
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.windows(2)
        .rev()
        .find(|w| w[0] == name)
        .map(|w| w[1].as_str())
}

fn flag_ms(args: &[String], name: &str) -> u64 {
    flag(args, name)
        .unwrap_or_else(|| panic!("no {name} in {args:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{name}: not a number in {args:?}"))
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// The hello container of the Deployment, and its command line (command + args).
fn hello_container(docs: &[(String, Value)]) -> (&Value, Vec<String>) {
    let dep = kind(docs, "Deployment");
    let containers = dep["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    let c = containers
        .iter()
        .find(|c| c["name"] == "hello")
        .expect("a container named hello");
    let mut argv = Vec::new();
    for key in ["command", "args"] {
        for a in c[key].as_sequence().into_iter().flatten() {
            argv.push(str_of(a, key).to_string());
        }
    }
    (c, argv)
}

/// A probe's or Service's port: a number, or the name of one of the container's ports.
fn resolve_port(c: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = str_of(port, "port");
    let p = c["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no container port named {name}"));
    int(&p["containerPort"], "containerPort")
}

#[test]
fn the_kubernetes_manifest_parses_and_its_numbers_agree() {
    let docs = k8s_documents();
    let dep = kind(&docs, "Deployment");
    let svc = kind(&docs, "Service");
    let (c, argv) = hello_container(&docs);
    assert!(
        argv[0].ends_with("/hello"),
        "the command runs hello: {argv:?}"
    );

    // One port everywhere: the address hello binds, the container port, both probes and
    // the Service's target.
    let addr = flag(&argv, "--addr").expect("--addr");
    let port = port_of(addr);
    assert!(
        addr.starts_with("0.0.0.0:"),
        "hello must listen on the pod IP, not loopback: {addr}"
    );
    let container_ports: Vec<u64> = c["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .map(|p| int(&p["containerPort"], "containerPort"))
        .collect();
    assert!(
        container_ports.contains(&port),
        "{container_ports:?} vs {addr}"
    );
    let ready = &c["readinessProbe"]["httpGet"];
    assert_eq!(ready["path"], "/healthz", "readiness on the health check");
    assert_eq!(resolve_port(c, &ready["port"]), port, "readiness port");
    let live = &c["livenessProbe"]["httpGet"];
    assert_ne!(
        live["path"], "/healthz",
        "liveness must not follow the health check: it is 503 for the whole shutdown"
    );
    assert_eq!(resolve_port(c, &live["port"]), port, "liveness port");
    let svc_ports = svc["spec"]["ports"].as_sequence().expect("Service ports");
    for p in svc_ports {
        assert_eq!(
            resolve_port(c, &p["targetPort"]),
            port,
            "Service targetPort"
        );
    }
    let labels = &dep["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_mapping().expect("selector") {
        assert_eq!(
            &labels[k.as_str().unwrap()],
            v,
            "the Service selects the pods"
        );
    }

    // Time: the kubelet's SIGKILL only after lame duck + hammer time; a liveness kill
    // no sooner either (its first failure can come once the listener closed, at the
    // lame duck's end at the earliest).
    let lame = flag_ms(&argv, "--lame-duck-ms");
    let hammer = flag_ms(&argv, "--hammer-ms");
    assert!(lame > 0 && hammer > 0, "{argv:?}");
    let pod = &dep["spec"]["template"]["spec"];
    let grace = int(
        &pod["terminationGracePeriodSeconds"],
        "terminationGracePeriodSeconds",
    );
    assert!(
        grace * 1000 > lame + hammer,
        "terminationGracePeriodSeconds {grace} s <= lame duck {lame} ms + hammer {hammer} ms"
    );
    let lp = &c["livenessProbe"];
    let kill_after = (int(&lp["failureThreshold"], "failureThreshold") - 1)
        * int(&lp["periodSeconds"], "periodSeconds")
        * 1000;
    assert!(
        kill_after > hammer,
        "a liveness probe could kill a drain within hammer time ({kill_after} ms)"
    );
    assert!(
        c["lifecycle"]["preStop"].is_null(),
        "no preStop: the lame duck is the window"
    );

    // The rollout never goes below the replica count.
    let ru = &dep["spec"]["strategy"]["rollingUpdate"];
    assert_eq!(dep["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(int(&ru["maxUnavailable"], "maxUnavailable"), 0);
    assert!(int(&ru["maxSurge"], "maxSurge") >= 1);

    // The control socket lives in an emptyDir mounted where it is.
    let control = Path::new(flag(&argv, "--control").expect("--control"));
    let mount = c["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|m| control.starts_with(str_of(&m["mountPath"], "mountPath")))
        .unwrap_or_else(|| panic!("no volume mounted above {}", control.display()));
    let vol = pod["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    assert!(vol["emptyDir"].is_mapping(), "{vol:?}");
}

/// A systemd unit as systemd reads it, for what the tests need: `[Section]`s, `#`/`;`
/// comments, backslash continuations; every `Key=value` of a section, in order.
fn parse_unit(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
        {
            continue;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        let full = std::mem::take(&mut pending) + line;
        if let Some(s) = full.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = full
            .split_once('=')
            .unwrap_or_else(|| panic!("not Key=value: {full:?}"));
        out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
    }
    assert!(pending.is_empty(), "a continuation at the end of the file");
    out
}

fn unit_value<'a>(unit: &'a [(String, String, String)], section: &str, key: &str) -> &'a str {
    let found: Vec<_> = unit
        .iter()
        .filter(|(s, k, _)| s == section && k == key)
        .collect();
    assert_eq!(found.len(), 1, "[{section}] {key}= once: {found:?}");
    &found[0].2
}

fn words(v: &str) -> Vec<String> {
    v.split_whitespace().map(str::to_string).collect()
}

fn seconds(v: &str) -> u64 {
    v.strip_suffix('s')
        .unwrap_or(v)
        .parse()
        .unwrap_or_else(|_| panic!("not plain seconds: {v}"))
}

#[test]
fn the_systemd_unit_has_what_the_readme_relies_on() {
    let text = std::fs::read_to_string(contrib("systemd/hello.service")).unwrap();
    let unit = parse_unit(&text);
    assert_eq!(unit_value(&unit, "Service", "Type"), "notify");
    assert_eq!(unit_value(&unit, "Service", "NotifyAccess"), "main");
    assert_eq!(unit_value(&unit, "Service", "KillMode"), "control-group");

    let start = words(unit_value(&unit, "Service", "ExecStart"));
    let reload = words(unit_value(&unit, "Service", "ExecReload"));
    assert_eq!(start[0], reload[0], "ExecReload runs the same binary");
    assert_eq!(&reload[1..3], ["restart", "--control"], "{reload:?}");
    let control = flag(&start, "--control").expect("ExecStart --control");
    assert_eq!(
        flag(&reload, "--control"),
        Some(control),
        "one control socket"
    );
    let run_dir = unit_value(&unit, "Service", "RuntimeDirectory");
    assert!(
        control.starts_with(&format!("/run/{run_dir}/")),
        "{control} outside RuntimeDirectory={run_dir}"
    );

    // The README's chain of bounds: ready timeout < restart's --timeout-ms <
    // TimeoutStartSec (which bounds ExecReload), hammer time < TimeoutStopSec.
    let ready = flag_ms(&start, "--ready-timeout-ms");
    let ask = flag_ms(&reload, "--timeout-ms");
    let start_sec = seconds(unit_value(&unit, "Service", "TimeoutStartSec"));
    assert!(
        ready < ask && ask < start_sec * 1000,
        "{ready} ms, {ask} ms, {start_sec} s"
    );
    let hammer = flag_ms(&start, "--hammer-ms");
    let stop_sec = seconds(unit_value(&unit, "Service", "TimeoutStopSec"));
    assert!(hammer < stop_sec * 1000, "{hammer} ms vs {stop_sec} s");
}

#[test]
#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
fn hello_with_the_manifest_arguments_behaves_as_its_probes_expect() {
    become_subreaper();
    let docs = k8s_documents();
    let (_, argv) = hello_container(&docs);
    let hammer = flag_ms(&argv, "--hammer-ms");
    // The manifest's arguments, on loopback and a scratch control socket, with a
    // shorter lame duck (hello lets the last flag win) to keep the test short.
    let dir = scratch_dir("contrib");
    let control = socket_path(&dir, "control.sock");
    let mut args: Vec<String> = argv[1..].to_vec();
    for w in 0..args.len() - 1 {
        match args[w].as_str() {
            "--addr" => args[w + 1] = "127.0.0.1:0".into(),
            "--control" => args[w + 1] = control.to_string_lossy().into_owned(),
            _ => {}
        }
    }
    let lame: u64 = 1000;
    args.extend(["--lame-duck-ms".into(), lame.to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = Proc::spawn(&example_bin("hello"), &args);
    let addr = p.ready_addr(1);

    // Serving, and through a restart by SIGHUP and one by the control socket (what
    // `kubectl exec ... hello restart` and systemd's ExecReload do): 200 on every probe.
    let prober = Prober::start(addr.clone());
    prober.wait_for(20);
    let (old, _) = restart_ok(&p);
    expect_gone(&p, old, "the generation the SIGHUP replaced");
    let before = prober.count();
    prober.wait_for(before + 20);
    let old = newest(&p);
    let out = std::process::Command::new(example_bin("hello"))
        .args(["restart", "--control"])
        .arg(&control)
        .output()
        .expect("run hello restart");
    assert!(
        out.status.success(),
        "hello restart: {}; {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        p.output()
    );
    let new: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("hello restart prints the new pid");
    assert_ne!(new, old);
    expect_gone(&p, old, "the generation the control socket replaced");
    let before = prober.count();
    prober.wait_for(before + 20);
    let seen = prober.stop();
    let bad: Vec<_> = seen.iter().filter(|r| **r != Ok(200)).take(10).collect();
    println!(
        "[contrib] {} health probes through 2 restarts, {} not 200",
        seen.len(),
        seen.iter().filter(|r| **r != Ok(200)).count()
    );
    assert!(
        bad.is_empty(),
        "a probe saw a restart: {bad:?}\n{}",
        p.output()
    );

    // SIGTERM, as the kubelet sends it: the lame duck says 503 to the readiness probe
    // while `/` (and the liveness probe on it) is still served on new connections.
    assert_eq!(newest(&p), new);
    common::signal(new, libc::SIGTERM);
    wait_line_of(&p, "lame duck", new);
    assert_eq!(probe(&addr, "/healthz"), Ok(503), "{}", p.output());
    assert_eq!(probe(&addr, "/"), Ok(200), "{}", p.output());
    // Then the drain and the exit, within lame duck + hammer time (the kubelet's grace
    // is above that), with status 0.
    let bound = Duration::from_millis(lame + hammer);
    let status = wait_status(new, bound)
        .unwrap_or_else(|| panic!("pid {new} still runs after {bound:?}:\n{}", p.output()));
    assert!(status.success(), "{status}\n{}", p.output());
    assert!(
        probe(&addr, "/healthz").is_err(),
        "answering after the exit"
    );
    assert!(
        !control.exists(),
        "the control socket outlived the shutdown"
    );
}

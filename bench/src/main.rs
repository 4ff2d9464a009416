//! The ceaseless benchmark: failed requests across restarts, the cost of the wrapper
//! against bare hyper, and the resources of a server, in one run. See `usage()`.

mod ext;
mod load;
mod parked;
mod plot;
mod probe;
mod procs;
mod report;
mod sched;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use load::{Load, Proto, Target};
use procs::Server;
use report::*;

fn usage() -> &'static str {
    "\
ceaseless-bench: failed requests across restarts, overhead against bare hyper, resources.

    cargo run --release -p ceaseless-bench -- [OPTIONS]

It builds what it drives first (cargo build --release: the hello and tls examples of
ceaseless, and this package's `bare` baseline), unless --no-build is given; then it
runs, on 127.0.0.1 only:
  1. start-up: spawning hello (and bare) fresh until it answers, several times;
  2. steady state: bare and ceaseless (`served`: bare's handler on ceaseless::Server,
     its defaults) alternately under the same client load
     (the built-in hyper client, and wrk / h2load when installed: bench/install-tools.sh);
  3. restarts under keep-alive load: N SIGHUPs each over HTTP/1.1, h2c, TLS+HTTP/1.1 and
     TLS+h2 (hello; the tls example for TLS);
  4. resources: RSS idle and under load, open fds of the first and last generation;
  5. the scheduler: how long a thread that never sleeps waits for the servers' core
     beside one busy thread (2 s, 0.5 s with --quick), the floor under a restart
     window's latency when generations share a core;
  6. probation: the RSS of a generation parked behind the live one (hello
     --probation-ms, with no ballast and with 32 MiB), and SIGHUP -> serving with
     and without a probation, alternating.
It prints a table and a one-line summary, and stops by itself.

OPTIONS
  --restarts N        restarts per protocol (default 20)
  --duration SECS     length of each steady-state run (default 4)
  --rounds N          steady-state runs per side and client, alternating (default 7)
  --connections N     concurrent keep-alive requests: HTTP/1.1 connections, or HTTP/2
                      connections of 8 streams (default 64)
  --gap-ms MS         steady load between two restarts (default 500)
  --protocols LIST    restart protocols, of h1,h2c,tls-h1,tls-h2 (default: all)
  --clients LIST      steady-state clients, of internal,wrk,h2load (default: all that
                      are installed)
  --startup-samples N fresh starts timed per binary (default 10)
  --no-pin            do not pin: by default the servers run on the first allowed CPU
                      and the load generators on the others
  --no-build          use the binaries already built in target/release
  --json PATH         also write the results as JSON
  --drain-spread-ms N pass --drain-spread-ms N to the servers of the restart runs
  --plots DIR         also draw each restart run's latency over time, the SIGHUPs
                      marked, into DIR/latency-<protocol>.svg
  --quick             a smoke run: 3 restarts, 1 round of 1 s, 3 start-ups
  --probation-only    only step 6 (the probation)
  --ballast-mb N      hello holds N MiB of resident heap in the restart runs (h1, h2c),
                      as a large application does: what starting the next generation
                      costs the old one grows with it if the start forks
  --hello-metrics     let hello install its Prometheus recorder (by default the bench
                      runs it with --no-metrics: the recorder's clock calibrates itself
                      in a busy loop at every start, an application cost, not ceaseless's)
  -h, --help          this text
"
}

/// The run's settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub restarts: usize,
    pub duration: Duration,
    pub rounds: usize,
    pub connections: usize,
    pub gap: Duration,
    pub protocols: Vec<Proto>,
    pub clients: Vec<String>,
    pub startup_samples: usize,
    pub pin: bool,
    pub build: bool,
    pub json: Option<PathBuf>,
    pub plots: Option<PathBuf>,
    pub drain_spread_ms: Option<u64>,
    pub quick: bool,
    /// Only the probation's measurements (`--probation-only`).
    pub probation_only: bool,
    pub hello_metrics: bool,
    pub ballast_mb: Option<u64>,
}

fn parse_args() -> Result<Config, String> {
    let mut c = Config {
        restarts: 20,
        duration: Duration::from_secs(4),
        rounds: 7,
        connections: 64,
        gap: Duration::from_millis(500),
        protocols: Proto::ALL.to_vec(),
        clients: Vec::new(),
        startup_samples: 10,
        pin: true,
        build: true,
        json: None,
        plots: None,
        drain_spread_ms: None,
        quick: false,
        probation_only: false,
        hello_metrics: false,
        ballast_mb: None,
    };
    let mut clients: Option<Vec<String>> = None;
    let mut explicit = std::collections::HashSet::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        let num = |v: String| -> Result<u64, String> {
            v.parse().map_err(|_| format!("{a}: not a number: {v}"))
        };
        match a.as_str() {
            "--restarts" => c.restarts = num(value()?)? as usize,
            "--duration" => c.duration = Duration::from_secs(num(value()?)?.max(1)),
            "--rounds" => c.rounds = num(value()?)?.max(1) as usize,
            "--connections" => c.connections = num(value()?)?.clamp(1, 10_000) as usize,
            "--gap-ms" => c.gap = Duration::from_millis(num(value()?)?),
            "--startup-samples" => c.startup_samples = num(value()?)?.max(1) as usize,
            "--protocols" => {
                c.protocols = value()?
                    .split(',')
                    .map(|p| Proto::parse(p.trim()).ok_or(format!("unknown protocol {p:?}")))
                    .collect::<Result<_, _>>()?
            }
            "--clients" => {
                let list: Vec<String> = value()?.split(',').map(|s| s.trim().into()).collect();
                for cl in &list {
                    if !["internal", "wrk", "h2load"].contains(&cl.as_str()) {
                        return Err(format!("unknown client {cl:?}"));
                    }
                }
                clients = Some(list);
            }
            "--no-pin" => c.pin = false,
            "--no-build" => c.build = false,
            "--json" => c.json = Some(PathBuf::from(value()?)),
            "--plots" => c.plots = Some(PathBuf::from(value()?)),
            "--drain-spread-ms" => c.drain_spread_ms = Some(num(value()?)?),
            "--quick" => c.quick = true,
            "--probation-only" => c.probation_only = true,
            "--hello-metrics" => c.hello_metrics = true,
            "--ballast-mb" => c.ballast_mb = Some(num(value()?)?),
            "-h" | "--help" => {
                print!("{}", usage());
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
        explicit.insert(a);
    }
    if c.quick {
        if !explicit.contains("--restarts") {
            c.restarts = 3;
        }
        if !explicit.contains("--duration") {
            c.duration = Duration::from_secs(1);
        }
        if !explicit.contains("--rounds") {
            c.rounds = 1;
        }
        if !explicit.contains("--startup-samples") {
            c.startup_samples = 3;
        }
        if !explicit.contains("--gap-ms") {
            c.gap = Duration::from_millis(200);
        }
    }
    c.clients = match clients {
        Some(l) => l,
        None => ["internal", "wrk", "h2load"]
            .into_iter()
            .filter(|t| *t == "internal" || ext::available(t))
            .map(String::from)
            .collect(),
    };
    Ok(c)
}

/// What hello is started with besides its address (see `--hello-metrics`).
fn hello_args(cfg: &Config) -> Vec<String> {
    if cfg.hello_metrics {
        Vec::new()
    } else {
        vec!["--no-metrics".into()]
    }
}

/// Paths of the binaries the bench drives.
struct Bins {
    hello: PathBuf,
    tls: PathBuf,
    bare: PathBuf,
    /// The steady state's ceaseless side: `bare`'s handler on `ceaseless::Server`.
    served: PathBuf,
}

fn build_and_locate(build: bool) -> Result<Bins, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf();
    if build {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        for args in [
            &[
                "build",
                "--release",
                "-p",
                "ceaseless",
                "--example",
                "hello",
                "--example",
                "tls",
            ][..],
            &[
                "build",
                "--release",
                "-p",
                "ceaseless-bench",
                "--bin",
                "bare",
                "--bin",
                "served",
            ][..],
        ] {
            eprintln!("bench: cargo {}", args.join(" "));
            let st = std::process::Command::new(&cargo)
                .args(args)
                .current_dir(&root)
                .status()
                .map_err(|e| format!("cannot run cargo: {e}"))?;
            if !st.success() {
                return Err(format!("cargo {} failed", args.join(" ")));
            }
        }
    }
    // target/<profile>/ceaseless-bench → target/release
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("release"))
        .ok_or("cannot locate the target directory")?;
    if exe.parent().and_then(Path::file_name) != Some("release".as_ref()) {
        eprintln!("bench: warning: not built with --release; the bench itself is slow");
    }
    let bins = Bins {
        hello: dir.join("examples").join("hello"),
        tls: dir.join("examples").join("tls"),
        bare: dir.join("bare"),
        served: dir.join("served"),
    };
    for b in [&bins.hello, &bins.tls, &bins.bare, &bins.served] {
        if !b.exists() {
            return Err(format!(
                "{} is missing: build it (or drop --no-build)",
                b.display()
            ));
        }
    }
    Ok(bins)
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// Where things run.
#[derive(Debug, Clone, Copy)]
pub struct Cpus {
    pub server: Option<usize>,
    pub client: Option<usize>,
    pub client_threads: usize,
}

/// The scratch directory and the certificate of the TLS runs.
struct Scratch {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    cert_der: rustls_pki_types::CertificateDer<'static>,
}

impl Scratch {
    fn new() -> Result<Scratch, String> {
        let dir = std::env::temp_dir().join(format!("ceaseless-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .map_err(|e| e.to_string())?;
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).map_err(|e| e.to_string())?;
        std::fs::write(&key, ck.signing_key.serialize_pem()).map_err(|e| e.to_string())?;
        Ok(Scratch {
            dir,
            cert,
            key,
            cert_der: ck.cert.der().clone(),
        })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Kills whatever the bench started if it leaves early (panic included).
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        procs::kill_children();
    }
}

fn main() -> std::process::ExitCode {
    let cfg = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ceaseless-bench: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let bins = match build_and_locate(cfg.build) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("ceaseless-bench: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    if !procs::become_subreaper() {
        eprintln!("ceaseless-bench: warning: cannot become a subreaper; later generations are reaped by init");
    }
    let _cleanup = Cleanup;
    let allowed = procs::allowed_cpus();
    let cpus = if cfg.pin && allowed.len() >= 2 {
        let client: Vec<usize> = allowed[1..].to_vec();
        procs::set_affinity(0, &client);
        Cpus {
            server: Some(allowed[0]),
            client: Some(allowed[1]),
            client_threads: client.len(),
        }
    } else {
        Cpus {
            server: None,
            client: None,
            client_threads: allowed.len().max(1),
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cpus.client_threads)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let scratch = match Scratch::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ceaseless-bench: cannot make a certificate: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let machine = Machine::read(&cpus, allowed.len());
    eprintln!(
        "bench: {} ({} CPUs; servers on {:?}, load on {:?}), {} restarts × {:?}, steady {} × {} s × {:?}",
        machine.cpu_model,
        machine.nproc,
        cpus.server,
        cpus.client,
        cfg.restarts,
        cfg.protocols.iter().map(|p| p.name()).collect::<Vec<_>>(),
        cfg.rounds,
        cfg.duration.as_secs(),
        cfg.clients,
    );

    if cfg.probation_only {
        return match parked::run(&cfg, &bins, &cpus) {
            Ok(p) => {
                p.print();
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ceaseless-bench: probation: {e}");
                std::process::ExitCode::from(1)
            }
        };
    }
    let started = Instant::now();
    let startup = run_startup(&cfg, &bins, &cpus, &scratch);
    let mut steady = run_steady(&cfg, &bins, &cpus, &rt, &scratch);
    steady.idle_unpinned = run_idle_unpinned(&cfg, &bins);
    let mut restarts = Vec::new();
    for &proto in &cfg.protocols {
        match run_restarts(&cfg, &bins, &cpus, &rt, &scratch, proto) {
            Ok(r) => restarts.push(r),
            Err(e) => eprintln!("bench: {}: {e}", proto.name()),
        }
    }
    // Last, on an idle machine: the scheduler's floor under the restart window.
    let sched = cpus.server.or(allowed.first().copied()).map(|cpu| {
        sched::probe(
            cpu,
            if cfg.quick {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(2)
            },
        )
    });
    let results = Results {
        config: cfg.clone(),
        machine,
        startup,
        steady,
        restarts,
        sched,
        wall: started.elapsed(),
    };
    let parked = parked::run(&cfg, &bins, &cpus);
    print!("{}", results.table());
    match &parked {
        Ok(p) => p.print(),
        Err(e) => println!("probation: {e}"),
    }
    println!("{}", results.summary());
    if let Some(p) = &cfg.json {
        match std::fs::write(
            p,
            serde_json::to_string_pretty(&results.json()).expect("json"),
        ) {
            Ok(()) => eprintln!("bench: wrote {}", p.display()),
            Err(e) => {
                eprintln!("ceaseless-bench: cannot write {}: {e}", p.display());
                return std::process::ExitCode::from(1);
            }
        }
    }
    std::process::ExitCode::SUCCESS
}

/// Starts `bin` and waits until it answers; the server and the time it took.
fn start_server(
    bin: &Path,
    args: &[String],
    addr: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
    cpus: &Cpus,
) -> Result<(Server, Duration, Option<f64>), String> {
    let mut s = procs::spawn(bin, args, cpus.server).map_err(|e| format!("spawn: {e}"))?;
    let wall0 = procs::wall_us(SystemTime::now());
    match probe::wait_serving(
        addr,
        tls,
        None,
        Duration::from_micros(500),
        Duration::from_secs(20),
    ) {
        Ok(serving) => {
            s.pid = serving.pid;
            let took = serving.at - s.spawned_at;
            let logged = s
                .log
                .wait_for(0, Duration::from_secs(1), |l| {
                    l.text.contains("serving pid=")
                })
                .and_then(|l| l.ts_us)
                .map(|ts| (ts - wall0) as f64 / 1000.0);
            Ok((s, took, logged))
        }
        Err((probes, errors)) => {
            procs::stop(s.pid, Duration::from_secs(1));
            Err(format!(
                "{} did not answer after {probes} probes: {:?}; log: {:?}",
                bin.display(),
                errors.last(),
                s.log.tail(5)
            ))
        }
    }
}

fn run_startup(cfg: &Config, bins: &Bins, cpus: &Cpus, scratch: &Scratch) -> Vec<StartupResult> {
    eprintln!("bench: start-up × {}", cfg.startup_samples);
    let tls = load::client_config(&scratch.cert_der, &[b"http/1.1"]);
    let cert_args = [
        "--cert".to_string(),
        scratch.cert.display().to_string(),
        "--key".into(),
        scratch.key.display().to_string(),
    ];
    let mut out = Vec::new();
    for (name, bin, is_tls) in [
        ("ceaseless", &bins.hello, false),
        ("ceaseless-tls", &bins.tls, true),
        ("bare", &bins.bare, false),
    ] {
        let mut r = StartupResult {
            name: name.into(),
            ms: Vec::new(),
            log_ms: Vec::new(),
        };
        for _ in 0..cfg.startup_samples {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let mut args = vec!["--addr".to_string(), addr.to_string()];
            if is_tls {
                args.extend(cert_args.iter().cloned());
            }
            if name == "ceaseless" {
                args.extend(hello_args(cfg));
            }
            let probe_tls = is_tls.then_some(&tls);
            match start_server(bin, &args, addr, probe_tls, cpus) {
                Ok((s, took, logged)) => {
                    r.ms.push(ms(took));
                    if let Some(l) = logged {
                        r.log_ms.push(l);
                    }
                    procs::stop(s.pid, Duration::from_secs(5));
                }
                Err(e) => eprintln!("bench: start-up: {e}"),
            }
        }
        out.push(r);
    }
    out
}

/// Idle resources of hello and bare started without pinning: one tokio worker per
/// core, as in a real deployment (pinned to one CPU, tokio starts one worker).
fn run_idle_unpinned(cfg: &Config, bins: &Bins) -> Vec<IdleResources> {
    let unpinned = Cpus {
        server: None,
        client: None,
        client_threads: 1,
    };
    let mut out = Vec::new();
    for (name, bin) in [("bare", &bins.bare), ("ceaseless", &bins.hello)] {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut args = vec!["--addr".to_string(), addr.to_string()];
        if name == "ceaseless" {
            args.extend(hello_args(cfg));
        }
        match start_server(bin, &args, addr, None, &unpinned) {
            Ok((s, _, _)) => {
                std::thread::sleep(Duration::from_millis(300));
                out.push(IdleResources {
                    name: name.to_string(),
                    rss_kib: procs::rss_kib(s.pid).unwrap_or(0),
                    fds: procs::fd_count(s.pid).unwrap_or(0),
                    threads: procs::threads(s.pid).unwrap_or(0),
                });
                procs::stop(s.pid, Duration::from_secs(5));
            }
            Err(e) => eprintln!("bench: idle (unpinned): {e}"),
        }
    }
    out
}

/// Samples a process's RSS until told to stop; the largest value seen.
struct RssSampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicU64::new(0));
        let (s, m) = (stop.clone(), max.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = procs::rss_kib(pid) {
                    m.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssSampler {
            stop,
            max,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.max.load(Ordering::Relaxed)
    }
}

/// One steady-state run of `client` against the server at `addr`.
#[allow(clippy::too_many_arguments)]
fn steady_once(
    client: &str,
    addr: SocketAddr,
    pid: u32,
    cfg: &Config,
    cpus: &Cpus,
    rt: &tokio::runtime::Runtime,
    duration: Duration,
    scratch: &Scratch,
) -> Result<SideRun, String> {
    let cpu0 = procs::cpu_us(pid);
    let t0 = Instant::now();
    let rss = RssSampler::start(pid);
    let (requests, errors, rps, p50, p99) = match client {
        "internal" => {
            let target = Arc::new(Target::new(addr, Proto::H1, None));
            let load = Load::start(rt, target, cfg.connections);
            std::thread::sleep(duration);
            let (st, elapsed) = load.stop(rt);
            let h = st.all();
            (
                st.ok,
                st.failed,
                st.ok as f64 / elapsed.as_secs_f64(),
                h.value_at_quantile(0.5) as f64,
                h.value_at_quantile(0.99) as f64,
            )
        }
        "wrk" => {
            let r = ext::wrk(
                addr,
                cfg.connections,
                cpus.client_threads,
                duration,
                cpus.client,
            )?;
            (r.requests, r.errors, r.rps, r.p50_us, r.p99_us)
        }
        "h2load" => {
            let streams = load::H2_STREAMS_PER_CONN;
            let conns = cfg.connections.div_ceil(streams).max(1);
            let r = ext::h2load(addr, conns, streams, duration, cpus.client, &scratch.dir)?;
            (r.requests, r.errors, r.rps, r.p50_us, r.p99_us)
        }
        other => return Err(format!("unknown client {other}")),
    };
    let rss_max = rss.finish();
    let cpu1 = procs::cpu_us(pid);
    let wall = t0.elapsed().as_secs_f64() * 1e6;
    let cpu_per_req = match (cpu0, cpu1) {
        (Some(a), Some(b)) if requests > 0 => Some((b - a) as f64 / requests as f64),
        _ => None,
    };
    let cpu_share = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some((b - a) as f64 / wall),
        _ => None,
    };
    Ok(SideRun {
        requests,
        errors,
        rps,
        p50_us: p50,
        p99_us: p99,
        cpu_us_per_req: cpu_per_req,
        server_cpu: cpu_share,
        rss_max_kib: rss_max,
    })
}

fn run_steady(
    cfg: &Config,
    bins: &Bins,
    cpus: &Cpus,
    rt: &tokio::runtime::Runtime,
    scratch: &Scratch,
) -> SteadyResults {
    let mut res = SteadyResults::default();
    let mut servers = Vec::new();
    // The same handler on both sides (bench/src/handler.rs): hello's `GET /` does more.
    for (name, bin) in [("bare", &bins.bare), ("ceaseless", &bins.served)] {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        match start_server(bin, &["--addr".into(), addr.to_string()], addr, None, cpus) {
            Ok((s, _, _)) => servers.push((name, addr, s)),
            Err(e) => {
                eprintln!("bench: steady state: {e}");
                for (_, _, s) in servers {
                    procs::stop(s.pid, Duration::from_secs(5));
                }
                return res;
            }
        }
    }
    // Idle: started, answered one request, left alone a moment.
    std::thread::sleep(Duration::from_millis(300));
    for (name, _, s) in &servers {
        res.idle.push(IdleResources {
            name: name.to_string(),
            rss_kib: procs::rss_kib(s.pid).unwrap_or(0),
            fds: procs::fd_count(s.pid).unwrap_or(0),
            threads: procs::threads(s.pid).unwrap_or(0),
        });
    }
    for client in &cfg.clients {
        eprintln!(
            "bench: steady state, {client}: {} rounds × {} s per side, alternating",
            cfg.rounds,
            cfg.duration.as_secs()
        );
        let mut c = SteadyClient {
            client: client.clone(),
            bare: Vec::new(),
            ceaseless: Vec::new(),
        };
        // Warm-up, not recorded: connection set-up, allocator, caches.
        for (_, addr, s) in &servers {
            let _ = steady_once(
                client,
                *addr,
                s.pid,
                cfg,
                cpus,
                rt,
                Duration::from_secs(1),
                scratch,
            );
        }
        for round in 0..cfg.rounds {
            // Alternate which side goes first, so that drift favours neither.
            let order: Vec<usize> = if round % 2 == 0 {
                vec![0, 1]
            } else {
                vec![1, 0]
            };
            for i in order {
                let (name, addr, s) = &servers[i];
                match steady_once(client, *addr, s.pid, cfg, cpus, rt, cfg.duration, scratch) {
                    Ok(r) => {
                        eprintln!(
                            "bench:   {client} {name:<9} {:>9.0} req/s  p50 {:>7.0} µs  p99 {:>7.0} µs  server cpu {:>5.2} µs/req, {:>3.0} %",
                            r.rps,
                            r.p50_us,
                            r.p99_us,
                            r.cpu_us_per_req.unwrap_or(f64::NAN),
                            r.server_cpu.unwrap_or(f64::NAN) * 100.0
                        );
                        if *name == "bare" {
                            c.bare.push(r)
                        } else {
                            c.ceaseless.push(r)
                        }
                    }
                    Err(e) => eprintln!("bench: {client} {name}: {e}"),
                }
            }
        }
        res.clients.push(c);
    }
    for (name, _, s) in &servers {
        res.peak.push(IdleResources {
            name: name.to_string(),
            rss_kib: procs::hwm_kib(s.pid).unwrap_or(0),
            fds: 0,
            threads: 0,
        });
    }
    for (_, _, s) in servers {
        procs::stop(s.pid, Duration::from_secs(5));
    }
    res
}

/// Open fds of an idle process, once the count has settled (closed connections can
/// take a moment to go).
fn settled_fds(pid: u32) -> usize {
    let mut last = procs::fd_count(pid).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut stable_since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let n = procs::fd_count(pid).unwrap_or(0);
        if n != last {
            last = n;
            stable_since = Instant::now();
        } else if stable_since.elapsed() >= Duration::from_millis(300) {
            break;
        }
    }
    last
}

fn run_restarts(
    cfg: &Config,
    bins: &Bins,
    cpus: &Cpus,
    rt: &tokio::runtime::Runtime,
    scratch: &Scratch,
    proto: Proto,
) -> Result<RestartRun, String> {
    eprintln!(
        "bench: restarts under load, {}: {} × SIGHUP, {} concurrent requests",
        proto.name(),
        cfg.restarts,
        cfg.connections
    );
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (bin, args, load_tls, probe_tls) = if proto.is_tls() {
        let alpn: &[&[u8]] = if proto.is_h2() {
            &[b"h2"]
        } else {
            &[b"http/1.1"]
        };
        (
            &bins.tls,
            vec![
                "--addr".to_string(),
                addr.to_string(),
                "--cert".into(),
                scratch.cert.display().to_string(),
                "--key".into(),
                scratch.key.display().to_string(),
            ],
            Some(load::client_config(&scratch.cert_der, alpn)),
            Some(load::client_config(&scratch.cert_der, &[b"http/1.1"])),
        )
    } else {
        let mut args = vec!["--addr".to_string(), addr.to_string()];
        args.extend(hello_args(cfg));
        if let Some(mb) = cfg.ballast_mb {
            args.extend(["--ballast-mb".to_string(), mb.to_string()]);
        }
        (&bins.hello, args, None, None)
    };
    let mut args = args;
    if let Some(ms) = cfg.drain_spread_ms {
        args.extend(["--drain-spread-ms".to_string(), ms.to_string()]);
    }
    let (mut server, _, _) = start_server(bin, &args, addr, probe_tls.as_ref(), cpus)?;
    std::thread::sleep(Duration::from_millis(300));
    let first_pid = server.pid;
    let first_fds = settled_fds(first_pid);
    let first_fd_kinds = procs::fd_kinds(first_pid);
    let first_rss = procs::rss_kib(first_pid).unwrap_or(0);

    let target = Arc::new(Target::new(addr, proto, load_tls));
    let load = Load::start(rt, target, cfg.connections);
    std::thread::sleep(cfg.gap.max(Duration::from_millis(500)));
    let mut samples = Vec::new();
    let mut rss_load_max = 0;
    let mut sighups = Vec::new();
    for i in 0..cfg.restarts {
        rss_load_max = rss_load_max.max(procs::rss_kib(server.pid).unwrap_or(0));
        sighups.push(u32::try_from(load::epoch().elapsed().as_millis()).unwrap_or(u32::MAX));
        let s = restart_once(&mut server, addr, probe_tls.as_ref(), &load.control);
        match &s.error {
            None => eprintln!(
                "bench:   {} #{:<2} pid {} → {}: serving after {:.1} ms, ready after {}, old gone {} after ready",
                proto.name(),
                i + 1,
                s.old_pid,
                s.new_pid.unwrap_or(0),
                s.sighup_to_serving_ms.unwrap_or(f64::NAN),
                opt_ms(s.sighup_to_ready_ms),
                opt_ms(s.ready_to_exit_ms),
            ),
            Some(e) => eprintln!("bench:   {} #{} failed: {e}", proto.name(), i + 1),
        }
        let failed = s.error.is_some();
        samples.push(s);
        if failed && samples.iter().filter(|s| s.error.is_some()).count() >= 3 {
            eprintln!("bench: {}: three restarts failed; giving up", proto.name());
            break;
        }
        std::thread::sleep(cfg.gap);
    }
    let (mut stats, elapsed) = load.stop(rt);
    if let Some(dir) = &cfg.plots {
        let path = dir.join(format!("latency-{}.svg", proto.name()));
        let title = format!(
            "{}: latency of {} concurrent keep-alive requests, {} SIGHUPs (grey)",
            proto.name(),
            cfg.connections,
            sighups.len()
        );
        let drawn = std::fs::create_dir_all(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))
            .and_then(|()| plot::latency_svg(&path, &title, &stats.timeline, &sighups));
        match drawn {
            Ok(()) => eprintln!("bench: drew {}", path.display()),
            Err(e) => eprintln!("bench: cannot draw the latency picture: {e}"),
        }
    }
    stats.timeline = Vec::new();
    let last_pid = server.pid;
    let last_fds = settled_fds(last_pid);
    let last_fd_kinds = procs::fd_kinds(last_pid);
    let last_rss = procs::rss_kib(last_pid).unwrap_or(0);
    procs::stop(last_pid, Duration::from_secs(5));
    let probe_requests = samples.iter().map(|s| s.probes).sum();
    let probe_failures = samples.iter().map(|s| s.probe_errors.len() as u64).sum();
    Ok(RestartRun {
        proto,
        samples,
        stats,
        elapsed,
        probe_requests,
        probe_failures,
        first_pid,
        last_pid,
        first_fds,
        last_fds,
        first_fd_kinds,
        last_fd_kinds,
        first_rss_kib: first_rss,
        last_rss_kib: last_rss,
        load_rss_kib: rss_load_max,
    })
}

/// One SIGHUP, timed from the outside (probes, pidfd) and from the servers' logs.
fn restart_once(
    server: &mut Server,
    addr: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
    ctl: &load::Control,
) -> RestartSample {
    let old = server.pid;
    let mut s = RestartSample {
        old_pid: old,
        ..Default::default()
    };
    let pidfd = match procs::pidfd_open(old) {
        Ok(fd) => fd,
        Err(e) => {
            s.error = Some(format!("pidfd_open({old}): {e}"));
            return s;
        }
    };
    let exit_watch = std::thread::spawn(move || procs::wait_exit(&pidfd, Duration::from_secs(90)));
    let mark = server.log.len();
    let t0 = Instant::now();
    let wall0 = procs::wall_us(SystemTime::now());
    let wall = |t: Instant| wall0 + t.saturating_duration_since(t0).as_micros() as i64;
    ctl.set_window(load::STARTING);
    procs::kill(old, libc::SIGHUP);
    let serving = probe::wait_serving(
        addr,
        tls,
        Some(old),
        Duration::from_micros(500),
        Duration::from_secs(20),
    );
    ctl.set_window(load::HANDING_OVER);
    let exited = exit_watch.join().ok().flatten();
    ctl.set_window(0);
    for _ in 0..200 {
        if procs::reap(old) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    match serving {
        Ok(sv) => {
            s.new_pid = Some(sv.pid);
            s.probes = sv.probes;
            s.probe_errors = sv.errors;
            s.sighup_to_serving_ms = Some(ms(sv.at - t0));
            server.pid = sv.pid;
        }
        Err((probes, errors)) => {
            s.probes = probes;
            s.probe_errors = errors;
            s.error = Some("no new generation answered within 20 s".into());
        }
    }
    let log = &server.log;
    let started = log.wait_for(mark, Duration::from_secs(2), |l| {
        l.text.contains("started the next generation") && l.pid("pid") == Some(old)
    });
    s.spawn_us = started
        .as_ref()
        .and_then(|l| l.field("spawn_us")?.parse().ok());
    s.spawn_forked = started
        .as_ref()
        .and_then(|l| l.field("forked"))
        .map(|f| f == "true");
    let ready = log.wait_for(mark, Duration::from_secs(2), |l| {
        l.text.contains("restart succeeded") && l.pid("pid") == Some(old)
    });
    let ready_ts = ready.as_ref().and_then(|l| l.ts_us);
    s.sighup_to_ready_ms = ready_ts.map(|ts| (ts - wall0) as f64 / 1000.0);
    if let Some(new) = ready.as_ref().and_then(|l| l.pid("new_pid")) {
        if s.new_pid.is_some_and(|p| p != new) {
            s.error = Some(format!(
                "the log says pid {new} took over, the probe saw {:?}",
                s.new_pid
            ));
        }
        let serving_log = log.wait_for(mark, Duration::from_secs(1), |l| {
            l.text.contains("serving pid=") && l.pid("pid") == Some(new)
        });
        s.sighup_to_serving_log_ms = serving_log
            .and_then(|l| l.ts_us)
            .map(|ts| (ts - wall0) as f64 / 1000.0);
    }
    match exited {
        Some(at) => {
            s.sighup_to_exit_ms = Some(ms(at - t0));
            s.ready_to_exit_ms = ready_ts.map(|r| (wall(at) - r) as f64 / 1000.0);
        }
        None => {
            s.error
                .get_or_insert_with(|| format!("the old generation {old} did not exit"));
        }
    }
    let drained = log.wait_for(mark, Duration::from_millis(200), |l| {
        l.text.contains("drained; server stopped") && l.pid("pid") == Some(old)
    });
    if let (Some(d), Some(r)) = (drained.and_then(|l| l.ts_us), ready_ts) {
        s.ready_to_drained_log_ms = Some((d - r) as f64 / 1000.0);
    }
    s
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("?".into(), |v| format!("{v:.1} ms"))
}

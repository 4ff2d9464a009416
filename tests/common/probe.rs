//! Health probes as a load balancer sends them: one fresh TCP connection per probe.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::generations::LONG;
use crate::common::load::{connect_tcp, exchange_blocking};

/// One probe of `path`: the status, or the connect/exchange error.
pub fn probe(addr: &str, path: &str) -> Result<u16, String> {
    let mut s = connect_tcp(addr).map_err(|e| format!("connect: {e}"))?;
    exchange_blocking(&mut s, path).map(|r| r.status)
}

/// Probes `/healthz` on fresh connections every 5 ms until stopped.
pub struct Prober {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Result<u16, String>>>>,
    handle: std::thread::JoinHandle<()>,
}

impl Prober {
    pub fn start(addr: String) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handle = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                // Bounded: at most ten minutes' worth of probes.
                for _ in 0..120_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = probe(&addr, "/healthz");
                    seen.lock().unwrap().push(r);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Prober { stop, seen, handle }
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn wait_for(&self, n: usize) {
        let deadline = Instant::now() + LONG;
        while self.count() < n {
            assert!(Instant::now() < deadline, "the prober stalled");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn stop(self) -> Vec<Result<u16, String>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap();
        Arc::try_unwrap(self.seen).unwrap().into_inner().unwrap()
    }
}

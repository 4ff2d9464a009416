//! Signal dispatch and the pre/post hooks.
//!
//! One task per process receives HUP, USR1, USR2, INT, TERM and TSTP (or the subset the
//! process was configured to take), whatever the number of servers, and handles them
//! one at a time in arrival order: pre hooks, the process owner's action, post hooks.
//! On Windows the console's events stand for the two that ask for a graceful shutdown:
//! Ctrl-C is [`Signal::Int`]; Ctrl-Break, the console closing and the system shutting
//! down are [`Signal::Term`]. The other four have no counterpart there.
//! The actions are the owner's ([`Actions`]): this module only turns signals into
//! requests. A signal that arrives while a hook runs waits in
//! tokio's signal stream; it is not lost (several deliveries of the same signal while
//! one is being handled may merge into one, as the kernel merges them too).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use std::task::{Context, Poll};

use crate::error::Error;

/// The signals ceaseless listens to, as endless does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// SIGHUP: restart (start the next generation and hand the listeners over).
    Hup,
    /// SIGUSR1: runs its hooks only.
    Usr1,
    /// SIGUSR2: hammer (close every connection now), only while already draining.
    Usr2,
    /// SIGINT: graceful shutdown.
    Int,
    /// SIGTERM: graceful shutdown.
    Term,
    /// SIGTSTP: runs its hooks, then stops the process as the default action would.
    Tstp,
}

impl Signal {
    /// All six, in a fixed order.
    pub const ALL: [Signal; 6] = [
        Signal::Hup,
        Signal::Usr1,
        Signal::Usr2,
        Signal::Int,
        Signal::Term,
        Signal::Tstp,
    ];

    /// Where this signal comes from: one source on Unix; on Windows the console events
    /// that stand for it (module docs), none for the four that have no counterpart.
    #[cfg(unix)]
    fn sources(self) -> std::io::Result<Vec<Source>> {
        use tokio::signal::unix::{signal, SignalKind};
        let kind = match self {
            Signal::Hup => SignalKind::hangup(),
            Signal::Usr1 => SignalKind::user_defined1(),
            Signal::Usr2 => SignalKind::user_defined2(),
            Signal::Int => SignalKind::interrupt(),
            Signal::Term => SignalKind::terminate(),
            Signal::Tstp => SignalKind::from_raw(crate::sys::process::Signal::TSTP.as_raw()),
        };
        let mut s = signal(kind)?;
        Ok(vec![Box::new(move |cx: &mut Context<'_>| s.poll_recv(cx))])
    }

    #[cfg(windows)]
    fn sources(self) -> std::io::Result<Vec<Source>> {
        use tokio::signal::windows;
        Ok(match self {
            Signal::Int => {
                let mut c = windows::ctrl_c()?;
                vec![Box::new(move |cx: &mut Context<'_>| c.poll_recv(cx))]
            }
            Signal::Term => {
                let (mut b, mut c, mut s) = (
                    windows::ctrl_break()?,
                    windows::ctrl_close()?,
                    windows::ctrl_shutdown()?,
                );
                vec![
                    Box::new(move |cx: &mut Context<'_>| b.poll_recv(cx)),
                    Box::new(move |cx: &mut Context<'_>| c.poll_recv(cx)),
                    Box::new(move |cx: &mut Context<'_>| s.poll_recv(cx)),
                ]
            }
            Signal::Hup | Signal::Usr1 | Signal::Usr2 | Signal::Tstp => Vec::new(),
        })
    }

    /// The conventional name, e.g. `"SIGHUP"`.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Hup => "SIGHUP",
            Signal::Usr1 => "SIGUSR1",
            Signal::Usr2 => "SIGUSR2",
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
            Signal::Tstp => "SIGTSTP",
        }
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// When a hook runs relative to the library's own handling of the signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Before ceaseless acts on the signal.
    Pre,
    /// After it acted (for SIGHUP: once the restart's outcome is known; for SIGTSTP:
    /// once the process is continued).
    Post,
}

pub(crate) type Hook = Arc<dyn Fn() + Send + Sync + 'static>;

/// The process's hooks, in registration order.
#[derive(Default)]
pub(crate) struct Hooks {
    map: Mutex<HashMap<(Signal, Stage), Vec<Hook>>>,
}

impl Hooks {
    pub(crate) fn add(&self, sig: Signal, stage: Stage, hook: Hook) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((sig, stage))
            .or_default()
            .push(hook);
    }

    /// Runs the hooks for a signal and stage. A panicking hook is logged and skipped.
    pub(crate) fn run(&self, sig: Signal, stage: Stage) {
        let hooks: Vec<Hook> = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(sig, stage))
            .cloned()
            .unwrap_or_default();
        for h in hooks {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h())).is_err() {
                tracing::error!(signal = %sig, ?stage, "a signal hook panicked");
            }
        }
    }
}

/// One source of a signal: ready with `Some` each time it arrives, `None` once the
/// runtime shuts down.
type Source = Box<dyn FnMut(&mut Context<'_>) -> Poll<Option<()>> + Send>;

/// What the process owner does on a signal.
pub(crate) trait Actions: Send + Sync + 'static {
    /// SIGHUP: start a restart in the background; `settled` runs once its outcome is
    /// known, before this generation starts draining.
    #[cfg(unix)]
    fn restart(&self, settled: Box<dyn FnOnce() + Send>);
    /// SIGINT, SIGTERM. False if already draining.
    fn shutdown(&self) -> bool;
    /// SIGUSR2. False if not draining (then it is ignored).
    fn hammer(&self) -> bool;
}

/// Installs the handlers for `taken` and starts the dispatch task.
pub(crate) fn start(
    taken: &[Signal],
    hooks: Arc<Hooks>,
    actions: Arc<dyn Actions>,
) -> Result<(), Error> {
    let mut streams = Vec::with_capacity(taken.len());
    for &sig in taken {
        for source in sig.sources().map_err(Error::Signal)? {
            streams.push((sig, source));
        }
    }
    if streams.is_empty() {
        return Ok(());
    }
    tokio::spawn(async move {
        loop {
            // The first stream with a signal waiting (each poll takes one at most).
            let got = std::future::poll_fn(|cx| {
                for (sig, s) in streams.iter_mut() {
                    if let Poll::Ready(r) = s(cx) {
                        return Poll::Ready(r.map(|()| *sig));
                    }
                }
                Poll::Pending
            })
            .await;
            match got {
                Some(sig) => handle(&hooks, &actions, sig),
                None => return, // the runtime is shutting down
            }
        }
    });
    Ok(())
}

fn handle(hooks: &Arc<Hooks>, actions: &Arc<dyn Actions>, sig: Signal) {
    let pid = std::process::id();
    tracing::info!(pid, signal = %sig, "received signal");
    hooks.run(sig, Stage::Pre);
    match sig {
        #[cfg(unix)]
        Signal::Hup => {
            // The restart takes a while; the dispatcher must stay free for TERM/USR2.
            // The outcome is logged by the restart itself; the post hooks run once it
            // is known, before this generation drains (and exits).
            let hooks = hooks.clone();
            actions.restart(Box::new(move || hooks.run(Signal::Hup, Stage::Post)));
            return;
        }
        Signal::Int | Signal::Term => {
            if actions.shutdown() {
                tracing::info!(pid, "shutting down gracefully");
            } else {
                tracing::info!(pid, "already draining");
            }
        }
        Signal::Usr2 => {
            if !actions.hammer() {
                tracing::info!(pid, "SIGUSR2 ignored: the server is not shutting down");
            }
        }
        Signal::Usr1 => {}
        // Neither arrives on Windows (module docs).
        #[cfg(not(unix))]
        Signal::Hup | Signal::Tstp => {}
        #[cfg(unix)]
        Signal::Tstp => {
            // Our handler replaced the default action; do what it would have done. The
            // stop must be directed at this thread (raise, not kill of the pid): a
            // process-wide SIGSTOP may be taken by another thread, and this one would run
            // the post hooks before the process stops.
            crate::sys::process::stop_this_thread();
        }
    }
    hooks.run(sig, Stage::Post);
}

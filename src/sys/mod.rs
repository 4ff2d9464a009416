//! The OS layer: every system call ceaseless makes goes through here.
//!
//! Everything above this module speaks in ceaseless's terms (a descriptor's kind, a
//! process to signal or watch, a sealed file of state, the next generation to start)
//! and never names `libc`. This layer calls nothing of ceaseless above it: what it needs
//! to know (which descriptor numbers were announced to the process) it is handed.
//!
//! # Which crate does what
//! - **rustix** (safe, portable): descriptor flags and `fstat`, `SCM_RIGHTS` messages
//!   ([`fdpass`]), socket options, signals to processes (`kill`, `pidfd_send_signal`),
//!   pidfds, `memfd_create` and seals, pipes, `poll`, `wait`/`waitpid`, the child
//!   subreaper (Linux) and the reaper (FreeBSD).
//! - **nix** where rustix has nothing or where its way does not suit: `getpeereid` and
//!   Apple's `LOCAL_PEERPID` off Linux, the supervisor's signalfd ([`reaper`]) on Linux,
//!   raising SIGSTOP on this thread, and the clocks ([`clock`] says why not rustix's).
//! - **std, tokio and signal-hook**: processes started with a fork
//!   (`Command::pre_exec`), signal handlers (tokio's; signal-hook's self-pipe for the
//!   supervisor, which has no runtime, off Linux and in the portable mode), files.
//! - **Hand-written** (`libc`, `unsafe`), each block with its `// SAFETY:` argument:
//!   - [`spawn`]: `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)` with a stack of its
//!     own, which no crate offers with the signal dispositions and descriptor layout a
//!     new generation needs (that module's docs say why it exists at all);
//!   - [`child`]: what runs between fork (or clone) and exec must be
//!     async-signal-safe and must work on descriptor *numbers* the child does not own
//!     as Rust values, so `sigaction`, `fcntl(F_DUPFD_CLOEXEC)` and `dup2` are called
//!     raw there;
//!   - [`fd::take_inherited`]: a descriptor number handed over by the previous
//!     generation becomes an `OwnedFd` (`from_raw_fd`), which is unsafe by nature;
//!     so does the supervisor's report channel a generation was handed
//!     ([`reaper::take_channel`]).
//!
//! # Platforms and the portable mode
//! Linux uses what only Linux has: the clone above, pidfds (a process watched and
//! signalled without any pid race), `memfd_create` with seals, `/proc` for a process's
//! start time. macOS and FreeBSD use portable mechanisms instead: the next generation
//! is forked and executed, the state and the TLS ticket key travel in an unlinked,
//! read-only temporary file, a process that is not our child is watched by polling
//! (its existence, or this process's parent pid), the supervisor reads its signals from
//! a self-pipe. [`portable`] says which: always off Linux, and on Linux when
//! `CEASELESS_PORTABLE` is set (to anything but `0`), which is how the test suite
//! runs those mechanisms on this platform too.

#![allow(unsafe_code)]

/// Runs `$f` (an `extern "C" fn()`) when the binary is loaded, before `main`: from ELF's
/// `.init_array` (Linux, FreeBSD) or Mach-O's `__mod_init_func` (macOS). Elsewhere it
/// never runs, and the code that depends on it falls back to doing its work on first
/// use. Only for work that reads the environment and touches descriptors: no runtime,
/// no logger exists yet.
macro_rules! before_main {
    ($name:ident, $f:path) => {
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
        #[allow(unsafe_code)]
        #[used]
        #[link_section = ".init_array"]
        static $name: extern "C" fn() = $f;
        #[cfg(target_vendor = "apple")]
        #[allow(unsafe_code)]
        #[used]
        #[link_section = "__DATA,__mod_init_func"]
        static $name: extern "C" fn() = $f;
    };
}
pub(crate) use before_main;

pub(crate) mod child;
pub(crate) mod clock;
pub(crate) mod fd;
pub(crate) mod fdpass;
pub(crate) mod process;
pub(crate) mod reaper;
pub(crate) mod sealed;
#[cfg(target_os = "linux")]
pub(crate) mod spawn;

use std::sync::OnceLock;

/// Set (to anything but `0`), Linux uses the mechanisms of macOS and FreeBSD (module
/// docs): for the tests of those, and for a sandbox that refuses one of Linux's calls.
pub(crate) const PORTABLE_ENV: &str = "CEASELESS_PORTABLE";

/// Whether the portable mechanisms are used (module docs): always off Linux; on Linux
/// when [`PORTABLE_ENV`] is set. Read once.
pub(crate) fn portable() -> bool {
    static PORTABLE: OnceLock<bool> = OnceLock::new();
    *PORTABLE.get_or_init(|| {
        !cfg!(target_os = "linux")
            || std::env::var_os(PORTABLE_ENV).is_some_and(|v| !v.is_empty() && v != "0")
    })
}

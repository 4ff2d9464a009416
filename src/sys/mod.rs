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
//!   - `scoped_borrow!`: a borrow lent to the calls inside a scope on this thread (the
//!     request's connection context), the one `unsafe` that is not a system call; the
//!     macro's docs say why not the `scoped-tls` crate;
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
#[cfg(unix)]
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
#[cfg(unix)]
pub(crate) use before_main;

/// Declares a module `$name` that lends a `&$ty` to the calls made inside a scope on
/// this thread: `$name::set(&value, f)` runs `f` with the value lent, and
/// `$name::with(g)` (inside `f`, however deep) gives `g` a shared borrow of it, `None`
/// outside any `set`. The request's connection context is lent so around each poll.
///
/// Hand-written, not the `scoped-tls` crate's: that one reaches its thread-local through
/// a `&'static LocalKey` held in a field, an indirect call on every access, which cost
/// about 110 instructions of a request around ceaseless's polls (callgrind, HTTP/1.1,
/// see BENCHMARKS.md); here the thread-local is a static of its own, reached inline.
/// The one `unsafe` that is not a system call, argued where it stands.
macro_rules! scoped_borrow {
    ($(#[$meta:meta])* $vis:vis mod $name:ident: $ty:ty) => {
        $(#[$meta])*
        $vis mod $name {
            #[allow(unused_imports)]
            use super::*;

            ::std::thread_local! {
                static SLOT: ::std::cell::Cell<*const $ty> =
                    const { ::std::cell::Cell::new(::std::ptr::null()) };
            }

            /// Puts the previous value back, on the way out of `set` (panics included).
            struct Reset(*const $ty);

            impl Drop for Reset {
                #[inline]
                fn drop(&mut self) {
                    SLOT.with(|c| c.set(self.0));
                }
            }

            /// Runs `f` with `value` lent to [`with`] on this thread.
            #[inline]
            pub(crate) fn set<R>(value: &$ty, f: impl FnOnce() -> R) -> R {
                let _reset = Reset(SLOT.with(|c| c.replace(value)));
                f()
            }

            /// `f` of the value lent by the innermost [`set`] running on this thread;
            /// `None` outside any.
            #[inline]
            #[allow(unsafe_code)]
            pub(crate) fn with<R>(f: impl FnOnce(&$ty) -> R) -> Option<R> {
                let lent = SLOT.with(::std::cell::Cell::get);
                // SAFETY: the pointer is non-null only while a `set` runs on this thread
                // (its `Reset` restores the previous value on every way out, so the
                // scopes nest), and it points to the value that `set` borrows for its
                // whole call, which outlives this one; `f` gets a shared borrow for its
                // own call only (its result cannot hold it), and a shared borrow is all
                // `set` was given.
                unsafe { lent.as_ref() }.map(f)
            }
        }
    };
}
pub(crate) use scoped_borrow;

#[cfg(unix)]
pub(crate) mod child;
pub(crate) mod clock;
#[cfg(unix)]
pub(crate) mod fd;
#[cfg(unix)]
pub(crate) mod fdpass;
#[cfg(unix)]
pub(crate) mod memory;
pub(crate) mod net;
#[cfg(unix)]
pub(crate) mod process;
#[cfg(unix)]
pub(crate) mod reaper;
#[cfg(unix)]
pub(crate) mod sealed;
#[cfg(target_os = "linux")]
pub(crate) mod spawn;

/// The platform's name, for the errors that say what it lacks.
pub(crate) const PLATFORM: &str = if cfg!(target_os = "linux") {
    "Linux"
} else if cfg!(target_vendor = "apple") {
    "macOS"
} else if cfg!(target_os = "freebsd") {
    "FreeBSD"
} else if cfg!(windows) {
    "Windows"
} else {
    std::env::consts::OS
};

/// The platform, where no supervisor can run (it has no way to become the reaper of its
/// descendants: macOS); `None` on Linux and FreeBSD. (On Windows nothing of the
/// supervisor is built.)
#[cfg(unix)]
pub(crate) const SUPERVISOR_UNSUPPORTED: Option<&str> =
    if cfg!(any(target_os = "linux", target_os = "freebsd")) {
        None
    } else {
        Some(PLATFORM)
    };

/// Set (to anything but `0`), Linux uses the mechanisms of macOS and FreeBSD (module
/// docs): for the tests of those, and for a sandbox that refuses one of Linux's calls.
#[cfg(unix)]
pub(crate) const PORTABLE_ENV: &str = "CEASELESS_PORTABLE";

/// Whether the portable mechanisms are used (module docs): always off Linux; on Linux
/// when [`PORTABLE_ENV`] is set. Read once.
#[cfg(unix)]
pub(crate) fn portable() -> bool {
    static PORTABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PORTABLE.get_or_init(|| {
        !cfg!(target_os = "linux")
            || std::env::var_os(PORTABLE_ENV).is_some_and(|v| !v.is_empty() && v != "0")
    })
}

//! The handover protocol between two generations, and systemd's socket activation, as
//! pure functions: no tokio, no globals, no descriptors touched. What the parent writes
//! and what the child reads are the two halves of one codec here, so they cannot drift
//! apart; the property tests below round-trip every address [`ListenAddr`] accepts.
//!
//! # The protocol
//! - The listening sockets go to descriptors 3, 4, … of the child (as in systemd's
//!   protocol). `CEASELESS_FDS` names them, one name a line, in that order:
//!   `tcp:127.0.0.1:4242`, `unix:/run/app.sock`, `unix-managed:/run/app.sock` (the
//!   socket file belongs to the service manager: never unlinked), `control:/run/c.sock`
//!   (the control socket). Paths are escaped: every byte outside `!`..=`~`, and `%`
//!   itself, is written `%XX`, so any path round-trips (relative ones too, and bytes
//!   that are not UTF-8).
//! - `CEASELESS_PARENT_PID` is the parent's pid: the child honours the set only when it
//!   is its parent (`getppid()`), so a grandchild never takes descriptors meant for
//!   another process.
//! - `CEASELESS_READY_FD` is the child's end of the readiness channel, after the
//!   listeners. If the channel is a socket, it carries the commit's exchange (the
//!   `commit` module states it and the invariant it keeps): the child writes
//!   `ready <pid>\n` once it declared ready; the parent, still accepting, answers
//!   `go\n`; the child answers `holding\n` once its servers claimed every listener it
//!   keeps; only then does the parent stop accepting and answer `live\n` (committed:
//!   the child owns the sockets and their files from now on, the parent drains). At
//!   any step before `live` the parent may answer `abort\n` instead (it keeps them; the
//!   child drains and exits). A pipe carries no answer (the supervisor starts a
//!   generation so): the child writes `ready <pid>\n` once it holds every listener,
//!   and is live at once.
//!   With a probation, the parent writes `probation <ms>` before `live` and parks: the
//!   child echoes it, and the channel stays open for the probation's exchange (the
//!   `probation` module): `rollback <trigger>` (child to parent), answered by `holding`
//!   once the parent accepts again, then `live` (child to parent: it drains); `release`
//!   (child to parent: it shuts down or restarts, the probation is over); `ended` (parent
//!   to child: the probation ended). The child's end closing without `release` is a crash:
//!   the parent takes the service back.
//!
//! - `CEASELESS_RESTART_BEGAN` is when the restart that started the child began, as
//!   `<ns on CLOCK_MONOTONIC> <ms since the Unix epoch>` (the monotonic clock is the
//!   same for every process of the machine): the child measures SIGHUP→ready with it.
//! - `CEASELESS_RESTARTS` is the restart history, which outlives each generation: a
//!   first line `totals <ok> <failed> <crash> <errors> <application> <operator>` (every
//!   restart since the first generation, then the rollbacks by trigger; a line of two
//!   numbers, from a version before rollbacks, is read too), then the most recent
//!   restarts ([`MAX_RESTARTS`] at most), oldest first, one a line:
//!   `<at, ms since the epoch> <generation> ok|failed|rolled_back:<trigger> <pid|->
//!   <SIGHUP→ready ms, or the rollback's ms|-> <ready→old-gone ms|-> <=reason, escaped as
//!   paths are|->`.
//! - `CEASELESS_DRAINING` lists the older generations still draining when the child was
//!   started, oldest first, as `<pid>@<start time>` (field 22 of `/proc/<pid>/stat`), so
//!   that the bound on draining generations never signals a reused pid.
//! - `CEASELESS_SUPERVISOR` is `<supervisor pid>:<fd>`, under the stable-PID supervisor:
//!   the child's end of the report channel (a Unix datagram socket, after the readiness
//!   channel; the child checks that the supervisor created it). Each report is one
//!   datagram: `live <pid> <start> <generation>` then one handover name a line, with the
//!   named sockets attached (`SCM_RIGHTS`); `committed <pid> <new pid>`;
//!   `failed <pid>`; `stopping <pid>`; `parked <pid> <ms>` (it handed over and parks for
//!   a probation: should the live one die, it takes the service back).
//! - `CEASELESS_ACTIVATED` is set by a socket-activated supervisor alone, when it hands
//!   systemd's sockets to a generation it starts: their socket unit's names, in the
//!   order of `CEASELESS_FDS`, written as in `LISTEN_FDNAMES`. The generation takes
//!   those sockets as activated ones (matched by those names, their files the service
//!   manager's), and is the first generation. A restart never passes it on.
//! - A takeover (see the `takeover` module) goes over the control socket instead of
//!   the environment: the newcomer sends `takeover`, the running process answers
//!   `handover <generation> <pid> <draining> <n> <name>…` (`<draining>` as in
//!   `CEASELESS_DRAINING`, `-` for none; space-separated names, as above) with the
//!   n sockets attached (`SCM_RIGHTS`), or `error <reason>`; from then on the connection
//!   is the readiness channel of a socket, with the same exchange: `ready <pid>`,
//!   `go`, `holding`, then `live` (or `abort` at any step before it).
//!
//! Each entry is validated on its own: one bad name rejects that descriptor (which is
//! closed), never the others; one bad line of the history drops that line alone (each
//! rejection is a logged [`Error::Environment`]), and a history that cannot be read at
//! all never costs the handover.
//!
//! # This folder
//! What travels from one generation to the next, and how it is taken: `codec` (the
//! names, variables and messages above), `commit` (the commit's exchange as two pure
//! state machines, property tested), `probation` (the exchange after a commit with a
//! probation, the same way), `inherit` (taking what was handed over, or
//! activated), `listen` (listening sockets, bound or inherited), `lineage` (the older
//! generations still draining), `state` (the application's state), `history` (what the
//! restarts were). It calls only the shared vocabulary and `sys`.
//!
//! On Windows, where restarts are not supported, a process is always the first and
//! only generation: only `listen`, `history` and `state`'s public items exist there.

#[cfg(unix)]
mod codec;
#[cfg(unix)]
pub(crate) mod commit;
pub(crate) mod history;
#[cfg(unix)]
pub(crate) mod inherit;
#[cfg(unix)]
pub(crate) mod lineage;
pub(crate) mod listen;
#[cfg(unix)]
pub(crate) mod probation;
pub mod state;

#[cfg(unix)]
pub(crate) use codec::*;

//! What is seen from outside a process: its status (`status`, with the restarts'
//! history it reports), metrics (`metrics`), systemd's notifications (`notify`), the
//! PID file (`pidfile`) and the control socket (`control`). Each follows the process
//! owner's transitions or reads its snapshot; none changes the lifecycle except through
//! the owner's own entry points. It calls `handover` (the history a status carries, the
//! listening socket of the control socket) and the shared vocabulary; the process owner
//! and `restart` call it. The control socket and systemd's notifications, both Unix
//! sockets, exist on Unix alone.

#[cfg(all(unix, feature = "control"))]
pub mod control;
#[cfg(all(unix, not(feature = "control")))]
pub(crate) mod control;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "metrics")]
pub(crate) mod metrics_record;
#[cfg(unix)]
pub(crate) mod notify;
pub(crate) mod pidfile;
pub mod status;

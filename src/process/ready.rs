//! Declaring ready, and leaving when the handover that started this generation is
//! called off; the exchange with the previous generation in between is `confirm`'s.

use super::*;

impl Process {
    pub(super) fn declare_ready(&self, core: &mut Core) {
        if core.state.phase != Phase::Starting {
            return;
        }
        // Nothing inherited is closed here: a server that asks for an inherited address
        // after readiness still gets it (see the `commit` module's early readiness).
        let parent = core.parent();
        // Logged before the state changes, so in the log this line precedes any restart
        // of this generation.
        tracing::info!(pid = std::process::id(), previous = ?parent, "declared ready");
        #[cfg(unix)]
        if let Some(channel) = core.inherited.ready.take() {
            core.state.phase = Phase::Confirming;
            core.emit(&Transition::Ready { first: false });
            let p = self.clone();
            self.spawn(async move { p.confirm(channel).await });
            self.inner.publisher.publish(core.state);
            return;
        }
        core.state = State {
            phase: Phase::Serving,
            live: true,
            parked: false,
        };
        core.emit(&Transition::Ready {
            first: parent.is_none(),
        });
        #[cfg(unix)]
        self.close_unclaimed_later(core);
        self.inner.publisher.publish(core.state);
    }

    /// A generation that will never be live stops: at once if it has no connection to
    /// finish (it never accepted, or what it accepted is done), whatever the
    /// application awaits (a warm-up, say); else it drains what it accepted.
    pub(super) fn abandon(&self, core: &mut Core) {
        if !core.state.live
            && core.parent().is_some()
            && self.inner.book.open_connections() == Some(0)
        {
            tracing::info!(
                pid = std::process::id(),
                "never went live and has no connection to finish; exiting now"
            );
            std::process::exit(0);
        }
        self.enter_drain(core, Served::Shutdown);
    }
}

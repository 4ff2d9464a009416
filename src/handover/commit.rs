//! The commit of a handover, as two pure state machines: the old generation's side
//! ([`Old`]) and the new generation's ([`New`]). No tokio, no descriptors, no clock: the
//! drivers (`successor` for the old side, the process owner for the new one) feed them
//! what happened and do what they answer, and the property tests below run both against
//! every interleaving of messages, deaths, timeouts, shutdowns (SIGTERM) and restarts
//! asked for meanwhile (SIGHUP).
//!
//! # The invariant
//! > From the first generation's readiness until a shutdown is asked for, at least one
//! > process accepts on every listener.
//!
//! # The exchange
//! ```text
//! old (accepts throughout)                 new
//!  starts it, listeners at fd 3, 4, …  ──►  claims its sockets, starts its servers
//!                                      ◄──  ready <pid>      (declared ready)
//!  go                                  ──►  waits until every inherited listener is
//!                                           claimed by a server (or the claim grace
//!                                           ends: see below), so it accepts on all
//!                                      ◄──  holding          (it accepts on every one)
//!  stops accepting, drains; live       ──►  live: owns the files, the PID file names it
//! ```
//! The old generation stops accepting at one step only: on reading `holding`, which the
//! new one writes only once it accepts on every listener it keeps. Every other outcome
//! — the channel closes, the new generation exits, `holding` does not come within the
//! ready timeout, a shutdown calls the restart off — is a failed restart, and the old
//! generation, which never stopped accepting, tells the new one `abort` and stops it.
//! So the invariant holds whatever the new generation does until its acknowledgement.
//!
//! After its acknowledgement the new generation *is* the service: a death after it is a
//! crash of the live generation like any later one (the supervisor starts the next one
//! on the very same sockets; without it, nothing is left to accept). The window between
//! `holding` and the old one's reading it is a crash of the live generation too.
//!
//! The new generation is not live (it owns no file, removes none at a shutdown) until
//! it reads `live`, or the channel closes after its acknowledgement (the old one
//! committed and left): until then `abort` still turns it back into a generation that
//! drains and exits. So at no moment are two generations live.
//!
//! # Early readiness
//! An application may declare ready before its servers claimed their sockets (a
//! `tokio::spawn` of the server, then `ready()`). Nothing inherited is closed at
//! readiness: the new generation answers `go` with `holding` once its servers claimed
//! every inherited listener, so a server that asks for an inherited address after
//! readiness still gets the inherited socket. A listener still unclaimed when the claim
//! grace ([`CLAIM_GRACE`]) after `go` ends is one the new version no longer serves: it
//! is closed then, and `holding` sent for the rest.

use std::time::Duration;

use crate::handover::Message;

/// How long after `go` a new generation waits for its servers to claim the inherited
/// listeners still unclaimed before it takes them as no longer served (a release that
/// dropped a port) and acknowledges without them.
pub(crate) const CLAIM_GRACE: Duration = Duration::from_secs(1);

/// What the old generation learns about its successor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    /// A message on the channel.
    Word(Message),
    /// The channel closed (the successor exited, crashed or gave up).
    Closed,
    /// The successor (our child) exited.
    Exited,
    /// The ready timeout passed.
    TimedOut,
    /// A shutdown called the restart off.
    CalledOff,
}

/// Why the handover failed, as the old generation saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The channel closed before `holding`.
    Closed,
    /// The successor exited before `holding`.
    Exited,
    /// No `holding` within the ready timeout.
    TimedOut,
    /// A shutdown called it off.
    CalledOff,
}

/// The old generation's side of the commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Old {
    /// The successor was started; waiting for `ready`.
    AwaitReady,
    /// `go` was sent; waiting for `holding`. The old generation still accepts.
    AwaitHolding,
    /// Committed: the old generation stopped accepting and drains.
    Committed,
    /// The handover failed; the old generation serves on.
    Failed(Failure),
}

/// What the old generation's driver does after a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Act {
    /// Nothing yet: wait for the next event.
    Wait,
    /// Write this message to the successor.
    Send(Message),
    /// Stop accepting and drain, then write `live`.
    Commit,
    /// Write `abort`, stop the successor, and serve on.
    Fail(Failure),
}

impl Old {
    /// Still waiting on the successor.
    pub(crate) fn is_open(self) -> bool {
        matches!(self, Old::AwaitReady | Old::AwaitHolding)
    }

    /// Whether the old generation accepts in this state.
    #[cfg(test)]
    pub(crate) fn accepts(self) -> bool {
        self != Old::Committed
    }

    /// One step. `still_on`: the restart has not been called off (the driver reads it
    /// under the owner's lock, so a shutdown that lands before the commit always wins).
    pub(crate) fn step(self, seen: Seen, still_on: bool) -> (Old, Act) {
        if !self.is_open() {
            return (self, Act::Wait);
        }
        let fail = |f: Failure| (Old::Failed(f), Act::Fail(f));
        if !still_on {
            return fail(Failure::CalledOff);
        }
        match (self, seen) {
            (Old::AwaitReady, Seen::Word(Message::Ready(_))) => {
                (Old::AwaitHolding, Act::Send(Message::Go))
            }
            (Old::AwaitHolding, Seen::Word(Message::Holding)) => (Old::Committed, Act::Commit),
            // Anything else on the channel is not a step of the exchange.
            (s, Seen::Word(_)) => (s, Act::Wait),
            (_, Seen::Closed) => fail(Failure::Closed),
            (_, Seen::Exited) => fail(Failure::Exited),
            (_, Seen::TimedOut) => fail(Failure::TimedOut),
            (_, Seen::CalledOff) => fail(Failure::CalledOff),
        }
    }
}

/// What the new generation learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Heard {
    /// The application (or `Readiness::Auto`) declared ready.
    Ready,
    /// A message from the old generation.
    Word(Message),
    /// The channel closed: the old generation is gone (or committed and left).
    Closed,
    /// Every inherited listener is claimed by a server.
    AllClaimed,
    /// The claim grace after `go` ended.
    GraceOver,
}

/// The new generation's side of the commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum New {
    /// Starting; not ready yet. `claimed`: every inherited listener is claimed.
    Starting { claimed: bool },
    /// `ready` sent; waiting for `go`.
    Reported { claimed: bool },
    /// Told `go`; waiting for its servers to claim the rest.
    Claiming,
    /// `holding` sent; waiting for `live` (or `abort`).
    Acknowledged,
    /// Live: owns the files, the generation that serves.
    Live,
    /// Told `abort`, or the previous generation gave up on it: drains and exits.
    Aborted,
}

/// What the new generation's driver does after a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Do {
    /// Nothing yet.
    Wait,
    /// Write `ready <pid>`.
    Report,
    /// Close what is still unclaimed (the grace ended), then write `holding`.
    Acknowledge { close_unclaimed: bool },
    /// Become live.
    BecomeLive,
    /// Drain as a generation that never went live.
    Drain,
}

impl New {
    /// Accepting on every listener it will keep: from `holding` on, every inherited
    /// listener is claimed by a server (or was closed as no longer served).
    #[cfg(test)]
    pub(crate) fn holds_all(self) -> bool {
        matches!(self, New::Acknowledged | New::Live)
    }

    /// One step of a generation started by a restart or a takeover (a socket channel).
    pub(crate) fn step(self, heard: Heard) -> (New, Do) {
        use New::*;
        match (self, heard) {
            (Starting { claimed }, Heard::Ready) => (Reported { claimed }, Do::Report),
            (Starting { .. }, Heard::AllClaimed) => (Starting { claimed: true }, Do::Wait),
            (Reported { .. }, Heard::AllClaimed) => (Reported { claimed: true }, Do::Wait),
            (Reported { claimed: true }, Heard::Word(Message::Go)) => (
                Acknowledged,
                Do::Acknowledge {
                    close_unclaimed: false,
                },
            ),
            (Reported { claimed: false }, Heard::Word(Message::Go)) => (Claiming, Do::Wait),
            (Claiming, Heard::AllClaimed) => (
                Acknowledged,
                Do::Acknowledge {
                    close_unclaimed: false,
                },
            ),
            (Claiming, Heard::GraceOver) => (
                Acknowledged,
                Do::Acknowledge {
                    close_unclaimed: true,
                },
            ),
            (Acknowledged, Heard::Word(Message::Live) | Heard::Closed) => (Live, Do::BecomeLive),
            // Before the acknowledgement, a closed channel means the old generation is
            // gone without a word: nobody else accepts, so this one takes over, as a
            // generation that holds what it claimed (it waits for no grace: there is
            // nobody to hand the rest back to).
            (Starting { .. } | Reported { .. } | Claiming, Heard::Closed) => (Live, Do::BecomeLive),
            (
                Starting { .. } | Reported { .. } | Claiming | Acknowledged,
                Heard::Word(Message::Abort),
            ) => (Aborted, Do::Drain),
            (s, _) => (s, Do::Wait),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One event of the whole system, drawn at random.
    #[derive(Debug, Clone, Copy)]
    enum Ev {
        /// The application declares ready.
        Ready,
        /// Its servers claim the last inherited listener.
        Claim,
        /// Deliver the oldest message in flight to the old generation.
        ToOld,
        /// Deliver the oldest message in flight to the new one.
        ToNew,
        /// The claim grace ends in the new generation.
        Grace,
        /// The new generation dies (SIGKILL, exit, crash).
        NewDies,
        /// The old generation's ready timeout passes.
        Timeout,
        /// A shutdown (SIGTERM) lands in the old generation.
        Term,
        /// A restart (SIGHUP) is asked of the old generation: refused while one is in
        /// progress or after a shutdown; after a failed one, the next restart starts a
        /// new successor (the failed one was stopped).
        Hup,
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            Just(Ev::Ready),
            Just(Ev::Claim),
            Just(Ev::ToOld),
            Just(Ev::ToOld),
            Just(Ev::ToNew),
            Just(Ev::ToNew),
            Just(Ev::Grace),
            Just(Ev::NewDies),
            Just(Ev::Timeout),
            Just(Ev::Term),
            Just(Ev::Hup),
        ]
    }

    /// Both generations, the channel between them, and what the invariant needs.
    struct World {
        old: Old,
        new: New,
        new_alive: bool,
        /// The new generation died after it acknowledged (a crash of the live one).
        died_after_ack: bool,
        to_old: std::collections::VecDeque<Message>,
        to_new: std::collections::VecDeque<Message>,
        /// The old generation closed its end (it failed the handover, or committed).
        old_closed: bool,
        still_on: bool,
        /// Listeners the new generation closed as no longer served.
        dropped: bool,
    }

    impl World {
        fn new() -> World {
            World {
                old: Old::AwaitReady,
                new: New::Starting { claimed: false },
                new_alive: true,
                died_after_ack: false,
                to_old: Default::default(),
                to_new: Default::default(),
                old_closed: false,
                still_on: true,
                dropped: false,
            }
        }

        fn old_sees(&mut self, seen: Seen) {
            let (next, act) = self.old.step(seen, self.still_on);
            self.old = next;
            match act {
                Act::Wait => {}
                Act::Send(m) => self.to_new.push_back(m),
                Act::Commit => {
                    self.to_new.push_back(Message::Live);
                    self.old_closed = true;
                }
                Act::Fail(_) => {
                    self.to_new.push_back(Message::Abort);
                    self.old_closed = true;
                }
            }
        }

        fn new_hears(&mut self, heard: Heard) {
            if !self.new_alive {
                return;
            }
            let (next, act) = self.new.step(heard);
            self.new = next;
            match act {
                Do::Wait | Do::BecomeLive | Do::Drain => {}
                Do::Report => self.to_old.push_back(Message::Ready(7)),
                Do::Acknowledge { close_unclaimed } => {
                    self.dropped |= close_unclaimed;
                    self.to_old.push_back(Message::Holding);
                }
            }
        }

        fn apply(&mut self, e: Ev) {
            match e {
                Ev::Ready => {
                    if matches!(self.new, New::Starting { .. }) {
                        self.new_hears(Heard::Ready)
                    }
                }
                Ev::Claim => self.new_hears(Heard::AllClaimed),
                Ev::Grace => {
                    if self.new == New::Claiming {
                        self.new_hears(Heard::GraceOver)
                    }
                }
                Ev::ToOld => match self.to_old.pop_front() {
                    Some(m) => self.old_sees(Seen::Word(m)),
                    // Nothing in flight and the new generation gone: the channel closes.
                    None if !self.new_alive => {
                        self.old_sees(Seen::Closed);
                        self.old_sees(Seen::Exited);
                    }
                    None => {}
                },
                Ev::ToNew => match self.to_new.pop_front() {
                    Some(m) => self.new_hears(Heard::Word(m)),
                    None if self.old_closed => self.new_hears(Heard::Closed),
                    None => {}
                },
                Ev::NewDies => {
                    if self.new_alive {
                        self.died_after_ack = self.new.holds_all();
                        self.new_alive = false;
                    }
                }
                Ev::Timeout => self.old_sees(Seen::TimedOut),
                Ev::Term => {
                    self.still_on = false;
                    self.old_sees(Seen::CalledOff);
                }
                Ev::Hup => {
                    if self.still_on && matches!(self.old, Old::Failed(_)) {
                        *self = World::new();
                    }
                }
            }
        }

        /// Drives the exchange to its end with no further faults.
        fn settle(&mut self) {
            for _ in 0..32 {
                self.apply(Ev::Ready);
                self.apply(Ev::Claim);
                self.apply(Ev::ToOld);
                self.apply(Ev::ToNew);
            }
        }

        fn new_accepts(&self) -> bool {
            self.new_alive && self.new.holds_all()
        }

        /// The invariant: someone accepts on every listener, unless a shutdown was
        /// asked for, or the live generation itself crashed after its acknowledgement.
        fn check(&self) {
            if self.still_on && !self.died_after_ack {
                assert!(
                    self.old.accepts() || self.new_accepts(),
                    "nobody accepts: old {:?}, new {:?} (alive {})",
                    self.old,
                    self.new,
                    self.new_alive
                );
            }
            // The old generation lets go only of a successor that acknowledged.
            if self.old == Old::Committed {
                assert!(self.new.holds_all(), "committed to {:?}", self.new);
            }
            // Never two live generations (a committed old one is no longer live).
            if self.new == New::Live && self.new_alive {
                assert!(
                    self.old == Old::Committed || self.old_closed,
                    "both live: old {:?}",
                    self.old
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn someone_accepts_whatever_the_interleaving(events in proptest::collection::vec(ev(), 0..40)) {
            let mut w = World::new();
            for e in events {
                w.apply(e);
                w.check();
            }
            w.settle();
            w.check();
            // The exchange always ends: committed to a generation that holds every
            // listener, or failed with the old generation accepting.
            prop_assert!(!w.old.is_open(), "still open: {:?} / {:?}", w.old, w.new);
            match w.old {
                Old::Committed => prop_assert!(w.new.holds_all()),
                Old::Failed(_) => {
                    prop_assert!(w.old.accepts());
                    // A successor that survived was told to abort, or became live
                    // only because the old generation closed the channel after failing
                    // (it reads `abort` first: never).
                    prop_assert!(!w.new_alive || w.new != New::Live, "{:?}", w.new);
                }
                _ => {}
            }
        }
    }

    #[test]
    fn ready_before_the_servers_claimed_waits_for_them() {
        let mut w = World::new();
        w.apply(Ev::Ready); // declared ready, nothing claimed yet
        w.apply(Ev::ToOld); // the old generation reads `ready`, sends `go`
        w.apply(Ev::ToNew); // the new one reads `go`: still claiming
        assert_eq!(w.new, New::Claiming);
        w.apply(Ev::ToOld);
        assert_eq!(w.old, Old::AwaitHolding, "no commit before every claim");
        w.apply(Ev::Claim); // the spawned server claimed its socket
        w.apply(Ev::ToOld);
        assert_eq!(w.old, Old::Committed);
        assert!(!w.dropped);
    }

    #[test]
    fn a_port_no_longer_served_is_dropped_after_the_grace() {
        let mut w = World::new();
        for e in [Ev::Ready, Ev::ToOld, Ev::ToNew, Ev::Grace, Ev::ToOld] {
            w.apply(e);
        }
        assert_eq!(w.old, Old::Committed);
        assert!(w.dropped);
    }

    #[test]
    fn a_successor_that_dies_after_ready_is_not_committed_to() {
        let mut w = World::new();
        for e in [
            Ev::Claim,
            Ev::Ready,
            Ev::NewDies,
            Ev::ToOld,
            Ev::ToNew,
            Ev::ToOld,
        ] {
            w.apply(e);
        }
        assert_eq!(w.old, Old::Failed(Failure::Closed));
        assert!(w.old.accepts());
    }

    #[test]
    fn abort_after_the_acknowledgement_still_turns_the_new_one_back() {
        let mut w = World::new();
        for e in [
            Ev::Claim,
            Ev::Ready,
            Ev::ToOld,
            Ev::ToNew,
            Ev::Term,
            Ev::ToNew,
        ] {
            w.apply(e);
        }
        assert_eq!(w.new, New::Aborted);
        assert_eq!(w.old, Old::Failed(Failure::CalledOff));
    }
}

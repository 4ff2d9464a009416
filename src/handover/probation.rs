//! The probation after a commit, as two pure state machines: the old generation's side,
//! parked ([`Parked`]), and the new one's, on probation ([`OnProbation`]). As in the
//! `commit` module, no tokio, no descriptors, no clock: the drivers (the process
//! owner's `probation` module) feed them what happened and do what they answer, and the
//! property test below runs both against every interleaving of messages, deaths, the
//! probation's end and the new generation's shutdown or restart.
//!
//! # The invariant
//! > During probation, until a shutdown is asked for, at least one process accepts on
//! > every listener, whichever of the two dies; and never are both live.
//!
//! # The exchange
//! The commit's channel stays open after `live` when the old generation parks:
//! ```text
//! old, parked (keeps every listener,           new, live, on probation
//!  accepts on none)
//!  probation <ms>, then live            ──►  echoes `probation <ms>`: it follows it
//!                                       ◄──  rollback <trigger>   (the error policy,
//!                                            the application, an operator)
//!  accepts again                        ──►  holding
//!                                            stops accepting, drains; live
//!                                       ◄──  live: the old one owns the files again
//! ```
//! - The new generation's end closing without `release` is a crash (a kill, an abort, an
//!   exit without a shutdown): the parked one accepts again and is live at once. The
//!   connections the new one had accepted and not answered are the only ones lost;
//!   those still in the listeners' queues are the parked one's to accept.
//! - `release` (the new generation shuts down, or restarts: a further restart ends the
//!   probation first) and the probation's end (the old side answers `ended`) end it:
//!   the parked generation then exits as it would have without probation.
//! - A rollback the new generation asks for is the commit in reverse: it stops accepting
//!   only on reading `holding`, written once the parked one accepts again; a `rollback`
//!   answered by `ended`, or by the channel closing, was refused, and the new one serves
//!   on.

use crate::handover::Message;
use crate::lifecycle::RollbackTrigger;

/// The parked generation's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parked {
    /// Holds every listener, accepts on none; watches the live generation.
    Waiting,
    /// Asked for a rollback: accepts again, told the live one `holding`, waits for
    /// `live`.
    Resuming,
    /// Live again: the rollback is done.
    Live,
    /// The probation is over: exits as without probation.
    Released,
}

/// What the parked generation learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ParkedHeard {
    /// A message from the generation on probation.
    Word(Message),
    /// Its end of the channel closed: it is gone.
    Closed,
    /// The probation period ended.
    TimeUp,
    /// A shutdown (SIGTERM) of the parked generation itself.
    Shutdown,
}

/// What the parked generation's driver does after a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ParkedDo {
    /// Nothing yet.
    Wait,
    /// Accept again, then write `holding`.
    Resume,
    /// The live generation is gone: accept again and be live, at once.
    TakeBack,
    /// Be live: the generation that was on probation drains.
    BecomeLive,
    /// Write `ended`, and exit as without probation.
    End,
    /// Resumed, then told `release` (the other shut down meanwhile): shut down too.
    ShutDown,
}

impl Parked {
    /// Accepting in this state.
    #[cfg(test)]
    pub(crate) fn accepts(self) -> bool {
        matches!(self, Parked::Resuming | Parked::Live)
    }

    pub(crate) fn step(self, heard: ParkedHeard) -> (Parked, ParkedDo) {
        use ParkedHeard::*;
        match (self, heard) {
            (Parked::Waiting, Word(Message::Rollback(_))) => (Parked::Resuming, ParkedDo::Resume),
            (Parked::Waiting, Closed) => (Parked::Live, ParkedDo::TakeBack),
            (Parked::Waiting, Word(Message::Release) | TimeUp | Shutdown) => {
                (Parked::Released, ParkedDo::End)
            }
            (Parked::Resuming, Word(Message::Live) | Closed) => {
                (Parked::Live, ParkedDo::BecomeLive)
            }
            (Parked::Resuming, Word(Message::Release)) => (Parked::Released, ParkedDo::ShutDown),
            // Anything else (a rollback under way outlives the probation's end; a
            // shutdown of a resuming generation is the owner's like any other).
            (s, _) => (s, ParkedDo::Wait),
        }
    }
}

/// The side of the generation on probation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnProbation {
    /// Live, the parked generation behind it.
    On,
    /// Wrote `rollback`; waits for `holding` (it still accepts).
    Asking,
    /// Handed the service back: drains.
    HandedBack,
    /// The probation is over: a generation like any other.
    Over,
}

/// What the generation on probation learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProbationHeard {
    /// A rollback is asked for (the error policy, the application, an operator).
    Ask(RollbackTrigger),
    /// A message from the parked generation.
    Word(Message),
    /// Its end of the channel closed.
    Closed,
    /// This generation shuts down or restarts.
    Leaving,
    /// The parked generation did not answer a rollback within the ready timeout (it is
    /// stopped, or hung): the probation is given up.
    TimedOut,
}

/// What the driver of the generation on probation does after a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProbationDo {
    /// Nothing yet.
    Wait,
    /// Write this message.
    Send(Message),
    /// Stop accepting and drain (handed back), then write `live`.
    HandBack,
    /// Refuse the rollback asked for: the probation is over.
    Refuse,
    /// Write `release`; refuse the rollback asked for, if one is (the parked generation,
    /// if it resumed meanwhile, hears `release` and shuts down: it was never live again).
    Leave,
}

impl OnProbation {
    /// Accepting in this state.
    #[cfg(test)]
    pub(crate) fn accepts(self) -> bool {
        self != OnProbation::HandedBack
    }

    pub(crate) fn step(self, heard: ProbationHeard) -> (OnProbation, ProbationDo) {
        use OnProbation::*;
        use ProbationHeard::*;
        match (self, heard) {
            (On, Ask(t)) => (Asking, ProbationDo::Send(Message::Rollback(t))),
            (Asking, Word(Message::Holding)) => (HandedBack, ProbationDo::HandBack),
            (Asking, Word(Message::Ended) | Closed) => (Over, ProbationDo::Refuse),
            (On | Asking, Leaving) | (Asking, TimedOut) => (Over, ProbationDo::Leave),
            (On, Word(Message::Ended) | Closed) => (Over, ProbationDo::Wait),
            (Over, Ask(_)) => (Over, ProbationDo::Refuse),
            (s, _) => (s, ProbationDo::Wait),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[derive(Debug, Clone, Copy)]
    enum Ev {
        /// A rollback is asked of the generation on probation.
        Ask,
        /// Deliver the oldest message in flight to the parked generation.
        ToParked,
        /// Deliver the oldest message in flight to the one on probation.
        ToLive,
        /// The generation on probation dies (a crash, a kill).
        LiveDies,
        /// The parked generation dies (killed by hand).
        ParkedDies,
        /// The probation period ends.
        TimeUp,
        /// The generation on probation shuts down or restarts.
        Leave,
        /// A SIGTERM to the parked generation.
        ParkedTerm,
        /// The one on probation gives up waiting for an answer to its rollback.
        AskTimeout,
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            Just(Ev::Ask),
            Just(Ev::ToParked),
            Just(Ev::ToParked),
            Just(Ev::ToLive),
            Just(Ev::ToLive),
            Just(Ev::LiveDies),
            Just(Ev::ParkedDies),
            Just(Ev::TimeUp),
            Just(Ev::Leave),
            Just(Ev::ParkedTerm),
            Just(Ev::AskTimeout),
        ]
    }

    struct World {
        parked: Parked,
        live: OnProbation,
        parked_alive: bool,
        live_alive: bool,
        to_parked: VecDeque<Message>,
        to_live: VecDeque<Message>,
        /// The new generation shut down (or restarted, giving the probation up).
        left: bool,
        /// The probation ended without a rollback (time, release, the parked
        /// generation's own shutdown or death): the one on probation is the service.
        given_up: bool,
        /// Refusals answered to rollbacks asked for.
        refused: usize,
        /// The one on probation gave up waiting for the parked one's answer.
        gave_up: bool,
    }

    impl World {
        fn new() -> World {
            World {
                parked: Parked::Waiting,
                live: OnProbation::On,
                parked_alive: true,
                live_alive: true,
                to_parked: VecDeque::new(),
                to_live: VecDeque::new(),
                left: false,
                given_up: false,
                refused: 0,
                gave_up: false,
            }
        }

        fn parked_hears(&mut self, h: ParkedHeard) {
            if !self.parked_alive {
                return;
            }
            let (next, act) = self.parked.step(h);
            self.parked = next;
            match act {
                ParkedDo::Wait | ParkedDo::TakeBack | ParkedDo::BecomeLive => {}
                ParkedDo::Resume => self.to_live.push_back(Message::Holding),
                ParkedDo::End => {
                    self.given_up = true;
                    self.to_live.push_back(Message::Ended);
                }
                ParkedDo::ShutDown => {}
            }
        }

        fn live_hears(&mut self, h: ProbationHeard) {
            if !self.live_alive {
                return;
            }
            let (next, act) = self.live.step(h);
            self.live = next;
            match act {
                ProbationDo::Wait => {}
                ProbationDo::Send(m) => self.to_parked.push_back(m),
                ProbationDo::HandBack => self.to_parked.push_back(Message::Live),
                ProbationDo::Refuse => self.refused += 1,
                ProbationDo::Leave => self.to_parked.push_back(Message::Release),
            }
        }

        /// The parked side's end closed: it died, or is done with the channel.
        fn parked_closed(&self) -> bool {
            !self.parked_alive || matches!(self.parked, Parked::Released | Parked::Live)
        }

        /// The live side's end closed: it died, or is done with the channel.
        fn live_closed(&self) -> bool {
            !self.live_alive || matches!(self.live, OnProbation::Over | OnProbation::HandedBack)
        }

        fn apply(&mut self, e: Ev) {
            match e {
                Ev::Ask => self.live_hears(ProbationHeard::Ask(RollbackTrigger::Operator)),
                Ev::ToParked => match self.to_parked.pop_front() {
                    Some(m) => self.parked_hears(ParkedHeard::Word(m)),
                    None if self.live_closed() => self.parked_hears(ParkedHeard::Closed),
                    None => {}
                },
                Ev::ToLive => match self.to_live.pop_front() {
                    Some(m) => self.live_hears(ProbationHeard::Word(m)),
                    None if self.parked_closed() => self.live_hears(ProbationHeard::Closed),
                    None => {}
                },
                Ev::LiveDies => self.live_alive = false,
                Ev::ParkedDies => {
                    if self.parked_alive && self.parked == Parked::Waiting {
                        self.given_up = true;
                    }
                    self.parked_alive = false;
                }
                Ev::TimeUp => self.parked_hears(ParkedHeard::TimeUp),
                Ev::Leave => {
                    if self.live_alive && self.live != OnProbation::HandedBack {
                        self.left = true;
                        self.live_hears(ProbationHeard::Leaving);
                    }
                }
                Ev::ParkedTerm => self.parked_hears(ParkedHeard::Shutdown),
                Ev::AskTimeout => {
                    if self.live == OnProbation::Asking {
                        self.gave_up = true;
                        self.live_hears(ProbationHeard::TimedOut);
                    }
                }
            }
        }

        fn live_accepts(&self) -> bool {
            self.live_alive && self.live.accepts()
        }

        fn parked_accepts(&self) -> bool {
            self.parked_alive && self.parked.accepts()
        }

        /// Delivers everything in flight, with no further faults.
        fn settle(&mut self) {
            for _ in 0..16 {
                self.apply(Ev::ToParked);
                self.apply(Ev::ToLive);
            }
        }

        fn check(&self) {
            // The one on probation stops accepting only once the parked one accepts.
            if self.live == OnProbation::HandedBack {
                assert!(
                    matches!(self.parked, Parked::Resuming | Parked::Live)
                        || self.left
                        || !self.parked_alive,
                    "handed back to {:?}",
                    self.parked
                );
            }
            // Never two live generations: the parked one is live only once the other
            // handed back or died.
            if self.parked == Parked::Live && self.parked_alive {
                assert!(
                    !self.live_alive || self.live == OnProbation::HandedBack,
                    "both live: {:?}",
                    self.live
                );
            }
        }

        /// After everything in flight was delivered: someone accepts, unless a shutdown
        /// was asked for, or the probation was over when the one on probation died, or
        /// the parked one was killed by hand (then nobody is left to hand back to).
        fn check_settled(&self) {
            if self.left || self.given_up || !self.parked_alive {
                return;
            }
            // Gave up on an answer: the one on probation serves on (unless it died, with
            // nothing parked behind it any more).
            if self.gave_up {
                assert!(
                    self.live_accepts() || !self.live_alive,
                    "gave up and stopped accepting: {:?}",
                    self.live
                );
                return;
            }
            assert!(
                self.live_accepts() || self.parked_accepts(),
                "nobody accepts: parked {:?} (alive {}), live {:?} (alive {})",
                self.parked,
                self.parked_alive,
                self.live,
                self.live_alive
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn someone_accepts_whoever_dies(events in proptest::collection::vec(ev(), 0..30)) {
            let mut w = World::new();
            for e in events {
                w.apply(e);
                w.check();
            }
            w.settle();
            w.check();
            w.check_settled();
            // A crash of the one on probation before the end is always taken back.
            if !w.live_alive && !w.given_up && !w.gave_up && !w.left && w.parked_alive {
                prop_assert_eq!(w.parked, Parked::Live);
            }
        }
    }

    #[test]
    fn a_crash_is_taken_back_at_once() {
        let mut w = World::new();
        w.apply(Ev::LiveDies);
        w.apply(Ev::ToParked);
        assert_eq!(w.parked, Parked::Live);
    }

    #[test]
    fn a_rollback_stops_the_new_one_only_after_the_old_one_accepts() {
        let mut w = World::new();
        w.apply(Ev::Ask);
        assert!(w.live_accepts() && !w.parked_accepts());
        w.apply(Ev::ToParked); // the parked one reads `rollback`: accepts, says holding
        assert!(w.parked_accepts() && w.live_accepts());
        w.apply(Ev::ToLive); // the new one reads `holding`: hands back
        assert_eq!(w.live, OnProbation::HandedBack);
        w.apply(Ev::ToParked); // `live`
        assert_eq!(w.parked, Parked::Live);
    }

    #[test]
    fn a_rollback_after_the_end_is_refused() {
        let mut w = World::new();
        w.apply(Ev::TimeUp);
        w.apply(Ev::Ask);
        w.settle();
        assert_eq!(w.refused, 1);
        assert_eq!(w.live, OnProbation::Over);
        assert_eq!(w.parked, Parked::Released);
    }
}

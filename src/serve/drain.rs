//! The open connections of one server, and how they learn that the drain began or the
//! hammer fell.
//!
//! Each accepted connection registers here once ([`Tracker::register`]): one lock of
//! the server's registry per connection, none per request. Its task's waker is stored
//! in its own slot, replaced only when the task's waker changes
//! ([`ConnState::register`], called by the connection's future, and by [`Watched`]
//! around a TLS handshake), so a connection waits for the drain and the hammer without
//! polling anything: when the server begins its drain or hammers, it sets one flag word
//! and wakes every registered task once. A connection reads that word (one relaxed
//! load) when it is polled anyway. This replaced a `watch` receiver and a cancellation
//! future polled around every connection on every wake, which cost a mutex per pending
//! poll.
//!
//! The registry also answers how many connections are open and in which state
//! ([`Tracker::census`]), from the connections' own counters, read only when asked.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use pin_project_lite::pin_project;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::observe::status::{Census, Counts};
use crate::serve::context::Ctx;

const SERVING: u8 = 0;
const DRAINING: u8 = 1;
const HAMMERED: u8 = 2;

/// Deadlines of a connection that passed: the IO and the handler fail from then on.
pub(crate) const EXPIRED_READ: u8 = 1;
pub(crate) const EXPIRED_HANDLER: u8 = 2;
pub(crate) const EXPIRED_STALL: u8 = 4;

/// The state of one connection: written by the connection itself (its IO, its requests,
/// its timer), read by its server only for a census, and the waker the server wakes.
/// Deadlines are instants of the coarse clock ([`crate::duration::now_ms`]); 0 is none.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// What its handlers learn of it (`ConnInfo::current`, `Drain::current`).
    pub(crate) ctx: Ctx,
    /// During a drain its HTTP/1 responses carry `Connection: close` from this many ms
    /// after the drain began (`Server::drain_spread`; 0: at once).
    pub(crate) close_turn: u64,
    /// When its server began to drain (coarse clock; 0: serving): what a server that
    /// stops on its own signal, while the generation serves on, tells its connections.
    pub(crate) drain_began: AtomicU64,
    pub(crate) in_flight: AtomicU32,
    /// Requests received. Written only by the connection's own task (hyper calls the
    /// service there, over HTTP/2 too), so a load and a store, no shared write.
    pub(crate) requests: AtomicU64,
    pub(crate) last_activity: AtomicU64,
    pub(crate) h2: AtomicBool,
    /// The connection switched protocols: no HTTP timeout applies any more.
    pub(crate) upgraded: AtomicBool,
    /// The protocol was written into the connection's span.
    pub(crate) proto_known: AtomicBool,
    /// HTTP/1: the instant by which the request being read must be read.
    pub(crate) read_deadline: AtomicU64,
    /// HTTP/1: the instant by which the handler must start its response.
    pub(crate) handler_deadline: AtomicU64,
    /// The instant by which a pending write must make progress.
    pub(crate) stall_deadline: AtomicU64,
    /// `EXPIRED_*` bits, set by the connection's timer.
    pub(crate) expired: AtomicU8,
    /// The instant the connection's timer is armed for (0: none).
    pub(crate) armed: AtomicU64,
    /// A deadline may now be due before `armed` (or something is due with nothing
    /// armed): the connection's future recomputes its next deadline on its next poll.
    /// Without it, a poll whose timer has not fired skips that computation.
    pub(crate) rearm: AtomicBool,
    /// The idle limit the connection's timer applies now, in ms (0: none): what a
    /// request that ends makes due.
    pub(crate) idle_limit: AtomicU64,
    /// HTTP/2: the nearest deadline of a pending handler in `streams` (0: none).
    pub(crate) streams_due: AtomicU64,
    streams: Mutex<Streams>,
    waker: Mutex<Option<Waker>>,
}

/// HTTP/2 streams whose handler is pending, with their deadlines: the connection's
/// timer enforces them, so a pending stream costs two locks of its own connection's
/// list instead of a timer of its own.
#[derive(Debug, Default)]
struct Streams {
    slots: Vec<Option<Stream>>,
    free: Vec<usize>,
}

#[derive(Debug)]
struct Stream {
    at: u64,
    waker: Waker,
    expired: bool,
}

impl ConnState {
    fn new(ctx: Ctx, close_turn: u64) -> Self {
        ConnState {
            ctx,
            close_turn,
            drain_began: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            last_activity: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            proto_known: AtomicBool::new(false),
            read_deadline: AtomicU64::new(0),
            handler_deadline: AtomicU64::new(0),
            stall_deadline: AtomicU64::new(0),
            expired: AtomicU8::new(0),
            armed: AtomicU64::new(0),
            rearm: AtomicBool::new(false),
            idle_limit: AtomicU64::new(0),
            streams_due: AtomicU64::new(0),
            streams: Mutex::default(),
            waker: Mutex::default(),
        }
    }

    #[inline]
    pub(crate) fn touch(&self, now: u64) {
        self.last_activity.store(now, Ordering::Relaxed);
    }

    /// A deadline at `at` was set: flags the connection's future if its timer is armed
    /// for later, or not at all.
    #[inline]
    pub(crate) fn due_at(&self, at: u64) {
        let armed = self.armed.load(Ordering::Acquire);
        if armed == 0 || at < armed {
            self.rearm.store(true, Ordering::Release);
        }
    }

    /// The request in flight ended at `now`: the idle limit counts from now.
    #[inline]
    pub(crate) fn request_done(&self, now: u64) {
        self.touch(now);
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let idle = self.idle_limit.load(Ordering::Relaxed);
            if idle != 0 {
                self.due_at(now.saturating_add(idle));
            }
        }
    }

    #[inline]
    pub(crate) fn expired(&self, bit: u8) -> bool {
        self.expired.load(Ordering::Relaxed) & bit != 0
    }

    /// Makes `waker` the one the server wakes when the drain begins or the hammer falls,
    /// unless `seen` (the caller's copy of the waker registered last) already wakes the
    /// same task. Called before the drain's level is read: a drain or hammer that
    /// begins after the read wakes this waker.
    #[inline]
    pub(crate) fn register(&self, seen: &mut Option<Waker>, waker: &Waker) {
        if !seen.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.register_new(seen, waker);
        }
    }

    #[cold]
    fn register_new(&self, seen: &mut Option<Waker>, waker: &Waker) {
        *self.waker() = Some(waker.clone());
        *seen = Some(waker.clone());
    }

    fn waker(&self) -> MutexGuard<'_, Option<Waker>> {
        self.waker.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn streams(&self) -> MutexGuard<'_, Streams> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// HTTP/2: a pending handler of `self` must answer by `at`; `waker` is its task's.
    /// Returns its key for [`ConnState::stream_expired`] and [`ConnState::stream_done`].
    pub(crate) fn stream_wait(&self, at: u64, waker: &Waker) -> usize {
        let mut s = self.streams();
        let entry = Some(Stream {
            at,
            waker: waker.clone(),
            expired: false,
        });
        let key = match s.free.pop() {
            Some(k) => {
                s.slots[k] = entry;
                k
            }
            None => {
                s.slots.push(entry);
                s.slots.len() - 1
            }
        };
        drop(s);
        let _ = self
            .streams_due
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur == 0 || at < cur).then_some(at)
            });
        let armed = self.armed.load(Ordering::Acquire);
        if armed == 0 || at < armed {
            // The connection's timer is armed for later (or not at all): re-arm it.
            self.rearm.store(true, Ordering::Release);
            if let Some(w) = self.waker().as_ref() {
                w.wake_by_ref();
            }
        }
        key
    }

    /// HTTP/2: has the deadline of stream `key` passed? (Keeps its waker current.)
    pub(crate) fn stream_expired(&self, key: usize, waker: &Waker) -> bool {
        let mut s = self.streams();
        let Some(st) = s.slots.get_mut(key).and_then(Option::as_mut) else {
            return false;
        };
        if !st.expired && !st.waker.will_wake(waker) {
            st.waker = waker.clone();
        }
        st.expired
    }

    /// HTTP/2: stream `key` answered or went away.
    pub(crate) fn stream_done(&self, key: usize) {
        let mut s = self.streams();
        if let Some(slot) = s.slots.get_mut(key) {
            *slot = None;
            s.free.push(key);
        }
    }

    /// The connection's timer: marks the streams due by `now` expired and wakes them.
    pub(crate) fn expire_streams(&self, now: u64) {
        let mut s = self.streams();
        let mut next = u64::MAX;
        for st in s.slots.iter_mut().flatten() {
            if st.expired {
                continue;
            }
            if st.at <= now {
                st.expired = true;
                st.waker.wake_by_ref();
            } else {
                next = next.min(st.at);
            }
        }
        self.streams_due
            .store(if next == u64::MAX { 0 } else { next }, Ordering::Release);
    }
}

/// A connection's turn within a drain spread of `spread_ms` (see `conn::close_now`), from
/// its place in its server's registry. (Kept in the connection's state rather than in
/// every request's future: a stream task of hyper's holds that future, and a few bytes
/// more can move the task into a slower class of allocation, see BENCHMARKS.md.)
fn close_turn(slot: usize, spread_ms: u64) -> u64 {
    if spread_ms == 0 {
        return 0;
    }
    // Consecutive slots land far apart in the spread (a multiplicative hash).
    (slot as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) % spread_ms
}

#[derive(Default)]
struct Slots {
    slots: Vec<Option<Arc<ConnState>>>,
    free: Vec<usize>,
    open: usize,
}

/// The open connections of one server (see the module docs).
pub(crate) struct Tracker {
    level: AtomicU8,
    slots: Mutex<Slots>,
    /// Requests received over connections since closed.
    closed_requests: AtomicU64,
    empty: Notify,
    /// What upgraded connections' IO waits on: they have no connection task to wake.
    hammer: CancellationToken,
}

impl Tracker {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Tracker {
            level: AtomicU8::new(SERVING),
            slots: Mutex::new(Slots::default()),
            closed_requests: AtomicU64::new(0),
            empty: Notify::new(),
            hammer: CancellationToken::new(),
        })
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a new connection until the returned registration is dropped (with the
    /// connection's IO, so an upgraded connection stays counted). `ctx`: what its
    /// handlers learn of it; `spread_ms`: the server's drain spread.
    pub(crate) fn register(self: &Arc<Self>, ctx: Ctx, spread_ms: u64) -> Registration {
        let mut s = self.slots();
        let key = match s.free.pop() {
            Some(k) => k,
            None => {
                s.slots.push(None);
                s.slots.len() - 1
            }
        };
        let state = Arc::new(ConnState::new(ctx, close_turn(key, spread_ms)));
        s.slots[key] = Some(state.clone());
        s.open += 1;
        drop(s);
        Registration {
            tracker: self.clone(),
            key,
            state,
        }
    }

    #[inline]
    pub(crate) fn draining(&self) -> bool {
        self.level.load(Ordering::Acquire) >= DRAINING
    }

    #[inline]
    pub(crate) fn hammered(&self) -> bool {
        self.level.load(Ordering::Acquire) >= HAMMERED
    }

    pub(crate) fn hammer_token(&self) -> &CancellationToken {
        &self.hammer
    }

    /// The server stopped accepting: every connection is woken to drain.
    pub(crate) fn begin_drain(&self) {
        let now = crate::duration::now_ms();
        for c in self.slots().slots.iter().flatten() {
            c.drain_began.store(now, Ordering::Relaxed);
        }
        self.level.fetch_max(DRAINING, Ordering::AcqRel);
        self.wake_all();
    }

    /// Hammer time: every connection is closed.
    pub(crate) fn hammer(&self) {
        self.level.store(HAMMERED, Ordering::Release);
        self.hammer.cancel();
        self.wake_all();
    }

    fn wake_all(&self) {
        let wakers: Vec<Waker> = self
            .slots()
            .slots
            .iter()
            .flatten()
            .filter_map(|c| c.waker().clone())
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    /// How many connections are open.
    pub(crate) fn open(&self) -> usize {
        self.slots().open
    }

    /// Completes once no connection is open.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.empty.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// The open connections by state.
    pub(crate) fn census(&self) -> Census {
        let mut c = Census::default();
        let slots = self.slots();
        c.requests = self.closed_requests.load(Ordering::Relaxed);
        for s in slots.slots.iter().flatten() {
            c.requests += s.requests.load(Ordering::Relaxed);
            if s.upgraded.load(Ordering::Relaxed) {
                c.upgraded += 1;
            } else if s.in_flight.load(Ordering::Relaxed) > 0 {
                c.active += 1;
            } else {
                c.idle += 1;
            }
        }
        c
    }
}

impl Counts for Tracker {
    fn census(&self) -> Census {
        Tracker::census(self)
    }

    fn open(&self) -> usize {
        Tracker::open(self)
    }
}

/// One connection's place in its server's registry; removed when dropped.
pub(crate) struct Registration {
    tracker: Arc<Tracker>,
    key: usize,
    state: Arc<ConnState>,
}

impl Registration {
    pub(crate) fn state(&self) -> &Arc<ConnState> {
        &self.state
    }

    pub(crate) fn tracker(&self) -> &Arc<Tracker> {
        &self.tracker
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut s = self.tracker.slots();
        // Under the registry's lock, so that a census never counts them twice or not
        // at all.
        self.tracker.closed_requests.fetch_add(
            self.state.requests.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        s.slots[self.key] = None;
        s.free.push(self.key);
        s.open -= 1;
        let empty = s.open == 0;
        drop(s);
        if empty {
            self.tracker.empty.notify_waiters();
        }
    }
}

pin_project! {
    /// A TLS connection's task: its waker registered with the server (again only when
    /// it changes), and dropped (closing the socket) once the hammer falls, from the
    /// handshake on. (A connection's own future does the same: `conn::serve`.)
    pub(crate) struct Watched<F> {
        #[pin]
        fut: F,
        state: Arc<ConnState>,
        tracker: Arc<Tracker>,
        waker: Option<Waker>,
    }
}

impl<F> Watched<F> {
    /// `state` and `tracker`: those of the connection's registration.
    pub(crate) fn new(state: Arc<ConnState>, tracker: Arc<Tracker>, fut: F) -> Self {
        Watched {
            fut,
            state,
            tracker,
            waker: None,
        }
    }
}

impl<F: Future<Output = ()>> Future for Watched<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        this.state.register(this.waker, cx.waker());
        if this.tracker.hammered() {
            return Poll::Ready(());
        }
        this.fut.poll(cx)
    }
}

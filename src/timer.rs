//! Coarse deadlines for the request path: hyper's `header_read_timeout`,
//! the upstream exchange's `request_timeout`, the body-read deadline and
//! the first-request deadline of a connection.
//!
//! Every request arms two deadlines that almost never fire. With tokio's
//! timer each one is a timer-wheel registration under the driver's lock on
//! first poll, a second lock to take it out when the request finishes, and
//! a clock read for each; under callgrind that was ~1,300 instructions per
//! request on `auth = "none"`, about a tenth of authgate's own work.
//!
//! Here a deadline is an entry in a slab: registering is a push under an
//! uncontended per-thread mutex, cancelling (dropping the future) a pop.
//! One `authgate-timer` thread looks at the slabs each [`TICK`] and wakes
//! what is due, so a deadline fires between 0 and `TICK` late — nothing
//! here is configured finer than a second. A slab is only scanned once its
//! earliest deadline has come (10,000 idle keep-alive connections are
//! 10,000 entries, not worth reading twenty times a second). The thread
//! parks when no deadline is pending, so an idle gateway does not wake up
//! for it.
//!
//! Deadlines never fire early: an entry is due only when the clock read at
//! the tick has passed it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often due deadlines are looked for: a deadline fires at most this late.
pub const TICK: Duration = Duration::from_millis(50);

/// Slabs, one per per-core worker (modulo this count); outside per-core
/// mode every thread uses slab 0.
const SHARDS: usize = 64;

struct Entry {
    /// `None`: fired only by [`Wakers::fire`] without a clock (the drain
    /// signal).
    deadline: Option<Instant>,
    waker: Option<Waker>,
    fired: bool,
}

#[derive(Default)]
struct Slab {
    /// `None`: a free slot, listed in `free`.
    entries: Vec<Option<Entry>>,
    free: Vec<u32>,
    live: usize,
    /// No unfired deadline in this slab is earlier than this (it may be
    /// earlier than the earliest one left: entries removed since are not
    /// subtracted). The ticker skips the slab until then.
    next_due: Option<Instant>,
}

impl Slab {
    fn due_no_later_than(&mut self, deadline: Option<Instant>) {
        if let Some(d) = deadline {
            self.next_due = Some(self.next_due.map_or(d, |n| n.min(d)));
        }
    }
}

/// Aligned to its own cache lines: neighbouring workers' shards must not
/// bounce one line between cores.
#[derive(Default)]
#[repr(align(128))]
struct Shard {
    /// Bumped (after marking) whenever an entry of this shard fires: a
    /// registered future that sees the same value and the same waker as at
    /// its last poll knows it has not fired, without taking the lock.
    fired: AtomicU64,
    slab: Mutex<Slab>,
}

/// Registered wakers with a "fired" flag each, in per-thread slabs: what
/// both the timer wheel and the drain signal are made of.
struct Wakers {
    shards: Box<[Shard]>,
}

/// A registration: the slot, and what its last poll saw.
#[derive(Debug, Clone, Copy)]
struct Registered {
    shard: u16,
    index: u32,
    fired_seen: u64,
    /// The registered waker's data and vtable addresses (what
    /// `Waker::will_wake` compares), kept as integers so futures holding
    /// them stay `Send + Sync`.
    waker: (usize, usize),
}

fn waker_id(w: &Waker) -> (usize, usize) {
    (w.data() as usize, std::ptr::from_ref(w.vtable()) as usize)
}

/// This thread's shard, handed out per thread in turn on first use: each
/// per-core worker gets its own, and so does each of tokio's threads in
/// the multi-thread runtime (which would otherwise all share one lock).
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

fn lock(slab: &Mutex<Slab>) -> MutexGuard<'_, Slab> {
    // Nothing here panics while holding the lock; a poisoned slab is still
    // consistent.
    slab.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Wakers {
    fn new() -> Wakers {
        Wakers {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }

    /// Registers `waker` in this worker's slab; `None` only when the slab
    /// has no index left.
    fn register(&self, deadline: Option<Instant>, waker: &Waker) -> Option<Registered> {
        let shard = shard_index();
        let cell = &self.shards[shard];
        let mut s = lock(&cell.slab);
        let fired_seen = cell.fired.load(Ordering::Acquire);
        let entry = Some(Entry {
            deadline,
            waker: Some(waker.clone()),
            fired: false,
        });
        s.due_no_later_than(deadline);
        let index = match s.free.pop() {
            Some(i) => {
                s.entries[i as usize] = entry;
                i
            }
            None => {
                let i = u32::try_from(s.entries.len()).ok()?;
                s.entries.push(entry);
                i
            }
        };
        s.live += 1;
        Some(Registered {
            shard: shard as u16,
            index,
            fired_seen,
            waker: waker_id(waker),
        })
    }

    /// Whether a registration has fired; keeps its waker current.
    fn poll(&self, r: &mut Registered, cx: &Context<'_>) -> bool {
        let cell = &self.shards[r.shard as usize];
        let id = waker_id(cx.waker());
        if cell.fired.load(Ordering::Acquire) == r.fired_seen && id == r.waker {
            return false;
        }
        let mut s = lock(&cell.slab);
        r.fired_seen = cell.fired.load(Ordering::Acquire);
        match s.entries.get_mut(r.index as usize) {
            Some(Some(e)) if e.fired => true,
            Some(Some(e)) => {
                if id != r.waker || e.waker.is_none() {
                    let old = e.waker.replace(cx.waker().clone());
                    r.waker = id;
                    // A task waker's drop may run code; not under the lock.
                    drop(s);
                    drop(old);
                }
                false
            }
            // Cannot happen: the slot is the registration's until removed.
            _ => true,
        }
    }

    fn remove(&self, r: Registered) {
        let mut s = lock(&self.shards[r.shard as usize].slab);
        if let Some(slot) = s.entries.get_mut(r.index as usize) {
            let waker = slot.take().and_then(|e| e.waker);
            s.free.push(r.index);
            s.live -= 1;
            drop(s);
            // A task waker's drop may run code; not under the lock.
            drop(waker);
        }
    }

    /// Moves a registration's deadline and re-arms it. If it had fired,
    /// its waker was taken with it: the next poll must store one again, so
    /// the remembered waker is forgotten (the lock-free check then fails).
    fn reset(&self, r: &mut Registered, deadline: Instant) {
        let mut s = lock(&self.shards[r.shard as usize].slab);
        if let Some(Some(e)) = s.entries.get_mut(r.index as usize) {
            e.deadline = Some(deadline);
            e.fired = false;
        }
        s.due_no_later_than(Some(deadline));
        r.waker = (0, 0);
    }

    /// Fires every entry whose deadline is at or before `now`, or every
    /// entry when `now` is `None`; returns how many entries are left.
    fn fire(&self, now: Option<Instant>, woken: &mut Vec<Waker>) -> usize {
        let mut pending = 0;
        for cell in self.shards.iter() {
            let mut s = lock(&cell.slab);
            if s.live == 0 {
                continue;
            }
            pending += s.live;
            // `next_due` bounds every unfired deadline; `None`: there is
            // none (all fired, or only signal entries), nothing to scan.
            if let Some(now) = now {
                if s.next_due.is_none_or(|next| next > now) {
                    continue;
                }
            }
            let mut any = false;
            let mut next_due: Option<Instant> = None;
            for e in s.entries.iter_mut().flatten() {
                if e.fired {
                    continue;
                }
                let due = match (now, e.deadline) {
                    (None, _) => true,
                    (Some(now), Some(d)) => d <= now,
                    (Some(_), None) => false,
                };
                if due {
                    e.fired = true;
                    any = true;
                    woken.extend(e.waker.take());
                } else if let Some(d) = e.deadline {
                    next_due = Some(next_due.map_or(d, |n| n.min(d)));
                }
            }
            s.next_due = next_due;
            if any {
                cell.fired.fetch_add(1, Ordering::Release);
            }
        }
        // Woken by the caller, outside the locks: a waker may run its task.
        pending
    }

    fn is_empty(&self) -> bool {
        self.shards.iter().all(|c| lock(&c.slab).live == 0)
    }
}

struct Wheel {
    wakers: Wakers,
    /// The ticker thread, to unpark when a deadline is registered.
    ticker: Option<std::thread::Thread>,
    /// Set by the ticker before it parks; cleared by whoever unparks it.
    parked: AtomicBool,
}

static WHEEL: LazyLock<Wheel> = LazyLock::new(|| {
    let ticker = std::thread::Builder::new()
        .name("authgate-timer".into())
        .spawn(tick_forever)
        .ok()
        .map(|h| h.thread().clone());
    if ticker.is_none() {
        tracing::error!(
            "cannot start the timer thread; request deadlines fall back to tokio's timer"
        );
    }
    Wheel {
        wakers: Wakers::new(),
        ticker,
        parked: AtomicBool::new(false),
    }
});

fn tick_forever() {
    let mut woken: Vec<Waker> = Vec::new();
    loop {
        // Every deadline of the process hangs on this thread: a panic here
        // (in a waker, say) must not end it, or every timeout would fail
        // open from then on.
        let tick = std::panic::AssertUnwindSafe(|| tick(&mut woken));
        if std::panic::catch_unwind(tick).is_err() {
            woken.clear();
            tracing::error!("the timer thread recovered from a panic");
        }
    }
}

/// One tick: sleep, wake what is due, park when nothing is pending.
fn tick(woken: &mut Vec<Waker>) {
    std::thread::sleep(TICK);
    let wheel = &*WHEEL;
    let pending = wheel.wakers.fire(Some(Instant::now()), woken);
    for w in woken.drain(..) {
        // One panicking waker must not leave the others unwoken: their
        // entries are already marked fired, nothing would wake them again.
        let wake = std::panic::AssertUnwindSafe(|| w.wake());
        if std::panic::catch_unwind(wake).is_err() {
            tracing::error!("a timer waker panicked");
        }
    }
    if pending == 0 {
        wheel.parked.store(true, Ordering::SeqCst);
        // Re-checked after announcing the park: a registration that saw
        // `parked == false` has already put its entry where this looks.
        if wheel.wakers.is_empty() {
            std::thread::park();
        }
        wheel.parked.store(false, Ordering::SeqCst);
    }
}

fn register_deadline(deadline: Instant, waker: &Waker) -> Option<Registered> {
    let wheel = &*WHEEL;
    let ticker = wheel.ticker.as_ref()?;
    let r = wheel.wakers.register(Some(deadline), waker)?;
    // A plain load first (an atomic swap on every request would be a
    // write to a shared line): if the ticker announced a park before its
    // re-check took this slab's lock, the lock orders that store before
    // this load.
    if wheel.parked.load(Ordering::Relaxed) && wheel.parked.swap(false, Ordering::SeqCst) {
        ticker.unpark();
    }
    Some(r)
}

/// A future that completes at (or up to [`TICK`] after) its deadline.
///
/// The clock is not read when it is polled: a deadline already past fires
/// at the next tick.
pub struct Sleep {
    deadline: Instant,
    registered: Option<Registered>,
    /// Only when the ticker thread could not start.
    fallback: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Completes at `deadline` (up to [`TICK`] later).
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        deadline,
        registered: None,
        fallback: None,
    }
}

/// Completes after `duration` (up to [`TICK`] later).
pub fn sleep(duration: Duration) -> Sleep {
    sleep_until(deadline_in(duration))
}

/// What a configured duration too large for the clock (no setting has an
/// upper bound) is cut to: about never, instead of a panic in `Instant + _`.
pub const ABOUT_NEVER: Duration = Duration::from_secs(60 * 60 * 24 * 365 * 30);

/// `duration` from now, at most [`ABOUT_NEVER`].
pub fn deadline_in(duration: Duration) -> Instant {
    deadline_after(Instant::now(), duration)
}

/// `duration` after `start` (a clock read the caller already has), at most
/// [`ABOUT_NEVER`].
pub fn deadline_after(start: Instant, duration: Duration) -> Instant {
    start + duration.min(ABOUT_NEVER)
}

impl Sleep {
    /// Moves the deadline (used by hyper to reuse a sleep).
    pub fn reset(&mut self, deadline: Instant) {
        self.deadline = deadline;
        if let Some(f) = &mut self.fallback {
            f.as_mut().reset(deadline.into());
        }
        if let Some(r) = &mut self.registered {
            WHEEL.wakers.reset(r, deadline);
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if let Some(r) = &mut this.registered {
            return match WHEEL.wakers.poll(r, cx) {
                true => Poll::Ready(()),
                false => Poll::Pending,
            };
        }
        if let Some(f) = &mut this.fallback {
            return f.as_mut().poll(cx);
        }
        match register_deadline(this.deadline, cx.waker()) {
            Some(r) => {
                this.registered = Some(r);
                Poll::Pending
            }
            None => {
                let mut f = Box::pin(tokio::time::sleep_until(this.deadline.into()));
                let polled = f.as_mut().poll(cx);
                this.fallback = Some(f);
                polled
            }
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(r) = self.registered.take() {
            WHEEL.wakers.remove(r);
        }
    }
}

/// A one-shot broadcast (the gateway's drain): every [`Signal::wait`]
/// completes once [`Signal::fire`] is called. Waiting costs one registration
/// per waiter, then an atomic load per poll: a connection polls it each
/// time it is woken for anything, so that is all it may cost.
pub struct Signal {
    fired: AtomicBool,
    wakers: Wakers,
}

impl Default for Signal {
    fn default() -> Self {
        Signal {
            fired: AtomicBool::new(false),
            wakers: Wakers::new(),
        }
    }
}

impl Signal {
    /// Completes every current and future wait.
    pub fn fire(&self) {
        self.fired.store(true, Ordering::SeqCst);
        let mut woken = Vec::new();
        self.wakers.fire(None, &mut woken);
        for w in woken {
            w.wake();
        }
    }

    pub fn is_fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// Completes once the signal has fired.
    pub fn wait(self: &Arc<Self>) -> SignalWait {
        SignalWait {
            signal: self.clone(),
            registered: None,
        }
    }
}

/// See [`Signal::wait`].
pub struct SignalWait {
    signal: Arc<Signal>,
    registered: Option<Registered>,
}

impl Future for SignalWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.signal.is_fired() {
            return Poll::Ready(());
        }
        match &mut this.registered {
            Some(r) => {
                if this.signal.wakers.poll(r, cx) {
                    return Poll::Ready(());
                }
            }
            None => match this.signal.wakers.register(None, cx.waker()) {
                Some(r) => this.registered = Some(r),
                // No slot (four billion waiters): poll again soon instead.
                None => cx.waker().wake_by_ref(),
            },
        }
        // Fired between the check and the registration: it may have
        // missed this waker.
        if this.signal.is_fired() {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for SignalWait {
    fn drop(&mut self) {
        if let Some(r) = self.registered.take() {
            self.signal.wakers.remove(r);
        }
    }
}

/// `future`, or `Err(Elapsed)` once `duration` has passed.
pub fn timeout<F: Future>(duration: Duration, future: F) -> Timeout<F> {
    Timeout {
        future,
        sleep: sleep(duration),
    }
}

/// `future`, or `Err(Elapsed)` once `deadline` has passed.
pub fn timeout_at<F: Future>(deadline: Instant, future: F) -> Timeout<F> {
    Timeout {
        future,
        sleep: sleep_until(deadline),
    }
}

/// The deadline passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

pin_project_lite::pin_project! {
    /// See [`timeout`].
    pub struct Timeout<F> {
        #[pin]
        future: F,
        sleep: Sleep,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.future.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match Pin::new(this.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// [`Sleep`] as hyper's timer (`header_read_timeout`, HTTP/2 keep-alive).
#[derive(Debug, Clone, Copy, Default)]
pub struct HyperTimer;

impl hyper::rt::Sleep for Sleep {}

impl hyper::rt::Timer for HyperTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(sleep(duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(sleep_until(deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<Sleep>() {
            Some(mut s) => s.reset(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_not_before_the_deadline_and_within_a_tick() {
        let start = Instant::now();
        sleep(Duration::from_millis(120)).await;
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(120), "fired early: {took:?}");
    }

    #[tokio::test]
    async fn timeout_passes_a_ready_future_and_cuts_a_pending_one() {
        assert_eq!(timeout(Duration::from_secs(5), async { 7 }).await, Ok(7));
        let start = Instant::now();
        let r = timeout(Duration::from_millis(80), std::future::pending::<()>()).await;
        assert_eq!(r, Err(Elapsed));
        assert!(start.elapsed() >= Duration::from_millis(80));
    }

    #[tokio::test]
    async fn a_past_deadline_fires_and_reset_moves_it() {
        sleep_until(Instant::now() - Duration::from_millis(1)).await;
        let mut s = Box::pin(sleep(Duration::from_secs(3600)));
        // Registered with the hour-long deadline...
        assert!(futures_poll_once(s.as_mut()).is_pending());
        // ...then moved close: it fires.
        s.reset(Instant::now() + Duration::from_millis(30));
        s.await;
    }

    /// hyper's HTTP/2 keep-alive resets a sleep that has fired; it must
    /// fire again (the first firing took its waker).
    #[tokio::test]
    async fn a_fired_sleep_that_is_reset_fires_again() {
        let bound = Duration::from_secs(5);
        let mut s = Box::pin(sleep(Duration::from_millis(20)));
        tokio::time::timeout(bound, s.as_mut())
            .await
            .expect("fires");
        for wait in [60, 10] {
            let start = Instant::now();
            s.reset(Instant::now() + Duration::from_millis(wait));
            tokio::time::timeout(bound, s.as_mut())
                .await
                .expect("a reset sleep fires again");
            assert!(start.elapsed() >= Duration::from_millis(wait));
        }
    }

    /// The ticker skips a slab until its earliest deadline: one far away
    /// must not hide a nearer one registered after a scan.
    #[tokio::test]
    async fn a_far_deadline_does_not_hide_a_near_one() {
        let bound = Duration::from_secs(5);
        let mut far = Box::pin(sleep(Duration::from_secs(3600)));
        assert!(futures_poll_once(far.as_mut()).is_pending());
        // A scan fires this one and leaves the hour-long deadline as the
        // slab's next one...
        tokio::time::timeout(bound, sleep(Duration::from_millis(60)))
            .await
            .expect("near deadline");
        // ...and a later, nearer deadline still fires.
        let start = Instant::now();
        tokio::time::timeout(bound, sleep(Duration::from_millis(80)))
            .await
            .expect("nearer deadline after a scan");
        assert!(start.elapsed() >= Duration::from_millis(80));
        assert!(futures_poll_once(far.as_mut()).is_pending());
    }

    #[test]
    fn a_duration_too_large_for_the_clock_is_about_never() {
        let far = deadline_in(Duration::MAX);
        assert!(far > Instant::now() + Duration::from_secs(60 * 60 * 24 * 365));
        let s = sleep(Duration::MAX);
        assert!(s.deadline >= far);
    }

    #[test]
    fn dropped_sleeps_free_their_slots() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let live = || {
                let shard = shard_index();
                lock(&WHEEL.wakers.shards[shard].slab).live
            };
            let mut sleeps: Vec<_> = (0..100)
                .map(|_| Box::pin(sleep(Duration::from_secs(3600))))
                .collect();
            for s in &mut sleeps {
                assert!(futures_poll_once(s.as_mut()).is_pending());
            }
            assert!(live() >= 100);
            drop(sleeps);
            // Other tests share slab 0; ours are gone at least.
            assert!(live() < 100);
        });
    }

    fn futures_poll_once<F: Future + ?Sized>(f: Pin<&mut F>) -> Poll<F::Output> {
        let waker = Waker::noop();
        f.poll(&mut Context::from_waker(waker))
    }
}

#[cfg(test)]
mod signal_tests {
    use super::*;

    #[tokio::test]
    async fn fire_completes_waiters_registered_before_and_after() {
        let signal = Arc::new(Signal::default());
        let mut before = Box::pin(signal.wait());
        assert!(Pin::new(&mut before)
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_pending());
        let task = tokio::spawn({
            let signal = signal.clone();
            async move { signal.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(!task.is_finished());
        signal.fire();
        task.await.expect("waiter");
        before.await;
        signal.wait().await;
        assert!(signal.wakers.is_empty());
    }
}

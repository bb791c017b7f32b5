//! The wait engine of the local namespace: `WaitForSingleObject`, `WaitForMultipleObjects`
//! (any and all), `SignalObjectAndWait`, cancellable waits for the async API, and giving back
//! what a wait took. A wait evaluates its objects under the namespace lock ([`Guard`]), and
//! sleeps in `futex_waitv` on its own wake word (which a signal that grants it bumps) and on its
//! mutexes' wake sequences and lock words until woken
//! (with a re-check after a second without a wake, as a safety net: see `RECHECK`).
//!
//! Every function returns Win32 outcomes: `Ok` values, or `Err(code)` with the last-error code.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use super::objects::LocalObj;
use super::segment::{Guard, ObjSync, Segment};
use super::sys::{self, FUTEX_TID_MASK, Locked, WaitOn, Woke};
use dlock_proto::vocab::{
    MUTEX_RECURSION_MAX, ObjectKind, SYNCHRONIZE, Timeout, WaitOutcome, Win32Error,
};

/// What a completed wait took, in enough detail to give it back exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// The Win32 outcome.
    pub outcome: WaitOutcome,
    /// Bit i: the mutex at index i was acquired abandoned.
    pub abandoned: u64,
    /// Bit i: the event at index i released the wait through a pulse (it consumed nothing).
    pub pulsed: u64,
}

impl Taken {
    /// An outcome with no pulse involved.
    fn plain(outcome: WaitOutcome) -> Taken {
        let abandoned = match outcome {
            WaitOutcome::Abandoned { index, .. } => 1 << index,
            _ => 0,
        };
        Taken {
            outcome,
            abandoned,
            pulsed: 0,
        }
    }
}

/// The result of one attempt to satisfy a wait.
enum Attempt {
    Done(Taken),
    Failed(Win32Error),
    NotYet,
}

/// Tries to take a mutex for the calling thread (recursively if it owns it already).
#[inline]
fn take_mutex(sync: &ObjSync, tid: u32, index: usize) -> Attempt {
    if sync.owned_by(tid) {
        let r = sync.recursion.load(Ordering::Relaxed);
        if r >= MUTEX_RECURSION_MAX {
            return Attempt::Failed(Win32Error::MUTANT_LIMIT_EXCEEDED);
        }
        sync.recursion.store(r + 1, Ordering::Relaxed);
        return Attempt::Done(Taken::plain(WaitOutcome::Signaled {
            index,
            fencing_token: sync.fencing.load(Ordering::Relaxed),
        }));
    }
    if !super::objects::may_take_another() {
        // At the cap, a free mutex fails the wait; a held one is passed over, so that a
        // wait-any still returns a later index that is signaled.
        return if sync.is_held() {
            Attempt::NotYet
        } else {
            Attempt::Failed(Win32Error::NO_SYSTEM_RESOURCES)
        };
    }
    // SAFETY: the mutex of a live object slot, initialised at creation.
    let owner_died = match unsafe { sys::robust_trylock(sync.mutex_ptr()) } {
        Locked::Clean => false,
        Locked::OwnerDied => true,
        Locked::Busy => return Attempt::NotYet,
    };
    Attempt::Done(Taken::plain(match sync.acquired(owner_died) {
        (fencing_token, false) => WaitOutcome::Signaled {
            index,
            fencing_token,
        },
        (fencing_token, true) => WaitOutcome::Abandoned {
            index,
            fencing_token,
        },
    }))
}

#[cfg(test)]
thread_local! {
    /// Test hook: runs inside `untake_mutex` right after the unlock, on the giving thread.
    pub static AFTER_UNTAKE_UNLOCK: std::cell::RefCell<Option<Box<dyn FnMut()>>> =
        const { std::cell::RefCell::new(None) };
}

/// Undoes one acquisition of a mutex (a wait-all that could not complete, a cancelled wait).
/// An acquisition that found the mutex abandoned leaves it abandoned again for the next
/// owner: marked before the unlock, so that whoever takes it first, even a lock-free
/// try-lock an instant after the unlock, sees the mark.
fn untake_mutex(seg: &Segment, index: usize, was_abandoned: bool) {
    let sync = &seg.syncs()[index];
    let r = sync.recursion.load(Ordering::Relaxed);
    if r > 1 {
        sync.recursion.store(r - 1, Ordering::Relaxed);
    } else {
        sync.recursion.store(0, Ordering::Relaxed);
        if was_abandoned {
            sync.given_back_abandoned.store(1, Ordering::Relaxed);
        }
        // SAFETY: acquired by this thread a moment ago.
        unsafe { sys::robust_unlock(sync.mutex_ptr()) };
        super::objects::released_one();
        #[cfg(test)]
        AFTER_UNTAKE_UNLOCK.with(|hook| {
            if let Some(hook) = hook.borrow_mut().as_mut() {
                hook();
            }
        });
        sync.notify();
    }
}

/// What a registered wait was handed by signals (the `grant` module): bits by index.
#[derive(Debug, Clone, Copy, Default)]
struct Handed {
    /// Released without consuming (manual-reset events, pulses).
    released: u64,
    /// Units moved to the wait (auto-reset events, semaphores).
    granted: u64,
}

impl Handed {
    fn any(self) -> u64 {
        self.released | self.granted
    }
}

/// Completes a wait with what signals handed it: a wait-any with its one index, a wait-all by
/// taking its mutexes (its events and semaphores were consumed by the signal). `NotYet` if a
/// mutex of the wait-all was taken by another thread first: the caller gives the grants back.
fn complete_handed(seg: &Segment, objs: &[LocalObj], wait_all: bool, handed: Handed) -> Attempt {
    if !wait_all {
        let k = handed.any().trailing_zeros() as usize;
        return Attempt::Done(Taken {
            outcome: WaitOutcome::Signaled {
                index: k,
                fencing_token: 0,
            },
            abandoned: 0,
            pulsed: handed.released & (1 << k),
        });
    }
    match take_mutexes(seg, objs, sys::tid()) {
        Ok((abandoned, token)) => Attempt::Done(wait_all_taken(abandoned, token, handed.released)),
        Err(not_done) => not_done,
    }
}

/// Takes every mutex of a wait-all for thread `tid`: the abandoned bits and the first fencing
/// token, or (having given back those it took) `NotYet` if another thread holds one, `Failed`
/// at the recursion limit.
fn take_mutexes(seg: &Segment, objs: &[LocalObj], tid: u32) -> Result<(u64, u64), Attempt> {
    let mut taken: Vec<(usize, bool)> = Vec::new();
    let mut abandoned_mask = 0u64;
    let mut token = 0;
    for (k, o) in objs.iter().enumerate() {
        if o.kind != ObjectKind::Mutex {
            continue;
        }
        match take_mutex(o.sync(seg), tid, k) {
            Attempt::Done(t) => {
                let was_abandoned = matches!(t.outcome, WaitOutcome::Abandoned { .. });
                if was_abandoned {
                    abandoned_mask |= 1 << k;
                }
                if token == 0 {
                    token = t.outcome.fencing_token().unwrap_or(0);
                }
                taken.push((o.index as usize, was_abandoned));
            }
            other => {
                // A thread outside the namespace lock took it first (or the limit was hit).
                for &(i, was_abandoned) in taken.iter().rev() {
                    untake_mutex(seg, i, was_abandoned);
                }
                return Err(match other {
                    Attempt::Failed(code) => Attempt::Failed(code),
                    _ => Attempt::NotYet,
                });
            }
        }
    }
    Ok((abandoned_mask, token))
}

/// The outcome of a completed wait-all.
fn wait_all_taken(abandoned: u64, token: u64, pulsed: u64) -> Taken {
    Taken {
        outcome: if abandoned != 0 {
            WaitOutcome::Abandoned {
                index: 0,
                fencing_token: token,
            }
        } else {
            WaitOutcome::Signaled {
                index: 0,
                fencing_token: token,
            }
        },
        abandoned,
        pulsed,
    }
}

/// One attempt at a wait on `objs` under the namespace lock, with what the objects hold now.
fn attempt(g: &mut Guard<'_>, objs: &[LocalObj], wait_all: bool) -> Attempt {
    let seg = g.seg;
    let tid = sys::tid();
    let event_ready = |o: &LocalObj| o.meta(seg).signaled.load(Ordering::Relaxed) != 0;
    if !wait_all {
        for (k, o) in objs.iter().enumerate() {
            let meta = o.meta(seg);
            match o.kind {
                ObjectKind::Mutex => match take_mutex(o.sync(seg), tid, k) {
                    Attempt::NotYet => {}
                    done => return done,
                },
                ObjectKind::Event => {
                    if event_ready(o) {
                        if meta.manual_reset.load(Ordering::Relaxed) == 0 {
                            g.touch(&meta.signaled);
                            meta.signaled.store(0, Ordering::Relaxed);
                        }
                        return Attempt::Done(Taken::plain(WaitOutcome::Signaled {
                            index: k,
                            fencing_token: 0,
                        }));
                    }
                }
                ObjectKind::Semaphore => {
                    let c = meta.count.load(Ordering::Relaxed);
                    if c > 0 {
                        g.touch(&meta.count);
                        meta.count.store(c - 1, Ordering::Relaxed);
                        return Attempt::Done(Taken::plain(WaitOutcome::Signaled {
                            index: k,
                            fencing_token: 0,
                        }));
                    }
                }
            }
        }
        return Attempt::NotYet;
    }
    // Wait-all: check everything first, then take the mutexes, then consume the rest.
    for o in objs {
        let ready = match o.kind {
            ObjectKind::Mutex => {
                let s = o.sync(seg);
                if s.owned_by(tid) {
                    if s.recursion.load(Ordering::Relaxed) >= MUTEX_RECURSION_MAX {
                        return Attempt::Failed(Win32Error::MUTANT_LIMIT_EXCEEDED);
                    }
                    true
                } else {
                    !s.is_held()
                }
            }
            ObjectKind::Event => event_ready(o),
            ObjectKind::Semaphore => o.meta(seg).count.load(Ordering::Relaxed) > 0,
        };
        if !ready {
            return Attempt::NotYet;
        }
    }
    let (abandoned_mask, token) = match take_mutexes(seg, objs, tid) {
        Ok(taken) => taken,
        Err(not_done) => return not_done,
    };
    for o in objs {
        let meta = o.meta(seg);
        match o.kind {
            ObjectKind::Event => {
                if meta.manual_reset.load(Ordering::Relaxed) == 0 {
                    g.touch(&meta.signaled);
                    meta.signaled.store(0, Ordering::Relaxed);
                }
            }
            ObjectKind::Semaphore => {
                g.touch(&meta.count);
                meta.count
                    .store(meta.count.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
            }
            ObjectKind::Mutex => {}
        }
    }
    Attempt::Done(wait_all_taken(abandoned_mask, token, 0))
}

/// Passes on the wake of each mutex of `objs` that is free and not the calling thread's:
/// a release wakes one waiter only ([`ObjSync::notify`]), and this wait may have been that one
/// without taking the mutex. It wakes every waiter of the mutex then (the rare case: a wait
/// that cannot use a free mutex), so that no queue order (real-time priorities put the
/// waits that already passed first) can keep the wake from a wait that can take it.
/// `passed[k]` remembers the release (by [`ObjSync::release_epoch`]) of object `k` already
/// passed on, so each wait passes at most once per release: no ping-pong.
fn pass_on_wakes(seg: &Segment, objs: &[LocalObj], passed: &mut [u64]) {
    for (k, o) in objs.iter().enumerate() {
        if o.kind != ObjectKind::Mutex {
            continue;
        }
        let sync = o.sync(seg);
        // The epoch is read on both sides of the word: a lock-free take between the two reads
        // would otherwise make this wait record the epoch of a release that has not happened
        // yet, and let the wake of that release stop here.
        let before = sync.release_epoch();
        if sync.word().load(Ordering::SeqCst) & FUTEX_TID_MASK != 0 {
            continue; // held (by this thread, or by another whose release will wake)
        }
        if sync.release_epoch() != before {
            continue; // taken (and maybe released) meanwhile: that holder's release wakes
        }
        // Epochs are fencing tokens + 1, so that 0 means "nothing passed yet".
        let epoch = before + 1;
        if passed[k] != epoch {
            passed[k] = epoch;
            sync.notify_all();
        }
    }
}

/// How long a blocked wait sleeps at most before it looks at its objects again: a safety net
/// for a wake that was lost (the kernel hands a mutex owner's death to one sleeper only, and
/// that sleeper may die too). Every wake this engine knows of is delivered; this is not how
/// a wait learns of a signal. A look with nothing available is made without the namespace
/// lock; at least every `RECHECKS_PER_REAP + 1`-th look takes it (and reaps).
const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(test)]
thread_local! {
    /// Test hook: no re-check on this thread, so that a test sees whether a wake came.
    pub static NO_RECHECK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn recheck_disabled() -> bool {
    #[cfg(test)]
    {
        NO_RECHECK.with(|n| n.get())
    }
    #[cfg(not(test))]
    {
        false
    }
}

/// Re-checks in a row that may be decided without the namespace lock.
const RECHECKS_PER_REAP: u32 = 10;

/// Whether `o` looks available, read without the lock (a hint: the locked attempt decides).
fn looks_available(seg: &Segment, o: &LocalObj) -> bool {
    let meta = o.meta(seg);
    match o.kind {
        ObjectKind::Mutex => o.sync(seg).word().load(Ordering::Relaxed) & FUTEX_TID_MASK == 0,
        ObjectKind::Event => meta.signaled.load(Ordering::Relaxed) != 0,
        ObjectKind::Semaphore => meta.count.load(Ordering::Relaxed) > 0,
    }
}

/// How long a wait whose deadline has passed may still wait for the namespace lock for its
/// last look (ordinary contention lasts microseconds; only a stuck holder costs this much).
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// How long one attempt at the namespace lock sleeps at most inside a wait, so that a
/// cancellation and an infinite wait's log line are not held up by a stopped holder.
const LOCK_SLICE: std::time::Duration = std::time::Duration::from_secs(1);

/// Takes the namespace lock for a wait: `None` once its `deadline` passed first,
/// `OPERATION_ABORTED` once it is cancelled. An infinite wait waits for as long as the lock is
/// held, saying so in the log each lock timeout.
fn lock_for_wait<'a>(
    seg: &'a Segment,
    deadline: Option<Instant>,
    cancel: Option<&AtomicU32>,
) -> Result<Option<Guard<'a>>, Win32Error> {
    let mut warn_at = Instant::now() + seg.lock_timeout();
    // A deadline that has just passed still allows a short wait for the lock, so that a wait
    // that is ending takes its last look (and leaves the registry) rather than deferring.
    let deadline = deadline.map(|d| d.max(Instant::now() + LOCK_GRACE));
    loop {
        let slice_end = Instant::now() + LOCK_SLICE;
        let until = deadline.map_or(slice_end, |d| d.min(slice_end));
        if let Some(g) = seg.lock_until(until)? {
            return Ok(Some(g));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
        if cancel.is_some_and(|c| c.load(Ordering::SeqCst) != 0) {
            return Err(Win32Error::OPERATION_ABORTED);
        }
        if Instant::now() >= warn_at {
            tracing::warn!(
                path = %seg.path().display(),
                holder = %seg.lock_holder_description(),
                "a local wait is still waiting for the namespace lock, which another process \
                 holds without releasing it"
            );
            warn_at = Instant::now() + seg.lock_timeout();
        }
    }
}

/// The most objects a cancellable wait may name: each may need two futex words, and the
/// cancel word takes one of `futex_waitv`'s 128.
pub const CANCELLABLE_WAIT_OBJECTS_MAX: usize = 63;

/// Ends the cancellable wait sleeping on `word` (see [`wait_cancellable`]): sets the word and
/// wakes the waiter. Idempotent.
pub fn cancel(word: &AtomicU32) {
    word.store(1, Ordering::SeqCst);
    let _ = rustix::thread::futex::wake(word, rustix::thread::futex::Flags::empty(), 1);
}

/// `WaitForMultipleObjects` over local handles (1..=64, checked by the caller, with
/// `SYNCHRONIZE` access and, for wait-all, no object twice).
pub fn wait(
    seg: &Segment,
    objs: &[LocalObj],
    wait_all: bool,
    timeout: Timeout,
) -> Result<WaitOutcome, Win32Error> {
    wait_cancellable(seg, objs, wait_all, timeout, None).map(|t| t.outcome)
}

/// [`wait`] that also ends, with [`Win32Error::OPERATION_ABORTED`], once `cancel` is non-zero and
/// woken (at most [`CANCELLABLE_WAIT_OBJECTS_MAX`] objects when given).
pub fn wait_cancellable(
    seg: &Segment,
    objs: &[LocalObj],
    wait_all: bool,
    timeout: Timeout,
    cancel: Option<&AtomicU32>,
) -> Result<Taken, Win32Error> {
    if cancel.is_some() && objs.len() > CANCELLABLE_WAIT_OBJECTS_MAX {
        return Err(Win32Error::INVALID_PARAMETER);
    }
    if cancel.is_some_and(|c| c.load(Ordering::SeqCst) != 0) {
        // Cancelled while queued: take nothing.
        return Err(Win32Error::OPERATION_ABORTED);
    }
    for o in objs {
        o.need(SYNCHRONIZE)?;
    }
    if wait_all {
        let mut seen: Vec<u32> = objs.iter().map(|o| o.index).collect();
        seen.sort_unstable();
        if seen.windows(2).any(|w| w[0] == w[1]) {
            return Err(Win32Error::INVALID_PARAMETER);
        }
    }
    // The fast path: one mutex, no namespace lock, no system call unless contended.
    if let [o] = objs
        && o.kind == ObjectKind::Mutex
    {
        match take_mutex(o.sync(seg), sys::tid(), 0) {
            Attempt::Done(taken) => return Ok(taken),
            Attempt::Failed(code) => return Err(code),
            Attempt::NotYet if timeout == Timeout::Millis(0) => {
                return Ok(Taken::plain(WaitOutcome::TimedOut));
            }
            Attempt::NotYet => {}
        }
    }
    let deadline = timeout.as_duration().map(|d| Instant::now() + d);
    blocking_wait(seg, objs, wait_all, deadline, cancel)
}

/// Gives back what a wait took, exactly: a mutex is released (abandoned again if it was
/// taken abandoned), a semaphore unit returned, an auto-reset event set again unless a pulse
/// released the wait. For waits whose caller went away (a cancelled async wait); must run on
/// the thread that waited, which owns the mutexes taken.
pub fn give_back(seg: &Segment, objs: &[LocalObj], wait_all: bool, taken: Taken) {
    let indexes: Vec<usize> = match taken.outcome {
        WaitOutcome::TimedOut => return,
        _ if wait_all => (0..objs.len()).collect(),
        WaitOutcome::Signaled { index, .. } | WaitOutcome::Abandoned { index, .. } => {
            vec![index]
        }
    };
    for k in indexes {
        let Some(o) = objs.get(k) else { continue };
        let result = match o.kind {
            ObjectKind::Mutex => {
                if o.sync(seg).owned_by(sys::tid()) {
                    untake_mutex(seg, o.index as usize, taken.abandoned & (1 << k) != 0);
                }
                Ok(())
            }
            ObjectKind::Semaphore => o.release_semaphore(seg, 1).map(|_| ()),
            ObjectKind::Event => {
                let manual = o.meta(seg).manual_reset.load(Ordering::Relaxed) != 0;
                if manual || taken.pulsed & (1 << k) != 0 {
                    Ok(())
                } else {
                    o.set_event(seg)
                }
            }
        };
        if let Err(code) = result {
            tracing::warn!(%code, "could not give back what a cancelled local wait took");
        }
    }
}

/// `SignalObjectAndWait` over two local handles.
///
/// Atomic in the sense that matters: the wait is registered before the signal, so a
/// `PulseEvent` or a release that the signal provokes cannot slip between the two.
pub fn signal_and_wait(
    seg: &Segment,
    signal: &LocalObj,
    wait_on: &LocalObj,
    timeout: Timeout,
) -> Result<WaitOutcome, Win32Error> {
    wait_on.need(SYNCHRONIZE)?;
    let deadline = timeout.as_duration().map(|d| Instant::now() + d);
    let objs = std::slice::from_ref(wait_on);
    let slot = {
        let Some(mut g) = lock_for_wait(seg, deadline, None)? else {
            return Ok(WaitOutcome::TimedOut);
        };
        signal.check(&g)?;
        wait_on.check(&g)?;
        g.reap_dead_now_and_then();
        let slot = g.register(&[wait_on.index as usize], false)?;
        g.commit();
        slot
    };
    if let Err(code) = signal.signal(seg) {
        match seg.lock() {
            Ok(mut g) => {
                g.unregister(slot);
                g.commit();
            }
            Err(_) => seg.defer_unregister(slot),
        }
        return Err(code);
    }
    wait_loop(seg, objs, false, deadline, None, slot).map(|t| t.outcome)
}

fn blocking_wait(
    seg: &Segment,
    objs: &[LocalObj],
    wait_all: bool,
    deadline: Option<Instant>,
    cancel: Option<&AtomicU32>,
) -> Result<Taken, Win32Error> {
    let indexes: Vec<usize> = objs.iter().map(|o| o.index as usize).collect();
    let slot = {
        let Some(mut g) = lock_for_wait(seg, deadline, cancel)? else {
            return Ok(Taken::plain(WaitOutcome::TimedOut));
        };
        for o in objs {
            o.check(&g)?;
        }
        let first = attempt(&mut g, objs, wait_all);
        g.commit();
        match first {
            Attempt::Done(taken) => return Ok(taken),
            Attempt::Failed(code) => return Err(code),
            Attempt::NotYet => {}
        }
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Ok(Taken::plain(WaitOutcome::TimedOut));
        }
        // Waits of dead processes inflate waiter counts (and so cost every releaser a
        // system call) until reaped; a wait about to sleep is a good moment, now and then (a
        // liveness test per attached process is too much for every wait).
        g.reap_dead_now_and_then();
        let slot = g.register(&indexes, wait_all)?;
        g.commit();
        slot
    };
    wait_loop(seg, objs, wait_all, deadline, cancel, slot)
}

/// Sleeps and retries until the registered wait `slot` on `objs` completes, times out or is
/// cancelled; it leaves the registry when it ends.
fn wait_loop(
    seg: &Segment,
    objs: &[LocalObj],
    wait_all: bool,
    deadline: Option<Instant>,
    cancel: Option<&AtomicU32>,
    slot: usize,
) -> Result<Taken, Win32Error> {
    let tid = sys::tid();
    let mut words: Vec<WaitOn<'_>> = Vec::with_capacity(2 * objs.len() + 1);
    // (index into `words`, object) of each mutex's lock word.
    let mut lock_entries: Vec<(usize, usize)> = Vec::with_capacity(objs.len());
    let mut timed_out = false;
    let mut recheck_due = false;
    let mut quiet_rechecks = 0u32;
    let mut failed: Option<Win32Error> = None;
    // Per object: the release whose wake this wait passed on (see `pass_on_wakes`).
    let mut passed = vec![0u64; objs.len()];
    loop {
        // Snapshot the words first: any change after this wakes (or fails) the sleep below.
        words.clear();
        lock_entries.clear();
        if let Some(cancel) = cancel {
            words.push(WaitOn {
                word: cancel,
                expected: 0,
            });
        }
        // Events and semaphores reach a wait only through grants, which wake the wait's own
        // word; a wait of mutexes only is never granted (and may need all 128 futex words).
        if objs.iter().any(|o| o.kind != ObjectKind::Mutex) {
            let wake = &seg.waiters()[slot].wake;
            words.push(WaitOn {
                word: wake,
                expected: wake.load(Ordering::SeqCst),
            });
        }
        for o in objs.iter().filter(|o| o.kind == ObjectKind::Mutex) {
            let sync = o.sync(seg);
            words.push(WaitOn {
                word: &sync.seq,
                expected: sync.seq.load(Ordering::SeqCst),
            });
            lock_entries.push((words.len(), o.index as usize));
            words.push(WaitOn {
                word: sync.word(),
                expected: sync.sleep_value(tid),
            });
        }
        // A re-check with nothing to act on (no grant, no object available) is decided
        // without the namespace lock: many blocked waits must not each take it every second.
        // Every RECHECKS_PER_REAP-th one looks under the lock anyway (and reaps).
        let quiet = recheck_due
            && quiet_rechecks < RECHECKS_PER_REAP
            && failed.is_none()
            && !timed_out
            && cancel.is_none_or(|c| c.load(Ordering::SeqCst) == 0)
            && seg.waiters()[slot].grants.any() == 0
            && !objs.iter().any(|o| looks_available(seg, o));
        if quiet {
            quiet_rechecks += 1;
        } else {
            quiet_rechecks = 0;
        }
        // Attempt, and leave the registry in the same critical section when done, so that a
        // PulseEvent never picks a wait that no longer waits.
        let outcome = if quiet {
            Attempt::NotYet
        } else {
            let mut g = match lock_for_wait(seg, deadline, cancel) {
                Ok(Some(g)) => g,
                ended => {
                    // The deadline passed (or the wait was cancelled) while another process
                    // held the namespace lock: this wait leaves the registry (and gives back
                    // anything granted to it) at this process's next call that gets the lock.
                    seg.defer_unregister(slot);
                    pass_on_wakes(seg, objs, &mut passed);
                    return match ended {
                        Ok(_) => Ok(Taken::plain(WaitOutcome::TimedOut)),
                        Err(code) => Err(code),
                    };
                }
            };
            seg.looks.fetch_add(1, Ordering::Relaxed);
            let w = &seg.waiters()[slot];
            let handed = Handed {
                released: w.grants.released.load(Ordering::Relaxed),
                granted: w.grants.granted.load(Ordering::Relaxed),
            };
            // A cancelled wait takes nothing more: its caller is gone.
            let cancelled = cancel.is_some_and(|c| c.load(Ordering::SeqCst) != 0);
            let mut r = if cancelled {
                Attempt::Failed(Win32Error::OPERATION_ABORTED)
            } else if handed.any() != 0 {
                // Satisfied by a signal, even if its deadline has passed since.
                complete_handed(seg, objs, wait_all, handed)
            } else {
                if recheck_due {
                    // Long without a wake: also reclaim dead processes, whose waits may hold
                    // units a signal granted them as they died (rate-limited per process).
                    g.reap_dead_now_and_then();
                }
                attempt(&mut g, objs, wait_all)
            };
            let by_grants = handed.any() != 0 && matches!(r, Attempt::Done(_));
            if matches!(r, Attempt::NotYet) {
                if let Some(code) = failed {
                    r = Attempt::Failed(code);
                } else if timed_out {
                    r = Attempt::Done(Taken::plain(WaitOutcome::TimedOut));
                }
            }
            // The grants this outcome used (only an outcome made from them uses any); the
            // others go back to their objects.
            let used = match &r {
                Attempt::Done(t) if by_grants && wait_all => {
                    debug_assert!(t.outcome != WaitOutcome::TimedOut);
                    handed.any()
                }
                Attempt::Done(_) if by_grants => 1 << handed.any().trailing_zeros(),
                _ => 0,
            };
            if used != 0 {
                g.touch(&w.grants);
                w.grants.released.store(0, Ordering::Relaxed);
                w.grants.granted.store(0, Ordering::Relaxed);
            }
            if matches!(r, Attempt::NotYet) {
                // A wait-all whose mutex was taken first waits on, without its grants.
                if handed.any() != 0 {
                    g.return_grants(slot, u64::MAX);
                }
            } else {
                // Anything still granted goes back when it leaves the registry.
                if used != 0 && handed.granted & !used != 0 {
                    g.touch(&w.grants);
                    w.grants
                        .granted
                        .store(handed.granted & !used, Ordering::Relaxed);
                }
                g.unregister(slot);
            }
            g.commit();
            r
        };
        if !quiet {
            pass_on_wakes(seg, objs, &mut passed);
        }
        match outcome {
            Attempt::Done(taken) => return Ok(taken),
            Attempt::Failed(code) => return Err(code),
            Attempt::NotYet => {}
        }
        // Sleep at most RECHECK: defence in depth against a wake that never comes (the
        // kernel hands an owner's death to one sleeper only, and that sleeper may die too; a
        // signaller may be killed at an instant no test found).
        let recheck = (!recheck_disabled()).then(|| Instant::now() + RECHECK);
        let sleep_until = match (deadline, recheck) {
            (Some(d), Some(r)) => Some(d.min(r)),
            (d, r) => d.or(r),
        };
        recheck_due = false;
        match sys::futex_waitv(&words, sleep_until) {
            Woke::TimedOut if deadline.is_some_and(|d| Instant::now() >= d) => {
                // One last attempt (honouring a grant that raced the deadline), then leave.
                timed_out = true;
            }
            Woke::TimedOut => recheck_due = true,
            Woke::Failed(code) => {
                tracing::error!(code, "futex_waitv failed; ending the wait");
                failed = Some(Win32Error::NOT_SUPPORTED);
            }
            _ => {}
        }
        // The kernel's owner-died wake reaches one sleeper on the lock word. Whoever sees a
        // holder vanish (the word went from held to OWNER_DIED) wakes the others through the
        // wake sequence; each waiter does so at most once per death, as its next snapshot
        // holds the new value.
        for &(at, obj) in &lock_entries {
            let before = words[at].expected;
            let now = words[at].word.load(Ordering::SeqCst);
            if before & FUTEX_TID_MASK != 0
                && now & FUTEX_TID_MASK == 0
                && now & sys::FUTEX_OWNER_DIED != 0
            {
                let sync = &seg.syncs()[obj];
                sync.seq.fetch_add(1, Ordering::SeqCst);
                sys::futex_wake(&sync.seq, i32::MAX as u32);
            }
        }
    }
}

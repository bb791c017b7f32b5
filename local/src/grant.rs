//! Grants at signal time: a signal hands what it makes available to the registered waits it
//! satisfies *at that instant*, under the namespace lock, as the cluster does inside the
//! signalling command (docs/win32-semantics.md §5, §6, §7).
//!
//! - `SetEvent` of a manual-reset event releases every registered wait it satisfies (marked
//!   `released`: nothing is consumed), so `SetEvent; ResetEvent` releases the waits blocked
//!   at the set, as on Windows.
//! - `SetEvent` of an auto-reset event moves its one signal to the first wait it satisfies
//!   (marked `granted`), so a zero-timeout poll from a running thread cannot take it from a
//!   thread already waiting.
//! - `PulseEvent` does the same with a signal that lasts only the call: judged at the pulse,
//!   `released` (nothing to give back), then the event is left non-signaled.
//! - `ReleaseSemaphore(n)` moves up to `n` units to the first waits it satisfies (`granted`).
//!
//! Waits are served oldest registration first (a ticket per registration), as the cluster
//! serves its queue, so a thread that waits again at once cannot starve the others.
//!
//! A wait-any is satisfied by any one of its objects; it then holds exactly one grant. A
//! wait-all is satisfied only if every other object of its set is available at that instant:
//! its events and semaphores are consumed for it then and there, together; its mutexes are
//! not. A local mutex belongs to the OS thread that takes it (glibc's robust mutex), so a
//! signaller cannot take one on a waiter's behalf: a wait-all granted while its mutexes were
//! free takes them when it runs, and if a thread on the lock-free path took one first, it
//! gives every grant back and waits on. That, and a wait-any whose grant wins over a mutex of
//! a lower index that was released (not granted) before the signal, is what stays
//! approximate.
//!
//! A grant a wait does not use (it was cancelled, failed, ended otherwise, or its process
//! died and was reaped) is given back: the unit returns to its object, which is signalled
//! again, granting the next wait. The signaller wakes the waits it granted before its change
//! is committed ([`crate::segment::Guard::commit`]): a signaller killed after the commit has
//! woken them already, and one killed before it has its change rolled back.

use std::sync::atomic::Ordering;

use super::segment::{Guard, OBJECTS_MAX, WaiterSlot};
use super::sys::FUTEX_TID_MASK;

/// `ObjMeta::kind` values.
const MUTEX: u32 = 1;
const EVENT: u32 = 2;
const SEMAPHORE: u32 = 3;

/// What a signal makes available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// The event is signaled now (`SetEvent`, or an auto-reset signal given back).
    Set,
    /// `PulseEvent`: released waits consume nothing, and the event stays non-signaled.
    Pulse,
    /// The semaphore's count was raised (`ReleaseSemaphore`, or a unit given back).
    Release,
}

impl Guard<'_> {
    /// Hands object `obj`, just signalled, to the registered waits it satisfies now, oldest
    /// first, while units remain, and wakes each wait it granted (through the wait's own wake
    /// word: the others sleep on). Returns whether it granted any wait. Called under the lock,
    /// so the wakes come before the caller commits.
    pub(crate) fn grant(&mut self, obj: usize, signal: Signal) -> bool {
        let seg = self.seg;
        let Some(sync) = seg.syncs().get(obj) else {
            return false;
        };
        if sync.waiters.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let meta = &seg.metas()[obj];
        let manual = meta.manual_reset.load(Ordering::Relaxed) != 0;
        let mut granted_any = false;
        // The waits naming the object that no signal satisfied yet, oldest first.
        let mut candidates: Vec<(u64, usize)> = seg
            .registered_waits(&self.held)
            .into_iter()
            .map(|slot| (slot, &seg.waiters()[slot]))
            .filter(|(_, w)| {
                w.proc.load(Ordering::Relaxed) != 0
                    && w.ended.load(Ordering::Acquire) == 0
                    && w.grants.any() == 0
                    && w.objects().any(|o| o == obj)
            })
            .map(|(slot, w)| (w.ticket.load(Ordering::Relaxed), slot))
            .collect();
        candidates.sort_unstable();
        for (_, slot) in candidates {
            let available = match signal {
                Signal::Set => meta.signaled.load(Ordering::Relaxed) != 0,
                // An auto-reset pulse releases one wait (the loop ends after it).
                Signal::Pulse => true,
                Signal::Release => meta.count.load(Ordering::Relaxed) > 0,
            };
            if !available {
                break;
            }
            let w = &seg.waiters()[slot];
            let proc = w.proc.load(Ordering::Relaxed);
            if proc == 0 || w.grants.any() != 0 {
                // Satisfied already (a wait-all's grant consumed this object for it).
                continue;
            }
            let Some(k) = w.objects().position(|o| o == obj) else {
                continue;
            };
            let wait_all = w.wait_all.load(Ordering::Relaxed) != 0;
            if wait_all && !self.others_ready(w, obj) {
                continue;
            }
            // A dead process's wait (not reaped yet) would swallow the unit.
            if seg.is_dead(proc - 1) {
                continue;
            }
            let mut released = 0u64;
            let mut granted = 0u64;
            match signal {
                Signal::Pulse => released |= 1 << k,
                Signal::Set if manual => released |= 1 << k,
                Signal::Set => {
                    self.touch(&meta.signaled);
                    meta.signaled.store(0, Ordering::Relaxed);
                    granted |= 1 << k;
                }
                Signal::Release => {
                    self.touch(&meta.count);
                    meta.count
                        .store(meta.count.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
                    granted |= 1 << k;
                }
            }
            if wait_all {
                let (r, g) = self.consume_others(w, obj);
                released |= r;
                granted |= g;
            }
            self.touch(&w.grants);
            w.grants.released.store(released, Ordering::Relaxed);
            w.grants.granted.store(granted, Ordering::Relaxed);
            // This wait, and no other, is woken, before the caller commits.
            w.wake.fetch_add(1, Ordering::SeqCst);
            super::sys::futex_wake(&w.wake, 1);
            granted_any = true;
            if signal == Signal::Pulse && !manual {
                break;
            }
        }
        granted_any
    }

    /// Whether every object of wait-all `w` other than `obj` is available now: a mutex free
    /// or owned by the waiting thread, an event signaled, a semaphore with a unit.
    fn others_ready(&self, w: &WaiterSlot, obj: usize) -> bool {
        let seg = self.seg;
        let tid = w.tid.load(Ordering::Relaxed);
        w.objects().all(|o| {
            if o == obj {
                return true;
            }
            let (Some(meta), Some(sync)) = (seg.metas().get(o), seg.syncs().get(o)) else {
                return false;
            };
            match meta.kind.load(Ordering::Relaxed) {
                MUTEX => {
                    let owner = sync.word().load(Ordering::SeqCst) & FUTEX_TID_MASK;
                    owner == 0 || owner == tid
                }
                EVENT => meta.signaled.load(Ordering::Relaxed) != 0,
                SEMAPHORE => meta.count.load(Ordering::Relaxed) > 0,
                _ => false,
            }
        })
    }

    /// Consumes, for wait-all `w`, its events and semaphores other than `obj` (all checked
    /// available); returns the (released, granted) bits.
    fn consume_others(&mut self, w: &WaiterSlot, obj: usize) -> (u64, u64) {
        let seg = self.seg;
        let mut released = 0u64;
        let mut granted = 0u64;
        let objs: Vec<usize> = w.objects().collect();
        for (j, o) in objs.into_iter().enumerate() {
            if o == obj || o >= OBJECTS_MAX {
                continue;
            }
            let meta = &seg.metas()[o];
            match meta.kind.load(Ordering::Relaxed) {
                EVENT if meta.manual_reset.load(Ordering::Relaxed) != 0 => released |= 1 << j,
                EVENT => {
                    self.touch(&meta.signaled);
                    meta.signaled.store(0, Ordering::Relaxed);
                    granted |= 1 << j;
                }
                SEMAPHORE => {
                    self.touch(&meta.count);
                    meta.count
                        .store(meta.count.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
                    granted |= 1 << j;
                }
                _ => {}
            }
        }
        (released, granted)
    }

    /// After a reset or pulse of event `obj`: the registered waits holding a granted signal
    /// of it keep it (they were satisfied), but if one does not use it, it is not given back
    /// to the event, whose state the reset decided since.
    pub(crate) fn forget_give_back(&mut self, obj: usize) {
        let seg = self.seg;
        if seg
            .syncs()
            .get(obj)
            .is_none_or(|s| s.waiters.load(Ordering::Relaxed) == 0)
        {
            return;
        }
        for slot in seg.registered_waits(&self.held) {
            let w = &seg.waiters()[slot];
            let granted = w.grants.granted.load(Ordering::Relaxed);
            if w.proc.load(Ordering::Relaxed) == 0 || granted == 0 {
                continue;
            }
            let bits = w
                .objects()
                .enumerate()
                .filter(|&(j, o)| o == obj && granted & (1 << j) != 0)
                .fold(0u64, |b, (j, _)| b | 1 << j);
            if bits != 0 {
                self.touch(&w.grants);
                w.grants.granted.store(granted & !bits, Ordering::Relaxed);
                w.grants.released.store(
                    w.grants.released.load(Ordering::Relaxed) | bits,
                    Ordering::Relaxed,
                );
            }
        }
    }

    /// Takes wait `slot`'s grants away and gives the units of those in `mask` (bits of its
    /// granted objects) back to their objects, which grant them on (waking before the caller
    /// commits). The caller has used the others, or none.
    pub(crate) fn return_grants(&mut self, slot: usize, mask: u64) {
        let seg = self.seg;
        let w = &seg.waiters()[slot];
        let granted = w.grants.granted.load(Ordering::Relaxed) & mask;
        if w.grants.any() != 0 {
            self.touch(&w.grants);
            w.grants.released.store(0, Ordering::Relaxed);
            w.grants.granted.store(0, Ordering::Relaxed);
        }
        let objs: Vec<usize> = w.objects().collect();
        for (j, o) in objs.into_iter().enumerate() {
            if granted & (1 << j) == 0 || o >= OBJECTS_MAX {
                continue;
            }
            let meta = &seg.metas()[o];
            let signal = match meta.kind.load(Ordering::Relaxed) {
                EVENT => {
                    self.touch(&meta.signaled);
                    meta.signaled.store(1, Ordering::Relaxed);
                    Signal::Set
                }
                SEMAPHORE => {
                    self.touch(&meta.count);
                    let max = meta.maximum.load(Ordering::Relaxed);
                    let count = meta.count.load(Ordering::Relaxed);
                    meta.count
                        .store(count.saturating_add(1).min(max), Ordering::Relaxed);
                    Signal::Release
                }
                _ => continue,
            };
            self.grant(o, signal);
        }
    }
}

//! Objects of the local namespace: create, open, close, signal, query. The waits are in
//! [`wait`](super::wait).
//!
//! Every function returns Win32 outcomes: `Ok` values, or `Err(code)` with the last-error code.

use std::sync::atomic::{AtomicU32, Ordering, compiler_fence};

use super::grant::Signal;
use super::segment::{
    Fnv, Guard, Held, NAME_BYTES_MAX, OBJ_FREE, OBJ_LIVE, OBJ_ZOMBIE, OBJECTS_MAX, ObjMeta,
    ObjSync, Segment,
};
use super::sys::{self, FUTEX_TID_MASK, FUTEX_WAITERS, Locked};
use dlock_proto::vocab::{
    CreateParams, EVENT_MODIFY_STATE, MUTEX_RECURSION_MAX, ObjectKind, ObjectState,
    SEMAPHORE_MODIFY_STATE, SYNCHRONIZE, WAIT_ABANDONED, WAIT_OBJECT_0, Win32Error, access,
};

fn kind_code(kind: ObjectKind) -> u32 {
    match kind {
        ObjectKind::Mutex => 1,
        ObjectKind::Event => 2,
        ObjectKind::Semaphore => 3,
    }
}

/// A process's handle to a local object (the facade keeps it in its handle table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalObj {
    /// Object slot.
    pub index: u32,
    /// The slot's generation when the handle was opened.
    generation: u32,
    /// This handle's record in the handle table.
    rec: u32,
    /// The object's type.
    pub kind: ObjectKind,
    /// Granted access.
    pub access: u32,
}

// ---- names and access (docs/win32-semantics.md §3, §1.3) ----

// The key of a `Local\` name (what follows the prefix): the rules of the shared vocabulary.
pub use dlock_proto::vocab::names::local_name_key as name_key;

/// The access a handle to an existing object gets (the cluster's rule, §2.1).
fn existing_access(kind: ObjectKind, mask: u32) -> Result<u32, Win32Error> {
    access::existing_object(kind, mask)
}

/// The access the creator of a new object gets: what it asked for, mapped.
fn new_access(kind: ObjectKind, mask: u32) -> Result<u32, Win32Error> {
    access::new_object(kind, mask)
}

pub(crate) fn name_hash(key: &str) -> u64 {
    let mut h = Fnv::new();
    h.write(key.as_bytes());
    h.0 | 1
}

/// Where the lookup of a name with hash `h` starts: the hash's high bits (Fibonacci hashing;
/// the low bit is always set) reduced to a slot.
pub(crate) fn home_slot(h: u64) -> usize {
    const _: () = assert!(OBJECTS_MAX.is_power_of_two());
    (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - OBJECTS_MAX.trailing_zeros())) as usize
}

/// Names a free object slot `key` (at most [`NAME_BYTES_MAX`] bytes, checked by `name_key`);
/// `_held` proves the namespace lock is held, and, borrowed mutably, that no name read under
/// it is still alive.
fn set_name(_held: &mut Held, meta: &ObjMeta, key: &str) {
    let len = key.len().min(NAME_BYTES_MAX);
    // SAFETY: the namespace lock is held (`_held`), the only way to name or read a slot's
    // name; the slot is free, so no reader outside the lock looks at it either.
    unsafe {
        let name = &mut *meta.name.get();
        name[..len].copy_from_slice(&key.as_bytes()[..len]);
    }
    meta.name_len.store(len as u32, Ordering::Relaxed);
}

/// The name bytes of an object slot; `_held` proves the namespace lock is held, so no writer
/// can be changing them.
pub(crate) fn name_of<'a>(_held: &'a Held, meta: &'a ObjMeta) -> &'a [u8] {
    let len = (meta.name_len.load(Ordering::Relaxed) as usize).min(NAME_BYTES_MAX);
    // SAFETY: the namespace lock is held (`_held`), and names are written only under it; the
    // bytes are plain data within the slot.
    unsafe { &(&*meta.name.get())[..len] }
}

// ---- mutex word helpers ----

/// The most local mutexes one thread may hold at once (recursive holds count once). The
/// kernel walks at most 2,048 entries of a dying thread's robust list (`ROBUST_LIST_LIMIT`),
/// and a mutex beyond that would stay owned by the dead thread's id, which the kernel may
/// give to a new thread (in any attached process), making it the owner. Taking one more
/// fails with 1450 (`ERROR_NO_SYSTEM_RESOURCES`); the margin leaves room for the namespace
/// lock and other robust mutexes of the program.
pub const MUTEXES_HELD_MAX: u32 = 2_000;

thread_local! {
    /// Local mutexes the calling thread holds (fresh acquisitions minus final releases).
    static HELD: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether the calling thread may take one more local mutex ([`MUTEXES_HELD_MAX`]).
#[inline]
pub(crate) fn may_take_another() -> bool {
    HELD.try_with(|h| h.get() < MUTEXES_HELD_MAX)
        .unwrap_or(false)
}

/// Counts a final release of a local mutex by the calling thread.
#[inline]
pub(crate) fn released_one() {
    let _ = HELD.try_with(|h| h.set(h.get().saturating_sub(1)));
}

impl ObjSync {
    pub(crate) fn mutex_ptr(&self) -> *mut libc::pthread_mutex_t {
        self.mutex.get()
    }

    #[inline]
    pub(crate) fn word(&self) -> &std::sync::atomic::AtomicU32 {
        // SAFETY: the mutex lives in the mapping, which is never unmapped.
        unsafe { sys::lock_word(self.mutex_ptr()) }
    }

    /// Whether the calling thread (kernel id `tid`) owns this mutex.
    #[inline]
    pub(crate) fn owned_by(&self, tid: u32) -> bool {
        self.word().load(Ordering::Relaxed) & FUTEX_TID_MASK == tid
    }

    /// Whether a thread (any) holds this mutex.
    pub(crate) fn is_held(&self) -> bool {
        self.word().load(Ordering::Acquire) & FUTEX_TID_MASK != 0
    }

    /// Records a fresh acquisition by the calling thread (`owner_died`: glibc reported the
    /// previous owner dead): the fencing token of the hold, and whether it was acquired
    /// abandoned (the owner died, or an abandoned acquisition was given back).
    #[inline]
    pub(crate) fn acquired(&self, owner_died: bool) -> (u64, bool) {
        let _ = HELD.try_with(|h| h.set(h.get() + 1));
        self.recursion.store(1, Ordering::Relaxed);
        let token = self.fencing.load(Ordering::Relaxed) + 1;
        self.fencing.store(token, Ordering::Relaxed);
        // A plain load first: the uncontended path pays no read-modify-write. The giver set
        // the flag before its unlock, which the try-lock that got here synchronised with.
        let given_back = self.given_back_abandoned.load(Ordering::Relaxed) != 0
            && self.given_back_abandoned.swap(0, Ordering::Relaxed) != 0;
        (token, owner_died || given_back)
    }

    /// Whether the mutex is free and its next acquirer reports `WAIT_ABANDONED`.
    pub(crate) fn is_abandoned(&self) -> bool {
        let word = self.word().load(Ordering::Acquire);
        word & FUTEX_TID_MASK == 0
            && (word & sys::FUTEX_OWNER_DIED != 0
                || self.given_back_abandoned.load(Ordering::Relaxed) != 0)
    }

    /// The lock word value to sleep on: as read, with `FUTEX_WAITERS` set first if another
    /// thread holds the mutex, so that its unlock, and the kernel when it dies, wake a sleeper.
    pub(crate) fn sleep_value(&self, tid: u32) -> u32 {
        let word = self.word();
        let mut w = word.load(Ordering::SeqCst);
        loop {
            let owner = w & FUTEX_TID_MASK;
            if owner == 0 || owner == tid || w & FUTEX_WAITERS != 0 {
                return w;
            }
            match word.compare_exchange(w, w | FUTEX_WAITERS, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return w | FUTEX_WAITERS,
                Err(now) => w = now,
            }
        }
    }

    /// Tells one registered waiter that the mutex was released: one release satisfies one
    /// waiter, so the others sleep on. A woken wait that does not take the mutex while it is
    /// free (a wait-all missing another object, a wait-any that completed on another index, a
    /// wait that timed out) passes the wake on, once per release (`wait::pass_on_wakes`). A
    /// wake that reaches a wait whose process is stopped, or dies before it runs, reaches the
    /// others through their one-second re-check, as the kernel's one owner-died wake does.
    #[inline]
    pub(crate) fn notify(&self) {
        #[cfg(not(target_arch = "x86_64"))]
        std::sync::atomic::fence(Ordering::SeqCst);
        // On x86-64 the locked exchange or compare-exchange just before (glibc's unlock, or
        // the namespace lock's release) is a full barrier.
        compiler_fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) != 0 {
            self.seq.fetch_add(1, Ordering::SeqCst);
            sys::futex_wake(&self.seq, 1);
        }
    }

    /// Tells every registered waiter that the mutex changed (a woken wait passing on a wake
    /// it could not use: see `wait::pass_on_wakes`).
    pub(crate) fn notify_all(&self) {
        if self.waiters.load(Ordering::SeqCst) != 0 {
            self.seq.fetch_add(1, Ordering::SeqCst);
            sys::futex_wake(&self.seq, i32::MAX as u32);
        }
    }

    /// Which release of this mutex a free mutex is in: the fencing token of the last hold
    /// (a wait passes a wake on at most once per value).
    #[inline]
    pub(crate) fn release_epoch(&self) -> u64 {
        self.fencing.load(Ordering::Relaxed)
    }
}

// ---- the namespace lock's operations ----

/// How often the waits of one process reclaim dead processes (create and open always do).
const REAP_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

impl Guard<'_> {
    /// Finds the live object named `key`: open addressing over the object table. A named
    /// object is placed at the first free slot at or after its home ([`home_slot`]), and the
    /// header's `probe_max` bounds how far past the home any was ever placed, so a lookup
    /// compares at most `probe_max + 1` hashes, however full the table (freed slots do not
    /// end a probe, so no tombstones are needed). `probe_max` never shrinks while the segment
    /// exists: after a time of high occupancy, a lookup of a name that does not exist (every
    /// create of a new name) compares that many slots, as many as the table holds at worst.
    fn find(&self, key: &str) -> Option<usize> {
        let h = name_hash(key);
        let home = home_slot(h);
        let probe_max = self.seg.probe_max().load(Ordering::Relaxed) as usize;
        let hashes = self.seg.hashes();
        let metas = self.seg.metas();
        let mut probed = 0;
        let found = (0..=probe_max.min(OBJECTS_MAX - 1))
            .map(|d| (home + d) % OBJECTS_MAX)
            .inspect(|_| probed += 1)
            .filter(|&i| hashes[i].load(Ordering::Relaxed) == h)
            .find(|&i| {
                metas[i].state.load(Ordering::Relaxed) == OBJ_LIVE
                    && name_of(&self.held, &metas[i]) == key.as_bytes()
            });
        self.seg.probes.fetch_add(probed, Ordering::Relaxed);
        found
    }

    /// A free object slot (zombies whose mutex and waits are gone count as free): for a named
    /// object the first at or after its name's home slot (raising `probe_max` if it lies
    /// further than any before), for an unnamed one the first after a slot that varies.
    fn free_object(&mut self, hash: Option<u64>) -> Option<usize> {
        let metas = self.seg.metas();
        let syncs = self.seg.syncs();
        let start = match hash {
            Some(h) => home_slot(h),
            // Unnamed objects spread over the table rather than crowding the low slots.
            None => {
                let n = self.seg.unnamed_created.fetch_add(1, Ordering::Relaxed);
                home_slot((n << 1 | 1) ^ u64::from(std::process::id()) << 32)
            }
        };
        let (d, i) = (0..OBJECTS_MAX)
            .map(|d| (d, (start + d) % OBJECTS_MAX))
            .find(|&(_, i)| match metas[i].state.load(Ordering::Relaxed) {
                OBJ_FREE => true,
                OBJ_ZOMBIE => syncs[i].waiters.load(Ordering::Relaxed) == 0 && !syncs[i].is_held(),
                _ => false,
            })?;
        let probe_max = self.seg.probe_max();
        if hash.is_some() && d as u32 > probe_max.load(Ordering::Relaxed) {
            self.touch(probe_max);
            probe_max.store(d as u32, Ordering::Relaxed);
        }
        Some(i)
    }

    /// The first free slot (owner field 0) of `table`, or 1450 with a warning naming it.
    fn free_slot<'t, T>(
        &self,
        table: &'t [T],
        owner: impl Fn(&T) -> &AtomicU32,
        what: &'static str,
    ) -> Result<(usize, &'t T), Win32Error> {
        table
            .iter()
            .enumerate()
            .find(|(_, x)| owner(x).load(Ordering::Relaxed) == 0)
            .ok_or_else(|| {
                tracing::warn!(path = %self.seg.path().display(), table = what, "local table full");
                Win32Error::NO_SYSTEM_RESOURCES
            })
    }

    /// A free handle record, claimed for this process and object `obj`.
    fn new_handle(&mut self, obj: usize) -> Result<u32, Win32Error> {
        let me = self.seg.proc_slot() + 1;
        let (i, rec) = self.free_slot(self.seg.handles(), |r| &r.proc, "handle")?;
        self.touch(rec);
        rec.obj.store(obj as u32, Ordering::Relaxed);
        rec.proc.store(me, Ordering::Relaxed);
        let meta = &self.seg.metas()[obj];
        self.touch(&meta.refs);
        meta.refs.fetch_add(1, Ordering::Relaxed);
        Ok(i as u32)
    }

    /// Drops handle record `rec`; the object goes with its last handle (its name at once; its
    /// slot once no mutex hold or wait refers to it).
    fn drop_handle(&mut self, rec: usize) {
        let r = &self.seg.handles()[rec];
        let obj = r.obj.load(Ordering::Relaxed) as usize;
        self.touch(&r.proc);
        r.proc.store(0, Ordering::Relaxed);
        let Some(meta) = self.seg.metas().get(obj) else {
            return;
        };
        self.touch(&meta.refs);
        self.touch(&meta.state);
        let refs = meta.refs.load(Ordering::Relaxed).saturating_sub(1);
        meta.refs.store(refs, Ordering::Relaxed);
        if refs == 0 && meta.state.load(Ordering::Relaxed) == OBJ_LIVE {
            let hash = &self.seg.hashes()[obj];
            self.touch(hash);
            hash.store(0, Ordering::Relaxed);
            meta.state.store(OBJ_ZOMBIE, Ordering::Relaxed);
            self.retire_if_unused(obj);
        }
    }

    /// Frees a zombie object slot no hold or wait refers to.
    fn retire_if_unused(&mut self, obj: usize) {
        let meta = &self.seg.metas()[obj];
        let sync = &self.seg.syncs()[obj];
        if meta.state.load(Ordering::Relaxed) == OBJ_ZOMBIE
            && sync.waiters.load(Ordering::Relaxed) == 0
            && !sync.is_held()
        {
            self.touch(&meta.state);
            meta.state.store(OBJ_FREE, Ordering::Relaxed);
        }
    }

    /// If the process in `slot` is dead, closes its handles, removes its waits and frees the
    /// slot, one journaled step at a time. `skip` is a slot known to be alive.
    pub fn reap_if_dead(&mut self, slot: u32, skip: u32) {
        if slot == skip || !self.seg.is_dead(slot) {
            return;
        }
        let owner = slot + 1;
        let mut handles = 0;
        for i in 0..self.seg.handles().len() {
            if self.seg.handles()[i].proc.load(Ordering::Relaxed) == owner {
                self.drop_handle(i);
                self.commit();
                handles += 1;
            }
        }
        for i in self.seg.registered_waits(&self.held) {
            if self.seg.waiters()[i].proc.load(Ordering::Relaxed) == owner {
                self.unregister(i);
                self.commit();
            }
        }
        let p = &self.seg.procs()[slot as usize];
        let pid = p.pid.load(Ordering::Relaxed);
        self.touch(p);
        p.state.store(0, Ordering::Relaxed);
        self.commit();
        tracing::info!(
            slot,
            pid,
            handles,
            "reclaimed a dead process's local handles"
        );
    }

    /// Reaps every dead process (before name lookups, so a dead process's objects are gone).
    pub(crate) fn reap_dead(&mut self) {
        self.seg.reaps.fetch_add(1, Ordering::Relaxed);
        let me = self.seg.proc_slot();
        for slot in 0..self.seg.procs().len() {
            if self.seg.procs()[slot].state.load(Ordering::Relaxed) != 0 {
                self.reap_if_dead(slot as u32, me);
            }
        }
    }

    /// [`Guard::reap_dead`] at most once per [`REAP_INTERVAL`] in this process: for the paths
    /// that run at every wait, where a liveness test per attached process would cost every
    /// wait up to 256 system calls under the lock.
    pub(crate) fn reap_dead_now_and_then(&mut self) {
        if self.seg.reap_due(REAP_INTERVAL) {
            self.reap_dead();
        }
    }

    /// Registers a wait on `objs` for the calling thread.
    pub(crate) fn register(&mut self, objs: &[usize], wait_all: bool) -> Result<usize, Win32Error> {
        let mut free = self.seg.free_wait_slot(&self.held);
        if let Some(i) = free
            && self.seg.waiters()[i].proc.load(Ordering::Relaxed) != 0
        {
            // The bitmap disagrees with the table (it never should): rebuild it, look again.
            tracing::error!(
                slot = i,
                "the bitmap of registered local waits was wrong; rebuilt"
            );
            self.seg.recount_waiters(&self.held);
            free = self.seg.free_wait_slot(&self.held);
        }
        let Some(i) = free.filter(|&i| self.seg.waiters()[i].proc.load(Ordering::Relaxed) == 0)
        else {
            tracing::warn!(path = %self.seg.path().display(), table = "waiter", "local table full");
            return Err(Win32Error::NO_SYSTEM_RESOURCES);
        };
        let w = &self.seg.waiters()[i];
        self.touch(w);
        let (word, bit) = self.seg.waits_used_bit(i);
        self.touch(word);
        word.fetch_or(bit, Ordering::Relaxed);
        w.tid.store(sys::tid(), Ordering::Relaxed);
        w.count.store(objs.len() as u32, Ordering::Relaxed);
        w.wait_all.store(u32::from(wait_all), Ordering::Relaxed);
        w.grants.released.store(0, Ordering::Relaxed);
        w.grants.granted.store(0, Ordering::Relaxed);
        w.ended.store(0, Ordering::Relaxed);
        let ticket = self.seg.take_ticket(self);
        w.ticket.store(ticket, Ordering::Relaxed);
        for (slot, &o) in w.objs.iter().zip(objs) {
            slot.store(o as u32, Ordering::Relaxed);
        }
        w.proc.store(self.seg.proc_slot() + 1, Ordering::Relaxed);
        for &o in objs {
            // SeqCst: ordered before this waiter reads any object state (see ObjSync::notify).
            self.seg.syncs()[o].waiters.fetch_add(1, Ordering::SeqCst);
        }
        Ok(i)
    }

    /// Removes wait `slot` from the registry; grants it still holds go back to their objects
    /// (and on to the next waits).
    pub(crate) fn unregister(&mut self, slot: usize) {
        let w = &self.seg.waiters()[slot];
        let objs: Vec<usize> = w.objects().filter(|&o| o < OBJECTS_MAX).collect();
        self.touch(&w.proc);
        w.proc.store(0, Ordering::Relaxed);
        let (word, bit) = self.seg.waits_used_bit(slot);
        self.touch(word);
        word.fetch_and(!bit, Ordering::Relaxed);
        for &o in &objs {
            let s = &self.seg.syncs()[o].waiters;
            let _ = s.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1));
        }
        // After the wait left the registry, so that nothing is granted back to it.
        self.return_grants(slot, u64::MAX);
        for &o in &objs {
            self.retire_if_unused(o);
        }
    }
}

// ---- create, open, close ----

/// Creates or opens the local object `key` (a name after `Local\`, checked by [`name_key`]).
/// Returns the handle and whether it already existed.
pub fn create(
    seg: &Segment,
    key: &str,
    params: &CreateParams,
    access: u32,
) -> Result<(LocalObj, bool), Win32Error> {
    create_in(seg, Some(key), params, access)
}

/// Creates an unnamed object (`CreateEvent(NULL, ...)`): private to the handles this process
/// holds (no other process can find it), with every semantic of a named one.
pub fn create_unnamed(
    seg: &Segment,
    params: &CreateParams,
    access: u32,
) -> Result<LocalObj, Win32Error> {
    create_in(seg, None, params, access).map(|(obj, _)| obj)
}

fn create_in(
    seg: &Segment,
    key: Option<&str>,
    params: &CreateParams,
    access: u32,
) -> Result<(LocalObj, bool), Win32Error> {
    let kind = params.kind();
    let (manual_reset, initial_state) = match *params {
        CreateParams::Event {
            manual_reset,
            initial_state,
        } => (manual_reset, initial_state),
        _ => (false, false),
    };
    let (initial_count, maximum_count) = match *params {
        CreateParams::Semaphore { initial, max } => {
            if max <= 0 || initial < 0 || initial > max {
                return Err(Win32Error::INVALID_PARAMETER);
            }
            (initial, max)
        }
        _ => (0, 0),
    };
    let key = key.map(name_key).transpose()?;
    let mut g = seg.lock()?;
    g.reap_dead();
    if let Some(i) = key.and_then(|key| g.find(key)) {
        let meta = &seg.metas()[i];
        if meta.kind.load(Ordering::Relaxed) != kind_code(kind) {
            return Err(Win32Error::INVALID_HANDLE);
        }
        let granted = existing_access(kind, access)?;
        let rec = g.new_handle(i)?;
        g.commit();
        let generation = meta.generation.load(Ordering::Relaxed);
        return Ok((
            LocalObj {
                index: i as u32,
                generation,
                rec,
                kind,
                access: granted,
            },
            true,
        ));
    }
    let granted = new_access(kind, access)?;
    // A new mutex owned from the start is a hold like any other (opening an existing name
    // takes nothing, so it is not refused above).
    if params.initial_owner() && !may_take_another() {
        return Err(Win32Error::NO_SYSTEM_RESOURCES);
    }
    let Some(i) = g.free_object(key.map(name_hash)) else {
        tracing::warn!(path = %seg.path().display(), "local object table full");
        return Err(Win32Error::NO_SYSTEM_RESOURCES);
    };
    let meta = &seg.metas()[i];
    let sync = &seg.syncs()[i];
    g.touch(meta);
    g.touch(&seg.hashes()[i]);
    let generation = meta.generation.load(Ordering::Relaxed).wrapping_add(1);
    meta.generation.store(generation, Ordering::Relaxed);
    meta.kind.store(kind_code(kind), Ordering::Relaxed);
    meta.refs.store(0, Ordering::Relaxed);
    meta.manual_reset
        .store(u32::from(manual_reset), Ordering::Relaxed);
    meta.signaled
        .store(u32::from(initial_state), Ordering::Relaxed);
    meta.count.store(initial_count, Ordering::Relaxed);
    meta.maximum.store(maximum_count, Ordering::Relaxed);
    set_name(&mut g.held, meta, key.unwrap_or(""));
    // The mutex was initialised with the segment and is never re-initialised (a stale
    // handle's thread may be inside glibc on it). A free slot's mutex is unowned; forget an
    // abandonment or waiter flag its previous object left.
    let word = sync.word();
    let w = word.load(Ordering::SeqCst);
    if w & FUTEX_TID_MASK == 0 && w != 0 {
        let _ = word.compare_exchange(w, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
    sync.seq.fetch_add(1, Ordering::Relaxed);
    sync.recursion.store(0, Ordering::Relaxed);
    sync.given_back_abandoned.store(0, Ordering::Relaxed);
    // An unnamed object has no hash: no lookup can find it.
    seg.hashes()[i].store(key.map_or(0, name_hash), Ordering::Relaxed);
    meta.state.store(OBJ_LIVE, Ordering::Relaxed);
    let rec = g.new_handle(i)?;
    if params.initial_owner() {
        // Nobody can find the object before the commit, so this cannot fail.
        // SAFETY: initialised just above.
        if unsafe { sys::robust_trylock(sync.mutex_ptr()) } != Locked::Busy {
            sync.acquired(false);
        }
    }
    g.commit();
    Ok((
        LocalObj {
            index: i as u32,
            generation,
            rec,
            kind,
            access: granted,
        },
        false,
    ))
}

/// Opens the existing local object `key`.
pub fn open(
    seg: &Segment,
    kind: ObjectKind,
    key: &str,
    access: u32,
) -> Result<LocalObj, Win32Error> {
    let key = name_key(key)?;
    let mut g = seg.lock()?;
    g.reap_dead();
    let i = g.find(key).ok_or(Win32Error::FILE_NOT_FOUND)?;
    let meta = &seg.metas()[i];
    if meta.kind.load(Ordering::Relaxed) != kind_code(kind) {
        return Err(Win32Error::INVALID_HANDLE);
    }
    let granted = existing_access(kind, access)?;
    let rec = g.new_handle(i)?;
    g.commit();
    Ok(LocalObj {
        index: i as u32,
        generation: meta.generation.load(Ordering::Relaxed),
        rec,
        kind,
        access: granted,
    })
}

impl LocalObj {
    /// A placeholder value (never in a handle table).
    pub const EMPTY: LocalObj = LocalObj {
        index: 0,
        generation: 0,
        rec: 0,
        kind: ObjectKind::Mutex,
        access: 0,
    };

    /// The uncontended path of `WaitForSingleObject` on a mutex: the `WAIT_OBJECT_0` or
    /// `WAIT_ABANDONED` it completed with, or `None` if the general path must decide (another
    /// type, no access, a held mutex, the recursion limit).
    #[inline]
    pub fn try_lock(&self, seg: &Segment) -> Option<u32> {
        if self.kind != ObjectKind::Mutex || self.access & SYNCHRONIZE == 0 {
            return None;
        }
        let sync = self.sync(seg);
        let tid = sys::tid();
        if sync.owned_by(tid) {
            let r = sync.recursion.load(Ordering::Relaxed);
            if r >= MUTEX_RECURSION_MAX {
                return None;
            }
            sync.recursion.store(r + 1, Ordering::Relaxed);
            return Some(WAIT_OBJECT_0);
        }
        if !may_take_another() {
            return None;
        }
        // SAFETY: the mutex of a live object slot, initialised at creation.
        let owner_died = match unsafe { sys::robust_trylock(sync.mutex_ptr()) } {
            Locked::Clean => false,
            Locked::OwnerDied => true,
            Locked::Busy => return None,
        };
        match sync.acquired(owner_died) {
            (_, false) => Some(WAIT_OBJECT_0),
            (_, true) => Some(WAIT_ABANDONED),
        }
    }

    #[inline]
    pub(crate) fn sync<'a>(&self, seg: &'a Segment) -> &'a ObjSync {
        &seg.syncs()[self.index as usize]
    }

    pub(crate) fn meta<'a>(&self, seg: &'a Segment) -> &'a ObjMeta {
        &seg.metas()[self.index as usize]
    }

    /// Whether the handle still names its object (checked under the namespace lock).
    pub(crate) fn check(&self, g: &Guard<'_>) -> Result<(), Win32Error> {
        let rec = &g.seg.handles()[self.rec as usize];
        let meta = self.meta(g.seg);
        if rec.proc.load(Ordering::Relaxed) != g.seg.proc_slot() + 1
            || rec.obj.load(Ordering::Relaxed) != self.index
            || meta.generation.load(Ordering::Relaxed) != self.generation
        {
            return Err(Win32Error::INVALID_HANDLE);
        }
        Ok(())
    }

    /// Closes the handle. Does not release a mutex the thread owns.
    pub fn close(&self, seg: &Segment) -> Result<(), Win32Error> {
        let mut g = seg.lock()?;
        self.check(&g)?;
        g.drop_handle(self.rec as usize);
        g.commit();
        Ok(())
    }

    /// `ReleaseMutex`: no system call unless somebody waits.
    #[inline]
    pub fn release_mutex(&self, seg: &Segment) -> Result<(), Win32Error> {
        let sync = self.sync(seg);
        if !sync.owned_by(sys::tid()) {
            return Err(Win32Error::NOT_OWNER);
        }
        let r = sync.recursion.load(Ordering::Relaxed);
        if r > 1 {
            sync.recursion.store(r - 1, Ordering::Relaxed);
            return Ok(());
        }
        sync.recursion.store(0, Ordering::Relaxed);
        // SAFETY: the calling thread owns it (checked above).
        unsafe { sys::robust_unlock(sync.mutex_ptr()) };
        released_one();
        sync.notify();
        Ok(())
    }

    /// The fencing token of the calling thread's hold, or 0.
    pub fn fencing_token(&self, seg: &Segment) -> u64 {
        let sync = self.sync(seg);
        if sync.owned_by(sys::tid()) {
            sync.fencing.load(Ordering::Relaxed)
        } else {
            0
        }
    }

    pub(crate) fn need(&self, right: u32) -> Result<(), Win32Error> {
        if self.access & right == right {
            Ok(())
        } else {
            Err(Win32Error::ACCESS_DENIED)
        }
    }

    /// The object's state, as `QueryObject` on the cluster reports it (the owner's session id
    /// is 0 and its thread id the owner's kernel thread id).
    pub fn query(&self, seg: &Segment) -> Result<ObjectState, Win32Error> {
        let g = seg.lock()?;
        self.check(&g)?;
        let meta = self.meta(seg);
        let sync = self.sync(seg);
        let word = sync.word().load(Ordering::SeqCst);
        let owner = word & FUTEX_TID_MASK;
        let is_mutex = self.kind == ObjectKind::Mutex;
        Ok(ObjectState {
            kind: self.kind,
            owner_session_id: 0,
            owner_thread_id: if is_mutex { u64::from(owner) } else { 0 },
            recursion: if is_mutex && owner != 0 {
                sync.recursion.load(Ordering::Relaxed)
            } else {
                0
            },
            abandoned: is_mutex && sync.is_abandoned(),
            fencing_token: if is_mutex && owner != 0 {
                sync.fencing.load(Ordering::Relaxed)
            } else {
                0
            },
            manual_reset: meta.manual_reset.load(Ordering::Relaxed) != 0,
            signaled: meta.signaled.load(Ordering::Relaxed) != 0,
            count: meta.count.load(Ordering::Relaxed),
            maximum: meta.maximum.load(Ordering::Relaxed),
        })
    }

    /// `SetEvent`: the event is signaled, and handed at once to the waits it satisfies (see
    /// the `grant` module); they are woken before the change is committed.
    pub fn set_event(&self, seg: &Segment) -> Result<(), Win32Error> {
        self.need(EVENT_MODIFY_STATE)?;
        let mut g = seg.lock()?;
        self.check(&g)?;
        let meta = self.meta(seg);
        // Setting a signaled event changes nothing: its waits were judged when it was set.
        if meta.signaled.load(Ordering::Relaxed) == 0 {
            g.touch(&meta.signaled);
            meta.signaled.store(1, Ordering::Relaxed);
            g.grant(self.index as usize, Signal::Set);
        }
        g.commit();
        Ok(())
    }

    /// `ResetEvent`. Waits the event satisfied before keep their grant, but one they do not
    /// use is no longer given back to it (the reset came after).
    pub fn reset_event(&self, seg: &Segment) -> Result<(), Win32Error> {
        self.need(EVENT_MODIFY_STATE)?;
        let mut g = seg.lock()?;
        self.check(&g)?;
        let meta = self.meta(seg);
        g.touch(&meta.signaled);
        meta.signaled.store(0, Ordering::Relaxed);
        g.forget_give_back(self.index as usize);
        g.commit();
        Ok(())
    }

    /// `PulseEvent`: releases the waits it satisfies at this instant (all of them for a
    /// manual-reset event, the first for auto-reset) and leaves the event non-signaled.
    pub fn pulse_event(&self, seg: &Segment) -> Result<(), Win32Error> {
        self.need(EVENT_MODIFY_STATE)?;
        let mut g = seg.lock()?;
        self.check(&g)?;
        let meta = self.meta(seg);
        g.forget_give_back(self.index as usize);
        g.grant(self.index as usize, Signal::Pulse);
        g.touch(&meta.signaled);
        meta.signaled.store(0, Ordering::Relaxed);
        g.commit();
        Ok(())
    }

    /// `ReleaseSemaphore`: returns the previous count. The units go at once to the waits
    /// they satisfy, woken before the change is committed.
    pub fn release_semaphore(&self, seg: &Segment, count: i32) -> Result<i32, Win32Error> {
        if count <= 0 {
            return Err(Win32Error::INVALID_PARAMETER);
        }
        self.need(SEMAPHORE_MODIFY_STATE)?;
        let mut g = seg.lock()?;
        self.check(&g)?;
        let meta = self.meta(seg);
        let previous = meta.count.load(Ordering::Relaxed);
        let max = meta.maximum.load(Ordering::Relaxed);
        if i64::from(previous) + i64::from(count) > i64::from(max) {
            return Err(Win32Error::TOO_MANY_POSTS);
        }
        g.touch(&meta.count);
        meta.count.store(previous + count, Ordering::Relaxed);
        g.grant(self.index as usize, Signal::Release);
        g.commit();
        Ok(previous)
    }

    /// Signals the object the way `SignalObjectAndWait` does.
    pub(crate) fn signal(&self, seg: &Segment) -> Result<(), Win32Error> {
        match self.kind {
            ObjectKind::Mutex => self.release_mutex(seg),
            ObjectKind::Event => self.set_event(seg),
            ObjectKind::Semaphore => self.release_semaphore(seg, 1).map(|_| ()),
        }
    }
}

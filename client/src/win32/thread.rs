//! Per-OS-thread state: the last error, the thread's owner id, and the exit hook.
//!
//! Win32 mutex ownership belongs to a thread, so each OS thread that uses the facade gets a
//! process-unique id (never reused) on first use. When a thread that may own mutexes (it made a
//! wait, or created a mutex with initial ownership) exits, its thread-local guard reports
//! `ThreadExit` to the cluster, so that the mutexes it still owns become abandoned, as on
//! Windows. glibc destroys the main thread's thread-locals too when the process exits normally
//! (`exit`, or `main` returning), before `atexit` handlers run: the main thread's exit is then
//! reported like any other (waiting at most `THREAD_EXIT_WAIT`), and the mutexes it owned are
//! abandoned at once. A killed process reports nothing: its mutexes are abandoned when its
//! session expires.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// The next thread id to hand out; ids start at 1 (0 means "no owner" on the wire).
static NEXT_THREAD_ID: AtomicU64 = AtomicU64::new(1);

/// The thread's identity for mutex ownership, and whether its exit must be reported.
struct ThreadSlot {
    id: Cell<u64>,
    needs_exit: Cell<bool>,
}

impl Drop for ThreadSlot {
    fn drop(&mut self) {
        let id = self.id.get();
        if id != 0 && self.needs_exit.get() {
            super::global::thread_exited(id);
        }
    }
}

thread_local! {
    static LAST_ERROR: Cell<u32> = const { Cell::new(0) };
    static THREAD: ThreadSlot = const {
        ThreadSlot { id: Cell::new(0), needs_exit: Cell::new(false) }
    };
}

fn fresh_id() -> u64 {
    NEXT_THREAD_ID.fetch_add(1, Ordering::Relaxed)
}

/// The calling thread's owner id, assigned on first use.
pub(crate) fn current_thread_id() -> u64 {
    THREAD
        .try_with(|t| {
            if t.id.get() == 0 {
                t.id.set(fresh_id());
            }
            t.id.get()
        })
        // During thread-local destruction: an id that owns nothing.
        .unwrap_or_else(|_| fresh_id())
}

/// The calling thread may own mutexes from now on: report its exit.
pub(crate) fn mark_may_own() {
    let _ = THREAD.try_with(|t| t.needs_exit.set(true));
}

pub(crate) fn last_error() -> u32 {
    LAST_ERROR.try_with(Cell::get).unwrap_or(0)
}

pub(crate) fn set_last_error(code: u32) {
    let _ = LAST_ERROR.try_with(|e| e.set(code));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_error_is_per_thread() {
        set_last_error(0xDEAD_BEEF);
        let other = std::thread::spawn(|| {
            let before = last_error();
            set_last_error(5);
            (before, last_error())
        })
        .join()
        .unwrap();
        assert_eq!(other, (0, 5));
        assert_eq!(last_error(), 0xDEAD_BEEF);
    }

    #[test]
    fn thread_ids_are_stable_per_thread_and_unique() {
        let mine = current_thread_id();
        assert_ne!(mine, 0);
        assert_eq!(current_thread_id(), mine);
        let theirs: Vec<u64> = (0..4)
            .map(|_| std::thread::spawn(current_thread_id))
            .map(|h| h.join().unwrap())
            .collect();
        let mut all = theirs.clone();
        all.push(mine);
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 5, "{theirs:?} vs {mine}");
    }
}

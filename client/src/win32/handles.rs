//! The process-wide handle table: `HANDLE` values to session-scoped server handles.
//!
//! Values are multiples of 4 starting at 4 (never 0, which is NULL) and handed out in
//! increasing order, so a closed value is not reused until the counter wraps around (after
//! 2^61 handles), which makes use-after-close reliably fail with `ERROR_INVALID_HANDLE`.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

/// Distance between consecutive handle values (Windows handles are multiples of 4 too).
const HANDLE_STEP: isize = 4;
/// The most handles the process may have open; creates and opens beyond it fail with
/// `ERROR_NO_SYSTEM_RESOURCES` before any server call.
pub(crate) const HANDLES_MAX: usize = 1 << 20;

/// Maps handle values to `V`.
#[derive(Debug)]
pub(crate) struct HandleTable<V> {
    next: isize,
    entries: HashMap<isize, V>,
}

impl<V> HandleTable<V> {
    pub(crate) fn new() -> HandleTable<V> {
        HandleTable {
            next: HANDLE_STEP,
            entries: HashMap::new(),
        }
    }

    /// Whether another handle fits under [`HANDLES_MAX`].
    pub(crate) fn has_room(&self) -> bool {
        self.entries.len() < HANDLES_MAX
    }

    /// Stores `value` under a fresh handle value and returns it.
    pub(crate) fn insert(&mut self, value: V) -> isize {
        loop {
            let handle = self.next;
            self.next = if handle > isize::MAX - 2 * HANDLE_STEP {
                HANDLE_STEP
            } else {
                handle + HANDLE_STEP
            };
            if let Entry::Vacant(slot) = self.entries.entry(handle) {
                slot.insert(value);
                assert!(handle != 0, "handle 0 is NULL");
                assert!(
                    handle % HANDLE_STEP == 0,
                    "handle {handle} not a multiple of 4"
                );
                return handle;
            }
        }
    }

    pub(crate) fn get(&self, handle: isize) -> Option<&V> {
        self.entries.get(&handle)
    }

    pub(crate) fn remove(&mut self, handle: isize) -> Option<V> {
        self.entries.remove(&handle)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_nonzero_multiples_of_four_and_not_reused() {
        let mut t = HandleTable::new();
        let a = t.insert("a");
        let b = t.insert("b");
        assert_eq!((a, b), (4, 8));
        assert_eq!(t.get(a), Some(&"a"));
        assert_eq!(t.remove(a), Some("a"));
        assert_eq!(t.get(a), None);
        assert_eq!(t.remove(a), None, "double close");
        let c = t.insert("c");
        assert_eq!(c, 12, "a closed value is not handed out again");
        assert_eq!(t.get(0), None);
        assert_eq!(t.get(-1), None);
        assert_eq!(t.len(), 2);
        assert!(t.has_room());
    }

    #[test]
    fn wraparound_skips_live_handles() {
        let mut t = HandleTable::new();
        let first = t.insert(1);
        t.next = (isize::MAX / HANDLE_STEP) * HANDLE_STEP; // the largest value
        let high = t.insert(2);
        assert!(high > 0 && high % 4 == 0);
        let wrapped = t.insert(3);
        assert_eq!(wrapped, 8, "4 is still live, so 8 is next");
        assert_eq!(t.get(first), Some(&1));
    }
}

//! Sequence numbers of a session's requests: allocation, `ack_below`, and the wait outcomes
//! to report in the next `waits_done` (see the module docs of `session`, "Request identity").

use super::*;

/// Allocates sequence numbers, computes `ack_below`, and collects received wait outcomes.
#[derive(Debug)]
pub(crate) struct SeqTracker {
    next: u64,
    in_flight: BTreeSet<u64>,
    /// Waits whose final outcome was received and not yet reported in a `waits_done`.
    done: BTreeSet<u64>,
}

impl SeqTracker {
    pub(crate) fn new() -> SeqTracker {
        SeqTracker {
            next: 1,
            in_flight: BTreeSet::new(),
            done: BTreeSet::new(),
        }
    }

    /// Allocates a sequence number, marks it in flight and returns `(seq, ack_below)`.
    pub(crate) fn begin(&mut self) -> (u64, u64) {
        let seq = self.next;
        self.next = seq.checked_add(1).expect("sequence numbers exhausted");
        let inserted = self.in_flight.insert(seq);
        assert!(inserted, "sequence number {seq} allocated twice");
        (seq, self.ack_below())
    }

    /// The outcome of wait `seq` was received: report it in the next requests.
    pub(crate) fn wait_done(&mut self, seq: u64) {
        self.done.insert(seq);
    }

    /// Wait outcomes to report in the next request (at most [`WAITS_DONE_MAX`]).
    pub(crate) fn waits_done(&self) -> Vec<u64> {
        self.done.iter().take(WAITS_DONE_MAX).copied().collect()
    }

    /// A request carrying `reported` in its `waits_done` was applied.
    pub(crate) fn reported(&mut self, reported: &[u64]) {
        for seq in reported {
            self.done.remove(seq);
        }
    }

    /// The request `seq` got its final reply (or was given up).
    pub(crate) fn finish(&mut self, seq: u64) {
        let removed = self.in_flight.remove(&seq);
        assert!(removed, "sequence number {seq} finished but not in flight");
    }

    /// The smallest sequence number in flight, or the next one if none.
    pub(crate) fn ack_below(&self) -> u64 {
        self.in_flight.first().copied().unwrap_or(self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_start_at_one_and_ack_the_oldest_in_flight() {
        let mut t = SeqTracker::new();
        assert_eq!(t.ack_below(), 1);
        assert_eq!(t.begin(), (1, 1));
        assert_eq!(t.begin(), (2, 1), "1 is still in flight");
        t.finish(1);
        assert_eq!(t.ack_below(), 2);
        assert_eq!(t.begin(), (3, 2));
        t.finish(3);
        assert_eq!(t.ack_below(), 2, "2 still in flight");
        t.finish(2);
        assert_eq!(t.ack_below(), 4, "nothing in flight: the next seq");
        assert_eq!(t.begin(), (4, 4));
    }

    #[test]
    #[should_panic(expected = "not in flight")]
    fn finishing_twice_is_a_bug() {
        let mut t = SeqTracker::new();
        let (seq, _) = t.begin();
        t.finish(seq);
        t.finish(seq);
    }
}

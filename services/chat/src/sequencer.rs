//! The order of one room's timeline on one replica: events arrive from the
//! local writer and from the bus, late, early, twice, or not at all; they
//! leave strictly by `seq`, each once. What is missing is named as a hole
//! for the hub to read from storage (README: "How a message travels").
//!
//! Pure state, no I/O: the hub holds one per room under its lock, and the
//! property tests below drive it through any interleaving.

use std::collections::BTreeMap;

/// One room's delivery order.
#[derive(Debug)]
pub(crate) struct Sequencer<T> {
    /// Every event up to this seq has been delivered.
    delivered: i64,
    /// Events past a hole, by seq.
    pending: BTreeMap<i64, T>,
    /// The newest seq known to exist: a hole reaches up to it.
    known: i64,
    /// Most events held past a hole; beyond that they are read back from
    /// storage with the rest of the hole.
    max_pending: usize,
}

impl<T> Sequencer<T> {
    /// A room whose events up to `last_seq` need no delivery here.
    pub(crate) fn new(last_seq: i64, max_pending: usize) -> Self {
        Self {
            delivered: last_seq,
            pending: BTreeMap::new(),
            known: last_seq,
            max_pending,
        }
    }

    /// Every event up to this seq has been delivered.
    pub(crate) fn delivered(&self) -> i64 {
        self.delivered
    }

    /// Takes the event at `seq`: a duplicate is dropped, the next one is
    /// delivered through `deliver` with every waiting one that follows it,
    /// and one past a hole waits. Returns whether a hole is left to fill.
    pub(crate) fn offer(&mut self, seq: i64, event: T, mut deliver: impl FnMut(T)) -> bool {
        if seq <= self.delivered {
            return self.has_hole();
        }
        if seq > self.delivered + 1 {
            self.known = self.known.max(seq);
            if self.pending.len() < self.max_pending {
                self.pending.insert(seq, event);
            }
            return true;
        }
        self.delivered = seq;
        deliver(event);
        while let Some(next) = self.pending.remove(&(self.delivered + 1)) {
            self.delivered += 1;
            deliver(next);
        }
        let delivered = self.delivered;
        self.pending.retain(|&seq, _| seq > delivered);
        self.known = self.known.max(delivered);
        self.has_hole()
    }

    /// Storage says the room reached `seq`. Returns whether a hole is left
    /// to fill.
    pub(crate) fn learn(&mut self, seq: i64) -> bool {
        self.known = self.known.max(seq);
        self.has_hole()
    }

    /// Whether events between what was delivered and what is known are
    /// missing.
    pub(crate) fn has_hole(&self) -> bool {
        self.known > self.delivered
    }

    /// The seqs to read from storage: after the first, up to the second.
    pub(crate) fn hole(&self) -> Option<(i64, i64)> {
        self.has_hole().then_some((self.delivered, self.known))
    }

    /// Fills the hole `(after, up_to]` with what storage holds there,
    /// oldest first (`deliver` is told which events came from storage),
    /// and returns how many waiting events storage did not
    /// confirm.
    ///
    /// Storage is the truth for the whole hole: events that waited in it
    /// are replaced by storage's copies, so an event storage does not hold
    /// (a forged or corrupted bus event with a seq ahead of the room) is
    /// never delivered and never makes the real message with that seq a
    /// duplicate (README: "How a message travels"). Seqs storage lacks
    /// below one it holds are skipped (a room rewritten under us); seqs
    /// past the newest one it holds are forgotten, so the hole closes.
    /// Events that arrived while storage was read, past `up_to`, wait on.
    pub(crate) fn fill(
        &mut self,
        after: i64,
        up_to: i64,
        stored: impl IntoIterator<Item = (i64, T)>,
        mut deliver: impl FnMut(T, bool),
    ) -> usize {
        let later = self.pending.split_off(&up_to.saturating_add(1));
        let mut doubted = std::mem::replace(&mut self.pending, later);
        for (seq, event) in stored {
            doubted.remove(&seq);
            if seq <= self.delivered.max(after) || seq > up_to {
                continue;
            }
            self.delivered = seq;
            deliver(event, true);
        }
        while let Some(next) = self.pending.remove(&(self.delivered + 1)) {
            self.delivered += 1;
            deliver(next, false);
        }
        // What storage did not hold is no longer known to exist; what
        // was learnt or arrived past `up_to` while it was read still is.
        if self.known <= up_to || self.known < self.delivered {
            self.known = self.delivered;
        }
        doubted.len()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn duplicates_drop_and_holes_wait() {
        let mut order = Sequencer::new(3, 10);
        let mut out = Vec::new();
        assert!(!order.offer(3, 3, |e| out.push(e)), "a duplicate");
        assert!(order.offer(6, 6, |e| out.push(e)), "past a hole");
        assert_eq!(order.hole(), Some((3, 6)));
        assert!(order.offer(5, 5, |e| out.push(e)));
        assert!(!order.offer(4, 4, |e| out.push(e)), "the hole filled");
        assert_eq!(out, [4, 5, 6]);
    }

    #[test]
    fn storage_decides_what_a_hole_holds() {
        let mut order = Sequencer::new(5, 10);
        let mut out = Vec::new();
        // A forged event far ahead, and one just past a hole.
        assert!(order.offer(1_000_000, "forged far", |e| out.push(e)));
        assert!(order.offer(7, "forged next", |e| out.push(e)));
        assert_eq!(order.hole(), Some((5, 1_000_000)));
        // Storage holds 6 and nothing more: neither forgery goes out.
        let dropped = order.fill(5, 1_000_000, [(6, "stored 6")], |e, _| out.push(e));
        assert_eq!((dropped, order.delivered(), order.hole()), (2, 6, None));
        assert_eq!(out, ["stored 6"]);
        // The real 7 is not taken for a duplicate.
        assert!(!order.offer(7, "stored 7", |e| out.push(e)));
        assert_eq!(out, ["stored 6", "stored 7"]);
    }

    #[test]
    fn storage_copies_replace_waiting_events_and_later_arrivals_wait_on() {
        let mut order = Sequencer::new(0, 10);
        let mut out = Vec::new();
        order.offer(2, "bus 2", |e| out.push(e));
        order.offer(9, "bus 9", |e| out.push(e));
        // Read (0, 9]; 10 arrived meanwhile; storage lacks 3 (rewritten).
        order.offer(10, "bus 10", |e| out.push(e));
        let stored = [(1, "stored 1"), (2, "stored 2"), (4, "stored 4")];
        let dropped = order.fill(0, 9, stored, |e, _| out.push(e));
        assert_eq!(dropped, 1, "9 is not in storage");
        assert_eq!(out, ["stored 1", "stored 2", "stored 4"]);
        assert_eq!(order.hole(), Some((4, 10)), "10 waits for 5..9");
        let stored = (5..=10).map(|seq| (seq, if seq == 10 { "stored 10" } else { "x" }));
        order.fill(4, 10, stored, |e, _| out.push(e));
        assert_eq!(out[3..], ["x", "x", "x", "x", "x", "stored 10"]);
        assert_eq!(order.hole(), None);
    }

    proptest! {
        /// Any arrival order, with any duplicates and any losses, ends in
        /// every event delivered once, by seq, once the holes are read back
        /// from storage.
        #[test]
        fn delivers_each_event_once_in_order(
            count in 1i64..120,
            start in 0i64..5,
            order in proptest::collection::vec(any::<u32>(), 1..400),
            lost in proptest::collection::vec(any::<bool>(), 120),
            max_pending in 1usize..50,
        ) {
            let mut sequencer = Sequencer::new(start, max_pending);
            let mut delivered: Vec<i64> = Vec::new();
            // Arrivals: seqs drawn by `order` (duplicates and any order),
            // without the ones the bus lost.
            let arrivals = order.iter().map(|n| start + 1 + i64::from(*n) % count)
                .filter(|seq| !lost[usize::try_from(seq - start - 1).unwrap_or(0) % lost.len()]);
            for seq in arrivals {
                if sequencer.offer(seq, seq, |e| delivered.push(e)) {
                    // Sometimes the backfill runs between arrivals.
                    if seq % 3 == 0 {
                        backfill(&mut sequencer, &mut delivered);
                    }
                }
            }
            // The periodic check against storage finds the rest.
            sequencer.learn(start + count);
            backfill(&mut sequencer, &mut delivered);
            let expected: Vec<i64> = (start + 1..=start + count).collect();
            prop_assert_eq!(delivered, expected);
            prop_assert!(!sequencer.has_hole());
        }
    }

    /// Reads the hole from "storage" (every seq exists) and fills it.
    fn backfill(sequencer: &mut Sequencer<i64>, delivered: &mut Vec<i64>) {
        while let Some((after, up_to)) = sequencer.hole() {
            let stored = (after + 1..=up_to).map(|seq| (seq, seq));
            let dropped = sequencer.fill(after, up_to, stored, |e, _| delivered.push(e));
            assert_eq!(dropped, 0, "storage holds every seq");
        }
    }
}

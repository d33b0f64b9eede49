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

    /// Storage does not hold what the seqs promise (a room rewritten under
    /// us?): delivery goes on after `seq`, and what waited before it is
    /// dropped.
    pub(crate) fn skip_to(&mut self, seq: i64) {
        self.delivered = self.delivered.max(seq.min(self.known));
        let delivered = self.delivered;
        self.pending.retain(|&seq, _| seq > delivered);
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
        assert!(order.learn(8));
        order.skip_to(8);
        assert_eq!((order.delivered(), order.hole()), (8, None));
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

    /// Reads the hole from "storage" (every seq exists) and offers it.
    fn backfill(sequencer: &mut Sequencer<i64>, delivered: &mut Vec<i64>) {
        while let Some((after, up_to)) = sequencer.hole() {
            for seq in after + 1..=up_to {
                sequencer.offer(seq, seq, |e| delivered.push(e));
            }
        }
    }
}

//! Which offset of each partition may be committed when messages finish out of order.
//!
//! The rule: a partition's committed offset is the lowest offset still being handled (or,
//! with nothing in flight, one past the highest handled). So a commit never covers a message
//! that has not been handled durably, whatever order the handlers finish in, and a crash
//! replays from the first unfinished message (handlers are idempotent).
//!
//! Partitions carry an epoch: when a partition is revoked and later assigned again, handlers
//! still running from the earlier assignment cannot mark offsets in the new one.
//!
//! Holes: paygate's topics have no compaction and no transactions, so within one assignment
//! a partition's messages come at consecutive offsets. A message past the one after the last
//! means the fetch skipped a batch the broker had acknowledged but not yet stored (tansu's
//! memory storage reserves offsets before it writes); [`OffsetTracker::take`] then says to
//! read the partition again from the hole, for a while, before it takes the hole as real.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A topic and partition.
pub type TopicPartition = (String, i32);

/// Proof that a message was registered; hand it back to [`OffsetTracker::complete`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub partition: TopicPartition,
    pub offset: i64,
    epoch: u64,
}

/// What [`OffsetTracker::take`] makes of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    /// Registered: handle it.
    Begun(Ticket),
    /// The fetch skipped offsets from `expected`: do not handle this message, read the
    /// partition again from `expected`. `first`: the first time this hole was seen.
    Refetch { expected: i64, first: bool },
    /// Registered after its hole outlasted the patience: offsets `expected..` before it
    /// never came. Handle it (Postgres re-drives whatever the missing ones carried).
    BegunAfterHole { ticket: Ticket, expected: i64 },
}

/// A hole being waited out: the offset expected, since when.
#[derive(Debug, Clone, Copy)]
struct Hole {
    expected: i64,
    since: Instant,
}

#[derive(Debug, Default)]
struct PartitionState {
    epoch: u64,
    in_flight: BTreeSet<i64>,
    /// One past the highest offset seen (registered) so far.
    next_after_seen: Option<i64>,
    last_committed: Option<i64>,
    hole: Option<Hole>,
}

impl PartitionState {
    fn committable(&self) -> Option<i64> {
        self.in_flight.first().copied().or(self.next_after_seen)
    }
}

#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: BTreeMap<TopicPartition, PartitionState>,
    next_epoch: u64,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a message as taken from the broker and not yet handled.
    pub fn begin(&mut self, topic: &str, partition: i32, offset: i64) -> Ticket {
        self.register((topic.to_owned(), partition), offset)
    }

    fn register(&mut self, key: TopicPartition, offset: i64) -> Ticket {
        let next_epoch = &mut self.next_epoch;
        let state = self.partitions.entry(key.clone()).or_insert_with(|| {
            *next_epoch += 1;
            PartitionState {
                epoch: *next_epoch,
                ..PartitionState::default()
            }
        });
        state.in_flight.insert(offset);
        // A registered message ends any wait for a hole before it.
        state.hole = None;
        let after = offset.saturating_add(1);
        state.next_after_seen = Some(state.next_after_seen.map_or(after, |n| n.max(after)));
        Ticket {
            partition: key,
            offset,
            epoch: state.epoch,
        }
    }

    /// Registers a message unless it comes after a hole in its partition's offsets (see the
    /// module's doc): then, until the hole has lasted `patience`, it answers
    /// [`Take::Refetch`] and registers nothing.
    pub fn take(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        now: Instant,
        patience: Duration,
    ) -> Take {
        let key = (topic.to_owned(), partition);
        if let Some(state) = self.partitions.get_mut(&key) {
            if let Some(expected) = state.next_after_seen.filter(|&next| offset > next) {
                let known = state.hole.filter(|hole| hole.expected == expected);
                let since = known.map_or(now, |hole| hole.since);
                if now.saturating_duration_since(since) < patience {
                    state.hole = Some(Hole { expected, since });
                    return Take::Refetch {
                        expected,
                        first: known.is_none(),
                    };
                }
                return Take::BegunAfterHole {
                    ticket: self.register(key, offset),
                    expected,
                };
            }
        }
        Take::Begun(self.register(key, offset))
    }

    /// Marks a message handled. A ticket from an earlier assignment is ignored.
    pub fn complete(&mut self, ticket: &Ticket) {
        if let Some(state) = self.partitions.get_mut(&ticket.partition) {
            if state.epoch == ticket.epoch {
                state.in_flight.remove(&ticket.offset);
            }
        }
    }

    /// Offsets that may be committed now and were not committed yet: `(partition, offset)`
    /// where `offset` is the next message to read.
    pub fn committable(&self) -> Vec<(TopicPartition, i64)> {
        self.partitions
            .iter()
            .filter_map(|(tp, state)| {
                let offset = state.committable()?;
                (state.last_committed != Some(offset)).then(|| (tp.clone(), offset))
            })
            .collect()
    }

    /// Every partition's committable offset, committed before or not (for the final,
    /// synchronous commit at shutdown, which must not trust an earlier asynchronous one).
    pub fn committable_all(&self) -> Vec<(TopicPartition, i64)> {
        self.partitions
            .iter()
            .filter_map(|(tp, state)| Some((tp.clone(), state.committable()?)))
            .collect()
    }

    /// Records a successful commit so the same offset is not committed again.
    pub fn committed(&mut self, partition: &TopicPartition, offset: i64) {
        if let Some(state) = self.partitions.get_mut(partition) {
            state.last_committed = Some(offset);
        }
    }

    /// Forgets a revoked partition, returning the offset that may be committed for it.
    pub fn revoke(&mut self, topic: &str, partition: i32) -> Option<i64> {
        let state = self.partitions.remove(&(topic.to_owned(), partition))?;
        state
            .committable()
            .filter(|o| state.last_committed != Some(*o))
    }

    /// Messages taken but not yet handled, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|s| s.in_flight.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        ("t".to_owned(), p)
    }

    const PATIENCE: Duration = Duration::from_secs(1);

    #[test]
    fn consecutive_offsets_are_taken_and_a_hole_is_read_again_until_it_fills() {
        let mut tracker = OffsetTracker::new();
        let start = Instant::now();
        for offset in 0..3 {
            assert!(matches!(
                tracker.take("t", 0, offset, start, PATIENCE),
                Take::Begun(_)
            ));
        }
        // The fetch at 3 answered with the batch at 4: 3 was acknowledged, not yet stored.
        assert_eq!(
            tracker.take("t", 0, 4, start, PATIENCE),
            Take::Refetch {
                expected: 3,
                first: true
            }
        );
        let later = start + Duration::from_millis(10);
        assert_eq!(
            tracker.take("t", 0, 4, later, PATIENCE),
            Take::Refetch {
                expected: 3,
                first: false
            },
            "the same hole, still waited for"
        );
        assert_eq!(
            tracker.committable(),
            vec![(tp(0), 0)],
            "4 was not registered"
        );
        // Read again from 3, it comes, then 4.
        assert!(matches!(
            tracker.take("t", 0, 3, later, PATIENCE),
            Take::Begun(_)
        ));
        assert!(matches!(
            tracker.take("t", 0, 4, later, PATIENCE),
            Take::Begun(_)
        ));
        // Another partition's first message after an assignment is no hole.
        assert!(matches!(
            tracker.take("t", 1, 57, later, PATIENCE),
            Take::Begun(_)
        ));
    }

    #[test]
    fn a_hole_that_outlasts_the_patience_is_taken_as_real() {
        let mut tracker = OffsetTracker::new();
        let start = Instant::now();
        let Take::Begun(first) = tracker.take("t", 0, 7, start, PATIENCE) else {
            panic!("the first message of an assignment is no hole");
        };
        tracker.complete(&first);
        assert!(matches!(
            tracker.take("t", 0, 9, start, PATIENCE),
            Take::Refetch {
                expected: 8,
                first: true
            }
        ));
        let Take::BegunAfterHole { ticket, expected } =
            tracker.take("t", 0, 9, start + PATIENCE, PATIENCE)
        else {
            panic!("the hole outlasted the patience");
        };
        assert_eq!((ticket.offset, expected), (9, 8));
        tracker.complete(&ticket);
        assert_eq!(tracker.committable(), vec![(tp(0), 10)]);
        // Zero patience: every hole at once.
        assert!(matches!(
            tracker.take("t", 0, 12, start, Duration::ZERO),
            Take::BegunAfterHole { expected: 10, .. }
        ));
    }

    #[test]
    fn a_lower_offset_is_no_hole() {
        // A broker that came back empty starts again at 0; a replay after a seek goes back.
        let mut tracker = OffsetTracker::new();
        let now = Instant::now();
        assert!(matches!(
            tracker.take("t", 0, 40, now, PATIENCE),
            Take::Begun(_)
        ));
        assert!(matches!(
            tracker.take("t", 0, 0, now, PATIENCE),
            Take::Begun(_)
        ));
        assert!(matches!(
            tracker.take("t", 0, 41, now, PATIENCE),
            Take::Begun(_)
        ));
    }

    #[test]
    fn out_of_order_completion_never_skips_an_unhandled_offset() {
        let mut tracker = OffsetTracker::new();
        let tickets: Vec<Ticket> = (10..15).map(|o| tracker.begin("t", 0, o)).collect();
        assert_eq!(tracker.committable(), vec![(tp(0), 10)]);
        // 11, 13, 14 finish; 10 and 12 are still running.
        for i in [1, 3, 4] {
            tracker.complete(&tickets[i]);
        }
        assert_eq!(tracker.committable(), vec![(tp(0), 10)]);
        tracker.complete(&tickets[0]);
        assert_eq!(tracker.committable(), vec![(tp(0), 12)]);
        tracker.complete(&tickets[2]);
        assert_eq!(tracker.committable(), vec![(tp(0), 15)]);
        tracker.committed(&tp(0), 15);
        assert!(tracker.committable().is_empty());
    }

    #[test]
    fn partitions_are_independent() {
        let mut tracker = OffsetTracker::new();
        let a = tracker.begin("t", 0, 5);
        let _b = tracker.begin("t", 1, 7);
        tracker.complete(&a);
        assert_eq!(tracker.committable(), vec![(tp(0), 6), (tp(1), 7)]);
        assert_eq!(tracker.in_flight(), 1);
    }

    #[test]
    fn stale_tickets_from_a_revoked_assignment_are_ignored() {
        let mut tracker = OffsetTracker::new();
        let old = tracker.begin("t", 0, 3);
        assert_eq!(tracker.revoke("t", 0), Some(3));
        let fresh = tracker.begin("t", 0, 3);
        tracker.complete(&old);
        assert_eq!(
            tracker.committable(),
            vec![(tp(0), 3)],
            "old ticket must not complete the new assignment"
        );
        tracker.complete(&fresh);
        assert_eq!(tracker.committable(), vec![(tp(0), 4)]);
    }

    proptest::proptest! {
        /// Whatever order handlers finish in, the committable offset is exactly the lowest
        /// unfinished one (or one past the last when all are done).
        #[test]
        fn committable_is_lowest_unfinished(order in proptest::sample::subsequence((0..40_i64).collect::<Vec<_>>(), 0..40)) {
            let mut tracker = OffsetTracker::new();
            let tickets: Vec<Ticket> = (0..40).map(|o| tracker.begin("t", 0, o)).collect();
            let mut done = std::collections::BTreeSet::new();
            for o in order {
                tracker.complete(&tickets[o as usize]);
                done.insert(o);
                let expected = (0..40).find(|x| !done.contains(x)).unwrap_or(40);
                proptest::prop_assert_eq!(tracker.committable(), vec![(tp(0), expected)]);
            }
        }
    }
}

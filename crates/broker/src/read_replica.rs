//! Fetching from the closest replica (KIP-392): which replica a partition's leader sends
//! a consumer to, by `replica.selector.class` and the consumer's `client.rack` (the
//! Fetch request's `rack_id`, from version 11).
//!
//! With `RackAwareReplicaSelector`, a consumer in the leader's rack, in no replica's rack,
//! or naming no rack reads from the leader. Otherwise it is sent to the follower of its
//! rack that holds the most (then the one caught up most recently): the fetch is answered
//! with that follower as `preferred_read_replica` and no records, and the consumer fetches
//! from the follower, which serves it up to its own high watermark.

use crate::config::ReplicaSelector;
use crate::replica::ReadCandidate;

/// The follower a consumer in `client_rack` should read from, when not the leader
/// `leader`. `candidates` are the followers that hold the consumer's fetch offset (see
/// [`crate::replica::Replica::read_candidates`]). `rack_of` gives the rack of a
/// registered, unfenced broker; others are passed over.
pub fn select<'a>(
    selector: ReplicaSelector,
    client_rack: &str,
    leader: i32,
    candidates: &[ReadCandidate],
    rack_of: impl Fn(i32) -> Option<&'a str>,
) -> Option<i32> {
    if selector != ReplicaSelector::RackAware || client_rack.is_empty() {
        return None;
    }
    let in_rack = |id: i32| rack_of(id) == Some(client_rack);
    if in_rack(leader) {
        return None;
    }
    candidates
        .iter()
        .filter(|c| in_rack(c.id))
        // The most data, then the most recently caught up, then the lowest ID.
        .max_by_key(|c| {
            (
                c.log_end_offset,
                std::cmp::Reverse(c.since_caught_up_ms),
                std::cmp::Reverse(c.id),
            )
        })
        .map(|c| c.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The racks of live brokers, as `select` takes them.
    fn racks<'a>(racks: &'a [(i32, &'a str)]) -> impl Fn(i32) -> Option<&'a str> {
        move |id| racks.iter().find(|(b, _)| *b == id).map(|(_, rack)| *rack)
    }

    fn candidate(id: i32, log_end_offset: i64, since_caught_up_ms: i64) -> ReadCandidate {
        ReadCandidate {
            id,
            log_end_offset,
            since_caught_up_ms,
        }
    }

    #[test]
    fn a_consumer_is_sent_to_the_follower_of_its_rack() {
        let live = [(1, "a"), (2, "b"), (3, "c")];
        let followers = [candidate(2, 10, 0), candidate(3, 10, 0)];
        let rack_aware = ReplicaSelector::RackAware;
        assert_eq!(
            select(rack_aware, "b", 1, &followers, racks(&live)),
            Some(2)
        );
        assert_eq!(
            select(rack_aware, "c", 1, &followers, racks(&live)),
            Some(3)
        );
        // The leader's rack, an unknown rack, no rack, or the leader selector: the leader.
        assert_eq!(select(rack_aware, "a", 1, &followers, racks(&live)), None);
        assert_eq!(select(rack_aware, "z", 1, &followers, racks(&live)), None);
        assert_eq!(select(rack_aware, "", 1, &followers, racks(&live)), None);
        assert_eq!(
            select(ReplicaSelector::Leader, "b", 1, &followers, racks(&live)),
            None
        );
        // A follower that does not hold the offset is not a candidate.
        assert_eq!(
            select(rack_aware, "b", 1, &followers[1..], racks(&live)),
            None
        );
    }

    #[test]
    fn within_a_rack_the_most_caught_up_follower_wins() {
        // Broker 4 is in rack b too, but fenced: it has no rack here.
        let live = [(1, "a"), (2, "b"), (3, "b")];
        let rack_aware = ReplicaSelector::RackAware;
        let followers = [candidate(2, 10, 0), candidate(3, 12, 50)];
        assert_eq!(
            select(rack_aware, "b", 1, &followers, racks(&live)),
            Some(3)
        );
        let followers = [candidate(2, 12, 80), candidate(3, 12, 50)];
        assert_eq!(
            select(rack_aware, "b", 1, &followers, racks(&live)),
            Some(3)
        );
        let followers = [candidate(3, 12, 50), candidate(2, 12, 50)];
        assert_eq!(
            select(rack_aware, "b", 1, &followers, racks(&live)),
            Some(2)
        );
        // A fenced (or unknown) broker is never chosen, however far it got.
        let followers = [candidate(2, 10, 0), candidate(4, 99, 0)];
        assert_eq!(
            select(rack_aware, "b", 1, &followers, racks(&live)),
            Some(2)
        );
    }
}

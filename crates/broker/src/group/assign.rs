//! The server-side assignors of consumer groups (KIP-848): `uniform`, which spreads
//! partitions evenly and moves as few as it can, and `range`, which gives each member
//! contiguous ranges of every topic it subscribes to (so co-partitioned topics stay
//! together). Both are deterministic: the same members, subscriptions and previous
//! assignment give the same result.

use std::collections::{BTreeMap, BTreeSet};

use spool_protocol::Uuid;

/// Partitions by topic ID.
pub type Assignment = BTreeMap<Uuid, BTreeSet<i32>>;

/// The assignors a group can ask for, the first being the default
/// (`group.consumer.assignors`).
pub const ASSIGNORS: [&str; 2] = ["uniform", "range"];

/// What an assignor knows of a member.
#[derive(Debug, Clone)]
pub struct MemberSpec<'a> {
    pub id: &'a str,
    /// The topics it subscribes to that exist.
    pub topics: BTreeSet<Uuid>,
    /// Its target assignment so far.
    pub current: Option<&'a Assignment>,
}

/// Runs `assignor` (one of [`ASSIGNORS`]) over `members` and the partition counts of the
/// topics they subscribe to; every member gets an entry.
pub fn assign(
    assignor: &str,
    members: &[MemberSpec<'_>],
    partitions: &BTreeMap<Uuid, i32>,
) -> BTreeMap<String, Assignment> {
    if assignor == "range" {
        range(members, partitions)
    } else {
        uniform(members, partitions)
    }
}

fn range(
    members: &[MemberSpec<'_>],
    partitions: &BTreeMap<Uuid, i32>,
) -> BTreeMap<String, Assignment> {
    let mut result: BTreeMap<String, Assignment> = members
        .iter()
        .map(|m| (m.id.to_string(), Assignment::new()))
        .collect();
    for (topic, &count) in partitions {
        let mut subscribers: Vec<&str> = members
            .iter()
            .filter(|m| m.topics.contains(topic))
            .map(|m| m.id)
            .collect();
        if subscribers.is_empty() {
            continue;
        }
        subscribers.sort_unstable();
        let n = subscribers.len() as i32;
        let (each, extra) = (count / n, count % n);
        let mut next = 0;
        for (i, member) in subscribers.into_iter().enumerate() {
            let take = each + i32::from((i as i32) < extra);
            if take > 0
                && let Some(assignment) = result.get_mut(member)
            {
                assignment
                    .entry(*topic)
                    .or_default()
                    .extend(next..next + take);
            }
            next += take;
        }
    }
    result
}

fn uniform(
    members: &[MemberSpec<'_>],
    partitions: &BTreeMap<Uuid, i32>,
) -> BTreeMap<String, Assignment> {
    let mut sorted: Vec<&MemberSpec<'_>> = members.iter().collect();
    sorted.sort_unstable_by_key(|m| m.id);
    let mut owned: Vec<Vec<(Uuid, i32)>> = vec![Vec::new(); sorted.len()];
    let mut taken: BTreeSet<(Uuid, i32)> = BTreeSet::new();
    // Keep what each member had, where it still subscribes and the partition exists.
    for (i, member) in sorted.iter().enumerate() {
        for (topic, kept) in member.current.into_iter().flatten() {
            let Some(&count) = partitions.get(topic) else {
                continue;
            };
            if !member.topics.contains(topic) {
                continue;
            }
            for &p in kept {
                if p < count && taken.insert((*topic, p)) {
                    owned[i].push((*topic, p));
                }
            }
        }
    }
    // Hand out the rest, each to the least loaded member that subscribes to its topic.
    for (topic, &count) in partitions {
        let eligible: Vec<usize> = (0..sorted.len())
            .filter(|&i| sorted[i].topics.contains(topic))
            .collect();
        for p in 0..count {
            if taken.contains(&(*topic, p)) {
                continue;
            }
            if let Some(&i) = eligible.iter().min_by_key(|&&i| (owned[i].len(), i)) {
                owned[i].push((*topic, p));
                taken.insert((*topic, p));
            }
        }
    }
    // Even out: move a partition from a member with two or more above another that can
    // take it, until no such move is left. Each move lowers the sum of squared loads, so
    // this ends.
    loop {
        let mut order: Vec<usize> = (0..sorted.len()).collect();
        order.sort_unstable_by_key(|&i| (owned[i].len(), i));
        let mut moved = false;
        'search: for &over in order.iter().rev() {
            for &under in &order {
                if owned[over].len() <= owned[under].len() + 1 {
                    break;
                }
                let movable = owned[over]
                    .iter()
                    .rposition(|(topic, _)| sorted[under].topics.contains(topic));
                if let Some(index) = movable {
                    let partition = owned[over].remove(index);
                    owned[under].push(partition);
                    moved = true;
                    break 'search;
                }
            }
        }
        if !moved {
            break;
        }
    }
    sorted
        .iter()
        .zip(owned)
        .map(|(member, partitions)| {
            let mut assignment = Assignment::new();
            for (topic, p) in partitions {
                assignment.entry(topic).or_default().insert(p);
            }
            (member.id.to_string(), assignment)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(n: u8) -> Uuid {
        Uuid([n; 16])
    }

    fn count(a: &Assignment) -> usize {
        a.values().map(BTreeSet::len).sum()
    }

    fn spec<'a>(id: &'a str, topics: &[Uuid], current: Option<&'a Assignment>) -> MemberSpec<'a> {
        MemberSpec {
            id,
            topics: topics.iter().copied().collect(),
            current,
        }
    }

    #[test]
    fn uniform_spreads_evenly_and_keeps_partitions_that_need_not_move() {
        let partitions = BTreeMap::from([(topic(1), 900)]);
        let names: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
        let members: Vec<MemberSpec<'_>> =
            names.iter().map(|n| spec(n, &[topic(1)], None)).collect();
        let first = assign("uniform", &members, &partitions);
        assert!(first.values().all(|a| count(a) == 90));
        // An eleventh member joins: every old member keeps all but what it must give up.
        let mut names2 = names.clone();
        names2.push("m10".to_string());
        let members: Vec<MemberSpec<'_>> = names2
            .iter()
            .map(|n| spec(n, &[topic(1)], first.get(n)))
            .collect();
        let second = assign("uniform", &members, &partitions);
        let counts: Vec<usize> = second.values().map(count).collect();
        assert_eq!(counts.iter().sum::<usize>(), 900);
        assert!(counts.iter().all(|&c| c == 81 || c == 82), "{counts:?}");
        let mut all = BTreeSet::new();
        for (member, assignment) in &second {
            for p in &assignment[&topic(1)] {
                assert!(all.insert(*p), "partition {p} twice");
            }
            if let Some(before) = first.get(member) {
                assert!(assignment[&topic(1)].is_subset(&before[&topic(1)]));
            }
        }
    }

    #[test]
    fn uniform_respects_different_subscriptions() {
        let partitions = BTreeMap::from([(topic(1), 4), (topic(2), 4)]);
        let members = [
            spec("a", &[topic(1)], None),
            spec("b", &[topic(1), topic(2)], None),
            spec("c", &[topic(2)], None),
        ];
        let result = assign("uniform", &members, &partitions);
        assert!(!result["a"].contains_key(&topic(2)));
        assert!(!result["c"].contains_key(&topic(1)));
        let counts: Vec<usize> = result.values().map(count).collect();
        assert_eq!(counts.iter().sum::<usize>(), 8);
        assert!(counts.iter().all(|&c| (2..=3).contains(&c)), "{counts:?}");
    }

    #[test]
    fn range_gives_contiguous_ranges_and_the_remainder_to_the_first_members() {
        let partitions = BTreeMap::from([(topic(1), 7), (topic(2), 7)]);
        let members = [
            spec("b", &[topic(1), topic(2)], None),
            spec("a", &[topic(1), topic(2)], None),
            spec("c", &[topic(1), topic(2)], None),
        ];
        let result = assign("range", &members, &partitions);
        let expect = |ps: &[i32]| ps.iter().copied().collect::<BTreeSet<i32>>();
        assert_eq!(result["a"][&topic(1)], expect(&[0, 1, 2]));
        assert_eq!(result["b"][&topic(1)], expect(&[3, 4]));
        assert_eq!(result["c"][&topic(1)], expect(&[5, 6]));
        // Co-partitioned: the same ranges of the second topic.
        assert_eq!(result["a"][&topic(2)], result["a"][&topic(1)]);
    }

    #[test]
    fn a_member_without_topics_gets_an_empty_assignment() {
        let partitions = BTreeMap::from([(topic(1), 2)]);
        let members = [spec("a", &[], None), spec("b", &[topic(1)], None)];
        for assignor in ASSIGNORS {
            let result = assign(assignor, &members, &partitions);
            assert!(result["a"].is_empty());
            assert_eq!(count(&result["b"]), 2);
        }
    }
}

//! Partition reassignment (KIP-455), the controller's part.
//!
//! A reassignment to target replicas T of a partition whose replicas are C first makes the
//! replicas T followed by C − T, with T − C *adding* and C − T *removing*. The adding
//! replicas fetch from the leader like any follower, and the leader asks for them to join
//! the ISR once they have caught up. When every target replica is in the ISR, the
//! reassignment completes in one change: the replicas become T, the ISR keeps only its
//! members in T, and if the leader is not among them leadership moves to the first in-sync
//! target replica. A new reassignment of a partition already being reassigned starts over
//! from its replicas before the first one; cancelling returns to them.

use spool_protocol::ErrorCode;
use spool_protocol::Uuid;
use spool_protocol::internal::PartitionChangeRecord;

use crate::controller::Refusal;
use crate::{MetadataImage, MetadataRecord, NO_LEADER, NO_LEADER_CHANGE, PartitionMeta};

/// The state of a partition a change moves it to.
struct Next {
    replicas: Vec<i32>,
    isr: Vec<i32>,
    adding: Vec<i32>,
    removing: Vec<i32>,
    leader: i32,
}

/// The change that starts moving `p` (of topic `topic_id`, named `name`) to `target`, or
/// completes it at once when every target replica is already in sync; `None` when `p` is
/// already there with no reassignment under way. With `allow_rf_change` false a target
/// of another size than the replicas before any reassignment is refused
/// (INVALID_REPLICATION_FACTOR).
pub fn start(
    image: &MetadataImage,
    (topic_id, name): (Uuid, &str),
    p: &PartitionMeta,
    target: &[i32],
    allow_rf_change: bool,
) -> Result<Option<MetadataRecord>, Refusal> {
    check_target(image, name, p.index, target)?;
    let original = p.original_replicas();
    if !allow_rf_change && target.len() != original.len() {
        return Err((
            ErrorCode::InvalidReplicationFactor,
            format!(
                "The replication factor of {name}-{} would change from {} to {}.",
                p.index,
                original.len(),
                target.len()
            ),
        ));
    }
    if !p.is_reassigning() && p.replicas == target {
        return Ok(None);
    }
    let mut replicas = target.to_vec();
    replicas.extend(original.iter().copied().filter(|r| !target.contains(r)));
    let adding: Vec<i32> = target
        .iter()
        .copied()
        .filter(|r| !original.contains(r))
        .collect();
    let removing: Vec<i32> = original
        .iter()
        .copied()
        .filter(|r| !target.contains(r))
        .collect();
    // Replicas an earlier reassignment was adding and this one does not want leave.
    let (isr, leader) = within(image, p, &replicas)?;
    let next = Next {
        replicas,
        isr,
        adding,
        removing,
        leader,
    };
    Ok(Some(record(
        topic_id,
        p,
        complete_if_caught_up(image, next),
    )))
}

/// The change that cancels `p`'s reassignment: back to the replicas before it, without the
/// ones it was adding. NO_REASSIGNMENT_IN_PROGRESS when there is none.
pub fn cancel(
    image: &MetadataImage,
    (topic_id, name): (Uuid, &str),
    p: &PartitionMeta,
) -> Result<MetadataRecord, Refusal> {
    if !p.is_reassigning() {
        return Err((
            ErrorCode::NoReassignmentInProgress,
            format!("No reassignment of {name}-{} is in progress.", p.index),
        ));
    }
    let replicas = p.original_replicas();
    let (isr, leader) = within(image, p, &replicas)?;
    let next = Next {
        replicas,
        isr,
        adding: Vec::new(),
        removing: Vec::new(),
        leader,
    };
    Ok(record(topic_id, p, next))
}

/// `change` (of partition `p`), also completing `p`'s reassignment when the ISR it sets
/// holds every target replica. Every ISR change goes through here, whatever made it: a
/// leader's AlterPartition, or an unclean election that leaves one replica in sync.
pub fn with_completion(
    image: &MetadataImage,
    p: &PartitionMeta,
    change: MetadataRecord,
) -> MetadataRecord {
    let MetadataRecord::PartitionChange(r) = &change else {
        return change;
    };
    if r.isr.is_none() || !p.is_reassigning() {
        return change;
    }
    let mut changed = p.clone();
    changed.apply(r);
    if !changed
        .target_replicas()
        .iter()
        .all(|t| changed.isr.contains(t))
    {
        return change;
    }
    let next = Next {
        replicas: changed.replicas,
        isr: changed.isr,
        adding: changed.adding_replicas,
        removing: changed.removing_replicas,
        leader: changed.leader,
    };
    record(r.topic_id, p, complete_if_caught_up(image, next))
}

/// `p`'s ISR and leader once its replicas are `replicas`: the ISR without the others, and
/// a new leader from it if the leader's broker is not among them. Refused
/// (INVALID_REPLICA_ASSIGNMENT) when no in-sync replica would remain: the replicas left
/// would not be known to hold everything acknowledged, and the ones dropped would delete
/// their copies.
fn within(
    image: &MetadataImage,
    p: &PartitionMeta,
    replicas: &[i32],
) -> Result<(Vec<i32>, i32), Refusal> {
    let (isr, leader) = narrowed(image, &p.isr, p.leader, replicas);
    if isr.is_empty() {
        return Err((
            ErrorCode::InvalidReplicaAssignment,
            format!(
                "Partition {} would have no in-sync replica among {replicas:?}: its ISR is {:?}.",
                p.index, p.isr
            ),
        ));
    }
    Ok((isr, leader))
}

/// The members of `isr` among `replicas`, and `leader` if it is one of them, else the
/// first usable of `replicas` among them (or no leader).
fn narrowed(image: &MetadataImage, isr: &[i32], leader: i32, replicas: &[i32]) -> (Vec<i32>, i32) {
    let isr: Vec<i32> = isr
        .iter()
        .copied()
        .filter(|r| replicas.contains(r))
        .collect();
    let leader = if isr.contains(&leader) {
        leader
    } else {
        first_usable(image, replicas, &isr)
    };
    (isr, leader)
}

/// `next` completed when every target replica is in its ISR, else as it is.
fn complete_if_caught_up(image: &MetadataImage, next: Next) -> Next {
    let target: Vec<i32> = next
        .replicas
        .iter()
        .copied()
        .filter(|r| !next.removing.contains(r))
        .collect();
    if !target.iter().all(|r| next.isr.contains(r)) {
        return next;
    }
    let (isr, leader) = narrowed(image, &next.isr, next.leader, &target);
    Next {
        replicas: target,
        isr,
        adding: Vec::new(),
        removing: Vec::new(),
        leader,
    }
}

/// The first of `replicas` in `isr` that may lead, or no leader.
fn first_usable(image: &MetadataImage, replicas: &[i32], isr: &[i32]) -> i32 {
    replicas
        .iter()
        .copied()
        .find(|r| {
            isr.contains(r)
                && image
                    .broker(*r)
                    .is_some_and(|b| !b.fenced && !b.in_controlled_shutdown)
        })
        .unwrap_or(NO_LEADER)
}

/// The change that takes `p` to `next`. A change that drops any replica from the
/// assignment bumps the leader epoch even when the leader stays, as in Kafka: the dropped
/// replicas' fetches, carrying the older epoch, are then fenced, and the leader starts
/// its followers' progress afresh. Otherwise a fetch from a copy about to be deleted
/// could count after the replica is added back, and put an empty copy in the ISR.
fn record(topic_id: Uuid, p: &PartitionMeta, next: Next) -> MetadataRecord {
    let drops_any = p.replicas.iter().any(|r| !next.replicas.contains(r));
    MetadataRecord::PartitionChange(PartitionChangeRecord {
        partition_id: p.index,
        topic_id,
        isr: (next.isr != p.isr).then_some(next.isr),
        leader: if next.leader == p.leader && !drops_any {
            NO_LEADER_CHANGE
        } else {
            next.leader
        },
        replicas: (next.replicas != p.replicas).then_some(next.replicas),
        adding_replicas: Some(next.adding),
        removing_replicas: Some(next.removing),
        ..Default::default()
    })
}

/// A target must name each registered broker at most once, and at least one.
fn check_target(
    image: &MetadataImage,
    name: &str,
    index: i32,
    target: &[i32],
) -> Result<(), Refusal> {
    let invalid = |message: String| Err((ErrorCode::InvalidReplicaAssignment, message));
    if target.is_empty() {
        return invalid(format!(
            "The reassignment of {name}-{index} names no replicas."
        ));
    }
    for (i, r) in target.iter().enumerate() {
        if target[..i].contains(r) {
            return invalid(format!(
                "The reassignment of {name}-{index} names broker {r} twice."
            ));
        }
        if image.broker(*r).is_none() {
            return invalid(format!(
                "The reassignment of {name}-{index} names broker {r}, which is not registered."
            ));
        }
    }
    Ok(())
}

//! The simulation's operator: while the faults play, now and then moves a partition to
//! a seeded choice of replicas (all nodes, or all but one, in a seeded order, so the
//! preferred leader changes too) with AlterPartitionReassignments, sent to any node.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use spool_protocol::messages::{
    AlterPartitionReassignmentsRequest, RequestBody, ResponseBody,
    alter_partition_reassignments_request,
};

use crate::net::Breaks;
use crate::producer::{Run, peers};
use crate::{KAFKA_PORT, Rng, TOPIC, host};

/// The run's timeline of faults, shared by the schedule and the operator.
pub type Events = Rc<RefCell<Vec<String>>>;

/// Reassigns partitions at seeded moments until `until` (simulated time since the start).
pub async fn reassign(
    run: Run,
    seed: u64,
    until: Duration,
    events: Events,
    breaks: Breaks,
) -> turmoil::Result {
    let peers = peers("sim-admin", breaks);
    let mut rng = Rng::new(seed ^ 0x7265_6173_7369_676E);
    loop {
        tokio::time::sleep(Duration::from_millis(1_000 + rng.below(4_000))).await;
        let at = run.started.elapsed();
        if at >= until {
            return Ok(());
        }
        let partition = i32::try_from(rng.below(run.partitions as u64))?;
        let mut replicas: Vec<i32> = (0..i32::try_from(run.nodes)?).collect();
        for i in (1..replicas.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            replicas.swap(i, j);
        }
        if rng.one_in(2) {
            replicas.pop();
        }
        let ask = rng.below(run.nodes as u64) as usize;
        let request = AlterPartitionReassignmentsRequest {
            timeout_ms: 5_000,
            topics: vec![alter_partition_reassignments_request::ReassignableTopic {
                name: TOPIC.into(),
                partitions: vec![
                    alter_partition_reassignments_request::ReassignablePartition {
                        partition_index: partition,
                        replicas: Some(replicas.clone()),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let answer = peers
            .send(
                &host(ask),
                KAFKA_PORT,
                RequestBody::AlterPartitionReassignments(request),
                0,
            )
            .await;
        let outcome = match answer {
            Ok(ResponseBody::AlterPartitionReassignments(r)) => {
                let code = r
                    .responses
                    .iter()
                    .flat_map(|t| &t.partitions)
                    .map(|p| p.error_code)
                    .find(|&c| c != 0)
                    .unwrap_or(r.error_code);
                format!("error code {code}")
            }
            Ok(_) => "an unexpected answer".to_string(),
            Err(e) => format!("no answer ({e})"),
        };
        events.borrow_mut().push(format!(
            "{at:?}: partition {partition} reassigned to {replicas:?} through node {ask}: {outcome}"
        ));
    }
}

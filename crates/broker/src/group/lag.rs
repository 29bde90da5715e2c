//! Consumer lag: how far a group's committed offsets trail the partitions' high
//! watermarks. The CLI (`spool group describe`) and the metrics endpoint read it here.

use spool_protocol::ErrorCode;

use crate::state::BrokerState;

/// One partition's lag for a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub committed: i64,
    pub high_watermark: i64,
    /// Records the group has yet to commit: `high_watermark - committed`, never negative.
    pub lag: i64,
}

/// The lag of every partition `group_id` has committed an offset for (partitions that no
/// longer exist are left out); `None` when the group does not exist.
pub async fn group_lag(
    state: &BrokerState,
    group_id: &str,
) -> Result<Option<Vec<PartitionLag>>, ErrorCode> {
    let committed = state
        .groups
        .run(state, group_id, |shard, _| shard.committed(group_id))
        .await?;
    Ok(committed.map(|offsets| lags(state, offsets)))
}

/// The lag of every partition each group coordinated here has committed an offset for,
/// among the partitions this broker holds a replica of (the metrics endpoint's figures).
pub fn all_lags(state: &BrokerState) -> Vec<(String, PartitionLag)> {
    let (shards, _loading) = state.groups.read_all(|shard| {
        shard
            .group_ids()
            .filter_map(|group| Some((group.to_string(), shard.committed(group)?)))
            .collect::<Vec<_>>()
    });
    shards
        .into_iter()
        .flatten()
        .flat_map(|(group, offsets)| {
            lags(state, offsets)
                .into_iter()
                .map(move |lag| (group.clone(), lag))
        })
        .collect()
}

/// `offsets` (committed, by partition) next to the partitions' high watermarks here.
fn lags(state: &BrokerState, offsets: Vec<((String, i32), i64)>) -> Vec<PartitionLag> {
    offsets
        .into_iter()
        .filter_map(|((topic, partition), committed)| {
            let log = state.partition(&topic, partition)?;
            let high_watermark = log.with_log(|l| l.high_watermark());
            Some(PartitionLag {
                lag: (high_watermark - committed).max(0),
                topic,
                partition,
                committed,
                high_watermark,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use spool_protocol::messages::OffsetCommitRequest;
    use spool_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use spool_protocol::record_batch::RecordBatchBuilder;

    use super::*;
    use crate::group::runtime::ensure_offsets_topic;
    use crate::state::open_in_temp_dir;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lag_is_the_distance_from_the_commit_to_the_high_watermark() {
        let (state, dir) = open_in_temp_dir("lag").await;
        state
            .create_topic("orders", 2, -1, Vec::new(), BTreeMap::new())
            .await
            .unwrap();
        let log = state.partition("orders", 0).unwrap();
        let mut builder = RecordBatchBuilder::new(spool_protocol::compression::Compression::None);
        for i in 0..10u8 {
            builder.append(0, None, Some(&[i]), &[]).unwrap();
        }
        let info = log.append(builder.build().unwrap(), 0, 0).unwrap();
        log.with_log(|l| l.advance_high_watermark(info.last_offset + 1));
        ensure_offsets_topic(&state).await.unwrap();
        assert_eq!(group_lag(&state, "readers").await, Ok(None));

        let request = OffsetCommitRequest {
            group_id: "readers".into(),
            generation_id_or_member_epoch: -1,
            topics: vec![OffsetCommitRequestTopic {
                name: "orders".into(),
                partitions: vec![
                    OffsetCommitRequestPartition {
                        partition_index: 0,
                        committed_offset: 4,
                        ..OffsetCommitRequestPartition::default()
                    },
                    OffsetCommitRequestPartition {
                        partition_index: 1,
                        committed_offset: 0,
                        ..OffsetCommitRequestPartition::default()
                    },
                ],
                ..OffsetCommitRequestTopic::default()
            }],
            ..OffsetCommitRequest::default()
        };
        let response = state
            .groups
            .run(&state, "readers", |shard, now| {
                shard.commit_offsets(now, &request, 8, &|_, _| true)
            })
            .await
            .unwrap();
        assert!(
            response.topics[0]
                .partitions
                .iter()
                .all(|p| p.error_code == 0)
        );
        let lag = group_lag(&state, "readers").await.unwrap().unwrap();
        let summary: Vec<(i32, i64, i64, i64)> = lag
            .iter()
            .map(|l| (l.partition, l.committed, l.high_watermark, l.lag))
            .collect();
        assert_eq!(summary, [(0, 4, 10, 6), (1, 0, 0, 0)]);
        state.groups.detach();
        drop(log);
        state.close().await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

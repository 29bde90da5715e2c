//! The broker on its metadata quorum: changes go through the controller and reach the
//! partition logs; a restart finds everything again; an old metadata log is migrated.

use super::*;
use crate::acl::Authz;
use crate::metadata::{MetadataRecord, MetadataStore, create_topic_records};
use spool_metadata::quorum::MetadataLog;
use spool_protocol::internal::ProducerIdsRecord;

fn config_in(dir: &Path) -> BrokerConfig {
    BrokerConfig {
        data_dir: dir.to_path_buf(),
        ..BrokerConfig::default()
    }
}

#[tokio::test]
async fn topic_changes_reach_the_logs_and_survive_a_restart() {
    let (state, dir) = open_in_temp_dir("state-restart").await;
    assert!(!state.with_image(|i| i.broker(0).unwrap().fenced));
    state
        .create_topic("orders", 2, -1, Vec::new(), BTreeMap::new())
        .await
        .unwrap();
    assert!(state.partition("orders", 1).is_some());
    let refused = state
        .create_topic("orders", 2, -1, Vec::new(), BTreeMap::new())
        .await
        .unwrap_err();
    assert!(matches!(
        refused,
        BrokerError::Refused(ErrorCode::TopicAlreadyExists, _)
    ));
    let refused = state
        .create_topic("wide", 1, 3, Vec::new(), BTreeMap::new())
        .await
        .unwrap_err();
    assert!(matches!(
        refused,
        BrokerError::Refused(ErrorCode::InvalidReplicationFactor, _)
    ));
    state.add_partitions("orders", 3, Vec::new()).await.unwrap();
    assert!(state.partition("orders", 2).is_some());
    state
        .set_configs(
            crate::metadata::TOPIC_RESOURCE_TYPE,
            "orders",
            BTreeMap::from([("retention.ms".to_string(), "60000".to_string())]),
        )
        .await
        .unwrap();
    assert_eq!(
        state
            .partition("orders", 0)
            .unwrap()
            .with_log(|log| log.config().retention_ms),
        60_000
    );
    state
        .create_topic("doomed", 1, 1, Vec::new(), BTreeMap::new())
        .await
        .unwrap();
    assert!(state.delete_topic("doomed").await.unwrap());
    assert!(!state.delete_topic("doomed").await.unwrap());
    assert!(state.partition("doomed", 0).is_none());
    assert!(
        !dir.join("doomed-0").exists(),
        "a deleted topic's log is removed"
    );
    let first = state.allocate_producer_id().await.unwrap();
    let second = state.allocate_producer_id().await.unwrap();
    assert_eq!(second, first + 1);
    let epoch = state.with_image(|i| i.topic("orders").unwrap().partitions[0].leader_epoch);

    // A graceful stop: controlled shutdown, then the logs and the quorum close.
    state.leave().await;
    let committed = state.node.quorum.published().borrow().offset;
    state.wait_applied(committed).await.unwrap();
    assert!(state.with_image(|i| i.broker(0).unwrap().fenced));
    assert!(
        state.live_brokers("PLAINTEXT").is_empty(),
        "a fenced broker is not offered to clients"
    );
    state.close().await.unwrap();

    let config = BrokerConfig {
        broker_rack: Some("eu-west-1a".into()),
        ..config_in(&dir)
    };
    let endpoint = AdvertisedListener {
        name: "PLAINTEXT".into(),
        host: "broker-0.example".into(),
        port: 9092,
    };
    let state = BrokerState::start(config, vec![endpoint], None)
        .await
        .unwrap();
    assert_eq!(
        state.live_brokers("PLAINTEXT"),
        vec![LiveBroker {
            id: 0,
            host: "broker-0.example".into(),
            port: 9092,
            rack: Some("eu-west-1a".into()),
        }],
        "the registration carries the endpoints and rack"
    );
    assert!(state.live_brokers("INTERNAL").is_empty());
    let orders = state.with_image(|i| i.topic("orders").cloned()).unwrap();
    assert_eq!(orders.partitions.len(), 3);
    assert_eq!(orders.configs["retention.ms"], "60000");
    assert!(orders.partitions.iter().all(|p| p.leader == 0));
    assert!(
        orders.partitions[0].leader_epoch > epoch,
        "leadership was given up and taken again"
    );
    assert!(state.partition("orders", 2).is_some());
    assert!(state.with_image(|i| i.topic("doomed").is_none()));
    let next = state.allocate_producer_id().await.unwrap();
    assert!(
        next >= PRODUCER_ID_BLOCK,
        "no producer ID is handed out twice"
    );
    state.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_metadata_log_from_before_the_quorum_is_migrated_once() {
    let dir = std::env::temp_dir().join(format!("spool-state-legacy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let storage: Arc<dyn Storage> = Arc::new(DiskStorage);
    let tp = TopicPartition::new(METADATA_TOPIC, 0);
    let log = open_log(&storage, &dir, &tp, LogConfig::default(), now_ms()).unwrap();
    let mut store = MetadataStore::replay(log).unwrap();
    let configs = BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]);
    store
        .commit(&create_topic_records("clicks", 2, 0, &configs), now_ms())
        .unwrap();
    store
        .commit(
            &[MetadataRecord::ProducerIds(ProducerIdsRecord {
                broker_id: 0,
                broker_epoch: -1,
                next_producer_id: 5000,
                ..Default::default()
            })],
            now_ms(),
        )
        .unwrap();
    let topic_id = store.image().topic("clicks").unwrap().id;
    store.close().unwrap();
    let clicks = open_log(
        &storage,
        &dir,
        &TopicPartition::new("clicks", 1),
        LogConfig::default(),
        now_ms(),
    )
    .unwrap();
    clicks.close().unwrap();

    for round in 0..2 {
        let state = BrokerState::start(config_in(&dir), Vec::new(), None)
            .await
            .unwrap();
        let clicks = state.with_image(|i| i.topic("clicks").cloned()).unwrap();
        assert_eq!(clicks.id, topic_id, "round {round}");
        assert_eq!(clicks.configs, configs);
        assert_eq!(clicks.partitions.len(), 2);
        assert!(state.partition("clicks", 1).is_some());
        assert!(state.allocate_producer_id().await.unwrap() >= 5000);
        assert!(!dir.join(crate::node::LEGACY_METADATA_DIR).exists());
        state.close().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// When this broker stops leading a partition of `__consumer_offsets`, a JoinGroup parked
/// on it is answered NOT_COORDINATOR (the client looks for the new coordinator), as is
/// every later request for its groups.
#[tokio::test]
async fn requests_on_a_partition_no_longer_led_get_not_coordinator() {
    use crate::group::shard::Client;
    use spool_protocol::messages::JoinGroupRequest;
    use spool_protocol::messages::join_group_request::JoinGroupRequestProtocol;

    let (state, dir) = open_in_temp_dir("state-retire").await;
    crate::group::runtime::ensure_offsets_topic(&state)
        .await
        .unwrap();
    for _ in 0..100 {
        if state.groups.is_loaded() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(state.groups.is_loaded());
    let joining = tokio::spawn({
        let state = Arc::clone(&state);
        async move {
            let request = JoinGroupRequest {
                group_id: "payments".into(),
                session_timeout_ms: 10_000,
                rebalance_timeout_ms: 10_000,
                protocol_type: "consumer".into(),
                protocols: vec![JoinGroupRequestProtocol {
                    name: "range".into(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            let client = Client {
                client_id: "test".into(),
                client_host: "/127.0.0.1".into(),
            };
            // Version 3: no member ID round trip; the first member waits out
            // group.initial.rebalance.delay.ms.
            crate::api::join_group::handle(&state, (client, &Authz::allow_all()), request, 3).await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!joining.is_finished(), "the join is parked");
    state.groups.follow(Vec::new());
    let answer = tokio::time::timeout(Duration::from_secs(5), joining)
        .await
        .expect("the parked join is answered")
        .unwrap();
    assert_eq!(answer.error_code, ErrorCode::NotCoordinator.code());
    let later = state.groups.run(&state, "payments", |_, _| ()).await;
    assert_eq!(later.err(), Some(ErrorCode::NotCoordinator));
    state.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

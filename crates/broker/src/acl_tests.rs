//! Requests checked against bindings in the metadata log, handler by handler: who gets
//! which error, what is hidden, and the operations reported.

use std::collections::BTreeMap;
use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::internal::AccessControlEntryRecord;
use spool_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use spool_protocol::messages::metadata_request::MetadataRequestTopic;
use spool_protocol::messages::{FetchRequest, InitProducerIdRequest, MetadataRequest};

use super::*;
use crate::api;
use crate::config::BrokerConfig;
use crate::metadata::random_uuid;
use spool_metadata::service::AdminChange;

/// A binding under an ID of its own, as CreateAcls stores it.
fn binding(
    resource_type: i8,
    (name, pattern_type): (&str, i8),
    principal: &str,
    operation: i8,
    permission_type: i8,
) -> AccessControlEntryRecord {
    AccessControlEntryRecord {
        id: random_uuid(),
        ..super::tests::binding(
            resource_type,
            name,
            pattern_type,
            principal,
            operation,
            permission_type,
        )
    }
}

/// A broker with an authorizer (User:admin a super user), topic `orders`, and bindings:
/// alice may WRITE topics prefixed `ord`; carol has IDEMPOTENT_WRITE; dave may WRITE
/// topics prefixed `ord` but is denied WRITE on the wider prefix `or`.
async fn secured(name: &str) -> (Arc<BrokerState>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("spool-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = BrokerConfig {
        data_dir: dir.clone(),
        authorizer: Some(Authorizer {
            super_users: vec!["User:admin".into()],
            allow_everyone_if_no_acl_found: false,
        }),
        ..BrokerConfig::default()
    };
    let state = BrokerState::start(config, Vec::new(), None).await.unwrap();
    state
        .create_topic("orders", 1, -1, Vec::new(), BTreeMap::new())
        .await
        .unwrap();
    let (topic, cluster) = (resource::TOPIC, resource::CLUSTER);
    let creations = vec![
        binding(
            topic,
            ("ord", pattern::PREFIXED),
            "User:alice",
            operation::WRITE,
            permission::ALLOW,
        ),
        binding(
            cluster,
            (CLUSTER_NAME, pattern::LITERAL),
            "User:carol",
            operation::IDEMPOTENT_WRITE,
            permission::ALLOW,
        ),
        binding(
            topic,
            ("ord", pattern::PREFIXED),
            "User:dave",
            operation::WRITE,
            permission::ALLOW,
        ),
        binding(
            topic,
            ("or", pattern::PREFIXED),
            "User:dave",
            operation::WRITE,
            permission::DENY,
        ),
    ];
    state
        .change_metadata(AdminChange::AlterAcls {
            creations,
            deletions: Vec::new(),
        })
        .await
        .unwrap();
    (state, dir)
}

fn authz<'a>(state: &'a BrokerState, user: &str) -> Authz<'a> {
    Authz::new(state, &Principal::user(user), "127.0.0.1")
}

#[tokio::test]
async fn producer_ids_need_idempotent_write_or_write_on_some_topic() {
    let (state, dir) = secured("acl-init-pid").await;
    for (user, expected) in [
        ("bob", ErrorCode::ClusterAuthorizationFailed),
        ("alice", ErrorCode::None),
        ("carol", ErrorCode::None),
        // Every topic alice's prefix covers, dave's DENY covers too.
        ("dave", ErrorCode::ClusterAuthorizationFailed),
        ("admin", ErrorCode::None),
    ] {
        let response = api::init_producer_id::handle(
            &state,
            &authz(&state, user),
            InitProducerIdRequest {
                transactional_id: None,
                transaction_timeout_ms: -1,
                ..Default::default()
            },
            4,
        )
        .await;
        assert_eq!(response.error_code, expected.code(), "{user}");
    }
    let response = api::init_producer_id::handle(
        &state,
        &authz(&state, "alice"),
        InitProducerIdRequest {
            transactional_id: Some("tx".into()),
            ..Default::default()
        },
        4,
    )
    .await;
    assert_eq!(
        response.error_code,
        ErrorCode::TransactionalIdAuthorizationFailed.code()
    );
    state.close().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn metadata_hides_topics_and_auto_creation_needs_create() {
    let (state, dir) = secured("acl-metadata").await;
    let ask = |names: Option<Vec<&str>>| MetadataRequest {
        topics: names.map(|names| {
            names
                .into_iter()
                .map(|n| MetadataRequestTopic {
                    name: Some(n.into()),
                    ..Default::default()
                })
                .collect()
        }),
        allow_auto_topic_creation: true,
        include_topic_authorized_operations: true,
        ..Default::default()
    };
    let bob = authz(&state, "bob");
    let everything = api::metadata::handle(&state, ("PLAINTEXT", &bob), ask(None), 12).await;
    assert!(everything.topics.is_empty());
    let named =
        api::metadata::handle(&state, ("PLAINTEXT", &bob), ask(Some(vec!["orders"])), 12).await;
    assert_eq!(
        named.topics[0].error_code,
        ErrorCode::TopicAuthorizationFailed.code()
    );
    // alice may DESCRIBE (through WRITE) `ord-new` but not CREATE it: nothing is created.
    let alice = authz(&state, "alice");
    let asked = ask(Some(vec!["orders", "ord-new"]));
    let answer = api::metadata::handle(&state, ("PLAINTEXT", &alice), asked, 12).await;
    let codes: Vec<i16> = answer.topics.iter().map(|t| t.error_code).collect();
    assert_eq!(codes, [0, ErrorCode::TopicAuthorizationFailed.code()]);
    let write_and_describe = (1 << operation::WRITE) | (1 << operation::DESCRIBE);
    assert_eq!(
        answer.topics[0].topic_authorized_operations,
        write_and_describe
    );
    assert!(state.with_image(|image| image.topic("ord-new").is_none()));
    state.close().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn fetches_need_read_and_followers_cluster_action() {
    let (state, dir) = secured("acl-fetch").await;
    let fetch = |replica_id: i32| FetchRequest {
        replica_id,
        max_wait_ms: 0,
        max_bytes: 1 << 20,
        topics: vec![FetchTopic {
            topic: "orders".into(),
            partitions: vec![FetchPartition {
                partition: 0,
                partition_max_bytes: 1 << 20,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let refused = ErrorCode::TopicAuthorizationFailed.code();
    for (user, replica_id, expected) in [
        ("alice", -1, refused),
        ("alice", 1, refused),
        ("admin", -1, 0),
    ] {
        let who = authz(&state, user);
        let response = api::fetch::handle(&state, ("PLAINTEXT", &who), fetch(replica_id), 11).await;
        let code = response.responses[0].partitions[0].error_code;
        assert_eq!(code, expected, "{user} as replica {replica_id}");
    }
    state.close().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

//! One module per Kafka API, each with the same shape: `handle(state, request, version)`.
//! Only the APIs listed in [`IMPLEMENTED`] are advertised by ApiVersions; a request for
//! any other API closes the connection, as Kafka does for APIs it does not serve.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use spool_protocol::ErrorCode;
use spool_protocol::frame::encode_response;
use spool_protocol::header::RequestHeader;
use spool_protocol::messages::{ApiKey, RequestBody, ResponseBody};

use crate::acl::Authz;
use crate::auth::Principal;
use crate::group::shard::Client;
use crate::quota;
use crate::state::{BrokerState, lock};
use tokio::time::Instant;

pub mod add_offsets_to_txn;
pub mod add_partitions_to_txn;
pub mod alter_client_quotas;
pub mod alter_configs;
pub mod alter_partition_reassignments;
pub mod alter_user_scram_credentials;
pub mod api_versions;
pub mod consumer_group_describe;
pub mod consumer_group_heartbeat;
pub mod create_acls;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_acls;
pub mod delete_groups;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_acls;
pub mod describe_client_quotas;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_groups;
pub mod describe_log_dirs;
pub mod describe_producers;
pub mod describe_topic_partitions;
pub mod describe_transactions;
pub mod describe_user_scram_credentials;
pub mod elect_leaders;
pub mod end_txn;
pub mod fetch;
pub mod find_coordinator;
pub mod heartbeat;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod list_offsets;
pub mod list_partition_reassignments;
pub mod list_transactions;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod sync_group;
pub mod txn_offset_commit;
pub mod write_txn_markers;

/// The APIs this broker serves (and advertises).
pub const IMPLEMENTED: &[ApiKey] = &[
    ApiKey::Produce,
    ApiKey::Fetch,
    ApiKey::ListOffsets,
    ApiKey::Metadata,
    ApiKey::ApiVersions,
    ApiKey::CreateTopics,
    ApiKey::DeleteTopics,
    ApiKey::DeleteRecords,
    ApiKey::CreatePartitions,
    ApiKey::DescribeConfigs,
    ApiKey::AlterConfigs,
    ApiKey::IncrementalAlterConfigs,
    ApiKey::DescribeCluster,
    ApiKey::ElectLeaders,
    ApiKey::AlterPartitionReassignments,
    ApiKey::ListPartitionReassignments,
    ApiKey::DescribeLogDirs,
    ApiKey::DescribeTopicPartitions,
    ApiKey::OffsetForLeaderEpoch,
    ApiKey::InitProducerId,
    ApiKey::FindCoordinator,
    ApiKey::JoinGroup,
    ApiKey::SyncGroup,
    ApiKey::Heartbeat,
    ApiKey::LeaveGroup,
    ApiKey::OffsetCommit,
    ApiKey::OffsetFetch,
    ApiKey::ListGroups,
    ApiKey::DescribeGroups,
    ApiKey::DeleteGroups,
    ApiKey::OffsetDelete,
    ApiKey::ConsumerGroupHeartbeat,
    ApiKey::ConsumerGroupDescribe,
    ApiKey::AddPartitionsToTxn,
    ApiKey::AddOffsetsToTxn,
    ApiKey::EndTxn,
    ApiKey::TxnOffsetCommit,
    ApiKey::WriteTxnMarkers,
    ApiKey::DescribeProducers,
    ApiKey::DescribeTransactions,
    ApiKey::ListTransactions,
    ApiKey::SaslHandshake,
    ApiKey::SaslAuthenticate,
    ApiKey::DescribeUserScramCredentials,
    ApiKey::AlterUserScramCredentials,
    ApiKey::CreateAcls,
    ApiKey::DescribeAcls,
    ApiKey::DeleteAcls,
    ApiKey::DescribeClientQuotas,
    ApiKey::AlterClientQuotas,
];

/// What a handler may need to know about the connection a request came in on.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The listener's name (`listeners`): Metadata and DescribeCluster answer with this
    /// broker's endpoint on the same listener.
    pub listener: Arc<str>,
    /// The client's address as Kafka reports it in groups (`/IP`).
    pub client_host: Arc<str>,
    /// Who the client authenticated as.
    pub principal: Arc<Principal>,
    /// Until when the connection is not read: a client over its quota is muted for its
    /// throttle time (KIP-219).
    pub muted_until: Arc<Mutex<Option<Instant>>>,
}

impl RequestContext {
    /// A connection's context before it has authenticated.
    pub fn new(listener: Arc<str>, client_host: Arc<str>) -> RequestContext {
        RequestContext {
            listener,
            client_host,
            principal: Arc::new(Principal::anonymous()),
            muted_until: Arc::new(Mutex::new(None)),
        }
    }

    /// Records `amount` against the client's `kind` quota; when it is over, mutes the
    /// connection for the throttle time and returns it (milliseconds, for the response).
    pub fn throttle(
        &self,
        state: &BrokerState,
        kind: quota::Kind,
        client_id: Option<&str>,
        amount: f64,
    ) -> i32 {
        let who = (self.principal.name.as_str(), client_id.unwrap_or_default());
        let throttle_ms = state.with_image(|image| {
            let now = crate::state::now_ms();
            state.client_quotas.record(image, kind, who, amount, now)
        });
        self.mute(throttle_ms)
    }

    /// Mutes the connection for `throttle_ms` (unless it already is for longer); the
    /// time, for the response.
    fn mute(&self, throttle_ms: u64) -> i32 {
        if throttle_ms == 0 {
            return 0;
        }
        let until = Instant::now() + Duration::from_millis(throttle_ms);
        let mut muted = lock(&self.muted_until);
        if muted.is_none_or(|m| m < until) {
            *muted = Some(until);
        }
        i32::try_from(throttle_ms).unwrap_or(i32::MAX)
    }

    /// The controller mutations of a request from `client_id`, counted against its
    /// `controller_mutation_rate`; `strict` for the versions that may be refused.
    fn mutations<'a>(
        &self,
        state: &'a BrokerState,
        client_id: Option<&str>,
        strict: bool,
    ) -> Mutations<'a> {
        let who = (self.principal.name.as_str(), client_id.unwrap_or_default());
        Mutations {
            state,
            quota: state.with_image(|image| quota::Quotas::mutation_quota(image, who)),
            strict,
        }
    }

    /// The authorizer's view of a request on this connection.
    pub fn authz<'a>(&self, state: &'a BrokerState) -> Authz<'a> {
        let host = self.client_host.trim_start_matches('/');
        Authz::new(state, &self.principal, host)
    }

    /// Who sent a request, as group members are described.
    fn client(&self, header: &RequestHeader) -> Client {
        Client {
            client_id: header.client_id.clone().unwrap_or_default(),
            client_host: self.client_host.to_string(),
        }
    }
}

/// The partitions a CreateTopics, DeleteTopics or CreatePartitions request creates, adds
/// or deletes, counted against the client's `controller_mutation_rate`.
pub struct Mutations<'a> {
    state: &'a BrokerState,
    quota: Option<quota::MutationQuota>,
    strict: bool,
}

impl Mutations<'_> {
    /// Counts `partitions` about to be mutated; THROTTLING_QUOTA_EXCEEDED when the
    /// request is strict and the client's bucket is already empty.
    pub fn admit(&self, partitions: i32) -> Result<(), (ErrorCode, String)> {
        let Some(quota) = &self.quota else {
            return Ok(());
        };
        let now = crate::state::now_ms();
        let count = f64::from(partitions.max(0));
        if self
            .state
            .client_quotas
            .spend(quota, count, self.strict, now)
        {
            Ok(())
        } else {
            let exceeded = ErrorCode::ThrottlingQuotaExceeded;
            Err((exceeded, exceeded.message().to_string()))
        }
    }

    /// How long the client must wait before its next mutation fits its quota.
    fn throttle_ms(&self) -> u64 {
        self.quota.as_ref().map_or(0, |quota| {
            let now = crate::state::now_ms();
            self.state.client_quotas.mutation_throttle(quota, now)
        })
    }
}

/// What to do after a request.
pub enum Outcome {
    Respond(Bytes),
    /// acks=0 produce: no response is sent.
    Silent,
    /// A request this broker does not serve: close the connection.
    Close,
}

/// Step two of a produce request whose batches `produce::append` already wrote.
pub async fn finish_produce(
    state: &BrokerState,
    context: &RequestContext,
    header: RequestHeader,
    appended: produce::Appended,
    throttle_time_ms: i32,
) -> Outcome {
    let version = header.request_api_version;
    match produce::respond(state, appended, version, &context.listener).await {
        None => Outcome::Silent,
        Some(mut response) => {
            response.throttle_time_ms = throttle_time_ms;
            encode(&header, &ResponseBody::Produce(response))
        }
    }
}

/// A consumer's fetch response, counted against its `consumer_byte_rate`: when it goes
/// over (or the request went over `request_percentage`, `request_throttle`), the response
/// says how long to wait and the connection is muted that long.
fn fetch_answer(
    state: &BrokerState,
    context: &RequestContext,
    header: &RequestHeader,
    response: ResponseBody,
    request_throttle: i32,
) -> Outcome {
    let outcome = encode(header, &response);
    let Outcome::Respond(bytes) = &outcome else {
        return outcome;
    };
    let client_id = header.client_id.as_deref();
    let size = bytes.len() as f64;
    let throttle = context
        .throttle(state, quota::Kind::Fetch, client_id, size)
        .max(request_throttle);
    match response {
        ResponseBody::Fetch(mut fetched) if throttle > 0 => {
            fetched.throttle_time_ms = throttle;
            encode(header, &ResponseBody::Fetch(fetched))
        }
        _ => outcome,
    }
}

pub(crate) fn encode(header: &RequestHeader, response: &ResponseBody) -> Outcome {
    match encode_response(header.correlation_id, header.request_api_version, response) {
        Ok(bytes) => Outcome::Respond(bytes),
        Err(e) => {
            // A handler built a response its version cannot carry: a bug, not the client's.
            tracing::error!(api = response.api_key().name(), version = header.request_api_version, error = %e, "response does not encode");
            Outcome::Close
        }
    }
}

/// Runs `work` and measures the time it spends being polled: the time a request thread
/// would be busy with it, without what it waits for (a long poll, another broker).
pub async fn timed<F: Future>(work: F) -> (F::Output, Duration) {
    let mut busy = Duration::ZERO;
    let mut work = std::pin::pin!(work);
    let output = std::future::poll_fn(|cx| {
        let started = std::time::Instant::now();
        let polled = work.as_mut().poll(cx);
        busy += started.elapsed();
        polled
    })
    .await;
    (output, busy)
}

/// Serves one request, counting the time it takes against the client's
/// `request_percentage` and a consumer's fetch response against its `consumer_byte_rate`;
/// the larger throttle goes in the response. Follower fetches and transaction markers are
/// brokers' work and not counted, as Kafka exempts cluster actions.
pub async fn handle(
    state: &Arc<BrokerState>,
    context: &RequestContext,
    header: RequestHeader,
    body: RequestBody,
) -> Outcome {
    let exempt = match &body {
        RequestBody::Fetch(request) => fetch::from_follower(request, header.request_api_version),
        RequestBody::WriteTxnMarkers(_) => true,
        _ => false,
    };
    let (answer, busy) = timed(respond(state, context, &header, body)).await;
    let mut response = match answer {
        Ok(response) => response,
        Err(outcome) => return outcome,
    };
    if exempt {
        return encode(&header, &response);
    }
    let client_id = header.client_id.as_deref();
    let spent = quota::request_percent(busy);
    let throttle = context.throttle(state, quota::Kind::Request, client_id, spent);
    if matches!(response, ResponseBody::Fetch(_)) {
        return fetch_answer(state, context, &header, response, throttle);
    }
    if throttle > response.throttle_time_ms().unwrap_or(0) {
        response.set_throttle_time_ms(throttle);
    }
    encode(&header, &response)
}

/// The response to a request; `Err` for one already encoded (produce) or a connection
/// to close.
async fn respond(
    state: &Arc<BrokerState>,
    context: &RequestContext,
    header: &RequestHeader,
    body: RequestBody,
) -> Result<ResponseBody, Outcome> {
    let version = header.request_api_version;
    let authz = context.authz(state);
    let response = match body {
        RequestBody::ApiVersions(request) => {
            ResponseBody::ApiVersions(api_versions::handle(&request, version))
        }
        RequestBody::Metadata(request) => ResponseBody::Metadata(
            metadata::handle(state, (&context.listener, &authz), request, version).await,
        ),
        RequestBody::Produce(request) => {
            // Direct callers get both steps at once; the connection runs step one itself,
            // in request order, and only then hands over (see `produce`).
            let appended = produce::append(state, &authz, request, version).await;
            return Err(finish_produce(state, context, header.clone(), appended, 0).await);
        }
        RequestBody::Fetch(request) => ResponseBody::Fetch(
            fetch::handle(state, (&context.listener, &authz), request, version).await,
        ),
        RequestBody::ListOffsets(request) => {
            ResponseBody::ListOffsets(list_offsets::handle(state, &authz, request, version))
        }
        RequestBody::CreateTopics(request) => {
            let mutations = context.mutations(state, header.client_id.as_deref(), version >= 6);
            let mut response =
                create_topics::handle(state, (&authz, &mutations), request, version).await;
            response.throttle_time_ms = context.mute(mutations.throttle_ms());
            ResponseBody::CreateTopics(response)
        }
        RequestBody::DeleteTopics(request) => {
            let mutations = context.mutations(state, header.client_id.as_deref(), version >= 5);
            let mut response =
                delete_topics::handle(state, (&authz, &mutations), request, version).await;
            response.throttle_time_ms = context.mute(mutations.throttle_ms());
            ResponseBody::DeleteTopics(response)
        }
        RequestBody::CreatePartitions(request) => {
            let mutations = context.mutations(state, header.client_id.as_deref(), version >= 3);
            let mut response =
                create_partitions::handle(state, (&authz, &mutations), request, version).await;
            response.throttle_time_ms = context.mute(mutations.throttle_ms());
            ResponseBody::CreatePartitions(response)
        }
        RequestBody::DeleteRecords(request) => ResponseBody::DeleteRecords(
            delete_records::handle(state, &authz, request, version).await,
        ),
        RequestBody::DescribeConfigs(request) => {
            ResponseBody::DescribeConfigs(describe_configs::handle(state, &authz, request, version))
        }
        RequestBody::AlterConfigs(request) => {
            ResponseBody::AlterConfigs(alter_configs::handle(state, &authz, request, version).await)
        }
        RequestBody::IncrementalAlterConfigs(request) => ResponseBody::IncrementalAlterConfigs(
            incremental_alter_configs::handle(state, &authz, request, version).await,
        ),
        RequestBody::ElectLeaders(request) => {
            ResponseBody::ElectLeaders(elect_leaders::handle(state, &authz, request, version).await)
        }
        RequestBody::AlterPartitionReassignments(request) => {
            ResponseBody::AlterPartitionReassignments(
                alter_partition_reassignments::handle(state, &authz, request, version).await,
            )
        }
        RequestBody::ListPartitionReassignments(request) => {
            ResponseBody::ListPartitionReassignments(list_partition_reassignments::handle(
                state, &authz, request, version,
            ))
        }
        RequestBody::DescribeCluster(request) => ResponseBody::DescribeCluster(
            describe_cluster::handle(state, (&context.listener, &authz), request, version),
        ),
        RequestBody::DescribeLogDirs(request) => ResponseBody::DescribeLogDirs(
            describe_log_dirs::handle(state, &authz, request, version),
        ),
        RequestBody::DescribeTopicPartitions(request) => ResponseBody::DescribeTopicPartitions(
            describe_topic_partitions::handle(state, &authz, request, version),
        ),
        RequestBody::OffsetForLeaderEpoch(request) => ResponseBody::OffsetForLeaderEpoch(
            offset_for_leader_epoch::handle(state, &authz, request, version),
        ),
        RequestBody::InitProducerId(request) => ResponseBody::InitProducerId(
            init_producer_id::handle(state, &authz, request, version).await,
        ),
        RequestBody::FindCoordinator(request) => ResponseBody::FindCoordinator(
            find_coordinator::handle(state, (&context.listener, &authz), request, version).await,
        ),
        RequestBody::JoinGroup(request) => {
            let client = context.client(header);
            ResponseBody::JoinGroup(
                join_group::handle(state, (client, &authz), request, version).await,
            )
        }
        RequestBody::ConsumerGroupHeartbeat(request) => {
            let client = context.client(header);
            ResponseBody::ConsumerGroupHeartbeat(
                consumer_group_heartbeat::handle(state, (client, &authz), request, version).await,
            )
        }
        RequestBody::ConsumerGroupDescribe(request) => ResponseBody::ConsumerGroupDescribe(
            consumer_group_describe::handle(state, &authz, request).await,
        ),
        RequestBody::SyncGroup(request) => {
            ResponseBody::SyncGroup(sync_group::handle(state, &authz, request, version).await)
        }
        RequestBody::Heartbeat(request) => {
            ResponseBody::Heartbeat(heartbeat::handle(state, &authz, request, version).await)
        }
        RequestBody::LeaveGroup(request) => {
            ResponseBody::LeaveGroup(leave_group::handle(state, &authz, request, version).await)
        }
        RequestBody::OffsetCommit(request) => {
            ResponseBody::OffsetCommit(offset_commit::handle(state, &authz, request, version).await)
        }
        RequestBody::OffsetFetch(request) => {
            ResponseBody::OffsetFetch(offset_fetch::handle(state, &authz, request, version).await)
        }
        RequestBody::ListGroups(request) => {
            ResponseBody::ListGroups(list_groups::handle(state, &authz, request, version))
        }
        RequestBody::DescribeGroups(request) => ResponseBody::DescribeGroups(
            describe_groups::handle(state, &authz, request, version).await,
        ),
        RequestBody::DeleteGroups(request) => {
            ResponseBody::DeleteGroups(delete_groups::handle(state, &authz, request, version).await)
        }
        RequestBody::OffsetDelete(request) => {
            ResponseBody::OffsetDelete(offset_delete::handle(state, &authz, request, version).await)
        }
        RequestBody::AddPartitionsToTxn(request) => ResponseBody::AddPartitionsToTxn(
            add_partitions_to_txn::handle(state, &authz, request, version).await,
        ),
        RequestBody::AddOffsetsToTxn(request) => ResponseBody::AddOffsetsToTxn(
            add_offsets_to_txn::handle(state, &authz, request, version).await,
        ),
        RequestBody::EndTxn(request) => {
            ResponseBody::EndTxn(end_txn::handle(state, &authz, request, version).await)
        }
        RequestBody::TxnOffsetCommit(request) => ResponseBody::TxnOffsetCommit(
            txn_offset_commit::handle(state, &authz, request, version).await,
        ),
        RequestBody::WriteTxnMarkers(request) => ResponseBody::WriteTxnMarkers(
            write_txn_markers::handle(state, &authz, request, version).await,
        ),
        RequestBody::DescribeProducers(request) => ResponseBody::DescribeProducers(
            describe_producers::handle(state, &authz, request, version),
        ),
        RequestBody::DescribeTransactions(request) => ResponseBody::DescribeTransactions(
            describe_transactions::handle(state, &authz, request, version),
        ),
        RequestBody::ListTransactions(request) => ResponseBody::ListTransactions(
            list_transactions::handle(state, &authz, request, version),
        ),
        RequestBody::CreateAcls(request) => {
            ResponseBody::CreateAcls(create_acls::handle(state, &authz, request, version).await)
        }
        RequestBody::DescribeAcls(request) => {
            ResponseBody::DescribeAcls(describe_acls::handle(state, &authz, request, version))
        }
        RequestBody::DeleteAcls(request) => {
            ResponseBody::DeleteAcls(delete_acls::handle(state, &authz, request, version).await)
        }
        RequestBody::DescribeUserScramCredentials(request) => {
            ResponseBody::DescribeUserScramCredentials(describe_user_scram_credentials::handle(
                state, &authz, request, version,
            ))
        }
        RequestBody::AlterUserScramCredentials(request) => ResponseBody::AlterUserScramCredentials(
            alter_user_scram_credentials::handle(state, &authz, request, version).await,
        ),
        RequestBody::DescribeClientQuotas(request) => ResponseBody::DescribeClientQuotas(
            describe_client_quotas::handle(state, &authz, request, version),
        ),
        RequestBody::AlterClientQuotas(request) => ResponseBody::AlterClientQuotas(
            alter_client_quotas::handle(state, &authz, request, version).await,
        ),
        // The connection serves these on a SASL listener; anywhere else (or after login
        // when it does not) they are out of place, as Kafka answers.
        RequestBody::SaslHandshake(_) => {
            ResponseBody::SaslHandshake(spool_protocol::messages::SaslHandshakeResponse {
                error_code: ErrorCode::IllegalSaslState.code(),
                ..Default::default()
            })
        }
        RequestBody::SaslAuthenticate(_) => {
            ResponseBody::SaslAuthenticate(spool_protocol::messages::SaslAuthenticateResponse {
                error_code: ErrorCode::IllegalSaslState.code(),
                error_message: Some(
                    "SaslAuthenticate request received after successful authentication".into(),
                ),
                ..Default::default()
            })
        }
        other => {
            tracing::debug!(
                api = other.api_key().name(),
                "request for an API this broker does not serve"
            );
            return Err(Outcome::Close);
        }
    };
    Ok(response)
}

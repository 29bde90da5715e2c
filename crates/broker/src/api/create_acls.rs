//! CreateAcls (versions 1-3): adds ACL bindings to the metadata log, each under a new ID.
//! Without an authorizer every creation gets SECURITY_DISABLED, as in Kafka; a binding
//! Kafka would not accept (an ANY or MATCH code, an operation the resource type does not
//! take, a CLUSTER not named `kafka-cluster`, a principal without a type) gets
//! INVALID_REQUEST. A binding that already exists is not added twice.

use std::collections::HashSet;

use spool_metadata::random_uuid;
use spool_metadata::service::AdminChange;
use spool_protocol::ErrorCode;
use spool_protocol::internal::AccessControlEntryRecord;
use spool_protocol::messages::create_acls_response::AclCreationResult;
use spool_protocol::messages::{CreateAclsRequest, CreateAclsResponse};

use crate::acl::{Authz, check_binding, operation};
use crate::state::{BrokerError, BrokerState};

pub async fn handle(
    state: &BrokerState,
    authz: &Authz<'_>,
    request: CreateAclsRequest,
    _version: i16,
) -> CreateAclsResponse {
    let result = |code: ErrorCode, message: Option<String>| AclCreationResult {
        error_code: code.code(),
        error_message: message,
        ..Default::default()
    };
    // Without an authorizer, or without ALTER on the cluster, every creation is refused.
    let refusal = if state.config.authorizer.is_none() {
        Some((ErrorCode::SecurityDisabled, Some(NO_AUTHORIZER)))
    } else if !authz.cluster(operation::ALTER) {
        Some((ErrorCode::ClusterAuthorizationFailed, None))
    } else {
        None
    };
    if let Some((code, message)) = refusal {
        return CreateAclsResponse {
            results: (request.creations.iter())
                .map(|_| result(code, message.map(str::to_string)))
                .collect(),
            ..Default::default()
        };
    }
    // The bindings there are, and those this request adds: each once.
    let mut known: HashSet<BindingKey> =
        state.with_image(|image| image.acls().map(binding_key).collect());
    let mut creations: Vec<AccessControlEntryRecord> = Vec::new();
    // Each creation's refusal, if it has one.
    let mut checked: Vec<Result<(), String>> = Vec::new();
    for creation in &request.creations {
        let binding = AccessControlEntryRecord {
            id: random_uuid(),
            resource_type: creation.resource_type,
            resource_name: creation.resource_name.clone(),
            pattern_type: creation.resource_pattern_type,
            principal: creation.principal.clone(),
            host: creation.host.clone(),
            operation: creation.operation,
            permission_type: creation.permission_type,
            ..Default::default()
        };
        let valid = check_binding(&binding);
        if valid.is_ok() && known.insert(binding_key(&binding)) {
            creations.push(binding);
        }
        checked.push(valid);
    }
    let applied = if creations.is_empty() {
        Ok(())
    } else {
        state
            .change_metadata(AdminChange::AlterAcls {
                creations,
                deletions: Vec::new(),
            })
            .await
    };
    let results = checked
        .into_iter()
        .map(|checked| match (checked, &applied) {
            (Err(reason), _) => result(ErrorCode::InvalidRequest, Some(reason)),
            (Ok(_), Ok(())) => result(ErrorCode::None, None),
            (Ok(_), Err(BrokerError::Refused(code, message))) => {
                result(*code, Some(message.clone()))
            }
            (Ok(_), Err(other)) => result(ErrorCode::UnknownServerError, Some(other.to_string())),
        })
        .collect();
    CreateAclsResponse {
        results,
        ..Default::default()
    }
}

/// Kafka's message when ACL APIs are used without an authorizer.
pub const NO_AUTHORIZER: &str = "No Authorizer is configured.";

/// A binding without its ID: what makes two records the same binding.
type BindingKey = (i8, String, i8, String, String, i8, i8);

fn binding_key(acl: &AccessControlEntryRecord) -> BindingKey {
    (
        acl.resource_type,
        acl.resource_name.clone(),
        acl.pattern_type,
        acl.principal.clone(),
        acl.host.clone(),
        acl.operation,
        acl.permission_type,
    )
}

#[cfg(test)]
mod tests {
    use spool_protocol::messages::create_acls_request::AclCreation;
    use spool_protocol::messages::delete_acls_request::DeleteAclsFilter;
    use spool_protocol::messages::{DeleteAclsRequest, DescribeAclsRequest};

    use super::*;
    use crate::acl::{Authorizer, operation, pattern, permission, resource};
    use crate::api::{delete_acls, describe_acls};
    use crate::config::BrokerConfig;

    fn creation(name: &str, pattern_type: i8, principal: &str, op: i8) -> AclCreation {
        AclCreation {
            resource_type: resource::TOPIC,
            resource_name: name.into(),
            resource_pattern_type: pattern_type,
            principal: principal.into(),
            host: "*".into(),
            operation: op,
            permission_type: permission::ALLOW,
            ..Default::default()
        }
    }

    fn describe_all() -> DescribeAclsRequest {
        DescribeAclsRequest {
            resource_type_filter: resource::ANY,
            resource_name_filter: None,
            pattern_type_filter: pattern::ANY,
            principal_filter: None,
            host_filter: None,
            operation: operation::ANY,
            permission_type: permission::ANY,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn bindings_are_created_described_and_deleted_through_the_metadata_log() {
        let dir = std::env::temp_dir().join(format!("spool-acl-apis-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = BrokerConfig {
            data_dir: dir.clone(),
            authorizer: Some(Authorizer::default()),
            ..BrokerConfig::default()
        };
        let state = BrokerState::start(config, Vec::new(), None).await.unwrap();
        let created = handle(
            &state,
            &Authz::allow_all(),
            CreateAclsRequest {
                creations: vec![
                    creation("orders", pattern::LITERAL, "User:alice", operation::WRITE),
                    creation("pay-", pattern::PREFIXED, "User:bob", operation::READ),
                    creation("orders", pattern::MATCH, "User:alice", operation::READ),
                    creation("orders", pattern::LITERAL, "User:alice", operation::WRITE),
                ],
                ..Default::default()
            },
            3,
        )
        .await;
        let codes: Vec<i16> = created.results.iter().map(|r| r.error_code).collect();
        let invalid = ErrorCode::InvalidRequest.code();
        assert_eq!(codes, [0, 0, invalid, 0]);
        let described = describe_acls::handle(&state, &Authz::allow_all(), describe_all(), 3);
        assert_eq!(described.error_code, 0);
        let resources: Vec<(String, usize)> = described
            .resources
            .iter()
            .map(|r| (r.resource_name.clone(), r.acls.len()))
            .collect();
        assert_eq!(resources, [("orders".into(), 1), ("pay-".into(), 1)]);
        // The bindings that apply to topic pay-eu.
        let matching = describe_acls::handle(
            &state,
            &Authz::allow_all(),
            DescribeAclsRequest {
                resource_type_filter: resource::TOPIC,
                resource_name_filter: Some("pay-eu".into()),
                pattern_type_filter: pattern::MATCH,
                ..describe_all()
            },
            3,
        );
        assert_eq!(matching.resources.len(), 1);
        assert_eq!(matching.resources[0].acls[0].principal, "User:bob");

        let deleted = delete_acls::handle(
            &state,
            &Authz::allow_all(),
            DeleteAclsRequest {
                filters: vec![
                    DeleteAclsFilter {
                        resource_type_filter: resource::ANY,
                        resource_name_filter: None,
                        pattern_type_filter: pattern::ANY,
                        principal_filter: Some("User:alice".into()),
                        host_filter: None,
                        operation: operation::ANY,
                        permission_type: permission::ANY,
                        ..Default::default()
                    },
                    DeleteAclsFilter::default(),
                ],
                ..Default::default()
            },
            3,
        )
        .await;
        assert_eq!(deleted.filter_results[0].error_code, 0);
        assert_eq!(deleted.filter_results[0].matching_acls.len(), 1);
        assert_eq!(deleted.filter_results[1].error_code, invalid);
        let left = describe_acls::handle(&state, &Authz::allow_all(), describe_all(), 3);
        assert_eq!(left.resources.len(), 1);
        assert_eq!(left.resources[0].resource_name, "pay-");
        state.close().await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn without_an_authorizer_acl_requests_answer_security_disabled() {
        let (state, dir) = crate::state::open_in_temp_dir("acl-disabled").await;
        let created = handle(
            &state,
            &Authz::allow_all(),
            CreateAclsRequest {
                creations: vec![creation("t", pattern::LITERAL, "User:a", operation::READ)],
                ..Default::default()
            },
            3,
        )
        .await;
        let disabled = ErrorCode::SecurityDisabled.code();
        assert_eq!(created.results[0].error_code, disabled);
        assert_eq!(
            describe_acls::handle(&state, &Authz::allow_all(), describe_all(), 3).error_code,
            disabled
        );
        state.close().await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

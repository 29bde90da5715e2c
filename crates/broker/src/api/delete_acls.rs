//! DeleteAcls (versions 1-3): removes the bindings each filter selects and lists them per
//! filter. SECURITY_DISABLED without an authorizer; INVALID_REQUEST for a filter with an
//! unknown code.

use std::collections::HashSet;

use spool_metadata::service::AdminChange;
use spool_protocol::ErrorCode;
use spool_protocol::internal::RemoveAccessControlEntryRecord;
use spool_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use spool_protocol::messages::{DeleteAclsRequest, DeleteAclsResponse};

use super::create_acls::NO_AUTHORIZER;
use crate::acl::{Authz, DENIED, Filter, operation};
use crate::state::{BrokerError, BrokerState};

pub async fn handle(
    state: &BrokerState,
    authz: &Authz<'_>,
    request: DeleteAclsRequest,
    _version: i16,
) -> DeleteAclsResponse {
    let refused = |code: ErrorCode, message: String| DeleteAclsFilterResult {
        error_code: code.code(),
        error_message: Some(message),
        ..Default::default()
    };
    // Without an authorizer, or without ALTER on the cluster, every filter is refused.
    let refusal = if state.config.authorizer.is_none() {
        Some((ErrorCode::SecurityDisabled, NO_AUTHORIZER))
    } else if !authz.cluster(operation::ALTER) {
        Some((ErrorCode::ClusterAuthorizationFailed, DENIED))
    } else {
        None
    };
    if let Some((code, message)) = refusal {
        return DeleteAclsResponse {
            filter_results: (request.filters.iter())
                .map(|_| refused(code, message.into()))
                .collect(),
            ..Default::default()
        };
    }
    // Per filter: its refusal, or the bindings it selects.
    let mut selected = Vec::new();
    let mut deletions: Vec<RemoveAccessControlEntryRecord> = Vec::new();
    // The IDs in `deletions`: a binding two filters select is removed once.
    let mut removed = HashSet::new();
    for f in request.filters {
        let filter = Filter {
            resource_type: f.resource_type_filter,
            resource_name: f.resource_name_filter,
            pattern_type: f.pattern_type_filter,
            principal: f.principal_filter,
            host: f.host_filter,
            operation: f.operation,
            permission_type: f.permission_type,
        };
        let matches = filter.check().map(|()| {
            state.with_image(|image| {
                image
                    .acls()
                    .filter(|acl| filter.matches(acl))
                    .cloned()
                    .collect::<Vec<_>>()
            })
        });
        for acl in matches.iter().flatten() {
            if removed.insert(acl.id) {
                deletions.push(RemoveAccessControlEntryRecord {
                    id: acl.id,
                    ..Default::default()
                });
            }
        }
        selected.push(matches);
    }
    let applied = if deletions.is_empty() {
        Ok(())
    } else {
        state
            .change_metadata(AdminChange::AlterAcls {
                creations: Vec::new(),
                deletions,
            })
            .await
    };
    let filter_results = selected
        .into_iter()
        .map(|matches| match (matches, &applied) {
            (Err(reason), _) => refused(ErrorCode::InvalidRequest, reason),
            (Ok(acls), Ok(())) => DeleteAclsFilterResult {
                error_code: ErrorCode::None.code(),
                matching_acls: acls
                    .into_iter()
                    .map(|acl| DeleteAclsMatchingAcl {
                        resource_type: acl.resource_type,
                        resource_name: acl.resource_name,
                        pattern_type: acl.pattern_type,
                        principal: acl.principal,
                        host: acl.host,
                        operation: acl.operation,
                        permission_type: acl.permission_type,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
            (Ok(_), Err(BrokerError::Refused(code, message))) => refused(*code, message.clone()),
            (Ok(_), Err(other)) => refused(ErrorCode::UnknownServerError, other.to_string()),
        })
        .collect();
    DeleteAclsResponse {
        filter_results,
        ..Default::default()
    }
}

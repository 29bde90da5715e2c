//! DescribeAcls (versions 1-3): the bindings a filter selects, grouped by resource
//! pattern. SECURITY_DISABLED without an authorizer; INVALID_REQUEST for a filter with
//! an unknown code.

use std::collections::BTreeMap;

use spool_protocol::ErrorCode;
use spool_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use spool_protocol::messages::{DescribeAclsRequest, DescribeAclsResponse};

use super::create_acls::NO_AUTHORIZER;
use crate::acl::{Authz, DENIED, Filter, operation};
use crate::state::BrokerState;

pub fn handle(
    state: &BrokerState,
    authz: &Authz<'_>,
    request: DescribeAclsRequest,
    _version: i16,
) -> DescribeAclsResponse {
    let refused = |code: ErrorCode, message: String| DescribeAclsResponse {
        error_code: code.code(),
        error_message: Some(message),
        ..Default::default()
    };
    if state.config.authorizer.is_none() {
        return refused(ErrorCode::SecurityDisabled, NO_AUTHORIZER.into());
    }
    if !authz.cluster(operation::DESCRIBE) {
        return refused(ErrorCode::ClusterAuthorizationFailed, DENIED.into());
    }
    let filter = Filter {
        resource_type: request.resource_type_filter,
        resource_name: request.resource_name_filter,
        pattern_type: request.pattern_type_filter,
        principal: request.principal_filter,
        host: request.host_filter,
        operation: request.operation,
        permission_type: request.permission_type,
    };
    if let Err(reason) = filter.check() {
        return refused(ErrorCode::InvalidRequest, reason);
    }
    let mut resources: BTreeMap<(i8, String, i8), Vec<AclDescription>> = BTreeMap::new();
    state.with_image(|image| {
        for acl in image.acls().filter(|acl| filter.matches(acl)) {
            resources
                .entry((
                    acl.resource_type,
                    acl.resource_name.clone(),
                    acl.pattern_type,
                ))
                .or_default()
                .push(AclDescription {
                    principal: acl.principal.clone(),
                    host: acl.host.clone(),
                    operation: acl.operation,
                    permission_type: acl.permission_type,
                    ..Default::default()
                });
        }
    });
    DescribeAclsResponse {
        error_code: ErrorCode::None.code(),
        resources: resources
            .into_iter()
            .map(
                |((resource_type, resource_name, pattern_type), acls)| DescribeAclsResource {
                    resource_type,
                    resource_name,
                    pattern_type,
                    acls,
                    ..Default::default()
                },
            )
            .collect(),
        ..Default::default()
    }
}

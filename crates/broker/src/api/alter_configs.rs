//! AlterConfigs (versions 0-2): replace a topic's or a broker's whole set of configs
//! (settings not given return to their defaults), with IncrementalAlterConfigs' checks.

use std::collections::BTreeMap;
use std::sync::Arc;

use spool_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use spool_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};

use super::incremental_alter_configs::alter_resource;
use crate::acl::Authz;
use crate::state::BrokerState;

pub async fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    request: AlterConfigsRequest,
    _version: i16,
) -> AlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in &request.resources {
        let replacement: BTreeMap<String, String> = resource
            .configs
            .iter()
            .filter_map(|c| c.value.clone().map(|v| (c.name.clone(), v)))
            .collect();
        let (error_code, error_message) = alter_resource(
            state,
            authz,
            resource.resource_type,
            &resource.resource_name,
            request.validate_only,
            |_| Ok(replacement),
        )
        .await;
        responses.push(AlterConfigsResourceResponse {
            error_code,
            error_message,
            resource_type: resource.resource_type,
            resource_name: resource.resource_name.clone(),
            ..Default::default()
        });
    }
    AlterConfigsResponse {
        responses,
        ..Default::default()
    }
}

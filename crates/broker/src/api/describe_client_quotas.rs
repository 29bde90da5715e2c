//! DescribeClientQuotas (versions 0-1): the quotas of the entities a filter selects. Each
//! component names an entity type and matches an exact name (0), the default entity (1)
//! or any entity of the type, defaults included (2); `strict` leaves out entities with
//! more types than the filter names. Needs DESCRIBE_CONFIGS on the cluster.

use std::collections::HashSet;

use spool_protocol::ErrorCode;
use spool_protocol::messages::describe_client_quotas_request::ComponentData;
use spool_protocol::messages::describe_client_quotas_response::{EntityData, EntryData, ValueData};
use spool_protocol::messages::{DescribeClientQuotasRequest, DescribeClientQuotasResponse};

use crate::acl::{Authz, operation};
use crate::quota::{CLIENT_ID, IP, USER};
use crate::state::BrokerState;

const EXACT: i8 = 0;
const DEFAULT: i8 = 1;
const ANY: i8 = 2;

/// Why the filter cannot be used: the error and Kafka's message.
fn check(components: &[ComponentData]) -> Result<(), (ErrorCode, String)> {
    let mut types = HashSet::new();
    for c in components {
        if c.entity_type.is_empty() {
            return Err((
                ErrorCode::InvalidRequest,
                "Invalid empty entity type".into(),
            ));
        }
        if !types.insert(c.entity_type.as_str()) {
            return Err((
                ErrorCode::InvalidRequest,
                format!("Entity type {} cannot appear more than once", c.entity_type),
            ));
        }
        if ![USER, CLIENT_ID, IP].contains(&c.entity_type.as_str()) {
            return Err((
                ErrorCode::UnsupportedVersion,
                format!("Unsupported entity type {}", c.entity_type),
            ));
        }
        let valid = match c.match_type {
            EXACT => c.r#match.is_some(),
            DEFAULT | ANY => c.r#match.is_none(),
            _ => false,
        };
        if !valid {
            return Err((
                ErrorCode::InvalidRequest,
                format!("Invalid match type {} for {}", c.match_type, c.entity_type),
            ));
        }
    }
    if types.contains(IP) && (types.contains(USER) || types.contains(CLIENT_ID)) {
        return Err((
            ErrorCode::InvalidRequest,
            "An IP filter cannot be combined with user or client-id filters".into(),
        ));
    }
    Ok(())
}

pub fn handle(
    state: &BrokerState,
    authz: &Authz<'_>,
    request: DescribeClientQuotasRequest,
    _version: i16,
) -> DescribeClientQuotasResponse {
    let refused = |code: ErrorCode, message: Option<String>| DescribeClientQuotasResponse {
        error_code: code.code(),
        error_message: message,
        entries: None,
        ..Default::default()
    };
    if !authz.cluster(operation::DESCRIBE_CONFIGS) {
        return refused(ErrorCode::ClusterAuthorizationFailed, None);
    }
    if let Err((code, message)) = check(&request.components) {
        return refused(code, Some(message));
    }
    let selects = |entity: &[(String, Option<String>)]| {
        let components_match = request.components.iter().all(|c| {
            entity
                .iter()
                .find(|(t, _)| *t == c.entity_type)
                .is_some_and(|(_, name)| match c.match_type {
                    EXACT => *name == c.r#match,
                    DEFAULT => name.is_none(),
                    _ => true,
                })
        });
        components_match && (!request.strict || entity.len() == request.components.len())
    };
    let entries = state.with_image(|image| {
        image
            .client_quotas()
            .iter()
            .filter(|(entity, _)| selects(entity))
            .map(|(entity, quotas)| EntryData {
                entity: entity
                    .iter()
                    .map(|(entity_type, entity_name)| EntityData {
                        entity_type: entity_type.clone(),
                        entity_name: entity_name.clone(),
                        ..Default::default()
                    })
                    .collect(),
                values: quotas
                    .iter()
                    .map(|(key, value)| ValueData {
                        key: key.clone(),
                        value: *value,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect()
    });
    DescribeClientQuotasResponse {
        error_message: None,
        entries: Some(entries),
        ..Default::default()
    }
}

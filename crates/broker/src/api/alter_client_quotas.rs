//! AlterClientQuotas (versions 0-1): sets and removes client quotas of users, client IDs,
//! or both, and of IP addresses (a null name is the default entity), stored in the
//! metadata log. Each entity is checked as Kafka checks it and refused alone with
//! INVALID_REQUEST; the others are applied together. Needs ALTER_CONFIGS on the cluster.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use spool_metadata::QuotaEntity;
use spool_metadata::service::AdminChange;
use spool_protocol::ErrorCode;
use spool_protocol::internal::ClientQuotaRecord;
use spool_protocol::internal::client_quota_record::EntityData as RecordEntity;
use spool_protocol::messages::alter_client_quotas_request::{EntryData, OpData};
use spool_protocol::messages::alter_client_quotas_response::{EntityData, EntryData as Result};
use spool_protocol::messages::{AlterClientQuotasRequest, AlterClientQuotasResponse};

use crate::acl::{Authz, operation};
use crate::quota::{
    CLIENT_ID, CONNECTION_CREATION_RATE, CONSUMER_BYTE_RATE, CONTROLLER_MUTATION_RATE, IP,
    PRODUCER_BYTE_RATE, REQUEST_PERCENTAGE, USER,
};
use crate::state::BrokerState;

/// The quota keys of users and client IDs.
const KEYS: [&str; 4] = [
    PRODUCER_BYTE_RATE,
    CONSUMER_BYTE_RATE,
    REQUEST_PERCENTAGE,
    CONTROLLER_MUTATION_RATE,
];
/// The quota keys of IP addresses.
const IP_KEYS: [&str; 1] = [CONNECTION_CREATION_RATE];
/// The keys Kafka types as whole numbers (the others are doubles).
const WHOLE: [&str; 3] = [
    PRODUCER_BYTE_RATE,
    CONSUMER_BYTE_RATE,
    CONNECTION_CREATION_RATE,
];

/// The entity's (type, name) pairs in type order, each type once (a later one wins, as
/// Kafka reads the request into a map).
fn entity_of(entry: &EntryData) -> QuotaEntity {
    let parts: BTreeMap<&str, &Option<String>> = entry
        .entity
        .iter()
        .map(|part| (part.entity_type.as_str(), &part.entity_name))
        .collect();
    parts
        .into_iter()
        .map(|(entity_type, name)| (entity_type.to_string(), name.clone()))
        .collect()
}

/// Why an entity's changes cannot be made (Kafka's INVALID_REQUEST messages). An IP
/// address is stored in its canonical form, as the broker compares it.
fn check(entity: &mut QuotaEntity, ops: &[OpData]) -> std::result::Result<(), String> {
    if entity.is_empty() {
        return Err("Invalid empty client quota entity".into());
    }
    for (entity_type, name) in entity.iter() {
        if ![USER, CLIENT_ID, IP].contains(&entity_type.as_str()) {
            return Err(format!("Unhandled client quota entity type: {entity_type}"));
        }
        if name.as_deref() == Some("") {
            return Err(format!("Empty {entity_type} not supported"));
        }
    }
    let with_ip = entity.iter().any(|(t, _)| t == IP);
    let keys: &[&str] = match entity.as_mut_slice() {
        [(_, name)] if with_ip => {
            if let Some(name) = name {
                let ip: IpAddr = name
                    .parse()
                    .map_err(|_| format!("{name} is not a valid IP or resolvable host."))?;
                *name = ip.to_canonical().to_string();
            }
            &IP_KEYS
        }
        _ if with_ip => {
            return Err(
                "Invalid quota entity combination, IP entity should not be used with user/client ID entity."
                    .into(),
            );
        }
        _ => &KEYS,
    };
    for op in ops.iter().filter(|op| !op.remove) {
        if !keys.contains(&op.key.as_str()) {
            return Err(format!("Invalid configuration key {}", op.key));
        }
        if op.value.is_nan() || op.value <= 0.0 {
            return Err(format!("Quota {} must be greater than 0", op.key));
        }
        let whole = WHOLE.contains(&op.key.as_str());
        if whole && ((op.value - op.value.round()).abs() > 1e-6 || op.value > i64::MAX as f64) {
            return Err(format!("{} cannot be a fractional value.", op.key));
        }
    }
    Ok(())
}

pub async fn handle(
    state: &BrokerState,
    authz: &Authz<'_>,
    request: AlterClientQuotasRequest,
    _version: i16,
) -> AlterClientQuotasResponse {
    let allowed = authz.cluster(operation::ALTER_CONFIGS);
    let mut seen = HashSet::new();
    let mut refusals: Vec<Option<(ErrorCode, String)>> = Vec::new();
    let mut changes = Vec::new();
    for entry in &request.entries {
        let mut entity = entity_of(entry);
        let refusal = if !allowed {
            let denied = ErrorCode::ClusterAuthorizationFailed;
            Some((denied, denied.message().to_string()))
        } else if !seen.insert(entity.clone()) {
            Some((
                ErrorCode::InvalidRequest,
                format!("Ignoring duplicate entity {entity:?}"),
            ))
        } else {
            check(&mut entity, &entry.ops)
                .err()
                .map(|reason| (ErrorCode::InvalidRequest, reason))
        };
        if refusal.is_none() {
            changes.extend(entry.ops.iter().map(|op| {
                ClientQuotaRecord {
                    entity: entity
                        .iter()
                        .map(|(entity_type, entity_name)| RecordEntity {
                            entity_type: entity_type.clone(),
                            entity_name: entity_name.clone(),
                            ..Default::default()
                        })
                        .collect(),
                    key: op.key.clone(),
                    value: op.value,
                    remove: op.remove,
                    ..Default::default()
                }
            }));
        }
        refusals.push(refusal);
    }
    let applied = if changes.is_empty() || request.validate_only {
        Ok(())
    } else {
        state
            .change_metadata(AdminChange::AlterClientQuotas(changes))
            .await
            .map_err(|e| e.into_refusal("storing the quotas failed"))
    };
    let entries = request
        .entries
        .iter()
        .zip(refusals)
        .map(|(entry, refusal)| {
            let (code, message) = match refusal.or_else(|| applied.clone().err()) {
                Some((code, message)) => (code, Some(message)),
                None => (ErrorCode::None, None),
            };
            Result {
                error_code: code.code(),
                error_message: message,
                entity: entry
                    .entity
                    .iter()
                    .map(|e| EntityData {
                        entity_type: e.entity_type.clone(),
                        entity_name: e.entity_name.clone(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }
        })
        .collect();
    AlterClientQuotasResponse {
        entries,
        ..Default::default()
    }
}

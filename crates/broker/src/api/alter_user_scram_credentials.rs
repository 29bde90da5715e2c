//! AlterUserScramCredentials (version 0): sets and removes users' SCRAM credentials. The
//! client sends the salted password (it ran PBKDF2); the broker keeps only the stored and
//! server keys derived from it, in the metadata log. Answers per user, with Kafka's
//! errors: UNSUPPORTED_SASL_MECHANISM, UNACCEPTABLE_CREDENTIAL (no name, no salt or
//! password, iterations outside 4096–16384), RESOURCE_NOT_FOUND (removing a credential
//! that does not exist), DUPLICATE_RESOURCE (one user and mechanism twice in a request).
//! A user with any bad alteration has none of them applied.

use std::collections::{BTreeMap, BTreeSet};

use indexmap::IndexSet;

use spool_metadata::service::AdminChange;
use spool_protocol::ErrorCode;
use spool_protocol::internal::{RemoveUserScramCredentialRecord, UserScramCredentialRecord};
use spool_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use spool_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
};

use crate::acl::{Authz, operation};
use crate::auth::scram::{Credential, MAX_ITERATIONS, MIN_ITERATIONS, Mechanism};
use crate::state::{BrokerError, BrokerState};

type Refusal = (ErrorCode, String);

/// Needs ALTER on the cluster (else CLUSTER_AUTHORIZATION_FAILED for every user named).
pub async fn handle(
    state: &BrokerState,
    authz: &Authz<'_>,
    request: AlterUserScramCredentialsRequest,
    _version: i16,
) -> AlterUserScramCredentialsResponse {
    // Each user's first refusal, and the alterations of users without one.
    let mut refusals: BTreeMap<String, Refusal> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut upsertions = Vec::new();
    let mut deletions = Vec::new();
    // Every user the request names, once, in the order named.
    let users: IndexSet<&String> = request
        .deletions
        .iter()
        .map(|d| &d.name)
        .chain(request.upsertions.iter().map(|u| &u.name))
        .collect();
    if !authz.cluster(operation::ALTER) {
        let denied = ErrorCode::ClusterAuthorizationFailed;
        return AlterUserScramCredentialsResponse {
            results: users
                .into_iter()
                .map(|user| AlterUserScramCredentialsResult {
                    user: user.clone(),
                    error_code: denied.code(),
                    error_message: Some(denied.message().to_string()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
    }
    for deletion in &request.deletions {
        let checked = check(&deletion.name, deletion.mechanism, &mut seen).and_then(|m| {
            let exists =
                state.with_image(|image| image.scram_credential(&deletion.name, m as i8).is_some());
            if exists {
                Ok(m)
            } else {
                Err((
                    ErrorCode::ResourceNotFound,
                    "Attempt to delete a user credential that does not exist".into(),
                ))
            }
        });
        match checked {
            Err(refusal) => {
                refusals.entry(deletion.name.clone()).or_insert(refusal);
            }
            Ok(mechanism) => deletions.push(RemoveUserScramCredentialRecord {
                name: deletion.name.clone(),
                mechanism: mechanism as i8,
                ..Default::default()
            }),
        }
    }
    for upsertion in &request.upsertions {
        let checked = check(&upsertion.name, upsertion.mechanism, &mut seen).and_then(|m| {
            if upsertion.iterations < MIN_ITERATIONS {
                Err((
                    ErrorCode::UnacceptableCredential,
                    format!("Too few iterations: at least {MIN_ITERATIONS}"),
                ))
            } else if upsertion.iterations > MAX_ITERATIONS {
                Err((
                    ErrorCode::UnacceptableCredential,
                    format!("Too many iterations: at most {MAX_ITERATIONS}"),
                ))
            } else if upsertion.salt.is_empty() || upsertion.salted_password.is_empty() {
                Err((
                    ErrorCode::UnacceptableCredential,
                    "Salt and salted password must not be empty".into(),
                ))
            } else {
                Ok(m)
            }
        });
        match checked {
            Err(refusal) => {
                refusals.entry(upsertion.name.clone()).or_insert(refusal);
            }
            Ok(mechanism) => {
                let credential = Credential::from_salted_password(
                    mechanism,
                    &upsertion.salt,
                    upsertion.iterations,
                    &upsertion.salted_password,
                );
                upsertions.push(UserScramCredentialRecord {
                    name: upsertion.name.clone(),
                    mechanism: mechanism as i8,
                    salt: credential.salt.into(),
                    stored_key: credential.stored_key.into(),
                    server_key: credential.server_key.into(),
                    iterations: credential.iterations,
                    ..Default::default()
                });
            }
        }
    }
    upsertions.retain(|u| !refusals.contains_key(&u.name));
    deletions.retain(|d| !refusals.contains_key(&d.name));
    let applied: Result<(), Refusal> = if upsertions.is_empty() && deletions.is_empty() {
        Ok(())
    } else {
        state
            .change_metadata(AdminChange::AlterScramCredentials {
                upsertions,
                deletions,
            })
            .await
            .map_err(|e| match e {
                BrokerError::Refused(code, message) => (code, message),
                other => (ErrorCode::UnknownServerError, other.to_string()),
            })
    };
    let results = users
        .into_iter()
        .map(|user| {
            let (code, message) = match refusals.remove(user) {
                Some((code, message)) => (code, Some(message)),
                None => match &applied {
                    Ok(()) => (ErrorCode::None, None),
                    Err((code, message)) => (*code, Some(message.clone())),
                },
            };
            AlterUserScramCredentialsResult {
                user: user.clone(),
                error_code: code.code(),
                error_message: message,
                ..Default::default()
            }
        })
        .collect();
    AlterUserScramCredentialsResponse {
        results,
        ..Default::default()
    }
}

/// A user name and mechanism that may be altered, once per request.
fn check(
    user: &str,
    mechanism: i8,
    seen: &mut BTreeSet<(String, i8)>,
) -> Result<Mechanism, Refusal> {
    if user.is_empty() {
        return Err((
            ErrorCode::UnacceptableCredential,
            "Username must not be empty".into(),
        ));
    }
    let mechanism = Mechanism::from_id(mechanism).ok_or((
        ErrorCode::UnsupportedSaslMechanism,
        "Unknown SCRAM mechanism".to_string(),
    ))?;
    if !seen.insert((user.to_string(), mechanism as i8)) {
        return Err((
            ErrorCode::DuplicateResource,
            "A user credential cannot be altered twice in the same request".into(),
        ));
    }
    Ok(mechanism)
}

//! DescribeUserScramCredentials (version 0): each user's SCRAM mechanisms and iteration
//! counts (never salts or keys); every user with a credential when no users are named.
//! A named user without one gets RESOURCE_NOT_FOUND; a user named twice,
//! DUPLICATE_RESOURCE.

use indexmap::IndexMap;
use spool_protocol::ErrorCode;
use spool_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use spool_protocol::messages::{
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
};

use crate::acl::{Authz, operation};
use crate::state::BrokerState;

const DESCRIBED_TWICE: &str =
    "Cannot describe SCRAM credentials for the same user twice in a single request";

/// Needs DESCRIBE on the cluster (else CLUSTER_AUTHORIZATION_FAILED).
pub fn handle(
    state: &BrokerState,
    authz: &Authz<'_>,
    request: DescribeUserScramCredentialsRequest,
    _version: i16,
) -> DescribeUserScramCredentialsResponse {
    if !authz.cluster(operation::DESCRIBE) {
        let denied = ErrorCode::ClusterAuthorizationFailed;
        return DescribeUserScramCredentialsResponse {
            error_code: denied.code(),
            error_message: Some(denied.message().to_string()),
            ..Default::default()
        };
    }
    let results = state.with_image(|image| {
        let described = |user: &str| {
            let infos: Vec<CredentialInfo> = image
                .scram_user(user)
                .map(|credentials| {
                    credentials
                        .values()
                        .map(|c| CredentialInfo {
                            mechanism: c.mechanism,
                            iterations: c.iterations,
                            ..Default::default()
                        })
                        .collect()
                })
                .unwrap_or_default();
            let (code, message) = if infos.is_empty() {
                (
                    ErrorCode::ResourceNotFound,
                    Some("Attempt to describe a user credential that does not exist".to_string()),
                )
            } else {
                (ErrorCode::None, None)
            };
            DescribeUserScramCredentialsResult {
                user: user.to_string(),
                error_code: code.code(),
                error_message: message,
                credential_infos: infos,
                ..Default::default()
            }
        };
        match request.users.as_deref() {
            None | Some([]) => image
                .scram_users()
                .map(|(user, _)| described(user))
                .collect::<Vec<_>>(),
            Some(users) => {
                // Each name once, in the order named, with how often it was named.
                let mut named: IndexMap<&str, usize> = IndexMap::new();
                for user in users {
                    *named.entry(user.name.as_str()).or_default() += 1;
                }
                named
                    .into_iter()
                    .map(|(name, times)| match times {
                        1 => described(name),
                        _ => DescribeUserScramCredentialsResult {
                            user: name.to_string(),
                            error_code: ErrorCode::DuplicateResource.code(),
                            error_message: Some(DESCRIBED_TWICE.into()),
                            ..Default::default()
                        },
                    })
                    .collect()
            }
        }
    });
    DescribeUserScramCredentialsResponse {
        error_code: ErrorCode::None.code(),
        results,
        ..Default::default()
    }
}

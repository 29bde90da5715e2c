//! DescribeUserScramCredentials (version 0): each user's SCRAM mechanisms and iteration
//! counts (never salts or keys); every user with a credential when no users are named.
//! A named user without one gets RESOURCE_NOT_FOUND; a user named twice,
//! DUPLICATE_RESOURCE.

use spool_protocol::ErrorCode;
use spool_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use spool_protocol::messages::{
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
};

use crate::state::BrokerState;

pub fn handle(
    state: &BrokerState,
    request: DescribeUserScramCredentialsRequest,
    _version: i16,
) -> DescribeUserScramCredentialsResponse {
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
                let mut names: Vec<&str> = Vec::new();
                for user in users {
                    if !names.contains(&user.name.as_str()) {
                        names.push(&user.name);
                    }
                }
                names
                .into_iter()
                .map(|name| {
                    let twice = users.iter().filter(|other| other.name == name).count() > 1;
                    if twice {
                        DescribeUserScramCredentialsResult {
                            user: name.to_string(),
                            error_code: ErrorCode::DuplicateResource.code(),
                            error_message: Some(
                                "Cannot describe SCRAM credentials for the same user twice in a single request".into(),
                            ),
                            ..Default::default()
                        }
                    } else {
                        described(name)
                    }
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

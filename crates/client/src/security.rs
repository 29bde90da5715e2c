//! The admin calls of a secured cluster: ACLs (CreateAcls, DescribeAcls, DeleteAcls),
//! SCRAM users (DescribeUserScramCredentials, AlterUserScramCredentials; the password is
//! salted here, so only the salted form travels) and client quotas
//! (DescribeClientQuotas, AlterClientQuotas).

use std::collections::BTreeMap;

use bytes::Bytes;
use rand::RngCore;
use sha2::{Sha256, Sha512};
use spool_protocol::messages::{
    AlterClientQuotasRequest, AlterUserScramCredentialsRequest, CreateAclsRequest,
    DeleteAclsRequest, DescribeAclsRequest, DescribeClientQuotasRequest,
    DescribeUserScramCredentialsRequest, alter_client_quotas_request,
    alter_user_scram_credentials_request, create_acls_request, delete_acls_request,
    describe_client_quotas_request,
};

use crate::admin::Admin;
use crate::error::{Error, Result};

/// Defines a Kafka wire enum: its codes, and its names as Kafka's tools print them.
macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $code:literal, $text:literal;)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $($variant = $code,)*
        }

        impl $name {
            pub fn from_code(code: i8) -> Option<$name> {
                match code {
                    $($code => Some($name::$variant),)*
                    _ => None,
                }
            }

            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }

            /// Parses a name in any case, with `-` or `_` between words.
            pub fn parse(text: &str) -> Option<$name> {
                let wanted = text.trim().to_ascii_uppercase().replace('-', "_");
                match wanted.as_str() {
                    $($text => Some($name::$variant),)*
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

wire_enum!(
    /// What an ACL is about.
    ResourceType {
        Any = 1, "ANY";
        Topic = 2, "TOPIC";
        Group = 3, "GROUP";
        Cluster = 4, "CLUSTER";
        TransactionalId = 5, "TRANSACTIONAL_ID";
        DelegationToken = 6, "DELEGATION_TOKEN";
        User = 7, "USER";
    }
);

wire_enum!(
    /// How an ACL's resource name matches: exactly, or as a prefix. In filters, `Any`
    /// selects bindings of every pattern type and `Match` those that apply to the name.
    PatternType {
        Any = 1, "ANY";
        Match = 2, "MATCH";
        Literal = 3, "LITERAL";
        Prefixed = 4, "PREFIXED";
    }
);

wire_enum!(
    /// The operation an ACL allows or denies.
    AclOperation {
        Any = 1, "ANY";
        All = 2, "ALL";
        Read = 3, "READ";
        Write = 4, "WRITE";
        Create = 5, "CREATE";
        Delete = 6, "DELETE";
        Alter = 7, "ALTER";
        Describe = 8, "DESCRIBE";
        ClusterAction = 9, "CLUSTER_ACTION";
        DescribeConfigs = 10, "DESCRIBE_CONFIGS";
        AlterConfigs = 11, "ALTER_CONFIGS";
        IdempotentWrite = 12, "IDEMPOTENT_WRITE";
        CreateTokens = 13, "CREATE_TOKENS";
        DescribeTokens = 14, "DESCRIBE_TOKENS";
    }
);

wire_enum!(
    /// Whether an ACL allows or denies.
    AclPermission {
        Any = 1, "ANY";
        Deny = 2, "DENY";
        Allow = 3, "ALLOW";
    }
);

wire_enum!(
    /// A SCRAM mechanism.
    ScramMechanism {
        Sha256 = 1, "SCRAM_SHA_256";
        Sha512 = 2, "SCRAM_SHA_512";
    }
);

/// One ACL: `principal` from `host` is allowed or denied `operation` on a resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AclBinding {
    pub resource_type: ResourceType,
    pub resource_name: String,
    pub pattern_type: PatternType,
    /// `User:alice`, or `User:*` for everyone.
    pub principal: String,
    /// An IP address, or `*` for any.
    pub host: String,
    pub operation: AclOperation,
    pub permission: AclPermission,
}

/// Which ACLs to list or delete; `None` and the `Any` values match everything.
#[derive(Debug, Clone)]
pub struct AclFilter {
    pub resource_type: ResourceType,
    pub resource_name: Option<String>,
    pub pattern_type: PatternType,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: AclOperation,
    pub permission: AclPermission,
}

impl Default for AclFilter {
    /// Every ACL.
    fn default() -> Self {
        AclFilter {
            resource_type: ResourceType::Any,
            resource_name: None,
            pattern_type: PatternType::Any,
            principal: None,
            host: None,
            operation: AclOperation::Any,
            permission: AclPermission::Any,
        }
    }
}

/// A user's SCRAM credential as the cluster describes it (never the password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramCredential {
    pub mechanism: ScramMechanism,
    pub iterations: i32,
}

/// A quota entity: `(entity type, name)` pairs such as `("user", Some("alice"))`; a
/// `None` name is the entity type's default.
pub type QuotaEntity = Vec<(String, Option<String>)>;

/// A change to one quota of an entity: a new value, or `None` to remove it.
pub type QuotaChange = (String, Option<f64>);

/// Which quota entities [`Admin::describe_quotas`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaMatch {
    /// The entity of this type with this name.
    Exact(String),
    /// The default entity of the type.
    Default,
    /// Any entity with a component of the type.
    Any,
}

fn binding_name(b: &AclBinding) -> String {
    format!(
        "ACL {} {} {} on {} {} ({})",
        b.principal, b.permission, b.operation, b.resource_type, b.resource_name, b.pattern_type
    )
}

#[allow(clippy::too_many_arguments)] // the seven fields of a binding on the wire
fn binding(
    resource_type: i8,
    resource_name: String,
    pattern_type: i8,
    principal: String,
    host: String,
    operation: i8,
    permission: i8,
) -> Result<AclBinding> {
    let unknown = |what: &str, code: i8| Error::Invalid(format!("unknown ACL {what} {code}"));
    Ok(AclBinding {
        resource_type: ResourceType::from_code(resource_type)
            .ok_or_else(|| unknown("resource type", resource_type))?,
        resource_name,
        pattern_type: PatternType::from_code(pattern_type)
            .ok_or_else(|| unknown("pattern type", pattern_type))?,
        principal,
        host,
        operation: AclOperation::from_code(operation)
            .ok_or_else(|| unknown("operation", operation))?,
        permission: AclPermission::from_code(permission)
            .ok_or_else(|| unknown("permission", permission))?,
    })
}

/// A SCRAM password salted for `mechanism` (PBKDF2 with the mechanism's HMAC).
pub(crate) fn salted_password(
    mechanism: ScramMechanism,
    password: &str,
    salt: &[u8],
    rounds: u32,
) -> Bytes {
    let password = password.as_bytes();
    let salted = match mechanism {
        ScramMechanism::Sha256 => {
            let mut out = vec![0; 32];
            pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, rounds, &mut out);
            out
        }
        ScramMechanism::Sha512 => {
            let mut out = vec![0; 64];
            pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, rounds, &mut out);
            out
        }
    };
    Bytes::from(salted)
}

impl Admin {
    /// Creates ACL bindings; the first one refused is the error.
    pub async fn create_acls(&self, bindings: &[AclBinding]) -> Result<()> {
        let request = CreateAclsRequest {
            creations: bindings
                .iter()
                .map(|b| create_acls_request::AclCreation {
                    resource_type: b.resource_type as i8,
                    resource_name: b.resource_name.clone(),
                    resource_pattern_type: b.pattern_type as i8,
                    principal: b.principal.clone(),
                    host: b.host.clone(),
                    operation: b.operation as i8,
                    permission_type: b.permission as i8,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let response = self.client().send_any(request).await?;
        for (result, b) in response.results.into_iter().zip(bindings) {
            Error::check(result.error_code, binding_name(b), result.error_message)?;
        }
        Ok(())
    }

    /// The ACL bindings `filter` selects, sorted.
    pub async fn describe_acls(&self, filter: &AclFilter) -> Result<Vec<AclBinding>> {
        let request = DescribeAclsRequest {
            resource_type_filter: filter.resource_type as i8,
            resource_name_filter: filter.resource_name.clone(),
            pattern_type_filter: filter.pattern_type as i8,
            principal_filter: filter.principal.clone(),
            host_filter: filter.host.clone(),
            operation: filter.operation as i8,
            permission_type: filter.permission as i8,
            ..Default::default()
        };
        let response = self.client().send_any(request).await?;
        Error::check(response.error_code, "ACLs", response.error_message)?;
        let mut bindings = Vec::new();
        for resource in response.resources {
            for acl in resource.acls {
                bindings.push(binding(
                    resource.resource_type,
                    resource.resource_name.clone(),
                    resource.pattern_type,
                    acl.principal,
                    acl.host,
                    acl.operation,
                    acl.permission_type,
                )?);
            }
        }
        bindings.sort();
        Ok(bindings)
    }

    /// Deletes the ACL bindings each filter selects and returns them, sorted.
    pub async fn delete_acls(&self, filters: &[AclFilter]) -> Result<Vec<AclBinding>> {
        let request = DeleteAclsRequest {
            filters: filters
                .iter()
                .map(|f| delete_acls_request::DeleteAclsFilter {
                    resource_type_filter: f.resource_type as i8,
                    resource_name_filter: f.resource_name.clone(),
                    pattern_type_filter: f.pattern_type as i8,
                    principal_filter: f.principal.clone(),
                    host_filter: f.host.clone(),
                    operation: f.operation as i8,
                    permission_type: f.permission as i8,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let response = self.client().send_any(request).await?;
        let mut deleted = Vec::new();
        for result in response.filter_results {
            Error::check(result.error_code, "ACLs", result.error_message)?;
            for acl in result.matching_acls {
                let b = binding(
                    acl.resource_type,
                    acl.resource_name,
                    acl.pattern_type,
                    acl.principal,
                    acl.host,
                    acl.operation,
                    acl.permission_type,
                )?;
                Error::check(acl.error_code, binding_name(&b), acl.error_message)?;
                deleted.push(b);
            }
        }
        deleted.sort();
        Ok(deleted)
    }

    /// The SCRAM credentials of `users` (every user with one when `None`).
    pub async fn describe_users(
        &self,
        users: Option<&[String]>,
    ) -> Result<BTreeMap<String, Vec<ScramCredential>>> {
        use spool_protocol::messages::describe_user_scram_credentials_request::UserName;
        let request = DescribeUserScramCredentialsRequest {
            users: users.map(|users| {
                users
                    .iter()
                    .map(|name| UserName {
                        name: name.clone(),
                        ..Default::default()
                    })
                    .collect()
            }),
            ..Default::default()
        };
        let response = self.client().send_any(request).await?;
        Error::check(response.error_code, "users", response.error_message)?;
        let mut described = BTreeMap::new();
        for result in response.results {
            Error::check(
                result.error_code,
                format!("user {}", result.user),
                result.error_message,
            )?;
            let credentials = result
                .credential_infos
                .iter()
                .filter_map(|c| {
                    Some(ScramCredential {
                        mechanism: ScramMechanism::from_code(c.mechanism)?,
                        iterations: c.iterations,
                    })
                })
                .collect();
            described.insert(result.user, credentials);
        }
        Ok(described)
    }

    /// Creates or replaces `user`'s SCRAM credential for `mechanism`. The password is
    /// salted here with a fresh random salt; only the salted form is sent.
    pub async fn upsert_user(
        &self,
        user: &str,
        mechanism: ScramMechanism,
        password: &str,
        iterations: u32,
    ) -> Result<()> {
        let mut salt = vec![0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let salted = salted_password(mechanism, password, &salt, iterations);
        let request = AlterUserScramCredentialsRequest {
            upsertions: vec![
                alter_user_scram_credentials_request::ScramCredentialUpsertion {
                    name: user.to_string(),
                    mechanism: mechanism as i8,
                    iterations: i32::try_from(iterations).unwrap_or(i32::MAX),
                    salt: Bytes::from(salt),
                    salted_password: salted,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        self.alter_users(request).await
    }

    /// Deletes `user`'s SCRAM credential for `mechanism`.
    pub async fn delete_user(&self, user: &str, mechanism: ScramMechanism) -> Result<()> {
        let request = AlterUserScramCredentialsRequest {
            deletions: vec![
                alter_user_scram_credentials_request::ScramCredentialDeletion {
                    name: user.to_string(),
                    mechanism: mechanism as i8,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        self.alter_users(request).await
    }

    async fn alter_users(&self, request: AlterUserScramCredentialsRequest) -> Result<()> {
        // Any broker takes it; credentials are cluster metadata, applied by the controller.
        let response = self.client().send_any(request).await?;
        for result in response.results {
            Error::check(
                result.error_code,
                format!("user {}", result.user),
                result.error_message,
            )?;
        }
        Ok(())
    }

    /// The quotas of the entities matching every `(entity type, match)` component;
    /// with `strict`, only entities with no other component.
    pub async fn describe_quotas(
        &self,
        components: &[(String, QuotaMatch)],
        strict: bool,
    ) -> Result<Vec<(QuotaEntity, BTreeMap<String, f64>)>> {
        let request = DescribeClientQuotasRequest {
            components: components
                .iter()
                .map(|(entity_type, matching)| {
                    let (match_type, name) = match matching {
                        QuotaMatch::Exact(name) => (0, Some(name.clone())),
                        QuotaMatch::Default => (1, None),
                        QuotaMatch::Any => (2, None),
                    };
                    describe_client_quotas_request::ComponentData {
                        entity_type: entity_type.clone(),
                        match_type,
                        r#match: name,
                        ..Default::default()
                    }
                })
                .collect(),
            strict,
            ..Default::default()
        };
        let response = self.client().send_any(request).await?;
        Error::check(response.error_code, "quotas", response.error_message)?;
        let mut entries: Vec<(QuotaEntity, BTreeMap<String, f64>)> = response
            .entries
            .unwrap_or_default()
            .into_iter()
            .map(|entry| {
                let mut entity: QuotaEntity = entry
                    .entity
                    .into_iter()
                    .map(|e| (e.entity_type, e.entity_name))
                    .collect();
                entity.sort();
                let values = entry.values.into_iter().map(|v| (v.key, v.value)).collect();
                (entity, values)
            })
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(entries)
    }

    /// Sets and removes quotas of one entity.
    pub async fn alter_quotas(&self, entity: &QuotaEntity, changes: &[QuotaChange]) -> Result<()> {
        let request = AlterClientQuotasRequest {
            entries: vec![alter_client_quotas_request::EntryData {
                entity: entity
                    .iter()
                    .map(
                        |(entity_type, name)| alter_client_quotas_request::EntityData {
                            entity_type: entity_type.clone(),
                            entity_name: name.clone(),
                            ..Default::default()
                        },
                    )
                    .collect(),
                ops: changes
                    .iter()
                    .map(|(key, value)| alter_client_quotas_request::OpData {
                        key: key.clone(),
                        value: value.unwrap_or(0.0),
                        remove: value.is_none(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            validate_only: false,
            ..Default::default()
        };
        let response = self.client().send_any(request).await?;
        let name: Vec<String> = entity
            .iter()
            .map(|(t, n)| format!("{t}={}", n.as_deref().unwrap_or("<default>")))
            .collect();
        for entry in response.entries {
            Error::check(
                entry.error_code,
                format!("quota entity {}", name.join(",")),
                entry.error_message,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_parse_in_any_case_and_with_dashes() {
        assert_eq!(ResourceType::parse("topic"), Some(ResourceType::Topic));
        assert_eq!(
            ResourceType::parse("transactional-id"),
            Some(ResourceType::TransactionalId)
        );
        assert_eq!(
            AclOperation::parse("Idempotent_Write"),
            Some(AclOperation::IdempotentWrite)
        );
        assert_eq!(AclOperation::from_code(8), Some(AclOperation::Describe));
        assert_eq!(AclOperation::from_code(99), None);
        assert_eq!(
            ScramMechanism::parse("scram-sha-512"),
            Some(ScramMechanism::Sha512)
        );
        assert_eq!(PatternType::Prefixed.to_string(), "PREFIXED");
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn salted_passwords_match_rfc_7677_and_pbkdf2_elsewhere() {
        // RFC 7677's example salt and password; the SHA-256 value is the RFC's
        // SaltedPassword, the SHA-512 one Python's hashlib.pbkdf2_hmac.
        let salt = [
            0x5b, 0x6d, 0x99, 0x68, 0x9d, 0x12, 0x35, 0x8e, 0xec, 0xa0, 0x4b, 0x14, 0x12, 0x36,
            0xfa, 0x81,
        ];
        assert_eq!(
            hex(&salted_password(
                ScramMechanism::Sha256,
                "pencil",
                &salt,
                4096
            )),
            "c4a49510323ab4f952cac1fa99441939e78ea74d6be81ddf7096e87513dc615d"
        );
        assert_eq!(
            hex(&salted_password(
                ScramMechanism::Sha512,
                "pencil",
                &salt,
                4096
            )),
            "f16efe1be67f1d09502ebd5ed9262fddffba5a377ab4f0b687e5ed5ba0f50686\
             b8a4ae166476da8ab3b951d2fa9238b63998f45461bc33a464814949cec9631d"
        );
    }
}

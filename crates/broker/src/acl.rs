//! Kafka's ACL model: bindings of a resource pattern (type, name, literal or prefixed) to
//! an entry (principal, host, operation, allow or deny), and the decision Kafka's
//! StandardAuthorizer makes from them.
//!
//! A request is allowed when its principal is a super user, or when no DENY binding
//! matches it and an ALLOW binding does (READ, WRITE, DELETE and ALTER imply DESCRIBE;
//! ALTER_CONFIGS implies DESCRIBE_CONFIGS; ALL implies everything). A resource that no
//! binding names at all is allowed only with `allow.everyone.if.no.acl.found`.
//! The codes are Kafka's (`ResourceType`, `PatternType`, `AclOperation`,
//! `AclPermissionType`).

use std::sync::Arc;

use spool_metadata::MetadataImage;
use spool_protocol::internal::AccessControlEntryRecord;

use crate::auth::Principal;
use crate::state::BrokerState;

pub mod resource {
    pub const ANY: i8 = 1;
    pub const TOPIC: i8 = 2;
    pub const GROUP: i8 = 3;
    pub const CLUSTER: i8 = 4;
    pub const TRANSACTIONAL_ID: i8 = 5;
    pub const DELEGATION_TOKEN: i8 = 6;
    pub const USER: i8 = 7;
}

pub mod pattern {
    pub const ANY: i8 = 1;
    pub const MATCH: i8 = 2;
    pub const LITERAL: i8 = 3;
    pub const PREFIXED: i8 = 4;
}

pub mod operation {
    pub const ANY: i8 = 1;
    pub const ALL: i8 = 2;
    pub const READ: i8 = 3;
    pub const WRITE: i8 = 4;
    pub const CREATE: i8 = 5;
    pub const DELETE: i8 = 6;
    pub const ALTER: i8 = 7;
    pub const DESCRIBE: i8 = 8;
    pub const CLUSTER_ACTION: i8 = 9;
    pub const DESCRIBE_CONFIGS: i8 = 10;
    pub const ALTER_CONFIGS: i8 = 11;
    pub const IDEMPOTENT_WRITE: i8 = 12;
    pub const CREATE_TOKENS: i8 = 13;
    pub const DESCRIBE_TOKENS: i8 = 14;
}

pub mod permission {
    pub const ANY: i8 = 1;
    pub const DENY: i8 = 2;
    pub const ALLOW: i8 = 3;
}

/// The one CLUSTER resource's name.
pub const CLUSTER_NAME: &str = "kafka-cluster";
/// The message of an *_AUTHORIZATION_FAILED answer that carries one.
pub const DENIED: &str = "Authorization failed.";

/// A literal resource name that matches every name.
pub const WILDCARD: &str = "*";

/// The operations a resource type takes (besides ALL), as Kafka allows bindings for them.
fn supported_operations(resource_type: i8) -> &'static [i8] {
    use operation::*;
    match resource_type {
        resource::TOPIC => &[
            READ,
            WRITE,
            CREATE,
            DESCRIBE,
            DELETE,
            ALTER,
            DESCRIBE_CONFIGS,
            ALTER_CONFIGS,
        ],
        resource::GROUP => &[READ, DESCRIBE, DELETE],
        resource::CLUSTER => &[
            CREATE,
            CLUSTER_ACTION,
            DESCRIBE_CONFIGS,
            ALTER_CONFIGS,
            IDEMPOTENT_WRITE,
            ALTER,
            DESCRIBE,
        ],
        resource::TRANSACTIONAL_ID => &[DESCRIBE, WRITE],
        resource::DELEGATION_TOKEN => &[DESCRIBE],
        resource::USER => &[CREATE_TOKENS, DESCRIBE_TOKENS],
        _ => &[],
    }
}

/// Why a binding cannot be created (Kafka answers INVALID_REQUEST with this).
pub fn check_binding(binding: &AccessControlEntryRecord) -> Result<(), String> {
    if !(resource::TOPIC..=resource::USER).contains(&binding.resource_type) {
        return Err(format!(
            "Invalid resource type {} for an ACL",
            binding.resource_type
        ));
    }
    if binding.pattern_type != pattern::LITERAL && binding.pattern_type != pattern::PREFIXED {
        return Err(format!(
            "Invalid pattern type {}: an ACL is LITERAL or PREFIXED",
            binding.pattern_type
        ));
    }
    if binding.permission_type != permission::ALLOW && binding.permission_type != permission::DENY {
        return Err(format!(
            "Invalid permission type {}",
            binding.permission_type
        ));
    }
    let supported = supported_operations(binding.resource_type);
    if binding.operation != operation::ALL && !supported.contains(&binding.operation) {
        return Err(format!(
            "Operation {} is not valid for resource type {}",
            binding.operation, binding.resource_type
        ));
    }
    if binding.resource_name.is_empty() {
        return Err("Resource name must not be empty".into());
    }
    if binding.resource_type == resource::CLUSTER && binding.resource_name != CLUSTER_NAME {
        return Err(format!(
            "The only valid name for the CLUSTER resource is {CLUSTER_NAME}"
        ));
    }
    match binding.principal.split_once(':') {
        Some((kind, name)) if !kind.is_empty() && !name.is_empty() => {}
        _ => {
            return Err(format!(
                "Could not parse principal from `{}` (expected Type:name)",
                binding.principal
            ));
        }
    }
    if binding.host.is_empty() {
        return Err("Host must not be empty (use * for any host)".into());
    }
    Ok(())
}

/// What DescribeAcls and DeleteAcls select bindings by. `None` and the ANY codes match
/// everything; pattern type MATCH selects the bindings that apply to the named resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub resource_type: i8,
    pub resource_name: Option<String>,
    pub pattern_type: i8,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: i8,
    pub permission_type: i8,
}

impl Filter {
    /// Why a filter cannot select anything (UNKNOWN codes): INVALID_REQUEST.
    pub fn check(&self) -> Result<(), String> {
        let known = (resource::ANY..=resource::USER).contains(&self.resource_type)
            && (pattern::ANY..=pattern::PREFIXED).contains(&self.pattern_type)
            && (operation::ANY..=operation::DESCRIBE_TOKENS).contains(&self.operation)
            && (permission::ANY..=permission::ALLOW).contains(&self.permission_type);
        if known {
            Ok(())
        } else {
            Err("The filter has an unknown resource, pattern, operation or permission type".into())
        }
    }

    pub fn matches(&self, binding: &AccessControlEntryRecord) -> bool {
        let any_or = |filter: i8, value: i8, any: i8| filter == any || filter == value;
        let name_ok = match (&self.resource_name, self.pattern_type) {
            (None, _) => true,
            (Some(name), pattern::MATCH) => pattern_matches(binding, name),
            (Some(name), _) => binding.resource_name == *name,
        };
        let pattern_ok = match self.pattern_type {
            pattern::ANY | pattern::MATCH => true,
            other => binding.pattern_type == other,
        };
        any_or(self.resource_type, binding.resource_type, resource::ANY)
            && name_ok
            && pattern_ok
            && self
                .principal
                .as_ref()
                .is_none_or(|p| *p == binding.principal)
            && self.host.as_ref().is_none_or(|h| *h == binding.host)
            && any_or(self.operation, binding.operation, operation::ANY)
            && any_or(
                self.permission_type,
                binding.permission_type,
                permission::ANY,
            )
    }
}

/// Whether a binding's resource pattern covers the resource named `name`.
fn pattern_matches(binding: &AccessControlEntryRecord, name: &str) -> bool {
    match binding.pattern_type {
        pattern::LITERAL => binding.resource_name == name || binding.resource_name == WILDCARD,
        pattern::PREFIXED => name.starts_with(binding.resource_name.as_str()),
        _ => false,
    }
}

/// Whether an ALLOW binding for `granted` allows `wanted`.
fn implies(granted: i8, wanted: i8) -> bool {
    use operation::*;
    granted == ALL
        || granted == wanted
        || (wanted == DESCRIBE && matches!(granted, READ | WRITE | DELETE | ALTER))
        || (wanted == DESCRIBE_CONFIGS && granted == ALTER_CONFIGS)
}

/// The authorizer's settings: `super.users` and `allow.everyone.if.no.acl.found`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authorizer {
    /// Principals (`User:alice`) allowed everything.
    pub super_users: Vec<String>,
    pub allow_everyone_if_no_acl_found: bool,
}

/// A request to authorize: who, from where, what, on which resource.
#[derive(Debug, Clone, Copy)]
pub struct Action<'a> {
    /// `User:<name>`.
    pub principal: &'a str,
    /// The client's IP address, as bindings name hosts.
    pub host: &'a str,
    pub operation: i8,
    pub resource_type: i8,
    pub resource_name: &'a str,
}

impl Authorizer {
    /// Kafka's decision for `action` given every binding there is.
    pub fn authorize<'b>(
        &self,
        bindings: impl IntoIterator<Item = &'b AccessControlEntryRecord>,
        action: &Action<'_>,
    ) -> bool {
        if self.super_users.iter().any(|s| s == action.principal) {
            return true;
        }
        let mut any_for_resource = false;
        let mut allowed = false;
        for binding in bindings {
            if binding.resource_type != action.resource_type
                || !pattern_matches(binding, action.resource_name)
            {
                continue;
            }
            any_for_resource = true;
            let principal_ok =
                binding.principal == action.principal || binding.principal == "User:*";
            let host_ok = binding.host == WILDCARD || binding.host == action.host;
            if !principal_ok || !host_ok {
                continue;
            }
            match binding.permission_type {
                permission::DENY
                    if binding.operation == operation::ALL
                        || binding.operation == action.operation =>
                {
                    return false;
                }
                permission::ALLOW if implies(binding.operation, action.operation) => {
                    allowed = true;
                }
                _ => {}
            }
        }
        allowed || (!any_for_resource && self.allow_everyone_if_no_acl_found)
    }
}

/// One request's view of the authorizer: who asks, from which address, and the bindings
/// in force when the request arrived. Without an authorizer everything is allowed, as in
/// Kafka.
pub struct Authz<'a> {
    rules: Option<(&'a Authorizer, Arc<MetadataImage>)>,
    principal: String,
    host: String,
}

impl<'a> Authz<'a> {
    /// The view for a request from `principal` at `host` (an IP address).
    pub fn new(state: &'a BrokerState, principal: &Principal, host: &str) -> Authz<'a> {
        match &state.config.authorizer {
            None => Authz::allow_all(),
            Some(authorizer) => Authz {
                rules: Some((authorizer, state.current_image())),
                principal: principal.to_string(),
                host: host.to_string(),
            },
        }
    }

    /// A view that allows everything: the broker's own calls and handler tests.
    pub fn allow_all() -> Authz<'static> {
        Authz {
            rules: None,
            principal: String::new(),
            host: String::new(),
        }
    }

    /// Whether the request may do `operation` on the resource.
    pub fn allows(&self, operation: i8, resource_type: i8, resource_name: &str) -> bool {
        let Some((authorizer, image)) = &self.rules else {
            return true;
        };
        let action = Action {
            principal: &self.principal,
            host: &self.host,
            operation,
            resource_type,
            resource_name,
        };
        let allowed = authorizer.authorize(image.acls(), &action);
        if !allowed {
            tracing::debug!(principal = %self.principal, host = %self.host, operation, resource_type, resource_name, "denied by ACLs");
        }
        allowed
    }

    pub fn topic(&self, operation: i8, name: &str) -> bool {
        self.allows(operation, resource::TOPIC, name)
    }

    pub fn group(&self, operation: i8, id: &str) -> bool {
        self.allows(operation, resource::GROUP, id)
    }

    pub fn transactional_id(&self, operation: i8, id: &str) -> bool {
        self.allows(operation, resource::TRANSACTIONAL_ID, id)
    }

    pub fn cluster(&self, operation: i8) -> bool {
        self.allows(operation, resource::CLUSTER, CLUSTER_NAME)
    }

    /// Whether the request may do `operation` on some resource of the type (Kafka's
    /// `authorizeByResourceType`): a binding for every name of the type allows it, or an
    /// ALLOW binding for this principal that no DENY binding covers.
    pub fn allows_some(&self, operation: i8, resource_type: i8) -> bool {
        let Some((_, image)) = &self.rules else {
            return true;
        };
        // An empty name is matched only by the bindings that cover every name.
        if self.allows(operation, resource_type, "") {
            return true;
        }
        let applies = |b: &AccessControlEntryRecord| {
            b.resource_type == resource_type
                && (b.principal == self.principal || b.principal == "User:*")
                && (b.host == WILDCARD || b.host == self.host)
        };
        let denied: Vec<&AccessControlEntryRecord> = image
            .acls()
            .filter(|b| {
                applies(b)
                    && b.permission_type == permission::DENY
                    && (b.operation == operation::ALL || b.operation == operation)
            })
            .collect();
        let covered = |allow: &AccessControlEntryRecord| {
            denied.iter().any(|deny| {
                let prefix_of = allow.resource_name.starts_with(deny.resource_name.as_str());
                match (deny.pattern_type, allow.pattern_type) {
                    (pattern::PREFIXED, _) => prefix_of,
                    (pattern::LITERAL, pattern::LITERAL) => {
                        deny.resource_name == allow.resource_name
                    }
                    _ => false,
                }
            })
        };
        image.acls().any(|b| {
            applies(b)
                && b.permission_type == permission::ALLOW
                && implies(b.operation, operation)
                && !covered(b)
        })
    }

    /// The operations the request may do on a resource, as the `*_authorized_operations`
    /// fields carry them: bit `1 << code` for each operation the type supports.
    pub fn operations(&self, resource_type: i8, resource_name: &str) -> i32 {
        supported_operations(resource_type)
            .iter()
            .filter(|op| self.allows(**op, resource_type, resource_name))
            .fold(0, |bits, op| bits | (1 << op))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binding for any host; `request_tests` use it too.
    pub(super) fn binding(
        resource_type: i8,
        name: &str,
        pattern_type: i8,
        principal: &str,
        operation: i8,
        permission_type: i8,
    ) -> AccessControlEntryRecord {
        AccessControlEntryRecord {
            resource_type,
            resource_name: name.into(),
            pattern_type,
            principal: principal.into(),
            host: "*".into(),
            operation,
            permission_type,
            ..Default::default()
        }
    }

    fn topic_action<'a>(principal: &'a str, operation: i8, topic: &'a str) -> Action<'a> {
        Action {
            principal,
            host: "10.0.0.1",
            operation,
            resource_type: resource::TOPIC,
            resource_name: topic,
        }
    }

    #[test]
    fn allow_bindings_grant_their_operation_and_the_ones_it_implies() {
        use operation::*;
        let bindings = [
            binding(
                resource::TOPIC,
                "orders",
                pattern::LITERAL,
                "User:alice",
                WRITE,
                permission::ALLOW,
            ),
            binding(
                resource::TOPIC,
                "pay-",
                pattern::PREFIXED,
                "User:bob",
                READ,
                permission::ALLOW,
            ),
            binding(
                resource::TOPIC,
                "*",
                pattern::LITERAL,
                "User:carol",
                ALTER_CONFIGS,
                permission::ALLOW,
            ),
        ];
        let authorizer = Authorizer::default();
        let allowed = |principal, operation, topic| {
            authorizer.authorize(&bindings, &topic_action(principal, operation, topic))
        };
        assert!(allowed("User:alice", WRITE, "orders"));
        assert!(
            allowed("User:alice", DESCRIBE, "orders"),
            "WRITE implies DESCRIBE"
        );
        assert!(!allowed("User:alice", READ, "orders"));
        assert!(
            !allowed("User:alice", WRITE, "orders-eu"),
            "literal, not prefix"
        );
        assert!(allowed("User:bob", READ, "pay-eu"));
        assert!(!allowed("User:bob", READ, "payments"));
        assert!(
            allowed("User:carol", DESCRIBE_CONFIGS, "anything"),
            "wildcard"
        );
        assert!(!allowed("User:carol", WRITE, "anything"));
        assert!(!allowed("User:mallory", DESCRIBE, "orders"));
    }

    #[test]
    fn deny_wins_and_super_users_and_unbound_resources_follow_the_settings() {
        use operation::*;
        let bindings = [
            binding(
                resource::TOPIC,
                "orders",
                pattern::LITERAL,
                "User:*",
                ALL,
                permission::ALLOW,
            ),
            binding(
                resource::TOPIC,
                "ord",
                pattern::PREFIXED,
                "User:mallory",
                WRITE,
                permission::DENY,
            ),
            AccessControlEntryRecord {
                host: "10.0.0.9".into(),
                ..binding(
                    resource::TOPIC,
                    "orders",
                    pattern::LITERAL,
                    "User:eve",
                    ALL,
                    permission::DENY,
                )
            },
        ];
        let mut authorizer = Authorizer {
            super_users: vec!["User:admin".into()],
            allow_everyone_if_no_acl_found: false,
        };
        let allowed = |authorizer: &Authorizer, principal, operation, topic| {
            authorizer.authorize(&bindings, &topic_action(principal, operation, topic))
        };
        assert!(allowed(&authorizer, "User:alice", WRITE, "orders"));
        assert!(
            !allowed(&authorizer, "User:mallory", WRITE, "orders"),
            "deny overrides allow"
        );
        assert!(allowed(&authorizer, "User:mallory", READ, "orders"));
        assert!(
            allowed(&authorizer, "User:eve", WRITE, "orders"),
            "denied on another host only"
        );
        assert!(allowed(&authorizer, "User:admin", DELETE, "unbound"));
        assert!(!allowed(&authorizer, "User:alice", READ, "unbound"));
        authorizer.allow_everyone_if_no_acl_found = true;
        assert!(allowed(&authorizer, "User:alice", READ, "unbound"));
        // A resource some binding names is not "unbound", whoever the binding is for.
        assert!(!allowed(&authorizer, "User:alice", READ, "ord-x"));
    }

    #[test]
    fn bindings_are_checked_and_filters_select_as_kafka_does() {
        use operation::*;
        let good = binding(
            resource::TOPIC,
            "orders",
            pattern::LITERAL,
            "User:alice",
            READ,
            permission::ALLOW,
        );
        assert_eq!(check_binding(&good), Ok(()));
        for bad in [
            AccessControlEntryRecord {
                resource_type: resource::ANY,
                ..good.clone()
            },
            AccessControlEntryRecord {
                pattern_type: pattern::MATCH,
                ..good.clone()
            },
            AccessControlEntryRecord {
                operation: CLUSTER_ACTION,
                ..good.clone()
            },
            AccessControlEntryRecord {
                permission_type: permission::ANY,
                ..good.clone()
            },
            AccessControlEntryRecord {
                principal: "alice".into(),
                ..good.clone()
            },
            AccessControlEntryRecord {
                resource_name: String::new(),
                ..good.clone()
            },
            binding(
                resource::CLUSTER,
                "other",
                pattern::LITERAL,
                "User:a",
                ALTER,
                permission::ALLOW,
            ),
        ] {
            assert!(check_binding(&bad).is_err(), "{bad:?}");
        }
        let prefixed = binding(
            resource::TOPIC,
            "ord",
            pattern::PREFIXED,
            "User:bob",
            WRITE,
            permission::DENY,
        );
        let everything = Filter {
            resource_type: resource::ANY,
            resource_name: None,
            pattern_type: pattern::ANY,
            principal: None,
            host: None,
            operation: ANY,
            permission_type: permission::ANY,
        };
        assert!(everything.matches(&good) && everything.matches(&prefixed));
        let matching = Filter {
            resource_type: resource::TOPIC,
            resource_name: Some("orders".into()),
            pattern_type: pattern::MATCH,
            ..everything.clone()
        };
        assert!(matching.matches(&good) && matching.matches(&prefixed));
        let exact = Filter {
            pattern_type: pattern::ANY,
            ..matching.clone()
        };
        assert!(exact.matches(&good) && !exact.matches(&prefixed));
        let literal_only = Filter {
            pattern_type: pattern::PREFIXED,
            resource_name: None,
            ..everything.clone()
        };
        assert!(!literal_only.matches(&good) && literal_only.matches(&prefixed));
        let bobs = Filter {
            principal: Some("User:bob".into()),
            ..everything.clone()
        };
        assert!(!bobs.matches(&good) && bobs.matches(&prefixed));
        assert!(
            Filter {
                operation: 0,
                ..everything
            }
            .check()
            .is_err()
        );
    }
}

#[cfg(test)]
#[path = "acl_tests.rs"]
mod request_tests;

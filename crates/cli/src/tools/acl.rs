//! `spool acl create|list|delete`: the cluster's ACLs (CreateAcls, DescribeAcls,
//! DeleteAcls). The broker must run an authorizer; without one it answers
//! SECURITY_DISABLED, as Kafka does.

use serde_json::json;
use spool_client::{
    AclBinding, AclFilter, AclOperation, AclPermission, Admin, PatternType, ResourceType,
};

use super::{Connect, Table, out, out_json};

#[derive(clap::Subcommand, Debug)]
pub enum AclCommand {
    /// Allow or deny principals operations on one resource.
    Create(CreateArgs),
    /// List the ACLs that match the options (all when none is given).
    List(FilterArgs),
    /// Delete the ACLs that match the options.
    Delete(DeleteArgs),
}

/// The resource an ACL is about; at most one.
#[derive(clap::Args, Debug)]
#[group(multiple = false)]
pub struct ResourceArgs {
    #[arg(long)]
    pub topic: Option<String>,
    #[arg(long)]
    pub group: Option<String>,
    /// The cluster itself (create topics, alter configs, idempotent writes, …).
    #[arg(long)]
    pub cluster: bool,
    #[arg(long)]
    pub transactional_id: Option<String>,
}

impl ResourceArgs {
    fn resource(&self) -> Option<(ResourceType, String)> {
        if let Some(name) = &self.topic {
            Some((ResourceType::Topic, name.clone()))
        } else if let Some(name) = &self.group {
            Some((ResourceType::Group, name.clone()))
        } else if let Some(name) = &self.transactional_id {
            Some((ResourceType::TransactionalId, name.clone()))
        } else {
            self.cluster
                .then(|| (ResourceType::Cluster, "kafka-cluster".to_string()))
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub resource: ResourceArgs,
    /// A principal to allow, e.g. `User:alice` (`User:*` for everyone). Repeatable.
    #[arg(long)]
    pub allow: Vec<String>,
    /// A principal to deny. Repeatable.
    #[arg(long)]
    pub deny: Vec<String>,
    /// read, write, create, delete, alter, describe, cluster-action, describe-configs,
    /// alter-configs, idempotent-write, all. Repeatable.
    #[arg(long = "operation", short = 'o', required = true)]
    pub operations: Vec<String>,
    /// The host the principal connects from; `*` for any.
    #[arg(long, default_value = "*")]
    pub host: String,
    /// `literal` (the name exactly) or `prefixed` (every name starting with it).
    #[arg(long, default_value = "literal")]
    pub pattern: String,
}

#[derive(clap::Args, Debug)]
pub struct FilterArgs {
    #[command(flatten)]
    pub resource: ResourceArgs,
    /// Only ACLs of this principal.
    #[arg(long)]
    pub principal: Option<String>,
    /// Only ACLs for this operation.
    #[arg(long = "operation", short = 'o')]
    pub operation: Option<String>,
    /// Only `allow` or `deny` ACLs.
    #[arg(long)]
    pub permission: Option<String>,
    /// Only ACLs for this host.
    #[arg(long)]
    pub host: Option<String>,
    /// `any` (default), `literal`, `prefixed`, or `match` (every ACL that applies to the
    /// resource named, prefixed and wildcard ones included).
    #[arg(long, default_value = "any")]
    pub pattern: String,
}

#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Delete every ACL in the cluster when no other option narrows it down.
    #[arg(long)]
    pub all: bool,
}

pub async fn run(connect: &Connect, command: AclCommand) -> Result<(), String> {
    // Arguments are checked before connecting.
    match command {
        AclCommand::Create(args) => {
            let bindings = bindings(&args)?;
            let admin = Admin::new(connect.client().await?);
            admin
                .create_acls(&bindings)
                .await
                .map_err(|e| e.to_string())?;
            print(connect.json, "created", &bindings)
        }
        AclCommand::List(args) => {
            let filter = filter(&args)?;
            let admin = Admin::new(connect.client().await?);
            let bindings = admin
                .describe_acls(&filter)
                .await
                .map_err(|e| e.to_string())?;
            if connect.json {
                return out_json(&json!(
                    bindings.iter().map(binding_json).collect::<Vec<_>>()
                ));
            }
            out(&table(&bindings))
        }
        AclCommand::Delete(args) => {
            let filter = filter(&args.filter)?;
            let narrowed = filter.resource_type != ResourceType::Any
                || filter.principal.is_some()
                || filter.operation != AclOperation::Any
                || filter.permission != AclPermission::Any
                || filter.host.is_some()
                || filter.pattern_type != PatternType::Any;
            if !narrowed && !args.all {
                return Err(
                    "no option narrows the ACLs down: this would delete them all (add --all)"
                        .into(),
                );
            }
            let admin = Admin::new(connect.client().await?);
            let deleted = admin
                .delete_acls(&[filter])
                .await
                .map_err(|e| e.to_string())?;
            print(connect.json, "deleted", &deleted)
        }
    }
}

fn principal(text: &str) -> Result<String, String> {
    match text.split_once(':') {
        Some((kind, name)) if !kind.is_empty() && !name.is_empty() => Ok(text.to_string()),
        _ => Err(format!(
            "principal {text:?}: expected TYPE:NAME, e.g. User:alice"
        )),
    }
}

fn operation(text: &str) -> Result<AclOperation, String> {
    AclOperation::parse(text)
        .filter(|o| *o != AclOperation::Any)
        .ok_or_else(|| format!("unknown operation {text:?}"))
}

fn bindings(args: &CreateArgs) -> Result<Vec<AclBinding>, String> {
    let (resource_type, resource_name) = args
        .resource
        .resource()
        .ok_or("which resource: --topic, --group, --cluster or --transactional-id".to_string())?;
    let pattern_type = match PatternType::parse(&args.pattern) {
        Some(p @ (PatternType::Literal | PatternType::Prefixed)) => p,
        _ => return Err(format!("--pattern {}: literal or prefixed", args.pattern)),
    };
    if args.allow.is_empty() && args.deny.is_empty() {
        return Err("whom: --allow PRINCIPAL or --deny PRINCIPAL".into());
    }
    let principals = args
        .allow
        .iter()
        .map(|p| (p, AclPermission::Allow))
        .chain(args.deny.iter().map(|p| (p, AclPermission::Deny)));
    let mut bindings = Vec::new();
    for (who, permission) in principals {
        for op in &args.operations {
            bindings.push(AclBinding {
                resource_type,
                resource_name: resource_name.clone(),
                pattern_type,
                principal: principal(who)?,
                host: args.host.clone(),
                operation: operation(op)?,
                permission,
            });
        }
    }
    Ok(bindings)
}

fn filter(args: &FilterArgs) -> Result<AclFilter, String> {
    let (resource_type, resource_name) = match args.resource.resource() {
        Some((kind, name)) => (kind, Some(name)),
        None => (ResourceType::Any, None),
    };
    let permission = match args.permission.as_deref() {
        None => AclPermission::Any,
        Some(text) => AclPermission::parse(text)
            .filter(|p| *p != AclPermission::Any)
            .ok_or_else(|| format!("--permission {text}: allow or deny"))?,
    };
    Ok(AclFilter {
        resource_type,
        resource_name,
        pattern_type: PatternType::parse(&args.pattern).ok_or_else(|| {
            format!(
                "--pattern {}: any, literal, prefixed or match",
                args.pattern
            )
        })?,
        principal: args.principal.as_deref().map(principal).transpose()?,
        host: args.host.clone(),
        operation: args
            .operation
            .as_deref()
            .map(operation)
            .transpose()?
            .unwrap_or(AclOperation::Any),
        permission,
    })
}

fn binding_json(b: &AclBinding) -> serde_json::Value {
    json!({
        "principal": b.principal,
        "host": b.host,
        "permission": b.permission.name(),
        "operation": b.operation.name(),
        "resource_type": b.resource_type.name(),
        "resource_name": b.resource_name,
        "pattern_type": b.pattern_type.name(),
    })
}

fn table(bindings: &[AclBinding]) -> String {
    let mut table = Table::new(&[
        "PRINCIPAL",
        "HOST",
        "PERMISSION",
        "OPERATION",
        "RESOURCE-TYPE",
        "RESOURCE-NAME",
        "PATTERN",
    ]);
    for b in bindings {
        table.row(vec![
            b.principal.clone(),
            b.host.clone(),
            b.permission.to_string(),
            b.operation.to_string(),
            b.resource_type.to_string(),
            b.resource_name.clone(),
            b.pattern_type.to_string(),
        ]);
    }
    table.render()
}

fn print(json: bool, done: &str, bindings: &[AclBinding]) -> Result<(), String> {
    if json {
        return out_json(&json!({
            done: bindings.iter().map(binding_json).collect::<Vec<_>>(),
        }));
    }
    let mut text = format!(
        "{done} {} ACL{}\n",
        bindings.len(),
        if bindings.len() == 1 { "" } else { "s" }
    );
    if !bindings.is_empty() {
        text.push_str(&table(bindings));
    }
    out(&text)
}

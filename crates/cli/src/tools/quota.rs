//! `spool quota describe|alter`: client quotas (DescribeClientQuotas,
//! AlterClientQuotas) by user, client ID and IP, or their defaults.

use std::collections::BTreeMap;

use serde_json::json;
use spool_client::{Admin, QuotaEntity, QuotaMatch};

use super::{Connect, Table, key_value, out, out_json};

#[derive(clap::Subcommand, Debug)]
pub enum QuotaCommand {
    /// The quotas set for the entities the options select (all when none is given).
    Describe(EntityArgs),
    /// Set or remove quotas of one entity: a user, a client ID, both, or an IP.
    Alter(AlterArgs),
}

/// An entity by its parts; a part left out matches anything when describing.
#[derive(clap::Args, Debug)]
pub struct EntityArgs {
    #[arg(long, conflicts_with = "default_user")]
    pub user: Option<String>,
    /// The default for users without a quota of their own.
    #[arg(long)]
    pub default_user: bool,
    /// A client ID (`client.id`).
    #[arg(long, conflicts_with = "default_client")]
    pub client: Option<String>,
    /// The default for client IDs without a quota of their own.
    #[arg(long)]
    pub default_client: bool,
    /// A client IP address (connection rate quotas).
    #[arg(long, conflicts_with = "default_ip")]
    pub ip: Option<String>,
    #[arg(long)]
    pub default_ip: bool,
}

#[derive(clap::Args, Debug)]
pub struct AlterArgs {
    #[command(flatten)]
    pub entity: EntityArgs,
    /// KEY=VALUE: producer_byte_rate, consumer_byte_rate, request_percentage,
    /// controller_mutation_rate, connection_creation_rate. Repeatable.
    #[arg(long = "set")]
    pub set: Vec<String>,
    /// A quota to remove. Repeatable.
    #[arg(long = "remove")]
    pub remove: Vec<String>,
}

impl EntityArgs {
    /// `(entity type, match)` for each part given.
    fn components(&self) -> Vec<(String, QuotaMatch)> {
        let part = |kind: &str, name: &Option<String>, default: bool| {
            let matching = match (name, default) {
                (Some(name), _) => QuotaMatch::Exact(name.clone()),
                (None, true) => QuotaMatch::Default,
                (None, false) => return None,
            };
            Some((kind.to_string(), matching))
        };
        [
            part("user", &self.user, self.default_user),
            part("client-id", &self.client, self.default_client),
            part("ip", &self.ip, self.default_ip),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

fn entity_text(entity: &QuotaEntity) -> String {
    entity
        .iter()
        .map(|(kind, name)| format!("{kind}={}", name.as_deref().unwrap_or("<default>")))
        .collect::<Vec<_>>()
        .join(",")
}

pub async fn run(connect: &Connect, command: QuotaCommand) -> Result<(), String> {
    match command {
        QuotaCommand::Describe(args) => {
            // No part given: no component to match, so every entity with a quota.
            let components = args.components();
            let admin = Admin::new(connect.client().await?);
            let entries = admin
                .describe_quotas(&components, false)
                .await
                .map_err(|e| e.to_string())?;
            if connect.json {
                let entries: Vec<_> = entries
                    .iter()
                    .map(|(entity, values)| {
                        let entity: serde_json::Map<_, _> = entity
                            .iter()
                            .map(|(kind, name)| (kind.clone(), json!(name)))
                            .collect();
                        json!({"entity": entity, "quotas": values})
                    })
                    .collect();
                return out_json(&json!(entries));
            }
            let mut table = Table::new(&["ENTITY", "QUOTA", "VALUE"]);
            for (entity, values) in &entries {
                for (key, value) in values {
                    table.row(vec![entity_text(entity), key.clone(), value.to_string()]);
                }
            }
            out(&table.render())
        }
        QuotaCommand::Alter(args) => {
            let entity: QuotaEntity = args
                .entity
                .components()
                .into_iter()
                .map(|(kind, matching)| match matching {
                    QuotaMatch::Exact(name) => (kind, Some(name)),
                    _ => (kind, None),
                })
                .collect();
            if entity.is_empty() {
                return Err("which entity: --user, --client, --ip or a --default-…".into());
            }
            let mut changes: BTreeMap<String, Option<f64>> = BTreeMap::new();
            for setting in &args.set {
                let (key, value) = key_value(setting)?;
                let value: f64 = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("--set {setting}: the value is not a number"))?;
                changes.insert(key, Some(value));
            }
            for key in &args.remove {
                changes.insert(key.clone(), None);
            }
            if changes.is_empty() {
                return Err("nothing to change: --set KEY=VALUE or --remove KEY".into());
            }
            let admin = Admin::new(connect.client().await?);
            let changes: Vec<(String, Option<f64>)> = changes.into_iter().collect();
            admin
                .alter_quotas(&entity, &changes)
                .await
                .map_err(|e| e.to_string())?;
            out(&format!("altered quotas of {}\n", entity_text(&entity)))
        }
    }
}

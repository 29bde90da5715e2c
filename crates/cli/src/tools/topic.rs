//! `spool topic create|list|describe|alter-config|add-partitions|delete`.

use std::collections::BTreeMap;

use serde_json::json;
use spool_client::{Admin, ConfigChange, ConfigResource, IsolationLevel, NewTopic, OffsetSpec};

use super::{Connect, Table, ids, key_value, out, out_json};

#[derive(clap::Subcommand, Debug)]
pub enum TopicCommand {
    /// Create topics.
    Create {
        #[arg(required = true)]
        names: Vec<String>,
        /// Partitions per topic (the broker's num.partitions when left out).
        #[arg(long, short = 'p')]
        partitions: Option<i32>,
        /// Replicas per partition (the broker's default.replication.factor when left out).
        #[arg(long, short = 'r')]
        replication_factor: Option<i16>,
        /// A topic setting, e.g. `--config cleanup.policy=compact`. Repeatable.
        #[arg(long = "config", short = 'c', value_name = "KEY=VALUE")]
        configs: Vec<String>,
        /// Check the request without creating anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// List topics with their partition and replica counts.
    List {
        /// Include internal topics (__consumer_offsets, __transaction_state).
        #[arg(long)]
        internal: bool,
    },
    /// A topic's partitions (leader, replicas, ISR, offsets) and its settings.
    Describe {
        name: String,
        /// Show every setting, defaults included.
        #[arg(long)]
        all_configs: bool,
    },
    /// Set or remove topic settings.
    AlterConfig {
        name: String,
        /// Set a setting. Repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Remove a setting (back to the broker's default). Repeatable.
        #[arg(long = "delete", value_name = "KEY")]
        delete: Vec<String>,
    },
    /// Add partitions to a topic.
    AddPartitions {
        name: String,
        /// How many partitions to add.
        #[arg(long, short = 'n')]
        num: i32,
    },
    /// Move a partition's replicas to other brokers (the first is the preferred leader),
    /// or cancel its ongoing move.
    Reassign {
        name: String,
        #[arg(long, short = 'p')]
        partition: i32,
        /// The target brokers, e.g. `--replicas 1,2,3`.
        #[arg(long, value_delimiter = ',', required_unless_present = "cancel")]
        replicas: Vec<i32>,
        /// Cancel the ongoing move instead.
        #[arg(long, conflicts_with = "replicas")]
        cancel: bool,
    },
    /// Partitions being moved: current, adding and removing replicas.
    Reassignments {
        /// Only this topic's.
        name: Option<String>,
    },
    /// Delete topics.
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub async fn run(connect: &Connect, command: TopicCommand) -> Result<(), String> {
    let admin = Admin::new(connect.client().await?);
    match command {
        TopicCommand::Create {
            names,
            partitions,
            replication_factor,
            configs,
            dry_run,
        } => {
            let configs: BTreeMap<String, String> = configs
                .iter()
                .map(|c| key_value(c))
                .collect::<Result<_, _>>()?;
            let topics: Vec<NewTopic> = names
                .iter()
                .map(|name| NewTopic {
                    name: name.clone(),
                    partitions,
                    replication_factor,
                    configs: configs.clone(),
                })
                .collect();
            admin
                .create_topics(&topics, dry_run)
                .await
                .map_err(|e| e.to_string())?;
            let verb = if dry_run { "would create" } else { "created" };
            if connect.json {
                out_json(&json!({ "created": names, "dry_run": dry_run }))
            } else {
                out(&names
                    .iter()
                    .map(|n| format!("{verb} topic {n}\n"))
                    .collect::<String>())
            }
        }
        TopicCommand::List { internal } => {
            let cluster = admin.cluster().await.map_err(|e| e.to_string())?;
            let topics: Vec<_> = cluster
                .topics
                .values()
                .filter(|t| internal || !t.is_internal)
                .collect();
            if connect.json {
                let list: Vec<_> = topics
                    .iter()
                    .map(|t| {
                        json!({
                            "name": t.name,
                            "partitions": t.partitions.len(),
                            "replication_factor": replication_factor(&t.partitions),
                            "internal": t.is_internal,
                        })
                    })
                    .collect();
                return out_json(&json!(list));
            }
            let mut table = Table::new(&["NAME", "PARTITIONS", "REPLICAS"]);
            for t in topics {
                table.row(vec![
                    t.name.clone(),
                    t.partitions.len().to_string(),
                    replication_factor(&t.partitions).to_string(),
                ]);
            }
            out(&table.render())
        }
        TopicCommand::Describe { name, all_configs } => {
            describe(&admin, connect.json, &name, all_configs).await
        }
        TopicCommand::AlterConfig { name, set, delete } => {
            let mut changes = Vec::new();
            for setting in &set {
                let (key, value) = key_value(setting)?;
                changes.push(ConfigChange::Set(key, value));
            }
            changes.extend(delete.iter().map(|k| ConfigChange::Delete(k.clone())));
            if changes.is_empty() {
                return Err("nothing to change: give --set KEY=VALUE or --delete KEY".into());
            }
            admin
                .alter_configs(ConfigResource::Topic, &name, &changes, false)
                .await
                .map_err(|e| e.to_string())?;
            if connect.json {
                out_json(&json!({ "topic": name, "set": set, "deleted": delete }))
            } else {
                out(&format!(
                    "altered topic {name}: {} change(s)\n",
                    changes.len()
                ))
            }
        }
        TopicCommand::AddPartitions { name, num } => {
            if num < 1 {
                return Err("--num must be at least 1".into());
            }
            let current = admin
                .describe_topic(&name)
                .await
                .map_err(|e| e.to_string())?
                .partitions
                .len();
            let total = i32::try_from(current)
                .ok()
                .and_then(|c| c.checked_add(num))
                .ok_or_else(|| format!("topic {name}: too many partitions"))?;
            admin
                .create_partitions(&name, total, false)
                .await
                .map_err(|e| e.to_string())?;
            if connect.json {
                out_json(&json!({ "topic": name, "partitions": total }))
            } else {
                out(&format!("topic {name} now has {total} partitions\n"))
            }
        }
        TopicCommand::Reassign {
            name,
            partition,
            replicas,
            cancel,
        } => {
            let target = (!cancel).then_some(replicas);
            admin
                .reassign_partition(&name, partition, target.clone())
                .await
                .map_err(|e| e.to_string())?;
            if connect.json {
                return out_json(&json!({
                    "topic": name,
                    "partition": partition,
                    "replicas": target,
                    "cancelled": cancel,
                }));
            }
            match target {
                None => out(&format!(
                    "cancelled the move of topic {name} partition {partition}\n"
                )),
                Some(replicas) => out(&format!(
                    "moving topic {name} partition {partition} to brokers {}\n",
                    ids(&replicas)
                )),
            }
        }
        TopicCommand::Reassignments { name } => {
            let moves = admin
                .list_reassignments(name.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            if connect.json {
                let list: Vec<_> = moves
                    .iter()
                    .map(|m| {
                        json!({
                            "topic": m.topic,
                            "partition": m.partition,
                            "replicas": m.replicas,
                            "adding": m.adding,
                            "removing": m.removing,
                        })
                    })
                    .collect();
                return out_json(&json!(list));
            }
            let mut table = Table::new(&["TOPIC", "PARTITION", "REPLICAS", "ADDING", "REMOVING"]);
            for m in &moves {
                table.row(vec![
                    m.topic.clone(),
                    m.partition.to_string(),
                    ids(&m.replicas),
                    ids(&m.adding),
                    ids(&m.removing),
                ]);
            }
            out(&table.render())
        }
        TopicCommand::Delete { names } => {
            admin
                .delete_topics(&names)
                .await
                .map_err(|e| e.to_string())?;
            if connect.json {
                out_json(&json!({ "deleted": names }))
            } else {
                out(&names
                    .iter()
                    .map(|n| format!("deleted topic {n}\n"))
                    .collect::<String>())
            }
        }
    }
}

fn replication_factor(partitions: &[spool_client::PartitionInfo]) -> usize {
    partitions.first().map_or(0, |p| p.replicas.len())
}

async fn describe(admin: &Admin, json: bool, name: &str, all_configs: bool) -> Result<(), String> {
    let topic = admin
        .describe_topic(name)
        .await
        .map_err(|e| e.to_string())?;
    let partitions = topic.topic_partitions();
    let isolation = IsolationLevel::ReadUncommitted;
    let starts = admin
        .list_offsets(&partitions, OffsetSpec::Earliest, isolation)
        .await
        .map_err(|e| e.to_string())?;
    let ends = admin
        .list_offsets(&partitions, OffsetSpec::Latest, isolation)
        .await
        .map_err(|e| e.to_string())?;
    let configs: Vec<_> = admin
        .describe_configs(ConfigResource::Topic, name, None)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|c| all_configs || !c.is_default())
        .collect();
    let offsets = |p: i32| {
        let tp = (name.to_string(), p);
        (
            starts.get(&tp).copied().unwrap_or(-1),
            ends.get(&tp).copied().unwrap_or(-1),
        )
    };
    if json {
        let partitions: Vec<_> = topic
            .partitions
            .iter()
            .map(|p| {
                let (start, end) = offsets(p.partition);
                json!({
                    "partition": p.partition,
                    "leader": p.leader,
                    "leader_epoch": p.leader_epoch,
                    "replicas": p.replicas,
                    "isr": p.isr,
                    "offline_replicas": p.offline_replicas,
                    "log_start_offset": start,
                    "high_watermark": end,
                })
            })
            .collect();
        let configs: serde_json::Map<String, serde_json::Value> = configs
            .iter()
            .map(|c| (c.name.clone(), json!(c.value)))
            .collect();
        return out_json(&json!({
            "name": topic.name,
            "topic_id": format!("{:032x}", topic.topic_id.as_u128()),
            "internal": topic.is_internal,
            "partitions": partitions,
            "configs": configs,
        }));
    }
    let mut text = format!(
        "NAME        {}\nINTERNAL    {}\nPARTITIONS  {}\nREPLICAS    {}\n\n",
        topic.name,
        topic.is_internal,
        topic.partitions.len(),
        replication_factor(&topic.partitions)
    );
    let mut table = Table::new(&[
        "PARTITION",
        "LEADER",
        "EPOCH",
        "REPLICAS",
        "ISR",
        "LOG-START-OFFSET",
        "HIGH-WATERMARK",
    ]);
    for p in &topic.partitions {
        let (start, end) = offsets(p.partition);
        table.row(vec![
            p.partition.to_string(),
            p.leader.to_string(),
            p.leader_epoch.to_string(),
            ids(&p.replicas),
            ids(&p.isr),
            start.to_string(),
            end.to_string(),
        ]);
    }
    text.push_str(&table.render());
    if !configs.is_empty() {
        let mut table = Table::new(&["CONFIG", "VALUE"]);
        for c in &configs {
            let value = if c.is_sensitive {
                "(sensitive)".to_string()
            } else {
                c.value.clone().unwrap_or_default()
            };
            table.row(vec![c.name.clone(), value]);
        }
        text.push('\n');
        text.push_str(&table.render());
    }
    out(&text)
}

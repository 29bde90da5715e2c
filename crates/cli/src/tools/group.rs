//! `spool group list|describe|reset-offsets|delete`.

use std::collections::BTreeMap;

use serde_json::json;
use spool_client::{Admin, GroupDescription, IsolationLevel, OffsetSpec, TopicPartition};

use super::consume::{now_ms, time_ms};
use super::{Connect, Table, out, out_json, select_partitions};

#[derive(clap::Subcommand, Debug)]
pub enum GroupCommand {
    /// List consumer groups with their state.
    List,
    /// A group's members, their partitions, committed offsets and lag.
    Describe { group: String },
    /// Move a group's committed offsets. Prints the plan; `--execute` applies it, which
    /// the broker allows only while the group has no members.
    ResetOffsets(ResetArgs),
    /// Delete groups (they must have no members).
    Delete {
        #[arg(required = true)]
        groups: Vec<String>,
    },
}

#[derive(clap::Args, Debug)]
pub struct ResetArgs {
    pub group: String,
    /// The topic whose offsets move (all partitions, or `--partition`).
    #[arg(long, short = 't')]
    pub topic: String,
    /// Only these partitions. Repeatable.
    #[arg(long = "partition", short = 'p')]
    pub partitions: Vec<i32>,
    /// To each partition's first offset.
    #[arg(long, group = "to")]
    pub to_earliest: bool,
    /// To each partition's end.
    #[arg(long, group = "to")]
    pub to_latest: bool,
    /// To the first offset at or after a time: milliseconds since the epoch, or `-10m`
    /// for that long ago.
    #[arg(long, group = "to", allow_hyphen_values = true)]
    pub to_time: Option<String>,
    /// To this offset (kept within the log's bounds).
    #[arg(long, group = "to")]
    pub to_offset: Option<i64>,
    /// By this many records from the committed offset (negative: back), kept within the
    /// log's bounds.
    #[arg(long, group = "to", allow_hyphen_values = true)]
    pub shift_by: Option<i64>,
    /// Apply the plan (without it, only print it).
    #[arg(long)]
    pub execute: bool,
}

pub async fn run(connect: &Connect, command: GroupCommand) -> Result<(), String> {
    let admin = Admin::new(connect.client().await?);
    match command {
        GroupCommand::List => {
            let groups = admin.list_groups().await.map_err(|e| e.to_string())?;
            if connect.json {
                let list: Vec<_> = groups
                    .iter()
                    .map(|g| json!({ "group": g.group_id, "state": g.state, "type": g.group_type, "protocol_type": g.protocol_type }))
                    .collect();
                return out_json(&json!(list));
            }
            let mut table = Table::new(&["GROUP", "STATE", "TYPE"]);
            for g in groups {
                table.row(vec![g.group_id, g.state, g.group_type]);
            }
            out(&table.render())
        }
        GroupCommand::Describe { group } => describe(&admin, connect.json, &group).await,
        GroupCommand::ResetOffsets(args) => reset(&admin, connect.json, args).await,
        GroupCommand::Delete { groups } => {
            for group in &groups {
                admin.delete_group(group).await.map_err(|e| e.to_string())?;
            }
            if connect.json {
                out_json(&json!({ "deleted": groups }))
            } else {
                out(&groups
                    .iter()
                    .map(|g| format!("deleted group {g}\n"))
                    .collect::<String>())
            }
        }
    }
}

async fn describe(admin: &Admin, json: bool, group: &str) -> Result<(), String> {
    let description = admin
        .describe_group(group)
        .await
        .map_err(|e| e.to_string())?;
    let lags = admin
        .group_lag(&description, IsolationLevel::ReadUncommitted)
        .await
        .map_err(|e| e.to_string())?;
    let total_lag: i64 = lags.iter().map(|l| l.lag).sum();
    let member = |id: &Option<String>| {
        id.as_ref()
            .and_then(|id| description.members.iter().find(|m| &m.member_id == id))
    };
    if json {
        let members: Vec<_> = description
            .members
            .iter()
            .map(|m| {
                let assignment: Vec<_> = m
                    .assignment
                    .iter()
                    .map(|(t, p)| json!({ "topic": t, "partition": p }))
                    .collect();
                json!({
                    "member_id": m.member_id,
                    "instance_id": m.instance_id,
                    "client_id": m.client_id,
                    "host": m.client_host,
                    "assignment": assignment,
                })
            })
            .collect();
        let partitions: Vec<_> = lags
            .iter()
            .map(|l| {
                json!({
                    "topic": l.topic,
                    "partition": l.partition,
                    "committed_offset": l.committed,
                    "log_end_offset": l.log_end,
                    "lag": l.lag,
                    "member_id": l.member_id,
                })
            })
            .collect();
        return out_json(&json!({
            "group": description.group_id,
            "coordinator": description.coordinator,
            "state": description.state,
            "type": description.group_type,
            "assignor": description.assignor,
            "members": members,
            "partitions": partitions,
            "total_lag": total_lag,
        }));
    }
    let mut text = format!(
        "GROUP        {}\nCOORDINATOR  {}\nSTATE        {}\nTYPE         {}\nASSIGNOR     {}\nMEMBERS      {}\nTOTAL-LAG    {total_lag}\n\n",
        description.group_id,
        description.coordinator,
        description.state,
        description.group_type,
        description.assignor,
        description.members.len(),
    );
    let mut table = Table::new(&[
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
        "MEMBER-ID",
        "CLIENT-ID",
        "HOST",
    ]);
    for l in &lags {
        let owner = member(&l.member_id);
        table.row(vec![
            l.topic.clone(),
            l.partition.to_string(),
            l.committed.map_or("-".into(), |c| c.to_string()),
            l.log_end.to_string(),
            l.lag.to_string(),
            l.member_id.clone().unwrap_or_else(|| "-".into()),
            owner.map_or("-".into(), |m| m.client_id.clone()),
            owner.map_or("-".into(), |m| m.client_host.clone()),
        ]);
    }
    text.push_str(&table.render());
    out(&text)
}

async fn reset(admin: &Admin, json: bool, args: ResetArgs) -> Result<(), String> {
    let description = admin.describe_group(&args.group).await.or_else(|e| {
        // A group that does not exist yet may be given offsets to start from.
        if e.code() == Some(spool_client::ErrorCode::GroupIdNotFound) {
            Ok(GroupDescription {
                group_id: args.group.clone(),
                state: "Dead".into(),
                protocol_type: String::new(),
                assignor: String::new(),
                group_type: String::new(),
                coordinator: -1,
                members: Vec::new(),
            })
        } else {
            Err(e.to_string())
        }
    })?;
    if args.execute && !description.is_inactive() {
        return Err(format!(
            "group {}: offsets can only be reset while the group is inactive, but its state is {} with {} member(s)",
            args.group,
            description.state,
            description.members.len()
        ));
    }
    let topic = admin
        .describe_topic(&args.topic)
        .await
        .map_err(|e| e.to_string())?;
    let partitions = select_partitions(&topic, &args.partitions)?;
    let isolation = IsolationLevel::ReadUncommitted;
    let listed = |spec| admin.list_offsets(&partitions, spec, isolation);
    let earliest = listed(OffsetSpec::Earliest)
        .await
        .map_err(|e| e.to_string())?;
    let latest = listed(OffsetSpec::Latest)
        .await
        .map_err(|e| e.to_string())?;
    let committed = admin
        .committed_offsets(&args.group)
        .await
        .map_err(|e| e.to_string())?;
    let targets: BTreeMap<TopicPartition, i64> = if args.to_earliest {
        earliest.clone()
    } else if args.to_latest {
        latest.clone()
    } else if let Some(time) = &args.to_time {
        let ms = time_ms(time, now_ms())?
            .ok_or_else(|| format!("--to-time {time}: expected milliseconds or -DURATION"))?;
        listed(OffsetSpec::Timestamp(ms))
            .await
            .map_err(|e| e.to_string())?
    } else if let Some(offset) = args.to_offset {
        partitions.iter().map(|tp| (tp.clone(), offset)).collect()
    } else if let Some(shift) = args.shift_by {
        partitions
            .iter()
            .map(|tp| {
                let from = committed
                    .get(tp)
                    .copied()
                    .or_else(|| latest.get(tp).copied())
                    .unwrap_or(0);
                (tp.clone(), from.saturating_add(shift))
            })
            .collect()
    } else {
        return Err(
            "say where to: --to-earliest, --to-latest, --to-time, --to-offset or --shift-by".into(),
        );
    };
    // Kept within each partition's log, as Kafka's tool keeps them.
    let plan: BTreeMap<TopicPartition, i64> = targets
        .into_iter()
        .map(|(tp, offset)| {
            let low = earliest.get(&tp).copied().unwrap_or(0);
            let high = latest.get(&tp).copied().unwrap_or(low).max(low);
            let offset = offset.clamp(low, high);
            (tp, offset)
        })
        .collect();
    if args.execute {
        admin
            .commit_offsets(&args.group, &plan)
            .await
            .map_err(|e| e.to_string())?;
    }
    if json {
        let rows: Vec<_> = plan
            .iter()
            .map(|(tp, new)| json!({ "topic": tp.0, "partition": tp.1, "current_offset": committed.get(tp), "new_offset": new }))
            .collect();
        return out_json(
            &json!({ "group": args.group, "executed": args.execute, "partitions": rows }),
        );
    }
    let mut table = Table::new(&["TOPIC", "PARTITION", "CURRENT-OFFSET", "NEW-OFFSET"]);
    for (tp, new) in &plan {
        table.row(vec![
            tp.0.clone(),
            tp.1.to_string(),
            committed.get(tp).map_or("-".into(), |c| c.to_string()),
            new.to_string(),
        ]);
    }
    let mut text = table.render();
    if args.execute {
        text.push_str(&format!("offsets of group {} reset\n", args.group));
    } else {
        text.push_str("dry run: nothing changed (add --execute to apply)\n");
    }
    out(&text)
}

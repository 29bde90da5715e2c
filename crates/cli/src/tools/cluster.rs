//! `spool cluster info|health`.

use serde_json::json;
use spool_client::{Admin, ClusterMetadata};

use super::{Connect, Table, out, out_json};

#[derive(clap::Subcommand, Debug)]
pub enum ClusterCommand {
    /// The cluster ID, the controller and the brokers.
    Info,
    /// Whether every partition has a leader and a full ISR and every broker answers.
    /// Exits with status 1 when not.
    Health,
}

pub async fn run(connect: &Connect, command: ClusterCommand) -> Result<(), String> {
    let admin = Admin::new(connect.client().await?);
    let cluster = admin.cluster().await.map_err(|e| e.to_string())?;
    match command {
        ClusterCommand::Info => info(connect.json, &cluster),
        ClusterCommand::Health => health(&admin, connect.json, &cluster).await,
    }
}

fn info(json: bool, cluster: &ClusterMetadata) -> Result<(), String> {
    if json {
        let brokers: Vec<_> = cluster
            .brokers
            .values()
            .map(
                |b| json!({ "node_id": b.node_id, "host": b.host, "port": b.port, "rack": b.rack }),
            )
            .collect();
        return out_json(&json!({
            "cluster_id": cluster.cluster_id,
            "controller_id": cluster.controller_id,
            "brokers": brokers,
            "topics": cluster.topics.len(),
        }));
    }
    let mut text = format!(
        "CLUSTER     {}\nCONTROLLER  {}\nTOPICS      {}\n\n",
        cluster.cluster_id.as_deref().unwrap_or("-"),
        cluster.controller_id,
        cluster.topics.len()
    );
    let mut table = Table::new(&["ID", "HOST", "PORT", "RACK"]);
    for b in cluster.brokers.values() {
        let id = if b.node_id == cluster.controller_id {
            format!("{}*", b.node_id)
        } else {
            b.node_id.to_string()
        };
        table.row(vec![
            id,
            b.host.clone(),
            b.port.to_string(),
            b.rack.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    text.push_str(&table.render());
    out(&text)
}

async fn health(admin: &Admin, json: bool, cluster: &ClusterMetadata) -> Result<(), String> {
    let mut leaderless = Vec::new();
    let mut under_replicated = Vec::new();
    for topic in cluster.topics.values() {
        for p in &topic.partitions {
            let name = format!("{}/{}", topic.name, p.partition);
            if p.leader < 0 || !cluster.brokers.contains_key(&p.leader) {
                leaderless.push(name);
            } else if p.isr.len() < p.replicas.len() {
                under_replicated.push(name);
            }
        }
    }
    // Each listed broker must answer a request of its own (ApiVersions changes nothing).
    let mut unreachable = Vec::new();
    for node in cluster.brokers.keys() {
        let request = spool_client::protocol::messages::ApiVersionsRequest::default();
        if admin.client().send_to(*node, request).await.is_err() {
            unreachable.push(*node);
        }
    }
    let healthy = leaderless.is_empty() && under_replicated.is_empty() && unreachable.is_empty();
    if json {
        out_json(&json!({
            "healthy": healthy,
            "brokers": cluster.brokers.keys().collect::<Vec<_>>(),
            "unreachable_brokers": unreachable,
            "leaderless_partitions": leaderless,
            "under_replicated_partitions": under_replicated,
        }))?;
    } else {
        let list = |items: &[String]| {
            if items.is_empty() {
                "none".to_string()
            } else {
                items.join(" ")
            }
        };
        let unreachable_text: Vec<String> = unreachable.iter().map(i32::to_string).collect();
        out(&format!(
            "HEALTHY                      {}\nBROKERS                      {}\nUNREACHABLE BROKERS          {}\nLEADERLESS PARTITIONS        {}\nUNDER-REPLICATED PARTITIONS  {}\n",
            if healthy { "yes" } else { "no" },
            cluster.brokers.len(),
            list(&unreachable_text),
            list(&leaderless),
            list(&under_replicated),
        ))?;
    }
    if healthy {
        Ok(())
    } else {
        Err("the cluster is not healthy".into())
    }
}

//! The operator's commands (`spool topic …`, `spool produce`, `spool consume`): thin over
//! spool-client, talking to any Kafka-compatible broker. Output is a table for people by
//! default and JSON (`--json`) for scripts; errors name the broker, the topic or partition,
//! and the Kafka error that came back.

pub mod acl;
pub mod bench;
pub mod cluster;
pub mod consume;
pub mod group;
pub mod produce;
pub mod quota;
pub mod topic;
pub mod user;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use spool_client::{
    Client, ClientConfig, SaslMechanism, SaslSettings, SecurityProtocol, TlsSettings,
};

/// Where the cluster is and how to print: shared by every client command.
#[derive(clap::Args, Debug, Clone)]
pub struct Connect {
    /// Brokers to bootstrap from, HOST:PORT[,HOST:PORT…].
    #[arg(
        long,
        env = "SPOOL_BROKERS",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    pub brokers: String,
    /// The client ID brokers see.
    #[arg(long, default_value = "spool-cli", global = true)]
    pub client_id: String,
    /// How long to wait for each answer, in milliseconds.
    #[arg(long, default_value_t = 30_000, global = true)]
    pub timeout_ms: u64,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (Kafka's `security.protocol`).
    #[arg(
        long,
        env = "SPOOL_SECURITY_PROTOCOL",
        default_value = "PLAINTEXT",
        global = true
    )]
    pub security_protocol: SecurityProtocol,
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with SASL_PLAINTEXT and SASL_SSL).
    #[arg(long, env = "SPOOL_SASL_MECHANISM", global = true)]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// The SASL user name.
    #[arg(long, env = "SPOOL_SASL_USERNAME", global = true)]
    pub sasl_username: Option<String>,
    /// The SASL password (better from the environment than on the command line).
    #[arg(
        long,
        env = "SPOOL_SASL_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub sasl_password: Option<String>,
    /// CA certificates (PEM) brokers' certificates must chain to; the system's otherwise.
    #[arg(long, env = "SPOOL_SSL_CA_LOCATION", global = true)]
    pub ssl_ca_location: Option<PathBuf>,
    /// This client's certificate chain (PEM), for brokers that ask for one.
    #[arg(long, env = "SPOOL_SSL_CERTIFICATE_LOCATION", global = true)]
    pub ssl_certificate_location: Option<PathBuf>,
    /// The private key (PEM) of the client certificate.
    #[arg(long, env = "SPOOL_SSL_KEY_LOCATION", global = true)]
    pub ssl_key_location: Option<PathBuf>,
}

impl Connect {
    /// The client settings these options make.
    pub fn config(&self) -> Result<ClientConfig, String> {
        let mut config = ClientConfig::new(&self.brokers);
        config.client_id = self.client_id.clone();
        config.request_timeout = Duration::from_millis(self.timeout_ms.max(1));
        config.security_protocol = self.security_protocol;
        config.tls = TlsSettings {
            ca_file: self.ssl_ca_location.clone(),
            certificate_file: self.ssl_certificate_location.clone(),
            key_file: self.ssl_key_location.clone(),
        };
        if self.security_protocol.uses_sasl() {
            let (Some(mechanism), Some(username), Some(password)) = (
                self.sasl_mechanism,
                self.sasl_username.clone(),
                self.sasl_password.clone(),
            ) else {
                return Err(format!(
                    "--security-protocol {} needs --sasl-mechanism, --sasl-username and \
                     --sasl-password (or SPOOL_SASL_PASSWORD)",
                    self.security_protocol.name()
                ));
            };
            config.sasl = Some(SaslSettings {
                mechanism,
                username,
                password,
            });
        }
        Ok(config)
    }

    pub async fn client(&self) -> Result<Client, String> {
        Client::connect(self.config()?)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Writes `text` to stdout. A closed stdout (`| head`) ends the command quietly.
pub fn out(text: &str) -> Result<(), String> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))
}

/// Prints one JSON value on a line of its own.
pub fn out_json(value: &serde_json::Value) -> Result<(), String> {
    out(&format!("{value}\n"))
}

/// A table with aligned columns, as the commands print for people.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            rows: vec![headers.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut text = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let pad = widths[c] - cell.chars().count();
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

/// Splits `KEY=VALUE`.
pub fn key_value(setting: &str) -> Result<(String, String), String> {
    setting
        .split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .ok_or_else(|| format!("{setting:?}: expected KEY=VALUE"))
}

/// The partitions of `topic` a command works on: all of them, or those `wanted` names,
/// each of which must exist.
pub fn select_partitions(
    topic: &spool_client::TopicInfo,
    wanted: &[i32],
) -> Result<Vec<spool_client::TopicPartition>, String> {
    let mut partitions = topic.topic_partitions();
    if !wanted.is_empty() {
        for p in wanted {
            if !partitions.iter().any(|(_, q)| q == p) {
                return Err(format!("topic {} has no partition {p}", topic.name));
            }
        }
        partitions.retain(|(_, p)| wanted.contains(p));
    }
    Ok(partitions)
}

/// Joins node IDs for a table cell: `0,1,2`.
pub fn ids(nodes: &[i32]) -> String {
    nodes
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_aligns_its_columns_and_trims_line_ends() {
        let mut table = Table::new(&["NAME", "PARTITIONS"]);
        table.row(vec!["orders".into(), "6".into()]);
        table.row(vec!["a".into(), "12".into()]);
        assert_eq!(
            table.render(),
            "NAME    PARTITIONS\norders  6\na       12\n"
        );
    }
}

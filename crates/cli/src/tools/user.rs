//! `spool user create|delete|list`: SCRAM users (AlterUserScramCredentials,
//! DescribeUserScramCredentials). The password is salted by the CLI; only the salt and
//! the salted password reach the cluster.

use std::io::BufRead;

use serde_json::json;
use spool_client::{Admin, ScramMechanism};

use super::{Connect, Table, out, out_json};

#[derive(clap::Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user, or set a new password for one, for one SCRAM mechanism.
    Create(CreateArgs),
    /// Delete a user's SCRAM credentials (every mechanism unless --mechanism).
    Delete(DeleteArgs),
    /// The users with SCRAM credentials, or those named, with mechanisms and iterations.
    List { users: Vec<String> },
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    pub user: String,
    /// The password; read from the first line of stdin when left out.
    #[arg(long, env = "SPOOL_USER_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// SCRAM-SHA-256 or SCRAM-SHA-512.
    #[arg(long, default_value = "SCRAM-SHA-256")]
    pub mechanism: String,
    /// PBKDF2 iterations (at least 4096, as Kafka requires).
    #[arg(long, default_value_t = 4096)]
    pub iterations: u32,
}

#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    pub user: String,
    /// Only this mechanism's credential.
    #[arg(long)]
    pub mechanism: Option<String>,
}

fn mechanism(text: &str) -> Result<ScramMechanism, String> {
    ScramMechanism::parse(text)
        .ok_or_else(|| format!("--mechanism {text}: SCRAM-SHA-256 or SCRAM-SHA-512"))
}

fn mechanism_name(m: ScramMechanism) -> String {
    m.name().replace('_', "-")
}

pub async fn run(connect: &Connect, command: UserCommand) -> Result<(), String> {
    match command {
        UserCommand::Create(args) => {
            let mechanism = mechanism(&args.mechanism)?;
            let password = match args.password {
                Some(password) => password,
                None => {
                    let mut line = String::new();
                    std::io::stdin()
                        .lock()
                        .read_line(&mut line)
                        .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            if password.is_empty() {
                return Err("the password is empty".into());
            }
            let admin = Admin::new(connect.client().await?);
            admin
                .upsert_user(&args.user, mechanism, &password, args.iterations)
                .await
                .map_err(|e| e.to_string())?;
            out(&format!(
                "user {} has a {} credential\n",
                args.user,
                mechanism_name(mechanism)
            ))
        }
        UserCommand::Delete(args) => {
            let only = args.mechanism.as_deref().map(mechanism).transpose()?;
            let admin = Admin::new(connect.client().await?);
            let mechanisms = match only {
                Some(m) => vec![m],
                None => admin
                    .describe_users(Some(std::slice::from_ref(&args.user)))
                    .await
                    .map_err(|e| e.to_string())?
                    .remove(&args.user)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| c.mechanism)
                    .collect(),
            };
            for m in &mechanisms {
                admin
                    .delete_user(&args.user, *m)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let names: Vec<String> = mechanisms.into_iter().map(mechanism_name).collect();
            out(&format!(
                "deleted user {} ({})\n",
                args.user,
                names.join(", ")
            ))
        }
        UserCommand::List { users } => {
            let admin = Admin::new(connect.client().await?);
            let wanted = (!users.is_empty()).then_some(users.as_slice());
            let described = admin
                .describe_users(wanted)
                .await
                .map_err(|e| e.to_string())?;
            if connect.json {
                let users: Vec<_> = described
                    .iter()
                    .map(|(user, credentials)| {
                        let credentials: Vec<_> = credentials
                            .iter()
                            .map(|c| json!({"mechanism": mechanism_name(c.mechanism), "iterations": c.iterations}))
                            .collect();
                        json!({"user": user, "credentials": credentials})
                    })
                    .collect();
                return out_json(&json!(users));
            }
            let mut table = Table::new(&["USER", "MECHANISM", "ITERATIONS"]);
            for (user, credentials) in &described {
                for c in credentials {
                    table.row(vec![
                        user.clone(),
                        mechanism_name(c.mechanism),
                        c.iterations.to_string(),
                    ]);
                }
            }
            out(&table.render())
        }
    }
}

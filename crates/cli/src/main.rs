//! `spool`: the Spool binary. `spool server` runs a broker with embedded defaults; the
//! other subcommands are the operator's tools ([`tools`]), thin over spool-client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

mod dev;
mod tools;

use clap::{Parser, Subcommand};
use spool_broker::admin_api::AdminApi;
use spool_broker::config::{DEFAULT_LISTENER, Listener};
use spool_broker::{BrokerConfig, BrokerState, ConfigError};
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "spool",
    version,
    about = "Spool: a Kafka-compatible event-streaming platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    connect: tools::Connect,
    /// How log lines on stderr look: `text`, or `json` (one object per line) for a log
    /// collector. The level comes from SPOOL_LOG (`warn` by default; e.g. `info`,
    /// `spool_broker=debug`).
    #[arg(long, global = true, env = "SPOOL_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker (Kafka protocol on 127.0.0.1:9092, data in ./spool-data); alone, or
    /// one node of a cluster with `controller.quorum.voters`.
    Server(ServerArgs),
    /// Development tools.
    #[command(subcommand)]
    Dev(DevCommand),
    /// Create, list, describe, alter and delete topics.
    #[command(subcommand)]
    Topic(tools::topic::TopicCommand),
    /// The cluster's brokers and controller, and its health.
    #[command(subcommand)]
    Cluster(tools::cluster::ClusterCommand),
    /// List, describe (members, lag), reset offsets of and delete consumer groups.
    #[command(subcommand)]
    Group(tools::group::GroupCommand),
    /// Create, list and delete ACLs (the broker must run an authorizer).
    #[command(subcommand)]
    Acl(tools::acl::AclCommand),
    /// Create, delete and list SCRAM users.
    #[command(subcommand)]
    User(tools::user::UserCommand),
    /// Describe and alter client quotas.
    #[command(subcommand)]
    Quota(tools::quota::QuotaCommand),
    /// Load generator: produce, consume or end-to-end, with throughput and latency.
    #[command(subcommand)]
    Bench(tools::bench::BenchCommand),
    /// Send lines of stdin to a topic as records.
    Produce(tools::produce::ProduceArgs),
    /// Print a topic's records.
    Consume(tools::consume::ConsumeArgs),
}

#[derive(Subcommand)]
enum DevCommand {
    /// Run a local cluster: one `spool server` process per node on loopback.
    Cluster(dev::ClusterArgs),
}

#[derive(clap::Args)]
struct ServerArgs {
    /// A TOML file of settings by their Kafka names (`"num.partitions" = 6`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where partition logs and metadata live (`log.dirs`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The Kafka listener, HOST:PORT (or Kafka's `NAME://HOST:PORT,…` list); port 0 picks
    /// a free port (`listeners`).
    #[arg(long)]
    listen: Option<String>,
    /// The admin API listener, HOST:PORT (`/metrics`, `/health`, `/ready`); port 0 picks
    /// a free port; `off` serves none.
    #[arg(
        long,
        env = "SPOOL_ADMIN_LISTEN",
        default_value = "127.0.0.1:9644",
        value_parser = admin_address
    )]
    admin_listen: AdminAddress,
    /// Any broker setting by its Kafka name, e.g. `--set num.partitions=6`. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    settings: Vec<String>,
}

/// Where the admin API listens, if anywhere.
#[derive(Clone, Copy)]
struct AdminAddress(Option<SocketAddr>);

fn admin_address(value: &str) -> Result<AdminAddress, String> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(AdminAddress(None));
    }
    value
        .parse()
        .map(|address| AdminAddress(Some(address)))
        .map_err(|_| format!("expected HOST:PORT or `off`, not {value:?}"))
}

/// Settings from a TOML file: nested tables and dotted keys both become Kafka's dotted names.
fn file_settings(path: &PathBuf) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) {
        for (key, value) in table {
            let name = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(inner) => flatten(&name, inner, out),
                toml::Value::String(s) => out.push((name, s.clone())),
                other => out.push((name, other.to_string())),
            }
        }
    }
    let mut out = Vec::new();
    flatten("", &table, &mut out);
    Ok(out)
}

/// `SPOOL_NUM_PARTITIONS=6` sets `num.partitions`.
fn env_settings() -> Vec<(String, String)> {
    std::env::vars()
        .filter_map(|(key, value)| {
            key.strip_prefix("SPOOL_")
                .map(|k| (k.to_ascii_lowercase().replace('_', "."), value))
        })
        .filter(|(key, _)| key != "brokers")
        .collect()
}

fn build_config(args: &ServerArgs) -> Result<BrokerConfig, String> {
    let mut config = BrokerConfig::default();
    let mut settings = Vec::new();
    if let Some(path) = &args.config {
        settings.extend(file_settings(path)?);
    }
    // The environment is shared with other tools (SPOOL_LOG, SPOOL_BROKERS, …): a SPOOL_*
    // name that is not a setting is not ours to refuse. Files and flags stay strict.
    for (key, value) in env_settings() {
        match config.set(&key, &value) {
            Ok(()) | Err(ConfigError::Unknown(_)) => {}
            Err(e) => return Err(format!("{e} (from the environment)")),
        }
    }
    for setting in &args.settings {
        let (key, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("--set {setting}: expected KEY=VALUE"))?;
        settings.push((key.trim().to_string(), value.to_string()));
    }
    if let Some(dir) = &args.data_dir {
        settings.push(("log.dirs".into(), dir.display().to_string()));
    }
    if let Some(listen) = &args.listen {
        settings.push(("listeners".into(), listen.clone()));
    }
    for (key, value) in settings {
        config.set(&key, &value).map_err(|e| e.to_string())?;
    }
    config.check().map_err(|e| e.to_string())?;
    Ok(config)
}

/// Prints a status line. A closed stdout must not stop a broker, so errors are ignored.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(line);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

async fn run_server(args: ServerArgs) -> Result<(), String> {
    let config = build_config(&args)?;
    // Every SSL listener's keys and certificates, and every SASL listener's users, are read
    // before anything is bound.
    let mut securities = spool_broker::server::securities(&config)?;
    let mut sockets = Vec::new();
    let mut bound = Vec::new();
    let mut controller = None;
    for listener in &config.listeners {
        let socket = TcpListener::bind(listener.address)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", listener.address))?;
        let address = socket.local_addr().map_err(|e| e.to_string())?;
        if config.is_controller_listener(&listener.name) {
            controller = Some((socket, address));
            continue;
        }
        bound.push(Listener {
            name: listener.name.clone(),
            address,
        });
        sockets.push((listener.name.clone(), socket));
    }
    // The admin API answers /health while the broker opens its logs and joins.
    let admin = AdminApi::new();
    let (stop, stopped) = watch::channel(false);
    let admin_server = match args.admin_listen.0 {
        Some(address) => {
            let socket = TcpListener::bind(address)
                .await
                .map_err(|e| format!("cannot listen on {address} (admin API): {e}"))?;
            let address = socket.local_addr().map_err(|e| e.to_string())?;
            say(format_args!("spool: admin API on http://{address}"));
            Some(tokio::spawn(spool_broker::admin_api::serve(
                Arc::clone(&admin),
                socket,
                stopped.clone(),
            )))
        }
        None => None,
    };
    let endpoints = config.endpoints(&bound);
    let data_dir = config.data_dir.clone();
    let (controller, controller_address) = controller.unzip();
    if let Some(address) = controller_address {
        say(format_args!("spool: controller listener on {address}"));
    }
    let state = BrokerState::start(config, endpoints, controller)
        .await
        .map_err(|e| format!("cannot start on {}: {e}", data_dir.display()))?;
    for listener in &bound {
        match listener.name.as_str() {
            DEFAULT_LISTENER => say(format_args!(
                "spool: Kafka listener on {}",
                listener.address
            )),
            name => say(format_args!(
                "spool: Kafka listener {name} on {}",
                listener.address
            )),
        }
    }
    say(format_args!("spool: data in {}", data_dir.display()));
    let servers: Vec<_> = sockets
        .into_iter()
        .map(|(name, socket)| {
            let security = securities.remove(&name).unwrap_or_default();
            tokio::spawn(spool_broker::server::serve(
                Arc::clone(&state),
                Box::new(socket),
                name,
                security,
                stopped.clone(),
            ))
        })
        .collect();
    let group_timers = tokio::spawn(spool_broker::group::runtime::run_timers(
        Arc::clone(&state),
        stopped.clone(),
    ));
    let maintenance = tokio::spawn(maintain(Arc::clone(&state), stopped));
    admin.serving(&state);
    wait_for_signal().await;
    say(format_args!("spool: shutting down"));
    // Controlled shutdown first: leadership moves away while clients are still served.
    state.leave().await;
    let _ = stop.send(true);
    for server in servers {
        let _ = server.await;
    }
    let _ = maintenance.await;
    if let Some(admin_server) = admin_server
        && let Ok(Err(e)) = admin_server.await
    {
        tracing::warn!(error = %e, "the admin API stopped with an error");
    }
    let _ = group_timers.await;
    // Requests parked in a group (a JoinGroup waiting for its rebalance) are answered
    // NOT_COORDINATOR, as when Kafka unloads a coordinator, and let go of the state.
    state.groups.detach();
    state.close().await.map_err(|e| e.to_string())?;
    say(format_args!("spool: stopped cleanly"));
    Ok(())
}

/// Runs log maintenance (retention, compaction, flushes) every
/// `log.retention.check.interval.ms` until shutdown.
async fn maintain(state: Arc<BrokerState>, mut stopped: watch::Receiver<bool>) {
    let period = Duration::from_millis(state.config.log_retention_check_interval_ms.max(1));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let state = Arc::clone(&state);
                let now = spool_broker::state::now_ms();
                let _ = tokio::task::spawn_blocking(move || state.maintain(now)).await;
            }
            _ = stopped.changed() => return,
        }
    }
}

async fn wait_for_signal() {
    listen_for_stop().await
}

/// Starts listening for Ctrl-C and SIGTERM now; the future resolves at the first of them.
fn listen_for_stop() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut terminate), Ok(mut interrupt)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            return Box::pin(async move {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
            });
        }
    }
    Box::pin(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SPOOL_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("spool: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Server(args) => runtime.block_on(run_server(args)),
        Command::Dev(DevCommand::Cluster(args)) => runtime.block_on(dev::run_cluster(args)),
        Command::Topic(command) => runtime.block_on(tools::topic::run(&cli.connect, command)),
        Command::Cluster(command) => runtime.block_on(tools::cluster::run(&cli.connect, command)),
        Command::Group(command) => runtime.block_on(tools::group::run(&cli.connect, command)),
        Command::Acl(command) => runtime.block_on(tools::acl::run(&cli.connect, command)),
        Command::User(command) => runtime.block_on(tools::user::run(&cli.connect, command)),
        Command::Quota(command) => runtime.block_on(tools::quota::run(&cli.connect, command)),
        Command::Bench(command) => runtime.block_on(tools::bench::run(&cli.connect, command)),
        Command::Produce(args) => runtime.block_on(tools::produce::run(&cli.connect, args)),
        Command::Consume(args) => runtime.block_on(tools::consume::run(&cli.connect, args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spool: {e}");
            ExitCode::FAILURE
        }
    }
}

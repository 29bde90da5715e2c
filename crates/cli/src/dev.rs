//! `spool dev cluster`: a local cluster for development, one `spool server` process per
//! node on loopback.
//!
//! Node `i` (0 to N-1) has node ID `i`, its Kafka listener on `base-port + i`, its
//! controller listener on `base-port + 100 + i`, its admin API (metrics, health) on
//! `base-port + 200 + i`, its data in `DIR/node-i` and its output
//! in `DIR/node-i.log`. Every node is a voter of the metadata quorum. A node that stops is
//! reported with the `spool server` command that starts it again; the others go on.
//! Ctrl-C or SIGTERM stops every node the same way (controlled shutdown first).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{listen_for_stop, say};

/// The controller listeners sit this far above the Kafka listeners.
pub const CONTROLLER_PORT_OFFSET: u16 = 100;
/// The admin API listeners sit this far above the Kafka listeners.
pub const ADMIN_PORT_OFFSET: u16 = 200;
/// At most this many nodes, so that no Kafka port meets a controller port.
const MAX_NODES: u16 = CONTROLLER_PORT_OFFSET - 1;
/// How long a stopping node may take before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the nodes may take to form the cluster and serve clients.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(100);

#[derive(clap::Args)]
pub struct ClusterArgs {
    /// How many nodes (each a broker and a controller).
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// Where each node keeps its data (`DIR/node-i`) and writes its output
    /// (`DIR/node-i.log`).
    #[arg(long, default_value = "./spool-cluster")]
    data_dir: PathBuf,
    /// Node i's Kafka listener is on this port + i, its controller listener on this
    /// port + 100 + i, its admin API on this port + 200 + i.
    #[arg(long, default_value_t = 9092)]
    base_port: u16,
    /// A broker setting for every node by its Kafka name, e.g.
    /// `--set default.replication.factor=3`. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    settings: Vec<String>,
}

/// The `spool server` arguments of node `i`.
fn node_args(args: &ClusterArgs, i: u16) -> Vec<String> {
    let voters = (0..args.nodes)
        .map(|n| {
            format!(
                "{n}@127.0.0.1:{}",
                args.base_port + CONTROLLER_PORT_OFFSET + n
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    let mut out = vec![
        "server".to_string(),
        "--data-dir".to_string(),
        args.data_dir
            .join(format!("node-{i}"))
            .display()
            .to_string(),
        "--listen".to_string(),
        format!(
            "PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}",
            args.base_port + i,
            args.base_port + CONTROLLER_PORT_OFFSET + i
        ),
        "--admin-listen".to_string(),
        format!("127.0.0.1:{}", args.base_port + ADMIN_PORT_OFFSET + i),
        "--set".to_string(),
        format!("node.id={i}"),
        "--set".to_string(),
        format!("controller.quorum.voters={voters}"),
    ];
    for setting in &args.settings {
        out.push("--set".to_string());
        out.push(setting.clone());
    }
    out
}

fn log_path(dir: &Path, i: u16) -> PathBuf {
    dir.join(format!("node-{i}.log"))
}

struct Node {
    index: u16,
    child: Child,
}

fn start_node(args: &ClusterArgs, i: u16) -> Result<Node, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let path = log_path(&args.data_dir, i);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let errors = log
        .try_clone()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let child = Command::new(exe)
        .args(node_args(args, i))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(errors)
        .spawn()
        .map_err(|e| format!("cannot start node {i}: {e}"))?;
    Ok(Node { index: i, child })
}

/// Whether node `i`'s output says it serves clients (the line `spool server` prints once
/// it has joined), counting only what it wrote after `from` bytes.
fn serving(dir: &Path, i: u16, from: u64) -> bool {
    std::fs::read(log_path(dir, i)).is_ok_and(|bytes| {
        let start = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).contains("spool: Kafka listener")
    })
}

/// Asks a node to stop (SIGTERM), as Ctrl-C would.
fn terminate(node: &Node) {
    #[cfg(unix)]
    {
        if let Some(pid) = i32::try_from(node.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
    #[cfg(not(unix))]
    {
        let _ = node;
    }
}

/// Stops every node still running: SIGTERM to all, then a bounded wait for each.
async fn stop_all(nodes: &mut [Node]) {
    for node in nodes.iter() {
        terminate(node);
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    for node in nodes.iter_mut() {
        loop {
            match node.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    say(format_args!(
                        "spool: node {} did not stop in time; killing it",
                        node.index
                    ));
                    let _ = node.child.kill();
                    let _ = node.child.wait();
                    break;
                }
                Ok(None) => tokio::time::sleep(POLL).await,
            }
        }
    }
}

/// Takes out the nodes that have exited, each with how.
fn exited(nodes: &mut Vec<Node>) -> Vec<(u16, String)> {
    let mut gone = Vec::new();
    nodes.retain_mut(|node| match node.child.try_wait() {
        Ok(None) => true,
        Ok(Some(status)) => {
            gone.push((node.index, status.to_string()));
            false
        }
        Err(e) => {
            gone.push((node.index, e.to_string()));
            false
        }
    });
    gone
}

pub async fn run_cluster(args: ClusterArgs) -> Result<(), String> {
    if args.nodes == 0 || args.nodes > MAX_NODES {
        return Err(format!("--nodes must be 1 to {MAX_NODES}"));
    }
    if u32::from(args.base_port) + u32::from(ADMIN_PORT_OFFSET) + u32::from(args.nodes)
        > u32::from(u16::MAX)
    {
        return Err(format!(
            "--base-port {} leaves no room for {} nodes' listeners",
            args.base_port, args.nodes
        ));
    }
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| format!("{}: {e}", args.data_dir.display()))?;
    let offsets: Vec<u64> = (0..args.nodes)
        .map(|i| std::fs::metadata(log_path(&args.data_dir, i)).map_or(0, |m| m.len()))
        .collect();
    // Listening for Ctrl-C and SIGTERM starts before the first child: a signal in
    // between stops the children too.
    let mut signal = listen_for_stop();
    let mut nodes = Vec::new();
    for i in 0..args.nodes {
        match start_node(&args, i) {
            Ok(node) => nodes.push(node),
            Err(e) => {
                stop_all(&mut nodes).await;
                return Err(e);
            }
        }
        say(format_args!(
            "spool: node {i}: Kafka on 127.0.0.1:{}, controller on 127.0.0.1:{}, admin API on \
             127.0.0.1:{}, output in {}",
            args.base_port + i,
            args.base_port + CONTROLLER_PORT_OFFSET + i,
            args.base_port + ADMIN_PORT_OFFSET + i,
            log_path(&args.data_dir, i).display()
        ));
    }
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut ready = false;
    loop {
        if !ready && (0..args.nodes).all(|i| serving(&args.data_dir, i, offsets[usize::from(i)])) {
            ready = true;
            let bootstrap = (0..args.nodes)
                .map(|i| format!("127.0.0.1:{}", args.base_port + i))
                .collect::<Vec<_>>()
                .join(",");
            say(format_args!(
                "spool: cluster ready; bootstrap servers {bootstrap}"
            ));
        }
        if !ready && Instant::now() > deadline {
            stop_all(&mut nodes).await;
            return Err(format!(
                "the nodes did not form a cluster within {} s; see their output in {}",
                READY_TIMEOUT.as_secs(),
                args.data_dir.display()
            ));
        }
        // A node that stops is reported with how to start it again by hand; the others
        // go on.
        for (index, status) in exited(&mut nodes) {
            say(format_args!(
                "spool: node {index} stopped ({status}); see {}. Start it again with: spool {}",
                log_path(&args.data_dir, index).display(),
                node_args(&args, index).join(" ")
            ));
        }
        if nodes.is_empty() {
            return Err("every node has stopped".into());
        }
        tokio::select! {
            _ = &mut signal => break,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
    say(format_args!("spool: stopping the cluster"));
    stop_all(&mut nodes).await;
    say(format_args!("spool: cluster stopped"));
    Ok(())
}

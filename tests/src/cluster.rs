//! The local three-node RabbitMQ cluster of `scripts/rabbitmq-cluster.sh` (nodes
//! `warren-c1@<host>` .. `warren-c3@<host>`, AMQP on 127.0.0.1:5681..5683), for the tests that
//! put warren in front of a real cluster (`tests/cluster.rs`).
//!
//! Nodes are numbered 1 to 3, as in the script. Their names and ports come from the script
//! itself (`scripts/rabbitmq-cluster.sh nodes`), so there is one place that says them.
//! `rabbitmqctl` reaches a node with `-n` ([`ctl`]). Users and permissions are cluster-wide
//! ([`ClusterUser`]), and so is `list_connections`: whichever node it asks, it lists the
//! connections of every running node, so the node of each connection is told by its `port`
//! column, the node's AMQP port ([`all_connections`], [`connections_on`]).
//!
//! A test that stops, kills or cuts off a node does it through a [`Cluster`] guard, which
//! brings every node back (and resumes suspended listeners) when it is dropped, whether the
//! test passed or failed.

use crate::broker::{rabbitmqctl, rabbitmqctl_blocking, BrokerConnection};
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use warren_runtime::config::{UpstreamUrl, Upstreams};

/// How many nodes the cluster has.
pub const NODES: usize = 3;

/// Upper bound for `scripts/rabbitmq-cluster.sh start` when the cluster is not running yet
/// (about 30 s on a 2-core machine) and for a node to stop or start.
pub const NODE_LIMIT: Duration = Duration::from_secs(120);

/// One node of the cluster, as the script names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// 1, 2 or 3.
    pub number: usize,
    /// Erlang node name, e.g. `warren-c1@myhost`.
    pub name: String,
    /// Its AMQP port on 127.0.0.1.
    pub amqp_port: u16,
    /// Its Erlang distribution port.
    pub dist_port: u16,
}

impl Node {
    /// Its AMQP address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.amqp_port))
    }
}

/// The path of `scripts/rabbitmq-cluster.sh`.
#[must_use]
pub fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join("rabbitmq-cluster.sh")
}

/// Runs `scripts/rabbitmq-cluster.sh ARGS` and returns its standard output; a failure carries
/// both outputs. Blocks: from async code use [`run_script`].
pub fn run_script_blocking(args: &[&str]) -> Result<String> {
    let path = script();
    let out = Command::new("bash")
        .arg(&path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", path.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "scripts/rabbitmq-cluster.sh {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// [`run_script_blocking`] on the blocking pool.
pub async fn run_script(args: &[&str]) -> Result<String> {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_script_blocking(&args)
    })
    .await
    .context("rabbitmq-cluster.sh task")?
}

/// The three nodes (read once from `scripts/rabbitmq-cluster.sh nodes`).
pub fn nodes() -> Result<&'static [Node]> {
    static NODES_: OnceLock<std::result::Result<Vec<Node>, String>> = OnceLock::new();
    NODES_
        .get_or_init(|| {
            let out = run_script_blocking(&["nodes"]).map_err(|e| format!("{e:#}"))?;
            parse_nodes(&out).map_err(|e| format!("{e:#}"))
        })
        .as_deref()
        .map_err(|e| anyhow!("{e}"))
}

fn parse_nodes(out: &str) -> Result<Vec<Node>> {
    let nodes = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            let f: Vec<&str> = line.split_whitespace().collect();
            ensure!(f.len() == 3, "unexpected line from `nodes`: {line:?}");
            Ok(Node {
                number: i + 1,
                name: f[0].to_owned(),
                amqp_port: f[1].parse().context("AMQP port")?,
                dist_port: f[2].parse().context("distribution port")?,
            })
        })
        .collect::<Result<Vec<Node>>>()?;
    ensure!(nodes.len() == NODES, "expected {NODES} nodes: {out}");
    Ok(nodes)
}

/// Node `n` (1 to 3).
pub fn node(n: usize) -> Result<&'static Node> {
    nodes()?
        .get(n.wrapping_sub(1))
        .with_context(|| format!("there is no node {n} (nodes are 1 to {NODES})"))
}

/// The `upstream` setting of a warren in front of the nodes `numbers`, in that order.
pub fn upstreams_of(numbers: &[usize]) -> Result<Upstreams> {
    let urls = numbers
        .iter()
        .map(|&n| {
            let node = node(n)?;
            Ok(UpstreamUrl {
                tls: false,
                host: "127.0.0.1".to_owned(),
                port: node.amqp_port,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Upstreams::new(urls))
}

/// The `upstream` setting of a warren in front of the whole cluster (nodes 1, 2, 3).
pub fn upstreams() -> Result<Upstreams> {
    upstreams_of(&[1, 2, 3])
}

/// The node whose AMQP port is `port`, if any.
pub fn node_of_port(port: u16) -> Option<usize> {
    nodes()
        .ok()?
        .iter()
        .find(|n| n.amqp_port == port)
        .map(|n| n.number)
}

/// Runs `rabbitmqctl -q -n <node n> ARGS` and returns its standard output.
pub async fn ctl(n: usize, args: &[&str]) -> Result<String> {
    let name = node(n)?.name.clone();
    let mut all = vec!["-n", name.as_str()];
    all.extend_from_slice(args);
    rabbitmqctl(&all).await
}

/// [`ctl`], blocking.
pub fn ctl_blocking(n: usize, args: &[&str]) -> Result<String> {
    let name = node(n)?.name.clone();
    let mut all = vec!["-n", name.as_str()];
    all.extend_from_slice(args);
    rabbitmqctl_blocking(&all)
}

/// Runs `rabbitmqctl` against the first node that answers (for cluster-wide things: users,
/// permissions, queues, connections). Blocking. A node that is down is passed over; an error
/// of the command itself is returned as it is.
pub fn ctl_any_blocking(args: &[&str]) -> Result<String> {
    let mut errors = Vec::new();
    for n in 1..=NODES {
        match ctl_blocking(n, args) {
            Ok(out) => return Ok(out),
            Err(e) if unreachable_node(&e) => errors.push(format!("node {n}: {e:#}")),
            Err(e) => return Err(e),
        }
    }
    Err(anyhow!(
        "no node of the cluster answers: {}",
        errors.join("; ")
    ))
}

/// Whether a `rabbitmqctl` error says that it could not reach its node (rather than that the
/// command failed there).
fn unreachable_node(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}");
    text.contains("unable to perform an operation on node") || text.contains("nodedown")
}

/// [`ctl_any_blocking`] on the blocking pool.
pub async fn ctl_any(args: &[&str]) -> Result<String> {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ctl_any_blocking(&args)
    })
    .await
    .context("rabbitmqctl task")?
}

/// Every AMQP connection of the cluster now, each with the node that holds it.
/// `rabbitmqctl list_connections` lists the connections of every running node, whichever node
/// it asks; the `port` column (the node's AMQP port) says which node has each.
pub async fn all_connections() -> Result<Vec<(usize, BrokerConnection)>> {
    let out = ctl_any(&[
        "list_connections",
        "port",
        "name",
        "user",
        "vhost",
        "client_properties",
        "--formatter",
        "json",
    ])
    .await?;
    parse_connections(&out)?
        .into_iter()
        .map(|(port, c)| {
            let n = node_of_port(port)
                .with_context(|| format!("connection {} on port {port}: no such node", c.name))?;
            Ok((n, c))
        })
        .collect()
}

/// The AMQP connections node `n` has now.
pub async fn connections_on(n: usize) -> Result<Vec<BrokerConnection>> {
    Ok(all_connections()
        .await?
        .into_iter()
        .filter(|(on, _)| *on == n)
        .map(|(_, c)| c)
        .collect())
}

/// How many broker connections warren holds for `user` on each node: element `i` is node
/// `i + 1` (a node that is down has none).
pub async fn warren_connections_per_node(user: &str) -> Result<[usize; NODES]> {
    let mut counts = [0; NODES];
    for (n, c) in all_connections().await? {
        if c.user == user && is_warren(&c) {
            counts[n - 1] += 1;
        }
    }
    Ok(counts)
}

/// The one node on which warren holds broker connections for `user`; fails if there are
/// none or they are on several nodes.
pub async fn the_node_of(user: &str) -> Result<usize> {
    let counts = warren_connections_per_node(user).await?;
    let used: Vec<usize> = (1..=NODES).filter(|n| counts[n - 1] > 0).collect();
    ensure!(
        used.len() == 1,
        "expected warren's connections for {user} on exactly one node, found {counts:?} \
         (per node 1..{NODES})"
    );
    Ok(used[0])
}

fn is_warren(c: &BrokerConnection) -> bool {
    c.connection_name
        .as_deref()
        .is_some_and(|n| n.starts_with("warren"))
}

/// Whether node `n`'s Erlang VM answers the CLI.
pub async fn node_answers(n: usize) -> bool {
    ctl(n, &["eval", "ok."]).await.is_ok()
}

/// `list_connections` rows (with the `port` column) as (port, connection).
fn parse_connections(out: &str) -> Result<Vec<(u16, BrokerConnection)>> {
    let out = out.trim();
    if out.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<Value> =
        serde_json::from_str(out).with_context(|| format!("parsing list_connections: {out}"))?;
    rows.into_iter()
        .map(|row| {
            let field = |k: &str| {
                row.get(k)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| anyhow!("list_connections row without `{k}`: {row}"))
            };
            let port = row
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| anyhow!("list_connections row without `port`: {row}"))?;
            let client_properties = row
                .get("client_properties")
                .map(table_to_json)
                .unwrap_or(Value::Null);
            let connection_name = client_properties
                .get("connection_name")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let c = BrokerConnection {
                name: field("name")?,
                user: field("user")?,
                vhost: field("vhost")?,
                connection_name,
                client_properties,
            };
            Ok((port, c))
        })
        .collect()
}

/// rabbitmqctl's `[key, type, value]` triples as a JSON object (tables nested).
fn table_to_json(v: &Value) -> Value {
    let triple = |t: &Value| {
        t.as_array()
            .is_some_and(|t| t.len() == 3 && t[0].is_string() && t[1].is_string())
    };
    match v {
        Value::Array(items) if items.iter().all(triple) => Value::Object(
            items
                .iter()
                .filter_map(|t| {
                    let t = t.as_array()?;
                    let value = if t[1].as_str() == Some("table") {
                        table_to_json(&t[2])
                    } else {
                        t[2].clone()
                    };
                    Some((t[0].as_str()?.to_owned(), value))
                })
                .collect(),
        ),
        _ => v.clone(),
    }
}

/// Guard over the cluster for one test: makes sure all three nodes run when created, and
/// undoes what the test did to them when dropped — stopped or killed nodes are started again,
/// suspended listeners resumed — even if the test fails half-way.
#[derive(Debug)]
pub struct Cluster {
    /// Nodes this guard stopped or killed and has not started again.
    stopped: Mutex<BTreeSet<usize>>,
    /// Nodes whose listeners this guard suspended and has not resumed.
    suspended: Mutex<BTreeSet<usize>>,
}

impl Cluster {
    /// All three nodes running and clustered: `scripts/rabbitmq-cluster.sh status`, and when
    /// something is missing, `start` (which makes the cluster, about 30 s, or starts the
    /// missing nodes).
    pub async fn up() -> Result<Cluster> {
        if run_script(&["status"]).await.is_err() {
            eprintln!("the cluster is not complete: running scripts/rabbitmq-cluster.sh start");
            let started = Instant::now();
            crate::within(NODE_LIMIT, "scripts/rabbitmq-cluster.sh start", async {
                run_script(&["start"]).await
            })
            .await??;
            eprintln!("the cluster started in {:?}", started.elapsed());
        }
        Ok(Cluster {
            stopped: Mutex::new(BTreeSet::new()),
            suspended: Mutex::new(BTreeSet::new()),
        })
    }

    /// Stops node `n` cleanly (`rabbitmqctl -n <node> stop`): its connections are closed with
    /// `320 CONNECTION_FORCED`, its listener goes away. Returns how long it took.
    pub async fn stop_node(&self, n: usize) -> Result<Duration> {
        self.stopped.lock().expect("stopped").insert(n);
        let started = Instant::now();
        crate::within(NODE_LIMIT, &format!("stopping node {n}"), async {
            run_script(&["stop-node", &n.to_string()]).await
        })
        .await??;
        Ok(started.elapsed())
    }

    /// Kills node `n`'s Erlang VM (SIGKILL): its sockets are reset without any AMQP goodbye.
    pub async fn kill_node(&self, n: usize) -> Result<()> {
        self.stopped.lock().expect("stopped").insert(n);
        run_script(&["kill-node", &n.to_string()]).await.map(drop)
    }

    /// Starts node `n` again and waits until it is back in the cluster. Returns how long it
    /// took.
    pub async fn start_node(&self, n: usize) -> Result<Duration> {
        let started = Instant::now();
        crate::within(NODE_LIMIT, &format!("starting node {n}"), async {
            run_script(&["start-node", &n.to_string()]).await
        })
        .await??;
        self.stopped.lock().expect("stopped").remove(&n);
        Ok(started.elapsed())
    }

    /// Node `n` stops accepting new AMQP connections (`rabbitmqctl suspend_listeners`: its
    /// listening socket closes, so a connect is refused); its open connections are untouched.
    pub async fn suspend_listeners(&self, n: usize) -> Result<()> {
        self.suspended.lock().expect("suspended").insert(n);
        ctl(n, &["suspend_listeners"]).await.map(drop)
    }

    /// Node `n` accepts connections again.
    pub async fn resume_listeners(&self, n: usize) -> Result<()> {
        ctl(n, &["resume_listeners"]).await?;
        self.suspended.lock().expect("suspended").remove(&n);
        Ok(())
    }

    /// Resumes the listeners of every node this guard suspended.
    pub async fn resume_all_listeners(&self) -> Result<()> {
        let suspended: Vec<usize> = self
            .suspended
            .lock()
            .expect("suspended")
            .iter()
            .copied()
            .collect();
        for n in suspended {
            self.resume_listeners(n).await?;
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let suspended = std::mem::take(&mut *self.suspended.lock().expect("suspended"));
        let stopped = std::mem::take(&mut *self.stopped.lock().expect("stopped"));
        for n in suspended {
            if !stopped.contains(&n) {
                if let Err(e) = ctl_blocking(n, &["resume_listeners"]) {
                    eprintln!("cleanup: resuming the listeners of node {n}: {e:#}");
                }
            }
        }
        if !stopped.is_empty() {
            eprintln!("cleanup: starting node(s) {stopped:?} again");
            // `start` starts whatever is missing and checks the whole cluster.
            if let Err(e) = run_script_blocking(&["start"]) {
                eprintln!("cleanup: the cluster could not be restored: {e:#}");
            }
        }
    }
}

/// A user on the cluster (users are cluster-wide) that exists for one test: full permissions
/// on `/`, deleted on drop. Warren's broker connections are per (user, password, vhost), so a
/// test's own user makes them attributable to that test.
#[derive(Debug)]
pub struct ClusterUser {
    /// User name.
    pub name: String,
    /// Password.
    pub password: String,
}

impl ClusterUser {
    /// Creates user `{prefix}-{unique}` with permissions on `/`, through any running node.
    pub async fn create(prefix: &str) -> Result<ClusterUser> {
        let name = crate::unique(prefix);
        let password = format!("pw-{}", crate::unique("secret"));
        ctl_any(&["add_user", &name, &password]).await?;
        let user = ClusterUser { name, password };
        ctl_any(&["set_permissions", "-p", "/", &user.name, ".*", ".*", ".*"]).await?;
        Ok(user)
    }
}

impl Drop for ClusterUser {
    fn drop(&mut self) {
        if let Err(e) = ctl_any_blocking(&["delete_user", &self.name]) {
            eprintln!("cleanup: {e:#}");
        }
    }
}

/// Deletes queue `name` (vhost `/`) through any running node, if it exists.
pub async fn delete_queue(name: &str) -> Result<()> {
    match ctl_any(&["delete_queue", "-p", "/", name]).await {
        Ok(_) => Ok(()),
        Err(e)
            if {
                let text = e.to_string().to_lowercase();
                text.contains("not_found") || text.contains("not found")
            } =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_scripts_node_list() {
        let nodes =
            parse_nodes("warren-c1@h 5681 25681\nwarren-c2@h 5682 25682\nwarren-c3@h 5683 25683\n")
                .unwrap();
        assert_eq!(nodes[2].name, "warren-c3@h");
        assert_eq!(nodes[2].number, 3);
        assert_eq!(nodes[1].addr(), SocketAddr::from(([127, 0, 0, 1], 5682)));
        assert!(parse_nodes("warren-c1@h 5681 25681\n").is_err());
    }

    #[test]
    fn parses_a_nodes_connections() {
        let json = r#"[
          {"port":5682,"name":"127.0.0.1:40000 -> 127.0.0.1:5682","user":"u","vhost":"/",
           "client_properties":[["connection_name","longstr","warren@h u@/ u1"]]}
        ]"#;
        let conns = parse_connections(json).unwrap();
        assert_eq!(conns.len(), 1);
        assert_eq!(conns[0].0, 5682);
        assert!(is_warren(&conns[0].1));
        assert!(parse_connections("[\n]").unwrap().is_empty());
        assert!(parse_connections("").unwrap().is_empty());
    }
}

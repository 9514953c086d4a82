//! The broker's side: `rabbitmqctl` to look at connections and queues and to create users and
//! vhosts that belong to one test.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::OnceLock;

/// The command line that runs `rabbitmqctl`: `$WARREN_TEST_RABBITMQCTL` if set (split on
/// spaces), else `rabbitmqctl` as root and `sudo -n rabbitmqctl` otherwise.
fn rabbitmqctl_command() -> &'static [String] {
    static CMD: OnceLock<Vec<String>> = OnceLock::new();
    CMD.get_or_init(|| {
        if let Ok(cmd) = std::env::var("WARREN_TEST_RABBITMQCTL") {
            return cmd.split_whitespace().map(str::to_owned).collect();
        }
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(true);
        if root {
            vec!["rabbitmqctl".to_owned()]
        } else {
            vec!["sudo".to_owned(), "-n".to_owned(), "rabbitmqctl".to_owned()]
        }
    })
}

/// Runs `rabbitmqctl -q ARGS` and returns its standard output; a non-zero exit is an error
/// that carries standard error. Blocks: from async code use [`rabbitmqctl`].
pub fn rabbitmqctl_blocking(args: &[&str]) -> Result<String> {
    let cmd = rabbitmqctl_command();
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .arg("-q")
        .args(args)
        .output()
        .with_context(|| format!("running {cmd:?} (is RabbitMQ installed? scripts/rabbitmq.sh)"))?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `rabbitmqctl -q ARGS` on the blocking pool and returns its standard output.
pub async fn rabbitmqctl(args: &[&str]) -> Result<String> {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        rabbitmqctl_blocking(&args)
    })
    .await
    .context("rabbitmqctl task")?
}

/// The rows of a `rabbitmqctl list_*` command (`args`: the command, its options and the
/// columns), read with the JSON formatter.
pub async fn list(args: &[&str]) -> Result<Vec<Value>> {
    let mut args = args.to_vec();
    args.extend(["--formatter", "json"]);
    parse_rows(args[0], &listing(&args).await?)
}

/// The output of `rabbitmqctl -q ARGS`, a `list_*` command.
///
/// A listing asks each channel or connection process for its row; one that crashes while
/// asked (other tests crash broker channels on purpose: a stream consumer from no offset,
/// a recover of a stream's delivery) fails the whole command with a `badrpc`. Listing
/// changes nothing, so such a failure is retried, a few times.
pub async fn listing(args: &[&str]) -> Result<String> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match rabbitmqctl(args).await {
            Err(e) if attempts < 4 && format!("{e:#}").contains("badrpc") => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            result => return result,
        }
    }
}

/// A JSON formatter's output: no rows when empty.
fn parse_rows(command: &str, out: &str) -> Result<Vec<Value>> {
    let out = out.trim();
    if out.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(out).with_context(|| format!("parsing {command} output: {out}"))
}

/// One AMQP connection as the broker lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerConnection {
    /// The broker's name for it: `"peer:port -> local:port"`; differs for every TCP connection.
    pub name: String,
    /// The user it authenticated as.
    pub user: String,
    /// Its vhost.
    pub vhost: String,
    /// The `connection_name` client property, if the client sent one.
    pub connection_name: Option<String>,
    /// All client properties, as plain JSON (tables become objects).
    pub client_properties: Value,
}

/// Every AMQP connection the broker has now.
pub async fn all_connections() -> Result<Vec<BrokerConnection>> {
    let rows = list(&[
        "list_connections",
        "name",
        "user",
        "vhost",
        "client_properties",
    ])
    .await?;
    to_connections(rows)
}

/// The broker connections opened by a warren (their `connection_name` starts with `warren`).
pub async fn broker_connections() -> Result<Vec<BrokerConnection>> {
    Ok(all_connections()
        .await?
        .into_iter()
        .filter(|c| {
            c.connection_name
                .as_deref()
                .is_some_and(|n| n.starts_with("warren"))
        })
        .collect())
}

/// The broker connections opened by a warren for `user` (a [`TestUser`] owned by one test, so
/// only that test's warren can have them).
pub async fn warren_connections_of(user: &str) -> Result<Vec<BrokerConnection>> {
    Ok(broker_connections()
        .await?
        .into_iter()
        .filter(|c| c.user == user)
        .collect())
}

/// Connections from `list_connections` rows.
fn to_connections(rows: Vec<Value>) -> Result<Vec<BrokerConnection>> {
    rows.into_iter()
        .map(|row| {
            let field = |k: &str| {
                row.get(k)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| anyhow!("list_connections row without `{k}`: {row}"))
            };
            let client_properties = row
                .get("client_properties")
                .map(amqp_table_to_json)
                .unwrap_or(Value::Null);
            let connection_name = client_properties
                .get("connection_name")
                .and_then(Value::as_str)
                .map(str::to_owned);
            Ok(BrokerConnection {
                name: field("name")?,
                user: field("user")?,
                vhost: field("vhost")?,
                connection_name,
                client_properties,
            })
        })
        .collect()
}

/// rabbitmqctl prints AMQP tables as lists of `[key, type, value]` triples (nested for
/// `table`); this turns them into JSON objects. Anything else is returned as it is.
fn amqp_table_to_json(v: &Value) -> Value {
    match v {
        Value::Array(items) if items.iter().all(is_triple) => Value::Object(
            items
                .iter()
                .filter_map(|t| {
                    let t = t.as_array()?;
                    let key = t[0].as_str()?.to_owned();
                    let value = if t[1].as_str() == Some("table") {
                        amqp_table_to_json(&t[2])
                    } else {
                        t[2].clone()
                    };
                    Some((key, value))
                })
                .collect(),
        ),
        _ => v.clone(),
    }
}

fn is_triple(v: &Value) -> bool {
    v.as_array()
        .is_some_and(|t| t.len() == 3 && t[0].is_string() && t[1].is_string())
}

/// Message counts of a queue as the broker reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    /// Ready plus unacknowledged.
    pub messages: u64,
    /// Ready for delivery.
    pub ready: u64,
    /// Delivered and not yet acknowledged.
    pub unacked: u64,
}

/// The counts of queue `name` in `vhost`, or `None` if there is no such queue.
pub async fn queue_counts(vhost: &str, name: &str) -> Result<Option<QueueCounts>> {
    let rows = list(&[
        "list_queues",
        "-p",
        vhost,
        "name",
        "messages",
        "messages_ready",
        "messages_unacknowledged",
    ])
    .await?;
    let num = |row: &Value, k: &str| row.get(k).and_then(Value::as_u64).unwrap_or(0);
    Ok(rows
        .iter()
        .find(|r| r.get("name").and_then(Value::as_str) == Some(name))
        .map(|r| QueueCounts {
            messages: num(r, "messages"),
            ready: num(r, "messages_ready"),
            unacked: num(r, "messages_unacknowledged"),
        }))
}

/// The exchanges of `vhost`, by name, with their types.
pub async fn exchanges(vhost: &str) -> Result<BTreeMap<String, String>> {
    let rows = list(&["list_exchanges", "-p", vhost, "name", "type"]).await?;
    let text = |row: &Value, k: &str| row.get(k).and_then(Value::as_str).map(str::to_owned);
    rows.iter()
        .map(|row| {
            text(row, "name")
                .zip(text(row, "type"))
                .ok_or_else(|| anyhow!("list_exchanges row without a name or type: {row}"))
        })
        .collect()
}

/// Deletes queue `name` in `vhost` if it exists (cleanup after a test).
pub async fn delete_queue(vhost: &str, name: &str) -> Result<()> {
    match rabbitmqctl(&["delete_queue", "-p", vhost, name]).await {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("not_found") || e.to_string().contains("NOT_FOUND") => {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Closes the broker connection named `name` (as in [`BrokerConnection::name`]) with `reason`.
/// `rabbitmqctl close_connection` takes the connection's Erlang pid, so it is looked up first;
/// the JSON formatter prints pids in a form the command does not take, the table form it does.
pub async fn close_connection(name: &str, reason: &str) -> Result<()> {
    let out = listing(&["list_connections", "--no-table-headers", "pid", "name"]).await?;
    let pid = out
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .find(|(_, n)| n.trim() == name)
        .map(|(pid, _)| pid.trim().to_owned())
        .with_context(|| format!("no broker connection named {name:?}: {out}"))?;
    rabbitmqctl(&["close_connection", &pid, reason])
        .await
        .map(drop)
}

/// A broker user that exists for one test: full permissions on `/`, deleted on drop.
///
/// A test that counts warren's broker connections uses its own user, because warren's
/// upstream connections are per (user, password, vhost) and so attributable to that test.
#[derive(Debug)]
pub struct TestUser {
    /// User name.
    pub name: String,
    /// Password.
    pub password: String,
}

impl TestUser {
    /// Creates user `{prefix}-{unique}` with a random-ish password and permissions on `/`.
    pub async fn create(prefix: &str) -> Result<TestUser> {
        let name = crate::unique(prefix);
        let password = format!("pw-{}", crate::unique("secret"));
        rabbitmqctl(&["add_user", &name, &password]).await?;
        let user = TestUser { name, password };
        user.grant("/").await?;
        Ok(user)
    }

    /// Gives this user configure/write/read permissions on `vhost`.
    pub async fn grant(&self, vhost: &str) -> Result<()> {
        rabbitmqctl(&["set_permissions", "-p", vhost, &self.name, ".*", ".*", ".*"])
            .await
            .map(drop)
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        if let Err(e) = rabbitmqctl_blocking(&["delete_user", &self.name]) {
            eprintln!("cleanup: {e:#}");
        }
    }
}

/// A broker vhost that exists for one test, deleted (with its queues) on drop.
#[derive(Debug)]
pub struct TestVhost {
    /// Vhost name.
    pub name: String,
}

impl TestVhost {
    /// Creates vhost `{prefix}-{unique}` and gives `guest` full permissions on it.
    pub async fn create(prefix: &str) -> Result<TestVhost> {
        let name = crate::unique(prefix);
        rabbitmqctl(&["add_vhost", &name]).await?;
        let vhost = TestVhost { name };
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            &vhost.name,
            crate::GUEST,
            ".*",
            ".*",
            ".*",
        ])
        .await?;
        Ok(vhost)
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        if let Err(e) = rabbitmqctl_blocking(&["delete_vhost", &self.name]) {
            eprintln!("cleanup: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rabbitmqctl_connection_rows() {
        let json = r#"[
          {"name":"127.0.0.1:40000 -> 127.0.0.1:5672","user":"u","vhost":"/",
           "client_properties":[["connection_name","longstr","warren@h u@/ u1"],
                                ["capabilities","table",[["basic.nack","bool",true]]]]},
          {"name":"127.0.0.1:40001 -> 127.0.0.1:5672","user":"guest","vhost":"/",
           "client_properties":[]}
        ]"#;
        let conns = to_connections(parse_rows("list_connections", json).unwrap()).unwrap();
        assert_eq!(conns.len(), 2);
        assert_eq!(conns[0].connection_name.as_deref(), Some("warren@h u@/ u1"));
        assert_eq!(
            conns[0].client_properties["capabilities"]["basic.nack"],
            Value::Bool(true)
        );
        assert_eq!(conns[1].connection_name, None);
        assert!(parse_rows("list_connections", "").unwrap().is_empty());
    }
}

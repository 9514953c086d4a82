//! Thin helpers over amqprs: URL parsing, connecting with a time limit, queue names and queue
//! setup/teardown.

use amqprs::channel::{Channel, QueueDeclareArguments, QueueDeleteArguments};
use amqprs::connection::{Connection, OpenConnectionArguments};
use anyhow::{anyhow, bail, Context, Result};
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where to connect, parsed from `amqp://user:pass@host:port/vhost`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
    /// Virtual host, percent-decoded.
    pub vhost: String,
}

impl Endpoint {
    /// Parses an `amqp://` URL as in RabbitMQ's URI spec: user and password default to
    /// `guest`, the port to 5672, the vhost to `/`; the vhost is percent-decoded.
    pub fn parse(url: &str) -> Result<Endpoint> {
        let rest = url
            .strip_prefix("amqp://")
            .ok_or_else(|| anyhow!("`{url}`: only amqp:// URLs are supported"))?;
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (rest, None),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (percent_decode(user)?, percent_decode(pass)?),
                None => (percent_decode(u)?, "guest".to_owned()),
            },
            None => ("guest".to_owned(), "guest".to_owned()),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| anyhow!("`{url}`: unclosed `[`"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().with_context(|| format!("`{url}`: bad port"))?,
                None => 5672,
            };
            (h.to_owned(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_owned(),
                    p.parse()
                        .with_context(|| format!("`{url}`: bad port `{p}`"))?,
                ),
                None => (hostport.to_owned(), 5672),
            }
        };
        if host.is_empty() {
            bail!("`{url}`: missing host");
        }
        let vhost = match path {
            None | Some("") => "/".to_owned(),
            Some(p) => percent_decode(p.split('?').next().unwrap_or(""))?,
        };
        Ok(Endpoint {
            host,
            port,
            user,
            password,
            vhost,
        })
    }

    /// The label used when `--target` is not given: RabbitMQ's port means "direct".
    #[must_use]
    pub fn default_label(&self) -> &'static str {
        if self.port == 5672 {
            "direct"
        } else {
            "warren"
        }
    }

    /// The URL without the password, for reports.
    #[must_use]
    pub fn display(&self) -> String {
        format!(
            "amqp://{}@{}:{}/{}",
            self.user,
            self.host,
            self.port,
            self.vhost.replace('/', "%2f")
        )
    }

    /// amqprs connection arguments for this endpoint. `heartbeat` 0 keeps the server's.
    #[must_use]
    pub fn args(&self, connection_name: &str) -> OpenConnectionArguments {
        OpenConnectionArguments::new(&self.host, self.port, &self.user, &self.password)
            .virtual_host(&self.vhost)
            .connection_name(connection_name)
            .finish()
    }
}

fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| anyhow!("`{s}`: truncated percent escape"))?;
            out.push(u8::from_str_radix(hex, 16).with_context(|| format!("`{s}`: bad escape"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).with_context(|| format!("`{s}`: not UTF-8 once decoded"))
}

/// Runs `fut` with a time limit; a timeout becomes an error naming `what`.
pub async fn timed<T, E>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = std::result::Result<T, E>>,
) -> Result<T>
where
    E: std::fmt::Display,
{
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(anyhow!("{what}: {e}")),
        Err(_) => Err(anyhow!("{what}: no answer within {limit:?}")),
    }
}

/// Opens a connection and one channel on it.
pub async fn connect(
    endpoint: &Endpoint,
    name: &str,
    limit: Duration,
) -> Result<(Connection, Channel)> {
    let conn = timed(limit, "connect", Connection::open(&endpoint.args(name))).await?;
    let ch = match timed(limit, "channel.open", conn.open_channel(None)).await {
        Ok(ch) => ch,
        Err(e) => {
            let _ = tokio::time::timeout(limit, conn.close()).await;
            return Err(e);
        }
    };
    Ok((conn, ch))
}

/// Closes a channel and its connection, both with a time limit.
pub async fn close(conn: Connection, ch: Option<Channel>, limit: Duration) -> Result<()> {
    if let Some(ch) = ch {
        timed(limit, "channel.close", ch.close()).await?;
    }
    timed(limit, "connection.close", conn.close()).await
}

/// A queue name unique to this process and moment: `<prefix>-<scenario>-<pid>-<micros>`.
#[must_use]
pub fn unique_queue(prefix: &str, scenario: &str) -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!("{prefix}-{scenario}-{}-{micros}", std::process::id())
}

/// Declares a transient, non-exclusive queue named `queue`.
pub async fn declare_queue(ch: &Channel, queue: &str, limit: Duration) -> Result<()> {
    timed(
        limit,
        "queue.declare",
        ch.queue_declare(QueueDeclareArguments::new(queue)),
    )
    .await?;
    Ok(())
}

/// The number of ready messages in `queue` (a passive declare: also a synchronous round trip
/// on `ch`, which proves every earlier frame on that channel was processed).
pub async fn queue_depth(ch: &Channel, queue: &str, limit: Duration) -> Result<u32> {
    let ok = timed(
        limit,
        "queue.declare(passive)",
        ch.queue_declare(QueueDeclareArguments::new(queue).passive(true).finish()),
    )
    .await?;
    Ok(ok.map(|(_, messages, _)| messages).unwrap_or(0))
}

/// Deletes `queue` over a fresh connection to `endpoint` (so it works even when the channels
/// of the run are broken), logging rather than failing.
pub async fn delete_queue(endpoint: &Endpoint, queue: &str, limit: Duration) {
    let result = async {
        let (conn, ch) = connect(endpoint, "warren-bench-cleanup", limit).await?;
        timed(
            limit,
            "queue.delete",
            ch.queue_delete(QueueDeleteArguments::new(queue)),
        )
        .await?;
        close(conn, Some(ch), limit).await
    }
    .await;
    if let Err(e) = result {
        eprintln!("warren-bench: could not delete queue {queue}: {e:#}");
    }
}

/// The first line of an error, for JSON reports.
#[must_use]
pub fn short(e: &anyhow::Error) -> String {
    let s = format!("{e:#}");
    s.lines().next().unwrap_or("").chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let e = Endpoint::parse("amqp://guest:guest@127.0.0.1:5673/%2f").unwrap();
        assert_eq!(
            e,
            Endpoint {
                host: "127.0.0.1".into(),
                port: 5673,
                user: "guest".into(),
                password: "guest".into(),
                vhost: "/".into()
            }
        );
        assert_eq!(e.default_label(), "warren");
        assert_eq!(e.display(), "amqp://guest@127.0.0.1:5673/%2f");
        let e = Endpoint::parse("amqp://localhost").unwrap();
        assert_eq!(
            (e.port, e.vhost.as_str(), e.user.as_str()),
            (5672, "/", "guest")
        );
        assert_eq!(e.default_label(), "direct");
        let e = Endpoint::parse("amqp://u%40x:p%3Aw@[::1]:5999/prod").unwrap();
        assert_eq!(
            (
                e.user.as_str(),
                e.password.as_str(),
                e.host.as_str(),
                e.port
            ),
            ("u@x", "p:w", "::1", 5999)
        );
        assert_eq!(e.vhost, "prod");
        assert!(Endpoint::parse("http://x").is_err());
        assert!(Endpoint::parse("amqp://x:port").is_err());
        assert!(Endpoint::parse("amqp://x/%2").is_err());
    }

    #[test]
    fn queue_names_are_unique_per_call() {
        let a = unique_queue("p", "s");
        std::thread::sleep(Duration::from_millis(2));
        let b = unique_queue("p", "s");
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("p-s-{}-", std::process::id())));
    }
}

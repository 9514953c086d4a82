//! Command-line options.
//!
//! The options every scenario shares are global (they may come before or after the scenario
//! name); `--count`, `--duration` and `--concurrency` default per scenario, as the help of
//! each scenario says.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::time::Duration;

/// warren listening on its default port, with RabbitMQ's default user.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5673/%2f";

/// `warren-bench <scenario> [options]`.
#[derive(Debug, Parser)]
#[command(
    name = "warren-bench",
    version,
    about = "AMQP load generator: measures RabbitMQ directly and through warren",
    long_about = "AMQP load generator: measures RabbitMQ directly and through warren.\n\n\
        Prints one JSON line on stdout (the result) and human-readable progress on stderr. \
        Every scenario is bounded by --count and --duration and cleans up its queue."
)]
pub struct Cli {
    /// What to measure.
    #[command(subcommand)]
    pub scenario: Scenario,
    /// Options shared by all scenarios.
    #[command(flatten)]
    pub common: Common,
}

/// The scenarios (docs/design.md, P1–P6).
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// P1: connect, open a channel, publish one message, close; reports connections/s.
    /// Defaults: --concurrency 8, --duration 10s, --count 1000000.
    Churn(ChurnOpts),
    /// P2: long-lived publishers of --size-byte messages into one queue; reports msgs/s.
    /// Defaults: --concurrency 4, --duration 10s, --count 10000000.
    Publish(PublishOpts),
    /// P3: consume a queue pre-filled with --count messages (through --fill-url); reports msgs/s.
    /// Defaults: --concurrency 1 consumer, --count 200000, --duration 60s.
    Consume(ConsumeOpts),
    /// P4: publish→deliver round trip of single messages; reports p50/p90/p99 in µs.
    /// Defaults: --count 10000 samples, --duration 30s.
    Latency(LatencyOpts),
    /// P6: open --count connections with one channel each (ramp-up limited to --concurrency
    /// at a time), hold them, close them. Defaults: --count 10000, --concurrency 100.
    Idle(IdleOpts),
    /// Not a scenario: runs a floor program (relay or responder) that `bench/run.sh` measures
    /// next to warren, until killed. See `floor.rs`.
    Floor(FloorOpts),
}

impl Scenario {
    /// The scenario's name as it appears in the JSON line.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Churn(_) => "churn",
            Scenario::Publish(o) if o.confirms => "publish_confirms",
            Scenario::Publish(_) => "publish",
            Scenario::Consume(_) => "consume",
            Scenario::Latency(_) => "latency",
            Scenario::Idle(_) => "idle",
            Scenario::Floor(_) => "floor",
        }
    }
}

/// Options shared by all scenarios.
#[derive(Debug, Args)]
pub struct Common {
    /// Where to connect: amqp://user:pass@host:port/vhost (vhost percent-encoded, %2f is `/`).
    #[arg(long, global = true, default_value = DEFAULT_URL)]
    pub url: String,
    /// Where to declare, inspect and delete the scenario's queue (and, for `consume`, fill it);
    /// defaults to --url. Pointing it at RabbitMQ keeps the setup out of the target's numbers
    /// and lets the cleanup work even when the target misbehaves.
    #[arg(long, global = true)]
    pub admin_url: Option<String>,
    /// Label of the target in the JSON line; by default `direct` for port 5672, else `warren`.
    #[arg(long, global = true)]
    pub target: Option<String>,
    /// Upper bound on the measured phase (e.g. `10s`, `500ms`, `2m`).
    #[arg(long, global = true, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Upper bound on operations: messages, connections or samples, depending on the scenario.
    #[arg(long, global = true)]
    pub count: Option<u64>,
    /// Concurrent loops, publishers, consumers or connection attempts, depending on the scenario.
    #[arg(long, global = true)]
    pub concurrency: Option<usize>,
    /// Message body size in bytes.
    #[arg(long, global = true, default_value_t = 100)]
    pub size: usize,
    /// Sample CPU time and memory of another process during the measured phase, as NAME=PID
    /// (e.g. `--watch warren=1234`); gives NAME_cpu_s, NAME_cpu_us_per_op, NAME_rss_kb, ...
    /// Repeatable. Also resets the process' peak RSS (VmHWM) when allowed to.
    #[arg(long, global = true, value_parser = parse_watch)]
    pub watch: Vec<Watch>,
    /// Extra KEY=VALUE copied into the JSON line (numbers stay numbers). Repeatable.
    #[arg(long, global = true, value_parser = parse_tag)]
    pub tag: Vec<(String, String)>,
    /// Worker threads of the load generator's tokio runtime.
    #[arg(long, global = true, default_value_t = 2)]
    pub threads: usize,
    /// Prefix of the queue names; the process id and a timestamp are appended.
    #[arg(long, global = true, default_value = "warren-bench")]
    pub queue_prefix: String,
    /// Time limit of any single AMQP operation (connect, declare, close, ...); a hang becomes an
    /// error instead of a stuck run.
    #[arg(long, global = true, default_value = "30s", value_parser = parse_duration)]
    pub op_timeout: Duration,
}

impl Common {
    /// `--admin-url`, or `--url`.
    #[must_use]
    pub fn admin_url(&self) -> &str {
        self.admin_url.as_deref().unwrap_or(&self.url)
    }

    /// `--duration`, or the scenario's default.
    #[must_use]
    pub fn duration_or(&self, default: Duration) -> Duration {
        self.duration.unwrap_or(default)
    }

    /// `--count`, or the scenario's default.
    #[must_use]
    pub fn count_or(&self, default: u64) -> u64 {
        self.count.unwrap_or(default)
    }

    /// `--concurrency` (at least 1), or the scenario's default.
    #[must_use]
    pub fn concurrency_or(&self, default: usize) -> usize {
        self.concurrency.unwrap_or(default).max(1)
    }
}

/// `churn` options.
#[derive(Debug, Args)]
pub struct ChurnOpts {
    /// Skip `Channel.Close` and let `Connection.Close` end the channel, as many short-lived
    /// clients do.
    #[arg(long)]
    pub no_channel_close: bool,
    /// Which client runs the cycles: `raw`, a minimal synchronous AMQP client like the
    /// php-amqplib that short-lived workers use (so the server's cost is what is measured), or
    /// `amqprs`, whose own per-connection latency (about 1.3 ms here) dominates through warren.
    #[arg(long, default_value = "raw", value_parser = ["raw", "amqprs"])]
    pub client: String,
}

/// `publish` options.
#[derive(Debug, Args)]
pub struct PublishOpts {
    /// Use publisher confirms (reported as scenario `publish_confirms`).
    #[arg(long)]
    pub confirms: bool,
    /// With --confirms: unconfirmed messages each publisher may have in flight.
    #[arg(long, default_value_t = 1000)]
    pub window: usize,
}

/// `consume` options.
#[derive(Debug, Args)]
pub struct ConsumeOpts {
    /// Where to pre-fill the queue: the RabbitMQ URL, so that only consumption goes through
    /// the target. Defaults to --admin-url, then --url.
    #[arg(long)]
    pub fill_url: Option<String>,
    /// basic.qos prefetch count of each consumer.
    #[arg(long, default_value_t = 1000)]
    pub prefetch: u16,
    /// Acknowledge with multiple=true once every this many deliveries (1 = one ack per message).
    #[arg(long, default_value_t = 100)]
    pub ack_every: u64,
}

/// `latency` options.
#[derive(Debug, Args)]
pub struct LatencyOpts {
    /// Round trips done first and not counted.
    #[arg(long, default_value_t = 200)]
    pub warmup: u64,
    /// Publish and consume on two channels of one connection instead of two connections.
    #[arg(long)]
    pub same_connection: bool,
}

/// `idle` options.
#[derive(Debug, Args)]
pub struct IdleOpts {
    /// How long to hold the connections once all are open.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub hold: Duration,
    /// After closing, how long to wait before the last memory sample of watched processes.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub settle: Duration,
}

/// `floor` options.
#[derive(Debug, Args)]
pub struct FloorOpts {
    /// Which floor: a transparent TCP relay, or a responder that answers the AMQP handshake
    /// itself and forwards publishes over one broker connection.
    #[arg(long, value_enum)]
    pub mode: FloorMode,
    /// Address to accept clients on.
    #[arg(long, default_value = "127.0.0.1:5674")]
    pub listen: SocketAddr,
    /// RabbitMQ's address (the responder logs in as guest/guest, vhost `/`).
    #[arg(long, default_value = "127.0.0.1:5672")]
    pub upstream: SocketAddr,
}

/// The two floor programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FloorMode {
    /// Copies bytes both ways between each client and its own broker connection.
    Relay,
    /// Answers the handshake with canned frames; publishes go to one broker connection.
    Responder,
}

/// A process to sample: `--watch NAME=PID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    /// Prefix of its fields in the JSON line.
    pub name: String,
    /// Its process id.
    pub pid: u32,
}

/// Parses `10s`, `250ms`, `1m30s`, or a bare number of seconds (`2.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(format!("`{s}` is not a valid duration"));
    }
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e}"))
}

fn parse_watch(s: &str) -> Result<Watch, String> {
    let (name, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected NAME=PID"))?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("`{name}`: NAME must be letters, digits or `_`"));
    }
    let pid = pid
        .parse()
        .map_err(|_| format!("`{pid}` is not a process id"))?;
    Ok(Watch {
        name: name.to_owned(),
        pid,
    })
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("`{s}`: empty KEY"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn watches_and_tags() {
        assert_eq!(
            parse_watch("warren=42"),
            Ok(Watch {
                name: "warren".into(),
                pid: 42
            })
        );
        assert!(parse_watch("warren").is_err());
        assert!(parse_watch("a-b=1").is_err());
        assert!(parse_watch("w=x").is_err());
        assert_eq!(parse_tag("rep=3"), Ok(("rep".into(), "3".into())));
        assert!(parse_tag("=3").is_err());
    }

    #[test]
    fn cli_parses_global_options_after_the_scenario() {
        let cli = Cli::try_parse_from([
            "warren-bench",
            "publish",
            "--confirms",
            "--url",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            "--duration",
            "3s",
            "--watch",
            "broker=7",
        ])
        .unwrap();
        assert_eq!(cli.scenario.name(), "publish_confirms");
        assert_eq!(cli.common.duration, Some(Duration::from_secs(3)));
        assert_eq!(cli.common.watch.len(), 1);
    }

    #[test]
    fn cli_parses_the_floor() {
        let cli = Cli::try_parse_from([
            "warren-bench",
            "floor",
            "--mode",
            "responder",
            "--listen",
            "127.0.0.1:6000",
        ])
        .unwrap();
        let Scenario::Floor(o) = cli.scenario else {
            panic!("not the floor");
        };
        assert_eq!(o.mode, FloorMode::Responder);
        assert_eq!(o.listen.port(), 6000);
        assert_eq!(o.upstream.port(), 5672);
    }
}

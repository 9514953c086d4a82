//! Cross-client comparison: a real client must not be able to tell warren from RabbitMQ (B2, B4,
//! B5). AMQP client libraries of other languages (pika, aio-pika, bunny, amqp091-go, amqplib,
//! php-amqp, amqp-tools) run the same small scenarios once directly against RabbitMQ and once
//! through an in-process warren, and each must *report* the same outcome both ways: the same
//! exception or error class, reply code and reply text.
//!
//! Each client has a probe in `tests/clients/` (its README describes them) that runs one
//! scenario and prints one line of JSON saying what the library reported. This file runs it
//! twice, with the same queue and vhost names, normalises only what must differ between the
//! two runs (the address connected to, object addresses in a message), and compares. A mismatch
//! prints both lines and, for multi-step scenarios, the steps that differ.
//!
//! `scripts/test-tools.sh` installs the libraries. A client whose runtime or library is
//! missing is skipped with a message, unless `CI` is set (and not `false` or `0`, as in
//! `scripts/test.sh`): CI installs them all, so there a missing client fails its tests.
//!
//! Every test has its own broker user (so its hub in warren is its own) and its own queue
//! names; every wait is an upper bound that turns a hung client into a failure.

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use warren_tests::{broker, unique, TestUser, Warren, BROKER_HOST, BROKER_PORT};

/// Upper bound on one probe run (the probes' own network timeouts are 20 s).
const PROBE_LIMIT: Duration = Duration::from_secs(40);
/// Upper bound on building the Go probe (cached after the first build) and on the checks that
/// a client is installed.
const BUILD_LIMIT: Duration = Duration::from_secs(60);

/// The clients, each with its probe in `tests/clients/`.
#[derive(Debug, Clone, Copy)]
enum Client {
    Pika,
    AioPika,
    Bunny,
    Amqp091Go,
    Amqplib,
    PhpAmqp,
    AmqpTools,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::Pika => "pika",
            Client::AioPika => "aio-pika",
            Client::Bunny => "bunny",
            Client::Amqp091Go => "amqp091-go",
            Client::Amqplib => "amqplib",
            Client::PhpAmqp => "php-amqp",
            Client::AmqpTools => "amqp-tools",
        }
    }

    /// The probe's command line (its arguments follow), or why this client is not installed.
    fn probe(self) -> Result<std::result::Result<Vec<String>, String>> {
        let dir = clients_dir();
        let file = |name: &str| dir.join(name).display().to_string();
        Ok(match self {
            Client::Pika | Client::AioPika => {
                let module = match self {
                    Client::Pika => "pika",
                    _ => "aio_pika",
                };
                let python = python();
                installed(&[&python, "-c", &format!("import {module}")])?
                    .map(|()| vec![python.clone(), file(&format!("{module}_probe.py"))])
            }
            Client::Bunny => installed(&["ruby", "-e", "require 'bunny'"])?
                .map(|()| vec!["ruby".into(), file("bunny_probe.rb")]),
            Client::Amqp091Go => match installed(&["go", "version"])? {
                Ok(()) if Path::new(AMQP091_GO_SOURCE).is_dir() => Ok(vec![build_go_probe()?]),
                Ok(()) => Err(format!("{AMQP091_GO_SOURCE} is missing")),
                Err(why) => Err(why),
            },
            Client::Amqplib => match installed(&["node", "--version"])? {
                Ok(()) if dir.join("node_modules/amqplib/package.json").is_file() => {
                    Ok(vec!["node".into(), file("amqplib_probe.js")])
                }
                Ok(()) => Err(format!("{}/node_modules/amqplib is missing", dir.display())),
                Err(why) => Err(why),
            },
            Client::PhpAmqp => {
                installed(&["php", "-r", "exit(class_exists('AMQPConnection') ? 0 : 1);"])?
                    .map(|()| vec!["php".into(), file("php_amqp_probe.php")])
            }
            Client::AmqpTools => installed(&["sh", "-c", "command -v amqp-get"])?
                .map(|()| vec!["bash".into(), file("amqp_tools_probe.sh")]),
        })
    }
}

/// The scenarios (the probes take their names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// Declare a queue, publish "hello", get it, delete the queue.
    PublishGet,
    /// Connect with a wrong password.
    WrongPassword,
    /// Connect to a vhost that does not exist.
    UnknownVhost,
    /// Passive declare of a missing queue (404), then a new channel on the same connection
    /// publishes and gets.
    PassiveMissingQueue,
    /// Connection A declares an exclusive queue; connection B (same credentials) tries a
    /// passive declare, a get and a delete of it, each on a new channel (405 each).
    ExclusiveLocked,
    /// An RPC over direct reply-to (`amq.rabbitmq.reply-to`) between two channels of one
    /// connection, then the two ways to misuse it: publishing with that reply-to without
    /// consuming it, and consuming it with acknowledgements (406 each).
    DirectReplyTo,
    /// A consumer receives a message; a second connection (same credentials, so through warren
    /// the same broker connection) deletes its queue; the library reports the broker's
    /// `basic.cancel` of that consumer; then the first connection publishes and gets again.
    ConsumerCancelled,
}

impl Scenario {
    fn named(name: &str) -> Scenario {
        match name {
            "publish_get" => Scenario::PublishGet,
            "wrong_password" => Scenario::WrongPassword,
            "unknown_vhost" => Scenario::UnknownVhost,
            "passive_missing_queue" => Scenario::PassiveMissingQueue,
            "exclusive_locked" => Scenario::ExclusiveLocked,
            "direct_reply_to" => Scenario::DirectReplyTo,
            "consumer_cancelled" => Scenario::ConsumerCancelled,
            _ => panic!("no scenario {name}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scenario::PublishGet => "publish_get",
            Scenario::WrongPassword => "wrong_password",
            Scenario::UnknownVhost => "unknown_vhost",
            Scenario::PassiveMissingQueue => "passive_missing_queue",
            Scenario::ExclusiveLocked => "exclusive_locked",
            Scenario::DirectReplyTo => "direct_reply_to",
            Scenario::ConsumerCancelled => "consumer_cancelled",
        }
    }

    /// Whether the scenario declares its queue (the others only connect).
    fn uses_queue(self) -> bool {
        !matches!(self, Scenario::WrongPassword | Scenario::UnknownVhost)
    }

    /// Against RabbitMQ itself the scenario must do what it says (otherwise comparing would
    /// prove nothing).
    fn check_direct(self, v: &Value) -> Result<()> {
        let is = |v: &Value, outcome: &str| v["outcome"] == outcome;
        let ok_hello = |v: &Value| is(v, "ok") && v["body"] == "hello";
        let refused = |v: &Value, code: u64| is(v, "error") && v["code"] == code;
        let expected = match self {
            Scenario::PublishGet => ok_hello(v),
            Scenario::WrongPassword | Scenario::UnknownVhost => is(v, "error"),
            Scenario::PassiveMissingQueue => refused(&v["passive"], 404) && ok_hello(&v["after"]),
            Scenario::ExclusiveLocked => ["passive", "get", "delete"]
                .iter()
                .all(|step| refused(&v[step], 405)),
            Scenario::DirectReplyTo => {
                let rpc = &v["rpc"];
                is(rpc, "ok")
                    && rpc["request"] == "ping"
                    && rpc["reply"] == "pong"
                    && rpc["generated"] == true
                    && refused(&v["no_consumer"], 406)
                    && refused(&v["acking"], 406)
            }
            Scenario::ConsumerCancelled => {
                let consume = &v["consume"];
                is(consume, "ok")
                    && consume["delivered"] == "hello"
                    && consume["cancelled"] == "probe-ctag"
                    && ok_hello(&v["after"])
            }
        };
        ensure!(
            expected,
            "directly against RabbitMQ, {} did not give what the scenario is about: {v}",
            self.name()
        );
        Ok(())
    }
}

/// One run of a probe: where to, as whom, with which names.
struct Run<'a> {
    host: &'a str,
    port: u16,
    user: &'a str,
    password: &'a str,
    vhost: &'a str,
    queue: &'a str,
}

impl Run<'_> {
    /// The probe's JSON line with what must differ between runs (the address) replaced by a
    /// placeholder, and the test's generated names too, to keep the lines short.
    fn normalise(&self, line: &str) -> String {
        let mut line = line.replace(&format!("{}:{}", self.host, self.port), "<address>");
        line = line.replace(self.queue, "<queue>");
        if self.vhost != "/" {
            line = line.replace(self.vhost, "<vhost>");
        }
        mask_object_addresses(&line.replace(self.user, "<user>"))
    }
}

/// Runs `scenario` with `client` directly and through warren, and compares what it reported.
async fn compare(client: Client, scenario: Scenario) -> Result<()> {
    let probe = match client.probe()? {
        Ok(probe) => probe,
        Err(why) if !in_ci() => {
            eprintln!(
                "SKIPPED: {} is not installed ({why}); scripts/test-tools.sh installs it \
                 (with CI set this is a failure)",
                client.name()
            );
            return Ok(());
        }
        Err(why) => bail!(
            "{} is not installed ({why}) and CI is set: CI must run scripts/test-tools.sh",
            client.name()
        ),
    };
    let user = TestUser::create(&format!("clients-{}", client.name())).await?;
    let warren = Warren::start()?;
    let wrong_password = format!("{}-wrong", user.password);
    let password = match scenario {
        Scenario::WrongPassword => &wrong_password,
        _ => &user.password,
    };
    // Both runs use the same names (the queue is deleted in between): RabbitMQ cuts reply
    // texts at 255 bytes, so names of different lengths would cut them at different places.
    let vhost = match scenario {
        Scenario::UnknownVhost => unique("clients-no-such-vhost"),
        _ => "/".to_owned(),
    };
    let queue = unique(&format!("clients-{}-{}", client.name(), scenario.name()));
    let mut lines = Vec::new();
    for (host, port) in [
        (BROKER_HOST.to_owned(), BROKER_PORT),
        (warren.addr().ip().to_string(), warren.addr().port()),
    ] {
        let run = Run {
            host: &host,
            port,
            user: &user.name,
            password,
            vhost: &vhost,
            queue: &queue,
        };
        let line = run_probe(&probe, scenario, &run).await;
        // Whatever happened, the queue does not outlive this run.
        if scenario.uses_queue() {
            if let Err(e) = broker::delete_queue("/", &queue).await {
                eprintln!("cleanup of queue {queue}: {e:#}");
            }
        }
        lines.push(run.normalise(&line?));
    }
    let (direct, through) = (&lines[0], &lines[1]);
    let parse = |line: &str| -> Result<Value> {
        serde_json::from_str(line).with_context(|| format!("the probe printed no JSON: {line}"))
    };
    let (direct_v, through_v) = (parse(direct)?, parse(through)?);
    scenario.check_direct(&direct_v)?;
    if direct_v != through_v {
        bail!(
            "{} reports a different outcome of {} through warren than directly against RabbitMQ\n\
             direct: {direct}\nwarren: {through}{}",
            client.name(),
            scenario.name(),
            differing_steps(&direct_v, &through_v)
        );
    }
    Ok(())
}

/// For two JSON objects, the keys whose values differ, each with both values.
fn differing_steps(direct: &Value, through: &Value) -> String {
    let (Some(d), Some(t)) = (direct.as_object(), through.as_object()) else {
        return String::new();
    };
    let mut keys: Vec<&String> = d.keys().chain(t.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = String::from("\ndiffering:");
    for key in keys {
        let (dv, tv) = (&d.get(key), &t.get(key));
        if dv != tv {
            let show =
                |v: &Option<&Value>| v.map_or_else(|| "(absent)".to_owned(), Value::to_string);
            out.push_str(&format!(
                "\n  {key}:\n    direct: {}\n    warren: {}",
                show(dv),
                show(tv)
            ));
        }
    }
    out
}

/// Runs the probe for one scenario and returns its one line of JSON.
async fn run_probe(probe: &[String], scenario: Scenario, run: &Run<'_>) -> Result<String> {
    let mut args = probe.to_vec();
    args.extend([
        run.host.to_owned(),
        run.port.to_string(),
        run.user.to_owned(),
        run.password.to_owned(),
        run.vhost.to_owned(),
        scenario.name().to_owned(),
        run.queue.to_owned(),
    ]);
    let what = format!(
        "{} {} on port {}",
        probe.join(" "),
        scenario.name(),
        run.port
    );
    let out = tokio::task::spawn_blocking(move || bounded_output(&args, PROBE_LIMIT))
        .await
        .context("probe task")??;
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    match (out.success, lines.as_slice()) {
        (true, [line]) => Ok((*line).to_owned()),
        _ => bail!(
            "{what} did not print one line of JSON (exit {}):\nstdout: {}\nstderr: {}",
            out.status,
            out.stdout,
            out.stderr
        ),
    }
}

/// What a finished command left.
struct Output {
    success: bool,
    status: String,
    stdout: String,
    stderr: String,
}

/// Runs `args` in a process group of its own with no input, and returns its output; past
/// `limit` the whole group is killed and that is an error (a hang, not a measure).
fn bounded_output(args: &[String], limit: Duration) -> Result<Output> {
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..])
        .current_dir(clients_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", args.join(" ")))?;
    let (tx, rx) = mpsc::channel();
    for (name, pipe) in [
        (
            "stdout",
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            "stderr",
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ] {
        let tx = tx.clone();
        let mut pipe = pipe.context("a piped output is missing")?;
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send((name, String::from_utf8_lossy(&buf).into_owned()));
        });
    }
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            // The group: a probe's own children (amqp-tools) go too.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} did not finish within {limit:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    for _ in 0..2 {
        let (name, text) = rx
            .recv_timeout(Duration::from_secs(10))
            .with_context(|| format!("{} exited but kept its output open", args.join(" ")))?;
        if name == "stdout" {
            stdout = text;
        } else {
            stderr = text;
        }
    }
    Ok(Output {
        success: status.success(),
        status: status.to_string(),
        stdout,
        stderr,
    })
}

/// `Ok(Ok(()))` when `args` runs and exits 0, `Ok(Err(why))` when it cannot start or fails
/// (the client is not installed).
fn installed(args: &[&str]) -> Result<std::result::Result<(), String>> {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    match bounded_output(&args, BUILD_LIMIT) {
        Ok(out) if out.success => Ok(Ok(())),
        Ok(out) => Ok(Err(format!(
            "`{}` failed: {}{}",
            args.join(" "),
            out.stderr.trim(),
            out.stdout.trim()
        ))),
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
            }) =>
        {
            Ok(Err(format!("{e:#}")))
        }
        Err(e) => Err(e),
    }
}

/// Where Debian's golang-github-rabbitmq-amqp091-go-dev puts the library (GOPATH layout).
const AMQP091_GO_SOURCE: &str = "/usr/share/gocode/src/github.com/rabbitmq/amqp091-go";

/// Builds the Go probe against Debian's amqp091-go in GOPATH mode (the module proxy is not
/// reachable here) and returns the binary's path. Go's build cache makes this quick after the
/// first time; the binary is renamed into place, so parallel tests never run a half-written one.
fn build_go_probe() -> Result<String> {
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("clients");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let binary = out_dir.join("amqp091_probe");
    let partial = out_dir.join(unique("amqp091_probe.partial"));
    let mut args = vec!["env".to_owned()];
    args.extend(
        [
            "GO111MODULE=off",
            "GOPATH=/usr/share/gocode",
            "GOPROXY=off",
            "GOFLAGS=",
            "GOTOOLCHAIN=local",
        ]
        .map(str::to_owned),
    );
    if std::env::var_os("GOCACHE").is_none() && std::env::var_os("HOME").is_none() {
        args.push(format!("GOCACHE={}", out_dir.join("go-build").display()));
    }
    args.extend(["go", "build", "-o"].map(str::to_owned));
    args.push(partial.display().to_string());
    args.push("amqp091_probe.go".to_owned());
    let out = bounded_output(&args, BUILD_LIMIT)?;
    ensure!(
        out.success,
        "building the amqp091-go probe failed ({}): {}{}",
        out.status,
        out.stderr,
        out.stdout
    );
    std::fs::rename(&partial, &binary)
        .with_context(|| format!("moving {} into place", partial.display()))?;
    Ok(binary.display().to_string())
}

/// The Python of the virtualenv scripts/test-tools.sh makes, else `python3`.
fn python() -> String {
    let venv = clients_dir().join(".venv/bin/python");
    if venv.is_file() {
        venv.display().to_string()
    } else {
        "python3".to_owned()
    }
}

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// Whether this runs under CI (as `scripts/test.sh` reads `CI`).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Replaces object addresses in a message (`<Connection.Close object at 0x7f…>`) with `0x…`:
/// they differ from one process to the next.
fn mask_object_addresses(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("0x") {
        out.push_str(&rest[..at]);
        let digits = rest[at + 2..]
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(rest.len() - at - 2);
        if digits == 0 {
            out.push_str("0x");
        } else {
            out.push_str("0x…");
        }
        rest = &rest[at + 2 + digits..];
    }
    out.push_str(rest);
    out
}

#[test]
fn normalisation_masks_only_what_differs_between_runs() {
    let run = Run {
        host: "127.0.0.1",
        port: 41234,
        user: "clients-pika-1",
        password: "pw",
        vhost: "clients-no-such-vhost-1",
        queue: "clients-pika-q-1",
    };
    assert_eq!(
        run.normalise(
            r#"{"text":"no queue 'clients-pika-q-1' in vhost 'clients-no-such-vhost-1' at 127.0.0.1:41234 for clients-pika-1, <Close object at 0x7f92c507d250>, 0x"}"#
        ),
        r#"{"text":"no queue '<queue>' in vhost '<vhost>' at <address> for <user>, <Close object at 0x…>, 0x"}"#
    );
    assert_eq!(
        differing_steps(
            &serde_json::json!({"a": 1, "b": {"outcome": "ok"}}),
            &serde_json::json!({"a": 1, "b": {"outcome": "error"}, "c": 2})
        ),
        "\ndiffering:\n  b:\n    direct: {\"outcome\":\"ok\"}\n    warren: {\"outcome\":\"error\"}\n  c:\n    direct: (absent)\n    warren: 2"
    );
}

#[test]
fn a_probe_past_its_limit_is_killed_with_its_children() -> Result<()> {
    let pid_file = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("hung-probe.pid"));
    let script = format!("sleep 60 & echo $! > {}; wait", pid_file.display());
    let e = match bounded_output(
        &["sh".into(), "-c".into(), script],
        Duration::from_millis(500),
    ) {
        Ok(_) => bail!("a hung command was reported as finished"),
        Err(e) => e,
    };
    ensure!(e.to_string().contains("did not finish within"), "{e:#}");
    let pid = std::fs::read_to_string(&pid_file)?.trim().to_owned();
    std::fs::remove_file(&pid_file)?;
    // Its child is killed with it (no longer running: gone, or a zombie about to be reaped).
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.contains(") Z "))
    {
        ensure!(
            Instant::now() < deadline,
            "the probe's child {pid} survived"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// One test per (client, scenario), in a module per client: `clients pika::exclusive_locked`.
macro_rules! client_tests {
    ($($module:ident => $client:expr, [$($scenario:ident),* $(,)?];)*) => {$(
        mod $module {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() -> Result<()> {
                    compare($client, Scenario::named(stringify!($scenario))).await
                }
            )*
        }
    )*};
}

client_tests! {
    pika => Client::Pika,
        [publish_get, wrong_password, unknown_vhost, passive_missing_queue, exclusive_locked,
         direct_reply_to, consumer_cancelled];
    aio_pika => Client::AioPika,
        [publish_get, wrong_password, unknown_vhost, passive_missing_queue, exclusive_locked];
    bunny => Client::Bunny,
        [publish_get, wrong_password, unknown_vhost, passive_missing_queue, exclusive_locked,
         consumer_cancelled];
    amqp091_go => Client::Amqp091Go,
        [publish_get, wrong_password, unknown_vhost, passive_missing_queue, exclusive_locked,
         direct_reply_to, consumer_cancelled];
    amqplib => Client::Amqplib,
        [publish_get, wrong_password, unknown_vhost, passive_missing_queue, exclusive_locked,
         direct_reply_to, consumer_cancelled];
    php_amqp => Client::PhpAmqp,
        [publish_get, wrong_password, unknown_vhost, passive_missing_queue, exclusive_locked];
    // Each amqp-tools command is a connection of its own: no scenario with a second step on
    // the same connection.
    amqp_tools => Client::AmqpTools, [publish_get, wrong_password, unknown_vhost];
}

//! Operating warren (B14, B15): limits with clear refusals, the metrics a scenario leaves
//! behind, and the `warren` binary as a real process — its configuration layers and its drain
//! on SIGTERM with real clients connected.
//!
//! The binary's own unit-level checks live elsewhere: `runtime/tests/cli.rs` (help,
//! `check-config`, configuration errors, SIGTERM without clients) and the layering rules in
//! `runtime/src/config.rs`; `tests/tests/lifecycle.rs` drains an in-process warren. Here the
//! process is real and so are its clients and its broker.

use anyhow::{ensure, Context, Result};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use warren_runtime::config::Config;
use warren_tests::client;
use warren_tests::lapin_ops::{
    bounded, lapin_declare, lapin_get, lapin_publish, lapin_round_trip, LIMIT,
};
use warren_tests::metrics::{count, metrics_text};
use warren_tests::process::{free_port, listening, prepare_binary, warren_binary, Process};
use warren_tests::raw::{build, RawClient, RawOptions};
use warren_tests::{unique, wait_until, within, TestUser, Warren};

// ----- metrics ---------------------------------------------------------------------------

/// Waits until `/metrics` satisfies `ok`, and returns the text.
async fn wait_metrics(warren: &Warren, what: &str, ok: impl Fn(&str) -> bool) -> Result<String> {
    let last = std::cell::RefCell::new(String::new());
    let found = wait_until(LIMIT, what, || {
        let (ok, last) = (&ok, &last);
        async move {
            let text = metrics_text(warren).await?;
            let done = ok(&text);
            *last.borrow_mut() = text.clone();
            Ok(done.then_some(text))
        }
    })
    .await;
    found.with_context(|| format!("last /metrics:\n{}", last.borrow()))
}

/// warren copies a hub's counters into `/metrics` only when the hub task wakes up; an idle
/// hub sleeps until its next timer (up to 30 s with the default heartbeat). A 2 s upstream
/// heartbeat wakes it about every second, so waits on metrics stay short.
fn fresh_metrics(c: &mut Config) {
    c.upstream_heartbeat = 2;
}

// ----- limits ----------------------------------------------------------------------------

/// `max_clients = 2`: with two clients connected, a third finishes its handshake and is
/// closed with `530 NOT_ALLOWED` and a text that names the limit; the refusal is counted, and
/// once a client leaves a new one gets in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_refuses_the_third_client_with_a_clear_close() -> Result<()> {
    bounded(async {
        let user = TestUser::create("warren-test-max-clients").await?;
        let warren = Warren::start_configured(|c| c.max_clients = 2)?;
        let url = warren.amqp_url(&user.name, &user.password, "/");
        let opts = RawOptions::new(&user.name, &user.password, "/");

        let first = client::lapin_connect(&url).await?;
        let second = client::lapin_connect(&url).await?;
        let refused = RawClient::try_connect(warren.addr(), &opts)
            .await?
            .err()
            .context("a third client was let in with max_clients = 2")?;
        assert_eq!(refused.code, Some(530), "{refused:?}");
        assert!(
            refused.text.contains("max_clients") && refused.text.contains('2'),
            "the text does not name the limit: {refused:?}"
        );
        // lapin sees the same refusal as a connection error with the code.
        let err = client::lapin_try_connect(&url)
            .await?
            .err()
            .context("lapin got in as a third client")?;
        assert_eq!(client::lapin_reply_code(&err), Some(530), "{err:?}");

        // The two that are in keep working.
        let ch = first.create_channel().await?;
        let queue = unique("e2e-max-clients");
        lapin_declare(&ch, &queue).await?;
        lapin_round_trip(&ch, &queue, "still in").await?;

        // A leaves, another comes.
        second.close(200, "bye".into()).await?;
        let third = wait_until(LIMIT, "a free client slot", || {
            let opts = opts.clone();
            let addr = warren.addr();
            async move { Ok(RawClient::try_connect(addr, &opts).await?.ok()) }
        })
        .await?;
        third.close().await?;

        wait_metrics(&warren, "the max_clients refusals counted", |m| {
            count(
                m,
                "warren_refused_connections_total",
                &[("reason", "max_clients")],
            ) >= 2
        })
        .await?;
        ch.queue_delete(queue.as_str().into(), Default::default())
            .await?;
        first.close(200, "bye".into()).await?;
        Ok(())
    })
    .await
}

/// `max_hubs = 1`: while one credential set has a hub, a client with other credentials is
/// closed with `530 NOT_ALLOWED` and a text that names the limit; more clients of the first
/// set still get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_hubs_refuses_other_credentials_with_a_clear_close() -> Result<()> {
    bounded(async {
        let owner = TestUser::create("warren-test-max-hubs-a").await?;
        let other = TestUser::create("warren-test-max-hubs-b").await?;
        let warren = Warren::start_configured(|c| c.max_hubs = 1)?;
        let owner_url = warren.amqp_url(&owner.name, &owner.password, "/");

        let a = client::lapin_connect(&owner_url).await?;
        let refused = RawClient::try_connect(
            warren.addr(),
            &RawOptions::new(&other.name, &other.password, "/"),
        )
        .await?
        .err()
        .context("a second credential set got a hub with max_hubs = 1")?;
        assert_eq!(refused.code, Some(530), "{refused:?}");
        assert!(
            refused.text.contains("max_hubs") && refused.text.contains('1'),
            "the text does not name the limit: {refused:?}"
        );
        assert!(
            !refused.text.contains(&other.password),
            "the password is in the text"
        );

        // The same credentials share the existing hub.
        let a2 = client::lapin_connect(&owner_url).await?;
        let ch = a2.create_channel().await?;
        let queue = unique("e2e-max-hubs");
        lapin_declare(&ch, &queue).await?;
        lapin_round_trip(&ch, &queue, "same hub").await?;

        let m = wait_metrics(&warren, "the max_hubs refusal counted", |m| {
            count(
                m,
                "warren_refused_connections_total",
                &[("reason", "max_hubs")],
            ) >= 1
        })
        .await?;
        assert_eq!(count(&m, "warren_hubs", &[]), 1, "{m}");
        ch.queue_delete(queue.as_str().into(), Default::default())
            .await?;
        a2.close(200, "bye".into()).await?;
        a.close(200, "bye".into()).await?;
        Ok(())
    })
    .await
}

/// After a small scenario — one client publishes and consumes, another breaks a rule and is
/// closed with 540 — `/metrics` has the gauges (hubs, clients, upstreams), the traffic
/// counters (publishes, deliveries) and the closes by reply code, all labelled by user and
/// vhost, and the password nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_small_scenario() -> Result<()> {
    const MESSAGES: u64 = 5;
    bounded(async {
        let user = TestUser::create("warren-test-ops-metrics").await?;
        let warren = Warren::start_configured(fresh_metrics)?;
        let url = warren.amqp_url(&user.name, &user.password, "/");

        let conn = client::lapin_connect(&url).await?;
        let ch = conn.create_channel().await?;
        let queue = unique("e2e-ops-metrics");
        lapin_declare(&ch, &queue).await?;
        for i in 0..MESSAGES {
            lapin_publish(&ch, &queue, format!("m-{i}").as_bytes()).await?;
        }
        for _ in 0..MESSAGES {
            lapin_get(&ch, &queue).await?;
        }

        // A client that asks for prefetch_size != 0 is closed with 540 NOT_IMPLEMENTED.
        let mut rude = RawClient::connect(
            warren.addr(),
            &RawOptions::new(&user.name, &user.password, "/"),
        )
        .await?;
        rude.open_channel(1).await?;
        rude.send(&[build::qos(1, 4096, 0)]).await?;
        let close = rude.expect_close().await?;
        assert_eq!((close.channel, close.code), (0, 540), "{close:?}");
        rude.finish_close().await?;

        let hub = [("user", user.name.as_str()), ("vhost", "/")];
        let m = wait_metrics(&warren, "the scenario in the metrics", |m| {
            count(m, "warren_publishes_total", &hub) >= MESSAGES
                && count(m, "warren_deliveries_total", &hub) >= MESSAGES
                && count(
                    m,
                    "warren_client_closes_total",
                    &[hub[0], hub[1], ("code", "540")],
                ) == 1
                && count(m, "warren_clients", &hub) == 1
        })
        .await?;
        assert_eq!(count(&m, "warren_hubs", &[]), 1, "{m}");
        assert_eq!(count(&m, "warren_upstreams", &hub), 1, "{m}");
        assert!(count(&m, "warren_channels_open", &hub) >= 1, "{m}");
        assert!(
            count(
                &m,
                "warren_frames_total",
                &[hub[0], hub[1], ("direction", "client_to_proxy")]
            ) > 0,
            "{m}"
        );
        assert!(
            !m.contains(&user.password),
            "the password appears in the metrics"
        );
        // Every series of this user also names the vhost.
        for line in m.lines().filter(|l| l.contains(&user.name)) {
            assert!(line.contains("vhost=\"/\""), "no vhost label: {line}");
        }
        ch.queue_delete(queue.as_str().into(), Default::default())
            .await?;
        conn.close(200, "bye".into()).await?;
        Ok(())
    })
    .await
}

// ----- the binary --------------------------------------------------------------------------

/// Connects through warren on `port` as `user` and opens a channel: it is a working warren
/// in front of the broker.
async fn works_through(port: u16, user: &TestUser) -> Result<()> {
    let mut c = RawClient::connect(
        SocketAddr::from(([127, 0, 0, 1], port)),
        &RawOptions::new(&user.name, &user.password, "/"),
    )
    .await?;
    c.open_channel(1).await?;
    c.close().await
}

/// One start of the binary: its flags, its variables and the port it must listen on.
struct Layers<'a> {
    case: &'static str,
    args: Vec<&'a str>,
    env: Vec<(&'static str, &'a str)>,
    want: u16,
}

/// B15: one setting given by the file, a variable and a flag: the flag wins; without the flag
/// the variable wins; with the file alone (named by `WARREN_CONFIG` this time) the file's
/// value holds. Observed on the real process: which port it listens on and serves AMQP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_beat_variables_beat_the_file_in_the_real_binary() -> Result<()> {
    prepare_binary().await?;
    bounded(async {
        let user = TestUser::create("warren-test-layers").await?;
        let (file_port, env_port, flag_port) = (free_port()?, free_port()?, free_port()?);
        let file = std::env::temp_dir().join(format!("{}.toml", unique("warren-layers")));
        std::fs::write(
            &file,
            format!(
                "listen = \"127.0.0.1:{file_port}\"\nmetrics = \"off\"\ndrain_timeout = \"2s\"\n"
            ),
        )?;
        let file_arg = file.to_string_lossy().into_owned();
        let env_listen = format!("127.0.0.1:{env_port}");
        let flag_listen = format!("127.0.0.1:{flag_port}");

        // check-config accepts the file.
        let out = Command::new(warren_binary()?)
            .args(["check-config", &file_arg])
            .output()?;
        assert_eq!(
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).as_ref()
            ),
            (Some(0), "ok\n"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        let cases = [
            Layers {
                case: "flag > variable > file",
                args: vec!["--config", &file_arg, "--listen", &flag_listen],
                env: vec![("WARREN_LISTEN", &env_listen)],
                want: flag_port,
            },
            Layers {
                case: "variable > file",
                args: vec!["--config", &file_arg],
                env: vec![("WARREN_LISTEN", &env_listen)],
                want: env_port,
            },
            Layers {
                case: "file (from WARREN_CONFIG)",
                args: vec![],
                env: vec![("WARREN_CONFIG", &file_arg)],
                want: file_port,
            },
        ];
        for Layers {
            case,
            args,
            env,
            want,
        } in cases
        {
            let mut p = Process::spawn(&args, &env)?;
            p.wait_listening(want).await.context(case)?;
            works_through(want, &user).await.context(case)?;
            for port in [file_port, env_port, flag_port] {
                if port != want {
                    assert!(!listening(port), "{case}: also listening on {port}");
                }
            }
            let log = p.stderr();
            assert!(
                log.contains(&format!("127.0.0.1:{want}")),
                "{case}: the log does not show the listen address: {log}"
            );
            let status = p.stop().await.context(case)?;
            assert_eq!(status.code(), Some(0), "{case}");
        }
        let _ = std::fs::remove_file(&file);
        Ok(())
    })
    .await
}

/// B14 with a real process and real clients: on SIGTERM warren stops accepting, a busy client
/// finishes its work and leaves, the idle ones are closed with `320 CONNECTION_FORCED` at the
/// drain deadline, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_real_process_with_real_clients() -> Result<()> {
    /// The drain timeout: long enough for the busy client's work on a loaded machine.
    const DRAIN: Duration = Duration::from_secs(8);
    prepare_binary().await?;
    bounded(async {
        let user = TestUser::create("warren-test-sigterm").await?;
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let mut p = Process::spawn(
            &["--listen", &listen, "--metrics", "off"],
            &[("WARREN_DRAIN_TIMEOUT", &format!("{}s", DRAIN.as_secs()))],
        )?;
        p.wait_listening(port).await?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let url = client::amqp_url(addr, &user.name, &user.password, "/");

        let busy = client::lapin_connect(&url).await?;
        let ch = busy.create_channel().await?;
        let queue = unique("e2e-sigterm");
        lapin_declare(&ch, &queue).await?;
        let idle = client::amqprs_connect(addr, &user.name, &user.password, "/").await?;
        let mut idle_closes = client::amqprs_watch_connection_close(&idle).await?;
        let _idle_channel = idle.open_channel(None).await?;
        let mut raw_idle =
            RawClient::connect(addr, &RawOptions::new(&user.name, &user.password, "/")).await?;
        raw_idle.open_channel(1).await?;

        let signalled = Instant::now();
        p.terminate()?;

        // Stops accepting.
        wait_until(LIMIT, "the listener to close", || async move {
            Ok((!listening(port)).then_some(()))
        })
        .await?;
        // The busy client finishes its work and leaves on its own terms.
        lapin_round_trip(&ch, &queue, "during the drain").await?;
        ch.queue_delete(queue.as_str().into(), Default::default())
            .await?;
        busy.close(200, "done".into()).await?;

        // The idle ones are closed with 320 at the deadline.
        let close = raw_idle.expect_close().await?;
        assert_eq!((close.channel, close.code), (0, 320), "{close:?}");
        assert!(
            // warren's deadline starts after `signalled`, so this holds on any machine.
            signalled.elapsed() >= DRAIN,
            "closed before the drain timeout: {close:?} after {:?}",
            signalled.elapsed()
        );
        raw_idle.finish_close().await?;
        let close = within(LIMIT, "the amqprs client's close", idle_closes.recv())
            .await?
            .context("amqprs' connection ended without a Connection.Close")?;
        assert_eq!(close.code, 320, "{close:?}");

        let status = p.wait_exit(LIMIT).await?;
        let log = p.stderr();
        assert_eq!(status.code(), Some(0), "{log}");
        assert!(log.contains("SIGTERM"), "{log}");
        Ok(())
    })
    .await
}

/// B14: a second signal (SIGINT after SIGTERM) ends a draining process at once, although a
/// client still holds a channel and the drain timeout is ten minutes away; the exit status
/// says it did not drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_a_draining_real_process_at_once() -> Result<()> {
    prepare_binary().await?;
    bounded(async {
        let user = TestUser::create("warren-test-second-signal").await?;
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let mut p = Process::spawn(
            &["--listen", &listen, "--metrics", "off"],
            &[("WARREN_DRAIN_TIMEOUT", "600s")],
        )?;
        p.wait_listening(port).await?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut held =
            RawClient::connect(addr, &RawOptions::new(&user.name, &user.password, "/")).await?;
        held.open_channel(1).await?;

        p.terminate()?;
        wait_until(LIMIT, "the listener to close", || async move {
            Ok((!listening(port)).then_some(()))
        })
        .await?;
        assert!(
            p.running()?,
            "warren exited on the first signal although a client holds a channel: {}",
            p.stderr()
        );

        p.signal("INT")?;
        // LIMIT is a small fraction of the drain timeout: exiting within it is not draining.
        let status = p.wait_exit(LIMIT).await?;
        let log = p.stderr();
        assert_eq!(status.code(), Some(1), "{log}");
        assert!(log.contains("exiting without finishing the drain"), "{log}");
        // The held client's socket ends with the process (a FIN or a reset), it is not left
        // hanging.
        if let Err(e) = held.expect_eof(LIMIT).await {
            ensure!(
                !e.to_string().contains("did not close"),
                "the held client's socket outlived the process: {e}"
            );
        }
        Ok(())
    })
    .await
}

/// B15 logs: with `--log-format json` every line on standard error is one JSON object; a
/// client's connect and disconnect lines carry its connection name and address; nothing is
/// logged per frame at the default level; the password appears nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_of_the_real_binary_name_each_client_and_never_log_frames() -> Result<()> {
    prepare_binary().await?;
    bounded(async {
        let user = TestUser::create("warren-test-logs").await?;
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let mut p = Process::spawn(
            &[
                "--listen",
                &listen,
                "--metrics",
                "off",
                "--log-format",
                "json",
                // Each client's arrival and departure is a debug line: at thousands of
                // connections a second, info would be a log line per connection.
                "--log-level",
                "debug",
            ],
            &[],
        )?;
        p.wait_listening(port).await?;
        let url = client::amqp_url(
            SocketAddr::from(([127, 0, 0, 1], port)),
            &user.name,
            &user.password,
            "/",
        );
        let props =
            lapin::ConnectionProperties::default().with_connection_name("orders-worker-7".into());
        let conn = lapin::Connection::connect(&url, props).await?;
        let ch = conn.create_channel().await?;
        let queue = unique("logs");
        lapin_declare(&ch, &queue).await?;
        for i in 0..50 {
            lapin_publish(&ch, &queue, format!("m{i}").as_bytes()).await?;
        }
        lapin_get(&ch, &queue).await?;
        conn.close(200, "bye".into()).await?;
        let log = wait_until(LIMIT, "the disconnect line", || {
            let log = p.stderr();
            async move { Ok(log.contains("client disconnected").then_some(log)) }
        })
        .await?;
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
            .collect::<Result<_>>()?;
        let client_lines: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|v| v["fields"]["user"] == user.name.as_str())
            .collect();
        for what in ["client connected", "client disconnected"] {
            let line = client_lines
                .iter()
                .find(|v| v["fields"]["message"] == what)
                .with_context(|| format!("no {what:?} line in {log}"))?;
            ensure!(
                line["fields"]["name"] == "orders-worker-7",
                "{what}: no connection name: {line}"
            );
            let peer = line["fields"]["peer"].as_str().unwrap_or_default();
            ensure!(
                peer.starts_with("127.0.0.1:"),
                "{what}: no client address: {line}"
            );
        }
        ensure!(
            lines.len() < 20,
            "{} lines for one client and 50 publishes: something logs per frame: {log}",
            lines.len()
        );
        ensure!(!log.contains(&user.password), "the password was logged");
        let status = p.stop().await?;
        ensure!(status.code() == Some(0), "exit {status:?}");
        Ok(())
    })
    .await
}

//! The admin API and `warren ctl` (issue 17, B16) on the real binary against the real broker:
//! listing, closing clients as `rabbitmqctl close_connection` does, pause and resume (and a
//! pause that outlasts `pause_timeout`), drain and re-dial seen through `rabbitmqctl`, and bad
//! requests that change nothing.

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_core::method::ids;
use warren_tests::broker::{self, close_connection, warren_connections_of};
use warren_tests::lapin_ops::bounded;
use warren_tests::process::{free_port, prepare_binary, warren_binary, Process};
use warren_tests::raw::{Incoming, RawClient, RawOptions};
use warren_tests::{unique, wait_until, TestUser};

/// A warren of this test: its AMQP and admin ports.
struct Admin {
    process: Process,
    amqp: SocketAddr,
    admin: u16,
    token: Option<String>,
}

async fn start(extra: &[&str]) -> Result<Admin> {
    prepare_binary().await?;
    let (amqp_port, admin) = (free_port()?, free_port()?);
    let listen = format!("127.0.0.1:{amqp_port}");
    let admin_listen = format!("127.0.0.1:{admin}");
    let mut args = vec![
        "--listen",
        &listen,
        "--metrics",
        "off",
        "--admin-listen",
        &admin_listen,
    ];
    args.extend_from_slice(extra);
    let mut process = Process::spawn(&args, &[])?;
    process.wait_listening(amqp_port).await?;
    process.wait_listening(admin).await?;
    let token = extra
        .iter()
        .position(|a| *a == "--admin-token")
        .map(|i| extra[i + 1].to_owned());
    Ok(Admin {
        process,
        amqp: SocketAddr::from(([127, 0, 0, 1], amqp_port)),
        admin,
        token,
    })
}

/// One HTTP request, as raw bytes on a socket: status and body.
async fn http(port: u16, request: &[u8]) -> Result<(u16, String)> {
    warren_tests::within(Duration::from_secs(15), "an admin API request", async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(request).await?;
        let mut raw = Vec::new();
        // A 413 may be answered before the whole body is sent; the socket then resets.
        let _ = s.read_to_end(&mut raw).await;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").context("no head")?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line: {head}"))?;
        Ok((status, body.to_owned()))
    })
    .await?
}

impl Admin {
    async fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, Value)> {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: warren\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (status, text) = http(self.admin, request.as_bytes()).await?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    async fn call(&self, method: &str, path: &str, body: &str) -> Result<(u16, Value)> {
        self.call_as(self.token.as_deref(), method, path, body)
            .await
    }

    async fn get(&self, path: &str) -> Result<Value> {
        let (status, v) = self.call("GET", path, "").await?;
        ensure!(status == 200, "GET {path}: {status} {v}");
        Ok(v)
    }

    /// `warren ctl ARGS` against this warren: exit code, stdout, stderr.
    async fn ctl(&self, args: &[&str]) -> Result<(i32, String, String)> {
        let bin = warren_binary()?;
        let url = format!("http://127.0.0.1:{}", self.admin);
        let mut cmd = std::process::Command::new(bin);
        cmd.arg("ctl").arg("--admin-url").arg(&url);
        if let Some(t) = self.token.as_ref().filter(|_| !args.contains(&"--token")) {
            cmd.arg("--token").arg(t);
        }
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("WARREN_") {
                cmd.env_remove(var);
            }
        }
        cmd.args(args);
        let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    async fn ctl_ok(&self, args: &[&str]) -> Result<String> {
        let (code, out, err) = self.ctl(args).await?;
        ensure!(code == 0, "warren ctl {args:?} exited {code}: {err}{out}");
        Ok(out)
    }

    /// The id of the only hub of `user`.
    async fn hub_of(&self, user: &TestUser) -> Result<String> {
        let hubs = self.get(&format!("/api/hubs?user={}", user.name)).await?;
        let hubs = hubs.as_array().context("a list")?;
        ensure!(hubs.len() == 1, "one hub expected: {hubs:?}");
        Ok(hubs[0]["id"].as_str().context("id")?.to_owned())
    }
}

fn opts(user: &TestUser, name: &str) -> RawOptions {
    RawOptions {
        connection_name: Some(name.to_owned()),
        ..RawOptions::new(&user.name, &user.password, "/")
    }
}

/// Lists hubs, clients and upstreams (API and ctl, table and JSON) without the password;
/// closes one client by id and one by filter: each gets 320 and `CONNECTION_FORCED -
/// <reason>`, the text RabbitMQ's own `close_connection` gives a direct connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_and_closes_clients_as_rabbitmq_does() -> Result<()> {
    bounded(async {
        let w = start(&[]).await?;
        let user = TestUser::create("warren-test-admin-list").await?;
        let (name_a, name_b) = (unique("admin-a"), unique("admin-b"));
        let mut a = RawClient::connect(w.amqp, &opts(&user, &name_a)).await?;
        let mut b = RawClient::connect(w.amqp, &opts(&user, &name_b)).await?;
        a.open_channel(1).await?;

        let hubs = w.get("/api/hubs").await?;
        let text = hubs.to_string();
        ensure!(!text.contains(&user.password), "a password in {text}");
        let hub = w.hub_of(&user).await?;
        let h = &w.get(&format!("/api/hubs/{hub}")).await?;
        ensure!(h["state"] == "ready" && h["clients"] == 2, "{h}");
        ensure!(h["channels_in_use"] == 1 && h["vhost"] == "/", "{h}");

        let clients = w
            .get(&format!("/api/clients?user={}&name={name_a}", user.name))
            .await?;
        let c = &clients[0];
        ensure!(clients.as_array().map(Vec::len) == Some(1), "{clients}");
        ensure!(
            c["connection_name"] == name_a.as_str() && c["tls"] == false,
            "{c}"
        );
        ensure!(c["channels"] == 1 && c["state"] == "open", "{c}");
        ensure!(
            c["frames_in"].as_u64() >= Some(1) && c["bytes_out"].as_u64() > Some(0),
            "{c}"
        );
        let peer = a.local_addr()?.to_string();
        ensure!(c["peer"] == peer.as_str(), "{c} vs {peer}");
        let id_a = c["id"].as_str().context("id")?.to_owned();

        let ups = w.get(&format!("/api/upstreams?user={}", user.name)).await?;
        let u = &ups[0];
        ensure!(
            u["state"] == "open" && u["node"] == 0 && u["blocked"] == false,
            "{u}"
        );
        ensure!(
            u["heartbeat"].as_u64().is_some() && u["channels"] == 1,
            "{u}"
        );
        ensure!(u["address"] == "127.0.0.1:5672", "{u}");

        // warren ctl: tables for people, JSON for scripts.
        let table = w.ctl_ok(&["hubs", "--user", &user.name]).await?;
        ensure!(table.starts_with("ID") && table.contains(&hub), "{table}");
        let table = w.ctl_ok(&["clients", "--user", &user.name]).await?;
        ensure!(
            table.contains(&name_a) && table.contains(&name_b),
            "{table}"
        );
        let table = w.ctl_ok(&["upstreams", "--user", &user.name]).await?;
        ensure!(
            table.contains("open") && table.contains("127.0.0.1:5672"),
            "{table}"
        );
        let json: Value =
            serde_json::from_str(&w.ctl_ok(&["--json", "clients", "--name", &name_b]).await?)?;
        ensure!(json[0]["connection_name"] == name_b.as_str(), "{json}");

        // The same close, directly on the broker with rabbitmqctl.
        let direct_name = unique("admin-direct");
        let direct_at = SocketAddr::from(([127, 0, 0, 1], warren_tests::BROKER_PORT));
        let mut direct = RawClient::connect(direct_at, &opts(&user, &direct_name)).await?;
        let conn = wait_until(Duration::from_secs(10), "the direct connection", || async {
            Ok(broker::all_connections()
                .await?
                .into_iter()
                .find(|c| c.connection_name.as_deref() == Some(direct_name.as_str())))
        })
        .await?;
        close_connection(&conn.name, "maintenance window").await?;
        let from_broker = direct.expect_close().await?;

        let (status, v) = w
            .call(
                "POST",
                &format!("/api/clients/{id_a}/close"),
                r#"{"reason": "maintenance window"}"#,
            )
            .await?;
        ensure!(
            status == 200 && v["closed"][0] == id_a.as_str(),
            "{status} {v}"
        );
        let from_warren = a.expect_close().await?;
        assert_eq!(
            from_warren, from_broker,
            "warren closes as rabbitmqctl does"
        );
        assert_eq!(from_warren.code, 320);
        assert_eq!(from_warren.text, "CONNECTION_FORCED - maintenance window");

        // The neighbour is untouched; then a filter closes it, through warren ctl.
        b.open_channel(1).await?;
        let out = w
            .ctl_ok(&[
                "close", "--user", &user.name, "--name", &name_b, "--reason", "bye",
            ])
            .await?;
        ensure!(out.contains("closed 1 client"), "{out}");
        let closed = b.expect_close().await?;
        assert_eq!(
            (closed.code, closed.text.as_str()),
            (320, "CONNECTION_FORCED - bye")
        );
        w.process.stop().await?;
        Ok(())
    })
    .await
}

/// A paused hub: the client inside keeps working, a new client waits for its OpenOk and a new
/// channel for its OpenOk; resume lets both through. A paused vhost (through warren ctl) that
/// outlasts pause_timeout refuses them: 320 at Open and 506 for the channel, saying warren
/// is paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_waits_resume_releases_and_the_timeout_refuses() -> Result<()> {
    bounded(async {
        let w = start(&["--pause-timeout", "3s"]).await?;
        let user = TestUser::create("warren-test-admin-pause").await?;
        let mut a = RawClient::connect(w.amqp, &opts(&user, "inside")).await?;
        a.open_channel(1).await?;
        let hub = w.hub_of(&user).await?;
        let out = w.ctl_ok(&["pause", "--hub", &hub]).await?;
        ensure!(out.contains("paused"), "{out}");

        let (amqp, o) = (w.amqp, opts(&user, "newcomer"));
        let newcomer = tokio::spawn(async move { RawClient::connect(amqp, &o).await });
        a.send(&[warren_core::method::encode::channel_open(2)]).await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        ensure!(!newcomer.is_finished(), "the new client was let in while paused");
        ensure!(
            matches!(a.try_recv(Duration::from_millis(100)).await?, Incoming::Timeout),
            "the new channel opened while paused"
        );
        // Inside, work goes on: channel 1 still serves a declare.
        let q = a.declare_queue(1, "", true).await?;
        ensure!(!q.is_empty());
        let h = w.get(&format!("/api/hubs/{hub}")).await?;
        ensure!(h["state"] == "paused" && h["waiting"] == 2, "{h}");

        w.ctl_ok(&["resume", "--hub", &hub]).await?;
        let c = warren_tests::within(Duration::from_secs(5), "the newcomer", newcomer).await???;
        a.expect_method(2, ids::CHANNEL_OPEN_OK).await?;
        c.close().await?;

        // A paused vhost, past pause_timeout.
        let out = w.ctl_ok(&["pause", "--vhost", "/"]).await?;
        ensure!(out.contains("paused"), "{out}");
        a.send(&[warren_core::method::encode::channel_open(3)]).await?;
        let late = RawClient::try_connect(w.amqp, &opts(&user, "late")).await?;
        let refused = late.err().context("a client got in past the pause timeout")?;
        assert_eq!(refused.code, Some(320));
        assert_eq!(
            refused.text,
            "CONNECTION_FORCED - warren is paused by an operator and did not resume within 3s; try again later"
        );
        let closed = a.expect_close().await?;
        assert_eq!((closed.channel, closed.code), (3, 506));
        assert!(closed.text.starts_with("RESOURCE_ERROR - warren is paused"), "{closed:?}");
        let vhosts = w.get("/api/vhosts").await?;
        ensure!(vhosts["paused"][0] == "/", "{vhosts}");
        w.ctl_ok(&["resume", "--vhost", "/"]).await?;
        a.send(&[warren_core::method::encode::close_ok(3)]).await?;
        a.open_channel(4).await?;
        a.close().await?;
        w.process.stop().await?;
        Ok(())
    })
    .await
}

/// Re-dial and drain, as the broker sees them: a re-dial opens a second broker connection and
/// the first closes once its client's channel is gone; a drained hub leaves new clients to a
/// new hub and closes its connection once its own client leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redial_and_drain_seen_by_the_broker() -> Result<()> {
    bounded(async {
        let w = start(&[]).await?;
        let user = TestUser::create("warren-test-admin-redial").await?;
        let mut a = RawClient::connect(w.amqp, &opts(&user, "redial-a")).await?;
        a.open_channel(1).await?;
        let first = warren_tests::lapin_ops::the_upstream_of(&user).await?;
        let hub = w.hub_of(&user).await?;
        w.ctl_ok(&["redial", "--hub", &hub]).await?;
        let names = |n: usize| {
            let user = user.name.clone();
            move || {
                let user = user.clone();
                async move {
                    let ups = warren_connections_of(&user).await?;
                    Ok((ups.len() == n).then_some(ups))
                }
            }
        };
        wait_until(
            Duration::from_secs(15),
            "a second broker connection",
            names(2),
        )
        .await?;
        let ups = w.get(&format!("/api/upstreams?hub={hub}")).await?;
        let states: Vec<&str> = ups
            .as_array()
            .context("list")?
            .iter()
            .filter_map(|u| u["state"].as_str())
            .collect();
        ensure!(states == ["retiring", "open"], "{ups}");
        // New channels go to the new connection; the old one goes with its last channel.
        a.open_channel(2).await?;
        a.close_channel(1).await?;
        let left = wait_until(
            Duration::from_secs(15),
            "the old connection to close",
            names(1),
        )
        .await?;
        ensure!(
            left[0].name != first.name,
            "the first connection is still there"
        );

        // Drain: the next client goes to a new hub; the old hub's connection closes once its
        // client is gone.
        w.ctl_ok(&["drain", "--hub", &hub]).await?;
        let b = RawClient::connect(w.amqp, &opts(&user, "drain-b")).await?;
        let hubs = w.get(&format!("/api/hubs?user={}", user.name)).await?;
        let states: Vec<(&str, &str)> = hubs
            .as_array()
            .context("list")?
            .iter()
            .map(|h| {
                (
                    h["id"].as_str().unwrap_or(""),
                    h["state"].as_str().unwrap_or(""),
                )
            })
            .collect();
        ensure!(
            states.len() == 2 && states[0] == (hub.as_str(), "draining"),
            "{hubs}"
        );
        ensure!(states[1].1 == "ready", "{hubs}");
        wait_until(Duration::from_secs(15), "both hubs' connections", names(2)).await?;
        a.close().await?;
        wait_until(
            Duration::from_secs(15),
            "the drained hub's connection to close",
            names(1),
        )
        .await?;
        wait_until(
            Duration::from_secs(15),
            "the drained hub to stop",
            || async {
                let hubs = w.get(&format!("/api/hubs?user={}", user.name)).await?;
                Ok((hubs.as_array().map(Vec::len) == Some(1)).then_some(()))
            },
        )
        .await?;
        b.close().await?;
        w.process.stop().await?;
        Ok(())
    })
    .await
}

/// Unknown ids (404), bad filters and bodies (400), a missing or wrong token (401) and an
/// oversized body (413) get their status and change nothing; `warren ctl` says so and exits 1;
/// `warren ctl reload` handles a warren without the reload endpoint. A public admin address
/// without a token does not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_change_nothing() -> Result<()> {
    bounded(async {
        let token = unique("token");
        let w = start(&["--admin-token", &token]).await?;
        let user = TestUser::create("warren-test-admin-bad").await?;
        let mut a = RawClient::connect(w.amqp, &opts(&user, "bad-a")).await?;
        a.open_channel(1).await?;
        let hub = w.hub_of(&user).await?;
        let before = w.get(&format!("/api/hubs/{hub}")).await?;

        let cases: Vec<(&str, String, String, u16)> = vec![
            ("GET", "/api/hubs/h999".into(), String::new(), 404),
            ("POST", "/api/hubs/h999/pause".into(), String::new(), 404),
            (
                "POST",
                format!("/api/clients/{hub}-c99999/close"),
                String::new(),
                404,
            ),
            (
                "POST",
                "/api/clients/nonsense/close".into(),
                String::new(),
                400,
            ),
            ("GET", "/api/clients?colour=red".into(), String::new(), 400),
            ("GET", "/api/clients?vhost=%ZZ".into(), String::new(), 400),
            ("POST", "/api/clients/close".into(), String::new(), 400),
            (
                "POST",
                format!("/api/clients/close?user={}", user.name),
                "{not json".into(),
                400,
            ),
            (
                "POST",
                format!("/api/clients/close?user={}", user.name),
                r#"{"reason": 5}"#.into(),
                400,
            ),
            (
                "POST",
                format!("/api/clients/close?user={}", user.name),
                format!(r#"{{"reason": "{}"}}"#, "x".repeat(70 * 1024)),
                413,
            ),
            ("GET", "/api/nowhere".into(), String::new(), 404),
            ("DELETE", "/api/hubs".into(), String::new(), 405),
        ];
        for (method, path, body, want) in &cases {
            let (status, v) = w.call(method, path, body).await?;
            ensure!(
                status == *want,
                "{method} {path}: {status} {v}, want {want}"
            );
        }
        for bad in [None, Some("wrong")] {
            let (status, _) = w
                .call_as(bad, "POST", &format!("/api/hubs/{hub}/pause"), "")
                .await?;
            ensure!(status == 401, "token {bad:?}: {status}");
        }
        let after = w.get(&format!("/api/hubs/{hub}")).await?;
        ensure!(
            after["state"] == before["state"] && after["clients"] == 1,
            "{after}"
        );
        a.open_channel(2).await?;

        let (code, _, err) = w.ctl(&["pause", "--hub", "h999"]).await?;
        ensure!(code == 1 && err.contains("404"), "{code} {err}");
        // Started from flags alone: a reload reads the same flags, so nothing changes.
        let (code, out, err) = w.ctl(&["reload"]).await?;
        ensure!(
            code == 0 && out.contains("applied: none; needs a restart: none"),
            "{code} {out} {err}"
        );
        let (code, _, err) = w.ctl(&["--token", "wrong", "hubs"]).await?;
        ensure!(code == 1 && err.contains("401"), "{code} {err}");
        a.close().await?;
        w.process.stop().await?;

        // Not loopback, no token: refused at start, naming the setting.
        let port = free_port()?;
        let listen = format!("127.0.0.1:{}", free_port()?);
        let public = format!("0.0.0.0:{port}");
        let mut p = Process::spawn(&["--listen", &listen, "--admin-listen", &public], &[])?;
        let status = p.wait_exit(Duration::from_secs(20)).await?;
        ensure!(
            !status.success(),
            "started with a public admin address and no token"
        );
        ensure!(p.stderr().contains("admin_listen"), "{}", p.stderr());
        Ok(())
    })
    .await
}

//! Beyond one process (B17), with the real binary: a zero-downtime restart with `reuse_port`,
//! and the PROXY protocol behind a load balancer.

use anyhow::{ensure, Context, Result};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use warren_tests::client::{self, lapin_try_connect};
use warren_tests::lapin_ops::{bounded, LIMIT};
use warren_tests::process::{free_port, Process};
use warren_tests::{wait_until, TestUser};

/// Waits until `p`'s log says it listens (two processes share the port: a connect proves
/// nothing about the second).
async fn wait_started(p: &Process) -> Result<()> {
    wait_until(LIMIT, "warren to listen", || {
        let log = p.stderr();
        async move { Ok(log.contains("warren is listening").then_some(())) }
    })
    .await
}

fn spawn(port: u16, extra: &[&str]) -> Result<Process> {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "--listen",
        &listen,
        "--metrics",
        "off",
        "--log-level",
        "debug",
        "--drain-timeout",
        "5s",
    ];
    args.extend_from_slice(extra);
    Process::spawn(&args, &[])
}

/// Clients connect in a loop (connect, open a channel, close) while a second warren starts on
/// the same address with `reuse_port` and the first is sent SIGTERM: not one is refused, the
/// second serves clients, and the first exits 0.
#[tokio::test]
async fn a_restart_with_reuse_port_refuses_no_client() -> Result<()> {
    bounded(async {
        let user = TestUser::create("warren-test-handover").await?;
        let port = free_port()?;
        let url = client::amqp_url(
            SocketAddr::from(([127, 0, 0, 1], port)),
            &user.name,
            &user.password,
            "/",
        );
        let mut old = spawn(port, &["--reuse-port", "true"])?;
        wait_started(&old).await?;
        let (stop, ok, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
        let mut loops = Vec::new();
        for _ in 0..4 {
            let (url, stop, ok, failed, first_error) = (
                url.clone(),
                stop.clone(),
                ok.clone(),
                failed.clone(),
                first_error.clone(),
            );
            loops.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let cycle = async {
                        let conn = lapin_try_connect(&url).await??;
                        let ch = conn.create_channel().await?;
                        ch.close(200, "bye".into()).await?;
                        conn.close(200, "bye".into()).await?;
                        anyhow::Ok(())
                    };
                    match cycle.await {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            first_error
                                .lock()
                                .unwrap()
                                .get_or_insert_with(|| format!("{e:#}"));
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let new = spawn(port, &["--reuse-port", "true"])?;
        wait_started(&new).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let served_before = ok.load(Ordering::Relaxed);
        old.terminate()?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop.store(true, Ordering::Relaxed);
        for l in loops {
            l.await?;
        }
        let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        ensure!(
            failed == 0,
            "{failed} of {} cycles failed during the hand-over, first: {:?}",
            ok + failed,
            first_error.lock().unwrap()
        );
        ensure!(ok > served_before, "nothing was served after the hand-over");
        let new_log = new.stderr();
        ensure!(
            new_log.contains("client connected"),
            "the new warren served no client: {new_log}"
        );
        // It drains: its clients were gone within a cycle, so it exits well before the bound.
        let status = old.wait_exit(LIMIT).await?;
        ensure!(status.code() == Some(0), "the old warren exited {status:?}");
        let status = new.stop().await?;
        ensure!(status.code() == Some(0), "the new warren exited {status:?}");
        Ok(())
    })
    .await
}

/// A one-connection L4 "load balancer": it accepts on its own port and relays each client to
/// warren after writing `header(client address)`.
async fn balancer(
    warren: u16,
    header: impl Fn(SocketAddr) -> Vec<u8> + Send + Sync + 'static,
) -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    let header = Arc::new(header);
    tokio::spawn(async move {
        while let Ok((mut client, from)) = l.accept().await {
            let header = header.clone();
            tokio::spawn(async move {
                let mut upstream = TcpStream::connect(("127.0.0.1", warren)).await?;
                upstream.write_all(&header(from)).await?;
                tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
                anyhow::Ok(())
            });
        }
    });
    Ok(port)
}

fn v2_header(source: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(v4) = source else {
        unreachable!("IPv4 only here")
    };
    let mut b = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    b.extend_from_slice(&[0x21, 0x11, 0, 12]);
    b.extend_from_slice(&v4.ip().octets());
    b.extend_from_slice(&[127, 0, 0, 1]);
    b.extend_from_slice(&v4.port().to_be_bytes());
    b.extend_from_slice(&5673u16.to_be_bytes());
    b
}

/// With `proxy_protocol`, clients behind a balancer that speaks v1 or v2 are served and
/// logged with the address the header names; a connection without a header, or with a
/// malformed one, is closed before warren sends any byte.
#[tokio::test]
async fn proxy_protocol_v1_and_v2_name_the_client_and_a_missing_header_is_refused() -> Result<()> {
    bounded(async {
        let user = TestUser::create("warren-test-proxy").await?;
        let port = free_port()?;
        let mut p = spawn(port, &["--proxy-protocol", "true"])?;
        p.wait_listening(port).await?;
        let v1 = balancer(port, |_| {
            b"PROXY TCP4 203.0.113.9 127.0.0.1 45678 5673\r\n".to_vec()
        })
        .await?;
        let v2 = balancer(port, |_| v2_header("198.51.100.4:50505".parse().unwrap())).await?;
        for (front, shown) in [(v1, "203.0.113.9:45678"), (v2, "198.51.100.4:50505")] {
            let url = client::amqp_url(
                SocketAddr::from(([127, 0, 0, 1], front)),
                &user.name,
                &user.password,
                "/",
            );
            let conn = lapin_try_connect(&url)
                .await?
                .with_context(|| format!("a client behind the balancer on {front}"))?;
            let ch = conn.create_channel().await?;
            ch.close(200, "bye".into()).await?;
            conn.close(200, "bye".into()).await?;
            let log = p.stderr();
            ensure!(
                log.contains(&format!("peer={shown}")),
                "the log shows the client's address {shown}: {log}"
            );
        }
        for (what, first) in [
            ("no header", &b"AMQP\x00\x00\x09\x01"[..]),
            (
                "a malformed header",
                b"PROXY TCP4 nonsense\r\nAMQP\x00\x00\x09\x01",
            ),
        ] {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
            s.write_all(first).await?;
            let mut got = Vec::new();
            let read = tokio::time::timeout(LIMIT, s.read_to_end(&mut got)).await;
            ensure!(
                matches!(read, Ok(Ok(0)) | Ok(Err(_))) && got.is_empty(),
                "{what}: warren must close before any byte, got {got:?} ({read:?})"
            );
        }
        let log = p.stderr();
        ensure!(
            log.matches("no valid PROXY protocol header").count() >= 2,
            "each refusal is logged: {log}"
        );
        let status = p.stop().await?;
        ensure!(status.code() == Some(0), "exit {status:?}");
        Ok(())
    })
    .await
}

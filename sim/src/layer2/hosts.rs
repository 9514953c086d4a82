//! What runs inside turmoil: the scripted broker host, warren itself (`Server::run` as host
//! `proxy`), and one client host per client, with what they share with the driver.

use super::{lock, Lines, ProxyDone, BROKER_PORT, PROXY_PORT};
use crate::broker::{Broker, BrokerOutput, ConnId};
use crate::client::{Board, ClientOut, FakeClient};
use crate::scenario::Scenario;
use crate::turmoil_net::TurmoilNetwork;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use warren_runtime::config::Config;
use warren_runtime::{Server, Shutdown};

fn trace_line(lines: &Option<Lines>, what: String) {
    if let Some(l) = lines {
        let mut l = lock(l);
        let n = l.len() as u64;
        l.push((turmoil::elapsed(), n, what));
    }
}

fn tap(lines: &Option<Lines>, tap: &mut crate::trace::Tap, who: &str, data: &[u8]) {
    if lines.is_some() {
        for d in tap.feed(data) {
            trace_line(lines, format!("{who} {d}"));
        }
    }
}

/// The simulated clock as a std `Instant` (turmoil pauses and drives tokio time).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// What a client host left behind for the checks.
#[derive(Debug)]
pub(super) struct ClientResult {
    pub(super) client: FakeClient,
    pub(super) start: Duration,
    pub(super) ended_at: Duration,
    /// When a write first failed (the peer reset the connection).
    pub(super) write_failed_at: Option<Duration>,
    /// When it sent `StartOk` and got `OpenOk`, in simulation time.
    pub(super) start_ok: Option<Duration>,
    pub(super) opened: Option<Duration>,
}

/// What the hosts share with the driver: the broker (one task of the broker host owns it;
/// the driver restarts it when turmoil crashes the host) and its admin bell, the board, what
/// the client hosts leave behind, the drain token, warren's exit, and the trace.
pub(super) struct Shared {
    pub(super) broker: Arc<Mutex<Broker>>,
    pub(super) admin: Admin,
    board: Arc<Mutex<Board>>,
    pub(super) results: Arc<Mutex<Vec<ClientResult>>>,
    pub(super) shutdown: Shutdown,
    pub(super) proxy_done: ProxyDone,
    pub(super) lines: Option<Lines>,
}

impl Shared {
    /// Nothing happened yet; `trace`: record the hosts' frame lines.
    pub(super) fn new(sc: &Scenario, trace: bool) -> Self {
        Shared {
            broker: Arc::new(Mutex::new(Broker::new(sc.broker.clone()))),
            admin: Admin::default(),
            board: Arc::new(Mutex::new(Board::new(sc.board.0, sc.board.1))),
            results: Arc::new(Mutex::new(Vec::new())),
            shutdown: Shutdown::default(),
            proxy_done: Arc::new(Mutex::new(None)),
            lines: trace.then(|| Arc::new(Mutex::new(Vec::new()))),
        }
    }
}

/// Adds the hosts of a run: `broker`, `proxy` (warren, seeded with the scenario's seed) and
/// the client hosts `c1`, `c2`, ...
pub(super) fn add(sim: &mut turmoil::Sim<'_>, sc: &Scenario, config: &Config, shared: &Shared) {
    let seed = sc.seed;
    let (broker, lines, proxy_done) = (&shared.broker, &shared.lines, &shared.proxy_done);
    {
        let (broker, lines, admin) = (broker.clone(), lines.clone(), shared.admin.clone());
        sim.host("broker", move || {
            broker_host(broker.clone(), lines.clone(), admin.clone())
        });
    }
    {
        let (config, shutdown, done) =
            (config.clone(), shared.shutdown.clone(), proxy_done.clone());
        sim.host("proxy", move || {
            let (config, shutdown, done) = (config.clone(), shutdown.clone(), done.clone());
            async move {
                let server = Server::bind(TurmoilNetwork, config).await?;
                let ok = server.run_seeded(shutdown, seed).await.is_ok();
                *lock(&done) = Some((turmoil::elapsed(), ok));
                Ok(())
            }
        });
    }
    for (i, spec) in sc.clients.iter().enumerate() {
        let id = i as u32 + 1;
        let (board, results) = (shared.board.clone(), shared.results.clone());
        sim.client(
            format!("c{id}"),
            client_host(
                id,
                spec.clone(),
                board,
                results,
                lines.clone(),
                proxy_done.clone(),
            ),
        );
    }
}

/// Password changes for the broker host to carry out (user, new password), and the bell that
/// tells it there are some.
#[derive(Clone, Default)]
pub(super) struct Admin {
    pub(super) changes: Arc<Mutex<Vec<(String, String)>>>,
    pub(super) bell: Arc<tokio::sync::Notify>,
}

/// The scripted broker host: one task owns the [`Broker`]; per connection a reader feeds it
/// and a writer carries its output.
async fn broker_host(
    broker: Arc<Mutex<Broker>>,
    lines: Option<Lines>,
    admin: Admin,
) -> turmoil::Result {
    lock(&broker).restart();
    trace_line(&lines, "broker starts".into());
    let mut taps: BTreeMap<ConnId, crate::trace::Tap> = BTreeMap::new();
    let listener = turmoil::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, BROKER_PORT)).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<(ConnId, Option<Bytes>)>();
    let mut writers: BTreeMap<ConnId, mpsc::UnboundedSender<Option<Bytes>>> = BTreeMap::new();
    loop {
        let timeout = lock(&broker)
            .poll_timeout()
            .map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                let id = lock(&broker).accept(now());
                trace_line(&lines, format!("b{id} accepted"));
                let (mut r, mut w) = stream.into_split();
                let (wtx, mut wrx) = mpsc::unbounded_channel::<Option<Bytes>>();
                writers.insert(id, wtx);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match r.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if tx.send((id, Some(Bytes::copy_from_slice(&buf[..n])))).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = tx.send((id, None));
                });
                tokio::spawn(async move {
                    while let Some(msg) = wrx.recv().await {
                        match msg {
                            Some(b) => {
                                if w.write_all(&b).await.is_err() {
                                    break;
                                }
                            }
                            None => {
                                let _ = w.shutdown().await;
                                break;
                            }
                        }
                    }
                });
            }
            Some((id, msg)) = rx.recv() => {
                if let Some(data) = &msg {
                    tap(&lines, taps.entry(id).or_default(), &format!("w→b{id}"), data);
                } else {
                    trace_line(&lines, format!("b{id} closed by warren"));
                }
                let mut b = lock(&broker);
                match msg {
                    Some(data) => b.handle_bytes(now(), id, &data),
                    None => b.handle_closed(now(), id),
                }
            }
            _ = tokio::time::sleep_until(timeout.unwrap_or_else(tokio::time::Instant::now)), if timeout.is_some() => {
                lock(&broker).handle_timeout(now());
            }
            () = admin.bell.notified() => {
                let changes = std::mem::take(&mut *lock(&admin.changes));
                for (user, password) in changes {
                    let sent = lock(&broker).change_password(now(), &user, &password);
                    trace_line(&lines, format!("broker: password of {user} changed, event to {sent:?}"));
                }
            }
        }
        let outputs: Vec<BrokerOutput> = {
            let mut b = lock(&broker);
            std::iter::from_fn(|| b.poll_output()).collect()
        };
        for o in outputs {
            match o {
                BrokerOutput::Send { conn, data } => {
                    if let Some(w) = writers.get(&conn) {
                        let _ = w.send(Some(data));
                    }
                }
                BrokerOutput::Close { conn } => {
                    trace_line(&lines, format!("b{conn} closed by the broker"));
                    if let Some(w) = writers.remove(&conn) {
                        let _ = w.send(None);
                    }
                }
            }
        }
    }
}

/// One client host: connects to warren and runs its [`FakeClient`] over the socket. It
/// stops reading while the client does (so warren feels the backpressure).
async fn client_host(
    id: u32,
    spec: crate::client::ClientSpec,
    board: Arc<Mutex<Board>>,
    results: Arc<Mutex<Vec<ClientResult>>>,
    lines: Option<Lines>,
    proxy_done: ProxyDone,
) -> turmoil::Result {
    let mut in_tap = crate::trace::Tap::default();
    let mut out_tap = crate::trace::Tap::default();
    let start = spec.start;
    tokio::time::sleep(start).await;
    let mut client = FakeClient::new(id, spec, now());
    trace_line(&lines, format!("c{id} connects ({})", client.spec.kind));
    // A process that exited refuses connections; turmoil just stops answering for it.
    let exited = lock(&proxy_done).is_some();
    let connect = tokio::time::timeout(
        Duration::from_secs(5),
        turmoil::net::TcpStream::connect(("proxy", PROXY_PORT)),
    );
    let connected = if exited {
        None
    } else {
        connect.await.ok().and_then(Result::ok)
    };
    let stream = match connected {
        Some(s) => s,
        None => {
            client.refused(now());
            lock(&results).push(ClientResult {
                client,
                start,
                ended_at: turmoil::elapsed(),
                write_failed_at: None,
                start_ok: None,
                opened: None,
            });
            return Ok(());
        }
    };
    let (mut r, mut w) = stream.into_split();
    let mut buf = vec![0u8; 16 * 1024];
    let mut write_closed = false;
    let mut read_closed = false;
    let mut write_failed_at = None;
    loop {
        while let Some(o) = client.poll_output() {
            match o {
                ClientOut::Send(b) if !write_closed => {
                    tap(&lines, &mut out_tap, &format!("c{id}→w"), &b);
                    if w.write_all(&b).await.is_err() {
                        write_closed = true;
                        write_failed_at = Some(turmoil::elapsed());
                        trace_line(&lines, format!("c{id} write failed: connection reset"));
                        // A client that does not read learns of a reset from its writes.
                        if !client.is_reading() {
                            client.handle_closed(now(), true);
                        }
                    }
                }
                ClientOut::Send(_) => {}
                ClientOut::Close => {
                    let _ = w.shutdown().await;
                    write_closed = true;
                }
            }
        }
        if client.is_done() {
            break;
        }
        let deadline = client.poll_timeout().map(tokio::time::Instant::from_std);
        let reading = client.is_reading() && !read_closed;
        tokio::select! {
            biased;
            n = r.read(&mut buf), if reading => match n {
                Ok(0) => {
                    read_closed = true;
                    client.handle_closed(now(), false);
                }
                Ok(n) => {
                    tap(&lines, &mut in_tap, &format!("w→c{id}"), &buf[..n]);
                    let mut b = lock(&board);
                    client.handle_bytes(now(), &buf[..n], &mut b);
                }
                Err(_) => {
                    read_closed = true;
                    client.handle_closed(now(), true);
                }
            },
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                let mut b = lock(&board);
                client.handle_timeout(now(), &mut b);
            }
            // Neither reading nor waiting for anything: only the end of the simulation helps.
            _ = std::future::pending::<()>(), if !reading && deadline.is_none() => {}
        }
    }
    drop(w);
    if let Some((_, end)) = &client.end {
        trace_line(&lines, format!("c{id} ends: {end}"));
    }
    // Its instants as simulation time.
    let (t, elapsed) = (now(), turmoil::elapsed());
    let sim_time = |i: Option<Instant>| i.map(|i| elapsed.saturating_sub(t.duration_since(i)));
    let (start_ok, opened) = (sim_time(client.start_ok_at), sim_time(client.opened_at));
    lock(&results).push(ClientResult {
        client,
        start,
        ended_at: elapsed,
        write_failed_at,
        start_ok,
        opened,
    });
    Ok(())
}

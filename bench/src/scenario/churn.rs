//! P1: connection churn, the short-lived client's life.
//!
//! `--concurrency` loops (default 8) each repeat: open a connection (TCP + AMQP handshake), open
//! a channel, publish one message to the scenario's queue, close the channel (unless
//! `--no-channel-close`), close the connection. The rate is completed cycles per second. At the
//! end the queue depth is checked against the completed cycles: `lost` counts published
//! messages that never arrived.

use super::settled_depth;
use crate::amqp::{self, Endpoint};
use crate::opts::{ChurnOpts, Common};
use crate::report::{Report, Watched};
use amqprs::channel::BasicPublishArguments;
use amqprs::BasicProperties;
use anyhow::{anyhow, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Pause after a failed cycle, so a broken target is not hammered in a tight loop.
const ERROR_BACKOFF: Duration = Duration::from_millis(20);

/// Runs the scenario.
pub async fn run(common: &Common, opts: &ChurnOpts, report: &mut Report) -> Result<()> {
    let endpoint = Endpoint::parse(&common.url)?;
    let admin = Endpoint::parse(common.admin_url())?;
    let queue = amqp::unique_queue(&common.queue_prefix, "churn");
    let result = measure(common, opts, report, &endpoint, &admin, &queue).await;
    amqp::delete_queue(&admin, &queue, common.op_timeout).await;
    result
}

#[derive(Default)]
struct Tally {
    started: AtomicU64,
    done: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

async fn measure(
    common: &Common,
    opts: &ChurnOpts,
    report: &mut Report,
    endpoint: &Endpoint,
    admin: &Endpoint,
    queue: &str,
) -> Result<()> {
    let limit = common.op_timeout;
    let loops = common.concurrency_or(8);
    let count = common.count_or(1_000_000);
    let duration = common.duration_or(Duration::from_secs(10));
    let (admin_conn, admin_ch) = amqp::connect(admin, "warren-bench-admin", limit).await?;
    amqp::declare_queue(&admin_ch, queue, limit).await?;
    eprintln!(
        "churn: {loops} loops of connect/channel/publish/close, up to {count} cycles or {duration:?} -> {}",
        endpoint.display()
    );
    let tally = Arc::new(Tally::default());
    let watched = Watched::start(&common.watch);
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(loops);
    for _ in 0..loops {
        let tally = tally.clone();
        let endpoint = endpoint.clone();
        let queue = queue.to_owned();
        let size = common.size;
        let close_channel = !opts.no_channel_close;
        let raw = opts.client == "raw";
        tasks.push(tokio::spawn(async move {
            let body = vec![b'x'; size];
            while Instant::now() < deadline && tally.started.fetch_add(1, Ordering::Relaxed) < count
            {
                let result = if raw {
                    raw_cycle(&endpoint, &queue, &body, close_channel, limit).await
                } else {
                    cycle(&endpoint, &queue, &body, close_channel, limit).await
                };
                match result {
                    Ok(()) => {
                        tally.done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                        {
                            let mut first =
                                tally.first_error.lock().unwrap_or_else(|p| p.into_inner());
                            if first.is_none() {
                                *first = Some(amqp::short(&e));
                                eprintln!("churn: first error: {e:#}");
                            }
                        }
                        tokio::time::sleep(ERROR_BACKOFF).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        if let Err(e) = t.await {
            report.errors(1, Some(format!("churn loop failed: {e}")));
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let done = tally.done.load(Ordering::Relaxed);
    watched.finish(report, done);
    let errors = tally.errors.load(Ordering::Relaxed);
    let first = tally
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    report.errors(errors, first);
    let rate = if elapsed > 0.0 {
        done as f64 / elapsed
    } else {
        0.0
    };
    report.set("loops", loops as u64);
    report.set("connections", done);
    report.set("msgs", done);
    report.set("channel_close", !opts.no_channel_close);
    report.set("client", opts.client.as_str());
    report.set_f("elapsed_s", elapsed, 3);
    report.set_f("connections_per_sec", rate, 1);
    match settled_depth(&admin_ch, queue, done, limit).await {
        Ok(depth) => {
            report.set("queue_depth", depth);
            if depth < done {
                report.set("lost", done - depth);
                report.errors(
                    done - depth,
                    Some(format!(
                        "queue holds {depth} messages, {done} cycles completed"
                    )),
                );
            }
        }
        Err(e) => report.errors(1, Some(format!("checking the queue depth: {e:#}"))),
    }
    eprintln!("churn: {done} cycles in {elapsed:.2}s = {rate:.1} connections/s ({errors} errors)");
    let _ = amqp::close(admin_conn, Some(admin_ch), limit).await;
    Ok(())
}

async fn cycle(
    endpoint: &Endpoint,
    queue: &str,
    body: &[u8],
    close_channel: bool,
    limit: Duration,
) -> Result<()> {
    let (conn, ch) = amqp::connect(endpoint, "warren-bench-churn", limit).await?;
    ch.basic_publish(
        BasicProperties::default(),
        body.to_vec(),
        BasicPublishArguments::new("", queue),
    )
    .await
    .map_err(|e| anyhow!("basic.publish: {e}"))?;
    if close_channel {
        amqp::close(conn, Some(ch), limit).await
    } else {
        // Keep the channel handle until the connection is closed: dropping it first would make
        // amqprs send its own Channel.Close.
        let closed = amqp::close(conn, None, limit).await;
        drop(ch);
        closed
    }
}

/// One cycle with a minimal client that does what a synchronous client library does on the
/// wire and nothing else: each step waits for its reply, and every reply is checked.
async fn raw_cycle(
    endpoint: &Endpoint,
    queue: &str,
    body: &[u8],
    close_channel: bool,
    limit: Duration,
) -> Result<()> {
    tokio::time::timeout(limit, raw_cycle_inner(endpoint, queue, body, close_channel))
        .await
        .map_err(|_| anyhow!("raw cycle timed out after {limit:?}"))?
}

async fn raw_cycle_inner(
    endpoint: &Endpoint,
    queue: &str,
    body: &[u8],
    close_channel: bool,
) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    use warren_core::frame::{Frame, FrameType, PROTOCOL_HEADER};
    use warren_core::method::{encode, ids, Close, StartOk, Tune};
    use warren_core::table::FieldTable;

    let mut s = tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?;
    s.set_nodelay(true)?;
    let mut raw = RawConn::new();
    s.write_all(PROTOCOL_HEADER).await?;
    raw.expect(&mut s, ids::CONNECTION_START).await?;
    let response = format!("\0{}\0{}", endpoint.user, endpoint.password).into_bytes();
    let start_ok = encode::start_ok(&StartOk {
        client_properties: FieldTable::default(),
        mechanism: "PLAIN".into(),
        response,
        locale: "en_US".into(),
    });
    s.write_all(&start_ok).await?;
    let tune = raw.expect(&mut s, ids::CONNECTION_TUNE).await?;
    let frame_max = match warren_core::method::decode(tune.payload()) {
        Ok(warren_core::method::Method::Tune(t)) => t.frame_max,
        _ => return Err(anyhow!("malformed connection.tune")),
    };
    let mut out = encode::tune(
        Tune {
            channel_max: 1,
            frame_max,
            heartbeat: 0,
        },
        true,
    )
    .to_vec();
    out.extend_from_slice(&encode::open(&endpoint.vhost));
    s.write_all(&out).await?;
    raw.expect(&mut s, ids::CONNECTION_OPEN_OK).await?;
    s.write_all(&encode::channel_open(1)).await?;
    raw.expect(&mut s, ids::CHANNEL_OPEN_OK).await?;
    let mut out = warren_core::frame::method_frame(1, ids::BASIC_PUBLISH, |w| {
        w.u16(0)
            .shortstr(b"")
            .shortstr(queue.as_bytes())
            .bit(false)
            .bit(false);
    })
    .to_vec();
    let mut header = bytes::BytesMut::new();
    warren_core::wire::Writer::new(&mut header)
        .u16(60)
        .u16(0)
        .u64(body.len() as u64)
        .u16(0);
    out.extend_from_slice(&Frame::new(FrameType::Header, 1, &header).freeze());
    out.extend_from_slice(&Frame::new(FrameType::Body, 1, body).freeze());
    let bye = Close {
        code: 200,
        text: "bye".into(),
        class_id: 0,
        method_id: 0,
    };
    if close_channel {
        out.extend_from_slice(&encode::close(1, &bye));
        s.write_all(&out).await?;
        raw.expect(&mut s, ids::CHANNEL_CLOSE_OK).await?;
        out = Vec::new();
    }
    out.extend_from_slice(&encode::close(0, &bye));
    s.write_all(&out).await?;
    raw.expect(&mut s, ids::CONNECTION_CLOSE_OK).await?;
    Ok(())
}

/// The read side of the minimal client: whole frames off the socket, heartbeats skipped.
struct RawConn {
    buf: bytes::BytesMut,
    decoder: warren_core::frame::FrameDecoder,
}

impl RawConn {
    fn new() -> Self {
        RawConn {
            buf: bytes::BytesMut::with_capacity(4096),
            decoder: warren_core::frame::FrameDecoder::new(1 << 20),
        }
    }

    /// Reads until a method arrives; fails unless it is `want` (a close carries its text).
    async fn expect(
        &mut self,
        s: &mut tokio::net::TcpStream,
        want: warren_core::method::MethodId,
    ) -> Result<warren_core::frame::Frame> {
        use tokio::io::AsyncReadExt;
        loop {
            while let Some(f) = self
                .decoder
                .decode(&mut self.buf)
                .map_err(|e| anyhow!("bad frame from the server: {e}"))?
            {
                if f.kind() != warren_core::frame::FrameType::Method {
                    continue;
                }
                if f.method_id() == Some(want) {
                    return Ok(f);
                }
                return Err(anyhow!(
                    "expected {want}, got {:?}",
                    warren_core::method::decode(f.payload())
                ));
            }
            if s.read_buf(&mut self.buf).await? == 0 {
                return Err(anyhow!(
                    "the server closed the connection, expecting {want}"
                ));
            }
        }
    }
}

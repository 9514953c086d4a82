//! Large messages and deep tables (B8, B9) with a real RabbitMQ and the real `warren` binary:
//! any message up to `max_message_size` reaches a client that reads, whatever its frame_max;
//! a client that stops reading is cut off and its message requeued while its neighbour keeps
//! receiving; field tables of any depth go through unchanged, as RabbitMQ takes them.
//!
//! warren runs as a process so that its peak memory (`VmHWM`) can be read and reported.

use anyhow::{bail, ensure, Context, Result};
use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use warren_core::frame::{method_frame, Frame, FrameType};
use warren_core::method::{ids, Method};
use warren_tests::broker::{delete_queue, queue_counts, TestUser};
use warren_tests::client::{assert_same_bytes, pattern};
use warren_tests::lapin_ops::LIMIT;
use warren_tests::process::{free_port, prepare_binary, Process};
use warren_tests::raw::{build, decode_method, RawClient, RawOptions};
use warren_tests::{unique, wait_until, within, BROKER_HOST, BROKER_PORT};

const MIB: usize = 1 << 20;

/// An upper bound for each test: 128 MiB messages cross the broker and warren several times.
const TEST_LIMIT: Duration = Duration::from_secs(240);

/// A warren process in front of the test broker with `extra` flags; waits until it listens.
async fn warren(extra: &[&str]) -> Result<(Process, SocketAddr)> {
    prepare_binary().await?;
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let upstream = format!("amqp://{BROKER_HOST}:{BROKER_PORT}");
    let mut args = vec![
        "--listen",
        &listen,
        "--upstream",
        &upstream,
        "--metrics",
        "off",
        // Clients still connected at the end are closed after a second.
        "--drain-timeout",
        "1s",
    ];
    args.extend_from_slice(extra);
    let mut p = Process::spawn(&args, &[])?;
    p.wait_listening(port).await?;
    Ok((p, SocketAddr::from(([127, 0, 0, 1], port))))
}

async fn client(addr: SocketAddr, user: &TestUser, frame_max: u32) -> Result<RawClient> {
    let opts = RawOptions::new(&user.name, &user.password, "/").frame_max(frame_max);
    RawClient::connect(addr, &opts).await
}

#[derive(Debug, Clone, Copy)]
enum Read {
    Get,
    Consume,
}

/// B9: messages of 20, 64 and 128 MiB, published through warren and read back through it
/// by clients with frame_max 4096 and 131072, with `basic.get` and `basic.consume`, acked and
/// not, arrive byte for byte and leave the queue empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_up_to_max_message_size_reach_readers_of_any_frame_max() -> Result<()> {
    within(TEST_LIMIT, "the test", async {
        let user = TestUser::create("warren-large").await?;
        let (p, addr) = warren(&[]).await?;
        let cases = [
            (20, 131_072, 4096, Read::Get, false),
            (20, 4096, 131_072, Read::Consume, true),
            (64, 4096, 131_072, Read::Get, true),
            (64, 131_072, 4096, Read::Consume, false),
            (128, 131_072, 4096, Read::Get, true),
            (128, 4096, 131_072, Read::Consume, false),
        ];
        let mut publisher = None;
        for (i, (mib, publisher_fm, reader_fm, read, ack)) in cases.into_iter().enumerate() {
            let queue = unique("large");
            let body = pattern(mib * MIB, i as u64 + 1);
            // A publisher with this frame_max (reconnected when it changes).
            let mut pubc = match publisher.take() {
                Some((fm, c)) if fm == publisher_fm => c,
                _ => {
                    let mut c = client(addr, &user, publisher_fm).await?;
                    c.open_channel(1).await?;
                    c
                }
            };
            if pubc.frame_max() != publisher_fm {
                bail!(
                    "the publisher negotiated {} instead of {publisher_fm}",
                    pubc.frame_max()
                );
            }
            pubc.declare_queue(1, &queue, false)
                .await
                .with_context(|| format!("warren's log: {}", p.stderr()))?;
            let started = Instant::now();
            pubc.publish(1, &queue, &body).await?;
            wait_until(LIMIT, "the message in the queue", || async {
                Ok(queue_counts("/", &queue)
                    .await?
                    .is_some_and(|c| c.messages == 1)
                    .then_some(()))
            })
            .await?;
            let published = started.elapsed();
            publisher = Some((publisher_fm, pubc));

            let mut reader = client(addr, &user, reader_fm).await?;
            reader.open_channel(1).await?;
            let started = Instant::now();
            let delivery = match read {
                Read::Get => {
                    reader.send(&[build::get(1, &queue, !ack)]).await?;
                    reader.recv_delivery().await?
                }
                Read::Consume => {
                    reader.consume(1, &queue, "large", !ack).await?;
                    reader.recv_delivery().await?
                }
            };
            let read_took = started.elapsed();
            assert_same_bytes(&delivery.body, &body);
            if ack {
                reader.ack(1, delivery.delivery_tag, false).await?;
            }
            reader.close().await?;
            wait_until(LIMIT, "the queue to be empty", || async {
                Ok(queue_counts("/", &queue)
                    .await?
                    .is_some_and(|c| c.messages == 0)
                    .then_some(()))
            })
            .await?;
            delete_queue("/", &queue).await?;
            eprintln!(
                "{mib} MiB: published with frame_max {publisher_fm} in {published:?}, {read:?} \
                 (ack {ack}) with frame_max {reader_fm} in {read_took:?}; warren peak RSS {} MiB",
                p.peak_rss_kib()? / 1024
            );
        }
        let status = p.stop().await?;
        ensure!(status.success(), "warren exited with {status}");
        Ok(())
    })
    .await?
}

/// B9: a consumer that stops reading while a 64 MiB message is queued for it is cut off once
/// `slow_client_timeout` passes without progress, and the broker requeues the message; a
/// neighbour on the same broker connection keeps receiving meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_is_cut_off_its_message_requeued_and_its_neighbour_served() -> Result<()>
{
    within(TEST_LIMIT, "the test", async {
        let user = TestUser::create("warren-large-stall").await?;
        let (p, addr) = warren(&["--slow-client-timeout", "2s"]).await?;
        let (queue, neighbour_queue) = (unique("large-stall"), unique("large-neighbour"));
        let mut publisher = client(addr, &user, 131_072).await?;
        publisher.open_channel(1).await?;
        publisher.declare_queue(1, &queue, false).await?;
        publisher.declare_queue(1, &neighbour_queue, false).await?;
        // The stalled consumer: a small receive buffer, and it never reads after consume-ok.
        let opts = RawOptions::new(&user.name, &user.password, "/").recv_buffer(64 * 1024);
        let mut stalled = RawClient::connect(addr, &opts).await?;
        stalled.open_channel(1).await?;
        stalled.consume(1, &queue, "stalled", false).await?;
        let mut neighbour = client(addr, &user, 131_072).await?;
        neighbour.open_channel(1).await?;
        neighbour
            .consume(1, &neighbour_queue, "neighbour", true)
            .await?;

        let body = pattern(64 * MIB, 7);
        publisher.publish(1, &queue, &body).await?;
        let started = Instant::now();
        // The neighbour is served every 100 ms while warren holds the stalled one's message
        // (the stalled client is not touched: reading it, even a little, is progress).
        let mut received = 0;
        let cut_off = loop {
            let small = format!("tick {received}");
            publisher
                .publish(1, &neighbour_queue, small.as_bytes())
                .await?;
            let d = within(
                Duration::from_secs(5),
                "the neighbour's message",
                neighbour.recv_delivery(),
            )
            .await??;
            ensure!(d.body == small.as_bytes(), "the neighbour got {:?}", d.body);
            received += 1;
            if p.stderr().contains("client is not reading its deliveries") {
                break started.elapsed();
            }
            ensure!(
                started.elapsed() < LIMIT,
                "the stalled consumer was never cut off: {}",
                p.stderr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Its socket ends: reading what the kernel still holds, it comes to the end quickly.
        within(LIMIT, "the cut-off client's socket to end", async {
            loop {
                match stalled.try_recv(Duration::from_secs(5)).await {
                    Ok(warren_tests::raw::Incoming::Frame(_)) => {}
                    Ok(warren_tests::raw::Incoming::Timeout) => {
                        bail!("the cut-off client's socket stayed open")
                    }
                    Ok(warren_tests::raw::Incoming::Eof) | Err(_) => return Ok(()),
                }
            }
        })
        .await??;
        eprintln!(
            "stalled consumer cut off after {cut_off:?}; the neighbour received {received} \
             messages meanwhile; warren peak RSS {} MiB",
            p.peak_rss_kib()? / 1024
        );
        wait_until(LIMIT, "the message to be requeued", || async {
            Ok(queue_counts("/", &queue)
                .await?
                .is_some_and(|c| c.messages == 1 && c.unacked == 0)
                .then_some(()))
        })
        .await?;
        // And it is whole: a reader that reads gets it.
        let mut reader = client(addr, &user, 4096).await?;
        reader.open_channel(1).await?;
        reader.send(&[build::get(1, &queue, true)]).await?;
        let d = reader.recv_delivery().await?;
        ensure!(
            d.redelivered,
            "the requeued message should be marked redelivered"
        );
        assert_same_bytes(&d.body, &body);
        delete_queue("/", &queue).await?;
        delete_queue("/", &neighbour_queue).await?;
        let status = p.stop().await?;
        ensure!(status.success(), "warren exited with {status}");
        Ok(())
    })
    .await?
}

/// The encoding (with its length) of a table holding `key` → a table nested `depth` levels
/// deep, `{ "k": { "k": ... {} } }`, built without recursion.
fn deep_table(key: &str, depth: usize) -> Vec<u8> {
    let mut inner: Vec<u8> = Vec::new();
    for _ in 0..depth {
        let mut next = vec![1, b'k', b'F'];
        next.extend_from_slice(&(inner.len() as u32).to_be_bytes());
        next.extend_from_slice(&inner);
        inner = next;
    }
    let mut entry = vec![key.len() as u8];
    entry.extend_from_slice(key.as_bytes());
    entry.push(b'F');
    entry.extend_from_slice(&(inner.len() as u32).to_be_bytes());
    entry.extend_from_slice(&inner);
    let mut table = (entry.len() as u32).to_be_bytes().to_vec();
    table.extend_from_slice(&entry);
    table
}

/// A content header announcing `body_size` bytes whose `headers` property is `headers` (an
/// encoded table).
fn header_with_headers(ch: u16, body_size: u64, headers: &[u8]) -> Bytes {
    let mut p = BytesMut::new();
    p.extend_from_slice(&60u16.to_be_bytes());
    p.extend_from_slice(&0u16.to_be_bytes());
    p.extend_from_slice(&body_size.to_be_bytes());
    p.extend_from_slice(&(1u16 << 13).to_be_bytes());
    p.extend_from_slice(headers);
    Frame::new(FrameType::Header, ch, &p).freeze()
}

/// Publishes a message with 5,000-deep headers and a queue with a 5,000-deep argument on
/// `addr`, gets the message back; returns the header payload it came back with.
async fn deep_tables_through(addr: SocketAddr, user: &TestUser) -> Result<Vec<u8>> {
    let mut c = client(addr, user, 131_072).await?;
    c.open_channel(1).await?;
    let queue = unique("deep");
    let args = deep_table("x-warren-deep", 5_000);
    c.send(&[method_frame(1, ids::QUEUE_DECLARE, |w| {
        w.u16(0)
            .shortstr(queue.as_bytes())
            .bit(false)
            .bit(false)
            .bit(false)
            .bit(true) // auto-delete
            .bit(false)
            .raw(&args);
    })])
    .await?;
    let ok = c.expect_method(1, ids::QUEUE_DECLARE_OK).await?;
    ensure!(matches!(decode_method(&ok)?, Method::QueueDeclareOk { .. }));
    let headers = deep_table("nested", 5_000);
    c.send(&[
        build::publish(1, "", &queue, false, false),
        header_with_headers(1, 4, &headers),
        build::body(1, b"deep"),
    ])
    .await?;
    c.send(&[build::get(1, &queue, true)]).await?;
    let got = c.recv().await?;
    ensure!(
        got.method_id() == Some(ids::BASIC_GET_OK),
        "expected get-ok, got {got:?}"
    );
    let header = c.recv().await.context("the content header")?;
    let body = c.recv().await.context("the body")?;
    ensure!(body.payload() == b"deep");
    // Dropped rather than closed: RabbitMQ takes up to 30 s to answer the close of a
    // connection that carried 5,000-deep tables (warren answers its client at once).
    c.kill();
    Ok(header.payload().to_vec())
}

/// B9: tables nested 5,000 deep in a message's headers and in a queue argument are accepted
/// and delivered byte for byte, through warren as by RabbitMQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_of_any_depth_go_through_unchanged() -> Result<()> {
    within(TEST_LIMIT, "the test", async {
        let user = TestUser::create("warren-deep").await?;
        let (p, addr) = warren(&[]).await?;
        let broker = warren_tests::broker_addr();
        let t = Instant::now();
        let direct = deep_tables_through(broker, &user).await?;
        let d = t.elapsed();
        let through = deep_tables_through(addr, &user).await?;
        eprintln!(
            "5,000-deep tables: directly {d:?}, through warren {:?}",
            t.elapsed() - d
        );
        ensure!(
            direct == through,
            "the header came back differently through warren"
        );
        ensure!(
            direct.len() > 5_000 * 7,
            "the header lost its depth: {} bytes",
            direct.len()
        );
        p.stop().await?;
        Ok(())
    })
    .await?
}

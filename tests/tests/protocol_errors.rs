//! A client's protocol errors answered as RabbitMQ answers them (B7): for each malformed or
//! misplaced frame, the same frames go once straight to RabbitMQ and once through warren, on
//! a fresh connection with channel 1 open, and the close that comes back — its channel, reply
//! code, text and the method it names as the cause — must be the same. warren answers these
//! itself (forwarded, most would close the shared broker connection), so this is where it
//! could drift from RabbitMQ unnoticed.
//!
//! Left out, with what RabbitMQ 3.10 does instead: an unknown class or method and a field
//! table with an unknown value type (it drops the socket without a close; warren sends 540
//! and 502), a body longer than its header declared (it notices only at the next frame),
//! server methods that carry content such as `basic.deliver` (it waits for their content),
//! and a bad frame type or end octet (same code; its text quotes Erlang terms).

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use warren_core::frame::{method_frame, Frame, FrameType};
use warren_core::method::{encode, ids, MethodId, Tune};
use warren_tests::lapin_ops::bounded;
use warren_tests::raw::{build, close_for, RawClient, RawOptions};
use warren_tests::{broker_addr, TestUser, Warren};

/// The frames of each case, sent after channel 1 is open.
fn cases() -> Vec<(&'static str, Vec<Bytes>)> {
    let m = |ch: u16, class: u16, method: u16, args: &[u8]| -> Bytes {
        let args = args.to_vec();
        method_frame(ch, MethodId::new(class, method), move |w| {
            w.raw(&args);
        })
    };
    let raw = |kind: FrameType, ch: u16, payload: &[u8]| Frame::new(kind, ch, payload).freeze();
    let tune_ok = encode::tune(
        Tune {
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 0,
        },
        true,
    );
    vec![
        (
            "a method on an unopened channel",
            vec![build::qos(9, 0, 10)],
        ),
        ("a second channel.open", vec![encode::channel_open(1)]),
        (
            "a heartbeat on channel 1",
            vec![raw(FrameType::Heartbeat, 1, b"")],
        ),
        (
            "a heartbeat with a payload",
            vec![raw(FrameType::Heartbeat, 1, b"ab")],
        ),
        ("a content header on channel 0", vec![build::header(0, 3)]),
        ("a content body on channel 0", vec![build::body(0, b"abc")]),
        ("channel.open on channel 0", vec![encode::channel_open(0)]),
        ("connection.tune-ok after the handshake", vec![tune_ok]),
        (
            "connection.blocked on channel 0",
            vec![m(0, 10, 60, b"\x01x")],
        ),
        (
            "connection.blocked on channel 1",
            vec![m(1, 10, 60, b"\x01x")],
        ),
        ("truncated arguments", vec![m(1, 60, 10, b"\x00\x00")]),
        (
            "trailing bytes after the arguments",
            vec![m(1, 60, 10, b"\x00\x00\x00\x00\x00\x0a\x00xyz")],
        ),
        (
            "basic.qos with a prefetch size",
            vec![build::qos(1, 4096, 10)],
        ),
        (
            "basic.recover requeue=false",
            vec![build::recover(1, false)],
        ),
        (
            "an unknown exchange type",
            vec![build::exchange_declare(1, "warren-pe-x", "x-nope")],
        ),
        // RabbitMQ's other text for a type: a name that is an atom of the broker but no
        // exchange type ("invalid exchange type"); warren asks the broker and relays it.
        (
            "an exchange type that names no type",
            vec![build::exchange_declare(1, "warren-pe-x", "queue")],
        ),
        (
            "an empty exchange type",
            vec![build::exchange_declare(1, "warren-pe-x", "")],
        ),
        (
            "channel.close-ok on an open channel",
            vec![m(1, 20, 41, b"")],
        ),
        (
            "connection.close-ok when nothing was closed",
            vec![encode::close_ok(0)],
        ),
        // A commit of a publish that reached a queue holds the channel until the queue took
        // it: a method written right behind it closes the connection.
        (
            "a method behind a tx.commit of a publish",
            [
                vec![
                    method_frame(1, MethodId::new(90, 10), |_| {}),
                    build::queue_declare(1, "warren-pe-tx-queue", false),
                ],
                build::publish_frames(1, "", "warren-pe-tx-queue", b"in the tx", false, 4096),
                vec![
                    method_frame(1, MethodId::new(90, 20), |_| {}),
                    build::qos(1, 0, 10),
                ],
            ]
            .concat(),
        ),
        // A commit on a channel that is not transactional is refused at once (406 on the
        // channel): the method behind it is no method while a commit is processed.
        (
            "tx.commit on a channel that is not transactional, and a method behind it",
            vec![m(1, 90, 20, b""), build::qos(1, 0, 10)],
        ),
        ("channel.flow active=false", vec![build::flow(1, false)]),
        ("a body without a method", vec![build::body(1, b"abc")]),
        ("a header without a method", vec![build::header(1, 3)]),
        (
            "a method inside content",
            vec![
                build::publish(1, "", "nowhere", false, false),
                build::header(1, 10),
                build::qos(1, 0, 10),
            ],
        ),
        (
            "a header of another class",
            vec![
                build::publish(1, "", "nowhere", false, false),
                raw(
                    FrameType::Header,
                    1,
                    &[0, 50, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0],
                ),
            ],
        ),
        (
            "basic.publish immediate=true",
            vec![
                build::publish(1, "", "nowhere", false, true),
                build::header(1, 2),
                build::body(1, b"hi"),
            ],
        ),
        (
            "a server's method (queue.declare-ok)",
            vec![m(1, 50, 11, b"\x01q\x00\x00\x00\x00\x00\x00\x00\x00")],
        ),
        ("a server's method (basic.qos-ok)", vec![m(1, 60, 11, b"")]),
        (
            "a body frame larger than frame_max",
            vec![
                build::publish(1, "", "nowhere", false, false),
                build::header(1, 300_000),
                build::body(1, &[b'x'; 200_000]),
            ],
        ),
        (
            // RabbitMQ takes a payload of frame_max itself (its "fudge" for clients that forget
            // the 8 bytes of framing): the open after it is refused as a method inside
            // content, not the frame as too large.
            "a body frame whose payload is frame_max, then a second channel.open",
            vec![
                build::publish(1, "", "nowhere", false, false),
                build::header(1, 300_000),
                build::body(1, &[b'x'; 131_072]),
                encode::channel_open(1),
            ],
        ),
    ]
}

/// A test's own broker user (each gets its own hub in warren), raw-client options for it, and
/// a warren.
async fn own_user_and_warren(prefix: &str) -> Result<(TestUser, RawOptions, Warren)> {
    let user = TestUser::create(prefix).await?;
    let opts = RawOptions::new(&user.name, &user.password, "/");
    Ok((user, opts, Warren::start()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_get_rabbitmqs_close_frame_for_frame() -> Result<()> {
    bounded(async {
        let (_user, opts, warren) = own_user_and_warren("warren-pe").await?;
        let mut differences = Vec::new();
        for (case, frames) in cases() {
            let direct = close_for(broker_addr(), &opts, &frames).await?;
            let through = close_for(warren.addr(), &opts, &frames).await?;
            if direct != through {
                differences.push(format!(
                    "{case}:\n  RabbitMQ {direct:?}\n  warren   {through:?}"
                ));
            }
        }
        ensure!(differences.is_empty(), "{}", differences.join("\n"));
        Ok(())
    })
    .await
}

/// RabbitMQ counts channels against the channel_max a client negotiated; their numbers may
/// be higher. The open past the count closes the connection with 530, naming no method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_max_is_a_count_as_on_rabbitmq() -> Result<()> {
    bounded(async {
        let (_user, mut opts, warren) = own_user_and_warren("warren-pe-max").await?;
        opts.channel_max = 2;
        for addr in [broker_addr(), warren.addr()] {
            let mut client = RawClient::connect(addr, &opts).await?;
            client.open_channel(7).await?;
            client.open_channel(1).await?;
            client.send(&[encode::channel_open(2)]).await?;
            let closed = client.expect_close().await?;
            let want = "NOT_ALLOWED - number of channels opened (2) has reached the negotiated \
                        channel_max (2)";
            ensure!(
                (
                    closed.channel,
                    closed.code,
                    closed.text.as_str(),
                    closed.cause
                ) == (0, 530, want, (0, 0)),
                "{addr}: {closed:?}"
            );
            client.finish_close().await?;
        }
        Ok(())
    })
    .await
}

/// A message above max_message_size (128 MiB on both): RabbitMQ refuses it with 406 once the
/// whole body is in, naming basic.publish; warren refuses at the header, before buffering any
/// of it, with the same channel close. The client here sends RabbitMQ the whole body and
/// warren only the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_message_gets_rabbitmqs_406() -> Result<()> {
    bounded(async {
        let (_user, opts, warren) = own_user_and_warren("warren-pe-size").await?;
        let size: u64 = (128 << 20) + 1;
        let announce = [
            build::publish(1, "", "nowhere", false, false),
            build::header(1, size),
        ];
        let mut direct = RawClient::connect(broker_addr(), &opts).await?;
        direct.open_channel(1).await?;
        direct.send(&announce).await?;
        let chunk = vec![b'x'; 131_064];
        let mut sent = 0;
        while sent < size {
            let n = chunk.len().min(usize::try_from(size - sent)?);
            direct.send(&[build::body(1, &chunk[..n])]).await?;
            sent += n as u64;
        }
        let from_rabbitmq = direct.expect_close().await?;
        let mut through = RawClient::connect(warren.addr(), &opts).await?;
        through.open_channel(1).await?;
        through.send(&announce).await?;
        let from_warren = through.expect_close().await?;
        ensure!(
            from_rabbitmq == from_warren,
            "RabbitMQ {from_rabbitmq:?}\nwarren   {from_warren:?}"
        );
        ensure!(from_warren.code == 406, "{from_warren:?}");
        Ok(())
    })
    .await
}

/// RabbitMQ answers a `tx.commit` with nothing published in it at once, so a method written
/// right behind it is taken; only a commit of publishes holds the channel, and a method
/// meanwhile closes the connection (504, in the cases above). Directly and through warren
/// the client gets both replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_of_nothing_holds_nothing_as_on_rabbitmq() -> Result<()> {
    bounded(async {
        let (_user, opts, warren) = own_user_and_warren("warren-pe-tx").await?;
        let tx = |method: u16| method_frame(1, MethodId::new(90, method), |_| {});
        for (who, addr) in [("RabbitMQ", broker_addr()), ("warren", warren.addr())] {
            let mut c = RawClient::connect(addr, &opts).await?;
            c.open_channel(1).await?;
            c.send(&[tx(10)]).await?;
            c.expect_method(1, MethodId::new(90, 11)).await?;
            c.send(&[tx(20), build::qos(1, 0, 10)]).await?;
            c.expect_method(1, ids::TX_COMMIT_OK)
                .await
                .with_context(|| format!("the commit's reply from {who}"))?;
            c.expect_method(1, ids::BASIC_QOS_OK)
                .await
                .with_context(|| format!("the reply to the method behind it from {who}"))?;
            c.hang_up().await?;
        }
        Ok(())
    })
    .await
}

//! warren end to end: real clients (lapin, amqprs) → an in-process warren → the real RabbitMQ.
//!
//! Every test has its own warren and its own queue names; tests that count warren's broker
//! connections also have their own broker user, because upstream connections are per
//! (user, password, vhost) and so attributable to that test alone.

use anyhow::{Context, Result};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use std::sync::Arc;
use warren_tests::broker::{self, BrokerConnection};
use warren_tests::client::{self, assert_same_bytes, lapin_reply_code, pattern};
use warren_tests::lapin_ops::{
    bounded, lapin_declare, lapin_get, lapin_publish, lapin_round_trip, the_upstream_of, LIMIT,
};
use warren_tests::{unique, wait_until, within, TestUser, Warren, GUEST};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_publish_then_get() -> Result<()> {
    bounded(async {
        let warren = Warren::start()?;
        let conn = client::lapin_connect(&warren.amqp_url(GUEST, GUEST, "/")).await?;
        let ch = conn.create_channel().await?;
        let queue = unique("e2e-lapin-get");
        lapin_declare(&ch, &queue).await?;

        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let confirmation = ch
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                b"hello through warren",
                BasicProperties::default()
                    .with_content_type("text/plain".into())
                    .with_message_id("m-1".into()),
            )
            .await?
            .await?;
        assert!(confirmation.is_ack(), "publish not acked: {confirmation:?}");

        let got = ch
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await?
            .context("the confirmed message is not in the queue")?;
        assert_eq!(got.delivery.data, b"hello through warren");
        assert_eq!(
            got.delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str()),
            Some("m-1")
        );
        assert_eq!(
            got.delivery
                .properties
                .content_type()
                .as_ref()
                .map(|s| s.as_str()),
            Some("text/plain")
        );
        assert_eq!(got.message_count, 0);
        assert!(ch
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await?
            .is_none());

        ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
        conn.close(200, "bye".into()).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_publish_then_get() -> Result<()> {
    use amqprs::channel::{
        BasicGetArguments, BasicPublishArguments, QueueDeclareArguments, QueueDeleteArguments,
    };
    bounded(async {
        let warren = Warren::start()?;
        let conn = client::amqprs_connect(warren.addr(), GUEST, GUEST, "/").await?;
        let ch = conn.open_channel(None).await?;
        let queue = unique("e2e-amqprs-get");
        ch.queue_declare(QueueDeclareArguments::new(&queue)).await?;
        ch.basic_publish(
            amqprs::BasicProperties::default()
                .with_message_id("m-2")
                .finish(),
            b"hello from amqprs".to_vec(),
            BasicPublishArguments::new("", &queue),
        )
        .await?;

        let (ch_ref, q) = (&ch, queue.as_str());
        let (_get_ok, props, body) = wait_until(LIMIT, "the message", || async move {
            Ok(ch_ref
                .basic_get(BasicGetArguments::new(q).no_ack(true).finish())
                .await?)
        })
        .await?;
        assert_eq!(body, b"hello from amqprs");
        assert_eq!(props.message_id().map(String::as_str), Some("m-2"));
        assert!(ch
            .basic_get(BasicGetArguments::new(&queue).no_ack(true).finish())
            .await?
            .is_none());

        ch.queue_delete(QueueDeleteArguments::new(&queue)).await?;
        ch.close().await?;
        conn.close().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_consume_with_manual_acks() -> Result<()> {
    const N: u64 = 20;
    bounded(async {
        let warren = Warren::start()?;
        let conn = client::lapin_connect(&warren.amqp_url(GUEST, GUEST, "/")).await?;
        let publisher = conn.create_channel().await?;
        let queue = unique("e2e-lapin-ack");
        lapin_declare(&publisher, &queue).await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        for i in 0..N {
            lapin_publish(&publisher, &queue, format!("msg-{i}").as_bytes()).await?;
        }
        let returned = publisher.wait_for_confirms().await?;
        assert!(returned.is_empty(), "unexpected returns: {returned:?}");

        let consumer_ch = conn.create_channel().await?;
        // A small prefetch: without working acks the broker stops after 5 deliveries and the
        // loop below runs into its deadline.
        consumer_ch.basic_qos(5, BasicQosOptions::default()).await?;
        let mut consumer = consumer_ch
            .basic_consume(
                queue.as_str().into(),
                "e2e-consumer".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for i in 0..N {
            let delivery = within(LIMIT, &format!("delivery {i}"), consumer.next())
                .await?
                .context("the consumer stream ended")??;
            assert_eq!(
                String::from_utf8_lossy(&delivery.data),
                format!("msg-{i}"),
                "deliveries out of order"
            );
            assert_eq!(delivery.delivery_tag, i + 1, "delivery tags start at 1");
            assert!(!delivery.redelivered);
            delivery.ack(BasicAckOptions::default()).await?;
        }

        // Every message was acknowledged: nothing ready, nothing unacked on the broker.
        wait_until(LIMIT, "the queue to be empty after the acks", || {
            let queue = queue.clone();
            async move {
                let counts = broker::queue_counts("/", &queue)
                    .await?
                    .context("the queue is gone")?;
                Ok((counts.messages == 0).then_some(()))
            }
        })
        .await?;

        consumer_ch.close(200, "done".into()).await?;
        publisher
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
        conn.close(200, "bye".into()).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mebibyte_message_round_trips_with_lapin() -> Result<()> {
    bounded(async {
        let warren = Warren::start()?;
        let conn = client::lapin_connect(&warren.amqp_url(GUEST, GUEST, "/")).await?;
        let ch = conn.create_channel().await?;
        let queue = unique("e2e-lapin-big");
        lapin_declare(&ch, &queue).await?;
        let payload = pattern(1 << 20, 0x5eed);
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let confirmation = ch
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &payload,
                BasicProperties::default(),
            )
            .await?
            .await?;
        assert!(confirmation.is_ack(), "publish not acked: {confirmation:?}");
        let got = lapin_get(&ch, &queue).await?;
        assert_same_bytes(&got.delivery.data, &payload);
        ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
        conn.close(200, "bye".into()).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mebibyte_message_round_trips_with_amqprs() -> Result<()> {
    use amqprs::channel::{
        BasicGetArguments, BasicPublishArguments, QueueDeclareArguments, QueueDeleteArguments,
    };
    bounded(async {
        let warren = Warren::start()?;
        let conn = client::amqprs_connect(warren.addr(), GUEST, GUEST, "/").await?;
        let ch = conn.open_channel(None).await?;
        let queue = unique("e2e-amqprs-big");
        ch.queue_declare(QueueDeclareArguments::new(&queue)).await?;
        let payload = pattern(1 << 20, 0xb16);
        ch.basic_publish(
            amqprs::BasicProperties::default(),
            payload.clone(),
            BasicPublishArguments::new("", &queue),
        )
        .await?;
        let (ch_ref, q) = (&ch, queue.as_str());
        let (_, _, body) = wait_until(LIMIT, "the big message", || async move {
            Ok(ch_ref
                .basic_get(BasicGetArguments::new(q).no_ack(true).finish())
                .await?)
        })
        .await?;
        assert_same_bytes(&body, &payload);
        ch.queue_delete(QueueDeleteArguments::new(&queue)).await?;
        ch.close().await?;
        conn.close().await?;
        Ok(())
    })
    .await
}

/// B1: clients of the same (user, password, vhost) share one broker connection, whether they
/// come one after another or all at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_clients_share_one_broker_connection() -> Result<()> {
    const SEQUENTIAL: usize = 10;
    const PARALLEL: usize = 50;
    bounded(async {
        let user = TestUser::create("warren-test-share").await?;
        let warren = Warren::start()?;
        let url = warren.amqp_url(&user.name, &user.password, "/");
        let queue = unique("e2e-share");

        // Ten clients in a row.
        let mut upstream: Option<BrokerConnection> = None;
        for i in 0..SEQUENTIAL {
            let conn = client::lapin_connect(&url).await?;
            let ch = conn.create_channel().await?;
            if i == 0 {
                lapin_declare(&ch, &queue).await?;
            }
            lapin_publish(&ch, &queue, format!("seq-{i}").as_bytes()).await?;
            if i == 0 || i == SEQUENTIAL - 1 {
                let now = the_upstream_of(&user).await?;
                if let Some(first) = &upstream {
                    assert_eq!(
                        first.name, now.name,
                        "sequential clients did not reuse the first broker connection"
                    );
                }
                upstream = Some(now);
            }
            conn.close(200, "bye".into()).await?;
        }
        let upstream = upstream.expect("sampled");
        assert!(
            upstream
                .connection_name
                .as_deref()
                .is_some_and(|n| n.contains(&user.name)),
            "the upstream's connection_name names the user: {upstream:?}"
        );

        // Fifty clients at once, all connected at the same time.
        let connected = Arc::new(tokio::sync::Barrier::new(PARALLEL + 1));
        let checked = Arc::new(tokio::sync::Barrier::new(PARALLEL + 1));
        let mut tasks = Vec::new();
        for i in 0..PARALLEL {
            let (url, queue) = (url.clone(), queue.clone());
            let (connected, checked) = (connected.clone(), checked.clone());
            tasks.push(tokio::spawn(async move {
                let session = async {
                    let conn = client::lapin_connect(&url).await?;
                    let ch = conn.create_channel().await?;
                    lapin_publish(&ch, &queue, format!("par-{i}").as_bytes()).await?;
                    anyhow::Ok(conn)
                }
                .await;
                connected.wait().await;
                checked.wait().await;
                let conn = session?;
                conn.close(200, "bye".into()).await?;
                anyhow::Ok(())
            }));
        }
        connected.wait().await;
        let during = the_upstream_of(&user).await;
        checked.wait().await;
        for (i, task) in tasks.into_iter().enumerate() {
            task.await?
                .with_context(|| format!("parallel client {i}"))?;
        }
        let during = during?;
        assert_eq!(
            during.name, upstream.name,
            "parallel clients did not reuse the broker connection of the sequential ones"
        );

        // Every client's publish arrived.
        let total = (SEQUENTIAL + PARALLEL) as u64;
        let q = queue.as_str();
        wait_until(LIMIT, "all publishes to arrive", || async move {
            let counts = broker::queue_counts("/", q).await?;
            Ok(counts.filter(|c| c.messages == total))
        })
        .await?;
        broker::delete_queue("/", &queue).await?;
        Ok(())
    })
    .await
}

/// B2: a wrong password gets what RabbitMQ gives a client that advertises
/// `authentication_failure_close` (lapin does): `Connection.Close 403 ACCESS_REFUSED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused_with_403_for_lapin() -> Result<()> {
    bounded(async {
        let user = TestUser::create("warren-test-auth").await?;
        let warren = Warren::start()?;
        let bad = warren.amqp_url(&user.name, "not-the-password", "/");
        // Twice: the second answer may come from warren's short negative cache.
        for attempt in 0..2 {
            let result = client::lapin_try_connect(&bad).await?;
            let err = result
                .err()
                .with_context(|| format!("attempt {attempt}: a wrong password was accepted"))?;
            assert_eq!(
                lapin_reply_code(&err),
                Some(403),
                "attempt {attempt}: expected 403 ACCESS_REFUSED, got {err:?}"
            );
        }
        // The right password still works through the same warren.
        let conn = client::lapin_connect(&warren.amqp_url(&user.name, &user.password, "/")).await?;
        let ch = conn.create_channel().await?;
        let queue = unique("e2e-auth");
        lapin_declare(&ch, &queue).await?;
        lapin_round_trip(&ch, &queue, "after a refused login").await?;
        ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
        conn.close(200, "bye".into()).await?;
        Ok(())
    })
    .await
}

/// B2 for a client that does not advertise `authentication_failure_close` (amqprs): the login
/// fails promptly (RabbitMQ just closes the socket; a 403 close is fine too), never opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused_for_amqprs() -> Result<()> {
    bounded(async {
        let user = TestUser::create("warren-test-auth2").await?;
        let warren = Warren::start()?;
        let result =
            client::amqprs_try_connect(warren.addr(), &user.name, "not-the-password", "/").await?;
        let err = result
            .err()
            .context("a wrong password was accepted by warren")?;
        let text = err.to_string();
        let socket_closed = matches!(err, amqprs::error::Error::NetworkError(_));
        let refused_403 = text.contains("403") || text.contains("ACCESS_REFUSED");
        assert!(
            socket_closed || refused_403,
            "expected a closed socket or 403 ACCESS_REFUSED, got {err:?}"
        );
        // The right password works.
        let conn = client::amqprs_connect(warren.addr(), &user.name, &user.password, "/").await?;
        let ch = conn.open_channel(None).await?;
        ch.close().await?;
        conn.close().await?;
        Ok(())
    })
    .await
}

/// B4: a broker `Channel.Close` (404 from a passive declare of a missing queue) closes only that
/// channel; the same client's other channels and a neighbour on the same upstream go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_declare_of_missing_queue_closes_only_that_channel() -> Result<()> {
    bounded(async {
        let user = TestUser::create("warren-test-404").await?;
        let warren = Warren::start()?;
        let url = warren.amqp_url(&user.name, &user.password, "/");
        let queue = unique("e2e-404");

        let a = client::lapin_connect(&url).await?;
        let b = client::lapin_connect(&url).await?;
        let a_doomed = a.create_channel().await?;
        let a_other = a.create_channel().await?;
        let b_ch = b.create_channel().await?;
        lapin_declare(&b_ch, &queue).await?;
        lapin_round_trip(&b_ch, &queue, "b-before").await?;
        let upstream = the_upstream_of(&user).await?;

        let missing = unique("e2e-missing");
        let err = a_doomed
            .queue_declare(
                missing.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .err()
            .context("a passive declare of a missing queue succeeded")?;
        assert_eq!(
            lapin_reply_code(&err),
            Some(404),
            "expected 404 NOT_FOUND, got {err:?}"
        );
        assert!(
            !a_doomed.status().connected(),
            "the failed channel is still open"
        );
        assert!(a.status().connected(), "the client's connection was closed");

        // The same client's other channel, and a fresh one, work.
        lapin_round_trip(&a_other, &queue, "a-other-after").await?;
        let a_new = a.create_channel().await?;
        lapin_round_trip(&a_new, &queue, "a-new-after").await?;

        // The neighbour keeps publishing and getting.
        for i in 0..5 {
            lapin_round_trip(&b_ch, &queue, &format!("b-after-{i}")).await?;
        }

        // And the shared broker connection is the one from before.
        let after = the_upstream_of(&user).await?;
        assert_eq!(
            after.name, upstream.name,
            "the broker connection was replaced"
        );

        b_ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
        a.close(200, "bye".into()).await?;
        b.close(200, "bye".into()).await?;
        Ok(())
    })
    .await
}

/// B3: two clients on the same upstream both pick channels 1 and 7; each of the four channels
/// gets exactly the messages meant for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_explicit_channel_ids_do_not_collide() -> Result<()> {
    use amqprs::channel::{
        BasicConsumeArguments, BasicPublishArguments, Channel, QueueDeclareArguments,
        QueueDeleteArguments,
    };
    const PER_SENDER: usize = 3;
    bounded(async {
        let user = TestUser::create("warren-test-chan").await?;
        let warren = Warren::start()?;
        let x = client::amqprs_connect(warren.addr(), &user.name, &user.password, "/").await?;
        let y = client::amqprs_connect(warren.addr(), &user.name, &user.password, "/").await?;

        let mut channels: Vec<(String, Channel, String)> = Vec::new();
        for (client_name, conn) in [("x", &x), ("y", &y)] {
            for id in [1u16, 7] {
                let ch = conn.open_channel(Some(id)).await?;
                assert_eq!(ch.channel_id(), id);
                let label = format!("{client_name}{id}");
                let queue = unique(&format!("e2e-chan-{label}"));
                ch.queue_declare(QueueDeclareArguments::new(&queue)).await?;
                channels.push((label, ch, queue));
            }
        }
        let _ = the_upstream_of(&user).await?;

        let mut receivers = Vec::new();
        for (label, ch, queue) in &channels {
            let args = BasicConsumeArguments::new(queue, &format!("ctag-{label}"))
                .manual_ack(false)
                .finish();
            let (_tag, rx) = ch.basic_consume_rx(args).await?;
            receivers.push((label.clone(), rx));
        }

        // Every channel sends PER_SENDER messages to every channel's queue.
        for (from, ch, _) in &channels {
            for (to, _, queue) in &channels {
                for i in 0..PER_SENDER {
                    ch.basic_publish(
                        amqprs::BasicProperties::default(),
                        format!("{from}->{to}#{i}").into_bytes(),
                        BasicPublishArguments::new("", queue),
                    )
                    .await?;
                }
            }
        }

        for (label, rx) in &mut receivers {
            let mut got = Vec::new();
            while got.len() < channels.len() * PER_SENDER {
                let msg = within(LIMIT, &format!("deliveries on {label}"), rx.recv())
                    .await?
                    .with_context(|| format!("consumer of {label} ended"))?;
                let body = String::from_utf8(msg.content.unwrap_or_default())?;
                got.push(body);
            }
            for body in &got {
                assert!(
                    body.contains(&format!("->{label}#")),
                    "channel {label} received a message meant for another: {body}"
                );
            }
            // Per sender, in order.
            for (from, _, _) in &channels {
                let from_this: Vec<&String> = got
                    .iter()
                    .filter(|b| b.starts_with(&format!("{from}->")))
                    .collect();
                let want: Vec<String> = (0..PER_SENDER)
                    .map(|i| format!("{from}->{label}#{i}"))
                    .collect();
                assert_eq!(
                    from_this,
                    want.iter().collect::<Vec<_>>(),
                    "messages from {from} to {label}"
                );
            }
        }

        for (_, ch, queue) in channels {
            ch.queue_delete(QueueDeleteArguments::new(&queue)).await?;
            ch.close().await?;
        }
        x.close().await?;
        y.close().await?;
        Ok(())
    })
    .await
}

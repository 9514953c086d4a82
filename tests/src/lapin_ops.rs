//! Small lapin operations and test scaffolding shared by the end-to-end test files: declare,
//! publish, get, a publish→get round trip, the one broker connection of a test's user, and
//! the upper bound every test body runs under.

use crate::broker::{self, BrokerConnection};
use crate::{wait_until, within, TestUser};
use anyhow::{ensure, Context, Result};
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use std::future::Future;
use std::time::Duration;

/// Upper bound for one wait inside a test.
pub const LIMIT: Duration = Duration::from_secs(30);
/// Upper bound for a whole test, below nextest's slow-timeout, so a hang fails with a message.
pub const TEST_LIMIT: Duration = Duration::from_secs(100);

/// Runs a test body with [`TEST_LIMIT`] as its upper bound.
pub async fn bounded(body: impl Future<Output = Result<()>>) -> Result<()> {
    within(TEST_LIMIT, "the test", body).await?
}

/// Queue arguments for lapin: unused queues expire, so a failed run leaves nothing behind.
#[must_use]
pub fn expiring() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongInt(600_000));
    args
}

/// Declares `queue` (non-durable, [`expiring`]) on `ch`.
pub async fn lapin_declare(ch: &lapin::Channel, queue: &str) -> Result<()> {
    ch.queue_declare(queue.into(), QueueDeclareOptions::default(), expiring())
        .await
        .with_context(|| format!("declaring {queue}"))?;
    Ok(())
}

/// Publishes `payload` to `queue` through the default exchange (no confirm awaited).
pub async fn lapin_publish(ch: &lapin::Channel, queue: &str, payload: &[u8]) -> Result<()> {
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        payload,
        BasicProperties::default(),
    )
    .await
    .with_context(|| format!("publishing to {queue}"))?;
    Ok(())
}

/// Gets the next message of `queue` (auto-ack), polling until one is there.
pub async fn lapin_get(
    ch: &lapin::Channel,
    queue: &str,
) -> Result<lapin::message::BasicGetMessage> {
    wait_until(LIMIT, &format!("a message in {queue}"), || async move {
        ch.basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .with_context(|| format!("basic.get on {queue}"))
    })
    .await
}

/// Publishes `payload` to `queue` on `ch` and gets it back on `ch`.
pub async fn lapin_round_trip(ch: &lapin::Channel, queue: &str, payload: &str) -> Result<()> {
    lapin_publish(ch, queue, payload.as_bytes()).await?;
    let got = lapin_get(ch, queue).await?;
    ensure!(
        got.delivery.data == payload.as_bytes(),
        "expected {payload:?} from {queue}, got {:?}",
        String::from_utf8_lossy(&got.delivery.data)
    );
    Ok(())
}

/// The only broker connection warren holds for `user`; fails if there are none or several.
pub async fn the_upstream_of(user: &TestUser) -> Result<BrokerConnection> {
    let ups = broker::warren_connections_of(&user.name).await?;
    ensure!(
        ups.len() == 1,
        "expected exactly one broker connection from warren for {}, found {}: {ups:#?}",
        user.name,
        ups.len()
    );
    Ok(ups.into_iter().next().expect("one"))
}

/// Fails unless warren still holds exactly one broker connection for `user` and it is
/// `before`: RabbitMQ closing the shared connection would make warren dial a new one, so a
/// client's misstep that reached the broker shows as a replaced connection.
pub async fn assert_upstream_kept(user: &TestUser, before: &BrokerConnection) -> Result<()> {
    let now = the_upstream_of(user).await?;
    ensure!(
        now.name == before.name,
        "warren's broker connection for {} was replaced: {} before, {} now",
        user.name,
        before.name,
        now.name
    );
    Ok(())
}

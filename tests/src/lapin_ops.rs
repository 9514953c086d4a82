//! Small lapin operations and test scaffolding shared by the end-to-end test files: declare,
//! publish, get, a publish→get round trip, the one broker connection of a test's user, and
//! the upper bound every test body runs under.

use crate::broker::{self, BrokerConnection};
use crate::{wait_until, within, TestUser, Warren};
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

/// The sum of the samples of `name` in warren's `/metrics` whose labels include every pair
/// of `labels` (0 when there is none). Counters carry their `_total` suffix in `name`.
pub async fn metric(warren: &Warren, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    let addr = warren
        .metrics_addr()
        .context("metrics are enabled in tests")?;
    let page = crate::http::get(addr, "/metrics").await?;
    ensure!(page.status == 200, "GET /metrics: {page:?}");
    Ok(sum_samples(&page.body, name, labels))
}

/// Sums the samples of `name` in Prometheus text whose labels include all of `labels`.
fn sum_samples(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let found = parse_labels(label_text);
        let matches = labels
            .iter()
            .all(|(k, v)| found.iter().any(|(fk, fv)| fk == k && fv == v));
        if matches {
            sum += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}

/// `a="x",b="y\"z"` → `[("a", "x"), ("b", "y\"z")]`, unescaping `\\`, `\"` and `\n`.
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() || chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                other => value.push(other),
            }
        }
        out.push((key.trim_start_matches(',').trim().to_owned(), value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_matching_samples() {
        let text = "# HELP x y\n\
                    warren_hubs 2\n\
                    warren_clients{user=\"a\",vhost=\"/\"} 1\n\
                    warren_clients{user=\"b\",vhost=\"prod\\\"ion\"} 3\n\
                    warren_clients{user=\"a\",vhost=\"v2\"} 4\n";
        assert_eq!(super::sum_samples(text, "warren_hubs", &[]), 2.0);
        assert_eq!(
            super::sum_samples(text, "warren_clients", &[("user", "a")]),
            5.0
        );
        assert_eq!(
            super::sum_samples(text, "warren_clients", &[("vhost", "prod\"ion")]),
            3.0
        );
        assert_eq!(super::sum_samples(text, "warren_nothing", &[]), 0.0);
    }
}

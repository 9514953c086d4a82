//! P4: publish→deliver round trips of single messages.
//!
//! One publisher and one auto-ack consumer on the same queue, on two connections (or two
//! channels of one with `--same-connection`). Each sample publishes one message and waits for
//! its delivery before the next, so there is never more than one message in flight. The first
//! `--warmup` round trips are not counted. Latencies include amqprs' own task hops on both
//! sides, which are the same for the direct and the proxied run; the difference of the two is
//! what the proxy adds.

use crate::amqp::{self, Endpoint};
use crate::opts::{Common, LatencyOpts};
use crate::report::{Report, Watched};
use crate::stats::{ns_to_us, percentile};
use amqprs::channel::{BasicConsumeArguments, BasicPublishArguments};
use amqprs::BasicProperties;
use anyhow::{anyhow, Result};
use std::time::{Duration, Instant};

/// Runs the scenario.
pub async fn run(common: &Common, opts: &LatencyOpts, report: &mut Report) -> Result<()> {
    let endpoint = Endpoint::parse(&common.url)?;
    let admin = Endpoint::parse(common.admin_url())?;
    let queue = amqp::unique_queue(&common.queue_prefix, "latency");
    let result = measure(common, opts, report, &endpoint, &admin, &queue).await;
    amqp::delete_queue(&admin, &queue, common.op_timeout).await;
    result
}

async fn measure(
    common: &Common,
    opts: &LatencyOpts,
    report: &mut Report,
    endpoint: &Endpoint,
    admin: &Endpoint,
    queue: &str,
) -> Result<()> {
    let limit = common.op_timeout;
    let count = common.count_or(10_000);
    let duration = common.duration_or(Duration::from_secs(30));
    {
        let (conn, ch) = amqp::connect(admin, "warren-bench-admin", limit).await?;
        amqp::declare_queue(&ch, queue, limit).await?;
        let _ = amqp::close(conn, Some(ch), limit).await;
    }
    let (pub_conn, pub_ch) = amqp::connect(endpoint, "warren-bench-latency-pub", limit).await?;
    let (sub_conn, sub_ch) = if opts.same_connection {
        let ch = amqp::timed(limit, "channel.open", pub_conn.open_channel(None)).await?;
        (None, ch)
    } else {
        let (c, ch) = amqp::connect(endpoint, "warren-bench-latency-sub", limit).await?;
        (Some(c), ch)
    };
    let (_tag, mut rx) = amqp::timed(
        limit,
        "basic.consume",
        sub_ch.basic_consume_rx(
            BasicConsumeArguments::new(queue, "")
                .auto_ack(true)
                .finish(),
        ),
    )
    .await?;
    eprintln!(
        "latency: {} + {count} round trips of {}-byte messages ({}) -> {}",
        opts.warmup,
        common.size,
        if opts.same_connection {
            "one connection"
        } else {
            "two connections"
        },
        endpoint.display()
    );
    let body = vec![b'x'; common.size];
    let args = BasicPublishArguments::new("", queue);
    let mut samples: Vec<u64> = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut watched = None;
    let mut started = Instant::now();
    let mut deadline = started + duration;
    let mut error = None;
    for i in 0..opts.warmup + count {
        if i == opts.warmup {
            watched = Some(Watched::start(&common.watch));
            started = Instant::now();
            deadline = started + duration;
        }
        if Instant::now() >= deadline {
            break;
        }
        let t0 = Instant::now();
        let round_trip = async {
            pub_ch
                .basic_publish(BasicProperties::default(), body.clone(), args.clone())
                .await
                .map_err(|e| anyhow!("basic.publish: {e}"))?;
            rx.recv()
                .await
                .ok_or_else(|| anyhow!("the consumer's delivery stream ended"))
        };
        match tokio::time::timeout(limit, round_trip).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                error = Some(amqp::short(&e));
                break;
            }
            Err(_) => {
                error = Some(format!("no delivery within {limit:?}"));
                break;
            }
        }
        if i >= opts.warmup {
            samples.push(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = samples.len() as u64;
    let watched = watched.unwrap_or_else(|| Watched::start(&common.watch));
    watched.finish(report, n);
    if let Some(e) = error {
        report.errors(1, Some(e));
    }
    samples.sort_unstable();
    let mean = samples.iter().sum::<u64>().checked_div(n).unwrap_or(0);
    report.set("samples", n);
    report.set("msgs", n);
    report.set("size", common.size as u64);
    report.set("same_connection", opts.same_connection);
    report.set_f("elapsed_s", elapsed, 3);
    for (key, q) in [("p50_us", 0.5), ("p90_us", 0.9), ("p99_us", 0.99)] {
        report.set_f(key, ns_to_us(percentile(&samples, q)), 1);
    }
    report.set_f("min_us", ns_to_us(samples.first().copied().unwrap_or(0)), 1);
    report.set_f("max_us", ns_to_us(samples.last().copied().unwrap_or(0)), 1);
    report.set_f("mean_us", ns_to_us(mean), 1);
    eprintln!(
        "latency: {n} samples, p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs",
        ns_to_us(percentile(&samples, 0.5)),
        ns_to_us(percentile(&samples, 0.9)),
        ns_to_us(percentile(&samples, 0.99))
    );
    let _ = amqp::timed(limit, "channel.close", sub_ch.close()).await;
    if let Some(c) = sub_conn {
        let _ = amqp::timed(limit, "connection.close", c.close()).await;
    }
    let _ = amqp::close(pub_conn, Some(pub_ch), limit).await;
    Ok(())
}

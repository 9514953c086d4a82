//! P3: drain a pre-filled queue with prefetch and manual acks.
//!
//! The queue is filled with `--count` messages through `--fill-url` (RabbitMQ directly, with
//! confirms, so every message is in the queue before the clock starts). Then `--concurrency`
//! consumers (default 1) connect to the target, set `basic.qos(prefetch)`, and consume with
//! manual acknowledgements: one `basic.ack(multiple=true)` per `--ack-every` deliveries (default
//! 100; `--ack-every 1` acks each message), plus a last one for the remainder. The rate is
//! messages over the time from the common start to the last delivery.

use super::{run_publishers, settled_depth, PublishPlan};
use crate::amqp::{self, Endpoint};
use crate::opts::{Common, ConsumeOpts};
use crate::report::{Report, Watched};
use amqprs::channel::{
    BasicAckArguments, BasicCancelArguments, BasicConsumeArguments, BasicQosArguments,
};
use anyhow::{bail, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Publishers used to fill the queue.
const FILL_PUBLISHERS: usize = 2;
/// Confirm window of each filling publisher.
const FILL_WINDOW: usize = 1000;

/// Runs the scenario.
pub async fn run(common: &Common, opts: &ConsumeOpts, report: &mut Report) -> Result<()> {
    let endpoint = Endpoint::parse(&common.url)?;
    let fill = Endpoint::parse(opts.fill_url.as_deref().unwrap_or(common.admin_url()))?;
    let queue = amqp::unique_queue(&common.queue_prefix, "consume");
    let result = measure(common, opts, report, &endpoint, &fill, &queue).await;
    amqp::delete_queue(&fill, &queue, common.op_timeout).await;
    result
}

async fn measure(
    common: &Common,
    opts: &ConsumeOpts,
    report: &mut Report,
    endpoint: &Endpoint,
    fill: &Endpoint,
    queue: &str,
) -> Result<()> {
    let limit = common.op_timeout;
    let count = common.count_or(200_000);
    let duration = common.duration_or(Duration::from_secs(60));
    let consumers = common.concurrency_or(1);

    let (admin, admin_ch) = amqp::connect(fill, "warren-bench-admin", limit).await?;
    amqp::declare_queue(&admin_ch, queue, limit).await?;
    eprintln!(
        "consume: filling {queue} with {count} messages via {}",
        fill.display()
    );
    let filled_at = Instant::now();
    let fleet = run_publishers(
        &PublishPlan {
            endpoint: fill.clone(),
            queue: queue.to_owned(),
            publishers: FILL_PUBLISHERS,
            count,
            duration: Duration::from_secs(3600),
            confirms: Some(FILL_WINDOW),
            size: common.size,
            op_timeout: limit,
        },
        &[],
    )
    .await;
    if let Some(e) = fleet.publishers.iter().find_map(|p| p.error.clone()) {
        bail!("filling the queue: {e}");
    }
    let depth = settled_depth(&admin_ch, queue, count, limit).await?;
    if depth < count {
        bail!("filling the queue: it holds {depth} of {count} messages");
    }
    report.set_f("fill_s", filled_at.elapsed().as_secs_f64(), 2);
    let _ = amqp::close(admin, Some(admin_ch), limit).await;

    eprintln!(
        "consume: {consumers} consumer(s), prefetch {}, ack multiple every {} -> {}",
        opts.prefetch,
        opts.ack_every,
        endpoint.display()
    );
    let received = Arc::new(AtomicU64::new(0));
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(consumers);
    let (go_tx, go_rx) = watch::channel::<Option<Instant>>(None);
    let (done_tx, done_rx) = watch::channel(false);
    let done_tx = Arc::new(done_tx);
    let mut tasks = Vec::new();
    for i in 0..consumers {
        let ctx = ConsumerCtx {
            index: i,
            endpoint: endpoint.clone(),
            queue: queue.to_owned(),
            prefetch: opts.prefetch,
            ack_every: opts.ack_every.max(1),
            count,
            limit,
            received: received.clone(),
            done_tx: done_tx.clone(),
        };
        let ready = ready_tx.clone();
        let go = go_rx.clone();
        let done = done_rx.clone();
        tasks.push(tokio::spawn(consumer(ctx, ready, go, done)));
    }
    drop(ready_tx);
    let mut reported = 0;
    while reported < consumers && ready_rx.recv().await.is_some() {
        reported += 1;
    }
    let watched = Watched::start(&common.watch);
    let started = Instant::now();
    let _ = go_tx.send(Some(started + duration));
    let mut last = started;
    let mut errors = Vec::new();
    for t in tasks {
        match t.await {
            Ok(outcome) => {
                if let Some(at) = outcome.last_delivery {
                    last = last.max(at);
                }
                if let Some(e) = outcome.error {
                    errors.push(e);
                }
            }
            Err(e) => errors.push(format!("consumer task failed: {e}")),
        }
    }
    let total = received.load(Ordering::Relaxed).min(count);
    let elapsed = (last - started).as_secs_f64();
    watched.finish(report, total);
    for e in &errors {
        report.errors(1, Some(e.clone()));
    }
    if total < count {
        report.errors(
            1,
            Some(format!(
                "consumed {total} of {count} messages within {duration:?}"
            )),
        );
    }
    let rate = if elapsed > 0.0 {
        total as f64 / elapsed
    } else {
        0.0
    };
    report.set("consumers", consumers as u64);
    report.set("prefetch", u64::from(opts.prefetch));
    report.set("ack_every", opts.ack_every);
    report.set("size", common.size as u64);
    report.set("msgs", total);
    report.set_f("elapsed_s", elapsed, 3);
    report.set_f("msgs_per_sec", rate, 0);
    eprintln!("consume: {total} messages in {elapsed:.2}s = {rate:.0} msgs/s");
    Ok(())
}

struct ConsumerCtx {
    index: usize,
    endpoint: Endpoint,
    queue: String,
    prefetch: u16,
    ack_every: u64,
    count: u64,
    limit: Duration,
    received: Arc<AtomicU64>,
    done_tx: Arc<watch::Sender<bool>>,
}

struct ConsumerOutcome {
    last_delivery: Option<Instant>,
    error: Option<String>,
}

async fn consumer(
    ctx: ConsumerCtx,
    ready: mpsc::Sender<()>,
    mut go: watch::Receiver<Option<Instant>>,
    mut done: watch::Receiver<bool>,
) -> ConsumerOutcome {
    let limit = ctx.limit;
    let mut out = ConsumerOutcome {
        last_delivery: None,
        error: None,
    };
    let setup = async {
        let name = format!("warren-bench-consumer-{}", ctx.index);
        let (conn, ch) = amqp::connect(&ctx.endpoint, &name, limit).await?;
        amqp::timed(
            limit,
            "basic.qos",
            ch.basic_qos(BasicQosArguments::new(0, ctx.prefetch, false)),
        )
        .await?;
        anyhow::Ok((conn, ch))
    }
    .await;
    let _ = ready.send(()).await;
    let (conn, ch) = match setup {
        Ok(v) => v,
        Err(e) => {
            out.error = Some(amqp::short(&e));
            return out;
        }
    };
    let deadline = match go.wait_for(Option::is_some).await {
        Ok(d) => d.unwrap_or_else(Instant::now),
        Err(_) => Instant::now(),
    };
    let consume = amqp::timed(
        limit,
        "basic.consume",
        ch.basic_consume_rx(
            BasicConsumeArguments::new(&ctx.queue, "")
                .manual_ack(true)
                .finish(),
        ),
    )
    .await;
    let (tag, mut rx) = match consume {
        Ok(v) => v,
        Err(e) => {
            out.error = Some(amqp::short(&e));
            let _ = amqp::close(conn, Some(ch), limit).await;
            return out;
        }
    };
    let deadline = tokio::time::Instant::from_std(deadline);
    let mut unacked = 0u64;
    let mut last_tag = 0u64;
    loop {
        let msg = tokio::select! {
            m = tokio::time::timeout_at(deadline, rx.recv()) => m,
            _ = done.wait_for(|d| *d) => break,
        };
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) => {
                out.error = Some("the consumer's delivery stream ended early".to_owned());
                break;
            }
            Err(_) => break, // time is up; the caller reports the shortfall
        };
        out.last_delivery = Some(Instant::now());
        if let Some(d) = msg.deliver {
            last_tag = d.delivery_tag();
        }
        unacked += 1;
        if unacked >= ctx.ack_every {
            if let Err(e) = ch.basic_ack(BasicAckArguments::new(last_tag, true)).await {
                out.error = Some(format!("basic.ack: {e}"));
                break;
            }
            unacked = 0;
        }
        if ctx.received.fetch_add(1, Ordering::Relaxed) + 1 >= ctx.count {
            let _ = ctx.done_tx.send(true);
            break;
        }
    }
    if unacked > 0 && last_tag > 0 {
        if let Err(e) = ch.basic_ack(BasicAckArguments::new(last_tag, true)).await {
            out.error.get_or_insert(format!("basic.ack: {e}"));
        }
    }
    let _ = amqp::timed(
        limit,
        "basic.cancel",
        ch.basic_cancel(BasicCancelArguments::new(&tag)),
    )
    .await;
    if let Err(e) = amqp::close(conn, Some(ch), limit).await {
        out.error.get_or_insert(amqp::short(&e));
    }
    out
}

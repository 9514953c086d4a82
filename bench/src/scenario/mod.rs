//! The scenarios, and the publisher fleet that `publish` and `consume` share.

pub mod churn;
pub mod consume;
pub mod idle;
pub mod latency;
pub mod publish;

use crate::amqp::{self, Endpoint};
use crate::confirm::{ConfirmCallback, ConfirmWindow, WatchCallback};
use crate::opts::Watch;
use crate::report::{Report, Watched};
use amqprs::channel::{BasicPublishArguments, Channel, ConfirmSelectArguments};
use amqprs::BasicProperties;
use anyhow::Result;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// How long to wait for the queue depth to catch up with what was published.
const DEPTH_SETTLE: Duration = Duration::from_secs(3);

/// What a fleet of publishers is asked to do.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    /// Where to connect.
    pub endpoint: Endpoint,
    /// Queue to publish to (through the default exchange).
    pub queue: String,
    /// Number of publishers, each on its own connection.
    pub publishers: usize,
    /// Messages in all (split evenly).
    pub count: u64,
    /// Upper bound on publishing time.
    pub duration: Duration,
    /// Use publisher confirms with this window per publisher.
    pub confirms: Option<usize>,
    /// Body size.
    pub size: usize,
    /// Limit of each single operation.
    pub op_timeout: Duration,
}

/// What one publisher did.
#[derive(Debug)]
pub struct PublisherOutcome {
    /// Messages handed to the client library.
    pub published: u64,
    /// Confirmed by `Basic.Ack` (with confirms).
    pub acked: u64,
    /// Refused by `Basic.Nack` (with confirms).
    pub nacked: u64,
    /// When the last message was confirmed, or when the closing round trip returned.
    pub finished: Instant,
    /// The first thing that went wrong.
    pub error: Option<String>,
}

/// What a fleet of publishers did.
#[derive(Debug)]
pub struct FleetOutcome {
    /// When the publishers were told to go.
    pub started: Instant,
    /// One outcome per publisher.
    pub publishers: Vec<PublisherOutcome>,
    /// Watched processes, sampled from `started`.
    pub watched: Watched,
}

impl FleetOutcome {
    /// Messages published in all.
    #[must_use]
    pub fn published(&self) -> u64 {
        self.publishers.iter().map(|p| p.published).sum()
    }

    /// From the start to the last publisher's end, in seconds.
    #[must_use]
    pub fn elapsed(&self) -> f64 {
        self.publishers
            .iter()
            .map(|p| p.finished)
            .max()
            .map_or(0.0, |end| (end - self.started).as_secs_f64())
    }

    /// Adds the publishers' errors to `report`.
    pub fn report_errors(&self, report: &mut Report) {
        for p in &self.publishers {
            if let Some(e) = &p.error {
                report.errors(1, Some(e.clone()));
            }
            if p.nacked > 0 {
                report.errors(p.nacked, Some(format!("{} messages nacked", p.nacked)));
            }
        }
    }
}

/// Connects `plan.publishers` publishers, starts them together, and waits until each has
/// published its share (or the time is up) and seen it confirmed (with confirms) or passed a
/// synchronous round trip (without).
pub async fn run_publishers(plan: &PublishPlan, watches: &[Watch]) -> FleetOutcome {
    let n = plan.publishers.max(1);
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(n);
    let (go_tx, go_rx) = watch::channel::<Option<Instant>>(None);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let share = plan.count / n as u64 + u64::from((i as u64) < plan.count % n as u64);
        let plan = plan.clone();
        let ready = ready_tx.clone();
        let go = go_rx.clone();
        tasks.push(tokio::spawn(async move {
            publisher(i, &plan, share, ready, go).await
        }));
    }
    drop(ready_tx);
    // Every publisher reports once, ready or failed; a closed channel means all have.
    let mut reported = 0;
    while reported < n && ready_rx.recv().await.is_some() {
        reported += 1;
    }
    let watched = Watched::start(watches);
    let started = Instant::now();
    let _ = go_tx.send(Some(started + plan.duration));
    let mut publishers = Vec::with_capacity(n);
    for t in tasks {
        publishers.push(t.await.unwrap_or_else(|e| PublisherOutcome {
            published: 0,
            acked: 0,
            nacked: 0,
            finished: Instant::now(),
            error: Some(format!("publisher task failed: {e}")),
        }));
    }
    FleetOutcome {
        started,
        publishers,
        watched,
    }
}

async fn publisher(
    index: usize,
    plan: &PublishPlan,
    share: u64,
    ready: mpsc::Sender<()>,
    mut go: watch::Receiver<Option<Instant>>,
) -> PublisherOutcome {
    let limit = plan.op_timeout;
    let window = ConfirmWindow::new(plan.confirms.unwrap_or(1));
    let mut out = PublisherOutcome {
        published: 0,
        acked: 0,
        nacked: 0,
        finished: Instant::now(),
        error: None,
    };
    let setup = async {
        let name = format!("warren-bench-publisher-{index}");
        let (conn, ch) = amqp::connect(&plan.endpoint, &name, limit).await?;
        if plan.confirms.is_some() {
            amqp::timed(
                limit,
                "confirm.select",
                ch.confirm_select(ConfirmSelectArguments::default()),
            )
            .await?;
            amqp::timed(
                limit,
                "register callback",
                ch.register_callback(ConfirmCallback::new(window.clone())),
            )
            .await?;
        } else {
            amqp::timed(
                limit,
                "register callback",
                ch.register_callback(WatchCallback::new(window.clone())),
            )
            .await?;
        }
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
    let body = vec![b'x'; plan.size];
    let args = BasicPublishArguments::new("", &plan.queue);
    let bound = plan.duration + 3 * limit;
    let result = tokio::time::timeout(
        bound,
        publish_loop(plan, share, deadline, &ch, &window, &body, &args, &mut out),
    )
    .await
    .unwrap_or_else(|_| Err(anyhow::anyhow!("publisher stuck: not done after {bound:?}")));
    if let Err(e) = result {
        out.finished = Instant::now();
        out.error = Some(amqp::short(&e));
    } else if let Some(e) = window
        .broker_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
    {
        out.error = Some(e);
    }
    out.acked = window.acked.load(Ordering::Relaxed);
    out.nacked = window.nacked.load(Ordering::Relaxed);
    if let Err(e) = amqp::close(conn, Some(ch), limit).await {
        out.error.get_or_insert(amqp::short(&e));
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn publish_loop(
    plan: &PublishPlan,
    share: u64,
    deadline: Instant,
    ch: &Channel,
    window: &Arc<ConfirmWindow>,
    body: &[u8],
    args: &BasicPublishArguments,
    out: &mut PublisherOutcome,
) -> Result<()> {
    let confirms = plan.confirms.is_some();
    while out.published < share {
        if out.published.is_multiple_of(64) {
            if Instant::now() >= deadline {
                break;
            }
            if window
                .broker_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some()
            {
                break;
            }
        }
        if confirms && !window.try_reserve() {
            // The window is full: wait for confirms (the timer only on this slow path).
            if tokio::time::timeout(plan.op_timeout, window.reserve())
                .await
                .is_err()
            {
                anyhow::bail!(
                    "no confirm within {:?} ({} messages outstanding)",
                    plan.op_timeout,
                    window.window
                );
            }
        }
        // No timer per message: the caller bounds the whole loop.
        ch.basic_publish(BasicProperties::default(), body.to_vec(), args.clone())
            .await
            .map_err(|e| anyhow::anyhow!("basic.publish: {e}"))?;
        out.published += 1;
    }
    if confirms {
        if tokio::time::timeout(plan.op_timeout, window.drain())
            .await
            .is_err()
        {
            let confirmed =
                window.acked.load(Ordering::Relaxed) + window.nacked.load(Ordering::Relaxed);
            anyhow::bail!(
                "only {confirmed} of {} messages confirmed after {:?}",
                out.published,
                plan.op_timeout
            );
        }
    } else {
        // Everything published on this channel before the round trip has been processed.
        amqp::queue_depth(ch, &plan.queue, plan.op_timeout).await?;
    }
    out.finished = Instant::now();
    Ok(())
}

/// Waits (briefly) until `queue` holds `expected` messages; returns the last depth seen.
pub async fn settled_depth(
    ch: &Channel,
    queue: &str,
    expected: u64,
    limit: Duration,
) -> Result<u64> {
    let until = Instant::now() + DEPTH_SETTLE;
    loop {
        let depth = u64::from(amqp::queue_depth(ch, queue, limit).await?);
        if depth >= expected || Instant::now() >= until {
            return Ok(depth);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

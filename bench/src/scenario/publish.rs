//! P2: long-lived publishers into one queue, with or without pipelined confirms.
//!
//! The rate is messages over the time from the common start until the last publisher has all
//! its messages confirmed (`--confirms`) or has passed a synchronous round trip on its channel
//! (without confirms: a passive `queue.declare`, which the broker answers only after it has
//! processed every publish before it on that channel). Afterwards the queue depth is checked
//! against what was published: `lost` counts messages that never arrived.

use super::{run_publishers, settled_depth, PublishPlan};
use crate::amqp::{self, Endpoint};
use crate::opts::{Common, PublishOpts};
use crate::report::Report;
use anyhow::Result;
use std::time::Duration;

/// Runs the scenario.
pub async fn run(common: &Common, opts: &PublishOpts, report: &mut Report) -> Result<()> {
    let endpoint = Endpoint::parse(&common.url)?;
    let admin_endpoint = Endpoint::parse(common.admin_url())?;
    let limit = common.op_timeout;
    let queue = amqp::unique_queue(&common.queue_prefix, "publish");
    let result = measure(common, opts, report, &endpoint, &admin_endpoint, &queue).await;
    amqp::delete_queue(&admin_endpoint, &queue, limit).await;
    result
}

async fn measure(
    common: &Common,
    opts: &PublishOpts,
    report: &mut Report,
    endpoint: &Endpoint,
    admin_endpoint: &Endpoint,
    queue: &str,
) -> Result<()> {
    let limit = common.op_timeout;
    let (admin, admin_ch) = amqp::connect(admin_endpoint, "warren-bench-admin", limit).await?;
    amqp::declare_queue(&admin_ch, queue, limit).await?;
    let plan = PublishPlan {
        endpoint: endpoint.clone(),
        queue: queue.to_owned(),
        publishers: common.concurrency_or(4),
        count: common.count_or(10_000_000),
        duration: common.duration_or(Duration::from_secs(10)),
        confirms: opts.confirms.then_some(opts.window),
        size: common.size,
        op_timeout: limit,
    };
    eprintln!(
        "publish: {} publishers, {}-byte messages, confirms {}, up to {} messages or {:?} -> {}",
        plan.publishers,
        plan.size,
        plan.confirms
            .map_or("off".to_owned(), |w| format!("on (window {w})")),
        plan.count,
        plan.duration,
        endpoint.display()
    );
    let fleet = run_publishers(&plan, &common.watch).await;
    let published = fleet.published();
    let elapsed = fleet.elapsed();
    fleet.watched.finish(report, published);
    fleet.report_errors(report);
    report.set("publishers", plan.publishers as u64);
    report.set("size", plan.size as u64);
    report.set("confirms", opts.confirms);
    if opts.confirms {
        report.set("window", opts.window as u64);
        let acked: u64 = fleet.publishers.iter().map(|p| p.acked).sum();
        report.set("acked", acked);
    }
    report.set("msgs", published);
    report.set_f("elapsed_s", elapsed, 3);
    let rate = if elapsed > 0.0 {
        published as f64 / elapsed
    } else {
        0.0
    };
    report.set_f("msgs_per_sec", rate, 0);
    match settled_depth(&admin_ch, queue, published, limit).await {
        Ok(depth) => {
            report.set("queue_depth", depth);
            if depth < published {
                report.set("lost", published - depth);
                report.errors(
                    published - depth,
                    Some(format!(
                        "queue holds {depth} messages, {published} were published"
                    )),
                );
            }
        }
        Err(e) => report.errors(1, Some(format!("checking the queue depth: {e:#}"))),
    }
    eprintln!(
        "publish: {published} messages in {elapsed:.2}s = {rate:.0} msgs/s ({} errors)",
        fleet
            .publishers
            .iter()
            .filter(|p| p.error.is_some())
            .count()
    );
    let _ = amqp::close(admin, Some(admin_ch), limit).await;
    Ok(())
}

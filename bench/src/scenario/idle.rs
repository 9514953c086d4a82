//! P6: many idle clients, each with one open channel.
//!
//! Opens `--count` connections (default 10,000) with one channel each, at most `--concurrency`
//! handshakes at a time (default 100); holds them for `--hold`; counts how many are still open;
//! closes them; waits `--settle`. Watched processes are sampled before the ramp-up (baseline),
//! every 200 ms during the hold (the largest RSS is kept) and after the settle time, giving
//! `NAME_rss_baseline_kb`, `NAME_rss_hold_kb`, `NAME_rss_after_kb` and
//! `NAME_bytes_per_client` = (hold − baseline) / clients.

use crate::amqp::{self, Endpoint};
use crate::opts::{Common, IdleOpts};
use crate::report::{Report, Watched};
use amqprs::channel::Channel;
use amqprs::connection::Connection;
use anyhow::Result;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// How often watched processes are sampled during the hold.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// Runs the scenario.
pub async fn run(common: &Common, opts: &IdleOpts, report: &mut Report) -> Result<()> {
    let endpoint = Endpoint::parse(&common.url)?;
    let limit = common.op_timeout;
    let n = common.count_or(10_000);
    let concurrency = common.concurrency_or(100);
    eprintln!(
        "idle: opening {n} connections with one channel each, {concurrency} at a time -> {}",
        endpoint.display()
    );
    let watched = Watched::start(&common.watch);
    let baseline = watched.baseline();
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::new();
    for i in 0..n {
        let gate = gate.clone();
        let endpoint = endpoint.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            amqp::connect(&endpoint, &format!("warren-bench-idle-{i}"), limit).await
        }));
    }
    let mut held: Vec<(Connection, Channel)> = Vec::with_capacity(tasks.len());
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for t in tasks {
        match t.await {
            Ok(Ok(pair)) => held.push(pair),
            Ok(Err(e)) => *errors.entry(amqp::short(&e)).or_default() += 1,
            Err(e) => *errors.entry(format!("task failed: {e}")).or_default() += 1,
        }
    }
    let ramp = started.elapsed().as_secs_f64();
    let opened = held.len() as u64;
    eprintln!(
        "idle: {opened} of {n} open after {ramp:.2}s ({} errors); holding {:?}",
        errors.values().sum::<u64>(),
        opts.hold
    );

    // Hold, keeping the largest RSS of each watched process.
    let mut hold_rss: BTreeMap<String, u64> = BTreeMap::new();
    let hold_until = Instant::now() + opts.hold;
    loop {
        for (name, s) in watched.now() {
            if let Some(s) = s {
                let e = hold_rss.entry(name).or_default();
                *e = (*e).max(s.rss_kb);
            }
        }
        if Instant::now() >= hold_until {
            break;
        }
        tokio::time::sleep(SAMPLE_EVERY.min(hold_until - Instant::now())).await;
    }
    let still_open = held
        .iter()
        .filter(|(c, ch)| c.is_open() && ch.is_open())
        .count() as u64;

    // Close them all, `concurrency` at a time.
    let closing = Instant::now();
    let mut closers = Vec::with_capacity(held.len());
    for (conn, ch) in held {
        let gate = gate.clone();
        closers.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            amqp::close(conn, Some(ch), limit).await
        }));
    }
    let mut close_errors: BTreeMap<String, u64> = BTreeMap::new();
    for c in closers {
        match c.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => *close_errors.entry(amqp::short(&e)).or_default() += 1,
            Err(e) => *close_errors.entry(format!("task failed: {e}")).or_default() += 1,
        }
    }
    let close_s = closing.elapsed().as_secs_f64();
    tokio::time::sleep(opts.settle).await;
    let after = watched.now();
    watched.finish(report, opened);

    let connect_errors: u64 = errors.values().sum();
    let close_error_count: u64 = close_errors.values().sum();
    report.set("requested", n);
    report.set("opened", opened);
    report.set("msgs", opened);
    report.set("still_open_after_hold", still_open);
    report.set("connect_errors", connect_errors);
    report.set("close_errors", close_error_count);
    report.set("concurrency", concurrency as u64);
    report.set_f("ramp_s", ramp, 3);
    report.set_f("elapsed_s", ramp, 3);
    report.set_f(
        "connections_per_sec",
        if ramp > 0.0 {
            opened as f64 / ramp
        } else {
            0.0
        },
        1,
    );
    report.set_f("hold_s", opts.hold.as_secs_f64(), 1);
    report.set_f("close_s", close_s, 3);
    let first = errors
        .iter()
        .chain(close_errors.iter())
        .max_by_key(|(_, n)| **n)
        .map(|(e, n)| format!("{e} (x{n})"));
    report.errors(
        connect_errors + close_error_count + (opened - still_open),
        first,
    );
    if opened > still_open {
        report.errors(
            0,
            Some(format!(
                "{} connections dropped during the hold",
                opened - still_open
            )),
        );
    }
    if !errors.is_empty() {
        report.set("error_kinds", serde_json::json!(errors));
    }
    for (name, base) in baseline {
        let (Some(base), Some(hold)) = (base, hold_rss.get(&name)) else {
            continue;
        };
        report.set(&format!("{name}_rss_baseline_kb"), base.rss_kb);
        report.set(&format!("{name}_rss_hold_kb"), *hold);
        if opened > 0 {
            report.set_f(
                &format!("{name}_bytes_per_client"),
                (hold.saturating_sub(base.rss_kb) * 1024) as f64 / opened as f64,
                0,
            );
        }
        if let Some((_, Some(a))) = after.iter().find(|(n, _)| *n == name) {
            report.set(&format!("{name}_rss_after_kb"), a.rss_kb);
        }
    }
    eprintln!(
        "idle: {still_open} still open after the hold; closed in {close_s:.2}s ({close_error_count} close errors)"
    );
    Ok(())
}

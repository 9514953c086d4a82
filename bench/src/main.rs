//! `warren-bench`: the load generator behind `bench/run.sh`.
//!
//! It drives RabbitMQ (directly, or through warren) with [amqprs](https://docs.rs/amqprs), one
//! scenario per run, and prints exactly one JSON line on stdout; everything meant for humans goes
//! to stderr. The scenarios match docs/design.md (P1–P6):
//!
//! | scenario  | target | what it measures |
//! |-----------|--------|------------------|
//! | `churn`   | P1 | connect, open a channel, publish one message, close; `--concurrency` loops |
//! | `publish` | P2 | long-lived publishers into one queue (optionally `--confirms`, pipelined) |
//! | `consume` | P3 | draining a pre-filled queue with prefetch and manual (multiple) acks |
//! | `latency` | P4 | publish→deliver round trips of single messages |
//! | `idle`    | P6 | many connections with one channel each, held open, then closed |
//!
//! `warren-bench floor --mode relay|responder` is not a scenario but the program the others are
//! compared with: the least any process in the middle does (see `floor.rs`).
//!
//! Every scenario is bounded both by `--count` and by `--duration`, declares its own uniquely
//! named queue and deletes it afterwards. `--watch NAME=PID` samples another process (warren, or
//! the broker) so CPU and memory per message come out of the same run.
//!
//! amqprs was chosen over lapin after measuring both publishing 100-byte messages to RabbitMQ on
//! this machine: amqprs used 3–4 µs of client CPU per message against lapin's 8–12 µs, and so
//! leaves more of a 2-core machine to the broker and the proxy being measured.

mod amqp;
mod confirm;
mod floor;
mod opts;
mod procfs;
mod report;
mod scenario;
mod stats;

use clap::Parser;
use opts::{Cli, Scenario};
use report::Report;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Scenario::Floor(ref o) = cli.scenario {
        return floor::run(o);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.common.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warren-bench: cannot start the tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let mut report = Report::new(&cli);
    let outcome = runtime.block_on(async {
        match cli.scenario {
            Scenario::Churn(ref o) => scenario::churn::run(&cli.common, o, &mut report).await,
            Scenario::Publish(ref o) => scenario::publish::run(&cli.common, o, &mut report).await,
            Scenario::Consume(ref o) => scenario::consume::run(&cli.common, o, &mut report).await,
            Scenario::Latency(ref o) => scenario::latency::run(&cli.common, o, &mut report).await,
            Scenario::Idle(ref o) => scenario::idle::run(&cli.common, o, &mut report).await,
            Scenario::Floor(_) => unreachable!("the floor runs without tokio"),
        }
    });
    // Let amqprs' background tasks of already-closed connections go without waiting for them.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    let code = match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warren-bench: {} failed: {e:#}", report.scenario());
            report.fatal(&format!("{e:#}"));
            ExitCode::from(1)
        }
    };
    report.finish();
    println!("{}", report.to_json_line());
    code
}

//! Several broker nodes in `upstream` (B11 for a cluster): a dial tries the nodes in turn,
//! so when the node warren uses goes away, its clients get the broker-lost close and the next
//! clients are served through the next node, without waiting for the dead one.
//!
//! The "nodes" are two TCP relays in front of the one test broker: killing a relay is, from
//! warren's side, a node that dies (its connections end, new ones are refused). A node that
//! accepts connections but closes them during the login stands for one that is half alive.

use anyhow::{ensure, Result};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use warren_runtime::config::Upstreams;
use warren_tests::lapin_ops::{bounded, LIMIT};
use warren_tests::raw::{RawClient, RawOptions};
use warren_tests::{unique, wait_until, TestUser, Warren, BROKER_HOST, BROKER_PORT};

/// A relay standing in for one broker node: it forwards every connection to the test broker
/// and counts them; [`Node::kill`] ends them all and stops listening.
struct Node {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    tasks: JoinSet<()>,
}

impl Node {
    async fn start() -> Result<Node> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            // The pipes live in this task's own set, so aborting it ends them too.
            let mut pipes = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let broker = SocketAddr::new(BROKER_HOST.parse().expect("an IP"), BROKER_PORT);
                let Ok(mut outbound) = TcpStream::connect(broker).await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                pipes.spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        Ok(Node {
            addr,
            accepted,
            tasks,
        })
    }

    /// Connections relayed so far.
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// The node dies: every relayed connection is dropped and new ones are refused.
    async fn kill(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// A node that accepts connections and closes each one after the protocol header: it is
/// reachable, but no login through it ever succeeds. Counts the connections it took.
async fn half_alive_node() -> Result<(SocketAddr, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let taken = Arc::new(AtomicUsize::new(0));
    let count = taken.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let mut header = [0u8; 8];
            let _ = s.read_exact(&mut header).await;
        }
    });
    Ok((addr, taken))
}

/// Connects through warren, opens a channel, publishes to and gets from a fresh queue.
async fn round_trip(warren: &Warren, opts: &RawOptions) -> Result<RawClient> {
    let mut c = RawClient::connect(warren.addr(), opts).await?;
    c.open_channel(1).await?;
    let queue = c.declare_queue(1, &unique("failover"), true).await?;
    c.publish(1, &queue, b"through the cluster").await?;
    let got = c.get_within(1, &queue, LIMIT).await?.body;
    ensure!(got == b"through the cluster", "got {got:?}");
    Ok(c)
}

/// A warren in front of `nodes` (in that order) that redials quickly.
fn warren_in_front_of(nodes: [SocketAddr; 2]) -> Result<Warren> {
    let upstream: Upstreams = format!("amqp://{},amqp://{}", nodes[0], nodes[1])
        .parse()
        .map_err(anyhow::Error::msg)?;
    Warren::start_configured(|c| {
        c.upstream = upstream;
        c.backoff_initial = Duration::from_millis(100);
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_node_dies_the_next_clients_are_served_by_the_next_node() -> Result<()> {
    bounded(async {
        let user = TestUser::create("warren-failover").await?;
        let first = Node::start().await?;
        let second = Node::start().await?;
        let warren = warren_in_front_of([first.addr, second.addr])?;
        let opts = RawOptions::new(&user.name, &user.password, "/");

        // The first node in the list is used while it lives.
        let mut before = round_trip(&warren, &opts).await?;
        ensure!(
            (first.accepted(), second.accepted()) == (1, 0),
            "expected one broker connection through the first node, got {} and {}",
            first.accepted(),
            second.accepted()
        );

        first.kill().await;
        // Its client learns that the broker connection is gone, with a reply code.
        let closed = before.expect_close().await?;
        ensure!(
            (closed.channel, closed.code) == (0, 320),
            "expected Connection.Close 320 after the node died, got {closed:?}"
        );
        before.finish_close().await?;

        // A new client is served through the second node: the dead one is tried, refused,
        // and skipped within the same dial.
        let after = round_trip(&warren, &opts).await?;
        ensure!(
            second.accepted() >= 1,
            "no broker connection went through the second node"
        );
        after.close().await?;
        second.kill().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_fails_logins_is_passed_over_for_the_next() -> Result<()> {
    bounded(async {
        let user = TestUser::create("warren-failover-half").await?;
        let (half, taken) = half_alive_node().await?;
        let good = Node::start().await?;
        let warren = warren_in_front_of([half, good.addr])?;
        let opts = RawOptions::new(&user.name, &user.password, "/");

        // The first clients may be refused while warren learns that the first node fails
        // logins; then clients are served through the second, whatever the first does.
        let refusals = std::sync::Mutex::new(Vec::new());
        let client = wait_until(LIMIT, "a client served through the second node", || async {
            match RawClient::try_connect(warren.addr(), &opts).await? {
                Ok(c) => Ok(Some(c)),
                Err(refused) => {
                    refusals
                        .lock()
                        .expect("refusals")
                        .push(format!("{refused:?}"));
                    Ok(None)
                }
            }
        })
        .await;
        let refusals = refusals.into_inner().expect("refusals");
        let mut client = client.map_err(|e| e.context(format!("refusals: {refusals:?}")))?;
        eprintln!(
            "{} refusal(s) before the second node served: {refusals:?}",
            refusals.len()
        );
        ensure!(
            taken.load(Ordering::SeqCst) >= 1,
            "the first node in the list was never tried"
        );
        ensure!(
            good.accepted() >= 1,
            "no broker connection went through the second node"
        );
        client.open_channel(1).await?;
        client.close().await?;
        good.kill().await;
        Ok(())
    })
    .await
}

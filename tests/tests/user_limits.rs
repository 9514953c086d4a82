//! A user's channel limit (`rabbitmqctl set_user_limits USER '{"max-channels": N}'`, B7) with a
//! real RabbitMQ: the broker closes the connection whose open passes it. Through warren that
//! connection is shared, so after the first such close warren refuses the client that would
//! pass the limit itself, with the broker's close, and its neighbours keep their connection.

use anyhow::{bail, ensure, Result};
use std::time::Duration;
use warren_core::method::{encode, ids};
use warren_tests::broker::rabbitmqctl;
use warren_tests::client::lapin_connect;
use warren_tests::lapin_ops::{lapin_declare, lapin_round_trip, the_upstream_of};
use warren_tests::raw::{as_close, Closed, RawClient, RawOptions};
use warren_tests::{broker_addr, unique, within, TestUser, Warren};

/// An upper bound for the test, so that a hang fails with a message.
const TEST_LIMIT: Duration = Duration::from_secs(60);

/// The user's channel limit in this test.
const MAX_CHANNELS: u16 = 2;

/// Opens channels 1, 2, ... until the server answers an open with a close; returns it.
async fn open_until_closed(addr: std::net::SocketAddr, opts: &RawOptions) -> Result<Closed> {
    let mut c = RawClient::connect(addr, opts).await?;
    for ch in 1..=MAX_CHANNELS + 1 {
        c.send(&[encode::channel_open(ch)]).await?;
        let answer = c.recv().await?;
        if let Some(closed) = as_close(&answer)? {
            if closed.channel == 0 {
                // Answered, as a client does: until then RabbitMQ still counts the channels.
                c.finish_close().await?;
            }
            return Ok(closed);
        }
        ensure!(
            answer.method_id() == Some(ids::CHANNEL_OPEN_OK),
            "channel {ch}: {answer:?}"
        );
    }
    bail!("{} channels opened past the limit", MAX_CHANNELS + 1)
}

/// B7: once the broker has closed a connection for passing the user's channel limit, the
/// client that would pass it again through warren gets the close RabbitMQ sends (530, the
/// same text, no cause) and its neighbour on the same broker connection is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_its_users_channel_limit_is_refused_alone() -> Result<()> {
    within(TEST_LIMIT, "the test", refused_alone()).await?
}

/// The body of [`a_client_past_its_users_channel_limit_is_refused_alone`].
async fn refused_alone() -> Result<()> {
    let user = TestUser::create("warren-user-limit").await?;
    let limits = format!("{{\"max-channels\": {MAX_CHANNELS}}}");
    rabbitmqctl(&["set_user_limits", &user.name, &limits]).await?;
    let opts = RawOptions::new(&user.name, &user.password, "/");
    let direct = open_until_closed(broker_addr(), &opts).await?;
    ensure!(
        direct.channel == 0 && direct.code == 530,
        "RabbitMQ itself closed {direct:?}"
    );

    let warren = Warren::start()?;
    // A client without channels keeps the user's hub, and what it learns, alive.
    let _keeper = RawClient::connect(warren.addr(), &opts).await?;
    // The first client past the limit teaches warren the limit: the broker closes the shared
    // connection, as it would close that client's own.
    let first = open_until_closed(warren.addr(), &opts).await?;
    ensure!(
        first == direct,
        "the first refusal: {first:?}, directly: {direct:?}"
    );

    let neighbour = lapin_connect(&warren.amqp_url(&user.name, &user.password, "/")).await?;
    let neighbour_ch = neighbour.create_channel().await?;
    let queue = unique("user-limit");
    lapin_declare(&neighbour_ch, &queue).await?;
    lapin_round_trip(&neighbour_ch, &queue, "before").await?;
    let upstream = the_upstream_of(&user).await?;

    let refused = open_until_closed(warren.addr(), &opts).await?;
    ensure!(
        refused == direct,
        "refused with {refused:?}, directly: {direct:?}"
    );
    lapin_round_trip(&neighbour_ch, &queue, "after").await?;
    ensure!(
        the_upstream_of(&user).await?.name == upstream.name,
        "the broker connection was replaced"
    );
    neighbour_ch
        .queue_delete(queue.as_str().into(), Default::default())
        .await?;
    neighbour.close(200, "bye".into()).await?;
    Ok(())
}

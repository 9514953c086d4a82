//! An operator's hold on a hub (B16): pause and resume, the pause timeout, re-dial, detach,
//! closing one client, and the snapshot the admin API prints. Driven through
//! [`warren_testkit::hub_world`] like `hub_scenarios.rs`.

use insta::assert_snapshot;
use std::time::Duration;
use warren_core::hub::{HubConfig, HubState, Input};
use warren_core::method::ids;
use warren_core::reply::{self, Reply};
use warren_testkit::hub_world::*;

fn paused_world() -> World {
    World::new(HubConfig {
        pause_timeout: Duration::from_secs(5),
        ..HubConfig::default()
    })
}

/// A paused hub: a client inside keeps working, a new client's OpenOk and a new Channel.Open
/// wait, and a resume lets both through at once.
#[test]
fn pause_holds_new_clients_and_channels_until_resume() {
    let (mut w, c1, u) = with_channel(paused_world(), 1);
    w.take(Peer::U(u));
    w.input("pause", Input::Pause);
    assert_eq!(w.hub.state(), HubState::Paused);

    // Inside: publishing goes on.
    w.client_sends(c1, &[publish(1, "", false), header(1, 1), body(1, b"x")]);
    assert_eq!(w.take(Peer::U(u)).len(), 3, "the publish went upstream");

    // New: a client and a channel wait.
    let c2 = w.join(hello(131_072, 0));
    assert!(w.take(Peer::C(c2)).is_empty(), "no OpenOk while paused");
    w.client_sends(c1, &[channel_open(2)]);
    assert!(
        w.take(Peer::U(u)).is_empty(),
        "no Channel.Open upstream while paused"
    );
    assert_eq!(w.hub.snapshot().waiting, 2);

    w.advance(Duration::from_secs(2));
    w.input("resume", Input::Resume);
    let got = w.take(Peer::C(c2));
    assert_eq!(got[0].method_id(), Some(ids::CONNECTION_OPEN_OK));
    let up = w.take(Peer::U(u));
    assert_eq!(up[0].method_id(), Some(ids::CHANNEL_OPEN));
    assert_eq!(w.hub.state(), HubState::Ready);
    assert_eq!(w.hub.snapshot().waiting, 0);
    assert_snapshot!(w.trace());
}

/// A pause that outlasts pause_timeout: the new client gets 320 CONNECTION_FORCED and the
/// waiting channel 506 RESOURCE_ERROR, both saying warren is paused; the client inside keeps
/// its connection.
#[test]
fn pause_timeout_refuses_waiters_clearly() {
    let mut w = paused_world();
    let c1 = w.join(hello(131_072, 0));
    let _u = w.accept_dial();
    w.take(Peer::C(c1));
    w.input("pause", Input::Pause);
    w.advance(Duration::from_secs(1));
    let c2 = w.join(hello(131_072, 0));
    w.client_sends(c1, &[channel_open(1)]);
    w.advance(Duration::from_millis(4_999));
    assert!(w.take(Peer::C(c2)).is_empty(), "still waiting just before");
    w.advance(Duration::from_secs(1));
    let refused = w.take(Peer::C(c2));
    assert_eq!(close_code(&refused[0]), Some(reply::CONNECTION_FORCED));
    let chan = w.take(Peer::C(c1));
    assert_eq!(close_code(&chan[0]), Some(reply::RESOURCE_ERROR));
    assert_eq!(chan[0].channel(), 1);
    assert_eq!(w.hub.stats().channel_refusals, 1);
    let trace = w.trace().to_owned();
    assert!(
        trace.contains(
            "CONNECTION_FORCED - warren is paused by an operator and did not resume within 5s"
        ),
        "{trace}"
    );
    // c1 is still in: the channel can be closed and opened again after a resume.
    w.client_sends(c1, &[close_ok(1)]);
    w.input("resume", Input::Resume);
    w.client_sends(c1, &[channel_open(1)]);
    assert_snapshot!(w.trace());
}

/// A client that leaves while it waits, and a channel closed while it waits, are forgotten;
/// a resume afterwards touches neither.
#[test]
fn waiters_that_leave_are_forgotten() {
    let mut w = paused_world();
    let c1 = w.join(hello(131_072, 0));
    let u = w.accept_dial();
    w.take(Peer::C(c1));
    w.take(Peer::U(u));
    w.input("pause", Input::Pause);
    let c2 = w.join(hello(131_072, 0));
    w.client_drops(c2);
    w.client_sends(c1, &[channel_open(1)]);
    w.client_sends(c1, &[close(1, 200, "")]);
    assert_eq!(
        w.take_first_method(Peer::C(c1)),
        Some(ids::CHANNEL_CLOSE_OK)
    );
    assert_eq!(w.hub.snapshot().waiting, 0);
    w.input("resume", Input::Resume);
    assert!(w.take(Peer::U(u)).is_empty());
    w.advance(Duration::from_secs(10));
    assert_snapshot!(w.trace());
}

/// A re-dial opens a new upstream; once it is open, new channels go to it, and the old one
/// closes as soon as its last client channel is released.
#[test]
fn redial_moves_new_channels_and_retires_the_old_upstream() {
    let (mut w, c1, old) = with_channel(no_recycling(), 1);
    w.input("redial", Input::Redial);
    let new = w.accept_dial();
    assert_ne!(old, new);
    let snap = w.hub.snapshot();
    let phases: Vec<&str> = snap.upstreams.iter().map(|u| u.phase).collect();
    assert_eq!(phases, ["retiring", "open"]);
    w.take(Peer::U(new));
    w.client_sends(c1, &[channel_open(2)]);
    assert_eq!(
        w.take_first_method(Peer::U(new)),
        Some(ids::CHANNEL_OPEN),
        "a new channel goes to the new upstream"
    );
    w.take(Peer::U(old));
    w.client_sends(c1, &[close(1, 200, "")]);
    w.broker_sends(old, &[close_ok(1)]);
    w.advance(Duration::from_millis(1));
    let closed = w.take(Peer::U(old));
    let last = closed.last().unwrap();
    assert_eq!(
        (last.channel(), last.method_id()),
        (0, Some(ids::CONNECTION_CLOSE)),
        "the retired upstream closes once its channels are gone"
    );
    assert!(w
        .hub
        .snapshot()
        .upstreams
        .iter()
        .all(|u| u.id != old || u.phase == "closing"));
    assert_snapshot!(w.trace());
}

/// B5: after a re-dial, a client whose exclusive queue lives on the retiring upstream still
/// opens its channels there, where the queue is within reach (RabbitMQ would refuse it with
/// 405 on the new connection), and the retiring upstream stays until that client has left,
/// since closing it would delete the queue under its client.
#[test]
fn a_retiring_upstream_keeps_serving_the_owner_of_an_exclusive_queue_on_it() {
    let (mut w, owner, old) = with_channel(no_recycling(), 1);
    w.client_sends(owner, &[queue_declare(1, "", true)]);
    w.broker_sends(old, &[queue_declare_ok(1, "amq.gen-mine")]);
    w.client_sends(owner, &[close(1, 200, "")]);
    w.broker_sends(old, &[close_ok(1)]);
    w.input("redial", Input::Redial);
    let new = w.accept_dial();
    w.take(Peer::U(new));
    w.take(Peer::U(old));
    w.advance(Duration::from_secs(1));
    assert!(
        !w.take(Peer::U(old))
            .iter()
            .any(|f| f.method_id() == Some(ids::CONNECTION_CLOSE)),
        "the retiring upstream closed under the owner's queue"
    );
    w.client_sends(owner, &[channel_open(2)]);
    assert_eq!(
        w.take_first_method(Peer::U(old)),
        Some(ids::CHANNEL_OPEN),
        "the owner's channel goes where its queue is"
    );
    assert!(w.take(Peer::U(new)).is_empty());
    // Another client goes to the new upstream.
    let other = w.join(hello(131_072, 0));
    w.client_sends(other, &[channel_open(1)]);
    assert_eq!(w.take_first_method(Peer::U(new)), Some(ids::CHANNEL_OPEN));
}

/// A detached hub keeps serving its client, and closes its upstream the moment the client
/// is gone (not after the idle timeout), then is finished.
#[test]
fn detached_hub_closes_its_upstreams_once_its_clients_leave() {
    let mut w = World::new(HubConfig::default());
    let c1 = w.join(hello(131_072, 0));
    let u = w.accept_dial();
    w.input("detach", Input::Detach);
    assert_eq!(w.hub.state(), HubState::Draining);
    w.client_sends(c1, &[channel_open(1)]);
    assert_eq!(
        w.take(Peer::U(u)).last().unwrap().method_id(),
        Some(ids::CHANNEL_OPEN)
    );
    w.broker_sends(u, &[channel_open_ok(1)]);
    w.advance(Duration::from_secs(90));
    assert!(
        !w.closed.contains(&Peer::U(u)),
        "kept while its client is here"
    );
    w.client_drops(c1);
    w.broker_sends(u, &[close_ok(1)]);
    w.advance(Duration::from_millis(1));
    let bye = w.take(Peer::U(u));
    let last = bye.last().unwrap();
    assert_eq!(
        (last.channel(), last.method_id()),
        (0, Some(ids::CONNECTION_CLOSE))
    );
    w.broker_sends(u, &[close_ok(0)]);
    assert!(w.hub.is_finished());
    assert_snapshot!(w.trace());
}

/// An operator closes one client with a reason: it alone gets 320 and the text, as
/// `rabbitmqctl close_connection` gives it.
#[test]
fn close_one_client_with_a_reason() {
    let mut w = World::new(HubConfig::default());
    let c1 = w.join(hello(131_072, 0));
    let c2 = w.join(hello(131_072, 0));
    w.accept_dial();
    w.take(Peer::C(c1));
    w.take(Peer::C(c2));
    w.input(
        "close c1",
        Input::CloseClient {
            client: c1,
            reply: Reply::new(reply::CONNECTION_FORCED, "maintenance"),
        },
    );
    let got = w.take(Peer::C(c1));
    assert_eq!(close_code(&got[0]), Some(320));
    assert!(w.take(Peer::C(c2)).is_empty());
    assert!(w.trace().contains("\"CONNECTION_FORCED - maintenance\""));
    assert_eq!(w.hub.find_client(c2.number()), Some(c2));
    assert_snapshot!(w.trace());
}

/// The snapshot counts each client's traffic and lists upstreams with their state.
#[test]
fn snapshot_describes_clients_and_upstreams() {
    let mut w = World::new(HubConfig::default());
    let c1 = w.join(hello(131_072, 0));
    let u = w.accept_dial();
    w.advance(Duration::from_secs(3));
    w.client_sends(c1, &[channel_open(1)]);
    w.broker_sends(u, &[channel_open_ok(1)]);
    let s = w.hub.snapshot();
    assert_eq!(s.state, HubState::Ready);
    assert_eq!(s.channels_in_use, 1);
    let c = &s.clients[0];
    assert_eq!((c.id, c.phase, c.channels), (c1, "open", 1));
    assert_eq!(
        (c.frames_in, c.frames_out),
        (1, 2),
        "Open in; OpenOk and Channel.OpenOk out"
    );
    assert!(c.bytes_in > 0 && c.bytes_out > 0);
    assert_eq!(
        c.last_activity.duration_since(c.since),
        Duration::from_secs(3)
    );
    let up = &s.upstreams[0];
    assert_eq!(
        (up.id, up.phase, up.channels, up.heartbeat),
        (u, "open", 1, 60)
    );
    assert_eq!(up.node, Some(0));
}

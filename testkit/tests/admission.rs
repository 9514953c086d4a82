//! Admission scenarios: scripted clients and a scripted broker behind admission's links, in
//! virtual time, rendered as a readable trace and snapshotted. They drive warren-core's
//! `Admission` through its public API only, and live here rather than in `core/src` so that
//! the production library holds production code only (issue 15). The broker's frames, frame
//! parsing and the epoch come from [`hub_world`], the client's `StartOk`, `TuneOk` and content
//! header from [`frames`]; the trace keeps its own millisecond stamp and short frame names,
//! which its snapshots are written in.

use bytes::Bytes;
use smallvec::SmallVec;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};
use warren_core::admission::{
    events, Admission, AdmissionConfig, AdmissionEvent, ConnId, HubId, Input, LinkId, Output,
    Refusal, SILENT_CLOSE_DELAY,
};
use warren_core::credentials::{Credentials, Secret};
use warren_core::frame::{FrameType, HEARTBEAT, PROTOCOL_HEADER};
use warren_core::hub::{self, HubConfig};
use warren_core::method::{encode, ids};
use warren_core::reply;
use warren_core::table::{longstr, FieldTable};
use warren_testkit::frames;
use warren_testkit::hub_world::{
    broker_handshake, close, connection_start, epoch, m, to_frame, RABBITMQ_TUNE,
};
use warren_testkit::trace::{self, Tap};

struct World {
    adm: Admission,
    t0: Instant,
    now: Instant,
    trace: String,
    /// Links dialled, in order.
    dials: Vec<LinkId>,
    /// Hubs started, with how many handoffs each got.
    hubs: BTreeMap<HubId, u64>,
    /// Joins, in order.
    joins: Vec<(ConnId, HubId)>,
    closed: Vec<ConnId>,
}

impl World {
    fn new(config: AdmissionConfig) -> World {
        let t0 = epoch();
        let mut w = World {
            adm: Admission::new(t0, config, 7),
            t0,
            now: t0,
            trace: String::new(),
            dials: Vec::new(),
            hubs: BTreeMap::new(),
            joins: Vec::new(),
            closed: Vec::new(),
        };
        w.drain();
        w
    }

    fn at(&mut self, d: Duration) {
        self.now = self.t0 + d;
        while self.adm.poll_timeout().is_some_and(|t| t <= self.now) {
            self.input(Input::Timeout);
        }
    }

    fn line(&mut self, s: impl std::fmt::Display) {
        let _ = writeln!(self.trace, "{}", trace::line(self.now - self.t0, s));
    }

    fn input(&mut self, input: Input) {
        self.adm.handle(self.now, input);
        self.drain();
    }

    fn accept(&mut self) -> ConnId {
        let c = self.adm.accept(self.now, 1);
        self.drain();
        c
    }

    fn client(&mut self, conn: ConnId, data: Bytes) {
        self.input(Input::ClientData { conn, data });
    }

    /// A client's protocol header and `StartOk`.
    fn start_ok(&mut self, conn: ConnId, user: &str, password: &str, failure_close: bool) {
        self.client(conn, Bytes::from_static(PROTOCOL_HEADER));
        let response = format!("\0{user}\0{password}");
        let start_ok = frames::start_ok_plain(response.as_bytes(), failure_close);
        self.client(conn, start_ok.into());
    }

    /// A client up to `StartOk`.
    fn login(&mut self, user: &str, password: &str, failure_close: bool) -> ConnId {
        let c = self.accept();
        self.line(format!("{c} connects as {user}"));
        self.start_ok(c, user, password, failure_close);
        c
    }

    /// A client of `user` that the broker proves on a new link and that opens vhost `/`,
    /// joining a hub.
    fn proved_and_open(&mut self, user: &str, password: &str) {
        let proofs_before = self.dials.len();
        let c = self.login(user, password, true);
        let link = self.dials[proofs_before];
        self.broker_accepts_login(link);
        self.open(c, "/");
        self.link(link, encode::open_ok());
    }

    /// The client's `TuneOk` and `Open`.
    fn open(&mut self, conn: ConnId, vhost: &str) {
        self.line(format!("{conn} opens {vhost:?}"));
        self.tune_ok_and_open(conn, 60, vhost);
    }

    /// The client's `TuneOk` with `heartbeat` and its `Open` of `vhost`, traced as such.
    fn tune_ok_with(&mut self, conn: ConnId, heartbeat: u16, vhost: &str) {
        self.line(format!(
            "{conn} tune-ok heartbeat={heartbeat}, opens {vhost:?}"
        ));
        self.tune_ok_and_open(conn, heartbeat, vhost);
    }

    fn tune_ok_and_open(&mut self, conn: ConnId, heartbeat: u16, vhost: &str) {
        let mut b = frames::tune_ok(0, 131_072, heartbeat);
        b.extend_from_slice(&encode::open(vhost));
        self.client(conn, b.into());
    }

    fn link(&mut self, link: LinkId, frame: Bytes) {
        let frames = SmallVec::from_elem(to_frame(&frame), 1);
        self.input(Input::LinkFrames { link, frames });
    }

    fn connected(&mut self, link: LinkId) {
        self.input(Input::LinkConnected { link, node: 0 });
    }

    /// The broker answers a link's dial and login up to `Tune`.
    fn broker_accepts_login(&mut self, link: LinkId) {
        self.connected(link);
        let [start, tune, _open_ok] = broker_handshake(RABBITMQ_TUNE);
        self.link(link, start);
        self.link(link, tune);
    }

    /// The broker answers a link's dial with `Start`, then refuses the login.
    fn broker_refuses_login(&mut self, link: LinkId, text: &str) {
        self.connected(link);
        self.link(link, connection_start());
        self.link(link, close(0, reply::ACCESS_REFUSED, text));
    }

    fn drain(&mut self) {
        while let Some(o) = self.adm.poll_output() {
            let line = match o {
                Output::ToClient { conn, data } => format!("{conn} <- {}", describe(&data)),
                Output::CloseClient { conn, reset } => {
                    self.closed.push(conn);
                    format!("{conn} {}", if reset { "reset" } else { "closed" })
                }
                Output::Dial { link, .. } => {
                    self.dials.push(link);
                    format!("dial {link}")
                }
                Output::ToLink { link, data } => format!("{link} -> {}", describe(&data)),
                Output::CloseLink { link } => format!("{link} closed"),
                Output::StartHub { hub, machine } => {
                    self.hubs.insert(hub, 0);
                    format!("start {hub} for {}", machine.credentials())
                }
                Output::AdoptLink {
                    link, hub, frames, ..
                } => {
                    *self.hubs.entry(hub).or_default() += 1;
                    format!(
                        "{link} becomes an upstream of {hub} (+{} frames)",
                        frames.len()
                    )
                }
                Output::Join {
                    conn,
                    hub,
                    hello,
                    pipelined,
                } => {
                    *self.hubs.entry(hub).or_default() += 1;
                    self.joins.push((conn, hub));
                    format!(
                        "{conn} joins {hub} as {} (+{} bytes)",
                        hello.credentials,
                        pipelined.len()
                    )
                }
                // Instants print as the time since the world's start, so traces replay.
                Output::ToHub {
                    hub,
                    input: hub::Input::Drain { deadline },
                } => format!(
                    "{hub} gets Drain (deadline {})",
                    trace::stamp(deadline - self.t0)
                ),
                Output::ToHub { hub, input } => format!("{hub} gets {input:?}"),
                Output::StopHub { hub } => format!("stop {hub}"),
                Output::Event(e) => describe_event(&e),
            };
            self.line(line);
        }
    }
}

fn describe_event(e: &AdmissionEvent) -> String {
    match e {
        AdmissionEvent::Refused {
            conn, why, reply, ..
        } => format!(
            "refused {conn} ({}): {} {:?}",
            why.label(),
            reply.code,
            reply.text
        ),
        AdmissionEvent::ProofFailed { link, user, reply } => {
            format!(
                "proof {link} of {user} failed: {} {:?}",
                reply.code, reply.text
            )
        }
        AdmissionEvent::Unreachable { reply, retry_in } => {
            format!("unreachable for {retry_in:?}: {}", reply.text)
        }
        other => format!("{other:?}"),
    }
}

/// What admission wrote, frame by frame, by the test kit's trace printer.
fn describe(data: &[u8]) -> String {
    Tap::default().feed(data).join(", ")
}

fn config() -> AdmissionConfig {
    AdmissionConfig {
        credentials_ttl: Duration::from_secs(30),
        ..AdmissionConfig::default()
    }
}

#[test]
fn unknown_credentials_are_proved_before_tune_and_the_proof_becomes_the_upstream() {
    let mut w = World::new(config());
    let c1 = w.login("app", "secret", true);
    let link = w.dials[0];
    w.broker_accepts_login(link);
    // A second client with the same account arrives while the proof waits for a vhost:
    // it is trusted at once, and its Open goes to the same proof.
    let c2 = w.login("app", "secret", true);
    w.open(c1, "/");
    w.open(c2, "/");
    w.link(link, encode::open_ok());
    assert_eq!(w.joins.len(), 2);
    assert_eq!(w.dials.len(), 1, "one broker login for both");
    // A third client is trusted and joins the hub directly.
    let c3 = w.login("app", "secret", true);
    w.open(c3, "/");
    assert_eq!(w.joins.len(), 3);
    insta::assert_snapshot!(w.trace);
}

#[test]
fn a_wrong_password_is_refused_instead_of_tune_and_remembered() {
    let mut w = World::new(config());
    let c1 = w.login("app", "wrong", true);
    let c2 = w.login("app", "wrong", false);
    w.broker_refuses_login(
        w.dials[0],
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile.",
    );
    assert!(w.closed.contains(&c1), "closed after its Connection.Close");
    assert!(!w.closed.contains(&c2), "held, as RabbitMQ holds it");
    // Moments later the same login is refused from memory, without a dial.
    w.at(Duration::from_secs(1));
    w.login("app", "wrong", true);
    assert_eq!(w.dials.len(), 1);
    // The silent refusal resets its socket after RabbitMQ's delay.
    w.at(SILENT_CLOSE_DELAY);
    assert!(w.closed.contains(&c2));
    // After the refusal TTL, the broker is asked again.
    w.at(Duration::from_secs(6));
    w.login("app", "wrong", true);
    assert_eq!(w.dials.len(), 2);
    insta::assert_snapshot!(w.trace);
}

#[test]
fn a_refused_vhost_reaches_the_client_at_open_with_the_brokers_text() {
    let mut w = World::new(config());
    let c = w.login("app", "secret", true);
    let link = w.dials[0];
    w.broker_accepts_login(link);
    w.open(c, "nowhere");
    let refusal = close(
        0,
        reply::NOT_ALLOWED,
        "NOT_ALLOWED - vhost nowhere not found",
    );
    w.link(link, refusal);
    assert!(w.closed.contains(&c));
    // The account stays trusted; the vhost refusal is remembered.
    let c2 = w.login("app", "secret", true);
    w.open(c2, "nowhere");
    assert_eq!(w.dials.len(), 1);
    insta::assert_snapshot!(w.trace);
}

#[test]
fn an_unreachable_broker_refuses_new_logins_at_once_until_the_backoff_ends() {
    let mut w = World::new(config());
    w.login("app", "secret", true);
    let link = w.dials[0];
    w.input(Input::LinkClosed {
        link,
        reason: "connection refused (127.0.0.1:5672)".into(),
    });
    w.login("other", "secret", true);
    assert_eq!(w.dials.len(), 1, "no dial while unreachable");
    w.at(Duration::from_secs(1));
    w.login("other", "secret", true);
    assert_eq!(w.dials.len(), 2, "dialled again after the backoff");
    insta::assert_snapshot!(w.trace);
}

#[test]
fn trusted_accounts_expire_in_age_mode() {
    let mut w = World::new(config());
    w.proved_and_open("app", "secret");
    w.at(Duration::from_secs(29));
    let c2 = w.login("app", "secret", true);
    w.open(c2, "/");
    assert_eq!(w.dials.len(), 1, "trusted within credentials_ttl");
    w.at(Duration::from_secs(31));
    let c3 = w.login("app", "secret", true);
    assert_eq!(w.dials.len(), 2, "proved again after credentials_ttl");
    w.broker_accepts_login(w.dials[1]);
    w.open(c3, "/");
    w.link(w.dials[1], encode::open_ok());
    let hub = w.joins[0].1;
    assert_eq!(
        w.joins.last(),
        Some(&(c3, hub)),
        "the fresh proof joins the same hub"
    );
    insta::assert_snapshot!(w.trace);
}

#[test]
fn limits_and_drain_refuse_with_the_documented_codes() {
    let mut w = World::new(AdmissionConfig {
        max_hubs: 1,
        max_clients: 1,
        ..config()
    });
    w.proved_and_open("a", "p");
    // Another vhost would need a second hub.
    let c2 = w.login("a", "p", true);
    w.open(c2, "other");
    // A client accepted while two are connected.
    let c3 = w.adm.accept(w.now, 2);
    w.start_ok(c3, "a", "p", true);
    w.open(c3, "/");
    // Draining: a client mid-handshake is closed with 320, and the hub is told to drain.
    let c4 = w.login("a", "p", true);
    let deadline = w.now + Duration::from_secs(30);
    w.input(Input::Drain { deadline });
    assert!([c2, c3, c4].iter().all(|c| w.closed.contains(c)));
    assert!(
        w.trace.contains("h1 gets Drain (deadline +30.000s)"),
        "the hub hears of the drain from admission: {}",
        w.trace
    );
    insta::assert_snapshot!(w.trace);
}

#[test]
fn a_hub_stops_only_when_nothing_is_on_its_way_to_it() {
    let mut w = World::new(config());
    w.proved_and_open("a", "p");
    let (hub, handoffs) = w.hubs.iter().next().map(|(h, n)| (*h, *n)).unwrap();
    assert_eq!(handoffs, 2, "the proof and the client");
    w.input(Input::HubIdle { hub, handoffs: 1 });
    assert!(!w.trace.contains("stop"), "a handoff is still on its way");
    w.input(Input::HubIdle { hub, handoffs: 2 });
    assert!(w.trace.contains(&format!("stop {hub}")));
    assert_eq!(w.adm.hub_count(), 0);
}

#[test]
fn revocations_from_the_event_feed() {
    let events = Credentials {
        user: "monitor".into(),
        password: Secret::new("m"),
        vhost: "/".into(),
    };
    let mut w = World::new(AdmissionConfig {
        events: Some(events),
        ..config()
    });
    let feed = w.dials[0];
    w.broker_accepts_login(feed);
    w.link(feed, encode::open_ok());
    assert!(w.adm.feed_is_up());
    let declare_ok = m(1, ids::QUEUE_DECLARE_OK, |wr| {
        wr.shortstr(b"amq.gen-feed").u32(0).u32(0);
    });
    w.link(feed, declare_ok);
    // A client is proved and joins.
    w.proved_and_open("app", "old");
    // Trusted beyond credentials_ttl while the feed is up (and its heartbeats too).
    w.at(Duration::from_secs(100));
    let c2 = w.login("app", "old", true);
    w.open(c2, "/");
    assert_eq!(w.dials.len(), 2);
    // The password changes: the old one must be proved again (and is refused).
    deliver_event(&mut w, feed, "user.password.changed", &[("name", "app")]);
    let c3 = w.login("app", "old", true);
    assert_eq!(w.dials.len(), 3);
    w.broker_refuses_login(w.dials[2], "ACCESS_REFUSED - Login was refused");
    assert!(w.closed.contains(&c3));
    // The user is deleted: its hubs close their clients as RabbitMQ would.
    deliver_event(&mut w, feed, "user.deleted", &[("name", "app")]);
    insta::assert_snapshot!(w.trace);
}

fn deliver_event(w: &mut World, feed: LinkId, key: &str, headers: &[(&str, &str)]) {
    w.line(format!("broker event {key}"));
    let deliver = m(1, ids::BASIC_DELIVER, |wr| {
        wr.shortstr(b"warren-events")
            .u64(1)
            .bit(false)
            .shortstr(events::EXCHANGE.as_bytes())
            .shortstr(key.as_bytes());
    });
    w.link(feed, deliver);
    let table = headers
        .iter()
        .fold(FieldTable::default(), |t, (k, v)| t.with(k, longstr(v)));
    let props = frames::Args::new().table(&table).done();
    let header = frames::content_header(60, 0, 1 << 13, &props);
    w.link(feed, frames::frame(FrameType::Header, 1, &header).into());
}

/// B10/B13 (simulation seeds 27945, 71384, 139499, 142810): a client whose `Open` waits on
/// the proof opening its vhost hears heartbeats at the interval its `TuneOk` settled, as
/// RabbitMQ sends them from `TuneOk` on, and one that falls silent for two intervals is
/// closed as a hub closes it. When the proof finally fails (the broker went silent), the
/// waiting client is told why.
#[test]
fn a_client_waiting_at_open_hears_heartbeats() {
    let mut w = World::new(config());
    let beating = w.login("app", "secret", true);
    let silent = w.login("app", "secret", true);
    let link = w.dials[0];
    w.broker_accepts_login(link);
    w.tune_ok_with(beating, 1, "/");
    w.tune_ok_with(silent, 1, "/");
    w.line("the broker falls silent");
    for ms in (250..=5_000).step_by(250) {
        w.at(Duration::from_millis(ms));
        if ms % 500 == 0 && !w.closed.contains(&beating) {
            w.client(beating, Bytes::from_static(HEARTBEAT));
        }
    }
    assert!(w.closed.contains(&silent) && w.closed.contains(&beating));
    let heartbeats = w
        .trace
        .lines()
        .filter(|l| l.ends_with(&format!("{beating} <- heartbeat")))
        .count();
    assert_eq!(
        heartbeats, 9,
        "one every half second until the proof fails at 5s"
    );
    assert!(w.trace.contains(&format!(
        "{silent} <- ch0 connection.close 320 \"CONNECTION_FORCED - missed heartbeats from client, timeout\""
    )));
    assert!(w.trace.contains(&format!(
        "{beating} <- ch0 connection.close 320 \"CONNECTION_FORCED - broker unreachable: timed out connecting\""
    )));
    insta::assert_snapshot!(w.trace);
}

/// B13: the handshake's deadline still bounds a client waiting at `Open` for its vhost;
/// like one waiting for its login's verdict, it is told why instead of losing its socket.
#[test]
fn a_client_waiting_at_open_past_the_handshake_deadline_is_told_why() {
    let hub = HubConfig {
        connect_timeout: Duration::from_secs(30),
        ..HubConfig::default()
    };
    let mut w = World::new(AdmissionConfig { hub, ..config() });
    let c = w.login("app", "secret", true);
    w.broker_accepts_login(w.dials[0]);
    w.tune_ok_with(c, 0, "/");
    w.at(Duration::from_millis(9_999));
    assert!(!w.closed.contains(&c));
    w.at(Duration::from_secs(10));
    assert!(w.closed.contains(&c));
    assert!(w.trace.contains(&format!(
        "{c} <- ch0 connection.close 320 \"CONNECTION_FORCED - broker unreachable: timed out opening the vhost\""
    )));
}

/// B13 (simulation seed 2018609): the time a client waits for its login's verdict does not
/// count against its handshake deadline. A verdict just before the deadline left it no time
/// to answer `Tune`, and it lost its socket for warren's (or the broker's) slowness.
#[test]
fn a_late_login_verdict_leaves_the_client_its_own_time() {
    let hub = HubConfig {
        connect_timeout: Duration::from_secs(30),
        ..HubConfig::default()
    };
    let mut w = World::new(AdmissionConfig { hub, ..config() });
    let c = w.login("app", "secret", true);
    let link = w.dials[0];
    w.at(Duration::from_millis(9_900));
    w.broker_accepts_login(link);
    w.at(Duration::from_millis(10_500));
    assert!(!w.closed.contains(&c), "{}", w.trace);
    w.tune_ok_with(c, 0, "/");
    w.link(link, encode::open_ok());
    assert!(w.joins.iter().any(|(j, _)| *j == c), "{}", w.trace);
    // Its own time still runs out: one that never answers is dropped.
    let slow = w.login("app", "secret", true);
    w.at(Duration::from_millis(20_400));
    assert!(!w.closed.contains(&slow));
    w.at(Duration::from_millis(20_600));
    assert!(w.closed.contains(&slow), "{}", w.trace);
}

#[test]
fn a_key_spreads_over_hubs_per_key_hubs_in_turn() {
    let mut w = World::new(AdmissionConfig {
        hubs_per_key: 2,
        ..config()
    });
    w.proved_and_open("app", "secret");
    // The proof's hub is the first; the next client starts the second; then they take turns.
    let mut hub_of = Vec::new();
    for _ in 0..5 {
        let c = w.login("app", "secret", true);
        w.open(c, "/");
        hub_of.push(w.joins.last().map(|(_, h)| *h));
    }
    let first = w.joins[0].1;
    let second = hub_of[0].expect("joined");
    assert_ne!(first, second, "a second hub for the second client");
    assert_eq!(w.hubs.len(), 2, "no third hub: {:?}", w.hubs);
    let turns: Vec<bool> = hub_of.iter().map(|h| *h == Some(first)).collect();
    assert_eq!(turns, [false, true, false, true, false], "{hub_of:?}");
    assert_eq!(
        w.dials.len(),
        1,
        "one proof; the second hub dials its own upstream"
    );
}

/// B16: pausing a vhost pauses its running hubs and hubs of that vhost started later, and
/// not other vhosts'; resuming resumes them. Draining a hub sends the next client of its
/// credentials to a new hub.
#[test]
fn paused_vhosts_and_drained_hubs() {
    let mut w = World::new(config());
    w.proved_and_open("a", "p");
    let first = w.joins[0].1;
    assert_eq!(w.adm.find_hub(first.get()), Some(first));
    assert_eq!(w.adm.find_hub(999), None);
    w.line("pause vhost /");
    w.input(Input::PauseVhost { vhost: "/".into() });
    assert_eq!(w.adm.paused_vhosts(), ["/"]);
    w.line("drain the first hub");
    w.input(Input::DetachHub { hub: first });
    let list = w.adm.hub_list();
    assert_eq!((list[0].user.as_str(), list[0].attached), ("a", false));
    // The next client of the same credentials starts a second hub, paused from the start.
    let c2 = w.login("a", "p", true);
    w.open(c2, "/");
    let second = w.joins[1].1;
    assert_ne!(first, second);
    w.line("resume vhost /");
    w.input(Input::ResumeVhost { vhost: "/".into() });
    assert!(w.adm.paused_vhosts().is_empty());
    let trace = w.trace.clone();
    let start = trace.find(&format!("start {second}")).unwrap();
    let pause = trace[start..]
        .find(&format!("{second} gets Pause"))
        .unwrap();
    let join = trace[start..].find(&format!("joins {second}")).unwrap();
    assert!(pause < join, "paused before its first client:\n{trace}");
    insta::assert_snapshot!(trace);
}

/// B17: behind a load balancer, a connection starts with a PROXY header whose address is the
/// client's; one without a valid header is closed before any AMQP byte goes out.
#[test]
fn a_proxy_header_names_the_client_and_a_missing_one_is_refused_silently() {
    let mut w = World::new(AdmissionConfig {
        proxy_protocol: true,
        ..config()
    });
    let c = w.accept();
    w.client(
        c,
        Bytes::from_static(b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 5673\r\nAMQP\x00\x00\x09\x01"),
    );
    assert!(
        w.trace.contains("ClientAddress") && w.trace.contains("192.0.2.7:40000"),
        "{}",
        w.trace
    );
    assert!(
        w.trace.contains("connection.start"),
        "the handshake went on: {}",
        w.trace
    );
    let bare = w.accept();
    let before = w.trace.len();
    w.client(bare, Bytes::from_static(PROTOCOL_HEADER));
    let after = &w.trace[before..];
    assert!(w.closed.contains(&bare), "{after}");
    assert!(
        !after.contains(" <- "),
        "nothing was written to it: {after}"
    );
    assert!(after.contains("ProxyHeaderRefused"), "{after}");
    assert_eq!(w.adm.stats().refusals.get(&Refusal::ProxyHeader), Some(&1));
}

/// B16: a reload's settings apply to the next client and reach every running hub.
#[test]
fn a_reload_applies_to_the_next_client_and_reaches_every_hub() {
    let mut w = World::new(config());
    w.proved_and_open("app", "secret");
    assert_eq!(w.joins.len(), 1);
    w.input(Input::Reconfigure(Box::new(AdmissionConfig {
        max_clients: 0,
        ..config()
    })));
    assert!(w.trace.contains("gets Reconfigure"), "{}", w.trace);
    let c2 = w.login("app", "secret", true);
    w.open(c2, "/");
    assert_eq!(w.joins.len(), 1, "over the new limit: {}", w.trace);
    assert!(w.trace.contains("max_clients"), "{}", w.trace);
}

//! Prometheus metrics with an explicit registry (no global recorder), so that each server and
//! each test has its own and the output is deterministic.
//!
//! Per-hub series carry `user` and `vhost` labels — never the password (B1). Hubs report by
//! deltas: [`HubMetrics::record`] adds what the core's counters grew by, and
//! [`HubMetrics::set_gauges`] moves the shared gauges by the change since its last call, so
//! two hubs with the same user and vhost (different passwords) add up instead of overwriting
//! each other, and a hub's share is taken back when its last handle is dropped. When the last
//! hub of a user and vhost goes, its series are removed, so that a long-running warren does not
//! keep a label set for every user and vhost it ever served.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use warren_core::hub::HubStats;

/// Upper bounds of the handshake latency buckets, in seconds: from a local handshake (tens of
/// microseconds) to one that waited for a broker login (seconds).
const HANDSHAKE_BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HubLabels {
    user: String,
    vhost: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    user: String,
    vhost: String,
    /// `client_to_proxy`, `proxy_to_client`, `upstream_to_proxy` or `proxy_to_upstream`.
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpenLabels {
    user: String,
    vhost: String,
    /// `pool` or `broker`.
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    user: String,
    vhost: String,
    /// One of [`PROBE_ANSWERS`].
    answer: &'static str,
}

/// The answers a probe of an exchange type gets, in the order of `HubSeries::probes`.
const PROBE_ANSWERS: [&str; 3] = ["known", "unknown", "failed"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    user: String,
    vhost: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoginLabels {
    /// `proved` (a broker login answered it) or `trusted` (answered from the cache).
    how: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProofLabels {
    /// `accepted`, `refused` (403 or 530) or `failed` (the broker could not be reached).
    result: &'static str,
}

/// The hubs that report under one user and vhost.
#[derive(Debug, Default)]
struct LabelUse {
    hubs: usize,
    close_codes: BTreeSet<u16>,
}

/// Every metric family of one server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    hubs: Gauge,
    refused: Family<ReasonLabels, Counter>,
    logins: Family<LoginLabels, Counter>,
    proofs: Family<ProofLabels, Counter>,
    revocations: Counter,
    event_feed: Gauge,
    handshake: Histogram,
    per_hub: PerHub,
}

/// The labelled families each hub gets its series from (clones share the families).
#[derive(Debug, Default, Clone)]
struct PerHub {
    /// Hubs alive per label set, and the close codes counted for it: what to remove when the
    /// last of them goes.
    in_use: Arc<Mutex<HashMap<HubLabels, LabelUse>>>,
    clients: Family<HubLabels, Gauge>,
    upstreams: Family<HubLabels, Gauge>,
    channels_open: Family<HubLabels, Gauge>,
    channels_pooled: Family<HubLabels, Gauge>,
    frames: Family<FlowLabels, Counter>,
    bytes: Family<FlowLabels, Counter>,
    publishes: Family<HubLabels, Counter>,
    deliveries: Family<HubLabels, Counter>,
    channel_opens: Family<OpenLabels, Counter>,
    channels_recycled: Family<HubLabels, Counter>,
    client_closes: Family<CloseLabels, Counter>,
    upstream_connects: Family<HubLabels, Counter>,
    upstream_failures: Family<HubLabels, Counter>,
    upstream_losses: Family<HubLabels, Counter>,
    heartbeat_misses: Family<HubLabels, Counter>,
    slow_clients: Family<HubLabels, Counter>,
    type_probes: Family<ProbeLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every family, so that `/metrics` lists them all from the start.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("warren");
        let hubs = Gauge::default();
        let refused = Family::default();
        let logins = Family::default();
        let proofs = Family::default();
        let revocations = Counter::default();
        let event_feed = Gauge::default();
        let handshake = Histogram::new(HANDSHAKE_BUCKETS);
        let per_hub = PerHub::default();
        let r = &mut registry;
        r.register(
            "hubs",
            "Hubs (distinct user, password and vhost)",
            hubs.clone(),
        );
        let p = &per_hub;
        r.register("clients", "Connected clients", p.clients.clone());
        r.register("upstreams", "Open broker connections", p.upstreams.clone());
        r.register(
            "channels_open",
            "Client channels mapped to broker channels",
            p.channels_open.clone(),
        );
        r.register(
            "channels_pooled",
            "Open broker channels waiting in the recycling pool",
            p.channels_pooled.clone(),
        );
        r.register("frames", "Frames by direction", p.frames.clone());
        r.register("bytes", "Bytes by direction", p.bytes.clone());
        r.register(
            "publishes",
            "Messages forwarded to the broker",
            p.publishes.clone(),
        );
        r.register(
            "deliveries",
            "Messages forwarded to clients (deliver, get-ok, return)",
            p.deliveries.clone(),
        );
        r.register(
            "channel_opens",
            "Channel opens served from the pool or by the broker",
            p.channel_opens.clone(),
        );
        r.register(
            "channels_recycled",
            "Channels returned to the pool",
            p.channels_recycled.clone(),
        );
        r.register(
            "client_closes",
            "Clients closed by warren, by reply code",
            p.client_closes.clone(),
        );
        r.register(
            "upstream_connects",
            "Broker connections established",
            p.upstream_connects.clone(),
        );
        r.register(
            "upstream_failures",
            "Broker dials or handshakes that failed",
            p.upstream_failures.clone(),
        );
        r.register(
            "upstream_losses",
            "Established broker connections lost",
            p.upstream_losses.clone(),
        );
        r.register(
            "heartbeat_misses",
            "Peers declared dead for missed heartbeats",
            p.heartbeat_misses.clone(),
        );
        r.register(
            "slow_client_disconnects",
            "Clients disconnected for not reading",
            p.slow_clients.clone(),
        );
        r.register(
            "exchange_type_probes",
            "Broker connections that asked whether the broker knows an exchange type, by answer (known, unknown, failed)",
            p.type_probes.clone(),
        );
        r.register(
            "refused_connections",
            "Client connections refused before reaching a hub, by reason",
            refused.clone(),
        );
        r.register(
            "client_logins",
            "Client logins answered by a broker login (proved) or from accepted credentials (trusted)",
            logins.clone(),
        );
        r.register(
            "login_proofs",
            "Broker logins started to prove a client's unknown credentials, by result",
            proofs.clone(),
        );
        r.register(
            "credential_revocations",
            "Changes to users, permissions and vhosts received from the broker's event exchange",
            revocations.clone(),
        );
        r.register(
            "event_feed_up",
            "1 while the broker's event exchange is followed, 0 while credentials are trusted for credentials_ttl only",
            event_feed.clone(),
        );
        r.register_with_unit(
            "handshake_duration",
            "Time from accept to Connection.OpenOk",
            Unit::Seconds,
            handshake.clone(),
        );
        Metrics {
            registry,
            hubs,
            refused,
            logins,
            proofs,
            revocations,
            event_feed,
            handshake,
            per_hub,
        }
    }

    /// The handle a hub reports through; its series exist (at zero) from this call on.
    #[must_use]
    pub fn hub(&self, user: &str, vhost: &str) -> HubMetrics {
        let p = &self.per_hub;
        let labels = HubLabels {
            user: user.to_owned(),
            vhost: vhost.to_owned(),
        };
        // Counted before the series are created, so a last hub leaving at the same time cannot
        // remove them from under this one.
        p.use_of().entry(labels.clone()).or_default().hubs += 1;
        let flow = |f: &Family<FlowLabels, Counter>| {
            DIRECTIONS.map(|direction| {
                f.get_or_create_owned(&FlowLabels {
                    user: labels.user.clone(),
                    vhost: labels.vhost.clone(),
                    direction,
                })
            })
        };
        let opened_from = |source| {
            p.channel_opens.get_or_create_owned(&OpenLabels {
                user: labels.user.clone(),
                vhost: labels.vhost.clone(),
                source,
            })
        };
        HubMetrics(Arc::new(HubSeries {
            gauges: [
                &p.clients,
                &p.upstreams,
                &p.channels_open,
                &p.channels_pooled,
            ]
            .map(|f| f.get_or_create_owned(&labels)),
            reported: Default::default(),
            frames: flow(&p.frames),
            bytes: flow(&p.bytes),
            publishes: p.publishes.get_or_create_owned(&labels),
            deliveries: p.deliveries.get_or_create_owned(&labels),
            opens_from_pool: opened_from("pool"),
            opens_from_broker: opened_from("broker"),
            channels_recycled: p.channels_recycled.get_or_create_owned(&labels),
            upstream_connects: p.upstream_connects.get_or_create_owned(&labels),
            upstream_failures: p.upstream_failures.get_or_create_owned(&labels),
            upstream_losses: p.upstream_losses.get_or_create_owned(&labels),
            heartbeat_misses: p.heartbeat_misses.get_or_create_owned(&labels),
            slow_clients: p.slow_clients.get_or_create_owned(&labels),
            probes: PROBE_ANSWERS.map(|answer| {
                p.type_probes.get_or_create_owned(&ProbeLabels {
                    user: labels.user.clone(),
                    vhost: labels.vhost.clone(),
                    answer,
                })
            }),
            families: p.clone(),
            labels,
        }))
    }

    /// Sets the number of hubs.
    pub fn set_hubs(&self, n: usize) {
        self.hubs.set(gauge_value(n));
    }

    /// Counts a client refused before it reached a hub (`max_clients`, `max_hubs`,
    /// `auth_cache`, `handshake_timeout`, `tls`, ...).
    pub fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a client login: `proved` by a broker login or `trusted` from the cache.
    pub fn login(&self, how: &'static str) {
        self.logins.get_or_create(&LoginLabels { how }).inc();
    }

    /// Counts a proof's result: `accepted`, `refused` or `failed`.
    pub fn proof(&self, result: &'static str) {
        self.proofs.get_or_create(&ProofLabels { result }).inc();
    }

    /// Counts a revocation from the broker's event exchange.
    pub fn revocation(&self) {
        self.revocations.inc();
    }

    /// Whether the broker's event exchange is followed.
    pub fn set_event_feed(&self, up: bool) {
        self.event_feed.set(i64::from(up));
    }

    /// Records how long a client took from accept to joining its hub.
    pub fn observe_handshake(&self, d: Duration) {
        self.handshake.observe(d.as_secs_f64());
    }

    /// Everything, in the OpenMetrics text format (served with
    /// [`CONTENT_TYPE`]).
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The order of the `direction` label values in [`HubSeries`]' arrays.
const DIRECTIONS: [&str; 4] = [
    "client_to_proxy",
    "proxy_to_client",
    "upstream_to_proxy",
    "proxy_to_upstream",
];

/// One hub's series: cheap to clone, and its gauge share is taken back when the last clone is
/// dropped.
#[derive(Debug, Clone)]
pub struct HubMetrics(Arc<HubSeries>);

#[derive(Debug)]
struct HubSeries {
    labels: HubLabels,
    /// clients, upstreams, channels open, channels pooled.
    gauges: [Gauge; 4],
    /// What this hub last added to each of `gauges`.
    reported: [AtomicI64; 4],
    /// By [`DIRECTIONS`].
    frames: [Counter; 4],
    /// By [`DIRECTIONS`].
    bytes: [Counter; 4],
    publishes: Counter,
    deliveries: Counter,
    opens_from_pool: Counter,
    opens_from_broker: Counter,
    channels_recycled: Counter,
    upstream_connects: Counter,
    upstream_failures: Counter,
    upstream_losses: Counter,
    heartbeat_misses: Counter,
    slow_clients: Counter,
    /// By [`PROBE_ANSWERS`].
    probes: [Counter; 3],
    /// For close codes (labels made as they come) and for removing the series.
    families: PerHub,
}

impl HubMetrics {
    /// Adds how much each counter of the hub grew from `prev` to `cur` (snapshots of
    /// [`warren_core::hub::Hub::stats`]).
    pub fn record(&self, prev: &HubStats, cur: &HubStats) {
        let s = &self.0;
        let add = |c: &Counter, f: fn(&HubStats) -> u64| {
            c.inc_by(f(cur).saturating_sub(f(prev)));
        };
        add(&s.frames[0], |h| h.client_frames);
        add(&s.frames[1], |h| h.frames_to_clients);
        add(&s.frames[2], |h| h.upstream_frames);
        add(&s.frames[3], |h| h.frames_to_upstreams);
        add(&s.bytes[0], |h| h.client_bytes);
        add(&s.bytes[1], |h| h.bytes_to_clients);
        add(&s.bytes[2], |h| h.upstream_bytes);
        add(&s.bytes[3], |h| h.bytes_to_upstreams);
        add(&s.publishes, |h| h.publishes);
        add(&s.deliveries, |h| h.deliveries);
        add(&s.opens_from_pool, |h| h.opens_from_pool);
        add(&s.opens_from_broker, |h| h.opens_from_broker);
        add(&s.channels_recycled, |h| h.channels_recycled);
        add(&s.upstream_connects, |h| h.upstream_connects);
        add(&s.upstream_failures, |h| h.upstream_failures);
        add(&s.upstream_losses, |h| h.upstream_losses);
        add(&s.heartbeat_misses, |h| h.heartbeat_misses);
        add(&s.slow_clients, |h| h.slow_clients);
        add(&s.probes[0], |h| h.probes_known);
        add(&s.probes[1], |h| h.probes_unknown);
        add(&s.probes[2], |h| h.probes_failed);
        for (&code, &n) in &cur.client_closes {
            let grew = n.saturating_sub(prev.client_closes.get(&code).copied().unwrap_or(0));
            if grew > 0 {
                let labels = CloseLabels {
                    user: s.labels.user.clone(),
                    vhost: s.labels.vhost.clone(),
                    code,
                };
                s.families.client_closes.get_or_create(&labels).inc_by(grew);
                let mut in_use = s.families.use_of();
                if let Some(u) = in_use.get_mut(&s.labels) {
                    u.close_codes.insert(code);
                }
            }
        }
    }

    /// Sets this hub's share of the gauges.
    pub fn set_gauges(
        &self,
        clients: usize,
        upstreams: usize,
        channels_open: usize,
        channels_pooled: usize,
    ) {
        self.0
            .set_gauges([clients, upstreams, channels_open, channels_pooled]);
    }
}

impl HubSeries {
    fn set_gauges(&self, values: [usize; 4]) {
        for ((gauge, reported), value) in self.gauges.iter().zip(&self.reported).zip(values) {
            let value = gauge_value(value);
            gauge.inc_by(value - reported.swap(value, Ordering::Relaxed));
        }
    }
}

impl Drop for HubSeries {
    fn drop(&mut self) {
        self.set_gauges([0; 4]);
        let mut in_use = self.families.use_of();
        let Some(u) = in_use.get_mut(&self.labels) else {
            return;
        };
        u.hubs -= 1;
        if u.hubs == 0 {
            let codes = std::mem::take(&mut u.close_codes);
            in_use.remove(&self.labels);
            self.families.remove(&self.labels, &codes);
        }
    }
}

impl PerHub {
    /// The use table, locked (a panic elsewhere does not stop the counting).
    fn use_of(&self) -> std::sync::MutexGuard<'_, HashMap<HubLabels, LabelUse>> {
        self.in_use.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes every series of `labels` (their last hub is gone).
    fn remove(&self, labels: &HubLabels, close_codes: &BTreeSet<u16>) {
        for f in [
            &self.clients,
            &self.upstreams,
            &self.channels_open,
            &self.channels_pooled,
        ] {
            f.remove(labels);
        }
        for f in [
            &self.publishes,
            &self.deliveries,
            &self.channels_recycled,
            &self.upstream_connects,
            &self.upstream_failures,
            &self.upstream_losses,
            &self.heartbeat_misses,
            &self.slow_clients,
        ] {
            f.remove(labels);
        }
        let (user, vhost) = (labels.user.clone(), labels.vhost.clone());
        for direction in DIRECTIONS {
            let flow = FlowLabels {
                user: user.clone(),
                vhost: vhost.clone(),
                direction,
            };
            self.frames.remove(&flow);
            self.bytes.remove(&flow);
        }
        for source in ["pool", "broker"] {
            self.channel_opens.remove(&OpenLabels {
                user: user.clone(),
                vhost: vhost.clone(),
                source,
            });
        }
        for answer in PROBE_ANSWERS {
            self.type_probes.remove(&ProbeLabels {
                user: user.clone(),
                vhost: vhost.clone(),
                answer,
            });
        }
        for &code in close_codes {
            self.client_closes.remove(&CloseLabels {
                user: user.clone(),
                vhost: vhost.clone(),
                code,
            });
        }
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(scale: u64) -> HubStats {
        HubStats {
            opens_from_broker: 3 * scale,
            opens_from_pool: 5 * scale,
            channels_recycled: 4 * scale,
            publishes: 100 * scale,
            deliveries: 40 * scale,
            client_frames: 310 * scale,
            upstream_frames: 130 * scale,
            client_bytes: 31_000 * scale,
            upstream_bytes: 13_000 * scale,
            frames_to_clients: 125 * scale,
            frames_to_upstreams: 300 * scale,
            bytes_to_clients: 12_500 * scale,
            bytes_to_upstreams: 30_000 * scale,
            upstream_connects: scale,
            upstream_failures: 2 * scale,
            upstream_losses: scale,
            heartbeat_misses: scale,
            slow_clients: scale,
            client_closes: [(320, scale), (505, 2 * scale)].into_iter().collect(),
            channel_refusals: scale,
            probes_known: 2 * scale,
            probes_unknown: scale,
            probes_failed: 3 * scale,
        }
    }

    /// The reference table of docs/metrics.md: every family with its type, labels and help,
    /// read from what the registry encodes once every family has a sample.
    fn reference_table() -> String {
        let m = Metrics::new();
        let hub = m.hub("u", "v");
        hub.record(&HubStats::default(), &stats(1));
        hub.set_gauges(1, 1, 1, 1);
        m.set_hubs(1);
        m.refused("max_clients");
        m.login("proved");
        m.proof("accepted");
        m.revocation();
        m.set_event_feed(true);
        m.observe_handshake(Duration::from_millis(1));
        let text = m.encode();
        let mut table = String::from("| series | type | labels | meaning |\n|---|---|---|---|\n");
        let mut help = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                help = rest
                    .split_once(' ')
                    .map(|(n, h)| (n.to_owned(), h.to_owned()));
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                let (_, help) = help
                    .take()
                    .filter(|(n, _)| n == name)
                    .expect("HELP before TYPE");
                let series = match kind {
                    "counter" => format!("`{name}_total`"),
                    "histogram" => format!("`{name}_bucket`, `_sum`, `_count`"),
                    _ => format!("`{name}`"),
                };
                let sample = text
                    .lines()
                    .find(|l| l.starts_with(name) && !l.starts_with('#'))
                    .expect("every family has a sample");
                let labels: Vec<_> = sample
                    .split_once('{')
                    .map(|(_, l)| l.trim_end_matches(|c| c != '}'))
                    .unwrap_or("")
                    .split(',')
                    .filter_map(|kv| kv.split_once('=').map(|(k, _)| format!("`{k}`")))
                    .filter(|k| k != "`le`")
                    .collect();
                table.push_str(&format!(
                    "| {series} | {kind} | {} | {help} |\n",
                    labels.join(", ")
                ));
            }
        }
        table
    }

    #[test]
    fn the_metrics_reference_is_current() {
        crate::generated_docs::check_section(
            "docs/metrics.md",
            "<!-- BEGIN generated by `cargo test -p warren-runtime metrics` -->\n",
            &reference_table(),
        );
    }

    #[test]
    fn encodes_a_known_sequence() {
        let m = Metrics::new();
        let guest = m.hub("guest", "/");
        guest.record(&HubStats::default(), &stats(1));
        guest.record(&stats(1), &stats(3));
        guest.set_gauges(3, 1, 5, 2);
        let app = m.hub("app", "prod\"ion");
        app.record(&HubStats::default(), &HubStats::default());
        app.set_gauges(1, 1, 1, 0);
        m.set_hubs(2);
        m.refused("max_clients");
        m.refused("max_clients");
        m.refused("auth_cache");
        for micros in [80, 300, 2_000, 1_500_000] {
            m.observe_handshake(Duration::from_micros(micros));
        }
        insta::assert_snapshot!(in_stable_order(&m.encode()));
    }

    /// The families keep their series in hash maps; sort each run of samples for the snapshot.
    fn in_stable_order(text: &str) -> String {
        let mut out = Vec::new();
        let mut run: Vec<&str> = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') {
                run.sort_unstable();
                out.append(&mut run);
                out.push(line);
            } else {
                run.push(line);
            }
        }
        out.append(&mut run);
        out.join("\n")
    }

    fn sample_value(text: &str, series: &str) -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} not in\n{text}"))
            .to_owned()
    }

    #[test]
    fn hubs_sharing_labels_add_up_and_leave_nothing_behind() {
        let m = Metrics::new();
        let a = m.hub("guest", "/");
        let b = m.hub("guest", "/");
        a.set_gauges(3, 1, 4, 1);
        b.set_gauges(2, 1, 0, 0);
        a.set_gauges(4, 1, 4, 1);
        let clients = r#"warren_clients{user="guest",vhost="/"}"#;
        assert_eq!(sample_value(&m.encode(), clients), "6");
        let a2 = a.clone();
        drop(a);
        assert_eq!(sample_value(&m.encode(), clients), "6");
        drop(a2);
        assert_eq!(sample_value(&m.encode(), clients), "2");
        b.record(&stats(2), &stats(5));
        let text = m.encode();
        assert_eq!(
            sample_value(&text, r#"warren_publishes_total{user="guest",vhost="/"}"#),
            "300"
        );
        let closes = r#"warren_client_closes_total{user="guest",vhost="/",code="505"}"#;
        assert_eq!(sample_value(&text, closes), "6");
        drop(b);
        let text = m.encode();
        assert!(
            !text.contains(r#"user="guest""#),
            "the last hub of guest and / took its series along:\n{text}"
        );
        let c = m.hub("guest", "/");
        c.set_gauges(1, 1, 0, 0);
        assert_eq!(
            sample_value(&m.encode(), clients),
            "1",
            "a new hub starts afresh"
        );
    }
}

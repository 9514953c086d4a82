//! One source of settings: [`Settings`], declared once from the `settings!` list below, which
//! gives every setting its flag, its `WARREN_*` variable, its file key and its help text, so
//! that a key cannot be missing from one of the three sources.
//!
//! [`Settings::build`] lays a source over the defaults and validates the result;
//! [`Settings::from_config`] goes the other way, so that `--help`, the reference and a
//! reload's list of changes show values exactly as flags and variables spell them. The small
//! text types at the end (`off` for a listener, `fill|spread`, comma lists) exist only for
//! this layer; [`Config`] holds the plain values.

use super::{invalid, Config, ConfigError, ListenerTls, LogFormat, UpstreamTls, Upstreams};
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use warren_core::credentials::{Credentials, Secret};
use warren_core::hub::Placement;

/// `frame_max` → `WARREN_FRAME_MAX`.
pub(super) fn env_var(key: &str) -> String {
    format!("WARREN_{}", key.to_ascii_uppercase())
}

/// Declares [`Settings`] and the per-key plumbing from one list, so that a key cannot be
/// missing from one of the three sources.
macro_rules! settings {
    ($( $(#[$meta:meta])* $key:ident: $ty:ty, )*) => {
        /// One source of settings (flags, environment or file). Every key is optional so that
        /// the sources can be layered key by key; [`Settings::build`] fills in the defaults.
        #[derive(Debug, Default, clap::Args, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct Settings {
            $( $(#[$meta])* #[arg(long)] $key: Option<$ty>, )*
        }

        impl Settings {
            /// Key by key: `self` where set, else `lower`.
            pub(super) fn or(self, lower: Settings) -> Settings {
                Settings { $( $key: self.$key.or(lower.$key), )* }
            }

            /// Reads `WARREN_<KEY>` for every key.
            pub(super) fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
                Ok(Settings { $( $key: parse_env(env, stringify!($key))?, )* })
            }

            /// Every key with its value as flags and variables spell it (`None` when unset).
            pub(super) fn shown(&self) -> Vec<(&'static str, Option<String>)> {
                vec![$( (stringify!($key), self.$key.as_ref().map(ToString::to_string)), )*]
            }
        }
    };
}

fn parse_env<T>(env: &dyn Fn(&str) -> Option<String>, key: &str) -> Result<Option<T>, ConfigError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    let var = env_var(key);
    let Some(value) = env(&var) else {
        return Ok(None);
    };
    value.parse().map(Some).map_err(|e| ConfigError::Env {
        message: format!("invalid value `{value}`: {e}"),
        var,
    })
}

/// For values the file writes as strings (addresses, URLs, durations, names): parsed with the
/// same `FromStr` as flags and variables.
fn text<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    String::deserialize(d)?
        .parse()
        .map(Some)
        .map_err(serde::de::Error::custom)
}

settings! {
    /// Address clients connect to.
    #[arg(value_name = "ADDR:PORT", help_heading = "Network")]
    listen: SocketAddr,
    /// The broker: amqp://host[:port] or amqps://host[:port], or several nodes of a cluster comma-separated (a list in the file), tried in turn (credentials and vhost come from clients).
    #[arg(value_name = "URL,...", help_heading = "Network")]
    #[serde(default, deserialize_with = "upstreams")]
    upstream: Upstreams,
    /// Address of the HTTP endpoint for /metrics, /healthz and /readyz, or `off`.
    #[arg(value_name = "ADDR:PORT|off", help_heading = "Network")]
    #[serde(default, deserialize_with = "text")]
    metrics: MetricsListen,
    /// Bind the client listeners with SO_REUSEPORT, so that a new warren can start on the address of a running one, which then drains (zero-downtime restart).
    #[arg(value_name = "true|false", help_heading = "Network")]
    reuse_port: bool,
    /// Expect a PROXY protocol header (v1 or v2) from a load balancer before each client's AMQP; clients without one are closed.
    #[arg(value_name = "true|false", help_heading = "Network")]
    proxy_protocol: bool,

    /// Heartbeat interval proposed to clients, in seconds (0: none unless the client asks).
    #[arg(value_name = "SECONDS", help_heading = "Clients")]
    client_heartbeat: u16,
    /// Largest frame offered to clients and asked of the broker, in bytes.
    #[arg(value_name = "BYTES", help_heading = "Clients")]
    frame_max: u32,
    /// Channels per client (the channel_max offered to clients).
    #[arg(value_name = "N", help_heading = "Clients")]
    channel_max: u16,
    /// Concurrent clients; more are refused.
    #[arg(value_name = "N", help_heading = "Clients")]
    max_clients: usize,
    /// Concurrent hubs (distinct user, password and vhost); clients of more are refused.
    #[arg(value_name = "N", help_heading = "Clients")]
    max_hubs: usize,
    /// Time from accept to Connection.Open before a client is dropped (waiting for the broker
    /// to check its login does not count).
    #[arg(value_name = "DURATION", help_heading = "Clients")]
    #[serde(default, deserialize_with = "text")]
    handshake_timeout: humantime::Duration,
    /// Bytes that may wait for a client without it having to make progress. Past them a client that takes nothing for slow_client_timeout is disconnected (its messages requeued); past them plus one message of max_message_size it is disconnected at once. A large message to a client that reads is never a reason.
    #[arg(value_name = "BYTES", help_heading = "Clients")]
    client_queue_bytes: usize,
    /// How long a client with more than client_queue_bytes waiting for it may read nothing before it is disconnected as too slow.
    #[arg(value_name = "DURATION", help_heading = "Clients")]
    #[serde(default, deserialize_with = "text")]
    slow_client_timeout: humantime::Duration,
    /// Largest message body a client may publish, in bytes.
    #[arg(value_name = "BYTES", help_heading = "Clients")]
    max_message_size: u64,
    /// Unfinished publish content a client may have buffered, in bytes.
    #[arg(value_name = "BYTES", help_heading = "Clients")]
    client_buffer_bytes: usize,

    /// Broker connections per hub.
    #[arg(value_name = "N", help_heading = "Upstreams")]
    max_upstreams_per_hub: usize,
    /// Channels per broker connection (the broker's channel_max also applies).
    #[arg(value_name = "N", help_heading = "Upstreams")]
    max_channels_per_upstream: u16,
    /// Which broker connection gets a client's first channel: the newest with room, or the
    /// least used (its later channels go to the same one while it has room); with `spread`,
    /// a hub's new broker connections also go to the node it uses least.
    #[arg(value_name = "fill|spread", help_heading = "Upstreams")]
    #[serde(default, deserialize_with = "text")]
    placement: PlacementName,
    /// Heartbeat interval asked of the broker, in seconds.
    #[arg(value_name = "SECONDS", help_heading = "Upstreams")]
    upstream_heartbeat: u16,
    /// Time allowed for dialling the broker and its handshake (shared equally by the nodes of an upstream list).
    #[arg(value_name = "DURATION", help_heading = "Upstreams")]
    #[serde(default, deserialize_with = "text")]
    connect_timeout: humantime::Duration,
    /// First reconnect delay (doubling, with jitter).
    #[arg(value_name = "DURATION", help_heading = "Upstreams")]
    #[serde(default, deserialize_with = "text")]
    backoff_initial: humantime::Duration,
    /// Largest reconnect delay.
    #[arg(value_name = "DURATION", help_heading = "Upstreams")]
    #[serde(default, deserialize_with = "text")]
    backoff_max: humantime::Duration,
    /// A broker connection without channels (and without a connected client's exclusive
    /// queue) is closed after this long.
    #[arg(value_name = "DURATION", help_heading = "Upstreams")]
    #[serde(default, deserialize_with = "text")]
    upstream_idle_timeout: humantime::Duration,
    /// How long a refused login is remembered, so bad logins do not become broker dials (0s: off).
    #[arg(value_name = "DURATION", help_heading = "Upstreams")]
    #[serde(default, deserialize_with = "text")]
    auth_cache_ttl: humantime::Duration,
    /// How long credentials the broker accepted are trusted for new clients without a new broker login, unless events_user is set (then changes arrive as they happen).
    #[arg(value_name = "DURATION", help_heading = "Upstreams")]
    #[serde(default, deserialize_with = "text")]
    credentials_ttl: humantime::Duration,
    /// A broker user that may read the event exchange (rabbitmq_event_exchange): through it warren hears at once of changed passwords, deleted users and revoked permissions.
    #[arg(value_name = "USER", help_heading = "Upstreams")]
    events_user: String,
    /// The password of events_user.
    #[arg(value_name = "PASSWORD", help_heading = "Upstreams")]
    events_password: String,
    /// The vhost of the event exchange (rabbitmq_event_exchange.vhost on the broker).
    #[arg(value_name = "VHOST", help_heading = "Upstreams")]
    events_vhost: String,

    /// Hand channels with a clean history to the next client instead of closing them.
    #[arg(value_name = "true|false", help_heading = "Channel recycling")]
    recycling: bool,
    /// Open channels kept in each hub's pool.
    #[arg(value_name = "N", help_heading = "Channel recycling")]
    pool_size: usize,
    /// Pooled channels idle longer than this are closed.
    #[arg(value_name = "DURATION", help_heading = "Channel recycling")]
    #[serde(default, deserialize_with = "text")]
    pool_idle_timeout: humantime::Duration,
    /// Exchange types of the broker's plugins (e.g. x-delayed-message) that clients may declare without warren asking the broker first, comma-separated (a list in the file). RabbitMQ closes the whole connection on an unknown type, so before a declare of any other type than these and the four built-in ones goes to a shared connection, warren asks the broker on a short connection of its own, and remembers the answer for five minutes.
    #[arg(value_name = "TYPE,...", help_heading = "Upstreams")]
    extra_exchange_types: Names,

    /// Time clients get to finish after SIGTERM/SIGINT before they are closed.
    #[arg(value_name = "DURATION", help_heading = "Shutdown and logs")]
    #[serde(default, deserialize_with = "text")]
    drain_timeout: humantime::Duration,
    /// Threads running connections and hubs (0: half the CPUs, at least one); the clients of
    /// one user, password and vhost are spread over this many hubs.
    #[arg(value_name = "N", help_heading = "Shutdown and logs")]
    worker_threads: usize,
    /// Log filter, e.g. `info` or `warren_runtime=debug` (RUST_LOG overrides it).
    #[arg(value_name = "FILTER", help_heading = "Shutdown and logs")]
    log_level: String,
    /// Log lines for people or one JSON object per line.
    #[arg(value_name = "human|json", help_heading = "Shutdown and logs")]
    #[serde(default, deserialize_with = "text")]
    log_format: LogFormat,

    /// Certificate chain (PEM) of the client listener; enables TLS there.
    #[arg(value_name = "FILE", help_heading = "TLS")]
    tls_cert: String,
    /// Private key (PEM) of the client listener.
    #[arg(value_name = "FILE", help_heading = "TLS")]
    tls_key: String,
    /// CA (PEM) that client certificates must be signed by; clients without one are refused.
    #[arg(value_name = "FILE", help_heading = "TLS")]
    tls_client_ca: String,
    /// Address of a second listener for TLS clients; `listen` then takes plain clients (without it, TLS is on `listen`).
    #[arg(value_name = "ADDR:PORT", help_heading = "TLS")]
    #[serde(default, deserialize_with = "text")]
    tls_listen: SocketAddr,
    /// CA bundle (PEM) to verify an amqps:// broker with (default: the system's trust store).
    #[arg(value_name = "FILE", help_heading = "TLS")]
    upstream_ca: String,
    /// Client certificate chain (PEM) for brokers that require one.
    #[arg(value_name = "FILE", help_heading = "TLS")]
    upstream_cert: String,
    /// Private key (PEM) of upstream_cert.
    #[arg(value_name = "FILE", help_heading = "TLS")]
    upstream_key: String,
    /// Verify the broker's certificate; `false` accepts any certificate (insecure).
    #[arg(value_name = "true|false", help_heading = "TLS")]
    upstream_verify: bool,
    /// Name to verify the broker as and send as SNI (default: the upstream URL's host).
    #[arg(value_name = "NAME", help_heading = "TLS")]
    upstream_server_name: String,

    /// Address of the admin API (JSON over HTTP; `warren ctl` uses it), or `off`. An address other than loopback needs admin_token or admin_token_file, unless admin_allow_no_token.
    #[arg(value_name = "ADDR:PORT|off", help_heading = "Administration")]
    #[serde(default, deserialize_with = "text")]
    admin_listen: MetricsListen,
    /// Bearer token the admin API requires (`Authorization: Bearer TOKEN`); without one, anyone who reaches admin_listen may use it.
    #[arg(value_name = "TOKEN", help_heading = "Administration")]
    admin_token: String,
    /// File holding the admin token (its first line), instead of admin_token.
    #[arg(value_name = "FILE", help_heading = "Administration")]
    admin_token_file: String,
    /// Allow admin_listen on an address other than loopback without a token (anyone who reaches it can close clients).
    #[arg(value_name = "true|false", help_heading = "Administration")]
    admin_allow_no_token: bool,
    /// How long a new client or Channel.Open waits while its hub or vhost is paused before it is refused.
    #[arg(value_name = "DURATION", help_heading = "Administration")]
    #[serde(default, deserialize_with = "text")]
    pause_timeout: humantime::Duration,
}

impl Settings {
    /// Reads one TOML file.
    pub(super) fn read(path: &Path) -> Result<Settings, ConfigError> {
        let error = |message: String| ConfigError::File {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read: {e}")))?;
        toml::from_str(&text).map_err(|e| error(e.to_string()))
    }

    /// The configuration: these settings over the defaults, validated.
    pub(super) fn build(self) -> Result<Config, ConfigError> {
        let d = Config::default();
        let listener_tls = match (self.tls_cert, self.tls_key, self.tls_client_ca) {
            (Some(cert), Some(key), client_ca) => Some(ListenerTls {
                cert: cert.into(),
                key: key.into(),
                client_ca: client_ca.map(Into::into),
            }),
            (None, None, None) => d.listener_tls,
            (Some(_), None, _) => return Err(invalid("tls_key", "must be set when tls_cert is")),
            (None, Some(_), _) => return Err(invalid("tls_cert", "must be set when tls_key is")),
            (None, None, Some(_)) => {
                return Err(invalid(
                    "tls_client_ca",
                    "needs tls_cert and tls_key: client certificates are checked on a TLS listener only",
                ))
            }
        };
        let events = match (self.events_user, self.events_password) {
            (Some(user), Some(password)) => Some(Credentials {
                user,
                password: Secret::new(password),
                vhost: self.events_vhost.unwrap_or_else(|| "/".into()),
            }),
            (None, None) if self.events_vhost.is_none() => d.events,
            (None, None) => return Err(invalid("events_vhost", "is set, but events_user is not")),
            (Some(_), None) => {
                return Err(invalid(
                    "events_password",
                    "must be set when events_user is",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "events_user",
                    "must be set when events_password is",
                ))
            }
        };
        let admin_token = match (self.admin_token, self.admin_token_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "admin_token_file",
                    "set admin_token or admin_token_file, not both",
                ))
            }
            (Some(token), None) => Some(token),
            (None, Some(file)) => Some(read_token_file(&file)?),
            (None, None) => d.admin_token.clone(),
        };
        let config = Config {
            listen: self.listen.unwrap_or(d.listen),
            reuse_port: self.reuse_port.unwrap_or(d.reuse_port),
            proxy_protocol: self.proxy_protocol.unwrap_or(d.proxy_protocol),
            upstream: self.upstream.unwrap_or(d.upstream),
            metrics: self.metrics.map_or(d.metrics, |m| m.0),
            listener_tls,
            tls_listen: self.tls_listen,
            upstream_tls: UpstreamTls {
                ca: self.upstream_ca.map(Into::into).or(d.upstream_tls.ca),
                cert: self.upstream_cert.map(Into::into).or(d.upstream_tls.cert),
                key: self.upstream_key.map(Into::into).or(d.upstream_tls.key),
                verify: self.upstream_verify.unwrap_or(d.upstream_tls.verify),
                server_name: self.upstream_server_name.or(d.upstream_tls.server_name),
            },
            client_heartbeat: self.client_heartbeat.unwrap_or(d.client_heartbeat),
            frame_max: self.frame_max.unwrap_or(d.frame_max),
            channel_max: self.channel_max.unwrap_or(d.channel_max),
            max_clients: self.max_clients.unwrap_or(d.max_clients),
            max_hubs: self.max_hubs.unwrap_or(d.max_hubs),
            max_upstreams_per_hub: self
                .max_upstreams_per_hub
                .unwrap_or(d.max_upstreams_per_hub),
            max_channels_per_upstream: self
                .max_channels_per_upstream
                .unwrap_or(d.max_channels_per_upstream),
            placement: self.placement.map_or(d.placement, |p| p.0),
            upstream_heartbeat: self.upstream_heartbeat.unwrap_or(d.upstream_heartbeat),
            connect_timeout: self.connect_timeout.map_or(d.connect_timeout, Into::into),
            backoff_initial: self.backoff_initial.map_or(d.backoff_initial, Into::into),
            backoff_max: self.backoff_max.map_or(d.backoff_max, Into::into),
            handshake_timeout: self
                .handshake_timeout
                .map_or(d.handshake_timeout, Into::into),
            client_queue_bytes: self.client_queue_bytes.unwrap_or(d.client_queue_bytes),
            slow_client_timeout: self
                .slow_client_timeout
                .map_or(d.slow_client_timeout, Into::into),
            max_message_size: self.max_message_size.unwrap_or(d.max_message_size),
            client_buffer_bytes: self.client_buffer_bytes.unwrap_or(d.client_buffer_bytes),
            recycling: self.recycling.unwrap_or(d.recycling),
            pool_size: self.pool_size.unwrap_or(d.pool_size),
            pool_idle_timeout: self
                .pool_idle_timeout
                .map_or(d.pool_idle_timeout, Into::into),
            upstream_idle_timeout: self
                .upstream_idle_timeout
                .map_or(d.upstream_idle_timeout, Into::into),
            auth_cache_ttl: self.auth_cache_ttl.map_or(d.auth_cache_ttl, Into::into),
            credentials_ttl: self.credentials_ttl.map_or(d.credentials_ttl, Into::into),
            events,
            drain_timeout: self.drain_timeout.map_or(d.drain_timeout, Into::into),
            admin_listen: self.admin_listen.map_or(d.admin_listen, |m| m.0),
            admin_token,
            admin_allow_no_token: self.admin_allow_no_token.unwrap_or(d.admin_allow_no_token),
            pause_timeout: self.pause_timeout.map_or(d.pause_timeout, Into::into),
            worker_threads: self.worker_threads.unwrap_or(d.worker_threads),
            extra_exchange_types: self
                .extra_exchange_types
                .map_or(d.extra_exchange_types, |n| n.0),
            log_level: self.log_level.unwrap_or(d.log_level),
            log_format: self.log_format.unwrap_or(d.log_format),
        };
        config.validate()?;
        Ok(config)
    }

    /// The settings that [`Settings::build`] turns into `c` (used to show the defaults).
    pub(super) fn from_config(c: &Config) -> Settings {
        let path = |p: &PathBuf| p.display().to_string();
        let listener = c.listener_tls.as_ref();
        Settings {
            listen: Some(c.listen),
            reuse_port: Some(c.reuse_port),
            proxy_protocol: Some(c.proxy_protocol),
            upstream: Some(c.upstream.clone()),
            metrics: Some(MetricsListen(c.metrics)),
            client_heartbeat: Some(c.client_heartbeat),
            frame_max: Some(c.frame_max),
            channel_max: Some(c.channel_max),
            max_clients: Some(c.max_clients),
            max_hubs: Some(c.max_hubs),
            handshake_timeout: Some(c.handshake_timeout.into()),
            client_queue_bytes: Some(c.client_queue_bytes),
            slow_client_timeout: Some(c.slow_client_timeout.into()),
            max_message_size: Some(c.max_message_size),
            client_buffer_bytes: Some(c.client_buffer_bytes),
            max_upstreams_per_hub: Some(c.max_upstreams_per_hub),
            max_channels_per_upstream: Some(c.max_channels_per_upstream),
            placement: Some(PlacementName(c.placement)),
            upstream_heartbeat: Some(c.upstream_heartbeat),
            connect_timeout: Some(c.connect_timeout.into()),
            backoff_initial: Some(c.backoff_initial.into()),
            backoff_max: Some(c.backoff_max.into()),
            upstream_idle_timeout: Some(c.upstream_idle_timeout.into()),
            auth_cache_ttl: Some(c.auth_cache_ttl.into()),
            credentials_ttl: Some(c.credentials_ttl.into()),
            events_user: c.events.as_ref().map(|e| e.user.clone()),
            // Shown only for the defaults, which have none.
            events_password: c.events.as_ref().map(|e| e.password.expose().to_owned()),
            events_vhost: Some(c.events.as_ref().map_or("/", |e| &e.vhost).to_owned()),
            recycling: Some(c.recycling),
            pool_size: Some(c.pool_size),
            pool_idle_timeout: Some(c.pool_idle_timeout.into()),
            extra_exchange_types: Some(Names(c.extra_exchange_types.clone())),
            drain_timeout: Some(c.drain_timeout.into()),
            admin_listen: Some(MetricsListen(c.admin_listen)),
            // Never shown.
            admin_token: None,
            admin_token_file: None,
            admin_allow_no_token: Some(c.admin_allow_no_token),
            pause_timeout: Some(c.pause_timeout.into()),
            worker_threads: Some(c.worker_threads),
            log_level: Some(c.log_level.clone()),
            log_format: Some(c.log_format),
            tls_cert: listener.map(|t| path(&t.cert)),
            tls_key: listener.map(|t| path(&t.key)),
            tls_client_ca: listener.and_then(|t| t.client_ca.as_ref()).map(path),
            tls_listen: c.tls_listen,
            upstream_ca: c.upstream_tls.ca.as_ref().map(path),
            upstream_cert: c.upstream_tls.cert.as_ref().map(path),
            upstream_key: c.upstream_tls.key.as_ref().map(path),
            upstream_verify: Some(c.upstream_tls.verify),
            upstream_server_name: c.upstream_tls.server_name.clone(),
        }
    }
}

/// `upstream` in the file: one string (which may hold a comma-separated list) or an array.
fn upstreams<'de, D>(d: D) -> Result<Option<Upstreams>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let text = match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s,
        OneOrMany::Many(v) => v.join(","),
    };
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

/// Reads the admin token from `admin_token_file`: its first line, trimmed.
pub fn read_token_file(file: &str) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| invalid("admin_token_file", format!("cannot read {file}: {e}")))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        return Err(invalid("admin_token_file", format!("{file} is empty")));
    }
    Ok(token)
}

/// `ADDR:PORT` or `off`.
#[derive(Debug, Clone, Copy)]
struct MetricsListen(Option<SocketAddr>);

impl FromStr for MetricsListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "off" {
            return Ok(MetricsListen(None));
        }
        s.parse()
            .map(|a| MetricsListen(Some(a)))
            .map_err(|_| format!("expected ADDR:PORT or `off`, got `{s}`"))
    }
}

impl fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{a}"),
            None => f.write_str("off"),
        }
    }
}

/// `fill` or `spread` (core's [`Placement`] has no text form of its own).
#[derive(Debug, Clone, Copy)]
struct PlacementName(Placement);

impl FromStr for PlacementName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fill" => Ok(PlacementName(Placement::Fill)),
            "spread" => Ok(PlacementName(Placement::Spread)),
            _ => Err(format!("expected `fill` or `spread`, got `{s}`")),
        }
    }
}

impl fmt::Display for PlacementName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Placement::Fill => "fill",
            Placement::Spread => "spread",
        })
    }
}

/// A list of names: comma-separated in flags and variables, a TOML array in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
struct Names(Vec<String>);

impl FromStr for Names {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Names(
            s.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect(),
        ))
    }
}

impl fmt::Display for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

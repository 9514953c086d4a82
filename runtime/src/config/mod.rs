//! warren's configuration: every setting with its default, the checks a valid configuration
//! passes, and the conversions into the settings of the core state machines.
//!
//! [`load`] reads flags, `WARREN_*` variables and a TOML file (in that order of precedence,
//! over the defaults) and validates the result with messages that name the bad key.
//!
//! This file holds the plain data ([`Config`], [`ConfigError`]) and [`Config::validate`], which
//! the simulation and the tests use without any of the loading machinery, and re-exports the
//! public items of the parts beside it:
//! - `upstream`: the broker's address(es), [`UpstreamUrl`] and [`Upstreams`], and their text form;
//! - `settings`: one source of settings (flags, a variable, a file key and the help text of
//!   every setting, declared once), layered and built into a [`Config`];
//! - `cli`: the command line and [`load`], which layers flags over variables over the file;
//! - `reference` (tests only): the generated table of `docs/configuration.md`;
//! - `tests`: the tests of the whole module, with the snapshots of `--help` and of the errors.
//!
//! The TLS and log-format settings are declared where they are used ([`crate::tls`],
//! [`crate::logging`]) and re-exported here, so that those modules do not depend on this one.

mod cli;
#[cfg(test)]
mod reference;
mod settings;
#[cfg(test)]
mod tests;
mod upstream;

pub use crate::logging::LogFormat;
pub use crate::tls::{ListenerTls, UpstreamTls};
pub use cli::{changed_settings, from_file, load, load_from, setting_keys, Command};
pub use settings::read_token_file;
pub use upstream::{UpstreamUrl, Upstreams};

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use warren_core::admission::AdmissionConfig;
use warren_core::credentials::Credentials;
use warren_core::frame::FRAME_MIN_SIZE;
use warren_core::handshake::HandshakeConfig;
use warren_core::hub::slow::SlowRule;
use warren_core::hub::{BackoffConfig, HubConfig, Placement};

/// Every setting of warren.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Client-facing listener.
    pub listen: SocketAddr,
    /// Client listeners are bound with `SO_REUSEPORT`, so that a new warren can start on the
    /// address of a running one and the old one then drains: a restart refuses no client.
    pub reuse_port: bool,
    /// Every client connection starts with a PROXY protocol header (v1 or v2) from a load
    /// balancer; connections without one are closed before any AMQP byte.
    pub proxy_protocol: bool,
    /// The broker's nodes.
    pub upstream: Upstreams,
    /// Metrics and health HTTP listener; `None` disables it.
    pub metrics: Option<SocketAddr>,
    /// TLS for clients, if any: on `listen`, or on `tls_listen` when that is set.
    pub listener_tls: Option<ListenerTls>,
    /// A second client listener, for TLS clients (as RabbitMQ's 5671 beside 5672): `listen`
    /// then takes plain clients.
    pub tls_listen: Option<SocketAddr>,
    /// TLS towards an `amqps://` upstream.
    pub upstream_tls: UpstreamTls,
    /// Heartbeat proposed to clients, seconds.
    pub client_heartbeat: u16,
    /// frame_max offered to clients and asked of the broker.
    pub frame_max: u32,
    /// Channels per client (its channel_max).
    pub channel_max: u16,
    /// Concurrent clients.
    pub max_clients: usize,
    /// Concurrent hubs (distinct credential sets).
    pub max_hubs: usize,
    /// Upstream connections per hub.
    pub max_upstreams_per_hub: usize,
    /// Channels per upstream connection (the broker's limit also applies).
    pub max_channels_per_upstream: u16,
    /// Where new channels go.
    pub placement: Placement,
    /// Heartbeat asked of the broker, seconds.
    pub upstream_heartbeat: u16,
    /// Dial plus broker handshake.
    pub connect_timeout: Duration,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// Accept to `Connection.Open`.
    pub handshake_timeout: Duration,
    /// Bytes that may wait for a client without it having to make progress (B9).
    pub client_queue_bytes: usize,
    /// How long a client with more than `client_queue_bytes` waiting may take nothing.
    pub slow_client_timeout: Duration,
    /// Largest message a client may publish.
    pub max_message_size: u64,
    /// Unfinished publish content a client may have buffered.
    pub client_buffer_bytes: usize,
    /// Channel recycling (B6).
    pub recycling: bool,
    /// Channels kept in each hub's pool.
    pub pool_size: usize,
    /// Pooled channels idle longer than this are closed.
    pub pool_idle_timeout: Duration,
    /// An upstream without channels (or a connected client's exclusive queue) is closed
    /// after this long.
    pub upstream_idle_timeout: Duration,
    /// How long refused logins are remembered (B2); zero disables.
    pub auth_cache_ttl: Duration,
    /// How long credentials the broker accepted are trusted for new clients without a new
    /// broker login, while the event feed is not up (B2).
    pub credentials_ttl: Duration,
    /// The account (and vhost) whose view of the broker's event exchange revokes cached
    /// credentials as they change; `None`: `credentials_ttl` alone bounds them.
    pub events: Option<Credentials>,
    /// Grace time for clients on SIGTERM.
    pub drain_timeout: Duration,
    /// Admin API listener (B16); `None` disables it.
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token the admin API requires (`admin_token`, or read from `admin_token_file`).
    pub admin_token: Option<String>,
    /// Serve the admin API on a non-loopback address without a token.
    pub admin_allow_no_token: bool,
    /// How long a new client or channel open waits while its hub is paused before it is
    /// refused.
    pub pause_timeout: Duration,
    /// Threads that run connections and hubs; 0 picks half the CPUs (at least one), leaving
    /// the rest to the broker and applications that usually share the machine.
    pub worker_threads: usize,
    /// Exchange types beyond direct/fanout/topic/headers that clients may declare without
    /// the hub asking the broker first (see `core::hub::exchange_types`).
    pub extra_exchange_types: Vec<String>,
    /// `tracing` filter, e.g. `info` or `warren=debug`.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
}

impl Default for Config {
    /// The protocol's defaults are core's (one place: `AdmissionConfig`, `HubConfig`,
    /// `HandshakeConfig`, `SlowRule`); the rest are the runtime's own.
    fn default() -> Self {
        let admission = AdmissionConfig::default();
        let (handshake, hub) = (&admission.handshake, &admission.hub);
        let slow = SlowRule::default();
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 5673)),
            reuse_port: false,
            proxy_protocol: false,
            upstream: UpstreamUrl {
                tls: false,
                host: "127.0.0.1".into(),
                port: 5672,
            }
            .into(),
            metrics: Some(SocketAddr::from(([127, 0, 0, 1], 15673))),
            listener_tls: None,
            tls_listen: None,
            upstream_tls: UpstreamTls::default(),
            client_heartbeat: handshake.heartbeat,
            frame_max: handshake.frame_max,
            channel_max: handshake.channel_max,
            max_clients: admission.max_clients,
            max_hubs: admission.max_hubs,
            max_upstreams_per_hub: hub.max_upstreams,
            max_channels_per_upstream: hub.max_channels_per_upstream,
            placement: hub.placement,
            upstream_heartbeat: hub.upstream_heartbeat,
            connect_timeout: hub.connect_timeout,
            backoff_initial: hub.backoff.initial,
            backoff_max: hub.backoff.max,
            handshake_timeout: handshake.timeout,
            client_queue_bytes: slow.queue_bytes,
            slow_client_timeout: slow.timeout,
            max_message_size: hub.max_message_size,
            client_buffer_bytes: hub.client_buffer_limit,
            recycling: hub.recycling,
            pool_size: hub.pool_size,
            pool_idle_timeout: hub.pool_idle_timeout,
            upstream_idle_timeout: hub.upstream_idle_timeout,
            auth_cache_ttl: admission.refusal_ttl,
            credentials_ttl: admission.credentials_ttl,
            events: None,
            drain_timeout: Duration::from_secs(30),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], DEFAULT_ADMIN_PORT))),
            admin_token: None,
            admin_allow_no_token: false,
            pause_timeout: hub.pause_timeout,
            worker_threads: 0,
            extra_exchange_types: hub.extra_exchange_types.clone(),
            log_level: "info".into(),
            log_format: LogFormat::Human,
        }
    }
}

impl Config {
    /// The number of runtime threads to start: the setting, or half the CPUs (at least one).
    #[must_use]
    pub fn runtime_threads(&self) -> usize {
        if self.worker_threads > 0 {
            return self.worker_threads;
        }
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        cpus.div_ceil(2)
    }

    /// The settings of each hub.
    #[must_use]
    pub fn hub_config(&self, upstream_name: String) -> HubConfig {
        HubConfig {
            upstream_frame_max: self.frame_max,
            upstream_heartbeat: self.upstream_heartbeat,
            max_channels_per_upstream: self.max_channels_per_upstream,
            max_upstreams: self.max_upstreams_per_hub,
            placement: self.placement,
            nodes: self.upstream.urls().len(),
            connect_timeout: self.connect_timeout,
            backoff: BackoffConfig {
                initial: self.backoff_initial,
                max: self.backoff_max,
            },
            max_message_size: self.max_message_size,
            client_buffer_limit: self.client_buffer_bytes,
            recycling: self.recycling,
            pool_size: self.pool_size,
            pool_idle_timeout: self.pool_idle_timeout,
            upstream_idle_timeout: self.upstream_idle_timeout,
            close_timeout: Duration::from_secs(3),
            extra_exchange_types: self.extra_exchange_types.clone(),
            upstream_name,
            // Set per hub by admission, from whether the event feed is up.
            proof_ttl: None,
            pause_timeout: self.pause_timeout,
        }
    }

    /// The settings of admission (and, through it, of every hub).
    #[must_use]
    pub fn admission_config(&self, upstream_name: String) -> AdmissionConfig {
        AdmissionConfig {
            handshake: self.handshake_config(),
            hub: self.hub_config(upstream_name),
            max_clients: self.max_clients,
            max_hubs: self.max_hubs,
            proxy_protocol: self.proxy_protocol,
            hubs_per_key: self.runtime_threads(),
            refusal_ttl: self.auth_cache_ttl,
            credentials_ttl: self.credentials_ttl,
            events: self.events.clone(),
        }
    }

    /// The slow-client rule of B9.
    #[must_use]
    pub fn slow_rule(&self) -> SlowRule {
        SlowRule::new(
            self.client_queue_bytes,
            self.max_message_size,
            self.slow_client_timeout,
        )
    }

    /// The settings of each client handshake.
    #[must_use]
    pub fn handshake_config(&self) -> HandshakeConfig {
        HandshakeConfig {
            frame_max: self.frame_max,
            channel_max: self.channel_max,
            heartbeat: self.client_heartbeat,
            timeout: self.handshake_timeout,
        }
    }
}

impl Config {
    /// Checks ranges and combinations that the types cannot express, so that a bad setting is
    /// reported at start-up (naming its key) instead of misbehaving later. TLS files are not
    /// read here; [`crate::tls`] does that.
    pub fn validate(&self) -> Result<(), ConfigError> {
        ensure(self.frame_max >= FRAME_MIN_SIZE, "frame_max", || {
            format!(
                "must be at least {FRAME_MIN_SIZE} (AMQP's smallest frame_max), got {}",
                self.frame_max
            )
        })?;
        for (key, value) in [
            ("channel_max", u64::from(self.channel_max)),
            ("max_clients", self.max_clients as u64),
            ("max_hubs", self.max_hubs as u64),
            ("max_upstreams_per_hub", self.max_upstreams_per_hub as u64),
            (
                "max_channels_per_upstream",
                u64::from(self.max_channels_per_upstream),
            ),
            ("max_message_size", self.max_message_size),
        ] {
            ensure(value >= 1, key, || "must be at least 1, got 0".into())?;
        }
        for (key, value) in [
            ("connect_timeout", self.connect_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("backoff_initial", self.backoff_initial),
        ] {
            ensure(!value.is_zero(), key, || "must be longer than 0s".into())?;
        }
        ensure(
            self.backoff_max >= self.backoff_initial,
            "backoff_max",
            || {
                format!(
                    "must be at least backoff_initial ({}), got {}",
                    humantime::format_duration(self.backoff_initial),
                    humantime::format_duration(self.backoff_max)
                )
            },
        )?;
        ensure(
            self.client_queue_bytes as u64 >= u64::from(self.frame_max),
            "client_queue_bytes",
            || {
                format!(
                    "must be at least frame_max ({}) so that one frame fits, got {}",
                    self.frame_max, self.client_queue_bytes
                )
            },
        )?;
        ensure(
            self.client_buffer_bytes as u64 >= self.max_message_size,
            "client_buffer_bytes",
            || {
                format!(
                    "must be at least max_message_size ({}) so that the largest message fits, got {}",
                    self.max_message_size, self.client_buffer_bytes
                )
            },
        )?;
        ensure(self.metrics != Some(self.listen), "metrics", || {
            format!("must differ from listen ({})", self.listen)
        })?;
        self.validate_admin()?;
        if let Some(tls) = self.tls_listen {
            ensure(self.listener_tls.is_some(), "tls_listen", || {
                "needs tls_cert and tls_key".into()
            })?;
            ensure(
                tls != self.listen && Some(tls) != self.metrics,
                "tls_listen",
                || format!("must differ from listen ({}) and metrics", self.listen),
            )?;
        }
        ensure(
            self.extra_exchange_types.iter().all(|t| !t.is_empty()),
            "extra_exchange_types",
            || "must not contain an empty name".into(),
        )?;
        crate::logging::filter(&self.log_level).map_err(|e| invalid("log_level", e))?;
        self.validate_upstream_tls()
    }

    /// The admin API can close every client: on an address other than loopback it needs a
    /// token, unless `admin_allow_no_token` says otherwise.
    fn validate_admin(&self) -> Result<(), ConfigError> {
        let Some(addr) = self.admin_listen else {
            return Ok(());
        };
        if addr.port() != 0 {
            ensure(
                addr != self.listen && Some(addr) != self.metrics,
                "admin_listen",
                || format!("must differ from listen ({}) and metrics", self.listen),
            )?;
        }
        ensure(
            addr.ip().is_loopback() || self.admin_token.is_some() || self.admin_allow_no_token,
            "admin_listen",
            || {
                format!(
                    "{addr} is not a loopback address: set admin_token (or admin_token_file) so that \
                     only operators can use the admin API, or admin_allow_no_token = true"
                )
            },
        )?;
        ensure(
            self.admin_token
                .as_ref()
                .is_none_or(|t| !t.trim().is_empty()),
            "admin_token",
            || "must not be empty".into(),
        )?;
        ensure(!self.pause_timeout.is_zero(), "pause_timeout", || {
            "must be longer than 0s".into()
        })
    }

    fn validate_upstream_tls(&self) -> Result<(), ConfigError> {
        let t = &self.upstream_tls;
        match (&t.cert, &t.key) {
            (Some(_), None) => {
                return Err(invalid("upstream_key", "must be set when upstream_cert is"))
            }
            (None, Some(_)) => {
                return Err(invalid("upstream_cert", "must be set when upstream_key is"))
            }
            _ => {}
        }
        if !self.upstream.any_tls() {
            let set = [
                ("upstream_ca", t.ca.is_some()),
                ("upstream_cert", t.cert.is_some()),
                ("upstream_server_name", t.server_name.is_some()),
            ];
            return match set.into_iter().find(|(_, set)| *set) {
                Some((key, _)) => Err(invalid(
                    key,
                    format!(
                        "is set, but upstream {} does not use TLS (use amqps://)",
                        self.upstream
                    ),
                )),
                None => Ok(()),
            };
        }
        let key = if t.server_name.is_some() {
            "upstream_server_name"
        } else {
            "upstream"
        };
        for url in self.upstream.urls().iter().filter(|u| u.tls) {
            crate::tls::server_name(t, &url.host).map_err(|e| match e {
                crate::Error::Tls(message) => invalid(key, message),
                e => invalid(key, e.to_string()),
            })?;
        }
        Ok(())
    }
}

fn ensure(
    ok: bool,
    key: &'static str,
    message: impl FnOnce() -> String,
) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(invalid(key, message()))
    }
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Why the configuration could not be loaded. Every message names the key, variable or file
/// at fault, because the user has to find it.
#[derive(Debug)]
pub enum ConfigError {
    /// A bad command line, or `--help`/`--version`: print it and exit with
    /// [`clap::Error::exit`], which picks the stream and exit code.
    Usage(clap::Error),
    /// A `WARREN_*` variable that does not parse.
    Env {
        /// The variable.
        var: String,
        /// What is wrong with its value.
        message: String,
    },
    /// A configuration file that cannot be read, is not TOML, or has an unknown key or a
    /// value of the wrong type.
    File {
        /// The file.
        path: PathBuf,
        /// The reader's or parser's message (with line and column).
        message: String,
    },
    /// A setting out of range or in conflict with another.
    Invalid {
        /// The key, as in the file (flags and variables are spelt from it).
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Usage(e) => write!(f, "{e}"),
            ConfigError::Env { var, message } => write!(f, "{var}: {message}"),
            ConfigError::File { path, message } => write!(f, "{}: {message}", path.display()),
            ConfigError::Invalid { key, message } => write!(f, "{key}: {message}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The admin API's port when `admin_listen` is not set: next to none of RabbitMQ's
/// (15672 management, 15674 Web STOMP, 15675 Web MQTT, 15692 Prometheus) nor warren's own
/// 5673 and 15673.
pub const DEFAULT_ADMIN_PORT: u16 = 15680;

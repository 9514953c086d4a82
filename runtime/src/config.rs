//! warren's configuration: every setting with its default, and the conversions into the
//! settings of the core state machines.
//!
//! [`load`] reads flags, `WARREN_*` variables and a TOML file (in that order of precedence,
//! over the defaults) and validates the result with messages that name the bad key.

use clap::{CommandFactory, FromArgMatches};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use warren_core::admission::AdmissionConfig;
use warren_core::credentials::{Credentials, Secret};
use warren_core::frame::FRAME_MIN_SIZE;
use warren_core::handshake::HandshakeConfig;
use warren_core::hub::slow::SlowRule;
use warren_core::hub::{BackoffConfig, HubConfig, Placement};

/// `amqp://host:port` or `amqps://host:port`: where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// Whether to speak TLS to the broker.
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// Port (5672 for `amqp`, 5671 for `amqps` when omitted).
    pub port: u16,
}

impl UpstreamUrl {
    /// Parses `amqp://host[:port]` or `amqps://host[:port]` (IPv6 in brackets); a trailing `/`
    /// is allowed. Credentials and vhost do not belong here: they come from each client.
    pub fn parse(s: &str) -> Result<UpstreamUrl, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("amqps://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("amqp://") {
            (false, r)
        } else {
            return Err(format!("`{s}` must start with amqp:// or amqps://"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('@') || rest.contains('/') {
            return Err(format!(
                "`{s}` must be scheme://host[:port] only; credentials and vhost come from clients"
            ));
        }
        let default_port = if tls { 5671 } else { 5672 };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("`{s}`: unclosed IPv6 bracket"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("`{s}`: bad port `{p}`"))?,
                None if after.is_empty() => default_port,
                None => return Err(format!("`{s}`: unexpected `{after}` after the address")),
            };
            (h.to_owned(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_owned(),
                    p.parse().map_err(|_| format!("`{s}`: bad port `{p}`"))?,
                ),
                None => (rest.to_owned(), default_port),
            }
        };
        if host.is_empty() {
            return Err(format!("`{s}`: missing host"));
        }
        Ok(UpstreamUrl { tls, host, port })
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "amqps" } else { "amqp" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// The broker's nodes, in order of preference: a dial tries them in turn, starting with the
/// last one that answered, so a cluster keeps serving when a node is down. Comma-separated in
/// flags and variables; a string or an array of strings in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstreams(Vec<UpstreamUrl>);

impl Upstreams {
    /// A list of one or more URLs.
    ///
    /// # Panics
    /// If `urls` is empty: there is always a broker to dial.
    #[must_use]
    pub fn new(urls: Vec<UpstreamUrl>) -> Upstreams {
        assert!(!urls.is_empty(), "an upstream list needs at least one URL");
        Upstreams(urls)
    }

    /// The URLs in order of preference.
    #[must_use]
    pub fn urls(&self) -> &[UpstreamUrl] {
        &self.0
    }

    /// Whether any node is reached over TLS.
    #[must_use]
    pub fn any_tls(&self) -> bool {
        self.0.iter().any(|u| u.tls)
    }
}

impl From<UpstreamUrl> for Upstreams {
    fn from(url: UpstreamUrl) -> Upstreams {
        Upstreams(vec![url])
    }
}

impl FromStr for Upstreams {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let urls = s
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(UpstreamUrl::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if urls.is_empty() {
            return Err("needs at least one amqp:// or amqps:// URL".into());
        }
        Ok(Upstreams(urls))
    }
}

impl fmt::Display for Upstreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, u) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{u}")?;
        }
        Ok(())
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

/// TLS on the client-facing listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (PEM).
    pub client_ca: Option<PathBuf>,
}

/// TLS towards the broker (used when the upstream URL is `amqps://`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// CA bundle (PEM) to verify the broker with; `None`: the system's trust store.
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM), for brokers that require one.
    pub cert: Option<PathBuf>,
    /// Client private key (PEM).
    pub key: Option<PathBuf>,
    /// Verify the broker's certificate (on by default).
    pub verify: bool,
    /// Name to verify and send as SNI; the URL's host when unset.
    pub server_name: Option<String>,
}

impl Default for UpstreamTls {
    fn default() -> Self {
        UpstreamTls {
            ca: None,
            cert: None,
            key: None,
            verify: true,
            server_name: None,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

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
    /// An upstream without channels is closed after this long.
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
    /// Exchange types beyond direct/fanout/topic/headers that clients may declare.
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

impl std::str::FromStr for UpstreamUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UpstreamUrl::parse(s)
    }
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("expected `human` or `json`, got `{s}`")),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        })
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

// ----------------------------------------------------------------------------------------------
// Loading: flags > `WARREN_*` environment > TOML file > defaults.

/// What the command line asks for.
#[derive(Debug, PartialEq)]
pub enum Command {
    /// Run the proxy with this (validated) configuration.
    Run(Box<Config>),
    /// `warren check-config FILE`: validate the file (see [`from_file`]) and exit.
    CheckConfig(PathBuf),
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

/// The variable that names the configuration file when `--config` is not given.
const CONFIG_VAR: &str = "WARREN_CONFIG";

/// Reads the process's arguments and `WARREN_*` environment (and the file they name).
pub fn load() -> Result<Command, ConfigError> {
    load_from(std::env::args_os(), |name| std::env::var(name).ok())
}

/// [`load`] with the arguments (program name first) and the environment passed in, so that
/// tests do not depend on the process's own.
pub fn load_from<I, T>(
    args: I,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Command, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = command()
        .try_get_matches_from(args)
        .map_err(ConfigError::Usage)?;
    let cli = Cli::from_arg_matches(&matches).map_err(ConfigError::Usage)?;
    if let Some(Sub::CheckConfig { file }) = cli.command {
        return Ok(Command::CheckConfig(file));
    }
    let from_env = Settings::from_env(&env)?;
    let from_file = match cli.config.or_else(|| env(CONFIG_VAR).map(PathBuf::from)) {
        Some(path) => Settings::read(&path)?,
        None => Settings::default(),
    };
    let config = cli.settings.or(from_env).or(from_file).build()?;
    Ok(Command::Run(Box::new(config)))
}

/// Every setting's key, in the order of `--help`.
#[must_use]
pub fn setting_keys() -> Vec<&'static str> {
    Settings::default()
        .shown()
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

/// The keys whose values differ between two configurations (a reload's changes), in the
/// order of `--help`. Passwords are compared, never shown.
#[must_use]
pub fn changed_settings(old: &Config, new: &Config) -> Vec<&'static str> {
    let shown_old = Settings::from_config(old).shown();
    let shown_new = Settings::from_config(new).shown();
    let mut changed: Vec<&'static str> = shown_old
        .into_iter()
        .zip(shown_new)
        .filter(|((_, a), (_, b))| a != b)
        .map(|((key, _), _)| key)
        .collect();
    // The one secret that is never shown.
    if old.admin_token != new.admin_token {
        changed.push("admin_token");
    }
    changed
}

/// One TOML file over the defaults, validated: what `warren check-config FILE` checks.
pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
    Settings::read(path)?.build()
}

/// The command line, with each setting's variable and default appended to its help (computed
/// from [`Config::default`], so `--help` cannot drift from the code).
fn command() -> clap::Command {
    let defaults: HashMap<&str, Option<String>> = Settings::from_config(&Config::default())
        .shown()
        .into_iter()
        .collect();
    Cli::command().mut_args(|arg| {
        let Some(default) = defaults.get(arg.get_id().as_str()) else {
            return arg;
        };
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        let env = env_var(arg.get_id().as_str());
        let default = match default.as_deref() {
            Some("") | None => String::new(),
            Some(d) => format!(" [default: {d}]"),
        };
        arg.help(format!("{help} [env: {env}]{default}"))
    })
}

/// `frame_max` → `WARREN_FRAME_MAX`.
fn env_var(key: &str) -> String {
    format!("WARREN_{}", key.to_ascii_uppercase())
}

#[derive(Debug, clap::Parser)]
#[command(
    name = "warren",
    version,
    about = "AMQP 0-9-1 proxy: many short-lived client connections share a few broker connections.",
    long_about = None,
    args_conflicts_with_subcommands = true,
    after_help = "Precedence: flags > WARREN_* variables > the --config file > defaults. \
                  Durations take units (500ms, 30s, 5m); sizes are in bytes."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// TOML file with settings (keys as the flags, with `_`) [env: WARREN_CONFIG]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Validates a configuration file: prints `ok`, or the problem naming the key and exits 1.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
}

/// Declares [`Settings`] and the per-key plumbing from one list, so that a key cannot be
/// missing from one of the three sources.
macro_rules! settings {
    ($( $(#[$meta:meta])* $key:ident: $ty:ty, )*) => {
        /// One source of settings (flags, environment or file). Every key is optional so that
        /// the sources can be layered key by key; [`Settings::build`] fills in the defaults.
        #[derive(Debug, Default, clap::Args, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Settings {
            $( $(#[$meta])* #[arg(long)] $key: Option<$ty>, )*
        }

        impl Settings {
            /// Key by key: `self` where set, else `lower`.
            fn or(self, lower: Settings) -> Settings {
                Settings { $( $key: self.$key.or(lower.$key), )* }
            }

            /// Reads `WARREN_<KEY>` for every key.
            fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
                Ok(Settings { $( $key: parse_env(env, stringify!($key))?, )* })
            }

            /// Every key with its value as flags and variables spell it (`None` when unset).
            fn shown(&self) -> Vec<(&'static str, Option<String>)> {
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
    /// Time from accept to Connection.Open before a client is dropped.
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
    /// Which broker connection gets a new channel: the newest with room, or the least used;
    /// with `spread`, a hub's new broker connections also go to the node it uses least.
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
    /// A broker connection without channels is closed after this long.
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
    /// Exchange types beyond direct, fanout, topic and headers that clients may declare (comma-separated; a list in the file).
    #[arg(value_name = "TYPE,...", help_heading = "Channel recycling")]
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
    fn read(path: &Path) -> Result<Settings, ConfigError> {
        let error = |message: String| ConfigError::File {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read: {e}")))?;
        toml::from_str(&text).map_err(|e| error(e.to_string()))
    }

    /// The configuration: these settings over the defaults, validated.
    fn build(self) -> Result<Config, ConfigError> {
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
    fn from_config(c: &Config) -> Settings {
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

/// The admin API's port when `admin_listen` is not set: next to none of RabbitMQ's
/// (15672 management, 15674 Web STOMP, 15675 Web MQTT, 15692 Prometheus) nor warren's own
/// 5673 and 15673.
pub const DEFAULT_ADMIN_PORT: u16 = 15680;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstream_urls() {
        let u = UpstreamUrl::parse("amqp://127.0.0.1:5672").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (false, "127.0.0.1", 5672));
        let u = UpstreamUrl::parse("amqps://broker.example/").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port),
            (true, "broker.example", 5671)
        );
        let u = UpstreamUrl::parse("amqp://[::1]:5999").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 5999));
        assert_eq!(u.to_string(), "amqp://[::1]:5999");
        assert!(UpstreamUrl::parse("http://x").is_err());
        assert!(UpstreamUrl::parse("amqp://guest:guest@x/").is_err());
        assert!(UpstreamUrl::parse("amqp://x:notaport").is_err());
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn run(cmd: Result<Command, ConfigError>) -> Config {
        match cmd {
            Ok(Command::Run(config)) => *config,
            other => panic!("expected a configuration, got {other:?}"),
        }
    }

    /// A file in this test process's own temporary folder.
    fn temp_file(name: &str, contents: &str) -> PathBuf {
        let dir = temp_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!("warren-config-tests-{}", std::process::id()))
    }

    /// A configuration in which every setting differs from its default.
    fn sample() -> Config {
        Config {
            listen: "0.0.0.0:6000".parse().unwrap(),
            reuse_port: true,
            proxy_protocol: true,
            upstream: "amqps://broker.internal:5999,amqp://[fd00::2]:5672"
                .parse()
                .unwrap(),
            metrics: None,
            listener_tls: Some(ListenerTls {
                cert: "/tls/cert.pem".into(),
                key: "/tls/key.pem".into(),
                client_ca: Some("/tls/clients.pem".into()),
            }),
            tls_listen: Some("127.0.0.1:5674".parse().unwrap()),
            upstream_tls: UpstreamTls {
                ca: Some("/tls/broker-ca.pem".into()),
                cert: Some("/tls/warren.pem".into()),
                key: Some("/tls/warren.key".into()),
                verify: false,
                server_name: Some("rabbit.internal".into()),
            },
            client_heartbeat: 15,
            frame_max: 65_536,
            channel_max: 100,
            max_clients: 10,
            max_hubs: 3,
            max_upstreams_per_hub: 2,
            max_channels_per_upstream: 500,
            placement: Placement::Spread,
            upstream_heartbeat: 20,
            connect_timeout: Duration::from_secs(2),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(3),
            client_queue_bytes: 1 << 20,
            slow_client_timeout: Duration::from_secs(4),
            max_message_size: 1 << 20,
            client_buffer_bytes: 2 << 20,
            recycling: false,
            pool_size: 8,
            pool_idle_timeout: Duration::from_secs(90),
            upstream_idle_timeout: Duration::from_secs(120),
            auth_cache_ttl: Duration::ZERO,
            credentials_ttl: Duration::from_secs(7),
            events: Some(Credentials {
                user: "monitor".into(),
                password: Secret::new("m0n"),
                vhost: "ops".into(),
            }),
            drain_timeout: Duration::from_secs(45),
            admin_listen: Some("127.0.0.1:16000".parse().unwrap()),
            admin_token: Some("t0ken".into()),
            admin_allow_no_token: true,
            pause_timeout: Duration::from_secs(12),
            worker_threads: 3,
            extra_exchange_types: vec!["x-delayed-message".into(), "x-consistent-hash".into()],
            log_level: "warren_runtime=debug".into(),
            log_format: LogFormat::Json,
        }
    }

    /// Secrets: `Settings::from_config` leaves them out, so the samples set them by hand.
    const NEVER_SHOWN: [&str; 2] = ["admin_token", "admin_token_file"];

    const SAMPLE_TOML: &str = r#"
listen = "0.0.0.0:6000"
upstream = ["amqps://broker.internal:5999", "amqp://[fd00::2]:5672"]
metrics = "off"
client_heartbeat = 15
frame_max = 65536
channel_max = 100
max_clients = 10
max_hubs = 3
handshake_timeout = "3s"
client_queue_bytes = 1048576
slow_client_timeout = "4s"
max_message_size = 1048576
client_buffer_bytes = 2097152
max_upstreams_per_hub = 2
max_channels_per_upstream = 500
placement = "spread"
upstream_heartbeat = 20
connect_timeout = "2s"
backoff_initial = "100ms"
backoff_max = "10s"
upstream_idle_timeout = "2m"
auth_cache_ttl = "0s"
credentials_ttl = "7s"
events_user = "monitor"
events_password = "m0n"
events_vhost = "ops"
recycling = false
reuse_port = true
proxy_protocol = true
pool_size = 8
pool_idle_timeout = "1m 30s"
extra_exchange_types = ["x-delayed-message", "x-consistent-hash"]
drain_timeout = "45s"
admin_listen = "127.0.0.1:16000"
admin_token = "t0ken"
admin_allow_no_token = true
pause_timeout = "12s"
worker_threads = 3
log_level = "warren_runtime=debug"
log_format = "json"
tls_cert = "/tls/cert.pem"
tls_key = "/tls/key.pem"
tls_client_ca = "/tls/clients.pem"
tls_listen = "127.0.0.1:5674"
upstream_ca = "/tls/broker-ca.pem"
upstream_cert = "/tls/warren.pem"
upstream_key = "/tls/warren.key"
upstream_verify = false
upstream_server_name = "rabbit.internal"
"#;

    #[test]
    fn defaults_apply_without_any_source() {
        assert_eq!(run(load_from(["warren"], no_env)), Config::default());
        Config::default().validate().unwrap();
    }

    #[test]
    fn the_sample_changes_every_setting() {
        let defaults = Settings::from_config(&Config::default()).shown();
        let sample = Settings::from_config(&sample()).shown();
        for ((key, default), (_, value)) in defaults.iter().zip(&sample) {
            if NEVER_SHOWN.contains(key) {
                continue;
            }
            assert!(value.is_some() && value != default, "{key} = {value:?}");
        }
    }

    #[test]
    fn every_setting_has_a_flag_and_a_variable() {
        let shown = Settings::from_config(&sample()).shown();
        let mut args = vec!["warren".to_owned(), "--admin-token".into(), "t0ken".into()];
        let mut env = HashMap::from([(env_var("admin_token"), "t0ken".to_owned())]);
        for (key, value) in shown {
            if NEVER_SHOWN.contains(&key) {
                continue;
            }
            let value = value.unwrap();
            args.push(format!("--{}", key.replace('_', "-")));
            args.push(value.clone());
            env.insert(env_var(key), value);
        }
        assert_eq!(run(load_from(&args, no_env)), sample());
        let from_env = run(load_from(["warren"], |k| env.get(k).cloned()));
        assert_eq!(from_env, sample());
    }

    #[test]
    fn every_setting_has_a_file_key() {
        let path = temp_file("sample.toml", SAMPLE_TOML);
        assert_eq!(from_file(&path).unwrap(), sample());
        let args = ["warren", "--config", path.to_str().unwrap()];
        assert_eq!(run(load_from(args, no_env)), sample());
        let path = path.to_str().unwrap().to_owned();
        let from_env = run(load_from(["warren"], |k| {
            (k == CONFIG_VAR).then(|| path.clone())
        }));
        assert_eq!(from_env, sample());
    }

    #[test]
    fn flags_beat_variables_beat_the_file_beats_defaults() {
        let file = temp_file(
            "layers.toml",
            "frame_max = 8192\nmax_clients = 5\nclient_heartbeat = 10\n",
        );
        let env: HashMap<String, String> = [
            ("WARREN_FRAME_MAX", "16384"),
            ("WARREN_MAX_CLIENTS", "7"),
            ("WARREN_CONFIG", file.to_str().unwrap()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let config = run(load_from(["warren", "--frame-max", "32768"], |k| {
            env.get(k).cloned()
        }));
        let expected = Config {
            frame_max: 32_768,
            max_clients: 7,
            client_heartbeat: 10,
            ..Config::default()
        };
        assert_eq!(config, expected);
    }

    #[test]
    fn metrics_can_be_turned_off_and_lists_split_on_commas() {
        let args = [
            "warren",
            "--metrics",
            "off",
            "--extra-exchange-types",
            "a, b,",
        ];
        let config = run(load_from(args, no_env));
        assert_eq!(config.metrics, None);
        assert_eq!(config.extra_exchange_types, ["a", "b"]);

        let args = ["warren", "--upstream", "amqp://r1, amqp://r2:5673,"];
        let config = run(load_from(args, no_env));
        let nodes: Vec<String> = config
            .upstream
            .urls()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(nodes, ["amqp://r1:5672", "amqp://r2:5673"]);
        // In the file, one string may hold the list too.
        let file = temp_file(
            "one_string.toml",
            "upstream = \"amqp://r1,amqp://r2:5673\"\n",
        );
        assert_eq!(from_file(&file).unwrap().upstream, config.upstream);
    }

    #[test]
    fn check_config_names_its_file() {
        let cmd = load_from(
            ["warren", "check-config", "/etc/warren/warren.toml"],
            no_env,
        );
        assert_eq!(
            cmd.unwrap(),
            Command::CheckConfig("/etc/warren/warren.toml".into())
        );
    }

    /// The error for one combination of flags, variables and file, with the temporary folder
    /// masked.
    fn error_text(case: &str, args: &[&str], env: &[(&str, &str)], file: Option<&str>) -> String {
        let mut argv = vec!["warren".to_owned()];
        if let Some(contents) = file {
            let path = temp_file(&format!("{case}.toml"), contents);
            argv.extend(["--config".to_owned(), path.display().to_string()]);
        }
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        match load_from(&argv, |k| env.get(k).cloned()) {
            Ok(cmd) => panic!("{case}: expected an error, got {cmd:?}"),
            Err(e) => e
                .to_string()
                .replace(&temp_dir().display().to_string(), "<tmp>"),
        }
    }

    #[test]
    fn error_messages_name_the_culprit() {
        let file = |case: &str, toml: &str| error_text(case, &[], &[], Some(toml));
        let cases = [
            ("flag_not_a_number", error_text("f1", &["--frame-max", "lots"], &[], None)),
            ("flag_bad_choice", error_text("f2", &["--placement", "sideways"], &[], None)),
            ("flag_unknown", error_text("f3", &["--no-such-flag"], &[], None)),
            ("env_not_a_number", error_text("e1", &[], &[("WARREN_FRAME_MAX", "lots")], None)),
            ("env_bad_duration", error_text("e2", &[], &[("WARREN_CONNECT_TIMEOUT", "5 parsecs")], None)),
            ("env_bad_metrics", error_text("e3", &[], &[("WARREN_METRICS", "localhost")], None)),
            ("env_url_with_credentials", error_text("e4", &[], &[("WARREN_UPSTREAM", "amqp://guest:guest@rabbit/")], None)),
            ("env_bad_bool", error_text("e5", &[], &[("WARREN_RECYCLING", "maybe")], None)),
            ("file_missing", error_text("x", &["--config", "/nonexistent/warren.toml"], &[], None)),
            ("file_not_toml", file("not_toml", "frame_max = \n")),
            ("file_unknown_key", file("unknown_key", "frmae_max = 8192\n")),
            ("file_wrong_type", file("wrong_type", "frame_max = \"8192\"\n")),
            ("file_bad_duration", file("bad_duration", "backoff_max = \"30 parsecs\"\n")),
            ("file_duration_without_unit", file("unitless", "drain_timeout = 30\n")),
            ("frame_max_too_small", file("v1", "frame_max = 1024\n")),
            ("channel_max_zero", file("v2", "channel_max = 0\n")),
            ("max_clients_zero", file("v3", "max_clients = 0\n")),
            ("max_hubs_zero", file("v3b", "max_hubs = 0\n")),
            ("connect_timeout_zero", file("v4", "connect_timeout = \"0s\"\n")),
            ("backoff_max_below_initial", file("v5", "backoff_initial = \"2s\"\nbackoff_max = \"1s\"\n")),
            ("queue_below_frame", file("v6", "client_queue_bytes = 4096\n")),
            ("buffer_below_message", file("v7", "client_buffer_bytes = 1000\nmax_message_size = 2000\n")),
            ("metrics_on_listen", file("v8", "listen = \"127.0.0.1:5673\"\nmetrics = \"127.0.0.1:5673\"\n")),
            ("empty_exchange_type", file("v9", "extra_exchange_types = [\"\"]\n")),
            ("bad_log_level", file("v10", "log_level = \"warren=loud\"\n")),
            ("tls_cert_without_key", file("t1", "tls_cert = \"c.pem\"\n")),
            ("tls_key_without_cert", file("t2", "tls_key = \"k.pem\"\n")),
            ("tls_client_ca_alone", file("t3", "tls_client_ca = \"ca.pem\"\n")),
            ("upstream_cert_without_key", file("t4", "upstream = \"amqps://r\"\nupstream_ca = \"ca.pem\"\nupstream_cert = \"c.pem\"\n")),
            ("upstream_key_without_cert", file("t5", "upstream = \"amqps://r\"\nupstream_ca = \"ca.pem\"\nupstream_key = \"k.pem\"\n")),
            ("upstream_ca_without_amqps", file("t6", "upstream_ca = \"ca.pem\"\n")),
            ("amqps_bad_server_name", file("t8", "upstream = \"amqps://rabbit\"\nupstream_ca = \"ca.pem\"\nupstream_server_name = \"not a name\"\n")),
            ("upstream_list_empty", file("u1", "upstream = []\n")),
            ("upstream_list_bad_node", file("u2", "upstream = [\"amqp://r1\", \"http://r2\"]\n")),
        ];
        let report: String = cases
            .iter()
            .map(|(case, text)| format!("## {case}\n{}\n", text.trim_end()))
            .collect::<Vec<_>>()
            .join("\n");
        insta::assert_snapshot!(report);
    }

    #[test]
    fn validate_reports_the_key_of_a_programmatic_config() {
        let config = Config {
            max_hubs: 0,
            ..Config::default()
        };
        let err = config.validate().unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    key: "max_hubs",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn help_lists_every_setting_with_its_variable_and_default() {
        let help = command().render_long_help().to_string();
        for (key, default) in Settings::from_config(&Config::default()).shown() {
            assert!(
                help.contains(&format!("--{} <", key.replace('_', "-"))),
                "{key}"
            );
            assert!(help.contains(&format!("[env: {}]", env_var(key))), "{key}");
            if let Some(d) = default.filter(|d| !d.is_empty()) {
                assert!(
                    help.contains(&format!("[env: {}] [default: {d}]", env_var(key))),
                    "{key}"
                );
            }
        }
        insta::assert_snapshot!(help);
    }

    /// `# key = value` lines of the example file, uncommented.
    fn example_settings() -> String {
        include_str!("../../warren.example.toml")
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                l.split_once(" = ")
                    .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_example_file_documents_every_key_with_its_default() {
        let as_is = temp_file("example.toml", include_str!("../../warren.example.toml"));
        assert_eq!(from_file(&as_is).unwrap(), Config::default());
        let example: Settings = toml::from_str(&example_settings()).unwrap();
        let defaults = Settings::from_config(&Config::default()).shown();
        for ((key, default), (_, shown)) in defaults.iter().zip(example.shown()) {
            assert!(shown.is_some(), "{key} is missing from warren.example.toml");
            if default.is_some() {
                assert_eq!(
                    &shown, default,
                    "{key} in warren.example.toml is not the default"
                );
            }
        }
    }

    /// The reference table of docs/configuration.md, from the same definitions as `--help`.
    fn reference_table() -> String {
        let defaults: HashMap<_, _> = Settings::from_config(&Config::default())
            .shown()
            .into_iter()
            .collect();
        let mut table = String::from(
            "| key | flag | environment | default | meaning |\n|---|---|---|---|---|\n",
        );
        for arg in Cli::command().get_arguments() {
            let key = arg.get_id().as_str();
            let Some(default) = defaults.get(key) else {
                continue;
            };
            let value = arg.get_value_names().unwrap_or_default()[0].to_string();
            let default = match default.as_deref() {
                Some("") | None => "(none)".to_owned(),
                Some(d) => format!("`{d}`"),
            };
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            table.push_str(&format!(
                "| `{key}` | `--{} <{}>` | `{}` | {default} | {} |\n",
                arg.get_long().unwrap(),
                value.replace('|', "\\|"),
                env_var(key),
                help.replace('|', "\\|"),
            ));
        }
        table
    }

    #[test]
    fn the_configuration_reference_is_current() {
        const BEGIN: &str = "<!-- BEGIN generated by `cargo test -p warren-runtime config` -->\n";
        const END: &str = "<!-- END generated -->";
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let doc = std::fs::read_to_string(&path).unwrap();
        let (head, rest) = doc.split_once(BEGIN).expect("BEGIN marker");
        let (current, tail) = rest.split_once(END).expect("END marker");
        let table = reference_table();
        if current != table && std::env::var_os("WARREN_UPDATE_DOCS").is_some() {
            std::fs::write(&path, format!("{head}{BEGIN}{table}{END}{tail}")).unwrap();
            return;
        }
        assert_eq!(
            current, table,
            "docs/configuration.md is out of date: rerun with WARREN_UPDATE_DOCS=1"
        );
    }
}

//! warren's configuration: every setting with its default, and the conversions into the
//! settings of the core state machines.
//!
//! Loading (flags > `WARREN_*` environment > TOML file > defaults) and validation live in
//! [`crate::config::load`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use warren_core::handshake::HandshakeConfig;
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

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "amqps" } else { "amqp" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
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
    /// CA bundle (PEM) to verify the broker with; the system roots are not used.
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
    /// The broker.
    pub upstream: UpstreamUrl,
    /// Metrics and health HTTP listener; `None` disables it.
    pub metrics: Option<SocketAddr>,
    /// TLS on the listener, if any.
    pub listener_tls: Option<ListenerTls>,
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
    /// Bytes queued for a client before it is disconnected as slow (B9).
    pub client_queue_bytes: usize,
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
    /// Grace time for clients on SIGTERM.
    pub drain_timeout: Duration,
    /// Exchange types beyond direct/fanout/topic/headers that clients may declare.
    pub extra_exchange_types: Vec<String>,
    /// `tracing` filter, e.g. `info` or `warren=debug`.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 5673)),
            upstream: UpstreamUrl {
                tls: false,
                host: "127.0.0.1".into(),
                port: 5672,
            },
            metrics: Some(SocketAddr::from(([127, 0, 0, 1], 15673))),
            listener_tls: None,
            upstream_tls: UpstreamTls::default(),
            client_heartbeat: 60,
            frame_max: 131_072,
            channel_max: 2047,
            max_clients: 50_000,
            max_hubs: 1000,
            max_upstreams_per_hub: 16,
            max_channels_per_upstream: 65_535,
            placement: Placement::Fill,
            upstream_heartbeat: 60,
            connect_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            client_queue_bytes: 16 * 1024 * 1024,
            max_message_size: 128 * 1024 * 1024,
            client_buffer_bytes: 256 * 1024 * 1024,
            recycling: true,
            pool_size: 64,
            pool_idle_timeout: Duration::from_secs(30),
            upstream_idle_timeout: Duration::from_secs(60),
            auth_cache_ttl: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            extra_exchange_types: Vec::new(),
            log_level: "info".into(),
            log_format: LogFormat::Human,
        }
    }
}

impl Config {
    /// The settings of each hub.
    #[must_use]
    pub fn hub_config(&self, upstream_name: String) -> HubConfig {
        HubConfig {
            upstream_frame_max: self.frame_max,
            upstream_heartbeat: self.upstream_heartbeat,
            max_channels_per_upstream: self.max_channels_per_upstream,
            max_upstreams: self.max_upstreams_per_hub,
            placement: self.placement,
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
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstream_urls() {
        let u = UpstreamUrl::parse("amqp://127.0.0.1:5672").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (false, "127.0.0.1", 5672));
        let u = UpstreamUrl::parse("amqps://broker.example/").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (true, "broker.example", 5671));
        let u = UpstreamUrl::parse("amqp://[::1]:5999").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 5999));
        assert_eq!(u.to_string(), "amqp://[::1]:5999");
        assert!(UpstreamUrl::parse("http://x").is_err());
        assert!(UpstreamUrl::parse("amqp://guest:guest@x/").is_err());
        assert!(UpstreamUrl::parse("amqp://x:notaport").is_err());
    }
}

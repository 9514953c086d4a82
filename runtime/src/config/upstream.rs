//! Where the broker is: [`UpstreamUrl`] (one node) and [`Upstreams`] (the nodes of a cluster,
//! in order of preference), with the text form that flags, variables and the file share.
//!
//! Apart from [`Config`](super::Config) because the hubs, the TLS set-up and the tests take
//! these types on their own.

use std::fmt;
use std::str::FromStr;

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

impl std::str::FromStr for UpstreamUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UpstreamUrl::parse(s)
    }
}

//! Real AMQP clients: lapin for the common path, amqprs for explicit channel ids and a second
//! implementation of the handshake.

use anyhow::{anyhow, Context, Result};
use std::net::SocketAddr;
use std::time::Duration;

/// Upper bound on a client's connection handshake (a hang becomes an error).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Percent-encodes a URL component (user, password or vhost): everything but unreserved
/// characters.
#[must_use]
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `amqp://user:pass@addr/vhost` with every component percent-encoded (so vhost `/` is `%2F`).
#[must_use]
pub fn amqp_url(addr: SocketAddr, user: &str, pass: &str, vhost: &str) -> String {
    format!(
        "amqp://{}:{}@{}/{}",
        percent_encode(user),
        percent_encode(pass),
        addr,
        percent_encode(vhost)
    )
}

/// Connects with lapin, bounded by [`CONNECT_TIMEOUT`].
pub async fn lapin_connect(url: &str) -> Result<lapin::Connection> {
    lapin_try_connect(url)
        .await?
        .with_context(|| format!("lapin could not connect to {}", redact(url)))
}

/// Connects with lapin and returns lapin's own result, so a test can inspect a refusal;
/// the outer error only reports a hang past [`CONNECT_TIMEOUT`].
pub async fn lapin_try_connect(url: &str) -> Result<lapin::Result<lapin::Connection>> {
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        lapin::Connection::connect(url, lapin::ConnectionProperties::default()),
    )
    .await
    .map_err(|_| {
        anyhow!(
            "lapin's connect to {} did not finish within {CONNECT_TIMEOUT:?}",
            redact(url)
        )
    })
}

/// The AMQP reply code carried by a lapin error (a channel or connection close), if any.
#[must_use]
pub fn lapin_reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

/// Connects with amqprs, bounded by [`CONNECT_TIMEOUT`].
pub async fn amqprs_connect(
    addr: SocketAddr,
    user: &str,
    pass: &str,
    vhost: &str,
) -> Result<amqprs::connection::Connection> {
    amqprs_try_connect(addr, user, pass, vhost)
        .await?
        .map_err(|e| anyhow!("amqprs could not connect to {addr} as {user} on {vhost}: {e}"))
}

/// Connects with amqprs and returns amqprs' own result; the outer error only reports a hang
/// past [`CONNECT_TIMEOUT`].
pub async fn amqprs_try_connect(
    addr: SocketAddr,
    user: &str,
    pass: &str,
    vhost: &str,
) -> Result<std::result::Result<amqprs::connection::Connection, amqprs::error::Error>> {
    let args = amqprs::connection::OpenConnectionArguments::new(
        &addr.ip().to_string(),
        addr.port(),
        user,
        pass,
    )
    .virtual_host(vhost)
    .finish();
    tokio::time::timeout(CONNECT_TIMEOUT, amqprs::connection::Connection::open(&args))
        .await
        .map_err(|_| anyhow!("amqprs' connect to {addr} did not finish within {CONNECT_TIMEOUT:?}"))
}

/// A deterministic, non-repeating-looking payload of `len` bytes (xorshift), so a corrupted,
/// shifted or truncated copy is detected.
#[must_use]
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Asserts that two payloads are byte-identical, reporting the length and the first differing
/// offset instead of dumping megabytes.
pub fn assert_same_bytes(got: &[u8], want: &[u8]) {
    if got == want {
        return;
    }
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "payload differs: got {} bytes, want {} bytes, first difference at offset {first}",
        got.len(),
        want.len()
    );
}

/// `url` with its password replaced by `***`, for messages.
#[must_use]
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_encoded_and_redacted() {
        let addr: SocketAddr = "127.0.0.1:5673".parse().unwrap();
        let url = amqp_url(addr, "u ser", "p@ss/w", "/");
        assert_eq!(url, "amqp://u%20ser:p%40ss%2Fw@127.0.0.1:5673/%2F");
        assert_eq!(redact(&url), "amqp://u%20ser:***@127.0.0.1:5673/%2F");
    }

    #[test]
    fn pattern_is_deterministic_and_varied() {
        let a = pattern(1000, 7);
        assert_eq!(a, pattern(1000, 7));
        assert_ne!(a, pattern(1000, 8));
        assert_eq!(a.len(), 1000);
        // Not a short period: the two halves differ.
        assert_ne!(a[..500], a[500..]);
    }
}

/// A `Connection.Close` or `Channel.Close` as a client received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedClose {
    /// The reply code (e.g. 320, 404).
    pub code: u16,
    /// The reply text.
    pub text: String,
}

/// Registers amqprs callbacks on `conn` that report every `Connection.Close` the server sends.
pub async fn amqprs_watch_connection_close(
    conn: &amqprs::connection::Connection,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<ReceivedClose>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    conn.register_callback(CloseReporter(tx))
        .await
        .map_err(|e| anyhow!("registering a connection callback: {e}"))?;
    Ok(rx)
}

/// Registers amqprs callbacks on `ch` that report every `Channel.Close` the server sends.
pub async fn amqprs_watch_channel_close(
    ch: &amqprs::channel::Channel,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<ReceivedClose>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    ch.register_callback(CloseReporter(tx))
        .await
        .map_err(|e| anyhow!("registering a channel callback: {e}"))?;
    Ok(rx)
}

/// amqprs callbacks that forward server-initiated closes and otherwise behave like amqprs'
/// defaults.
struct CloseReporter(tokio::sync::mpsc::UnboundedSender<ReceivedClose>);

#[async_trait::async_trait]
impl amqprs::callbacks::ConnectionCallback for CloseReporter {
    async fn close(
        &mut self,
        _connection: &amqprs::connection::Connection,
        close: amqprs::Close,
    ) -> std::result::Result<(), amqprs::error::Error> {
        let _ = self.0.send(ReceivedClose {
            code: close.reply_code(),
            text: close.reply_text().clone(),
        });
        Ok(())
    }

    async fn blocked(&mut self, _connection: &amqprs::connection::Connection, _reason: String) {}

    async fn unblocked(&mut self, _connection: &amqprs::connection::Connection) {}

    async fn secret_updated(&mut self, _connection: &amqprs::connection::Connection) {}
}

#[async_trait::async_trait]
impl amqprs::callbacks::ChannelCallback for CloseReporter {
    async fn close(
        &mut self,
        _channel: &amqprs::channel::Channel,
        close: amqprs::CloseChannel,
    ) -> std::result::Result<(), amqprs::error::Error> {
        let _ = self.0.send(ReceivedClose {
            code: close.reply_code(),
            text: close.reply_text().clone(),
        });
        Ok(())
    }

    async fn cancel(
        &mut self,
        _channel: &amqprs::channel::Channel,
        _cancel: amqprs::Cancel,
    ) -> std::result::Result<(), amqprs::error::Error> {
        Ok(())
    }

    async fn flow(
        &mut self,
        _channel: &amqprs::channel::Channel,
        active: bool,
    ) -> std::result::Result<bool, amqprs::error::Error> {
        Ok(active)
    }

    async fn publish_ack(&mut self, _channel: &amqprs::channel::Channel, _ack: amqprs::Ack) {}

    async fn publish_nack(&mut self, _channel: &amqprs::channel::Channel, _nack: amqprs::Nack) {}

    async fn publish_return(
        &mut self,
        _channel: &amqprs::channel::Channel,
        _ret: amqprs::Return,
        _basic_properties: amqprs::BasicProperties,
        _content: Vec<u8>,
    ) {
    }
}

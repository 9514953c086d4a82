//! A minimal HTTP/1.1 GET, enough to read warren's `/metrics`, `/healthz` and `/readyz`.

use anyhow::{anyhow, Context, Result};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code, e.g. 200.
    pub status: u16,
    /// Body as text.
    pub body: String,
}

/// `GET path` on `addr` with `Connection: close`, bounded by [`crate::wait::DEFAULT_LIMIT`].
pub async fn get(addr: SocketAddr, path: &str) -> Result<HttpResponse> {
    crate::within(crate::wait::DEFAULT_LIMIT, &format!("GET {path}"), async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        parse(&raw)
    })
    .await?
}

fn parse(raw: &[u8]) -> Result<HttpResponse> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of headers in {text:?}"))?;
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    Ok(HttpResponse {
        status,
        body: body.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_a_response() {
        let r = super::parse(b"HTTP/1.1 503 Service Unavailable\r\nA: b\r\n\r\ndraining").unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "draining");
        assert!(super::parse(b"garbage").is_err());
    }
}

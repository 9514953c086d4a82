//! The operations endpoint: `GET /metrics`, `/healthz` and `/readyz` over a deliberately tiny
//! HTTP/1.1 server (one request per connection, `Connection: close`, request head capped at
//! 8 KiB). It runs over [`Network`], so it works unchanged under the simulation, and it needs
//! no HTTP dependency.

use crate::metrics::{Metrics, CONTENT_TYPE};
use crate::net::Network;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Largest request line plus headers; more gets `431`.
const MAX_HEAD: usize = 8 * 1024;
/// A connection that has not sent its request (or read the answer) by then is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of file descriptors, say), so the loop does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// What the endpoint reports; shared with the server and its hubs.
#[derive(Debug)]
pub struct AdminState {
    /// Served at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Answers `/readyz`.
    pub readiness: Readiness,
}

/// Whether warren should get new clients (`/readyz`), kept in atomics that the server and the
/// hubs update without locks.
#[derive(Debug, Default)]
pub struct Readiness {
    listening: AtomicBool,
    draining: AtomicBool,
    upstreams_open: AtomicUsize,
    hubs_unreachable: AtomicUsize,
}

impl Readiness {
    /// The client listener is accepting (or has stopped).
    pub fn set_listening(&self, on: bool) {
        self.listening.store(on, Ordering::Relaxed);
    }

    /// A drain has begun (B14): new clients should go elsewhere.
    pub fn set_draining(&self, on: bool) {
        self.draining.store(on, Ordering::Relaxed);
    }

    /// A hub opened (`+1`) or lost (`-1`) its open broker connection.
    pub fn add_upstreams_open(&self, delta: isize) {
        // Two's complement: adding `-1 as usize` wraps to a decrement.
        self.upstreams_open
            .fetch_add(delta as usize, Ordering::Relaxed);
    }

    /// A hub started (`+1`) or stopped (`-1`) failing to reach the broker.
    pub fn add_hubs_unreachable(&self, delta: isize) {
        self.hubs_unreachable
            .fetch_add(delta as usize, Ordering::Relaxed);
    }

    /// Ready iff listening, not draining, and the broker is reachable: some broker connection
    /// is open, or no hub is failing to get one (a fresh proxy without clients is ready).
    pub fn check(&self) -> Result<(), String> {
        if !self.listening.load(Ordering::Relaxed) {
            return Err("not listening".into());
        }
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining".into());
        }
        let unreachable = self.hubs_unreachable.load(Ordering::Relaxed);
        if self.upstreams_open.load(Ordering::Relaxed) == 0 && unreachable > 0 {
            return Err(format!(
                "broker unreachable: no broker connection is open and {unreachable} hub(s) are reconnecting"
            ));
        }
        Ok(())
    }
}

/// Serves the endpoint on `listener` until `shutdown`; each connection gets its own task and
/// at most [`REQUEST_TIMEOUT`].
pub async fn serve<N: Network>(
    net: N,
    listener: N::Listener,
    state: Arc<AdminState>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            a = net.accept(&listener) => a,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let (state, shutdown) = (state.clone(), shutdown.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => {}
                        r = tokio::time::timeout(REQUEST_TIMEOUT, respond(stream, &state)) => {
                            if let Ok(Err(e)) = r {
                                tracing::debug!(error = %e, "metrics endpoint: connection failed");
                            }
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
        }
    }
}

/// Reads one request head and writes the answer.
async fn respond<S>(mut stream: S, state: &AdminState) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut head = [0u8; MAX_HEAD];
    let mut len = 0;
    let response = loop {
        if let Some(end) = head[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            break route(&head[..end], state);
        }
        if len == MAX_HEAD {
            break Response::text(
                431,
                "Request Header Fields Too Large",
                "request head over 8 KiB",
            );
        }
        let n = stream.read(&mut head[len..]).await?;
        if n == 0 {
            return Ok(()); // closed before finishing a request
        }
        len += n;
    };
    stream.write_all(&response.into_bytes()).await?;
    stream.shutdown().await
}

/// The answer to a request head (request line and headers, without the blank line).
fn route(head: &[u8], state: &AdminState) -> Response {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else {
        return Response::text(400, "Bad Request", "bad request line");
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Response::text(400, "Bad Request", "bad request line");
    };
    if !version.starts_with("HTTP/1.") {
        return Response::text(400, "Bad Request", "HTTP/1.x only");
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Response::text(405, "Method Not Allowed", "GET or HEAD only"),
    };
    let path = target.split('?').next().unwrap_or_default();
    let mut response = match path {
        "/metrics" => Response {
            content_type: CONTENT_TYPE,
            ..Response::text(200, "OK", state.metrics.encode())
        },
        "/healthz" => Response::text(200, "OK", "ok"),
        "/readyz" => match state.readiness.check() {
            Ok(()) => Response::text(200, "OK", "ready"),
            Err(reason) => Response::text(503, "Service Unavailable", reason),
        },
        _ => Response::text(404, "Not Found", "not found"),
    };
    response.head_only = head_only;
    response
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    head_only: bool,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: impl Into<String>) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            head_only: false,
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        let allow = if self.status == 405 {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        };
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

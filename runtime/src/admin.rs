//! warren's HTTP side, on hyper (HTTP/1.1, one request per connection, `Connection: close`),
//! over [`Network`] so it runs unchanged under the simulation:
//!
//! - the operations endpoint on the `metrics` listener: `GET /metrics`, `/healthz`, `/readyz`;
//! - the admin API on the `admin_listen` listener: JSON under `/api/` (see `api.rs`).
//!
//! Every connection is bounded: a request head over 8 KiB gets `431`, a body over
//! [`MAX_BODY`] gets `413`, and a connection that has not finished within
//! `REQUEST_TIMEOUT` is dropped.

use crate::api::ApiState;
use crate::http::text;
use crate::metrics::{Metrics, CONTENT_TYPE};
use crate::net::Network;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE as CT};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use crate::http::MAX_BODY;

/// Largest request line plus headers; more gets `431`. (hyper's smallest read buffer.)
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

/// Which endpoint a listener serves.
#[derive(Clone)]
enum Endpoint {
    /// `/metrics`, `/healthz`, `/readyz`.
    Operations(Arc<AdminState>),
    /// `/api/...`.
    Api(Arc<ApiState>),
}

/// Serves the operations endpoint on `listener` until `shutdown`; each connection gets its
/// own task and at most `REQUEST_TIMEOUT`.
pub async fn serve<N: Network>(
    net: N,
    listener: N::Listener,
    state: Arc<AdminState>,
    shutdown: CancellationToken,
) {
    serve_endpoint(net, listener, Endpoint::Operations(state), shutdown).await;
}

/// Serves the admin API on `listener` until `shutdown`.
pub(crate) async fn serve_api<N: Network>(
    net: N,
    listener: N::Listener,
    api: Arc<ApiState>,
    shutdown: CancellationToken,
) {
    serve_endpoint(net, listener, Endpoint::Api(api), shutdown).await;
}

async fn serve_endpoint<N: Network>(
    net: N,
    listener: N::Listener,
    endpoint: Endpoint,
    shutdown: CancellationToken,
) {
    let what = match endpoint {
        Endpoint::Operations(_) => "metrics endpoint",
        Endpoint::Api(_) => "admin API",
    };
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            a = net.accept(&listener) => a,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let (endpoint, shutdown) = (endpoint.clone(), shutdown.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let endpoint = endpoint.clone();
                        async move { Ok::<_, Infallible>(respond(&endpoint, req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .title_case_headers(true)
                        .keep_alive(false)
                        .max_buf_size(MAX_HEAD)
                        .timer(TokioTimer::new())
                        .header_read_timeout(REQUEST_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => {}
                        r = tokio::time::timeout(REQUEST_TIMEOUT, conn) => {
                            if let Ok(Err(e)) = r {
                                tracing::debug!(error = %e, "{what}: connection failed");
                            }
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "{what}: accept failed");
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
        }
    }
}

/// The answer to one request.
async fn respond(endpoint: &Endpoint, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let head_only = req.method() == Method::HEAD;
    let mut response = match endpoint {
        Endpoint::Operations(state) => operations(state, &req),
        Endpoint::Api(api) => crate::api::handle(api, req).await,
    };
    let len = response.body().size_hint().exact().unwrap_or(0);
    let h = response.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("close"));
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    if head_only {
        *response.body_mut() = Full::new(Bytes::new());
    }
    response
}

/// `/metrics`, `/healthz`, `/readyz`.
fn operations(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = text(StatusCode::OK, state.metrics.encode());
            r.headers_mut()
                .insert(CT, HeaderValue::from_static(CONTENT_TYPE));
            r
        }
        "/healthz" => text(StatusCode::OK, "ok"),
        "/readyz" => match state.readiness.check() {
            Ok(()) => text(StatusCode::OK, "ready"),
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, reason),
        },
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

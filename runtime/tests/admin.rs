//! The metrics and health endpoint over real loopback sockets, with a raw HTTP client.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use warren_runtime::admin::{serve, AdminState, Readiness};
use warren_runtime::metrics::Metrics;
use warren_runtime::net::{Network, TokioNetwork};

struct Endpoint {
    addr: SocketAddr,
    state: Arc<AdminState>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start() -> Endpoint {
    let net = TokioNetwork;
    let listener = net.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = net.local_addr(&listener).unwrap();
    let state = Arc::new(AdminState {
        metrics: Arc::new(Metrics::new()),
        readiness: Readiness::default(),
    });
    let stop = CancellationToken::new();
    let task = tokio::spawn(serve(net, listener, state.clone(), stop.clone()));
    Endpoint {
        addr,
        state,
        stop,
        task,
    }
}

/// Sends `request` as is and returns the whole answer (the server closes the connection).
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8(out).unwrap()
}

async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: warren\r\nUser-Agent: test\r\n\r\n");
    let answer = exchange(addr, request.as_bytes()).await;
    let (head, body) = answer.split_once("\r\n\r\n").expect("head and body");
    (head.to_owned(), body.to_owned())
}

fn status(head: &str) -> &str {
    head.lines().next().unwrap()
}

#[tokio::test]
async fn health_metrics_and_unknown_paths() {
    let e = start().await;
    let (head, body) = get(e.addr, "/healthz").await;
    assert_eq!(status(&head), "HTTP/1.1 200 OK");
    assert!(head.contains("Connection: close"), "{head}");
    assert!(head.contains("Content-Length: 2"), "{head}");
    assert_eq!(body, "ok");

    e.state.metrics.refused("max_clients");
    e.state.metrics.hub("guest", "/").set_gauges(1, 1, 1, 0);
    let (head, body) = get(e.addr, "/metrics?format=text").await;
    assert_eq!(status(&head), "HTTP/1.1 200 OK");
    assert!(
        head.contains("Content-Type: application/openmetrics-text"),
        "{head}"
    );
    assert!(
        body.contains("warren_refused_connections_total{reason=\"max_clients\"} 1"),
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );

    let (head, _) = get(e.addr, "/nope").await;
    assert_eq!(status(&head), "HTTP/1.1 404 Not Found");
    e.stop.cancel();
    e.task.await.unwrap();
}

#[tokio::test]
async fn readiness_follows_listening_draining_and_the_broker() {
    let e = start().await;
    let r = &e.state.readiness;
    let ready = || async { get(e.addr, "/readyz").await };

    let (head, body) = ready().await;
    assert_eq!(status(&head), "HTTP/1.1 503 Service Unavailable");
    assert_eq!(body, "not listening");

    r.set_listening(true);
    let (head, body) = ready().await;
    assert_eq!((status(&head), body.as_str()), ("HTTP/1.1 200 OK", "ready"));

    r.add_hubs_unreachable(1);
    let (head, body) = ready().await;
    assert_eq!(status(&head), "HTTP/1.1 503 Service Unavailable");
    assert!(
        body.contains("broker unreachable") && body.contains("1 hub"),
        "{body}"
    );

    r.add_upstreams_open(1);
    assert_eq!(status(&ready().await.0), "HTTP/1.1 200 OK");
    r.add_upstreams_open(-1);
    assert_eq!(status(&ready().await.0), "HTTP/1.1 503 Service Unavailable");
    r.add_hubs_unreachable(-1);
    assert_eq!(status(&ready().await.0), "HTTP/1.1 200 OK");

    r.set_draining(true);
    let (head, body) = ready().await;
    assert_eq!(status(&head), "HTTP/1.1 503 Service Unavailable");
    assert_eq!(body, "draining");
}

#[tokio::test]
async fn bad_requests_get_defined_answers() {
    let e = start().await;
    let answer = exchange(e.addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{answer}"
    );
    assert!(answer.contains("Allow: GET, HEAD\r\n"), "{answer}");

    let answer = exchange(e.addr, b"HEAD /healthz HTTP/1.1\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.contains("Content-Length: 2\r\n") && answer.ends_with("\r\n\r\n"),
        "{answer}"
    );

    for garbage in [
        &b"GET\r\n\r\n"[..],
        b"GET /healthz SPDY/3\r\n\r\n",
        b"\xff\xfe /x HTTP/1.1\r\n\r\n",
    ] {
        let answer = exchange(e.addr, garbage).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
    }

    // A head that never ends is cut at 8 KiB.
    let mut huge = b"GET /healthz HTTP/1.1\r\nX-Filler: ".to_vec();
    huge.resize(8 * 1024, b'a');
    let answer = exchange(e.addr, &huge).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");

    // A head that ends exactly at the cap is still served.
    let mut exact = b"GET /healthz HTTP/1.1\r\nX-Filler: ".to_vec();
    exact.resize(8 * 1024 - 4, b'a');
    exact.extend_from_slice(b"\r\n\r\n");
    let answer = exchange(e.addr, &exact).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
}

#[tokio::test]
async fn stops_on_shutdown_and_refuses_afterwards() {
    let e = start().await;
    e.stop.cancel();
    e.task.await.unwrap();
    assert!(TcpStream::connect(e.addr).await.is_err());
}

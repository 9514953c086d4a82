//! The shapes of warren's HTTP answers (plain text, JSON) and the bounded reading of a request
//! body: shared by the operations endpoint ([`crate::admin`]) and the admin API
//! ([`crate::api`]), in a module of their own so that neither depends on the other for them.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE as CT};
use hyper::{Request, Response, StatusCode};

/// Largest request body (the admin API's JSON); more gets `413`.
pub const MAX_BODY: usize = 64 * 1024;

/// A plain-text answer.
pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CT, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// A JSON answer.
pub(crate) fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut text = serde_json::to_string_pretty(body).unwrap_or_default();
    text.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CT, HeaderValue::from_static("application/json"));
    r
}

/// Reads a request body of at most [`MAX_BODY`] bytes; `Err` is the `413` (or `400`) answer.
pub(crate) async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Full<Bytes>>> {
    let too_large = || {
        json(
            StatusCode::PAYLOAD_TOO_LARGE,
            &serde_json::json!({ "error": format!("request body over {MAX_BODY} bytes") }),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({ "error": format!("cannot read the request body: {e}") }),
        )),
    }
}

//! The admin API (B16): JSON over HTTP on its own listener (`admin_listen`).
//!
//! | request | what it does |
//! |---|---|
//! | `GET /api/hubs[?user=&vhost=&hub=]` | hubs: id, user, vhost, state, clients, upstreams, channels |
//! | `GET /api/hubs/{hub}` | one hub with its clients and upstreams |
//! | `GET /api/clients[?user=&vhost=&name=&hub=]` | clients: peer, TLS, names, traffic, times |
//! | `GET /api/upstreams[?user=&vhost=&hub=]` | broker connections: node, channels, heartbeat, blocked |
//! | `GET /api/vhosts` | the vhosts an operator paused |
//! | `POST /api/clients/{client}/close` | closes one client: `320 CONNECTION_FORCED - <reason>` |
//! | `POST /api/clients/close?user=&vhost=&name=&hub=` | closes every client matching (a filter is required) |
//! | `POST /api/hubs/{hub}/pause`, `/resume`, `/drain`, `/redial` | steers one hub |
//! | `POST /api/vhosts/{vhost}/pause`, `/resume` | pauses every hub of a vhost, and those started later |
//! | `POST /api/reload` | live reload, as on SIGHUP: what was applied and what needs a restart |
//!
//! Ids are as listed: hubs `h<n>`, clients `h<n>-c<m>`, upstreams `h<n>-u<m>`; a vhost in a
//! path is percent-encoded (`/` is `%2F`). A close takes an optional JSON body
//! `{"reason": "..."}`. Answers: `200` with JSON; `400` for a bad filter, id or body; `401`
//! without the right bearer token (when `admin_token` is set); `404` for an unknown path or id;
//! `405` for a wrong method; `413` for a body over 64 KiB. A request that fails changes nothing.
//!
//! Decisions are core's: this module parses, asks the admission task ([`GateMsg::Admin`]),
//! which changes admission and forwards to hub tasks ([`HubMsg::Admin`]), and prints what
//! they report.

use crate::http::{json, read_body};
use crate::msg::{
    AdminRequest, ApiReply, Filter, GateMsg, HubAction, HubAnswer, HubCommand, HubMsg, ReloadReport,
};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json as j, Value};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use warren_core::admission::{HubEntry, HubId};

/// How long the API waits for the admission task and each hub to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// The reason given to a closed client when the request names none.
pub(crate) const DEFAULT_REASON: &str = "Closed via warren admin API";

/// Reads the settings again and applies them (see [`crate::reload`]).
pub(crate) type ReloadFn = Box<dyn Fn() -> Result<ReloadReport, String> + Send + Sync>;

/// What the API needs: the admission task's channel, the token, if any, and the reload.
pub(crate) struct ApiState {
    pub(crate) gate: mpsc::UnboundedSender<GateMsg>,
    pub(crate) token: Option<String>,
    pub(crate) reload: ReloadFn,
}

/// Answers one HTTP request of the admin API.
pub(crate) async fn handle(api: &ApiState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Some(token) = &api.token {
        let given = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same(g.trim().as_bytes(), token.as_bytes())) {
            let mut r = json(
                StatusCode::UNAUTHORIZED,
                &j!({ "error": "a valid bearer token is required (Authorization: Bearer <admin_token>)" }),
            );
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let parsed = match parse(&method, &path, &query) {
        Ok(p) => p,
        Err((status, message)) => return json(status, &j!({ "error": message })),
    };
    let request = match parsed {
        Parsed::Ready(r) => r,
        Parsed::Reload => {
            return match (api.reload)() {
                Ok(report) => json(
                    StatusCode::OK,
                    &j!({ "applied": report.applied, "needs_restart": report.needs_restart }),
                ),
                // Nothing changed; the message names the setting at fault.
                Err(message) => json(StatusCode::BAD_REQUEST, &j!({ "error": message })),
            };
        }
        Parsed::WithReason(make) => {
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            match reason(&body) {
                Ok(reason) => make(reason),
                Err(message) => return json(StatusCode::BAD_REQUEST, &j!({ "error": message })),
            }
        }
    };
    let (tx, rx) = oneshot::channel();
    if api.gate.send(GateMsg::Admin(request, tx)).is_err() {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &j!({ "error": "warren is stopping" }),
        );
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
        Ok(Ok((status, body))) => json(status, &body),
        _ => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &j!({ "error": "warren did not answer in time" }),
        ),
    }
}

/// Compares a token in time independent of where it differs.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

type Make = Box<dyn FnOnce(String) -> AdminRequest + Send>;

enum Parsed {
    Ready(AdminRequest),
    /// Needs the body's reason.
    WithReason(Make),
    Reload,
}

type Refusal = (StatusCode, String);

fn bad(message: impl Into<String>) -> Refusal {
    (StatusCode::BAD_REQUEST, message.into())
}

fn not_found(message: impl Into<String>) -> Refusal {
    (StatusCode::NOT_FOUND, message.into())
}

/// The request a method, path and query ask for.
fn parse(method: &Method, path: &str, query: &str) -> Result<Parsed, Refusal> {
    let segments: Vec<&str> = path
        .strip_prefix("/api/")
        .ok_or_else(|| not_found(format!("no such path: {path}")))?
        .split('/')
        .collect();
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    let wrong_method = |allowed: &str| {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} {path}: use {allowed}"),
        )
    };
    let no_query = || {
        if query.is_empty() {
            Ok(())
        } else {
            Err(bad(format!("{path} takes no query")))
        }
    };
    Ok(match segments.as_slice() {
        ["hubs"] if get => Parsed::Ready(AdminRequest::Hubs(filter(query, false)?)),
        ["hubs", hub] if get => {
            no_query()?;
            Parsed::Ready(AdminRequest::Hub(hub_id(hub)?))
        }
        ["hubs", hub, action] if post => {
            no_query()?;
            let action = match *action {
                "pause" => HubAction::Pause,
                "resume" => HubAction::Resume,
                "drain" => HubAction::Drain,
                "redial" => HubAction::Redial,
                other => return Err(not_found(format!("no hub action {other:?}"))),
            };
            Parsed::Ready(AdminRequest::HubAct(hub_id(hub)?, action))
        }
        ["clients"] if get => Parsed::Ready(AdminRequest::Clients(filter(query, true)?)),
        ["clients", "close"] if post => {
            let filter = filter(query, true)?;
            if filter.is_empty() {
                return Err(bad(
                    "closing clients needs a filter (user, vhost, name or hub); \
                     to close one client use /api/clients/{id}/close",
                ));
            }
            Parsed::WithReason(Box::new(move |reason| AdminRequest::CloseClients {
                filter,
                reason,
            }))
        }
        ["clients", id, "close"] if post => {
            no_query()?;
            let (hub, client) = client_id(id)?;
            Parsed::WithReason(Box::new(move |reason| AdminRequest::CloseClient {
                hub,
                client,
                reason,
            }))
        }
        ["upstreams"] if get => Parsed::Ready(AdminRequest::Upstreams(filter(query, false)?)),
        ["vhosts"] if get => {
            no_query()?;
            Parsed::Ready(AdminRequest::Vhosts)
        }
        ["vhosts", vhost, action] if post => {
            no_query()?;
            let vhost = decode(vhost).ok_or_else(|| bad("bad percent-encoding in the vhost"))?;
            let pause = match *action {
                "pause" => true,
                "resume" => false,
                other => return Err(not_found(format!("no vhost action {other:?}"))),
            };
            Parsed::Ready(AdminRequest::Vhost(vhost, pause))
        }
        ["reload"] if post => Parsed::Reload,
        ["hubs"] | ["hubs", _] | ["clients"] | ["upstreams"] | ["vhosts"] => {
            return Err(wrong_method("GET"))
        }
        ["hubs", _, _]
        | ["clients", "close"]
        | ["clients", _, "close"]
        | ["vhosts", _, _]
        | ["reload"] => return Err(wrong_method("POST")),
        _ => return Err(not_found(format!("no such path: {path}"))),
    })
}

/// `h3` or `3`.
fn hub_id(s: &str) -> Result<u64, Refusal> {
    s.strip_prefix('h')
        .unwrap_or(s)
        .parse()
        .map_err(|_| bad(format!("{s:?} is not a hub id (like h3)")))
}

/// `h3-c17`.
fn client_id(s: &str) -> Result<(u64, u32), Refusal> {
    let parse = || {
        let (hub, client) = s.split_once('-')?;
        let hub = hub.strip_prefix('h')?.parse().ok()?;
        let client = client.strip_prefix('c')?.parse().ok()?;
        Some((hub, client))
    };
    parse().ok_or_else(|| bad(format!("{s:?} is not a client id (like h3-c17)")))
}

/// The filter a query names: `user`, `vhost`, `hub` and (for clients) `name`, each at most
/// once and not empty; anything else is refused.
fn filter(query: &str, names: bool) -> Result<Filter, Refusal> {
    let mut f = Filter::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = decode(value).ok_or_else(|| bad(format!("bad percent-encoding in {key}")))?;
        if value.is_empty() {
            return Err(bad(format!("filter {key} is empty")));
        }
        let slot = match key {
            "user" => &mut f.user,
            "vhost" => &mut f.vhost,
            "name" if names => &mut f.name,
            "hub" => {
                if f.hub.replace(hub_id(&value)?).is_some() {
                    return Err(bad("filter hub given twice"));
                }
                continue;
            }
            other => {
                let known = if names {
                    "user, vhost, name, hub"
                } else {
                    "user, vhost, hub"
                };
                return Err(bad(format!("unknown filter {other:?} (known: {known})")));
            }
        };
        if slot.replace(value).is_some() {
            return Err(bad(format!("filter {key} given twice")));
        }
    }
    Ok(f)
}

/// Percent-decoding (and `+` as a space, as forms send it).
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The reason in a close's body: none (empty body) or `{"reason": "..."}`.
fn reason(body: &[u8]) -> Result<String, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DEFAULT_REASON.into());
    }
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Value::Object(map) = v else {
        return Err("the body must be a JSON object like {\"reason\": \"...\"}".into());
    };
    if let Some(k) = map.keys().find(|k| *k != "reason") {
        return Err(format!("unknown field {k:?} (known: reason)"));
    }
    match map.get("reason") {
        None => Ok(DEFAULT_REASON.into()),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(_) => Err("reason must be a non-empty string".into()),
    }
}

/// The running hubs a request may touch, with their channels (from the admission task).
pub(crate) type HubHandles = Vec<(HubEntry, mpsc::UnboundedSender<HubMsg>)>;

/// Asks one hub and waits for its answer; `None` if it stopped meanwhile.
async fn ask(tx: &mpsc::UnboundedSender<HubMsg>, command: HubCommand) -> Option<HubAnswer> {
    let (reply, rx) = oneshot::channel();
    tx.send(HubMsg::Admin(command, reply)).ok()?;
    tokio::time::timeout(ANSWER_TIMEOUT, rx).await.ok()?.ok()
}

fn hub_value(e: &HubEntry, answer: &HubAnswer) -> Value {
    let mut v = j!({
        "id": format!("{}", e.id),
        "user": e.user,
        "vhost": e.vhost,
        "attached": e.attached,
    });
    if let (Value::Object(m), Value::Object(more)) = (&mut v, &answer.hub) {
        m.extend(more.clone());
    }
    v
}

/// Carries out `request` on the hubs admission listed (admission's own part is done), and
/// sends the answer.
pub(crate) async fn answer(
    request: AdminRequest,
    hubs: HubHandles,
    paused_vhosts: Vec<String>,
    found: Option<HubId>,
    reply: oneshot::Sender<ApiReply>,
) {
    let result = run(request, hubs, paused_vhosts, found).await;
    let _ = reply.send(result);
}

async fn run(
    request: AdminRequest,
    hubs: HubHandles,
    paused_vhosts: Vec<String>,
    found: Option<HubId>,
) -> ApiReply {
    let one = |n: u64| hubs.iter().find(|(e, _)| e.id.get() == n);
    let unknown_hub = |n: u64| {
        (
            StatusCode::NOT_FOUND,
            j!({ "error": format!("no hub h{n}") }),
        )
    };
    match request {
        AdminRequest::Hubs(f) => {
            let mut out = Vec::new();
            for (e, tx) in hubs.iter().filter(|(e, _)| f.takes_hub(e)) {
                if let Some(a) = ask(tx, HubCommand::Describe).await {
                    out.push(hub_value(e, &a));
                }
            }
            (StatusCode::OK, Value::Array(out))
        }
        AdminRequest::Hub(n) => {
            let Some((e, tx)) = one(n) else {
                return unknown_hub(n);
            };
            match ask(tx, HubCommand::Describe).await {
                Some(a) => (StatusCode::OK, full_hub(e, a)),
                None => unknown_hub(n),
            }
        }
        AdminRequest::Clients(f) => {
            let mut out = Vec::new();
            for (_, tx) in hubs.iter().filter(|(e, _)| f.takes_hub(e)) {
                if let Some(a) = ask(tx, HubCommand::Describe).await {
                    out.extend(a.clients.into_iter().filter(|c| {
                        f.name
                            .as_ref()
                            .is_none_or(|n| c["connection_name"].as_str() == Some(n))
                    }));
                }
            }
            (StatusCode::OK, Value::Array(out))
        }
        AdminRequest::Upstreams(f) => {
            let mut out = Vec::new();
            for (_, tx) in hubs.iter().filter(|(e, _)| f.takes_hub(e)) {
                if let Some(a) = ask(tx, HubCommand::Describe).await {
                    out.extend(a.upstreams);
                }
            }
            (StatusCode::OK, Value::Array(out))
        }
        AdminRequest::Vhosts => (StatusCode::OK, j!({ "paused": paused_vhosts })),
        AdminRequest::CloseClient {
            hub,
            client,
            reason,
        } => {
            let id = format!("h{hub}-c{client}");
            let Some((_, tx)) = one(hub) else {
                return (
                    StatusCode::NOT_FOUND,
                    j!({ "error": format!("no client {id}") }),
                );
            };
            let command = HubCommand::Close {
                client: Some(client),
                name: None,
                reason: reason.clone(),
            };
            match ask(tx, command).await {
                Some(a) if !a.closed.is_empty() => {
                    (StatusCode::OK, j!({ "closed": a.closed, "reason": reason }))
                }
                _ => (
                    StatusCode::NOT_FOUND,
                    j!({ "error": format!("no client {id}") }),
                ),
            }
        }
        AdminRequest::CloseClients { filter, reason } => {
            let mut closed = Vec::new();
            for (_, tx) in hubs.iter().filter(|(e, _)| filter.takes_hub(e)) {
                let command = HubCommand::Close {
                    client: None,
                    name: filter.name.clone(),
                    reason: reason.clone(),
                };
                if let Some(a) = ask(tx, command).await {
                    closed.extend(a.closed);
                }
            }
            (StatusCode::OK, j!({ "closed": closed, "reason": reason }))
        }
        AdminRequest::HubAct(n, action) => {
            let Some((e, tx)) = one(n) else {
                return unknown_hub(n);
            };
            let command = match action {
                HubAction::Pause => HubCommand::Input(Box::new(warren_core::hub::Input::Pause)),
                HubAction::Resume => HubCommand::Input(Box::new(warren_core::hub::Input::Resume)),
                HubAction::Redial => HubCommand::Input(Box::new(warren_core::hub::Input::Redial)),
                // Admission detached it already and forwarded the hub's part.
                HubAction::Drain if found.is_some() => HubCommand::Describe,
                HubAction::Drain => return unknown_hub(n),
            };
            match ask(tx, command).await {
                Some(a) => (StatusCode::OK, full_hub(e, a)),
                None => unknown_hub(n),
            }
        }
        AdminRequest::Vhost(vhost, pause) => {
            let touched: Vec<String> = hubs
                .iter()
                .filter(|(e, _)| e.vhost == vhost)
                .map(|(e, _)| e.id.to_string())
                .collect();
            (
                StatusCode::OK,
                j!({ "vhost": vhost, "paused": pause, "hubs": touched, "paused_vhosts": paused_vhosts }),
            )
        }
    }
}

fn full_hub(e: &HubEntry, a: HubAnswer) -> Value {
    let mut v = hub_value(e, &a);
    if let Value::Object(m) = &mut v {
        m.insert("client_list".into(), Value::Array(a.clients));
        m.insert("upstream_list".into(), Value::Array(a.upstreams));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_ids_parse_strictly() {
        let f = filter("user=a&vhost=%2F&name=my+app", true).unwrap();
        assert_eq!(f.user.as_deref(), Some("a"));
        assert_eq!(f.vhost.as_deref(), Some("/"));
        assert_eq!(f.name.as_deref(), Some("my app"));
        assert!(filter("nope=1", true).is_err());
        assert!(filter("name=x", false).is_err());
        assert!(filter("user=a&user=b", true).is_err());
        assert!(filter("user=", true).is_err());
        assert!(filter("vhost=%zz", true).is_err());
        assert_eq!(filter("hub=h4", true).unwrap().hub, Some(4));
        assert_eq!(client_id("h3-c17").unwrap(), (3, 17));
        assert!(client_id("3-17").is_err());
        assert_eq!(hub_id("h12").unwrap(), 12);
        assert!(hub_id("x").is_err());
    }

    #[test]
    fn reasons_come_from_a_small_json_body() {
        assert_eq!(reason(b"").unwrap(), DEFAULT_REASON);
        assert_eq!(reason(br#"{"reason":"bye"}"#).unwrap(), "bye");
        assert!(reason(b"bye").is_err());
        assert!(reason(br#"{"reason":1}"#).is_err());
        assert!(reason(br#"{"why":"x"}"#).is_err());
    }

    #[test]
    fn paths_methods_and_queries() {
        let p = |m: &Method, path: &str, q: &str| parse(m, path, q).map(|_| ()).map_err(|e| e.0);
        assert_eq!(p(&Method::GET, "/api/hubs", ""), Ok(()));
        assert_eq!(
            p(&Method::POST, "/api/hubs", ""),
            Err(StatusCode::METHOD_NOT_ALLOWED)
        );
        assert_eq!(p(&Method::GET, "/api/nope", ""), Err(StatusCode::NOT_FOUND));
        assert_eq!(p(&Method::GET, "/metrics", ""), Err(StatusCode::NOT_FOUND));
        assert_eq!(
            p(&Method::POST, "/api/clients/close", ""),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(p(&Method::POST, "/api/clients/close", "vhost=v"), Ok(()));
        assert_eq!(p(&Method::POST, "/api/vhosts/%2F/pause", ""), Ok(()));
        assert_eq!(
            p(&Method::POST, "/api/hubs/h1/jump", ""),
            Err(StatusCode::NOT_FOUND)
        );
        assert_eq!(p(&Method::POST, "/api/reload", ""), Ok(()));
    }
}

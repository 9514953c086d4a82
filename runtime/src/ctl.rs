//! `warren ctl`: the admin API from the command line (B16), a table for people and `--json`
//! for scripts.
//!
//! The server is found from `--admin-url` (or `WARREN_ADMIN_URL`), else from the
//! `admin_listen` of the configuration file (`--config`, or `WARREN_CONFIG`), else
//! `http://127.0.0.1:15680`; the token from `--token` / `--token-file` (or
//! `WARREN_ADMIN_TOKEN` / `WARREN_ADMIN_TOKEN_FILE`), else the file's `admin_token` /
//! `admin_token_file`. Exit status: 0 on success, 1 when the API refused the request or could
//! not be reached, 2 for a bad command line.

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// `warren ctl`: list and steer a running warren through its admin API.
#[derive(Debug, Parser)]
#[command(name = "warren ctl", version)]
struct Ctl {
    /// The admin API, e.g. http://127.0.0.1:15680 [env: WARREN_ADMIN_URL]
    #[arg(long, global = true, value_name = "URL")]
    admin_url: Option<String>,
    /// Bearer token of the admin API [env: WARREN_ADMIN_TOKEN]
    #[arg(long, global = true, value_name = "TOKEN")]
    token: Option<String>,
    /// File holding the token (its first line) [env: WARREN_ADMIN_TOKEN_FILE]
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<String>,
    /// warren's configuration file, to find admin_listen and the token [env: WARREN_CONFIG]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Args, Default)]
struct Which {
    /// Only this user's.
    #[arg(long)]
    user: Option<String>,
    /// Only this vhost's.
    #[arg(long)]
    vhost: Option<String>,
    /// Only this hub's (h3).
    #[arg(long)]
    hub: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// List hubs: one per user, password and vhost (never the password).
    Hubs(Which),
    /// List clients.
    Clients {
        #[command(flatten)]
        which: Which,
        /// Only clients with this connection_name.
        #[arg(long)]
        name: Option<String>,
    },
    /// List broker connections.
    Upstreams(Which),
    /// Close one client (by id, h3-c17) or every client matching the filters, with
    /// 320 CONNECTION_FORCED and the reason.
    Close {
        /// The client's id; without it, the filters say which clients.
        id: Option<String>,
        #[command(flatten)]
        which: Which,
        /// Only clients with this connection_name.
        #[arg(long)]
        name: Option<String>,
        /// What the clients are told.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Pause a hub or a vhost: new clients and channels wait.
    Pause(Target),
    /// Resume a hub or a vhost.
    Resume(Target),
    /// Drain a hub: new clients go to a new hub; it closes once its clients are gone.
    Drain(HubOnly),
    /// Re-dial a hub: a new broker connection takes new channels, the old ones retire.
    Redial(HubOnly),
    /// Reload warren's configuration (POST /api/reload).
    Reload,
}

#[derive(Debug, Args)]
struct Target {
    /// The hub (h3).
    #[arg(long, conflicts_with = "vhost", required_unless_present = "vhost")]
    hub: Option<String>,
    /// The vhost.
    #[arg(long)]
    vhost: Option<String>,
}

#[derive(Debug, Args)]
struct HubOnly {
    /// The hub (h3).
    #[arg(long)]
    hub: String,
}

/// Runs `warren ctl` with `args` (without the program name and `ctl`).
pub fn main(args: Vec<std::ffi::OsString>) -> ExitCode {
    let ctl = match Ctl::try_parse_from(std::iter::once("warren ctl".into()).chain(args)) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warren ctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(ctl)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warren ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where the API is and the token, from flags, variables and the file.
fn endpoint(ctl: &Ctl) -> Result<(String, Option<String>), String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let file: Option<toml::Table> = match ctl
        .config
        .clone()
        .or_else(|| env("WARREN_CONFIG").map(PathBuf::from))
    {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
            Some(toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?)
        }
        None => None,
    };
    let from_file = |k: &str| {
        file.as_ref()
            .and_then(|t| t.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let url = match ctl.admin_url.clone().or_else(|| env("WARREN_ADMIN_URL")) {
        Some(u) => u,
        None => match from_file("admin_listen") {
            Some(a) if a == "off" => {
                return Err("admin_listen is off in the configuration file".into())
            }
            Some(a) => format!("http://{a}"),
            None => format!("http://127.0.0.1:{}", crate::config::DEFAULT_ADMIN_PORT),
        },
    };
    let token_file = ctl
        .token_file
        .clone()
        .or_else(|| env("WARREN_ADMIN_TOKEN_FILE"));
    let token = match (
        ctl.token.clone().or_else(|| env("WARREN_ADMIN_TOKEN")),
        token_file,
    ) {
        (Some(t), _) => Some(t),
        (None, Some(f)) => Some(crate::config::read_token_file(&f).map_err(|e| e.to_string())?),
        (None, None) => match (from_file("admin_token"), from_file("admin_token_file")) {
            (Some(t), _) => Some(t),
            (None, Some(f)) => Some(crate::config::read_token_file(&f).map_err(|e| e.to_string())?),
            (None, None) => None,
        },
    };
    Ok((url, token))
}

/// Percent-encodes a query value or path segment.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn query(pairs: &[(&str, &Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", enc(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn which_query(w: &Which, name: &Option<String>) -> String {
    query(&[
        ("user", &w.user),
        ("vhost", &w.vhost),
        ("hub", &w.hub),
        ("name", name),
    ])
}

async fn run(ctl: Ctl) -> Result<(), String> {
    let (url, token) = endpoint(&ctl)?;
    let (method, path, body) = match &ctl.command {
        Cmd::Hubs(w) => (
            Method::GET,
            format!("/api/hubs{}", which_query(w, &None)),
            None,
        ),
        Cmd::Clients { which, name } => (
            Method::GET,
            format!("/api/clients{}", which_query(which, name)),
            None,
        ),
        Cmd::Upstreams(w) => (
            Method::GET,
            format!("/api/upstreams{}", which_query(w, &None)),
            None,
        ),
        Cmd::Close {
            id,
            which,
            name,
            reason,
        } => {
            let body = reason
                .as_ref()
                .map(|r| serde_json::json!({ "reason": r }).to_string());
            let path = match id {
                Some(id) => format!("/api/clients/{}/close", enc(id)),
                None => format!("/api/clients/close{}", which_query(which, name)),
            };
            (Method::POST, path, body)
        }
        Cmd::Pause(t) | Cmd::Resume(t) => {
            let action = if matches!(ctl.command, Cmd::Pause(_)) {
                "pause"
            } else {
                "resume"
            };
            let path = match (&t.hub, &t.vhost) {
                (Some(h), _) => format!("/api/hubs/{}/{action}", enc(h)),
                (None, Some(v)) => format!("/api/vhosts/{}/{action}", enc(v)),
                (None, None) => return Err("name --hub or --vhost".into()),
            };
            (Method::POST, path, None)
        }
        Cmd::Drain(h) => (
            Method::POST,
            format!("/api/hubs/{}/drain", enc(&h.hub)),
            None,
        ),
        Cmd::Redial(h) => (
            Method::POST,
            format!("/api/hubs/{}/redial", enc(&h.hub)),
            None,
        ),
        Cmd::Reload => (Method::POST, "/api/reload".into(), None),
    };
    let (status, text) = tokio::time::timeout(
        CALL_TIMEOUT,
        call(&url, token.as_deref(), method, &path, body),
    )
    .await
    .map_err(|_| format!("{url} did not answer within {CALL_TIMEOUT:?}"))??;
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
    if !(200..300).contains(&status) {
        let message = value
            .get("error")
            .and_then(Value::as_str)
            .map_or_else(|| text.trim().to_owned(), str::to_owned);
        if ctl.json {
            println!("{text}");
        }
        return Err(format!("{status}: {message}"));
    }
    if ctl.json {
        print!("{text}");
        if !text.ends_with('\n') {
            println!();
        }
        return Ok(());
    }
    print!("{}", render(&ctl.command, &value));
    Ok(())
}

/// One HTTP/1.1 request to the admin API.
async fn call(
    url: &str,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<String>,
) -> Result<(u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: the admin URL must start with http://"))?;
    let authority = rest.trim_end_matches('/');
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("cannot reach the admin API at {url}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, authority);
    if let Some(t) = token {
        req = req.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    if body.is_some() {
        req = req.header(CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// A value as a table cell.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        other => other.to_string(),
    }
}

/// Rows under headers, columns padded.
fn table(rows: &[Value], columns: &[(&str, &str)]) -> String {
    let mut cells: Vec<Vec<String>> = vec![columns.iter().map(|(h, _)| (*h).to_owned()).collect()];
    for r in rows {
        cells.push(columns.iter().map(|(_, k)| cell(&r[*k])).collect());
    }
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            cells
                .iter()
                .map(|row| row[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in cells {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

const HUB_COLUMNS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("USER", "user"),
    ("VHOST", "vhost"),
    ("STATE", "state"),
    ("CLIENTS", "clients"),
    ("UPSTREAMS", "upstreams"),
    ("CHANNELS", "channels_in_use"),
    ("POOLED", "channels_pooled"),
    ("WAITING", "waiting"),
];

fn render(command: &Cmd, v: &Value) -> String {
    let rows = |v: &Value| v.as_array().cloned().unwrap_or_default();
    match command {
        Cmd::Hubs(_) => table(&rows(v), HUB_COLUMNS),
        Cmd::Clients { .. } => table(
            &rows(v),
            &[
                ("ID", "id"),
                ("USER", "user"),
                ("VHOST", "vhost"),
                ("PEER", "peer"),
                ("TLS", "tls"),
                ("NAME", "connection_name"),
                ("PRODUCT", "product"),
                ("VERSION", "version"),
                ("STATE", "state"),
                ("CHANNELS", "channels"),
                ("BYTES_IN", "bytes_in"),
                ("BYTES_OUT", "bytes_out"),
                ("CONNECTED", "connected_at"),
                ("IDLE_S", "idle_seconds"),
            ],
        ),
        Cmd::Upstreams(_) => table(
            &rows(v),
            &[
                ("ID", "id"),
                ("USER", "user"),
                ("VHOST", "vhost"),
                ("NODE", "node"),
                ("ADDRESS", "address"),
                ("LOCAL_PORT", "local_port"),
                ("STATE", "state"),
                ("CHANNELS", "channels"),
                ("HEARTBEAT", "heartbeat"),
                ("BLOCKED", "blocked"),
                ("SINCE", "since"),
            ],
        ),
        Cmd::Close { .. } => {
            let closed = rows(&v["closed"]);
            let mut out = format!(
                "closed {} client(s) with 320 CONNECTION_FORCED - {}\n",
                closed.len(),
                cell(&v["reason"])
            );
            for c in closed {
                out.push_str(&format!("  {}\n", cell(&c)));
            }
            out
        }
        Cmd::Pause(t) | Cmd::Resume(t) if t.hub.is_none() => format!(
            "vhost {} {} (hubs: {}); paused vhosts: {}\n",
            cell(&v["vhost"]),
            if v["paused"].as_bool() == Some(true) {
                "paused"
            } else {
                "resumed"
            },
            rows(&v["hubs"])
                .iter()
                .map(cell)
                .collect::<Vec<_>>()
                .join(", "),
            rows(&v["paused_vhosts"])
                .iter()
                .map(cell)
                .collect::<Vec<_>>()
                .join(", "),
        ),
        Cmd::Reload => {
            let list = |key: &str| match rows(&v[key]).iter().map(cell).collect::<Vec<_>>() {
                names if names.is_empty() => "none".to_owned(),
                names => names.join(", "),
            };
            format!(
                "reloaded; applied: {}; needs a restart: {}\n",
                list("applied"),
                list("needs_restart")
            )
        }
        _ => table(std::slice::from_ref(v), HUB_COLUMNS),
    }
}

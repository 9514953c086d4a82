//! What operators plug into warren (issue 18): the Prometheus alert rules
//! (`packaging/prometheus/`) and the Grafana dashboard (`packaging/grafana/`).
//!
//! - every PromQL expression of both names only series warren exports, so neither can drift
//!   from `runtime/src/metrics.rs`; every alert is documented and unit-tested;
//! - `promtool check rules` and `promtool test rules` pass;
//! - a real Prometheus server (Debian's `prometheus` package) scrapes an in-process warren
//!   while lapin clients publish and consume through it, and its HTTP API shows the series the
//!   traffic implies, no password in any label, every dashboard query valid and no alert raised.
//!
//! promtool and prometheus come from Debian's `prometheus` package. Without them the tests that
//! need them skip with a message, except under `CI=true`, where that is a failure.

use anyhow::{anyhow, bail, ensure, Context, Result};
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_core::hub::HubStats;
use warren_runtime::metrics::Metrics;
use warren_tests::client::{self, percent_encode};
use warren_tests::lapin_ops::{bounded, lapin_declare, lapin_publish, LIMIT};
use warren_tests::metrics::metrics_text;
use warren_tests::{unique, wait_until, within, TestUser, Warren};

const RULES: &str = "packaging/prometheus/warren-alerts.yml";
const RULE_TESTS: &str = "packaging/prometheus/warren-alerts.test.yml";
const DASHBOARD: &str = "packaging/grafana/warren-dashboard.json";
const PACKAGING_README: &str = "packaging/README.md";
/// Series Prometheus itself adds to every scrape target that the rules may use.
const PROMETHEUS_SERIES: [&str; 1] = ["up"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(root().join(path)).with_context(|| format!("reading {path}"))
}

/// `name` on PATH; `None` (with a message) when it is missing, an error under `CI=true`.
fn tool(name: &str) -> Result<Option<PathBuf>> {
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        let why = format!(
            "{name} is not installed (scripts/test-tools.sh installs it: Debian's prometheus)"
        );
        if std::env::var("CI").as_deref() == Ok("true") {
            bail!("{why}; CI must have it");
        }
        eprintln!("SKIPPED: {why}");
    }
    Ok(found)
}

// ----- the series warren exports and the series the files name ---------------------------

/// Every series name in `/metrics`, from the `# TYPE` lines of a registry whose families have
/// all been used once (an unused labelled family is not listed at all): counters end in
/// `_total`, histograms have `_bucket`, `_sum` and `_count`.
fn exported_series() -> BTreeSet<String> {
    let metrics = Metrics::new();
    let hub = metrics.hub("user", "vhost");
    let mut stats = HubStats::default();
    stats.client_closes.insert(320, 1);
    hub.record(&HubStats::default(), &stats);
    metrics.refused("max_clients");
    metrics.login("proved");
    metrics.proof("accepted");
    let mut names = BTreeSet::new();
    for line in metrics.encode().lines() {
        let mut words = line.split(' ');
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            match kind {
                "counter" => names.insert(format!("{name}_total")),
                "histogram" => {
                    for part in ["bucket", "sum", "count"] {
                        names.insert(format!("{name}_{part}"));
                    }
                    true
                }
                _ => names.insert(name.to_owned()),
            };
        }
    }
    names
}

/// The metric names a PromQL expression selects: what is left once strings, label matchers,
/// ranges, grouping label lists, Grafana variables, numbers, keywords and function names are
/// taken out. Good enough for the expressions of these files, not a PromQL parser.
fn series_in(expr: &str) -> Vec<String> {
    /// Words followed by a list of label names.
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    /// Binary operators, modifiers, and aggregations (which may come before `by (...)`).
    const KEYWORDS: [&str; 17] = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    // Strings, then {...} and [...], which hold no brackets once strings are gone.
    let mut plain = String::new();
    let mut chars = expr.chars();
    let mut depth = 0;
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
            }
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            _ if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    let chars: Vec<char> = plain.chars().collect();
    let word_end = |i: usize| {
        (i..chars.len())
            .find(|&j| !(chars[j].is_ascii_alphanumeric() || matches!(chars[j], '_' | ':')))
            .unwrap_or(chars.len())
    };
    let mut names = Vec::new();
    let mut i = 0;
    let mut label_list = false; // the next "(...)" lists labels (after by, on, group_left...)
    while i < chars.len() {
        let c = chars[i];
        if c == '(' && label_list {
            i = (i..chars.len())
                .find(|&j| chars[j] == ')')
                .unwrap_or(chars.len())
                + 1;
            label_list = false;
        } else if c == '$' || c.is_ascii_digit() {
            i = word_end(i + 1); // a Grafana variable, a number or a duration
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let end = word_end(i);
            let w: String = chars[i..end].iter().collect();
            let next = chars[end..].iter().find(|c| !c.is_whitespace());
            if GROUPING.contains(&w.as_str()) {
                label_list = true;
            } else if next != Some(&'(') && !KEYWORDS.contains(&w.as_str()) {
                names.push(w);
            }
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// One alerting rule of the rules file, read line by line (the file's own layout).
#[derive(Debug, Default)]
struct Rule {
    name: String,
    expr: String,
    annotations: Vec<String>,
    severity: Option<String>,
}

fn alert_rules() -> Result<Vec<Rule>> {
    let text = read(RULES)?;
    let mut rules: Vec<Rule> = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    for (n, line) in lines.iter().enumerate() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("- alert:") {
            rules.push(Rule {
                name: name.trim().to_owned(),
                ..Rule::default()
            });
        }
        let Some(rule) = rules.last_mut() else {
            continue;
        };
        if let Some(v) = t.strip_prefix("expr:") {
            rule.expr = match v.trim() {
                "|" | ">" | "|-" | ">-" => lines[n + 1..]
                    .iter()
                    .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
                    .map(|l| l.trim())
                    .collect::<Vec<_>>()
                    .join(" "),
                v => v.to_owned(),
            };
        } else if let Some(v) = t.strip_prefix("severity:") {
            rule.severity = Some(v.trim().to_owned());
        } else if let Some(key) = ["summary:", "description:"]
            .into_iter()
            .find(|k| t.starts_with(k))
        {
            rule.annotations.push(key.trim_end_matches(':').to_owned());
        }
    }
    ensure!(!rules.is_empty(), "no alert in {RULES}");
    Ok(rules)
}

/// `(panel title, [PromQL])` of every panel of the dashboard.
type Panels = Vec<(String, Vec<String>)>;

/// The dashboard's panels, and its template variables' queries.
fn dashboard() -> Result<(Panels, Vec<String>)> {
    let d: Value = serde_json::from_str(&read(DASHBOARD)?).context(DASHBOARD)?;
    let mut panels = Vec::new();
    let mut stack: Vec<&Value> = d["panels"].as_array().context("panels")?.iter().collect();
    while let Some(p) = stack.pop() {
        stack.extend(p["panels"].as_array().into_iter().flatten());
        if p["type"] == "row" {
            continue;
        }
        let exprs = p["targets"].as_array().into_iter().flatten();
        let exprs = exprs.filter_map(|t| t["expr"].as_str().map(str::to_owned));
        let title = p["title"].as_str().context("a panel without a title")?;
        panels.push((title.to_owned(), exprs.collect()));
    }
    let mut variables = Vec::new();
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().or(v["query"].as_str());
            variables.push(q.context("a query variable without a query")?.to_owned());
        }
    }
    Ok((panels, variables))
}

/// The PromQL inside Grafana's `label_values(selector, label)`.
fn variable_expr(query: &str) -> Result<&str> {
    let inner = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .with_context(|| format!("unexpected variable query {query:?}"))?;
    Ok(inner.rsplit_once(',').map_or("", |(selector, _)| selector))
}

#[test]
fn dashboard_and_alerts_name_only_series_warren_exports() -> Result<()> {
    let exported = exported_series();
    assert!(exported.contains("warren_publishes_total"), "{exported:?}");
    assert!(exported.contains("warren_handshake_duration_seconds_bucket"));
    let known = |name: &String| exported.contains(name) || PROMETHEUS_SERIES.contains(&&**name);

    let (panels, variables) = dashboard()?;
    let mut exprs: Vec<(String, String)> = Vec::new();
    for (title, list) in &panels {
        exprs.extend(list.iter().map(|e| (format!("panel {title:?}"), e.clone())));
    }
    for q in &variables {
        exprs.push(("a variable".into(), variable_expr(q)?.to_owned()));
    }
    for rule in alert_rules()? {
        exprs.push((format!("alert {}", rule.name), rule.expr));
    }
    let mut unknown = Vec::new();
    let mut used = BTreeSet::new();
    for (where_, expr) in &exprs {
        let names = series_in(expr);
        if names.is_empty() && !where_.starts_with("a variable") {
            unknown.push(format!("{where_}: no series in {expr:?}"));
        }
        for name in names {
            if !known(&name) {
                unknown.push(format!("{where_}: {name} in {expr:?}"));
            }
            used.insert(name);
        }
    }
    assert!(
        unknown.is_empty(),
        "series warren does not export:\n{}\nexported: {exported:?}",
        unknown.join("\n")
    );
    // Every family warren exports is charted or alerted on.
    let unused: Vec<_> = exported
        .iter()
        .filter(|n| !used.contains(*n) && !n.ends_with("_sum") && !n.ends_with("_count"))
        .collect();
    assert!(
        unused.is_empty(),
        "exported but in no panel or alert: {unused:?}"
    );
    Ok(())
}

#[test]
fn the_promql_scanner_finds_series_and_nothing_else() {
    let expr = r#"histogram_quantile(0.99, sum by (job, le) (rate(warren_a_bucket{x=~"$v", y="by(z)"}[$__rate_interval])))
        / on (instance) group_left (user) max without (code) (warren_b_total offset 5m) > 1e3 unless up == bool 0"#;
    assert_eq!(series_in(expr), ["warren_a_bucket", "warren_b_total", "up"]);
    assert_eq!(
        variable_expr(r#"label_values(warren_clients{instance=~"$instance"}, user)"#).unwrap(),
        r#"warren_clients{instance=~"$instance"}"#
    );
}

#[test]
fn every_alert_is_documented_tested_and_explained() -> Result<()> {
    let tests = read(RULE_TESTS)?;
    let readme = read(PACKAGING_README)?;
    let mut problems = Vec::new();
    for rule in alert_rules()? {
        let n = &rule.name;
        if rule.annotations != ["summary", "description"] {
            problems.push(format!("{n}: annotations {:?}", rule.annotations));
        }
        if !matches!(
            rule.severity.as_deref(),
            Some("critical" | "warning" | "info")
        ) {
            problems.push(format!("{n}: severity {:?}", rule.severity));
        }
        if !tests.contains(&format!("alertname=\"{n}\"")) && !tests.contains(&format!(": {n}\n")) {
            problems.push(format!("{n}: no test in {RULE_TESTS}"));
        }
        if !readme.contains(&format!("`{n}`")) {
            problems.push(format!("{n}: not in {PACKAGING_README}"));
        }
    }
    for (title, _) in dashboard()?.0 {
        if !readme.contains(&format!("**{title}**")) {
            problems.push(format!(
                "panel {title:?} is not described in {PACKAGING_README}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

// ----- promtool -----------------------------------------------------------------------------

fn promtool(args: &[&str]) -> Result<()> {
    let Some(promtool) = tool("promtool")? else {
        return Ok(());
    };
    let out = Command::new(promtool)
        .args(args)
        .current_dir(root().join("packaging/prometheus"))
        .output()
        .context("running promtool")?;
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "promtool {}: {text}", args.join(" "));
    Ok(())
}

#[test]
fn alert_rules_pass_promtool_check() -> Result<()> {
    promtool(&["check", "rules", "warren-alerts.yml"])
}

#[test]
fn alert_rules_pass_their_promtool_unit_tests() -> Result<()> {
    promtool(&["test", "rules", "warren-alerts.test.yml"])
}

// ----- a real Prometheus ------------------------------------------------------------------

/// A Prometheus server of its own: loopback port, temporary configuration and storage,
/// killed and removed on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts `bin` scraping `target` every second with warren's alert rules loaded, and
    /// waits until it is ready. Tries another port if someone took the free one meanwhile.
    async fn start(bin: &Path, target: SocketAddr) -> Result<Prometheus> {
        let mut attempt = 1;
        loop {
            match Prometheus::try_start(bin, target).await {
                Err(e) if attempt < 3 && format!("{e:#}").contains("address already in use") => {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn try_start(bin: &Path, target: SocketAddr) -> Result<Prometheus> {
        let dir = std::env::temp_dir().join(unique("warren-prometheus"));
        std::fs::create_dir_all(&dir)?;
        let rules = root().join(RULES).canonicalize()?;
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files: [{rules:?}]\n\
             scrape_configs:\n  - job_name: warren\n    static_configs:\n      - targets: [\"{target}\"]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config)?;
        // A free port: bound, read and released (Prometheus takes it a moment later).
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        let mut prometheus = Prometheus { child, dir, addr };
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            if let Some(status) = prometheus.child.try_wait()? {
                bail!("prometheus exited with {status}:\n{}", prometheus.log());
            }
            if matches!(get(addr, "/-/ready").await, Ok((200, _))) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "prometheus not ready within {LIMIT:?}:\n{}",
                    prometheus.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(prometheus)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/PATH` and its `data`.
    async fn api(&self, path: &str) -> Result<Value> {
        let (status, body) = get(self.addr, &format!("/api/v1/{path}")).await?;
        let v: Value = serde_json::from_str(&body).with_context(|| format!("{status}: {body}"))?;
        ensure!(v["status"] == "success", "GET /api/v1/{path}: {body}");
        Ok(v["data"].clone())
    }

    /// The samples of an instant query: labels and value.
    async fn query(&self, promql: &str) -> Result<Vec<(Value, f64)>> {
        let data = self
            .api(&format!("query?query={}", percent_encode(promql)))
            .await?;
        let result = data["result"].as_array().cloned().unwrap_or_default();
        result
            .into_iter()
            .map(|s| {
                let value = s["value"][1].as_str().context("a sample without a value")?;
                Ok((s["metric"].clone(), value.parse()?))
            })
            .collect()
    }

    /// Waits until `promql` has exactly one sample and `ok` holds for its value.
    async fn wait_for(&self, promql: &str, want: &str, ok: impl Fn(f64) -> bool) -> Result<f64> {
        let last = std::cell::RefCell::new(None);
        let found = wait_until(LIMIT, &format!("{promql} {want}"), || {
            let (ok, last) = (&ok, &last);
            async move {
                let samples = self.query(promql).await?;
                let value = match samples.as_slice() {
                    [(_, v)] => *v,
                    _ => return Ok(None),
                };
                *last.borrow_mut() = Some(value);
                Ok(ok(value).then_some(value))
            }
        })
        .await;
        found.with_context(|| format!("last value: {:?}", last.borrow()))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GET path` over HTTP/1.0, so that the answer is never chunked: status and body.
async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    within(LIMIT, &format!("GET {path}"), async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok());
        Ok((status.context("no status")?, body.to_owned()))
    })
    .await?
}

/// Messages published and consumed through warren, and their body size.
const MESSAGES: usize = 200;
const BODY: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_sees_the_traffic_and_no_password() -> Result<()> {
    let Some(bin) = tool("prometheus")? else {
        return Ok(());
    };
    bounded(async {
        let user = TestUser::create("warren-test-observability").await?;
        let warren = Warren::start()?;
        let target = warren.metrics_addr().context("metrics are on in tests")?;
        let prometheus = Prometheus::start(&bin, target).await?;
        let p = &prometheus;
        let run = async {
            p.wait_for(r#"up{job="warren"}"#, "== 1", |v| v == 1.0)
                .await?;
            let u = format!(r#"user="{}""#, user.name);

            // Two clients with a channel each; Prometheus sees the hub's counters at 0 first,
            // so that the rates below have a before and an after.
            let url = warren.amqp_url(&user.name, &user.password, "/");
            let publisher = client::lapin_connect(&url).await?;
            let consumer = client::lapin_connect(&url).await?;
            let pch = publisher.create_channel().await?;
            let cch = consumer.create_channel().await?;
            let queue = unique("e2e-observability");
            lapin_declare(&pch, &queue).await?;
            p.wait_for(&format!("sum(warren_clients{{{u}}})"), "== 2", |v| v == 2.0)
                .await?;
            p.wait_for(&format!("sum(warren_channels_open{{{u}}})"), "== 2", |v| {
                v == 2.0
            })
            .await?;
            p.wait_for(
                &format!("sum(warren_publishes_total{{{u}}})"),
                "== 0",
                |v| v == 0.0,
            )
            .await?;

            let body = client::pattern(BODY, 18);
            for _ in 0..MESSAGES {
                lapin_publish(&pch, &queue, &body).await?;
            }
            let mut deliveries = cch
                .basic_consume(
                    queue.as_str().into(),
                    "observability".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            for i in 0..MESSAGES {
                let d = within(LIMIT, &format!("delivery {i}"), deliveries.next())
                    .await?
                    .context("the consumer stream ended")??;
                d.ack(BasicAckOptions::default()).await?;
            }

            // A login with a wrong password is refused, and counted.
            let wrong = format!("wrong-{}", unique("pw"));
            let wrong_url = warren.amqp_url(&user.name, &wrong, "/");
            let refused = client::lapin_try_connect(&wrong_url).await?;
            ensure!(refused.is_err(), "a wrong password got in");

            let n = MESSAGES as f64;
            let eq = |want: f64| move |v: f64| v == want;
            let at_least = |want: f64| move |v: f64| v >= want;
            p.wait_for(
                &format!("sum(warren_publishes_total{{{u}}})"),
                "== N",
                eq(n),
            )
            .await?;
            p.wait_for(
                &format!("sum(warren_deliveries_total{{{u}}})"),
                "== N",
                eq(n),
            )
            .await?;
            for direction in [
                "client_to_proxy",
                "proxy_to_upstream",
                "upstream_to_proxy",
                "proxy_to_client",
            ] {
                let d = format!(r#"{u}, direction="{direction}""#);
                let bytes = n * BODY as f64;
                p.wait_for(
                    &format!("sum(warren_bytes_total{{{d}}})"),
                    ">= N × body",
                    at_least(bytes),
                )
                .await?;
                // A message is at least a method, a header and a body frame.
                p.wait_for(
                    &format!("sum(warren_frames_total{{{d}}})"),
                    ">= 3N",
                    at_least(3.0 * n),
                )
                .await?;
                let rate = format!("sum(rate(warren_bytes_total{{{d}}}[1m]))");
                p.wait_for(&rate, "> 0", |v| v > 0.0).await?;
            }
            for series in ["warren_publishes_total", "warren_deliveries_total"] {
                let rate = format!("sum(rate({series}{{{u}}}[1m]))");
                p.wait_for(&rate, "> 0", |v| v > 0.0).await?;
            }
            p.wait_for(&format!("sum(warren_clients{{{u}}})"), "== 2", eq(2.0))
                .await?;
            p.wait_for(
                &format!("sum(warren_channels_open{{{u}}})"),
                "== 2",
                eq(2.0),
            )
            .await?;
            p.wait_for(
                &format!("sum(warren_upstreams{{{u}}})"),
                ">= 1",
                at_least(1.0),
            )
            .await?;
            p.wait_for("sum(warren_hubs)", "== 1", eq(1.0)).await?;
            let refusals = r#"sum(warren_refused_connections_total{reason="login"})"#;
            p.wait_for(refusals, ">= 1", at_least(1.0)).await?;
            let proofs = r#"sum(warren_login_proofs_total{result="refused"})"#;
            p.wait_for(proofs, ">= 1", at_least(1.0)).await?;
            let proved = r#"sum(warren_client_logins_total{how="proved"})"#;
            p.wait_for(proved, ">= 1", at_least(1.0)).await?;
            let handshakes = "sum(warren_handshake_duration_seconds_count)";
            p.wait_for(handshakes, ">= 2", at_least(2.0)).await?;
            p.wait_for(
                "sum(warren_event_feed_up)",
                "== 0 (no events_user)",
                eq(0.0),
            )
            .await?;

            no_password_anywhere(p, &warren, &[&user.password, &wrong]).await?;
            // The list the dashboard test checks against has every name this traffic produced.
            let exported = exported_series();
            let stored = p.api("label/__name__/values").await?;
            for name in stored.as_array().context("names")? {
                let name = name.as_str().context("a name")?;
                let missing = name.starts_with("warren_") && !exported.contains(name);
                ensure!(!missing, "{name} is missing from exported_series()");
            }
            dashboard_queries_evaluate(p, &user.name).await?;
            rules_evaluate_and_stay_quiet(p).await?;

            cch.close(200, "bye".into()).await?;
            pch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await?;
            publisher.close(200, "bye".into()).await?;
            consumer.close(200, "bye".into()).await?;
            Ok(())
        };
        let result: Result<()> = run.await;
        result.map_err(|e| anyhow!("{e:#}\nprometheus log:\n{}", prometheus.log()))
    })
    .await
}

/// Neither password is in `/metrics` nor in any label name or value Prometheus stored.
async fn no_password_anywhere(p: &Prometheus, warren: &Warren, secrets: &[&str]) -> Result<()> {
    let mut texts = vec![metrics_text(warren).await?];
    let names = p.api("labels").await?;
    for name in names.as_array().context("label names")? {
        let name = name.as_str().context("a label name")?;
        texts.push(name.to_owned());
        texts.push(p.api(&format!("label/{name}/values")).await?.to_string());
    }
    let series = format!("series?match[]={}", percent_encode(r#"{job="warren"}"#));
    texts.push(p.api(&series).await?.to_string());
    for secret in secrets {
        ensure!(
            texts.iter().all(|t| !t.contains(secret)),
            "a password is in the metrics or their labels"
        );
    }
    Ok(())
}

/// Every dashboard query, with Grafana's variables filled in, is valid PromQL here, and the
/// per-hub panels show this test's user.
async fn dashboard_queries_evaluate(p: &Prometheus, user: &str) -> Result<()> {
    let (panels, _) = dashboard()?;
    for (title, exprs) in panels {
        for expr in exprs {
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*")
                .replace("$user", ".*")
                .replace("$vhost", ".*");
            let samples = p
                .query(&expr)
                .await
                .with_context(|| format!("panel {title:?}"))?;
            if title == "Clients by hub" {
                let mine = samples.iter().find(|(m, _)| m["user"] == user);
                ensure!(mine.map(|s| s.1) == Some(2.0), "{title}: {samples:?}");
            }
        }
    }
    Ok(())
}

/// Prometheus evaluated every alert rule without an error, and none is pending or firing for
/// a healthy warren that saw one wrong password.
async fn rules_evaluate_and_stay_quiet(p: &Prometheus) -> Result<()> {
    let expected = alert_rules()?.len();
    let groups = wait_until(LIMIT, "every rule to be evaluated", || async {
        let data = p.api("rules").await?;
        let rules: Vec<Value> = data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let done = rules.len() == expected && rules.iter().all(|r| r["health"] != "unknown");
        Ok(done.then_some(rules))
    })
    .await?;
    for r in &groups {
        ensure!(
            r["health"] == "ok",
            "rule {} failed: {}",
            r["name"],
            r["lastError"]
        );
    }
    let alerts = p.api("alerts").await?;
    ensure!(
        alerts["alerts"].as_array().is_some_and(Vec::is_empty),
        "alerts raised by a healthy warren: {alerts}"
    );
    Ok(())
}

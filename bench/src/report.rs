//! The one JSON line a run prints, and the sampling of watched processes.

use crate::amqp::Endpoint;
use crate::opts::{Cli, Watch};
use crate::procfs;
use serde_json::{Map, Number, Value};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Fields of the result line, filled in as the scenario runs.
#[derive(Debug)]
pub struct Report {
    fields: Map<String, Value>,
    scenario: &'static str,
    started: Instant,
    cpu_at_start: f64,
}

impl Report {
    /// A report with the scenario, target, URL (without password), start time and `--tag`s.
    #[must_use]
    pub fn new(cli: &Cli) -> Report {
        let mut r = Report {
            fields: Map::new(),
            scenario: cli.scenario.name(),
            started: Instant::now(),
            cpu_at_start: procfs::self_cpu(),
        };
        let (label, url) = match Endpoint::parse(&cli.common.url) {
            Ok(e) => (e.default_label().to_owned(), e.display()),
            Err(_) => ("unknown".to_owned(), String::new()),
        };
        r.set("scenario", r.scenario);
        r.set("target", cli.common.target.clone().unwrap_or(label));
        r.set("url", url);
        r.set(
            "unix_time",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        );
        r.set("errors", 0u64);
        for (k, v) in &cli.common.tag {
            r.fields.insert(k.clone(), tag_value(v));
        }
        r
    }

    /// The scenario's name.
    #[must_use]
    pub fn scenario(&self) -> &'static str {
        self.scenario
    }

    /// Sets one field.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.fields.insert(key.to_owned(), value.into());
    }

    /// Sets a float field rounded to `decimals` places (NaN and infinities become null).
    pub fn set_f(&mut self, key: &str, value: f64, decimals: i32) {
        let p = 10f64.powi(decimals);
        let v = Number::from_f64((value * p).round() / p).map_or(Value::Null, Value::Number);
        self.fields.insert(key.to_owned(), v);
    }

    /// Adds `n` to the `errors` count and keeps the first error text.
    pub fn errors(&mut self, n: u64, first: Option<String>) {
        let before = self
            .fields
            .get("errors")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        self.set("errors", before + n);
        if let Some(text) = first {
            if !self.fields.contains_key("first_error") {
                self.set("first_error", text);
            }
        }
    }

    /// Marks the run as failed as a whole.
    pub fn fatal(&mut self, text: &str) {
        self.errors(1, None);
        self.set("fatal", text);
    }

    /// Adds the load generator's own CPU and wall time.
    pub fn finish(&mut self) {
        let wall = self.started.elapsed().as_secs_f64();
        self.set_f("client_cpu_s", procfs::self_cpu() - self.cpu_at_start, 2);
        self.set_f("wall_s", wall, 2);
    }

    /// The JSON line.
    #[must_use]
    pub fn to_json_line(&self) -> String {
        Value::Object(self.fields.clone()).to_string()
    }
}

fn tag_value(v: &str) -> Value {
    if let Ok(i) = v.parse::<i64>() {
        return i.into();
    }
    if let Ok(f) = v.parse::<f64>() {
        if let Some(n) = Number::from_f64(f) {
            return Value::Number(n);
        }
    }
    match v {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(v.to_owned()),
    }
}

/// The `--watch`ed processes, sampled at the start and end of a measured phase.
#[derive(Debug)]
pub struct Watched {
    watches: Vec<(Watch, Option<procfs::Sample>)>,
}

impl Watched {
    /// Resets the peak RSS of each watched process and takes its first sample.
    #[must_use]
    pub fn start(watches: &[Watch]) -> Watched {
        Watched {
            watches: watches
                .iter()
                .map(|w| {
                    procfs::reset_peak(w.pid);
                    (w.clone(), procfs::sample(w.pid))
                })
                .collect(),
        }
    }

    /// Current samples of the watched processes, by name.
    #[must_use]
    pub fn now(&self) -> Vec<(String, Option<procfs::Sample>)> {
        self.watches
            .iter()
            .map(|(w, _)| (w.name.clone(), procfs::sample(w.pid)))
            .collect()
    }

    /// The first sample of each watched process, by name.
    #[must_use]
    pub fn baseline(&self) -> Vec<(String, Option<procfs::Sample>)> {
        self.watches
            .iter()
            .map(|(w, s)| (w.name.clone(), *s))
            .collect()
    }

    /// Ends the phase: `NAME_cpu_s`, `NAME_cpu_us_per_op` (over `ops`), `NAME_rss_kb`,
    /// `NAME_hwm_kb` (peak during the phase), or `NAME_gone` if the process disappeared.
    pub fn finish(&self, report: &mut Report, ops: u64) {
        for (w, start) in &self.watches {
            let end = procfs::sample(w.pid);
            match (start, end) {
                (Some(s), Some(e)) => {
                    let cpu = e.cpu_s - s.cpu_s;
                    report.set_f(&format!("{}_cpu_s", w.name), cpu, 2);
                    if ops > 0 {
                        report.set_f(
                            &format!("{}_cpu_us_per_op", w.name),
                            cpu * 1e6 / ops as f64,
                            2,
                        );
                    }
                    report.set(&format!("{}_rss_kb", w.name), e.rss_kb);
                    report.set(&format!("{}_hwm_kb", w.name), e.hwm_kb);
                }
                _ => {
                    report.set(&format!("{}_gone", w.name), true);
                    report.errors(
                        1,
                        Some(format!("watched process {} ({}) is gone", w.name, w.pid)),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_keep_their_types() {
        assert_eq!(tag_value("3"), Value::from(3));
        assert_eq!(tag_value("0.5"), Value::from(0.5));
        assert_eq!(tag_value("true"), Value::Bool(true));
        assert_eq!(tag_value("on"), Value::from("on"));
    }
}

//! Reading warren's `/metrics` in tests: the page, and sums of the samples of one series
//! whose labels include given pairs.

use crate::Warren;
use anyhow::{ensure, Context, Result};

/// The sum of the samples of `name` in warren's `/metrics` whose labels include every pair
/// of `labels` (0 when there is none). Counters carry their `_total` suffix in `name`.
pub async fn metric(warren: &Warren, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    Ok(sum_samples(&metrics_text(warren).await?, name, labels))
}

/// `GET /metrics` of `warren`: the Prometheus text.
pub async fn metrics_text(warren: &Warren) -> Result<String> {
    let addr = warren
        .metrics_addr()
        .context("metrics are enabled in tests")?;
    let page = crate::http::get(addr, "/metrics").await?;
    ensure!(page.status == 200, "GET /metrics: {page:?}");
    Ok(page.body)
}

/// [`sum_samples`] of series that count things, as an integer.
#[must_use]
pub fn count(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    sum_samples(text, name, labels) as u64
}

/// Sums the samples of `name` in Prometheus text whose labels include all of `labels`.
#[must_use]
pub fn sum_samples(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let found = parse_labels(label_text);
        let matches = labels
            .iter()
            .all(|(k, v)| found.iter().any(|(fk, fv)| fk == k && fv == v));
        if matches {
            sum += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}

/// `a="x",b="y\"z"` → `[("a", "x"), ("b", "y\"z")]`, unescaping `\\`, `\"` and `\n`.
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() || chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                other => value.push(other),
            }
        }
        out.push((key.trim_start_matches(',').trim().to_owned(), value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_matching_samples() {
        let text = "# HELP x y\n\
                    warren_hubs 2\n\
                    warren_clients{user=\"a\",vhost=\"/\"} 1\n\
                    warren_clients{user=\"b\",vhost=\"prod\\\"ion\"} 3\n\
                    warren_clients{user=\"a\",vhost=\"v2\"} 4\n";
        assert_eq!(super::sum_samples(text, "warren_hubs", &[]), 2.0);
        assert_eq!(
            super::sum_samples(text, "warren_clients", &[("user", "a")]),
            5.0
        );
        assert_eq!(
            super::sum_samples(text, "warren_clients", &[("vhost", "prod\"ion")]),
            3.0
        );
        assert_eq!(
            super::sum_samples(text, "warren_clients", &[("user", "a"), ("vhost", "v2")]),
            4.0
        );
        assert_eq!(super::count(text, "warren_clients", &[("user", "c")]), 0);
        assert_eq!(super::sum_samples(text, "warren_nothing", &[]), 0.0);
    }
}

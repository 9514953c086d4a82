//! Log output: `tracing` events to stderr, as human-readable lines or one JSON object per line
//! (for log shippers).
//!
//! [`LogFormat`] is declared here and re-exported by [`crate::config`], so that this module
//! does not depend on the configuration (the configuration uses [`filter`] to check
//! `log_level`).

use std::fmt;
use std::sync::OnceLock;
use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("expected `human` or `json`, got `{s}`")),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        })
    }
}

/// Parses a `tracing` filter such as `info` or `warren_runtime=debug,info`; shared by the
/// configuration check and [`init`] so that a bad `log_level` is reported before start-up.
pub fn filter(directives: &str) -> Result<EnvFilter, String> {
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| format!("`{directives}` is not a log filter: {e}"))
}

/// The subscriber's stack: a reloadable filter, then a reloadable formatter.
type Filtered = Layered<reload::Layer<EnvFilter, Registry>, Registry>;
/// A formatter over the filtered registry (human or JSON, writing to stderr or a test's sink).
type Formatter = Box<dyn Layer<Filtered> + Send + Sync>;

/// Swaps the installed subscriber's filter and format (see [`reconfigure`]).
struct Handles {
    filter: reload::Handle<EnvFilter, Registry>,
    format: reload::Handle<Formatter, Filtered>,
    ansi: bool,
    /// `RUST_LOG`, which outranks `log_level` for the process's life.
    rust_log: Option<String>,
}

/// The installed subscriber's handles, for [`reconfigure`].
static HANDLES: OnceLock<Handles> = OnceLock::new();

/// Installs the process-wide subscriber. `RUST_LOG`, when set, replaces `level`, so that a
/// developer can turn on debug output without editing the configuration. The error names
/// whichever of the two was at fault.
pub fn init(level: &str, format: LogFormat) -> Result<(), String> {
    let rust_log = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let (source, directives) = match &rust_log {
        Some(v) => ("RUST_LOG", v.clone()),
        None => ("log_level", level.to_owned()),
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (subscriber, filter, format) = subscriber(&directives, format, ansi, std::io::stderr)
        .map_err(|e| format!("{source}: {e}"))?;
    tracing::subscriber::set_global_default(subscriber).map_err(|e| e.to_string())?;
    let _ = HANDLES.set(Handles {
        filter,
        format,
        ansi,
        rust_log,
    });
    Ok(())
}

/// Changes the installed subscriber's level and format (a reload); nothing is logged twice or
/// lost. `RUST_LOG`, if it was set at start-up, still outranks `level`. Without an installed
/// subscriber (tests, the simulation) it does nothing.
pub fn reconfigure(level: &str, format: LogFormat) -> Result<(), String> {
    let Some(h) = HANDLES.get() else {
        return Ok(());
    };
    let directives = h.rust_log.as_deref().unwrap_or(level);
    h.filter
        .reload(filter(directives)?)
        .map_err(|e| format!("log_level: {e}"))?;
    h.format
        .reload(formatter(format, h.ansi, std::io::stderr))
        .map_err(|e| format!("log_format: {e}"))
}

/// The subscriber [`init`] installs, writing to `writer`, with the handles that change its
/// filter and format.
#[allow(clippy::type_complexity)]
fn subscriber<W>(
    directives: &str,
    format: LogFormat,
    ansi: bool,
    writer: W,
) -> Result<
    (
        impl Subscriber + Send + Sync,
        reload::Handle<EnvFilter, Registry>,
        reload::Handle<Formatter, Filtered>,
    ),
    String,
>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let (filter, filter_handle) = reload::Layer::new(filter(directives)?);
    let (format, format_handle) = reload::Layer::new(formatter(format, ansi, writer));
    let subscriber = Registry::default().with(filter).with(format);
    Ok((subscriber, filter_handle, format_handle))
}

/// Lines for people or one JSON object per line, to `writer`.
fn formatter<W>(format: LogFormat, ansi: bool, writer: W) -> Formatter
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Human => Box::new(layer),
        LogFormat::Json => Box::new(layer.json()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Collects everything written, for inspection.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    fn log_with(directives: &str, format: LogFormat) -> String {
        let out = Captured::default();
        let (subscriber, _, _) = subscriber(directives, format, false, out.clone()).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(user = "guest", "hub started");
            tracing::debug!("detail");
        });
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn human_lines_respect_the_level() {
        let out = log_with("info", LogFormat::Human);
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(
            out.contains("INFO") && out.contains("hub started") && out.contains("user=\"guest\"")
        );
        let out = log_with("warren_runtime=debug", LogFormat::Human);
        assert!(out.contains("DEBUG") && out.contains("detail"), "{out}");
    }

    #[test]
    fn json_is_one_object_per_line() {
        let out = log_with("info", LogFormat::Json);
        let line = out.lines().next().unwrap();
        assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
        assert!(line.contains(r#""level":"INFO""#), "{line}");
        assert!(line.contains(r#""message":"hub started""#), "{line}");
        assert!(line.contains(r#""user":"guest""#), "{line}");
    }

    #[test]
    fn bad_filters_are_rejected() {
        let e = filter("warren=loud").unwrap_err();
        assert!(e.contains("warren=loud"), "{e}");
        assert!(subscriber("=", LogFormat::Human, false, Captured::default()).is_err());
    }

    #[test]
    fn level_and_format_change_while_installed() {
        let out = Captured::default();
        let (subscriber, filter_handle, format_handle) =
            subscriber("info", LogFormat::Human, false, out.clone()).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!("hidden");
            filter_handle.reload(filter("debug").unwrap()).unwrap();
            format_handle
                .reload(formatter(LogFormat::Json, false, out.clone()))
                .unwrap();
            tracing::debug!("shown");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("hidden"), "{text}");
        let line = text.lines().next().unwrap();
        assert!(line.starts_with('{') && line.contains("shown"), "{text}");
    }
}

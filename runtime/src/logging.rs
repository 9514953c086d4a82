//! Log output: `tracing` events to stderr, as human-readable lines or one JSON object per line
//! (for log shippers).

use crate::config::LogFormat;
use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Parses a `tracing` filter such as `info` or `warren_runtime=debug,info`; shared by the
/// configuration check and [`init`] so that a bad `log_level` is reported before start-up.
pub fn filter(directives: &str) -> Result<EnvFilter, String> {
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| format!("`{directives}` is not a log filter: {e}"))
}

/// Installs the process-wide subscriber. `RUST_LOG`, when set, replaces `level`, so that a
/// developer can turn on debug output without editing the configuration. The error names
/// whichever of the two was at fault.
pub fn init(level: &str, format: LogFormat) -> Result<(), String> {
    let (source, directives) = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => ("RUST_LOG", v),
        _ => ("log_level", level.to_owned()),
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let subscriber = subscriber(&directives, format, ansi, std::io::stderr)
        .map_err(|e| format!("{source}: {e}"))?;
    tracing::subscriber::set_global_default(subscriber).map_err(|e| e.to_string())
}

/// The subscriber [`init`] installs, writing to `writer`.
fn subscriber<W>(
    directives: &str,
    format: LogFormat,
    ansi: bool,
    writer: W,
) -> Result<Box<dyn Subscriber + Send + Sync>, String>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(directives)?)
        .with_ansi(ansi)
        .with_writer(writer);
    Ok(match format {
        LogFormat::Human => Box::new(builder.finish()),
        LogFormat::Json => Box::new(builder.json().finish()),
    })
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
        let subscriber = subscriber(directives, format, false, out.clone()).unwrap();
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
}

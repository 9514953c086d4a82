//! Live reload (B16): on SIGHUP or `POST /api/reload` the settings are read again (flags,
//! variables and the file, as at start-up) and validated first — a bad file changes nothing,
//! and the error names the key. What can change while clients are connected takes effect for
//! what starts from now on (new clients, channels, broker connections and handshakes, log
//! output); TLS certificates and keys are read again, so a rotated certificate is used by the
//! next TLS handshake. Settings that need a restart (listen addresses, threads, the event
//! feed, the admin API's listener and token) keep their running value and are reported.

use crate::config::{changed_settings, Config};
use crate::ctx::{Ctx, Live};
use crate::msg::GateMsg;
use crate::net::Network;
use std::sync::Arc;

pub use crate::ctx::ReloadSource;
pub use crate::msg::ReloadReport;

/// Settings a reload applies without a restart.
const LIVE: &[&str] = &[
    "upstream",
    "client_heartbeat",
    "frame_max",
    "channel_max",
    "max_clients",
    "max_hubs",
    "handshake_timeout",
    "client_queue_bytes",
    "slow_client_timeout",
    "max_message_size",
    "client_buffer_bytes",
    "max_upstreams_per_hub",
    "max_channels_per_upstream",
    "placement",
    "upstream_heartbeat",
    "connect_timeout",
    "backoff_initial",
    "backoff_max",
    "upstream_idle_timeout",
    "auth_cache_ttl",
    "credentials_ttl",
    "recycling",
    "pool_size",
    "pool_idle_timeout",
    "extra_exchange_types",
    "drain_timeout",
    "log_level",
    "log_format",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "upstream_ca",
    "upstream_cert",
    "upstream_key",
    "upstream_verify",
    "upstream_server_name",
    "pause_timeout",
];

/// Settings that keep their running value until a restart: what is bound or started once
/// (listen addresses, threads, the event feed, the admin API). Every setting is in this list or in [`LIVE`]
/// (a test checks it).
const RESTART: &[&str] = &[
    "listen",
    "tls_listen",
    "reuse_port",
    "proxy_protocol",
    "metrics",
    "worker_threads",
    "events_user",
    "events_password",
    "events_vhost",
    "admin_listen",
    "admin_token",
    "admin_token_file",
    "admin_allow_no_token",
];

/// Reloads a running server's settings (see the module documentation).
pub struct Reloader<N: Network> {
    ctx: Arc<Ctx<N>>,
}

impl<N: Network> Reloader<N> {
    pub(crate) fn new(ctx: Arc<Ctx<N>>) -> Self {
        Reloader { ctx }
    }

    /// Reads the settings again and applies them; the error says why nothing changed.
    pub fn reload(&self) -> Result<ReloadReport, String> {
        reload(&self.ctx)
    }
}

/// Reads the settings from the server's source and applies them.
pub(crate) fn reload<N: Network>(ctx: &Ctx<N>) -> Result<ReloadReport, String> {
    let source = ctx
        .reload_source
        .get()
        .ok_or("this server was started without a source to reload its settings from")?;
    apply(ctx, source()?)
}

/// Puts `new` in force, but for the settings that need a restart.
pub(crate) fn apply<N: Network>(ctx: &Ctx<N>, new: Config) -> Result<ReloadReport, String> {
    let old = ctx.live();
    let (applied, needs_restart): (Vec<&'static str>, Vec<&'static str>) =
        changed_settings(&old.config, &new)
            .into_iter()
            .partition(|key| LIVE.contains(key));
    debug_assert!(needs_restart.iter().all(|key| RESTART.contains(key)));
    let effective = Config {
        listen: old.config.listen,
        tls_listen: old.config.tls_listen,
        reuse_port: old.config.reuse_port,
        proxy_protocol: old.config.proxy_protocol,
        metrics: old.config.metrics,
        worker_threads: old.config.worker_threads,
        events: old.config.events.clone(),
        admin_listen: old.config.admin_listen,
        admin_token: old.config.admin_token.clone(),
        admin_allow_no_token: old.config.admin_allow_no_token,
        ..new
    };
    // TLS files are read again even when their paths did not change: that is a rotation.
    let live = Live::load(effective).map_err(|e| e.to_string())?;
    crate::logging::reconfigure(&live.config.log_level, live.config.log_format)?;
    ctx.set_live(live);
    if let Some(gate) = ctx.gate.get() {
        let _ = gate.send(GateMsg::Reconfigure);
    }
    let report = ReloadReport {
        applied,
        needs_restart,
    };
    tracing::info!(%report, "settings reloaded");
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn every_setting_is_live_or_needs_a_restart() {
        for key in crate::config::setting_keys() {
            assert!(
                LIVE.contains(&key) != RESTART.contains(&key),
                "{key} must be in exactly one of LIVE and RESTART (src/reload.rs)"
            );
        }
    }

    #[test]
    fn changes_are_told_apart() {
        let d = Config::default();
        let all = Config {
            listen: "127.0.0.1:1".parse().unwrap(),
            metrics: None,
            worker_threads: 7,
            max_clients: 1,
            ..Config::default()
        };
        let changed = changed_settings(&d, &all);
        assert_eq!(
            changed,
            ["listen", "metrics", "max_clients", "worker_threads"]
        );
        let (live, restart): (Vec<_>, Vec<_>) = changed.into_iter().partition(|k| LIVE.contains(k));
        assert_eq!(live, ["max_clients"]);
        assert_eq!(restart, ["listen", "metrics", "worker_threads"]);
    }
}

//! The tests of the configuration: URLs, layering of the three sources, that every setting
//! has a flag, a variable and a file key, the example file, and the error messages and
//! `--help` (snapshots in `snapshots/`, named after this module's path `config::tests`).

use super::cli::{command, CONFIG_VAR};
use super::settings::{env_var, Settings};
use super::*;
use std::collections::HashMap;
use std::path::PathBuf;
use warren_core::credentials::Secret;

#[test]
fn parses_upstream_urls() {
    let u = UpstreamUrl::parse("amqp://127.0.0.1:5672").unwrap();
    assert_eq!((u.tls, u.host.as_str(), u.port), (false, "127.0.0.1", 5672));
    let u = UpstreamUrl::parse("amqps://broker.example/").unwrap();
    assert_eq!(
        (u.tls, u.host.as_str(), u.port),
        (true, "broker.example", 5671)
    );
    let u = UpstreamUrl::parse("amqp://[::1]:5999").unwrap();
    assert_eq!((u.host.as_str(), u.port), ("::1", 5999));
    assert_eq!(u.to_string(), "amqp://[::1]:5999");
    assert!(UpstreamUrl::parse("http://x").is_err());
    assert!(UpstreamUrl::parse("amqp://guest:guest@x/").is_err());
    assert!(UpstreamUrl::parse("amqp://x:notaport").is_err());
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn run(cmd: Result<Command, ConfigError>) -> Config {
    match cmd {
        Ok(Command::Run(config)) => *config,
        other => panic!("expected a configuration, got {other:?}"),
    }
}

/// A file in this test process's own temporary folder.
fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir = temp_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn temp_dir() -> PathBuf {
    std::env::temp_dir().join(format!("warren-config-tests-{}", std::process::id()))
}

/// A configuration in which every setting differs from its default.
fn sample() -> Config {
    Config {
        listen: "0.0.0.0:6000".parse().unwrap(),
        reuse_port: true,
        proxy_protocol: true,
        upstream: "amqps://broker.internal:5999,amqp://[fd00::2]:5672"
            .parse()
            .unwrap(),
        metrics: None,
        listener_tls: Some(ListenerTls {
            cert: "/tls/cert.pem".into(),
            key: "/tls/key.pem".into(),
            client_ca: Some("/tls/clients.pem".into()),
        }),
        tls_listen: Some("127.0.0.1:5674".parse().unwrap()),
        upstream_tls: UpstreamTls {
            ca: Some("/tls/broker-ca.pem".into()),
            cert: Some("/tls/warren.pem".into()),
            key: Some("/tls/warren.key".into()),
            verify: false,
            server_name: Some("rabbit.internal".into()),
        },
        client_heartbeat: 15,
        frame_max: 65_536,
        channel_max: 100,
        max_clients: 10,
        max_hubs: 3,
        max_upstreams_per_hub: 2,
        max_channels_per_upstream: 500,
        placement: Placement::Spread,
        upstream_heartbeat: 20,
        connect_timeout: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(10),
        handshake_timeout: Duration::from_secs(3),
        client_queue_bytes: 1 << 20,
        slow_client_timeout: Duration::from_secs(4),
        max_message_size: 1 << 20,
        client_buffer_bytes: 2 << 20,
        recycling: false,
        pool_size: 8,
        pool_idle_timeout: Duration::from_secs(90),
        upstream_idle_timeout: Duration::from_secs(120),
        auth_cache_ttl: Duration::ZERO,
        credentials_ttl: Duration::from_secs(7),
        events: Some(Credentials {
            user: "monitor".into(),
            password: Secret::new("m0n"),
            vhost: "ops".into(),
        }),
        drain_timeout: Duration::from_secs(45),
        admin_listen: Some("127.0.0.1:16000".parse().unwrap()),
        admin_token: Some("t0ken".into()),
        admin_allow_no_token: true,
        pause_timeout: Duration::from_secs(12),
        worker_threads: 3,
        extra_exchange_types: vec!["x-delayed-message".into(), "x-consistent-hash".into()],
        log_level: "warren_runtime=debug".into(),
        log_format: LogFormat::Json,
    }
}

/// Secrets: `Settings::from_config` leaves them out, so the samples set them by hand.
const NEVER_SHOWN: [&str; 2] = ["admin_token", "admin_token_file"];

const SAMPLE_TOML: &str = r#"
listen = "0.0.0.0:6000"
upstream = ["amqps://broker.internal:5999", "amqp://[fd00::2]:5672"]
metrics = "off"
client_heartbeat = 15
frame_max = 65536
channel_max = 100
max_clients = 10
max_hubs = 3
handshake_timeout = "3s"
client_queue_bytes = 1048576
slow_client_timeout = "4s"
max_message_size = 1048576
client_buffer_bytes = 2097152
max_upstreams_per_hub = 2
max_channels_per_upstream = 500
placement = "spread"
upstream_heartbeat = 20
connect_timeout = "2s"
backoff_initial = "100ms"
backoff_max = "10s"
upstream_idle_timeout = "2m"
auth_cache_ttl = "0s"
credentials_ttl = "7s"
events_user = "monitor"
events_password = "m0n"
events_vhost = "ops"
recycling = false
reuse_port = true
proxy_protocol = true
pool_size = 8
pool_idle_timeout = "1m 30s"
extra_exchange_types = ["x-delayed-message", "x-consistent-hash"]
drain_timeout = "45s"
admin_listen = "127.0.0.1:16000"
admin_token = "t0ken"
admin_allow_no_token = true
pause_timeout = "12s"
worker_threads = 3
log_level = "warren_runtime=debug"
log_format = "json"
tls_cert = "/tls/cert.pem"
tls_key = "/tls/key.pem"
tls_client_ca = "/tls/clients.pem"
tls_listen = "127.0.0.1:5674"
upstream_ca = "/tls/broker-ca.pem"
upstream_cert = "/tls/warren.pem"
upstream_key = "/tls/warren.key"
upstream_verify = false
upstream_server_name = "rabbit.internal"
"#;

#[test]
fn defaults_apply_without_any_source() {
    assert_eq!(run(load_from(["warren"], no_env)), Config::default());
    Config::default().validate().unwrap();
}

#[test]
fn the_sample_changes_every_setting() {
    let defaults = Settings::from_config(&Config::default()).shown();
    let sample = Settings::from_config(&sample()).shown();
    for ((key, default), (_, value)) in defaults.iter().zip(&sample) {
        if NEVER_SHOWN.contains(key) {
            continue;
        }
        assert!(value.is_some() && value != default, "{key} = {value:?}");
    }
}

#[test]
fn every_setting_has_a_flag_and_a_variable() {
    let shown = Settings::from_config(&sample()).shown();
    let mut args = vec!["warren".to_owned(), "--admin-token".into(), "t0ken".into()];
    let mut env = HashMap::from([(env_var("admin_token"), "t0ken".to_owned())]);
    for (key, value) in shown {
        if NEVER_SHOWN.contains(&key) {
            continue;
        }
        let value = value.unwrap();
        args.push(format!("--{}", key.replace('_', "-")));
        args.push(value.clone());
        env.insert(env_var(key), value);
    }
    assert_eq!(run(load_from(&args, no_env)), sample());
    let from_env = run(load_from(["warren"], |k| env.get(k).cloned()));
    assert_eq!(from_env, sample());
}

#[test]
fn every_setting_has_a_file_key() {
    let path = temp_file("sample.toml", SAMPLE_TOML);
    assert_eq!(from_file(&path).unwrap(), sample());
    let args = ["warren", "--config", path.to_str().unwrap()];
    assert_eq!(run(load_from(args, no_env)), sample());
    let path = path.to_str().unwrap().to_owned();
    let from_env = run(load_from(["warren"], |k| {
        (k == CONFIG_VAR).then(|| path.clone())
    }));
    assert_eq!(from_env, sample());
}

#[test]
fn flags_beat_variables_beat_the_file_beats_defaults() {
    let file = temp_file(
        "layers.toml",
        "frame_max = 8192\nmax_clients = 5\nclient_heartbeat = 10\n",
    );
    let env: HashMap<String, String> = [
        ("WARREN_FRAME_MAX", "16384"),
        ("WARREN_MAX_CLIENTS", "7"),
        ("WARREN_CONFIG", file.to_str().unwrap()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config = run(load_from(["warren", "--frame-max", "32768"], |k| {
        env.get(k).cloned()
    }));
    let expected = Config {
        frame_max: 32_768,
        max_clients: 7,
        client_heartbeat: 10,
        ..Config::default()
    };
    assert_eq!(config, expected);
}

#[test]
fn metrics_can_be_turned_off_and_lists_split_on_commas() {
    let args = [
        "warren",
        "--metrics",
        "off",
        "--extra-exchange-types",
        "a, b,",
    ];
    let config = run(load_from(args, no_env));
    assert_eq!(config.metrics, None);
    assert_eq!(config.extra_exchange_types, ["a", "b"]);

    let args = ["warren", "--upstream", "amqp://r1, amqp://r2:5673,"];
    let config = run(load_from(args, no_env));
    let nodes: Vec<String> = config
        .upstream
        .urls()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(nodes, ["amqp://r1:5672", "amqp://r2:5673"]);
    // In the file, one string may hold the list too.
    let file = temp_file(
        "one_string.toml",
        "upstream = \"amqp://r1,amqp://r2:5673\"\n",
    );
    assert_eq!(from_file(&file).unwrap().upstream, config.upstream);
}

#[test]
fn check_config_names_its_file() {
    let cmd = load_from(
        ["warren", "check-config", "/etc/warren/warren.toml"],
        no_env,
    );
    assert_eq!(
        cmd.unwrap(),
        Command::CheckConfig("/etc/warren/warren.toml".into())
    );
}

/// The error for one combination of flags, variables and file, with the temporary folder
/// masked.
fn error_text(case: &str, args: &[&str], env: &[(&str, &str)], file: Option<&str>) -> String {
    let mut argv = vec!["warren".to_owned()];
    if let Some(contents) = file {
        let path = temp_file(&format!("{case}.toml"), contents);
        argv.extend(["--config".to_owned(), path.display().to_string()]);
    }
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    match load_from(&argv, |k| env.get(k).cloned()) {
        Ok(cmd) => panic!("{case}: expected an error, got {cmd:?}"),
        Err(e) => e
            .to_string()
            .replace(&temp_dir().display().to_string(), "<tmp>"),
    }
}

#[test]
fn error_messages_name_the_culprit() {
    let file = |case: &str, toml: &str| error_text(case, &[], &[], Some(toml));
    let cases = [
        ("flag_not_a_number", error_text("f1", &["--frame-max", "lots"], &[], None)),
        ("flag_bad_choice", error_text("f2", &["--placement", "sideways"], &[], None)),
        ("flag_unknown", error_text("f3", &["--no-such-flag"], &[], None)),
        ("env_not_a_number", error_text("e1", &[], &[("WARREN_FRAME_MAX", "lots")], None)),
        ("env_bad_duration", error_text("e2", &[], &[("WARREN_CONNECT_TIMEOUT", "5 parsecs")], None)),
        ("env_bad_metrics", error_text("e3", &[], &[("WARREN_METRICS", "localhost")], None)),
        ("env_url_with_credentials", error_text("e4", &[], &[("WARREN_UPSTREAM", "amqp://guest:guest@rabbit/")], None)),
        ("env_bad_bool", error_text("e5", &[], &[("WARREN_RECYCLING", "maybe")], None)),
        ("file_missing", error_text("x", &["--config", "/nonexistent/warren.toml"], &[], None)),
        ("file_not_toml", file("not_toml", "frame_max = \n")),
        ("file_unknown_key", file("unknown_key", "frmae_max = 8192\n")),
        ("file_wrong_type", file("wrong_type", "frame_max = \"8192\"\n")),
        ("file_bad_duration", file("bad_duration", "backoff_max = \"30 parsecs\"\n")),
        ("file_duration_without_unit", file("unitless", "drain_timeout = 30\n")),
        ("frame_max_too_small", file("v1", "frame_max = 1024\n")),
        ("channel_max_zero", file("v2", "channel_max = 0\n")),
        ("max_clients_zero", file("v3", "max_clients = 0\n")),
        ("max_hubs_zero", file("v3b", "max_hubs = 0\n")),
        ("connect_timeout_zero", file("v4", "connect_timeout = \"0s\"\n")),
        ("backoff_max_below_initial", file("v5", "backoff_initial = \"2s\"\nbackoff_max = \"1s\"\n")),
        ("queue_below_frame", file("v6", "client_queue_bytes = 4096\n")),
        ("buffer_below_message", file("v7", "client_buffer_bytes = 1000\nmax_message_size = 2000\n")),
        ("metrics_on_listen", file("v8", "listen = \"127.0.0.1:5673\"\nmetrics = \"127.0.0.1:5673\"\n")),
        ("empty_exchange_type", file("v9", "extra_exchange_types = [\"\"]\n")),
        ("bad_log_level", file("v10", "log_level = \"warren=loud\"\n")),
        ("tls_cert_without_key", file("t1", "tls_cert = \"c.pem\"\n")),
        ("tls_key_without_cert", file("t2", "tls_key = \"k.pem\"\n")),
        ("tls_client_ca_alone", file("t3", "tls_client_ca = \"ca.pem\"\n")),
        ("upstream_cert_without_key", file("t4", "upstream = \"amqps://r\"\nupstream_ca = \"ca.pem\"\nupstream_cert = \"c.pem\"\n")),
        ("upstream_key_without_cert", file("t5", "upstream = \"amqps://r\"\nupstream_ca = \"ca.pem\"\nupstream_key = \"k.pem\"\n")),
        ("upstream_ca_without_amqps", file("t6", "upstream_ca = \"ca.pem\"\n")),
        ("amqps_bad_server_name", file("t8", "upstream = \"amqps://rabbit\"\nupstream_ca = \"ca.pem\"\nupstream_server_name = \"not a name\"\n")),
        ("upstream_list_empty", file("u1", "upstream = []\n")),
        ("upstream_list_bad_node", file("u2", "upstream = [\"amqp://r1\", \"http://r2\"]\n")),
    ];
    let report: String = cases
        .iter()
        .map(|(case, text)| format!("## {case}\n{}\n", text.trim_end()))
        .collect::<Vec<_>>()
        .join("\n");
    insta::assert_snapshot!(report);
}

#[test]
fn validate_reports_the_key_of_a_programmatic_config() {
    let config = Config {
        max_hubs: 0,
        ..Config::default()
    };
    let err = config.validate().unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Invalid {
                key: "max_hubs",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn help_lists_every_setting_with_its_variable_and_default() {
    let help = command().render_long_help().to_string();
    for (key, default) in Settings::from_config(&Config::default()).shown() {
        assert!(
            help.contains(&format!("--{} <", key.replace('_', "-"))),
            "{key}"
        );
        assert!(help.contains(&format!("[env: {}]", env_var(key))), "{key}");
        if let Some(d) = default.filter(|d| !d.is_empty()) {
            assert!(
                help.contains(&format!("[env: {}] [default: {d}]", env_var(key))),
                "{key}"
            );
        }
    }
    insta::assert_snapshot!(help);
}

/// `# key = value` lines of the example file, uncommented.
fn example_settings() -> String {
    include_str!("../../../warren.example.toml")
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| {
            l.split_once(" = ")
                .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_example_file_documents_every_key_with_its_default() {
    let as_is = temp_file("example.toml", include_str!("../../../warren.example.toml"));
    assert_eq!(from_file(&as_is).unwrap(), Config::default());
    let example: Settings = toml::from_str(&example_settings()).unwrap();
    let defaults = Settings::from_config(&Config::default()).shown();
    for ((key, default), (_, shown)) in defaults.iter().zip(example.shown()) {
        assert!(shown.is_some(), "{key} is missing from warren.example.toml");
        if default.is_some() {
            assert_eq!(
                &shown, default,
                "{key} in warren.example.toml is not the default"
            );
        }
    }
}

//! Loading: flags > `WARREN_*` environment > TOML file > defaults. The command line
//! ([`Command`], `check-config`), [`load`] and [`from_file`], and the two views of a
//! configuration that a reload needs ([`setting_keys`], [`changed_settings`]).
//!
//! Kept apart from `settings` because this is the only part that knows about the process
//! (its arguments and environment) and about clap's command around the settings.

use super::settings::{env_var, Settings};
use super::{Config, ConfigError};
use clap::{CommandFactory, FromArgMatches};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What the command line asks for.
#[derive(Debug, PartialEq)]
pub enum Command {
    /// Run the proxy with this (validated) configuration.
    Run(Box<Config>),
    /// `warren check-config FILE`: validate the file (see [`from_file`]) and exit.
    CheckConfig(PathBuf),
}

/// The variable that names the configuration file when `--config` is not given.
pub(super) const CONFIG_VAR: &str = "WARREN_CONFIG";

/// Reads the process's arguments and `WARREN_*` environment (and the file they name).
pub fn load() -> Result<Command, ConfigError> {
    load_from(std::env::args_os(), |name| std::env::var(name).ok())
}

/// [`load`] with the arguments (program name first) and the environment passed in, so that
/// tests do not depend on the process's own.
pub fn load_from<I, T>(
    args: I,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Command, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = command()
        .try_get_matches_from(args)
        .map_err(ConfigError::Usage)?;
    let cli = Cli::from_arg_matches(&matches).map_err(ConfigError::Usage)?;
    if let Some(Sub::CheckConfig { file }) = cli.command {
        return Ok(Command::CheckConfig(file));
    }
    let from_env = Settings::from_env(&env)?;
    let from_file = match cli.config.or_else(|| env(CONFIG_VAR).map(PathBuf::from)) {
        Some(path) => Settings::read(&path)?,
        None => Settings::default(),
    };
    let config = cli.settings.or(from_env).or(from_file).build()?;
    Ok(Command::Run(Box::new(config)))
}

/// Every setting's key, in the order of `--help`.
#[must_use]
pub fn setting_keys() -> Vec<&'static str> {
    Settings::default()
        .shown()
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

/// The keys whose values differ between two configurations (a reload's changes), in the
/// order of `--help`. Passwords are compared, never shown.
#[must_use]
pub fn changed_settings(old: &Config, new: &Config) -> Vec<&'static str> {
    let shown_old = Settings::from_config(old).shown();
    let shown_new = Settings::from_config(new).shown();
    let mut changed: Vec<&'static str> = shown_old
        .into_iter()
        .zip(shown_new)
        .filter(|((_, a), (_, b))| a != b)
        .map(|((key, _), _)| key)
        .collect();
    // The one secret that is never shown.
    if old.admin_token != new.admin_token {
        changed.push("admin_token");
    }
    changed
}

/// One TOML file over the defaults, validated: what `warren check-config FILE` checks.
pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
    Settings::read(path)?.build()
}

/// The command line, with each setting's variable and default appended to its help (computed
/// from [`Config::default`], so `--help` cannot drift from the code).
pub(super) fn command() -> clap::Command {
    let defaults: HashMap<&str, Option<String>> = Settings::from_config(&Config::default())
        .shown()
        .into_iter()
        .collect();
    Cli::command().mut_args(|arg| {
        let Some(default) = defaults.get(arg.get_id().as_str()) else {
            return arg;
        };
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        let env = env_var(arg.get_id().as_str());
        let default = match default.as_deref() {
            Some("") | None => String::new(),
            Some(d) => format!(" [default: {d}]"),
        };
        arg.help(format!("{help} [env: {env}]{default}"))
    })
}

#[derive(Debug, clap::Parser)]
#[command(
    name = "warren",
    version,
    about = "AMQP 0-9-1 proxy: many short-lived client connections share a few broker connections.",
    long_about = None,
    args_conflicts_with_subcommands = true,
    after_help = "Precedence: flags > WARREN_* variables > the --config file > defaults. \
                  Durations take units (500ms, 30s, 5m); sizes are in bytes."
)]
pub(super) struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// TOML file with settings (keys as the flags, with `_`) [env: WARREN_CONFIG]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Validates a configuration file: prints `ok`, or the problem naming the key and exits 1.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
}

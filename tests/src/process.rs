//! The real `warren` binary as a process: built by cargo for the tests that need it (they run
//! in the `warren-tests` package, whose integration tests cargo does not build it for),
//! started with exactly the settings a test gives, stopped with signals, and measured from
//! `/proc` (its peak memory).

use crate::lapin_ops::LIMIT;
use crate::unique;
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `warren` binary of this build, freshly built. Cargo builds a package's binaries only
/// for that package's own integration tests, so this one (`warren-tests`) asks cargo for it
/// once per test process — a no-op when it is current — in the same target folder and profile
/// as the test itself.
pub fn warren_binary() -> Result<PathBuf> {
    static BINARY: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| build_warren().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!("{e}"))
}

/// Builds the binary (see [`warren_binary`]) before a test's own upper bound starts: a
/// compile, or a wait for cargo's lock held by another build, is not the test's time.
pub async fn prepare_binary() -> Result<()> {
    tokio::task::spawn_blocking(warren_binary).await?.map(drop)
}

fn build_warren() -> Result<PathBuf> {
    // target/<profile>/deps/operations-<hash>
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("the test binary is not in <target>/<profile>/deps")?
        .to_owned();
    let target_dir = profile_dir.parent().context("no target folder")?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_owned(),
        Some(other) => other.to_owned(),
        None => bail!("no profile folder in {}", exe.display()),
    };
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(&workspace)
        .args([
            "build",
            "--quiet",
            "-p",
            "warren-runtime",
            "--bin",
            "warren",
        ])
        .arg("--profile")
        .arg(&profile)
        .arg("--target-dir")
        .arg(target_dir)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cargo:?} build"))?;
    ensure!(
        out.status.success(),
        "cargo build of the warren binary failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = profile_dir.join("warren");
    ensure!(bin.is_file(), "{} was not built", bin.display());
    Ok(bin)
}

/// A port of 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .is_ok()
}

/// A `warren` process of this test: killed (SIGKILL) if the test ends without it having
/// exited; its standard error goes to a file that [`Process::stderr`] reads.
pub struct Process {
    child: Child,
    stderr_path: PathBuf,
}

impl Process {
    /// Starts the binary with `args` and exactly the `WARREN_*` variables in `env` (the test's
    /// own environment does not leak settings in) — and, unless the test names `admin_listen`
    /// itself, the admin API on an ephemeral port, so that warrens of tests running at once do
    /// not compete for its default port.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Result<Process> {
        let bin = warren_binary()?;
        let stderr_path = std::env::temp_dir().join(format!("{}.log", unique("warren-process")));
        let stderr = std::fs::File::create(&stderr_path)?;
        let mut cmd = Command::new(bin);
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("WARREN_") {
                cmd.env_remove(var);
            }
        }
        let names_admin = args.iter().any(|a| a.starts_with("--admin-listen"))
            || env.iter().any(|(k, _)| *k == "WARREN_ADMIN_LISTEN");
        if !names_admin {
            cmd.env("WARREN_ADMIN_LISTEN", "127.0.0.1:0");
        }
        cmd.env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = cmd.spawn().context("starting warren")?;
        Ok(Process { child, stderr_path })
    }

    /// What the process wrote to standard error so far.
    pub fn stderr(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.stderr_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits until it accepts connections on `port`; fails if it exits first.
    pub async fn wait_listening(&mut self, port: u16) -> Result<()> {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "warren exited with {status} before listening on {port}: {}",
                    self.stderr()
                );
            }
            if listening(port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "warren did not listen on {port} within {LIMIT:?}: {}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process's peak resident memory so far, in KiB (`VmHWM` in `/proc/<pid>/status`).
    pub fn peak_rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM in /proc/<pid>/status")
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) -> Result<()> {
        self.signal("TERM")
    }

    /// Sends the signal `name` (`TERM`, `INT`, ...).
    pub fn signal(&self, name: &str) -> Result<()> {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()?;
        ensure!(status.success(), "kill -{name} failed: {status}");
        Ok(())
    }

    /// Waits for the process to exit, at most `limit` (an upper bound, not a measure).
    pub async fn wait_exit(&mut self, limit: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("warren did not exit within {limit:?}: {}", self.stderr());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then the exit status.
    pub async fn stop(mut self) -> Result<ExitStatus> {
        self.terminate()?;
        self.wait_exit(LIMIT).await
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

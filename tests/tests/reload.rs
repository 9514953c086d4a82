//! Live reload (B16) with the real binary: SIGHUP re-reads the configuration file; what can
//! change live applies to the next client while the connected ones keep working; a bad file
//! changes nothing; a TLS certificate is rotated without dropping anyone; plain and TLS
//! clients have listeners of their own at once.

use anyhow::{ensure, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use warren_tests::client::{self, lapin_reply_code, lapin_try_connect};
use warren_tests::lapin_ops::{bounded, lapin_declare, lapin_round_trip, LIMIT};
use warren_tests::process::{free_port, warren_binary, Process};
use warren_tests::tls::{amqprs_try_connect_tls, connector, TestPki};
use warren_tests::{broker, unique, wait_until, TestUser};

/// A configuration file of a test, rewritten as the test goes.
struct ConfigFile {
    path: PathBuf,
}

impl ConfigFile {
    fn new(name: &str) -> Result<ConfigFile> {
        let path = std::env::temp_dir().join(unique(&format!("warren-reload-{name}")) + ".toml");
        Ok(ConfigFile { path })
    }

    fn write(&self, text: &str) -> Result<()> {
        std::fs::write(&self.path, text).with_context(|| format!("writing {}", self.path.display()))
    }

    fn arg(&self) -> &str {
        self.path.to_str().unwrap_or_default()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sends SIGHUP and waits for the `count`-th reload line (applied or refused) in the log.
async fn reload(p: &Process, count: usize) -> Result<String> {
    p.signal("HUP")?;
    wait_until(LIMIT, "the reload to be logged", || {
        let log = p.stderr();
        async move {
            let done =
                log.matches("settings reloaded").count() + log.matches("reload refused").count();
            Ok((done >= count).then_some(log))
        }
    })
    .await
}

/// Runs `warren ctl reload` against the admin API on `port`: its exit code and output.
async fn ctl_reload(port: u16) -> Result<(i32, String)> {
    let mut cmd = std::process::Command::new(warren_binary()?);
    cmd.args([
        "ctl",
        "--admin-url",
        &format!("http://127.0.0.1:{port}"),
        "reload",
    ]);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.code().unwrap_or(-1), text))
}

fn url(port: u16, user: &TestUser) -> String {
    client::amqp_url(
        SocketAddr::from(([127, 0, 0, 1], port)),
        &user.name,
        &user.password,
        "/",
    )
}

/// `max_clients` lowered by a reload refuses the next client while the connected one keeps
/// working; a file with a bad value is refused whole and names the key; a changed listen
/// address is reported as needing a restart and the old one keeps serving.
#[tokio::test]
async fn sighup_applies_limits_to_the_next_client_and_refuses_a_bad_file() -> Result<()> {
    bounded(async {
        let user = TestUser::create("warren-test-reload").await?;
        let (port, admin) = (free_port()?, free_port()?);
        let file = ConfigFile::new("limits")?;
        let base = format!("listen = \"127.0.0.1:{port}\"\nmetrics = \"off\"\n");
        file.write(&format!("{base}max_clients = 10\n"))?;
        let admin_listen = format!("127.0.0.1:{admin}");
        let mut p = Process::spawn(
            &["--config", file.arg(), "--admin-listen", &admin_listen],
            &[],
        )?;
        p.wait_listening(port).await?;
        let first = client::lapin_connect(&url(port, &user)).await?;
        let ch = first.create_channel().await?;
        let queue = unique("reload-limits");
        lapin_declare(&ch, &queue).await?;

        file.write(&format!("{base}max_clients = 1\n"))?;
        let log = reload(&p, 1).await?;
        ensure!(
            log.contains("max_clients"),
            "the report names the change: {log}"
        );
        let refused = lapin_try_connect(&url(port, &user)).await?;
        let e = refused
            .err()
            .context("a second client was let in past max_clients = 1")?;
        ensure!(lapin_reply_code(&e) == Some(530), "refused with 530: {e}");
        ensure!(
            e.to_string().contains("max_clients"),
            "the text names the limit: {e}"
        );
        lapin_round_trip(&ch, &queue, "still served").await?;

        file.write(&format!("{base}max_clients = \"lots\"\n"))?;
        let log = reload(&p, 2).await?;
        ensure!(
            log.contains("reload refused") && log.contains("max_clients"),
            "a bad file is refused, naming the key: {log}"
        );
        let still = lapin_try_connect(&url(port, &user)).await?;
        ensure!(still.is_err(), "the bad file changed the limit");

        // The same through the admin API, as `warren ctl reload` asks for it.
        let (code, out) = ctl_reload(admin).await?;
        ensure!(
            code == 1 && out.contains("max_clients"),
            "warren ctl reload of a bad file: {out}"
        );
        let other = free_port()?;
        file.write(&format!(
            "listen = \"127.0.0.1:{other}\"\nmetrics = \"off\"\nmax_clients = 10\n"
        ))?;
        let (code, out) = ctl_reload(admin).await?;
        ensure!(
            code == 0 && out.contains("applied: max_clients; needs a restart: listen"),
            "a new listen address needs a restart: {out}"
        );
        let second = client::lapin_connect(&url(port, &user)).await?;
        ensure!(second.status().connected(), "the old address serves");
        second.close(200, "bye".into()).await?;
        first.close(200, "bye".into()).await?;
        broker::delete_queue("/", &queue).await?;
        let status = p.stop().await?;
        ensure!(status.code() == Some(0), "exit {status:?}");
        Ok(())
    })
    .await
}

/// Copies `pki`'s server certificate and key to the files warren is configured with.
fn install(pki: &TestPki, dir: &Path) -> Result<()> {
    for (from, to) in [("server.pem", "cert.pem"), ("server.key", "key.pem")] {
        std::fs::copy(pki.path(from), dir.join(to))
            .with_context(|| format!("installing {from}"))?;
    }
    Ok(())
}

/// A TLS client that trusts `pki`'s CA: connects, or says why not.
async fn tls_connect(
    addr: SocketAddr,
    pki: &TestPki,
    user: &TestUser,
) -> Result<std::result::Result<amqprs::connection::Connection, amqprs::error::Error>> {
    let c = connector(&pki.path("ca.pem"), None)?;
    amqprs_try_connect_tls(addr, "localhost", c, &user.name, &user.password, "/").await
}

/// Plain clients on `listen` and TLS clients on `tls_listen` at once; SIGHUP after the
/// certificate files are replaced makes the next TLS handshake use the new certificate, and
/// the TLS client connected before keeps working.
#[tokio::test]
async fn sighup_rotates_the_tls_certificate_without_dropping_anyone() -> Result<()> {
    bounded(async {
        let user = TestUser::create("warren-test-rotate").await?;
        let (old, new) = (TestPki::new("rotate-old")?, TestPki::new("rotate-new")?);
        let dir = std::env::temp_dir().join(unique("warren-rotate"));
        std::fs::create_dir_all(&dir)?;
        install(&old, &dir)?;
        let (port, tls_port) = (free_port()?, free_port()?);
        let file = ConfigFile::new("rotate")?;
        file.write(&format!(
            "listen = \"127.0.0.1:{port}\"\ntls_listen = \"127.0.0.1:{tls_port}\"\n\
             metrics = \"off\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            dir.join("cert.pem").display(),
            dir.join("key.pem").display()
        ))?;
        let mut p = Process::spawn(&["--config", file.arg()], &[])?;
        p.wait_listening(tls_port).await?;
        let tls_addr = SocketAddr::from(([127, 0, 0, 1], tls_port));
        let before = tls_connect(tls_addr, &old, &user)
            .await?
            .map_err(|e| anyhow::anyhow!("the TLS client was refused: {e}"))?;
        let plain = client::lapin_connect(&url(port, &user)).await?;

        install(&new, &dir)?;
        reload(&p, 1).await?;
        let after = tls_connect(tls_addr, &new, &user)
            .await?
            .map_err(|e| anyhow::anyhow!("a client trusting the new CA was refused: {e}"))?;
        let stale = tls_connect(tls_addr, &old, &user).await?;
        ensure!(stale.is_err(), "the old certificate is still served");
        for conn in [&before, &after] {
            let ch = conn.open_channel(None).await?;
            ch.close().await?;
        }
        let ch = plain.create_channel().await?;
        let queue = unique("reload-plain");
        lapin_declare(&ch, &queue).await?;
        lapin_round_trip(&ch, &queue, "plain beside TLS").await?;
        broker::delete_queue("/", &queue).await?;
        before.close().await?;
        after.close().await?;
        plain.close(200, "bye".into()).await?;
        let _ = std::fs::remove_dir_all(&dir);
        let status = p.stop().await?;
        ensure!(status.code() == Some(0), "exit {status:?}");
        Ok(())
    })
    .await
}

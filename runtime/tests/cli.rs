//! The `warren` binary: help, `check-config`, configuration errors, and a drain on SIGTERM.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn warren() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
    // The test's own environment must not leak settings in.
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("WARREN_") {
            cmd.env_remove(var);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd
}

fn output(cmd: &mut Command) -> (Option<i32>, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (status.code(), text(stdout), text(stderr))
}

fn config_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warren-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn help_documents_the_options() {
    let (code, stdout, _) = output(warren().arg("--help"));
    assert_eq!(code, Some(0));
    assert!(stdout.contains("--frame-max <BYTES>"), "{stdout}");
    assert!(
        stdout.contains("[env: WARREN_FRAME_MAX] [default: 131072]"),
        "{stdout}"
    );
    assert!(stdout.contains("check-config"), "{stdout}");
}

#[test]
fn check_config_accepts_a_good_file() {
    let path = config_file("good.toml", "frame_max = 65536\ndrain_timeout = \"10s\"\n");
    let (code, stdout, stderr) = output(warren().arg("check-config").arg(&path));
    assert_eq!((code, stdout.as_str()), (Some(0), "ok\n"), "{stderr}");
}

#[test]
fn check_config_names_the_bad_key() {
    let path = config_file("small-frames.toml", "frame_max = 1024\n");
    let (code, stdout, stderr) = output(warren().arg("check-config").arg(&path));
    assert_eq!(code, Some(1));
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("small-frames.toml: frame_max: must be at least 4096"),
        "{stderr}"
    );

    let path = config_file("typo.toml", "frmae_max = 8192\n");
    let (code, _, stderr) = output(warren().arg("check-config").arg(&path));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("unknown field `frmae_max`"), "{stderr}");
}

#[test]
fn check_config_loads_the_tls_files() {
    let path = config_file(
        "tls.toml",
        "tls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"\n",
    );
    let (code, _, stderr) = output(warren().arg("check-config").arg(&path));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("/nonexistent/cert.pem"), "{stderr}");
}

#[test]
fn bad_variables_and_flags_are_reported() {
    let (code, _, stderr) = output(warren().env("WARREN_FRAME_MAX", "lots"));
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("WARREN_FRAME_MAX: invalid value `lots`"),
        "{stderr}"
    );

    let (code, _, stderr) = output(warren().args(["--placement", "sideways"]));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--placement"), "{stderr}");
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut child = warren()
        .args(["--listen", "127.0.0.1:0", "--metrics", &metrics])
        .args(["--admin-listen", "off"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Up once the health endpoint answers (or the process died trying).
    let health = loop {
        if let Ok(mut s) = TcpStream::connect(&metrics) {
            s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            break answer;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            panic!("warren exited with {status} before serving: {stderr}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(
        health.starts_with("HTTP/1.1 200 OK") && health.ends_with("ok"),
        "{health}"
    );

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
}

#[test]
fn a_port_in_use_is_named_with_its_setting() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (code, _, stderr) = output(
        warren()
            .args(["--listen", &addr.to_string(), "--metrics", "off"])
            .args(["--admin-listen", "off", "--log-format", "human"]),
    );
    assert_eq!(code, Some(1), "{stderr}");
    let want = format!(
        "cannot listen on {addr} (listen): port {} is in use",
        addr.port()
    );
    assert!(stderr.contains(&want), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line, not a stack: {stderr}");

    let (code, _, stderr) = output(
        warren()
            .args(["--listen", "127.0.0.1:0", "--metrics", &addr.to_string()])
            .args(["--admin-listen", "off"]),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("(metrics): port"), "{stderr}");
    assert!(stderr.contains("--metrics"), "{stderr}");

    // The flag is named as it is typed, with dashes.
    let (code, _, stderr) = output(
        warren()
            .args(["--listen", "127.0.0.1:0", "--metrics", "off"])
            .args(["--admin-listen", &addr.to_string()]),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("(admin_listen): port"), "{stderr}");
    assert!(stderr.contains("--admin-listen"), "{stderr}");
}

//! The files under `packaging/` that can be checked without installing them: the systemd unit
//! passes `systemd-analyze verify` (Debian package `systemd`; the test is skipped with a
//! message when the tool is missing, unless `CI` is set).
//!
//! `systemd-analyze verify` works without systemd running (as in a container). It also checks
//! that `ExecStart=`'s program exists, and `/usr/local/bin/warren` is not installed on a
//! development machine, so the unit is verified twice: as it is, where that one complaint is
//! allowed when the program is indeed missing, and as a copy whose `ExecStart=` names an
//! executable that exists, which must pass without a word.

use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The program the unit starts.
const UNIT_PROGRAM: &str = "/usr/local/bin/warren";

fn unit_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("packaging")
        .join("warren.service")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// `systemd-analyze`, if it can be run here.
fn systemd_analyze() -> Option<&'static str> {
    Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| "systemd-analyze")
}

/// Runs `systemd-analyze verify UNIT`: its exit status and what it said (stdout and stderr).
fn verify(tool: &str, unit: &Path) -> Result<(bool, Vec<String>)> {
    let out = Command::new(tool)
        .arg("verify")
        .arg(unit)
        .output()
        .with_context(|| format!("running {tool} verify {}", unit.display()))?;
    let said = String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    Ok((out.status.success(), said))
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() -> Result<()> {
    let Some(tool) = systemd_analyze() else {
        ensure!(
            !in_ci(),
            "systemd-analyze is not installed, and CI is set: install the Debian package \
             systemd (apt-get install systemd) so that packaging/warren.service is checked"
        );
        eprintln!(
            "SKIPPED: systemd-analyze is not installed (Debian package systemd), so \
             packaging/warren.service was not verified"
        );
        return Ok(());
    };
    let unit = unit_path();
    let text =
        std::fs::read_to_string(&unit).with_context(|| format!("reading {}", unit.display()))?;
    ensure!(
        text.lines()
            .any(|l| l.starts_with(&format!("ExecStart={UNIT_PROGRAM} "))),
        "the unit's ExecStart= no longer starts {UNIT_PROGRAM}: update this test"
    );

    // 1. The unit as it is. Only the missing program may be reported, and only if it is
    //    missing indeed.
    let (ok, said) = verify(tool, &unit)?;
    let program_missing = !Path::new(UNIT_PROGRAM).exists();
    let missing_program =
        format!("Command {UNIT_PROGRAM} is not executable: No such file or directory");
    let other: Vec<&String> = said
        .iter()
        .filter(|l| !(program_missing && l.ends_with(&missing_program)))
        .collect();
    ensure!(
        other.is_empty() && (ok || program_missing),
        "systemd-analyze verify {} (exit {}): {said:#?}",
        unit.display(),
        if ok { "0" } else { "non-zero" }
    );

    // 2. The same unit starting a program that exists (this test's own executable): not a
    //    word, exit 0.
    verify_stand_in(tool, &text, "warren.service")
}

/// The template for two instances sharing the listen address (the README's zero-downtime
/// restart under systemd), verified as its instance `warren@1.service`.
#[test]
fn the_template_unit_passes_systemd_analyze_verify() -> Result<()> {
    let Some(tool) = systemd_analyze() else {
        ensure!(!in_ci(), "systemd-analyze is not installed, and CI is set");
        eprintln!("SKIPPED: systemd-analyze is not installed (Debian package systemd)");
        return Ok(());
    };
    let unit = unit_path().with_file_name("warren@.service");
    let text =
        std::fs::read_to_string(&unit).with_context(|| format!("reading {}", unit.display()))?;
    for setting in [
        "WARREN_REUSE_PORT=true",
        "WARREN_METRICS=",
        "WARREN_ADMIN_LISTEN=",
    ] {
        ensure!(text.contains(setting), "the template sets {setting}");
    }
    verify_stand_in(tool, &text, "warren@1.service")
}

/// Verifies `text` as the unit `name` with `ExecStart=` naming an executable that exists (this
/// test's own): it must pass without a word.
fn verify_stand_in(tool: &str, text: &str, name: &str) -> Result<()> {
    let dir = std::env::temp_dir().join(warren_tests::unique("warren-unit"));
    std::fs::create_dir_all(&dir)?;
    let stand_in = std::env::current_exe()?;
    let copy = dir.join(name);
    std::fs::write(
        &copy,
        text.replace(
            &format!("ExecStart={UNIT_PROGRAM} "),
            &format!("ExecStart={} ", stand_in.display()),
        ),
    )?;
    let result = verify(tool, &copy);
    let _ = std::fs::remove_dir_all(&dir);
    let (ok, said) = result?;
    ensure!(
        ok && said.is_empty(),
        "systemd-analyze verify of {name} with ExecStart={} (exit {}): {said:#?}",
        stand_in.display(),
        if ok { "0" } else { "non-zero" }
    );
    Ok(())
}

/// The image cannot be built here (no container daemon, no registry), so what can be checked
/// without one is: the build stage copies every member of the workspace (cargo refuses to
/// build a workspace with one missing) and builds the `warren` binary the tests use.
#[test]
fn the_dockerfile_copies_every_workspace_member() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml"))?;
    let members_line = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .context("the root Cargo.toml lists its members")?;
    let members: Vec<&str> = members_line.split('"').skip(1).step_by(2).collect();
    ensure!(members.len() >= 5, "members parsed: {members:?}");
    let dockerfile = std::fs::read_to_string(root.join("packaging").join("Dockerfile"))?;
    for m in &members {
        ensure!(
            dockerfile
                .lines()
                .any(|l| l.trim() == format!("COPY {m} {m}")),
            "packaging/Dockerfile does not copy workspace member {m}"
        );
    }
    ensure!(
        dockerfile.contains("cargo build --release --locked --bin warren"),
        "the image builds the warren binary"
    );
    Ok(())
}

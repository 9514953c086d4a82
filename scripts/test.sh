#!/usr/bin/env bash
# Runs every test of the workspace: installs and starts a local RabbitMQ if needed
# (scripts/rabbitmq.sh) and the other tools the tests drive (scripts/test-tools.sh: client
# libraries of other languages, Prometheus), then
#   1. the doctests, if the workspace has any (nextest does not run doctests);
#   2. every test except those that disturb the broker, in parallel;
#   3. the broker-disturbing tests (named *broker_disturbing*), one at a time, after the others,
#      with a three-node cluster (scripts/rabbitmq-cluster.sh) up for the cluster tests among them.
# Tests run with cargo-nextest (one process per test). When it is missing it is installed first
# (`cargo install cargo-nextest --locked`); if that fails, the same tests run with `cargo test`.
# Extra arguments are passed to both nextest runs (e.g. `--profile ci`, `--retries 0`).
# With CI=true, insta never writes snapshots and a missing snapshot fails.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "==> $*"; }
trap 'rc=$?; echo "[test.sh] ERROR: \"${BASH_COMMAND}\" failed with status ${rc} (line ${LINENO})." >&2' ERR

if [ -n "${CI:-}" ] && [ "${CI}" != "false" ] && [ "${CI}" != "0" ]; then
    export CI=true
    export INSTA_UPDATE=no
fi

command -v cargo >/dev/null 2>&1 ||
    { echo "[test.sh] ERROR: cargo is not installed: install Rust with rustup (https://rustup.rs), then rerun." >&2; exit 1; }

scripts/rabbitmq.sh ensure
scripts/test-tools.sh

# Every test that stops, restarts or alarms the broker has this in its name.
DISTURBING=broker_disturbing

runner=nextest
if ! cargo nextest --version >/dev/null 2>&1; then
    say "cargo-nextest is not installed: installing it (cargo install cargo-nextest --locked; a few minutes, once)"
    if cargo install cargo-nextest --locked; then
        # Where cargo installed it (rustup puts ~/.cargo/bin on PATH, but not in every shell).
        export PATH="${CARGO_INSTALL_ROOT:-${CARGO_HOME:-$HOME/.cargo}}/bin:$PATH"
    fi
    if ! cargo nextest --version >/dev/null 2>&1; then
        say "cargo-nextest could not be installed: running the tests with cargo test instead"
        runner=cargo
    fi
fi

status=0

# The cluster tests (tests/tests/cluster.rs, also broker-disturbing) need a three-node RabbitMQ
# cluster next to the main broker: started before the broker-disturbing pass (so its start-up
# is not inside a test's time limit) and stopped after it.
cluster_up() {
    say "three-node RabbitMQ cluster for the cluster tests (scripts/rabbitmq-cluster.sh start)"
    scripts/rabbitmq-cluster.sh start || status=1
}
cluster_down() {
    say "stopping the cluster (scripts/rabbitmq-cluster.sh stop)"
    scripts/rabbitmq-cluster.sh stop || status=1
}

# Library doc comments with code blocks (other than ```text) are doctests.
if grep -rqE '^\s*//[/!]\s*```\s*(rust|no_run|should_panic|compile_fail)?\s*$' \
    --include='*.rs' ./*/src 2>/dev/null; then
    say "doctests"
    cargo test --doc --workspace || status=1
fi

if [ "$runner" = nextest ]; then
    say "tests (parallel)"
    cargo nextest run --workspace --no-fail-fast -E "not test(/${DISTURBING}/)" "$@" || status=1
    cluster_up
    say "broker-disturbing tests (one at a time)"
    cargo nextest run --workspace --no-fail-fast --test-threads 1 --no-tests=warn \
        -E "test(/${DISTURBING}/)" "$@" || status=1
    cluster_down
else
    # The binaries first: tests that run the `warren` binary ask cargo for it.
    cargo build --workspace --all-targets
    say "tests (cargo test)"
    cargo test --workspace --no-fail-fast -- --skip "$DISTURBING" || status=1
    cluster_up
    say "broker-disturbing tests (one at a time)"
    cargo test --workspace --no-fail-fast -- "$DISTURBING" --test-threads 1 || status=1
    cluster_down
fi

if [ "$status" -ne 0 ]; then
    say "some tests failed (see above)"
fi
exit "$status"

#!/usr/bin/env bash
# Runs every test of the workspace: installs and starts a local RabbitMQ if needed
# (scripts/rabbitmq.sh), then
#   1. the doctests, if the workspace has any (nextest does not run doctests);
#   2. every test except those that disturb the broker, in parallel (cargo nextest);
#   3. the broker-disturbing tests (tests/tests/disruptive.rs and tests named
#      *broker_disturbing*), one at a time, after everything else.
# Extra arguments are passed to both nextest runs (e.g. `--profile ci`, `--retries 0`).
# With CI=true, insta never writes snapshots and a missing snapshot fails.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${CI:-}" ] && [ "${CI}" != "false" ] && [ "${CI}" != "0" ]; then
    export CI=true
    export INSTA_UPDATE=no
fi

scripts/rabbitmq.sh ensure

DISTURBING='binary(disruptive) | test(/broker_disturbing/)'
status=0

# Library doc comments with code blocks (other than ```text) are doctests.
if grep -rqE '^\s*//[/!]\s*```\s*(rust|no_run|should_panic|compile_fail)?\s*$' \
    --include='*.rs' ./*/src 2>/dev/null; then
    echo "==> doctests"
    cargo test --doc --workspace || status=1
fi

echo "==> tests (parallel)"
cargo nextest run --workspace --no-fail-fast -E "not (${DISTURBING})" "$@" || status=1

echo "==> broker-disturbing tests (one at a time)"
cargo nextest run --workspace --no-fail-fast --test-threads 1 --no-tests=warn \
    -E "${DISTURBING}" "$@" || status=1

if [ "$status" -ne 0 ]; then
    echo "==> some tests failed (see above)"
fi
exit "$status"

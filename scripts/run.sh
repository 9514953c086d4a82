#!/usr/bin/env bash
# Runs warren (release build). Arguments go to the `warren` binary; without any it listens on
# 127.0.0.1:5673, forwards to amqp://127.0.0.1:5672 and serves metrics on 127.0.0.1:15673.
# When no upstream is given and nothing answers on 127.0.0.1:5672, a local RabbitMQ is
# installed and started first (scripts/rabbitmq.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

custom_upstream=false
for arg in "$@"; do
    case "$arg" in
        --upstream | --upstream=* | --config | --config=*) custom_upstream=true ;;
    esac
done
if [ -n "${WARREN_UPSTREAM:-}" ] || [ -n "${WARREN_CONFIG:-}" ]; then
    custom_upstream=true
fi

if [ "$custom_upstream" = false ] && ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
    echo "Nothing answers on 127.0.0.1:5672: installing/starting a local RabbitMQ (scripts/rabbitmq.sh)."
    scripts/rabbitmq.sh ensure
fi

exec cargo run --release --bin warren -- "$@"

#!/usr/bin/env bash
# Runs warren (release build). Arguments go to the `warren` binary; without any it listens on
# 127.0.0.1:5673, forwards to amqp://127.0.0.1:5672, serves metrics on 127.0.0.1:15673 and the
# admin API (`warren ctl`) on 127.0.0.1:15680.
# When the upstream is the default one (no --upstream flag, no WARREN_UPSTREAM, no `upstream`
# key in the --config file) and nothing answers on 127.0.0.1:5672, a local RabbitMQ is
# installed and started first (scripts/rabbitmq.sh), and warren follows that broker's event
# exchange as guest unless events_user is set.
set -euo pipefail
cd "$(dirname "$0")/.."

custom_upstream=false
events_set=false
config_file="${WARREN_CONFIG:-}"
prev=""
for arg in "$@"; do
    case "$arg" in
        --upstream | --upstream=*) custom_upstream=true ;;
        --events-user | --events-user=*) events_set=true ;;
        --config=*) config_file="${arg#--config=}" ;;
    esac
    if [ "$prev" = "--config" ]; then
        config_file="$arg"
    fi
    prev="$arg"
done
if [ -n "${WARREN_UPSTREAM:-}" ]; then
    custom_upstream=true
fi
if [ -n "${WARREN_EVENTS_USER:-}" ]; then
    events_set=true
fi
if [ -n "$config_file" ] && [ -f "$config_file" ]; then
    if grep -qE '^[[:space:]]*upstream[[:space:]]*=' "$config_file"; then
        custom_upstream=true
    fi
    if grep -qE '^[[:space:]]*events_user[[:space:]]*=' "$config_file"; then
        events_set=true
    fi
fi

if [ "$custom_upstream" = false ] && ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
    echo "Nothing answers on 127.0.0.1:5672: installing/starting a local RabbitMQ (scripts/rabbitmq.sh)."
    scripts/rabbitmq.sh ensure
fi

# Against the local broker, follow its event exchange as its administrator (guest may only log
# in from this machine), so that a changed password or a deleted user takes effect at once.
extra=()
if [ "$custom_upstream" = false ] && [ "$events_set" = false ]; then
    extra=(--events-user guest --events-password guest)
fi

exec cargo run --release --bin warren -- "${extra[@]}" "$@"

#!/usr/bin/env bash
# Installs, starts, stops and inspects the local RabbitMQ that warren's tests and `scripts/run.sh`
# talk to. Idempotent: running `ensure` twice does nothing the second time.
#
#   scripts/rabbitmq.sh ensure    install if missing, start if not answering, wait until ready (default)
#   scripts/rabbitmq.sh install   install the Debian package if missing
#   scripts/rabbitmq.sh start     start the node if it is not answering, then wait for it
#   scripts/rabbitmq.sh stop      stop the node
#   scripts/rabbitmq.sh restart   stop, start and wait
#   scripts/rabbitmq.sh status    print whether it answers and its file descriptor limits
#
# Why not `rabbitmq-server -detached` or the init script: as root, Debian's wrapper runs the node
# through `su rabbitmq`, which resets the open-files limit to 1024, and RabbitMQ then refuses
# connections past roughly 800 sockets. We drop privileges with `setpriv` instead, which keeps
# the raised limit.
set -euo pipefail

STARTUP_TIMEOUT="${RABBITMQ_STARTUP_TIMEOUT:-120}"
# Below this many sockets the node is restarted with a raised limit (if it can be raised).
MIN_SOCKETS=4000
AMQP_HOST=127.0.0.1
AMQP_PORT=5672

log() { echo "[rabbitmq.sh] $*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

installed() {
    command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ]
}

do_install() {
    if installed; then
        return 0
    fi
    log "RabbitMQ is not installed: installing the Debian package rabbitmq-server (apt-get)..."
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server
    log "RabbitMQ installed."
}

# True when the AMQP port accepts TCP connections.
port_open() {
    (exec 3<>"/dev/tcp/${AMQP_HOST}/${AMQP_PORT}") 2>/dev/null
}

# True when the node answers the CLI and has finished booting.
answering() {
    as_root rabbitmqctl -q await_startup --timeout 5 >/dev/null 2>&1 && port_open
}

# The file descriptor limits the running node reports, as "sockets_limit total_limit".
fd_limits() {
    as_root rabbitmqctl -q status --formatter json 2>/dev/null |
        sed -n 's/.*"file_descriptors":{\([^}]*\)}.*/\1/p' |
        tr ',' '\n' |
        sed -n 's/"sockets_limit":\([0-9]*\)/\1/p; s/"total_limit":\([0-9]*\)/\1/p' |
        tr '\n' ' '
}

open_files_target() {
    local hard
    hard="$(ulimit -Hn)"
    if [ "$hard" = "unlimited" ] || [ "$hard" -gt 65536 ]; then
        echo 65536
    else
        echo "$hard"
    fi
}

wait_ready() {
    local deadline=$((SECONDS + STARTUP_TIMEOUT))
    until as_root rabbitmqctl -q await_startup --timeout 10 >/dev/null 2>&1 && port_open; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "RabbitMQ did not become ready within ${STARTUP_TIMEOUT}s; last log lines:"
            tail -n 40 /var/log/rabbitmq/*.log 2>/dev/null || true
            tail -n 40 /var/log/rabbitmq/startup_err 2>/dev/null || true
            return 1
        fi
        sleep 1
    done
}

print_limits() {
    local limits
    limits="$(fd_limits)"
    # shellcheck disable=SC2086
    set -- $limits
    log "RabbitMQ is ready on ${AMQP_HOST}:${AMQP_PORT} (file descriptors: sockets limit ${1:-?}, total limit ${2:-?})."
}

do_start() {
    if answering; then
        return 0
    fi
    local nofile
    nofile="$(open_files_target)"
    log "Starting RabbitMQ (open files limit ${nofile})..."
    if [ "$(id -u)" -eq 0 ]; then
        mkdir -p /var/log/rabbitmq /var/lib/rabbitmq
        chown rabbitmq:rabbitmq /var/log/rabbitmq /var/lib/rabbitmq
        (
            cd /var/lib/rabbitmq
            ulimit -n "$nofile"
            setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
                env HOME=/var/lib/rabbitmq /usr/lib/rabbitmq/bin/rabbitmq-server -detached \
                >>/var/log/rabbitmq/startup_log 2>>/var/log/rabbitmq/startup_err
        )
    else
        # Not root: go through sudo for the whole sequence.
        sudo bash -c "cd /var/lib/rabbitmq && ulimit -n ${nofile} && setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups env HOME=/var/lib/rabbitmq /usr/lib/rabbitmq/bin/rabbitmq-server -detached >>/var/log/rabbitmq/startup_log 2>>/var/log/rabbitmq/startup_err"
    fi
    wait_ready
}

do_stop() {
    if as_root rabbitmqctl -q status >/dev/null 2>&1; then
        log "Stopping RabbitMQ..."
        as_root rabbitmqctl -q stop >/dev/null
    fi
    # The node may still hold the port for a moment.
    local deadline=$((SECONDS + 30))
    while port_open && [ "$SECONDS" -lt "$deadline" ]; do
        sleep 0.5
    done
}

do_ensure() {
    do_install
    do_start
    local limits sockets
    limits="$(fd_limits)"
    sockets="${limits%% *}"
    if [ -n "$sockets" ] && [ "$sockets" -lt "$MIN_SOCKETS" ] && [ "$(open_files_target)" -gt 4096 ]; then
        log "RabbitMQ runs with a low socket limit (${sockets}); restarting it with a raised limit."
        do_stop
        do_start
    fi
    print_limits
}

cmd="${1:-ensure}"
case "$cmd" in
    ensure) do_ensure ;;
    install) do_install ;;
    start)
        do_install
        do_start
        print_limits
        ;;
    stop) do_stop ;;
    restart)
        do_install
        do_stop
        do_start
        print_limits
        ;;
    status)
        if answering; then
            print_limits
        else
            log "RabbitMQ is not answering on ${AMQP_HOST}:${AMQP_PORT}."
            exit 1
        fi
        ;;
    *)
        echo "usage: $0 [ensure|install|start|stop|restart|status]" >&2
        exit 2
        ;;
esac

#!/usr/bin/env bash
# Installs, starts, stops and inspects the local RabbitMQ that warren's tests and `scripts/run.sh`
# talk to. Idempotent: running `ensure` twice does nothing the second time.
#
#   scripts/rabbitmq.sh ensure    install if missing, configure, start if not answering, wait (default)
#   scripts/rabbitmq.sh install   install the Debian package if missing
#   scripts/rabbitmq.sh start     start the node if it is not answering, then wait for it
#   scripts/rabbitmq.sh stop      stop the node
#   scripts/rabbitmq.sh restart   stop, start and wait
#   scripts/rabbitmq.sh status    print whether it answers and its file descriptor limits
#   scripts/rabbitmq.sh tls       (re)write the test certificates, rabbitmq.conf and enabled_plugins
#   scripts/rabbitmq.sh purge     stop the node and remove the package, its configuration, data,
#                                 logs and the test certificates: the state of a machine that
#                                 never had RabbitMQ (where .ci/run starts from)
#
# `ensure` also sets up a TLS listener on port 5671 for warren's TLS tests: a test CA, a server
# certificate for localhost/127.0.0.1 and a client certificate, made with openssl into
# $WARREN_TLS_DIR (default /var/lib/rabbitmq/warren-tls, readable by the tests), and
# /etc/rabbitmq/rabbitmq.conf with the plain listener on 5672 and the TLS one on 5671
# (verify_peer, a client certificate optional). It enables two plugins shipped with the broker,
# in /etc/rabbitmq/enabled_plugins (read when the node starts): the event exchange
# (rabbitmq_event_exchange), through which warren hears of changed passwords, deleted users and
# revoked permissions, and the consistent-hash exchange (rabbitmq_consistent_hash_exchange),
# whose type x-consistent-hash the tests of exchange types (tests/tests/exchange_types.rs)
# declare through warren, which must learn from the broker that it knows that type. A running
# node is restarted only when that configuration or the certificates changed (or it runs
# without the TLS listener).
#
# Every step that fails says what failed and what to do: nothing exits silently.
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
AMQPS_PORT=5671
DIST_PORT=25672
TLS_DIR="${WARREN_TLS_DIR:-/var/lib/rabbitmq/warren-tls}"
RABBITMQ_CONF=/etc/rabbitmq/rabbitmq.conf
ENABLED_PLUGINS=/etc/rabbitmq/enabled_plugins
# The plugins the node runs (see above), written as rabbitmq-plugins writes the file (sorted),
# so that a node whose plugins were enabled by hand is not restarted for a reordered list.
PLUGINS='[rabbitmq_consistent_hash_exchange,rabbitmq_event_exchange].'
# Certificates are remade when they expire within this many seconds.
CERT_MIN_VALIDITY=$((30 * 24 * 3600))

log() { echo "[rabbitmq.sh] $*"; }

# Stops with a message that says what failed and what to do.
die() {
    echo "[rabbitmq.sh] ERROR: $*" >&2
    exit 1
}

# A command that fails without a message of its own still names itself.
set -o errtrace
trap 'rc=$?; echo "[rabbitmq.sh] ERROR: \"${BASH_COMMAND}\" failed with status ${rc} (line ${LINENO}); see the output above." >&2' ERR

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

# Installs Debian packages; a failure says what to look at.
apt_install() {
    command -v apt-get >/dev/null 2>&1 ||
        die "apt-get is not available: install $* with this system's package manager, then rerun."
    as_root apt-get update -q ||
        die "apt-get update failed (see above): check access to the Debian mirrors (or the proxy in /etc/apt), then rerun."
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" ||
        die "apt-get install $* failed (see above): fix what apt-get reports (network, disk space, another apt running), then rerun."
}

do_install() {
    if installed; then
        return 0
    fi
    log "RabbitMQ is not installed: installing the Debian package rabbitmq-server (apt-get)..."
    apt_install rabbitmq-server
    installed || die "apt-get finished but rabbitmq-server is missing; install it by hand (apt-get install rabbitmq-server)."
    log "RabbitMQ installed."
}

# True when the AMQP port (or the port given) accepts TCP connections.
port_open() {
    (exec 3<>"/dev/tcp/${AMQP_HOST}/${1:-${AMQP_PORT}}") 2>/dev/null
}

# Who listens on TCP port $1 ("name",pid=N,...), if `ss` can tell.
port_owner() {
    command -v ss >/dev/null 2>&1 || return 0
    as_root ss -ltnpH "sport = :$1" 2>/dev/null | sed -n 's/.*users:((\(.*\))).*/\1/p' | head -n 1 || true
}

# Before a start: a port RabbitMQ needs must not be held by something else.
check_port_free() {
    local port="$1" what="$2" owner
    if port_open "$port"; then
        owner="$(port_owner "$port")"
        die "port ${port} (${what}) is in use by ${owner:-a program} that is not a running RabbitMQ node: stop it or free the port, then rerun."
    fi
}

# True when the node answers the CLI and has finished booting.
answering() {
    installed && as_root rabbitmqctl -q await_startup --timeout 5 >/dev/null 2>&1 && port_open
}

# The file descriptor limits the running node reports, as "sockets_limit total_limit" (empty
# when it does not say).
fd_limits() {
    { as_root rabbitmqctl -q status --formatter json 2>/dev/null || true; } |
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

# The last lines of the node's logs, to show why it did not come up.
show_logs() {
    local f
    for f in /var/log/rabbitmq/*.log /var/log/rabbitmq/startup_log /var/log/rabbitmq/startup_err; do
        if [ -s "$f" ]; then
            echo "----- last lines of $f" >&2
            tail -n 30 "$f" >&2 || true
        fi
    done
}

wait_ready() {
    local deadline=$((SECONDS + STARTUP_TIMEOUT))
    until as_root rabbitmqctl -q await_startup --timeout 10 >/dev/null 2>&1 && port_open; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            show_logs
            die "RabbitMQ did not become ready within ${STARTUP_TIMEOUT}s (its logs are above): fix what they report, or raise RABBITMQ_STARTUP_TIMEOUT, then rerun."
        fi
        sleep 1
    done
}

print_limits() {
    local limits
    limits="$(fd_limits)"
    # shellcheck disable=SC2086
    set -- $limits
    log "RabbitMQ is ready on ${AMQP_HOST}:${AMQP_PORT}, TLS on ${AMQPS_PORT} (file descriptors: sockets limit ${1:-?}, total limit ${2:-?})."
}

# ----- configuration: TLS listener and plugins for the tests --------------------------------

# True when every file is there, verifies against the CA and is not about to expire.
tls_files_ok() {
    local f
    for f in ca.pem server.pem server.key client.pem client.key; do
        [ -s "${TLS_DIR}/${f}" ] || return 1
    done
    openssl x509 -checkend "$CERT_MIN_VALIDITY" -noout -in "${TLS_DIR}/server.pem" >/dev/null 2>&1 &&
        openssl x509 -checkend "$CERT_MIN_VALIDITY" -noout -in "${TLS_DIR}/client.pem" >/dev/null 2>&1 &&
        openssl verify -CAfile "${TLS_DIR}/ca.pem" "${TLS_DIR}/server.pem" "${TLS_DIR}/client.pem" >/dev/null 2>&1
}

# Signs `$1.pem` (key `$1.key`) for subject CN `$2` with the test CA; extensions from stdin.
tls_sign() {
    local name="$1" cn="$2" ext
    ext="$(mktemp)"
    cat >"$ext"
    openssl genrsa -out "${TLS_DIR}/${name}.key" 2048 2>/dev/null
    openssl req -new -key "${TLS_DIR}/${name}.key" -subj "/CN=${cn}" -out "${TLS_DIR}/${name}.csr"
    openssl x509 -req -in "${TLS_DIR}/${name}.csr" -CA "${TLS_DIR}/ca.pem" -CAkey "${TLS_DIR}/ca.key" \
        -CAcreateserial -days 3650 -sha256 -extfile "$ext" -out "${TLS_DIR}/${name}.pem" 2>/dev/null
    rm -f "${TLS_DIR}/${name}.csr" "$ext"
}

# Makes the test CA and the server and client certificates (as root).
tls_make_files() {
    log "Making the test TLS certificates in ${TLS_DIR}..."
    mkdir -p "$TLS_DIR"
    chmod 0755 "$TLS_DIR"
    rm -f "${TLS_DIR}"/*.pem "${TLS_DIR}"/*.key "${TLS_DIR}"/*.srl
    openssl genrsa -out "${TLS_DIR}/ca.key" 2048 2>/dev/null
    openssl req -x509 -new -key "${TLS_DIR}/ca.key" -sha256 -days 3650 \
        -subj "/CN=warren test CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "${TLS_DIR}/ca.pem"
    tls_sign server localhost <<'EXT'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
EXT
    tls_sign client warren-test-client <<'EXT'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectAltName = DNS:warren-test-client
EXT
    # The tests read the CA, the client's certificate and its key; only the node reads the
    # server's key, and nobody but root the CA's.
    chmod 0644 "${TLS_DIR}"/*.pem "${TLS_DIR}/client.key"
    chmod 0600 "${TLS_DIR}/ca.key"
    if id rabbitmq >/dev/null 2>&1; then
        chown root:rabbitmq "${TLS_DIR}/server.key"
    fi
    chmod 0640 "${TLS_DIR}/server.key"
}

# The rabbitmq.conf the tests need.
tls_conf() {
    cat <<CONF
# Written by warren's scripts/rabbitmq.sh: plain AMQP for the tests, and TLS for the TLS tests
# (a client certificate is verified when one is presented, but not required).
listeners.tcp.default = ${AMQP_PORT}
listeners.ssl.default = ${AMQPS_PORT}
ssl_options.cacertfile = ${TLS_DIR}/ca.pem
ssl_options.certfile = ${TLS_DIR}/server.pem
ssl_options.keyfile = ${TLS_DIR}/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
CONF
}

# Writes $2 to file $1 (mode 0644) unless it already holds exactly that.
write_if_changed() {
    local file="$1" content="$2"
    if [ ! -f "$file" ] || [ "$(cat "$file")" != "$content" ]; then
        log "Writing ${file}."
        printf '%s\n' "$content" >"$file"
        chmod 0644 "$file"
    fi
}

# As root: certificates if missing or expiring, rabbitmq.conf and enabled_plugins if different.
config_setup_as_root() {
    if ! command -v openssl >/dev/null 2>&1; then
        log "openssl is not installed: installing the Debian package openssl (apt-get)..."
        apt_install openssl
    fi
    if ! tls_files_ok; then
        tls_make_files || die "making the test certificates in ${TLS_DIR} failed (see above)."
    fi
    mkdir -p "$(dirname "$RABBITMQ_CONF")"
    write_if_changed "$RABBITMQ_CONF" "$(tls_conf)"
    write_if_changed "$ENABLED_PLUGINS" "$PLUGINS"
}

config_setup() {
    if [ "$(id -u)" -eq 0 ]; then
        config_setup_as_root
    else
        sudo env WARREN_TLS_DIR="$TLS_DIR" bash "$0" tls
    fi
}

# A fingerprint of what the node is configured from (listeners, certificates, plugins): when it
# changes, a running node must be restarted to see it. A file that does not exist yet (a
# machine that never had RabbitMQ) counts as empty.
config_fingerprint() {
    local f
    for f in "$RABBITMQ_CONF" "$ENABLED_PLUGINS" "${TLS_DIR}/ca.pem" "${TLS_DIR}/server.pem"; do
        echo "== ${f}"
        if [ -r "$f" ]; then
            cat "$f"
        fi
    done | sha256sum | cut -d' ' -f1
}

# Waits for the TLS listener (it starts with the node, so this is short).
wait_tls_port() {
    local deadline=$((SECONDS + 30))
    until port_open "$AMQPS_PORT"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            show_logs
            die "RabbitMQ runs but its TLS listener on ${AMQP_HOST}:${AMQPS_PORT} is not up (its logs are above)."
        fi
        sleep 0.5
    done
}

# ----- node lifecycle ---------------------------------------------------------------------------

do_start() {
    if answering; then
        return 0
    fi
    check_port_free "$AMQP_PORT" "AMQP"
    check_port_free "$AMQPS_PORT" "AMQP over TLS"
    check_port_free "$DIST_PORT" "RabbitMQ's inter-node port"
    local nofile
    nofile="$(open_files_target)"
    log "Starting RabbitMQ (open files limit ${nofile})..."
    local start="cd /var/lib/rabbitmq && ulimit -n ${nofile} && setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups env HOME=/var/lib/rabbitmq /usr/lib/rabbitmq/bin/rabbitmq-server -detached >>/var/log/rabbitmq/startup_log 2>>/var/log/rabbitmq/startup_err"
    as_root mkdir -p /var/log/rabbitmq /var/lib/rabbitmq
    as_root chown rabbitmq:rabbitmq /var/log/rabbitmq /var/lib/rabbitmq
    if ! as_root bash -c "$start"; then
        show_logs
        die "starting the RabbitMQ node failed (its logs are above)."
    fi
    wait_ready
}

do_stop() {
    if installed && as_root rabbitmqctl -q status >/dev/null 2>&1; then
        log "Stopping RabbitMQ..."
        as_root rabbitmqctl -q stop >/dev/null || die "rabbitmqctl stop failed (see above)."
    fi
    # The node may still hold the port for a moment.
    local deadline=$((SECONDS + 30))
    while port_open && [ "$SECONDS" -lt "$deadline" ]; do
        sleep 0.5
    done
}

do_ensure() {
    do_install
    local before after
    before="$(config_fingerprint)"
    config_setup
    after="$(config_fingerprint)"
    if answering; then
        if [ "$before" != "$after" ]; then
            log "The node's configuration changed: restarting RabbitMQ to load it."
            do_stop
        elif ! port_open "$AMQPS_PORT"; then
            log "RabbitMQ runs without its TLS listener: restarting it to load ${RABBITMQ_CONF}."
            do_stop
        fi
    fi
    do_start
    local limits sockets
    limits="$(fd_limits)"
    sockets="${limits%% *}"
    if [ -n "$sockets" ] && [ "$sockets" -lt "$MIN_SOCKETS" ] && [ "$(open_files_target)" -gt 4096 ]; then
        log "RabbitMQ runs with a low socket limit (${sockets}); restarting it with a raised limit."
        do_stop
        do_start
    fi
    wait_tls_port
    print_limits
}

# Back to the state of a machine that never had RabbitMQ.
do_purge() {
    log "Purging RabbitMQ: the node, the package, its configuration, data and logs, and ${TLS_DIR}."
    do_stop
    # A node started by hand or wedged, and Erlang's port mapper.
    as_root pkill -KILL -u rabbitmq 2>/dev/null || true
    as_root pkill -KILL -x epmd 2>/dev/null || true
    if dpkg -s rabbitmq-server >/dev/null 2>&1; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q rabbitmq-server >/dev/null ||
            die "apt-get purge rabbitmq-server failed (see above)."
    fi
    as_root rm -rf /etc/rabbitmq /var/lib/rabbitmq /var/log/rabbitmq "$TLS_DIR"
    ! installed || die "rabbitmq-server is still installed after the purge."
    log "Purged: this machine has no RabbitMQ now."
}

cmd="${1:-ensure}"
case "$cmd" in
    ensure) do_ensure ;;
    install) do_install ;;
    tls) config_setup ;;
    purge) do_purge ;;
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
        echo "usage: $0 [ensure|install|start|stop|restart|status|tls|purge]" >&2
        exit 2
        ;;
esac

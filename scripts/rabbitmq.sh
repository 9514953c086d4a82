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
#   scripts/rabbitmq.sh tls       (re)write the test certificates and rabbitmq.conf only
#
# `ensure` also sets up a TLS listener on port 5671 for warren's TLS tests: a test CA, a server
# certificate for localhost/127.0.0.1 and a client certificate, made with openssl into
# $WARREN_TLS_DIR (default /var/lib/rabbitmq/warren-tls, readable by the tests), and
# /etc/rabbitmq/rabbitmq.conf with the plain listener on 5672 and the TLS one on 5671
# (verify_peer, a client certificate optional). A running node is restarted only when that
# configuration or the certificates changed (or it runs without the TLS listener).
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
TLS_DIR="${WARREN_TLS_DIR:-/var/lib/rabbitmq/warren-tls}"
RABBITMQ_CONF=/etc/rabbitmq/rabbitmq.conf
# Certificates are remade when they expire within this many seconds.
CERT_MIN_VALIDITY=$((30 * 24 * 3600))

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

# True when the AMQP port (or the port given) accepts TCP connections.
port_open() {
    (exec 3<>"/dev/tcp/${AMQP_HOST}/${1:-${AMQP_PORT}}") 2>/dev/null
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
    log "RabbitMQ is ready on ${AMQP_HOST}:${AMQP_PORT}, TLS on ${AMQPS_PORT} (file descriptors: sockets limit ${1:-?}, total limit ${2:-?})."
}

# ----- TLS listener for the tests ----------------------------------------------------------

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

# As root: certificates if missing or expiring, and rabbitmq.conf if different.
tls_setup_as_root() {
    if ! command -v openssl >/dev/null 2>&1; then
        log "openssl is not installed: installing the Debian package openssl (apt-get)..."
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssl
    fi
    tls_files_ok || tls_make_files
    mkdir -p "$(dirname "$RABBITMQ_CONF")"
    if [ "$(cat "$RABBITMQ_CONF" 2>/dev/null)" != "$(tls_conf)" ]; then
        log "Writing ${RABBITMQ_CONF} (TLS listener on port ${AMQPS_PORT})."
        tls_conf >"$RABBITMQ_CONF"
        chmod 0644 "$RABBITMQ_CONF"
    fi
}

tls_setup() {
    if [ "$(id -u)" -eq 0 ]; then
        tls_setup_as_root
    else
        sudo env WARREN_TLS_DIR="$TLS_DIR" bash "$0" tls
    fi
}

# A fingerprint of what the TLS listener is configured from: when it changes, a running node
# must be restarted to see it.
tls_fingerprint() {
    cat "$RABBITMQ_CONF" "${TLS_DIR}/ca.pem" "${TLS_DIR}/server.pem" 2>/dev/null | sha256sum | cut -d' ' -f1
}

# Waits for the TLS listener (it starts with the node, so this is short).
wait_tls_port() {
    local deadline=$((SECONDS + 30))
    until port_open "$AMQPS_PORT"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "The TLS listener on ${AMQP_HOST}:${AMQPS_PORT} is not up; last log lines:"
            tail -n 40 /var/log/rabbitmq/*.log 2>/dev/null || true
            return 1
        fi
        sleep 0.5
    done
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
    local before after
    before="$(tls_fingerprint)"
    tls_setup
    after="$(tls_fingerprint)"
    if answering; then
        if [ "$before" != "$after" ]; then
            log "The TLS configuration changed: restarting RabbitMQ to load it."
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

cmd="${1:-ensure}"
case "$cmd" in
    ensure) do_ensure ;;
    install) do_install ;;
    tls) tls_setup ;;
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
        echo "usage: $0 [ensure|install|start|stop|restart|status|tls]" >&2
        exit 2
        ;;
esac

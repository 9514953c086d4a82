#!/usr/bin/env bash
# Installs what the tests need besides Rust and RabbitMQ (scripts/test.sh runs it): the AMQP
# client libraries of other languages that tests/tests/clients.rs drives (through the probes
# in tests/clients/), each directly against RabbitMQ and through warren, and Prometheus
# (promtool and the server) for tests/tests/observability.rs. Idempotent: what is already
# installed is not installed again.
#
#   Debian packages (apt-get):   ruby ruby-bunny                      Ruby's bunny
#                                golang-go golang-github-rabbitmq-amqp091-go-dev
#                                                                     Go's amqp091-go (GOPATH mode,
#                                                                     /usr/share/gocode: no module proxy)
#                                php-cli php-amqp                     PHP's amqp extension (PECL, librabbitmq)
#                                amqp-tools                           librabbitmq's command line tools
#                                prometheus                           promtool and the Prometheus server
#                                python3-venv (only for Debian's own python3, which needs it for venvs)
#   PyPI (pip, into a virtualenv tests/clients/.venv, pinned in tests/clients/requirements.txt):
#                                pika aio-pika
#   npm (npm ci, into tests/clients/node_modules, pinned in tests/clients/package-lock.json):
#                                amqplib
#
# Every step that fails says which package failed and what to do: nothing exits silently.
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS_DIR=tests/clients
VENV="${CLIENTS_DIR}/.venv"
APT_PACKAGES=(
    ruby ruby-bunny
    golang-go golang-github-rabbitmq-amqp091-go-dev
    php-cli php-amqp
    amqp-tools
    prometheus
)

log() { echo "[test-tools.sh] $*"; }

# Stops with a message that says what failed and what to do.
die() {
    echo "[test-tools.sh] ERROR: $*" >&2
    exit 1
}

# A command that fails without a message of its own still names itself.
set -o errtrace
# shellcheck disable=SC2154 # rc is assigned inside the trap
trap 'rc=$?; echo "[test-tools.sh] ERROR: \"${BASH_COMMAND}\" failed with status ${rc} (line ${LINENO}); see the output above." >&2' ERR

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

deb_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

# ----- Debian packages ---------------------------------------------------------------------------

install_debian() {
    local missing=() pkg
    for pkg in "$@"; do
        deb_installed "$pkg" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "Debian packages already installed: $*"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 ||
        die "apt-get is not available: install the packages ${missing[*]} with this system's package manager, then rerun."
    log "Installing Debian packages (apt-get): ${missing[*]}"
    as_root apt-get update -q ||
        die "apt-get update failed (see above): check access to the Debian mirrors (or the proxy in /etc/apt), then rerun."
    # One package at a time, so that a failure names its package.
    for pkg in "${missing[@]}"; do
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg" ||
            die "apt-get install ${pkg} failed (see above): fix what apt-get reports (package name, network, disk space, another apt running), then rerun."
    done
}

# ----- Python: pika and aio-pika in a virtualenv -------------------------------------------------

install_python() {
    command -v python3 >/dev/null 2>&1 ||
        die "python3 is not installed: install Python 3 (apt-get install python3 python3-venv), then rerun."
    if [ ! -x "${VENV}/bin/python" ]; then
        # Debian's own python3 makes virtualenvs only with python3-venv.
        if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
            install_debian python3-venv
        fi
        log "Making the Python virtualenv ${VENV} (python3 -m venv)"
        python3 -m venv "$VENV" || die "python3 -m venv ${VENV} failed (see above)."
    fi
    log "Installing from PyPI into ${VENV} if missing (pip install -r ${CLIENTS_DIR}/requirements.txt): pika aio-pika"
    "${VENV}/bin/python" -m pip install -q --disable-pip-version-check \
        -r "${CLIENTS_DIR}/requirements.txt" ||
        die "pip install of pika / aio-pika (${CLIENTS_DIR}/requirements.txt) into ${VENV} failed (see above): check access to PyPI, then rerun."
    "${VENV}/bin/python" -c 'import pika, aio_pika' ||
        die "pika or aio-pika does not import from ${VENV} after pip install (see above)."
    log "PyPI packages installed in ${VENV}: $("${VENV}/bin/python" -m pip freeze | grep -iE '^(pika|aio-pika|aiormq|pamqp)=' | tr '\n' ' ')"
}

# ----- Node: amqplib -----------------------------------------------------------------------------

install_node() {
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        die "node and npm are not installed: install Node.js 18 or later (with npm), then rerun."
    fi
    if (cd "$CLIENTS_DIR" && npm ls --silent amqplib >/dev/null 2>&1); then
        log "npm package already installed in ${CLIENTS_DIR}/node_modules: amqplib $(cd "$CLIENTS_DIR" && node -p 'require("./node_modules/amqplib/package.json").version')"
        return 0
    fi
    log "Installing from npm into ${CLIENTS_DIR}/node_modules (npm ci): amqplib"
    (cd "$CLIENTS_DIR" && npm ci --no-audit --no-fund --loglevel=error) ||
        die "npm ci of amqplib in ${CLIENTS_DIR} failed (see above): check access to the npm registry, then rerun."
}

# ----- checks: each probe's runtime can load its library ------------------------------------------

check_all() {
    ruby -e 'require "bunny"' || die "ruby cannot load bunny (Debian package ruby-bunny)."
    [ -d /usr/share/gocode/src/github.com/rabbitmq/amqp091-go ] ||
        die "/usr/share/gocode/src/github.com/rabbitmq/amqp091-go is missing (Debian package golang-github-rabbitmq-amqp091-go-dev)."
    php -r 'exit(class_exists("AMQPConnection") ? 0 : 1);' ||
        die "php has no AMQPConnection class (Debian package php-amqp, for the php-cli in use)."
    command -v amqp-get >/dev/null 2>&1 || die "amqp-get is missing (Debian package amqp-tools)."
    log "Ready: pika, aio-pika (${VENV}), bunny $(ruby -e 'require "bunny"; print Bunny::VERSION'), amqp091-go ($(go version | cut -d' ' -f3)), amqplib, php-amqp $(php -r 'echo phpversion("amqp");'), amqp-tools."
}

install_debian "${APT_PACKAGES[@]}"
install_python
install_node
check_all

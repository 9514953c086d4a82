#!/usr/bin/env bash
# A real three-node RabbitMQ cluster on this one machine, for warren's cluster tests
# (tests/tests/cluster.rs). It runs beside the main test broker of scripts/rabbitmq.sh
# (rabbit@<host> on 5672/5671), which it never touches: every command here names its node.
#
#   scripts/rabbitmq-cluster.sh start         start the three nodes (making them if needed),
#                                             join them into one cluster, check that quorum
#                                             queues can be declared; nothing if all is well
#   scripts/rabbitmq-cluster.sh stop          stop the three nodes and remove their data and logs
#   scripts/rabbitmq-cluster.sh status        each node, its ports and whether it runs in the
#                                             cluster; exit 1 unless all three do
#   scripts/rabbitmq-cluster.sh stop-node N   stop node N (1..3) cleanly; its data is kept
#   scripts/rabbitmq-cluster.sh kill-node N   kill node N's Erlang VM (SIGKILL), as a crash
#   scripts/rabbitmq-cluster.sh start-node N  start node N again and wait until it is back in
#                                             the cluster
#   scripts/rabbitmq-cluster.sh nodes         one line per node: name, AMQP port, dist port
#
# The nodes: warren-c1@<host>, warren-c2@<host>, warren-c3@<host> (<host>: `hostname -s`, as
# RabbitMQ names nodes), AMQP on 127.0.0.1:5681..5683, Erlang distribution on 25681..25683,
# each with its own rabbitmq.conf, (empty) enabled_plugins, data, logs and pid file under
# $WARREN_CLUSTER_DIR (default /var/lib/rabbitmq/warren-cluster/c1..c3). They run as the
# rabbitmq user with HOME=/var/lib/rabbitmq, so they share the main node's Erlang cookie (the
# CLI, also run as rabbitmq, reaches every node with it). No plugin is enabled (no management,
# no prometheus). The default user guest/guest exists, loopback only, as on any new node;
# users are cluster-wide, so one `rabbitmqctl -n warren-c1@<host> add_user` serves all nodes.
#
# The nodes are started like the main one (see scripts/rabbitmq.sh): as root, with the
# open-files limit raised and privileges dropped with `setpriv`, because Debian's wrapper goes
# through `su`, which resets the limit to 1024. They need the Debian package rabbitmq-server,
# which scripts/rabbitmq.sh installs (`scripts/rabbitmq.sh install` is run if it is missing).
#
# `start` takes about 30 s on a 2-core machine (45 s when that machine is busy), and a few
# seconds when the cluster already runs. When no node runs at all, it removes what an earlier
# cluster left and makes a new one: a cluster whose nodes all stopped must otherwise be started
# in the order they stopped, and the tests keep nothing in it. `stop-node`/`start-node` take
# about 5 s and 10 s. Note that `rabbitmqctl list_connections` lists the connections of every
# node of the cluster, whichever node it asks; its `port` column tells them apart.
#
# Every step that fails says what failed and what to do: nothing exits silently.
set -euo pipefail

STARTUP_TIMEOUT="${RABBITMQ_STARTUP_TIMEOUT:-120}"
HOST_SHORT="$(hostname -s)"
NODES=(1 2 3)
AMQP_HOST=127.0.0.1
FIRST_AMQP_PORT=5681
FIRST_DIST_PORT=25681
CLUSTER_DIR="${WARREN_CLUSTER_DIR:-/var/lib/rabbitmq/warren-cluster}"
RABBITMQ_HOME_DIR=/var/lib/rabbitmq
SCRIPTS_DIR="$(cd "$(dirname "$0")" && pwd)"

log() { echo "[rabbitmq-cluster.sh] $*"; }

# Stops with a message that says what failed and what to do.
die() {
    echo "[rabbitmq-cluster.sh] ERROR: $*" >&2
    exit 1
}

# A command that fails without a message of its own still names itself.
set -o errtrace
# shellcheck disable=SC2154 # rc is assigned inside the trap's own text
trap 'rc=$?; echo "[rabbitmq-cluster.sh] ERROR: \"${BASH_COMMAND}\" failed with status ${rc} (line ${LINENO}); see the output above." >&2' ERR

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

node_name() { echo "warren-c$1@${HOST_SHORT}"; }
amqp_port() { echo $((FIRST_AMQP_PORT + $1 - 1)); }
dist_port() { echo $((FIRST_DIST_PORT + $1 - 1)); }
node_dir() { echo "${CLUSTER_DIR}/c$1"; }
pid_file() { echo "$(node_dir "$1")/rabbitmq.pid"; }

check_node_number() {
    case "${1:-}" in
        1 | 2 | 3) ;;
        *) die "expected a node number 1, 2 or 3, got '${1:-}': e.g. $0 stop-node 2" ;;
    esac
}

installed() {
    command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ]
}

ensure_installed() {
    if ! installed; then
        log "RabbitMQ is not installed: running scripts/rabbitmq.sh install."
        "${SCRIPTS_DIR}/rabbitmq.sh" install ||
            die "scripts/rabbitmq.sh install failed (see above): fix what it reports, then rerun."
    fi
    command -v setpriv >/dev/null 2>&1 ||
        die "setpriv is missing (Debian package util-linux): install it, then rerun."
}

# rabbitmqctl (and friends) for node $1; the rest are its arguments.
ctl() {
    local n="$1"
    shift
    as_root rabbitmqctl -q -n "$(node_name "$n")" "$@"
}

# True when the AMQP port (or the port given) accepts TCP connections.
port_open() {
    (exec 3<>"/dev/tcp/${AMQP_HOST}/$1") 2>/dev/null
}

# Who listens on TCP port $1 ("name",pid=N,...), if `ss` can tell.
port_owner() {
    command -v ss >/dev/null 2>&1 || return 0
    as_root ss -ltnpH "sport = :$1" 2>/dev/null | sed -n 's/.*users:((\(.*\))).*/\1/p' | head -n 1 || true
}

# The pid of node $1's Erlang VM, if its pid file names a live process.
node_pid() {
    local f pid
    f="$(pid_file "$1")"
    [ -r "$f" ] || return 1
    pid="$(tr -dc '0-9' <"$f")"
    [ -n "$pid" ] && [ -d "/proc/${pid}" ] && echo "$pid"
}

# True when node $1's VM answers the CLI (the rabbit application may be stopped).
vm_answers() {
    ctl "$1" eval 'ok.' >/dev/null 2>&1
}

# True when node $1 has booted and its AMQP listener is open.
node_running() {
    ctl "$1" await_startup --timeout 5 >/dev/null 2>&1 && port_open "$(amqp_port "$1")"
}

# The last lines of node $1's logs, to show why it did not come up.
show_logs() {
    local f
    for f in "$(node_dir "$1")"/log/*.log "$(node_dir "$1")"/log/startup_log "$(node_dir "$1")"/log/startup_err; do
        if [ -s "$f" ]; then
            echo "----- last lines of $f" >&2
            tail -n 30 "$f" >&2 || true
        fi
    done
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

# Writes node $1's own configuration (as root): its listener, no plugins, and an empty
# rabbitmq-env.conf so that /etc/rabbitmq/rabbitmq-env.conf (the main node's) is not read.
write_node_config() {
    local n="$1" dir
    dir="$(node_dir "$n")"
    as_root mkdir -p "${dir}/mnesia" "${dir}/log"
    as_root tee "${dir}/rabbitmq.conf" >/dev/null <<CONF
# Written by warren's scripts/rabbitmq-cluster.sh: node $(node_name "$n") of the local test
# cluster, plain AMQP on ${AMQP_HOST}:$(amqp_port "$n") only.
listeners.tcp.1 = ${AMQP_HOST}:$(amqp_port "$n")
CONF
    echo '[].' | as_root tee "${dir}/enabled_plugins" >/dev/null
    echo '# Written by scripts/rabbitmq-cluster.sh: this node takes its settings from the environment.' |
        as_root tee "${dir}/rabbitmq-env.conf" >/dev/null
    as_root chown -R rabbitmq:rabbitmq "$CLUSTER_DIR"
}

# Before a start: the ports node $1 needs must not be held by something else.
check_ports_free() {
    local n="$1" port what owner
    for port in "$(amqp_port "$n")" "$(dist_port "$n")"; do
        if port_open "$port"; then
            what="AMQP"
            [ "$port" = "$(dist_port "$n")" ] && what="Erlang distribution"
            owner="$(port_owner "$port")"
            die "port ${port} (${what} of $(node_name "$n")) is in use by ${owner:-a program}: stop it or free the port, then rerun."
        fi
    done
}

# Launches node $1's VM in the background (detached), without waiting for it.
launch_node() {
    local n="$1" dir nofile start
    dir="$(node_dir "$n")"
    check_ports_free "$n"
    write_node_config "$n"
    nofile="$(open_files_target)"
    log "Starting $(node_name "$n") (AMQP ${AMQP_HOST}:$(amqp_port "$n"), distribution $(dist_port "$n"), data ${dir})..."
    start="cd ${RABBITMQ_HOME_DIR} && ulimit -n ${nofile} && setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups env HOME=${RABBITMQ_HOME_DIR} \
RABBITMQ_NODENAME=$(node_name "$n") \
RABBITMQ_DIST_PORT=$(dist_port "$n") \
RABBITMQ_CONF_ENV_FILE=${dir}/rabbitmq-env.conf \
RABBITMQ_CONFIG_FILE=${dir}/rabbitmq.conf \
RABBITMQ_ADVANCED_CONFIG_FILE=${dir}/advanced.config \
RABBITMQ_ENABLED_PLUGINS_FILE=${dir}/enabled_plugins \
RABBITMQ_MNESIA_BASE=${dir}/mnesia \
RABBITMQ_LOG_BASE=${dir}/log \
RABBITMQ_PID_FILE=$(pid_file "$n") \
/usr/lib/rabbitmq/bin/rabbitmq-server -detached >>${dir}/log/startup_log 2>>${dir}/log/startup_err"
    if ! as_root bash -c "$start"; then
        show_logs "$n"
        die "starting $(node_name "$n") failed (its logs are above)."
    fi
}

# Waits until node $1 has booted and listens.
wait_node() {
    local n="$1" deadline=$((SECONDS + STARTUP_TIMEOUT))
    until ctl "$n" await_startup --timeout 10 >/dev/null 2>&1 && port_open "$(amqp_port "$n")"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            show_logs "$n"
            die "$(node_name "$n") did not become ready within ${STARTUP_TIMEOUT}s (its logs are above): fix what they report, or raise RABBITMQ_STARTUP_TIMEOUT, then rerun (or '$0 stop' and '$0 start' to start afresh)."
        fi
        sleep 1
    done
}

# The nodes that node $1 sees running in its cluster, one per line (empty when it does not
# answer).
running_members() {
    { ctl "$1" cluster_status --formatter json 2>/dev/null || true; } |
        sed -n 's/.*"running_nodes":\[\([^]]*\)\].*/\1/p' | tr ',' '\n' | tr -d '" '
}

# True when node $1 sees every node of the cluster running.
cluster_complete() {
    local members n
    members="$(running_members "$1")"
    for n in "${NODES[@]}"; do
        grep -qx "$(node_name "$n")" <<<"$members" || return 1
    done
}

# Node $1 (running, not yet a member) joins node $2's cluster.
join_node() {
    local n="$1" seed="$2"
    log "$(node_name "$n") joins the cluster of $(node_name "$seed") (stop_app, join_cluster, start_app)..."
    ctl "$n" stop_app >/dev/null || die "rabbitmqctl -n $(node_name "$n") stop_app failed (see above)."
    ctl "$n" join_cluster "$(node_name "$seed")" >/dev/null ||
        die "rabbitmqctl -n $(node_name "$n") join_cluster $(node_name "$seed") failed (see above): '$0 stop' then '$0 start' makes the cluster afresh."
    ctl "$n" start_app >/dev/null || die "rabbitmqctl -n $(node_name "$n") start_app failed (see above)."
    wait_node "$n"
}

# Stops node $1's VM cleanly (waiting for its process to end), or kills it if it does not
# answer. Leaves its data.
stop_node_vm() {
    local n="$1" pid deadline
    pid="$(node_pid "$n" || true)"
    if vm_answers "$n"; then
        log "Stopping $(node_name "$n")..."
        if [ -n "$pid" ]; then
            ctl "$n" stop "$(pid_file "$n")" >/dev/null || die "rabbitmqctl -n $(node_name "$n") stop failed (see above)."
        else
            ctl "$n" stop >/dev/null || die "rabbitmqctl -n $(node_name "$n") stop failed (see above)."
        fi
    elif [ -n "$pid" ]; then
        log "$(node_name "$n") does not answer the CLI: sending its VM (pid ${pid}) SIGTERM."
        as_root kill -TERM "$pid" 2>/dev/null || true
    fi
    deadline=$((SECONDS + 30))
    while { pid="$(node_pid "$n" || true)"; [ -n "$pid" ]; } || port_open "$(amqp_port "$n")"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            if [ -n "$pid" ]; then
                log "$(node_name "$n") (pid ${pid}) is still running after 30 s: killing it."
                as_root kill -KILL "$pid" 2>/dev/null || true
                sleep 1
                break
            fi
            die "port $(amqp_port "$n") is still open 30 s after $(node_name "$n") stopped: see who holds it with 'ss -ltnp', then rerun."
        fi
        sleep 0.5
    done
}

# Declares a durable quorum queue on node $1 over AMQP (as guest, with a tiny client in Perl,
# which every Debian has), checks the broker's declare-ok, and deletes it again.
check_quorum_queue() {
    local n="$1" queue
    queue="warren-cluster-check-$$"
    log "Checking quorum queues: declaring ${queue} (x-queue-type=quorum) on $(node_name "$n")..."
    perl - "$AMQP_HOST" "$(amqp_port "$n")" "$queue" <<'PERL' || die "declaring a quorum queue on $(node_name "$n") failed (see above): check '$0 status' and the node's log under $(node_dir "$n")/log, then '$0 stop' and '$0 start' to start afresh."
use strict;
use warnings;
use IO::Socket::INET;
my ($host, $port, $queue) = @ARGV;
$SIG{ALRM} = sub { die "no answer from the broker within 30 s\n" };
alarm 30;
my $s = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port, Proto => 'tcp')
    or die "cannot connect to $host:$port: $!\n";
binmode $s;
sub take {
    my ($n) = @_;
    my $buf = '';
    while (length($buf) < $n) {
        my $got = sysread($s, $buf, $n - length($buf), length($buf));
        die "the broker closed the connection\n" unless $got;
    }
    return $buf;
}
sub shortstr { return pack('C', length $_[0]) . $_[0] }
sub longstr { return pack('N', length $_[0]) . $_[0] }
sub send_method {
    my ($ch, $class, $method, $args) = @_;
    my $payload = pack('nn', $class, $method) . $args;
    print {$s} pack('CnN', 1, $ch, length $payload) . $payload . "\xCE";
}
# The next method frame (heartbeats and other frames skipped): (class, method, arguments).
sub next_method {
    while (1) {
        my ($type, $ch, $size) = unpack('CnN', take(7));
        my $payload = take($size);
        take(1);
        next unless $type == 1;
        my ($class, $method) = unpack('nn', $payload);
        my $args = substr($payload, 4);
        if ($class == 10 && $method == 50 || $class == 20 && $method == 40) {
            my ($code, $len) = unpack('nC', $args);
            die "the broker closed the " . ($class == 10 ? 'connection' : 'channel')
                . " with $code " . substr($args, 3, $len) . "\n";
        }
        return ($class, $method, $args);
    }
}
sub expect {
    my ($class, $method) = @_;
    my ($c, $m, $args) = next_method();
    die "expected method $class.$method, got $c.$m\n" unless $c == $class && $m == $method;
    return $args;
}
$s->autoflush(1);
print {$s} "AMQP\x00\x00\x09\x01";
expect(10, 10);
send_method(0, 10, 11, pack('N', 0) . shortstr('PLAIN') . longstr("\0guest\0guest") . shortstr('en_US'));
my ($channel_max, $frame_max) = unpack('nN', expect(10, 30));
send_method(0, 10, 31, pack('nNn', $channel_max, $frame_max, 0));
send_method(0, 10, 40, shortstr('/') . shortstr('') . "\0");
expect(10, 41);
send_method(1, 20, 10, shortstr(''));
expect(20, 11);
my $table = shortstr('x-queue-type') . 'S' . longstr('quorum');
# queue.declare: reserved, queue, bits (durable), arguments.
send_method(1, 50, 10, pack('n', 0) . shortstr($queue) . "\x02" . longstr($table));
my $ok = expect(50, 11);
my $declared = substr($ok, 1, unpack('C', $ok));
die "the broker declared '$declared' instead of '$queue'\n" unless $declared eq $queue;
send_method(1, 50, 40, pack('n', 0) . shortstr($queue) . "\0");
expect(50, 41);
send_method(0, 10, 50, pack('n', 200) . shortstr('bye') . pack('nn', 0, 0));
expect(10, 51);
PERL
    log "Quorum queues work: ${queue} was declared and deleted."
}

do_start() {
    ensure_installed
    local started=$SECONDS n up=() down=()
    for n in "${NODES[@]}"; do
        if vm_answers "$n"; then
            up+=("$n")
        else
            down+=("$n")
        fi
    done
    if [ "${#up[@]}" -eq 0 ]; then
        # Nothing runs: a cluster whose nodes all stopped must be restarted in the right order,
        # so a new one is made instead; the tests keep nothing in it.
        if [ -d "$CLUSTER_DIR" ]; then
            log "No node of the cluster runs: removing its old data (${CLUSTER_DIR}) to start afresh."
            as_root rm -rf "$CLUSTER_DIR"
        fi
        for n in "${NODES[@]}"; do
            launch_node "$n"
        done
    else
        for n in "${down[@]}"; do
            launch_node "$n"
        done
    fi
    for n in "${up[@]}"; do
        # A test that ended before it could undo `rabbitmqctl suspend_listeners` leaves a
        # node that runs but refuses connections.
        if ctl "$n" await_startup --timeout 5 >/dev/null 2>&1 && ! port_open "$(amqp_port "$n")"; then
            log "$(node_name "$n") runs without its AMQP listener (suspended?): resuming its listeners."
            ctl "$n" resume_listeners >/dev/null || die "rabbitmqctl -n $(node_name "$n") resume_listeners failed (see above)."
        fi
    done
    for n in "${NODES[@]}"; do
        wait_node "$n"
    done
    # A node that is not yet in the cluster of another (new, or left behind by an interrupted
    # start) joins it. The seed is the first node that is a member of a cluster with others,
    # or node 1.
    local seed=1 members
    for n in "${NODES[@]}"; do
        if [ "$(running_members "$n" | grep -c .)" -gt 1 ]; then
            seed="$n"
            break
        fi
    done
    for n in "${NODES[@]}"; do
        [ "$n" = "$seed" ] && continue
        members="$(running_members "$seed")"
        if ! grep -qx "$(node_name "$n")" <<<"$members"; then
            join_node "$n" "$seed"
        fi
    done
    cluster_complete "$seed" ||
        die "the cluster is incomplete after the start: $(node_name "$seed") sees [$(running_members "$seed" | paste -sd, -)]; '$0 stop' then '$0 start' makes it afresh."
    check_quorum_queue "$seed"
    log "The cluster runs: $(running_members "$seed" | paste -sd' ' -) (AMQP on ${AMQP_HOST}:$(amqp_port 1)-$(amqp_port 3)); start took $((SECONDS - started)) s."
}

do_stop() {
    installed || return 0
    local n
    for n in 3 2 1; do
        stop_node_vm "$n"
    done
    if [ -d "$CLUSTER_DIR" ]; then
        log "Removing ${CLUSTER_DIR}."
        as_root rm -rf "$CLUSTER_DIR"
    fi
    log "The cluster is stopped and removed."
}

do_stop_node() {
    check_node_number "${1:-}"
    installed || die "RabbitMQ is not installed: run '$0 start' first."
    stop_node_vm "$1"
    log "$(node_name "$1") is stopped."
}

do_kill_node() {
    check_node_number "${1:-}"
    local pid
    pid="$(node_pid "$1" || true)"
    if [ -z "$pid" ]; then
        log "$(node_name "$1") is not running."
        return 0
    fi
    log "Killing $(node_name "$1") (pid ${pid}, SIGKILL)."
    as_root kill -KILL "$pid"
    local deadline=$((SECONDS + 30))
    while [ -d "/proc/${pid}" ] || port_open "$(amqp_port "$1")"; do
        [ "$SECONDS" -lt "$deadline" ] || die "$(node_name "$1") (pid ${pid}) did not die within 30 s of SIGKILL."
        sleep 0.2
    done
}

do_start_node() {
    check_node_number "${1:-}"
    local n="$1" started=$SECONDS other
    ensure_installed
    [ -d "$(node_dir "$n")/mnesia" ] ||
        die "$(node_name "$n") has no data: the cluster was never made; run '$0 start'."
    if ! vm_answers "$n"; then
        launch_node "$n"
    elif ! node_running "$n"; then
        # The VM runs but the application was stopped (stop_app).
        ctl "$n" start_app >/dev/null || die "rabbitmqctl -n $(node_name "$n") start_app failed (see above)."
    fi
    wait_node "$n"
    # Back in the cluster: another running node sees it.
    for other in "${NODES[@]}"; do
        [ "$other" = "$n" ] && continue
        if vm_answers "$other"; then
            grep -qx "$(node_name "$n")" <<<"$(running_members "$other")" ||
                die "$(node_name "$n") runs but $(node_name "$other") does not see it in the cluster; '$0 stop' then '$0 start' makes it afresh."
            break
        fi
    done
    log "$(node_name "$n") is back in the cluster after $((SECONDS - started)) s."
}

do_status() {
    local n all=0 members=""
    for n in "${NODES[@]}"; do
        if node_running "$n"; then
            [ -n "$members" ] || members="$(running_members "$n")"
            log "$(node_name "$n"): running, AMQP ${AMQP_HOST}:$(amqp_port "$n"), distribution $(dist_port "$n")."
        elif ctl "$n" await_startup --timeout 5 >/dev/null 2>&1; then
            [ -n "$members" ] || members="$(running_members "$n")"
            log "$(node_name "$n"): running, but its AMQP port $(amqp_port "$n") is closed (listeners suspended?)."
            all=1
        elif vm_answers "$n"; then
            log "$(node_name "$n"): the VM runs but the rabbit application is stopped."
            all=1
        else
            log "$(node_name "$n"): not running."
            all=1
        fi
    done
    if [ -n "$members" ]; then
        log "Running cluster members: $(paste -sd' ' - <<<"$members")."
        for n in "${NODES[@]}"; do
            grep -qx "$(node_name "$n")" <<<"$members" || all=1
        done
    fi
    if [ "$all" -ne 0 ]; then
        log "The cluster is not complete: '$0 start' starts what is missing."
        # `exit`, not `return`: a failing function would set off the ERR trap.
        exit 1
    fi
}

do_nodes() {
    local n
    for n in "${NODES[@]}"; do
        echo "$(node_name "$n") $(amqp_port "$n") $(dist_port "$n")"
    done
}

cmd="${1:-}"
case "$cmd" in
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    stop-node) do_stop_node "${2:-}" ;;
    kill-node) do_kill_node "${2:-}" ;;
    start-node) do_start_node "${2:-}" ;;
    nodes) do_nodes ;;
    *)
        echo "usage: $0 start|stop|status|stop-node N|kill-node N|start-node N|nodes" >&2
        exit 2
        ;;
esac

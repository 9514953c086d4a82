#!/usr/bin/env bash
# Side-by-side benchmark of warren against RabbitMQ directly (docs/design.md, P1–P6).
#
#   bench/run.sh               full run: every scenario, direct and through warren, interleaved,
#                              REPS repetitions (~10 minutes on 2 cores)
#   QUICK=1 bench/run.sh       smoke run (~1 minute): 1 repetition, small counts
#   PROFILE=1 bench/run.sh     syscalls per message through warren (strace -c and perf stat on
#                              syscall tracepoints) and a perf profile of warren during
#                              `publish` and `churn`; no table
#
# Settings (environment):
#   REPS=3              repetitions of each throughput/latency scenario
#   IDLE_REPS=1         repetitions of the idle scenario (10,000 connections to RabbitMQ are slow)
#   SCENARIOS="churn churn_amqprs publish publish_confirms consume latency idle"
#   CHURN_DURATION=6s   length of each churn run
#   PUBLISH_COUNT=200000  messages per publish run (bounded by count: see bench/README.md)
#   CONFIRMS_COUNT=150000 messages per publish --confirms run
#   CONSUME_COUNT=150000  messages per consume run
#   LATENCY_COUNT=10000 round trips per latency run
#   IDLE_CLIENTS=10000  connections held by the idle scenario; IDLE_HOLD=5s, IDLE_SETTLE=5s
#   WARREN_PORT         port of the warren under test (default 5673 if free, else a free one)
#   WARREN_ARGS         extra flags for warren
#   SKIP_BUILD=1        use the binaries in target/release as they are
#   PROFILE_COUNT=150000  messages of the profiled runs (perf record publishes twice as many)
#   FLOOR=1             also measure the floor programs (`warren-bench floor`, bench/src/floor.rs):
#                       targets floor_relay (latency, publish, publish_confirms, consume, churn)
#                       and floor_responder (churn, churn_amqprs); FLOOR=0 skips them
#
# Output: a markdown table on stdout (also saved as bench/results/<timestamp>.md), raw JSON lines
# in bench/results/<timestamp>.jsonl, the same as SVG charts (bench/charts.py:
# <timestamp>.ratios.svg, <timestamp>.cpu.svg), warren's logs in bench/results/<timestamp>-logs/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

QUICK="${QUICK:-0}"
PROFILE="${PROFILE:-0}"
FLOOR="${FLOOR:-1}"
if [ "$QUICK" = 1 ]; then
    REPS="${REPS:-1}"
    CHURN_DURATION="${CHURN_DURATION:-2s}"
    PUBLISH_COUNT="${PUBLISH_COUNT:-30000}"
    CONFIRMS_COUNT="${CONFIRMS_COUNT:-20000}"
    CONSUME_COUNT="${CONSUME_COUNT:-20000}"
    LATENCY_COUNT="${LATENCY_COUNT:-1000}"
    IDLE_CLIENTS="${IDLE_CLIENTS:-1000}"
    IDLE_HOLD="${IDLE_HOLD:-2s}"
    IDLE_SETTLE="${IDLE_SETTLE:-2s}"
fi
REPS="${REPS:-3}"
IDLE_REPS="${IDLE_REPS:-1}"
SCENARIOS="${SCENARIOS:-churn churn_amqprs publish publish_confirms consume latency idle}"
CHURN_DURATION="${CHURN_DURATION:-6s}"
PUBLISH_COUNT="${PUBLISH_COUNT:-200000}"
CONFIRMS_COUNT="${CONFIRMS_COUNT:-150000}"
CONSUME_COUNT="${CONSUME_COUNT:-150000}"
LATENCY_COUNT="${LATENCY_COUNT:-10000}"
IDLE_CLIENTS="${IDLE_CLIENTS:-10000}"
IDLE_HOLD="${IDLE_HOLD:-5s}"
IDLE_SETTLE="${IDLE_SETTLE:-5s}"
PROFILE_COUNT="${PROFILE_COUNT:-150000}"
WARREN_ARGS="${WARREN_ARGS:-}"

BROKER_HOST=127.0.0.1
BROKER_PORT=5672
DIRECT_URL="amqp://guest:guest@${BROKER_HOST}:${BROKER_PORT}/%2f"
WARREN_BIN="$ROOT/target/release/warren"
BENCH_BIN="$ROOT/target/release/warren-bench"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RESULTS_DIR="$ROOT/bench/results"
JSONL="$RESULTS_DIR/$STAMP.jsonl"
LOGS="$RESULTS_DIR/$STAMP-logs"

log() { echo "[bench] $*" >&2; }

# ---------------------------------------------------------------------------------------------
# Environment: file descriptors, binaries, RabbitMQ.

raise_fd_limit() {
    local hard
    hard="$(ulimit -Hn)"
    if [ "$hard" = unlimited ]; then
        hard=1048576
    fi
    ulimit -Sn "$hard" 2>/dev/null || true
    log "open files limit: $(ulimit -Sn)"
}

build() {
    if [ "${SKIP_BUILD:-0}" = 1 ]; then
        log "SKIP_BUILD=1: using the binaries in target/release"
    else
        log "building warren and warren-bench (release)..."
        cargo build --release -p warren-runtime -p warren-bench >&2
    fi
    [ -x "$WARREN_BIN" ] || { log "missing $WARREN_BIN"; exit 1; }
    [ -x "$BENCH_BIN" ] || { log "missing $BENCH_BIN"; exit 1; }
}

# The broker under test is the one listening on $BROKER_PORT (other nodes, e.g. the cluster
# tests' ones, may run beside it).
broker_pid() {
    ss -Hltnp "sport = :$BROKER_PORT" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2 ||
        true
}

broker_fd_limit() {
    local pid="$1"
    awk '/^Max open files/ {print $4}' "/proc/$pid/limits" 2>/dev/null || echo 0
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# Starts RabbitMQ by hand with a raised open-files limit (what scripts/rabbitmq.sh does).
start_broker_by_hand() {
    local nofile
    nofile="$(ulimit -Hn)"
    [ "$nofile" = unlimited ] && nofile=65536
    [ "$nofile" -gt 65536 ] && nofile=65536
    log "starting RabbitMQ with open files limit $nofile..."
    (
        cd /var/lib/rabbitmq
        ulimit -n "$nofile"
        setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
            env HOME=/var/lib/rabbitmq /usr/lib/rabbitmq/bin/rabbitmq-server -detached
    )
    rabbitmqctl -q await_startup --timeout 120 >/dev/null
}

ensure_broker() {
    local need=$((IDLE_CLIENTS + 2000)) pid limit
    # A broker that answers is left alone (other people on this machine may be using it), unless
    # it cannot hold the idle scenario's connections.
    if ! port_open "$BROKER_HOST" "$BROKER_PORT"; then
        if [ -x "$ROOT/scripts/rabbitmq.sh" ]; then
            "$ROOT/scripts/rabbitmq.sh" ensure >&2 || true
        fi
        port_open "$BROKER_HOST" "$BROKER_PORT" || start_broker_by_hand
    fi
    pid="$(broker_pid)"
    limit="$(broker_fd_limit "$pid")"
    if [ -z "$pid" ] || [ "$limit" -lt "$need" ]; then
        log "RabbitMQ (pid ${pid:-none}) may open only ${limit} files, ${need} needed: restarting it"
        if [ -x "$ROOT/scripts/rabbitmq.sh" ]; then
            "$ROOT/scripts/rabbitmq.sh" restart >&2 || true
        fi
        pid="$(broker_pid)"
        limit="$(broker_fd_limit "$pid")"
        if [ -z "$pid" ] || [ "$limit" -lt "$need" ]; then
            rabbitmqctl -q stop >/dev/null 2>&1 || true
            start_broker_by_hand
            pid="$(broker_pid)"
            limit="$(broker_fd_limit "$pid")"
        fi
    fi
    port_open "$BROKER_HOST" "$BROKER_PORT" || { log "RabbitMQ does not answer on $BROKER_PORT"; exit 1; }
    BROKER_PID="$pid"
    log "RabbitMQ: pid $BROKER_PID, open files limit $limit"
}

# Times the broker finished booting, per its log: a change during a run means someone restarted
# it (other test suites on this machine do), and the run is repeated.
broker_epoch() {
    cat /var/log/rabbitmq/rabbit@*.log 2>/dev/null | grep -c 'Server startup complete' || true
}

# ---------------------------------------------------------------------------------------------
# warren processes.

declare -A WARREN_PID=() WARREN_URL=() WARREN_LOG=()

free_port() {
    local p="$1"
    while port_open 127.0.0.1 "$p" || ss -ltn 2>/dev/null | awk '{print $4}' | grep -q ":$p\$"; do
        p=$((p + 1))
    done
    echo "$p"
}

# await_listening NAME PID PORT LOG: waits until the process started as target NAME listens on
# PORT, and records it as a target (WARREN_PID, WARREN_URL, WARREN_LOG).
await_listening() {
    local name="$1" pid="$2" port="$3" logf="$4"
    for _ in $(seq 1 100); do
        if port_open 127.0.0.1 "$port"; then
            break
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited at start:"
            tail -n 20 "$logf" >&2
            exit 1
        fi
        sleep 0.1
    done
    WARREN_PID[$name]="$pid"
    WARREN_URL[$name]="amqp://guest:guest@127.0.0.1:$port/%2f"
    WARREN_LOG[$name]="$logf"
}

# start_warren NAME PORT RECYCLING
start_warren() {
    local name="$1" port="$2" recycling="$3" logf
    logf="$LOGS/warren-$name.log"
    # shellcheck disable=SC2086
    "$WARREN_BIN" --listen "127.0.0.1:$port" --upstream "amqp://$BROKER_HOST:$BROKER_PORT" \
        --metrics off --admin-listen off --recycling "$recycling" $WARREN_ARGS >>"$logf" 2>&1 &
    await_listening "$name" $! "$port" "$logf"
    log "warren ($name, recycling $recycling): pid ${WARREN_PID[$name]} on 127.0.0.1:$port, log $logf"
}

# start_floor MODE PORT: the floor program `warren-bench floor --mode MODE` (relay or
# responder) as target floor_MODE; it is stopped like a warren (stop_warren floor_MODE).
start_floor() {
    local mode="$1" port="$2" name="floor_$1" logf
    logf="$LOGS/$name.log"
    "$BENCH_BIN" floor --mode "$mode" --listen "127.0.0.1:$port" \
        --upstream "$BROKER_HOST:$BROKER_PORT" >>"$logf" 2>&1 &
    await_listening "$name" $! "$port" "$logf"
    log "floor ($mode): pid ${WARREN_PID[$name]} on 127.0.0.1:$port, log $logf"
}

stop_warren() {
    local name="$1" pid="${WARREN_PID[$1]:-}"
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "WARREN_PID[$name]"
}

cleanup() {
    local name
    for name in "${!WARREN_PID[@]}"; do
        stop_warren "$name"
    done
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
# One run of the load generator.

# run_one SCENARIO TARGET REP -- BENCH_ARGS...
# TARGET is `direct` or the name of a started warren or floor program (floor_*, watched as
# `floor`, so its CPU per operation is floor_cpu_us_per_op). Appends the JSON line to $JSONL.
run_one() {
    local scenario="$1" target="$2" rep="$3"
    shift 4
    local url watch=() line epoch attempt rc pid
    if [ "$target" = direct ]; then
        url="$DIRECT_URL"
    else
        url="${WARREN_URL[$target]}"
        pid="${WARREN_PID[$target]}"
        case "$target" in
            floor_*) watch=(--watch "floor=$pid") ;;
            *) watch=(--watch "warren=$pid") ;;
        esac
    fi
    [ -n "${BROKER_PID:-}" ] && watch+=(--watch "broker=$BROKER_PID")
    for attempt in 1 2; do
        epoch="$(broker_epoch)"
        rc=0
        line="$("$BENCH_BIN" "$@" --url "$url" --admin-url "$DIRECT_URL" --target "$target" \
            "${watch[@]}" --tag "rep=$rep" --tag "variant=$scenario" --tag "attempt=$attempt" \
            2>>"$LOGS/bench.log")" || rc=$?
        if [ "$(broker_epoch)" != "$epoch" ]; then
            log "  $scenario/$target: RabbitMQ was restarted during the run (not by us); repeating"
            BROKER_PID="$(broker_pid)"
            sleep 3
            continue
        fi
        break
    done
    if [ -z "$line" ]; then
        line="{\"scenario\":\"$scenario\",\"target\":\"$target\",\"rep\":$rep,\"variant\":\"$scenario\",\"errors\":1,\"fatal\":\"no output (exit $rc)\"}"
    fi
    echo "$line" >>"$JSONL"
    log "  $(summarise "$line")"
    if [ "$target" != direct ] && ! kill -0 "${WARREN_PID[$target]}" 2>/dev/null; then
        log "  $target DIED during $scenario; last log lines:"
        tail -n 30 "${WARREN_LOG[$target]}" >&2
        echo "{\"scenario\":\"$scenario\",\"target\":\"$target\",\"rep\":$rep,\"variant\":\"$scenario\",\"errors\":1,\"fatal\":\"$target died\"}" >>"$JSONL"
        exit 1
    fi
}

summarise() {
    python3 -c '
import json, sys
r = json.loads(sys.argv[1])
keys = ["variant", "target", "rep", "connections_per_sec", "msgs_per_sec", "p50_us", "p99_us",
        "opened", "warren_cpu_us_per_op", "floor_cpu_us_per_op", "warren_bytes_per_client", "errors",
        "first_error", "fatal"]
print(" ".join(f"{k}={r[k]}" for k in keys if r.get(k) is not None))
' "$1"
}

# interleave SCENARIO REPS TARGETS -- BENCH_ARGS...: runs every target once per repetition,
# reversing the order on every other repetition (ABBA), so that drift hits all alike.
interleave() {
    local scenario="$1" reps="$2" targets="$3"
    shift 4
    local rep order t
    for rep in $(seq 1 "$reps"); do
        if [ $((rep % 2)) = 1 ]; then
            order="$targets"
        else
            order="$(echo "$targets" | tr ' ' '\n' | tac | tr '\n' ' ')"
        fi
        for t in $order; do
            run_one "$scenario" "$t" "$rep" -- "$@"
        done
    done
}

# ---------------------------------------------------------------------------------------------
# The table.

summary_table() {
    python3 - "$JSONL" <<'PY'
import json, statistics, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]

def runs(variant, target):
    return [r for r in rows if r.get("variant") == variant and r.get("target") == target]

def med(rs, key):
    v = [r[key] for r in rs if isinstance(r.get(key), (int, float))]
    return statistics.median(v) if v else None

def fmt(v, unit="", digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}{unit}"

def errs(rs):
    n = sum(r.get("errors", 0) or 0 for r in rs)
    return n

def proxy(rs, key):
    """The process in the middle's KEY: warren's, or a floor program's (floor_*)."""
    v = med(rs, f"warren_{key}")
    return med(rs, f"floor_{key}") if v is None else v

def cpu(rs):
    v = proxy(rs, "cpu_us_per_op")
    return fmt(v, " µs", 1)

def rss(rs):
    v = proxy(rs, "hwm_kb")
    return "–" if v is None else f"peak {v / 1024:.1f} MiB"

def who(target):
    return target.replace("floor_", "the floor's ") if target.startswith("floor_") else target

out = []
out.append("| scenario | direct | warren | ratio | target | warren CPU µs/msg | RSS |")
out.append("|---|---|---|---|---|---|---|")
notes = []

def rep_ratios(d, w, key):
    """warren/direct of each repetition (the two ran next to each other)."""
    dv = {r.get("rep"): r.get(key) for r in d}
    out = []
    for r in w:
        a, b = dv.get(r.get("rep")), r.get(key)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a:
            out.append(b / a)
    return out

def ratio_text(ratio, per_rep):
    text = fmt(ratio, "×", 2)
    if len(per_rep) > 1:
        text += f" ({min(per_rep):.2f}–{max(per_rep):.2f})"
    return text

def throughput(variant, label, key, unit, target_text, ok, warren="warren"):
    d, w = runs(variant, "direct"), runs(variant, warren)
    if not d and not w:
        return
    dv, wv = med(d, key), med(w, key)
    ratio = wv / dv if dv and wv is not None else None
    verdict = "" if ratio is None or ok is None else (" ✅" if ok(ratio) else " ❌")
    out.append(
        f"| {label} | {fmt(dv, unit)} | {fmt(wv, unit)} | "
        f"{ratio_text(ratio, rep_ratios(d, w, key))}{verdict} "
        f"| {target_text} | {cpu(w)} | {rss(w)} |"
    )
    e = errs(d) + errs(w)
    if e:
        firsts = {r.get("first_error") or r.get("fatal") for r in d + w if r.get("errors")}
        notes.append(f"{label}: {e} errors: " + "; ".join(sorted(x for x in firsts if x)))
    bd, bw = med(d, "broker_cpu_us_per_op"), med(w, "broker_cpu_us_per_op")
    cd, cw = med(d, "client_cpu_s"), med(w, "client_cpu_s")
    if bd is not None and bw is not None:
        per = "connection" if key == "connections_per_sec" else "message"
        through = "warren" if warren.startswith("warren") else who(warren)
        notes.append(f"{label}: RabbitMQ CPU per {per} {bd:,.1f} µs direct, {bw:,.1f} µs "
                     f"through {through}; load generator CPU {cd} s direct, {cw} s through "
                     f"{through} (medians per run)")

throughput("churn", "P1 churn (recycling on)", "connections_per_sec", " conn/s", "≥ 10×",
           lambda r: r >= 10)
throughput("churn", "P1 churn (recycling off)", "connections_per_sec", " conn/s", "(info)",
           None, warren="warren_norecycle")

# The floor programs (bench/src/floor.rs) in warren's column: the least a process in the middle
# costs here. Their rows only appear when they ran (FLOOR=1).
def floor_row(variant, label, key, unit, floor):
    if runs(variant, floor):
        throughput(variant, f"{label}: floor, {floor[len('floor_'):]}", key, unit, "(floor)",
                   None, warren=floor)

floor_row("churn", "P1 churn", "connections_per_sec", " conn/s", "floor_responder")
floor_row("churn", "P1 churn", "connections_per_sec", " conn/s", "floor_relay")
throughput("churn_amqprs", "P1 churn, amqprs client", "connections_per_sec", " conn/s",
           "≥ 5×", lambda r: r >= 5)
floor_row("churn_amqprs", "P1 churn, amqprs client", "connections_per_sec", " conn/s",
          "floor_responder")
throughput("publish", "P2 publish", "msgs_per_sec", " msg/s", "≥ 0.98×", lambda r: r >= 0.98)
floor_row("publish", "P2 publish", "msgs_per_sec", " msg/s", "floor_relay")
throughput("publish_confirms", "P2 publish + confirms", "msgs_per_sec", " msg/s", "≥ 0.97×",
           lambda r: r >= 0.97)
floor_row("publish_confirms", "P2 publish + confirms", "msgs_per_sec", " msg/s", "floor_relay")
throughput("consume", "P3 consume", "msgs_per_sec", " msg/s", "≥ 0.98×", lambda r: r >= 0.98)
floor_row("consume", "P3 consume", "msgs_per_sec", " msg/s", "floor_relay")

d, w = runs("latency", "direct"), runs("latency", "warren")
if d or w:
    for q in ("p50", "p90", "p99"):
        dv, wv = med(d, f"{q}_us"), med(w, f"{q}_us")
        delta = None if dv is None or wv is None else wv - dv
        ratio = wv / dv if dv and wv is not None else None
        target = "added ≤ 20 µs" if q == "p50" else "(info)"
        verdict = ""
        if q == "p50" and delta is not None:
            verdict = " ✅" if delta <= 20 else " ❌"
        pairs = [(r0.get(f"{q}_us"), r1.get(f"{q}_us")) for r0 in d for r1 in w
                 if r0.get("rep") == r1.get("rep")]
        deltas = [b - a for a, b in pairs
                  if isinstance(a, (int, float)) and isinstance(b, (int, float))]
        spread = f" ({min(deltas):+.1f}…{max(deltas):+.1f})" if len(deltas) > 1 else ""
        delta_text = "–" if delta is None else f"{delta:+.1f} µs"
        out.append(
            f"| P4 latency {q} | {fmt(dv, ' µs', 1)} | {fmt(wv, ' µs', 1)} | "
            f"{fmt(ratio, '×', 2)}, {delta_text}{spread}{verdict} | {target} | "
            f"{cpu(w) if q == 'p50' else ''} | {rss(w) if q == 'p50' else ''} |"
        )
    for q in ("p50", "p99"):
        f = runs("latency", "floor_relay")
        if not f:
            break
        dv, fv = med(d, f"{q}_us"), med(f, f"{q}_us")
        delta = None if dv is None or fv is None else fv - dv
        deltas = [r1[f"{q}_us"] - r0[f"{q}_us"] for r0 in d for r1 in f
                  if r0.get("rep") == r1.get("rep") and isinstance(r0.get(f"{q}_us"), (int, float))
                  and isinstance(r1.get(f"{q}_us"), (int, float))]
        spread = f" ({min(deltas):+.1f}…{max(deltas):+.1f})" if len(deltas) > 1 else ""
        out.append(
            f"| P4 latency {q}: floor, relay | {fmt(dv, ' µs', 1)} | {fmt(fv, ' µs', 1)} | "
            f"{fmt(fv / dv if dv and fv is not None else None, '×', 2)}, "
            f"{'–' if delta is None else f'{delta:+.1f} µs'}{spread} | (floor) | "
            f"{cpu(f) if q == 'p50' else ''} | {rss(f) if q == 'p50' else ''} |"
        )
    e = errs(d) + errs(w) + errs(runs("latency", "floor_relay"))
    if e:
        notes.append(f"latency: {e} errors")

d, w = runs("idle", "direct"), runs("idle", "warren")
if d or w:
    def held(rs):
        if not rs:
            return "–"
        return " / ".join(f"{r.get('still_open_after_hold', 0):,} of {r.get('requested', 0):,}"
                          f" ({r.get('errors', 0)} err)" for r in rs)
    per = med(w, "warren_bytes_per_client")
    base, hold, after = (med(w, k) for k in
                         ("warren_rss_baseline_kb", "warren_rss_hold_kb", "warren_rss_after_kb"))
    ok = all(r.get("errors", 1) == 0 and r.get("still_open_after_hold") == r.get("requested")
             for r in w) and per is not None and per <= 2048
    rss_text = "–"
    if per is not None:
        rss_text = (f"{per / 1024:.2f} KiB/client; {fmt(base and base / 1024, ' MiB', 1)} → "
                    f"{fmt(hold and hold / 1024, ' MiB', 1)} held → "
                    f"{fmt(after and after / 1024, ' MiB', 1)} after")
    broker_per = med(d, "broker_bytes_per_client")
    out.append(
        f"| P6 idle clients held | {held(d)} | {held(w)} | "
        f"{'✅' if ok else '❌'} | 10,000, no error, ≤ 2 KiB/client | {cpu(w)} per conn | {rss_text} |"
    )
    if broker_per is not None:
        notes.append(f"idle: RabbitMQ itself used {broker_per / 1024:.1f} KiB per direct connection")
    if after is not None and base is not None:
        notes.append(f"idle: warren RSS after the clients left is {after / base:.2f}× its baseline")
    for r in d + w:
        if r.get("errors"):
            notes.append(f"idle {r.get('target')}: {r.get('first_error') or r.get('fatal')}")

# warren against the floor, per P5 CPU target (the targets of bench/charts.py) and P4's latency.
floor_out = []
for variant, label, unit, target, warren, floor in (
        ("churn", "P1 churn", "conn", 60.0, "warren", "floor_responder"),
        ("churn_amqprs", "P1 churn, amqprs client", "conn", None, "warren", "floor_responder"),
        ("publish", "P2 publish", "msg", 1.7, "warren", "floor_relay"),
        ("publish_confirms", "P2 publish + confirms", "msg", 4.7, "warren", "floor_relay"),
        ("consume", "P3 consume", "msg", 6.5, "warren", "floor_relay"),
        ("latency", "P4 round trip", "round trip", 25.0, "warren", "floor_relay")):
    f = runs(variant, floor)
    if not f:
        continue
    wv, fv = med(runs(variant, warren), "warren_cpu_us_per_op"), med(f, "floor_cpu_us_per_op")
    over = "–" if wv is None or fv is None else f"{wv - fv:+.1f} µs"
    floor_out.append(f"| {label}: CPU per {unit} | {'(none)' if target is None else f'≤ {target} µs'}"
                     f" | {fmt(wv, ' µs', 1)} | {fmt(fv, ' µs', 1)} ({floor[6:]}) | {over} |")
d, w, f = runs("latency", "direct"), runs("latency", "warren"), runs("latency", "floor_relay")
if f:
    dv, wv, fv = med(d, "p50_us"), med(w, "p50_us"), med(f, "p50_us")
    wd = None if dv is None or wv is None else wv - dv
    fd = None if dv is None or fv is None else fv - dv
    over = "–" if wd is None or fd is None else f"{wd - fd:+.1f} µs"
    floor_out.append(f"| P4 added latency p50 | ≤ +20 µs | {'–' if wd is None else f'{wd:+.1f} µs'}"
                     f" | {'–' if fd is None else f'{fd:+.1f} µs'} (relay) | {over} |")

reps = sorted({r.get("rep") for r in rows if r.get("rep") is not None})
print("\n".join(out))
print()
print(f"Medians of {len(reps)} interleaved repetition(s); ratio = warren / direct of the medians, "
      "in brackets the range of the per-repetition ratios (latency: of the differences). "
      "CPU = warren's user+system time over the measured phase divided by messages "
      "(connections for churn/idle); RSS = warren's peak (VmHWM) during the run."
      + (" Floor rows: the same for a floor program (bench/src/floor.rs) in warren's place."
         if floor_out else ""))
for n in notes:
    print(f"- {n}")
if floor_out:
    print()
    print("| warren against the floor | target | warren | floor | warren above the floor |")
    print("|---|---|---|---|---|")
    print("\n".join(floor_out))
    print()
    print("Floor: a single-threaded mio program doing only the syscalls any process in the middle "
          "must do (relay: copy bytes between each client and its own broker connection; "
          "responder: canned handshake, publishes forwarded over one broker connection); "
          "medians as above.")
PY
}

# ---------------------------------------------------------------------------------------------
# PROFILE=1: syscalls per message, a CPU profile, and whether idle memory comes back.

# The number of operations in a warren-bench JSON line (messages, or cycles for churn).
ops_of() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("msgs", 0))' "$1"; }

# with_tracer NAME TRACER... -- BENCH_ARGS...: runs the tracer on warren during one bench run.
with_tracer() {
    local name="$1" tpid
    shift
    local tracer=()
    while [ "$1" != -- ]; do
        tracer+=("$1")
        shift
    done
    shift
    "${tracer[@]}" &
    tpid=$!
    sleep 1
    "$BENCH_BIN" "$@" --url "${WARREN_URL[warren]}" --admin-url "$DIRECT_URL" \
        >"$PROF/$name.json" 2>>"$LOGS/bench.log" || true
    kill -INT "$tpid" 2>/dev/null || true
    wait "$tpid" 2>/dev/null || true
}

profile() {
    local w="${WARREN_PID[warren]}" n="$PROFILE_COUNT" conf s
    PROF="$LOGS/profile"
    mkdir -p "$PROF"
    command -v strace >/dev/null || { log "installing strace"; apt-get install -y -q strace >&2; }
    log "warm-up publish through warren"
    "$BENCH_BIN" publish --url "${WARREN_URL[warren]}" --admin-url "$DIRECT_URL" --count 20000 \
        >/dev/null 2>>"$LOGS/bench.log"

    echo "## warren profile — $STAMP ($(nproc) cores; warren $(revision))"
    echo
    for conf in plain confirms; do
        local extra=()
        [ "$conf" = confirms ] && extra=(--confirms)
        log "strace -c -f -p $w during publish ($conf) of $n messages"
        with_tracer "strace-publish-$conf" strace -c -f -p "$w" -o "$PROF/strace-publish-$conf.txt" -- \
            publish "${extra[@]}" --count "$n" --duration 120s
        strace_table "strace -c, publish ($conf)" "$PROF/strace-publish-$conf.txt" \
            "$(ops_of "$PROF/strace-publish-$conf.json")" message
    done

    if ! perf stat -e instructions true >/dev/null 2>&1; then
        log "perf is not usable here: skipping perf stat and perf record"
        return
    fi
    local events
    events="context-switches,$(for c in writev sendto sendmsg write recvfrom recvmsg read readv \
        epoll_wait futex accept4 close shutdown setsockopt epoll_ctl mmap munmap madvise mprotect; do
        printf 'syscalls:sys_enter_%s,' "$c"
    done)"
    events="${events%,}"
    for s in publish publish_confirms consume churn; do
        local args
        case "$s" in
            publish) args=(publish --count "$n" --duration 120s) ;;
            publish_confirms) args=(publish --confirms --count "$n" --duration 120s) ;;
            consume) args=(consume --count "$n" --duration 120s) ;;
            churn) args=(churn --duration 5s) ;;
        esac
        log "perf stat (syscall tracepoints, low overhead) during $s"
        with_tracer "perfstat-$s" perf stat -e "$events" -p "$w" -o "$PROF/perfstat-$s.txt" -- "${args[@]}"
        perfstat_table "perf stat, $s" "$PROF/perfstat-$s.txt" "$(ops_of "$PROF/perfstat-$s.json")" \
            "$([ "$s" = churn ] && echo connection || echo message)"
    done

    for s in publish churn; do
        local args
        if [ "$s" = publish ]; then
            args=(publish --count "$((n * 2))" --duration 120s)
        else
            args=(churn --duration 8s)
        fi
        log "perf record of warren during $s"
        with_tracer "perf-$s" perf record -F 1999 -g -p "$w" -o "$PROF/perf-$s.data" -- "${args[@]}" \
            2>>"$PROF/perf-record.log"
        echo "### warren's top symbols during $s (self time; perf record -F 1999)"
        echo
        echo '```'
        # (|| true: `head` closing the pipe early is not a failure)
        perf report -i "$PROF/perf-$s.data" --no-children --sort dso --stdio 2>/dev/null |
            grep -E '^ +[0-9.]+%' | head -n 5 | sed 's/[ -]*$//' || true
        echo
        perf report -i "$PROF/perf-$s.data" --no-children --sort symbol --stdio 2>/dev/null |
            grep -E '^ +[0-9.]+%' | head -n 30 | cut -c1-140 | sed 's/[ -]*$//' || true
        echo '```'
        echo
    done

    idle_memory_probe
    log "profile files in $PROF"
}

# Where idle memory goes: three waves of idle clients, with warren's RSS after each. If RSS after
# the clients left stays level from wave to wave, what it keeps is bounded (allocator retention or
# pools), not a leak that grows with every client.
idle_memory_probe() {
    local w="${WARREN_PID[warren]}" clients=$((IDLE_CLIENTS / 2)) wave
    log "idle memory probe: 3 waves of $clients clients"
    for wave in 1 2 3; do
        "$BENCH_BIN" idle --url "${WARREN_URL[warren]}" --count "$clients" --concurrency 200 \
            --hold 2s --settle 3s --watch "warren=$w" >"$PROF/idle-wave-$wave.json" \
            2>>"$LOGS/bench.log" || true
    done
    python3 - "$PROF" <<'PY'
import json, sys
prof = sys.argv[1]
print("### idle memory probe (3 waves of idle clients)")
print()
print("| wave | clients | RSS before | RSS held | KiB/client | RSS after they left |")
print("|---|---|---|---|---|---|")
for wave in (1, 2, 3):
    try:
        r = json.load(open(f"{prof}/idle-wave-{wave}.json"))
    except (OSError, ValueError):
        continue
    print(f"| {wave} | {r.get('opened', 0):,} | {r.get('warren_rss_baseline_kb', 0) / 1024:.1f} MiB "
          f"| {r.get('warren_rss_hold_kb', 0) / 1024:.1f} MiB "
          f"| {r.get('warren_bytes_per_client', 0) / 1024:.2f} "
          f"| {r.get('warren_rss_after_kb', 0) / 1024:.1f} MiB |")
print()
PY
}

# Per-operation counts from `strace -c` output: strace_table TITLE FILE OPS UNIT
strace_table() {
    python3 - "$@" <<'PY'
import sys
title, path, n, unit = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
rows = []
for line in open(path):
    f = line.split()
    if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
        try:
            rows.append((f[-1], int(f[3])))
        except ValueError:
            pass
rows.sort(key=lambda r: -r[1])
print(f"### syscalls of warren per {unit}: {title}, {n:,} {unit}s")
print()
print(f"| syscall | calls | per {unit} |")
print("|---|---|---|")
for name, calls in rows[:12]:
    print(f"| {name} | {calls:,} | {calls / max(n, 1):.3f} |")
print()
PY
}

# Per-operation counts from `perf stat` output: perfstat_table TITLE FILE OPS UNIT
perfstat_table() {
    python3 - "$@" <<'PY'
import re, sys
title, path, n, unit = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
print(f"### syscalls of warren per {unit}: {title}, {n:,} {unit}s")
print()
print(f"| event | count | per {unit} |")
print("|---|---|---|")
for line in open(path):
    m = re.match(r"\s*([\d,]+)\s+(?:syscalls:sys_enter_)?([\w-]+)", line)
    if m and not line.strip().startswith("#"):
        count = int(m.group(1).replace(",", ""))
        if count:
            print(f"| {m.group(2)} | {count:,} | {count / max(n, 1):.3f} |")
print()
PY
}

# ---------------------------------------------------------------------------------------------
# Main.

# The commit warren was built from, with `+dirty` when core/ or runtime/ had local changes.
revision() {
    local rev
    rev="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    if ! git -C "$ROOT" diff --quiet HEAD -- core runtime 2>/dev/null; then
        rev="$rev+dirty"
    fi
    if [ "${SKIP_BUILD:-0}" = 1 ]; then
        rev="$rev, binary of $(date -u -r "$WARREN_BIN" +%H:%M:%SZ)"
    fi
    echo "$rev"
}

main() {
    mkdir -p "$RESULTS_DIR" "$LOGS"
    raise_fd_limit
    build
    ensure_broker
    local port
    port="${WARREN_PORT:-$(free_port 5673)}"
    start_warren warren "$port" true
    # The floor programs' targets in each scenario (none with FLOOR=0).
    local f_relay="" f_responder=""
    if [ "$FLOOR" = 1 ] && [ "$PROFILE" != 1 ]; then
        start_floor relay "$(free_port $((port + 2)))"
        start_floor responder "$(free_port $((port + 3)))"
        f_relay=" floor_relay"
        f_responder=" floor_responder"
    fi

    if [ "$PROFILE" = 1 ]; then
        profile | tee "$RESULTS_DIR/$STAMP-profile.md"
        log "saved $RESULTS_DIR/$STAMP-profile.md"
        return
    fi

    log "results: $JSONL"
    local s
    for s in $SCENARIOS; do
        log "== $s"
        case "$s" in
            churn)
                start_warren warren_norecycle "$(free_port $((port + 1)))" false
                interleave churn "$REPS" "direct warren warren_norecycle$f_responder$f_relay" -- \
                    churn --duration "$CHURN_DURATION"
                stop_warren warren_norecycle
                ;;
            churn_amqprs)
                interleave churn_amqprs "$REPS" "direct warren$f_responder" -- \
                    churn --client amqprs --duration "$CHURN_DURATION"
                ;;
            publish)
                interleave publish "$REPS" "direct warren$f_relay" -- \
                    publish --count "$PUBLISH_COUNT" --duration 60s
                ;;
            publish_confirms)
                interleave publish_confirms "$REPS" "direct warren$f_relay" -- \
                    publish --confirms --count "$CONFIRMS_COUNT" --duration 60s
                ;;
            consume)
                interleave consume "$REPS" "direct warren$f_relay" -- \
                    consume --count "$CONSUME_COUNT" --duration 60s
                ;;
            latency)
                interleave latency "$REPS" "direct warren$f_relay" -- \
                    latency --count "$LATENCY_COUNT" --duration 30s
                ;;
            idle)
                interleave idle "$IDLE_REPS" "direct warren" -- \
                    idle --count "$IDLE_CLIENTS" --concurrency 200 --hold "$IDLE_HOLD" \
                    --settle "$IDLE_SETTLE" --op-timeout 60s
                ;;
            *)
                log "unknown scenario $s"
                exit 2
                ;;
        esac
    done
    {
        echo "## warren vs RabbitMQ direct — $STAMP ($(nproc) cores; REPS=$REPS$([ "$QUICK" = 1 ] && echo ', QUICK'); warren $(revision))"
        echo
        summary_table
    } | tee "$RESULTS_DIR/$STAMP.md"
    python3 "$ROOT/bench/charts.py" "$JSONL" "$RESULTS_DIR/$STAMP" ||
        log "drawing the charts failed (the table above stands)"
    log "raw results: $JSONL"
}

main "$@"

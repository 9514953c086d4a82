#!/usr/bin/env bash
# amqp-tools (librabbitmq's command line tools) probe for tests/tests/clients.rs: runs one
# scenario and prints one JSON line saying what the tools reported: the failing tool, its exit
# status, the reply code in its message and what it printed on standard error. Each tool is a
# connection of its own, so only the scenarios that need no second step on the same connection
# are here: publish_get, wrong_password and unknown_vhost. See tests/clients/README.md.
set -uo pipefail
host="$1" port="$2" user="$3" password="$4" vhost="$5" scenario="$6" queue="$7"
conn=(--server "$host" --port "$port" --username "$user" --password "$password" --vhost "$vhost")

json_string() {
    local s="$1"
    s="${s//\\/\\\\}"
    s="${s//\"/\\\"}"
    s="${s//$'\t'/\\t}"
    s="${s//$'\n'/\\n}"
    printf '"%s"' "$s"
}

# Runs one tool, keeping its standard output in OUT; on failure prints the error line and exits.
tool() {
    local errfile status err
    errfile="$(mktemp)"
    OUT="$("$@" 2>"$errfile")"
    status=$?
    err="$(cat "$errfile")"
    rm -f "$errfile"
    if [ "$status" -ne 0 ]; then
        # The reply code is in the message ("server connection error 403, message: ...").
        code="$(printf '%s' "$err" | sed -n 's/.*error \([345][0-9][0-9]\),.*/\1/p' | head -n 1)"
        echo "{\"outcome\":\"error\",\"kind\":$(json_string "$1"),\"status\":${status},\"code\":${code:-null},\"text\":$(json_string "$err")}"
        exit 0
    fi
}

case "$scenario" in
    wrong_password | unknown_vhost)
        # Deleting a queue that does not exist succeeds and leaves nothing behind.
        tool amqp-delete-queue "${conn[@]}" --queue "$queue"
        echo '{"outcome":"ok"}'
        ;;
    publish_get)
        tool amqp-declare-queue "${conn[@]}" --queue "$queue"
        tool amqp-publish "${conn[@]}" --routing-key "$queue" --body hello
        tool amqp-get "${conn[@]}" --queue "$queue"
        body="$OUT"
        tool amqp-delete-queue "${conn[@]}" --queue "$queue"
        echo "{\"outcome\":\"ok\",\"body\":$(json_string "$body")}"
        ;;
    *)
        echo "amqp_tools_probe.sh: scenario $scenario is not supported" >&2
        exit 2
        ;;
esac

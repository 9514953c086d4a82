"""pika probe for tests/tests/clients.rs: runs one scenario and prints one JSON line saying what
pika reported. See tests/clients/README.md for the arguments, the scenarios and the output."""

import json
import re
import sys

import pika
import pika.exceptions

# The consumer tag of the consumer_cancelled scenario.
CTAG = "probe-ctag"


def outcome_of(exc):
    """What pika reported: its exception class, and the reply code and text it carries."""
    # pika wraps some failures in AMQPConnectionError(inner); report the inner one's text too.
    inner = exc.args[0] if len(exc.args) == 1 and isinstance(exc.args[0], BaseException) else None
    code = getattr(exc, "reply_code", None)
    text = getattr(exc, "reply_text", None)
    if code is None and len(exc.args) >= 2 and isinstance(exc.args[0], int):
        code, text = exc.args[0], exc.args[1]
    if text is None:
        text = repr(inner) if inner is not None else str(exc)
    if code is None:
        # ProbableAuthenticationError and friends carry only a message, "...: (403) '...'".
        found = re.search(r"\((\d{3})\)", text)
        code = int(found.group(1)) if found else None
    return {"outcome": "error", "kind": type(exc).__name__, "code": code, "text": text}


def step(f):
    """Runs one step: {"outcome": "ok", ...whatever f returns} or the error pika raised."""
    try:
        return {"outcome": "ok", **(f() or {})}
    except pika.exceptions.AMQPError as exc:
        return outcome_of(exc)


def connect(host, port, user, password, vhost):
    params = pika.ConnectionParameters(
        host=host,
        port=port,
        virtual_host=vhost,
        credentials=pika.PlainCredentials(user, password),
        connection_attempts=1,
        socket_timeout=20,
        blocked_connection_timeout=20,
    )
    return pika.BlockingConnection(params)


def publish_get(conn, queue):
    ch = conn.channel()
    ch.queue_declare(queue)
    ch.basic_publish("", queue, b"hello")
    _method, _props, body = ch.basic_get(queue, auto_ack=True)
    ch.queue_delete(queue)
    ch.close()
    return {"body": body.decode() if body is not None else None}


def direct_reply_to(conn, queue):
    """An RPC over direct reply-to: the requester consumes amq.rabbitmq.reply-to and publishes
    a request naming it; a second channel gets the request and publishes the answer to the
    name the broker put in its reply_to."""
    requester = conn.channel()
    replies = []
    requester.basic_consume(
        "amq.rabbitmq.reply-to", lambda _ch, _m, _p, body: replies.append(body), auto_ack=True
    )
    responder = conn.channel()
    responder.queue_declare(queue)
    props = pika.BasicProperties(reply_to="amq.rabbitmq.reply-to")
    requester.basic_publish("", queue, b"ping", props)
    method = None
    while method is None:
        method, request, body = responder.basic_get(queue, auto_ack=True)
    responder.basic_publish("", request.reply_to, b"pong")
    while not replies:
        conn.process_data_events(time_limit=1)
    responder.queue_delete(queue)
    generated = request.reply_to.startswith("amq.rabbitmq.reply-to.")
    return {"request": body.decode(), "reply": replies[0].decode(), "generated": generated}


def consumer_cancelled(conn, other, queue):
    """A consumer receives a message; a second connection deletes its queue; the library must
    report the broker's cancel of that consumer."""
    ch = conn.channel()
    ch.queue_declare(queue)
    bodies, cancelled = [], []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    ch.basic_consume(queue, lambda _ch, _m, _p, body: bodies.append(body), consumer_tag=CTAG)
    ch.basic_publish("", queue, b"hello")
    while not bodies:
        conn.process_data_events(time_limit=1)
    other.channel().queue_delete(queue)
    while not cancelled:
        conn.process_data_events(time_limit=1)
    return {"delivered": bodies[0].decode(), "cancelled": cancelled[0]}


def reply_to_without_consumer(conn, queue):
    ch = conn.channel()
    props = pika.BasicProperties(reply_to="amq.rabbitmq.reply-to")
    ch.basic_publish("", queue, b"ping", props)
    ch.basic_get(queue)  # the broker's channel error comes first


def main():
    host, port, user, password, vhost, scenario, queue = sys.argv[1:8]
    port = int(port)
    if scenario in ("wrong_password", "unknown_vhost"):
        conn = connect(host, port, user, password, vhost)
        conn.channel()
        conn.close()
        return {"outcome": "ok"}
    if scenario == "publish_get":
        conn = connect(host, port, user, password, vhost)
        result = step(lambda: publish_get(conn, queue))
        conn.close()
        return result
    if scenario == "passive_missing_queue":
        conn = connect(host, port, user, password, vhost)
        passive = step(lambda: conn.channel().queue_declare(queue, passive=True) and None)
        after = step(lambda: publish_get(conn, queue))
        conn.close()
        return {"passive": passive, "after": after}
    if scenario == "exclusive_locked":
        owner = connect(host, port, user, password, vhost)
        owner_ch = owner.channel()
        owner_ch.queue_declare(queue, exclusive=True)
        other = connect(host, port, user, password, vhost)
        result = {
            "passive": step(lambda: other.channel().queue_declare(queue, passive=True) and None),
            "get": step(lambda: other.channel().basic_get(queue, auto_ack=True) and None),
            "delete": step(lambda: other.channel().queue_delete(queue) and None),
        }
        other.close()
        owner_ch.queue_delete(queue)
        owner.close()
        return result
    if scenario == "direct_reply_to":
        conn = connect(host, port, user, password, vhost)
        result = {
            "rpc": step(lambda: direct_reply_to(conn, queue)),
            "no_consumer": step(lambda: reply_to_without_consumer(conn, queue)),
            "acking": step(
                lambda: conn.channel().basic_consume(
                    "amq.rabbitmq.reply-to", lambda *_: None, auto_ack=False
                )
                and None
            ),
        }
        conn.close()
        return result
    if scenario == "consumer_cancelled":
        conn = connect(host, port, user, password, vhost)
        other = connect(host, port, user, password, vhost)
        result = {
            "consume": step(lambda: consumer_cancelled(conn, other, queue)),
            "after": step(lambda: publish_get(conn, queue)),
        }
        other.close()
        conn.close()
        return result
    raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    try:
        result = main()
    except pika.exceptions.AMQPError as exc:
        result = outcome_of(exc)
    print(json.dumps(result, sort_keys=True))

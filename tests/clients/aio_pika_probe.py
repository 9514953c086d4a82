"""aio-pika probe for tests/tests/clients.rs: runs one scenario and prints one JSON line saying
what aio-pika (over aiormq) reported. See tests/clients/README.md for the arguments, the scenarios
and the output."""

import asyncio
import json
import sys

import aio_pika
import aiormq.channel
import aiormq.connection
import aiormq.exceptions
from yarl import URL


# aiormq raises one exception class per reply code and keeps only the reply text: the code is
# the one aiormq's own tables give for the class (403 for ProbableAuthenticationError).
CODE_OF_CLASS = {
    cls: code
    for table in (aiormq.connection.EXCEPTION_MAPPING, aiormq.channel.EXCEPTION_MAPPING)
    for code, cls in table.items()
}
CODE_OF_CLASS[aiormq.exceptions.ProbableAuthenticationError] = 403


def outcome_of(exc):
    """What aio-pika reported: its exception class, the reply code that class stands for, and
    the text it carries."""
    if len(exc.args) >= 2 and isinstance(exc.args[0], int):  # ConnectionClosed(code, text)
        code, text = exc.args[0], exc.args[1]
    else:
        code, text = CODE_OF_CLASS.get(type(exc)), str(exc.args[0]) if exc.args else repr(exc)
    return {"outcome": "error", "kind": type(exc).__name__, "code": code, "text": text}


async def step(f):
    """Runs one step: {"outcome": "ok", ...whatever f returns} or the error aio-pika raised."""
    try:
        return {"outcome": "ok", **(await f() or {})}
    except aiormq.exceptions.AMQPError as exc:
        return outcome_of(exc)


async def connect(host, port, user, password, vhost):
    url = URL.build(scheme="amqp", host=host, port=port, user=user, password=password, path="/" + vhost)
    return await aio_pika.connect(url, timeout=20)


async def publish_get(conn, queue):
    ch = await conn.channel()
    q = await ch.declare_queue(queue)
    await ch.default_exchange.publish(aio_pika.Message(b"hello"), routing_key=queue)
    message = await q.get(no_ack=True, fail=False, timeout=20)
    await q.delete()
    await ch.close()
    return {"body": message.body.decode() if message is not None else None}


async def passive(conn, queue):
    ch = await conn.channel()
    await ch.declare_queue(queue, passive=True)


async def get(conn, queue):
    ch = await conn.channel()
    await ch.channel.basic_get(queue, no_ack=True)


async def delete(conn, queue):
    ch = await conn.channel()
    await ch.channel.queue_delete(queue)


async def main():
    host, port, user, password, vhost, scenario, queue = sys.argv[1:8]
    port = int(port)
    if scenario in ("wrong_password", "unknown_vhost"):
        conn = await connect(host, port, user, password, vhost)
        await conn.channel()
        await conn.close()
        return {"outcome": "ok"}
    if scenario == "publish_get":
        conn = await connect(host, port, user, password, vhost)
        result = await step(lambda: publish_get(conn, queue))
        await conn.close()
        return result
    if scenario == "passive_missing_queue":
        conn = await connect(host, port, user, password, vhost)
        result = {
            "passive": await step(lambda: passive(conn, queue)),
            "after": await step(lambda: publish_get(conn, queue)),
        }
        await conn.close()
        return result
    if scenario == "exclusive_locked":
        owner = await connect(host, port, user, password, vhost)
        owner_ch = await owner.channel()
        await owner_ch.declare_queue(queue, exclusive=True)
        other = await connect(host, port, user, password, vhost)
        result = {
            "passive": await step(lambda: passive(other, queue)),
            "get": await step(lambda: get(other, queue)),
            "delete": await step(lambda: delete(other, queue)),
        }
        await other.close()
        await owner_ch.queue_delete(queue)
        await owner.close()
        return result
    raise SystemExit(f"unknown scenario {scenario!r}")


async def run():
    try:
        return await main()
    except aiormq.exceptions.AMQPError as exc:
        return outcome_of(exc)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run()), sort_keys=True))

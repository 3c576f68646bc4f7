"""Sends hand-made RPC requests with py-amqp (no Nameko, no kombu).

stdin: {"service": s,
        "requests": [{"id": i, "method": m, "body": "<raw text>",
                      "content_type": "application/json" | null,   # null: not sent
                      "reply_to": true | false,
                      "header_depth": n}, ...],   # optional: a header "deep", a list
                                                 # nested n levels (encoded recursively
                                                 # by py-amqp: run with a deep stack)
        "timeout": seconds}
Requests go to the rpc_exchange of NAMEKO_TEST_CONFIG with routing key
`<service>.<method>`, one after another, correlation id = their id. Replies come to an
exclusive queue (gone with the connection). stdout: {id: reply body as JSON, ...} for
every request that asked for a reply and got one before the timeout; an error reply
also has "raised": what Nameko's client would raise for it.
"""

import json
import os
import sys
import threading
import time
import uuid
from urllib.parse import unquote, urlparse

import amqp
from nameko.exceptions import deserialize


def connect(uri):
    parts = urlparse(uri)
    vhost = unquote(parts.path[1:]) or "/"
    return amqp.Connection(
        host="{}:{}".format(parts.hostname, parts.port or 5672),
        userid=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"),
        virtual_host=vhost,
    )


def main():
    config = json.loads(os.environ["NAMEKO_TEST_CONFIG"])
    request = json.load(sys.stdin)
    exchange = config["rpc_exchange"]
    connection = connect(config["AMQP_URI"])
    connection.connect()
    channel = connection.channel()
    reply_key = str(uuid.uuid4())
    queue, _, _ = channel.queue_declare(exclusive=True)
    channel.queue_bind(queue, exchange, reply_key)
    replies = {}

    def on_reply(message):
        reply = json.loads(message.body)
        if reply.get("error"):
            raised = deserialize(reply["error"])
            reply["raised"] = {"module": type(raised).__module__, "class": type(raised).__name__,
                               "args": list(raised.args)}
        replies[message.properties.get("correlation_id")] = reply

    channel.basic_consume(queue, callback=on_reply, no_ack=True)
    wanted = set()
    for item in request["requests"]:
        properties = {"correlation_id": item["id"]}
        if item.get("content_type"):
            properties["content_type"] = item["content_type"]
        if item.get("header_depth"):
            deep = []
            for _ in range(item["header_depth"] - 1):
                deep = [deep]
            properties["application_headers"] = {"deep": deep}
        if item.get("reply_to", True):
            properties["reply_to"] = reply_key
            wanted.add(item["id"])
        message = amqp.Message(item["body"].encode("utf-8"), **properties)
        channel.basic_publish(
            message, exchange=exchange, routing_key="{}.{}".format(request["service"], item["method"])
        )
    deadline = time.monotonic() + request.get("timeout", 10)
    while not wanted <= set(replies) and time.monotonic() < deadline:
        try:
            connection.drain_events(timeout=0.2)
        except TimeoutError:
            pass
        except OSError:  # socket.timeout on older Pythons
            pass
    connection.close()
    json.dump(replies, sys.stdout)


if __name__ == "__main__":
    # Deep headers are encoded recursively: room for them.
    sys.setrecursionlimit(200000)
    threading.stack_size(512 * 1024 * 1024)
    failed = []

    def run():
        try:
            main()
        except BaseException:
            failed.append(True)
            raise

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    sys.exit(1 if failed else 0)

"""Calls Echo (ECHO_NAME) with ClusterRpcProxy; prints the reply and its reply queue."""

import json
import os

from nameko.standalone.rpc import ClusterRpcProxy

config = json.loads(os.environ["NAMEKO_TEST_CONFIG"])
proxy = ClusterRpcProxy(config)
rpc = proxy.start()
reply = rpc[os.environ["ECHO_NAME"]].echo({"x": 1})
proxy.stop()
print(json.dumps({"reply": reply, "reply_queue": proxy._reply_listener.queue.name}))

"""Calls the Rust `greeting` service from Python Nameko 2.14:

    python greet.py amqp://guest:guest@localhost:5672/
"""

import json
import os
import sys

from nameko.exceptions import RemoteError
from nameko.standalone.rpc import ClusterRpcProxy

config = {"AMQP_URI": sys.argv[1]}
# The example's test runs it against a private RPC exchange.
config.update(json.loads(os.environ.get("NAMEKO_TEST_CONFIG", "{}")))

with ClusterRpcProxy(config, context_data={"user_id": "ada@example.com"}) as rpc:
    print(rpc.greeting.greet("Ada"))  # Hi, Ada!
    print(rpc.greeting.greet(name="Grace"))  # keyword arguments work too
    try:
        rpc.greeting.greet("")
    except RemoteError as error:  # the Rust error's exc_type and message
        print(error.exc_type, "-", error.value)

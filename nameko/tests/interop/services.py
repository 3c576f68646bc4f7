"""Python Nameko 2.14 services for the interop tests (`nameko/tests/it/interop`).

Every service reads its name (and the names it talks to) from the environment, so each
test runs them under names of its own. The tests start them with
`python -m nameko run services:<Class> --config <file>`.
"""

import os

from kombu import Exchange, Queue
from nameko.events import BROADCAST, SINGLETON, EventDispatcher, EventHandler, event_handler
from nameko.extensions import DependencyProvider
from nameko.messaging import Publisher, consume
from nameko.rpc import RpcProxy, rpc


def env(key):
    # Classes are defined whether or not their test runs them: unused names get a
    # placeholder.
    return os.environ.get(key, "unset_" + key.lower())


class Context(DependencyProvider):
    """The worker context itself."""

    def get_dependency(self, worker_ctx):
        return worker_ctx


def seen(worker_ctx):
    return {"data": dict(worker_ctx.data), "call_id_stack": worker_ctx.call_id_stack}


class Oops(Exception):
    pass


class Calc:
    """Called by Rust: results, Python errors, the context it receives."""

    name = env("CALC_NAME")
    ctx = Context()

    @rpc
    def add(self, a, b):
        return a + b

    @rpc
    def fail(self, kind):
        if kind == "value":
            raise ValueError("bad value")
        raise Oops("boom", 42, {"k": [1, 2]})

    @rpc
    def context(self):
        return seen(self.ctx)


class NamedBroadcast(EventHandler):
    """A broadcast handler whose queue name the test knows, so it can wait for it."""

    @property
    def broadcast_identifier(self):
        return env("BROADCAST_ID")


# Events received by this process's handlers, in order.
RECEIVED = []


class Listener:
    """Handles a Rust service's events with each handler type."""

    name = env("LISTENER_NAME")
    ctx = Context()

    @event_handler(env("EVENT_SOURCE"), "ping")
    def pool(self, payload):
        RECEIVED.append({"handler": "service_pool", "payload": payload, **seen(self.ctx)})

    @event_handler(env("EVENT_SOURCE"), "ping", handler_type=SINGLETON)
    def single(self, payload):
        RECEIVED.append({"handler": "singleton", "payload": payload, **seen(self.ctx)})

    @NamedBroadcast.decorator(env("EVENT_SOURCE"), "ping", handler_type=BROADCAST, reliable_delivery=False)
    def everyone(self, payload):
        RECEIVED.append({"handler": "broadcast", "payload": payload, **seen(self.ctx)})

    @rpc
    def received(self):
        return RECEIVED


class Emitter:
    """Dispatches events from inside a worker, so they carry its context."""

    name = env("EMITTER_NAME")
    dispatch = EventDispatcher()

    @rpc
    def emit(self, event_type, payload):
        self.dispatch(event_type, payload)


class Hop:
    """The Python hop of a chain: calls the next service's `stack`."""

    name = env("HOP_NAME")
    next = RpcProxy(env("HOP_NEXT"))

    @rpc
    def hop(self):
        return self.next.stack()


class Shared:
    """A Python instance of a service Rust also runs: they share `rpc-<name>`."""

    name = env("SHARED_NAME")

    @rpc
    def which(self):
        return "python"


MESSAGES = Exchange(env("MSG_EXCHANGE"), type="topic")


class Messenger:
    """Publishes to a Rust `#[consume]` queue with `Publisher`, and consumes what a Rust
    `Publisher` sends with `@consume`."""

    name = env("MESSENGER_NAME")
    ctx = Context()
    publish = Publisher(exchange=MESSAGES)

    @rpc
    def send(self, routing_key, payload):
        self.publish(payload, routing_key=routing_key)

    @consume(Queue(env("MSG_PY_QUEUE"), exchange=MESSAGES, routing_key="to_python.*"))
    def receive(self, payload):
        RECEIVED.append({"handler": "consume", "payload": payload, **seen(self.ctx)})

    @rpc
    def received(self):
        return RECEIVED

"""A Python Nameko 2.14 service for the CLI's verb tests (`nameko-cli/tests/it/verbs.rs`).

Its name, and the service whose events it hears, come from the environment so each test
run has names of its own.
"""

import os

from nameko.events import EventDispatcher, event_handler
from nameko.extensions import DependencyProvider
from nameko.rpc import rpc


class Context(DependencyProvider):
    def get_dependency(self, worker_ctx):
        return worker_ctx


class NoName(Exception):
    pass


class Greeter:
    name = os.environ["CLI_PY_NAME"]
    ctx = Context()
    dispatch = EventDispatcher()

    @rpc
    def greet(self, name, punctuation="!"):
        if not name:
            raise NoName("a name is needed")
        return "Hello, {}{}".format(name, punctuation)

    @rpc
    def shout(self, name):
        self.dispatch("shouted", {"name": name})
        return name.upper()

    @rpc
    def user(self):
        return self.ctx.data.get("user_id")

    @event_handler(os.environ["CLI_PY_SOURCE"], "ping")
    def on_ping(self, payload):
        print("python heard ping {} from user {}".format(
            payload, self.ctx.data.get("user_id")), flush=True)

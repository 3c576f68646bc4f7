"""A Python Nameko service for nameko-testing's own tests; its name comes from ECHO_NAME."""

import os

from nameko.rpc import rpc


class Echo:
    name = os.environ["ECHO_NAME"]

    @rpc
    def echo(self, value):
        return value

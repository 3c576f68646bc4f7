"""A Python Nameko service for the CLI tests: `discover` counts it, `inspect` finds it
not introspectable."""

from nameko.rpc import rpc


class PyEcho:
    name = "py_echo"

    @rpc
    def echo(self, value):
        return value

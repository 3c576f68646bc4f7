"""A Python Nameko service that hears the Rust `greeting` service's events:

    nameko run listener --broker amqp://guest:guest@localhost:5672/
"""

from nameko.events import event_handler


class PythonListener:
    name = "python_listener"

    @event_handler("greeting", "greeted")
    def on_greeted(self, payload):
        print("Python heard that {} was greeted".format(payload["name"]), flush=True)

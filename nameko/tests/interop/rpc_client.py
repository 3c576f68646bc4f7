"""Calls services with Nameko's standalone ClusterRpcProxy.

stdin: {"context": {...} | null,
        "register": ["module.Name", ...],   # exception classes to deserialize to
        "calls": [{"service": s, "method": m, "args": [...], "kwargs": {...}}]}
stdout: one JSON list, per call {"result": value} or {"error": {...}}.
The config (AMQP_URI, rpc_exchange) is JSON in NAMEKO_TEST_CONFIG. The test fixture
deletes the proxy's reply queue when the script exits.
"""

import json
import os
import sys
import types

from nameko.exceptions import RemoteError, deserialize_to_instance
from nameko.standalone.rpc import ClusterRpcProxy


def register(path):
    """Defines exception class `name` in module `module` (made up here, as a Python
    client would import it) and registers it to be raised for that exc_path."""
    module_name, _, name = path.rpartition(".")
    module = sys.modules.setdefault(module_name, types.ModuleType(module_name))
    cls = type(name, (Exception,), {"__module__": module_name})
    setattr(module, name, cls)
    deserialize_to_instance(cls)


def describe(error):
    return {
        "class": type(error).__name__,
        "module": type(error).__module__,
        "args": list(error.args),
        "exc_type": getattr(error, "exc_type", None),
        "value": getattr(error, "value", None),
        "remote": isinstance(error, RemoteError),
    }


def main():
    config = json.loads(os.environ["NAMEKO_TEST_CONFIG"])
    request = json.load(sys.stdin)
    for path in request.get("register", []):
        register(path)
    outcomes = []
    with ClusterRpcProxy(config, context_data=request.get("context"), timeout=30) as rpc:
        for call in request["calls"]:
            method = getattr(rpc[call["service"]], call["method"])
            try:
                result = method(*call.get("args", []), **call.get("kwargs", {}))
                outcomes.append({"result": result})
            except Exception as error:  # every kind is an outcome to check
                outcomes.append({"error": describe(error)})
    json.dump(outcomes, sys.stdout)


if __name__ == "__main__":
    main()

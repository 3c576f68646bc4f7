"""Dispatches events with Nameko's standalone event_dispatcher.

stdin: {"events": [{"source": s, "type": t, "payload": p}, ...]}
"""

import json
import os
import sys

from nameko.standalone.events import event_dispatcher


def main():
    config = json.loads(os.environ["NAMEKO_TEST_CONFIG"])
    dispatch = event_dispatcher(config)
    for event in json.load(sys.stdin)["events"]:
        dispatch(event["source"], event["type"], event["payload"])
    json.dump("dispatched", sys.stdout)


if __name__ == "__main__":
    main()

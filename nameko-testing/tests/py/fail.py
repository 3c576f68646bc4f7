"""Fails, or with `sleep` as its argument, runs until it is killed."""

import sys
import time

if sys.argv[1:] == ["sleep"]:
    print("sleeping", flush=True)
    time.sleep(600)
print("about to fail", flush=True)
sys.exit("failed on purpose")

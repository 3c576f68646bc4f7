#!/usr/bin/env python3
"""Runs the shell commands of Markdown files verbatim, in order, as a reader would.

    python3 .ci/walkthrough.py [--skip COMMAND]... FILE...

Every line of a ```sh block is a command (a trailing backslash continues it), run
with bash from the repository root; it must exit 0. A comment after it, separated by
two spaces or more (`curl …/greet?name=Ada   # Hi, Ada!`), is output the command must
print; `…` in it stands for anything. A command that runs services (`… -- run …`)
starts in the background, and the walk-through goes on once it logs that its services
run; services stop, gracefully, at `<!-- walkthrough: stop -->` and at the end of the
file. Other markers, on a line of their own outside code blocks:

    <!-- walkthrough: skip -->          the next sh block is not run
    <!-- walkthrough: log TEXT -->      the services' log holds TEXT (… for anything)
                                        within 30 s

`--skip COMMAND` names commands CI runs as stages of their own (the test commands).
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

START_TIMEOUT = 900  # the first `cargo run` may compile the workspace
COMMAND_TIMEOUT = 900
STOP_TIMEOUT = 60
LOG_TIMEOUT = 30
RUNNING = "service(s) running on the"
STOPPED = "every service stopped"
MARKER = re.compile(r"^<!--\s*walkthrough:\s*(\w+)\s*(.*?)\s*-->\s*$")
COMMENT = re.compile(r"^(.*?\S)\s{2,}#\s?(.*)$")
SERVICE = re.compile(r"(^|\s)--\s+run(\s|$)")


class Failure(Exception):
    pass


def contains(text, expected):
    """Whether `text` holds the parts of `expected` (split at `…`) in order."""
    at = 0
    for part in (p.strip() for p in expected.split("…")):
        if not part:
            continue
        found = text.find(part, at)
        if found < 0:
            return False
        at = found + len(part)
    return True


class Service:
    def __init__(self, command):
        self.command = command
        self.log = tempfile.NamedTemporaryFile("w+", prefix="walkthrough-", suffix=".log")
        self.process = subprocess.Popen(
            ["bash", "-c", command],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self):
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def wait_running(self):
        deadline = time.monotonic() + START_TIMEOUT
        while RUNNING not in self.text():
            if self.process.poll() is not None:
                raise Failure(f"`{self.command}` exited with {self.process.returncode} before its services ran")
            if time.monotonic() > deadline:
                raise Failure(f"`{self.command}` did not run its services within {START_TIMEOUT}s")
            time.sleep(0.5)

    def stop(self):
        """SIGTERM, then a clean exit and the runner's last words are expected."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            code = self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise Failure(f"`{self.command}` did not stop within {STOP_TIMEOUT}s of SIGTERM")
        if code != 0 or STOPPED not in self.text():
            raise Failure(f"`{self.command}` did not stop cleanly on SIGTERM (exit {code})")

    def kill(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def steps(path):
    """(kind, payload) for each command and marker of the file, in order."""
    with open(path) as f:
        lines = f.read().splitlines()
    skip_next = False
    fence = None
    pending = ""
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if fence is None:
            marker = MARKER.match(stripped)
            if marker:
                kind, argument = marker.groups()
                if kind == "skip":
                    skip_next = True
                elif kind in ("stop", "log"):
                    yield number, kind, argument
                else:
                    raise Failure(f"{path}:{number}: unknown marker `{kind}`")
            elif stripped.startswith("```"):
                fence = stripped[3:].strip()
                run_block = fence == "sh" and not skip_next
                skip_next = False
            continue
        if stripped.startswith("```"):
            fence = None
            continue
        if not run_block or not stripped:
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        command, pending = pending + stripped, ""
        comment = COMMENT.match(command)
        expected = None
        if comment:
            command, expected = comment.group(1), comment.group(2)
        yield number, "command", (command, expected)


def walk(path, skip):
    services = []

    def stop_all():
        while services:
            services.pop(0).stop()

    try:
        for number, kind, payload in steps(path):
            where = f"{path}:{number}"
            if kind == "stop":
                print(f"--- {where}: stopping {len(services)} service process(es)", flush=True)
                stop_all()
            elif kind == "log":
                # What a command set off (an event handled) happens a moment later.
                deadline = time.monotonic() + LOG_TIMEOUT
                while not contains("".join(s.text() for s in services), payload):
                    if time.monotonic() > deadline:
                        raise Failure(f"{where}: the services' log holds no `{payload}` after {LOG_TIMEOUT}s")
                    time.sleep(0.2)
                print(f"--- {where}: the log holds `{payload}`", flush=True)
            else:
                command, expected = payload
                if command in skip:
                    print(f"--- {where}: `{command}` runs as a CI stage of its own", flush=True)
                elif SERVICE.search(command):
                    print(f"--- {where}: starting `{command}`", flush=True)
                    services.append(Service(command))
                    services[-1].wait_running()
                else:
                    print(f"--- {where}: `{command}`", flush=True)
                    done = subprocess.run(
                        ["bash", "-o", "pipefail", "-c", command],
                        capture_output=True,
                        text=True,
                        timeout=COMMAND_TIMEOUT,
                    )
                    sys.stdout.write(done.stdout[-2000:].rstrip("\n") + "\n")
                    if done.returncode != 0:
                        sys.stdout.write(done.stderr[-4000:])
                        raise Failure(f"{where}: `{command}` exited with {done.returncode}")
                    if expected is not None and not contains(done.stdout, expected):
                        raise Failure(f"{where}: `{command}` did not print `{expected}`")
        stop_all()
    except BaseException:
        for service in services:
            print(f"--- log of `{service.command}`:\n{service.text()[-6000:]}", file=sys.stderr)
            service.kill()
        raise


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", action="append", default=[], metavar="COMMAND")
    parser.add_argument("files", nargs="+", metavar="FILE")
    args = parser.parse_args()
    try:
        for path in args.files:
            walk(path, set(args.skip))
    except Failure as failure:
        print(f"walkthrough: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

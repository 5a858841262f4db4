#!/usr/bin/env python3
"""tcp-check: connect to host:port once, with a timeout, and report.

Reads the pitcrew plugin request on stdin, prints one JSON reply.
"""

import json
import re
import socket
import sys
import time

MAX_TIMEOUT_S = 20.0


def reply(ok, output=None, message=""):
    sys.stdout.write(json.dumps({"ok": ok, "output": output or {}, "message": message}))
    sys.stdout.flush()
    sys.exit(0)


def parse_timeout(text):
    m = re.fullmatch(r"([0-9]+)(ms|s)", str(text).strip())
    if not m:
        raise ValueError("timeout %r: expected e.g. 500ms or 3s" % (text,))
    seconds = int(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)
    if not 0 < seconds <= MAX_TIMEOUT_S:
        raise ValueError("timeout %s: must be more than 0 and at most %ds" % (text, MAX_TIMEOUT_S))
    return seconds


def main():
    request = json.load(sys.stdin)
    params = request.get("params") or {}
    host = str(params.get("host", "")).strip().strip("[]")
    port = params.get("port")
    if not host:
        reply(False, message="host is empty")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        reply(False, message="port %r: expected an integer 1-65535" % (port,))
    try:
        timeout = parse_timeout(params.get("timeout", "3s"))
    except ValueError as e:
        reply(False, message=str(e))

    address = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
    started = time.monotonic()
    try:
        # create_connection tries every address the name resolves to.
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except socket.timeout:
        reply(False, message="cannot connect to %s: no answer within %s" % (address, params.get("timeout", "3s")))
    except OSError as e:
        reason = e.strerror or str(e)
        reply(False, message="cannot connect to %s: %s" % (address, reason))
    ms = round((time.monotonic() - started) * 1000.0, 1)
    reply(True, {"reachable": True, "ms": ms, "address": address}, "%s accepted a connection in %s ms" % (address, ms))


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception as e:  # never print anything but the one reply
        import traceback

        traceback.print_exc(file=sys.stderr)
        reply(False, message="tcp-check failed: %s: %s" % (type(e).__name__, e))

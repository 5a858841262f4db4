#!/usr/bin/env python3
"""pgbouncer-pool: set PgBouncer's default_pool_size via its admin console.

Runs psql with an argv list (no shell). The only SQL text built here is
"SET default_pool_size = N" where N is an int this script validated.
Reads the pitcrew plugin request on stdin, prints one JSON reply.
"""

import json
import os
import re
import subprocess
import sys

PSQL = "psql"
PSQL_TIMEOUT_S = 10
MIN_SIZE, MAX_SIZE = 1, 10000
HOST_RE = re.compile(r"[A-Za-z0-9_./:][A-Za-z0-9_./:-]*")
USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def reply(ok, output=None, message=""):
    sys.stdout.write(json.dumps({"ok": ok, "output": output or {}, "message": message}))
    sys.stdout.flush()
    sys.exit(0)


class Failed(Exception):
    pass


def psql(host, port, user, sql):
    argv = [PSQL, "-X", "-w", "-h", host, "-p", str(port), "-U", user, "-d", "pgbouncer", "-At", "-c", sql]
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PGCONNECT_TIMEOUT": "5",
    }
    # A password, when the console needs one, comes from a pgpass file
    # (the manifest passes PGPASSFILE through; else libpq reads ~/.pgpass).
    if os.environ.get("PGPASSFILE"):
        env["PGPASSFILE"] = os.environ["PGPASSFILE"]
    try:
        done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=PSQL_TIMEOUT_S)
    except FileNotFoundError:
        raise Failed("psql is not installed (apt-get install -y postgresql-client)")
    except subprocess.TimeoutExpired:
        raise Failed("psql did not finish within %ds" % PSQL_TIMEOUT_S)
    err = done.stderr.decode("utf-8", "replace").strip()
    if done.returncode != 0:
        # libpq puts the reason on the first line; hints follow.
        lines = [l.strip() for l in err.splitlines() if l.strip()]
        reason = lines[0] if lines else "exit code %d" % done.returncode
        if reason.startswith("psql: error: "):
            reason = reason[len("psql: error: "):]
        raise Failed("psql %r on %s:%s failed: %s" % (sql, host, port, reason))
    sys.stderr.write(err + ("\n" if err else ""))
    return done.stdout.decode("utf-8", "replace")


def current_size(host, port, user):
    for line in psql(host, port, user, "SHOW CONFIG").splitlines():
        fields = line.split("|")
        if fields[0] == "default_pool_size" and len(fields) > 1:
            try:
                return int(fields[1])
            except ValueError:
                raise Failed("SHOW CONFIG gave default_pool_size %r, not a number" % fields[1])
    raise Failed("SHOW CONFIG has no default_pool_size: is %s:%s a PgBouncer admin console?" % (host, port))


def int_param(params, name, default=None):
    v = params.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise Failed("%s %r: expected an integer" % (name, v))
    return v


def main():
    request = json.load(sys.stdin)
    params = request.get("params") or {}
    dry_run = bool(request.get("dry_run"))
    try:
        host = str(params.get("host", ""))
        user = str(params.get("user", "pgbouncer"))
        port = int_param(params, "port", 6432)
        size = int_param(params, "size")
        lower = params.get("lower", False) is True
        if not HOST_RE.fullmatch(host):
            raise Failed("host %r: expected a host name, IP or socket folder" % host)
        if not USER_RE.fullmatch(user):
            raise Failed("user %r: expected a PgBouncer user name" % user)
        if not 1 <= port <= 65535:
            raise Failed("port %d: expected 1-65535" % port)
        if not MIN_SIZE <= size <= MAX_SIZE:
            raise Failed("size %d: expected %d-%d" % (size, MIN_SIZE, MAX_SIZE))

        before = current_size(host, port, user)
        if size == before:
            reply(True, {"from": before, "to": size, "changed": False}, "default_pool_size is already %d" % size)
        if size < before and not lower:
            reply(
                True,
                {"from": before, "to": before, "changed": False},
                "default_pool_size is %d, above the requested %d; not lowering it (set lower: true to)" % (before, size),
            )
        if dry_run:
            reply(
                True,
                {"from": before, "to": size, "changed": False, "dry_run": True},
                "dry run: would set default_pool_size from %d to %d" % (before, size),
            )
        # int(size) again: the SQL text must only ever hold a validated integer.
        psql(host, port, user, "SET default_pool_size = %d" % int(size))
        after = current_size(host, port, user)
        if after != size:
            raise Failed("SET ran but default_pool_size reads %d, not %d" % (after, size))
        reply(True, {"from": before, "to": after, "changed": True}, "default_pool_size %d -> %d" % (before, after))
    except Failed as e:
        reply(False, message=str(e))


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception as e:  # never print anything but the one reply
        import traceback

        traceback.print_exc(file=sys.stderr)
        reply(False, message="pgbouncer-pool failed: %s: %s" % (type(e).__name__, e))

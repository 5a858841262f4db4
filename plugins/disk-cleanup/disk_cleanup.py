#!/usr/bin/env python3
"""disk-cleanup: delete old files matching a glob under an allowed folder.

Safety, in order: `path` must be absolute, without `..`, free of symlinks and
inside a root from PITCREW_CLEANUP_ROOTS; the walk uses directory file
descriptors (os.fwalk) and never follows symlinks, so a link swapped in while
we walk cannot send a deletion elsewhere; only regular files are deleted.
Reads the pitcrew plugin request on stdin, prints one JSON reply.
"""

import fnmatch
import json
import os
import re
import stat
import sys
import time

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
SHOWN_FILES = 50
SHOWN_ERRORS = 20
MAX_DELETE_LIMIT = 100000


def reply(ok, output=None, message=""):
    sys.stdout.write(json.dumps({"ok": ok, "output": output or {}, "message": message}))
    sys.stdout.flush()
    sys.exit(0)


class Refused(Exception):
    pass


def parse_age(text):
    text = str(text).strip()
    if not re.fullmatch(r"([0-9]+[smhdw])+", text):
        raise Refused("older_than %r: expected e.g. 7d, 12h, 1d12h (units s, m, h, d, w)" % text)
    seconds = sum(int(n) * UNITS[u] for n, u in re.findall(r"([0-9]+)([smhdw])", text))
    if seconds <= 0:
        raise Refused("older_than %r: must be more than 0" % text)
    return seconds


def roots():
    raw = os.environ.get("PITCREW_CLEANUP_ROOTS", "")
    out = []
    for r in raw.split(":"):
        r = r.strip()
        if not r:
            continue
        if not os.path.isabs(r):
            raise Refused("PITCREW_CLEANUP_ROOTS entry %r is not an absolute path" % r)
        # The root itself may sit behind a symlink (/var/log -> ...): compare
        # resolved paths.
        out.append(os.path.realpath(r))
    if not out:
        raise Refused("PITCREW_CLEANUP_ROOTS is not set: no folder may be cleaned (list the allowed roots, colon-separated)")
    return out


def checked_path(path, allowed):
    if not os.path.isabs(path):
        raise Refused("path %r is not absolute" % path)
    if ".." in path.split("/"):
        raise Refused("path %r has a '..' component" % path)
    normal = os.path.normpath(path)
    real = os.path.realpath(normal)
    if real != normal:
        raise Refused("path %r goes through a symlink (resolves to %r); give the real path" % (path, real))
    if not any(real == root or real.startswith(root.rstrip("/") + "/") for root in allowed):
        raise Refused("path %r is not inside PITCREW_CLEANUP_ROOTS (%s)" % (path, ":".join(allowed)))
    try:
        st = os.lstat(real)
    except FileNotFoundError:
        raise Refused("path %r does not exist" % path)
    if not stat.S_ISDIR(st.st_mode):
        raise Refused("path %r is not a folder" % path)
    return real


def main():
    request = json.load(sys.stdin)
    params = request.get("params") or {}
    dry_run = bool(request.get("dry_run"))
    try:
        pattern = str(params.get("pattern", "*.log"))
        if not pattern or "/" in pattern or pattern in (".", ".."):
            raise Refused("pattern %r: expected a glob on file names, without '/'" % pattern)
        max_delete = params.get("max_delete", 1000)
        if isinstance(max_delete, bool) or not isinstance(max_delete, int) or not 1 <= max_delete <= MAX_DELETE_LIMIT:
            raise Refused("max_delete %r: expected an integer 1-%d" % (max_delete, MAX_DELETE_LIMIT))
        age = parse_age(params.get("older_than", "7d"))
        top = checked_path(str(params.get("path", "")), roots())
    except Refused as e:
        reply(False, message="refused: %s" % e)

    cutoff = time.time() - age
    candidates = []  # (mtime, path relative to top, size)
    errors = []
    for dirpath, _dirs, files, dirfd in os.fwalk(top, follow_symlinks=False):
        for name in files:
            if not fnmatch.fnmatchcase(name, pattern):
                continue
            try:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            except OSError as e:
                errors.append("%s: %s" % (os.path.join(dirpath, name), e.strerror))
                continue
            if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                candidates.append((st.st_mtime, os.path.relpath(os.path.join(dirpath, name), top), st.st_size))
    candidates.sort()
    limited = len(candidates) > max_delete
    chosen = candidates[:max_delete]

    deleted, freed, files = 0, 0, []
    for _mtime, rel, size in chosen:
        full = os.path.join(top, rel)
        if not dry_run:
            try:
                unlink_below(top, rel)
            except OSError as e:
                errors.append("%s: %s" % (full, e.strerror or e))
                continue
        deleted += 1
        freed += size
        if len(files) < SHOWN_FILES:
            files.append(full)

    output = {
        "deleted": deleted,
        "freed_bytes": freed,
        "files": files,
        "matched": len(candidates),
        "limited": limited,
        "errors": errors[:SHOWN_ERRORS],
        "dry_run": dry_run,
    }
    verb = "would delete" if dry_run else "deleted"
    message = "%s %d file(s), %d bytes, under %s" % (verb, deleted, freed, top)
    if limited:
        message += "; %d more matched (max_delete %d)" % (len(candidates) - max_delete, max_delete)
    if errors:
        message += "; %d error(s), first: %s" % (len(errors), errors[0])
    reply(deleted > 0 or not errors, output, message)


def unlink_below(top, rel):
    """Deletes top/rel opening each folder with O_NOFOLLOW: a folder replaced
    by a symlink since the walk makes this fail instead of escaping `top`."""
    parts = rel.split("/")
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    fd = os.open(top, flags)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nxt
        st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(0, "no longer a regular file")
        os.unlink(parts[-1], dir_fd=fd)
    finally:
        os.close(fd)


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception as e:  # never print anything but the one reply
        import traceback

        traceback.print_exc(file=sys.stderr)
        reply(False, message="disk-cleanup failed: %s: %s" % (type(e).__name__, e))

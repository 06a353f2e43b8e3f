"""The working folders an export keeps beside its target, and removing those a killed export left.

A working folder is named ``.OUT.<pid>.<token>.partial`` (the new folder being written) or
``.OUT.<pid>.<token>.old`` (a replaced export on its way out), and its writer holds an exclusive
``flock`` on it while it lives. One is stale, and removed by the next export to the same target,
only when all of these hold: its name has that form, it is a real folder owned by this user, no
process with its pid is alive, and its lock is free (a ``kill -9`` releases it). A live export's
folders, and every other folder, are left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["KINDS", "remove_stale", "working_folder"]

KINDS = ("partial", "old")


def _pattern(out: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(out.name)}\.(\d+)\.[0-9a-f]{{8}}\.({'|'.join(KINDS)})")


@contextlib.contextmanager
def working_folder(out: Path, kind: str) -> Iterator[Path]:
    """A new empty folder beside ``out``, locked while the block runs. It is made by ``mkdir`` with the
    default mode, so the user's umask gives its permissions (as for any folder they make)."""
    if kind not in KINDS:
        raise ValueError(f"unknown working folder kind {kind!r}; valid: {', '.join(KINDS)}")
    while True:
        folder = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.{kind}"
        try:
            os.mkdir(folder)
            break
        except FileExistsError:
            continue
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield folder
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale(out: Path) -> list[Path]:
    """Remove the working folders of ``out`` that a dead export left (see the module); returns them."""
    pattern, removed = _pattern(out), []
    for entry in sorted(out.parent.iterdir()):
        found = pattern.fullmatch(entry.name)
        if found is None or entry.is_symlink() or not entry.is_dir() or entry.stat().st_uid != os.getuid():
            continue
        if _alive(int(found.group(1))):
            continue
        fd = os.open(entry, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live export (in another pid namespace) holds it
                continue
            shutil.rmtree(entry)
            removed.append(entry)
        finally:
            os.close(fd)
    return removed

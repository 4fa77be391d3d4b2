"""Exclusive per-output locks, so two processes never write the same result or run the same sweep.

A lock is ``fcntl.flock`` on ``<target>.lock`` (Linux/macOS). The kernel drops it when its holder exits,
also after ``kill -9``, so a stale lock file never blocks anyone: the next process simply takes it. The
holder writes its pid, host and command into the file so that a refused process can say who holds it
(e.g. an orphaned sweep worker that outlived a killed ``sweep run``). The holder deletes the file when it
releases the lock; a process that opened the old file in between notices (another inode) and retries.
On file systems without working ``flock`` (some network mounts) the lock is a no-op; run one writer per output.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from lopbook.errors import BusyError


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of ``target``: ``<target>.lock``."""
    return Path(str(target) + ".lock")


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def describe_holder(info: dict[str, Any]) -> str:
    """``pid 123 on host, running `python -m lopbook ...``` (what a lock file records)."""
    if not info:
        return "another process"
    text = f"pid {info.get('pid', '?')} on {info.get('host', '?')}"
    return text + (f", running `{info['command']}`" if info.get("command") else "")


class OutputLock:
    """A non-blocking exclusive lock on ``<target>.lock``; :class:`BusyError` when someone else holds it.

    ``what`` names the thing being protected in the error message (``result file x.npz``).
    """

    def __init__(self, target: str | os.PathLike, what: str | None = None, fix: str | None = None):
        self.target = Path(target)
        self.path = lock_path(target)
        self.what = what or str(self.target)
        self.fix = fix or "wait for it to finish, or stop it (kill <pid>) and rerun"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> OutputLock:
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + 0.5  # rides out a momentary probe by holder_of (a shared lock)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                holder = describe_holder(_read_holder(self.path))
                raise BusyError(f"{self.what} is being written by {holder}; {self.fix}") from None
            except OSError:  # no flock on this file system: proceed unlocked (documented above)
                break
            try:  # the previous holder may have deleted the file between our open and flock
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still holding it: see the module docstring
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def holder_of(target: str | os.PathLike) -> dict[str, Any] | None:
    """Who holds the lock of ``target`` right now (pid, host, command), or ``None`` when nobody does."""
    path = lock_path(target)
    if not path.exists():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(path) or {"pid": "?"}
    except OSError:
        return None
    finally:
        os.close(fd)  # closing drops our shared probe lock
    return None


__all__ = ["OutputLock", "holder_of", "lock_path", "describe_holder"]

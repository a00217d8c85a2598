"""One writer per run directory: an advisory lock on ``RUN/.lock`` held for a whole training.

>>> import tempfile
>>> run = tempfile.mkdtemp()
>>> with RunLock(run) as lock:
...     try:
...         RunLock(run).acquire()
...     except RunDirInUse as e:
...         print(e.pid == lock.pid)
True

``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``RUN/.lock``; the holder writes ``"<pid> <host>\\n"``
into it so that a refused second writer can name it. The kernel drops the lock when the
holder exits in any way (crash, ``kill -9``), so a killed run never blocks its own resume; a
stale file's contents mean nothing without the lock. Children forked while the lock is held
close their copy of its descriptor (a worker outliving a killed trainer must not keep the run
locked). ``tdppo eval`` and ``tdppo inspect`` read only and never lock.

A lock on a network file system is only as good as that file system's ``flock``.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from pathlib import Path

__all__ = ["LOCK_NAME", "RunLock", "RunDirInUse"]

LOCK_NAME = ".lock"
_HELD_FDS: set[int] = set()  # descriptors of locks this process holds (closed in forked children)


def _close_in_child() -> None:
    for fd in list(_HELD_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_FDS.clear()


os.register_at_fork(after_in_child=_close_in_child)


class RunDirInUse(ValueError):
    """Another process holds the run directory. ``str(err)`` is one line naming it.

    Attributes:
        run_dir: the run directory.
        pid: the holder's process id (None if it had not written it yet).
        host: the holder's host name (None likewise).
    """

    def __init__(self, run_dir: Path, pid: int | None, host: str | None) -> None:
        who = f"pid {pid} on host {host}" if pid is not None else "another process"
        super().__init__(
            f"run directory {run_dir} is in use by {who} (another tdppo train); wait for it "
            "or pick another --run-dir"
        )
        self.run_dir, self.pid, self.host = run_dir, pid, host


class RunLock:
    """``with RunLock(run_dir):`` this process is the only writer of ``run_dir``.

    Creates ``run_dir`` if needed. Not re-entrant: a second ``RunLock`` on the same directory
    is refused even inside the same process.

    Raises (on entering / :meth:`acquire`):
        RunDirInUse: another holder (a ``ValueError``: the CLI prints it as one line, exit 2).
        OSError: the lock file cannot be created.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this RunLock")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, host = _holder(fd)
            os.close(fd)
            raise RunDirInUse(self.run_dir, pid, host) from None
        except OSError as e:  # a file system without flock (some network mounts): go on
            os.close(fd)
            print(
                f"tdppo: warning: cannot lock {self.path} ({e.strerror}); a second trainer on "
                "this run directory would not be refused",
                file=sys.stderr,
                flush=True,
            )
            return self
        except BaseException:
            os.close(fd)
            raise
        self.pid = os.getpid()
        try:  # who holds it, for a refused second writer's message (optional: a full disk)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{self.pid} {self.host}\n".encode(), 0)
        except OSError:
            pass
        self._fd = fd
        _HELD_FDS.add(fd)
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        _HELD_FDS.discard(fd)
        try:
            os.ftruncate(fd, 0)  # an unheld lock file is empty (a killed holder's is not)
        except OSError:
            pass
        os.close(fd)  # closing the only descriptor releases the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int, tries: int = 50) -> tuple[int | None, str | None]:
    """(pid, host) the holder wrote; it writes just after locking, so wait briefly for it."""
    for _ in range(tries):
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").split()
        if len(text) >= 2 and text[0].isdigit():
            return int(text[0]), text[1]
        time.sleep(0.01)
    return None, None

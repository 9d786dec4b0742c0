"""One run per workdir: `WorkdirLock` holds an exclusive lock on `<workdir>/.lock`.

The lock is an `flock` on a file kept open for the life of the run, so the kernel releases
it when the process ends in any way (exit, crash, SIGKILL): a lock file left by a dead run
never blocks the next one. The file records the holder's pid and host, so a second run can
say who is using the workdir. On Linux NFS `flock` is carried out as a whole-file POSIX lock
on the server, so runs on different hosts sharing the workdir exclude each other too.
Multi-host runs take it on process 0 only.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from maffsrn_jax.errors import Error

LOCK_NAME = ".lock"


class WorkdirBusy(Error):
    """Another live run holds the workdir."""


class WorkdirLock:
    """`with WorkdirLock(workdir):` - raises `WorkdirBusy` at once if a live run holds it."""

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise WorkdirBusy(
                f"{self.workdir}: in use by another run ({holder}); wait for it to finish or "
                f"stop it, or use another --workdir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # Only the holder writes: a run that is turned away leaves the file as it found it.
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        info = f"pid {os.getpid()} on {socket.gethostname()}, since {since}\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing drops the flock; the file stays (unlinking it would race)

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 256, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "pid and host unknown"

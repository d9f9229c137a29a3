"""The lock a training run holds on its workdir, whatever the storage.

On a disk, `FileLock`: an advisory `flock` on `<workdir>/.lock`, released by the OS when the
process dies, so a killed run never leaves a stale lock. On gs://, `CloudLock`
(vdm/run/cloud_lock.py): an object created only if absent, renewed, with a stale rule.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket

from vdm import storage
from vdm.run.cloud_lock import CloudLock
from vdm.run.workdir import WorkdirError, writing


def Lock(workdir: str):  # noqa: N802 - the lock class of the workdir's storage
    """The training lock of `workdir`: `FileLock` on a disk, `CloudLock` on gs://
    (vdm/run/cloud_lock.py)."""
    if storage.is_url(workdir):
        return CloudLock(workdir)
    return FileLock(workdir)


class FileLock:
    """Advisory exclusive lock on `<workdir>/.lock`; the file records the holder."""

    lost = None  # an flock is never taken over

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, ".lock")
        self.fd: int | None = None

    def acquire(self) -> FileLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = os.read(fd, 256).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise WorkdirError(
                f"{os.path.dirname(self.path)} is in use by a training run ({holder}); "
                "wait for it, or use another --workdir"
            ) from None
        with writing(self.path):
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
            os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

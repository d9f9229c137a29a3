"""The training lock of a gs:// run directory: an object created only if absent.

Cloud Storage has no `flock`, and nothing releases a lock when its process dies, so the lock is
an object `<workdir>/.lock`, created with `ifGenerationMatch=0` (of two racing creators the
service lets exactly one through) and holding its owner's host, pid and start time. The owner
rewrites it every `HEARTBEAT` seconds, each time only if it still holds the generation it wrote
(a lock taken over meanwhile is never overwritten: the owner learns it lost the lock, and the
training loop stops with one line).

The stale rule: a lock is taken over only when its owner is provably gone, that is
- it names this host, this boot and this pid namespace, and a pid that no longer runs (a run
  killed with SIGKILL, then restarted on the same VM; two containers on one VM share its host
  name but not its pids, so between them only the next rule applies), or
- it has not been rewritten for `STALE_AFTER` seconds, five heartbeats (a VM that was recycled
  or lost its network; a live owner rewrites it every `HEARTBEAT` s, so only clock skew beyond
  minutes between hosts could misjudge it).
The take-over deletes the object only if it is still the stale generation that was judged,
then creates it afresh; a run released normally (exit, Ctrl-C, SIGTERM) deletes its own lock.
A holder that could not renew for `STALE_AFTER - HEARTBEAT` s counts its lock as lost before
anyone may judge it stale, and training stops at its next log, before its next save. Each
write carries the holder's random token, so a write retried after its answer was lost is
recognised as its own.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import sys
import threading
import time
import uuid

from vdm import gcs, signals, storage
from vdm.run.workdir import WorkdirError

HEARTBEAT = 60.0  # seconds between the owner's rewrites
STALE_AFTER = 300.0  # seconds without a rewrite after which a lock is judged abandoned


class LockHeld(WorkdirError):
    """The workdir's lock is held by a live run; the message names it."""


class CloudLock:
    """The lock object `<workdir>/.lock` on Cloud Storage."""

    def __init__(
        self, workdir: str, heartbeat: float = HEARTBEAT, stale_after: float = STALE_AFTER
    ):
        self.path = storage.join(workdir, ".lock")
        self.heartbeat, self.stale_after = heartbeat, stale_after
        self.generation: int | None = None
        self.token = uuid.uuid4().hex  # this holder's, in every write of the lock
        self.lost: str | None = None  # why the lock was lost while held, if it was
        self._renewed = 0.0  # time.monotonic() of the last write that landed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _owner(self) -> bytes:
        me = {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
              "machine": _machine(), "since": time.time()}  # fmt: skip
        return json.dumps(me).encode()

    def _put(self, generation: int) -> int | None:
        """Write the lock if it is still `generation`; the new generation, or None if another
        holder's. A write whose answer was lost and that was retried finds its own token."""
        new = gcs.put_if_generation(self.path, self._owner(), generation)
        if new is None:
            found = gcs.stat(self.path)
            if found is not None and _field(found[0], "token") == self.token:
                new = found[1]
        if new is not None:
            self._renewed = time.monotonic()
        return new

    def acquire(self) -> CloudLock:
        for _ in range(3):  # a take-over raced by another process: look again
            self.generation = self._put(0)
            if self.generation is not None:
                break
            found = gcs.stat(self.path)
            if found is None:
                continue  # released meanwhile
            data, generation, age = found
            why = self._stale(data, age)
            if why is None:
                raise LockHeld(
                    f"{storage.dirname(self.path)} is in use by a training run "
                    f"({_describe(data)}, lock renewed {age:.0f} s ago); wait for it, or use "
                    f"another --workdir (a lock not renewed for {self.stale_after:.0f} s is taken "
                    "over)"
                )
            if gcs.remove_if_generation(self.path, generation):
                print(f"vdm: took over the lock of {_describe(data)} ({why})", file=sys.stderr)
        else:
            raise LockHeld(f"{self.path}: another process keeps taking the lock")
        self._thread = threading.Thread(target=self._renew, name="vdm-lock", daemon=True)
        self._thread.start()
        return self

    def _stale(self, data: bytes, age: float) -> str | None:
        """Why the lock holding `data`, last written `age` s ago, is abandoned; None if not."""
        try:
            owner = json.loads(data)
            host, pid = owner["host"], int(owner["pid"])
        except (ValueError, KeyError, TypeError):
            return "unreadable" if age > self.stale_after else None
        # The pid rule only where the pid means the same process: the same host name, boot
        # and pid namespace (containers on one VM share its name, not its pids).
        same = host == socket.gethostname() and owner.get("machine") == _machine()
        if same and not signals.alive(pid):
            return f"pid {pid} no longer runs on this host"
        if age > self.stale_after:
            return f"not renewed for {age:.0f} s"
        return None

    def _renew(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                generation = self._put(self.generation)
            except Exception:  # noqa: BLE001 - unreachable, a token refresh: the next beat
                generation = self.generation
                if time.monotonic() - self._renewed > self.stale_after - self.heartbeat:
                    # others may judge it stale before this holder can renew it again
                    self.lost = f"the lock {self.path} could not be renewed for too long"
                    return
                continue
            if generation is None:
                if self._stop.is_set():
                    return  # released meanwhile
                self.lost = f"the lock {self.path} was taken over by another process"
                return
            self.generation = generation

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)  # a renewal stuck in retries fails its precondition
            self._thread = None
        if self.generation is not None and not self.lost:
            try:
                gcs.remove_if_generation(self.path, self.generation, once=True)
            except Exception:  # noqa: BLE001 - unreachable now (the run's error says so)
                pass  # the lock goes stale by itself
            self.generation = None

    def __enter__(self) -> CloudLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _field(data: bytes, key: str):
    try:
        return json.loads(data).get(key)
    except (ValueError, AttributeError):
        return None


@functools.cache
def _machine() -> str:
    """This boot of this machine and this pid namespace: where a pid names one process."""
    parts = []
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(os.readlink(path) if path.endswith("/pid") else open(path).read())
        except OSError:
            parts.append("?")
    return " ".join(p.strip() for p in parts)


def _describe(data: bytes) -> str:
    try:
        owner = json.loads(data)
        return f"pid {owner['pid']} on {owner['host']}"
    except (ValueError, KeyError, TypeError):
        return "an unreadable lock"

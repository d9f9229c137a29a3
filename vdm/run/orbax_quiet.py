"""orbax's and tensorstore's noise, kept out of the user's terminal.

A failed read or write of a checkpoint is raised in the main thread by orbax (save, wait,
restore), where vdm/run/checkpoint.py turns it into one line. The same failure is also reported,
with tracebacks, by orbax's background threads (absl records), by the coroutines it abandons
(asyncio, unraisable exceptions, "never awaited" warnings) and by tensorstore completing
abandoned reads into orbax's closed event loop. `silence_abandoned_reads` drops exactly those
reports; `failed_write` reads the step and the OS's reason out of an orbax failure chain.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import threading
import time
import warnings

_OS_REASONS = (
    "No space left on device",
    "Disk quota exceeded",
    "Permission denied",
    "File too large",
    "Read-only file system",
    "Input/output error",
)


def failed_write(e: BaseException, directory: str, step: int | None):
    """(the step directory being written, the OS's reason) from an orbax failure chain; the
    reason is None when the chain holds no I/O failure."""
    texts, strerror, seen = [], None, set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        texts.append(" ".join(str(e).split()))
        if isinstance(e, OSError) and e.strerror and strerror is None:
            strerror = e.strerror
        e = e.__cause__ or e.__context__
    text = " ".join(texts)
    found = re.search(re.escape(directory) + r"/(\d+)\.orbax-checkpoint-tmp", text)
    if found:  # the temporary directory of the step being written
        path = os.path.join(directory, found[1])
    else:
        path = directory if step is None else os.path.join(directory, str(step))
    return path, next((r for r in _OS_REASONS if r in text), strerror)


def after_a_failure() -> None:
    """Once a read or write failed, the coroutines orbax abandoned are collected unawaited at
    exit, each with a RuntimeWarning after the one line that said what failed."""
    silence_abandoned_reads()
    warnings.filterwarnings("ignore", r"coroutine .* was never awaited", RuntimeWarning)


def silence_abandoned_reads() -> None:
    """After a failed read, tensorstore's other pending reads fail later, on orbax's threads:
    their reports (asyncio / futures loggers, thread exceptions raised from orbax code) are
    not the user's business: the walk-back already said which step was unreadable."""
    # gcsfs (orbax's small files on gs://) logs each request it gives up on with a traceback;
    # the same failure reaches the main thread through orbax.
    for name in ("asyncio", "concurrent.futures", "gcsfs"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # orbax logs each failure of its background threads (with a traceback) through absl;
    # the main thread raises the same failure from save / wait / restore, in one line.
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _DropOrbax) for f in absl_logger.filters):
        absl_logger.addFilter(_DropOrbax())
    # Thread exceptions, and "Exception ignored in: <coroutine …>" reports of abandoned read
    # coroutines finalised later (sys.unraisablehook, which bypasses logging), from orbax.
    threading.excepthook = _quiet_hook(threading.excepthook)
    sys.unraisablehook = _quiet_hook(sys.unraisablehook)


class _DropOrbax(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "orbax" not in record.pathname


def _from_orbax(args) -> bool:
    # tensorstore completes abandoned reads and writes into orbax's closed event loop from
    # C++, and reports each RuntimeError as unraisable, with no object and asyncio frames only.
    if _closed_loop(args.exc_type, args.exc_value, args.exc_traceback):
        return True
    tb = args.exc_traceback
    while tb is not None:
        if "orbax" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return "orbax" in repr(getattr(args, "object", "")) or "_read_array" in str(args.exc_value)


def _quiet_hook(original):
    """`original`, except that reports of exceptions raised from orbax code are dropped."""
    if getattr(original, "_vdm_quiet", False):
        return original

    def hook(args):
        if not _from_orbax(args):
            original(args)

    hook._vdm_quiet = True
    return hook


def _closed_loop(exc_type, exc, tb) -> bool:
    """The report of a callback into an event loop orbax has already closed."""
    if exc_type is not RuntimeError or str(exc) != "Event loop is closed":
        return False
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "asyncio" in tb.tb_frame.f_code.co_filename


def wait_until_quiet(buffer: io.StringIO, quiet_s: float = 0.5, limit_s: float = 10.0) -> None:
    """Wait until nothing new has been written to `buffer` for `quiet_s` (at most `limit_s`):
    a fixed sleep loses the race on a loaded machine."""
    deadline, size = time.monotonic() + limit_s, -1
    while time.monotonic() < deadline and buffer.tell() != size:
        size = buffer.tell()
        time.sleep(quiet_s)

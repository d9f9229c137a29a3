"""One signal path for every mode: SIGINT (Ctrl-C) and SIGTERM stop the command within
seconds, with one line and exit 128 + the signal number (130, 143).

Python runs its signal handlers only between bytecodes of the main thread, and the main thread
spends minutes inside one XLA compile or computation (a sampler's whole chain is one call): a
Ctrl-C then waits for the call to end, and jax's own code may even swallow the
`KeyboardInterrupt`. So `install()` (vdm.main, once per process) sets handlers that only
record, and has the C-level handler wake a watcher thread through `signal.set_wakeup_fd`. XLA
releases the GIL while it compiles and computes, so the watcher acts at once:

- while training's `preemption.Guard` is active, the signal goes to it: the loop finishes the
  step in flight, saves it and raises `Preempted` (vdm/run/preemption.py); a second SIGINT
  stops at once;
- otherwise the process ends now (`os._exit`): what eval, sample and compress compute is
  discarded, and they write their outputs only at the end. A write in progress finishes first
  (`writing()` sections: every file the run writes goes through one), so no file is ever half
  written; the line names the files this command wrote (`vdm: stopped by SIGINT during
  sampling; nothing written`).

Without `install()` (a library caller, a notebook) nothing changes: Python's own handlers stay.
With several processes a signal stops only the process that receives it (a scheduler signals
them all); during training the Guard's flag is gathered so that all stop at the same step.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_lock = threading.RLock()  # held by a write in progress; the watcher takes it before exiting
_state = {"installed": False, "activity": "starting", "guard": None, "written": []}


def installed() -> bool:
    return _state["installed"]


def install() -> bool:
    """Take SIGINT and SIGTERM for this process (main thread only); False where it cannot.

    Called again, it takes them back from whatever set its own handlers since: jax.distributed
    registers a C-level SIGTERM handler of its own when it starts (vdm.main calls this again
    after it)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if not _state["installed"]:
        receive, send = socket.socketpair()
        send.setblocking(False)
        watcher = threading.Thread(target=_watch, args=(receive,), name="vdm-signals", daemon=True)
        _state.update(installed=True, sockets=(receive, send), watcher=watcher)
        watcher.start()
    for s in SIGNALS:
        if signal.getsignal(s) is not signal.SIG_IGN:  # a background job's ignored SIGINT stays
            signal.signal(s, _record)
    signal.set_wakeup_fd(_state["sockets"][1].fileno(), warn_on_full_buffer=False)
    return True


def _record(signum, frame) -> None:
    """The Python-level handler: the watcher has acted (or will); should it be gone, or the
    wakeup descriptor taken by someone else, act here, at the main thread's next bytecode."""
    watcher = _state.get("watcher")
    if watcher is None or not watcher.is_alive() or signal.set_wakeup_fd(-1) != _send_fd():
        _on_signal(signum)


def _send_fd() -> int:
    fd = _state["sockets"][1].fileno()
    signal.set_wakeup_fd(fd, warn_on_full_buffer=False)  # put back what the check took
    return fd


def _watch(receive: socket.socket) -> None:
    while True:
        try:
            data = receive.recv(64)
        except OSError:
            return
        for signum in data:
            if signum in SIGNALS:
                try:
                    _on_signal(signum)
                except BaseException:  # never leave the process without a signal path
                    os._exit(128 + signum)


def _on_signal(signum: int) -> None:
    guard = _state["guard"]
    if guard is not None and guard.take(signum):
        return
    with _lock:  # a write in progress finishes; none starts after it
        stop(signum)


def stop(signum: int) -> None:
    """Print the closing line and end the process with 128 + `signum`, at once."""
    try:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        # the process's own stderr: a `redirect_stderr` in the main thread (orbax's noise held
        # back during a restore) must not swallow the line; a closed pipe must not stop the exit
        stream = sys.__stderr__ or sys.stderr
        with contextlib.suppress(Exception):
            os.write(stream.fileno(), f"{_break(stream)}{line(signum)}\n".encode())
    finally:
        os._exit(128 + signum)


def line(signum: int) -> str:
    """`vdm: stopped by SIGINT during sampling; nothing written` (or what was kept)."""
    name = signal.Signals(signum).name
    return f"vdm: stopped by {name} during {_state['activity']}; {_written()}"


def _break(stream) -> str:
    """A newline where the terminal's current line is taken: by the `^C` it echoed, or by a
    progress bar."""
    with contextlib.suppress(Exception):
        if stream.isatty():
            return "\n"
    tqdm = sys.modules.get("tqdm.std")
    bars = getattr(getattr(tqdm, "tqdm", None), "_instances", ())
    return "\n" if any(not getattr(b, "disable", True) for b in list(bars)) else ""


def _written() -> str:
    paths = list(dict.fromkeys(_state["written"]))
    if not paths:
        return "nothing written"
    shown = ", ".join(paths[-3:])
    more = f" and {len(paths) - 3} earlier" if len(paths) > 3 else ""
    return f"kept {shown}{more} (written whole)"


@contextlib.contextmanager
def activity(what: str):
    """Name what the process is doing, for the closing line ("sampling", "evaluation")."""
    previous, _state["activity"] = _state["activity"], what
    try:
        yield
    finally:
        _state["activity"] = previous


@contextlib.contextmanager
def writing(path: str):
    """A write the signal path lets finish before the process ends; `path` is then named as
    kept."""
    with _lock:
        yield
        _state["written"].append(str(path))


@contextlib.contextmanager
def deferred_to(guard):
    """Hand signals to `guard` (its `take(signum)` says whether it keeps the signal) while
    the block runs: training's step-boundary stop."""
    previous, _state["guard"] = _state["guard"], guard
    try:
        yield
    finally:
        _state["guard"] = previous


def alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (signal 0: checked, nothing sent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # runs, as another user
    return True

"""Preemption: SIGTERM or SIGINT ends training at a step boundary, after a save of that step.

SLURM, Kubernetes and TPU maintenance events send SIGTERM and wait a grace period before
SIGKILL; Ctrl-C sends SIGINT. While `Guard` is active the first such signal only sets a flag:
the loop finishes the step in flight, health-checks and saves it, writes its metrics and
raises `Preempted`; the command then prints one line and exits with 128 + the signal number
(143 for SIGTERM, 130 for SIGINT), the code a shell reports for a process ended by that signal,
which schedulers' requeue rules match (e.g. a Kubernetes podFailurePolicy on exit code 143;
SLURM's `--requeue` requeues a preempted job by itself). A second SIGINT interrupts at once.

With several processes every one must stop at the same step, since a save is collective:
`requested()` gathers the flag from all processes, and each calls it at the same loop step.

Under the command line the signals reach the Guard through vdm/signals.py's watcher (the one
signal path of every mode), so the flag is set even while XLA holds the main thread; without
it (a library caller) the Guard sets Python handlers of its own for the block.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

from vdm import sharding, signals

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """Training stopped for a signal after saving step `step`."""

    def __init__(self, step: int, signum: int, saved: bool):
        self.step, self.signum, self.saved = step, signum, saved
        self.exit_code = 128 + signum
        what = "saved" if saved else "no step was trained, nothing new to save"
        super().__init__(
            f"preempted at step {step} ({signal.Signals(signum).name}); {what}; "
            "rerun the same command to resume"
        )


class Guard:
    """Context manager: the first SIGTERM / SIGINT sets a flag instead of ending the process."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> Guard:
        if signals.installed():
            self._deferral = signals.deferred_to(self)
            self._deferral.__enter__()
        elif threading.current_thread() is threading.main_thread():  # signals need the main one
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        deferral, self._deferral = getattr(self, "_deferral", None), None
        if deferral is not None:
            deferral.__exit__(*exc)

    def take(self, signum: int) -> bool:
        """Keep `signum` for the step boundary (True), or let it stop the process now (False:
        a second SIGINT)."""
        if self.signum is not None and signum == signal.SIGINT:
            return False
        self._note(signum)
        return True

    def _handle(self, signum, frame) -> None:
        if not self.take(signum):
            raise KeyboardInterrupt  # a second Ctrl-C: stop now

    def _note(self, signum: int) -> None:
        first, self.signum = self.signum is None, signum  # set before anything can fail
        if first:
            with contextlib.suppress(Exception):  # a closed pipe must not lose the signal
                print(
                    f"vdm: {signal.Signals(signum).name} received: finishing the step in "
                    "flight and saving it (Ctrl-C again stops at once)",
                    file=sys.stderr,
                    flush=True,
                )

    def requested(self) -> int | None:
        """The signal number if any process received one (the same answer on every process)."""
        return int(sharding.gathered(self.signum or 0).max()) or None

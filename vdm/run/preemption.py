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
"""

from __future__ import annotations

import signal
import sys
import threading

from vdm import sharding

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
        if threading.current_thread() is threading.main_thread():  # signals need the main one
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        if self.signum is None:
            print(
                f"vdm: {signal.Signals(signum).name} received: finishing the step in flight "
                "and saving it",
                file=sys.stderr,
                flush=True,
            )
        self.signum = signum

    def requested(self) -> int | None:
        """The signal number if any process received one (the same answer on every process)."""
        return int(sharding.gathered(self.signum or 0).max()) or None

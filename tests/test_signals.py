"""Ctrl-C and SIGTERM stop every mode within seconds, with one line and 130 / 143, and write
nothing half (vdm/signals.py). Ctrl-C is typed into a pseudo-terminal, so the terminal driver
signals the process group, as a user's terminal does; the commands are given work that takes
far longer than the test waits (a sampler of 10⁵ steps), so a signal that is not acted on
fails the test instead of finishing the command."""

import os
import pty
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from vdm import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "--config=digits:smoke"
READY = b"XLA:CPU"  # the first line a mode prints (vdm.runtime.describe), once signals are taken
LIMIT_S = 120  # far past a stop "within seconds", far short of the commands' own work


def _env() -> dict:
    """This environment, with XLA_FLAGS as a user's shell has them: without the flag this
    process's `import vdm` added, so that the child adds it and prints its READY line."""
    added = [f"--{k}={v}" for k, v in runtime.CPU_FLAGS.items()]
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if f not in added)
    return dict(os.environ, JAX_PLATFORMS="cpu", VDM_XLA_CPU_DEFAULTS="1", XLA_FLAGS=flags)


def in_terminal(args, ready=READY, delay=2.0, keys=(b"\x03",), gap=1.0):
    """Run the CLI in a pseudo-terminal; once `ready` is printed wait `delay` s and type each
    of `keys` (`gap` s apart); returns (exit code, output, seconds from the last key to exit)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal is its controlling terminal
        os.chdir(ROOT)
        os.execve(sys.executable, [sys.executable, "-m", "vdm.main", *args], _env())
    out, sent_at, start = b"", None, time.time()
    try:
        while time.time() - start < LIMIT_S:
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            if sent_at is None and ready in out:
                time.sleep(delay)
                for i, key in enumerate(keys):
                    if i:
                        time.sleep(gap)
                    os.write(fd, key)
                sent_at = time.time()
    finally:
        status = _reap(pid)
        os.close(fd)
    text = out.decode(errors="replace").replace("\r\n", "\n")
    assert sent_at is not None, f"the command never got ready:\n{text[-3000:]}"
    return os.waitstatus_to_exitcode(status), text, time.time() - sent_at


def _reap(pid: int, grace_s: float = 10.0) -> int:
    """The child's wait status: waited for up to `grace_s`, then killed."""
    deadline = time.time() + grace_s
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


def signalled(args, sig, ready=READY, delay=2.0):
    """Run the CLI on pipes and send `sig` once `ready` is printed (a scheduler's SIGTERM)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vdm.main", *args],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out, start = b"", time.time()
    while ready not in out:
        if time.time() - start > LIMIT_S or not select.select([proc.stdout], [], [], 1.0)[0]:
            if time.time() - start <= LIMIT_S:
                continue
            proc.kill()
            raise AssertionError(f"the command never got ready:\n{out.decode()[-3000:]}")
        line = proc.stdout.readline()
        assert line, f"the command never got ready:\n{out.decode()[-3000:]}"
        out += line
    time.sleep(delay)
    proc.send_signal(sig)
    sent_at = time.time()
    rest, _ = proc.communicate(timeout=LIMIT_S)
    return proc.returncode, (out + rest).decode(errors="replace"), time.time() - sent_at


def last_line(text: str) -> str:
    return [x for x in text.replace("\r", "\n").splitlines() if x.strip()][-1]


def files(root) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained digits:smoke run and a few of its test images as an .npz."""
    root = tmp_path_factory.mktemp("signals")
    proc = subprocess.run(
        [sys.executable, "-m", "vdm.main", SMOKE, f"--workdir={root / 'run'}"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from sklearn.datasets import load_digits

    images = load_digits().images[:8].astype(np.uint8)[..., None]
    np.savez(root / "images.npz", images=images)
    return root


def test_ctrl_c_stops_sampling_at_once_and_writes_nothing(run):
    before = files(run)
    code, out, took = in_terminal(
        [SMOKE, f"--workdir={run / 'run'}", "--mode=sample", "--config.sample.steps=100000"]
    )
    assert code == 130, out[-3000:]
    assert last_line(out) == "vdm: stopped by SIGINT during sampling; nothing written", out
    assert "Traceback" not in out and took < 30, (took, out[-3000:])
    assert files(run) == before


def test_ctrl_c_stops_evaluation_without_a_traceback(run):
    before = files(run)
    code, out, took = in_terminal(
        [SMOKE, f"--workdir={run / 'run'}", "--mode=eval", "--config.eval.repeats=100000"]
    )
    assert code == 130, out[-3000:]
    assert last_line(out) == "vdm: stopped by SIGINT during evaluation; nothing written", out
    assert "Traceback" not in out and took < 30, (took, out[-3000:])
    assert files(run) == before


def test_sigterm_stops_compression_with_one_line_and_no_output(run):
    before = files(run)
    code, out, took = signalled(
        [
            SMOKE,
            f"--workdir={run / 'run'}",
            "--mode=compress",
            f"--input={run / 'images.npz'}",
            f"--output={run / 'x.vdmz'}",
            "--config.compress.steps=1000000",
        ],
        signal.SIGTERM,
    )
    assert code == 143, out[-3000:]
    assert last_line(out) == "vdm: stopped by SIGTERM during compression; nothing written", out
    assert "Traceback" not in out and took < 30, (took, out[-3000:])
    assert files(run) == before


def test_a_second_ctrl_c_stops_training_at_once(tmp_path):
    """The first Ctrl-C asks for the step in flight to be saved; the second stops now."""
    code, out, took = in_terminal(
        [
            SMOKE,
            f"--workdir={tmp_path / 'run'}",
            "--config.training.num_steps=1000000",
            "--config.training.eval_every=1000000",
        ],
        ready=b"starting at step 0",
        keys=(b"\x03", b"\x03"),
        delay=0.5,
        gap=0.2,
    )
    assert code == 130, out[-3000:]
    assert "SIGINT received: finishing the step in flight and saving it" in out, out[-3000:]
    assert last_line(out).startswith("vdm: stopped by SIGINT during training; "), out[-3000:]
    assert "Traceback" not in out and took < 30, (took, out[-3000:])


def test_a_write_in_progress_finishes_before_the_signal_ends_the_process(tmp_path):
    """SIGTERM during a `writing` section: the file is written whole, then exit 143, and the
    line names it."""
    path = tmp_path / "result.json"
    code = f"""
import os, signal, threading, time
from vdm import signals
from vdm.run import workdir
signals.install()
with signals.activity("evaluation"):
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
    with workdir.writing({str(path)!r}):
        with open({str(path)!r} + ".tmp", "w") as f:
            f.write("x" * 1000)
        time.sleep(1.5)  # the signal arrives here
        os.replace({str(path)!r} + ".tmp", {str(path)!r})
    time.sleep(30)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert path.read_text() == "x" * 1000
    assert not os.path.exists(str(path) + ".tmp")
    assert proc.stderr.strip() == (
        f"vdm: stopped by SIGTERM during evaluation; kept {path} (written whole)"
    )


def test_a_missing_config_file_is_one_line(tmp_path):
    for spec, what in (("configs/tyop.py", "does not exist"), (str(tmp_path), "is a directory")):
        proc = subprocess.run(
            [sys.executable, "-m", "vdm.main", f"--config={spec}", f"--workdir={tmp_path}/r"],
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines() == [
            f"error: --config={spec}: the config file {spec} {what} (or name a shipped "
            f"config: {', '.join(__import__('vdm.run.config').run.config.named_configs())})"
        ], proc.stderr
        assert not os.path.exists(f"{tmp_path}/r")


def test_the_signal_path_survives_a_closed_stderr_and_keeps_an_ignored_sigint(tmp_path):
    """`vdm … 2>&1 | head` whose reader has gone: the closing line cannot be written, the
    process still stops with 143. A SIGINT the process was started ignoring (a background
    job of a script) stays ignored."""
    code = """
import os, signal, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
from vdm import signals
signals.install()
read, write = os.pipe()
os.close(read)
os.dup2(write, 2)  # stderr: a pipe nobody reads
os.kill(os.getpid(), signal.SIGINT)  # ignored
time.sleep(1)
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(30)
os._exit(0)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 143, proc.stderr[-3000:]

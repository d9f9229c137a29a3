"""The Cloud Storage side of vdm/storage.py: one client per endpoint, retries with a deadline,
failures as one line, and the generation-checked operations a lock needs.

Every call retries transient failures (an outage, 429, 5xx) with google-cloud-storage's
exponential back-off for at most `$VDM_STORAGE_RETRY_SECONDS` (default 120 s, the library's
own), then raises one `StorageError` naming the object and the cause (`cloud_errors`).
`stat`, `put_if_generation` and `remove_if_generation` act only on the generation they name:
the workdir lock (vdm/run/cloud_lock.py) rests on them.
"""

from __future__ import annotations

import contextlib
import functools
import os

ACCESS_TIMEOUT = 20.0  # seconds for a request that must not wait out an outage
RETRY_ENV = "VDM_STORAGE_RETRY_SECONDS"


class StorageError(OSError):
    """A run directory's storage that cannot be used; the message names the URL and why."""

    def __str__(self) -> str:
        return self.args[0] if self.args else "storage error"


@contextlib.contextmanager
def cloud_errors(path: str, action: str):
    """A Cloud Storage failure (the service unreachable, an error status) as one
    `StorageError` naming `path`; FileNotFoundError and precondition failures pass through."""
    try:
        yield
    except (StorageError, FileNotFoundError):
        raise
    except Exception as e:  # noqa: BLE001 - requests', urllib3's and google-api-core's errors
        from google.api_core import exceptions

        if isinstance(e, exceptions.PreconditionFailed | exceptions.NotFound):
            raise
        from google.auth import exceptions as auth_exceptions

        if isinstance(e, auth_exceptions.RefreshError):
            cause = f"Cloud Storage credentials could not be refreshed ({e})"
        elif type(e).__name__ == "DataCorruption":  # a download whose checksum did not match
            cause = "Cloud Storage sent data whose checksum does not match"
        elif isinstance(e, exceptions.RetryError):  # the retries' deadline passed
            last = e.cause if e.cause is not None else e
            seconds = os.environ.get(RETRY_ENV, "120")
            cause = f"Cloud Storage cannot be reached ({type(last).__name__}, retried {seconds} s)"
        elif isinstance(e, exceptions.GoogleAPICallError):
            cause = f"Cloud Storage answered {e.code}: {e.message}"
        elif _is_network_error(e):
            cause = f"Cloud Storage cannot be reached ({type(e).__name__})"
        else:
            raise
        raise StorageError(f"cannot {action} {path}: {' '.join(cause.split())[:200]}") from None


def network_cause(e: BaseException | None) -> str | None:
    """The type name of the first network failure in `e`'s chain (a connection refused or
    reset, a timeout: the storage is unreachable), or None."""
    import asyncio

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e)
        if (
            _is_network_error(e)
            or isinstance(e, asyncio.TimeoutError)
            or type(e).__module__.startswith("aiohttp")
            and "Connect" in type(e).__name__
            or any(t in text for t in ("Connection refused", "Connect call failed", "UNAVAILABLE"))
        ):
            return type(e).__name__
        e = e.__cause__ or e.__context__
    return None


def _is_network_error(e: BaseException) -> bool:
    import requests
    from google.api_core import exceptions
    from google.auth import exceptions as auth_exceptions

    return isinstance(
        e,
        requests.ConnectionError
        | requests.Timeout
        | ConnectionError
        | exceptions.RetryError
        | auth_exceptions.TransportError,
    )


def retry():
    """google-cloud-storage's retry policy (exponential back-off on transient errors), for at
    most `$VDM_STORAGE_RETRY_SECONDS` (default 120 s) per call."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(float(os.environ.get(RETRY_ENV, "120")))


def split(url: str) -> tuple[str, str]:
    bucket, _, name = url[len("gs://") :].partition("/")
    return bucket, name


def client():
    """One client per endpoint (STORAGE_EMULATOR_HOST points tests at an emulator)."""
    return client_for(os.environ.get("STORAGE_EMULATOR_HOST"))


@functools.cache
def client_for(endpoint: str | None):
    from google.cloud import storage

    return storage.Client()


def stat(url: str) -> tuple[bytes, int, float] | None:
    """(contents, generation, seconds since the object was last written) of a gs:// object,
    or None if there is none (or it changed while being read). The age is the service's update
    time against this machine's clock."""
    import time

    from google.api_core import exceptions

    bucket, name = split(url)
    with cloud_errors(url, "read"):
        blob = client().bucket(bucket).get_blob(name, retry=retry())
        if blob is None:
            return None
        try:
            data = blob.download_as_bytes(if_generation_match=blob.generation, retry=retry())
        except (exceptions.NotFound, exceptions.PreconditionFailed):
            return None  # deleted or rewritten meanwhile: look again
    return data, int(blob.generation), time.time() - blob.updated.timestamp()


def put_if_generation(url: str, blob: bytes, generation: int) -> int | None:
    """Write `url` only if its generation is still `generation` (0: only if absent); the new
    generation, or None if another writer changed or created it first."""
    from google.api_core import exceptions

    b = blob_of(url)
    with cloud_errors(url, "write"):
        try:
            b.upload_from_string(blob, if_generation_match=generation, retry=retry())
        except exceptions.PreconditionFailed:
            return None
    return int(b.generation)


def remove_if_generation(url: str, generation: int, once: bool = False) -> bool:
    """Delete `url` only if its generation is still `generation`: True if this call did.
    `once`: one request, no retries (a release at exit does not wait out an outage)."""
    from google.api_core import exceptions

    kw = {"retry": None, "timeout": ACCESS_TIMEOUT} if once else {"retry": retry()}
    with cloud_errors(url, "delete"):
        try:
            blob_of(url).delete(if_generation_match=generation, **kw)
        except (exceptions.PreconditionFailed, exceptions.NotFound):
            return False
    return True


def blob_of(url: str):
    """The google-cloud-storage Blob of a gs:// URL."""
    bucket, name = split(url)
    return client().bucket(bucket).blob(name)

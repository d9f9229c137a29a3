"""One path layer for what a run reads and writes: local paths and `gs://` URLs.

A run directory may be a local folder or a Cloud Storage prefix (`gs://bucket/runs/c10`, as
TPU VMs write: they share no disk). Local paths go through `os`; URLs through
google-cloud-storage's client, whose every call asks the service (gcsfs, which orbax's etils
paths use, caches listings per process, and would not see what tensorstore or another host
wrote). Object stores have no append, no rename and no empty folder: writes here
are whole-object puts (atomic by nature), `create_exclusive` is a create-if-absent
(`ifGenerationMatch=0`), and "folders" exist once an object is in them.

Another scheme (`s3://`, `hdfs://`, …) is refused in one line (`check`), and a gs:// URL that
cannot be reached (no credentials, no network, no bucket, no permission) is one line naming
the URL and the cause (`check_access`), before anything is written: never a local folder
named `gs:`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import posixpath
import re
import shutil

# Read by etils and gcsfs when they are first imported: no TensorFlow lookup, and no gRPC
# probe of each bucket for hierarchical namespaces (a 30 s timeout per bucket offline).
os.environ.setdefault("EPATH_USE_TF", "false")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

SUPPORTED = ("gs",)
ACCESS_TIMEOUT = 20.0  # seconds for the first request to a bucket
# How long one Cloud Storage call retries a transient failure (an outage, 429, 5xx) before it
# fails with one line: google-cloud-storage's own default, 120 s; the tests set a few seconds.
RETRY_ENV = "VDM_STORAGE_RETRY_SECONDS"


class StorageError(OSError):
    """A run directory's storage that cannot be used; the message names the URL and why."""

    def __str__(self) -> str:
        return self.args[0] if self.args else "storage error"


def scheme(path: str) -> str | None:
    """'gs' for gs://…, None for a local path."""
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", str(path))
    return m[1].lower() if m else None


def is_url(path: str) -> bool:
    return scheme(path) is not None


def check(path: str, what: str = "--workdir") -> str:
    """`path` itself if local or of a supported scheme; else one line naming what works."""
    s = scheme(path)
    if s is not None and s not in SUPPORTED:
        raise StorageError(
            f"{what}={path}: {s}:// is not supported; give a local path or a Cloud Storage "
            "URL gs://bucket/path"
        )
    if s == "gs" and not re.match(r"^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/|$)", path):
        raise StorageError(f"{what}={path}: not a Cloud Storage URL (gs://bucket/path)")
    if s == "gs" and not path[len("gs://") :].strip("/").count("/"):
        raise StorageError(
            f"{what}={path}: a whole bucket; give a path inside it (gs://bucket/runs/name)"
        )
    return path


def abspath(path: str) -> str:
    """A local path made absolute; a URL as it is, without a trailing slash."""
    return path.rstrip("/") if is_url(path) else os.path.abspath(path)


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts) if is_url(base) else os.path.join(base, *parts)


def dirname(path: str) -> str:
    return posixpath.dirname(path.rstrip("/")) if is_url(path) else os.path.dirname(path)


def _blob(url: str):
    bucket, name = _split(url)
    return _client().bucket(bucket).blob(name)


def exists(path: str) -> bool:
    """A file, or a folder (locally), or an object or a prefix with objects under it."""
    if not is_url(path):
        return os.path.exists(path)
    with cloud_errors(path, "look up"):
        return _blob(path).exists(retry=_retry()) or isdir(path)


def isdir(path: str) -> bool:
    if not is_url(path):
        return os.path.isdir(path)
    bucket, name = _split(path.rstrip("/") + "/")
    with cloud_errors(path, "list"):
        blobs = _client().list_blobs(bucket, prefix=name, max_results=1, retry=_retry())
        return any(True for _ in blobs)


def listdir(path: str) -> list[str]:
    """Names in a folder (a URL's: the objects and prefixes right under it); [] if none."""
    if not is_url(path):
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    bucket, prefix = _split(path.rstrip("/") + "/")
    with cloud_errors(path, "list"):
        pages = _client().list_blobs(bucket, prefix=prefix, delimiter="/", retry=_retry())
        names = [b.name[len(prefix) :] for b in pages]  # iterating fills pages.prefixes
        names += [p[len(prefix) :].rstrip("/") for p in pages.prefixes]
    return sorted(n for n in names if n)


def makedirs(path: str) -> None:
    """A local folder and its parents; nothing for a URL (a prefix exists with its objects)."""
    if not is_url(path):
        os.makedirs(path, exist_ok=True)


def read_bytes(path: str) -> bytes:
    if is_url(path):
        from google.api_core import exceptions

        with cloud_errors(path, "read"):
            try:
                return _blob(path).download_as_bytes(retry=_retry())
            except exceptions.NotFound:
                raise FileNotFoundError(2, "No such object", path) from None
    with open(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode()


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode())


def write_bytes(path: str, blob: bytes) -> None:
    """`path` holds `blob` whole, or is left as it was: locally a temporary file, fsync and a
    rename; on Cloud Storage one object put (readers see the old object or the new one)."""
    if is_url(path):
        with cloud_errors(path, "write"):
            _blob(path).upload_from_string(blob, retry=_retry())
        return
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove(path: str) -> None:
    if is_url(path):
        from google.api_core import exceptions

        with cloud_errors(path, "delete"):
            try:
                _blob(path).delete(retry=_retry())
            except exceptions.NotFound:
                pass
    elif os.path.exists(path):
        os.remove(path)


def move(src: str, dst: str) -> None:
    """Move a file or a folder to `dst` (locally a rename; on Cloud Storage `move_tree`, or
    one object copied then deleted)."""
    if not is_url(src):
        os.replace(src, dst)
        return
    with cloud_errors(src, "move"):
        single = _blob(src).exists(retry=_retry())
    if single:
        client = _client()
        with cloud_errors(src, "move"):
            b = _blob(src)
            dst_bucket, dst_name = _split(dst)
            client.bucket(_split(src)[0]).copy_blob(
                b, client.bucket(dst_bucket), dst_name, retry=_retry()
            )
            b.delete(retry=_retry())
    else:
        move_tree(src, dst)


def remove_tree(url: str) -> None:
    """Delete a folder (locally) or every object under a gs:// prefix."""
    if not is_url(url):
        shutil.rmtree(url, ignore_errors=True)
        return
    bucket, prefix = _split(url.rstrip("/") + "/")
    with cloud_errors(url, "delete"):
        for b in list(_client().list_blobs(bucket, prefix=prefix, retry=_retry())):
            b.delete(retry=_retry())


def move_tree(src: str, dst: str) -> None:
    """Move a folder (a prefix of objects) to `dst`. On Cloud Storage, which has no rename,
    every object is copied first and the originals deleted only once all copies exist: a
    failure midway leaves the source whole (and a partial copy), never less than one copy."""
    if not is_url(src):
        shutil.move(src, dst)
        return
    client = _client()
    bucket_name, prefix = _split(src.rstrip("/") + "/")
    dst_bucket, dst_prefix = _split(dst.rstrip("/") + "/")
    bucket, target = client.bucket(bucket_name), client.bucket(dst_bucket)
    with cloud_errors(src, "move"):
        blobs = list(client.list_blobs(bucket_name, prefix=prefix, retry=_retry()))
        for b in blobs:
            bucket.copy_blob(b, target, dst_prefix + b.name[len(prefix) :], retry=_retry())
        for b in blobs:
            b.delete(retry=_retry())


def upload_tree(local: str, url: str) -> None:
    """Copy a local folder's files to `url` (a folder, locally), one object each."""
    for dirpath, _, files in os.walk(local):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), local).replace(os.sep, "/")
            target = join(url, rel)
            makedirs(dirname(target))
            with open(os.path.join(dirpath, name), "rb") as f:
                write_bytes(target, f.read())


# ---- Cloud Storage: what the object store itself promises. ----


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


def _retry():
    """google-cloud-storage's retry policy (exponential back-off on transient errors), for at
    most `$VDM_STORAGE_RETRY_SECONDS` (default 120 s) per call."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(float(os.environ.get(RETRY_ENV, "120")))


def _split(url: str) -> tuple[str, str]:
    bucket, _, name = url[len("gs://") :].partition("/")
    return bucket, name


def _client():
    """One client per endpoint (STORAGE_EMULATOR_HOST points tests at an emulator)."""
    return _client_for(os.environ.get("STORAGE_EMULATOR_HOST"))


@functools.cache
def _client_for(endpoint: str | None):
    from google.cloud import storage

    return storage.Client()


def create_exclusive(path: str, blob: bytes) -> bool:
    """Create `path` holding `blob` if it does not exist: True if this call created it.
    Locally `O_EXCL`; on Cloud Storage a put with `ifGenerationMatch=0`, which the service
    refuses (412) when the object exists, so of two racing writers exactly one wins."""
    if not is_url(path):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        return True
    from google.api_core import exceptions

    try:
        # A multipart upload: the precondition holds for it (fake-gcs-server enforces it
        # there; its simple uploads ignore the precondition).
        _blob(path).upload_from_string(blob, if_generation_match=0, retry=_retry())
    except exceptions.PreconditionFailed:
        return False
    return True


def check_access(url: str, what: str = "--workdir") -> None:
    """One request to `url`'s bucket, without retries: one `StorageError` line naming the URL
    and the cause if it cannot be used (no credentials, no network, no bucket, no
    permission); nothing for a local path."""
    if scheme(url) != "gs":
        return
    check(url, what)
    bucket, _ = _split(url)
    try:
        from google.api_core import exceptions
        from google.auth import exceptions as auth_exceptions

        try:
            found = _client().bucket(bucket).exists(timeout=ACCESS_TIMEOUT, retry=None)
        except auth_exceptions.DefaultCredentialsError:
            raise StorageError(
                f"{what}={url}: no Google Cloud credentials (on a TPU VM they come with the "
                "VM's service account; elsewhere `gcloud auth application-default login`)"
            ) from None
        except exceptions.Forbidden as e:
            raise StorageError(
                f"{what}={url}: permission denied on bucket {bucket} ({e.message})"
            ) from None
        except exceptions.GoogleAPICallError as e:
            raise StorageError(
                f"{what}={url}: Cloud Storage answered {e.code}: {e.message}"
            ) from None
        except Exception as e:  # noqa: BLE001 - a network error of requests/urllib3/auth
            cause = " ".join(str(e).split())[:160]
            raise StorageError(
                f"{what}={url}: Cloud Storage cannot be reached ({type(e).__name__}: {cause})"
            ) from None
    except ImportError as e:
        raise StorageError(
            f"{what}={url}: gs:// needs google-cloud-storage and gcsfs ({e.name} is missing): "
            "pip install google-cloud-storage gcsfs"
        ) from None
    if not found:
        raise StorageError(f"{what}={url}: bucket {bucket} does not exist")


# ---- Generation-checked operations (a lock on Cloud Storage: vdm/run/cloud_lock.py). ----


def stat(url: str) -> tuple[bytes, int, float] | None:
    """(contents, generation, seconds since the object was last written) of a gs:// object,
    or None if there is none (or it changed while being read). The age is the service's update
    time against this machine's clock."""
    import time

    from google.api_core import exceptions

    bucket, name = _split(url)
    with cloud_errors(url, "read"):
        blob = _client().bucket(bucket).get_blob(name, retry=_retry())
        if blob is None:
            return None
        try:
            data = blob.download_as_bytes(if_generation_match=blob.generation, retry=_retry())
        except (exceptions.NotFound, exceptions.PreconditionFailed):
            return None  # deleted or rewritten meanwhile: look again
    return data, int(blob.generation), time.time() - blob.updated.timestamp()


def put_if_generation(url: str, blob: bytes, generation: int) -> int | None:
    """Write `url` only if its generation is still `generation` (0: only if absent); the new
    generation, or None if another writer changed or created it first."""
    from google.api_core import exceptions

    b = _blob(url)
    with cloud_errors(url, "write"):
        try:
            b.upload_from_string(blob, if_generation_match=generation, retry=_retry())
        except exceptions.PreconditionFailed:
            return None
    return int(b.generation)


def remove_if_generation(url: str, generation: int, retry="default") -> bool:
    """Delete `url` only if its generation is still `generation`: True if this call did.
    `retry=None`: one request (a release at exit does not wait out an outage)."""
    from google.api_core import exceptions

    with cloud_errors(url, "delete"):
        try:
            kw = (
                {"retry": _retry()}
                if retry == "default"
                else {"retry": retry, "timeout": ACCESS_TIMEOUT}
            )
            _blob(url).delete(if_generation_match=generation, **kw)
        except (exceptions.PreconditionFailed, exceptions.NotFound):
            return False
    return True

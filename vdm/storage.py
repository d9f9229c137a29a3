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
    return _blob(path).exists() or isdir(path)


def isdir(path: str) -> bool:
    if not is_url(path):
        return os.path.isdir(path)
    bucket, name = _split(path.rstrip("/") + "/")
    blobs = _client().list_blobs(bucket, prefix=name, max_results=1)
    return any(True for _ in blobs)


def listdir(path: str) -> list[str]:
    """Names in a folder (a URL's: the objects and prefixes right under it); [] if none."""
    if not is_url(path):
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    bucket, prefix = _split(path.rstrip("/") + "/")
    pages = _client().list_blobs(bucket, prefix=prefix, delimiter="/")
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

        try:
            return _blob(path).download_as_bytes()
        except exceptions.NotFound:
            raise FileNotFoundError(2, "No such object", path) from None
    with open(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode()


def write_bytes(path: str, blob: bytes) -> None:
    """`path` holds `blob` whole, or is left as it was: locally a temporary file, fsync and a
    rename; on Cloud Storage one object put (readers see the old object or the new one)."""
    if is_url(path):
        _blob(path).upload_from_string(blob)
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

        try:
            _blob(path).delete()
        except exceptions.NotFound:
            pass
    elif os.path.exists(path):
        os.remove(path)


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
    blobs = list(client.list_blobs(bucket_name, prefix=prefix))
    for b in blobs:
        bucket.copy_blob(b, target, dst_prefix + b.name[len(prefix) :])
    for b in blobs:
        b.delete()


# ---- Cloud Storage: what the object store itself promises. ----


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
        _blob(path).upload_from_string(blob, if_generation_match=0)
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

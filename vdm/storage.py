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
named `gs:`. The client, its retries and its one-line errors are vdm/gcs.py.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil

from vdm import gcs
from vdm.gcs import StorageError, network_cause  # noqa: F401 - the layer's names

# Read by etils and gcsfs when they are first imported: no TensorFlow lookup, and no gRPC
# probe of each bucket for hierarchical namespaces (a 30 s timeout per bucket offline).
os.environ.setdefault("EPATH_USE_TF", "false")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

SUPPORTED = ("gs",)


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
    return gcs.blob_of(url)


def exists(path: str) -> bool:
    """A file, or a folder (locally), or an object or a prefix with objects under it."""
    if not is_url(path):
        return os.path.exists(path)
    with gcs.cloud_errors(path, "look up"):
        return _blob(path).exists(retry=gcs.retry()) or isdir(path)


def isdir(path: str) -> bool:
    if not is_url(path):
        return os.path.isdir(path)
    bucket, name = gcs.split(path.rstrip("/") + "/")
    with gcs.cloud_errors(path, "list"):
        blobs = gcs.client().list_blobs(bucket, prefix=name, max_results=1, retry=gcs.retry())
        return any(True for _ in blobs)


def listdir(path: str) -> list[str]:
    """Names in a folder (a URL's: the objects and prefixes right under it); [] if none."""
    if not is_url(path):
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    bucket, prefix = gcs.split(path.rstrip("/") + "/")
    with gcs.cloud_errors(path, "list"):
        pages = gcs.client().list_blobs(bucket, prefix=prefix, delimiter="/", retry=gcs.retry())
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

        with gcs.cloud_errors(path, "read"):
            try:
                return _blob(path).download_as_bytes(retry=gcs.retry())
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
        with gcs.cloud_errors(path, "write"):
            _blob(path).upload_from_string(blob, retry=gcs.retry())
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

        with gcs.cloud_errors(path, "delete"):
            try:
                _blob(path).delete(retry=gcs.retry())
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
    with gcs.cloud_errors(src, "move"):
        single = _blob(src).exists(retry=gcs.retry())
    if single:
        client = gcs.client()
        with gcs.cloud_errors(src, "move"):
            b = _blob(src)
            dst_bucket, dst_name = gcs.split(dst)
            client.bucket(gcs.split(src)[0]).copy_blob(
                b, client.bucket(dst_bucket), dst_name, retry=gcs.retry()
            )
            b.delete(retry=gcs.retry())
    else:
        move_tree(src, dst)


def remove_tree(url: str) -> None:
    """Delete a folder (locally) or every object under a gs:// prefix."""
    if not is_url(url):
        shutil.rmtree(url, ignore_errors=True)
        return
    bucket, prefix = gcs.split(url.rstrip("/") + "/")
    with gcs.cloud_errors(url, "delete"):
        for b in list(gcs.client().list_blobs(bucket, prefix=prefix, retry=gcs.retry())):
            b.delete(retry=gcs.retry())


def move_tree(src: str, dst: str) -> None:
    """Move a folder (a prefix of objects) to `dst`. On Cloud Storage, which has no rename,
    every object is copied first and the originals deleted only once all copies exist: a
    failure midway leaves the source whole (and a partial copy), never less than one copy."""
    if not is_url(src):
        shutil.move(src, dst)
        return
    client = gcs.client()
    bucket_name, prefix = gcs.split(src.rstrip("/") + "/")
    dst_bucket, dst_prefix = gcs.split(dst.rstrip("/") + "/")
    bucket, target = client.bucket(bucket_name), client.bucket(dst_bucket)
    with gcs.cloud_errors(src, "move"):
        blobs = list(client.list_blobs(bucket_name, prefix=prefix, retry=gcs.retry()))
        for b in blobs:
            bucket.copy_blob(b, target, dst_prefix + b.name[len(prefix) :], retry=gcs.retry())
        for b in blobs:
            b.delete(retry=gcs.retry())


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
    # A multipart upload: the precondition holds for it (fake-gcs-server enforces it there;
    # its simple uploads ignore the precondition).
    return gcs.put_if_generation(path, blob, 0) is not None


def check_access(url: str, what: str = "--workdir") -> None:
    """One request to `url`'s bucket, without retries: one `StorageError` line naming the URL
    and the cause if it cannot be used (no credentials, no network, no bucket, no
    permission); nothing for a local path."""
    if scheme(url) != "gs":
        return
    check(url, what)
    bucket, _ = gcs.split(url)
    try:
        from google.api_core import exceptions
        from google.auth import exceptions as auth_exceptions

        try:
            found = gcs.client().bucket(bucket).exists(timeout=gcs.ACCESS_TIMEOUT, retry=None)
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

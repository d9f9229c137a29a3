"""Fetch and check the archives of the paper's data sets: one line for every failure.

`sha256_of` streams a file; `check` compares a file with its recorded size and SHA-256;
`fetch` downloads a URL to a path through a `.part` file that is checked before it is renamed,
so a failed, truncated or wrong download never leaves a file that looks finished.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import urllib.error
import urllib.request

CHUNK = 1 << 22


class DataError(RuntimeError):
    """A data file that is missing, damaged or of another version; the message says which,
    what was expected and what was found, and what to do."""


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def check(path: str, size: int | None, sha256: str | None, name: str | None = None) -> None:
    """`path` has the recorded size and SHA-256 (either may be None: not known); `name` is
    what the message calls it (default `path`)."""
    name = name or path
    found = os.path.getsize(path)
    if size is not None and found != size:
        what = "truncated" if found < size else "longer than the original"
        raise DataError(
            f"{name}: {found:,} bytes, expected {size:,} ({what}: another version of the file, "
            "or an interrupted copy; fetch it again)"
        )
    if sha256 is not None and (digest := sha256_of(path)) != sha256:
        raise DataError(
            f"{name}: SHA-256 {digest}, expected {sha256} (another version of the file, or a "
            "damaged copy; fetch it again)"
        )


def fetch(url: str, path: str, size: int | None, sha256: str | None, timeout: float = 60) -> str:
    """Download `url` to `path` (kept only once its size and SHA-256 match); returns `path`."""
    part = f"{path}.part-{socket.gethostname()}-{os.getpid()}"  # hosts sharing a folder
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as f:
            if "text/html" in response.headers.get("Content-Type", ""):
                raise DataError(
                    f"cannot download {url}: the server answered with a web page (a login, "
                    "or a page saying the file moved), not the file"
                )
            announced = response.headers.get("Content-Length")
            shutil.copyfileobj(response, f, CHUNK)
            f.flush()
            os.fsync(f.fileno())
        got = os.path.getsize(part)
        if announced is not None and got != int(announced):  # a connection that closed early
            raise DataError(
                f"cannot download {url} to {path}: {got:,} of the {int(announced):,} bytes the "
                "server announced arrived (the connection closed early; try again)"
            )
        check(part, size, sha256, name=f"{url} (downloaded to {path})")
        os.replace(part, path)
    except urllib.error.HTTPError as e:
        raise DataError(f"cannot download {url} to {path}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
        raise DataError(f"cannot download {url} to {path}: {reason}") from None
    finally:
        if os.path.exists(part):
            os.remove(part)
    return path

"""A released checkpoint fetched from its URL: `gs://bucket/path` (read over HTTPS from the
public bucket, no gsutil or credentials needed) or `http(s)://…`, to a local cache.

For clu's checkpoint directory it reads the `checkpoint` state file first to learn which
`ckpt-N.flax` holds the state, then fetches that one file (TensorFlow's `.index` and `.data`
files hold no model data). A file is kept only whole (vdm/data/download.py: its size checked
against what the server announced, written under a temporary name and renamed), so a second
import of the same URL reads the cache and an interrupted download starts again.
"""

from __future__ import annotations

import os
import re
import urllib.parse

from vdm.data.download import fetch
from vdm.importers.flax_msgpack import CheckpointImportError

SCHEMES = ("gs://", "http://", "https://")
GCS_HTTPS = "https://storage.googleapis.com"


def is_remote(src: str) -> bool:
    return src.startswith(SCHEMES)


def https_url(src: str) -> str:
    """gs://bucket/path → its public HTTPS address; http(s) URLs as they are."""
    if src.startswith("gs://"):
        return f"{GCS_HTTPS}/{src[len('gs://') :]}"
    return src


def default_cache() -> str:
    return os.environ.get("VDM_CHECKPOINT_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "vdm", "checkpoints"
    )


def fetch_checkpoint(src: str, cache: str | None = None, log=print) -> str:
    """The local path of the `ckpt-N.flax` that `src` (a clu directory's URL, or the file's)
    names, fetched into `cache` (default ~/.cache/vdm/checkpoints, or $VDM_CHECKPOINT_CACHE)
    unless it is there already."""
    url = https_url(src).rstrip("/")
    parsed = urllib.parse.urlsplit(url)
    if parsed.query or parsed.fragment:
        raise CheckpointImportError(
            f"{src}: give the checkpoint directory's or the ckpt-N.flax file's address "
            "without a query (?…) or fragment (#…)"
        )
    local = os.path.join(cache or default_cache(), parsed.netloc, *parsed.path.split("/"))
    if url.endswith(".flax"):
        name, base, local_dir = (
            os.path.basename(local),
            url.rsplit("/", 1)[0],
            os.path.dirname(local),
        )
    else:
        base, local_dir = url, local
        state = fetch(f"{url}/checkpoint", os.path.join(local_dir, "checkpoint"), None, None)
        with open(state, errors="replace") as f:
            named = re.search(r'model_checkpoint_path:\s*"([^"]+)"', f.read())
        os.remove(state)  # re-read on every import: a directory's latest step may move on
        if not named:
            raise CheckpointImportError(
                f"{url}/checkpoint names no checkpoint (no model_checkpoint_path line)"
            )
        name = os.path.basename(named[1]) + ".flax"
    path = os.path.join(local_dir, name)
    if os.path.isfile(path):
        log(f"using {path} (fetched earlier from {base}/{name})")
        return path
    log(f"fetching {base}/{name} → {path}")
    return fetch(f"{base}/{name}", path, None, None, timeout=120)

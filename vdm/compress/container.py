"""The `.vdmz` file: a self-describing header, then the coded words.

Layout (little endian):

  b"VDMZ" | u16 format version | u32 header length H | H bytes of UTF-8 JSON header
  | u32 CRC-32 of the header | payload: u32 words of the ANS stack | u32 CRC-32 of the payload

The header names what decoding needs and what it must match: the config hash, the
parameters' fingerprint and checkpoint step, the platform that computed ε̂
(vdm/compress/fingerprint.py), T, the latent precision, the image shape, dtype and count, the
chunk size, the clean-word counts, and CRC-32s of the original images, whole and per chunk,
so a decode that went wrong stops after one chunk and can never pass for a right one.

Versions: 2 draws the coder's pseudo-random words from a counter-mode SplitMix64 and records
the platform and the chunks' CRCs; 1 (numpy Generator words, neither record) still decodes.
"""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np

from vdm import signals, storage

MAGIC = b"VDMZ"
FORMAT_VERSION = 2
GENERATORS = {1: "numpy", 2: "splitmix64"}  # the coder's words (words.GENERATORS) by version


class CompressError(ValueError):
    """Images or a .vdmz file that a model cannot code or decode: one line says why."""


class CompressedFileError(CompressError):
    """A .vdmz file that cannot be decoded as written: truncated, corrupted or not one."""


def write(path: str, header: dict, words: np.ndarray) -> int:
    """Write header and words to `path` (local or gs://) atomically (vdm/storage.py); returns
    the file's size in bytes. An existing file is only replaced once the new one is whole."""
    head = json.dumps(header, sort_keys=True).encode()
    payload = np.asarray(words, "<u4").tobytes()
    blob = b"".join(
        [
            MAGIC,
            struct.pack("<HI", FORMAT_VERSION, len(head)),
            head,
            struct.pack("<I", zlib.crc32(head)),
            payload,
            struct.pack("<I", zlib.crc32(payload)),
        ]
    )
    with signals.writing(path):
        storage.write_bytes(path, blob)  # a temporary file and a rename, or one object put
    return len(blob)


def read(path: str) -> tuple[dict, np.ndarray]:
    """(header, words) of a .vdmz file; any damage is one `CompressedFileError` line."""
    try:
        blob = storage.read_bytes(path)
    except storage.StorageError as e:
        raise CompressedFileError(str(e)) from None
    except OSError as e:
        raise CompressedFileError(f"{path}: cannot read ({e.strerror})") from None
    if blob[:4] != MAGIC:
        raise CompressedFileError(f"{path}: not a .vdmz file (no VDMZ signature)")
    if len(blob) < 10:
        raise CompressedFileError(f"{path}: truncated (header incomplete)")
    version, n_head = struct.unpack("<HI", blob[4:10])
    if version not in GENERATORS:
        newer = ", written by a newer vdm" if version > FORMAT_VERSION else ""
        known = " and ".join(map(str, GENERATORS))
        raise CompressedFileError(
            f"{path}: format version {version}{newer}; this vdm reads versions {known}"
        )
    end_head = 10 + n_head
    if len(blob) < end_head + 8:
        raise CompressedFileError(f"{path}: truncated (header incomplete)")
    head = blob[10:end_head]
    (crc_head,) = struct.unpack("<I", blob[end_head : end_head + 4])
    if zlib.crc32(head) != crc_head:
        raise CompressedFileError(f"{path}: corrupted header (checksum mismatch)")
    header = json.loads(head)
    if header.get("format_version") != version:
        raise CompressedFileError(
            f"{path}: corrupted header (format version {version} in the signature, "
            f"{header.get('format_version')} in the header)"
        )
    payload = blob[end_head + 4 : -4]
    expected = 4 * int(header["n_words"])
    if len(payload) != expected:
        raise CompressedFileError(
            f"{path}: truncated or padded payload ({len(payload)} bytes, header says {expected})"
        )
    (crc_payload,) = struct.unpack("<I", blob[-4:])
    if zlib.crc32(payload) != crc_payload:
        raise CompressedFileError(f"{path}: corrupted payload (checksum mismatch)")
    return header, np.frombuffer(payload, "<u4").astype(np.uint32)


def images_crc(images: np.ndarray) -> int:
    """CRC-32 of the images as int64, C order: the decoder's final check."""
    return zlib.crc32(np.ascontiguousarray(images, np.int64).tobytes())

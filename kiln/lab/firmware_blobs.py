"""Firmware images of the lab's simulated hardware.

A real vendor image is opaque bytes with a known sha256; the lab's are the same, generated
deterministically from (component, version) so that firmware/lab.yaml can pin their sha256
and the simulated BMC and mlxfwmanager can tell which version a blob carries.
"""

from __future__ import annotations

import hashlib

# One reader of the format, shared with the simulated flashing tools inside nodes.
from kiln.lab.hwsim.blobs import MAGIC, read_blob_header

__all__ = ["MAGIC", "blob_bytes", "blob_file_name", "blob_sha256", "read_blob_header"]

BLOB_SIZE = 256 * 1024


def blob_file_name(component: str, version: str) -> str:
    return f"lab-{component}-{version}.bin"


def blob_bytes(component: str, version: str) -> bytes:
    """The image: a header naming component and version, then deterministic filler."""
    header = MAGIC + f"component={component}\nversion={version}\n\n".encode()
    filler = bytearray()
    counter = 0
    seed = f"{component}/{version}".encode()
    while len(header) + len(filler) < BLOB_SIZE:
        filler += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return (header + bytes(filler))[:BLOB_SIZE]


def blob_sha256(component: str, version: str) -> str:
    return hashlib.sha256(blob_bytes(component, version)).hexdigest()

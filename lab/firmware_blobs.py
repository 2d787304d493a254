"""Firmware images of the lab's simulated hardware.

A real vendor image is opaque bytes with a known sha256; the lab's are the same, generated
deterministically from (component, version) so that firmware/lab.yaml can pin their sha256
and the simulated BMC and mlxfwmanager can tell which version a blob carries.
"""

from __future__ import annotations

import hashlib

MAGIC = b"KILN-LAB-FIRMWARE\n"
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


def read_blob_header(data: bytes) -> tuple[str, str] | None:
    """(component, version) of a lab image, or None when `data` is not one."""
    if not data.startswith(MAGIC):
        return None
    fields = {}
    for line in data[len(MAGIC) : len(MAGIC) + 512].split(b"\n"):
        if not line:
            break
        key, _, value = line.decode(errors="replace").partition("=")
        fields[key] = value
    if "component" not in fields or "version" not in fields:
        return None
    return fields["component"], fields["version"]


def blob_sha256(component: str, version: str) -> str:
    return hashlib.sha256(blob_bytes(component, version)).hexdigest()

"""Reading the lab's firmware images (the format lab/firmware_blobs.py writes).

It lives here, not in lab/firmware_blobs.py, because this package runs inside nodes, where
only the stdlib and this package are installed; the host side imports it from here.
"""

from __future__ import annotations

MAGIC = b"KILN-LAB-FIRMWARE\n"


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

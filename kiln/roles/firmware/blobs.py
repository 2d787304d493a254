"""The manifest's firmware blobs on the cluster mirror, checked before anything is flashed.

A blob is `<mirror>/firmware/<blob.file>` (roles/mirror fills it from the vendor's site). It
is checked twice: on the controller, streamed from the mirror, before the node is drained or
anything is flashed; and where it is flashed from, by the thing that reads it (the node's
`kiln-mirror fetch --sha256 --size` for mlxfwmanager; the BMC's own image verification for a
Redfish SimpleUpdate). A mismatch refuses, naming the file and both digests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import requests

from kiln.core.errors import KilnError
from kiln.core.manifest import Blob

CHUNK = 1 << 20
# Reading stops here: a file this much larger than the manifest says is not the blob.
SLACK = 1 << 20


class BlobRefused(KilnError):
    """The blob is not the one the manifest pins (or cannot be read); nothing was flashed."""


def blob_url(mirror_firmware: str, blob: Blob) -> str:
    """`mirror_firmware` is the mirror's firmware/ URL (ending in '/')."""
    return mirror_firmware + blob.file


def check_chunks(chunks: Iterable[bytes], blob: Blob, where: str) -> None:
    """Hash `chunks`; BlobRefused naming `where` (file or URL) when size or sha256 differ."""
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
        if size > blob.size + SLACK:
            raise BlobRefused(f"firmware blob {blob.file} ({where}): larger than the "
                              f"{blob.size} bytes the manifest pins; refused, nothing flashed")
    found = digest.hexdigest()
    if found != blob.sha256 or size != blob.size:
        raise BlobRefused(
            f"firmware blob {blob.file} ({where}): sha256 {found} ({size} bytes), the manifest "
            f"pins sha256 {blob.sha256} ({blob.size} bytes); refused, nothing flashed"
        )


def check_url(url: str, blob: Blob, verify: bool | str = True, timeout: float = 60.0) -> None:
    """Stream `url` and check it is `blob`; the bytes are not kept."""
    try:
        with requests.get(url, stream=True, timeout=timeout, verify=verify) as response:
            response.raise_for_status()
            check_chunks(response.iter_content(CHUNK), blob, url)
    except requests.RequestException as exc:
        raise BlobRefused(f"firmware blob {blob.file} ({url}): cannot read it from the mirror "
                          f"to check its sha256: {exc}; nothing flashed") from None

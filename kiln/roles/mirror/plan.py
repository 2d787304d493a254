"""What the mirror must hold, worked out on the controller before anything is fetched.

Inputs: the manifests of the SKUs in the inventory (pinned packages, firmware blobs), the
apt closure apt resolved (roles.mirror.resolve), and the images and wheels host data names.
Output: the files to fetch (each with its upstream URL and sha256) and the index files
kiln writes (Packages, SHA256SUMS, PEP 503 pages, the public key), byte for byte.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field

from kiln.core.errors import KilnError
from kiln.core.manifest import Manifest
from kiln.roles.mirror import aptrepo
from kiln.roles.mirror.layout import KEY_FILE, FetchItem, directory_sums, pep503_pages, pypi_path
from kiln.roles.mirror.resolve import ResolvedDeb
from kiln.roles.mirror.settings import MirrorSettings

POOL = f"apt/pool/{aptrepo.COMPONENT}"


class PlanError(KilnError):
    pass


@dataclass
class FillPlan:
    fetch: list[FetchItem]
    generated: dict[str, bytes]  # path relative to the root → exact content
    apt_indexes: dict[str, bytes]  # relative to apt/dists/<suite>/, listed in Release
    release_path: str  # apt/dists/<suite>/Release
    signatures: tuple[str, str] = ("", "")  # InRelease, Release.gpg paths
    notes: list[str] = field(default_factory=list)

    def kept(self) -> set[str]:
        """Every file of the managed trees the mirror should hold after the fill."""
        return (
            {item.path for item in self.fetch}
            | set(self.generated)
            | {self.release_path, *self.signatures}
        )

    @property
    def fetch_bytes(self) -> int:
        return sum(item.size or 0 for item in self.fetch)


def _add(items: dict[str, FetchItem], item: FetchItem) -> None:
    """One file per path; two sources asking for one path must agree on its bytes."""
    existing = items.get(item.path)
    if existing is None:
        items[item.path] = item
    elif existing.sha256 != item.sha256:
        raise PlanError(
            f"{item.path}: {existing.source} wants sha256 {existing.sha256}, "
            f"{item.source} wants {item.sha256}"
        )


def firmware_items(settings: MirrorSettings, manifests: dict[str, Manifest]) -> list[FetchItem]:
    items: dict[str, FetchItem] = {}
    for sku, manifest in sorted(manifests.items()):
        for component, entry in sorted(manifest.firmware.items()):
            if entry.blob is None:
                continue
            if settings.firmware_upstream is None:
                raise PlanError(
                    f"firmware/{sku}.yaml: firmware.{component}.blob {entry.blob.file} needs "
                    "host data kiln_mirror_firmware_upstream (where blobs are fetched from)"
                )
            _add(items, FetchItem(
                url=settings.firmware_upstream + entry.blob.file,
                path=f"firmware/{entry.blob.file}",
                sha256=entry.blob.sha256,
                size=entry.blob.size,
                source=f"firmware/{sku}.yaml firmware.{component}",
            ))
    return list(items.values())


def build_plan(
    settings: MirrorSettings,
    manifests: dict[str, Manifest],
    debs: Sequence[ResolvedDeb],
    public_key: str,
) -> FillPlan:
    items: dict[str, FetchItem] = {}
    for deb in debs:
        record = deb.record
        if not record.sha256:
            raise PlanError(f"{record.package} {record.version}: upstream record has no SHA256")
        _add(items, FetchItem(
            url=deb.url,
            path=f"{POOL}/{record.pool_file()}",
            sha256=record.sha256,
            size=record.size,
            source=f"{deb.requested_by}: {record.package}={record.version}",
        ))
    for item in firmware_items(settings, manifests):
        _add(items, item)
    for image in settings.images:
        _add(items, FetchItem(url=image.url, path=f"images/{image.file}", sha256=image.sha256,
                              size=image.size, source=f"kiln_mirror_images {image.file}"))
    for component, image in sorted(settings.kraken_images.items()):
        _add(items, FetchItem(url=image.url, path=f"images/{image.file}", sha256=image.sha256,
                              size=image.size,
                              source=f"kiln_kraken_images {component} {image.ref}"))
    wheels: dict[str, str] = {}
    for wheel in settings.wheels:
        try:
            path = pypi_path(wheel.file)
        except KilnError as exc:
            raise PlanError(f"host data kiln_mirror_wheels: {exc}") from None
        _add(items, FetchItem(url=wheel.url, path=path, sha256=wheel.sha256, size=wheel.size,
                              source=f"kiln_mirror_wheels {wheel.file}"))
        wheels[wheel.file] = wheel.sha256

    dists = f"apt/dists/{settings.suite}"
    packages = aptrepo.packages_text([deb.record for deb in debs], pool=POOL.removeprefix("apt/"))
    binary = f"{aptrepo.COMPONENT}/binary-{settings.arch}"
    apt_indexes = {
        f"{binary}/Packages": packages.encode(),
        f"{binary}/Packages.gz": aptrepo.gzip_bytes(packages.encode()),
    }
    generated: dict[str, bytes] = {f"{dists}/{path}": data for path, data in apt_indexes.items()}
    generated.update({path: html.encode() for path, html in pep503_pages(wheels).items()})
    generated[KEY_FILE] = public_key.encode()

    digests = {item.path: item.sha256 for item in items.values() if not item.path.startswith(
        ("images/",))}
    digests.update({
        path: hashlib.sha256(data).hexdigest()
        for path, data in generated.items()
        if not path.startswith("apt/dists/")
    })
    for sums_path, text in directory_sums(digests).items():
        generated[sums_path] = text.encode()
    # An empty pool still gets its (empty) SHA256SUMS, so the listing is uniform.
    generated.setdefault(posixpath.join(POOL, "SHA256SUMS"), b"")

    notes = []
    if not settings.images and not settings.kraken_images:
        notes.append("no container images pinned (kiln_mirror_images is empty, and "
                     "kiln_kraken_images pins none of Kraken's)")
    if not settings.wheels:
        notes.append("no wheels: nodes run no Python package from kiln (kiln_mirror_wheels empty)")
    return FillPlan(
        fetch=sorted(items.values(), key=lambda item: item.path),
        generated=generated,
        apt_indexes=apt_indexes,
        release_path=f"{dists}/Release",
        signatures=(f"{dists}/InRelease", f"{dists}/Release.gpg"),
        notes=notes,
    )

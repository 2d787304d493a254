"""The mirror's file tree, and the index files kiln writes into it (pure functions).

    <root>/apt/       signed apt repository (roles.mirror.aptrepo)
    <root>/pypi/      PEP 503 simple index: simple/index.html, simple/<project>/index.html,
                      the files in packages/<project>/
    <root>/firmware/  firmware blobs named as the manifests name them
    <root>/images/    container image archives (uploads, and what the inventory pins)
    <root>/files/     anything: datasets, checkpoints, tools (uploads)
    <root>/keys/      the mirror's public signing key, for people

apt/, pypi/, firmware/ and keys/ are kiln's: deploy/mirror.py writes exactly what the
manifests pin there and removes the rest; HTTP clients may only read them. images/ and
files/ also take authenticated uploads. Every directory holding files has a SHA256SUMS
(`sha256sum -c` format), except apt/dists/, whose index files the signed Release lists.
"""

from __future__ import annotations

import html
import posixpath
import re
from dataclasses import dataclass

from kiln.core.errors import KilnError

MANAGED = ("apt", "pypi", "firmware", "keys")
UPLOADS = ("images", "files")
TREES = ("apt", "pypi", "firmware", "images", "files", "keys")
SUMS = "SHA256SUMS"
KEY_FILE = "keys/kiln-mirror.asc"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class LayoutError(KilnError):
    pass


@dataclass(frozen=True)
class FetchItem:
    """A file the mirror must hold: fetched from `url`, checked against `sha256`."""

    url: str
    path: str  # relative to the mirror root
    sha256: str
    size: int | None = None
    source: str = ""  # what asked for it, for reports and errors: "sku lab: firmware bios"

    def __post_init__(self) -> None:
        if not _SHA256.match(self.sha256):
            raise LayoutError(f"{self.source or self.path}: sha256 {self.sha256!r} is not 64 hex")
        normal = posixpath.normpath(self.path)
        outside = normal.startswith(("/", "..")) or normal.split("/")[0] not in TREES
        if normal != self.path or outside:
            raise LayoutError(f"{self.source or self.path}: {self.path!r} is not in the tree")


def sums_text(digests: dict[str, str]) -> str:
    """SHA256SUMS of one directory: `<hex>  <name>` lines sorted by name."""
    return "".join(f"{digests[name]}  {name}\n" for name in sorted(digests))


def directory_sums(digests_by_path: dict[str, str]) -> dict[str, str]:
    """{relative file path: sha256} → {directory/SHA256SUMS: text}, one per directory."""
    by_directory: dict[str, dict[str, str]] = {}
    for path, digest in digests_by_path.items():
        directory, name = posixpath.split(path)
        if name == SUMS:
            continue
        by_directory.setdefault(directory, {})[name] = digest
    return {
        posixpath.join(directory, SUMS): sums_text(digests)
        for directory, digests in by_directory.items()
    }


def normalize_project(name: str) -> str:
    """PEP 503's normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def project_of(filename: str) -> str:
    """The project a wheel or sdist file belongs to (PEP 427 / PEP 625 file names)."""
    if filename.endswith(".whl"):
        parts = filename[: -len(".whl")].split("-")
        if len(parts) not in (5, 6):
            raise LayoutError(f"{filename}: not a wheel file name (name-ver[-build]-py-abi-plat)")
        return normalize_project(parts[0])
    for suffix in (".tar.gz", ".zip"):
        if filename.endswith(suffix):
            name, dash, _version = filename[: -len(suffix)].rpartition("-")
            if dash and name:
                return normalize_project(name)
    raise LayoutError(f"{filename}: neither a wheel nor an sdist (.tar.gz, .zip)")


def pypi_path(filename: str) -> str:
    return f"pypi/packages/{project_of(filename)}/{filename}"


def pep503_pages(files: dict[str, str]) -> dict[str, str]:
    """{file name: sha256} → {path under the root: HTML}: the root page and one per project.

    Links carry `#sha256=` so pip checks every file it downloads.
    """
    projects: dict[str, dict[str, str]] = {}
    for filename, digest in files.items():
        projects.setdefault(project_of(filename), {})[filename] = digest
    pages = {"pypi/simple/index.html": _page("Simple index", [
        (f"{project}/", project) for project in sorted(projects)
    ])}
    for project, project_files in projects.items():
        links = [
            (f"../../packages/{project}/{name}#sha256={project_files[name]}", name)
            for name in sorted(project_files)
        ]
        pages[f"pypi/simple/{project}/index.html"] = _page(f"Links for {project}", links)
    return pages


def _page(title: str, links: list[tuple[str, str]]) -> str:
    body = "".join(
        f'    <a href="{html.escape(href, quote=True)}">{html.escape(text)}</a><br>\n'
        for href, text in links
    )
    return (
        "<!DOCTYPE html>\n<html>\n  <head>\n"
        '    <meta name="pypi:repository-version" content="1.0">\n'
        f"    <title>{html.escape(title)}</title>\n  </head>\n  <body>\n"
        f"{body}  </body>\n</html>\n"
    )

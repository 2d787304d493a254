#!/usr/bin/python3
"""kiln-mirror: the mirror's tool on nodes (installed as /usr/local/bin/kiln-mirror).

Standard library only: nodes run it with the distribution's python3, nothing installed.

    kiln-mirror fetch [--sha256 HEX] [--size N] [--ca FILE] URL DEST
        Download URL to DEST, refusing it unless its sha256 (and size, when given) is the
        expected one. Without --sha256 the expected digest is read from the SHA256SUMS file
        of URL's directory. DEST appears only once verified (written beside it, then renamed);
        a refused download leaves DEST as it was. Exit 0 fetched, 2 refused, 1 other error.

    kiln-mirror sums [--write] ROOT SUBDIR...
        The SHA256SUMS file every directory under ROOT/SUBDIR should hold, printed as JSON
        {directory relative to ROOT: text} for those whose file is not that yet ("" = the
        directory holds no files, its SHA256SUMS goes). --write writes them. A file listed in
        the current SHA256SUMS keeps its recorded digest unless it changed after that
        SHA256SUMS was written (mtime or ctime newer): a file that rots in place keeps its
        old, correct digest, so clients catch it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

SUMS = "SHA256SUMS"
CHUNK = 1 << 20
DEFAULT_CA = "/etc/kiln/mirror-ca.pem"


class Refused(Exception):
    """The download is not the expected file; the message names it."""


def parse_sums(text: str) -> dict[str, str]:
    """`sha256sum` output (text or binary mode markers) → {file name: hex digest}."""
    digests: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        digest, _, name = line.partition(" ")
        name = name[1:] if name[:1] in (" ", "*") else name
        if len(digest) == 64 and name:
            digests[name] = digest.lower()
    return digests


def format_sums(digests: dict[str, str]) -> str:
    return "".join(f"{digests[name]}  {name}\n" for name in sorted(digests))


def _context(url: str, ca: str | None) -> ssl.SSLContext | None:
    if not url.startswith("https:"):
        return None
    if ca is None and Path(DEFAULT_CA).exists():
        ca = DEFAULT_CA
    return ssl.create_default_context(cafile=ca)


def _open(url: str, ca: str | None):  # noqa: ANN202 - an http.client response
    return urllib.request.urlopen(url, timeout=60, context=_context(url, ca))


def expected_from_sums(url: str, ca: str | None) -> str:
    directory, _, name = url.rpartition("/")
    sums_url = f"{directory}/{SUMS}"
    try:
        with _open(sums_url, ca) as response:
            text = response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        raise Refused(f"{sums_url}: HTTP {exc.code}; no digest to check {name} against") from None
    digest = parse_sums(text).get(urllib.parse.unquote(name))
    if digest is None:
        raise Refused(f"{sums_url}: lists no {urllib.parse.unquote(name)}; refusing to fetch it")
    return digest


def fetch(url: str, dest: Path, sha256: str | None, size: int | None, ca: str | None) -> int:
    """Download and verify; return the bytes written. Raises Refused on a bad digest."""
    expected = (sha256 or expected_from_sums(url, ca)).lower()
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    digest = hashlib.sha256()
    written = 0
    try:
        with _open(url, ca) as response, open(partial, "wb") as out:
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                written += len(chunk)
        name = urllib.parse.urlsplit(url).path
        if size is not None and written != size:
            raise Refused(f"{name}: size {written} bytes, expected {size}; {dest} not written")
        if digest.hexdigest() != expected:
            raise Refused(
                f"{name}: sha256 mismatch (expected {expected}, got {digest.hexdigest()}); "
                f"{dest} not written"
            )
        os.chmod(partial, 0o644)
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)
    return written


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _listed_files(directory: Path) -> list[os.DirEntry]:
    return sorted(
        (
            entry
            for entry in os.scandir(directory)
            if entry.is_file(follow_symlinks=False)
            and entry.name != SUMS
            and not entry.name.startswith(".")
        ),
        key=lambda entry: entry.name,
    )


def directory_sums(directory: Path) -> str:
    """The SHA256SUMS text `directory` should hold (see the module docstring)."""
    sums_path = directory / SUMS
    recorded: dict[str, str] = {}
    recorded_at = -1
    if sums_path.exists():
        recorded = parse_sums(sums_path.read_text(errors="replace"))
        recorded_at = sums_path.stat().st_mtime_ns
    digests = {}
    for entry in _listed_files(directory):
        info = entry.stat(follow_symlinks=False)
        changed_at = max(info.st_mtime_ns, info.st_ctime_ns)
        if entry.name in recorded and changed_at <= recorded_at:
            digests[entry.name] = recorded[entry.name]
        else:
            digests[entry.name] = _hash_file(Path(entry.path))
    return format_sums(digests)


def stale_sums(root: Path, subdirs: list[str]) -> dict[str, str]:
    """{directory relative to root: wanted SHA256SUMS text} where the file differs."""
    stale: dict[str, str] = {}
    for subdir in subdirs:
        top = root / subdir
        if not top.is_dir():
            continue
        for current, dirnames, _ in os.walk(top):
            dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
            directory = Path(current)
            wanted = directory_sums(directory)
            sums_path = directory / SUMS
            have = sums_path.read_text(errors="replace") if sums_path.exists() else None
            if wanted != (have if have is not None else ""):
                stale[str(directory.relative_to(root))] = wanted
    return stale


def write_sums(root: Path, stale: dict[str, str]) -> None:
    for relative, text in stale.items():
        sums_path = root / relative / SUMS
        if not text:
            sums_path.unlink(missing_ok=True)
            continue
        partial = sums_path.with_name(f".{SUMS}.partial")
        partial.write_text(text)
        os.chmod(partial, 0o644)
        os.replace(partial, sums_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kiln-mirror", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_args = commands.add_parser("fetch", help="download a file and verify its sha256")
    fetch_args.add_argument("--sha256")
    fetch_args.add_argument("--size", type=int)
    fetch_args.add_argument("--ca", help=f"CA bundle for https (default {DEFAULT_CA})")
    fetch_args.add_argument("url")
    fetch_args.add_argument("dest", type=Path)
    sums_args = commands.add_parser("sums", help="plan or write SHA256SUMS files")
    sums_args.add_argument("--write", action="store_true")
    sums_args.add_argument("root", type=Path)
    sums_args.add_argument("subdirs", nargs="+")
    args = parser.parse_args(argv)

    if args.command == "fetch":
        try:
            written = fetch(args.url, args.dest, args.sha256, args.size, args.ca)
        except Refused as exc:
            print(f"kiln-mirror: refused: {exc}", file=sys.stderr)
            return 2
        except (OSError, urllib.error.URLError) as exc:
            print(f"kiln-mirror: {args.url}: {exc}", file=sys.stderr)
            return 1
        print(f"fetched {args.dest} {written} bytes sha256 ok")
        return 0
    stale = stale_sums(args.root, args.subdirs)
    if args.write:
        write_sums(args.root, stale)
    print(json.dumps(stale, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

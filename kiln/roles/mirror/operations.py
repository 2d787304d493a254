"""Operations of the mirror role: each reads facts and yields only what must change."""

from __future__ import annotations

import hashlib
import io
import logging
import posixpath
import time
from collections.abc import Sequence
from pathlib import Path

from pyinfra import host
from pyinfra.api import FileUploadCommand, FunctionCommand, QuoteString, StringCommand, operation
from pyinfra.api.host import Host
from pyinfra.api.state import State

from kiln.core.secrets import Secret
from kiln.roles.mirror import aptrepo
from kiln.roles.mirror.facts import (
    FileBytes,
    FileDigests,
    NewerThan,
    NginxRunning,
    StaleSums,
    TreeFiles,
)
from kiln.roles.mirror.layout import FetchItem
from kiln.roles.mirror.render import NODE_TOOL, htpasswd_line, htpasswd_matches
from kiln.roles.mirror.signing import MirrorKey, read_public_key, release_signed_by

logger = logging.getLogger("pyinfra")


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _upload(data: bytes, dest: str) -> FileUploadCommand:
    return FileUploadCommand(
        io.BytesIO(data), dest, remote_temp_filename=host.get_temp_filename(dest)
    )


def _report_fetched(state: State, host: Host, items: Sequence[FetchItem]) -> bool:
    total = sum(item.size or 0 for item in items)
    host.log_styled(f"mirror: fetched {len(items)} files, {total} bytes ({_human(total)}), "
                    "sha256 verified", log_func=logger.info)
    for item in items:
        host.log(f"  {item.path}  {item.size if item.size is not None else '?'} bytes  "
                 f"({item.source})", log_func=logger.info)
    return True


@operation()
def fetch_files(root: str, items: list[FetchItem]):  # noqa: ANN201
    """Every item at `root/<path>` with its sha256; fetched (by the node, from the item's
    URL, verified before it lands) only when missing or different."""
    present = host.get_fact(FileDigests, root=root, paths=[item.path for item in items])
    missing = [item for item in items if present.get(item.path) != item.sha256]
    if not missing:
        if host.state.is_executing:
            host.log_styled(
                f"mirror: fetched 0 files, 0 bytes: all {len(items)} pinned files present, "
                "sha256 verified", log_func=logger.info)
        return
    wanted = sum(item.size or 0 for item in missing)
    if not host.state.is_executing:
        host.log_styled(f"mirror: will fetch {len(missing)} of {len(items)} files, "
                        f"{wanted} bytes ({_human(wanted)})", log_func=logger.info)
    for item in missing:
        size = ["--size", str(item.size)] if item.size is not None else []
        yield StringCommand(
            NODE_TOOL, "fetch", "--sha256", item.sha256, *size,
            QuoteString(item.url), QuoteString(posixpath.join(root, item.path)),
        )
    yield FunctionCommand(_report_fetched, (missing,), {})


@operation()
def exact_files(root: str, files: dict[str, bytes], mode: str | None = None):  # noqa: ANN201
    """Files under `root` with exactly these bytes; uploads only those that differ.

    No diff is printed (some are secrets or binary); the preview names the files.
    """
    present = host.get_fact(FileDigests, root=root, paths=list(files))
    stale = {
        path: data for path, data in files.items()
        if present.get(path) != hashlib.sha256(data).hexdigest()
    }
    directories = sorted({posixpath.dirname(posixpath.join(root, path)) for path in stale})
    if directories:
        yield StringCommand("mkdir", "-p", *[QuoteString(d) for d in directories])
    for path, data in sorted(stale.items()):
        dest = posixpath.join(root, path)
        yield _upload(data, dest)
        if mode:
            yield StringCommand("chmod", mode, QuoteString(dest))


@operation()
def htpasswd(path: str, username: Secret, password: Secret):  # noqa: ANN201
    """nginx's basic-auth file: this one user and password, `$6$` crypt. An unchanged
    password keeps the file (and its salt) as it is."""
    current = host.get_fact(FileBytes, path=path)
    text = current.decode(errors="replace") if current is not None else None
    if htpasswd_matches(text, username.reveal(), password.reveal()):
        return
    yield StringCommand("mkdir", "-p", QuoteString(posixpath.dirname(path)))
    yield _upload(htpasswd_line(username.reveal(), password.reveal()).encode(), path)
    yield StringCommand("chown", "root:www-data", QuoteString(path))
    yield StringCommand("chmod", "0640", QuoteString(path))


def _release_date(previous: bytes | None, candidate: str) -> str:
    """Keep the previous Date while the rest of the Release is the same."""
    if previous is not None:
        old = previous.decode(errors="replace")
        if aptrepo.release_without_date(old) == aptrepo.release_without_date(candidate):
            date = aptrepo.release_date(old)
            if date:
                return date
    return time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime())


@operation()
def signed_release(root: str, dists: str, suite: str, arch: str, indexes: dict[str, bytes],
                   key_state: str):  # noqa: ANN201
    """dists/<suite>/Release over `indexes`, with InRelease and Release.gpg made on the
    controller by the cluster's mirror key. Re-signed only when the Release changes or a
    signature on the mirror is not the key's, over that Release."""
    base = posixpath.join(root, dists)
    previous = host.get_fact(FileBytes, path=f"{base}/Release")
    draft = aptrepo.release_text(suite, arch, indexes, date="-")
    release = aptrepo.release_text(suite, arch, indexes, date=_release_date(previous, draft))
    if previous == release.encode():
        inrelease = host.get_fact(FileBytes, path=f"{base}/InRelease")
        detached = host.get_fact(FileBytes, path=f"{base}/Release.gpg")
        public = read_public_key(Path(key_state).expanduser())
        if release_signed_by(public, release.encode(), inrelease, detached):
            return
    yield StringCommand("mkdir", "-p", QuoteString(base))
    if not host.state.is_executing:
        # Planning a preview: the Release is shown, nothing is signed (gpg writes into the
        # key's home even to sign). The run signs when it executes this operation.
        yield _upload(release.encode(), f"{base}/Release")
        return
    key = MirrorKey(Path(key_state).expanduser())
    with key.session():
        inrelease, detached = key.sign(key.existing_fingerprint(), release.encode())
    yield _upload(release.encode(), f"{base}/Release")
    yield _upload(inrelease, f"{base}/InRelease")
    yield _upload(detached, f"{base}/Release.gpg")


@operation()
def prune(root: str, subdirs: list[str], keep: set[str]):  # noqa: ANN201
    """Remove files in kiln's own trees that nothing pins any more (and leftovers of
    interrupted fetches), so the mirror holds exactly what the manifests pin."""
    present = host.get_fact(TreeFiles, root=root, subdirs=subdirs)
    stale = sorted(present - keep)
    if not stale:
        return
    host.log_styled(f"mirror: {len(stale)} files nothing pins any more: " + ", ".join(stale[:10])
                    + (" …" if len(stale) > 10 else ""), log_func=logger.info)
    for start in range(0, len(stale), 100):
        batch = [QuoteString(posixpath.join(root, path)) for path in stale[start:start + 100]]
        yield StringCommand("rm", "-f", "--", *batch)


@operation()
def directory_sums(root: str, subdirs: list[str]):  # noqa: ANN201
    """A SHA256SUMS in every directory of the upload trees (images/, files/)."""
    stale = host.get_fact(StaleSums, root=root, subdirs=subdirs)
    if stale == {}:
        return
    # None: the tool is not installed yet (preview of a first run); it will be by now.
    yield StringCommand(NODE_TOOL, "sums", "--write", QuoteString(root),
                        *[QuoteString(subdir) for subdir in subdirs])


@operation()
def nginx_serving(config: list[str], stamp: str):  # noqa: ANN201
    """nginx enabled, running, and running `config` as it is now: reloaded (after `nginx -t`)
    when any of those files changed since the last start or reload kiln did (`stamp`)."""
    if not host.get_fact(NginxRunning):
        yield "systemctl enable nginx"
        yield "nginx -t -q"
        yield "systemctl start nginx"
    elif host.get_fact(NewerThan, stamp=stamp, paths=config):
        yield "nginx -t -q"
        yield "systemctl reload nginx"
    else:
        return
    yield StringCommand("mkdir", "-p", QuoteString(posixpath.dirname(stamp)))
    yield StringCommand("touch", QuoteString(stamp))


@operation()
def apt_refreshed(sources: list[str], stamp: str):  # noqa: ANN201
    """`apt-get update` once after kiln changes apt's sources or keys (`stamp` records it),
    so the next install sees the mirror."""
    if not host.get_fact(NewerThan, stamp=stamp, paths=sources):
        return
    yield "DEBIAN_FRONTEND=noninteractive apt-get -q update"
    yield StringCommand("mkdir", "-p", QuoteString(posixpath.dirname(stamp)))
    yield StringCommand("touch", QuoteString(stamp))

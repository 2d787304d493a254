"""Operations of the Kraken role: each reads facts and yields only what must change."""

from __future__ import annotations

import io
import posixpath
import shlex

from pyinfra import host
from pyinfra.api import FileUploadCommand, QuoteString, StringCommand, operation

from kiln.core.outcomes import refuse
from kiln.roles.kraken import configs
from kiln.roles.kraken.facts import ENGINE_BINARIES, ImageLoaded
from kiln.roles.kraken.settings import KrakenSettings
from kiln.roles.mirror.facts import FileBytes, FileDigests
from kiln.roles.mirror.render import NODE_TOOL
from kiln.roles.mirror.settings import ImageArchive

__all__ = ["docker_mirror", "image_loaded", "ports_answer", "pull_through_agent", "refuse"]


@operation()
def docker_mirror(settings: KrakenSettings):  # noqa: ANN201 - pyinfra operation generator
    """daemon.json names the local agent as Docker Hub's mirror, its other keys untouched;
    a running dockerd reloads it (registry-mirrors is one of the keys it reloads live)."""
    present = host.get_fact(FileBytes, path=configs.DOCKER_DAEMON_JSON)
    text = present.decode() if present is not None else None
    try:
        wanted = configs.docker_daemon_json(text, settings)
    except configs.KrakenConfigError as exc:
        yield from refuse._inner(message=f"kraken: {exc}")
        return
    if text == wanted:
        return
    dest = configs.DOCKER_DAEMON_JSON
    yield StringCommand("mkdir", "-p", posixpath.dirname(dest))
    yield FileUploadCommand(io.BytesIO(wanted.encode()), dest,
                            remote_temp_filename=host.get_temp_filename(dest))
    yield "if systemctl is-active --quiet docker 2>/dev/null; then systemctl reload docker; fi"


@operation()
def image_loaded(settings: KrakenSettings, component: str, image: ImageArchive,
                 mirror_url: str):  # noqa: ANN201
    """The engine holds `image`: its archive fetched from the mirror (sha256 checked before
    it lands) and loaded, only when the engine does not hold the ref already."""
    loaded = host.get_fact(ImageLoaded, engine=settings.runtime, ref=image.ref)
    if loaded is None:
        yield from refuse._inner(
            message=f"kraken: host data kiln_kraken_runtime is {settings.runtime}, but "
                    f"{ENGINE_BINARIES[settings.runtime]} is not installed on {host.name}")
        return
    if loaded:
        return
    archive = posixpath.join(configs.IMAGE_DIR, image.file)
    present = host.get_fact(FileDigests, root=configs.IMAGE_DIR, paths=[image.file])
    if present.get(image.file) != image.sha256:
        size = ["--size", str(image.size)] if image.size is not None else []
        yield StringCommand("mkdir", "-p", configs.IMAGE_DIR)
        yield StringCommand(NODE_TOOL, "fetch", "--sha256", image.sha256, *size,
                            QuoteString(f"{mirror_url}images/{image.file}"),
                            QuoteString(archive))
    yield StringCommand(*[QuoteString(arg) for arg in configs.load_command(settings, archive)])


@operation(is_idempotent=False)
def ports_answer(checks: list[tuple[str, str]]):  # noqa: ANN201
    """Each (what, URL) answers 200 within a minute; the first that does not fails the
    host, naming it."""
    for what, url in checks:
        quoted = shlex.quote(url)
        yield (f"curl -fsS -m 5 --retry 12 --retry-delay 5 --retry-connrefused -o /dev/null "
               f"{quoted} || {{ echo {shlex.quote(f'kraken: {what} at {url} did not answer 200')}"
               " >&2; exit 1; }")


@operation(is_idempotent=False)
def pull_through_agent(settings: KrakenSettings, image: str):  # noqa: ANN201
    """The engine pulls `image` (repo:tag) from the local agent: the path every node's
    pulls take, end to end (tracker, origins, backend)."""
    ref = f"{configs.agent_address(settings)}/{image}"
    if settings.runtime == "docker":
        yield StringCommand("docker", "pull", QuoteString(ref))
    else:
        yield StringCommand("ctr", "--namespace", configs.CTR_NAMESPACE, "images", "pull",
                            "--plain-http", QuoteString(ref))

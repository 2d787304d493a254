"""Mirror: the cluster's local file mirror, and every node's apt and pip pointed at it.

    mirror()          on service nodes: the server and its fill (what bring-up runs there)
    mirror_server()   Debian's nginx serving the tree (roles.mirror.layout): read-only HTTP,
                      TLS with basic-auth uploads (PUT/DELETE) into images/ and files/
    mirror_fill()     exactly what the manifests pin, from the upstream, verified, signed
    mirror_clients()  on every node: apt source + the mirror's key, pip.conf, kiln-mirror

Where the work happens, and why:
- The apt closure is resolved on the controller, by apt in a throwaway state against the
  upstream's signed indexes and the base OS image's dpkg status (roles.mirror.resolve):
  it moves only index metadata, and needs the base image's status, which the controller has.
- The files themselves are fetched by the service node, straight from the upstream, each
  checked against its sha256 before it lands (`kiln-mirror fetch`): a large image crosses
  the site's uplink once, into the cluster, and never makes a second hop through the
  controller, which may sit on the far side of a VPN.
- The apt Release is signed on the controller with the cluster's mirror key (roles.mirror.
  signing): the private key never leaves state/, only a few hundred bytes travel to it.
Settings are host data, listed in roles.mirror.settings; upload credentials are the secrets
entry `mirror` (KILN_MIRROR_USERNAME / KILN_MIRROR_PASSWORD, or the secrets file).
"""

from __future__ import annotations

import io
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyinfra import host, inventory, logger
from pyinfra.api import deploy
from pyinfra.operations import apt, files

from kiln.core.context import node_context
from kiln.core.errors import KilnError, ValidationFailed
from kiln.core.manifest import Manifest
from kiln.core.outcomes import refuse
from kiln.roles.mirror import operations
from kiln.roles.mirror.layout import MANAGED, UPLOADS
from kiln.roles.mirror.plan import FillPlan, build_plan
from kiln.roles.mirror.render import (
    APT_SOURCES,
    CLIENT_CA,
    CONFIG_DIR,
    HTPASSWD,
    KEYRING,
    NODE_TOOL,
    PIP_CONF,
    SITE,
    SITE_ENABLED,
    TLS_CERT,
    TLS_KEY,
    apt_sources,
    nginx_site,
    pip_conf,
)
from kiln.roles.mirror.resolve import AptResolver, resolve_closure
from kiln.roles.mirror.settings import MirrorSettings, require, settings_from_data
from kiln.roles.mirror.signing import read_public_key

NODE_TOOL_SOURCE = Path(__file__).with_name("nodetool.py")
NGINX_STAMP = "/var/lib/kiln-mirror/nginx-loaded"
APT_STAMP = "/var/lib/kiln-mirror/apt-updated"


def _settings() -> MirrorSettings | None:
    """This host's settings, or None after queueing an operation that fails the host."""
    try:
        return settings_from_data(host.data)
    except ValidationFailed as exc:
        refuse(name="Mirror settings", message="; ".join(exc.problems))
        return None


# pyinfra prepares hosts concurrently (gevent); the apt resolution is made once.
_CONTROLLER_WORK = threading.Lock()


def mirror_public_key(state: str) -> str:
    """The armored public half of the cluster's mirror key. The key is made once, by
    `kiln mirror init-key`, never while a run is planned: a preview writes nothing."""
    return read_public_key(Path(state).expanduser())


def mirror_address(settings: MirrorSettings) -> str | None:
    """Where clients reach the mirror: kiln_mirror_host, else the first service node."""
    if settings.host:
        return settings.host
    service = inventory.get_group("service", default=[])
    if not service:
        return None
    first = service[0]
    return node_context(first).address


def inventory_manifests(hosts: Iterable[Any]) -> dict[str, Manifest]:
    """SKU -> manifest, for every SKU of `hosts`: each node's own, from its node context
    (kiln_firmware_dir/<kiln_sku>.yaml), so the mirror carries what the nodes will install."""
    paths: dict[str, Path] = {}
    manifests: dict[str, Manifest] = {}
    for member in hosts:
        context = node_context(member)
        if not context.sku:
            continue
        path = context.manifest_path
        if context.sku in paths and paths[context.sku] != path:
            raise KilnError(f"SKU {context.sku} has two manifests in the inventory: "
                            f"{paths[context.sku]} and {path} (node {context.label}): "
                            "give its nodes one kiln_firmware_dir")
        if context.sku not in paths:
            paths[context.sku] = path
            manifests[context.sku] = context.manifest
    return dict(sorted(manifests.items()))


@deploy("Mirror server: nginx serving the mirror tree")
def mirror_server() -> None:
    settings = _settings()
    if settings is None:
        return
    problems = require(settings, "tls_cert", "tls_key")
    for field in ("tls_cert", "tls_key"):
        path = getattr(settings, field)
        if path and not Path(path).expanduser().is_file():
            problems.append(f"host data kiln_mirror_{field}: {path} does not exist")
    try:
        credentials = node_context(host).credentials("mirror", ("username", "password"))
    except KilnError as exc:
        problems.append(f"mirror upload credentials: {exc}")
    if problems:
        refuse(name="Mirror server settings", message="; ".join(problems))
        return
    root = settings.root

    apt.packages(
        name="Install nginx (Debian's: its http_dav_module does PUT/DELETE)",
        packages=["nginx"], update=True, cache_time=24 * 3600,
    )
    files.put(name="Install kiln-mirror (fetch with sha256, SHA256SUMS)",
              src=str(NODE_TOOL_SOURCE), dest=NODE_TOOL, mode="0755")
    files.directory(name="Mirror root", path=root, mode="0755")
    for tree in MANAGED:
        files.directory(name=f"Mirror {tree}/ (kiln's)", path=f"{root}/{tree}", mode="0755")
    for tree in UPLOADS:
        files.directory(name=f"Mirror {tree}/ (uploads)", path=f"{root}/{tree}",
                        user="www-data", group="www-data", mode="0755")
    files.directory(name="Upload staging (same filesystem)", path=f"{root}/.upload-tmp",
                    user="www-data", group="www-data", mode="0700")

    certificate = Path(str(settings.tls_cert)).expanduser().read_bytes()
    private_key = Path(str(settings.tls_key)).expanduser().read_bytes()
    operations.exact_files(name="Mirror TLS certificate", root=CONFIG_DIR,
                           files={"tls/mirror.pem": certificate}, mode="0644")
    operations.exact_files(name="Mirror TLS key", root=CONFIG_DIR,
                           files={"tls/mirror.key": private_key}, mode="0600")
    operations.htpasswd(name="Mirror upload credentials (basic auth)", path=HTPASSWD,
                        username=credentials["username"], password=credentials["password"])
    files.put(name="nginx site: kiln mirror",
              src=io.StringIO(nginx_site(root, settings.http_port, settings.https_port)),
              dest=SITE)
    files.link(name="Enable the mirror site", path=SITE_ENABLED, target=SITE)
    files.link(name="Disable nginx's default site (it wants port 80 too)",
               path="/etc/nginx/sites-enabled/default", present=False)
    operations.nginx_serving(name="nginx serving the mirror",
                             config=[SITE, SITE_ENABLED, TLS_CERT, TLS_KEY], stamp=NGINX_STAMP)


@contextmanager
def _apt_state(cache: Path) -> Iterator[Path]:
    """Where apt resolves: the controller's cache of upstream lists in a run; in a preview,
    a throwaway copy of it, so that a preview writes nothing."""
    if not host.state.check_for_changes:
        yield cache
        return
    with tempfile.TemporaryDirectory(prefix="kiln-mirror-preview-") as scratch:
        copy = Path(scratch) / "apt"
        if cache.is_dir():
            shutil.copytree(cache, copy, symlinks=True)
        yield copy


def fill_plan(settings: MirrorSettings) -> FillPlan:
    """Resolve and plan on the controller (reads only: nothing on any node changes)."""
    manifests = inventory_manifests(inventory)
    sku_pins = {sku: manifest.pinned_packages() for sku, manifest in manifests.items()}
    debs = []
    if any(sku_pins.values()) or settings.os_packages:
        problems = require(settings, "apt_upstream")
        if problems:
            raise KilnError("; ".join(problems))
        base_status = Path(settings.base_status).expanduser() if settings.base_status else None
        with _CONTROLLER_WORK, _apt_state(Path(settings.state).expanduser() / "apt") as apt:
            resolver = AptResolver(apt, settings.arch, settings.apt_upstream, base_status)
            debs = resolve_closure(resolver, sku_pins, settings.os_packages)
    public = mirror_public_key(settings.state)
    return build_plan(settings, manifests, debs, public)


@deploy("Mirror fill: what the manifests pin, from upstream")
def mirror_fill() -> None:
    settings = _settings()
    if settings is None:
        return
    try:
        plan = fill_plan(settings)
    except KilnError as exc:
        refuse(name="Mirror fill plan", message=f"mirror: {exc}")
        return
    for note in plan.notes:
        host.log(f"mirror: {note}", log_func=logger.info)
    root = settings.root
    operations.fetch_files(name=f"Fetch what the manifests pin ({len(plan.fetch)} files)",
                           root=root, items=plan.fetch)
    operations.exact_files(name="Mirror indexes (Packages, PEP 503, SHA256SUMS, key)",
                           root=root, files=plan.generated, mode="0644")
    dists = plan.release_path.rsplit("/", 1)[0]
    operations.signed_release(name="Sign the apt Release (on the controller)", root=root,
                              dists=dists, suite=settings.suite, arch=settings.arch,
                              indexes=plan.apt_indexes, key_state=settings.state)
    operations.prune(name="Remove what nothing pins", root=root, subdirs=list(MANAGED),
                     keep=plan.kept())
    operations.directory_sums(name="SHA256SUMS in images/ and files/", root=root,
                              subdirs=list(UPLOADS))


@deploy("Mirror: local file mirror and its clients")
def mirror() -> None:
    """What bring-up runs on service nodes: the server, then its fill."""
    mirror_server()
    mirror_fill()


@deploy("Mirror clients: apt and pip point at the mirror")
def mirror_clients() -> None:
    settings = _settings()
    if settings is None:
        return
    address = mirror_address(settings)
    if address is None:
        refuse(name="Mirror address",
               message="no mirror: no service node in the inventory and host data "
                       "kiln_mirror_host is not set")
        return
    try:
        public = mirror_public_key(settings.state)
    except KilnError as exc:
        refuse(name="Mirror signing key", message=f"mirror: {exc}")
        return
    files.put(name="Mirror signing key (apt)", src=io.StringIO(public), dest=KEYRING)
    files.put(name="apt source: the mirror",
                        src=io.StringIO(apt_sources(settings.http_url(address), settings.suite)),
                        dest=APT_SOURCES)
    if settings.ca:
        files.put(name="CA the mirror's certificate is checked with",
                  src=str(Path(settings.ca).expanduser()), dest=CLIENT_CA, mode="0644")
    files.put(name="pip index: the mirror",
              src=io.StringIO(pip_conf(settings.https_url(address),
                                       CLIENT_CA if settings.ca else None)),
              dest=PIP_CONF, mode="0644")
    files.put(name="Install kiln-mirror (fetch with sha256)", src=str(NODE_TOOL_SOURCE),
              dest=NODE_TOOL, mode="0755")
    operations.apt_refreshed(name="apt sees the mirror", sources=[KEYRING, APT_SOURCES],
                             stamp=APT_STAMP)

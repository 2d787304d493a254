"""Kraken: the P2P docker registry, and every node's container engine pulling through it.

    kraken()   service nodes: tracker, origin, build-index, proxy; GPU nodes: the agent.
               Configs (roles.kraken.configs, templates/kraken) in <config_dir>/<component>/,
               a systemd unit per component running its image in the node's engine (docker
               or containerd, kiln_kraken_runtime), the engines' registry-mirror settings
               pointing at the local agent (localhost:16000); then, when activated, the
               images fetched from the cluster mirror (sha256 checked) and loaded, the units
               started, and each component's port checked.

Kraken's images come from the cluster mirror's images/ (deploy/mirror.py fetches what
kiln_kraken_images pins). Settings are host data, listed in roles.kraken.settings.
"""

from __future__ import annotations

import io
from pathlib import Path

from pyinfra import host, inventory, logger
from pyinfra.api import deploy
from pyinfra.operations import apt, files, systemd

from kiln.core.context import node_context
from kiln.core.errors import KilnError, ValidationFailed
from kiln.core.outcomes import refuse
from kiln.roles.kraken import configs, operations
from kiln.roles.kraken.settings import SERVICE_COMPONENTS, KrakenSettings, settings_from_data


def _settings() -> KrakenSettings | None:
    try:
        return settings_from_data(host.data)
    except ValidationFailed as exc:
        refuse(name="Kraken settings", message="; ".join(exc.problems))
        return None


def components_here() -> tuple[str, ...]:
    if "service" in host.groups:
        return SERVICE_COMPONENTS
    if "gpu" in host.groups:
        return ("agent",)
    return ()


def _service_addresses() -> list[str]:
    return [str(node_context(node).address)
            for node in inventory.get_group("service", default=[])]


def _mirror_url() -> str | None:
    from kiln.roles.mirror import mirror_address
    from kiln.roles.mirror.settings import settings_from_data as mirror_settings

    settings = mirror_settings(host.data)
    address = mirror_address(settings)
    return settings.http_url(address) if address else None


def _write_tls(settings: KrakenSettings) -> list:
    """The TLS files in <config_dir>/tls; returns their operations (for restarts)."""
    assert settings.tls is not None
    tls = f"{settings.config_dir}/tls"
    ca = Path(settings.tls.ca).expanduser()
    cert = Path(settings.tls.cert).expanduser()
    key = Path(settings.tls.key).expanduser()
    written = [files.put(name="Kraken TLS: CA", src=str(ca), dest=f"{tls}/ca/ca.crt",
                         mode="0644")]
    for side in ("server", "client"):
        written.append(files.put(name=f"Kraken TLS: {side} certificate", src=str(cert),
                                 dest=f"{tls}/{side}/{side}.crt", mode="0644"))
        written.append(files.put(name=f"Kraken TLS: {side} key", src=str(key),
                                 dest=f"{tls}/{side}/{side}.key", mode="0600"))
        # The key is not encrypted: an empty passphrase file where Kraken's config points.
        written.append(files.put(name=f"Kraken TLS: {side} passphrase (none)",
                                 src=io.StringIO(""), dest=f"{tls}/{side}/passphrase",
                                 mode="0600"))
    return written


def _runtime_mirror(settings: KrakenSettings) -> None:
    clients = settings.clients()
    if "docker" in clients:
        operations.docker_mirror(name="docker pulls Docker Hub through the local agent",
                                 settings=settings)
    if "containerd" in clients:
        for path, text in configs.containerd_hosts(settings).items():
            files.put(name=f"containerd pulls through the local agent ({path})",
                      src=io.StringIO(text), dest=path, mode="0644")
    if "containers" in clients:
        files.put(name="podman/skopeo/CRI-O pull through the local agent",
                  src=io.StringIO(configs.containers_registries(settings)),
                  dest=configs.CONTAINERS_REGISTRIES, mode="0644")


def _check_tls_files(settings: KrakenSettings) -> list[str]:
    if settings.tls is None:
        return []
    return [f"host data kiln_kraken_tls.{field}: {path} does not exist"
            for field, path in settings.tls.model_dump().items()
            if not Path(path).expanduser().is_file()]


@deploy("Kraken: P2P registry components and the runtime mirror")
def kraken() -> None:
    settings = _settings()
    components = components_here()
    if settings is None or not components:
        return
    peer_ip = settings.peer_ip or str(node_context(host).address)
    try:
        cluster = configs.cluster_from(settings, _service_addresses())
        texts = {c: configs.config_files(c, settings, cluster) for c in components}
        units = {c: configs.unit_file(c, settings, peer_ip) for c in components}
    except KilnError as exc:
        refuse(name="Kraken configuration", message=f"kraken: {exc}")
        return
    problems = _check_tls_files(settings)
    if settings.activate:
        problems += [f"host data kiln_kraken_images.{c} is not set: nothing to load the "
                     f"{c} container from" for c in components if c not in settings.images]
    if problems:
        refuse(name="Kraken settings", message="; ".join(problems))
        return

    unit_changes = []
    # What a running component must be restarted for: its config, unit, TLS files, image.
    changes: dict[str, list] = {component: [] for component in components}
    for component in components:
        service = f"kraken-{component}"
        for directory in (f"{settings.store}/{service}", f"{settings.logs}/{service}"):
            files.directory(name=f"Kraken {component}: {directory}", path=directory,
                            mode="0755")
        for name, text in texts[component].items():
            changes[component].append(files.put(
                name=f"Kraken {component} config {name}", src=io.StringIO(text),
                dest=f"{settings.config_dir}/{component}/{name}", mode="0644"))
        unit_changes.append(files.put(
            name=f"Kraken {component} unit", src=io.StringIO(units[component]),
            dest=f"{configs.UNIT_DIR}/{configs.unit_name(component)}", mode="0644"))
        changes[component].append(unit_changes[-1])
    if settings.tls is not None:
        tls_changes = _write_tls(settings)
        for component in components:
            changes[component] += tls_changes
    if "agent" in components:
        _runtime_mirror(settings)

    if not settings.activate:
        host.log("kraken: kiln_kraken_activate is false: configs, units and the engine's "
                 "mirror settings written; images not loaded, units not started",
                 log_func=logger.info)
        return
    try:
        mirror_url = _mirror_url()
    except KilnError as exc:
        refuse(name="Kraken images", message=f"kraken: the mirror: {exc}")
        return
    if mirror_url is None:
        refuse(name="Kraken images",
               message="kraken: no mirror to load images from (no service node, "
                       "kiln_mirror_host not set)")
        return
    if "tracker" in components and settings.redis.split(":")[0] in ("127.0.0.1", "localhost"):
        # The tracker's peer store; Debian's redis-server (from the mirror's os packages).
        apt.packages(name="redis-server for the Kraken tracker", packages=["redis-server"])
        systemd.service(name="redis-server running", service="redis-server.service",
                        running=True, enabled=True)
    systemd.daemon_reload(name="systemd reads the Kraken units",
                          _if=lambda: any(change.did_change() for change in unit_changes))
    for component in components:
        changes[component].append(operations.image_loaded(
            name=f"Kraken {component} image loaded", settings=settings, component=component,
            image=settings.images[component], mirror_url=mirror_url))
        started = systemd.service(name=f"Kraken {component} running",
                                  service=configs.unit_name(component), running=True,
                                  enabled=True)
        systemd.service(
            name=f"Kraken {component} restarted for what changed",
            service=configs.unit_name(component), restarted=True,
            _if=lambda started=started, changed=changes[component]: (
                not started.did_change() and any(op.did_change() for op in changed)))
    checks = [(f"{component} {what}", url) for component in components
              for what, url in configs.health_checks(component, settings)]
    operations.ports_answer(name="Kraken ports answer", checks=checks)
    if "agent" in components and settings.health_image:
        operations.pull_through_agent(name="A pull through the agent works",
                                      settings=settings, image=settings.health_image)

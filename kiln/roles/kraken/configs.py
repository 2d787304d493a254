"""What the Kraken role writes on a node, as text (pure functions; templates/kraken).

Each component gets Kraken's own two-file layout: `base.yaml` (logging, stores, local
listeners: what Kraken ships per component) and `kiln.yaml` (`extends: base.yaml`: this
cluster's hosts, hash ring, backends and TLS, where Kraken's examples have devcluster.yaml).
Both live on the node in <config_dir>/<component>/, mounted read-only into the container at
/etc/kraken/config/<component>/, where Kraken's images keep their configs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from kiln.core.errors import KilnError
from kiln.roles.base.templates import render
from kiln.roles.kraken.settings import COMPONENTS, KrakenSettings

CONTAINER_CONFIG = "/etc/kraken/config"
CONTAINER_TLS = "/etc/kraken/tls"
CONFIG_FILES = ("base.yaml", "kiln.yaml")
UNIT_DIR = "/etc/systemd/system"
DOCKER_DAEMON_JSON = "/etc/docker/daemon.json"
CONTAINERD_CERTS = "/etc/containerd/certs.d"
CONTAINERS_REGISTRIES = "/etc/containers/registries.conf.d/50-kiln-kraken.conf"
IMAGE_DIR = "/var/lib/kiln-kraken/images"
CTR_NAMESPACE = "kraken"
# Docker Hub's name, and where containerd reaches it when the agent cannot answer.
DOCKER_HUB = "docker.io"
DOCKER_HUB_SERVER = "https://registry-1.docker.io"
BINARIES = {component: f"/usr/bin/kraken-{component}" for component in COMPONENTS}


class KrakenConfigError(KilnError):
    pass


@dataclass(frozen=True)
class Cluster:
    """Where the Kraken components of this cluster are, as the configs name them."""

    trackers: list[str]
    origins: list[str]
    build_indexes: list[str]


def cluster_from(settings: KrakenSettings, service_addresses: Sequence[str]) -> Cluster:
    """Host lists from settings, else every service node at the component's port."""
    ports = settings.ports

    def default(port: int) -> list[str]:
        return [f"{address}:{port}" for address in service_addresses]

    cluster = Cluster(
        trackers=settings.trackers or default(ports.tracker),
        origins=settings.origins or default(ports.origin_server),
        build_indexes=settings.build_indexes or default(ports.build_index),
    )
    for field, hosts in vars(cluster).items():
        if not hosts:
            raise KrakenConfigError(
                f"no Kraken {field}: no service node in the inventory and host data "
                f"kiln_kraken_{field} is not set")
    return cluster


def config_files(component: str, settings: KrakenSettings, cluster: Cluster) -> dict[str, str]:
    """{file name: text} of `component`'s configuration."""
    if component not in COMPONENTS:
        raise KrakenConfigError(f"unknown Kraken component {component!r}")
    if component in ("origin", "build-index") and not settings.backends:
        raise KrakenConfigError(
            f"Kraken {component} needs a backend: host data kiln_kraken_backends is empty "
            "(the registry origin and build-index read blobs and tags from)")
    values: dict[str, Any] = {
        "store": settings.store,
        "logs": settings.logs,
        "allowed_cidrs": settings.allowed_cidrs,
        "trackers": cluster.trackers,
        "origins": cluster.origins,
        "build_indexes": cluster.build_indexes,
        "backends": settings.backends,
        "hashring_max_replica": settings.hashring_max_replica,
        "redis": settings.redis,
        "tls_dir": CONTAINER_TLS,
        "tls_enabled": settings.tls is not None,
    }
    return {name: render(f"kraken/{component}/{name}.j2", **values) for name in CONFIG_FILES}


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(files: dict[str, str], name: str = "kiln.yaml") -> dict[str, Any]:
    """The configuration Kraken reads from `name`: its `extends` chain merged, the later
    file's maps merged into the earlier's and its other values replacing them."""
    seen: list[str] = []
    document: dict[str, Any] = {}
    while True:
        if name in seen:
            raise KrakenConfigError(f"{name}: extends loops ({' -> '.join(seen + [name])})")
        seen.append(name)
        if name not in files:
            raise KrakenConfigError(f"{seen[0]} extends {name}, which is not there")
        loaded = yaml.safe_load(files[name]) or {}
        if not isinstance(loaded, dict):
            raise KrakenConfigError(f"{name}: not a YAML mapping")
        parent = loaded.pop("extends", None)
        document = _deep_merge(loaded, document)
        if parent is None:
            return document
        name = str(parent)


def mounts(component: str, settings: KrakenSettings) -> list[tuple[str, str, bool]]:
    """(node path, container path, read-only) for a component's container."""
    service = f"kraken-{component}"
    binds = [
        (f"{settings.config_dir}/{component}", f"{CONTAINER_CONFIG}/{component}", True),
        (f"{settings.store}/{service}", f"{settings.store}/{service}", False),
        (f"{settings.logs}/{service}", f"{settings.logs}/{service}", False),
    ]
    if settings.tls is not None:
        binds.append((f"{settings.config_dir}/tls", CONTAINER_TLS, True))
    return binds


def command(component: str, settings: KrakenSettings, peer_ip: str) -> list[str]:
    """The component's command line inside its container (Kraken's flags)."""
    ports = settings.ports
    args = [BINARIES[component], f"--config={CONTAINER_CONFIG}/{component}/kiln.yaml"]
    if component == "agent":
        args += [f"--peer-ip={peer_ip}", f"--peer-port={ports.agent_peer}",
                 f"--agent-server-port={ports.agent_server}",
                 f"--agent-registry-port={ports.agent_registry}"]
    elif component == "origin":
        args += [f"--blobserver-hostname={peer_ip}", f"--blobserver-port={ports.origin_server}",
                 f"--peer-ip={peer_ip}", f"--peer-port={ports.origin_peer}"]
    elif component == "proxy":
        args += [f"--port={ports.proxy}", f"--server-port={ports.proxy_server}"]
    elif component == "tracker":
        args += [f"--port={ports.tracker}"]
    else:
        args += [f"--port={ports.build_index}"]
    return args


def unit_name(component: str) -> str:
    return f"kraken-{component}.service"


def unit_file(component: str, settings: KrakenSettings, peer_ip: str) -> str:
    """The systemd unit running `component`'s container in the node's engine; host
    networking, so the ports in the configs are the node's."""
    ref = settings.image_ref(component)
    if ref is None:
        raise KrakenConfigError(
            f"no image for Kraken {component}: host data kiln_kraken_images.{component} "
            "and kiln_kraken_version are not set")
    name = f"kraken-{component}"
    inner = " ".join(command(component, settings, peer_ip))
    if settings.runtime == "docker":
        volumes = " ".join(f"-v {src}:{dst}{':ro' if ro else ''}"
                           for src, dst, ro in mounts(component, settings))
        before = [f"/usr/bin/docker rm -f {name}"]
        run = (f"/usr/bin/docker run --rm --name {name} --network host {volumes} "
               f"{ref} {inner}")
        stop = f"/usr/bin/docker stop {name}"
        engine_unit = "docker.service"
    else:
        ctr = f"/usr/bin/ctr --namespace {CTR_NAMESPACE}"
        binds = " ".join(
            f"--mount type=bind,src={src},dst={dst},options=rbind:{'ro' if ro else 'rw'}"
            for src, dst, ro in mounts(component, settings))
        before = [f"{ctr} task kill --signal SIGKILL {name}",
                  f"{ctr} containers delete {name}"]
        run = f"{ctr} run --rm --net-host {binds} {ref} {name} {inner}"
        stop = f"{ctr} task kill --signal SIGTERM {name}"
        engine_unit = "containerd.service"
    return render("kraken/kraken.service.j2", component=component, ref=ref,
                  engine=settings.runtime, engine_unit=engine_unit, before=before, run=run,
                  stop=stop)


def load_command(settings: KrakenSettings, archive: str) -> list[str]:
    if settings.runtime == "docker":
        return ["docker", "load", "--input", archive]
    return ["ctr", "--namespace", CTR_NAMESPACE, "images", "import", archive]


def agent_address(settings: KrakenSettings) -> str:
    return f"localhost:{settings.ports.agent_registry}"


def mirrored_registries(settings: KrakenSettings) -> list[tuple[str, str, bool]]:
    """(registry, its own server URL, insecure) that nodes pull through the agent: Docker
    Hub, and the registries the backends name."""
    registries = [(DOCKER_HUB, DOCKER_HUB_SERVER, False)]
    for backend in settings.backends:
        if backend.registry not in [name for name, _, _ in registries]:
            scheme = "http" if backend.insecure else "https"
            registries.append((backend.registry, f"{scheme}://{backend.registry}",
                               backend.insecure))
    return registries


def docker_daemon_json(existing: str | None, settings: KrakenSettings) -> str:
    """daemon.json with the agent as Docker Hub's mirror, every other key kept as it is
    (the NVIDIA container toolkit keeps its runtimes there). Docker mirrors only Docker
    Hub: other registries' images are pulled as localhost:16000/<repo>:<tag>."""
    document: dict[str, Any] = {}
    if existing and existing.strip():
        try:
            document = json.loads(existing)
        except json.JSONDecodeError as exc:
            raise KrakenConfigError(f"{DOCKER_DAEMON_JSON}: not JSON ({exc})") from None
        if not isinstance(document, dict):
            raise KrakenConfigError(f"{DOCKER_DAEMON_JSON}: not a JSON object")
    document["registry-mirrors"] = [f"http://{agent_address(settings)}"]
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def containerd_hosts(settings: KrakenSettings) -> dict[str, str]:
    """{path: hosts.toml} under containerd's certs.d, one per mirrored registry."""
    agent = f"http://{agent_address(settings)}"
    return {
        f"{CONTAINERD_CERTS}/{registry}/hosts.toml": render(
            "kraken/containerd-hosts.toml.j2", registry=registry, server=server,
            agent_url=agent)
        for registry, server, _ in mirrored_registries(settings)
    }


def containers_registries(settings: KrakenSettings) -> str:
    """registries.conf.d drop-in (containers-registries.conf(5)) for podman/skopeo/CRI-O."""
    registries = [{"location": name, "insecure": insecure}
                  for name, _, insecure in mirrored_registries(settings)]
    return render("kraken/registries.conf.j2", registries=registries,
                  agent=agent_address(settings))


def health_checks(component: str, settings: KrakenSettings) -> list[tuple[str, str]]:
    """(what, URL on the node) that must answer 200 once `component` runs."""
    ports = settings.ports
    local = "http://127.0.0.1"
    return {
        "agent": [("registry", f"{local}:{ports.agent_registry}/v2/"),
                  ("server", f"{local}:{ports.agent_server}/health")],
        "origin": [("blob server", f"{local}:{ports.origin_server}/health")],
        "tracker": [("server", f"{local}:{ports.tracker}/health")],
        "build-index": [("server", f"{local}:{ports.build_index}/health")],
        "proxy": [("registry", f"{local}:{ports.proxy}/v2/")],
    }[component]

"""Kraken's settings, read from pyinfra host data (group data or the lab inventory).

Every key is `kiln_kraken_<field>`; a bad value is reported as `host data kiln_kraken_<field>
…: message`. Paths marked "controller" are read on the machine running kiln.

    kiln_kraken_images          {component: {ref, url, sha256, file, size?}}: the image
                                archive each component runs from (the mirror fetches them
                                into images/; nodes load them from there, sha256 checked)
    kiln_kraken_version         Kraken's release: images are kraken-<component>:<version>
                                unless kiln_kraken_images names another ref
    kiln_kraken_backends        [{namespace, registry, insecure?}] where origin and
                                build-index read blobs and tags (the cluster's registry)
    kiln_kraken_runtime         docker | containerd: the engine Kraken's containers run in
    kiln_kraken_mirror_clients  which runtimes pull through the local agent (default: the
                                runtime): docker (daemon.json), containerd (certs.d
                                hosts.toml), containers (registries.conf.d: podman, skopeo,
                                CRI-O)
    kiln_kraken_activate        true: load images, start units, check health. false: write
                                configs, units and mirror configuration only (a node whose
                                engine is not there yet; the lab, where Kraken cannot run)
    kiln_kraken_trackers / _origins / _build_indexes
                                host:port lists; default every service node at the port
    kiln_kraken_ports           {agent_registry: 16000, agent_peer: 16001, agent_server:
                                16002, proxy: 15000, proxy_server: 15005, origin_peer: 15001,
                                origin_server: 15002, tracker: 15003, build_index: 15004}
    kiln_kraken_peer_ip         the address peers reach this node at (default ssh_hostname)
    kiln_kraken_allowed_cidrs   who may use an agent: [127.0.0.1, 172.17.0.1] (docker0)
    kiln_kraken_hashring_max_replica  2   origins that hold each blob
    kiln_kraken_redis           127.0.0.1:6379  the tracker's peer store
    kiln_kraken_tls             {ca, cert, key} controller paths; absent: TLS off
    kiln_kraken_store           /var/cache/kraken   per-component store directories
    kiln_kraken_logs            /var/log/kraken
    kiln_kraken_config_dir      /etc/kraken
    kiln_kraken_health_image    an image (repo:tag) pulled through the agent to check it
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from kiln.core.hostdata import settings_from_host_data
from kiln.core.models import Strict
from kiln.roles.mirror.settings import ImageArchive

PREFIX = "kiln_kraken_"
SERVICE_COMPONENTS = ("tracker", "origin", "build-index", "proxy")
COMPONENTS = (*SERVICE_COMPONENTS, "agent")
_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$")
_REGISTRY = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$")

Port = Annotated[int, Field(ge=1, le=65535)]



class Ports(Strict):
    """Kraken's usual ports (its devcluster's and the agent's well-known 16000)."""

    agent_registry: Port = 16000
    agent_peer: Port = 16001
    agent_server: Port = 16002
    proxy: Port = 15000
    proxy_server: Port = 15005
    origin_peer: Port = 15001
    origin_server: Port = 15002
    tracker: Port = 15003
    build_index: Port = 15004


class Backend(Strict):
    """A registry origin reads blobs from and build-index reads tags from, per namespace."""

    namespace: str = ".*"
    registry: str
    insecure: bool = False  # plain HTTP (a registry inside the cluster without TLS)

    @field_validator("namespace")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a regular expression: {exc}") from None
        return value

    @field_validator("registry")
    @classmethod
    def _address(cls, value: str) -> str:
        if not _REGISTRY.match(value):
            raise ValueError(f"{value!r} is not a registry address (host or host:port)")
        return value


class TLSFiles(Strict):
    ca: str
    cert: str
    key: str


def _host_ports(values: list[str] | None) -> list[str] | None:
    for value in values or []:
        if not _HOST_PORT.match(value):
            raise ValueError(f"{value!r} is not host:port")
    return values


class KrakenSettings(Strict):
    images: dict[str, ImageArchive] = {}
    version: str | None = None
    backends: list[Backend] = []
    runtime: Literal["docker", "containerd"] = "docker"
    mirror_clients: list[Literal["docker", "containerd", "containers"]] | None = None
    activate: bool = True
    trackers: list[str] | None = None
    origins: list[str] | None = None
    build_indexes: list[str] | None = None
    ports: Ports = Ports()
    peer_ip: str | None = None
    allowed_cidrs: list[str] = ["127.0.0.1", "172.17.0.1"]
    hashring_max_replica: Annotated[int, Field(ge=1)] = 2
    redis: str = "127.0.0.1:6379"
    tls: TLSFiles | None = None
    store: str = "/var/cache/kraken"
    logs: str = "/var/log/kraken"
    config_dir: str = "/etc/kraken"
    health_image: str | None = None

    @field_validator("images")
    @classmethod
    def _components(cls, value: dict[str, ImageArchive]) -> dict[str, ImageArchive]:
        unknown = sorted(set(value) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"unknown component(s) {', '.join(unknown)}; "
                             f"Kraken's are {', '.join(COMPONENTS)}")
        return value

    @field_validator("trackers", "origins", "build_indexes")
    @classmethod
    def _host_port_lists(cls, value: list[str] | None) -> list[str] | None:
        return _host_ports(value)

    @field_validator("redis")
    @classmethod
    def _redis(cls, value: str) -> str:
        _host_ports([value])
        return value

    @field_validator("allowed_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an address or CIDR") from None
        return value

    @field_validator("store", "logs", "config_dir")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or value.rstrip("/") == "":
            raise ValueError("an absolute directory other than /")
        return value.rstrip("/")

    def image_ref(self, component: str) -> str | None:
        """The reference `component`'s container runs: its pinned archive's, else Kraken's
        own image name at kiln_kraken_version."""
        if component in self.images:
            return self.images[component].ref
        if self.version:
            return f"kraken-{component}:{self.version}"
        return None

    def clients(self) -> list[str]:
        return list(self.mirror_clients) if self.mirror_clients is not None else [self.runtime]


def data_key(field: str) -> str:
    return PREFIX + field


def settings_from_data(data: Any) -> KrakenSettings:
    """Build the settings from a host's data (anything with .get); every problem reported."""
    return settings_from_host_data(KrakenSettings, data, data_key)

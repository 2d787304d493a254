"""The base role's settings, read from pyinfra host data (group data or the inventory).

    kiln_apt_mirror        {sources: [{uri, suite, components}], key}
                           default: the cluster's mirror (roles/mirror: kiln_mirror_host or
                           the first service node, its suite and signing key). Set, it names
                           the only apt sources nodes use instead, `key` being their signing
                           key: an http(s) URL or a controller path (armored OpenPGP); e.g. a
                           lab pointed straight at its vendor repository (apt/ kilnlab +
                           os/ bookworm), or a site's own mirror.
    kiln_ntp_servers       [address]      default: the first service node's address
    kiln_time_sync_sets_clock  true       false: chronyd only measures (`-x`), for machines
                           whose clock is not theirs to set (a lab node shares its host's)
    kiln_sysctl            {key: value}   default DEFAULT_SYSCTL; replaces it whole
    kiln_memlock           "unlimited"    RDMA registers (pins) memory: the memlock limit
    kiln_hostname          default: kiln_node (the inventory name)
    kiln_dpkg_lock_wait    300            seconds apt and kiln wait for dpkg's lock held by
                           another process (a dpkg of an interrupted run) before failing
    kiln_firmware_dir      default: kiln's firmware/; where <kiln_sku>.yaml manifests are

A bad value is reported as `host data kiln_<key>…: message`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator

from kiln.core.context import node_context
from kiln.core.hostdata import settings_from_host_data
from kiln.core.manifest import Manifest
from kiln.core.models import Strict

# GPU/RDMA nodes. Every value is a reason, not folklore:
DEFAULT_SYSCTL: dict[str, str] = {
    # Automatic NUMA balancing migrates pages under running kernels and pinned buffers;
    # NVIDIA's guidance for GPU servers is to turn it off.
    "kernel.numa_balancing": "0",
    # Eight IPoIB interfaces in one subnet (a rail-optimised fabric): each answers ARP only
    # for its own address and announces its own address, or traffic leaves on the wrong rail.
    "net.ipv4.conf.all.arp_ignore": "1",
    "net.ipv4.conf.all.arp_announce": "2",
    # Thousands of IPoIB neighbours per rail overflow the default neighbour table (1024).
    "net.ipv4.neigh.default.gc_thresh1": "8192",
    "net.ipv4.neigh.default.gc_thresh2": "32768",
    "net.ipv4.neigh.default.gc_thresh3": "65536",
    # NCCL bootstrap and storage over IPoIB/Ethernet at 400G: socket buffers sized for it.
    "net.core.rmem_max": "268435456",
    "net.core.wmem_max": "268435456",
    "net.ipv4.tcp_rmem": "4096 87380 134217728",
    "net.ipv4.tcp_wmem": "4096 65536 134217728",
}

_SYSCTL_KEY = re.compile(r"^[a-z0-9_]+(\.[A-Za-z0-9_-]+)+$")
_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")



class AptSource(Strict):
    """One `deb` line: uri suite component..."""

    uri: str
    suite: str
    components: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$")]] = ["main"]

    @field_validator("uri")
    @classmethod
    def _http(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("suite")
    @classmethod
    def _suite(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._/-]+", value):
            raise ValueError(f"{value!r} is not an apt suite name")
        return value


class AptMirror(Strict):
    sources: Annotated[list[AptSource], Field(min_length=1)]
    key: str  # http(s) URL or controller path of the sources' signing key

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("give the signing key's URL or controller path")
        return value


class BaseSettings(Strict):
    apt_mirror: AptMirror | None = None
    ntp_servers: Annotated[list[str], Field(min_length=1)]
    time_sync_sets_clock: bool = True
    sysctl: dict[str, str] = DEFAULT_SYSCTL
    memlock: str = "unlimited"
    hostname: str
    dpkg_lock_wait: Annotated[int, Field(ge=0, le=3600)] = 300

    @field_validator("sysctl", mode="before")
    @classmethod
    def _sysctl_values(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        settings = {}
        for key, item in value.items():
            if not isinstance(key, str) or not _SYSCTL_KEY.match(key):
                raise ValueError(f"{key!r} is not a sysctl name (like net.core.rmem_max)")
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                raise ValueError(f"{key}: value {item!r} is not a number or a string")
            text = " ".join(str(item).split())
            if not text or "\n" in str(item):
                raise ValueError(f"{key}: empty or multi-line value")
            settings[key] = text
        return settings

    @field_validator("memlock")
    @classmethod
    def _limit(cls, value: str) -> str:
        if value != "unlimited" and not value.isdigit():
            raise ValueError(f"{value!r}: 'unlimited' or a number of KiB")
        return value

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        if not _HOSTNAME.match(value):
            raise ValueError(f"{value!r} is not a valid host name (lowercase letters, digits, -)")
        return value


def data_key(field: str) -> str:
    return f"kiln_{field}"


def settings_from_data(data: Any, defaults: dict[str, Any]) -> BaseSettings:
    """Build the settings from host data (anything with .get); `defaults` fill unset keys
    (the ones that depend on the inventory, such as the NTP server)."""
    return settings_from_host_data(BaseSettings, data, data_key, defaults)


def firmware_dir(data: Any) -> Path:
    """Where this host's SKU manifests are (the node context: kiln_firmware_dir, else
    kiln's shipped firmware/)."""
    return node_context(data).firmware_dir


def manifest_for(data: Any) -> tuple[Manifest, Path]:
    """The manifest of this host's SKU (host data kiln_sku) and the file it came from."""
    context = node_context(data)
    return context.manifest, context.manifest_path

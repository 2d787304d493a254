"""The fabric's side of a node's rails: what UFM says about each of its HCA ports.

For every (HCA, port GUID) the node reports (the infiniband role's facts):

- UFM knows the GUID (an HCA port the subnet manager never saw is not cabled, or dead);
- its peer, the switch port, is up (Active, Link Up) at the manifest's rate
  (`topology.hca.port_rate_gbps`, e.g. 400 = NDR 4x) and width;
- neither end is in UFM's unhealthy ports;
- UFM logged no link-down (112, 329), symbol-error (110) or symbol-BER (917, 918) event
  for either end since `since` (reference §4.3's codes).

Each port gets a typed `PortResult` (OK, CRITICAL, or UNKNOWN when UFM could not be read)
with its evidence; a failure names the node, the HCA, the switch (name and GUID) and the
switch port: where a technician goes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from kiln.core.errors import KilnError
from kiln.core.fabric import normalise_guid
from kiln.roles.ufm.resources import LANE_GBPS, PORT_TROUBLE_CODES, Port, width_lanes
from kiln.roles.ufm.view import FabricView

CHECK_NAME = "ufm-fabric"


class Verdict(StrEnum):
    OK = "OK"
    WARN = "WARN"
    CRITICAL = "CRITICAL"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class Expected:
    """What every rail should run at."""

    rate_gbps: int  # 0: not checked
    width: int = 4  # lanes (ConnectX-7 NDR: 4x)

    @property
    def speed(self) -> str | None:
        if not self.rate_gbps:
            return None
        lane = self.rate_gbps / self.width
        return next((name for name, gbps in LANE_GBPS.items() if gbps == lane
                     and name != "FDR_10"), None)

    def describe(self) -> str:
        return f"{self.speed or '?'} {self.width}x ({self.rate_gbps} Gb/s)"


@dataclass(frozen=True)
class PortResult:
    node: str
    hca: str
    guid: str
    verdict: Verdict
    problems: tuple[str, ...] = ()
    evidence: tuple[str, ...] = ()
    switch: str | None = None
    switch_guid: str | None = None
    switch_port: str | None = None

    @property
    def ok(self) -> bool:
        return self.verdict == Verdict.OK

    @property
    def where(self) -> str:
        text = f"node {self.node}: HCA {self.hca} (port GUID {self.guid})"
        if self.switch or self.switch_guid:
            text += (f": switch {self.switch or '?'} (GUID {self.switch_guid or '?'}) "
                     f"port {self.switch_port or '?'}")
        return text

    @property
    def message(self) -> str:
        return f"{self.where}: {'; '.join(self.problems) or 'OK'}"


@dataclass(frozen=True)
class FabricReport:
    node: str
    since: float | None
    ports: tuple[PortResult, ...]

    @property
    def verdict(self) -> Verdict:
        for worst in (Verdict.CRITICAL, Verdict.UNKNOWN, Verdict.WARN):
            if any(p.verdict == worst for p in self.ports):
                return worst
        return Verdict.OK

    @property
    def failures(self) -> tuple[PortResult, ...]:
        return tuple(p for p in self.ports if not p.ok)

    def summary(self) -> str:
        if not self.failures:
            return f"node {self.node}: {len(self.ports)} rail(s) OK in UFM"
        return "\n".join(p.message for p in self.failures)


def _state(port: Port) -> str:
    speed = f" {port.active_speed} {port.active_width}" if port.active_speed else ""
    return f"{port.logical_state or '?'}/{port.physical_state or '?'}{speed}"


def _rate_problem(port: Port, expected: Expected) -> str | None:
    if not expected.rate_gbps:
        return None
    lanes = width_lanes(port.active_width)
    speed = (port.active_speed or "").upper()
    if speed == (expected.speed or "") and lanes == expected.width:
        return None
    found = port.rate_gbps
    return (f"link at {port.active_speed or '?'} {port.active_width or '?'} "
            f"({found:g} Gb/s), expected {expected.describe()}" if found is not None else
            f"link speed/width unknown ({port.active_speed!r}, {port.active_width!r}), "
            f"expected {expected.describe()}")


def check_port(view: FabricView, node: str, hca: str, guid: str, expected: Expected,
               since: float | None) -> PortResult:
    """One HCA port, as UFM sees it."""
    try:
        guid = normalise_guid(guid)
    except ValueError as exc:
        return PortResult(node, hca, guid, Verdict.UNKNOWN, (str(exc),))
    try:
        port = view.host_ports().get(guid)
        ports = view.ports()
        unhealthy = view.unhealthy()
        events = view.events() if since is not None else {}
    except KilnError as exc:
        return PortResult(node, hca, guid, Verdict.UNKNOWN,
                          (f"UFM could not be read: {exc}",))
    if port is None:
        return PortResult(node, hca, guid, Verdict.CRITICAL,
                          (f"port GUID unknown to UFM {view.client.url} (not cabled, or "
                           "not seen by the subnet manager)",))
    peer = ports.get(port.peer or "") if port.has_peer else None
    switch = (peer.system_name if peer else None) or port.peer_node_name
    switch_guid = (peer.system_id if peer else None) or port.peer_node_guid
    switch_port = (peer.label if peer else None) or port.peer_port_dname
    located = {"switch": switch if switch != "N/A" else None,
               "switch_guid": switch_guid if switch_guid != "n/a" else None,
               "switch_port": switch_port if switch_port != "N/A" else None}
    problems: list[str] = []
    evidence = [f"UFM port {port.name} ({port.node_description or hca}): {_state(port)}"]
    if peer is None:
        problems.append(f"no peer switch port in UFM (HCA port {_state(port)}): not "
                        "cabled, or the link never came up")
    else:
        evidence.append(f"peer {peer.name} ({peer.node_description}): {_state(peer)}")
        if not peer.up:
            problems.append(f"switch port is {peer.logical_state or '?'}/"
                            f"{peer.physical_state or '?'}, not Active/Link Up")
        else:
            rate = _rate_problem(peer, expected)
            if rate:
                problems.append(rate)
    for name in (port.name, peer.name if peer else None):
        entry = unhealthy.get(name or "")
        if entry is not None:
            side = "HCA port" if name == port.name else "switch port"
            problems.append(f"{side} is in UFM's unhealthy ports ({', '.join(entry.conditions)}"
                            f", {entry.state}, since {entry.status_time})")
    if since is not None:
        floor = math.floor(since)  # UFM dates events to the second
        for name in (port.name, peer.name if peer else None):
            for event in events.get(name or "", []):
                what = PORT_TROUBLE_CODES.get(event.code)
                if what is None:
                    continue
                try:
                    at = event.at(view.zone)
                except KilnError as exc:
                    problems.append(str(exc))
                    continue
                if at >= floor:
                    problems.append(f"UFM event {event.code} ({what}) at {event.timestamp} "
                                    f"on {name}: {event.description or event.name}")
    verdict = Verdict.CRITICAL if problems else Verdict.OK
    return PortResult(node, hca, guid, verdict, tuple(problems), tuple(evidence), **located)


def check_node(view: FabricView, node: str, hca_ports: Iterable[tuple[str, str]],
               expected: Expected, since: float | None) -> FabricReport:
    """Every (HCA name, port GUID) of a node; `since` (epoch) bounds the event search
    (None: events are not looked at)."""
    results = tuple(check_port(view, node, hca, guid, expected, since)
                    for hca, guid in hca_ports)
    return FabricReport(node, since, results)

"""The fabric's side of a node's rails: what UFM says about each of its HCA ports.

For every (HCA, port GUID) the node reports (the infiniband role's facts):

- UFM knows the GUID (an HCA port the subnet manager never saw is not cabled, or dead);
- its peer, the switch port, is up (Active, Link Up) at the manifest's rate
  (`topology.hca.port_rate_gbps`, e.g. 400 = NDR 4x) and width;
- neither end is in UFM's unhealthy ports;
- UFM logged no link-down (112, 329), symbol-error (110) or symbol-BER (917, 918) event
  for either end since `since` (reference §4.3's codes).

Each port gets a typed result (kiln.core.checks: OK, CRITICAL, or UNKNOWN when UFM could
not be read) with its evidence and a remediation; a failure names the node, the HCA, the
switch (name and GUID) and the switch port: where a technician goes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from kiln.core.checks import (
    Action,
    CheckResult,
    Combined,
    Peer,
    Remediation,
    Status,
    Subject,
)
from kiln.core.errors import KilnError
from kiln.core.fabric import normalise_guid
from kiln.roles.ufm.resources import LANE_GBPS, PORT_TROUBLE_CODES, Port, width_lanes
from kiln.roles.ufm.view import FabricView

CHECK_NAME = "ufm-fabric"


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
class FabricReport:
    """A node's rails as UFM sees them: one result per HCA port (kiln.core.checks)."""

    node: str
    since: float | None
    ports: tuple[CheckResult, ...]

    @property
    def combined(self) -> Combined:
        return Combined(self.ports)

    @property
    def status(self) -> Status:
        return self.combined.status

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return self.combined.failures

    def summary(self) -> str:
        if self.combined.passes:
            return f"node {self.node}: {len(self.ports)} rail(s) OK in UFM"
        return "\n".join(self.combined.report())


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


def _not(text: str) -> str | None:
    return None if text in ("N/A", "n/a", "") else text


def switch_end(ports: dict[str, Port], port: Port) -> Peer | None:
    """The switch port at the far end of a host port, as UFM names it; None when UFM knows
    no peer."""
    peer = ports.get(port.peer or "") if port.has_peer else None
    switch = _not((peer.system_name if peer else None) or port.peer_node_name or "")
    switch_guid = _not((peer.system_id if peer else None) or port.peer_node_guid or "")
    switch_port = _not((peer.label if peer else None) or port.peer_port_dname or "")
    if not (switch or switch_guid):
        return None
    return Peer("switch", switch, switch_guid, switch_port)


def switch_ends(view: FabricView, guids: Iterable[str]) -> dict[str, Peer]:
    """port GUID (as given) -> the switch port at its far end, for the GUIDs UFM knows."""
    host_ports, ports = view.host_ports(), view.ports()
    found = {}
    for guid in guids:
        try:
            port = host_ports.get(normalise_guid(guid))
        except ValueError:
            continue
        end = switch_end(ports, port) if port is not None else None
        if end is not None:
            found[guid] = end
    return found


def check_port(view: FabricView, node: str, hca: str, guid: str, expected: Expected,
               since: float | None) -> CheckResult:
    """One HCA port, as UFM sees it."""
    subject = Subject(node, "HCA", hca, (("port GUID", guid),))
    try:
        guid = normalise_guid(guid)
    except ValueError as exc:
        return CheckResult(CHECK_NAME, subject, Status.UNKNOWN, (str(exc),), {"guid": guid},
                           Remediation(Action.RETRY, f"HCA {hca}: read its port GUID again "
                                       "(ibstat)"))
    subject = Subject(node, "HCA", hca, (("port GUID", guid),))
    try:
        port = view.host_ports().get(guid)
        ports = view.ports()
        unhealthy = view.unhealthy()
        events = view.events() if since is not None else {}
    except KilnError as exc:
        return CheckResult(CHECK_NAME, subject, Status.UNKNOWN,
                           (f"UFM could not be read: {exc}",), {"guid": guid, "ufm":
                                                                view.client.url},
                           Remediation(Action.RETRY, f"make UFM {view.client.url} answer "
                                       "(service, credentials, TLS), run the stage again"))
    if port is None:
        return CheckResult(CHECK_NAME, subject, Status.CRITICAL,
                           (f"port GUID unknown to UFM {view.client.url} (not cabled, or "
                            "not seen by the subnet manager)",), {"guid": guid},
                           Remediation(Action.CHECK_CABLE, f"HCA {hca}: check its cable is "
                                       "in at both ends and the switch port is enabled; "
                                       "reseat it"))
    peer = ports.get(port.peer or "") if port.has_peer else None
    end = switch_end(ports, port)
    switch, switch_guid = (end.name, end.guid) if end else (None, None)
    switch_port = end.port if end else None
    if end is not None:
        subject = Subject(node, "HCA", hca, (("port GUID", guid),), end)
    where = (f"switch {switch or '?'} port {switch_port or '?'}" if switch or switch_guid
             else "its switch port")
    cable = Remediation(Action.CHECK_CABLE, f"reseat the cable between HCA {hca} and {where}"
                        ", then replace it (or the transceiver) if the errors go on")
    found: list[tuple[str, Remediation]] = []
    evidence: dict[str, object] = {"guid": guid, "ufm_port": port.name,
                                   "hca_port": _state(port)}
    if peer is None:
        found.append((f"no peer switch port in UFM (HCA port {_state(port)}): not "
                      "cabled, or the link never came up", cable))
    else:
        evidence.update(peer_port=peer.name, peer=f"{peer.node_description}: {_state(peer)}")
        if not peer.up:
            found.append((f"switch port is {peer.logical_state or '?'}/"
                          f"{peer.physical_state or '?'}, not Active/Link Up",
                          Remediation(Action.CHECK_SWITCH_PORT, f"{where}: check it is "
                                      f"enabled and its cable to HCA {hca} is in; reseat "
                                      "the cable at both ends")))
        else:
            rate = _rate_problem(peer, expected)
            if rate:
                found.append((rate, cable))
    for name in (port.name, peer.name if peer else None):
        entry = unhealthy.get(name or "")
        if entry is not None:
            side = "HCA port" if name == port.name else "switch port"
            found.append((f"{side} is in UFM's unhealthy ports ({', '.join(entry.conditions)}"
                          f", {entry.state}, since {entry.status_time})",
                          Remediation(Action.CHECK_SWITCH_PORT, f"{where} and its cable to "
                                      f"HCA {hca}: fix the cause, then clear the port's "
                                      "unhealthy mark in UFM")))
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
                    found.append((str(exc), Remediation(Action.RETRY, "set the inventory's "
                                                        "ufm.timezone to UFM's zone")))
                    continue
                if at >= floor:
                    found.append((f"UFM event {event.code} ({what}) at {event.timestamp} "
                                  f"on {name}: {event.description or event.name}", cable))
    if not found:
        return CheckResult(CHECK_NAME, subject, Status.OK, (), evidence)
    return CheckResult(CHECK_NAME, subject, Status.CRITICAL, tuple(t for t, _ in found),
                       evidence, found[0][1])


def check_node(view: FabricView, node: str, hca_ports: Iterable[tuple[str, str]],
               expected: Expected, since: float | None) -> FabricReport:
    """Every (HCA name, port GUID) of a node; `since` (epoch) bounds the event search
    (None: events are not looked at)."""
    results = tuple(check_port(view, node, hca, guid, expected, since)
                    for hca, guid in hca_ports)
    return FabricReport(node, since, results)

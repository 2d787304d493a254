"""The lab's BMCs: one per node, at the node's BMC address (10.231.1.(10+i)), as `node.bmc` says.

- Redfish (`protocol: redfish`, HTTPS 443): sushy-tools' emulator with the lab's systems
  driver (lab/bmc/redfish*.py), a certificate from the lab CA, basic auth;
- IPMI (`protocol: ipmi`, UDP 623): OpenIPMI's ipmi_sim with a chassis-control program
  (lab/bmc/ipmi*.py), RMCP+ with the same user.

Both use the lab's BMC credentials (`read_lab_secrets(lab)["bmc"]`) and power the node through
lab/cluster.py. `kiln lab up` calls `start`, `kiln lab down` calls `stop`. Each BMC is a
lab service (lab/services.py) named `bmc-<node>`; its log is `<lab>/services/bmc-<node>.log`.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kiln.lab import sel, services
from kiln.lab.credentials import read_lab_secrets
from kiln.lab.state import LabState, NodeState
from kiln.lab.tls import ensure_ca, issue_cert

from . import ipmi

Log = Callable[[str], None]
SERVICE_PREFIX = "bmc-"


class BmcError(RuntimeError):
    pass


def bmc_root(lab: Path) -> Path:
    return Path(lab) / "bmc"


def start(lab: Path, state: LabState, log: Log = print) -> str:
    """Start every node's BMC (those running are left alone); a one-line summary."""
    lab = Path(lab)
    credentials = read_lab_secrets(lab).get("bmc") or {}
    if not credentials.get("username") or not credentials.get("password"):
        raise BmcError(f"{lab / 'secrets.yaml'}: no bmc username/password")
    # Not at module level: `python -m lab.bmc.redfish` imports this package first.
    from .redfish import write_htpasswd

    root = bmc_root(lab)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    htpasswd = write_htpasswd(root / "htpasswd", credentials["username"],
                              credentials["password"])
    ca = ensure_ca(lab)
    by_protocol: dict[str, list[NodeState]] = {"redfish": [], "ipmi": []}
    for node in state.nodes:
        protocol = node.bmc.get("protocol")
        if protocol not in by_protocol:
            raise BmcError(f"node {node.name}: bmc protocol {protocol!r} is not redfish or ipmi")
        by_protocol[protocol].append(node)

    # One at a time: openssl keeps the CA's serial number in one file.
    certificates = {n.name: issue_cert(lab, f"bmc-{n.name}", [n.bmc["address"]])
                    for n in by_protocol["redfish"]
                    if not services.running(lab, ipmi.service_name(n.name))}

    def start_one(node: NodeState) -> None:
        if services.running(lab, ipmi.service_name(node.name)):
            return
        if node.bmc["protocol"] == "redfish":
            _start_redfish(lab, node, certificates[node.name], htpasswd, ca)
        else:
            ipmi.start(lab, node.name, node.bmc["address"], node.bmc["port"],
                       credentials["username"], credentials["password"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        failures = []
        for node, future in [(n, pool.submit(start_one, n)) for n in state.nodes]:
            try:
                future.result()
            except Exception as exc:
                failures.append(f"{node.name}: {exc}")
    if failures:
        raise BmcError("BMCs that did not start:\n" + "\n".join(failures))
    redfish, ipmi_nodes = by_protocol["redfish"], by_protocol["ipmi"]
    summary = f"BMCs: {len(redfish)} Redfish (sushy-tools, HTTPS 443)"
    if ipmi_nodes:
        summary += f", {len(ipmi_nodes)} IPMI (ipmi_sim, UDP 623: "
        summary += ", ".join(n.name for n in ipmi_nodes) + ")"
    return summary


def _start_redfish(lab: Path, node: NodeState, certificate: tuple[Path, Path], htpasswd: Path,
                   ca: Path) -> int:
    from .redfish import write_config

    address, port = node.bmc["address"], node.bmc["port"]
    cert, key = certificate
    directory = bmc_root(lab) / node.name
    state_dir = directory / "sushy-state"
    shutil.rmtree(state_dir, ignore_errors=True)  # a new lab: no boot override left over
    sel.store_path(lab, node.name).unlink(missing_ok=True)  # and an empty event log
    config = write_config(directory / "emulator.conf", lab=lab, node=node.name,
                          address=address, port=port, host_address=node.address,
                          cert=cert, key=key,
                          auth_file=htpasswd, state_dir=state_dir)
    argv = [sys.executable, "-m", "kiln.lab.bmc.redfish", "--lab", str(lab), "--node", node.name,
            "--config", str(config), "--ca", str(ca)]
    return services.start(lab, ipmi.service_name(node.name), argv, port=(address, port),
                          env={"KILN_LAB_DIR": str(lab), "PYTHONUNBUFFERED": "1"})


def stop(lab: Path) -> None:
    """Stop every BMC of the lab (idempotent; needs no state file)."""
    lab = Path(lab)
    for pid_file in sorted(services.services_dir(lab).glob(f"{SERVICE_PREFIX}*.pid")):
        services.stop(lab, pid_file.stem)


def running(lab: Path) -> list[str]:
    """Names of the nodes whose BMC runs."""
    return sorted(
        f.stem[len(SERVICE_PREFIX):]
        for f in services.services_dir(Path(lab)).glob(f"{SERVICE_PREFIX}*.pid")
        if services.running(Path(lab), f.stem)
    )


__all__ = ["BmcError", "running", "start", "stop"]

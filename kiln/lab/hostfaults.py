"""Faults the lab makes outside a node: on the host's end of its network, and at its BMC.

The hardware simulator's faults (lab/hwsim/faults.py, `KINDS`) change what the node's own
tools see; these change the world around the node, as their real counterparts do, so
nothing about them is visible inside the node (they are not in `/run/kiln-hw/faults.json`):

- `time-unsynced`: the node can no longer reach an NTP server. The host drops every NTP
  request (UDP to port 123) the node sends, at the host's end of its management link: an
  nftables chain `time_unsynced_<node>` in table `netdev kiln_lab`, hooked on ingress of
  the node's veth `kv-<node>` (lab/netns.py), out of the node's reach. chrony in the node
  keeps its last sync until its source goes unreachable; a chronyd started while the fault
  holds (a reboot, `service chrony restart`) never synchronises ("Leap status : Not
  synchronised", the source's reach 0). Clearing it lets NTP through again.
- `bmc-event`: one entry in the node's BMC system event log (`kind=` one of
  lab/sel.py `EVENTS`), through IPMI's Add SEL Entry for an IPMI BMC, in the SEL store
  the Redfish BMC serves for a Redfish one. It is a log entry, not a state: `--clear
  bmc-event` clears the log (IPMI Clear SEL; LogService.ClearLog).

    kiln lab fault gpu-001 time-unsynced
    kiln lab fault svc-001 bmc-event kind=ac-lost
    kiln lab fault gpu-001 --clear [time-unsynced|bmc-event]

`kiln lab fault` (lab/cli.py) asks this registry first (`handles`); every other kind goes
to the hardware simulator. Active network faults are kept in `<lab>/hostfaults.json`
(`{"faults": [{"node": ..., "kind": ...}]}`); `kiln lab down` (and `up`) removes the table
and the file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kiln.lab import sel
from kiln.lab.credentials import read_lab_secrets
from kiln.lab.host import LabError
from kiln.lab.netns import veth_name
from kiln.lab.state import StateError, lab_dir, lab_lock, load_state

TABLE = "kiln_lab"
STORE = "hostfaults.json"
NTP_PORT = 123

# kind -> (fields: name -> allowed values or None for any, one line saying what it does)
KINDS: dict[str, tuple[dict[str, tuple[str, ...] | None], str]] = {
    "time-unsynced": (
        {},
        "the node's NTP requests are dropped at the host's end of its link; its chrony "
        "loses its source (not synchronised once it restarts)",
    ),
    "bmc-event": (
        {"kind": ("ac-lost", "machine-check", "memory-uncorrectable", "pcie-fatal",
                  "bios-corruption")},
        "one entry in the node BMC's system event log (IPMI Add SEL Entry / Redfish "
        "LogServices/SEL); --clear empties the log",
    ),
}


def handles(argv: list[str]) -> bool:
    """Whether `kiln lab fault ARGV` is this registry's (a kind of it, or clearing one)."""
    if len(argv) < 2:
        return False
    if argv[1] == "--clear":
        return len(argv) > 2 and argv[2] in KINDS
    return argv[1] in KINDS


def kinds_text() -> str:
    return "".join(f"  {kind:22} {doc}\n" for kind, (_, doc) in KINDS.items())


def _parse(kind: str, pairs: list[str]) -> dict[str, str]:
    fields = KINDS[kind][0]
    args = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise LabError(f"{kind}: argument {pair!r}: expected FIELD=VALUE")
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise LabError(f"{kind}: no field {key!r} (fields: {known})")
        allowed = fields[key]
        if allowed is not None and value not in allowed:
            raise LabError(f"{kind}: {key}={value!r} is not one of {', '.join(allowed)}")
        args[key] = value
    missing = [key for key in fields if key not in args]
    if missing:
        raise LabError(f"{kind}: {', '.join(f'{k}=' for k in missing)} is required "
                       f"({', '.join(fields[missing[0]] or ())})")
    return args


def fault_command(argv: list[str], out: Callable[[str], None] = print) -> int:
    """`kiln lab fault NODE KIND [FIELD=VALUE]` / `NODE --clear [KIND]` for this registry's
    kinds; `NODE --clear` (every kind) clears this registry's part only."""
    lab = lab_dir()
    node = argv[0]
    try:
        if argv[1] == "--clear":
            kind = argv[2] if len(argv) > 2 else None
            cleared = clear(lab, node, kind)
            if kind is None:
                out(f"{node}: cleared {len(cleared)} host fault(s)"
                    + (f" ({', '.join(cleared)})" if cleared else ""))
            else:
                out(f"{node}: cleared {kind}" if cleared else f"{node}: no {kind} to clear")
            return 0
        kind = argv[1]
        said = apply(lab, node, kind, _parse(kind, argv[2:]))
    except (LabError, StateError) as exc:
        print(f"kiln lab fault: {exc}", file=sys.stderr)
        return 2
    out(f"{node}: {said}")
    return 0


# -- the registry's record -----------------------------------------------------------------


def _store(lab: Path) -> Path:
    return Path(lab) / STORE


def active(lab: Path) -> list[dict[str, str]]:
    try:
        return list(json.loads(_store(lab).read_text()).get("faults", []))
    except FileNotFoundError:
        return []


def _save(lab: Path, faults: list[dict[str, str]]) -> None:
    path = _store(lab)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"faults": faults}, indent=2) + "\n")
    os.replace(tmp, path)


# -- apply / clear -------------------------------------------------------------------------


def apply(lab: Path, node: str, kind: str, args: dict[str, str]) -> str:
    """Put the fault on the node; a line saying what now holds."""
    with lab_lock(lab):
        state = load_state(lab)
        target = state.node(node)
        if kind == "time-unsynced":
            drop_ntp(node, _veth(node))
            faults = active(lab)
            if {"node": node, "kind": kind} not in faults:
                _save(lab, [*faults, {"node": node, "kind": kind}])
            return (f"fault time-unsynced active (NTP from {target.address} dropped at "
                    f"{_veth(node)})")
        if kind == "bmc-event":
            return _add_bmc_event(lab, target, args["kind"])
    raise LabError(f"no host fault kind {kind!r}")


def clear(lab: Path, node: str, kind: str | None = None) -> list[str]:
    """Remove the node's host faults (of one kind, or all); the kinds that were cleared."""
    cleared: list[str] = []
    with lab_lock(lab):
        try:
            target = load_state(lab).node(node)
        except StateError:
            if kind is None:
                # `--clear` of every kind: the hardware simulator's part still runs (and
                # names an unknown node); with no lab up there is nothing of ours to clear.
                return cleared
            raise
        faults = active(lab)
        if kind in (None, "time-unsynced"):
            allow_ntp(node)
            if {"node": node, "kind": "time-unsynced"} in faults:
                cleared.append("time-unsynced")
            _save(lab, [f for f in faults
                        if not (f["node"] == node and f["kind"] == "time-unsynced")])
        if kind == "bmc-event" and _clear_bmc_log(lab, target):
            cleared.append("bmc-event")
        elif kind is None:
            # Clearing everything empties the event log too, where the BMC answers: a node
            # cleared of its faults should read healthy. A BMC that is not running (a lab
            # brought up without them) has no log to empty.
            try:
                if _clear_bmc_log(lab, target):
                    cleared.append("bmc-event")
            except LabError as exc:
                print(f"kiln lab fault: {node}: event log not cleared: {exc}", file=sys.stderr)
    return cleared


def teardown(lab: Path) -> None:
    """What `kiln lab down` leaves: no table, no record, empty Redfish SEL stores."""
    if _nft_available():
        _nft(f"table netdev {TABLE} {{}}\ndelete table netdev {TABLE}\n")
    _store(lab).unlink(missing_ok=True)
    for store in Path(lab).glob("bmc/*/sel.json"):
        store.unlink(missing_ok=True)


# -- time-unsynced: nftables on the host end of the node's link -----------------------------


def _veth(node: str) -> str:
    return veth_name(node)


def chain_name(node: str) -> str:
    return "time_unsynced_" + node.replace("-", "_")


def drop_ntp_script(node: str, device: str, table: str = TABLE) -> str:
    """The nft script holding the node's NTP requests (idempotent: the chain is flushed)."""
    chain = chain_name(node)
    return (
        f"table netdev {table} {{\n"
        f"  chain {chain} {{\n"
        f'    type filter hook ingress device "{device}" priority 0; policy accept;\n'
        f"  }}\n"
        f"}}\n"
        f"flush chain netdev {table} {chain}\n"
        f"add rule netdev {table} {chain} udp dport {NTP_PORT} counter drop\n"
    )


def allow_ntp_script(node: str, device: str, table: str = TABLE) -> str:
    """Remove the node's chain (made first if absent, so the script always applies)."""
    chain = chain_name(node)
    return (
        f"table netdev {table} {{\n"
        f"  chain {chain} {{\n"
        f'    type filter hook ingress device "{device}" priority 0; policy accept;\n'
        f"  }}\n"
        f"}}\n"
        f"delete chain netdev {table} {chain}\n"
    )


def _nft_available() -> bool:
    return shutil.which("nft") is not None


def _nft(script: str) -> None:
    if not _nft_available():
        raise LabError("nft is not installed: apt-get install nftables "
                       "(kiln/lab/host-packages.txt)")
    result = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise LabError(f"nft -f - failed ({result.returncode}): {result.stderr.strip()}\n"
                       f"{script}")


def drop_ntp(node: str, device: str, table: str = TABLE) -> None:
    _nft(drop_ntp_script(node, device, table))


def allow_ntp(node: str) -> None:
    if _nft_available():
        _nft(allow_ntp_script(node, _veth(node)))


def dropped_packets(node: str, table: str = TABLE) -> int | None:
    """How many NTP requests of the node the host dropped; None when no fault holds."""
    result = subprocess.run(["nft", "-j", "list", "chain", "netdev", table, chain_name(node)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return None
    for item in json.loads(result.stdout).get("nftables", []):
        for expr in (item.get("rule") or {}).get("expr", []):
            if "counter" in expr:
                return int(expr["counter"]["packets"])
    return 0


# -- bmc-event: the node's BMC system event log ----------------------------------------------


def _bmc_credentials(lab: Path) -> tuple[str, str]:
    credentials = read_lab_secrets(lab).get("bmc") or {}
    if not credentials.get("username") or not credentials.get("password"):
        raise LabError(f"{Path(lab) / 'secrets.yaml'}: no bmc username/password")
    return credentials["username"], credentials["password"]


def _add_bmc_event(lab: Path, target: Any, event: str) -> str:
    bmc = target.bmc
    try:
        if bmc.get("protocol") == "ipmi":
            username, password = _bmc_credentials(lab)
            record_id = sel.add_ipmi(bmc["address"], int(bmc["port"]), username, password, event)
            return f"SEL record {record_id} added at IPMI BMC {bmc['address']} ({event})"
        entry = sel.add_redfish(lab, target.name, event)
    except sel.SelError as exc:
        raise LabError(str(exc)) from None
    return (f"SEL entry {entry['Id']} added at Redfish BMC {bmc.get('address')} ({event}: "
            f"{entry['Severity']}, {entry['Message']})")


def _clear_bmc_log(lab: Path, target: Any) -> bool:
    """Empty the node BMC's SEL; whether it held anything (IPMI: always said cleared)."""
    bmc = target.bmc
    try:
        if bmc.get("protocol") == "ipmi":
            username, password = _bmc_credentials(lab)
            sel.clear_ipmi(bmc["address"], int(bmc["port"]), username, password)
            return True
        return sel.clear_redfish(lab, target.name) > 0
    except sel.SelError as exc:
        raise LabError(str(exc)) from None

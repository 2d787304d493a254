"""System event log entries a lab BMC records: `kiln lab fault NODE bmc-event kind=KIND`.

A real BMC's SEL holds what its own sensors and the host's firmware reported: the BMC logs
an AC loss itself (generator 0x0020, the BMC's address), the BIOS or its SMI handler logs a
machine check, an uncorrectable ECC error, a PCIe fatal error or a corrupt firmware image
(generator 0x0001, BIOS software ID). Each kind here is that record, as the IPMI 2.0 spec
lays it out (a type 0x02 system event record, sensor-specific event type 0x6F, the sensor
type and the offset of the event):

- `ac-lost`: Power Unit (09h), offset 04h, ipmitool's "AC lost";
- `machine-check`: Processor (07h), offset 0Bh, "Uncorrectable machine check exception";
- `memory-uncorrectable`: Memory (0Ch), offset 01h with data 3 the module (0),
  "Uncorrectable ECC";
- `pcie-fatal`: Critical Interrupt (13h), offset 0Ah, "Bus Fatal Error";
- `bios-corruption`: System Firmware Progress (0Fh), offset 00h (firmware error) with data 2
  0Bh (firmware ROM corruption), "BIOS corruption detected".

The sensor numbers are the lab's (a real board's SDRs name its own); the lab BMCs have no
SDRs, so ipmitool names a sensor by type and number.

How an entry gets there, per protocol:

- IPMI (ipmi_sim): the real path, IPMI's Add SEL Entry (`ipmitool -I lanplus ... raw 0x0a
  0x44 <16 bytes>`, what a BIOS sends over KCS); ipmi_sim numbers it and stamps it with its
  SEL clock, which the lab sets at the BMC's start (`sel time set now`, as a BMC's NTP or
  the host's BIOS does), so `ipmitool sel elist` shows it dated.
- Redfish (sushy-tools has no LogServices): the lab's Redfish app serves
  `Systems/<id>/LogServices/SEL` from a per-node store, `<lab>/bmc/<node>/sel.json`, which
  this module appends to (LogEntry fields of the DMTF schema: EntryType SEL, Severity,
  Message, MessageId, SensorType, SensorNumber, EntryCode, GeneratorId, Created).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RECORD_TYPE_SYSTEM_EVENT = 0x02
EVM_REV = 0x04  # IPMI 2.0 event messages
SENSOR_SPECIFIC = 0x6F
GENERATOR_BMC = 0x0020
GENERATOR_BIOS = 0x0001
# Event data 1: bits 7:6 say what data 2 holds, bits 5:4 what data 3 holds (11b: a
# sensor-specific extension code), bits 3:0 the offset.
DATA2_SPECIFIC = 0xC0
DATA3_SPECIFIC = 0x30
UNSPECIFIED = 0xFF
# The OEM message registry the lab's Redfish SEL entries name (as a vendor BMC names its own).
REGISTRY = "KilnLabSEL.1.0"
MAX_ENTRIES = 1000  # like ipmi_sim's `sel_enable 0x20 1000`


class SelError(RuntimeError):
    pass


@dataclass(frozen=True)
class SelEvent:
    generator: int
    sensor_type: int
    sensor_number: int
    offset: int
    data2: int
    data3: int
    data1_flags: int
    # Redfish
    redfish_sensor_type: str  # the LogEntry schema's SensorType value
    message_id: str
    message: str
    severity: str = "Critical"

    def event_data(self) -> tuple[int, int, int]:
        return (self.data1_flags | self.offset, self.data2, self.data3)


EVENTS: dict[str, SelEvent] = {
    "ac-lost": SelEvent(
        GENERATOR_BMC, 0x09, 0x50, 0x04, UNSPECIFIED, UNSPECIFIED, 0x00,
        "PowerUnit", "ACLost", "Power unit AC lost: the system's AC power input was lost."),
    "machine-check": SelEvent(
        GENERATOR_BIOS, 0x07, 0x60, 0x0B, UNSPECIFIED, UNSPECIFIED, 0x00,
        "Processor", "MachineCheckUncorrectable",
        "Processor CPU0 uncorrectable machine check exception."),
    "memory-uncorrectable": SelEvent(
        GENERATOR_BIOS, 0x0C, 0x70, 0x01, UNSPECIFIED, 0x00, DATA3_SPECIFIC,
        "Memory", "MemoryECCUncorrectable",
        "Memory module 0 uncorrectable ECC error detected."),
    "pcie-fatal": SelEvent(
        GENERATOR_BIOS, 0x13, 0xA0, 0x0A, UNSPECIFIED, UNSPECIFIED, 0x00,
        "Critical Interrupt", "PCIeFatalError",
        "Critical interrupt: PCIe bus fatal error detected."),
    "bios-corruption": SelEvent(
        GENERATOR_BIOS, 0x0F, 0x0F, 0x00, 0x0B, UNSPECIFIED, DATA2_SPECIFIC,
        "System Firmware Progress", "BIOSCorruption",
        "System firmware error: BIOS ROM corruption detected."),
}


def event(kind: str) -> SelEvent:
    try:
        return EVENTS[kind]
    except KeyError:
        raise SelError(f"bmc-event kind {kind!r} is not one of {', '.join(EVENTS)}") from None


def record(entry: SelEvent, record_id: int = 0, timestamp: int = 0) -> bytes:
    """The 16-byte SEL record (IPMI 2.0 section 32.1). Add SEL Entry ignores the record ID
    (the BMC assigns it) and the BMC stamps the time of a type 0x02 record itself."""
    data = bytes([
        record_id & 0xFF, record_id >> 8 & 0xFF,
        RECORD_TYPE_SYSTEM_EVENT,
        *timestamp.to_bytes(4, "little"),
        entry.generator & 0xFF, entry.generator >> 8 & 0xFF,
        EVM_REV,
        entry.sensor_type,
        entry.sensor_number,
        SENSOR_SPECIFIC,  # bit 7 clear: an assertion
        *entry.event_data(),
    ])
    assert len(data) == 16
    return data


# -- IPMI: ipmitool against the node's ipmi_sim ------------------------------------------


def ipmitool_argv(address: str, port: int, username: str, *args: str) -> list[str]:
    """ipmitool over RMCP+ as the lab uses it (cipher suite 3: ipmi_sim ignores the query;
    the password in $IPMI_PASSWORD, `-E`)."""
    return ["ipmitool", "-I", "lanplus", "-C", "3", "-H", address, "-p", str(port),
            "-U", username, "-E", *args]


def _ipmitool(address: str, port: int, username: str, password: str, *args: str) -> str:
    result = subprocess.run(
        ipmitool_argv(address, port, username, *args), capture_output=True, text=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "IPMI_PASSWORD": password,
             "TZ": "UTC", "LC_ALL": "C"},
        timeout=30, check=False)
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip().replace(password, "****")
        raise SelError(f"ipmitool {' '.join(args[:3])} at {address}: exit "
                       f"{result.returncode}: {said}")
    return result.stdout


def add_ipmi(address: str, port: int, username: str, password: str, kind: str) -> int:
    """Add the event to an IPMI BMC's SEL (Add SEL Entry); the record ID it was given."""
    data = record(event(kind))
    out = _ipmitool(address, port, username, password, "raw", "0x0a", "0x44",
                    *(f"0x{b:02x}" for b in data))
    words = out.split()
    if len(words) < 2:
        raise SelError(f"Add SEL Entry at {address}: no record ID in {out!r}")
    return int(words[0], 16) | int(words[1], 16) << 8


def clear_ipmi(address: str, port: int, username: str, password: str) -> None:
    _ipmitool(address, port, username, password, "sel", "clear")


def set_ipmi_clock(address: str, port: int, username: str, password: str) -> None:
    """The BMC's SEL clock to this machine's time (IPMI Set SEL Time, in UTC)."""
    _ipmitool(address, port, username, password, "sel", "time", "set", "now")


# -- Redfish: the per-node store the lab's Redfish app serves -----------------------------


def store_path(lab: Path, node: str) -> Path:
    return Path(lab) / "bmc" / node / "sel.json"


@contextmanager
def _locked(lab: Path, node: str) -> Iterator[None]:
    path = store_path(lab, node)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name("sel.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def read_store(lab: Path, node: str) -> dict[str, Any]:
    """{"next_id": N, "entries": [...]}: empty when nothing was logged yet."""
    try:
        document = json.loads(store_path(lab, node).read_text())
    except FileNotFoundError:
        return {"next_id": 1, "entries": []}
    except ValueError as exc:
        raise SelError(f"{store_path(lab, node)}: not JSON ({exc})") from None
    return document


def _write_store(lab: Path, node: str, document: dict[str, Any]) -> None:
    path = store_path(lab, node)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(tmp, path)


def redfish_entry(kind: str, entry_id: int, created: datetime) -> dict[str, Any]:
    """The LogEntry fields the store keeps for one event (the app adds @odata.id)."""
    entry = event(kind)
    stamp = created.astimezone(UTC).isoformat(timespec="seconds")
    return {
        "Id": str(entry_id),
        "Name": "System Event Log Entry",
        "EntryType": "SEL",
        "Created": stamp,
        "EventTimestamp": stamp,
        "Severity": entry.severity,
        "Message": entry.message,
        "MessageId": f"{REGISTRY}.{entry.message_id}",
        "MessageArgs": [],
        "SensorType": entry.redfish_sensor_type,
        "SensorNumber": entry.sensor_number,
        "EntryCode": "Assert",
        "GeneratorId": f"0x{entry.generator:04X}",
        "Oem": {"KilnLab": {"Kind": kind,
                            "RecordData": record(entry, entry_id, int(created.timestamp())).hex()}},
    }


def add_redfish(lab: Path, node: str, kind: str, now: datetime | None = None) -> dict[str, Any]:
    """Append the event to the node's Redfish SEL store; the entry written."""
    event(kind)  # unknown kind: SelError before anything is written
    with _locked(lab, node):
        document = read_store(lab, node)
        entry = redfish_entry(kind, int(document.get("next_id", 1)), now or datetime.now(UTC))
        entries = [*document.get("entries", []), entry][-MAX_ENTRIES:]
        _write_store(lab, node, {"next_id": int(entry["Id"]) + 1, "entries": entries})
    return entry


def clear_redfish(lab: Path, node: str) -> int:
    """Empty the node's Redfish SEL (LogService.ClearLog); how many entries went. Record IDs
    go on from where they were, as a BMC's do."""
    with _locked(lab, node):
        document = read_store(lab, node)
        removed = len(document.get("entries", []))
        _write_store(lab, node, {"next_id": document.get("next_id", 1), "entries": []})
    return removed

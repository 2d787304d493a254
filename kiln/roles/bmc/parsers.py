"""Parsers of ipmitool's output (1.8.19, as Debian bookworm ships it), and of its failures.

Each parser takes the text ipmitool printed on stdout and returns plain data; text that is
not what ipmitool prints raises ParseError naming the line. The formats, as captured from
ipmitool talking RMCP+ to OpenIPMI's ipmi_sim (tests/unit/roles/bmc/test_bmc_role_ipmi.py holds the
captures):

    Chassis Power is on
    Set Boot Device to pxe
       5 | 04/05/25 | 10:01:19 UTC | Temperature #0x30 | Upper Critical going high | Asserted
       1 |  Pre-Init  |0000003494| Power Supply #0x41 | Failure detected | Asserted

SEL record ids are hexadecimal (`   a | ...` is record 10). The date is `%x` in the C locale
(two-digit year) in 1.8.19, `%m/%d/%Y` in older releases; both are read. kiln runs ipmitool
with TZ=UTC, so times are UTC.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from kiln.core.parsing import ParseError

_POWER = re.compile(r"^Chassis Power is (on|off)\s*$", re.MULTILINE)
_SEL_DATED = re.compile(
    r"^\s*(?P<id>[0-9a-fA-F]+)\s*\|\s*(?P<date>\d{2}/\d{2}/\d{2,4})\s*\|\s*"
    r"(?P<time>\d{2}:\d{2}:\d{2})(?:\s+(?P<tz>[A-Za-z]+))?\s*\|(?P<rest>.*)$"
)
_SEL_PREINIT = re.compile(
    r"^\s*(?P<id>[0-9a-fA-F]+)\s*\|\s*Pre-Init\s*\|\s*(?P<stamp>\d+)\s*\|(?P<rest>.*)$"
)
_SEL_NO_TIME = re.compile(r"^\s*(?P<id>[0-9a-fA-F]+)\s*\|(?P<rest>.*)$")
# Lines ipmitool prints between records while it reads the SDR repository for names.
_SEL_NOISE = ("SDRR successfully erased", "Err in cmd get sensor sdr info", "SEL has no entries",
              "SEL Information")


def parse_power_status(text: str) -> str:
    """`chassis power status` → "on" | "off"."""
    found = _POWER.findall(text)
    if len(found) != 1:
        first = text.strip().splitlines()[0] if text.strip() else "(no output)"
        raise ParseError(f"not ipmitool's 'Chassis Power is on|off' line: {first!r}")
    return found[0]


def parse_key_values(text: str) -> dict[str, str]:
    """`mc info` and similar `Name   : value` listings (continuation lines dropped)."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or ":" not in line or line.startswith((" ", "\t")):
            continue
        key, _, value = line.partition(":")
        if not key.strip():
            raise ParseError(f"line {number}: no name before ':': {line!r}")
        values[key.strip()] = value.strip()
    return values


_BOOT_DEVICES = {
    "No override": None,
    "Force PXE": "pxe",
    "Force Boot from default Hard-Drive": "disk",
    "Force Boot from default Hard-Drive, request Safe-Mode": "disk",
    "Force Boot from CD/DVD": "cd",
    "Force Boot into BIOS Setup": "bios",
    "Force Boot from Floppy/primary removable media": "floppy",
    "Force Boot from Diagnostic Partition": "diag",
    "Force Boot from Remote CD/DVD": "remote-cd",
    "Force Boot from primary remote media": "remote-media",
    "Force Boot from remote Hard-Drive": "remote-disk",
}


def parse_boot_flags(text: str) -> dict[str, Any]:
    """`chassis bootparam get 5` → {valid, persistent, efi, device}.

    `device` is None for "No override"; `valid` False means the BMC holds no override for
    the next boot, whatever the selector still says (a BMC clears the valid bit once the
    boot has used it).
    """
    flags: dict[str, Any] = {}
    for line in text.splitlines():
        item = line.strip().removeprefix("- ").strip()
        if item == "Boot Flag Valid":
            flags["valid"] = True
        elif item == "Boot Flag Invalid":
            flags["valid"] = False
        elif item == "Options apply to all future boots":
            flags["persistent"] = True
        elif item == "Options apply to only next boot":
            flags["persistent"] = False
        elif item.startswith("BIOS EFI boot"):
            flags["efi"] = True
        elif item.startswith("BIOS PC Compatible (legacy) boot"):
            flags["efi"] = False
        elif item.startswith("Boot Device Selector"):
            selector = item.partition(":")[2].strip()
            flags["device"] = _BOOT_DEVICES.get(selector, selector.lower() or None)
    missing = [key for key in ("valid", "device") if key not in flags]
    if missing:
        raise ParseError(f"not ipmitool's boot flags (parameter 5): no {', '.join(missing)} "
                         "line")
    flags.setdefault("persistent", False)
    flags.setdefault("efi", None)
    return flags


def _created(date: str, clock: str, tz: str | None) -> str:
    fmt = "%m/%d/%y" if len(date) == 8 else "%m/%d/%Y"
    stamp = datetime.strptime(f"{date} {clock}", f"{fmt} %H:%M:%S")
    if tz in (None, "UTC", "GMT"):
        return stamp.replace(tzinfo=UTC).isoformat()
    return stamp.isoformat()  # another zone's local time: no offset known


def sel_severity(event: str, direction: str) -> str:
    """IPMI events carry no severity; this follows the event's own wording (threshold
    offsets name theirs: non-critical, critical, non-recoverable)."""
    text = event.lower()
    if direction.lower() == "deasserted":
        return "OK"
    if "non-critical" in text or "predictive" in text or re.search(r"\bcorrectable", text):
        return "Warning"
    if any(word in text for word in ("critical", "non-recoverable", "uncorrectable",
                                     "failure", "ierr", "fault", "lost", "error", "fatal",
                                     "corrupt")):
        return "Critical"
    # Critical Interrupt's PCI PERR / PCI SERR (parity and system errors on the bus).
    if re.search(r"\b[ps]err\b", text):
        return "Critical"
    return "OK"


def parse_sel_list(text: str) -> list[dict[str, Any]]:
    """`sel elist` / `sel list` → one dict per record: id (decimal text), created, sensor,
    event, direction, severity, message (the record's fields, as one line)."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.strip().startswith(_SEL_NOISE):
            continue
        created = None
        match = _SEL_DATED.match(line)
        if match:
            try:
                created = _created(match["date"], match["time"], match["tz"])
            except ValueError:
                raise ParseError(f"line {number}: bad SEL date/time: {line!r}") from None
        else:
            match = _SEL_PREINIT.match(line) or _SEL_NO_TIME.match(line)
        if not match:
            raise ParseError(f"line {number}: not an ipmitool SEL record: {line!r}")
        fields = [field.strip() for field in match["rest"].split("|")]
        if len(fields) < 3:
            raise ParseError(f"line {number}: an SEL record has sensor | event | direction: "
                             f"{line!r}")
        sensor, event, direction, *extra = fields
        message = f"{sensor}: {event} ({direction})" + "".join(f"; {x}" for x in extra if x)
        entries.append({
            "id": str(int(match["id"], 16)),
            "created": created,
            "sensor": sensor,
            "event": event,
            "direction": direction,
            "severity": sel_severity(event, direction),
            "message": message,
        })
    return entries


# -- failures ------------------------------------------------------------------------------

# What ipmitool -v prints when the BMC refuses the login (RMCP+ RAKP, or IPMI 1.5 sessions).
_REJECTED = (
    "RAKP 2 HMAC is invalid",  # wrong password
    "unauthorized name",  # RAKP 2 status: unknown user name
    "invalid name",
    "Activate Session error: Invalid user name",
    "Password invalid",
    "invalid integrity check value",
    "unauthorized role or privilege",
)
_NO_ANSWER = (
    "Get Auth Capabilities error",
    "Error issuing Get Channel Authentication Capabilities request",
    "No response from remote controller",
    "Insufficient resources for session",
    "insufficient resources for session",
    "Unable to establish IPMI v2 / RMCP+ session",
    "Unable to establish LAN session",
)
_CIPHER = ("invalid authentication algorithm", "invalid integrity algorithm",
           "invalid confidentiality algorithm", "Unsupported cipher suite")


def classify_failure(stderr: str) -> str:
    """What a failed ipmitool run means: "auth" (credentials refused), "cipher" (the cipher
    suite is not offered), "unreachable" (no session: retry may help) or "command" (the
    session worked, the command failed)."""
    if any(marker in stderr for marker in _REJECTED):
        return "auth"
    if any(marker in stderr for marker in _CIPHER):
        return "cipher"
    if any(marker in stderr for marker in _NO_ANSWER):
        return "unreachable"
    return "command"


def failure_lines(stderr: str) -> str:
    """ipmitool's own error lines, without its progress chatter (-v)."""
    chatter = ("Loading IANA PEN Registry", "Running Get", "Local RqAddr", "Discovered IPMB",
               "Acquire IPMB", "Interface address", "Iana:", "IPM Controller is not HPM",
               "Invalid completion code received: Invalid command", "Unable to Get Channel "
               "Cipher Suites", ">>", "<<")
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    kept = [line for line in lines if not line.startswith(chatter)]
    return "; ".join(kept[-4:]) or "(ipmitool printed no error)"

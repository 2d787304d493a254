"""The boot-log check: every kernel line is known, or it is reported.

A node's kernel log (dmesg) is judged line by line:

1. Always-critical rules (data/bootlog-critical.yaml) run on every line first: PCIe links
   trained below their capability, uncorrectable memory errors, a GPU fallen off the bus,
   an IB link flapping, machine checks, nvidia-peermem errors. A hit is CRITICAL whatever
   any allowlist says.
2. Lines the caller judges elsewhere are skipped (by default the NVIDIA Xid/SXid reports,
   which the Xid check classifies).
3. Every other line is normalised (`normalise`: volatile tokens such as addresses, PCI
   addresses, PIDs, UUIDs become named placeholders) and must be in the reviewed allowlist:
   the shipped one (data/bootlog-allowlist.txt) and the site's own (by default
   inventory/bootlog-allowlist.txt, grown with `kiln dmesg learn NODE`). The lines that are
   not are one WARN listing them.

The allowlist refuses catch-all entries when it is loaded (`load_allowlist`): a public
allowlist that starts with a bare `\\d+` accepts every line beginning with a digit, another
that accepts any line containing "EDAC MC" hides uncorrectable host-memory errors.

Pure functions: nothing here runs a command; the only files read or written are allowlists
and the critical rules.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from re import _constants as _sre_constants  # Python's regex parser: what a regex entry
from re import _parser as _sre_parser  # must match (its literal parts, its repeats)
from typing import Any

import yaml

from kiln.core.checks import Action, CheckResult, Remediation, Status, Subject
from kiln.core.errors import ValidationFailed

BOOT_LOG = CHECK = "boot-log"
DATA_DIR = Path(__file__).resolve().parent / "data"
SHIPPED_ALLOWLIST = DATA_DIR / "bootlog-allowlist.txt"
CRITICAL_RULES = DATA_DIR / "bootlog-critical.yaml"
# The site's own allowlist, relative to where kiln runs (beside inventory/prod.py).
DEFAULT_SITE_ALLOWLIST = Path("inventory") / "bootlog-allowlist.txt"

# ---------------------------------------------------------------------------------------
# Normalising a line
# ---------------------------------------------------------------------------------------

# Prefixes a kernel-log line may carry before the message; each is stripped (in this order,
# each at most once): `dmesg --decode`'s "kern  :info  : ", then one timestamp: dmesg's
# "[  12.345678] ", `dmesg -T`'s "[Sun Feb 23 16:24:18 2025] ", `--time-format iso`'s
# "2025-01-17T15:36:15,345059+00:00 ", /dev/kmsg's "6,3973,227996636,-;", syslog's
# "Aug 17 06:18:01 host " (then "kernel: " and a "[  12.345678] " after it).
_DECODED = re.compile(
    r"^(?:kern|user|mail|daemon|auth|syslog|lpr|news|uucp|cron|authpriv|ftp|local[0-7])"
    r"\s*:\s*(?:emerg|alert|crit|err|warn|notice|info|debug)\s*: ?")
_STAMPS = (
    re.compile(r"^\[\s*\d+\.\d+\] ?"),
    re.compile(r"^\[[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]?\d \d\d:\d\d:\d\d \d{4}\] ?"),
    re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[,.]\d+)?(?:Z|[+-]\d\d:?\d\d)? ?"),
    re.compile(r"^\d+,\d+,\d+,[^;]*;"),
    re.compile(r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ (?:kernel: (?:\[\s*\d+\.\d+\] ?)?)?"),
)


def strip_prefix(line: str) -> str:
    """The message of a kernel-log line: its decode and timestamp prefixes removed."""
    line = line.rstrip("\r\n")
    decoded = _DECODED.match(line)
    if decoded:
        line = line[decoded.end():]
    for stamp in _STAMPS:
        match = stamp.match(line)
        if match:
            return line[match.end():]
    return line


_HEX = "[0-9a-fA-F]"

# Device-name families whose numbers count instances (the 3rd SAS controller, the 6th IB
# netdev): the family is kept, each number after it becomes <n> ("mpt3sas_cm3" ->
# "mpt3sas_cm<n>", "ibp26s0" -> "ibp<n>s<n>"). A name is matched whole, so "mlx5_core",
# "x86_64" and PCIe widths ("x8", "x16") are never device names.
_FAMILIES = (
    "mpt3sas_cm", "mpt3sas", "mlx5_", "nvidia-nvswitch", "nvidia-caps-imex-channels", "nvidia",
    "ibp", "ib", "eth", "enp", "ens", "eno", "enx", "bond", "vlan",
    "nvme", "sd", "md", "dm-", "loop", "nbd", "ata", "host", "scsi_host", "target",
    "end_device-", "port-", "ttyS", "tty", "i2c-", "usb", "card", "hwmon", "input", "event",
    "mouse", "sg", "bsg", "rtc", "fb", "ptp", "pps", "uio", "vfio", "idxd", "dsa", "iax", "wq",
    "cpu", "CPU", "node", "irq", "MC", "switchtec", "tunl", "cni", "docker", "flannel.",
)
_INSTANCE = re.compile(
    r"(?<![\w.-])(" + "|".join(re.escape(f) for f in sorted(_FAMILIES, key=len, reverse=True))
    + r")(\d+(?:[a-z:.-]+\d+)*(?:[a-z]+\d+)*)(?![\w-])")
# Kubernetes' interface names end in random hex: the family is kept, the rest is not.
_RANDOM_IFNAME = re.compile(r"(?<![\w-])(veth|cali|vxlan\.|br-)[0-9a-f]{6,}\b")


def _instance(match: re.Match[str]) -> str:
    return match.group(1) + re.sub(r"\d+", "<n>", match.group(2))


def _ipv4(match: re.Match[str]) -> str:
    try:
        ipaddress.IPv4Address(match.group(1))
    except ValueError:
        return match.group(0)
    return "<ipv4>"


# The token table, applied in this order; each row: placeholder, pattern, replacement.
# Order matters where shapes overlap: a timestamp before an address, a UUID before a MAC or
# a hex number, a MAC before an IPv6 address, a PCI address before a bus number.
_TOKENS: tuple[tuple[str, re.Pattern[str], Any], ...] = (
    # A hostname systemd sets ("Hostname set to <g021.cluster.local>.").
    ("<hostname>", re.compile(r"\b(Hostname set to )<[^>\s]+>"), r"\1<hostname>"),
    # Timestamps inside the message: an RTC set at boot, an audit record's time and serial.
    ("<time>", re.compile(r"\b\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?"
                          r"(?:Z|[+-]\d\d:?\d\d| UTC)?(?: \(\d+\))?"), "<time>"),
    ("<time>", re.compile(r"\baudit\(\d+\.\d+:\d+\)"), "audit(<time>)"),
    # UUIDs: a GPU's ("GPU-<uuid>"), a boot id, a partition's.
    ("<uuid>", re.compile(rf"\b{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}\b"),
     "<uuid>"),
    # MACs and IPoIB hardware addresses: 6 to 20 colon-separated octets.
    ("<mac>", re.compile(rf"(?<!{_HEX})(?<!{_HEX}:){_HEX}{{2}}(?::{_HEX}{{2}}){{5,19}}"
                         r"(?![\w:])"), "<mac>"),
    # GUIDs: four groups of four hex digits (the IB stack's way); a 0x-prefixed 64-bit EUI
    # built as ConnectX GUIDs (OUI + 0300 + 3 bytes) and MAC-derived EUI-64s (OUI + fffe +
    # 3 bytes) are (0x prefix required: a hashed kernel pointer is 16 bare hex digits and
    # must not turn into a GUID by chance); any 16 hex digits after the word GUID.
    ("<guid>", re.compile(rf"(?<![\w:]){_HEX}{{4}}(?::{_HEX}{{4}}){{3}}(?![\w:])"), "<guid>"),
    ("<guid>", re.compile(rf"\b0x{_HEX}{{6}}(?:0300|fffe|FFFE){_HEX}{{6}}\b"), "<guid>"),
    ("<guid>", re.compile(rf"(?i)\b(guid[\s:=]*)(?:0x)?{_HEX}{{16}}\b"), r"\1<guid>"),
    # IPv6: eight groups, or compressed with "::"; IPv4: a valid address (not a version:
    # nothing word-like, "." or "-" right before it, and not after the word "version").
    ("<ipv6>", re.compile(rf"(?<![\w:]){_HEX}{{1,4}}(?::{_HEX}{{1,4}}){{7}}(?:/\d{{1,3}})?"
                          r"(?![\w:])"), "<ipv6>"),
    ("<ipv6>", re.compile(rf"(?<![\w:])(?:{_HEX}{{1,4}}:){{1,7}}:(?:{_HEX}{{1,4}}"
                          rf"(?::{_HEX}{{1,4}}){{0,6}})?(?:/\d{{1,3}})?(?![\w:])"), "<ipv6>"),
    ("<ipv4>", re.compile(r"(?<![\w.-])(?<!version )((?:\d{1,3}\.){3}\d{1,3})(?:/\d{1,2})?"
                          r"(?![\w.-])"), _ipv4),
    # PCI addresses: domain:bus:device.function (NVRM prints it without the function),
    # bus:device.function; a domain:bus ("pci_bus 0000:80"); a bus range ("[bus 80-96]");
    # vendor:device ids ("[8086:09a2]"). Where a card sits is not what a line says about it.
    ("<pci>", re.compile(rf"\b{_HEX}{{4}}:{_HEX}{{2}}:{_HEX}{{2}}(?:\.[0-7])?\b"), "<pci>"),
    ("<pci>", re.compile(rf"(?<![\w:]){_HEX}{{2}}:{_HEX}{{2}}\.[0-7]\b"), "<pci>"),
    ("<pcibus>", re.compile(rf"\b{_HEX}{{4}}:{_HEX}{{2}}\b(?!:{_HEX})"), "<pcibus>"),
    ("<bus>", re.compile(rf"\[bus {_HEX}{{2}}(?:-{_HEX}{{2}})?\]"), "[bus <bus>]"),
    ("<pciid>", re.compile(rf"\[{_HEX}{{4}}:{_HEX}{{4}}\]"), "[<pciid>]"),
    # Serial numbers: after "Serial Number", "SerialNumber", "serial no", "S/N".
    ("<serial>", re.compile(r"(?i)\b(serial ?(?:number|no\.?)|s/n)(?![a-z])(\s*[:=]?\s*)[\w-]+"),
     r"\1\2<serial>"),
    # Addresses and sizes in hex: any 0x range ("[io 0x4000-0x4fff]", "[mem 0x...-0x...]"),
    # a size in a resource ("[mem size 0x00100000]", "add_size 1000"), and any 0x number of
    # 8 digits or more (addresses, pointers). Shorter 0x numbers stay: register offsets,
    # device and class ids, error codes and sub-codes carry meaning.
    ("<hex>", re.compile(rf"\b0x{_HEX}+-0x{_HEX}+\b"), "<hex>-<hex>"),
    ("<hex>", re.compile(rf"\b(size|add_size|add_align) (?:0x)?{_HEX}+\b"), r"\1 <hex>"),
    ("<hex>", re.compile(rf"\b0x{_HEX}{{8,}}\b"), "<hex>"),
    # Bare hex strings of 12 digits or more: object addresses, ids ("(00000000780feec6)").
    ("<hex>", re.compile(rf"\b(?=[0-9a-fA-F]*\d){_HEX}{{12,}}\b"), "<hex>"),
    # Process ids: "pid=123", "pid 123", "PID: 123", "(pid 1304)", "systemd[1]:".
    ("<pid>", re.compile(r"\b(pid[=:]? ?|PID: )\d+\b"), r"\1<pid>"),
    ("<pid>", re.compile(r"(?<=[\w)])\[\d+\](?=:)"), "[<pid>]"),
    # SCSI addresses host:channel:target:lun, where a device is named ("scsi 13:0:0:0:").
    ("<hctl>", re.compile(r"(?<![\w:])\d+:\d+:\d+:\d+(?=:)"), "<hctl>"),
    # Numbers that only say which one: an IRQ, a hot-plug slot, a resource's index, a NUMA
    # node or ACPI domain, a DRM minor, a char device's major, a USB device number, an ACPI
    # device instance ("PNP0A08:29"), an ACPI root bridge's name, HMAT's initiator/target pair.
    ("<n>", re.compile(r"\b(IRQ|irq|Slot #|resource|NUMA node|node|Domain:|minor|major=|"
                       r"major device number|device number|bus number|EISA slot)( ?)\d+\b"),
     r"\1\2<n>"),
    ("<n>", re.compile(r"\b((?:PNP|ACPI|INT|IPI|LNX)[0-9A-Z]{4}|device):[0-9a-f]{2,3}\b"),
     r"\1:<n>"),
    ("<n>", re.compile(r"\b(Root Bridge )\[\w+\]"), r"\1[<n>]"),
    ("<n>", re.compile(r"\[\d+-\d+\]"), "[<n>-<n>]"),
    ("<n>", re.compile(r"(?<![A-Za-z])(Socket|IMC|Chan|DIMM|SrcID|MC)#\d+"), r"\1#<n>"),
    # Counts of what the kernel rate-limited: the line says it, not how many.
    ("<n>", re.compile(r"\b\d+ (callbacks suppressed)"), r"<n> \1"),
    # Sizes with a unit ("189676K", "3072k", "2 kB", "(64MB)", "2097152 bytes") and short
    # durations (ns, us, ms): measured or derived from the memory size, never a link's speed
    # (Gb/s, GT/s, Mbps and MB/s are not sizes and stay).
    ("<size>", re.compile(r"(?<![\w.])\d+(?:\.\d+)? ?(?:[KMGT]i?B|kB|[kKMGT]|bytes)(?!\w|/s\b)"),
     "<size>"),
    ("<n>", re.compile(r"(?<![\w.])\d+(?:\.\d+)? ?(ns|nsec|nsecs|us|usec|usecs|ms|msec|msecs)\b"),
     r"<n> \1"),
    # Interface names with a random suffix, then instance numbers of device names.
    ("<id>", _RANDOM_IFNAME, r"\1<id>"),
    ("<n>", _INSTANCE, _instance),
)


def normalise(message: str) -> str:
    """The line with its prefix stripped, runs of white space made one space, and every
    volatile token replaced by its named placeholder (the table above, in order).

    What is NOT normalised, on purpose: PCIe link widths and speeds ("x8", "x16",
    "32.0 GT/s", "Gb/s"), Xid/SXid codes, versions, short hex codes (register offsets,
    device ids, error codes), counts of errors. A number that carries meaning stays, so an
    allowlist entry accepts only the line a person reviewed.
    """
    text = " ".join(strip_prefix(message).split())
    for _name, pattern, replacement in _TOKENS:
        text = pattern.sub(replacement, text)
    return text


_PLACEHOLDER = re.compile(r"<(?:time|uuid|mac|guid|ipv6|ipv4|pci|pcibus|bus|pciid|hex|pid|"
                          r"serial|hctl|n|size|id|hostname)>")


def _has_words(entry: str) -> bool:
    """Whether an entry says something besides its placeholders: a letter or a digit."""
    return any(ch.isalnum() for ch in _PLACEHOLDER.sub("", entry))


# ---------------------------------------------------------------------------------------
# The allowlist: reviewed entries, catch-alls refused
# ---------------------------------------------------------------------------------------

REGEX = "re:"
# A regex entry must spell out at least this many literal characters (counted over what it
# must match: an optional part counts nothing, alternatives count their shortest). 20 is
# more than the name of whoever speaks in nearly every line ("mlx5_core <pci>: " is 17,
# "EDAC MC<n>: " 12, "NVRM: " 6), so a regex must also spell out words of the message;
# the public catch-alls have 0 ("^\d+.*$") to 7 (".*EDAC MC.*"). The shortest message a
# shipped regex names has 20 ("PM: Magic number: " and the colons of its hash). The probe
# lines and the rule that a regex varies tokens, not phrases, do the rest.
MIN_LITERAL = 20
# Lines no allowlist entry may accept: what the public catch-alls hid (a line starting with
# digits, "EDAC MC" with an uncorrectable error), what the critical rules exist for, and
# text that is no kernel message at all. Normalised before a regex entry is tried on them.
PROBES = (
    "EDAC MC0: 1 UE memory read error on CPU_SrcID#0_MC#0_Chan#0_DIMM#0",
    "EDAC MC0: 1 UE memory read error on CPU_SrcID#0_MC#0_Chan#0_DIMM#0 (channel:0 slot:0 "
    "page:0x4a5b1 offset:0x0 grain:32 syndrome:0x0 - err_code:0x0000:0x0090)",
    "EDAC MC1: 42 CE memory read error on CPU_SrcID#1_MC#1_Chan#0_DIMM#0",
    "NVRM: Xid (PCI:0000:0f:00): 94, pid=2503421, name=python3, Ch 00000008",
    "NVRM: Xid (PCI:0000:3b:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the "
    "bus.",
    "NVRM: GPU 0000:3b:00.0: GPU has fallen off the bus.",
    "nvidia-nvswitch2: SXid (PCI:0000:85:00.0): 12028, Non-fatal, Link 61 egress non-posted "
    "PRIV error (First)",
    "mlx5_core 0000:9c:00.0: 252.056 Gb/s available PCIe bandwidth, limited by 32.0 GT/s PCIe "
    "x8 link at 0000:97:01.0 (capable of 504.112 Gb/s with 32.0 GT/s PCIe x16 link)",
    "pci 0000:02:00.0: 4.000 Gb/s available PCIe bandwidth, limited by 5.0 GT/s PCIe x1 link "
    "at 0000:00:0c.0 (capable of 8.000 Gb/s with 5.0 GT/s PCIe x2 link)",
    "mlx5_core 0000:1a:00.0: Port module event: module 0, Cable unplugged",
    "systemd-networkd[5398]: ib6: lost carrier",
    "nvidia-peermem nv_get_p2p_free_callback:127 ERROR detected invalid context, skipping "
    "further processing",
    "mce: [Hardware Error]: Machine check events logged",
    "mce: [Hardware Error]: CPU 12: Machine Check: 0 Bank 5: be00000000800400",
    "pcieport 0000:00:01.0: AER: Uncorrected (Non-Fatal) error received: 0000:01:00.0",
    "pcieport 0000:00:01.0: AER: Corrected error received: 0000:01:00.0",
    "BUG: unable to handle page fault for address: ffffc90000a1b000",
    "WARNING: CPU: 12 PID: 3456 at drivers/pci/pcie/aer.c:1080 aer_isr+0x1a/0x2c0",
    "Kernel panic - not syncing: Fatal hardware error!",
    "Out of memory: Killed process 4172 (python3) total-vm:123456kB",
    "1234 anything",
    "12 bytes of nothing in particular",
    "the quick brown fox jumps over the lazy dog",
)


@dataclass(frozen=True)
class Allowlist:
    """The reviewed lines a healthy node's kernel log may hold (normalised)."""

    lines: frozenset[str] = frozenset()
    patterns: tuple[tuple[re.Pattern[str], str], ...] = ()  # (regex, "file:line")
    sources: tuple[str, ...] = ()

    def accepts(self, normalised: str) -> bool:
        return normalised in self.lines or any(p.fullmatch(normalised) for p, _ in self.patterns)


_REPEATS = {"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"}
_CATEGORIES: dict[str, Callable[[str], bool]] = {
    "CATEGORY_DIGIT": str.isdigit, "CATEGORY_NOT_DIGIT": lambda c: not c.isdigit(),
    "CATEGORY_SPACE": str.isspace, "CATEGORY_NOT_SPACE": lambda c: not c.isspace(),
    "CATEGORY_WORD": lambda c: c.isalnum() or c == "_",
    "CATEGORY_NOT_WORD": lambda c: not (c.isalnum() or c == "_"),
}
_NOT_SPACE = "aZ0_:.-<>(),/=[]'\""


def _op(op: Any) -> str:
    return getattr(op, "name", str(op))


def _set_matches(items: Sequence[tuple[Any, Any]], ch: str) -> bool:
    negate, hit = False, False
    for op, av in items:
        name = _op(op)
        if name == "NEGATE":
            negate = True
        elif name == "LITERAL":
            hit = hit or ch == chr(av)
        elif name == "RANGE":
            hit = hit or av[0] <= ord(ch) <= av[1]
        elif name == "CATEGORY":
            hit = hit or _CATEGORIES.get(_op(av), lambda c: True)(ch)
        else:
            hit = True  # what this reader does not know, it assumes may match
    return hit != negate


def _can_match(items: Iterable[tuple[Any, Any]], ch: str) -> bool:
    """Whether any character-consuming part of `items` can match `ch`."""
    for op, av in items:
        name = _op(op)
        if name == "LITERAL" and ch == chr(av) or name == "NOT_LITERAL" and ch != chr(av):
            return True
        if name == "ANY" or name == "IN" and _set_matches(av, ch):
            return True
        if name == "CATEGORY" and _CATEGORIES.get(_op(av), lambda c: True)(ch):
            return True
        if name == "SUBPATTERN" and _can_match(av[-1], ch):
            return True
        if name in _REPEATS and _can_match(av[2], ch):
            return True
        if name == "BRANCH" and any(_can_match(b, ch) for b in av[1]):
            return True
        if name == "ATOMIC_GROUP" and _can_match(av, ch):
            return True
    return False


def _spans_words(items: Iterable[tuple[Any, Any]]) -> bool:
    """Whether an unbounded repeat can match both white space and something else: `.*`,
    `.+`, `[^,]+`, `[\\w ]+`, `(?:\\w+ )+` can swallow a phrase; `\\d+`, `\\S+`, `\\s+` cannot."""
    for op, av in items:
        name = _op(op)
        if name in _REPEATS:
            body = av[2]
            if av[1] == _sre_constants.MAXREPEAT and _can_match(body, " ") and any(
                    _can_match(body, ch) for ch in _NOT_SPACE):
                return True
            if _spans_words(body):
                return True
        elif name == "SUBPATTERN" and _spans_words(av[-1]):
            return True
        elif name == "BRANCH" and any(_spans_words(b) for b in av[1]):
            return True
        elif name == "ATOMIC_GROUP" and _spans_words(av):
            return True
    return False


def _literal_count(items: Iterable[tuple[Any, Any]]) -> int:
    """The literal characters every match must contain (see MIN_LITERAL)."""
    total = 0
    for op, av in items:
        name = _op(op)
        if name == "LITERAL":
            total += 1
        elif name == "SUBPATTERN":
            total += _literal_count(av[-1])
        elif name in _REPEATS:
            total += _literal_count(av[2]) if av[0] >= 1 else 0
        elif name == "BRANCH":
            total += min(_literal_count(b) for b in av[1])
        elif name == "ATOMIC_GROUP":
            total += _literal_count(av)
    return total


def check_entry(text: str, where: str) -> tuple[str | re.Pattern[str] | None, str | None]:
    """One allowlist entry read: (the normalised line or the compiled regex, None), or
    (None, the problem, naming `where`) for an entry that would be a catch-all."""
    if text.startswith(REGEX):
        source = text[len(REGEX):].strip()
        try:
            pattern = re.compile(source)
        except re.error as exc:
            return None, f"{where}: not a valid regular expression: {exc}"
        if not (source.startswith("^") and source.endswith("$") and not source.endswith("\\$")):
            return None, (f"{where}: a re: entry must be anchored at both ends (^...$), so it "
                          f"accepts whole lines, not any line that contains it: {source}")
        parsed = list(_sre_parser.parse(source))
        if _spans_words(parsed):
            return None, (f"{where}: a re: entry may vary a token, not a phrase: it repeats "
                          f"something that matches white space and more (.*, .+, [^x]+, "
                          f"[\\w ]+); say what varies (\\d+, [\\w.-]+, (?:a|b)): {source}")
        literal = _literal_count(parsed)
        if literal < MIN_LITERAL:
            return None, (f"{where}: a re: entry must spell out at least {MIN_LITERAL} literal "
                          f"characters of the message (this one: {literal}): {source}")
        for probe in PROBES:
            if pattern.fullmatch(normalise(probe)):
                return None, (f"{where}: this re: entry accepts a line that must never be "
                              f"accepted ({probe!r}): {source}")
        return pattern, None
    line = normalise(text)
    if not _has_words(line):
        return None, (f"{where}: an entry of placeholders and punctuation only accepts lines "
                      f"that have nothing in common; write the words of the line: {text}")
    return line, None


def parse_allowlist(text: str, source: str) -> tuple[list[str], list[tuple[re.Pattern[str], str]],
                                                     list[str]]:
    """The plain entries, the regex entries and the problems of one allowlist file."""
    lines: list[str] = []
    patterns: list[tuple[re.Pattern[str], str]] = []
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        where = f"{source}:{number}"
        value, problem = check_entry(entry, where)
        if problem:
            problems.append(problem)
        elif isinstance(value, str):
            lines.append(value)
        elif value is not None:
            patterns.append((value, where))
    return lines, patterns, problems


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValidationFailed([f"{path}: cannot read: {exc.strerror}"]) from None


def load_allowlist(site: Path | str | None = None,
                   shipped: Path | str = SHIPPED_ALLOWLIST) -> Allowlist:
    """kiln's shipped allowlist and the site's (`site`; a file that does not exist adds
    nothing). Every catch-all entry is refused: ValidationFailed names each by file and line."""
    lines: set[str] = set()
    patterns: list[tuple[re.Pattern[str], str]] = []
    problems: list[str] = []
    sources: list[str] = []
    for path, required in ((Path(shipped), True), (Path(site) if site else None, False)):
        if path is None:
            continue
        text = _read(path)
        if text is None:
            if required:
                problems.append(f"{path}: no such file (kiln's shipped boot-log allowlist)")
            continue
        found, regexes, bad = parse_allowlist(text, str(path))
        lines.update(found)
        patterns += regexes
        problems += bad
        sources.append(str(path))
    if problems:
        raise ValidationFailed(problems)
    return Allowlist(frozenset(lines), tuple(patterns), tuple(sources))


# ---------------------------------------------------------------------------------------
# Always-critical rules
# ---------------------------------------------------------------------------------------

_PCI_IN_LINE = re.compile(r"\b([0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2})(\.[0-7])?\b")
# What a PCI address names, by the driver that printed the line.
_PART_BY_DRIVER = (("mlx5_core", "HCA"), ("mlx5_ib", "HCA"), ("NVRM", "GPU"),
                   ("nvidia-nvswitch", "NVSwitch"), ("nvidia", "GPU"), ("nvme", "NVMe drive"))


@dataclass(frozen=True)
class CriticalRule:
    """A kind of line that is CRITICAL whatever an allowlist says."""

    name: str
    title: str  # what is wrong, in a few words
    patterns: tuple[re.Pattern[str], ...]  # searched in the message (prefix stripped)
    why: str
    action: Action
    technician: str  # what to do; {part} and {node} are filled in
    min_count: int = 1  # hits on one part before it fires (a flapping link: several)
    part: re.Pattern[str] | None = None  # names the part: its group "part" (else a PCI address)
    part_kind: str | None = None  # "DIMM", "IB port" … (else by the driver that printed it)
    examples: tuple[str, ...] = ()

    def hit(self, message: str) -> tuple[bool, str | None, str | None]:
        """(whether the line is one of this rule's, the part's name, the part's kind)."""
        if not any(p.search(message) for p in self.patterns):
            return False, None, None
        found = self.part.search(message) if self.part is not None else None
        name = found.group("part") if found else None
        if name is None:
            pci = _PCI_IN_LINE.search(message)
            name = pci.group(1).lower() + (pci.group(2) or ".0") if pci else None
        if name is None:
            return True, None, None
        kind = self.part_kind
        if kind is None and _PCI_IN_LINE.fullmatch(name):
            kind = next((k for driver, k in _PART_BY_DRIVER if message.startswith(driver)),
                        "PCIe device")
        return True, name, kind


_RULE_KEYS = {"name", "title", "patterns", "why", "action", "technician", "min_count", "part",
              "part_kind", "examples"}


def load_critical_rules(path: Path | str = CRITICAL_RULES) -> tuple[CriticalRule, ...]:
    """The always-critical rules (data/bootlog-critical.yaml). Each rule's examples (real
    lines where one was captured) must be matched by its patterns."""
    path = Path(path)
    text = _read(path)
    if text is None:
        raise ValidationFailed([f"{path}: no such file (the boot-log critical rules)"])
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValidationFailed([f"{path}: not valid YAML: {exc}"]) from None
    entries = document.get("rules") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValidationFailed([f"{path}: expected a `rules:` list"])
    rules: list[CriticalRule] = []
    problems: list[str] = []
    for index, entry in enumerate(entries):
        where = f"{path}: rules[{index}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a mapping")
            continue
        where = f"{path}: rule {entry.get('name', index)!s}"
        unknown = set(entry) - _RULE_KEYS
        missing = {"name", "title", "patterns", "why", "action", "technician"} - set(entry)
        if unknown or missing:
            problems.append(f"{where}: " + "; ".join(
                ([f"unknown keys {sorted(unknown)}"] if unknown else [])
                + ([f"missing {sorted(missing)}"] if missing else [])))
            continue
        try:
            patterns = tuple(re.compile(p) for p in entry["patterns"])
            part = re.compile(entry["part"]) if entry.get("part") else None
            action = Action(entry["action"])
        except (re.error, ValueError, TypeError) as exc:
            problems.append(f"{where}: {exc}")
            continue
        if part is not None and "part" not in part.groupindex:
            problems.append(f"{where}: `part` needs a group named part: (?P<part>...)")
            continue
        rule = CriticalRule(
            name=str(entry["name"]), title=str(entry["title"]), patterns=patterns,
            why=" ".join(str(entry["why"]).split()), action=action,
            technician=" ".join(str(entry["technician"]).split()),
            min_count=int(entry.get("min_count", 1)), part=part,
            part_kind=entry.get("part_kind"), examples=tuple(entry.get("examples") or ()))
        for example in rule.examples:
            if not rule.hit(strip_prefix(example))[0]:
                problems.append(f"{where}: its patterns do not match its example {example!r}")
        rules.append(rule)
    names = [r.name for r in rules]
    problems += [f"{path}: rule {n} is defined twice" for n in sorted(set(names))
                 if names.count(n) > 1]
    if problems:
        raise ValidationFailed(problems)
    return tuple(rules)


# ---------------------------------------------------------------------------------------
# Judging a node's boot log
# ---------------------------------------------------------------------------------------

# The lines the Xid check (kiln.roles.health.kernel) judges: Xid and SXid reports, and the
# two lines the driver prints before a GPU's first Xid (its PCI address and UUID, its serial).
_XID_LINES = ("NVRM: Xid", "SXid", "NVRM: GPU at PCI:", "NVRM: GPU Board Serial Number:")


def skip_xid(message: str) -> bool:
    """The default `skip` of judge_boot_log: lines the Xid check judges."""
    return any(marker in message for marker in _XID_LINES)


class _Safe(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def judge_boot_log(node: str, lines: Iterable[str], allowlist: Allowlist,
                   critical_rules: Sequence[CriticalRule],
                   skip: Callable[[str], bool] = skip_xid) -> list[CheckResult]:
    """The boot-log check of one node's kernel log: a CRITICAL for each critical rule that
    fires (one per part it names), then one result for the node: WARN listing the lines no
    allowlist entry accepts (evidence {"unknown": [{"pattern", "example", "count"}]}: what
    `kiln dmesg learn` reads back), or OK. Critical rules see every line, skipped ones too;
    `skip` only keeps a line from the allowlist's judgement."""
    judged: list[tuple[str, str, list[tuple[CriticalRule, str | None, str | None]]]] = []
    counts: dict[tuple[str, str | None], int] = {}
    for raw in lines:
        message = strip_prefix(raw).strip()
        if not message:
            continue
        hits = []
        for rule in critical_rules:
            matched, part, kind = rule.hit(message)
            if matched:
                hits.append((rule, part, kind))
                counts[(rule.name, part)] = counts.get((rule.name, part), 0) + 1
        judged.append((raw.strip(), message, hits))

    fired: dict[tuple[str, str | None], tuple[CriticalRule, str | None, list[str]]] = {}
    unknown: dict[str, dict[str, Any]] = {}
    for raw, message, hits in judged:
        critical = False
        for rule, part, kind in hits:
            if counts[(rule.name, part)] >= rule.min_count:
                fired.setdefault((rule.name, part), (rule, kind, []))[2].append(raw)
                critical = True
        if critical or skip(message):
            continue
        pattern = normalise(message)
        if not allowlist.accepts(pattern):
            seen = unknown.setdefault(pattern, {"pattern": pattern, "example": raw, "count": 0})
            seen["count"] += 1

    results = [_critical(node, rule, part, kind, found)
               for (_name, part), (rule, kind, found) in fired.items()]
    if unknown:
        listed = list(unknown.values())
        total = sum(u["count"] for u in listed)
        shown = "; ".join(u["pattern"] for u in listed[:5]) + (" …" if len(listed) > 5 else "")
        results.append(CheckResult(
            CHECK, Subject(node), Status.WARN,
            (f"{total} kernel log line{'s' if total > 1 else ''} in no reviewed allowlist "
             f"({len(listed)} distinct): {shown}",),
            {"unknown": listed},
            Remediation(Action.RECONFIGURE, f"review them: `kiln dmesg learn {node}` shows each "
                        "line and adds the ones you accept to the site's allowlist; report "
                        "the others")))
    else:
        results.append(CheckResult(CHECK, Subject(node), Status.OK, (),
                                   {"lines": len(judged)}))
    return results


def _critical(node: str, rule: CriticalRule, part: str | None, kind: str | None,
              lines: list[str]) -> CheckResult:
    pci = part if part and _PCI_IN_LINE.fullmatch(part) else None
    if part:
        subject = Subject(node, kind or "part", part, (("pci", pci),) if pci else ())
    else:
        subject = Subject(node, "boot log", rule.name)
    count = len(lines)
    evidence: dict[str, Any] = {"rule": rule.name, "why": rule.why, "count": count,
                                "lines": lines[:10]}
    if pci:
        evidence["pci"] = pci
    if part:
        evidence["part"] = part
    more = f" ({count} lines)" if count > 1 else ""
    words = rule.technician.format_map(_Safe(part=part or "the part the line names", node=node))
    return CheckResult(CHECK, subject, Status.CRITICAL, (f"{rule.title}{more}: {lines[0]}",),
                       evidence, Remediation(rule.action, words))


# ---------------------------------------------------------------------------------------
# `kiln dmesg learn`: what a person accepts goes into the site's allowlist
# ---------------------------------------------------------------------------------------

SITE_HEADER = """\
# This site's boot-log allowlist: kernel log lines reviewed here and found benign, beside
# kiln's own (kiln/roles/health/data/bootlog-allowlist.txt). kiln's boot-log check reports
# every line of a node's kernel log that is in neither (a WARN) and, whatever the lists say,
# the lines its critical rules name (kiln/roles/health/data/bootlog-critical.yaml).
#
# One entry per line: a kernel message as kiln normalises it (volatile tokens such as PCI
# addresses, PIDs and MACs as <placeholders>), matched exactly; or `re:` and a regular
# expression matched against the whole normalised line (anchored ^...$, varying tokens, not
# phrases). `#` starts a comment. `kiln dmesg learn NODE` adds the lines a person accepts.
"""


def unknown_lines(evidence: Mapping[str, Any] | str) -> list[dict[str, Any]]:
    """The unknown lines a boot-log WARN recorded (its evidence, as a mapping or JSON)."""
    if isinstance(evidence, str):
        try:
            evidence = json.loads(evidence) if evidence.strip() else {}
        except json.JSONDecodeError:
            evidence = {}
    listed = evidence.get("unknown") if isinstance(evidence, Mapping) else None
    return [dict(u) for u in listed or [] if isinstance(u, Mapping)
            and isinstance(u.get("pattern"), str)]


def add_to_allowlist(path: Path | str, entries: Sequence[Mapping[str, Any]],
                     note: str) -> tuple[list[str], list[str]]:
    """Append `entries` (unknown lines: pattern, example, count) to the site allowlist at
    `path`, created with a header when missing, written atomically. Each entry is checked as
    the loader checks it; the file as a whole must load. Returns (the patterns added, the
    problems of those refused). Nothing is written when nothing is added."""
    path = Path(path)
    existing = _read(path)
    text = existing if existing is not None else SITE_HEADER
    _lines, _patterns, problems = parse_allowlist(text, str(path))
    if problems:
        raise ValidationFailed(problems)
    added: list[str] = []
    refused: list[str] = []
    block = [f"# {' '.join(note.split())}"]
    for entry in entries:
        pattern = " ".join(str(entry["pattern"]).split())
        if pattern.startswith(("#", REGEX)):
            refused.append(f"{pattern}: a line that starts with '#' or 're:' cannot be a plain "
                           "entry; write a reviewed re: entry by hand")
            continue
        value, problem = check_entry(pattern, f"{path} (new entry)")
        if problem or value != pattern:
            refused.append(problem or f"{pattern}: not in normalised form (normalises to "
                           f"{value})")
            continue
        if pattern in added:
            continue
        example = " ".join(str(entry.get("example", "")).split())
        block.append(f"# seen {entry.get('count', 1)}x, e.g.: {example}")
        block.append(pattern)
        added.append(pattern)
    if not added:
        return added, refused
    new_text = text.rstrip("\n") + "\n\n" + "\n".join(block) + "\n"
    _lines, _patterns, problems = parse_allowlist(new_text, str(path))
    if problems:
        raise ValidationFailed(problems)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(new_text)
        if existing is not None:
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return added, refused

"""Host checks: CPU, memory, NVMe drives, free space, swap, time, the container runtime,
against the manifest's `health.host` (a field it leaves out is not checked, and the result
says so). Parsers for the few lines each section prints, then the judges; no I/O.
"""

from __future__ import annotations

import re
from typing import Any

from kiln.core.checks import Action, CheckResult, Remediation, Status, Subject
from kiln.core.manifest import HostHealth
from kiln.core.parsing import ParseError

HOST_CPU = "host-cpu"
HOST_MEMORY = "host-memory"
HOST_DISKS = "host-disks"
HOST_SWAP = "host-swap"
HOST_TIME = "host-time"
CONTAINER = "container-runtime"


def _ok(check: str, node: str, evidence: dict[str, Any], note: str = "") -> CheckResult:
    return CheckResult(check, Subject(node), Status.OK, (note,) if note else (), evidence)


def _critical(check: str, node: str, problems: list[str], evidence: dict[str, Any],
              remediation: Remediation, part: str | None = None,
              name: str | None = None) -> CheckResult:
    return CheckResult(check, Subject(node, part, name), Status.CRITICAL, tuple(problems),
                       evidence, remediation)


# --- parsers ----------------------------------------------------------------------------------

def parse_cpuinfo(text: str) -> dict[str, Any]:
    """The lines of /proc/cpuinfo kiln reads (processor, physical id, model name)."""
    threads, sockets, models = 0, set(), set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise ParseError(f"line {number}: not a /proc/cpuinfo 'key : value' line: "
                             f"{line[:80]!r}")
        key, value = key.strip(), value.strip()
        if key == "processor":
            threads += 1
        elif key == "physical id":
            sockets.add(value)
        elif key == "model name":
            models.add(value)
    if not threads:
        raise ParseError("line 1: /proc/cpuinfo lists no processor")
    return {"threads": threads, "sockets": len(sockets) or 1, "models": sorted(models)}


def parse_meminfo(text: str) -> dict[str, int]:
    """{MemTotal, SwapTotal: kB} from /proc/meminfo lines."""
    out = {}
    for number, line in enumerate(text.splitlines(), start=1):
        match = re.match(r"^(\w+):\s+(\d+)\s*kB$", line.strip())
        if not match:
            if line.strip():
                raise ParseError(f"line {number}: not a /proc/meminfo line: {line[:80]!r}")
            continue
        out[match.group(1)] = int(match.group(2))
    if "MemTotal" not in out:
        raise ParseError("line 1: /proc/meminfo has no MemTotal")
    return out


def parse_swaps(text: str) -> list[dict[str, Any]]:
    """/proc/swaps: [{device, type, size_kib}] (header line first)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("Filename"):
        raise ParseError("line 1: /proc/swaps starts with its 'Filename Type Size' header")
    out = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if len(fields) < 3 or not fields[2].isdigit():
            raise ParseError(f"line {number}: not a /proc/swaps entry: {line[:80]!r}")
        out.append({"device": fields[0], "type": fields[1], "size_kib": int(fields[2])})
    return out


def parse_nvme(text: str) -> list[dict[str, str]]:
    """The section's `name<TAB>model<TAB>state` lines (from /sys/class/nvme)."""
    out = []
    for line in text.splitlines():
        if line.strip():
            name, _, rest = line.partition("\t")
            model, _, state = rest.partition("\t")
            out.append({"name": name.strip(), "model": model.strip(), "state": state.strip()})
    return out


def parse_df(text: str) -> dict[str, dict[str, int]]:
    """`df -P -B1 PATH...`: {mount point: {size, available}} (bytes)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("Filesystem"):
        raise ParseError("line 1: df -P prints a 'Filesystem ...' header first")
    out = {}
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if len(fields) < 6 or not fields[1].isdigit() or not fields[3].isdigit():
            raise ParseError(f"line {number}: not a df -P line: {line[:80]!r}")
        out[" ".join(fields[5:])] = {"size": int(fields[1]), "available": int(fields[3])}
    return out


def parse_time_sync(text: str) -> dict[str, Any]:
    """`chronyc -n tracking` (Leap status, Reference ID, System time) or `timedatectl show
    -p NTPSynchronized`: {synchronised: bool, source, detail}."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":" if ":" in line and "=" not in line else "=")
        if sep:
            fields[key.strip()] = value.strip()
    if "Leap status" in fields:
        leap = fields["Leap status"]
        return {"synchronised": leap == "Normal", "source": "chronyc",
                "detail": f"leap status {leap}", "reference": fields.get("Reference ID"),
                "offset": fields.get("System time")}
    if "NTPSynchronized" in fields:
        return {"synchronised": fields["NTPSynchronized"] == "yes", "source": "timedatectl",
                "detail": f"NTPSynchronized={fields['NTPSynchronized']}"}
    first = text.strip().splitlines()[0] if text.strip() else "nothing"
    raise ParseError(f"line 1: neither chronyc tracking nor timedatectl output: {first[:100]!r}")


# --- judges -----------------------------------------------------------------------------------

def check_cpu(node: str, cpu: dict[str, Any], want: HostHealth) -> CheckResult:
    problems = []
    if want.cpu_model and not any(want.cpu_model in m for m in cpu["models"]):
        problems.append(f"CPU {', '.join(cpu['models'])}, not a {want.cpu_model}")
    if want.cpu_sockets and cpu["sockets"] != want.cpu_sockets:
        problems.append(f"{cpu['sockets']} CPU socket(s), not {want.cpu_sockets}")
    if want.cpu_threads and cpu["threads"] != want.cpu_threads:
        problems.append(f"{cpu['threads']} CPU threads, not {want.cpu_threads} (cores "
                        "disabled, SMT off, or a socket missing)")
    if problems:
        return _critical(HOST_CPU, node, problems, cpu, Remediation(
            Action.RECONFIGURE, "check the BIOS (SMT, cores enabled) and that both CPUs are "
            "seated; reseat or RMA a CPU that does not show"))
    return _ok(HOST_CPU, node, cpu)


def check_memory(node: str, meminfo: dict[str, int], want: HostHealth) -> CheckResult:
    total_gib = meminfo["MemTotal"] / 1024 / 1024
    evidence = {"memory_gib": round(total_gib, 1), "expected_gib": want.memory_gib,
                "tolerance_pct": want.memory_tolerance_pct}
    if want.memory_gib is None:
        return _ok(HOST_MEMORY, node, evidence, "memory size not pinned by the manifest")
    low = want.memory_gib * (1 - want.memory_tolerance_pct / 100)
    if total_gib < low:
        return _critical(HOST_MEMORY, node, [
            f"{total_gib:.1f} GiB of memory, not {want.memory_gib:g} GiB (within "
            f"{want.memory_tolerance_pct:g}%)"], evidence, Remediation(
                Action.RESEAT, "a DIMM is missing or disabled: read the BMC's event log and "
                "the BIOS memory map, reseat or replace the DIMM"))
    return _ok(HOST_MEMORY, node, evidence)


def check_disks(node: str, nvme: list[dict[str, str]], df: dict[str, dict[str, int]],
                want: HostHealth) -> list[CheckResult]:
    results = []
    live = [d for d in nvme if d["state"] in ("", "live")]
    evidence = {"nvme": nvme}
    if want.nvme_count is not None and len(live) != want.nvme_count:
        dead = [d["name"] for d in nvme if d not in live]
        results.append(_critical(HOST_DISKS, node, [
            f"{len(live)} of {want.nvme_count} NVMe drives live"
            + (f" ({', '.join(dead)} not live)" if dead else "")], evidence, Remediation(
                Action.RESEAT, "reseat the missing NVMe drive; RMA it if it stays missing")))
    else:
        results.append(_ok(HOST_DISKS, node, evidence))
    for mount, minimum in sorted(want.min_free_gib.items()):
        space = df.get(mount)
        subject_evidence = {"mount": mount, "min_free_gib": minimum}
        if space is None:
            results.append(CheckResult(HOST_DISKS, Subject(node, "filesystem", mount),
                                       Status.UNKNOWN, (f"df did not report {mount}",),
                                       subject_evidence,
                                       Remediation(Action.RETRY, f"is {mount} mounted?")))
            continue
        free = space["available"] / 1024 ** 3
        subject_evidence["free_gib"] = round(free, 1)
        if free < minimum:
            results.append(_critical(HOST_DISKS, node, [
                f"{mount}: {free:.1f} GiB free, under {minimum:g} GiB"], subject_evidence,
                Remediation(Action.RECONFIGURE, f"free space on {mount} (old containers, "
                            "logs, core dumps)"), "filesystem", mount))
        else:
            results.append(CheckResult(HOST_DISKS, Subject(node, "filesystem", mount),
                                       Status.OK, (), subject_evidence))
    return results


def check_swap(node: str, swaps: list[dict[str, Any]], want: HostHealth) -> CheckResult:
    evidence = {"swaps": swaps}
    if want.swap == "off" and swaps:
        return _critical(HOST_SWAP, node, [
            "swap is on: " + ", ".join(s["device"] for s in swaps)], evidence, Remediation(
                Action.RECONFIGURE, "swapoff -a and remove the swap entries from /etc/fstab "
                "(a training job that swaps is a straggler)"))
    return _ok(HOST_SWAP, node, evidence)


def check_time(node: str, sync: dict[str, Any], want: HostHealth) -> CheckResult:
    if want.time_sync and not sync["synchronised"]:
        return _critical(HOST_TIME, node, [f"time not synchronised ({sync['detail']})"], sync,
                         Remediation(Action.RECONFIGURE, "check chrony's sources (chronyc "
                                     "sources) and that the NTP servers answer the node"))
    return _ok(HOST_TIME, node, sync)


def check_container(node: str, text: str, rc: int | None, gpus: int) -> CheckResult:
    """`docker run --gpus all IMAGE nvidia-smi -L` must list every GPU."""
    seen = [line for line in text.splitlines() if re.match(r"^GPU \d+: ", line)]
    evidence = {"gpus_seen": len(seen), "expected": gpus, "exit_status": rc}
    if rc == 0 and len(seen) == gpus:
        return _ok(CONTAINER, node, evidence)
    tail = " / ".join(text.strip().splitlines()[-3:])[:300]
    return _critical(CONTAINER, node, [
        f"a container sees {len(seen)} of {gpus} GPUs (exit status {rc}): {tail}"], evidence,
        Remediation(Action.RECONFIGURE, "check nvidia-container-toolkit (the pinned version) "
                    "and the runtime's configuration (nvidia-ctk runtime configure)"))

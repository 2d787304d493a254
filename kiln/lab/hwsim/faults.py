"""Fault kinds, the `--faults FILE` format, and how each fault changes what the tools see.

A fault never edits the profile (except `firmware-version`, below): the tools read
profile.json + faults.json and `apply_faults` builds the view from both, changing exactly
the fields the fault's real counterpart changes. So clearing a fault restores the healthy
output, and a test can assert that nothing else moved.

`firmware-version` is different on purpose: a card at the wrong firmware stays there until
it is flashed, so that fault rewrites the profile's firmware version once (when the lab
is built, or when `kiln lab fault` adds it) and the firmware update path can fix it.

File format (YAML or JSON):

    faults:
      - {node: gpu-003, kind: ecc-uncorrectable, gpu: 2, count: 4}
      - {node: gpu-005, kind: hca-rate, hca: 1, rate: 200}
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .profile import FIRMWARE, KNOWN_FIRMWARE, NVLINKS_PER_GPU, OLD_FIRMWARE, refresh_boot_log


class FaultError(ValueError):
    """A fault entry that cannot be applied; the message names the entry and field."""


@dataclass(frozen=True)
class Field:
    kind: type
    required: bool = False
    default: Any = None
    check: Callable[[Any], bool] | None = None
    hint: str = ""


def _gpu(required: bool = True) -> Field:
    return Field(int, required, None if required else 0, lambda v: 0 <= v < 8, "a GPU index 0-7")


def _hca(required: bool = True) -> Field:
    return Field(int, required, None, lambda v: 0 <= v < 8, "an HCA index 0-7 (mlx5_N)")


# What a GPU's graphics/SM clock is held at by a hardware slowdown: NVML documents HW
# Slowdown and HW Thermal Slowdown as "reducing the core clocks by a factor of 2 or more",
# so half of the H100's 1980 MHz maximum at most.
HW_SLOWDOWN_CLOCK_MHZ = 990

# The simulated tools a `tool-hang` fault can stop (their module names in tools/, dashed).
HANGING_TOOLS = ("nvidia-smi", "dcgmi", "ibstat", "dmesg", "mlxconfig", "all_reduce_perf",
                 "ib_write_bw")

# kind -> (fields, one line saying what it changes: the table in lab/README.md)
KINDS: dict[str, tuple[dict[str, Field], str]] = {
    "ecc-uncorrectable": (
        {
            "gpu": _gpu(),
            "count": Field(int, False, 1, lambda v: v >= 1, "a count >= 1"),
            "memory": Field(str, False, "dram", lambda v: v in ("dram", "sram"), "dram or sram"),
        },
        "that GPU's uncorrectable ECC counters (volatile and aggregate); dcgmi diag fails",
    ),
    "row-remap-pending": (
        {"gpu": _gpu()},
        "that GPU's remapped rows: uncorrectable +1, Pending Yes; dcgmi diag fails",
    ),
    "row-remap-failed": (
        {"gpu": _gpu()},
        "that GPU's remapped rows: Remapping Failure Occurred Yes; dcgmi diag fails",
    ),
    "xid": (
        {
            "gpu": _gpu(),
            "code": Field(int, True, None, lambda v: v > 0, "an Xid number"),
            "message": Field(str, False, None),
            "at": Field(float, False, None, lambda v: v >= 0, "seconds since boot"),
        },
        "an `NVRM: Xid` line for that GPU in the boot log (dmesg)",
    ),
    "sxid": (
        {
            "nvswitch": Field(int, False, 0, lambda v: 0 <= v < 4, "an NVSwitch index 0-3"),
            "code": Field(int, True, None, lambda v: v > 0, "an SXid number"),
            "link": Field(int, False, 0, lambda v: 0 <= v < 64, "a switch port 0-63"),
            "fatal": Field(bool, False, True),
            "at": Field(float, False, None, lambda v: v >= 0, "seconds since boot"),
        },
        "an `SXid` line for that NVSwitch in the boot log (dmesg)",
    ),
    "nvlink-inactive": (
        {
            "gpu": _gpu(),
            "link": Field(int, True, None, lambda v: 0 <= v < NVLINKS_PER_GPU, "a link 0-17"),
        },
        "that link shows `<inactive>` in nvidia-smi nvlink -s; all_reduce_perf busbw drops",
    ),
    "nvlink-degraded": (
        {
            "gpu": _gpu(required=False),
            "factor": Field(float, False, 0.6, lambda v: 0 < v < 1, "a number between 0 and 1"),
        },
        "all_reduce_perf busbw × factor; replay errors on that GPU's links in nvlink -e",
    ),
    "gpu-wrong-results": (
        {"gpu": _gpu()},
        "dcgmi diag (level 2+) fails on that GPU; all_reduce_perf reports #wrong",
    ),
    "hca-port-down": (
        {
            "hca": _hca(),
            "phys": Field(
                str, False, "Polling", lambda v: v in ("Polling", "Disabled"), "Polling or Disabled"
            ),
        },
        "that port: State Down, Physical state Polling (ibstat, ibstatus, ibv_devinfo); "
        "ib_write_bw on it fails; multi-node busbw drops",
    ),
    "hca-rate": (
        {"hca": _hca(), "rate": Field(int, False, 200, lambda v: v in (100, 200), "100 or 200")},
        "that port's Rate (ibstat, ibstatus); ib_write_bw on it and multi-node busbw drop",
    ),
    "pcie-width": (
        {
            "gpu": Field(int, False, None, lambda v: 0 <= v < 8, "a GPU index 0-7"),
            "hca": Field(int, False, None, lambda v: 0 <= v < 8, "an HCA index 0-7"),
            "width": Field(int, False, 8, lambda v: v in (1, 2, 4, 8), "1, 2, 4 or 8"),
        },
        "a GPU: its current PCIe link width (nvidia-smi), dcgmi diag PCIe fails; an HCA: "
        "its boot-log PCIe line, ib_write_bw on it drops",
    ),
    "firmware-version": (
        {
            "component": Field(
                str, True, None, lambda v: v in FIRMWARE, "one of " + ", ".join(FIRMWARE)
            ),
            "version": Field(str, False, "old", None, "a version, or 'old'"),
            "gpu": Field(int, False, None, lambda v: 0 <= v < 8, "a GPU index 0-7"),
            "hca": Field(int, False, None, lambda v: 0 <= v < 8, "an HCA index 0-7"),
        },
        "the profile's firmware version (every tool that prints it), until it is flashed",
    ),
    "boot-log-line": (
        {
            "line": Field(str, True, None, lambda v: bool(v) and "\n" not in v, "one line"),
            "at": Field(float, False, None, lambda v: v >= 0, "seconds since boot"),
        },
        "that line in the boot log (dmesg)",
    ),
    "flaky": (
        {"p": Field(float, True, None, lambda v: 0 < v <= 1, "a probability in (0, 1]")},
        "dcgmi diag, all_reduce_perf and ib_write_bw fail with probability p",
    ),
    "tool-hang": (
        {"tool": Field(str, True, None, lambda v: v in HANGING_TOOLS,
                       "one of " + ", ".join(HANGING_TOOLS))},
        "that tool never returns (as nvidia-smi or dcgmi do on a GPU stuck in a bad state: "
        "the process sleeps uninterruptibly until the node is reset)",
    ),
    "boot-fail": (
        {"first_ok": Field(int, False, 1, lambda v: v >= 0, "a count >= 0")},
        "the node's image boots after the first `first_ok` fail (the lab's on_node_boot "
        "raises NodeBootFailed)",
    ),
    "ecc-correctable-storm": (
        {
            "gpu": _gpu(),
            "count": Field(int, False, 25000, lambda v: v >= 1, "a count >= 1"),
            "memory": Field(str, False, "dram", lambda v: v in ("dram", "sram"), "dram or sram"),
            "sm_clock": Field(
                int, False, HW_SLOWDOWN_CLOCK_MHZ,
                lambda v: 100 <= v <= HW_SLOWDOWN_CLOCK_MHZ,
                f"MHz, 100-{HW_SLOWDOWN_CLOCK_MHZ} (HW Slowdown halves the clock or more)",
            ),
            "at": Field(float, False, None, lambda v: v >= 0, "seconds since boot"),
        },
        "a straggler: that GPU's correctable ECC counters up by count, Xid 92 in dmesg, "
        "graphics/SM clocks held at sm_clock (HW Slowdown Active)",
    ),
    "gpu-lost": (
        {
            "gpu": _gpu(),
            "at": Field(float, False, None, lambda v: v >= 0, "seconds since boot"),
        },
        "that GPU fell off the bus: Xid 79 lines in dmesg; nvidia-smi cannot get its handle "
        "(every query naming it fails); the driver sees the other 7",
    ),
    "pcie-gen": (
        {
            "gpu": Field(int, False, None, lambda v: 0 <= v < 8, "a GPU index 0-7"),
            "hca": Field(int, False, None, lambda v: 0 <= v < 8, "an HCA index 0-7"),
            "gen": Field(int, False, 4, lambda v: 1 <= v <= 4, "a PCIe generation 1-4"),
        },
        "a GPU: its current PCIe generation (nvidia-smi); an HCA: sysfs current_link_speed "
        "and its boot-log PCIe line",
    ),
    "thermal-throttle": (
        {
            "gpu": _gpu(),
            "temp": Field(int, False, 92, lambda v: 70 <= v <= 100, "degrees C, 70-100"),
        },
        "that GPU's temperature (and T.Limit margin), HW/SW Thermal Slowdown Active, "
        "graphics/SM clocks halved",
    ),
    "fabric-manager-down": (
        {
            "when": Field(
                str, False, "boot", lambda v: v in ("boot", "later"), "boot or later"
            ),
        },
        "nv-fabricmanager exits (the unit fails); when=boot: GPUs' Fabric State In Progress, "
        "CUDA jobs fail (802); when=later: Fabric stays Completed",
    ),
    "peermem-unloaded": (
        {"at": Field(float, False, None, lambda v: v >= 0, "seconds since boot")},
        "nvidia_peermem is not loaded and `modprobe nvidia_peermem` fails (Invalid "
        "argument); its symbol-version lines in dmesg",
    ),
    "kernel-log-rotate": (
        {"drop": Field(int, False, 40, lambda v: v >= 1, "a number of lines >= 1")},
        "the kernel ring buffer wrapped: dmesg lacks its oldest `drop` lines",
    ),
}


def validate_fault(entry: Any, where: str, with_node: bool = True) -> dict[str, Any]:
    """One checked, defaults-filled fault; errors say `where` (e.g. "faults.yaml: faults[3]")."""
    if not isinstance(entry, dict):
        raise FaultError(f"{where}: must be a mapping with node and kind")
    label = where
    if with_node:
        node = entry.get("node")
        if not isinstance(node, str) or not node:
            raise FaultError(f"{where}: field 'node': required (a node name)")
        label = f"{where} (node {node})"
    kind = entry.get("kind")
    if kind not in KINDS:
        raise FaultError(
            f"{label}: field 'kind': {kind!r} is not a fault kind (known: {', '.join(KINDS)})"
        )
    label = f"{label[:-1]}, kind {kind})" if with_node else f"{label} (kind {kind})"
    fields, _ = KINDS[kind]
    out: dict[str, Any] = {"kind": kind}
    if with_node:
        out["node"] = entry["node"]
    for name in entry:
        if name not in fields and name not in ("node", "kind"):
            known = ", ".join(fields) or "none"
            raise FaultError(f"{label}: field {name!r}: unknown for this kind (known: {known})")
    for name, spec in fields.items():
        if name not in entry or entry[name] is None:
            if spec.required:
                raise FaultError(f"{label}: field {name!r}: required ({spec.hint or spec.kind})")
            out[name] = spec.default
            continue
        value = entry[name]
        if spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if spec.kind is int and isinstance(value, str) and value.lstrip("-").isdigit():
            value = int(value)
        if spec.kind is float and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if spec.kind is bool and isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, spec.kind) or (spec.kind is int and isinstance(value, bool)):
            raise FaultError(
                f"{label}: field {name!r}: {value!r} is not {spec.hint or spec.kind.__name__}"
            )
        if spec.check is not None and not spec.check(value):
            raise FaultError(f"{label}: field {name!r}: {value!r} is not {spec.hint}")
        out[name] = value
    if kind in ("pcie-width", "pcie-gen") and (out["gpu"] is None) == (out["hca"] is None):
        raise FaultError(f"{label}: name exactly one of fields 'gpu' and 'hca'")
    if kind == "firmware-version":
        _check_firmware_fault(out, label)
    return out


def _check_firmware_fault(fault: dict[str, Any], label: str) -> None:
    component = fault["component"]
    if fault["version"] == "old":
        fault["version"] = OLD_FIRMWARE[component]
    if fault["version"] not in KNOWN_FIRMWARE[component]:
        known = ", ".join(KNOWN_FIRMWARE[component])
        raise FaultError(
            f"{label}: field 'version': {fault['version']!r} is not a version the lab has "
            f"for {component} (known: {known})"
        )
    if fault["gpu"] is not None and component != "gpu-vbios":
        raise FaultError(f"{label}: field 'gpu': only for component gpu-vbios")
    if fault["hca"] is not None and component != "connectx7":
        raise FaultError(f"{label}: field 'hca': only for component connectx7")


def parse_faults(data: Any, source: str, nodes: Iterable[str] | None = None) -> list[dict]:
    """Every fault of a loaded faults document, checked; `nodes` restricts node names."""
    if data is None:
        return []
    if not isinstance(data, dict) or set(data) - {"faults"}:
        raise FaultError(f"{source}: top level must be a mapping with one key, 'faults'")
    entries = data.get("faults") or []
    if not isinstance(entries, list):
        raise FaultError(f"{source}: field 'faults': must be a list")
    known_nodes = set(nodes) if nodes is not None else None
    faults = []
    for i, entry in enumerate(entries):
        fault = validate_fault(entry, f"{source}: faults[{i}]")
        if known_nodes is not None and fault["node"] not in known_nodes:
            raise FaultError(
                f"{source}: faults[{i}]: field 'node': {fault['node']!r} is not a lab node "
                f"(nodes: {', '.join(sorted(known_nodes))})"
            )
        faults.append(fault)
    return faults


def load_faults_file(path: Path, nodes: Iterable[str] | None = None) -> list[dict]:
    """Read `--faults FILE` (YAML where PyYAML is importable, JSON always)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FaultError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            import yaml  # the host has it; nodes only ever read faults.json
        except ImportError:
            raise FaultError(f"{path}: not JSON, and PyYAML is not installed") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise FaultError(f"{path}: not valid YAML: {exc}") from None
    return parse_faults(data, str(path), nodes)


def check_against_profile(fault: dict[str, Any], profile: dict[str, Any], where: str) -> None:
    """A fault must name hardware the node has (a service node has no GPU 2)."""
    for field, devices, what in (
        ("gpu", profile["gpus"], "GPUs"),
        ("hca", profile["hcas"], "HCAs"),
        ("nvswitch", profile["nvswitches"], "NVSwitches"),
    ):
        index = fault.get(field)
        if index is not None and index >= len(devices):
            raise FaultError(
                f"{where}: field {field!r}: node {profile['node']} has {len(devices)} {what}"
            )
    if fault["kind"] in ("nvlink-degraded", "gpu-wrong-results") and not profile["gpus"]:
        raise FaultError(f"{where}: node {profile['node']} has no GPUs")
    if fault["kind"] == "fabric-manager-down" and not profile["nvswitches"]:
        raise FaultError(f"{where}: node {profile['node']} has no NVSwitches (no fabric "
                         "manager runs there)")
    if fault["kind"] == "peermem-unloaded" and not (profile["gpus"] and profile["hcas"]):
        raise FaultError(f"{where}: node {profile['node']} has no GPUs and HCAs (nvidia_peermem "
                         "is not used there)")


def apply_firmware_fault(profile: dict[str, Any], fault: dict[str, Any]) -> None:
    """Put the wrong firmware in the profile: it stays until the update path replaces it."""
    component, version = fault["component"], fault["version"]
    if component in ("bios", "bmc"):
        profile["firmware"][component] = version
    elif component == "connectx7":
        for i, hca in enumerate(profile["hcas"]):
            if fault["hca"] is None or fault["hca"] == i:
                hca["fw_version"] = version
    else:
        for i, gpu in enumerate(profile["gpus"]):
            if fault["gpu"] is None or fault["gpu"] == i:
                gpu["vbios_version"] = version
    refresh_boot_log(profile)


XID_TEXT = {
    13: "Graphics SM Warp Exception on (GPC 1, TPC 0, SM 0): Out Of Range Address",
    31: "Ch 00000008, intr 00000000. MMU Fault: ENGINE GRAPHICS GPCCLIENT_T1_0 faulted @ "
    "0x7f2a_3c000000. Fault is of type FAULT_PDE ACCESS_TYPE_VIRT_READ",
    43: "Ch 00000010",
    45: "Ch 00000010",
    48: "An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer "
    "at partition 6, subpartition 0.",
    63: "Row Remapper: New row (0x0000000000a2d4e0) Marked for Remapping, reset gpu to activate.",
    64: "Row Remapper: Failed to remap row (0x0000000000a2d4e0).",
    74: "NVLink: fatal error detected on link 3(0x0, 0x0, 0x10000, 0x0, 0x0, 0x0, 0x0)",
    79: "GPU has fallen off the bus.",
    92: "High single-bit ECC error rate",
    94: "Contained: SM (0x1). RST: No, D-RST: No",
    95: "Uncontained: FBHUB. RST: Yes, D-RST: No",
    119: "Timeout after 6s of waiting for RPC response from GPU0 GSP! Expected function 76 "
    "(GSP_RM_CONTROL) (0x20801813 0x4c).",
}
SXID_TEXT = {
    12028: "egress non-posted PRIV error (First)",
    20034: "LTSSM Fault Up",
    22013: "Minion Link DLREQ interrupt",
}


# Xids the driver reports from its own error handling, not from a process (the kernel line
# says pid='<unknown>', name=<unknown>).
XID_NO_PROCESS = (48, 63, 64, 79, 92, 94, 95)

# What the kernel's module loader prints for each symbol nvidia_peermem cannot bind when the
# running ib_core exports another version of the peer-memory API (after an OFED or kernel
# change): two symbols, two lines each (gpu-operator issue 2868, a GB300 node's dmesg).
PEERMEM_SYMBOLS = ("ib_register_peer_memory_client", "ib_unregister_peer_memory_client")


def _xid_lines(gpu: dict[str, Any], code: int, text: str, when: float) -> list[tuple[float, str]]:
    bus = gpu["pci_bus_id"][9:11].lower()
    who = "pid='<unknown>', name=<unknown>" if code in XID_NO_PROCESS \
        else "pid=4172, name=python3"
    lines = []
    if code == 79:
        lines.append((when, f"NVRM: GPU at PCI:0000:{bus}:00: {gpu['uuid']}"))
        lines.append((when, f"NVRM: GPU Board Serial Number: {gpu['serial']}"))
    lines.append((when, f"NVRM: Xid (PCI:0000:{bus}:00): {code}, {who}, {text}"))
    return lines


def fault_log_lines(profile: dict[str, Any], faults: list[dict]) -> list[tuple[float, str]]:
    """The kernel lines the faults add to the boot log, with their times since boot.

    A line may hold newlines: one kernel record printed on several lines (dmesg indents
    the continuation lines under the first).
    """
    lines = []
    for n, fault in enumerate(faults):
        at = fault.get("at")
        when = float(at) if at is not None else 120.0 + 37.25 * n
        kind = fault["kind"]
        if kind == "xid":
            gpu = profile["gpus"][fault["gpu"]]
            text = fault.get("message") or XID_TEXT.get(fault["code"], "Unknown error")
            lines += _xid_lines(gpu, fault["code"], text, when)
        elif kind == "ecc-correctable-storm":
            lines += _xid_lines(profile["gpus"][fault["gpu"]], 92, XID_TEXT[92], when)
        elif kind == "gpu-lost":
            # What a node logs when a GPU falls off the bus (a real capture, driver
            # 535.161.07: akash-network/support issue 209): the Xid 79 lines, the driver's
            # own line, and the crash-dump notice, one record of three lines.
            gpu = profile["gpus"][fault["gpu"]]
            lines += _xid_lines(gpu, 79, XID_TEXT[79], when)
            lines.append((when, f"NVRM: GPU {gpu['pci_bus_id'][4:].lower()}: GPU has fallen "
                                "off the bus."))
            lines.append((when, "NVRM: A GPU crash dump has been created. If possible, please "
                                "run\nNVRM: nvidia-bug-report.sh as root to collect this data "
                                "before\nNVRM: the NVIDIA kernel module is unloaded."))
        elif kind == "peermem-unloaded":
            for symbol in PEERMEM_SYMBOLS:
                lines.append((when, f"nvidia_peermem: disagrees about version of symbol {symbol}"))
                lines.append((when, f"nvidia_peermem: Unknown symbol {symbol} (err -22)"))
        elif kind == "sxid":
            switch = profile["nvswitches"][fault["nvswitch"]]
            severity = "Fatal" if fault["fatal"] else "Non-fatal"
            text = SXID_TEXT.get(fault["code"], "NVLink error")
            name = f"nvidia-nvswitch{fault['nvswitch']}"
            lines.append((when, f"{name}: SXid (PCI:{switch['pci_bus_id']}): {fault['code']}, "
                                f"{severity}, Link {fault['link']:02d} {text}"))
            lines.append((when, f"{name}: SXid (PCI:{switch['pci_bus_id']}): {fault['code']}, "
                                f"Severity {1 if fault['fatal'] else 0} Engine instance "
                                f"{fault['link']:02d} Sub-engine instance 00"))
        elif kind == "boot-log-line":
            lines.append((when, fault["line"]))
    return lines


def apply_faults(profile: dict[str, Any], faults: list[dict]) -> dict[str, Any]:
    """The view the tools print: a copy of `profile` with every active fault's effect.

    Effects without a field of their own in the profile schema land under the copy's
    `sim` key: per-GPU `wrong_results`, `nvlink_factor` and `lost_gpus`; node-wide
    `flaky_p`, `fabric` ({state, status} of every GPU's fabric probe, as nvidia-smi -q's
    Fabric section prints it), `fabric_manager_down`, `peermem_unloaded` and `log_drop`
    (how many of the kernel log's oldest lines the ring buffer has lost).
    """
    view = copy.deepcopy(profile)
    sim: dict[str, Any] = {"flaky_p": 0.0, "wrong_results": set(), "nvlink_factor": {},
                           "lost_gpus": set(), "fabric": {"state": "Completed",
                                                          "status": "Success"},
                           "fabric_manager_down": False, "peermem_unloaded": False,
                           "log_drop": 0}
    view["sim"] = sim
    narrowed: list[dict[str, Any]] = []
    for fault in faults:
        kind = fault["kind"]
        gpu = view["gpus"][fault["gpu"]] if fault.get("gpu") is not None and view["gpus"] else None
        hca = view["hcas"][fault["hca"]] if fault.get("hca") is not None and view["hcas"] else None
        if kind == "ecc-uncorrectable" and gpu:
            key = "dram_uncorrectable" if fault["memory"] == "dram" else "sram_uncorrectable_secded"
            gpu["ecc"]["volatile"][key] += fault["count"]
            gpu["ecc"]["aggregate"][key] += fault["count"]
            if fault["memory"] == "sram":
                gpu["ecc"]["sram_sources"]["other"] += fault["count"]
        elif kind == "ecc-correctable-storm" and gpu:
            key = "dram_correctable" if fault["memory"] == "dram" else "sram_correctable"
            gpu["ecc"]["volatile"][key] += fault["count"]
            gpu["ecc"]["aggregate"][key] += fault["count"]
            # No NVML clocks-event reason names ECC. A GPU held below its requested clock
            # by the hardware, with neither the thermal nor the power-brake cause, is what
            # nvidia-smi shows as "HW Slowdown: Active" with both of its sub-reasons Not
            # Active (NVML: "HW Slowdown (reducing the core clocks by a factor of 2 or more)
            # is engaged"); not SW Power Cap or SW Thermal, which name a software limit the
            # GPU is not at.
            _hold_clocks(gpu, fault["sm_clock"])
            gpu["clock_event_reasons"]["hw_slowdown"] = True
        elif kind == "thermal-throttle" and gpu:
            temp = gpu["temperature"]
            # "GPU T.Limit Temp" is the margin below the GPU's own limit: it falls as the
            # temperature rises. A GPU in HW thermal slowdown is at or past the slowdown
            # margin (-2 C on an H100) and short of the shutdown one (-8 C).
            margin = temp["tlimit"] + temp["gpu"] - fault["temp"]
            temp["tlimit"] = min(-2, max(-7, margin))
            temp["gpu"] = fault["temp"]
            # NVML lists a too-high temperature as a cause of HW Slowdown as well as of HW
            # Thermal Slowdown, and nvidia-smi prints the latter under the former.
            reasons = gpu["clock_event_reasons"]
            reasons.update(hw_slowdown=True, hw_thermal_slowdown=True, sw_thermal_slowdown=True)
            _hold_clocks(gpu, gpu["clocks"]["max_graphics"] // 2)
        elif kind == "gpu-lost" and gpu:
            sim["lost_gpus"].add(gpu["index"])
        elif kind in ("row-remap-pending", "row-remap-failed") and gpu:
            rows = gpu["remapped_rows"]
            rows["uncorrectable"] += 1
            rows["histogram"]["max"] -= 1
            if kind == "row-remap-pending":
                rows["pending"] = True
                rows["histogram"]["high"] += 1
            else:
                rows["failure"] = True
                rows["histogram"]["none"] += 1
        elif kind == "nvlink-inactive" and gpu:
            gpu["nvlinks"][fault["link"]]["active"] = False
        elif kind == "nvlink-degraded" and gpu:
            sim["nvlink_factor"][gpu["index"]] = fault["factor"]
            for link in gpu["nvlinks"]:
                link["errors"]["replay"] += 1200 + 7 * link["link"]
                link["errors"]["recovery"] += 2
        elif kind == "gpu-wrong-results" and gpu:
            sim["wrong_results"].add(gpu["index"])
        elif kind == "hca-port-down" and hca:
            port = hca["ports"][0]
            port.update(state="Down", phys_state=fault["phys"], rate=10, lid=65535, sm_lid=0)
        elif kind == "hca-rate" and hca:
            hca["ports"][0]["rate"] = fault["rate"]
        elif kind in ("pcie-width", "pcie-gen"):
            field, value = ("width_current", fault["width"]) if kind == "pcie-width" \
                else ("gen_current", fault["gen"])
            if gpu:
                gpu["pcie"][field] = value
            elif hca:
                hca["pcie"][field] = value
                narrowed.append(hca)
        elif kind == "flaky":
            sim["flaky_p"] = max(sim["flaky_p"], fault["p"])
        elif kind == "fabric-manager-down":
            sim["fabric_manager_down"] = True
            if fault["when"] == "boot":
                # FM never registered the GPUs this boot: each GPU's fabric probe stays
                # "In Progress" (NVSentinel issues 883/889: an H100 node whose FM failed at
                # boot; fabric.state stuck "In Progress"), and its status is only defined
                # once the probe completes (NVML: "must be checked only if Probe state
                # returns complete"), so nvidia-smi prints N/A. An FM that dies after
                # registration leaves the GPUs Completed/Success (the state does not revert).
                sim["fabric"] = {"state": "In Progress", "status": "N/A"}
        elif kind == "peermem-unloaded":
            sim["peermem_unloaded"] = True
        elif kind == "kernel-log-rotate":
            sim["log_drop"] = max(sim["log_drop"], fault["drop"])
    for hca in narrowed:
        _narrow_pcie_log_line(view, hca)
    sim["wrong_results"] = sorted(sim["wrong_results"])
    sim["lost_gpus"] = sorted(sim["lost_gpus"])
    return view


def _hold_clocks(gpu: dict[str, Any], mhz: int) -> None:
    """A GPU held by a slowdown: its graphics and SM clocks at most `mhz`. The lab's GPUs
    idle at 345 MHz, below any hold, and a slowdown shows on a busy GPU, so a held GPU is
    shown busy: clocks at the held value, the Idle reason Not Active."""
    clocks, reasons = gpu["clocks"], gpu["clock_event_reasons"]
    if reasons["idle"]:
        reasons["idle"] = False
        clocks["graphics"] = clocks["sm"] = mhz
    else:
        clocks["graphics"] = min(clocks["graphics"], mhz)
        clocks["sm"] = min(clocks["sm"], mhz)


# PCIe generation -> (the kernel's speed spelling, Mb/s one lane carries after line coding:
# the kernel's PCIE_SPEED2MBS_ENC, integer arithmetic as the kernel does it).
PCIE_GEN = {
    1: ("2.5 GT/s", 2500 * 8 // 10),
    2: ("5.0 GT/s", 5000 * 8 // 10),
    3: ("8.0 GT/s", 8000 * 128 // 130),
    4: ("16.0 GT/s", 16000 * 128 // 130),
    5: ("32.0 GT/s", 32000 * 128 // 130),
}


def _gbps(gen: int, width: int) -> str:
    mbps = PCIE_GEN[gen][1] * width
    return f"{mbps // 1000}.{mbps % 1000:03d}"


def _narrow_pcie_log_line(view: dict[str, Any], hca: dict[str, Any]) -> None:
    """The kernel's own words (pcie_print_link_status) for a card that trained below its
    capable speed or width: 'limited by <speed> PCIe x<width> link at <the upstream port>'."""
    pcie = hca["pcie"]
    gen_max, width_max = pcie["gen"], pcie["width_max"]
    gen, width = pcie.get("gen_current", gen_max), pcie["width_current"]
    if (gen, width) == (gen_max, width_max):
        return
    prefix = f"mlx5_core {hca['pci_bdf']}: "
    for entry in view["boot_log"]:
        if entry[1].startswith(prefix) and "available PCIe bandwidth" in entry[1]:
            entry[1] = (
                f"{prefix}{_gbps(gen, width)} Gb/s available PCIe bandwidth, limited by "
                f"{PCIE_GEN[gen][0]} PCIe x{width} link at {hca['pci_bdf'][:5]}"
                f"{int(hca['pci_bdf'][5:7], 16) - 1:02x}:01.0 (capable of "
                f"{_gbps(gen_max, width_max)} Gb/s with {PCIE_GEN[gen_max][0]} PCIe "
                f"x{width_max} link)"
            )

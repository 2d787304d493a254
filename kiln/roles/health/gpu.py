"""GPU checks: what `nvidia-smi -q`, `nvidia-smi nvlink -s/-e` and the fabric manager say,
judged against the SKU's manifest (topology.gpu, firmware, packages, health.gpu).

Each function takes what was read and returns typed results (kiln.core.checks), one per
GPU (Subject part "GPU", name = its index, ids = PCI address, serial, UUID) plus, where the
node as a whole is judged, one for the node. Pure: no I/O.

nvidia-smi's own failure modes are told apart (`smi_state`): no driver loaded, a
driver/library mismatch (the driver was updated and the node not rebooted), no devices, a
GPU lost (fallen off the bus), a hang (the read timed out: UNKNOWN, as every check that
could not tell).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from kiln.core.checks import Action, CheckResult, Remediation, Status, Subject
from kiln.core.manifest import Manifest
from kiln.core.parsing import ParseError
from kiln.roles.nvidia.parsers import parse_nvidia_smi_q, parse_nvlink

GPU_COUNT = "gpu-count"
GPU_VERSIONS = "gpu-versions"
GPU_CONFIG = "gpu-config"
GPU_MEMORY = "gpu-memory"
GPU_NVLINK = "gpu-nvlink"
GPU_PCIE = "gpu-pcie"
GPU_THERMAL = "gpu-clocks"
GPU_FABRIC = "gpu-fabric"

# "Unable to determine the device handle for GPU0000:9B:00.0: Unknown Error" and the
# driver's "GPU is lost" variant: nvidia-smi names the GPU it lost by PCI address.
_LOST = re.compile(r"Unable to determine the device handle for GPU\s*([0-9A-Fa-f:.]+):\s*(.*)$")
_NO_DRIVER = "couldn't communicate with the NVIDIA driver"
_MISMATCH = "Driver/library version mismatch"


@dataclass(frozen=True)
class SmiState:
    """What `nvidia-smi -q` gave: the parsed report, or why there is none."""

    report: dict[str, Any] | None
    lost: tuple[tuple[str, str], ...] = ()  # (PCI address, what nvidia-smi said)
    problem: str | None = None  # nvidia-smi failed as a whole (no driver, mismatch, ...)
    remediation: Remediation | None = None
    notes: list[str] = field(default_factory=list)


def smi_state(text: str, rc: int | None) -> SmiState:
    """Tell nvidia-smi's failure modes apart; parse the report when there is one."""
    lost = tuple((m.group(1), m.group(2).strip()) for m in map(_LOST.search, text.splitlines())
                 if m)
    if _NO_DRIVER in text:
        return SmiState(None, lost, "nvidia-smi cannot talk to the NVIDIA driver: no driver "
                        "loaded", Remediation(Action.REBOOT, "the kernel module did not load: "
                                              "read the boot log for the NVIDIA driver, "
                                              "reinstall the pinned driver (bring-up's nvidia "
                                              "stage) and reboot"))
    if _MISMATCH in text:
        return SmiState(None, lost, "NVML driver/library version mismatch: the running "
                        "driver is not the installed one",
                        Remediation(Action.REBOOT, "reboot the node so the installed driver "
                                    "loads (the driver was updated without a reboot)"))
    body = "\n".join(line for line in text.splitlines() if not _LOST.search(line))
    if not body.strip():
        problem = "nvidia-smi printed nothing" + (f" (exit status {rc})" if rc else "")
        return SmiState(None, lost, problem if not lost else None,
                        Remediation(Action.REBOOT, "power cycle the node through its BMC") if
                        not lost else None)
    try:
        report = parse_nvidia_smi_q(body)
    except ParseError as exc:
        return SmiState(None, lost, f"nvidia-smi -q could not be read: {exc}",
                        Remediation(Action.RETRY, "read `nvidia-smi -q` on the node by hand"))
    return SmiState(report, lost)


def gpu_index(gpu: dict[str, Any], position: int) -> int:
    """The GPU's index as nvidia-smi -i takes it: its minor number, else its order."""
    minor = gpu.get("minor_number")
    return minor if isinstance(minor, int) else position


def gpu_subject(node: str, gpu: dict[str, Any], position: int) -> Subject:
    ids = tuple((label, str(gpu[key])) for label, key in
                (("PCI", "pci_bus_id"), ("serial", "serial"), ("UUID", "uuid")) if gpu.get(key))
    return Subject(node, "GPU", str(gpu_index(gpu, position)), ids)


def _result(check: str, subject: Subject, critical: list[tuple[str, Remediation]],
            warn: list[str], unknown: list[str], evidence: dict[str, Any],
            warn_remediation: Remediation | None = None) -> CheckResult:
    if critical:
        return CheckResult(check, subject, Status.CRITICAL,
                           tuple(t for t, _ in critical) + tuple(warn) + tuple(unknown),
                           evidence, critical[0][1])
    if unknown:
        return CheckResult(check, subject, Status.UNKNOWN, tuple(unknown) + tuple(warn),
                           evidence, Remediation(Action.RETRY, "make the value readable "
                                                 "(nvidia-smi -q on the node), run again"))
    if warn:
        return CheckResult(check, subject, Status.WARN, tuple(warn), evidence, warn_remediation)
    return CheckResult(check, subject, Status.OK, (), evidence)


def _gpus(state: SmiState) -> list[tuple[int, dict[str, Any]]]:
    return list(enumerate(state.report["gpus"])) if state.report else []


# --- count and model --------------------------------------------------------------------------

def check_count(node: str, state: SmiState, manifest: Manifest) -> list[CheckResult]:
    expect = manifest.topology.gpu
    subject = Subject(node)
    if state.problem:
        return [CheckResult(GPU_COUNT, subject, Status.CRITICAL, (state.problem,),
                            {"expected": expect.count}, state.remediation)]
    gpus = state.report["gpus"] if state.report else []
    models = sorted({g.get("product_name") or "?" for g in gpus})
    evidence = {"expected": expect.count, "present": len(gpus), "models": models,
                "lost": [pci for pci, _ in state.lost]}
    results = []
    for pci, said in state.lost:
        results.append(CheckResult(
            GPU_COUNT, Subject(node, "GPU", pci, (("PCI", pci),)), Status.CRITICAL,
            (f"GPU {pci} is lost (fallen off the bus): nvidia-smi says {said!r}",),
            {"pci": pci, "nvidia_smi": said},
            Remediation(Action.REBOOT, f"power cycle the node through its BMC; if GPU {pci} "
                        "falls off again, reseat the GPU tray and RMA the GPU")))
    problems: list[tuple[str, Remediation]] = []
    if state.lost and state.report is None:
        # nvidia-smi -q stops at a lost GPU without printing the others: their count is not
        # known, the lost one is reported above.
        results.append(CheckResult(GPU_COUNT, subject, Status.CRITICAL,
                                   (f"{len(state.lost)} GPU(s) lost; nvidia-smi -q reports "
                                    "no others while one is lost",), evidence,
                                   results[0].remediation))
        return results
    if len(gpus) != expect.count:
        problems.append((f"{len(gpus)} of {expect.count} GPUs present",
                         Remediation(Action.RESEAT, "a GPU the SKU has is missing: power cycle "
                                     "the node; reseat the GPU tray or baseboard; RMA a GPU "
                                     "that stays missing")))
    wrong = [g for g in gpus if expect.model and g.get("product_name") != expect.model]
    for position, gpu in enumerate(gpus):
        if gpu in wrong:
            problems.append((f"GPU {gpu_index(gpu, position)} is a {gpu.get('product_name')}, "
                             f"not a {expect.model}",
                             Remediation(Action.RMA, "the node does not hold the SKU's GPUs: "
                                         "fix the inventory's SKU or the hardware")))
    results.append(_result(GPU_COUNT, subject, problems, [], [], evidence))
    return results


# --- versions ---------------------------------------------------------------------------------

def _upstream(version: str) -> str:
    """"570.148.08-0ubuntu0.22.04.1" -> "570.148.08": the driver version nvidia-smi prints."""
    version = version.split(":", 1)[-1]
    return version.split("-", 1)[0]


def check_versions(node: str, state: SmiState, manifest: Manifest) -> list[CheckResult]:
    driver_pin = manifest.packages.get("nvidia-driver")
    want_driver = _upstream(driver_pin.version) if driver_pin else None
    vbios = manifest.firmware.get("gpu-vbios")
    want_vbios = vbios.version if vbios else None
    want_inforom = manifest.health.gpu.inforom_image or None
    running = state.report.get("driver_version") if state.report else None
    results = []
    for position, gpu in _gpus(state):
        critical: list[tuple[str, Remediation]] = []
        evidence = {"driver": running, "vbios": gpu.get("vbios_version"),
                    "gsp_firmware": gpu.get("gsp_firmware_version"),
                    "inforom_image": (gpu.get("inforom") or {}).get("image")}
        if want_driver and running != want_driver:
            critical.append((f"driver {running}, not {want_driver}",
                             Remediation(Action.RECONFIGURE, "run bring-up's nvidia stage "
                                         "(it installs the pinned driver), then reboot")))
        if want_vbios and gpu.get("vbios_version") != want_vbios:
            critical.append((f"VBIOS {gpu.get('vbios_version')}, not {want_vbios}",
                             Remediation(Action.REFLASH, "flash the HGX baseboard's firmware "
                                         "bundle (deploy/firmware.py, the vendor's tool)")))
        gsp = gpu.get("gsp_firmware_version")
        # The GSP firmware ships inside the driver: it must be the running driver's.
        if want_driver and gsp is not None and gsp != want_driver:
            critical.append((f"GSP firmware {gsp}, not the driver's {want_driver}",
                             Remediation(Action.REBOOT, "reboot so the driver loads its own "
                                         "GSP firmware")))
        if want_inforom and evidence["inforom_image"] != want_inforom:
            critical.append((f"InfoROM image {evidence['inforom_image']}, not {want_inforom}",
                             Remediation(Action.REFLASH, "update the GPU's InfoROM with the "
                                         "baseboard's firmware bundle")))
        results.append(_result(GPU_VERSIONS, gpu_subject(node, gpu, position), critical, [], [],
                               evidence))
    return results


# --- configuration: persistence, ECC mode, MIG -----------------------------------------------

def check_config(node: str, state: SmiState, manifest: Manifest) -> list[CheckResult]:
    limits = manifest.health.gpu
    results = []
    for position, gpu in _gpus(state):
        critical: list[tuple[str, Remediation]] = []
        unknown: list[str] = []
        ecc = gpu.get("ecc") or {}
        mig = gpu.get("mig_mode") or {}
        evidence = {"persistence_mode": gpu.get("persistence_mode"),
                    "ecc_mode": ecc.get("mode_current"), "ecc_mode_pending":
                    ecc.get("mode_pending"), "mig_mode": mig.get("current")}
        if limits.persistence_mode and gpu.get("persistence_mode") != "Enabled":
            critical.append((f"persistence mode {gpu.get('persistence_mode')}, not Enabled",
                             Remediation(Action.RECONFIGURE, "enable and start "
                                         "nvidia-persistenced (bring-up's nvidia stage)")))
        if ecc.get("mode_current") is None:
            unknown.append("ECC mode not read")
        elif ecc["mode_current"] != "Enabled" or ecc.get("mode_pending") not in (None,
                                                                                   "Enabled"):
            critical.append((f"ECC mode {ecc['mode_current']} (pending "
                             f"{ecc.get('mode_pending')}), not Enabled",
                             Remediation(Action.RECONFIGURE, "nvidia-smi -e 1 on the GPU, then "
                                         "reboot")))
        if mig.get("current") == "Enabled":
            critical.append(("MIG mode Enabled: a training node runs whole GPUs",
                             Remediation(Action.RECONFIGURE, "nvidia-smi -mig 0, then reset "
                                         "the GPU")))
        results.append(_result(GPU_CONFIG, gpu_subject(node, gpu, position), critical, [],
                               unknown, evidence))
    return results


# --- memory: ECC counters, row remapping, retired pages ---------------------------------------

def _sum(counters: dict[str, Any], word: str) -> int | None:
    values = [v for k, v in counters.items() if word in k and isinstance(v, int)
              and not isinstance(v, bool)]
    return sum(values) if values else None


def check_memory(node: str, state: SmiState, manifest: Manifest) -> list[CheckResult]:
    limits = manifest.health.gpu
    results = []
    for position, gpu in _gpus(state):
        index = gpu_index(gpu, position)
        ecc = gpu.get("ecc") or {}
        volatile = ecc.get("volatile") or {}
        rows = gpu.get("remapped_rows") or {}
        pages = gpu.get("retired_pages") or {}
        v_unc, a_unc = ecc.get("volatile_uncorrectable"), ecc.get("aggregate_uncorrectable")
        # "_correctable" also matches the uncorrectable keys: count only the correctable ones
        v_cor = _sum({k: v for k, v in volatile.items() if "uncorrectable" not in k},
                     "correctable")
        retired = sum(v for v in (pages.get("single_bit_ecc"), pages.get("double_bit_ecc"))
                      if isinstance(v, int))
        evidence = {"volatile_uncorrectable": v_unc, "aggregate_uncorrectable": a_unc,
                    "volatile_correctable": v_cor, "volatile": volatile,
                    "remapped_rows": rows, "retired_pages": pages}
        rma = Remediation(Action.RMA, f"drain the node; RMA GPU {index} (its memory is "
                          "failing)")
        reset = Remediation(Action.REBOOT, f"reset GPU {index} (reboot the node) to apply "
                            "the pending row remap; RMA it if remaps keep coming")
        critical: list[tuple[str, Remediation]] = []
        unknown: list[str] = []
        if v_unc is None:
            unknown.append("volatile uncorrectable ECC counters not read")
        elif v_unc > limits.max_uncorrectable_ecc_volatile:
            critical.append((f"{v_unc} volatile uncorrectable ECC error(s) (DRAM "
                             f"{volatile.get('dram_uncorrectable')}, SRAM "
                             f"{_sum(volatile, 'sram_uncorrectable')})",
                             Remediation(Action.REBOOT, f"reset GPU {index} (reboot the node) "
                                         "and run its checks again; RMA it if they return")))
        if a_unc is not None and a_unc > limits.max_uncorrectable_ecc_aggregate:
            critical.append((f"{a_unc} uncorrectable ECC error(s) over the GPU's life", rma))
        if v_cor is not None and v_cor > limits.max_correctable_ecc_volatile:
            critical.append((f"{v_cor} correctable ECC errors since the driver loaded (limit "
                             f"{limits.max_correctable_ecc_volatile}): a straggler",
                             Remediation(Action.RMA, f"drain the node: GPU {index} corrects "
                                         "errors all the time and slows every job; reset it, "
                                         "RMA it if the storm returns")))
        if rows.get("pending") and not limits.allow_remap_pending:
            critical.append(("row remap pending", reset))
        if rows.get("failure") and not limits.allow_remap_failure:
            critical.append(("row remapping failed (no spare rows)", rma))
        unc_rows = rows.get("uncorrectable")
        if isinstance(unc_rows, int) and unc_rows > limits.max_remapped_rows_uncorrectable:
            critical.append((f"{unc_rows} row(s) remapped for uncorrectable errors (limit "
                             f"{limits.max_remapped_rows_uncorrectable})", rma))
        if retired > limits.max_retired_pages:
            critical.append((f"{retired} retired page(s)", rma))
        if pages.get("pending"):
            critical.append(("page retirement pending", reset))
        results.append(_result(GPU_MEMORY, gpu_subject(node, gpu, position), critical, [],
                               unknown, evidence))
    return results


# --- PCIe -------------------------------------------------------------------------------------

def check_pcie(node: str, state: SmiState, manifest: Manifest) -> list[CheckResult]:
    want = manifest.topology.gpu.pcie
    results = []
    if want is None:
        return results
    for position, gpu in _gpus(state):
        index = gpu_index(gpu, position)
        pcie = gpu.get("pcie") or {}
        gen, width = pcie.get("gen_current"), pcie.get("width_current")
        evidence = {"gen": gen, "width": width, "gen_max": pcie.get("gen_max"),
                    "width_max": pcie.get("width_max"), "replays": pcie.get("replays")}
        where = gpu.get("pci_bus_id") or f"GPU {index}"
        reseat = Remediation(Action.RESEAT, f"reseat GPU {index} ({where}) or its baseboard "
                             "connection; RMA it if the link stays narrow or slow")
        critical: list[tuple[str, Remediation]] = []
        unknown = []
        if gen is None:
            unknown.append("PCIe generation not read")
        elif gen != want.gen:
            critical.append((f"PCIe Gen{gen}, not Gen{want.gen}", reseat))
        if width is None:
            unknown.append("PCIe width not read")
        elif width != want.width:
            critical.append((f"PCIe x{width}, not x{want.width}", reseat))
        results.append(_result(GPU_PCIE, gpu_subject(node, gpu, position), critical, [],
                               unknown, evidence))
    return results


# --- clocks, throttling, temperature ----------------------------------------------------------

def check_thermal(node: str, state: SmiState, manifest: Manifest) -> list[CheckResult]:
    limits = manifest.health.gpu
    results = []
    for position, gpu in _gpus(state):
        index = gpu_index(gpu, position)
        active = list(gpu.get("active_clocks_event_reasons") or [])
        temps = gpu.get("temperature") or {}
        temp, mem_temp = temps.get("gpu_current_temp"), temps.get("memory_current_temp")
        evidence = {"clocks_event_reasons": active, "temperature_c": temp,
                    "memory_temperature_c": mem_temp, "clocks": gpu.get("clocks"),
                    "max_clocks": gpu.get("max_clocks")}
        cooling = Remediation(Action.RESEAT, f"GPU {index} is throttled: check the node's "
                              "fans, airflow and the GPU's heatsink; RMA the GPU if it runs "
                              "hot in a cool chassis")
        critical: list[tuple[str, Remediation]] = []
        warn = []
        power = Remediation(Action.CHECK_CABLE, f"GPU {index} is held in power brake: "
                            "check the node's power supplies and power cabling, then the "
                            "baseboard")
        slowed = Remediation(Action.RMA, f"GPU {index}'s own hardware cut its clocks (not "
                             "thermal, not power brake): read its ECC counters and Xids; "
                             "reset it, RMA it if the slowdown returns")
        for reason in active:
            if reason in limits.critical_clock_events:
                why = (cooling if "thermal" in reason or "hw_thermal_slowdown" in active else
                       power if "power_brake" in reason or "hw_power_brake_slowdown" in active
                       else slowed)
                critical.append((f"clocks held down: {reason.replace('_', ' ')} active", why))
            elif reason in limits.warn_clock_events:
                warn.append(f"{reason.replace('_', ' ')} active")
        if isinstance(temp, int) and temp > limits.max_temperature_c:
            critical.append((f"GPU at {temp} C (limit {limits.max_temperature_c} C)", cooling))
        if isinstance(mem_temp, int) and mem_temp > limits.max_memory_temperature_c:
            critical.append((f"memory at {mem_temp} C (limit "
                             f"{limits.max_memory_temperature_c} C)", cooling))
        results.append(_result(GPU_THERMAL, gpu_subject(node, gpu, position), critical, warn,
                               [], evidence, cooling))
    return results


# --- NVLink -----------------------------------------------------------------------------------

def check_nvlink(node: str, state: SmiState, nvlink_text: str,
                 manifest: Manifest) -> list[CheckResult]:
    expect = manifest.topology.gpu.nvlinks_per_gpu
    limits = manifest.health.gpu.nvlink
    if not expect:
        return []
    by_uuid = {g.get("uuid"): (p, g) for p, g in _gpus(state)}
    results = []
    for entry in parse_nvlink(nvlink_text):
        position, gpu = by_uuid.get(entry.get("uuid"), (entry["index"], {}))
        subject = (gpu_subject(node, gpu, position) if gpu else
                   Subject(node, "GPU", str(entry["index"]), (("UUID", entry.get("uuid")),)))
        index = subject.name
        links = entry["links"]
        down = [link["link"] for link in links if link.get("active") is False]
        counters: dict[str, list[int]] = {"crc": [], "replay": [], "recovery": []}
        worst: dict[str, int] = {}
        for link in links:
            errors = link.get("errors") or {}
            for kind in counters:
                value = errors.get(f"{kind}_errors")
                if isinstance(value, int) and value > getattr(limits, f"max_{kind}_errors"):
                    counters[kind].append(link["link"])
                    worst[f"link {link['link']} {kind}"] = value
        evidence = {"links": len(links), "inactive": down, "over_limit": worst}
        cable = Remediation(Action.RESEAT, f"GPU {index}'s NVLinks: reseat the GPU and the "
                            "baseboard's NVLink connectors; RMA the GPU (or the NVSwitch "
                            "tray) if a link stays down or keeps erring")
        critical: list[tuple[str, Remediation]] = []
        if len(links) != expect:
            critical.append((f"{len(links)} NVLinks, not {expect}", cable))
        if down:
            critical.append((f"NVLink(s) {', '.join(map(str, down))} inactive", cable))
        for kind, over in counters.items():
            if over:
                critical.append((f"{kind} errors over the limit "
                                 f"({getattr(limits, f'max_{kind}_errors')}) on link(s) "
                                 f"{', '.join(map(str, over))}", cable))
        results.append(_result(GPU_NVLINK, subject, critical, [], [], evidence))
    missing = set(by_uuid) - {e.get("uuid") for e in parse_nvlink(nvlink_text)}
    for uuid in sorted(u for u in missing if u):
        position, gpu = by_uuid[uuid]
        results.append(CheckResult(GPU_NVLINK, gpu_subject(node, gpu, position),
                                   Status.UNKNOWN, ("nvidia-smi nvlink did not list this GPU",),
                                   {}, Remediation(Action.RETRY, "read nvidia-smi nvlink -s")))
    return results


# --- fabric manager ---------------------------------------------------------------------------

def check_fabric(node: str, state: SmiState, fm_active: str | None,
                 manifest: Manifest) -> list[CheckResult]:
    """NVSwitch systems: the fabric manager runs and every GPU's fabric state is Completed
    (its NVLinks were configured). Without NVSwitches there is nothing to check."""
    if not manifest.topology.gpu.nvswitch_count:
        return []
    start = Remediation(Action.RECONFIGURE, "start nvidia-fabricmanager (its version must be "
                        "the driver's; its log says why it stopped), then reset the GPUs")
    results = [CheckResult(GPU_FABRIC, Subject(node),
                           Status.OK if fm_active == "active" else Status.CRITICAL,
                           () if fm_active == "active" else
                           (f"nvidia-fabricmanager is {fm_active or 'not running'}",),
                           {"fabricmanager": fm_active},
                           None if fm_active == "active" else start)]
    for position, gpu in _gpus(state):
        fabric = gpu.get("fabric") or {}
        evidence = {"state": fabric.get("state"), "status": fabric.get("status")}
        if fabric.get("state") is None:
            results.append(CheckResult(GPU_FABRIC, gpu_subject(node, gpu, position),
                                       Status.UNKNOWN, ("fabric state not read",), evidence,
                                       Remediation(Action.RETRY, "read nvidia-smi -q")))
        elif fabric["state"] != "Completed" or fabric.get("status") not in (None, "Success"):
            results.append(CheckResult(
                GPU_FABRIC, gpu_subject(node, gpu, position), Status.CRITICAL,
                (f"fabric state {fabric['state']}, status {fabric.get('status')}: its NVLinks "
                 "are not set up",), evidence, start))
        else:
            results.append(CheckResult(GPU_FABRIC, gpu_subject(node, gpu, position), Status.OK,
                                       (), evidence))
    return results

"""Simulated `nvidia-smi`: -q, -q -x, --query-gpu, nvlink -s/-e, -r, and the summary table.

The -q layout (sections, their order, key column) is that of driver 535 on an 8×H100 HGX
(tests compare it with a real capture); -q -x follows the same driver's nvsmi_log DTD.
"""

from __future__ import annotations

import sys
import time
from typing import Any
from xml.sax.saxutils import escape

from ..view import View, driver_problem, load_view, run_tool

FABRIC_OK = {"state": "Completed", "status": "Success"}

CUDA_BY_BRANCH = {"535": "12.2", "550": "12.4", "560": "12.6", "565": "12.7", "570": "12.8",
                  "575": "12.9", "580": "13.0"}


class N:
    """One line of -q: `label` in the text, `tag` in the XML (None: absent from that one)."""

    def __init__(
        self,
        label: str | None,
        tag: str | None,
        value: Any = None,
        children: list[N] | None = None,
        flat_xml: bool = False,
    ):
        self.label, self.tag, self.value = label, tag, value
        self.children = children or []
        self.flat_xml = flat_xml  # text nests children under a valued line; XML lists them flat


def _yn(flag: bool) -> str:
    return "Yes" if flag else "No"


def _active(flag: bool) -> str:
    return "Active" if flag else "Not Active"


def _ecc_block(counters: dict[str, int], aggregate: bool) -> list[N]:
    nodes = [
        N("SRAM Correctable", "sram_correctable", counters["sram_correctable"]),
        N("SRAM Uncorrectable Parity", "sram_uncorrectable_parity",
          counters["sram_uncorrectable_parity"]),
        N("SRAM Uncorrectable SEC-DED", "sram_uncorrectable_secded",
          counters["sram_uncorrectable_secded"]),
        N("DRAM Correctable", "dram_correctable", counters["dram_correctable"]),
        N("DRAM Uncorrectable", "dram_uncorrectable", counters["dram_uncorrectable"]),
    ]
    if aggregate:
        nodes.append(N("SRAM Threshold Exceeded", "sram_threshold_exceeded", "No"))
    return nodes


def gpu_tree(gpu: dict[str, Any], driver: str,
             fabric: dict[str, str] | None = None) -> list[N]:
    pcie, rows, temp = gpu["pcie"], gpu["remapped_rows"], gpu["temperature"]
    reasons, clocks, ecc = gpu["clock_event_reasons"], gpu["clocks"], gpu["ecc"]
    bus = gpu["pci_bus_id"]
    mem = gpu["memory"]
    free = mem["total_mib"] - mem["reserved_mib"] - mem["used_mib"]
    hist = rows["histogram"]
    power = gpu["power"]
    limit = f"{power['limit_w']:.2f} W"
    na_power = [N(label, tag, "N/A") for label, tag in (
        ("Power Draw", "power_draw"), ("Current Power Limit", "current_power_limit"),
        ("Requested Power Limit", "requested_power_limit"),
        ("Default Power Limit", "default_power_limit"), ("Min Power Limit", "min_power_limit"),
        ("Max Power Limit", "max_power_limit"))]
    return [
        N("Product Name", "product_name", gpu["name"]),
        N("Product Brand", "product_brand", "NVIDIA"),
        N("Product Architecture", "product_architecture", "Hopper"),
        N("Display Mode", "display_mode", "Enabled"),
        N("Display Active", "display_active", "Disabled"),
        N("Persistence Mode", "persistence_mode", "Enabled"),
        N("Addressing Mode", "addressing_mode", "None"),
        N("MIG Mode", "mig_mode", children=[
            N("Current", "current_mig", "Disabled"), N("Pending", "pending_mig", "Disabled")]),
        N(None, "mig_devices", "None"),
        N("Accounting Mode", "accounting_mode", "Disabled"),
        N("Accounting Mode Buffer Size", "accounting_mode_buffer_size", 4000),
        N("Driver Model", "driver_model", children=[
            N("Current", "current_dm", "N/A"), N("Pending", "pending_dm", "N/A")]),
        N("Serial Number", "serial", gpu["serial"]),
        N("GPU UUID", "uuid", gpu["uuid"]),
        N("Minor Number", "minor_number", gpu["minor"]),
        N("VBIOS Version", "vbios_version", gpu["vbios_version"]),
        N("MultiGPU Board", "multigpu_board", "No"),
        N("Board ID", "board_id", gpu["board_id"]),
        N("Board Part Number", "board_part_number", gpu["board_part_number"]),
        N("GPU Part Number", "gpu_part_number", gpu["gpu_part_number"]),
        N("FRU Part Number", "gpu_fru_part_number", "N/A"),
        N("Module ID", "gpu_module_id", gpu["module_id"]),
        N("Inforom Version", "inforom_version", children=[
            N("Image Version", "img_version", gpu["inforom"]["image"]),
            N("OEM Object", "oem_object", gpu["inforom"]["oem"]),
            N("ECC Object", "ecc_object", gpu["inforom"]["ecc"]),
            N("Power Management Object", "pwr_object", gpu["inforom"]["pwr"])]),
        N("Inforom BBX Object Flush", "inforom_bbx_flush", children=[
            N("Latest Timestamp", "latest_timestamp", gpu["bbx"]["timestamp"]),
            N("Latest Duration", "latest_duration", f"{gpu['bbx']['duration_us']} us")]),
        N("GPU Operation Mode", "gpu_operation_mode", children=[
            N("Current", "current_gom", "N/A"), N("Pending", "pending_gom", "N/A")]),
        N("GSP Firmware Version", "gsp_firmware_version", driver),
        N("GPU Virtualization Mode", "gpu_virtualization_mode", children=[
            N("Virtualization Mode", "virtualization_mode", "None"),
            N("Host VGPU Mode", "host_vgpu_mode", "N/A")]),
        N("GPU Reset Status", "gpu_reset_status", children=[
            N("Reset Required", "reset_required", _yn(rows["pending"])),
            N("Drain and Reset Recommended", "drain_and_reset_recommended", "No")]),
        N("IBMNPU", "ibmnpu", children=[
            N("Relaxed Ordering Mode", "relaxed_ordering_mode", "N/A")]),
        N("PCI", "pci", children=[
            N("Bus", "pci_bus", f"0x{bus[9:11]}"),
            N("Device", "pci_device", "0x00"),
            N("Domain", "pci_domain", "0x0000"),
            N("Device Id", "pci_device_id", gpu["device_id"]),
            N("Bus Id", "pci_bus_id", bus),
            N("Sub System Id", "pci_sub_system_id", gpu["subsystem_id"]),
            N("GPU Link Info", "pci_gpu_link_info", children=[
                N("PCIe Generation", "pcie_gen", children=[
                    N("Max", "max_link_gen", pcie["gen_max"]),
                    N("Current", "current_link_gen", pcie["gen_current"]),
                    N("Device Current", "device_current_link_gen", pcie["gen_current"]),
                    N("Device Max", "max_device_link_gen", pcie["gen_max"]),
                    N("Host Max", "max_host_link_gen", pcie["gen_max"])]),
                N("Link Width", "link_widths", children=[
                    N("Max", "max_link_width", f"{pcie['width_max']}x"),
                    N("Current", "current_link_width", f"{pcie['width_current']}x")])]),
            N("Bridge Chip", "pci_bridge_chip", children=[
                N("Type", "bridge_chip_type", "N/A"), N("Firmware", "bridge_chip_fw", "N/A")]),
            N("Replays Since Reset", "replay_counter", pcie["replays"]),
            N("Replay Number Rollovers", "replay_rollover_counter", 0),
            N("Tx Throughput", "tx_util", f"{pcie['tx_kbs']} KB/s"),
            N("Rx Throughput", "rx_util", f"{pcie['rx_kbs']} KB/s"),
            N("Atomic Caps Inbound", "atomic_caps_inbound", "N/A"),
            N("Atomic Caps Outbound", "atomic_caps_outbound",
              "FETCHADD_32 FETCHADD_64 SWAP_32 SWAP_64 CAS_32 CAS_64")]),
        N("Fan Speed", "fan_speed", "N/A"),
        N("Performance State", "performance_state", "P0"),
        N("Clocks Event Reasons", "clocks_event_reasons", children=[
            N("Idle", "clocks_event_reason_gpu_idle", _active(reasons["idle"])),
            N("Applications Clocks Setting", "clocks_event_reason_applications_clocks_setting",
              _active(reasons["applications_clocks_setting"])),
            N("SW Power Cap", "clocks_event_reason_sw_power_cap",
              _active(reasons["sw_power_cap"])),
            N("HW Slowdown", "clocks_event_reason_hw_slowdown", _active(reasons["hw_slowdown"]),
              flat_xml=True, children=[
                  N("HW Thermal Slowdown", "clocks_event_reason_hw_thermal_slowdown",
                    _active(reasons["hw_thermal_slowdown"])),
                  N("HW Power Brake Slowdown", "clocks_event_reason_hw_power_brake_slowdown",
                    _active(reasons["hw_power_brake_slowdown"]))]),
            N("Sync Boost", "clocks_event_reason_sync_boost", _active(reasons["sync_boost"])),
            N("SW Thermal Slowdown", "clocks_event_reason_sw_thermal_slowdown",
              _active(reasons["sw_thermal_slowdown"])),
            N("Display Clock Setting", "clocks_event_reason_display_clocks_setting",
              _active(reasons["display_clock_setting"]))]),
        N("Sparse Operation Mode", "sparse_operation_mode", "Disabled"),
        N("FB Memory Usage", "fb_memory_usage", children=[
            N("Total", "total", f"{mem['total_mib']} MiB"),
            N("Reserved", "reserved", f"{mem['reserved_mib']} MiB"),
            N("Used", "used", f"{mem['used_mib']} MiB"),
            N("Free", "free", f"{free} MiB")]),
        N("BAR1 Memory Usage", "bar1_memory_usage", children=[
            N("Total", "total", "131072 MiB"), N("Used", "used", "1 MiB"),
            N("Free", "free", "131071 MiB")]),
        N("Conf Compute Protected Memory Usage", "cc_protected_memory_usage", children=[
            N("Total", "total", "0 MiB"), N("Used", "used", "0 MiB"),
            N("Free", "free", "0 MiB")]),
        N("Compute Mode", "compute_mode", "Default"),
        N("Utilization", "utilization", children=[
            N("Gpu", "gpu_util", "0 %"), N("Memory", "memory_util", "0 %"),
            N("Encoder", "encoder_util", "0 %"), N("Decoder", "decoder_util", "0 %"),
            N("JPEG", "jpeg_util", "0 %"), N("OFA", "ofa_util", "0 %")]),
        N("Encoder Stats", "encoder_stats", children=[
            N("Active Sessions", "session_count", 0), N("Average FPS", "average_fps", 0),
            N("Average Latency", "average_latency", 0)]),
        N("FBC Stats", "fbc_stats", children=[
            N("Active Sessions", "session_count", 0), N("Average FPS", "average_fps", 0),
            N("Average Latency", "average_latency", 0)]),
        N("ECC Mode", "ecc_mode", children=[
            N("Current", "current_ecc", ecc["mode"]), N("Pending", "pending_ecc", ecc["mode"])]),
        N("ECC Errors", "ecc_errors", children=[
            N("Volatile", "volatile", children=_ecc_block(ecc["volatile"], False)),
            N("Aggregate", "aggregate", children=_ecc_block(ecc["aggregate"], True)),
            N("Aggregate Uncorrectable SRAM Sources", "aggregate_uncorrectable_sram_sources",
              children=[
                  N("SRAM L2", "sram_l2", ecc["sram_sources"]["l2"]),
                  N("SRAM SM", "sram_sm", ecc["sram_sources"]["sm"]),
                  N("SRAM Microcontroller", "sram_microcontroller",
                    ecc["sram_sources"]["microcontroller"]),
                  N("SRAM PCIE", "sram_pcie", ecc["sram_sources"]["pcie"]),
                  N("SRAM Other", "sram_other", ecc["sram_sources"]["other"])])]),
        N("Retired Pages", "retired_pages", children=[
            N("Single Bit ECC", None, gpu["retired_pages"]["single_bit"]),
            N(None, "multiple_single_bit_retirement", children=[
                N(None, "retired_count", gpu["retired_pages"]["single_bit"]),
                N(None, "retired_pagelist", "N/A")]),
            N("Double Bit ECC", None, gpu["retired_pages"]["double_bit"]),
            N(None, "double_bit_retirement", children=[
                N(None, "retired_count", gpu["retired_pages"]["double_bit"]),
                N(None, "retired_pagelist", "N/A")]),
            N("Pending Page Blacklist", "pending_blacklist", gpu["retired_pages"]["pending"]),
            N(None, "pending_retirement", gpu["retired_pages"]["pending"])]),
        N("Remapped Rows", "remapped_rows", children=[
            N("Correctable Error", "remapped_row_corr", rows["correctable"]),
            N("Uncorrectable Error", "remapped_row_unc", rows["uncorrectable"]),
            N("Pending", "remapped_row_pending", _yn(rows["pending"])),
            N("Remapping Failure Occurred", "remapped_row_failure", _yn(rows["failure"])),
            N("Bank Remap Availability Histogram", "row_remapper_histogram", children=[
                N(label, f"row_remapper_histogram_{key}", f"{hist[key]} bank(s)")
                for label, key in (("Max", "max"), ("High", "high"), ("Partial", "partial"),
                                   ("Low", "low"), ("None", "none"))])]),
        N("Temperature", "temperature", children=[
            N("GPU Current Temp", "gpu_temp", f"{temp['gpu']} C"),
            N("GPU T.Limit Temp", "gpu_temp_tlimit", f"{temp['tlimit']} C"),
            N("GPU Shutdown T.Limit Temp", "gpu_temp_max_tlimit_threshold", "-8 C"),
            N("GPU Slowdown T.Limit Temp", "gpu_temp_slow_tlimit_threshold", "-2 C"),
            N("GPU Max Operating T.Limit Temp", "gpu_temp_max_gpu_tlimit_threshold", "0 C"),
            N("GPU Target Temperature", "gpu_target_temperature", "N/A"),
            N("Memory Current Temp", "memory_temp", f"{temp['memory']} C"),
            N("Memory Max Operating T.Limit Temp", "gpu_temp_max_mem_tlimit_threshold", "0 C")]),
        N(None, "supported_gpu_target_temp", children=[
            N(None, "gpu_target_temp_min", "N/A"), N(None, "gpu_target_temp_max", "N/A")]),
        N("GPU Power Readings", "gpu_power_readings", children=[
            N(None, "power_state", "P0"),
            N("Power Draw", "power_draw", f"{power['draw_w']:.2f} W"),
            N("Current Power Limit", "current_power_limit", limit),
            N("Requested Power Limit", "requested_power_limit", limit),
            N("Default Power Limit", "default_power_limit", limit),
            N("Min Power Limit", "min_power_limit", "200.00 W"),
            N("Max Power Limit", "max_power_limit", limit)]),
        N("Module Power Readings", "module_power_readings",
          children=[N(None, "power_state", "P0"), *na_power]),
        N("Clocks", "clocks", children=[
            N("Graphics", "graphics_clock", f"{clocks['graphics']} MHz"),
            N("SM", "sm_clock", f"{clocks['sm']} MHz"),
            N("Memory", "mem_clock", f"{clocks['memory']} MHz"),
            N("Video", "video_clock", f"{clocks['video']} MHz")]),
        N("Applications Clocks", "applications_clocks", children=[
            N("Graphics", "graphics_clock", f"{clocks['max_graphics']} MHz"),
            N("Memory", "mem_clock", f"{clocks['max_memory']} MHz")]),
        N("Default Applications Clocks", "default_applications_clocks", children=[
            N("Graphics", "graphics_clock", f"{clocks['max_graphics']} MHz"),
            N("Memory", "mem_clock", f"{clocks['max_memory']} MHz")]),
        N("Deferred Clocks", "deferred_clocks", children=[N("Memory", "mem_clock", "N/A")]),
        N("Max Clocks", "max_clocks", children=[
            N("Graphics", "graphics_clock", f"{clocks['max_graphics']} MHz"),
            N("SM", "sm_clock", f"{clocks['max_graphics']} MHz"),
            N("Memory", "mem_clock", f"{clocks['max_memory']} MHz"),
            N("Video", "video_clock", f"{clocks['max_video']} MHz")]),
        N("Max Customer Boost Clocks", "max_customer_boost_clocks", children=[
            N("Graphics", "graphics_clock", f"{clocks['max_graphics']} MHz")]),
        N("Clock Policy", "clock_policy", children=[
            N("Auto Boost", "auto_boost", "N/A"),
            N("Auto Boost Default", "auto_boost_default", "N/A")]),
        N("Voltage", "voltage", children=[
            N("Graphics", "graphics_volt", f"{gpu['voltage_mv']:.3f} mV")]),
        N("Fabric", "fabric", children=[
            N("State", "state", (fabric or FABRIC_OK)["state"]),
            N("Status", "status", (fabric or FABRIC_OK)["status"])]),
        N("Processes", "processes", "None"),
        N(None, "accounted_processes", ""),
    ]


def _text_lines(nodes: list[N], depth: int) -> list[str]:
    out = []
    for node in nodes:
        if node.label is None:
            continue
        key = "    " * depth + node.label
        if node.value is not None:
            out.append(f"{key.ljust(42)}: {node.value}")
        else:
            out.append(key)
        out += _text_lines(node.children, depth + 1)
    return out


def _xml_lines(nodes: list[N], depth: int) -> list[str]:
    out = []
    pad = "\t" * depth
    for node in nodes:
        if node.tag is None:
            continue
        if node.tag in ("processes", "accounted_processes", "mig_devices"):
            # what the real tool prints for an empty list
            inner = "\t\t\tNone\n" if node.tag == "mig_devices" else ""
            out.append(f"{pad}<{node.tag}>\n{inner}{pad}</{node.tag}>")
        elif node.children and not node.flat_xml:
            out.append(f"{pad}<{node.tag}>")
            out += _xml_lines(node.children, depth + 1)
            out.append(f"{pad}</{node.tag}>")
        else:
            out.append(f"{pad}<{node.tag}>{escape(str(node.value))}</{node.tag}>")
            out += _xml_lines(node.children, depth)
    return out


def _timestamp() -> str:
    return time.strftime("%a %b %d %H:%M:%S %Y")


def cuda_version(driver: str) -> str:
    return CUDA_BY_BRANCH.get(driver.split(".")[0], "12.8")


def query_text(view: View, gpus: list[dict[str, Any]]) -> str:
    driver = view.loaded_driver or ""
    out = ["", "==============NVSMI LOG==============", "",
           f"{'Timestamp'.ljust(42)}: {_timestamp()}",
           f"{'Driver Version'.ljust(42)}: {driver}",
           f"{'CUDA Version'.ljust(42)}: {cuda_version(driver)}", "",
           f"{'Attached GPUs'.ljust(42)}: {len(view.all_gpus)}"]
    for n, gpu in enumerate(gpus):
        if n:
            out.append("")
        out.append(f"GPU {gpu['pci_bus_id']}")
        out += _text_lines(gpu_tree(gpu, driver, view.profile["sim"]["fabric"]), 1)
    return "\n".join(out) + "\n"


def query_xml(view: View, gpus: list[dict[str, Any]]) -> str:
    driver = view.loaded_driver or ""
    out = ['<?xml version="1.0" ?>',
           '<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_v12.dtd">',
           "<nvidia_smi_log>",
           f"\t<timestamp>{_timestamp()}</timestamp>",
           f"\t<driver_version>{driver}</driver_version>",
           f"\t<cuda_version>{cuda_version(driver)}</cuda_version>",
           f"\t<attached_gpus>{len(view.all_gpus)}</attached_gpus>"]
    for gpu in gpus:
        out.append(f'\t<gpu id="{gpu["pci_bus_id"]}">')
        out += _xml_lines(gpu_tree(gpu, driver, view.profile["sim"]["fabric"]), 2)
        out.append("\t</gpu>")
    out += ["", "</nvidia_smi_log>"]
    return "\n".join(out) + "\n"


def _ecc_total(gpu: dict[str, Any], which: str, corrected: bool) -> int:
    c = gpu["ecc"][which]
    if corrected:
        return c["sram_correctable"] + c["dram_correctable"]
    return c["sram_uncorrectable_parity"] + c["sram_uncorrectable_secded"] + c[
        "dram_uncorrectable"]


def _reasons_mask(gpu: dict[str, Any]) -> str:
    bits = {"idle": 0x1, "applications_clocks_setting": 0x2, "sw_power_cap": 0x4,
            "hw_slowdown": 0x8, "sync_boost": 0x10, "sw_thermal_slowdown": 0x20,
            "hw_thermal_slowdown": 0x40, "hw_power_brake_slowdown": 0x80,
            "display_clock_setting": 0x100}
    mask = sum(bit for name, bit in bits.items() if gpu["clock_event_reasons"][name])
    return f"0x{mask:016X}"


# field -> (header unit or "", value function); aliases map to these names
def _fields(view: View) -> dict[str, tuple[str, Any]]:
    driver = view.loaded_driver or ""
    return {
        "timestamp": ("", lambda g: time.strftime("%Y/%m/%d %H:%M:%S.000")),
        "driver_version": ("", lambda g: driver),
        "count": ("", lambda g: str(len(view.all_gpus))),
        "index": ("", lambda g: str(g["index"])),
        "name": ("", lambda g: g["name"]),
        "serial": ("", lambda g: g["serial"]),
        "uuid": ("", lambda g: g["uuid"]),
        "pci.bus_id": ("", lambda g: g["pci_bus_id"]),
        "pci.bus": ("", lambda g: f"0x{g['pci_bus_id'][9:11]}"),
        "pci.device_id": ("", lambda g: g["device_id"]),
        "pci.sub_device_id": ("", lambda g: g["subsystem_id"]),
        "vbios_version": ("", lambda g: g["vbios_version"]),
        "inforom.img": ("", lambda g: g["inforom"]["image"]),
        "inforom.oem": ("", lambda g: g["inforom"]["oem"]),
        "inforom.ecc": ("", lambda g: g["inforom"]["ecc"]),
        "inforom.pwr": ("", lambda g: "[N/A]"),
        "module_id": ("", lambda g: str(g["module_id"])),
        "persistence_mode": ("", lambda g: "Enabled"),
        "pstate": ("", lambda g: "P0"),
        "fan.speed": ("%", lambda g: "[N/A]"),
        "memory.total": ("MiB", lambda g: f"{g['memory']['total_mib']} MiB"),
        "memory.reserved": ("MiB", lambda g: f"{g['memory']['reserved_mib']} MiB"),
        "memory.used": ("MiB", lambda g: f"{g['memory']['used_mib']} MiB"),
        "memory.free": ("MiB", lambda g: f"{g['memory']['total_mib'] - g['memory']['reserved_mib'] - g['memory']['used_mib']} MiB"),  # noqa: E501
        "utilization.gpu": ("%", lambda g: "0 %"),
        "utilization.memory": ("%", lambda g: "0 %"),
        "temperature.gpu": ("", lambda g: str(g["temperature"]["gpu"])),
        "temperature.memory": ("", lambda g: str(g["temperature"]["memory"])),
        "power.draw": ("W", lambda g: f"{g['power']['draw_w']:.2f} W"),
        "power.limit": ("W", lambda g: f"{g['power']['limit_w']:.2f} W"),
        "clocks.current.graphics": ("MHz", lambda g: f"{g['clocks']['graphics']} MHz"),
        "clocks.current.sm": ("MHz", lambda g: f"{g['clocks']['sm']} MHz"),
        "clocks.current.memory": ("MHz", lambda g: f"{g['clocks']['memory']} MHz"),
        "clocks.current.video": ("MHz", lambda g: f"{g['clocks']['video']} MHz"),
        "clocks.max.graphics": ("MHz", lambda g: f"{g['clocks']['max_graphics']} MHz"),
        "clocks.max.sm": ("MHz", lambda g: f"{g['clocks']['max_graphics']} MHz"),
        "clocks.max.memory": ("MHz", lambda g: f"{g['clocks']['max_memory']} MHz"),
        "clocks_event_reasons.active": ("", _reasons_mask),
        "clocks_event_reasons.hw_slowdown": (
            "", lambda g: _active(g["clock_event_reasons"]["hw_slowdown"])),
        "clocks_event_reasons.hw_thermal_slowdown": (
            "", lambda g: _active(g["clock_event_reasons"]["hw_thermal_slowdown"])),
        "clocks_event_reasons.sw_thermal_slowdown": (
            "", lambda g: _active(g["clock_event_reasons"]["sw_thermal_slowdown"])),
        "ecc.mode.current": ("", lambda g: g["ecc"]["mode"]),
        "ecc.mode.pending": ("", lambda g: g["ecc"]["mode"]),
        "ecc.errors.corrected.volatile.total": ("", lambda g: str(_ecc_total(g, "volatile", True))),
        "ecc.errors.corrected.aggregate.total": (
            "", lambda g: str(_ecc_total(g, "aggregate", True))),
        "ecc.errors.uncorrected.volatile.total": (
            "", lambda g: str(_ecc_total(g, "volatile", False))),
        "ecc.errors.uncorrected.aggregate.total": (
            "", lambda g: str(_ecc_total(g, "aggregate", False))),
        "ecc.errors.uncorrected.volatile.dram": (
            "", lambda g: str(g["ecc"]["volatile"]["dram_uncorrectable"])),
        "ecc.errors.uncorrected.aggregate.dram": (
            "", lambda g: str(g["ecc"]["aggregate"]["dram_uncorrectable"])),
        "retired_pages.single_bit_ecc.count": ("", lambda g: "[N/A]"),
        "retired_pages.double_bit.count": ("", lambda g: "[N/A]"),
        "retired_pages.pending": ("", lambda g: "[N/A]"),
        "remapped_rows.correctable": ("", lambda g: str(g["remapped_rows"]["correctable"])),
        "remapped_rows.uncorrectable": ("", lambda g: str(g["remapped_rows"]["uncorrectable"])),
        "remapped_rows.pending": ("", lambda g: _yn(g["remapped_rows"]["pending"])),
        "remapped_rows.failure": ("", lambda g: _yn(g["remapped_rows"]["failure"])),
        "pcie.link.gen.current": ("", lambda g: str(g["pcie"]["gen_current"])),
        "pcie.link.gen.max": ("", lambda g: str(g["pcie"]["gen_max"])),
        "pcie.link.width.current": ("", lambda g: str(g["pcie"]["width_current"])),
        "pcie.link.width.max": ("", lambda g: str(g["pcie"]["width_max"])),
        "fabric.state": ("", lambda g: view.profile["sim"]["fabric"]["state"]),
        "fabric.status": ("", lambda g: view.profile["sim"]["fabric"]["status"]),
    }


ALIASES = {
    "gpu_name": "name", "gpu_serial": "serial", "gpu_uuid": "uuid", "gpu_bus_id": "pci.bus_id",
    "persistence-mode": "persistence_mode", "clocks.gr": "clocks.current.graphics",
    "clocks.sm": "clocks.current.sm", "clocks.mem": "clocks.current.memory",
    "clocks.video": "clocks.current.video", "clocks.max.gr": "clocks.max.graphics",
    "clocks.max.mem": "clocks.max.memory", "inforom.image": "inforom.img",
    "pcie.link.gen.gpucurrent": "pcie.link.gen.current",
    "clocks_throttle_reasons.active": "clocks_event_reasons.active",
    "retired_pages.sbe": "retired_pages.single_bit_ecc.count",
    "retired_pages.dbe": "retired_pages.double_bit.count", "power.draw.instant": "power.draw",
}


def query_csv(view: View, gpus: list[dict[str, Any]], fields_arg: str, fmt: str) -> tuple[str, int]:
    opts = {part.strip() for part in fmt.split(",")}
    if "csv" not in opts or opts - {"csv", "noheader", "nounits"}:
        return f'"{fmt}" is not a valid format.\n', 2
    table = _fields(view)
    names = [name.strip() for name in fields_arg.split(",") if name.strip()]
    for name in names:
        if ALIASES.get(name, name) not in table:
            return f'Field "{name}" is not a valid field to query.\n\n', 2
    lines = []
    if "noheader" not in opts:
        headers = []
        for name in names:
            unit = table[ALIASES.get(name, name)][0]
            headers.append(f"{name} [{unit}]" if unit and "nounits" not in opts else name)
        lines.append(", ".join(headers))
    for gpu in gpus:
        values = []
        for name in names:
            unit, fn = table[ALIASES.get(name, name)]
            value = fn(gpu)
            if "nounits" in opts and unit and value.endswith(f" {unit}"):
                value = value[: -len(unit) - 1]
            values.append(value)
        lines.append(", ".join(values))
    return "\n".join(lines) + "\n", 0


def nvlink(view: View, gpus: list[dict[str, Any]], what: str) -> str:
    out = []
    for gpu in gpus:
        out.append(f"GPU {gpu['index']}: {gpu['name']} (UUID: {gpu['uuid']})")
        for link in gpu["nvlinks"]:
            n = link["link"]
            if what == "status":
                speed = f"{link['speed_gbs']:.3f} GB/s" if link["active"] else "<inactive>"
                out.append(f"         Link {n}: {speed}")
            else:
                errors = link["errors"]
                out.append(f"         Link {n}: Replay Errors: {errors['replay']}")
                out.append(f"         Link {n}: Recovery Errors: {errors['recovery']}")
                out.append(f"         Link {n}: CRC Errors: {errors['crc']}")
    return "\n".join(out) + "\n"


def summary(view: View, gpus: list[dict[str, Any]] | None = None) -> str:
    driver = view.loaded_driver or ""
    bar = "+-----------------------------------------------------------------------------------------+"  # noqa: E501
    sep = "+-----------------------------------------+------------------------+----------------------+"  # noqa: E501
    out = [time.strftime("%a %b %d %H:%M:%S %Y"), bar,
           f"| NVIDIA-SMI {driver:<22} Driver Version: {driver:<14} CUDA Version: "
           f"{cuda_version(driver):<8} |",
           sep.replace("+", "|", 1)[:-1] + "|",
           "| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |",  # noqa: E501
           "| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |",  # noqa: E501
           "|                                         |                        |               MIG M. |",  # noqa: E501
           "|=========================================+========================+======================|"]  # noqa: E501
    for gpu in view.gpus if gpus is None else gpus:
        ecc = _ecc_total(gpu, "volatile", False)
        power = f"{round(gpu['power']['draw_w'])}W /  {round(gpu['power']['limit_w'])}W"
        mem = f"{gpu['memory']['used_mib']}MiB /  {gpu['memory']['total_mib']}MiB"
        out.append(f"|   {gpu['index']}  {gpu['name']:<25}      On  |   {gpu['pci_bus_id']} Off |"
                   f"{ecc:>21} |")
        out.append(f"| N/A   {gpu['temperature']['gpu']}C    P0  {power:>22} |"
                   f"{mem:>23} |      0%      Default |")
        out.append("|                                         |                        |"
                   "             Disabled |")
        out.append(sep)
    out += ["", bar, "| Processes:                                                                              |",  # noqa: E501
            "|  GPU   GI   CI              PID   Type   Process name                        GPU Memory |",  # noqa: E501
            "|        ID   ID                                                               Usage      |",  # noqa: E501
            "|=========================================================================================|",  # noqa: E501
            "|  No running processes found                                                             |",  # noqa: E501
            bar]
    return "\n".join(out) + "\n"


def _select(view: View, ids: str | None) -> list[dict[str, Any]] | None:
    """The GPUs `-i` names (all of them without -i), lost ones included."""
    if ids is None:
        return view.all_gpus
    chosen = []
    for part in ids.split(","):
        part = part.strip()
        match = [g for g in view.all_gpus if part in (str(g["index"]), g["uuid"], g["serial"],
                                                       g["pci_bus_id"])]
        if not match:
            return None
        chosen += match
    return chosen


def list_gpus(gpus: list[dict[str, Any]], lost: set[int] | frozenset[int] = frozenset()) -> str:
    """`nvidia-smi -L`: one line per GPU, "GPU i: <name> (UUID: GPU-...)"; a GPU whose
    handle NVML cannot get has an error line in its place, spelled "for gpu 0000:01:00.0"
    (lower case, a space: NVIDIA/open-gpu-kernel-modules issue 246, whose GPU field other
    issues fill with -L's "GPU 0: …" lines). That -L goes on with the other GPUs is the
    lab's reading (no capture of a multi-GPU -L with a lost GPU was found)."""
    out = []
    for g in gpus:
        if g["index"] in lost:
            out.append(f"Unable to determine the device handle for gpu {_bus4(g)}: "
                       f"{LOST_GPU_ERROR}\n")
        else:
            out.append(f"GPU {g['index']}: {g['name']} (UUID: {g['uuid']})\n")
    return "".join(out)


# A GPU that fell off the bus (the gpu-lost fault). What nvidia-smi prints then, from real
# captures: driver 535.161.07 after an Xid 79 (akash-network/support issue 209) printed
# only "Unable to determine the device handle for GPU0000:A1:00.0: Unknown Error" for a
# plain `nvidia-smi`, and 560 the same line and nothing else (meta-llama/llama-models issue
# 200): nvidia-smi gets every GPU's handle before it prints, so one lost GPU fails the
# whole command, -q and the other queries alike; the remaining GPUs are not printed.
# `-i` naming only healthy GPUs still works (the lost one's handle is never asked for).
# The exit status is not in those captures: nvidia-smi's documented status for an error
# it has no own code for ("Other error or internal driver error occurred") is 255.
LOST_GPU_ERROR = "Unknown Error"
LOST_GPU_STATUS = 255


def _bus4(gpu: dict[str, Any]) -> str:
    """The bus id as the handle error spells it: a 4-digit domain (0000:9B:00.0)."""
    return gpu["pci_bus_id"][4:]


def lost_gpu_message(gpu: dict[str, Any]) -> str:
    return f"Unable to determine the device handle for GPU{_bus4(gpu)}: {LOST_GPU_ERROR}\n"


def _main(argv: list[str]) -> int:
    args = list(argv)
    ids = None
    rest = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-i", "--id") and i + 1 < len(args):
            ids = args[i + 1]
            i += 2
            continue
        if arg.startswith("--id="):
            ids = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    view = load_view()
    problem = driver_problem(view)
    if problem is not None:
        sys.stdout.write(problem[0])
        return problem[1]
    gpus = _select(view, ids)
    if gpus is None:
        sys.stdout.write("No devices were found\n")
        return 6
    lost = {g["index"] for g in view.lost_gpus}
    if rest and rest[0] in ("-L", "--list-gpus"):
        sys.stdout.write(list_gpus(gpus, lost))
        return LOST_GPU_STATUS if any(g["index"] in lost for g in gpus) else 0
    failed = next((g for g in gpus if g["index"] in lost), None)
    if failed is not None:
        sys.stdout.write(lost_gpu_message(failed))
        return LOST_GPU_STATUS
    if not rest:
        sys.stdout.write(summary(view, gpus))
        return 0
    if rest[0] == "nvlink":
        if "-s" in rest or "--status" in rest:
            sys.stdout.write(nvlink(view, gpus, "status"))
            return 0
        if "-e" in rest or "--errorcounters" in rest:
            sys.stdout.write(nvlink(view, gpus, "errors"))
            return 0
        sys.stdout.write("Invalid combination of input arguments. Please run "
                         "'nvidia-smi nvlink -h' for help.\n")
        return 2
    if "-r" in rest or "--gpu-reset" in rest:
        for gpu in gpus:
            sys.stdout.write(f"GPU {gpu['pci_bus_id']} was successfully reset.\n")
        if ids is None:
            sys.stdout.write("All done.\n")
        return 0
    query = next((a.split("=", 1)[1] for a in rest if a.startswith("--query-gpu=")), None)
    if query is not None:
        fmt = next((a.split("=", 1)[1] for a in rest if a.startswith("--format=")), None)
        if fmt is None:
            sys.stdout.write('Option "--format" is mandatory when used with "--query-gpu".\n')
            return 2
        text, status = query_csv(view, gpus, query, fmt)
        sys.stdout.write(text)
        return status
    if "-q" in rest or "--query" in rest:
        xml = "-x" in rest or "--xml-format" in rest
        sys.stdout.write(query_xml(view, gpus) if xml else query_text(view, gpus))
        return 0
    sys.stdout.write(f"Invalid combination of input arguments: {' '.join(rest)}\n"
                     "Please run 'nvidia-smi -h' for help.\n")
    return 2


def main(argv: list[str] | None = None) -> int:
    return run_tool(_main, argv)

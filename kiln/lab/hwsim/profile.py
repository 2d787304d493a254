"""A node's simulated hardware, generated deterministically from (lab seed, node name).

The same seed and node name always give the same profile, so a lab rebuilt from scratch has
the same serials, UUIDs and GUIDs, and a test can name them. `profile.json` schema (version 1):

    schema: 1
    node, index, role ("gpu" | "service"), seed
    system:   {manufacturer, product, board, serial}
    firmware: {bios, bmc}                      BIOS and BMC versions (flash content)
    bios_attributes: {NAME: value}             the BIOS setup in effect (Redfish Bios
                                               Attributes; a profile without it is at
                                               `BIOS_ATTRIBUTES`)
    mgmt_nic: {name, model, driver, mac, pci_bdf, firmware}
    gpus:     [ {index, name, serial, uuid, pci_bus_id, minor, module_id, board_id,
                 board_part_number, gpu_part_number, device_id, subsystem_id,
                 vbios_version, inforom: {image, oem, ecc, pwr},
                 bbx: {timestamp, duration_us},
                 pcie: {gen_max, gen_current, width_max, width_current,
                        replays, tx_kbs, rx_kbs},
                 clock_event_reasons: {idle, applications_clocks_setting, sw_power_cap,
                        hw_slowdown, hw_thermal_slowdown, hw_power_brake_slowdown,
                        sync_boost, sw_thermal_slowdown, display_clock_setting}  (bool)
                 memory: {total_mib, reserved_mib, used_mib},
                 ecc: {mode, volatile: {sram_correctable, sram_uncorrectable_parity,
                        sram_uncorrectable_secded, dram_correctable, dram_uncorrectable},
                        aggregate: {same keys}, sram_sources: {l2, sm, microcontroller,
                        pcie, other}},
                 retired_pages: {single_bit, double_bit, pending}  ("N/A" on H100)
                 remapped_rows: {correctable, uncorrectable, pending, failure,
                        histogram: {max, high, partial, low, none}},
                 temperature: {gpu, tlimit, memory},  power: {draw_w, limit_w},
                 clocks: {graphics, sm, memory, video, max_graphics, max_memory,
                        max_video}  (MHz)
                 voltage_mv,
                 nvlinks: [ {link, active, speed_gbs, errors: {replay, recovery, crc}} ] ]
    nvswitches: [ {index, pci_bus_id} ]
    hcas:     [ {name, ca_type, part_number, description, psid, fw_version, pxe_version,
                 uefi_version, node_guid, sys_image_guid, pci_bdf, mst_device,
                 pcie: {gen, width_max, width_current},
                 mlxconfig: {NAME: value-name},      the configuration active now
                 ports: [ {port, state, phys_state, rate, link_layer, lid, sm_lid, lmc,
                           capability_mask, port_guid} ] } ]
    boot_log: [ [seconds, line] ]              kernel lines of a clean boot (no driver
                                               lines: those depend on boot.json)

GUIDs are hex strings "0x…" (as ibstat prints them). Service nodes have no GPUs, HCAs or
NVSwitches. Firmware versions come from `FIRMWARE` ("golden", what firmware/lab.yaml pins)
or `OLD_FIRMWARE` (an older release the firmware stage must update).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

SCHEMA = 1
DEFAULT_SEED = "kiln-lab"
# The kernel of the lab's image, as MAAS deploys a SKU's pinned kernel with its image: what a
# node boots while no other kernel is installed (the newest of lab/vendor's KERNEL_RELEASES).
IMAGE_KERNEL = "6.1.0-28-kilnlab"

# Versions the lab's hardware and firmware blobs know; firmware/lab.yaml pins the first set.
FIRMWARE = {
    "bios": "1.6.2",
    "bmc": "1.08.00",
    "connectx7": "28.43.1014",
    "gpu-vbios": "96.00.74.00.0D",
}
OLD_FIRMWARE = {
    "bios": "1.5.0",
    "bmc": "1.06.00",
    "connectx7": "28.39.1002",
    "gpu-vbios": "96.00.61.00.01",
}
# Every version a lab firmware blob may carry (checked when the lab applies a flashed blob).
KNOWN_FIRMWARE = {
    "bios": ["1.5.0", "1.6.2"],
    "bmc": ["1.06.00", "1.08.00"],
    "connectx7": ["28.39.1002", "28.41.1000", "28.43.1014"],
    "gpu-vbios": ["96.00.61.00.01", "96.00.74.00.0D"],
}

# The BIOS setup a node ships with, by the names its BMC's Redfish Bios resource uses (Dell
# style, as the DMTF mockups). firmware/lab.yaml pins SriovGlobalEnable and PcieAcsControl;
# the rest are settings an HGX H100 BIOS has that nothing pins.
BIOS_ATTRIBUTES: dict[str, str | int | bool] = {
    "BootMode": "Uefi",
    "LogicalProc": "Enabled",
    "MmioAbove4Gb": "Enabled",
    "NumaGroupSizeOpt": "Clustered",
    "PcieAcsControl": "Disabled",
    "ProcCStates": "Enabled",
    "ProcCoreDisable": 0,
    "ProcTurboMode": "Enabled",
    "SriovGlobalEnable": "Disabled",
}
_ENABLED = ("Enabled", "Disabled")
# The values each attribute accepts: names, or a range of integers.
BIOS_CHOICES: dict[str, tuple[str, ...] | range] = {
    "BootMode": ("Uefi", "Legacy"),
    "LogicalProc": _ENABLED,
    "MmioAbove4Gb": _ENABLED,
    "NumaGroupSizeOpt": ("Clustered", "Flat"),
    "PcieAcsControl": _ENABLED,
    "ProcCStates": _ENABLED,
    "ProcCoreDisable": range(0, 56),  # cores per socket of a Xeon Platinum 8480+
    "ProcTurboMode": _ENABLED,
    "SriovGlobalEnable": _ENABLED,
}
# In the node's flash spool: BIOS settings its BMC accepted, applied by the next boot.
BIOS_PENDING = "bios-settings-pending.json"

GPU_NAME = "NVIDIA H100 80GB HBM3"
# The PCI buses and module ids of the eight GPUs of a real HGX H100 board (as nvidia-smi -q
# prints them on one, tests/fixtures of 535.161.08); the HCA beside each GPU sits one bus up.
GPU_BUSES = [0x19, 0x3B, 0x4C, 0x5D, 0x9B, 0xBB, 0xCB, 0xDB]
GPU_MODULE_IDS = [2, 4, 1, 3, 7, 5, 6, 8]
NVSWITCH_BUSES = [0x05, 0x06, 0x07, 0x08]
NVLINKS_PER_GPU = 18
NVLINK_SPEED_GBS = 26.562
HCA_COUNT = 8
HCA_RATE = 400

# The CX7 configuration a fresh card ships with (mlxconfig names and their value names).
MLXCONFIG_DEFAULTS = {
    "MEMIC_BAR_SIZE": "0",
    "MEMIC_SIZE_LIMIT": "_256KB(1)",
    "HOST_CHAINING_MODE": "DISABLED(0)",
    "NUM_OF_VFS": "0",
    "SRIOV_EN": "False(0)",
    "LINK_TYPE_P1": "IB(1)",
    "PCI_ATOMIC_MODE": "PCI_ATOMIC_DISABLED_EXT_ATOMIC_ENABLED(0)",
    "ADVANCED_PCI_SETTINGS": "False(0)",
    "SAFE_MODE_THRESHOLD": "10",
    "SAFE_MODE_ENABLE": "True(1)",
    "ROCE_CC_PRIO_MASK_P1": "255",
    "CNP_DSCP_P1": "48",
    "KEEP_IB_LINK_UP_P1": "False(0)",
    "EXP_ROM_UEFI_x86_ENABLE": "True(1)",
    "EXP_ROM_PXE_ENABLE": "True(1)",
}
# Which values each configurable name accepts: value name -> number, as mlxconfig prints.
MLXCONFIG_CHOICES: dict[str, dict[str, int] | None] = {
    "SRIOV_EN": {"False": 0, "True": 1},
    "LINK_TYPE_P1": {"IB": 1, "ETH": 2},
    "ADVANCED_PCI_SETTINGS": {"False": 0, "True": 1},
    "SAFE_MODE_ENABLE": {"False": 0, "True": 1},
    "KEEP_IB_LINK_UP_P1": {"False": 0, "True": 1},
    "EXP_ROM_UEFI_x86_ENABLE": {"False": 0, "True": 1},
    "EXP_ROM_PXE_ENABLE": {"False": 0, "True": 1},
    "HOST_CHAINING_MODE": {"DISABLED": 0, "BASIC": 1},
    "MEMIC_SIZE_LIMIT": {"_256KB": 1, "_512KB": 2, "_1MB": 3},
    "PCI_ATOMIC_MODE": {
        "PCI_ATOMIC_DISABLED_EXT_ATOMIC_ENABLED": 0,
        "PCI_ATOMIC_ENABLED_EXT_ATOMIC_DISABLED": 1,
    },
    "NUM_OF_VFS": None,  # plain numbers
    "MEMIC_BAR_SIZE": None,
    "SAFE_MODE_THRESHOLD": None,
    "ROCE_CC_PRIO_MASK_P1": None,
    "CNP_DSCP_P1": None,
}


def _rng(seed: str, node: str, what: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}/{node}/{what}".encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


def _hex(rng: random.Random, digits: int) -> str:
    return f"{rng.getrandbits(digits * 4):0{digits}x}"


def _uuid(rng: random.Random) -> str:
    return f"GPU-{_hex(rng, 8)}-{_hex(rng, 4)}-{_hex(rng, 4)}-{_hex(rng, 4)}-{_hex(rng, 12)}"


def _gpu(rng: random.Random, i: int, vbios: str) -> dict[str, Any]:
    bus = GPU_BUSES[i]
    return {
        "index": i,
        "name": GPU_NAME,
        "serial": f"1650124{rng.randrange(0, 10**6):06d}",
        "uuid": _uuid(rng),
        "pci_bus_id": f"00000000:{bus:02X}:00.0",
        "minor": i,
        "module_id": GPU_MODULE_IDS[i],
        "board_id": f"0x{bus:02x}00",
        "board_part_number": "692-2G520-0200-000",
        "gpu_part_number": "2330-885-A1",
        "device_id": "0x233010DE",
        "subsystem_id": "0x16C110DE",
        "vbios_version": vbios,
        "inforom": {"image": "G520.0200.00.05", "oem": "2.1", "ecc": "7.16", "pwr": "N/A"},
        "bbx": {
            "timestamp": f"2025/03/0{1 + i % 9} 0{rng.randrange(10)}:{rng.randrange(60):02d}:"
            f"{rng.randrange(60):02d}.{rng.randrange(1000):03d}",
            "duration_us": rng.randrange(80000, 100000),
        },
        "pcie": {
            "gen_max": 5,
            "gen_current": 5,
            "width_max": 16,
            "width_current": 16,
            "replays": rng.randrange(0, 90),
            "tx_kbs": rng.randrange(400, 4000),
            "rx_kbs": rng.randrange(400, 900),
        },
        "clock_event_reasons": {
            "idle": True,
            "applications_clocks_setting": False,
            "sw_power_cap": False,
            "hw_slowdown": False,
            "hw_thermal_slowdown": False,
            "hw_power_brake_slowdown": False,
            "sync_boost": False,
            "sw_thermal_slowdown": False,
            "display_clock_setting": False,
        },
        "memory": {"total_mib": 81559, "reserved_mib": 551, "used_mib": 0},
        "ecc": {
            "mode": "Enabled",
            "volatile": _ecc_counters(),
            "aggregate": _ecc_counters(),
            "sram_sources": {"l2": 0, "sm": 0, "microcontroller": 0, "pcie": 0, "other": 0},
        },
        "retired_pages": {"single_bit": "N/A", "double_bit": "N/A", "pending": "N/A"},
        "remapped_rows": {
            "correctable": 0,
            "uncorrectable": 0,
            "pending": False,
            "failure": False,
            "histogram": {"max": 2560, "high": 0, "partial": 0, "low": 0, "none": 0},
        },
        "temperature": {
            "gpu": rng.randrange(27, 36),
            "tlimit": rng.randrange(52, 60),
            "memory": rng.randrange(35, 42),
        },
        "power": {"draw_w": round(rng.uniform(64.0, 75.0), 2), "limit_w": 700.0},
        "clocks": {
            # an idle GPU: nothing runs until burn-in does
            "graphics": 345,
            "sm": 345,
            "memory": 2619,
            "video": 765,
            "max_graphics": 1980,
            "max_memory": 2619,
            "max_video": 1545,
        },
        "voltage_mv": 670.0,
        "nvlinks": [
            {
                "link": link,
                "active": True,
                "speed_gbs": NVLINK_SPEED_GBS,
                "errors": {"replay": 0, "recovery": 0, "crc": 0},
            }
            for link in range(NVLINKS_PER_GPU)
        ],
    }


def _ecc_counters() -> dict[str, int]:
    return {
        "sram_correctable": 0,
        "sram_uncorrectable_parity": 0,
        "sram_uncorrectable_secded": 0,
        "dram_correctable": 0,
        "dram_uncorrectable": 0,
    }


def _hca(rng: random.Random, i: int, index: int, fw: str) -> dict[str, Any]:
    tail = rng.getrandbits(24)
    guid = f"0x946dae0300{tail:06x}"
    bdf = f"0000:{GPU_BUSES[i] + 1:02x}:00.0"
    return {
        "name": f"mlx5_{i}",
        "ca_type": "MT4129",
        "part_number": "MCX75310AAS-NEA_Ax",
        "description": "NVIDIA ConnectX-7 HHHL Adapter card; 400GbE / NDR IB (default mode); "
        "Single-port OSFP; PCIe 5.0 x16; Crypto Disabled; Secure Boot Enabled",
        "psid": "MT_0000000838",
        "fw_version": fw,
        "pxe_version": "3.7.0500",
        "uefi_version": "14.36.0016",
        "node_guid": guid,
        "sys_image_guid": guid,
        "pci_bdf": bdf,
        "mst_device": f"/dev/mst/mt4129_pciconf{i}",
        "pcie": {"gen": 5, "width_max": 16, "width_current": 16},
        "mlxconfig": dict(MLXCONFIG_DEFAULTS),
        "ports": [
            {
                "port": 1,
                "state": "Active",
                "phys_state": "LinkUp",
                "rate": HCA_RATE,
                "link_layer": "InfiniBand",
                # LIDs as an SM on LID 1 would hand them out: unique across the fabric.
                "lid": 2 + (index - 1) * HCA_COUNT + i,
                "sm_lid": 1,
                "lmc": 0,
                "capability_mask": "0xa751e848",
                "port_guid": guid,
            }
        ],
    }


def ipoib_netdev(hca: dict[str, Any]) -> str:
    """The HCA's IPoIB interface as udev's predictable naming calls it: `ibp<bus>s<slot>`
    from its PCI address (0000:1a:00.0 -> ibp26s0), what the boot log says it was renamed to
    and what the lab names the node's rail interface for that HCA (lab/rails.py)."""
    bdf = hca["pci_bdf"]
    return f"ibp{int(bdf[5:7], 16)}s{int(bdf[8:10], 16)}"


def _boot_log(profile: dict[str, Any], rng: random.Random) -> list[list[Any]]:
    """A clean boot's kernel lines that depend on hardware alone (driver lines come later)."""
    system = profile["system"]
    lines: list[tuple[float, str]] = [
        (0.0, "Linux version 6.1.0-28-kilnlab (kiln-lab@kiln) (gcc-12 (Debian 12.2.0-14) "
              "12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian "
              "6.1.119-1kilnlab1 (2024-11-22)"),
        (0.0, f"DMI: {system['manufacturer']} {system['product']}/{system['board']}, "
              f"BIOS {profile['firmware']['bios']} 02/14/2025"),
        (0.0, "Hypervisor detected: none"),
        (0.412, "ACPI: PCI Root Bridge [PC00] (domain 0000 [bus 00-15])"),
        (1.207, "pci 0000:00:01.0: PCI bridge to [bus 01]"),
    ]
    t = 4.8 + rng.random() / 10
    nic = profile["mgmt_nic"]
    lines.append((t, f"ice {nic['pci_bdf']}: The DDP package was successfully loaded: "
                     "ICE OS Default Package version 1.3.36.0"))
    lines.append((t + 0.2, f"ice {nic['pci_bdf']} {nic['name']}: renamed from eth0"))
    t += 0.5
    for hca in profile["hcas"]:
        bdf = hca["pci_bdf"]
        lines += [
            (t, f"mlx5_core {bdf}: firmware version: {hca['fw_version']}"),
            (t + 0.000012, f"mlx5_core {bdf}: 504.112 Gb/s available PCIe bandwidth "
                           f"(32.0 GT/s PCIe x{hca['pcie']['width_current']} link)"),
            (t + 0.3, f"mlx5_core {bdf}: Rate limit: 127 rates are supported, range: 0Mbps "
                      "to 195312Mbps"),
            (t + 0.31, f"mlx5_core {bdf}: E-Switch: Total vports 2, per vport: max uc(128) "
                       "max mc(2048)"),
            (t + 0.36, f"mlx5_core {bdf}: Port module event: module 0, Cable plugged"),
        ]
        t += 0.41
    if profile["hcas"]:
        lines.append((t + 0.2, "mlx5_ib: Mellanox Connect-IB Infiniband driver v6.1.0-28"))
        for hca in profile["hcas"]:
            lines.append((t + 0.3, f"mlx5_core {hca['pci_bdf']} {ipoib_netdev(hca)}: "
                                   f"renamed from ib{hca['name'][5:]}"))
    return [[round(ts, 6), line] for ts, line in sorted(lines, key=lambda item: item[0])]


def generate_profile(
    node: str,
    index: int,
    role: str = "gpu",
    seed: str = DEFAULT_SEED,
    firmware: str = "golden",
) -> dict[str, Any]:
    """The profile of `node` (1-based `index` in the lab). `firmware`: "golden" or "old"."""
    if firmware not in ("golden", "old"):
        raise ValueError(f"firmware must be 'golden' or 'old', not {firmware!r}")
    versions = FIRMWARE if firmware == "golden" else OLD_FIRMWARE
    rng = _rng(seed, node, "profile")
    gpu_node = role == "gpu"
    mac_tail = rng.getrandbits(24)
    profile: dict[str, Any] = {
        "schema": SCHEMA,
        "node": node,
        "index": index,
        "role": "gpu" if gpu_node else "service",
        "seed": seed,
        "system": {
            "manufacturer": "Supermicro",
            "product": "SYS-821GE-TNHR" if gpu_node else "SYS-111C-NR",
            "board": "X13DEG-OAD" if gpu_node else "X13SCL-F",
            "serial": f"S{rng.randrange(10**9):09d}",
        },
        "firmware": {"bios": versions["bios"], "bmc": versions["bmc"]},
        "bios_attributes": dict(BIOS_ATTRIBUTES),
        "mgmt_nic": {
            "name": "eno1",
            "model": "Intel(R) Ethernet Controller E810-C for QSFP",
            "driver": "ice",
            "mac": "3c:ec:ef:" + ":".join(f"{b:02x}" for b in mac_tail.to_bytes(3, "big")),
            "pci_bdf": "0000:c1:00.0",
            "firmware": "4.40 0x8001c967 1.3534.0",
        },
        "gpus": [],
        "nvswitches": [],
        "hcas": [],
    }
    if gpu_node:
        profile["gpus"] = [_gpu(rng, i, versions["gpu-vbios"]) for i in range(len(GPU_BUSES))]
        profile["nvswitches"] = [
            {"index": i, "pci_bus_id": f"0000:{bus:02x}:00.0"}
            for i, bus in enumerate(NVSWITCH_BUSES)
        ]
        profile["hcas"] = [_hca(rng, i, index, versions["connectx7"]) for i in range(HCA_COUNT)]
    profile["boot_log"] = _boot_log(profile, rng)
    return profile


def write_json(path: Path, data: Any) -> None:
    """Write atomically: tools inside the node may read the file at any moment."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def refresh_boot_log(profile: dict[str, Any]) -> None:
    """Rewrite the boot-log lines that name firmware versions after the firmware changed:
    the kernel prints what is running at boot."""
    by_bdf = {hca["pci_bdf"]: hca["fw_version"] for hca in profile["hcas"]}
    for entry in profile["boot_log"]:
        line = entry[1]
        if line.startswith("mlx5_core ") and ": firmware version: " in line:
            bdf = line.split()[1].rstrip(":")
            if bdf in by_bdf:
                entry[1] = f"mlx5_core {bdf}: firmware version: {by_bdf[bdf]}"
        elif line.startswith("DMI: ") and ", BIOS " in line:
            head, _, tail = line.partition(", BIOS ")
            entry[1] = f"{head}, BIOS {profile['firmware']['bios']} {tail.split(' ', 1)[1]}"

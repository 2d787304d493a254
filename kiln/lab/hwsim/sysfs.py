"""The node's /sys/class/infiniband, generated from its hardware view (profile + faults).

The lab's nodes run the host's kernel, which has no InfiniBand devices; so the lab writes,
per node, the tree a ConnectX-7 node's kernel shows, and the node's launcher (lab/nodes.py)
binds it into the node's sysfs read-only:

    <hw>/sysfs/class/infiniband/mlx5_N
        -> ../../devices/pci0000:RR/0000:RR:01.0/<bdf>/infiniband/mlx5_N
    <hw>/sysfs/devices/pci0000:RR/0000:RR:01.0/<bdf>/
        vendor device class current_link_speed current_link_width max_link_speed
        max_link_width numa_node
        net/<ibpXsY>/{type,dev_id,dev_port,addr_len}        the IPoIB netdev (lab/rails.py)
        infiniband/mlx5_N/{hca_type,hw_rev,fw_ver,board_id,node_guid,sys_image_guid,
                           node_type,node_desc}
        infiniband/mlx5_N/device -> ../../../<bdf>
        infiniband/mlx5_N/ports/1/{state,phys_state,rate,link_layer,lid,sm_lid,
                                   lid_mask_count,sm_sl,cap_mask,gids/0,
                                   counters/*,hw_counters/*}

The same relative links the kernel makes, so the tree resolves the same on the host (under
<hw>/sysfs) as in the node (under /sys): `readlink -f /sys/class/infiniband/mlx5_0/device`
ends in the HCA's PCI address. Values are spelled as the kernel prints them (a real capture:
tests/fixtures/sysfs/class-infiniband-h100): "4: ACTIVE", "5: LinkUp", "400 Gb/sec (4X NDR)",
node_guid "946d:ae03:00a1:b2c3", current_link_speed "32.0 GT/s PCIe", width "16". Counters
read 0 (the lab moves no traffic).

The tree is rewritten in place (files replaced by rename, directories kept): the node's
binds hold the directories, so a rewrite after `kiln lab fault` shows in the node at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .profile import ipoib_netdev
from .tools._hca import PHYS_STATES, PORT_STATES, RATE_NAMES, default_gid, guid_colons
from .tools.kmod_install import MODULES as SIMULATED_MODULES
from .tools.kmod_install import RUN_MODULES
from .view import View

SYSFS_DIR = "sysfs"

# As the real capture lists them (tests/fixtures/sysfs/class-infiniband-h100/mlx5_0/ports/1).
COUNTERS = (
    "VL15_dropped", "excessive_buffer_overrun_errors", "link_downed", "link_error_recovery",
    "local_link_integrity_errors", "multicast_rcv_packets", "multicast_xmit_packets",
    "port_rcv_constraint_errors", "port_rcv_data", "port_rcv_errors", "port_rcv_packets",
    "port_rcv_remote_physical_errors", "port_rcv_switch_relay_errors",
    "port_xmit_constraint_errors", "port_xmit_data", "port_xmit_discards", "port_xmit_packets",
    "port_xmit_wait", "symbol_error", "unicast_rcv_packets", "unicast_xmit_packets",
)
HW_COUNTERS = (
    "duplicate_request", "implied_nak_seq_err", "lifespan", "local_ack_timeout_err",
    "out_of_buffer", "out_of_sequence", "packet_seq_err", "req_cqe_error",
    "req_cqe_flush_error", "req_remote_access_errors", "req_remote_invalid_request",
    "resp_cqe_error", "resp_cqe_flush_error", "resp_local_length_error",
    "resp_remote_access_errors", "rnr_nak_retry_err", "roce_adp_retrans", "roce_adp_retrans_to",
    "roce_slow_restart", "roce_slow_restart_cnps", "roce_slow_restart_trans",
    "rx_atomic_requests", "rx_dct_connect", "rx_icrc_encapsulated", "rx_read_requests",
    "rx_write_requests",
)
# PCIe generation -> the kernel's current_link_speed spelling (pci_speed_string()).
PCIE_SPEEDS = {1: "2.5 GT/s PCIe", 2: "5.0 GT/s PCIe", 3: "8.0 GT/s PCIe",
               4: "16.0 GT/s PCIe", 5: "32.0 GT/s PCIe"}
MELLANOX_VENDOR = "0x15b3"
CX7_DEVICE = "0x1021"
IB_NETWORK_CLASS = "0x020700"  # Network controller: InfiniBand
ARPHRD_INFINIBAND = "32"


def pci_path(bdf: str) -> str:
    """The HCA's device directory under /sys/devices: its own root port on a root complex
    named after its bus (0000:1a:00.0 -> pci0000:10/0000:10:01.0/0000:1a:00.0). Simpler than
    a real HGX board's PCIe switches; only the last component (the address) is read."""
    bus = int(bdf[5:7], 16)
    root = f"0000:{bus & 0xF0 or 0x10:02x}"
    return f"pci{root}/{root}:01.0/{bdf}"


def _port_files(hca: dict[str, Any], port: dict[str, Any]) -> dict[str, str]:
    state = port["state"]
    phys = port["phys_state"]
    rate = port["rate"]
    files = {
        "state": f"{PORT_STATES.get(state, 1)}: {state.upper()}",
        "phys_state": f"{PHYS_STATES.get(phys, 2)}: {phys}",
        "rate": RATE_NAMES.get(rate, f"{rate} Gb/sec (4X)"),
        "link_layer": port["link_layer"],
        "lid": f"0x{port['lid']:x}",
        "sm_lid": f"0x{port['sm_lid']:x}",
        "lid_mask_count": str(port["lmc"]),
        "sm_sl": "0",
        "cap_mask": port["capability_mask"],
        "gids/0": default_gid(port["port_guid"]),
    }
    files.update({f"counters/{name}": "0" for name in COUNTERS})
    files.update({f"hw_counters/{name}": "0" for name in HW_COUNTERS})
    return files


def sysfs_entries(view: View, node_name: str) -> tuple[dict[str, str], dict[str, str]]:
    """({relative path: file contents}, {relative path: symlink target}) of the tree."""
    files: dict[str, str] = {}
    links: dict[str, str] = {}
    for hca in view.hcas:
        bdf, name = hca["pci_bdf"], hca["name"]
        device = f"devices/{pci_path(bdf)}"
        pcie = hca["pcie"]
        speed = PCIE_SPEEDS.get(pcie.get("gen", 5), PCIE_SPEEDS[5])
        # The generation the link trained at (the `pcie-gen` fault lowers it in the view).
        current = PCIE_SPEEDS.get(pcie.get("gen_current", pcie.get("gen", 5)), speed)
        files.update({
            f"{device}/vendor": MELLANOX_VENDOR,
            f"{device}/device": CX7_DEVICE,
            f"{device}/class": IB_NETWORK_CLASS,
            f"{device}/current_link_speed": current,
            f"{device}/current_link_width": str(pcie["width_current"]),
            f"{device}/max_link_speed": speed,
            f"{device}/max_link_width": str(pcie["width_max"]),
            f"{device}/numa_node": "0" if int(bdf[5:7], 16) < 0x80 else "1",
        })
        netdev = f"{device}/net/{ipoib_netdev(hca)}"
        files.update({f"{netdev}/type": ARPHRD_INFINIBAND, f"{netdev}/dev_id": "0x0",
                      f"{netdev}/dev_port": "0", f"{netdev}/addr_len": "20"})
        ib = f"{device}/infiniband/{name}"
        files.update({
            f"{ib}/hca_type": hca["ca_type"],
            f"{ib}/hw_rev": "0x0",
            f"{ib}/fw_ver": hca["fw_version"],
            f"{ib}/board_id": hca["psid"],
            f"{ib}/node_guid": guid_colons(hca["node_guid"]),
            f"{ib}/sys_image_guid": guid_colons(hca["sys_image_guid"]),
            f"{ib}/node_type": "1: CA",
            f"{ib}/node_desc": f"{node_name} {name}",
        })
        links[f"{ib}/device"] = f"../../../{bdf}"
        for port in hca["ports"]:
            for rel, value in _port_files(hca, port).items():
                files[f"{ib}/ports/{port['port']}/{rel}"] = value
        links[f"class/infiniband/{name}"] = f"../../{ib}"
    if view.hcas:
        # A simulated module's /sys/module entry: a link into the node's /run that
        # kmod-install fills when it loads (tools/kmod_install.py), so it exists exactly
        # while the module is loaded, as the kernel's does.
        for module in SIMULATED_MODULES:
            links[f"module/{module}"] = f"{RUN_MODULES}/{module}"
    return files, links


def _write(path: Path, text: str) -> None:
    if path.is_file() and not path.is_symlink() and path.read_text() == text:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o444)
    tmp.replace(path)


def _link(path: Path, target: str) -> None:
    if path.is_symlink() and os.readlink(path) == target:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(path)


def write_sysfs(hw_dir: Path, view: View, node_name: str) -> None:
    """(Re)write <hw_dir>/sysfs from `view`, in place. A node without HCAs gets none (a
    host whose kernel has no InfiniBand device has no /sys/class/infiniband)."""
    root = Path(hw_dir) / SYSFS_DIR
    files, links = sysfs_entries(view, node_name)
    if not files:
        return
    wanted = {root / rel for rel in (*files, *links)}
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(path, text + "\n")
    for rel, target in links.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        _link(path, target)
    # What an earlier profile had and this one does not (never a directory: the node's
    # binds hold them).
    for path in sorted(root.rglob("*")):
        if (path.is_symlink() or path.is_file()) and path not in wanted:
            path.unlink()

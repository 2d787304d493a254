"""The running lab as pyinfra inventory groups (what `inventory/lab.py` exposes).

Host data uses the same keys as production (roles/inventory.py `host_data`): the node's BMC
(verified against the lab CA), its MAAS identity, the MAAS and UFM servers, and the lab's
secrets file as the credentials source. Plus what only the lab needs: its own SSH key, and
no host key checking (every reimage makes a new host key on the same address; acceptable on
the lab's private bridge, never in production).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kiln.lab.state import (
    VENDOR_REPO_URL,
    LabState,
    NodeState,
    StateError,
    burnin_state_dir,
    lab_dir,
    load_state,
    mirror_state_dir,
)

LAB_SKU = "lab"
LAB_RACK = "lab"


def lab_host_data(state: LabState, node: NodeState) -> dict[str, Any]:
    data = {
        "ssh_hostname": node.address,
        "ssh_user": state.ssh_user,
        "ssh_port": node.ssh_port,
        "ssh_key": state.ssh_key,
        "ssh_known_hosts_file": "/dev/null",
        "ssh_strict_host_key_checking": "no",
        "kiln_cluster": "lab",
        "kiln_node": node.name,
        "kiln_sku": LAB_SKU,
        "kiln_role": node.role,
        "kiln_rack": LAB_RACK,
        "kiln_maas": {"system_id": None, "hostname": node.name},
    }
    if node.bmc:
        data["kiln_bmc"] = {
            "address": node.bmc["address"],
            "protocol": node.bmc["protocol"],
            "port": node.bmc["port"],
            "verify_tls": True,
            "ca_bundle": state.tls_ca,
            "credentials": "bmc",
        }
        if node.bmc["protocol"] == "ipmi":
            # ipmi_sim ignores the cipher-suite query: name suite 3 or wait ~10 s per call.
            data["kiln_bmc"]["cipher_suite"] = 3
    if "maas" in state.endpoints:
        data["kiln_maas_server"] = {"url": state.endpoints["maas"], "verify_tls": True,
                                    "ca_bundle": None, "credentials": "maas"}
    if "ufm" in state.endpoints:
        data["kiln_ufm_server"] = {"url": state.endpoints["ufm"], "verify_tls": True,
                                   "ca_bundle": state.tls_ca, "credentials": "ufm"}
    if state.secrets_file:
        # The lab's own credentials file wins over group data's /etc/kiln/secrets.yaml.
        data["kiln_secrets_file"] = state.secrets_file
    data.update(lab_mirror_data(state, node))
    data.update(lab_base_data(state))
    data.update(lab_ipoib_data(node))
    data.update(lab_burnin_data(state, node))
    data.update(lab_kraken_data(state))
    lab = state.lab_dir
    # The ledger and the pool of this lab, beside it (not the checkout's state/).
    data["kiln_ledger"] = f"{lab}/kiln.db"
    data["kiln_pool_file"] = f"{lab}/pool.yaml"
    return data


def lab_base_data(state: LabState) -> dict[str, Any]:
    """roles/base settings for nodes that share the host's kernel and clock.

    A lab node is a network namespace, not a machine: only netns-local sysctls can be set
    (no numa_balancing, no neigh.gc_thresh*), and chronyd must not set the host's clock.
    """
    return {
        "kiln_ntp_servers": [state.network.get("gateway", "10.231.0.1")],
        "kiln_time_sync_sets_clock": False,
        "kiln_sysctl": {
            "net.ipv4.conf.all.arp_ignore": "1",
            "net.ipv4.conf.all.arp_announce": "2",
            "net.ipv4.tcp_rmem": "4096 87380 134217728",
            "net.ipv4.tcp_wmem": "4096 65536 134217728",
        },
    }


# The lab's IPoIB scheme, as a production inventory's `ipoib` declares one (kiln.core.inventory
# IPoIB): rail r in 10.232.r.0/24 (beside the lab's 10.231.x management and BMC networks),
# the node's host number its management address's last octet. Each rail is a bridge of the
# nodes' rail interfaces (lab/rails.py).
LAB_IPOIB_PATTERN = "10.232.{rail}.0/24"


def lab_ipoib_data(node: NodeState) -> dict[str, Any]:
    from kiln.core.inventory import IPoIB
    from kiln.lab.rails import RAILS

    if node.role != "gpu":
        return {}
    scheme = IPoIB(subnet_pattern=LAB_IPOIB_PATTERN, rails=RAILS)
    host = int(node.address.rsplit(".", 1)[-1])
    return {"kiln_ipoib": {"addresses": [str(a) for a in scheme.addresses(host)],
                           "mtu": scheme.mtu}}


def lab_burnin_data(state: LabState, node: NodeState) -> dict[str, Any]:
    """The burn-in's key (made at lab up), and mpirun's own traffic on the nodes' eth0: the
    lab's nodes also have the simulated rails' IPoIB interfaces, which carry nothing."""
    if node.role != "gpu":
        return {}
    return {
        "kiln_burnin_state": str(burnin_state_dir(state.lab_dir)),
        "kiln_burnin_mpi_options": ["--mca", "btl_tcp_if_include", "eth0",
                                    "--mca", "oob_tcp_if_include", "eth0"],
    }


# The registry Kraken's origin and build-index read from: in lab tests, Debian's
# docker-registry on the first service node (tests/lab/test_kraken.py starts it).
LAB_REGISTRY_PORT = 5000


def lab_kraken_data(state: LabState) -> dict[str, Any]:
    """roles/kraken in a lab where Kraken cannot run: no Kraken image and no container
    engine exist here, so configs, units and the engines' mirror settings are written and
    nothing is loaded or started (kiln_kraken_activate false)."""
    service = [node for node in state.nodes if node.role == "service"]
    data: dict[str, Any] = {
        "kiln_kraken_activate": False,
        # Names the units' image tag only; no Kraken image is loaded in the lab.
        "kiln_kraken_version": "lab",
        # docker: what a GPU node's engine reads; containers: what the lab's skopeo reads.
        "kiln_kraken_mirror_clients": ["docker", "containers"],
    }
    if service:
        data["kiln_kraken_backends"] = [
            {"registry": f"{service[0].address}:{LAB_REGISTRY_PORT}", "insecure": True}]
    return data


def lab_mirror_data(state: LabState, node: NodeState) -> dict[str, Any]:
    """Where the local file mirror (roles/mirror) fills from in the lab: the vendor site."""
    lab = state.lab_dir
    key = f"{lab}/vendor/keys/lab-archive.asc"
    data: dict[str, Any] = {
        "kiln_mirror_apt_upstream": [
            {"uri": f"{VENDOR_REPO_URL}apt", "suite": "kilnlab", "key": key},
            {"uri": f"{VENDOR_REPO_URL}os", "suite": "bookworm", "key": key},
        ],
        "kiln_mirror_firmware_upstream": f"{VENDOR_REPO_URL}firmware/",
        "kiln_mirror_base_status": f"{lab}/base/var/lib/dpkg/status",
        "kiln_mirror_state": str(mirror_state_dir(lab)),
        # roles/base installs chrony, and apt sees only the mirror once base has run.
        "kiln_mirror_os_packages": ["chrony"],
    }
    if state.tls_ca:
        data["kiln_mirror_ca"] = state.tls_ca
    if node.role == "service":
        data["kiln_mirror_tls_cert"] = f"{lab}/tls/mirror-{node.name}.pem"
        data["kiln_mirror_tls_key"] = f"{lab}/tls/mirror-{node.name}.key"
    return data


def lab_groups(state: LabState) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Groups gpu, service and rack_lab of `@metal/<node>` hosts (empty groups left out)."""
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {"gpu": [], "service": []}
    groups[f"rack_{LAB_RACK}"] = []
    for node in state.nodes:
        entry = (f"@metal/{node.name}", lab_host_data(state, node))
        groups[node.role].append(entry)
        groups[f"rack_{LAB_RACK}"].append(entry)
    return {name: hosts for name, hosts in groups.items() if hosts}


def inventory_groups(directory: Path | None = None) -> dict[str, list]:
    """For inventory/lab.py: the groups, or pyinfra's InventoryError saying why there are none."""
    from pyinfra.api.exceptions import InventoryError

    try:
        state = load_state(directory or lab_dir())
    except StateError as exc:
        raise InventoryError(f"inventory/lab.py: {exc}") from None
    if not state.nodes:
        raise InventoryError(f"inventory/lab.py: the lab in {state.lab_dir} has no nodes")
    return lab_groups(state)

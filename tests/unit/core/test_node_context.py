"""The node context: one typed view of a host, built from the inventory's models, and the
outcomes every role reports through."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pyinfra.api import Config, Inventory, State
from site_manifests import site_firmware_dir

from kiln.core import inventory as inventory_models
from kiln.core import manifest as manifest_models
from kiln.core.context import node_context
from kiln.core.errors import KilnError
from kiln.core.inventory import BMC, Cluster, MAASIdentity, MAASServer, host_data
from kiln.core.models import Strict
from kiln.core.outcomes import _noted, fail, fail_host, preview, preview_line
from kiln.core.paths import FIRMWARE_DIR

CLUSTER = {
    "cluster": "test",
    "maas": {"url": "http://maas.example:5240/MAAS"},
    "racks": [{"name": "r01", "nodes": [
        {"hostname": "gpu-017", "sku": "lab", "role": "gpu", "address": "10.0.0.17",
         "bmc": {"address": "10.1.0.17", "protocol": "ipmi", "cipher_suite": 3},
         "maas": {"system_id": "4y3h8q"}},
        {"hostname": "svc-001", "sku": "lab", "role": "service", "address": "10.0.0.1",
         "bmc": {"address": "bmc-svc-001.example", "credentials": "bmc-svc"}},
    ]}],
}


def inventory_data(node: int = 0, **extra: object) -> dict:
    cluster = Cluster.model_validate(CLUSTER)
    rack = cluster.racks[0]
    return {**host_data(cluster, rack, rack.nodes[node]), **extra}


def pyinfra_host(name: str, data: dict):
    inventory = Inventory(([(f"@metal/{name}", data)], {}))
    State(inventory, Config())
    return inventory.get_host(name)


def test_the_context_is_the_inventory_models():
    context = node_context(inventory_data())
    assert (context.node, context.role, context.rack, context.sku, context.cluster) == (
        "gpu-017", "gpu", "r01", "lab", "test")
    assert context.bmc == BMC(address="10.1.0.17", protocol="ipmi", cipher_suite=3)
    assert context.maas_server == MAASServer(url="http://maas.example:5240/MAAS/")
    assert context.maas_identity == MAASIdentity(system_id="4y3h8q", hostname="gpu-017")
    assert context.ufm_server is None
    assert (context.address, context.ssh_user, context.ssh_port) == ("10.0.0.17", "ubuntu", 22)
    assert context.sudo
    # the defaults: kiln's shipped manifests, the ledger and pool under state/, KILN_ secrets
    assert context.firmware_dir == FIRMWARE_DIR
    assert context.manifest_path == FIRMWARE_DIR / "lab.yaml"
    assert context.manifest.sku == "lab"
    assert context.ledger_path == Path("state/kiln.db")
    assert context.pool_file == Path("state/pool.yaml")
    assert (context.secrets_file, context.secrets_env_prefix) == (None, "KILN_")


def test_group_data_overrides_the_defaults(tmp_path):
    context = node_context(inventory_data(
        1, kiln_ledger=str(tmp_path / "l.db"), kiln_pool_file=str(tmp_path / "p.yaml"),
        kiln_secrets_file="/etc/kiln/s.yaml", kiln_secrets_env_prefix="SITE_"))
    assert context.node == "svc-001"
    assert context.maas_identity == MAASIdentity(hostname="svc-001")
    assert context.bmc.credentials == "bmc-svc"
    assert context.ledger_path == tmp_path / "l.db"
    assert context.pool_file == tmp_path / "p.yaml"
    assert (context.secrets_file, context.secrets_env_prefix) == ("/etc/kiln/s.yaml", "SITE_")
    env = {"SITE_MAAS_API_KEY": "a:b:c"}
    assert context.credentials("maas", ("api_key",), env=env)["api_key"].reveal() == "a:b:c"


def test_a_site_firmware_directory_replaces_the_shipped_one(tmp_path):
    def change(document: dict) -> None:
        document["os"]["kernel"]["version"] = "6.1.119-1site1"

    site = site_firmware_dir(tmp_path, change)
    context = node_context(inventory_data(kiln_firmware_dir=str(site)))
    assert context.firmware_dir == site
    assert context.manifest_path == site / "lab.yaml"
    assert context.manifest.os.kernel.version == "6.1.119-1site1"


def test_a_pyinfra_host_has_one_context_until_its_data_changes(tmp_path):
    data = {"kiln_sku": "lab"}  # no kiln_node: the host's name is the node's
    host = pyinfra_host("gpu-009", data)
    context = node_context(host)
    assert context.node == "gpu-009" and context.address == "gpu-009"
    assert node_context(host) is context and node_context(host.data) is context
    assert context.manifest is context.manifest  # read once
    host.data.kiln_firmware_dir = str(site_firmware_dir(tmp_path, lambda d: None))
    changed = node_context(host)
    assert changed is not context and changed.firmware_dir == tmp_path / "site-firmware"


@pytest.mark.parametrize(("data", "field", "error"), [
    (inventory_data(kiln_bmc={"address": "10.1.0.17", "protocol": "idrac"}), "bmc",
     r"^node gpu-017: host data kiln_bmc: protocol: input should be 'redfish' or 'ipmi'"),
    ({"kiln_node": "gpu-004"}, "bmc", "^node gpu-004: host data has no kiln_bmc"),
    (inventory_data(kiln_ledger=3), "ledger_path",
     "^node gpu-017: host data kiln_ledger: expected a string, got int 3"),
    (inventory_data(kiln_maas_server={"url": "maas:5240"}), "maas_server",
     "^node gpu-017: host data kiln_maas_server: url: "),
    (inventory_data(ssh_port="x"), "ssh_port",
     "^node gpu-017: host data ssh_port: 'x' is not a TCP port"),
    ({"kiln_node": "gpu-005"}, "manifest", "node gpu-005: host data kiln_sku is not set"),
    (inventory_data(kiln_firmware_dir="/nowhere"), "manifest", "^/nowhere/lab.yaml: no such"),
])
def test_bad_data_names_the_node_and_the_key(data, field, error):
    with pytest.raises(KilnError, match=error):
        getattr(node_context(data), field)


def test_a_stage_reads_only_what_it_needs():
    """A node without a BMC or MAAS can still be read for its SKU and records."""
    context = node_context({"kiln_node": "svc-002", "kiln_sku": "lab"})
    assert context.manifest.sku == "lab" and context.maas_server is None
    assert not context.has_bmc


def test_strict_is_defined_once():
    from kiln.roles.base import settings as base_settings
    from kiln.roles.kraken import settings as kraken_settings
    from kiln.roles.mirror import settings as mirror_settings

    assert Strict.model_config["extra"] == "forbid" and Strict.model_config["frozen"]
    for module in (inventory_models, manifest_models, base_settings, kraken_settings,
                   mirror_settings):
        assert "Strict" not in vars(module) or vars(module)["Strict"] is Strict
    assert issubclass(BMC, Strict) and issubclass(manifest_models.Manifest, Strict)
    assert issubclass(mirror_settings.MirrorSettings, Strict)


# -- outcomes ------------------------------------------------------------------------------


class LoggedHost:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict]] = []

    def log_styled(self, message: str, **kwargs: object) -> None:
        self.lines.append((message, kwargs))


def test_a_failed_host_is_told_why_in_red():
    host = LoggedHost()
    assert fail_host(host, "node gpu-017: no kiln_bmc") is False
    command = fail("node gpu-017: bad manifest")
    assert command.function(None, host, *command.args, **command.kwargs) is False
    assert [line for line, _ in host.lines] == ["node gpu-017: no kiln_bmc",
                                                "node gpu-017: bad manifest"]
    assert all(style["fg"] == "red" and style["log_func"] == logging.getLogger("pyinfra").error
               for _, style in host.lines)


def test_a_preview_lists_and_does_nothing():
    host = LoggedHost()
    command = preview("sysctl settings")
    assert command.function is _noted
    assert command.args == ("converge sysctl settings (the node is read when it runs)",)
    assert command.function(None, host, *command.args) is True and host.lines == []
    preview_line(host, "gpu-017: will be imaged")
    preview_line(host, "cannot ask MAAS", warn=True)
    assert [(line, style["fg"]) for line, style in host.lines] == [
        ("gpu-017: will be imaged", "yellow"), ("cannot ask MAAS", "yellow")]

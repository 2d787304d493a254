"""Firmware on two lab GPU nodes with `deploy/firmware.py`, read back with the testinfra suite
(Redfish, mlxfwmanager, nvidia-smi on the nodes), never from kiln's own output.

    gpu-004 starts with old BIOS and BMC firmware: the Redfish path (SimpleUpdate, task
            polled, image staged by the lab's sushy-tools BMC, active after the system reset);
            it is in the pool, so it is drained first.
    gpu-005 starts with old ConnectX-7 firmware on every card: the mlxfwmanager path (the
            node fetches the blob with its sha256 checked, flashes each card, the lab
            activates the image at the next boot).

The blobs come from the cluster mirror on svc-001 (deploy/mirror.py fills it from the lab's
vendor site); the nodes get the pinned stack first (base, OFED with MFT, NVIDIA), as
bring-up does before its firmware stage.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from kiln.lab import cluster
from kiln.lab.firmware_blobs import blob_sha256
from kiln.lab.hwsim.profile import KNOWN_FIRMWARE
from kiln.roles.pool import FilePool

pytestmark = pytest.mark.lab

REDFISH_NODE, NIC_NODE = NODES = ("gpu-004", "gpu-005")
SERVICE = "svc-001"
MANIFEST = "kiln/firmware/lab.yaml"
SUITE = "tests/lab/testinfra/test_firmware_versions.py"
OLD = {"bios": KNOWN_FIRMWARE["bios"][0], "bmc": KNOWN_FIRMWARE["bmc"][0],
       "connectx7": KNOWN_FIRMWARE["connectx7"][0]}


def limits(*nodes: str) -> list[str]:
    return [arg for node in nodes for arg in ("--limit", node)]


def totals(result: subprocess.CompletedProcess) -> list[str]:
    """The Grand total row of pyinfra's results: hosts, success, error, no change."""
    match = re.search(r"Grand total\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", result.stdout)
    assert match, result.stdout
    return list(match.groups())


def node_lines(result: subprocess.CompletedProcess, node: str) -> str:
    return "\n".join(line for line in result.stdout.splitlines() if f"[{node}] " in line)


class Firmware:
    def __init__(self, lab, labtools, work: Path):
        self.lab = lab
        self.tools = labtools
        self.work = work
        self.lab_dir = Path(lab.lab_dir)
        self.pool = FilePool(self.lab_dir / "pool.yaml")

    def pyinfra(self, deploy: str, *nodes: str, data: dict | None = None,
                mode: str = "-y") -> subprocess.CompletedProcess:
        args = [str(self.tools.bin / "pyinfra"), mode, "inventory/lab.py", deploy,
                *limits(*nodes)]
        for key, value in (data or {}).items():
            args += ["--data", f"{key}={json.dumps(value)}"]
        result = subprocess.run(args, cwd=self.tools.root, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, timeout=600)
        for node in nodes:  # pyinfra exits 0 when --limit matches nothing
            assert f"[{node}] " in result.stdout, result.stdout
        return result

    def firmware(self, firmware_dir: Path | None = None,
                 mode: str = "-y") -> subprocess.CompletedProcess:
        data = {"kiln_firmware_dir": str(firmware_dir)} if firmware_dir else None
        return self.pyinfra("deploy/firmware.py", *NODES, data=data, mode=mode)

    def untouched(self) -> None:
        """Still the old firmware, nothing staged for a reset, still in the pool."""
        assert self.redfish(REDFISH_NODE) == {"BIOS": OLD["bios"], "BMC": OLD["bmc"]}
        assert self.nic_versions(NIC_NODE) == {OLD["connectx7"]}
        assert self.flash_spool(REDFISH_NODE) == [] and self.flash_spool(NIC_NODE) == []
        assert REDFISH_NODE in self.pool.members()

    def suite(self) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.tools.bin / "pytest"), SUITE, "-q", "-p", "no:cacheprovider",
             "--kiln-inventory", "inventory/lab.py", "--kiln-limit", ",".join(NODES)],
            cwd=self.tools.root, capture_output=True, text=True, timeout=300)

    def ssh(self, node: str, command: str) -> str:
        return self.tools.ssh(self.lab, node, command)

    def redfish(self, node: str) -> dict[str, str]:
        """BIOS and BMC versions the node's BMC reports (over Redfish, curl)."""
        from kiln.core.secrets import lookup

        secret = lookup("bmc", ("username", "password"), secrets_file=self.lab.secrets_file)
        address = self.lab.node(node).bmc["address"]
        versions = {}
        for item in ("BIOS", "BMC"):
            out = subprocess.run(
                ["curl", "-sf", "--cacert", self.lab.tls_ca, "-K", "-",
                 f"https://{address}/redfish/v1/UpdateService/FirmwareInventory/{item}"],
                input=f'user = "{secret["username"].reveal()}:{secret["password"].reveal()}"\n',
                capture_output=True, text=True, check=True).stdout
            versions[item] = json.loads(out)["Version"]
        return versions

    def nic_versions(self, node: str) -> set[str]:
        out = self.ssh(node, "mlxfwmanager --query")
        return set(re.findall(r"^\s+FW\s+(\S+)", out, re.MULTILINE))

    def flash_spool(self, node: str) -> list[str]:
        return sorted(p.name for p in (self.lab_dir / "hw" / node / "flash").glob("*.bin"))

    def boots(self, node: str) -> int:
        return json.loads((self.lab_dir / "hw" / node / "boot.json").read_text())["boot"]

    def manifest_copy(self, name: str, change) -> Path:
        directory = self.work / name
        directory.mkdir()
        document = yaml.safe_load((self.tools.root / MANIFEST).read_text())
        change(document)
        (directory / "lab.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
        return directory


@pytest.fixture(scope="module")
def fw(lab, labtools, tmp_path_factory):
    firmware = Firmware(lab, labtools, tmp_path_factory.mktemp("firmware"))
    for component in ("bios", "bmc"):
        labtools.kiln("fault", REDFISH_NODE, "firmware-version", f"component={component}",
                      "version=old")
    labtools.kiln("fault", NIC_NODE, "firmware-version", "component=connectx7", "version=old")
    firmware.pool.add(REDFISH_NODE)
    # The mirror (and the nodes' apt pointed at it), then the pinned stack, as bring-up does.
    mirror = firmware.pyinfra("deploy/mirror.py", SERVICE, *NODES)
    assert mirror.returncode == 0, mirror.stdout
    stack = firmware.pyinfra("tests/lab/pin_stack_deploy.py", *NODES)
    assert stack.returncode == 0, stack.stdout
    yield firmware
    for node in NODES:
        labtools.kiln("fault", node, "--clear")
        cluster.reset_node(node, wait=True)


def test_nodes_start_with_old_firmware(fw):
    assert fw.redfish(REDFISH_NODE) == {"BIOS": OLD["bios"], "BMC": OLD["bmc"]}
    assert fw.nic_versions(NIC_NODE) == {OLD["connectx7"]}
    suite = fw.suite()
    assert suite.returncode != 0
    failed = {(test, node_id.rsplit("/", 1)[-1]) for test, node_id in re.findall(
        r"^FAILED \S+::(\S+)\[(\S+)\]", suite.stdout, re.MULTILINE)}
    assert failed == {("test_redfish_firmware_inventory_runs_the_pinned_versions", REDFISH_NODE),
                      ("test_connectx_firmware_is_the_pinned_version", NIC_NODE)}, suite.stdout


def test_a_blob_with_a_wrong_sha256_is_refused_and_nothing_is_flashed(fw):
    wrong = "0" * 64

    def corrupt(document):
        for component in ("bios", "connectx7"):
            document["firmware"][component]["blob"]["sha256"] = wrong
        document["max_parallel_firmware"] = 1  # one node per batch

    copy = fw.manifest_copy("wrong-sha256", corrupt)
    boots = {node: fw.boots(node) for node in NODES}
    result = fw.firmware(copy)
    assert result.returncode != 0
    # The first batch's node refuses its blob, naming the file and both digests; the next
    # batch does not start: the rollout stopped at the failed one. pyinfra picks the order.
    refusals = {
        REDFISH_NODE: ("lab-bios-1.6.2.bin", blob_sha256("bios", "1.6.2")),
        NIC_NODE: ("lab-connectx7-28.43.1014.bin", blob_sha256("connectx7", "28.43.1014")),
    }
    refused = []
    for node, (file, served) in refusals.items():
        name = re.escape(file)
        if re.search(rf"firmware blob {name} \(http://[\d.]+/firmware/{name}\): sha256 {served} "
                     rf"\(262144 bytes\), the manifest pins sha256 {wrong} \(262144 bytes\); "
                     rf"refused, nothing flashed", node_lines(result, node)):
            refused.append(node)
    assert len(refused) == 1, result.stdout
    first, = refused
    second, = set(NODES) - {first}
    assert f"rollout stopped: the firmware update failed on {first} in an earlier batch; " \
           f"{second} not touched" in node_lines(result, second), result.stdout
    # Nothing flashed, nothing reset, nobody drained.
    fw.untouched()
    assert {node: fw.boots(node) for node in NODES} == boots


def test_a_dry_run_lists_the_update_and_changes_nothing(fw):
    boots = {node: fw.boots(node) for node in NODES}
    result = fw.firmware(mode="--dry")
    assert result.returncode == 0, result.stdout
    assert re.search(r"Firmware as the manifest pins .*\s2 \(gpu-004, gpu-005\)\s",
                     result.stdout), result.stdout
    assert "firmware: bios: FirmwareInventory/BIOS (redfish) runs 1.5.0; will update to 1.6.2" \
        in node_lines(result, REDFISH_NODE), result.stdout
    assert "; will update to 28.43.1014" in node_lines(result, NIC_NODE), result.stdout
    fw.untouched()
    assert {node: fw.boots(node) for node in NODES} == boots


def test_update_through_redfish_and_mlxfwmanager_runs_the_new_versions(fw):
    boots = {node: fw.boots(node) for node in NODES}
    result = fw.firmware()
    assert result.returncode == 0, result.stdout
    redfish = node_lines(result, REDFISH_NODE)
    assert f"pool: drained {REDFISH_NODE} (firmware update: bios -> 1.6.2, bmc -> 1.08.00)" \
        in redfish, redfish
    for item, blob in (("BIOS", "lab-bios-1.6.2.bin"), ("BMC", "lab-bmc-1.08.00.bin")):
        assert re.search(rf"firmware: \S+ {item} <- {blob} through the BMC \(task "
                         rf"/redfish/v1/TaskService/Tasks/\S+: Completed\)", redfish), redfish
    # The BMC image runs after the BMC's own restart (a host reset does not activate it).
    assert "firmware: BMC restarted (GracefulRestart)" in redfish, redfish
    nic = node_lines(result, NIC_NODE)
    assert len(re.findall(r"firmware: connectx7 /dev/mst/\S+ <- lab-connectx7-28\.43\.1014\.bin "
                          r"\(mlxfwmanager\)", nic)) == 8, nic
    for node in NODES:
        lines = node_lines(result, node)
        assert "BMC: rebooted" in lines and "firmware: all 4 components run what" in lines
        assert fw.boots(node) == boots[node] + 1
    assert fw.redfish(REDFISH_NODE) == {"BIOS": "1.6.2", "BMC": "1.08.00"}
    assert fw.nic_versions(NIC_NODE) == {"28.43.1014"}
    assert REDFISH_NODE not in fw.pool.members()
    assert fw.pool.drained()[REDFISH_NODE].startswith("firmware update: bios -> 1.6.2")
    suite = fw.suite()
    assert suite.returncode == 0, suite.stdout + suite.stderr
    assert re.search(r"\b6 passed\b", suite.stdout), suite.stdout


def test_a_second_run_changes_nothing(fw):
    boots = {node: fw.boots(node) for node in NODES}
    result = fw.firmware()
    assert result.returncode == 0, result.stdout
    hosts, success, error, no_change = totals(result)
    assert (success, error) == ("-", "-"), result.stdout
    assert hosts == no_change == "2"
    assert {node: fw.boots(node) for node in NODES} == boots

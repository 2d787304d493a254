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
from kiln.roles.pool.file import FilePool

pytestmark = pytest.mark.lab

REDFISH_NODE, NIC_NODE = NODES = ("gpu-004", "gpu-005")
HOLD_NODE = "gpu-006"  # the audit's third node: a held package released by hand
BIOS_SETTING = ("SriovGlobalEnable", "Enabled", "Disabled")  # on NIC_NODE: changed, pinned
UNPINNED = ("ProcTurboMode", "Disabled", "Enabled")  # on HOLD_NODE: pinned nowhere
AUDITED = (*NODES, HOLD_NODE)
RELEASED = "libnccl2"
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

    def audit(self, mode: str = "-y") -> subprocess.CompletedProcess:
        return self.pyinfra("deploy/audit.py", *AUDITED, mode=mode)

    def written_since(self, node: str, marker: str) -> list[str]:
        """Files on the node modified since `marker` was touched (logs and scratch aside)."""
        out = self.ssh(node, f"find / -xdev -newer {marker} -type f -not -path '/proc/*' "
                             "-not -path '/var/log/*' -not -path '/tmp/*' -not -path "
                             "'/run/*' -not -path '/var/tmp/*' 2>/dev/null; true")
        return sorted(line for line in out.splitlines() if line.strip())

    def node_record(self, node: str) -> str:
        """What the audit reads and must leave as it was: packages and holds, firmware,
        the cards' settings, and how often the node booted."""
        return "\n".join([
            self.ssh(node, "dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\\n'; "
                           "apt-mark showhold; mlxfwmanager --query; "
                           "mlxconfig -d mlx5_0 -e q"),
            json.dumps(self.redfish(node)), str(self.boots(node))])

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

    def set_bios(self, node: str, name: str, value: str) -> None:
        """A BIOS attribute changed through the node's BMC (Redfish BIOS/Settings, as an
        operator's tool does); it takes effect at the node's next reset."""
        import requests

        from kiln.core.secrets import lookup

        secret = lookup("bmc", ("username", "password"), secrets_file=self.lab.secrets_file)
        address = self.lab.node(node).bmc["address"]
        answer = requests.patch(
            f"https://{address}/redfish/v1/Systems/{node}/BIOS/Settings",
            json={"Attributes": {name: value}}, verify=self.lab.tls_ca, timeout=30,
            auth=(secret["username"].reveal(), secret["password"].reveal()))
        assert answer.status_code in (200, 202, 204), answer.text

    def flash_bios_through_redfish(self, node: str, version: str) -> None:
        """A BIOS image flashed through the node's BMC (Redfish SimpleUpdate from the lab's
        vendor site, as a technician's tool does); it runs after the node's next reset."""
        from contextlib import closing

        from kiln.lab.firmware_blobs import blob_file_name
        from kiln.lab.inventory import lab_host_data
        from kiln.lab.state import VENDOR_REPO_URL
        from kiln.roles.bmc.client import connect

        bmc = lab_host_data(self.lab, self.lab.node(node))["kiln_bmc"]
        image = f"{VENDOR_REPO_URL}firmware/{blob_file_name('bios', version)}"
        with closing(connect(bmc, node=node, secrets_file=self.lab.secrets_file)) as client:
            result = client.update_firmware("BIOS", image)
        assert result.state == "Completed", result

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
    mirror = firmware.pyinfra("deploy/mirror.py", SERVICE, *AUDITED)
    assert mirror.returncode == 0, mirror.stdout
    stack = firmware.pyinfra("tests/lab/pin_stack_deploy.py", *AUDITED)
    assert stack.returncode == 0, stack.stdout
    # The cards' settings as bring-up's fabric stage leaves them (set, then a power cycle),
    # so the audit finds only the faults above and below; and one BIOS attribute changed.
    firmware.set_bios(NIC_NODE, BIOS_SETTING[0], BIOS_SETTING[1])
    firmware.set_bios(HOLD_NODE, UNPINNED[0], UNPINNED[1])
    firmware.flash_bios_through_redfish(HOLD_NODE, OLD["bios"])
    for node in AUDITED:
        firmware.ssh(node, "for d in $(ibstat -l); do mlxconfig -y -d $d set "
                           "ADVANCED_PCI_SETTINGS=True >/dev/null; done")
        cluster.power_cycle(node, wait=True)
    yield firmware
    for node in AUDITED:
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


def test_the_audit_names_exactly_the_drifted_items_on_their_nodes_and_writes_nothing(fw):
    fw.ssh(HOLD_NODE, f"apt-mark unhold {RELEASED}")
    before = {node: fw.node_record(node) for node in AUDITED}
    for node in AUDITED:
        fw.ssh(node, "touch /run/kiln-audit-marker; sleep 1")
    result = fw.audit()
    assert result.returncode != 0, result.stdout
    lines = [line.split("] ", 1)[-1].strip() for line in result.stdout.splitlines()]
    groups = [line for line in lines if line.startswith(("DRIFT ", "INCONSISTENT ", "UNREAD ",
                                                         "NOT READ "))]
    nic = re.escape(OLD["connectx7"])
    # One line per group, in item order.
    expected = [
        rf"DRIFT bios {BIOS_SETTING[0]}: pinned {BIOS_SETTING[2]}, found {BIOS_SETTING[1]} on "
        r"gpu-005, first seen now",
        # The BIOS a fault made old on gpu-004 and the one flashed through Redfish on
        # gpu-006: one group.
        r"DRIFT firmware bios: pinned 1\.6\.2, found 1\.5\.0 on 2 nodes: gpu-004, gpu-006 "
        r"\(FirmwareInventory/BIOS\), first seen now",
        r"DRIFT firmware bmc: pinned 1\.08\.00, found 1\.06\.00 on gpu-004 "
        r"\(FirmwareInventory/BMC\), first seen now",
        rf"DRIFT firmware connectx7: pinned 28\.43\.1014, found {nic} on gpu-005 "
        r"\(/dev/mst/\S+, .* and 4 more\), first seen now",
        rf"DRIFT hold {RELEASED}: pinned held, found not held on gpu-006, first seen now",
        # A value pinned nowhere that one node of the SKU does not share.
        rf"INCONSISTENT bios {UNPINNED[0]} \(sku lab, pinned nowhere\): 2 nodes have "
        rf"{UNPINNED[2]}, 1 node has {UNPINNED[1]} \(gpu-006\), first seen now",
    ]
    assert len(groups) == len(expected), result.stdout[-8000:]
    for pattern, line in zip(expected, groups, strict=True):
        assert re.fullmatch(pattern, line), (pattern, line)
    fixes = [line for line in lines if line.startswith("fix: ")]
    assert fixes == [
        "fix: set the attribute through the node's BMC (no kiln stage sets BIOS attributes)",
        "fix: pyinfra -y inventory/lab.py deploy/firmware.py --limit gpu-004 --limit gpu-006",
        "fix: pyinfra -y inventory/lab.py deploy/firmware.py --limit gpu-004",
        "fix: pyinfra -y inventory/lab.py deploy/firmware.py --limit gpu-005",
        "fix: pyinfra -y inventory/lab.py deploy/bringup.py --limit gpu-006",
        "fix: pin the value in firmware/lab.yaml, or bring the odd nodes in line with the "
        "rest"], fixes
    # Each node that differs fails, naming what: the exit code says the fleet drifted.
    assert "audit: gpu-004 differs: firmware bios, firmware bmc" in result.stdout
    # Read-only: the nodes hold what they held, and no file on them was written.
    assert {node: fw.node_record(node) for node in AUDITED} == before
    for node in AUDITED:
        assert fw.written_since(node, "/run/kiln-audit-marker") == [], node
    # Recorded: the ledger's audit and drifts, and the JSON report.
    report = re.search(r"report: (\S+/reports/audit-\d+\.json)", result.stdout)
    assert report, result.stdout
    data = json.loads(Path(report.group(1)).read_text())
    assert data["clean"] is False
    assert sorted(data["at_fault"]) == list(AUDITED)
    assert {d["item"] for d in data["drifts"]} == {"firmware bios", "firmware bmc",
                                                   "firmware connectx7", f"hold {RELEASED}",
                                                   f"bios {BIOS_SETTING[0]}"}
    assert [odd["item"] for odd in data["inconsistent"]] == [f"bios {UNPINNED[0]}"]
    # Put back through the BMC: in effect at each node's next reset (gpu-005's is the
    # firmware update's).
    fw.set_bios(NIC_NODE, BIOS_SETTING[0], BIOS_SETTING[2])
    fw.set_bios(HOLD_NODE, UNPINNED[0], UNPINNED[2])


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
    assert f"pool: drained {REDFISH_NODE} from the file pool {fw.pool.path} (firmware update: " \
           "bios -> 1.6.2, bmc -> 1.08.00)" in redfish, redfish
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
    assert fw.pool.drained()[REDFISH_NODE].startswith(
        "kiln: firmware update: bios -> 1.6.2")
    suite = fw.suite()
    assert suite.returncode == 0, suite.stdout + suite.stderr
    assert re.search(r"\b6 passed\b", suite.stdout), suite.stdout


def test_after_the_firmware_deploy_the_audit_finds_only_the_hold_then_nothing(fw):
    # The firmware deploy the audit named for gpu-006 (gpu-004's and gpu-005's ran above);
    # its reset also brings the BIOS setting put back into effect.
    update = fw.pyinfra("deploy/firmware.py", HOLD_NODE)
    assert update.returncode == 0, update.stdout
    result = fw.audit()
    assert result.returncode != 0, result.stdout
    lines = [line.split("] ", 1)[-1].strip() for line in result.stdout.splitlines()]
    groups = [line for line in lines if line.startswith(("DRIFT ", "INCONSISTENT ", "UNREAD ",
                                                         "NOT READ "))]
    # The hold has been released since the first audit, and the ledger says so.
    assert len(groups) == 1 and re.fullmatch(
        rf"DRIFT hold {RELEASED}: pinned held, found not held on gpu-006, since "
        r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", groups[0]), groups
    fw.ssh(HOLD_NODE, f"apt-mark hold {RELEASED}")
    clean = fw.audit()
    assert clean.returncode == 0, clean.stdout
    assert re.search(r"audit: clean: 3 nodes, \d+ values read, nothing drifts", clean.stdout)
    # A preview prints the same and records nothing.
    reports = sorted((fw.lab_dir / "reports").glob("audit-*.json"))
    preview = fw.audit(mode="--dry")
    assert preview.returncode == 0, preview.stdout
    assert "audit: clean: 3 nodes" in preview.stdout and "a preview; recorded nowhere" in \
        preview.stdout
    assert sorted((fw.lab_dir / "reports").glob("audit-*.json")) == reports


def test_a_second_run_changes_nothing(fw):
    boots = {node: fw.boots(node) for node in NODES}
    result = fw.firmware()
    assert result.returncode == 0, result.stdout
    hosts, success, error, no_change = totals(result)
    assert (success, error) == ("-", "-"), result.stdout
    assert hosts == no_change == "2"
    assert {node: fw.boots(node) for node in NODES} == boots

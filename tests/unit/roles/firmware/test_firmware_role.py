"""roles/firmware's pure parts: recognising components in what the sources print (fixtures of
mlxfwmanager and nvidia-smi, the HPE iLO 6 mockup's FirmwareInventory), planning an update,
checking a blob, and the rollout that stops after a failed batch."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kiln.core.manifest import Blob, FirmwareComponent, load_manifest
from kiln.roles.firmware import operations
from kiln.roles.firmware.blobs import BlobRefused, blob_url, check_chunks
from kiln.roles.firmware.observe import observe, sources_needed, version_matches
from kiln.roles.firmware.parsers import parse_mlxfwmanager
from kiln.roles.firmware.plan import plan_update
from kiln.roles.nvidia.parsers import parse_nvidia_smi_q

ROOT = Path(__file__).resolve().parents[4]
FIXTURES = ROOT / "tests" / "fixtures"
LAB = ROOT / "kiln" / "firmware" / "lab.yaml"
HPE_INVENTORY = FIXTURES / "redfish/hpe-dl380a-gen11-h100nvl/UpdateService/FirmwareInventory"
MLX = FIXTURES / "mlxfwmanager/query.h100x8.update-required.txt"
SMI = FIXTURES / "nvidia-smi/q.h100x8.535.161.08.txt"


def lab_components() -> dict[str, FirmwareComponent]:
    return load_manifest(LAB).firmware


def lab_redfish(bios: str = "1.6.2", bmc: str = "1.08.00") -> list[dict[str, Any]]:
    """What the lab BMC's FirmwareInventory says (roles.bmc facts' shape)."""
    return [
        {"id": "BIOS", "name": "System BIOS", "version": bios, "updateable": True},
        {"id": "BMC", "name": "Baseboard Management Controller", "version": bmc,
         "updateable": True},
    ]


def hpe_inventory() -> list[dict[str, Any]]:
    collection = json.loads((HPE_INVENTORY / "index.json").read_text())
    items = []
    for member in collection["Members"]:
        item_id = member["@odata.id"].rstrip("/").rsplit("/", 1)[1]
        item = json.loads((HPE_INVENTORY / item_id / "index.json").read_text())
        items.append({"id": item["Id"], "name": item["Name"], "version": item["Version"],
                      "updateable": item.get("Updateable")})
    return items


def component(**fields: Any) -> FirmwareComponent:
    return FirmwareComponent.model_validate(fields)


# -- recognition ---------------------------------------------------------------------------


def test_lab_manifest_names_every_source():
    assert sources_needed(lab_components()) == {"redfish", "mlxfwmanager", "nvidia-smi"}


def test_components_recognised_in_every_source_with_the_drift_named():
    mlx = parse_mlxfwmanager(MLX.read_text())
    smi = parse_nvidia_smi_q(SMI.read_text())
    statuses = observe(lab_components(), lab_redfish(bios="1.5.0"), mlx, smi)
    assert statuses["bios"].drifted[0].where == "FirmwareInventory/BIOS"
    assert statuses["bios"].describe() == (
        "bios: pinned 1.6.2; FirmwareInventory/BIOS (redfish) runs 1.5.0")
    assert statuses["bmc"].ok
    # Only the cards with the manifest's PSID are the component (the ConnectX-6 Dx is not).
    nic = statuses["connectx7"]
    assert [r.where for r in nic.readings] == ["/dev/mst/mt4129_pciconf0",
                                               "/dev/mst/mt4129_pciconf1"]
    assert [r.device for r in nic.drifted] == ["/dev/mst/mt4129_pciconf0"]
    vbios = statuses["gpu-vbios"]
    assert len(vbios.readings) == 8 and vbios.ok
    assert vbios.readings[0].where == "GPU 00000000:19:00.0 VBIOS Version"


def test_a_source_not_read_leaves_its_component_missing():
    statuses = observe(lab_components(), redfish=lab_redfish())
    assert statuses["bios"].ok
    nic = statuses["connectx7"]
    assert nic.missing and not nic.ok
    assert nic.describe() == "connectx7: pinned 28.43.1014, not found (no source was read)"
    # A source read that shows no such part: missing too, and the message says where kiln looked.
    statuses = observe(lab_components(), lab_redfish(), mlxfwmanager=[])
    assert statuses["connectx7"].describe() == (
        "connectx7: pinned 28.43.1014, not found (mlxfwmanager PSID MT_0000000838)")


def test_hpe_bmc_reports_gpus_and_nics_and_they_are_recognised():
    """An iLO lists the GPUs and the ConnectX by name: Redfish rules find them too."""
    components = {
        "ilo": component(version="1.66", match={"redfish": {"name_pattern": "^iLO 6$"}},
                         update="redfish", activation="bmc-reset"),
        "rom": component(version="U58 v2.44 (01/17/2025)",
                         match={"redfish": {"name_pattern": "^System ROM$"}}, update="redfish"),
        "nic": component(version="28.43.1014",
                         match={"redfish": {"name_pattern": "ConnectX-7"},
                                "psid": "MT_0000000838"}, update="mlxfwmanager"),
        "gpu": component(version="96.00.AF.00.02",
                         match={"redfish": {"name_pattern": "^NVIDIA H100"},
                                "nvidia_smi_field": "VBIOS Version"}, update="none"),
    }
    statuses = observe(components, hpe_inventory())
    # iLO says "1.66 Dec 13 2024": its version with a build stamp.
    assert statuses["ilo"].ok and statuses["ilo"].readings[0].version == "1.66 Dec 13 2024"
    # "System ROM" but not "Redundant System ROM": the pattern is anchored.
    assert [r.where for r in statuses["rom"].readings] == ["FirmwareInventory/2"]
    assert statuses["rom"].ok
    assert [r.version for r in statuses["nic"].readings] == ["28.43.1014"]
    assert [r.where for r in statuses["gpu"].readings] == ["FirmwareInventory/21",
                                                          "FirmwareInventory/22"]
    # Both sources together: the BMC's view and the node's own must both agree.
    smi = parse_nvidia_smi_q(SMI.read_text())
    gpu = observe({"gpu": components["gpu"]}, hpe_inventory(), nvidia_smi=smi)["gpu"]
    assert len(gpu.readings) == 10 and len(gpu.drifted) == 8
    assert {r.source for r in gpu.drifted} == {"nvidia-smi"}


def test_version_match_is_exact_but_for_a_bmc_build_stamp():
    assert version_matches("1.66", "1.66 Dec 13 2024")
    assert version_matches("28.43.1014", " 28.43.1014 ")
    assert not version_matches("1.6", "1.66")
    assert not version_matches("28.43.1014", "28.43.10140")
    assert not version_matches("1.6.2", None)


def test_nested_nvidia_smi_field():
    smi = parse_nvidia_smi_q(SMI.read_text())
    inforom = component(version="G520.0200.00.05",
                        match={"nvidia_smi_field": "Inforom Version/Image Version"},
                        update="none")
    status = observe({"inforom": inforom}, nvidia_smi=smi)["inforom"]
    assert len(status.readings) == 8
    assert {r.version for r in status.readings} == {
        smi["gpus"][0]["inforom"]["image"]}


# -- planning ------------------------------------------------------------------------------


def test_plan_flashes_the_drifted_parts_through_their_paths():
    mlx = parse_mlxfwmanager(MLX.read_text())
    smi = parse_nvidia_smi_q(SMI.read_text())
    components = lab_components()
    statuses = observe(components, lab_redfish(bios="1.5.0", bmc="1.06.00"), mlx, smi)
    plan = plan_update(statuses, components, "firmware/lab.yaml")
    assert plan.refusals == []
    assert [(f.key, f.update, f.targets) for f in plan.flashes] == [
        ("bios", "redfish", ("BIOS",)),
        ("bmc", "redfish", ("BMC",)),
        ("connectx7", "mlxfwmanager", ("/dev/mst/mt4129_pciconf0",)),
    ]
    assert plan.resets == ["bmc-reset", "system-reset"]
    assert plan.summary() == "bios -> 1.6.2, bmc -> 1.08.00, connectx7 -> 28.43.1014"


def test_plan_refuses_what_kiln_must_not_flash():
    smi = parse_nvidia_smi_q(SMI.read_text())
    document = yaml.safe_load(LAB.read_text())
    components = {key: FirmwareComponent.model_validate(value)
                  for key, value in document["firmware"].items()}
    components["gpu-vbios"] = component(version="96.00.99.00.01",
                                        match={"nvidia_smi_field": "VBIOS Version"},
                                        update="none")
    components["bmc"] = component(version="1.08.00", match={"redfish": {"id_pattern": "^BMC$"}},
                                  update="redfish", activation="bmc-reset")  # no blob
    statuses = observe(components, lab_redfish(bmc="1.06.00"), [], smi)
    plan = plan_update(statuses, components, "x/lab.yaml")
    assert plan.flashes == []
    assert len(plan.refusals) == 3
    assert plan.refusals[0].startswith("bmc: pinned 1.08.00; FirmwareInventory/BMC (redfish) "
                                       "runs 1.06.00; x/lab.yaml: firmware.bmc has no blob")
    assert "not found (mlxfwmanager PSID MT_0000000838); x/lab.yaml: firmware.connectx7 " \
           "names it, the node does not show it" in plan.refusals[1]
    assert "x/lab.yaml: firmware.gpu-vbios.update is none" in plan.refusals[2]


def test_nothing_to_do_on_a_node_at_the_manifest():
    statuses = observe(lab_components(), lab_redfish(), parse_mlxfwmanager(
        MLX.read_text().replace("28.39.1002", "28.43.1014")),
        parse_nvidia_smi_q(SMI.read_text()))
    plan = plan_update(statuses, lab_components(), "firmware/lab.yaml")
    assert plan.flashes == [] and plan.refusals == [] and plan.resets == []


# -- blobs ---------------------------------------------------------------------------------


def blob_of(data: bytes, file: str = "lab-bios-1.6.2.bin") -> Blob:
    return Blob(file=file, sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def test_blob_of_the_pinned_sha256_and_size_passes():
    data = bytes(range(256)) * 64
    check_chunks([data[:1000], data[1000:]], blob_of(data), "http://m/firmware/x")
    assert blob_url("http://m/firmware/", blob_of(data)) == "http://m/firmware/lab-bios-1.6.2.bin"


def test_wrong_sha256_is_refused_naming_the_file_and_both_digests():
    data = b"a" * 4096
    pinned = Blob(file="lab-bios-1.6.2.bin", sha256="0" * 64, size=4096)
    with pytest.raises(BlobRefused) as refused:
        check_chunks([data], pinned, "http://10.231.0.19/firmware/lab-bios-1.6.2.bin")
    message = str(refused.value)
    assert message.startswith("firmware blob lab-bios-1.6.2.bin "
                              "(http://10.231.0.19/firmware/lab-bios-1.6.2.bin): sha256 ")
    assert hashlib.sha256(data).hexdigest() in message and "0" * 64 in message
    assert message.endswith("refused, nothing flashed")


def test_wrong_size_is_refused_and_an_endless_file_is_cut_short():
    data = b"b" * 100
    right = blob_of(data)
    with pytest.raises(BlobRefused, match=r"\(99 bytes\), the manifest pins sha256 .* \(100 "):
        check_chunks([data[:99]], right, "f")

    def endless():
        while True:
            yield b"\0" * 65536

    with pytest.raises(BlobRefused, match="larger than the 100 bytes the manifest pins"):
        check_chunks(endless(), right, "f")


# -- the rollout ---------------------------------------------------------------------------


class StubState:
    """What the steps use of pyinfra's State: identity (the rollout is per run)."""


class StubHost:
    def __init__(self, name: str):
        self.name = name
        self.data = {"kiln_node": name}
        self.logged: list[str] = []

    def log_styled(self, message: str, **kwargs: Any) -> None:
        self.logged.append(message)

    def log(self, message: str, **kwargs: Any) -> None:
        self.logged.append(message)


def test_a_failure_stops_later_batches_never_the_nodes_of_its_own_batch():
    """pyinfra runs a batch's nodes as greenlets started together: each takes the list of
    earlier failures before any node of its batch can fail."""
    import gevent
    from gevent.pool import Pool

    state = StubState()
    seen: dict[str, list[str]] = {}

    def node_operation(name: str, fails: bool) -> None:
        seen[name] = operations.earlier_failures(state)
        if fails:  # at once, with no I/O: the worst case for a node beside it
            operations._recorded(state, StubHost(name),
                                 lambda state, host: operations._fail(host, "flash failed"))

    pool = Pool(8)
    batches = [[("gpu-001", True), ("gpu-002", False)], [("gpu-003", False)]]
    for batch in batches:  # as pyinfra's _run_single_op does with _parallel
        gevent.joinall([pool.spawn(node_operation, name, fails) for name, fails in batch])
    assert seen == {"gpu-001": [], "gpu-002": [], "gpu-003": ["gpu-001"]}
    assert operations.rollout_for(state).failed == ["gpu-001"]
    # Another run starts with a clean slate.
    assert operations.rollout_for(StubState()).failed == []


def test_a_kiln_error_in_a_step_fails_the_node_naming_it():
    state = StubState()
    host = StubHost("gpu-002")

    def refused(state, host):
        raise BlobRefused("firmware blob x.bin (u): sha256 a, the manifest pins b")

    assert operations._recorded(state, host, refused) is False
    assert host.logged == ["node gpu-002: firmware blob x.bin (u): sha256 a, the manifest "
                           "pins b"]
    assert operations.rollout_for(state).failed == ["gpu-002"]


def test_update_commands_check_blobs_first_and_verify_last():
    mlx = parse_mlxfwmanager(MLX.read_text())
    components = lab_components()
    statuses = observe(components, lab_redfish(bios="1.5.0"), mlx,
                       parse_nvidia_smi_q(SMI.read_text()))
    plan = plan_update(statuses, components, "firmware/lab.yaml")
    commands = operations.update_commands(plan, "firmware/lab.yaml", "http://m/firmware/",
                                          True, True)
    steps = [command.args[0].__name__ for command in commands]
    assert steps == ["_check_blobs", "_drain", "_redfish_flash", "_mlx_flash", "step",
                     "_verify"]
    assert commands[0].args[2] == {
        "bios": "http://m/firmware/lab-bios-1.6.2.bin",
        "connectx7": "http://m/firmware/lab-connectx7-28.43.1014.bin"}
    assert re.fullmatch(r"firmware update: bios -> 1\.6\.2, connectx7 -> 28\.43\.1014",
                        commands[1].args[2])


def lab_plan(bios: str = "1.6.2", bmc: str = "1.08.00") -> Any:
    """The plan for a lab node whose cards all run the pinned 28.43.1014."""
    components = lab_components()
    cards_at_pins = MLX.read_text().replace("28.39.1002", "28.43.1014")
    statuses = observe(components, lab_redfish(bios=bios, bmc=bmc),
                       parse_mlxfwmanager(cards_at_pins), parse_nvidia_smi_q(SMI.read_text()))
    return plan_update(statuses, components, "firmware/lab.yaml")


def step_names(plan: Any) -> list[str]:
    commands = operations.update_commands(plan, "firmware/lab.yaml", "http://m/firmware/",
                                          True, None)
    return [command.args[0].__name__ for command in commands]


def test_a_bmc_image_is_activated_by_restarting_the_bmc_not_the_system():
    plan = lab_plan(bmc="1.06.00")
    assert [flash.key for flash in plan.flashes] == ["bmc"] and plan.resets == ["bmc-reset"]
    assert step_names(plan) == ["_check_blobs", "_drain", "_redfish_flash", "_bmc_restart",
                                "_verify"]
    both = lab_plan(bios="1.5.0", bmc="1.06.00")
    assert step_names(both) == ["_check_blobs", "_drain", "_redfish_flash", "_redfish_flash",
                                "_bmc_restart", "step", "_verify"]  # step: the system reset


class RestartingBMC:
    """Stands in for the node's BMC: records the restarts asked of it."""

    def __init__(self, failure: Exception | None = None):
        self.restarts: list[float] = []
        self.closed = False
        self.failure = failure

    def reset_bmc(self, wait: float) -> str:
        self.restarts.append(wait)
        if self.failure:
            raise self.failure
        return "GracefulRestart"

    def close(self) -> None:
        self.closed = True


def test_the_bmc_restart_step_restarts_the_bmc_and_a_failure_fails_the_node(monkeypatch):
    from kiln.roles.bmc import BMCTimeout
    from kiln.roles.bmc import facts as bmc_facts

    bmc = RestartingBMC()
    monkeypatch.setattr(bmc_facts, "bmc_for", lambda host: bmc)
    state, host = StubState(), StubHost("gpu-003")
    assert operations._recorded(state, host, operations._bmc_restart, ["bmc"]) is True
    assert bmc.restarts == [operations.BMC_RESTART_WAIT] and bmc.closed
    assert host.logged == ["firmware: BMC restarted (GracefulRestart) to run the new bmc "
                           "image, and answers again"]
    bmc = RestartingBMC(BMCTimeout("BMC 10.231.1.13 (redfish, node gpu-003): the BMC is not "
                                   "back 600 s after its restart (last seen: HTTP 503)"))
    assert operations._recorded(state, host, operations._bmc_restart, ["bmc"]) is False
    assert host.logged[-1] == ("node gpu-003: BMC 10.231.1.13 (redfish, node gpu-003): the "
                               "BMC is not back 600 s after its restart (last seen: HTTP 503)")
    assert operations.rollout_for(state).failed == ["gpu-003"] and bmc.closed


def test_a_pooled_node_is_drained_and_leaves_pooled_in_the_ledger(tmp_path):
    from kiln.core.ledger import Ledger, NodeState
    from kiln.roles.pool.file import FilePool

    pool_file, ledger_file = tmp_path / "pool.yaml", tmp_path / "kiln.db"
    pool = FilePool(pool_file)
    pool.add("gpu-001")
    pool.add("gpu-002")
    ledger = Ledger(ledger_file)
    ledger.enroll("gpu-001")
    for state in (NodeState.DEPLOYING, NodeState.DEPLOYED, NodeState.CONFIGURED,
                  NodeState.BURNING_IN, NodeState.POOLED):
        ledger.transition("gpu-001", state, "test")
    host = StubHost("gpu-001")
    host.data.update(kiln_ledger=str(ledger_file), kiln_pool_file=str(pool_file))
    reason = "firmware update: bios -> 1.6.2"
    assert operations._drain(StubState(), host, True, reason) is True
    assert pool.members() == ["gpu-002"]
    # The pool holds kiln's reason, marked as kiln's: only kiln's drains are kiln's to undo.
    assert pool.drained() == {"gpu-001": f"kiln: {reason}"}
    assert ledger.state("gpu-001") == NodeState.CONFIGURED
    assert ledger.reason("gpu-001") == f"drained: {reason}"
    assert host.logged == [f"pool: drained gpu-001 from the file pool {pool_file} ({reason})"]
    # A node that is not in the pool: nothing to drain, the ledger untouched.
    other = StubHost("gpu-003")
    other.data.update(kiln_ledger=str(ledger_file), kiln_pool_file=str(pool_file))
    assert operations._drain(StubState(), other, True, reason) is True
    assert pool.members() == ["gpu-002"] and other.logged == []
    assert ledger.state("gpu-003") is None
    ledger.close()


# -- the deploy: max_parallel_firmware is pyinfra's _parallel --------------------------------


def manifest_dir(tmp_path: Path, name: str, sku: str, max_parallel: int) -> Path:
    directory = tmp_path / name
    directory.mkdir()
    document = yaml.safe_load(LAB.read_text())
    document["sku"] = sku
    document["max_parallel_firmware"] = max_parallel
    (directory / f"{sku}.yaml").write_text(yaml.safe_dump(document))
    return directory


def test_the_deploy_bounds_the_operation_by_max_parallel_firmware(tmp_path):
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all
    from pyinfra.api.deploy import add_deploy

    from kiln.roles.firmware import firmware

    data = {"kiln_sku": "lab", "kiln_role": "gpu", "kiln_mirror_host": "10.0.0.1",
            "kiln_firmware_dir": str(manifest_dir(tmp_path, "m", "lab", 3))}
    inventory = Inventory(([("@local", data)], {}))
    state = State(inventory, Config())
    connect_all(state)
    add_deploy(state, firmware)
    (meta,) = state.op_meta.values()
    assert meta.global_arguments["_parallel"] == 3
    assert any("Firmware as the manifest pins" in name for name in meta.names)


def test_a_fleet_of_several_skus_goes_at_the_most_cautious_pace(tmp_path):
    from types import SimpleNamespace

    from pyinfra.context import ctx_host

    from kiln.roles.firmware import fleet_parallel

    def node(sku: str, directory: Path, groups: tuple[str, ...] = ("gpu",)) -> Any:
        return SimpleNamespace(groups=groups, data={"kiln_sku": sku,
                                                    "kiln_firmware_dir": str(directory)})

    fast, slow = manifest_dir(tmp_path, "a", "fast", 4), manifest_dir(tmp_path, "b", "slow", 2)
    service = node("slow", manifest_dir(tmp_path, "c", "slow", 1), groups=("service",))
    fleet = [node("fast", fast), node("slow", slow), service]
    with ctx_host.use(SimpleNamespace(state=SimpleNamespace(inventory=fleet))):
        assert fleet_parallel() == 2


def test_the_deploy_checks_the_node_against_the_site_manifest(tmp_path, monkeypatch):
    from site_manifests import Recorder, deploy_state

    import kiln.roles.firmware as firmware_role

    site = manifest_dir(tmp_path, "site", "lab", 2)
    recorder = Recorder()
    monkeypatch.setattr(firmware_role, "operations", recorder)
    deploy_state(firmware_role.firmware, {
        "kiln_node": "gpu-001", "kiln_sku": "lab", "kiln_role": "gpu",
        "kiln_mirror_host": "10.0.0.1", "kiln_firmware_dir": str(site),
        "kiln_pool_file": str(tmp_path / "pool.yaml")}, "gpu-001")
    (pinned,) = recorder.called("pinned")
    assert pinned["manifest_file"] == str(site / "lab.yaml")
    assert "drain" not in pinned  # an update drains the node: the operation's default
    assert pinned["mirror_firmware"] == "http://10.0.0.1/firmware/"
    assert pinned["_parallel"] == 2

"""Real vendor Redfish mockups (tests/fixtures/redfish) served read-only by the real
`sushy-static` and read with the real sushy client: the fixture later Redfish-facts tests
use (lab.bmc.static.serve)."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import sushy
from sushy.resources import constants as res_cons

from kiln.lab.bmc.static import StaticServerError, serve

MOCKUPS = Path(__file__).resolve().parents[2] / "fixtures" / "redfish"
HPE = MOCKUPS / "hpe-dl380a-gen11-h100nvl"
DMTF = MOCKUPS / "dmtf-public-rackmount1"


def client(root: str) -> sushy.Sushy:
    # sushy-static checks no credentials; sushy wants some.
    return sushy.Sushy(root, auth=sushy.auth.BasicAuth("reader", "unused"))


@pytest.fixture(scope="module")
def hpe_root():
    with serve(HPE) as root:
        yield root


@pytest.fixture(scope="module")
def hpe(hpe_root):
    return client(hpe_root)


@pytest.fixture(scope="module")
def dmtf():
    with serve(DMTF) as root:
        yield client(root)


def test_hpe_ilo6_system(hpe):
    [system] = hpe.get_system_collection().get_members()
    assert system.identity == "1"
    assert system.model.startswith("ProLiant DL380a Gen11")
    assert system.power_state == res_cons.PowerState.ON
    assert system.bios_version == "U58 v2.44 (01/17/2025)"


def test_hpe_ilo6_firmware_inventory(hpe):
    inventory = hpe.get_update_service().firmware_inventory
    items = {item.name: item.version for item in inventory.get_members()}
    assert items["iLO 6"] == "1.66 Dec 13 2024"
    assert items["System ROM"] == "U58 v2.44 (01/17/2025)"
    assert items["ConnectX-7 200GE 2P NIC"] == "28.43.1014"
    assert items["NVIDIA H100 NVL"] == "96.00.AF.00.02"
    assert len(inventory.members_identities) == 34
    [manager] = hpe.get_manager_collection().get_members()
    assert manager.firmware_version == "iLO 6 v1.66"


def test_dmtf_rackmount_system_and_firmware(dmtf):
    [system] = dmtf.get_system_collection().get_members()
    assert system.identity == "437XR1138R2"
    assert system.power_state == res_cons.PowerState.ON
    assert system.bios_version == "P79 v1.45 (12/06/2017)"
    inventory = dmtf.get_update_service().firmware_inventory
    items = {item.identity: item.version for item in inventory.get_members()}
    assert items == {"BMC": "1.45.455b66-rev4", "SS": "2.50", "BIOS": "P79 v1.45"}


def test_what_a_mockup_lacks_is_a_404(hpe_root):
    assert requests.get(f"{hpe_root}/Systems/1", timeout=5).status_code == 200
    assert requests.get(f"{hpe_root}/Systems/2", timeout=5).status_code == 404


def test_a_directory_that_is_no_mockup_is_refused(tmp_path):
    with pytest.raises(StaticServerError, match="not a Redfish mockup"):
        with serve(tmp_path):
            pass

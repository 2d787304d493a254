"""Provision reads its node through the node context: the image is the one of the SKU's
manifest in the site's firmware directory, the ledger and pool the ones group data names."""

from __future__ import annotations

from site_manifests import commands, deploy_state, site_firmware_dir

from kiln.roles.provision import desired_image, ledger_for, pool_for, provision


def change_image(document: dict) -> None:
    document["os"]["distro_series"] = "trixie"
    document["os"]["hwe_kernel"] = "ga-13"


def test_the_image_comes_from_the_site_firmware_directory(tmp_path):
    site = site_firmware_dir(tmp_path, change_image)
    image = desired_image({"kiln_node": "site-001", "kiln_sku": "lab",
                           "kiln_firmware_dir": str(site)})
    assert (image.distro_series, image.hwe_kernel) == ("trixie", "ga-13")
    assert desired_image({"kiln_sku": "lab"}).distro_series == "bookworm"  # kiln's own


def test_the_deploy_images_with_the_site_manifest(tmp_path):
    """No MAAS in this inventory: the preview says so, and the command it plans carries
    the image of the site's manifest."""
    site = site_firmware_dir(tmp_path, change_image)
    state = deploy_state(provision, {"kiln_sku": "lab", "kiln_firmware_dir": str(site)},
                         "site-provision-001")
    (command,) = commands(state)
    (image,) = command.args
    assert (image.distro_series, image.hwe_kernel) == ("trixie", "ga-13")


def test_a_bad_site_manifest_fails_the_node_not_the_run(tmp_path):
    site = site_firmware_dir(tmp_path, lambda document: document.pop("os"))
    state = deploy_state(provision, {"kiln_sku": "lab", "kiln_firmware_dir": str(site)},
                         "site-provision-002")
    (command,) = commands(state)
    (message,) = command.args
    assert message.startswith(f"provision: {site}/lab.yaml: os: field required")


def test_ledger_and_pool_are_the_ones_group_data_names(tmp_path):
    data = {"kiln_node": "site-001", "kiln_ledger": str(tmp_path / "k.db"),
            "kiln_pool_file": str(tmp_path / "pool.yaml")}
    ledger = ledger_for(data)
    try:
        assert ledger.path == tmp_path / "k.db"
    finally:
        ledger.close()
    assert pool_for(data).path == tmp_path / "pool.yaml"

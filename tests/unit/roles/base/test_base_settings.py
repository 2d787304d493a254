"""The base role's host data, and the files it renders from templates/base/."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.core.errors import KilnError, ValidationFailed
from kiln.roles.base.aptsources import from_host_data, signing_key, sources_indexed
from kiln.roles.base.parsers import parse_apt_policy_sources
from kiln.roles.base.settings import DEFAULT_SYSCTL, AptMirror, settings_from_data
from kiln.roles.base.templates import render

ROOT = Path(__file__).resolve().parents[4]
LAB_MIRROR = {
    "sources": [{"uri": "http://10.231.0.1:8081/apt/", "suite": "kilnlab"},
                {"uri": "http://10.231.0.1:8081/os", "suite": "bookworm",
                 "components": ["main", "contrib"]}],
    "key": "http://10.231.0.1:8081/keys/lab-archive.asc",
}


def settings(**data):
    return settings_from_data(data, {"hostname": "gpu-001", "ntp_servers": ["10.231.0.12"]})


def test_defaults_and_overrides():
    base = settings(kiln_apt_mirror=LAB_MIRROR)
    assert base.ntp_servers == ["10.231.0.12"] and base.hostname == "gpu-001"
    assert base.sysctl == DEFAULT_SYSCTL and base.memlock == "unlimited"
    assert base.time_sync_sets_clock
    assert base.apt_mirror.sources[0].uri == "http://10.231.0.1:8081/apt"
    assert settings().apt_mirror is None  # the cluster's mirror
    lab = settings(kiln_apt_mirror=LAB_MIRROR, kiln_ntp_servers=["10.231.0.1"],
                   kiln_sysctl={"net.ipv4.tcp_rmem": "4096  87380 134217728",
                                "net.ipv4.conf.all.arp_ignore": 1},
                   kiln_time_sync_sets_clock=False, kiln_hostname="node-7")
    assert lab.sysctl == {"net.ipv4.tcp_rmem": "4096 87380 134217728",
                          "net.ipv4.conf.all.arp_ignore": "1"}
    assert lab.ntp_servers == ["10.231.0.1"] and lab.hostname == "node-7"


def test_every_problem_names_its_data_key():
    with pytest.raises(ValidationFailed) as info:
        settings_from_data({"kiln_apt_mirror": {"sources": [{"uri": "ftp://x", "suite": "s"}],
                                                "key": "k", "extra": 1},
                            "kiln_memlock": "lots", "kiln_hostname": "Bad_Name"}, {})
    problems = "\n".join(info.value.problems)
    assert "host data kiln_apt_mirror.sources[0].uri: 'ftp://x' is not an http" in problems
    assert "host data kiln_apt_mirror.extra: unknown field" in problems
    assert "host data kiln_ntp_servers: is not set" in problems
    assert "kiln_apt_mirror: is not set" not in problems
    assert "host data kiln_memlock: 'lots'" in problems
    assert "host data kiln_hostname: 'Bad_Name' is not a valid host name" in problems


def test_sysctl_names_and_values_are_checked():
    with pytest.raises(ValidationFailed, match="kiln_sysctl: .*'rm -rf' is not a sysctl name"):
        settings(kiln_apt_mirror=LAB_MIRROR, kiln_sysctl={"rm -rf": "1"})
    with pytest.raises(ValidationFailed, match="net.core.rmem_max: value True"):
        settings(kiln_apt_mirror=LAB_MIRROR, kiln_sysctl={"net.core.rmem_max": True})


def lab_config(tmp_path, sources: list) -> object:
    key = tmp_path / "lab-archive.asc"
    key.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ\n-----END PGP PUBLIC KEY "
                   "BLOCK-----\n")
    return from_host_data(AptMirror.model_validate({"sources": sources, "key": str(key)}))


def test_sources_file_names_only_the_mirror_with_its_keyring(tmp_path):
    config = lab_config(tmp_path, LAB_MIRROR["sources"])
    lines = [line for line in config.text.splitlines() if not line.startswith("#")]
    assert lines == [
        "deb [signed-by=/etc/apt/keyrings/kiln-mirror.asc] http://10.231.0.1:8081/apt kilnlab main",
        "deb [signed-by=/etc/apt/keyrings/kiln-mirror.asc] http://10.231.0.1:8081/os bookworm "
        "main contrib",
    ]
    assert config.indexes == (("http://10.231.0.1:8081/apt", "kilnlab/main"),
                              ("http://10.231.0.1:8081/os", "bookworm/main"),
                              ("http://10.231.0.1:8081/os", "bookworm/contrib"))
    assert config.key.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")


def test_sources_indexed_means_every_source_and_component_has_an_index(tmp_path):
    policy = parse_apt_policy_sources(
        "Package files:\n 500 http://10.231.0.1:8081/apt kilnlab/main amd64 Packages\n")
    assert sources_indexed(lab_config(tmp_path, LAB_MIRROR["sources"][:1]).indexes, policy)
    assert not sources_indexed(lab_config(tmp_path, LAB_MIRROR["sources"]).indexes, policy)


def test_rendered_os_files():
    chrony = render("base/chrony.conf.j2", servers=["10.0.0.1", "10.0.0.2"])
    assert [line for line in chrony.splitlines() if line.startswith(("server", "pool"))] == [
        "server 10.0.0.1 iburst", "server 10.0.0.2 iburst"]
    assert 'DAEMON_OPTS="-F 1 -x"' in render("base/chrony-defaults.j2", sets_clock=False)
    assert 'DAEMON_OPTS="-F 1"' in render("base/chrony-defaults.j2", sets_clock=True)
    limits = render("base/limits-rdma.conf.j2", memlock="unlimited").splitlines()
    assert "*       hard    memlock unlimited" in limits
    assert "DefaultLimitMEMLOCK=infinity" in render("base/systemd-rdma.conf.j2",
                                                    memlock="infinity")
    sysctl = render("base/sysctl-kiln.conf.j2", settings={"b.x": "2", "a.y": "1 2"})
    assert [line for line in sysctl.splitlines() if not line.startswith("#")] == [
        "a.y = 1 2", "b.x = 2"]
    periodic = render("base/99kiln-no-auto-upgrades.j2")
    assert 'APT::Periodic::Unattended-Upgrade "0";' in periodic


def test_a_template_value_missing_is_an_error():
    from jinja2 import UndefinedError

    with pytest.raises(UndefinedError):
        render("base/chrony.conf.j2")


def test_signing_key_from_a_controller_file(tmp_path):
    key = tmp_path / "key.asc"
    key.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ\n-----END PGP PUBLIC KEY "
                   "BLOCK-----")
    assert signing_key(str(key)).endswith("BLOCK-----\n")
    other = tmp_path / "other.asc"
    other.write_text("<html>not found</html>")
    with pytest.raises(KilnError, match="kiln_apt_mirror.key .*not an armored OpenPGP"):
        signing_key(str(other))
    with pytest.raises(KilnError, match="cannot read"):
        signing_key(str(tmp_path / "missing.asc"))
    with pytest.raises(KilnError, match="cannot fetch"):
        signing_key("http://127.0.0.1:9/keys/x.asc")


# --- the node's manifest: a site's firmware directory --------------------------------------------


def test_the_deploy_pins_the_kernel_of_the_site_manifest(tmp_path, monkeypatch):
    from site_manifests import Recorder, deploy_state, site_firmware_dir

    import kiln.roles.base as base_role

    def change(document: dict) -> None:
        document["os"]["kernel"]["version"] = "6.1.119-1site1"

    site = site_firmware_dir(tmp_path, change)
    recorder = Recorder()
    monkeypatch.setattr(base_role, "operations", recorder)
    monkeypatch.setattr(base_role, "node_hostname", recorder.node_hostname)
    monkeypatch.setattr(base_role, "apt_source_config", lambda mirror, data: "apt source")
    deploy_state(base_role.base, {"kiln_node": "gpu-001", "kiln_sku": "lab",
                                  "kiln_ntp_servers": ["10.0.0.1"],
                                  "kiln_firmware_dir": str(site)}, "gpu-001")
    (pinned,) = recorder.called("pinned_packages")
    assert pinned["manifest"] == str(site / "lab.yaml")
    (kernel,) = pinned["sets"]
    assert {pin.version for pin in kernel.pins} == {"6.1.119-1site1"}
    (index,) = recorder.called("apt_index_current")
    assert {version for _, version in index["pins"]} == {"6.1.119-1site1"}
    assert recorder.called("node_hostname")[0]["hostname"] == "gpu-001"

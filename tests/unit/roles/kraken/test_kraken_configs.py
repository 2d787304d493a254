"""Kraken's five configs as kiln renders them, checked against Kraken's own reference configs
(tests/fixtures/specs/kraken: base.yaml + devcluster.yaml per component, Apache-2.0, see
SOURCE and LICENSE there): same keys, same nesting, same value types."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from kiln.roles.kraken import configs
from kiln.roles.kraken.configs import KrakenConfigError, load_config
from kiln.roles.kraken.settings import COMPONENTS, KrakenSettings
from kiln.roles.kraken.structure import differences

SPECS = Path(__file__).resolve().parents[3] / "fixtures/specs/kraken"
SHA = "ab" * 32
SERVICE = ["10.0.0.5", "10.0.0.6"]
def settings(**changes: Any) -> KrakenSettings:
    values: dict[str, Any] = {
        "version": "v0.1.4",
        "backends": [{"registry": "registry.example:5000"},
                     {"namespace": "library/.*", "registry": "mirror.gcr.io"}],
    }
    values.update(changes)
    return KrakenSettings.model_validate(values)


def reference(component: str) -> dict[str, Any]:
    directory = SPECS / component
    files = {name: (directory / name).read_text() for name in ("base.yaml", "devcluster.yaml")}
    return load_config(files, "devcluster.yaml")


def rendered(component: str, kraken: KrakenSettings) -> dict[str, Any]:
    cluster = configs.cluster_from(kraken, SERVICE)
    return load_config(configs.config_files(component, kraken, cluster))


@pytest.mark.parametrize("component", COMPONENTS)
def test_rendered_config_has_krakens_structure(component):
    ours = rendered(component, settings())
    assert differences(ours, reference(component)) == []


@pytest.mark.parametrize("component", COMPONENTS)
def test_structure_holds_with_tls_and_a_plain_http_backend(component, tmp_path):
    kraken = settings(tls={"ca": "ca.pem", "cert": "c.pem", "key": "c.key"},
                      backends=[{"registry": "10.0.0.5:5000", "insecure": True}])
    ours = rendered(component, kraken)
    assert differences(ours, reference(component)) == []
    assert ours["tls"]["server"]["disabled"] is False
    assert ours["tls"]["client"]["disabled"] is False


def test_the_structure_check_catches_a_wrong_type_a_missing_and_an_extra_key():
    """The check itself can fail: one change of each kind to Kraken's own agent config."""
    theirs = reference("agent")
    ours = yaml.safe_load(yaml.safe_dump(theirs))
    ours["allowed_cidrs"] = "127.0.0.1"
    del ours["store"]["cache_dir"]
    ours["tracker"]["hosts"]["dns"] = "x:80"
    assert sorted(differences(ours, theirs)) == [
        "allowed_cidrs: str, Kraken's is list",
        "store.cache_dir: missing",
        "tracker.hosts.dns: not in Kraken's config",
    ]
    origin = reference("origin")
    wrong = yaml.safe_load(yaml.safe_dump(origin))
    wrong["backends"] = [{"namespace": ".*", "backend": {"registry_blob": {"addr": "r:5000"}}}]
    problems = differences(wrong, origin)
    assert "backends[0] ~ backends[].backend.registry_blob.address: missing" in problems
    assert "backends[0] ~ backends[].backend.registry_blob.addr: not in Kraken's config" \
        in problems


def test_hosts_ring_backends_stores_and_cidrs_are_the_clusters():
    kraken = settings(store="/data/kraken", allowed_cidrs=["127.0.0.1", "10.244.0.0/16"],
                      hashring_max_replica=3)
    agent = rendered("agent", kraken)
    assert agent["tracker"]["hosts"]["static"] == ["10.0.0.5:15003", "10.0.0.6:15003"]
    assert agent["build_index"]["hosts"]["static"] == ["10.0.0.5:15004", "10.0.0.6:15004"]
    assert agent["allowed_cidrs"] == ["127.0.0.1", "10.244.0.0/16"]
    assert agent["store"]["download_dir"] == "/data/kraken/kraken-agent/download/"
    assert agent["tls"]["server"]["disabled"] is True
    origin = rendered("origin", kraken)
    assert origin["cluster"]["static"] == ["10.0.0.5:15002", "10.0.0.6:15002"]
    assert origin["hashring"]["max_replica"] == 3
    assert [b["namespace"] for b in origin["backends"]] == [".*", "library/.*"]
    assert origin["backends"][0]["backend"]["registry_blob"]["address"] == "registry.example:5000"
    index = rendered("build-index", kraken)
    assert index["backends"][1]["backend"]["registry_tag"]["address"] == "mirror.gcr.io"
    assert index["origin"]["hosts"]["static"] == ["10.0.0.5:15002", "10.0.0.6:15002"]
    tracker = rendered("tracker", kraken)
    assert tracker["peerstore"]["redis"]["addr"] == "127.0.0.1:6379"
    assert tracker["origin"]["hosts"]["static"] == origin["cluster"]["static"]
    proxy = rendered("proxy", settings(origins=["o1.example:15002"]))
    assert proxy["origin"]["hosts"]["static"] == ["o1.example:15002"]


def test_files_are_krakens_two_file_layout():
    files = configs.config_files("proxy", settings(), configs.cluster_from(settings(), SERVICE))
    assert sorted(files) == ["base.yaml", "kiln.yaml"]
    assert yaml.safe_load(files["kiln.yaml"])["extends"] == "base.yaml"
    assert "extends" not in yaml.safe_load(files["base.yaml"])


def test_origin_and_build_index_without_a_backend_are_refused():
    kraken = settings(backends=[])
    cluster = configs.cluster_from(kraken, SERVICE)
    with pytest.raises(KrakenConfigError, match="kiln_kraken_backends is empty"):
        configs.config_files("origin", kraken, cluster)
    assert configs.config_files("agent", kraken, cluster)


def test_no_service_node_and_no_host_list_is_refused():
    with pytest.raises(KrakenConfigError, match="no Kraken trackers: .*kiln_kraken_trackers"):
        configs.cluster_from(settings(), [])


def test_extends_loops_and_missing_parents_are_errors():
    with pytest.raises(KrakenConfigError, match="extends loops"):
        load_config({"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: a.yaml\n"}, "a.yaml")
    with pytest.raises(KrakenConfigError, match="kiln.yaml extends base.yaml, which is not"):
        load_config({"kiln.yaml": "extends: base.yaml\n"})


def test_docker_unit_runs_the_image_with_host_network_and_krakens_flags():
    unit = configs.unit_file("agent", settings(), "10.0.1.7")
    run = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert run.startswith("ExecStart=/usr/bin/docker run --rm --name kraken-agent --network host ")
    assert "-v /etc/kraken/agent:/etc/kraken/config/agent:ro" in run
    assert " kraken-agent:v0.1.4 /usr/bin/kraken-agent " in run
    assert run.endswith("--config=/etc/kraken/config/agent/kiln.yaml --peer-ip=10.0.1.7 "
                        "--peer-port=16001 --agent-server-port=16002 "
                        "--agent-registry-port=16000")
    assert "Requires=docker.service" in unit and "WantedBy=multi-user.target" in unit


def test_containerd_unit_uses_ctr_and_a_pinned_archives_ref():
    kraken = settings(runtime="containerd", images={"origin": {
        "ref": "registry.example/kraken-origin:v0.1.4", "url": "https://x/o.tar",
        "sha256": SHA, "file": "kraken-origin-v0.1.4.tar"}})
    unit = configs.unit_file("origin", kraken, "10.0.0.5")
    assert "Requires=containerd.service" in unit
    assert ("ExecStart=/usr/bin/ctr --namespace kraken run --rm --net-host "
            "--mount type=bind,src=/etc/kraken/origin,dst=/etc/kraken/config/origin,"
            "options=rbind:ro") in unit
    assert ("registry.example/kraken-origin:v0.1.4 kraken-origin /usr/bin/kraken-origin "
            "--config=/etc/kraken/config/origin/kiln.yaml --blobserver-hostname=10.0.0.5 "
            "--blobserver-port=15002 --peer-ip=10.0.0.5 --peer-port=15001") in unit
    assert configs.load_command(kraken, "/a.tar") == [
        "ctr", "--namespace", "kraken", "images", "import", "/a.tar"]


def test_a_unit_without_image_or_version_is_refused():
    with pytest.raises(KrakenConfigError, match="kiln_kraken_images.tracker and "
                                                "kiln_kraken_version are not set"):
        configs.unit_file("tracker", settings(version=None), "10.0.0.5")


def test_docker_daemon_json_keeps_other_keys():
    existing = '{"runtimes": {"nvidia": {"path": "nvidia-container-runtime"}}}'
    merged = configs.docker_daemon_json(existing, settings())
    assert json.loads(merged) == {"runtimes": {"nvidia": {"path": "nvidia-container-runtime"}},
                                  "registry-mirrors": ["http://localhost:16000"]}
    assert configs.docker_daemon_json(merged, settings()) == merged
    assert json.loads(configs.docker_daemon_json(None, settings())) == {
        "registry-mirrors": ["http://localhost:16000"]}
    with pytest.raises(KrakenConfigError, match="/etc/docker/daemon.json: not JSON"):
        configs.docker_daemon_json("{", settings())


def test_containerd_and_containers_mirror_docker_hub_and_the_backends_through_the_agent():
    kraken = settings(backends=[{"registry": "10.0.0.5:5000", "insecure": True}])
    hosts = configs.containerd_hosts(kraken)
    assert sorted(hosts) == ["/etc/containerd/certs.d/10.0.0.5:5000/hosts.toml",
                             "/etc/containerd/certs.d/docker.io/hosts.toml"]
    docker_io = tomllib.loads(hosts["/etc/containerd/certs.d/docker.io/hosts.toml"])
    assert docker_io == {"server": "https://registry-1.docker.io",
                         "host": {"http://localhost:16000": {"capabilities": ["pull",
                                                                             "resolve"]}}}
    local = tomllib.loads(hosts["/etc/containerd/certs.d/10.0.0.5:5000/hosts.toml"])
    assert local["server"] == "http://10.0.0.5:5000"
    registries = tomllib.loads(configs.containers_registries(kraken))["registry"]
    assert registries == [
        {"location": "docker.io", "mirror": [{"location": "localhost:16000", "insecure": True}]},
        {"location": "10.0.0.5:5000", "insecure": True,
         "mirror": [{"location": "localhost:16000", "insecure": True}]},
    ]


def test_health_checks_name_each_components_port():
    kraken = settings(ports={"tracker": 25003})
    assert configs.health_checks("tracker", kraken) == [
        ("server", "http://127.0.0.1:25003/health")]
    assert [url for _, url in configs.health_checks("agent", kraken)] == [
        "http://127.0.0.1:16000/v2/", "http://127.0.0.1:16002/health"]

"""Kraken's host data: bad values named by their key; the images it pins fetched by the
mirror fill into images/ with their sha256."""

from __future__ import annotations

import pytest

from kiln.core.errors import ValidationFailed
from kiln.roles.kraken.settings import settings_from_data
from kiln.roles.mirror.plan import PlanError, build_plan
from kiln.roles.mirror.settings import MirrorSettings
from kiln.roles.mirror.settings import settings_from_data as mirror_settings

SHA = "cd" * 32
AGENT = {"ref": "kraken-agent:v0.1.4", "url": "https://images.example/agent.tar",
         "sha256": SHA, "file": "kraken-agent-v0.1.4.tar", "size": 1234}


def problems(data: dict) -> list[str]:
    with pytest.raises(ValidationFailed) as caught:
        settings_from_data(data)
    return caught.value.problems


def test_defaults_are_krakens_ports_docker_and_the_agent_as_mirror():
    settings = settings_from_data({})
    assert settings.runtime == "docker" and settings.clients() == ["docker"]
    assert settings.ports.agent_registry == 16000 and settings.ports.tracker == 15003
    assert settings.activate is True and settings.image_ref("agent") is None
    assert settings_from_data({"kiln_kraken_version": "v0.1.4"}).image_ref("proxy") == \
        "kraken-proxy:v0.1.4"
    pinned = settings_from_data({"kiln_kraken_version": "v0.1.4",
                                 "kiln_kraken_images": {"agent": AGENT}})
    assert pinned.image_ref("agent") == "kraken-agent:v0.1.4"


def test_bad_values_are_named_by_their_host_data_key():
    found = problems({
        "kiln_kraken_images": {"agent": AGENT, "seeder": AGENT},
        "kiln_kraken_runtime": "podman",
        "kiln_kraken_allowed_cidrs": ["127.0.0.1", "not-a-net"],
        "kiln_kraken_trackers": ["tracker-without-port"],
        "kiln_kraken_backends": [{"registry": "https://r.example", "namespace": "("}],
        "kiln_kraken_store": "relative/dir",
        "kiln_kraken_ports": {"agent_registry": 70000},
    })
    text = "\n".join(found)
    assert "host data kiln_kraken_images: unknown component(s) seeder" in text
    assert "host data kiln_kraken_runtime: Input should be 'docker' or 'containerd'" in text
    assert "host data kiln_kraken_allowed_cidrs: 'not-a-net' is not" in text
    assert "host data kiln_kraken_trackers: 'tracker-without-port' is not " \
           "host:port" in text
    assert "host data kiln_kraken_backends[0].namespace: '(' is not a " \
           "regular expression" in text
    assert "host data kiln_kraken_backends[0].registry: 'https://r.example'" in text
    assert "host data kiln_kraken_store: an absolute directory" in text
    assert "host data kiln_kraken_ports.agent_registry: Input should be less than" in text
    bad_digest = problems({"kiln_kraken_images": {"agent": {**AGENT, "sha256": "XYZ"}}})
    assert bad_digest == ["host data kiln_kraken_images.agent.sha256: must be "
                          "64 lowercase hex digits"]
    untagged = problems({"kiln_kraken_images": {"agent": {**AGENT, "ref": "kraken-agent"}}})
    assert "is not an image reference with a tag" in untagged[0]


def test_the_mirror_fill_fetches_krakens_pinned_images_into_images():
    settings = mirror_settings({"kiln_kraken_images": {"agent": AGENT}})
    plan = build_plan(settings, {}, [], "KEY")
    [item] = plan.fetch
    assert (item.url, item.path, item.sha256, item.size) == (
        AGENT["url"], "images/kraken-agent-v0.1.4.tar", SHA, 1234)
    assert item.source == "kiln_kraken_images agent kraken-agent:v0.1.4"
    assert not any("no container images" in note for note in plan.notes)
    assert item.path in plan.kept()


def test_an_image_pinned_twice_with_two_digests_is_refused():
    other = {**AGENT, "sha256": "ef" * 32}
    settings = MirrorSettings(images=[{k: v for k, v in other.items() if k != "ref"}],
                              kraken_images={"agent": AGENT})
    with pytest.raises(PlanError, match="images/kraken-agent-v0.1.4.tar: kiln_mirror_images "
                                        ".* wants sha256"):
        build_plan(settings, {}, [], "KEY")


def test_mirror_settings_name_the_kraken_key():
    with pytest.raises(ValidationFailed) as caught:
        mirror_settings({"kiln_kraken_images": {"agent": {**AGENT, "file": "a/b.tar"}}})
    assert caught.value.problems == ["host data kiln_kraken_images.agent.file: "
                                     "a plain file name, no directory"]

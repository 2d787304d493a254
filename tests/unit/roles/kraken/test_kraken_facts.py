"""The engine fact's shell command, run for real by sh with the engine's client present
(a stand-in script answering as `docker image inspect` / `ctr images ls -q` do) or absent."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kiln.roles.kraken.facts import ImageLoaded

REF = "kraken-agent:v0.1.4"


def run_fact(tmp_path: Path, engine: str, client: str | None) -> bool | None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    if client is not None:
        script = bin_dir / {"docker": "docker", "containerd": "ctr"}[engine]
        script.write_text("#!/bin/sh\n" + client)
        script.chmod(0o755)
    fact = ImageLoaded()
    command = fact.command(engine=engine, ref=REF)
    # grep and the shell's own tools, and nothing else from this machine's PATH.
    for tool in ("grep",):
        (bin_dir / tool).symlink_to(subprocess.run(["sh", "-c", f"command -v {tool}"],
                                                   capture_output=True, text=True,
                                                   check=True).stdout.strip())
    result = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True,
                            env={"PATH": str(bin_dir)}, check=True)
    return fact.process(result.stdout.splitlines())


@pytest.mark.parametrize("engine", ["docker", "containerd"])
def test_no_client_means_no_engine(tmp_path, engine):
    assert run_fact(tmp_path, engine, None) is None


def test_docker_holds_the_image_when_inspect_succeeds(tmp_path):
    inspect = f'[ "$1 $2" = "image inspect" ] && [ "$5" = "{REF}" ] && echo sha256:1 && exit 0\n'
    assert run_fact(tmp_path, "docker", inspect + "exit 1\n") is True
    assert run_fact(tmp_path / "x", "docker", "echo 'No such image' >&2; exit 1\n") is False


def test_containerd_holds_the_image_when_ctr_lists_its_ref(tmp_path):
    listing = f'printf "%s\\n" other:1 {REF}\n'
    assert run_fact(tmp_path, "containerd", listing) is True
    assert run_fact(tmp_path / "x", "containerd", f'printf "%s\\n" {REF}-rc1\n') is False

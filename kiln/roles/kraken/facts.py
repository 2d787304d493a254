"""Facts the Kraken role reads on nodes: the container engine and the images it holds."""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase

from kiln.roles.kraken.configs import CTR_NAMESPACE

ENGINE_BINARIES = {"docker": "docker", "containerd": "ctr"}


class ImageLoaded(FactBase):
    """Whether `engine` holds the image `ref`: True/False, or None when the engine's client
    (docker, ctr) is not installed."""

    def command(self, engine: str, ref: str) -> str:
        binary = ENGINE_BINARIES[engine]
        quoted = shlex.quote(ref)
        if engine == "docker":
            probe = f"docker image inspect --format '{{{{.Id}}}}' {quoted} >/dev/null 2>&1"
        else:
            probe = f"ctr --namespace {CTR_NAMESPACE} images ls -q | grep -Fxq {quoted}"
        return (f"if ! command -v {binary} >/dev/null 2>&1; then echo absent; "
                f"elif {probe}; then echo yes; else echo no; fi")

    def process(self, output: list[str]) -> bool | None:
        answer = output[-1].strip()
        return None if answer == "absent" else answer == "yes"

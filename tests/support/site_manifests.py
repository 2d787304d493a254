"""Helpers for tests that a site's own firmware directory (group data `kiln_firmware_dir`)
is the one every role reads: kiln's lab manifest copied with a change, and a deploy added
to a pyinfra state for one `@metal` node that has no OS to read (nothing is connected)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.context import ctx_host, ctx_inventory, ctx_state

from kiln.core.paths import FIRMWARE_DIR


def site_firmware_dir(tmp_path: Path, change: Callable[[dict[str, Any]], None],
                      name: str = "site-firmware") -> Path:
    """A directory holding lab.yaml, kiln's own lab manifest with `change` applied."""
    document = yaml.safe_load((FIRMWARE_DIR / "lab.yaml").read_text())
    change(document)
    directory = tmp_path / name
    directory.mkdir()
    (directory / "lab.yaml").write_text(yaml.safe_dump(document))
    return directory


def deploy_state(deploy: Callable[..., Any], data: dict[str, Any], node: str,
                 **kwargs: Any) -> State:
    """`deploy` added for one @metal node with `data` (a preview: nothing is executed)."""
    inventory = Inventory(([(f"@metal/{node}", data)], {}))
    state = State(inventory, Config())
    connect_all(state)
    with ctx_inventory.use(inventory):
        add_deploy(state, deploy, **kwargs)
    return state


def commands(state: State) -> list[Any]:
    """Every command the state's operations yield, in order, for every host."""
    found = []
    for host, operations in state.ops.items():
        for operation in operations.values():
            with ctx_state.use(state), ctx_host.use(host):
                found.extend(operation.command_generator())
    return found


class Recorder:
    """Stands in for a role's operations module: records each operation called (its
    function name and keyword arguments) instead of adding it to the state."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def record(**kwargs: Any) -> Any:
            self.calls.append((name, kwargs))
            return SimpleNamespace(did_change=lambda: False)

        return record

    def called(self, name: str) -> list[dict[str, Any]]:
        return [kwargs for called, kwargs in self.calls if called == name]

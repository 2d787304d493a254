"""The training pool: which nodes jobs may land on.

Backends share one small interface — members, add, drain with a reason. `FilePool` is the
embedded default: the pool as a YAML file a scheduler wrapper (or a human) reads. Slurm,
Kubernetes and MAAS-tag backends come with the gate.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import yaml

from kiln.core.errors import KilnError


class Pool(Protocol):
    def members(self) -> list[str]: ...

    def drained(self) -> dict[str, str]: ...

    def add(self, node: str) -> bool: ...

    def drain(self, node: str, reason: str) -> bool: ...


class FilePool:
    """`{members: [..], drained: {node: {reason, at}}}` in one YAML file, updated atomically.

    add/drain return whether anything changed, so operations can report "no change".
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(self.path.suffix + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            document = self._read()
            before = yaml.safe_dump(document)
            yield document
            if yaml.safe_dump(document) != before:
                temporary = self.path.with_suffix(self.path.suffix + ".tmp")
                temporary.write_text(yaml.safe_dump(document, sort_keys=True))
                os.replace(temporary, self.path)

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"members": [], "drained": {}}
        try:
            document = yaml.safe_load(self.path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise KilnError(f"{self.path}: pool file is not valid YAML: {exc}") from None
        if not isinstance(document, dict):
            raise KilnError(f"{self.path}: pool file must be a mapping")
        document.setdefault("members", [])
        document.setdefault("drained", {})
        return document

    def members(self) -> list[str]:
        return sorted(self._read()["members"])

    def drained(self) -> dict[str, str]:
        return {node: entry["reason"] for node, entry in self._read()["drained"].items()}

    def add(self, node: str) -> bool:
        with self._locked() as document:
            changed = node not in document["members"] or node in document["drained"]
            if node not in document["members"]:
                document["members"] = sorted([*document["members"], node])
            document["drained"].pop(node, None)
        return changed

    def drain(self, node: str, reason: str) -> bool:
        if not reason:
            raise KilnError(f"node {node}: draining needs a reason a human can act on")
        with self._locked() as document:
            changed = node in document["members"] or node not in document["drained"]
            document["members"] = [m for m in document["members"] if m != node]
            if node not in document["drained"]:
                document["drained"][node] = {"reason": reason, "at": time.time()}
        return changed

"""The file pool: kiln's embedded default backend.

`{members: [..], drained: {node: {reason, at}}}` in one YAML file, updated atomically under
a lock, which a scheduler wrapper (or a human) reads. A human takes a node out by adding it
under `drained` with their own reason; kiln never returns such a node.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from kiln.core.errors import KilnError
from kiln.roles.pool.model import HeldByAnother, Membership, PoolEntry, kiln_reason, membership_of


class FilePool:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.where = f"file pool {self.path}"

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
        for node, entry in document["drained"].items():
            if not isinstance(entry, dict) or not isinstance(entry.get("reason"), str):
                raise KilnError(f"{self.path}: drained.{node}: expected a mapping with a "
                                "reason")
        return document

    def members(self) -> list[str]:
        return sorted(self._read()["members"])

    def drained(self) -> dict[str, str]:
        return {node: entry["reason"] for node, entry in self._read()["drained"].items()}

    def entry(self, node: str) -> PoolEntry:
        document = self._read()
        if node in document["drained"]:
            reason = document["drained"][node]["reason"]
            return PoolEntry(node, membership_of(True, reason), reason)
        if node in document["members"]:
            return PoolEntry(node, Membership.POOLED)
        return PoolEntry(node, Membership.UNKNOWN)

    def add(self, node: str) -> bool:
        with self._locked() as document:
            held = document["drained"].get(node)
            if held and membership_of(True, held["reason"]) == Membership.HELD:
                raise HeldByAnother(f"{self.where}: {node} is drained by someone else "
                                    f"({held['reason']!r}): kiln leaves it out")
            changed = node not in document["members"] or node in document["drained"]
            if node not in document["members"]:
                document["members"] = sorted([*document["members"], node])
            document["drained"].pop(node, None)
        return changed

    def drain(self, node: str, reason: str) -> bool:
        reason = kiln_reason(reason, node)
        with self._locked() as document:
            held = document["drained"].get(node)
            if held and membership_of(True, held["reason"]) == Membership.HELD:
                return False  # another's reason stays: the node is out either way
            changed = node in document["members"] or held is None or held["reason"] != reason
            document["members"] = [m for m in document["members"] if m != node]
            document["drained"][node] = {"reason": reason,
                                         "at": held["at"] if held else time.time()}
        return changed

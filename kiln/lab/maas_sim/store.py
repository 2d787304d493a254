"""The MAAS simulator's database: machines and tags, kept in `<lab>/maas/store.json`.

MAAS keeps its state in PostgreSQL; the simulator keeps it in one JSON document, written
atomically after every change, so a restarted simulator has the same machines in the same
states (and picks up the operations that were in flight: see lifecycle.Lifecycle.resume).
One lock serialises the API's requests and the lifecycle's workers, as MAAS's transactions
do.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kiln.lab.maas_sim.machines import Machine, Tag, machine_from_dict, machine_to_dict

STORE_FILE = "store.json"
SCHEMA = 1


def maas_dir(lab: Path) -> Path:
    return Path(lab) / "maas"


def store_path(lab: Path) -> Path:
    return maas_dir(lab) / STORE_FILE


class Store:
    def __init__(self, path: Path, machines: list[Machine], tags: list[Tag]) -> None:
        self.path = path
        self.machines: dict[str, Machine] = {m.system_id: m for m in machines}
        self.tags: dict[str, Tag] = {t.name: t for t in tags}
        self._lock = threading.RLock()

    @classmethod
    def load(cls, path: Path) -> Store:
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: the MAAS simulator has no machines yet") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON (line {exc.lineno}: {exc.msg})") from None
        if not isinstance(document, dict) or document.get("schema") != SCHEMA:
            raise ValueError(f"{path}: not a MAAS simulator store of schema {SCHEMA}")
        machines = [machine_from_dict(m, str(path)) for m in document.get("machines", [])]
        tags = [Tag(**t) for t in document.get("tags", [])]
        return cls(path, machines, tags)

    @contextmanager
    def changing(self) -> Iterator[Store]:
        """Hold the lock for a change and save it when the block ends without error."""
        with self._lock:
            yield self
            self.save()

    @contextmanager
    def reading(self) -> Iterator[Store]:
        with self._lock:
            yield self

    def save(self) -> None:
        with self._lock:
            document = {
                "schema": SCHEMA,
                "machines": [machine_to_dict(m) for m in self.ordered()],
                "tags": [vars(t) for t in self.tags.values()],
            }
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
            with os.fdopen(fd, "w") as out:
                json.dump(document, out, indent=1)
            os.replace(tmp, self.path)

    def ordered(self) -> list[Machine]:
        """Machines sorted by id, as MAAS lists them."""
        return sorted(self.machines.values(), key=lambda m: m.id)

"""A chassis-control program for tests: lab.bmc.ipmi_chassis's Chassis with the lab's power
calls replaced by a recorder kept in a JSON file (the node's power state, the calls made).

    python bmc_ipmi_recorder.py RECORD LAB NODE get power | set power "1" | ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kiln.lab.bmc.ipmi_chassis import Chassis, run


class FilePower:
    def __init__(self, record: Path) -> None:
        self.record = record

    def _load(self) -> dict:
        return json.loads(self.record.read_text())

    def _call(self, state: str, call: list) -> None:
        data = self._load()
        data["state"] = state
        data["calls"].append(call)
        # Atomically: the test reads the record while ipmi_sim's chassis program writes it.
        tmp = self.record.with_name(self.record.name + ".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.record)

    def power_state(self, name: str) -> str:
        return self._load()["state"]

    def power_on(self, name: str, boot: str = "disk", wait: bool = False) -> None:
        self._call("on", ["on", name, boot, wait])

    def power_off(self, name: str) -> None:
        self._call("off", ["off", name])

    def power_cycle(self, name: str, boot: str = "disk", wait: bool = False) -> None:
        self._call("on", ["cycle", name, boot, wait])


def main() -> int:
    record, lab, node, words = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
    try:
        print(run(Chassis(lab, node, FilePower(record)), words), end="")
    except Exception as exc:
        print(exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

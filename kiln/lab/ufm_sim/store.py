"""What the UFM simulator remembers, in `<lab>/ufm/` for the life of the lab.

- `pkeys.json`: partitions made through the API (the management partition 0x7fff is not
  stored: it always holds every HCA port).
- `ports-seen.json`: each host port's state at the simulator's last look (`up`, `rate`,
  `since`: when it last changed), to turn changes into events and to date unhealthy ports.
- `events.json`: the event log (`next_id`, `events`), newest last, at most MAX_EVENTS.
- `unhealthy.json`: ports marked unhealthy through `PUT app/unhealthy_ports`.

One simulator process owns the directory; a lock serialises its request threads and its
sweeper, and every file is replaced atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .fabric import Fabric, FabricError, Port

MAX_EVENTS = 10000
# UFM event codes for a link going down and coming up (lab/ufm_sim docs: §4.3 of the
# reference, from UFM's event.log codes).
LINK_DOWN = ("329", "Link went down", "Warning")
LINK_UP = ("328", "Link went up", "Info")
# Counter events by code: name, counter, severity, description. 112's name, counter and
# description are the reference's alarm sample (§4.4, §7.3); the others' codes and meanings
# are §4.3's table, their names and counter spellings are the simulator's (not confirmed).
COUNTER_EVENTS = {
    "110": ("Symbol Error", "Infiniband_SymbolErrors", "Warning",
            "Symbol error counter rate threshold exceeded"),
    "112": ("Link HW Error", "Infiniband_LinkDowned", "Warning",
            "Link-Downed counter delta threshold exceeded. Threshold is 0, calculated delta "
            "is 1."),
    "113": ("Port Receive Errors", "Infiniband_PortRcvErrors", "Warning",
            "Port receive errors counter rate threshold exceeded"),
    "917": ("Symbol BER", "N/A", "Critical", "Symbol BER is above the error threshold"),
    "918": ("Symbol BER Warning", "N/A", "Warning", "Symbol BER is above the warning threshold"),
}


def ufm_time(epoch: float) -> str:
    """UFM's event timestamp: local time, no zone, no fraction."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


class Store:
    def __init__(self, lab: Path) -> None:
        self.directory = Path(lab) / "ufm"
        self.lock = threading.RLock()

    # -- files -------------------------------------------------------------------------

    def read(self, name: str, default: Any) -> Any:
        path = self.directory / name
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return default
        except (OSError, json.JSONDecodeError) as exc:
            raise FabricError(f"{path}: cannot read the UFM simulator's state: {exc}") from None

    def write(self, name: str, data: Any) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=1)
            out.write("\n")
        os.replace(tmp, self.directory / name)

    # -- port changes -> events --------------------------------------------------------

    def observe(self, fabric: Fabric, now: float | None = None) -> list[dict[str, Any]]:
        """Compare the host ports with the last look; log an event per link that changed.

        The first look ever (no `ports-seen.json`) is the baseline and logs nothing, as a
        UFM started on a running fabric reports what changes from then on. Returns the
        new events.
        """
        now = time.time() if now is None else now
        with self.lock:
            seen = self.read("ports-seen.json", None)
            baseline = seen is None
            seen = seen or {}
            changed = baseline
            new_events = []
            for host in fabric.hosts():
                for port in host.ports:
                    before = seen.get(port.name)
                    current = {"up": port.active, "rate": port.rate}
                    if before is None:
                        seen[port.name] = {**current, "since": now}
                        changed = True
                        continue
                    if before["up"] != port.active and not baseline:
                        new_events.append(self._link_event(port, now))
                    if (before["up"], before["rate"]) != (port.active, port.rate):
                        seen[port.name] = {**current, "since": now}
                        changed = True
            if changed:
                self.write("ports-seen.json", seen)
            if new_events:
                log = self.read("events.json", {"next_id": 1, "events": []})
                for event in new_events:
                    event["id"] = log["next_id"]
                    log["next_id"] += 1
                log["events"] = (log["events"] + new_events)[-MAX_EVENTS:]
                self.write("events.json", log)
            return new_events

    def _link_event(self, port: Port, now: float) -> dict[str, Any]:
        code, name, severity = LINK_UP if port.active else LINK_DOWN
        peer = port.peer
        far = f"{peer.system.system_name} port {peer.dname}" if peer else "no peer"
        return {
            "id": 0,
            "name": name,
            "type": "IBPort",
            "event_type": code,
            "severity": severity,
            "timestamp": ufm_time(now),
            "counter": "N/A",
            "category": "Fabric Notification",
            "object_name": port.name,
            "object_path": f"Computer: {port.system.system_name} / {port.hca}",
            "write_to_syslog": False,
            "description": f"{name}: {port.node_description} port {port.number} "
            f"(peer {far})",
        }

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return self.read("events.json", {"next_id": 1, "events": []})["events"]

    def delete_event(self, event_id: int) -> bool:
        with self.lock:
            log = self.read("events.json", {"next_id": 1, "events": []})
            kept = [e for e in log["events"] if e["id"] != event_id]
            if len(kept) == len(log["events"]):
                return False
            log["events"] = kept
            self.write("events.json", log)
            return True

    def since(self, port_name: str) -> float | None:
        with self.lock:
            entry = self.read("ports-seen.json", {}).get(port_name)
            return entry["since"] if entry else None

    # -- manual unhealthy marks --------------------------------------------------------

    def manual_unhealthy(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return self.read("unhealthy.json", {})

    def set_manual_unhealthy(self, marks: dict[str, dict[str, Any]]) -> None:
        with self.lock:
            self.write("unhealthy.json", marks)

    # -- access tokens (app/tokens) ------------------------------------------------------

    def tokens(self) -> list[dict[str, Any]]:
        with self.lock:
            return self.read("tokens.json", [])

    def set_tokens(self, tokens: list[dict[str, Any]]) -> None:
        with self.lock:
            self.write("tokens.json", tokens)

    # -- counter events ------------------------------------------------------------------

    def port_event(self, port: Port, code: str, now: float | None = None) -> dict[str, Any]:
        """Log a port counter event (COUNTER_EVENTS) as UFM's monitoring would on a
        threshold crossing. The lab's links carry no bit errors, so nothing logs these by
        itself: tests and the lab's fault tooling call this."""
        name, counter, severity, description = COUNTER_EVENTS[code]
        now = time.time() if now is None else now
        event = {
            "id": 0, "name": name, "type": "IBPort", "event_type": code,
            "severity": severity, "timestamp": ufm_time(now), "counter": counter,
            "category": "Hardware", "object_name": port.name,
            "object_path": f"Computer: {port.system.system_name} / {port.hca}" if port.hca
            else f"Switch: {port.system.system_name} / {port.dname}",
            "write_to_syslog": False, "description": description,
        }
        with self.lock:
            log = self.read("events.json", {"next_id": 1, "events": []})
            event["id"] = log["next_id"]
            log["next_id"] += 1
            log["events"] = (log["events"] + [event])[-MAX_EVENTS:]
            self.write("events.json", log)
        return event

    # -- partitions --------------------------------------------------------------------

    def pkeys(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return self.read("pkeys.json", {})

    def set_pkeys(self, pkeys: dict[str, dict[str, Any]]) -> None:
        with self.lock:
            self.write("pkeys.json", pkeys)

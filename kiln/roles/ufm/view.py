"""UFM's fabric as one pyinfra run sees it: each resource read once, shared by every host.

A run on 500 nodes must not ask UFM for its 20,000-port list 500 times. `fabric_view(host)`
gives every host of a run the same `FabricView` for the same UFM, keyed by the run's
pyinfra State, the operation (pyinfra v3 runs an operation's body once to plan the run and
again when it executes it, after the operations before it have run on every host: each
operation and phase reads the fabric as it is then) and the UFM URL. The view reads each
resource (ports, unhealthy ports, events) on first use, once: while one host's greenlet
fetches, the others wait on that resource's lock, then share the answer, or the same
failure (a UFM that did not answer within the retry bound is not asked again by every
host). The view goes when the run
does (a weak reference to its State), so nothing outlives the run and no later run reads
stale data.

The locks are made when first needed, from `threading`: under pyinfra's CLI that is
gevent's (it monkey-patches before any deploy code runs), so a waiting host yields to the
others; in plain threads (tests, a script) it is a real lock.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from kiln.core.context import node_context
from kiln.core.errors import KilnError
from kiln.roles.ufm.client import UFMClient
from kiln.roles.ufm.errors import UFMError
from kiln.roles.ufm.resources import Event, Port, UnhealthyPort
from kiln.roles.ufm.settings import client_for, ufm_server

T = TypeVar("T")


@dataclass
class _Slot:
    lock: Any = field(default_factory=lambda: threading.Lock())
    done: bool = False
    value: Any = None
    error: str | None = None


class FabricView:
    """One UFM, read at most once per resource."""

    def __init__(self, client: UFMClient, zone: tzinfo | None = None):
        self.client = client
        self.zone = zone
        self._guard = threading.Lock()
        self._slots: dict[str, _Slot] = {}

    def __repr__(self) -> str:
        return f"FabricView({self.client.url!r})"

    def _once(self, name: str, fetch: Callable[[], T]) -> T:
        with self._guard:
            slot = self._slots.setdefault(name, _Slot())
        with slot.lock:
            if not slot.done:
                try:
                    slot.value = fetch()
                except KilnError as exc:
                    slot.error = str(exc)
                slot.done = True
        if slot.error is not None:
            raise UFMError(slot.error)
        return slot.value

    def ports(self) -> dict[str, Port]:
        """Every port, by name (`<guid>_<number>`)."""
        return self._once("ports", lambda: {p.name: p for p in self.client.ports()})

    def host_ports(self) -> dict[str, Port]:
        """HCA ports by port GUID (a switch's ports all carry the switch's GUID)."""
        return self._once("host_ports", lambda: {
            p.guid: p for p in self.ports().values() if p.is_host
        })

    def unhealthy(self) -> dict[str, UnhealthyPort]:
        """UFM's unhealthy ports, by port name."""
        return self._once("unhealthy_ports",
                          lambda: {u.port_name: u for u in self.client.unhealthy_ports()})

    def events(self) -> dict[str, list[Event]]:
        """The event log, by object name (a port's name for port events)."""
        def build() -> dict[str, list[Event]]:
            by_object: dict[str, list[Event]] = {}
            for event in self.client.events():
                by_object.setdefault(event.object_name.lower(), []).append(event)
            return by_object
        return self._once("events", build)


# run (a pyinfra State, or any object a caller keeps for its run)
#   -> (executing, operation hash, UFM URL) -> view
_VIEWS: weakref.WeakKeyDictionary[Any, dict[tuple[Any, Any, str], FabricView]] = (
    weakref.WeakKeyDictionary()
)
_VIEWS_GUARD = threading.Lock()


def fabric_view(target: Any, run: Any = None,
                client: Callable[[], UFMClient] | None = None) -> FabricView:
    """The view of the UFM a node's inventory names, shared by every host of `run` (by
    default the pyinfra State of `target`, a pyinfra Host)."""
    run = run if run is not None else getattr(target, "state", None)
    if run is None:
        raise KilnError("fabric_view: no pyinfra run to share the UFM view in (give run=)")
    ctx = node_context(target)
    server = ufm_server(ctx)
    key = (getattr(run, "is_executing", None), getattr(target, "current_op_hash", None),
           server.url)
    with _VIEWS_GUARD:
        views = _VIEWS.setdefault(run, {})
        view = views.get(key)
        if view is None:
            zone = ZoneInfo(server.timezone) if server.timezone else None
            view = FabricView(client() if client else client_for(ctx), zone)
            views[key] = view
    return view

"""What a stage tells pyinfra and the person running it: fail this node, refuse, preview.

One node's problem never stops the fleet (DESIGN.md): a stage that cannot go on for a node
yields a `FunctionCommand` that logs why in red and returns False. pyinfra then fails that
host alone, drops it from the rest of the run, and exits non-zero; every other node goes
on. Under `--dry` the command is listed like any other, so the preview shows it too.

    fail(message)             a command failing this host with `message`
    fail_host(host, message)  the same from inside a running FunctionCommand: log, False
    refuse(message)           an operation failing this host (bad settings, a bad manifest)
    not_set(keys, see)        the problems to refuse a stage with whose settings are not set
    preview(what)             a command that only lists `what` a run will converge
    preview_line(host, text)  a line a change preview prints for this host
    not_built(stage, awaiting)  a stage that is not written yet, failing loudly
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from pyinfra.api import FunctionCommand, operation
from pyinfra.api.host import Host
from pyinfra.api.state import State

logger = logging.getLogger("pyinfra")


# -- failing one node ---------------------------------------------------------------------------


def fail_host(host: Any, message: str) -> bool:
    """Log `message` in red for `host`; returns False, which fails a FunctionCommand."""
    host.log_styled(message, fg="red", log_func=logger.error)
    return False


def _fail(state: State, host: Host, message: str) -> bool:
    return fail_host(host, message)


def fail(message: str) -> FunctionCommand:
    """A command that fails this host with `message` when it runs (and does nothing else)."""
    return FunctionCommand(_fail, (message,), {})


@operation(is_idempotent=False)
def refuse(message: str):  # noqa: ANN201 - pyinfra operation generator
    """Fail this host: `message` says what is wrong and where (file, field, data key)."""
    yield fail(message)


def not_set(keys: Iterable[str], see: str) -> list[str]:
    """One problem per host-data key that a stage needs and that is not set."""
    return [f"host data {key} is not set (see {see})" for key in keys]


# -- previews -----------------------------------------------------------------------------------


def _noted(state: State, host: Host, note: str) -> bool:
    return True


def preview(what: str) -> FunctionCommand:
    """What a preview lists for a node that cannot be read yet: `what` is converged when
    the deploy runs (and the node is read then)."""
    return FunctionCommand(_noted, (f"converge {what} (the node is read when it runs)",), {})


def preview_line(host: Any, text: str, warn: bool = False) -> None:
    """A line of a change preview (no -y, or --dry) for this host, in yellow."""
    host.log_styled(text, fg="yellow", log_func=logger.warning if warn else logger.info)


# -- stages still to be built -------------------------------------------------------------------


def _not_built(state: State, host: Host, stage: str, awaiting: str) -> bool:
    return fail_host(host, f"stage '{stage}' is not built yet (awaiting: {awaiting}); "
                           "stopping this node here")


@operation(is_idempotent=False)
def not_built(stage: str, awaiting: str):  # noqa: ANN201 - pyinfra operation generator
    """Fail this host: `stage` has no implementation yet (`awaiting` names the work)."""
    yield FunctionCommand(_not_built, (stage, awaiting), {})

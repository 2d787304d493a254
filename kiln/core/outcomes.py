"""Bring-up stages that are not written yet fail loudly; they never pretend to succeed.

A stage whose role is still to be built yields one operation that fails the host with a
message naming the stage. Under `--dry` it is listed like any other operation, so the
preview shows the whole plan; when run, the host stops there and the exit code says so.
"""

from __future__ import annotations

import logging

from pyinfra.api import FunctionCommand, operation
from pyinfra.api.host import Host
from pyinfra.api.state import State

logger = logging.getLogger("pyinfra")


def _refuse(state: State, host: Host, stage: str, awaiting: str) -> bool:
    host.log_styled(
        f"stage '{stage}' is not built yet (awaiting: {awaiting}); stopping this node here",
        fg="red",
        log_func=logger.error,
    )
    return False


@operation(is_idempotent=False)
def not_built(stage: str, awaiting: str):  # noqa: ANN201 - pyinfra operation generator
    """Fail this host: `stage` has no implementation yet (`awaiting` names the work)."""
    yield FunctionCommand(_refuse, (stage, awaiting), {})

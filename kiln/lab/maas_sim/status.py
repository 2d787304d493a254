"""MAAS's node statuses and the transitions the simulator performs.

Numbers and names are MAAS's own (`maascommon.enums.node.NODE_STATUS` and
`NODE_STATUS_CHOICES` in MAAS 3.6): clients compare `status` numbers and show `status_name`,
so both must be exactly MAAS's. Statuses the simulator never enters (rescue mode, testing,
reserved, retired, missing) are listed all the same, so a number read back always has its
MAAS name.
"""

from __future__ import annotations

from enum import IntEnum


class NodeStatus(IntEnum):
    NEW = 0
    COMMISSIONING = 1
    FAILED_COMMISSIONING = 2
    MISSING = 3
    READY = 4
    RESERVED = 5
    DEPLOYED = 6
    RETIRED = 7
    BROKEN = 8
    DEPLOYING = 9
    ALLOCATED = 10
    FAILED_DEPLOYMENT = 11
    RELEASING = 12
    FAILED_RELEASING = 13
    DISK_ERASING = 14
    FAILED_DISK_ERASING = 15
    RESCUE_MODE = 16
    ENTERING_RESCUE_MODE = 17
    FAILED_ENTERING_RESCUE_MODE = 18
    EXITING_RESCUE_MODE = 19
    FAILED_EXITING_RESCUE_MODE = 20
    TESTING = 21
    FAILED_TESTING = 22


STATUS_NAMES: dict[NodeStatus, str] = {
    NodeStatus.NEW: "New",
    NodeStatus.COMMISSIONING: "Commissioning",
    NodeStatus.FAILED_COMMISSIONING: "Failed commissioning",
    NodeStatus.MISSING: "Missing",
    NodeStatus.READY: "Ready",
    NodeStatus.RESERVED: "Reserved",
    NodeStatus.ALLOCATED: "Allocated",
    NodeStatus.DEPLOYING: "Deploying",
    NodeStatus.DEPLOYED: "Deployed",
    NodeStatus.RETIRED: "Retired",
    NodeStatus.BROKEN: "Broken",
    NodeStatus.FAILED_DEPLOYMENT: "Failed deployment",
    NodeStatus.RELEASING: "Releasing",
    NodeStatus.FAILED_RELEASING: "Releasing failed",
    NodeStatus.DISK_ERASING: "Disk erasing",
    NodeStatus.FAILED_DISK_ERASING: "Failed disk erasing",
    NodeStatus.RESCUE_MODE: "Rescue mode",
    NodeStatus.ENTERING_RESCUE_MODE: "Entering rescue mode",
    NodeStatus.FAILED_ENTERING_RESCUE_MODE: "Failed to enter rescue mode",
    NodeStatus.EXITING_RESCUE_MODE: "Exiting rescue mode",
    NodeStatus.FAILED_EXITING_RESCUE_MODE: "Failed to exit rescue mode",
    NodeStatus.TESTING: "Testing",
    NodeStatus.FAILED_TESTING: "Failed testing",
}


def status_name(status: int) -> str:
    return STATUS_NAMES[NodeStatus(status)]


def short_label(status: int) -> str:
    """The one-word label MAAS's `status=` filter takes ("ready", "failed_deployment")."""
    return NodeStatus(status).name.lower()


# Where each action may start, as MAAS decides it:
# - commission: the Commission node action's actionable statuses (maasserver/node_action.py);
# - deploy: a Ready machine is allocated first; then Deploying must be a permitted
#   transition, which MAAS's NODE_TRANSITIONS allows from Allocated only;
# - release: RELEASABLE_STATUSES (maasserver/models/node.py); Ready and Releasing are
#   already released, a no-op;
# - abort: the statuses abort_operation handles (testing is not simulated).
COMMISSION_FROM = frozenset(
    {NodeStatus.NEW, NodeStatus.FAILED_COMMISSIONING, NodeStatus.READY, NodeStatus.BROKEN}
)
RELEASABLE = frozenset(
    {
        NodeStatus.ALLOCATED,
        NodeStatus.RESERVED,
        NodeStatus.BROKEN,
        NodeStatus.DEPLOYING,
        NodeStatus.DEPLOYED,
        NodeStatus.FAILED_DEPLOYMENT,
        NodeStatus.FAILED_DISK_ERASING,
        NodeStatus.FAILED_RELEASING,
    }
)
ALREADY_RELEASED = frozenset({NodeStatus.READY, NodeStatus.RELEASING})
ABORTABLE = frozenset(
    {NodeStatus.COMMISSIONING, NodeStatus.DEPLOYING, NodeStatus.DISK_ERASING}
)
# Statuses MAAS watches with a deadline (status_expires), failing the node when it passes.
MONITORED = {
    NodeStatus.COMMISSIONING: NodeStatus.FAILED_COMMISSIONING,
    NodeStatus.DEPLOYING: NodeStatus.FAILED_DEPLOYMENT,
    NodeStatus.RELEASING: NodeStatus.FAILED_RELEASING,
    NodeStatus.DISK_ERASING: NodeStatus.FAILED_DISK_ERASING,
}

# Script-result status numbers and names (maascommon SCRIPT_STATUS) for the machine's
# commissioning_status / testing_status fields; -1 is what MAAS shows with no results.
SCRIPT_STATUS_NAMES = {
    -1: "Unknown",
    0: "Pending",
    1: "Running",
    2: "Passed",
    3: "Failed",
    4: "Timed out",
    5: "Aborted",
}
SCRIPT_NONE, SCRIPT_PENDING, SCRIPT_RUNNING, SCRIPT_PASSED, SCRIPT_FAILED = -1, 0, 1, 2, 3
SCRIPT_ABORTED = 5

"""The gate's walk to the pool: every move one the ledger allows, forward only."""

import pytest

from kiln.core.ledger import TRANSITIONS, NodeState
from kiln.roles.gate import path_to_pool

S = NodeState


@pytest.mark.parametrize(("start", "path"), [
    (None, [S.ENROLLED, S.DEPLOYED, S.CONFIGURED, S.BURNING_IN, S.POOLED]),
    (S.ENROLLED, [S.DEPLOYED, S.CONFIGURED, S.BURNING_IN, S.POOLED]),
    (S.DEPLOYED, [S.CONFIGURED, S.BURNING_IN, S.POOLED]),
    # Quarantined by a later check, it comes back through the configure stage.
    (S.QUARANTINED, [S.CONFIGURED, S.BURNING_IN, S.POOLED]),
    (S.BURNING_IN, [S.POOLED]),
    (S.POOLED, []),
])
def test_the_walk_to_the_pool(start, path):
    assert path_to_pool(start) == path
    current = start or S.ENROLLED
    for following in path[1:] if start is None else path:
        assert following in TRANSITIONS[current]
        current = following


def test_a_node_mid_provisioning_has_no_forward_way_to_the_pool():
    with pytest.raises(ValueError, match="no way from commissioning to pooled"):
        path_to_pool(S.COMMISSIONING)


def test_the_quarantine_reason_names_the_stage_and_every_line_without_the_node_again():
    from kiln.roles.gate import failure_reason

    reason = failure_reason(
        "gpu-002", ["Health: single-node checks | Health: every single-node check"],
        ["node gpu-002: health: node gpu-002: GPU 5 (PCI 00000000:BB:00.0): CRITICAL: 25000 "
         "correctable ECC errors\nnode gpu-002: host-time: WARN: offset 3 ms\n"])
    assert reason == ("kiln: Health: single-node checks failed: health: GPU 5 (PCI "
                      "00000000:BB:00.0): CRITICAL: 25000 correctable ECC errors / host-time: "
                      "WARN: offset 3 ms")
    assert failure_reason("gpu-002", [], []) == "kiln: an operation failed"

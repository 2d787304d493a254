"""The file pool keeps the rule every backend keeps: kiln changes only what it set."""

from __future__ import annotations

import pytest
import yaml

from kiln.core.errors import KilnError
from kiln.roles.pool import FilePool, HeldByAnother, Membership, pool_for


def test_a_node_a_human_drained_stays_drained(tmp_path):
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump({"members": ["gpu-001"],
                                    "drained": {"gpu-002": {"reason": "hand: DIMM swap",
                                                            "at": 1.0}}}))
    pool = FilePool(path)
    assert pool.entry("gpu-002").membership == Membership.HELD
    with pytest.raises(HeldByAnother, match="gpu-002 is drained by someone else"):
        pool.add("gpu-002")
    assert pool.drain("gpu-002", "health failed") is False
    assert pool.drained() == {"gpu-002": "hand: DIMM swap"}
    assert pool.entry("gpu-001").membership == Membership.POOLED
    assert pool.entry("gpu-003").membership == Membership.UNKNOWN
    assert pool.drain("gpu-001", "health failed") is True
    assert pool.entry("gpu-001").membership == Membership.DRAINED
    assert pool.add("gpu-001") is True and pool.members() == ["gpu-001"]


def test_a_drained_entry_without_a_reason_is_named(tmp_path):
    path = tmp_path / "pool.yaml"
    path.write_text("members: []\ndrained:\n  gpu-002: oops\n")
    with pytest.raises(KilnError, match=r"pool.yaml: drained.gpu-002: expected a mapping"):
        FilePool(path).entry("gpu-002")


def test_group_data_names_the_backend(tmp_path):
    assert isinstance(pool_for({"kiln_node": "gpu-001",
                                "kiln_pool_file": str(tmp_path / "p.yaml")}), FilePool)
    with pytest.raises(KilnError, match="kiln_pool.*backend slurm needs controller"):
        pool_for({"kiln_node": "gpu-001", "kiln_pool": {"backend": "slurm"}})
    with pytest.raises(KilnError, match="kiln_pool"):
        pool_for({"kiln_node": "gpu-001", "kiln_pool": {"backend": "nomad"}})
